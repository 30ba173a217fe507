//! Cameras polled for snapshots: the URL, one HTTP GET, frame names, picture sniffing and the
//! near-duplicate rule. The actor (`actors/camera.rs`) only schedules and saves.
//!
//! A frame is kept when its vector differs enough from the camera's last *kept* frame (cosine
//! below the threshold): a static scene keeps one frame, and a slow drift (the light over a
//! day) still adds one whenever it has drifted far enough.

use std::path::Path;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// A camera's snapshot URL, parsed: `http://[user:password@]host[:port]/path`.
#[derive(Debug, Clone, PartialEq, Eq)]
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

impl CameraUrl {
    /// Parses and checks a snapshot URL. Only plain `http://`: cameras serve snapshots on the
    /// home network, and most have no certificate a client could check.
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            format!("{url:?} must start with http:// (https cameras are not supported)")
        })?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "{url:?}: the path has spaces or control characters (percent-encode them)"
            ));
        }
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let end = v6
                .find(']')
                .ok_or_else(|| format!("{url:?}: unclosed [ in the host"))?;
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
            return Err(format!("{url:?} has no usable host"));
        }
        let port = match port {
            None => 80,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|&p| p > 0)
                .ok_or_else(|| format!("{url:?}: bad port {p:?}"))?,
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
) -> Result<Vec<u8>, String> {
    match tokio::time::timeout(timeout, fetch_unbounded(url, max_bytes)).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "no snapshot from {}:{} within {} ms",
            url.host,
            url.port,
            timeout.as_millis()
        )),
    }
}

async fn fetch_unbounded(url: &CameraUrl, max_bytes: usize) -> Result<Vec<u8>, String> {
    let stream = tokio::net::TcpStream::connect((url.host.as_str(), url.port))
        .await
        .map_err(|e| format!("connecting to {}:{}: {e}", url.host, url.port))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
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
            .map_err(|e| format!("bad request: {e}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("HTTP request: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("the camera answered HTTP {}", response.status()));
        }
        let announced = response
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if announced.is_some_and(|n| n > max_bytes as u64) {
            return Err(format!("the snapshot is larger than {max_bytes} bytes"));
        }
        let body = Limited::new(response.into_body(), max_bytes)
            .collect()
            .await
            .map_err(|e| format!("reading the snapshot: {e}"))?;
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

/// A frame's file name (without extension) from its poll time, in UTC:
/// `YYYYMMDD-HHMMSS-mmm`, so names sort by time.
pub fn frame_name(unix_ms: i64) -> String {
    let (days, ms_of_day) = (
        unix_ms.div_euclid(86_400_000),
        unix_ms.rem_euclid(86_400_000),
    );
    let (y, m, d) = civil_from_days(days);
    let s = ms_of_day / 1000;
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}-{:03}",
        s / 3600,
        s / 60 % 60,
        s % 60,
        ms_of_day % 1000
    )
}

/// Length of a [`frame_name`]: `YYYYMMDD-HHMMSS-mmm`.
const FRAME_NAME_LEN: usize = 19;

/// Whether `file` is a frame the camera actor saved: a [`frame_name`], an optional `-n` (two
/// polls in one millisecond), then a picture extension. Nothing else in a camera's folder is
/// ever pruned.
pub fn is_frame_file(file: &str) -> bool {
    let Some((stem, ext)) = file.rsplit_once('.') else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let time = stem.get(..FRAME_NAME_LEN).unwrap_or("");
    let shape = time.len() == FRAME_NAME_LEN
        && digits(&time[..8])
        && &time[8..9] == "-"
        && digits(&time[9..15])
        && &time[15..16] == "-"
        && digits(&time[16..]);
    let rest = &stem[time.len()..];
    shape
        && (rest.is_empty() || rest.strip_prefix('-').is_some_and(digits))
        && ["jpg", "png", "gif", "webp", "bmp"].contains(&ext)
}

/// The frames of one camera's folder to delete, given its file names: every frame polled
/// before `cutoff_ms` (when set), then the oldest beyond the newest `keep` (when set). Frame
/// names sort by poll time, so no file is read; files that are not frames are never chosen.
pub fn frames_to_prune(
    names: impl IntoIterator<Item = String>,
    cutoff_ms: Option<i64>,
    keep: Option<usize>,
) -> Vec<String> {
    let mut frames: Vec<String> = names.into_iter().filter(|n| is_frame_file(n)).collect();
    frames.sort_unstable();
    let cutoff = cutoff_ms.map(frame_name);
    let too_old = cutoff.map_or(0, |c| frames.partition_point(|f| f[..FRAME_NAME_LEN] < *c));
    let too_many = keep.map_or(0, |k| frames.len().saturating_sub(k));
    frames.truncate(too_old.max(too_many));
    frames
}

/// Deletes the frames of `folder` that [`frames_to_prune`] chooses among those named before
/// `before` (a frame file name; all frames when `None`). Only names are listed: cheap at every
/// poll even with tens of thousands of frames. Returns how many were deleted and what failed
/// (a frame already gone is not a failure).
pub fn prune_frames(
    folder: &Path,
    before: Option<&str>,
    cutoff_ms: Option<i64>,
    keep: Option<usize>,
) -> (usize, Vec<String>) {
    if cutoff_ms.is_none() && keep.is_none() {
        return (0, Vec::new());
    }
    let names: Vec<String> = match std::fs::read_dir(folder) {
        Ok(dir) => dir
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| before.is_none_or(|b| n.as_str() < b))
            .collect(),
        Err(e) => return (0, vec![format!("listing {}: {e}", folder.display())]),
    };
    let (mut deleted, mut problems) = (0, Vec::new());
    for frame in frames_to_prune(names, cutoff_ms, keep) {
        match std::fs::remove_file(folder.join(&frame)) {
            Ok(()) => deleted += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => problems.push(format!("deleting {frame}: {e}")),
        }
    }
    (deleted, problems)
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Whether a frame is a near-duplicate of the last kept one: the cosine of their unit vectors
/// is at least `threshold`. Vectors of different lengths are never duplicates.
pub fn near_duplicate(last_kept: &[f32], frame: &[f32], threshold: f32) -> bool {
    last_kept.len() == frame.len() && crate::rank::dot(last_kept, frame) >= threshold
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_frame_files_are_pruned_oldest_first_by_age_and_count() {
        let day = 86_400_000i64;
        let t0 = 1_700_000_000_000i64;
        let frames: Vec<String> = (0..5)
            .map(|i| format!("{}.jpg", frame_name(t0 + i * day)))
            .collect();
        let mut names = frames.clone();
        names.extend(
            [
                "holiday.jpg",
                "notes.txt",
                ".frame.part",
                "20231114-221320-000.txt",
                "2023111-221320-000.jpg",
            ]
            .map(String::from),
        );
        names.push(format!("{}-1.png", frame_name(t0)));
        assert!(
            names[..5].iter().all(|n| is_frame_file(n)) && is_frame_file(names.last().unwrap())
        );
        assert!(!names[5..10].iter().any(|n| is_frame_file(n)), "{names:?}");
        // Nothing to do without limits.
        assert!(frames_to_prune(names.clone(), None, None).is_empty());
        // By age: frames polled before day 2.
        let old = frames_to_prune(names.clone(), Some(t0 + 2 * day), None);
        assert_eq!(
            old,
            vec![
                format!("{}-1.png", frame_name(t0)),
                frames[0].clone(),
                frames[1].clone()
            ]
        );
        // By count: the newest 2 stay.
        let many = frames_to_prune(names.clone(), None, Some(2));
        assert_eq!(many.len(), 4);
        assert!(!many.contains(&frames[3]) && !many.contains(&frames[4]));
        // Both: whichever removes more.
        assert_eq!(
            frames_to_prune(names.clone(), Some(t0 + 4 * day), Some(3)).len(),
            5
        );
        assert_eq!(
            frames_to_prune(names.clone(), Some(t0 + day), Some(5)).len(),
            2
        );
        // Keeping none deletes every frame, and only frames.
        assert_eq!(frames_to_prune(names, None, Some(0)).len(), 6);
    }

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

    #[test]
    fn frame_names_are_utc_times_that_sort() {
        assert_eq!(frame_name(0), "19700101-000000-000");
        assert_eq!(frame_name(1_709_210_096_789), "20240229-123456-789");
        assert_eq!(frame_name(-1), "19691231-235959-999");
        assert!(frame_name(1_709_210_096_789) < frame_name(1_709_210_097_000));
    }

    #[test]
    fn near_duplicates_are_at_or_above_the_threshold() {
        let a = [1.0, 0.0];
        assert!(near_duplicate(&a, &[1.0, 0.0], 0.98));
        assert!(near_duplicate(&a, &[0.99, 0.141], 0.98));
        assert!(!near_duplicate(&a, &[0.8, 0.6], 0.98));
        assert!(!near_duplicate(&a, &[1.0, 0.0, 0.0], 0.5));
    }
}
