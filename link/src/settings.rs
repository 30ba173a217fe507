//! Layered configuration, the same for every edgeclip program: built-in defaults, then the
//! `--config` file, then `EDGECLIP_*` environment variables (`__` between sections), then
//! command-line overrides. Each program validates the result itself.

use std::path::Path;

use serde::de::DeserializeOwned;

use crate::LinkError;

/// Loads `T` from the layers. `list_keys` are the keys whose environment values are
/// comma-separated lists; `overrides` are (dotted key, value) pairs.
pub fn load<T: DeserializeOwned>(
    defaults: &str,
    file: Option<&Path>,
    list_keys: &[&str],
    overrides: &[(&str, config::Value)],
) -> Result<T, LinkError> {
    let mut builder = config::Config::builder()
        .add_source(config::File::from_str(defaults, config::FileFormat::Toml));
    if let Some(file) = file {
        if !file.is_file() {
            return Err(LinkError::ConfigFile(file.to_path_buf()));
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
        builder = builder.set_override(*key, value.clone())?;
    }
    Ok(builder.build()?.try_deserialize()?)
}

/// [`load`] with the reason as text, for a caller whose error enum holds the reason as a
/// string (the device's `DeviceError::Config`).
pub fn load_layered<T: DeserializeOwned>(
    defaults: &str,
    file: Option<&Path>,
    list_keys: &[&str],
    overrides: &[(&str, config::Value)],
) -> Result<T, String> {
    load(defaults, file, list_keys, overrides).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    struct Example {
        name: String,
        port: u16,
    }

    const DEFAULTS: &str = "name = \"a\"\nport = 1\n";

    #[test]
    fn overrides_win_over_the_defaults_and_errors_say_what_is_wrong() {
        let got: Example = load(DEFAULTS, None, &[], &[("port", 2.into())]).unwrap();
        assert_eq!((got.name.as_str(), got.port), ("a", 2));
        let missing = Path::new("/nonexistent/edgeclip.toml");
        let err = load::<Example>(DEFAULTS, Some(missing), &[], &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "config file /nonexistent/edgeclip.toml does not exist"
        );
        let err = load_layered::<Example>(DEFAULTS, None, &[], &[("port", "x".into())]);
        assert!(err.unwrap_err().contains("port"));
    }
}
