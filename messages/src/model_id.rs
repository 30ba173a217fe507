//! How a device and a cloud agree on "the same model": they agree on an **embedding space**,
//! the space the device's image tower puts pictures in, not on a file or a folder name.
//!
//! # The rule
//!
//! A model folder (Immich/open_clip layout) is named on the wire `<folder name>@<digest>`, the
//! digest being 12 hex digits of SHA-256 over
//!
//! - `config.json`, byte for byte (both sides read it; it fixes the architecture and
//!   `embed_dim`), and
//! - the SHA-256 of `visual/model.onnx` (the image tower's weights: what tells two trainings
//!   of one architecture apart, e.g. Immich's `ViT-B-32__openai` and `ViT-B-32__laion2b_e16`,
//!   whose `config.json` files are equal). It is read from the folder's `SHA256SUMS` when that
//!   lists `visual/model.onnx` (no need to hash the file), and otherwise computed from the
//!   file itself. Both give the same bytes, so a folder with `SHA256SUMS` and a copy without
//!   agree.
//!
//! The folder name is a label for people and logs only: **two ids name the same space when
//! their digests are equal** ([`same_space`]). So the text towers of several folders belong to
//! one space when their folders hold the same `config.json` and `visual/model.onnx`: Immich's
//! M-CLIP folder (`XLM-Roberta-Large-Vit-B-32`) ships byte copies of `ViT-B-32__openai`'s, and
//! a cloud serving both text towers answers a device indexed with either, without
//! configuration. A text tower's own files (`textual/`, and the `SHA256SUMS` lines for them)
//! never enter the digest: a new text tower for a space does not make a device re-index.
//!
//! A set id (`model.id` on the device, `model.id` / `space` of a text tower on the cloud)
//! replaces the derived one; a set id without a 12-hex digest after its last `@` is compared
//! whole. Set ids are the way to pair folders whose files cannot be compared: a text tower
//! shipped without `visual/model.onnx` and without a `SHA256SUMS` line for it, or an image
//! tower re-exported (other bytes, same weights).
//!
//! The legacy rule, [`legacy_model_id`], names a folder
//! `<folder name>@<12 hex of SHA-256(config.json [+ SHA256SUMS])>`, compared whole; a cloud
//! answers those ids too, so an index made under one keeps its answers while the device
//! re-indexes under the space's id.
//!
//! This module does no IO: a program reads the files and hands their bytes (and the image
//! tower as a reader, consumed only when `SHA256SUMS` does not already give its digest).

use std::io::Read;

use sha2::{Digest, Sha256};

/// Hex digits of the digest in a derived id.
pub const DIGEST_HEX: usize = 12;

/// The image tower's path in a model folder, as `SHA256SUMS` lists it.
pub const IMAGE_TOWER: &str = "visual/model.onnx";

/// Why a folder's model id could not be derived.
#[derive(Debug, thiserror::Error)]
pub enum ModelIdError {
    /// The image tower could not be read to the end.
    #[error("reading visual/model.onnx to fingerprint the embedding space: {0}")]
    Read(#[from] std::io::Error),
    /// Neither the image tower nor a `SHA256SUMS` line for it is there.
    #[error(
        "the embedding space cannot be told: the folder has neither visual/model.onnx nor a \
         SHA256SUMS line for it (copy either beside config.json, or set the space id)"
    )]
    NoImageTower,
}

/// The SHA-256 of `visual/model.onnx` as a `SHA256SUMS` file (sha256sum's format: 64 hex
/// digits, two spaces or a space and `*`, the relative path) lists it, if it does.
pub fn image_tower_sha256_from_sums(sha256sums: &[u8]) -> Option<[u8; 32]> {
    let text = std::str::from_utf8(sha256sums).ok()?;
    text.lines().find_map(|line| {
        let (hex, path) = line.split_once(char::is_whitespace)?;
        let path = path.trim_start().trim_start_matches('*');
        let path = path.strip_prefix("./").unwrap_or(path);
        if path.trim_end() != IMAGE_TOWER || hex.len() != 64 {
            return None;
        }
        let mut digest = [0u8; 32];
        for (i, byte) in digest.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(digest)
    })
}

/// SHA-256 of everything `reader` yields, read in blocks of 1 MiB (an image tower is hundreds
/// of MB; it is never held in memory whole).
pub fn sha256_of(mut reader: impl Read) -> std::io::Result<[u8; 32]> {
    let mut hasher = Sha256::new();
    let mut block = vec![0u8; 1 << 20];
    loop {
        match reader.read(&mut block) {
            Ok(0) => return Ok(hasher.finalize().into()),
            Ok(n) => hasher.update(&block[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// The space digest of a folder with this `config.json` whose `visual/model.onnx` has this
/// SHA-256: [`DIGEST_HEX`] lowercase hex digits.
pub fn space_digest(config_json: &[u8], image_tower_sha256: &[u8; 32]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"edgeclip space 1\0config.json\0");
    hasher.update((config_json.len() as u64).to_le_bytes());
    hasher.update(config_json);
    hasher.update(b"\0visual/model.onnx\0");
    hasher.update(image_tower_sha256);
    hex(&hasher.finalize())
}

/// The model id of a folder named `name`: `<name>@<space digest>`.
pub fn model_id(name: &str, config_json: &[u8], image_tower_sha256: &[u8; 32]) -> String {
    format!("{name}@{}", space_digest(config_json, image_tower_sha256))
}

/// The model id a program uses for a folder: `id_override` when set (non-empty), otherwise
/// [`model_id`] of the folder's name (`model` when it has none), its `config.json` and its
/// image tower's SHA-256, from `SHA256SUMS` when it lists `visual/model.onnx`, else read from
/// `image_tower` (the file). Device and cloud both call this, so a device and a cloud given
/// folders with the same `config.json` and image tower agree.
pub fn folder_model_id<R: Read>(
    id_override: Option<&str>,
    folder_name: Option<&str>,
    config_json: &[u8],
    sha256sums: Option<&[u8]>,
    image_tower: Option<R>,
) -> Result<String, ModelIdError> {
    if let Some(id) = id_override.filter(|id| !id.is_empty()) {
        return Ok(id.to_string());
    }
    let digest = match sha256sums.and_then(image_tower_sha256_from_sums) {
        Some(d) => d,
        None => sha256_of(image_tower.ok_or(ModelIdError::NoImageTower)?)?,
    };
    Ok(model_id(
        folder_name.unwrap_or("model"),
        config_json,
        &digest,
    ))
}

/// A folder's id under the legacy rule: `<name>@<12 hex of SHA-256 over config.json, then
/// SHA256SUMS when the folder has one>`, compared whole (the name is part of it). A cloud
/// answers it so that a device's index made under that id keeps its answers.
pub fn legacy_model_id(name: &str, config_json: &[u8], sha256sums: Option<&[u8]>) -> String {
    let mut hasher = Sha256::new();
    hasher.update(config_json);
    if let Some(sums) = sha256sums {
        hasher.update(b"\0SHA256SUMS\0");
        hasher.update(sums);
    }
    format!("{name}@{}", hex(&hasher.finalize()))
}

/// The digest of a derived id: what follows its last `@` when that is [`DIGEST_HEX`]
/// lowercase hex digits; `None` for a set id.
pub fn digest_of(id: &str) -> Option<&str> {
    id.rsplit_once('@').map(|(_, d)| d).filter(|d| {
        d.len() == DIGEST_HEX
            && d.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// What names the space in an id: the digest of a derived id, else the whole (set) id. A set
/// id never names the space of a derived one, even when it is spelled like its digest (see
/// [`same_space`]).
pub fn space_of(id: &str) -> &str {
    digest_of(id).unwrap_or(id)
}

/// Whether two model ids name the same embedding space (see the module doc): two derived ids
/// with equal digests, or two equal set ids.
pub fn same_space(a: &str, b: &str) -> bool {
    match (digest_of(a), digest_of(b)) {
        (Some(x), Some(y)) => x == y,
        (None, None) => a == b,
        _ => false,
    }
}

fn hex(digest: &[u8]) -> String {
    digest
        .iter()
        .take(DIGEST_HEX / 2)
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const VIT_CONFIG: &[u8] = include_bytes!("../../tests/data/families/vit/config.json");
    const MCLIP_CONFIG: &[u8] = include_bytes!("../../tests/data/families/mclip/config.json");
    const VIT_VISUAL: &[u8] = include_bytes!("../../tests/data/families/vit/visual/model.onnx");
    const MCLIP_VISUAL: &[u8] = include_bytes!("../../tests/data/families/mclip/visual/model.onnx");
    const RN_CONFIG: &[u8] = include_bytes!("../../tests/data/families/rn/config.json");
    const RN_VISUAL: &[u8] = include_bytes!("../../tests/data/families/rn/visual/model.onnx");
    const SHAPES_CONFIG: &[u8] = include_bytes!("../../models/clip-shapes/config.json");
    const SHAPES_SUMS: &[u8] = include_bytes!("../../models/clip-shapes/SHA256SUMS");

    fn derived(name: &str, config: &[u8], sums: Option<&[u8]>, visual: Option<&[u8]>) -> String {
        folder_model_id(None, Some(name), config, sums, visual).expect("derived id")
    }

    #[test]
    fn a_vit_device_and_an_mclip_text_tower_share_a_space_without_configuration() {
        let device = derived("ViT-B-32__openai", VIT_CONFIG, None, Some(VIT_VISUAL));
        let mclip = derived(
            "XLM-Roberta-Large-Vit-B-32",
            MCLIP_CONFIG,
            None,
            Some(MCLIP_VISUAL),
        );
        assert_ne!(device, mclip, "the labels differ");
        assert!(same_space(&device, &mclip), "{device} {mclip}");
        let rn = derived("RN50__openai", RN_CONFIG, None, Some(RN_VISUAL));
        assert!(!same_space(&device, &rn));
    }

    #[test]
    fn two_trainings_with_one_config_are_told_apart_by_their_image_towers() {
        let mut other = VIT_VISUAL.to_vec();
        let last = other.len() - 100;
        other[last] ^= 1;
        let a = derived("vit", VIT_CONFIG, None, Some(VIT_VISUAL));
        let b = derived("vit", VIT_CONFIG, None, Some(&other));
        assert!(!same_space(&a, &b));
        // the label is not part of the space; the config is
        assert!(same_space(
            &a,
            &derived("other-name", VIT_CONFIG, None, Some(VIT_VISUAL))
        ));
        assert!(!same_space(
            &a,
            &derived("vit", b"{}", None, Some(VIT_VISUAL))
        ));
    }

    #[test]
    fn sha256sums_gives_the_image_towers_digest_without_reading_it() {
        let sha: [u8; 32] = Sha256::digest(VIT_VISUAL).into();
        let line = format!(
            "{}  {IMAGE_TOWER}\n",
            sha.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        let sums = format!("0000000000000000000000000000000000000000000000000000000000000000  textual/model.onnx\n{line}");
        assert_eq!(image_tower_sha256_from_sums(sums.as_bytes()), Some(sha));
        let from_sums =
            folder_model_id::<&[u8]>(None, Some("vit"), VIT_CONFIG, Some(sums.as_bytes()), None)
                .expect("from SHA256SUMS");
        assert_eq!(
            from_sums,
            derived("vit", VIT_CONFIG, None, Some(VIT_VISUAL))
        );
        // a text tower's lines never change the space
        let retrained = sums.replace("0000000000000000", "1111111111111111");
        assert_eq!(
            folder_model_id::<&[u8]>(
                None,
                Some("vit"),
                VIT_CONFIG,
                Some(retrained.as_bytes()),
                None
            )
            .expect("id"),
            from_sums
        );
        // `*` (binary mode) and `./` prefixes are read too; other files are not taken for it
        let starred = line.replace("  ", " *./");
        assert_eq!(image_tower_sha256_from_sums(starred.as_bytes()), Some(sha));
        assert_eq!(
            image_tower_sha256_from_sums(b"abc  visual/model.onnx.bak\n"),
            None
        );
    }

    #[test]
    fn the_bundled_model_derives_its_space_from_its_sha256sums() {
        let id = folder_model_id::<&[u8]>(
            None,
            Some("clip-shapes"),
            SHAPES_CONFIG,
            Some(SHAPES_SUMS),
            None,
        )
        .expect("clip-shapes lists visual/model.onnx");
        assert!(
            id.starts_with("clip-shapes@") && id.len() == "clip-shapes@".len() + DIGEST_HEX,
            "{id}"
        );
        // its id under the legacy rule, which a cloud still answers
        assert_eq!(
            legacy_model_id("clip-shapes", SHAPES_CONFIG, Some(SHAPES_SUMS)),
            "clip-shapes@d755ef26601e"
        );
    }

    #[test]
    fn without_an_image_tower_the_space_cannot_be_derived_but_can_be_set() {
        let err =
            folder_model_id::<&[u8]>(None, Some("mclip"), MCLIP_CONFIG, None, None).unwrap_err();
        assert!(matches!(err, ModelIdError::NoImageTower), "{err}");
        assert_eq!(
            folder_model_id::<&[u8]>(Some("family"), Some("mclip"), MCLIP_CONFIG, None, None)
                .expect("set"),
            "family"
        );
        assert!(
            folder_model_id(Some(""), None, b"{}", None, Some(&b"x"[..]))
                .expect("derived")
                .starts_with("model@")
        );
    }

    #[test]
    fn set_ids_are_compared_whole_and_derived_ones_by_digest() {
        assert_eq!(space_of("vit@0123456789ab"), "0123456789ab");
        assert_eq!(space_of("family"), "family");
        assert_eq!(space_of("a@b"), "a@b");
        assert_eq!(space_of("x@0123456789AB"), "x@0123456789AB");
        assert!(same_space("vit@0123456789ab", "mclip@0123456789ab"));
        assert!(!same_space("family", "Family"));
        assert!(!same_space("vit@0123456789ab", "vit@0123456789ac"));
        // a set id spelled like a derived id's digest is still a set id
        assert!(!same_space("vit@0123456789ab", "0123456789ab"));
        assert!(same_space("0123456789ab", "0123456789ab"));
    }
}
