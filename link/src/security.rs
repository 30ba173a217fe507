//! Broker authentication and TLS: user name and password, and a rustls client configuration
//! (CA file or the system's roots, optional client certificate) from PEM files.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rumqttc::{MqttOptions, TlsConfiguration, Transport};

use crate::LinkError;

/// How a program proves who it is to the broker and protects the connection. Its `Debug`
/// never shows the password.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Security {
    /// MQTT user name; empty: none.
    pub username: String,
    /// MQTT password (already read from its file, if it came from one).
    pub password: String,
    /// PEM file of the CA certificates that sign the broker's certificate; `None`: the
    /// system's roots.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain and private key, for brokers that require one.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security")
            .field("username", &self.username)
            .field("password", &redacted(&self.password))
            .field("ca_file", &self.ca_file)
            .field("client_cert", &self.client_cert)
            .finish()
    }
}

/// What `Debug` shows of a secret: whether it is set, never its value.
pub fn redacted(secret: &str) -> &'static str {
    if secret.is_empty() {
        ""
    } else {
        "<redacted>"
    }
}

/// The broker credentials and TLS files as the `[broker]` settings name them (an empty
/// string: not set), before any file is read.
#[derive(Clone, Copy, Default)]
pub struct Credentials<'a> {
    /// `broker.username`.
    pub username: &'a str,
    /// `broker.password`.
    pub password: &'a str,
    /// `broker.password_file`: its first line is the password, and wins over `password`.
    pub password_file: &'a str,
    /// `broker.ca_file`.
    pub ca_file: &'a str,
    /// `broker.client_cert_file`.
    pub client_cert_file: &'a str,
    /// `broker.client_key_file`.
    pub client_key_file: &'a str,
}

impl Security {
    /// The security of `credentials`, with the password read from its file if one is named:
    /// the one place the device, the cloud and the command line turn settings into
    /// credentials.
    pub fn from_credentials(credentials: Credentials<'_>) -> Result<Security, LinkError> {
        let password = if credentials.password_file.is_empty() {
            credentials.password.to_string()
        } else {
            let text = std::fs::read_to_string(credentials.password_file).map_err(|e| {
                LinkError::Options(format!(
                    "broker.password_file {}: {e}",
                    credentials.password_file
                ))
            })?;
            text.lines().next().unwrap_or("").to_string()
        };
        let path = |p: &str| (!p.is_empty()).then(|| PathBuf::from(p));
        Ok(Security {
            username: credentials.username.to_string(),
            password,
            ca_file: path(credentials.ca_file),
            client_cert: path(credentials.client_cert_file).zip(path(credentials.client_key_file)),
        })
    }

    /// Sets the credentials and, for `tls`, the TLS transport on `options`. Fails with a clear
    /// reason when a file is missing or holds no usable certificate or key.
    pub fn apply(&self, options: &mut MqttOptions, tls: bool) -> Result<(), LinkError> {
        if !self.username.is_empty() {
            options.set_credentials(self.username.clone(), self.password.clone());
        } else if !self.password.is_empty() {
            return Err(LinkError::Options(
                "broker.password is set but broker.username is empty".into(),
            ));
        }
        if tls {
            let config = self.rustls_config()?;
            options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                Arc::new(config),
            )));
        } else if self.ca_file.is_some() || self.client_cert.is_some() {
            return Err(LinkError::Options(
                "TLS files are configured but the broker URL is not mqtts://".into(),
            ));
        }
        Ok(())
    }

    fn rustls_config(&self) -> Result<rustls::ClientConfig, LinkError> {
        let mut roots = rustls::RootCertStore::empty();
        match &self.ca_file {
            Some(path) => {
                for cert in read_certs(path)? {
                    roots
                        .add(cert)
                        .map_err(|e| bad(path, &format!("not a usable CA certificate: {e}")))?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                for cert in found.certs {
                    let _ = roots.add(cert);
                }
                if roots.is_empty() {
                    return Err(LinkError::Options(
                        "no CA certificates found on this system; set broker.ca_file".into(),
                    ));
                }
            }
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| LinkError::Options(format!("TLS: {e}")))?
        .with_root_certificates(roots);
        match &self.client_cert {
            None => Ok(builder.with_no_client_auth()),
            Some((cert, key)) => {
                let chain = read_certs(cert)?;
                let key_der = read_key(key)?;
                builder
                    .with_client_auth_cert(chain, key_der)
                    .map_err(|e| bad(key, &format!("client certificate and key do not fit: {e}")))
            }
        }
    }
}

fn bad(path: &Path, why: &str) -> LinkError {
    LinkError::Options(format!("{}: {why}", path.display()))
}

fn read_pem(path: &Path) -> Result<Vec<u8>, LinkError> {
    std::fs::read(path).map_err(|e| bad(path, &e.to_string()))
}

fn read_certs(path: &Path) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, LinkError> {
    let pem = read_pem(path)?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(path, &e.to_string()))?;
    if certs.is_empty() {
        return Err(bad(path, "holds no PEM certificate"));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<rustls::pki_types::PrivateKeyDer<'static>, LinkError> {
    let pem = read_pem(path)?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| bad(path, &e.to_string()))?
        .ok_or_else(|| bad(path, "holds no PEM private key"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_says_a_password_is_set_and_never_shows_it() {
        let s = Security {
            username: "dev1".into(),
            password: "hunter2".into(),
            ..Security::default()
        };
        let shown = format!("{s:?}");
        assert!(
            shown.contains("dev1") && shown.contains("<redacted>"),
            "{shown}"
        );
        assert!(!shown.contains("hunter2"), "{shown}");
        let broker = crate::BrokerConfig {
            url: "mqtt://b:1883".into(),
            username: "dev1".into(),
            password: "hunter2".into(),
            password_file: String::new(),
            ca_file: String::new(),
            client_cert_file: String::new(),
            client_key_file: String::new(),
            client_id: String::new(),
            keep_alive_s: 5,
            reconnect_min_ms: 1,
            reconnect_max_ms: 2,
            max_packet_bytes: 1024,
        };
        let shown = format!("{broker:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("<redacted>"),
            "{shown}"
        );
    }

    #[test]
    fn bad_security_settings_are_refused_with_the_reason() {
        let mut o = MqttOptions::new("t", "localhost", 1883);
        let e = Security {
            password: "p".into(),
            ..Security::default()
        }
        .apply(&mut o, false)
        .unwrap_err()
        .to_string();
        assert!(e.contains("username"), "{e}");
        let e = Security {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..Security::default()
        }
        .apply(&mut o, false)
        .unwrap_err()
        .to_string();
        assert!(e.contains("mqtts"), "{e}");
        let e = Security {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..Security::default()
        }
        .apply(&mut o, true)
        .unwrap_err()
        .to_string();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
        let dir = std::env::temp_dir().join(format!("edgeclip-sec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let e = Security {
            ca_file: Some(junk.clone()),
            ..Security::default()
        }
        .apply(&mut o, true)
        .unwrap_err()
        .to_string();
        assert!(e.contains("no PEM certificate"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn credentials_without_tls_are_set() {
        let mut o = MqttOptions::new("t", "localhost", 1883);
        Security {
            username: "u".into(),
            password: "p".into(),
            ..Security::default()
        }
        .apply(&mut o, false)
        .unwrap();
        let login = o.credentials().expect("credentials");
        assert_eq!(
            (login.username.as_str(), login.password.as_str()),
            ("u", "p")
        );
    }
}
