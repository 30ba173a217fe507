//! Layered configuration, the same for every edgeclip program: built-in defaults, then the
//! `--config` file, then `EDGECLIP_*` environment variables (`__` between sections), then
//! command-line overrides. Each program validates the result itself.

use std::path::Path;

use serde::de::DeserializeOwned;

/// Loads `T` from the layers. `list_keys` are the keys whose environment values are
/// comma-separated lists; `overrides` are (dotted key, value) pairs.
pub fn load_layered<T: DeserializeOwned>(
    defaults: &str,
    file: Option<&Path>,
    list_keys: &[&str],
    overrides: &[(&str, config::Value)],
) -> Result<T, String> {
    let mut builder = config::Config::builder()
        .add_source(config::File::from_str(defaults, config::FileFormat::Toml));
    if let Some(file) = file {
        if !file.is_file() {
            return Err(format!("config file {} does not exist", file.display()));
        }
        builder = builder.add_source(config::File::from(file).required(true));
    }
    let mut env = config::Environment::with_prefix("EDGECLIP")
        .prefix_separator("_")
        .separator("__")
        .try_parsing(true);
    if !list_keys.is_empty() {
        env = env.list_separator(",");
        for key in list_keys {
            env = env.with_list_parse_key(key);
        }
    }
    builder = builder.add_source(env);
    for (key, value) in overrides {
        builder = builder
            .set_override(*key, value.clone())
            .map_err(|e| e.to_string())?;
    }
    builder
        .build()
        .and_then(|c| c.try_deserialize())
        .map_err(|e| e.to_string())
}
