//! One file per subcommand; each turns its flags into calls of the library.

pub mod model;
pub mod search;
pub mod status;
pub mod up;
pub mod up_settings;

use std::time::Duration;

/// Default broker of `search` and `status`: the one `up` starts.
pub const DEFAULT_BROKER: &str = "mqtt://127.0.0.1:1883";

/// Parses seconds (fractions allowed) into a duration.
pub fn parse_seconds(s: &str) -> anyhow::Result<Duration> {
    let secs: f64 = s
        .parse()
        .map_err(|_| anyhow::anyhow!("{s:?} is not a number of seconds"))?;
    anyhow::ensure!(
        secs > 0.0 && secs <= 3600.0,
        "must be more than 0 and at most 3600 seconds"
    );
    Ok(Duration::from_secs_f64(secs))
}

/// The broker credentials and TLS files of `search` and `status`, from the same environment
/// variables the device and the cloud read: `EDGECLIP_BROKER__USERNAME`, `__PASSWORD`,
/// `__PASSWORD_FILE`, `__CA_FILE`, `__CLIENT_CERT_FILE`, `__CLIENT_KEY_FILE`.
pub fn broker_security() -> anyhow::Result<edgeclip_link::Security> {
    let var = |k: &str| std::env::var(format!("EDGECLIP_BROKER__{k}")).unwrap_or_default();
    let (username, password, password_file) =
        (var("USERNAME"), var("PASSWORD"), var("PASSWORD_FILE"));
    let (ca_file, client_cert_file, client_key_file) = (
        var("CA_FILE"),
        var("CLIENT_CERT_FILE"),
        var("CLIENT_KEY_FILE"),
    );
    Ok(edgeclip_link::Security::from_credentials(
        edgeclip_link::Credentials {
            username: &username,
            password: &password,
            password_file: &password_file,
            ca_file: &ca_file,
            client_cert_file: &client_cert_file,
            client_key_file: &client_key_file,
        },
    )?)
}
