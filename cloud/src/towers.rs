//! [`TowerSet`]: which text tower encodes a request, without a runtime. A worker serves one or
//! more text towers; each belongs to the embedding space of its model id (see
//! `edgeclip_messages::model_id`) and serves some languages. A request names the space it
//! needs (its `model`, the device's index) and may give a language (`lang`):
//!
//! 1. The towers of the request's space: those whose id names the same space
//!    (`model_id::same_space`), or whose folder had exactly that id under the legacy rule
//!    (`legacy_model_id`: an index a device made before keeps its answers). None: the
//!    request is refused as a model mismatch.
//! 2. With a language: the first of them (configuration order) that names it (an English
//!    tower names `en`; a tower can list codes), else the first that serves any language
//!    (M-CLIP, NLLB). A language no tower serves falls through to 3.
//! 3. The tower whose own id is exactly the request's model (the folder the device indexed
//!    with, when a worker serves several for one space).
//! 4. The space's default: its first tower that serves English, else its first tower.
//!
//! A language wins over the exact id because every request of a device names its own folder's
//! id: a German search from a device indexed with `ViT-B-32__openai` must reach M-CLIP even
//! though the worker also serves `ViT-B-32__openai`'s own text tower.
//!
//! What the chosen tower does with the language is its family's: NLLB reads it as a FLORES-200
//! code written before the text, M-CLIP and the others ignore it. [`Choice::prefix`] is that
//! code, so the text encoder's cache keys on (tower, prefix, text): one entry per language for
//! NLLB, one for all languages for M-CLIP.

use edgeclip_messages::model_id;

use crate::language::{flores, Languages};

/// What a tower does with a request's language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LangUse {
    /// Nothing: the text is encoded as it is (CLIP, SigLIP, M-CLIP).
    Ignore,
    /// The text is prefixed with the language's FLORES-200 code, no space (NLLB, as Immich).
    FloresPrefix,
}

/// What the selection needs to know of one tower.
#[derive(Debug, Clone)]
pub struct TowerInfo {
    /// Short name for logs and errors (the folder's name).
    pub name: String,
    /// Model id of the tower's folder: its embedding space (derived, or set).
    pub id: String,
    /// Its folder's id under the legacy rule, if derived.
    pub legacy_id: Option<String>,
    /// Languages it serves.
    pub languages: Languages,
    /// What it does with a language.
    pub lang_use: LangUse,
}

/// Which tower encodes a request, and the language as that tower uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    /// Index of the tower in the set.
    pub tower: usize,
    /// NLLB's FLORES-200 code to write before the text; `None` for towers that ignore the
    /// language, or when the request gave none.
    pub prefix: Option<String>,
}

/// The towers of a worker, in configuration order (the first is the worker's default).
#[derive(Debug, Clone)]
pub struct TowerSet {
    towers: Vec<TowerInfo>,
}

impl TowerSet {
    /// A set of at least one tower.
    pub fn new(towers: Vec<TowerInfo>) -> Option<Self> {
        (!towers.is_empty()).then_some(Self { towers })
    }

    /// The towers.
    pub fn towers(&self) -> &[TowerInfo] {
        &self.towers
    }

    /// The worker's default space: its first tower's id (announced as the worker's presence,
    /// and the space of fleet searches).
    pub fn default_id(&self) -> &str {
        &self.towers[0].id
    }

    /// Whether a tower serves the space of `model`.
    fn serves(tower: &TowerInfo, model: &str) -> bool {
        model_id::same_space(&tower.id, model) || tower.legacy_id.as_deref() == Some(model)
    }

    /// The tower for a request of `model`'s space in `lang` (rules in the module doc), or the
    /// reason it is refused.
    pub fn pick(&self, model: &str, lang: Option<&str>) -> Result<Choice, String> {
        let candidates: Vec<usize> = (0..self.towers.len())
            .filter(|&i| Self::serves(&self.towers[i], model))
            .collect();
        let Some(&first) = candidates.first() else {
            return Err(self.mismatch(model));
        };
        let tower = lang
            .and_then(|lang| {
                let named = candidates
                    .iter()
                    .find(|&&i| self.towers[i].languages.names(lang));
                named.or_else(|| {
                    candidates
                        .iter()
                        .find(|&&i| self.towers[i].languages == Languages::Any)
                })
            })
            .or_else(|| candidates.iter().find(|&&i| self.towers[i].id == model))
            .or_else(|| {
                candidates
                    .iter()
                    .find(|&&i| self.towers[i].languages.names("en"))
            })
            .copied()
            .unwrap_or(first);
        let prefix = match (self.towers[tower].lang_use, lang) {
            (LangUse::FloresPrefix, Some(lang)) => Some(flores(lang).to_string()),
            _ => None,
        };
        Ok(Choice { tower, prefix })
    }

    /// Why a request of `model` is refused: the spaces served, with their towers.
    fn mismatch(&self, model: &str) -> String {
        let mut spaces: Vec<(String, Vec<&str>)> = Vec::new();
        for t in &self.towers {
            match spaces
                .iter_mut()
                .find(|(s, _)| model_id::same_space(s, &t.id))
            {
                Some((_, names)) => names.push(&t.name),
                None => spaces.push((t.id.clone(), vec![&t.name])),
            }
        }
        let served: Vec<String> = spaces
            .iter()
            .map(|(id, names)| format!("{id} (text towers {})", names.join(", ")))
            .collect();
        format!(
            "this cloud serves the embedding space of {}; the device's index was built with {model}, another space",
            served.join(" and of ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tower(name: &str, id: &str, languages: Languages, lang_use: LangUse) -> TowerInfo {
        TowerInfo {
            name: name.into(),
            id: id.into(),
            legacy_id: Some(format!("{name}@legacy000000")),
            languages,
            lang_use,
        }
    }

    fn vit_and_mclip() -> TowerSet {
        TowerSet::new(vec![
            tower(
                "vit",
                "vit@0123456789ab",
                Languages::English,
                LangUse::Ignore,
            ),
            tower(
                "mclip",
                "mclip@0123456789ab",
                Languages::Any,
                LangUse::Ignore,
            ),
            tower("rn", "rn@ffffffffffff", Languages::English, LangUse::Ignore),
        ])
        .expect("towers")
    }

    #[test]
    fn a_language_picks_the_multilingual_tower_of_the_requests_space() {
        let set = vit_and_mclip();
        let pick = |model, lang| set.pick(model, lang).expect("served").tower;
        // a device indexed with vit: English or no language -> vit, German -> M-CLIP
        assert_eq!(pick("vit@0123456789ab", None), 0);
        assert_eq!(pick("vit@0123456789ab", Some("en")), 0);
        assert_eq!(pick("vit@0123456789ab", Some("de")), 1);
        assert_eq!(pick("vit@0123456789ab", Some("zh-CN")), 1);
        // the same space under another label: the device's folder had another name
        assert_eq!(pick("ViT-B-32__openai@0123456789ab", Some("de")), 1);
        assert_eq!(pick("ViT-B-32__openai@0123456789ab", None), 0);
        // a device indexed with the M-CLIP folder itself gets M-CLIP without a language
        assert_eq!(pick("mclip@0123456789ab", None), 1);
        // another space has only an English tower: a language it lacks falls back to it
        assert_eq!(pick("rn@ffffffffffff", Some("de")), 2);
        // M-CLIP ignores the language: one cache entry for every language
        assert_eq!(
            set.pick("vit@0123456789ab", Some("de")).unwrap().prefix,
            None
        );
    }

    #[test]
    fn another_space_is_refused_naming_what_is_served() {
        let set = vit_and_mclip();
        let err = set.pick("siglip@aaaaaaaaaaaa", None).unwrap_err();
        assert!(
            err.contains("vit@0123456789ab (text towers vit, mclip)"),
            "{err}"
        );
        assert!(err.contains("rn@ffffffffffff (text towers rn)"), "{err}");
        assert!(err.contains("siglip@aaaaaaaaaaaa"), "{err}");
        // a set id is compared whole
        assert!(set.pick("0123456789ab", None).is_err());
    }

    #[test]
    fn an_index_made_under_the_legacy_rule_is_still_answered() {
        let set = vit_and_mclip();
        assert_eq!(set.pick("mclip@legacy000000", None).unwrap().tower, 1);
        // compared whole: the label was part of those ids
        assert!(set.pick("other@legacy000000", None).is_err());
    }

    #[test]
    fn nllb_takes_the_language_as_its_flores_prefix() {
        let set = TowerSet::new(vec![tower(
            "nllb",
            "nllb@aaaaaaaaaaaa",
            Languages::Any,
            LangUse::FloresPrefix,
        )])
        .expect("towers");
        let prefix = |lang| set.pick("nllb@aaaaaaaaaaaa", lang).unwrap().prefix;
        assert_eq!(prefix(Some("de")), Some("deu_Latn".into()));
        assert_eq!(prefix(Some("en")), Some("eng_Latn".into()));
        assert_eq!(prefix(Some("xx-YY")), Some("eng_Latn".into()));
        assert_eq!(prefix(None), None);
    }

    #[test]
    fn listed_languages_win_over_any_and_set_ids_pair_folders() {
        let set = TowerSet::new(vec![
            tower("clip", "family", Languages::English, LangUse::Ignore),
            tower("nllb", "family", Languages::Any, LangUse::FloresPrefix),
            tower(
                "de",
                "family",
                Languages::Listed(vec!["de".into()]),
                LangUse::Ignore,
            ),
        ])
        .expect("towers");
        assert_eq!(set.pick("family", Some("deu_Latn")).unwrap().tower, 2);
        assert_eq!(set.pick("family", Some("fr")).unwrap().tower, 1);
        assert_eq!(set.pick("family", None).unwrap().tower, 0);
        assert_eq!(set.default_id(), "family");
    }
}
