//! How a model is named on the wire, so that a device and a cloud agree on "the same model".
//!
//! A model folder (Immich/open_clip layout) is identified as `<folder name>@<12 hex digits>`,
//! the digits being the start of SHA-256 over `config.json` followed by `SHA256SUMS` when the
//! folder has one (it lists both towers' checksums, so two trainings of one architecture get
//! different ids even though the device holds only `visual/` and the cloud only `textual/`).
//! Folders without `SHA256SUMS` (e.g. an Immich download) are told apart by config alone,
//! so give such a folder a distinct name, or set the id explicitly in both configs.

use sha2::{Digest, Sha256};

/// The model id of a folder named `name` with these `config.json` and optional `SHA256SUMS`
/// contents.
pub fn model_id(name: &str, config_json: &[u8], sha256sums: Option<&[u8]>) -> String {
    let mut hasher = Sha256::new();
    hasher.update(config_json);
    if let Some(sums) = sha256sums {
        hasher.update(b"\0SHA256SUMS\0");
        hasher.update(sums);
    }
    let digest = hasher.finalize();
    let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("{name}@{hex}")
}

/// The model id a program uses for a folder: `id_override` when set (non-empty), otherwise
/// [`model_id`] of the folder's name (`model` when it has none) and its files' contents. Both
/// programs call this, so a device and a cloud given the same folder agree.
pub fn folder_model_id(
    id_override: Option<&str>,
    folder_name: Option<&str>,
    config_json: &[u8],
    sha256sums: Option<&[u8]>,
) -> String {
    match id_override {
        Some(id) if !id.is_empty() => id.to_string(),
        _ => model_id(folder_name.unwrap_or("model"), config_json, sha256sums),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_depend_on_config_and_checksums() {
        let a = model_id("clip", b"{}", None);
        assert!(
            a.starts_with("clip@") && a.len() == "clip@".len() + 12,
            "{a}"
        );
        assert_eq!(a, model_id("clip", b"{}", None));
        assert_ne!(a, model_id("clip", b"{ }", None));
        assert_ne!(
            a,
            model_id("clip", b"{}", Some(b"abc  visual/model.onnx\n"))
        );
        assert_eq!(folder_model_id(None, Some("clip"), b"{}", None), a);
        assert_eq!(folder_model_id(Some(""), Some("clip"), b"{}", None), a);
        assert_eq!(
            folder_model_id(Some("mine"), Some("clip"), b"{}", None),
            "mine"
        );
        assert!(folder_model_id(None, None, b"{}", None).starts_with("model@"));
    }
}
