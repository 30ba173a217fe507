//! The settings of `edgeclip up`, which runs a device and a cloud worker in one process: one
//! `--config` file and one environment for both sides, each setting given to the side that
//! has it.
//!
//! The layers, for each side, lowest first: the side's built-in defaults
//! (`device/config/default.toml`, `cloud/config/default.toml`), what `up` itself chooses (the
//! bundled model and sample pictures, the search page's address), the `--config` file, the
//! `EDGECLIP_*` environment, then `up`'s flags (`--model`, `--photos`, ...) and the embedded
//! broker's address, which both sides must use.
//!
//! In the file, `[device]` and `[cloud]` hold one side's settings, laid out as that side's own
//! configuration file (`[device.encoder] batch = 1`); any other key is routed like an
//! environment variable. `EDGECLIP_DEVICE__<KEY>` and `EDGECLIP_CLOUD__<KEY>` set one side;
//! `EDGECLIP_<KEY>` sets every side that has the setting (`EDGECLIP_ENCODER__BATCH` only the
//! device, `EDGECLIP_BROKER__PASSWORD` both). A setting neither side has goes to both, whose
//! own checks then name it.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::Context;
use config::{Config, Environment, File, FileFormat, Map, Value, ValueKind};
use edgeclip_cloud::CloudConfig;
use edgeclip_device::DeviceConfig;

/// Environment variables of edgeclip start with this.
const PREFIX: &str = "EDGECLIP_";

/// Device settings that have no entry in the device's defaults (a list of tables, empty by
/// default), so that they are routed to the device all the same.
const DEVICE_KEYS_WITHOUT_DEFAULT: &[&str] = &["cameras"];

/// Device keys whose environment value is a comma-separated list (as the device reads them).
const DEVICE_LIST_KEYS: &[&str] = &["folders", "encoder.extensions"];

/// Which side a setting goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Device,
    Cloud,
}

/// One side's layers above its defaults.
#[derive(Default)]
struct Layers {
    /// What `up` chooses when nothing else does.
    chosen: Vec<(String, Value)>,
    /// The file's settings for this side (dotted key, value).
    file: Vec<(String, Value)>,
    /// The environment variables for this side, named as the side itself would read them.
    env: Map<String, String>,
    /// `up`'s flags and the broker's address.
    forced: Vec<(String, Value)>,
}

/// What `up` gives both sides: its own choices and its flags.
pub struct Given<'a> {
    /// The `--config` file.
    pub file: Option<&'a Path>,
    /// The environment (name, value); `up` passes the process's.
    pub env: Vec<(String, String)>,
    /// Device settings `up` chooses unless the file or the environment set them.
    pub device_chosen: Vec<(&'a str, Value)>,
    /// Cloud settings `up` chooses unless the file or the environment set them.
    pub cloud_chosen: Vec<(&'a str, Value)>,
    /// Device settings from `up`'s flags, above everything.
    pub device_forced: Vec<(&'a str, Value)>,
    /// Cloud settings from `up`'s flags, above everything.
    pub cloud_forced: Vec<(&'a str, Value)>,
}

/// The dotted keys of every setting in a defaults file (tables walked, lists as one key).
fn keys_of(defaults: &str) -> anyhow::Result<BTreeSet<String>> {
    let table = Config::builder()
        .add_source(File::from_str(defaults, FileFormat::Toml))
        .build()?
        .cache
        .into_table()?;
    let mut keys = BTreeSet::new();
    for (key, value) in table {
        leaves(&key, value, &mut |k, _| {
            keys.insert(k);
        });
    }
    Ok(keys)
}

/// Calls `each` with every leaf under `value` (a table is walked; anything else is a leaf),
/// named by its dotted path from `key`.
fn leaves(key: &str, value: Value, each: &mut dyn FnMut(String, Value)) {
    match value.kind {
        ValueKind::Table(table) => {
            for (k, v) in table {
                leaves(&format!("{key}.{k}"), v, each);
            }
        }
        _ => each(key.to_string(), value),
    }
}

/// Routes settings to the sides.
struct Router {
    device: BTreeSet<String>,
    cloud: BTreeSet<String>,
}

impl Router {
    fn new() -> anyhow::Result<Self> {
        let mut device = keys_of(edgeclip_device::config::DEFAULTS)?;
        device.extend(DEVICE_KEYS_WITHOUT_DEFAULT.iter().map(|k| k.to_string()));
        Ok(Self {
            device,
            cloud: keys_of(edgeclip_cloud::config::DEFAULTS)?,
        })
    }

    fn has(&self, side: Side, key: &str) -> bool {
        let keys = match side {
            Side::Device => &self.device,
            Side::Cloud => &self.cloud,
        };
        // A list of tables is one setting: `cameras` holds `cameras.0.name`'s key too.
        keys.contains(key)
            || keys
                .iter()
                .any(|k| key.starts_with(k.as_str()) && key[k.len()..].starts_with('.'))
    }

    /// The sides a key without `device.`/`cloud.` goes to: each that has it; both when
    /// neither does (their checks then name it).
    fn sides(&self, key: &str) -> Vec<Side> {
        let sides: Vec<Side> = [Side::Device, Side::Cloud]
            .into_iter()
            .filter(|&s| self.has(s, key))
            .collect();
        if sides.is_empty() {
            vec![Side::Device, Side::Cloud]
        } else {
            sides
        }
    }

    /// The side named by a key's first part, and the rest of the key.
    fn named(key: &str) -> Option<(Side, &str)> {
        if let Some(rest) = key.strip_prefix("device.") {
            Some((Side::Device, rest))
        } else {
            key.strip_prefix("cloud.").map(|rest| (Side::Cloud, rest))
        }
    }
}

/// Reads the `--config` file (TOML, whatever its name) into the sides' layers.
fn read_file(
    path: &Path,
    router: &Router,
    device: &mut Layers,
    cloud: &mut Layers,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        path.is_file(),
        "config file {} does not exist",
        path.display()
    );
    let table = Config::builder()
        .add_source(File::from(path).format(FileFormat::Toml))
        .build()
        .with_context(|| format!("config file {}", path.display()))?
        .cache
        .into_table()?;
    let mut each = |key: String, value: Value| {
        let (sides, key) = match Router::named(&key) {
            Some((side, rest)) => (vec![side], rest.to_string()),
            None => (router.sides(&key), key),
        };
        for side in sides {
            let layers = match side {
                Side::Device => &mut *device,
                Side::Cloud => &mut *cloud,
            };
            layers.file.push((key.clone(), value.clone()));
        }
    };
    for (key, value) in table {
        leaves(&key, value, &mut each);
    }
    Ok(())
}

/// Splits the `EDGECLIP_*` environment between the sides.
/// A variable that names its side wins over one that does not, whatever their order.
fn read_env(env: &[(String, String)], router: &Router, device: &mut Layers, cloud: &mut Layers) {
    let mut routed: Vec<(bool, Vec<Side>, &str, &str)> = Vec::new();
    for (name, value) in env {
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let key = rest.to_ascii_lowercase().replace("__", ".");
        routed.push(match Router::named(&key) {
            Some((side, _)) => (true, vec![side], &rest[side_prefix(side).len()..], value),
            None => (false, router.sides(&key), rest, value),
        });
    }
    routed.sort_by_key(|(named, ..)| *named);
    for (_, sides, rest, value) in routed {
        for side in sides {
            let layers = match side {
                Side::Device => &mut *device,
                Side::Cloud => &mut *cloud,
            };
            layers
                .env
                .insert(format!("{PREFIX}{rest}"), value.to_string());
        }
    }
}

/// `DEVICE__` or `CLOUD__`, as the side's environment variables spell it.
fn side_prefix(side: Side) -> &'static str {
    match side {
        Side::Device => "DEVICE__",
        Side::Cloud => "CLOUD__",
    }
}

/// One side's configuration from its defaults and its layers.
fn build<T: serde::de::DeserializeOwned>(
    defaults: &str,
    layers: Layers,
    list_keys: &[&str],
) -> anyhow::Result<T> {
    let layer = |pairs: Vec<(String, Value)>| -> anyhow::Result<Config> {
        let mut b = Config::builder();
        for (k, v) in pairs {
            b = b.set_override(k, v)?;
        }
        Ok(b.build()?)
    };
    let mut env = Environment::with_prefix("EDGECLIP")
        .prefix_separator("_")
        .separator("__")
        .try_parsing(true)
        .source(Some(layers.env));
    if !list_keys.is_empty() {
        env = env.list_separator(",");
        for key in list_keys {
            env = env.with_list_parse_key(key);
        }
    }
    let mut builder = Config::builder()
        .add_source(File::from_str(defaults, FileFormat::Toml))
        .add_source(layer(layers.chosen)?)
        .add_source(layer(layers.file)?)
        .add_source(env);
    for (k, v) in layers.forced {
        builder = builder.set_override(k, v)?;
    }
    Ok(builder.build()?.try_deserialize()?)
}

/// Both sides' configurations, validated.
pub fn load(given: Given<'_>) -> anyhow::Result<(DeviceConfig, CloudConfig)> {
    let router = Router::new()?;
    let owned = |pairs: Vec<(&str, Value)>| -> Vec<(String, Value)> {
        pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    };
    let mut device = Layers {
        chosen: owned(given.device_chosen),
        forced: owned(given.device_forced),
        ..Layers::default()
    };
    let mut cloud = Layers {
        chosen: owned(given.cloud_chosen),
        forced: owned(given.cloud_forced),
        ..Layers::default()
    };
    let from = given
        .file
        .map(|f| format!(" (defaults, {}, environment)", f.display()))
        .unwrap_or_default();
    if let Some(file) = given.file {
        read_file(file, &router, &mut device, &mut cloud)?;
    }
    read_env(&given.env, &router, &mut device, &mut cloud);
    let device: DeviceConfig = build(edgeclip_device::config::DEFAULTS, device, DEVICE_LIST_KEYS)
        .with_context(|| format!("device configuration{from}"))?;
    let device = device
        .validated()
        .with_context(|| format!("device configuration{from}"))?;
    let cloud: CloudConfig = build(edgeclip_cloud::config::DEFAULTS, cloud, &[])
        .with_context(|| format!("cloud configuration{from}"))?;
    let cloud = cloud
        .validated()
        .with_context(|| format!("cloud configuration{from}"))?;
    Ok((device, cloud))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn given<'a>(file: Option<&'a Path>, env: &[(&str, &str)]) -> Given<'a> {
        Given {
            file,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            device_chosen: vec![("model.dir", "chosen-model".into())],
            cloud_chosen: vec![("model.dir", "chosen-model".into())],
            device_forced: vec![("broker.url", "mqtt://127.0.0.1:18830".into())],
            cloud_forced: vec![("broker.url", "mqtt://127.0.0.1:18830".into())],
        }
    }

    #[test]
    fn an_environment_setting_of_one_side_goes_to_that_side_only() {
        let (device, cloud) = load(given(
            None,
            &[
                ("EDGECLIP_ENCODER__BATCH", "1"),
                ("EDGECLIP_BROKER__KEEP_ALIVE_S", "17"),
                ("EDGECLIP_CLOUD__ENCODER__WORKERS", "3"),
                ("EDGECLIP_DEVICE__ENCODER__WORKERS", "2"),
                // A variable naming its side wins over one that does not, in any order.
                ("EDGECLIP_ENCODER__WORKERS", "5"),
                ("EDGECLIP_FOLDERS", "/a,/b"),
                ("EDGECLIP_LIMITS__BURST", "7"),
                ("PATH", "/usr/bin"),
            ],
        ))
        .unwrap();
        assert_eq!(device.encoder.batch, 1);
        assert_eq!(
            (device.broker.keep_alive_s, cloud.broker.keep_alive_s),
            (17, 17)
        );
        assert_eq!((device.encoder.workers, cloud.encoder.workers), (2, 3));
        assert_eq!(
            device.folders,
            vec![std::path::PathBuf::from("/a"), "/b".into()]
        );
        assert_eq!(cloud.limits.burst, 7);
        assert_eq!(device.model.dir, Path::new("chosen-model"));
        assert_eq!(device.broker.url, "mqtt://127.0.0.1:18830");
    }

    #[test]
    fn one_file_holds_both_sides_and_the_environment_and_flags_win_over_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("edgeclip.toml");
        std::fs::write(
            &file,
            r#"
[model]
dir = "from-file"

[broker]
url = "mqtt://10.0.0.9:1883"

[device]
device_id = "kitchen"

[device.encoder]
batch = 1
workers = 1

[cloud.encoder]
workers = 4

[search]
default_k = 7
"#,
        )
        .unwrap();
        let (device, cloud) = load(given(
            Some(&file),
            &[("EDGECLIP_DEVICE__ENCODER__WORKERS", "2")],
        ))
        .unwrap();
        assert_eq!(device.device_id, "kitchen");
        assert_eq!((device.encoder.batch, device.encoder.workers), (1, 2));
        assert_eq!(cloud.encoder.workers, 4);
        assert_eq!(device.search.default_k, 7);
        // The file wins over what up chooses; the embedded broker's address over the file.
        assert_eq!(device.model.dir, Path::new("from-file"));
        assert_eq!(cloud.model.dir, Path::new("from-file"));
        assert_eq!(device.broker.url, "mqtt://127.0.0.1:18830");
    }

    #[test]
    fn a_setting_neither_side_has_is_named() {
        let err = load(given(None, &[("EDGECLIP_ENCODER__BATCHES", "1")])).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("batches"), "{msg}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("edgeclip.toml");
        std::fs::write(&file, "[device.encoder]\nbatch = 65\n").unwrap();
        let msg = format!("{:#}", load(given(Some(&file), &[])).unwrap_err());
        assert!(
            msg.contains("encoder.batch") && msg.contains("edgeclip.toml"),
            "{msg}"
        );
        let missing = dir.path().join("missing.toml");
        let msg = format!("{:#}", load(given(Some(&missing), &[])).unwrap_err());
        assert!(msg.contains("missing.toml"), "{msg}");
    }
}
