//! Cameras polled for snapshots: the URL, one HTTP GET and picture sniffing here; the frames'
//! names, which to keep and which to prune in [`frames`]. The actor (`actors/camera.rs`)
//! schedules the polls, saves the frames and applies [`frames::Retention`]'s verdicts.

pub mod frames;

pub use frames::{frame_name, near_duplicate, prune_frames, Retention, Verdict};

use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

use crate::error::DeviceError;

/// A camera's snapshot URL, parsed: `http://[user:password@]host[:port]/path`. Its `Debug`
/// and its errors never show the credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct CameraUrl {
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// TCP port (80 when absent).
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
    /// `Basic …` header value when the URL holds credentials.
    pub authorization: Option<String>,
}

impl std::fmt::Debug for CameraUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CameraUrl")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("path", &self.path)
            .field(
                "authorization",
                &self.authorization.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// `url` with the password of its `user:password@` part replaced, for messages and logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let user = rest[..at].split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:<redacted>@{}", &rest[at + 1..])
        }
        None => url.to_string(),
    }
}

impl CameraUrl {
    /// Parses and checks a snapshot URL. Only plain `http://`: cameras serve snapshots on the
    /// home network, and most have no certificate a client could check.
    pub fn parse(url: &str) -> Result<Self, DeviceError> {
        let bad = DeviceError::Invalid;
        let shown = redact_url(url);
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            bad(format!(
                "{shown:?} must start with http:// (https cameras are not supported)"
            ))
        })?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad(format!(
                "{shown:?}: the path has spaces or control characters (percent-encode them)"
            )));
        }
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let end = v6
                .find(']')
                .ok_or_else(|| bad(format!("{shown:?}: unclosed [ in the host")))?;
            let port = v6[end + 1..].strip_prefix(':');
            (&v6[..end], port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty()
            || host
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '/')
        {
            return Err(bad(format!("{shown:?} has no usable host")));
        }
        let port = match port {
            None => 80,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|&p| p > 0)
                .ok_or_else(|| bad(format!("{shown:?}: bad port {p:?}")))?,
        };
        let authorization = userinfo.map(|u| format!("Basic {}", base64(u.as_bytes())));
        Ok(CameraUrl {
            host: host.to_string(),
            port,
            path: path.to_string(),
            authorization,
        })
    }

    /// The `Host` header value.
    fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == 80 {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

/// Standard base64 with padding (for a Basic authorization header).
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &b)| acc | (b as u32) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// One GET of the snapshot URL: the body of a 2xx answer, at most `max_bytes`, within
/// `timeout` (connection included).
pub async fn fetch(
    url: &CameraUrl,
    timeout: Duration,
    max_bytes: usize,
) -> Result<Vec<u8>, DeviceError> {
    match tokio::time::timeout(timeout, fetch_unbounded(url, max_bytes)).await {
        Ok(result) => result,
        Err(_) => Err(DeviceError::Camera(format!(
            "no snapshot from {}:{} within {} ms",
            url.host,
            url.port,
            timeout.as_millis()
        ))),
    }
}

async fn fetch_unbounded(url: &CameraUrl, max_bytes: usize) -> Result<Vec<u8>, DeviceError> {
    let stream = tokio::net::TcpStream::connect((url.host.as_str(), url.port))
        .await
        .map_err(|e| {
            DeviceError::Camera(format!("connecting to {}:{}: {e}", url.host, url.port))
        })?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| DeviceError::Camera(format!("HTTP handshake: {e}")))?;
    let driver = tokio::spawn(connection);
    let result = async {
        let mut request = hyper::Request::get(url.path.as_str())
            .header(hyper::header::HOST, url.host_header())
            .header(
                hyper::header::USER_AGENT,
                concat!("edgeclip/", env!("CARGO_PKG_VERSION")),
            )
            .header(hyper::header::ACCEPT, "image/*");
        if let Some(auth) = &url.authorization {
            request = request.header(hyper::header::AUTHORIZATION, auth);
        }
        let request = request
            .body(Empty::<Bytes>::new())
            .map_err(|e| DeviceError::Camera(format!("bad request: {e}")))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| DeviceError::Camera(format!("HTTP request: {e}")))?;
        if !response.status().is_success() {
            return Err(DeviceError::Camera(format!(
                "the camera answered HTTP {}",
                response.status()
            )));
        }
        let announced = response
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if announced.is_some_and(|n| n > max_bytes as u64) {
            return Err(DeviceError::Camera(format!(
                "the snapshot is larger than {max_bytes} bytes"
            )));
        }
        let body = Limited::new(response.into_body(), max_bytes)
            .collect()
            .await
            .map_err(|e| DeviceError::Camera(format!("reading the snapshot: {e}")))?;
        Ok(body.to_bytes().to_vec())
    }
    .await;
    driver.abort();
    result
}

/// The file extension of a picture, from its first bytes; `None` for anything else (an HTML
/// error page answered with 200, a video stream...).
pub fn picture_extension(bytes: &[u8]) -> Option<&'static str> {
    match bytes {
        [0xff, 0xd8, 0xff, ..] => Some("jpg"),
        [0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a, ..] => Some("png"),
        [b'G', b'I', b'F', b'8', b'7' | b'9', b'a', ..] => Some("gif"),
        [b'R', b'I', b'F', b'F', _, _, _, _, b'W', b'E', b'B', b'P', ..] => Some("webp"),
        [b'B', b'M', ..] => Some("bmp"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_urls_parse_with_ports_credentials_and_ipv6() {
        let u = CameraUrl::parse("http://cam.local/snapshot.jpg?ch=1").unwrap();
        assert_eq!(
            (
                u.host.as_str(),
                u.port,
                u.path.as_str(),
                u.authorization.as_deref()
            ),
            ("cam.local", 80, "/snapshot.jpg?ch=1", None::<&str>)
        );
        assert_eq!(u.host_header(), "cam.local");
        let u = CameraUrl::parse("http://admin:secret@10.0.0.5:8080/cgi-bin/snap").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("10.0.0.5", 8080));
        assert_eq!(u.authorization.as_deref(), Some("Basic YWRtaW46c2VjcmV0"));
        assert_eq!(u.host_header(), "10.0.0.5:8080");
        let u = CameraUrl::parse("http://[::1]:81").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.path.as_str()), ("::1", 81, "/"));
        assert_eq!(u.host_header(), "[::1]:81");
        for bad in [
            "https://cam/x",
            "cam/x",
            "http:///x",
            "http://cam:0/",
            "http://cam:99999/",
            "http://cam:x/",
            "http://[::1/",
            "http://cam/a b",
        ] {
            assert!(CameraUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn camera_passwords_never_reach_debug_output_or_errors() {
        let u = CameraUrl::parse("http://admin:s3cret@10.0.0.5/snap").unwrap();
        let shown = format!("{u:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("YWRtaW46czNjcmV0"),
            "{shown}"
        );
        let e = CameraUrl::parse("http://admin:s3cret@cam:99999/")
            .unwrap_err()
            .to_string();
        assert!(
            !e.contains("s3cret") && e.contains("admin:<redacted>@cam:99999"),
            "{e}"
        );
        assert_eq!(redact_url("http://cam/x"), "http://cam/x");
        assert_eq!(
            redact_url("http://u@cam/a@b"),
            "http://u:<redacted>@cam/a@b"
        );
    }

    #[test]
    fn base64_matches_the_rfc_examples() {
        for (raw, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(raw.as_bytes()), encoded);
        }
    }

    #[test]
    fn pictures_are_recognised_by_their_first_bytes() {
        assert_eq!(picture_extension(&[0xff, 0xd8, 0xff, 0xe0, 0]), Some("jpg"));
        assert_eq!(picture_extension(b"\x89PNG\r\n\x1a\n...."), Some("png"));
        assert_eq!(picture_extension(b"GIF89a..."), Some("gif"));
        assert_eq!(picture_extension(b"RIFF\0\0\0\0WEBPVP8 "), Some("webp"));
        assert_eq!(picture_extension(b"BM...."), Some("bmp"));
        assert_eq!(picture_extension(b"<html>error</html>"), None);
        assert_eq!(picture_extension(b""), None);
        assert_eq!(picture_extension(b"RIFF\0\0\0\0AVI "), None);
    }
}
