//! Device configuration: built-in defaults, then a file, then `EDGECLIP_*` environment
//! variables, then command-line overrides; validated once at start.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::DeviceError;

/// The built-in defaults, documented.
pub const DEFAULTS: &str = include_str!("../config/default.toml");

/// The whole device configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// Id in topic names; empty means the host name.
    pub device_id: String,
    /// Folders indexed recursively.
    pub folders: Vec<PathBuf>,
    /// State folder.
    pub state_dir: PathBuf,
    /// Model folder.
    pub model: ModelConfig,
    /// Broker connection.
    pub broker: edgeclip_link::BrokerConfig,
    /// Image encoding.
    pub encoder: EncoderConfig,
    /// Folder scanning.
    pub capture: CaptureConfig,
    /// Search handling.
    pub search: SearchConfig,
    /// Status publishing.
    pub status: StatusConfig,
    /// The HTTP endpoint (thumbnails and the search page).
    pub http: HttpConfig,
    /// Home Assistant MQTT discovery.
    pub homeassistant: HomeAssistantConfig,
    /// Cameras polled for snapshots (`[[cameras]]`).
    #[serde(default)]
    pub cameras: Vec<CameraConfig>,
}

/// One `[[cameras]]` entry: a camera's HTTP snapshot URL polled at an interval. Its `Debug`
/// shows the URL without its password.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraConfig {
    /// Name, and the source id of its frames (letters, digits, '.', '_', '-').
    pub name: String,
    /// Snapshot URL: `http://[user:password@]host[:port]/path`.
    pub url: String,
    /// Time between polls.
    #[serde(default = "CameraConfig::default_interval_ms")]
    pub interval_ms: u64,
    /// Where frames are kept; empty: `<state_dir>/cameras/<name>`.
    #[serde(default)]
    pub folder: PathBuf,
    /// A frame whose cosine with the camera's last kept frame is at least this is deleted.
    #[serde(default = "CameraConfig::default_duplicate_threshold")]
    pub duplicate_threshold: f32,
    /// Longest a poll may take, connection included.
    #[serde(default = "CameraConfig::default_timeout_ms")]
    pub timeout_ms: u64,
    /// Largest snapshot accepted, MiB.
    #[serde(default = "CameraConfig::default_max_frame_mib")]
    pub max_frame_mib: u64,
    /// Frames polled longer ago than this many days are deleted; 0 keeps them for ever.
    #[serde(default = "CameraConfig::default_keep_days")]
    pub keep_days: u32,
    /// At most this many frames are kept, the oldest deleted first; 0: no count limit.
    #[serde(default = "CameraConfig::default_keep_frames")]
    pub keep_frames: usize,
}

impl std::fmt::Debug for CameraConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CameraConfig")
            .field("name", &self.name)
            .field("url", &crate::camera::redact_url(&self.url))
            .field("interval_ms", &self.interval_ms)
            .field("folder", &self.folder)
            .field("duplicate_threshold", &self.duplicate_threshold)
            .field("timeout_ms", &self.timeout_ms)
            .field("max_frame_mib", &self.max_frame_mib)
            .field("keep_days", &self.keep_days)
            .field("keep_frames", &self.keep_frames)
            .finish()
    }
}

impl CameraConfig {
    /// 10 s: a scene worth searching changes on that scale, and a Pi encodes a frame in well
    /// under a second.
    pub fn default_interval_ms() -> u64 {
        10_000
    }
    /// 0.98: frames of a static scene (sensor noise, compression) score above 0.99 with CLIP
    /// models; a person entering the picture drops well below.
    pub fn default_duplicate_threshold() -> f32 {
        0.98
    }
    /// 5 s: a snapshot on the LAN takes milliseconds; a camera that slow is failing.
    pub fn default_timeout_ms() -> u64 {
        5000
    }
    /// 16 MiB: a 12-megapixel JPEG is ~5 MiB.
    pub fn default_max_frame_mib() -> u64 {
        16
    }
    /// 30 days: a month of history to search, as camera recorders usually keep.
    pub fn default_keep_days() -> u32 {
        30
    }
    /// 10,000 frames: ~2 GB at ~200 KB a snapshot, whatever the scene does; a busy scene
    /// polled every 10 s keeps about a day of frames.
    pub fn default_keep_frames() -> usize {
        10_000
    }
}

/// `[homeassistant]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HomeAssistantConfig {
    /// Publish discovery configs.
    pub discovery: bool,
    /// Discovery prefix.
    pub prefix: String,
    /// Publish the best match's thumbnail bytes on the broker.
    pub image_bytes: bool,
}

/// `[http]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Serve thumbnails and the search page.
    pub enabled: bool,
    /// `lan` or an IP address.
    pub bind: String,
    /// Port (0: any free one).
    pub port: u16,
    /// Base URL dashboards use; empty: derived from the bound address.
    pub public_url: String,
    /// Longest side of thumbnails.
    pub thumb_side: u32,
    /// Thumbnail cache folder, relative to `state_dir`.
    pub cache_dir: PathBuf,
}

/// `[model]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Model folder.
    pub dir: PathBuf,
    /// Model id override.
    pub id: String,
}

/// `[encoder]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncoderConfig {
    /// Concurrent encodings; 0 means one per core.
    pub workers: usize,
    /// Pictures per run of the image tower; 0 measures at start which batch is fastest.
    pub batch: usize,
    /// Largest width or height decoded.
    pub max_side: u32,
    /// Largest decoder allocation, MiB.
    pub max_alloc_mib: u64,
    /// Largest picture file read, MiB.
    pub max_file_mib: u64,
    /// Picture file extensions.
    pub extensions: Vec<String>,
    /// Scheduling of the encoder threads: `low` (nice 10), `idle` (SCHED_IDLE) or `normal`.
    pub priority: crate::workers::Priority,
}

/// `[capture]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureConfig {
    /// Seconds between full rescans; 0: none besides the first and those events trigger.
    pub rescan_s: u64,
    /// Watch the folders for changes.
    pub watch: bool,
    /// Delay between a file-system event and the scan it triggers.
    pub debounce_ms: u64,
    /// Files modified more recently than this are read at a later scan.
    pub settle_ms: u64,
}

/// `[search]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchConfig {
    /// Wait for the cloud's vector.
    pub cloud_timeout_ms: u64,
    /// Send an unanswered request once more after this long; 0 never.
    pub cloud_retry_ms: u64,
    /// Default hits.
    pub default_k: usize,
    /// Most hits.
    pub max_k: usize,
    /// Longest text.
    pub max_text_bytes: usize,
    /// Who ranks when a search does not say: `device` (method A) or `server` (method B).
    pub mode: edgeclip_messages::dashboard::SearchMode,
    /// Whether a search may ask for `"mode": "server"` when `mode` is `device`: such a search
    /// sends every picture vector to the broker and the cloud, so it is off unless the owner
    /// turns it on.
    #[serde(default)]
    pub allow_server_mode: bool,
    /// Vectors per chunk of a server-ranked search.
    pub server_chunk_vectors: usize,
    /// Most vectors one server-ranked search may send.
    pub max_server_vectors: usize,
    /// Most pictures a near-duplicate search compares pairwise.
    pub max_duplicate_pictures: usize,
    /// How the index keeps vectors in memory for ranking.
    pub vectors: crate::index::Precision,
    /// Most threads one search ranks on; 0 means one per core.
    pub threads: usize,
}

/// `[status]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusConfig {
    /// Least time between status messages.
    pub interval_ms: u64,
}

impl DeviceConfig {
    /// Layers defaults, the optional file, the environment and `overrides` (key, value), then
    /// validates. Keys are dotted paths such as `broker.url`.
    pub fn load(
        file: Option<&Path>,
        overrides: &[(&str, config::Value)],
    ) -> Result<Self, DeviceError> {
        let cfg: Self = edgeclip_link::settings::load_layered(
            DEFAULTS,
            file,
            &["folders", "encoder.extensions"],
            overrides,
        )
        .map_err(DeviceError::Config)?;
        cfg.validated()
    }

    /// Fills derived defaults (device id, client id, workers) and checks every value.
    pub fn validated(mut self) -> Result<Self, DeviceError> {
        let bad = |m: String| Err(DeviceError::Config(m));
        if self.device_id.is_empty() {
            self.device_id = host_device_id();
        }
        edgeclip_messages::topics::validate_device_id(&self.device_id)
            .map_err(|e| DeviceError::Config(format!("device_id {:?}: {e}", self.device_id)))?;
        let client_id = format!("edgeclip-device-{}", self.device_id);
        self.broker
            .validate(client_id)
            .map_err(|e| DeviceError::Config(e.to_string()))?;
        if self.encoder.workers == 0 {
            self.encoder.workers = std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1);
        }
        if self.search.threads == 0 {
            self.search.threads = std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1);
        }
        if self.search.threads > 64 {
            return bad(format!(
                "search.threads = {} is more than 64",
                self.search.threads
            ));
        }
        if self.encoder.workers > 64 {
            return bad(format!(
                "encoder.workers = {} is more than 64",
                self.encoder.workers
            ));
        }
        if self.encoder.batch > 64 {
            return bad(format!(
                "encoder.batch = {} is more than 64",
                self.encoder.batch
            ));
        }
        if self.encoder.max_side < 16 {
            return bad("encoder.max_side must be at least 16".into());
        }
        if self.encoder.extensions.is_empty() {
            return bad("encoder.extensions must not be empty".into());
        }
        for e in &mut self.encoder.extensions {
            *e = e.trim_start_matches('.').to_ascii_lowercase();
        }
        if self.search.cloud_timeout_ms == 0 || self.search.cloud_timeout_ms > 600_000 {
            return bad("search.cloud_timeout_ms must be in 1..=600000".into());
        }
        if self.search.default_k == 0
            || self.search.max_k == 0
            || self.search.default_k > self.search.max_k
        {
            return bad(
                "search.default_k and search.max_k must be >= 1 with default_k <= max_k".into(),
            );
        }
        if self.search.server_chunk_vectors == 0 {
            return bad("search.server_chunk_vectors must be >= 1".into());
        }
        if self.search.max_duplicate_pictures < 2 || self.search.max_duplicate_pictures > 1_000_000
        {
            return bad("search.max_duplicate_pictures must be in 2..=1000000".into());
        }
        if self.search.max_text_bytes == 0 {
            return bad("search.max_text_bytes must be >= 1".into());
        }
        if self.http.bind != "lan" && self.http.bind.parse::<std::net::IpAddr>().is_err() {
            return bad(format!(
                "http.bind = {:?} is neither \"lan\" nor an IP address",
                self.http.bind
            ));
        }
        if !(16..=2048).contains(&self.http.thumb_side) {
            return bad("http.thumb_side must be in 16..=2048".into());
        }
        if !self.http.public_url.is_empty()
            && !self.http.public_url.starts_with("http://")
            && !self.http.public_url.starts_with("https://")
        {
            return bad("http.public_url must start with http:// or https://".into());
        }
        self.http.public_url = self.http.public_url.trim_end_matches('/').to_string();
        let prefix = &self.homeassistant.prefix;
        if prefix.is_empty()
            || prefix.contains(['+', '#', '\0'])
            || prefix.starts_with('/')
            || prefix.ends_with('/')
        {
            return bad(format!("homeassistant.prefix = {prefix:?} must be a concrete topic without leading or trailing '/'"));
        }
        self.http.cache_dir = self.state_dir.join(&self.http.cache_dir);
        let mut names = std::collections::HashSet::new();
        for cam in &mut self.cameras {
            edgeclip_messages::topics::validate_device_id(&cam.name)
                .map_err(|e| DeviceError::Config(format!("cameras: name {:?}: {e}", cam.name)))?;
            if !names.insert(cam.name.clone()) {
                return bad(format!("cameras: two cameras are named {:?}", cam.name));
            }
            crate::camera::CameraUrl::parse(&cam.url)
                .map_err(|e| DeviceError::Config(format!("cameras.{}.url: {e}", cam.name)))?;
            if cam.interval_ms < 100 {
                return bad(format!(
                    "cameras.{}.interval_ms must be at least 100",
                    cam.name
                ));
            }
            if !(cam.duplicate_threshold > 0.0 && cam.duplicate_threshold <= 1.0) {
                return bad(format!(
                    "cameras.{}.duplicate_threshold must be in (0, 1]",
                    cam.name
                ));
            }
            if !(1..=600_000).contains(&cam.timeout_ms) {
                return bad(format!(
                    "cameras.{}.timeout_ms must be in 1..=600000",
                    cam.name
                ));
            }
            if !(1..=1024).contains(&cam.max_frame_mib) {
                return bad(format!(
                    "cameras.{}.max_frame_mib must be in 1..=1024",
                    cam.name
                ));
            }
            if cam.folder.as_os_str().is_empty() {
                cam.folder = self.state_dir.join("cameras").join(&cam.name);
            }
        }
        Ok(self)
    }

    /// The search timeout.
    pub fn cloud_timeout(&self) -> Duration {
        Duration::from_millis(self.search.cloud_timeout_ms)
    }

    /// When an unanswered request is sent again: only if before the timeout.
    pub fn cloud_retry(&self) -> Option<Duration> {
        let retry = self.search.cloud_retry_ms;
        (retry > 0 && retry < self.search.cloud_timeout_ms).then(|| Duration::from_millis(retry))
    }
}

/// The host name, reduced to the characters a device id may hold.
pub fn host_device_id() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default();
    let id: String = raw
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    if id.is_empty() || id == "cloud" {
        "edgeclip".into()
    } else {
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_and_validate() {
        let cfg = DeviceConfig::load(None, &[("device_id", "nas".into())]).unwrap();
        assert_eq!(cfg.device_id, "nas");
        assert_eq!(cfg.broker.client_id, "edgeclip-device-nas");
        assert!(cfg.encoder.workers >= 1);
        assert_eq!(cfg.search.default_k, 10);
        assert!(cfg.http.enabled && cfg.http.bind == "lan");
        assert_eq!(cfg.http.cache_dir, cfg.state_dir.join("thumbs"));
    }

    #[test]
    fn a_request_is_retried_once_only_before_the_timeout() {
        let load = |retry: u64, timeout: u64| {
            DeviceConfig::load(
                None,
                &[
                    ("device_id", "nas".into()),
                    ("search.cloud_retry_ms", retry.into()),
                    ("search.cloud_timeout_ms", timeout.into()),
                ],
            )
            .unwrap()
        };
        assert_eq!(
            DeviceConfig::load(None, &[("device_id", "nas".into())])
                .unwrap()
                .cloud_retry(),
            Some(Duration::from_millis(2000))
        );
        assert_eq!(
            load(1000, 3000).cloud_retry(),
            Some(Duration::from_millis(1000))
        );
        assert_eq!(load(3000, 3000).cloud_retry(), None);
        assert_eq!(load(0, 3000).cloud_retry(), None);
    }

    #[test]
    fn a_file_overrides_defaults_and_bad_values_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("device.toml");
        std::fs::write(
            &file,
            "device_id = \"cam\"\n[search]\ncloud_timeout_ms = 1234\n",
        )
        .unwrap();
        let cfg = DeviceConfig::load(Some(&file), &[]).unwrap();
        assert_eq!(
            (cfg.device_id.as_str(), cfg.search.cloud_timeout_ms),
            ("cam", 1234)
        );
        std::fs::write(&file, "[search]\ndefault_k = 0\n").unwrap();
        let err = DeviceConfig::load(Some(&file), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("default_k"), "{err}");
        std::fs::write(&file, "[search]\nno_such_key = 1\n").unwrap();
        assert!(DeviceConfig::load(Some(&file), &[]).is_err());
        let err = DeviceConfig::load(Some(&file.with_extension("missing")), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not exist"), "{err}");
        let err = DeviceConfig::load(None, &[("device_id", "a/b".into())])
            .unwrap_err()
            .to_string();
        assert!(err.contains("device_id"), "{err}");
        let err = DeviceConfig::load(None, &[("http.bind", "everywhere".into())])
            .unwrap_err()
            .to_string();
        assert!(err.contains("http.bind"), "{err}");
        let err = DeviceConfig::load(None, &[("broker.url", "http://x".into())])
            .unwrap_err()
            .to_string();
        assert!(err.contains("mqtt://"), "{err}");
    }

    #[test]
    fn cameras_get_defaults_and_bad_ones_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("device.toml");
        std::fs::write(&file, "device_id = \"nas\"\nstate_dir = \"/var/lib/edgeclip\"\n[[cameras]]\nname = \"door\"\nurl = \"http://10.0.0.5/snap.jpg\"\n[[cameras]]\nname = \"yard\"\nurl = \"http://u:p@yard:8080/s\"\ninterval_ms = 500\nfolder = \"/srv/yard\"\nduplicate_threshold = 0.9\n").unwrap();
        let cfg = DeviceConfig::load(Some(&file), &[]).unwrap();
        assert_eq!(cfg.cameras.len(), 2);
        let shown = format!("{:?}", cfg.cameras[1]);
        assert!(
            shown.contains("u:<redacted>@yard") && !shown.contains("u:p@"),
            "{shown}"
        );
        let door = &cfg.cameras[0];
        assert_eq!(
            (
                door.interval_ms,
                door.duplicate_threshold,
                door.folder.as_path()
            ),
            (10_000, 0.98, Path::new("/var/lib/edgeclip/cameras/door"))
        );
        assert_eq!(
            (cfg.cameras[1].interval_ms, cfg.cameras[1].folder.as_path()),
            (500, Path::new("/srv/yard"))
        );
        assert!(DeviceConfig::load(None, &[]).unwrap().cameras.is_empty());
        for (bad, named) in [
            ("name = \"a/b\"\nurl = \"http://x/\"", "name"),
            ("name = \"c\"\nurl = \"https://x/\"", "url"),
            (
                "name = \"c\"\nurl = \"http://x/\"\ninterval_ms = 5",
                "interval_ms",
            ),
            (
                "name = \"c\"\nurl = \"http://x/\"\nduplicate_threshold = 1.5",
                "duplicate_threshold",
            ),
            ("name = \"c\"\nurl = \"http://x/\"\nwhat = 1", "what"),
        ] {
            std::fs::write(&file, format!("[[cameras]]\n{bad}\n")).unwrap();
            let err = DeviceConfig::load(Some(&file), &[("device_id", "nas".into())])
                .unwrap_err()
                .to_string();
            assert!(err.contains(named), "{bad}: {err}");
        }
        std::fs::write(&file, "[[cameras]]\nname = \"c\"\nurl = \"http://x/\"\n[[cameras]]\nname = \"c\"\nurl = \"http://y/\"\n").unwrap();
        assert!(
            DeviceConfig::load(Some(&file), &[("device_id", "nas".into())])
                .unwrap_err()
                .to_string()
                .contains("two cameras")
        );
    }
}
