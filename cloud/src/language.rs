//! A search's language (`lang` on the wire): the UI codes Immich sends (`de`, `zh-CN`,
//! `pt-BR`) mapped to FLORES-200 codes (`deu_Latn`) as Immich maps them, and which languages
//! a text tower serves.

/// Immich's `WEBLATE_TO_FLORES200` (its UI languages), with the spellings of earlier Immich
/// releases (`nb_NO`, `pt_BR`, `sr_Cyrl`, `zh_Hant`, `zh_SIMPLIFIED`). The odd targets
/// (`jpn_Hira`, `lav_Latn`) are Immich's and are kept, so NLLB sees what it sees under Immich.
const UI_TO_FLORES: &[(&str, &str)] = &[
    ("af", "afr_Latn"),
    ("ar", "arb_Arab"),
    ("az", "azj_Latn"),
    ("be", "bel_Cyrl"),
    ("bg", "bul_Cyrl"),
    ("ca", "cat_Latn"),
    ("cs", "ces_Latn"),
    ("da", "dan_Latn"),
    ("de", "deu_Latn"),
    ("el", "ell_Grek"),
    ("en", "eng_Latn"),
    ("es", "spa_Latn"),
    ("et", "est_Latn"),
    ("fa", "pes_Arab"),
    ("fi", "fin_Latn"),
    ("fr", "fra_Latn"),
    ("he", "heb_Hebr"),
    ("hi", "hin_Deva"),
    ("hr", "hrv_Latn"),
    ("hu", "hun_Latn"),
    ("hy", "hye_Armn"),
    ("id", "ind_Latn"),
    ("it", "ita_Latn"),
    ("ja", "jpn_Hira"),
    ("kmr", "kmr_Latn"),
    ("ko", "kor_Hang"),
    ("lb", "ltz_Latn"),
    ("lt", "lit_Latn"),
    ("lv", "lav_Latn"),
    ("mfa", "zsm_Latn"),
    ("mk", "mkd_Cyrl"),
    ("mn", "khk_Cyrl"),
    ("mr", "mar_Deva"),
    ("ms", "zsm_Latn"),
    ("nb-NO", "nob_Latn"),
    ("nb_NO", "nob_Latn"),
    ("nn", "nno_Latn"),
    ("nl", "nld_Latn"),
    ("pl", "pol_Latn"),
    ("pt-BR", "por_Latn"),
    ("pt_BR", "por_Latn"),
    ("pt", "por_Latn"),
    ("ro", "ron_Latn"),
    ("ru", "rus_Cyrl"),
    ("sk", "slk_Latn"),
    ("sl", "slv_Latn"),
    ("sr-Cyrl", "srp_Cyrl"),
    ("sr_Cyrl", "srp_Cyrl"),
    ("sv", "swe_Latn"),
    ("ta", "tam_Taml"),
    ("te", "tel_Telu"),
    ("th", "tha_Thai"),
    ("tr", "tur_Latn"),
    ("uk", "ukr_Cyrl"),
    ("ur", "urd_Arab"),
    ("vi", "vie_Latn"),
    ("zh-CN", "zho_Hans"),
    ("zh-Hans", "zho_Hans"),
    ("zh-TW", "zho_Hant"),
    ("zh_Hant", "zho_Hant"),
    ("zh_SIMPLIFIED", "zho_Hans"),
];

/// FLORES-200's code for English, Immich's fallback.
pub const ENGLISH: &str = "eng_Latn";

/// Whether `code` is spelled like a FLORES-200 code: three lower-case letters, `_`, a
/// four-letter script with a capital first (`deu_Latn`, `zho_Hans`).
pub fn is_flores(code: &str) -> bool {
    let b = code.as_bytes();
    b.len() == 8
        && b[..3].iter().all(u8::is_ascii_lowercase)
        && b[3] == b'_'
        && b[4].is_ascii_uppercase()
        && b[5..].iter().all(u8::is_ascii_lowercase)
}

/// The FLORES-200 code of a language code, when it is known: a FLORES-200 code as it is, a UI
/// code by Immich's table, else the table's entry for the code without its country or script
/// part (`de-AT` -> `de`). `None` for a code neither knows.
pub fn known_flores(lang: &str) -> Option<&str> {
    if is_flores(lang) {
        return Some(lang);
    }
    let lookup = |code: &str| {
        UI_TO_FLORES
            .iter()
            .find(|(ui, _)| *ui == code)
            .map(|(_, f)| *f)
    };
    lookup(lang).or_else(|| lookup(lang.split(['-', '_']).next().unwrap_or(lang)))
}

/// The FLORES-200 code NLLB's text is prefixed with, as Immich picks it: [`known_flores`], or
/// English for a code it does not know.
pub fn flores(lang: &str) -> &str {
    known_flores(lang).unwrap_or(ENGLISH)
}

/// Which search languages a text tower serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Languages {
    /// English, and searches that give no language (CLIP, SigLIP, ...).
    English,
    /// Any language (M-CLIP, NLLB).
    Any,
    /// These codes (UI or FLORES-200), compared by their FLORES-200 code when known.
    Listed(Vec<String>),
}

impl Languages {
    /// From a configuration list: empty gives `default`, `["*"]` any language, else the codes.
    pub fn from_config(list: &[String], default: Languages) -> Languages {
        match list {
            [] => default,
            [star] if star == "*" => Languages::Any,
            codes => Languages::Listed(codes.to_vec()),
        }
    }

    /// Whether the tower names `lang` explicitly (English towers name English). `Any` names no
    /// language: it serves those no tower names.
    pub fn names(&self, lang: &str) -> bool {
        let same = |code: &str| {
            code.eq_ignore_ascii_case(lang)
                || matches!((known_flores(code), known_flores(lang)), (Some(a), Some(b)) if a == b)
        };
        match self {
            Languages::English => same("en"),
            Languages::Any => false,
            Languages::Listed(codes) => codes.iter().any(|c| same(c)),
        }
    }
}

impl std::fmt::Display for Languages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Languages::English => f.write_str("en (default)"),
            Languages::Any => f.write_str("any"),
            Languages::Listed(codes) => f.write_str(&codes.join(",")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ui_codes_map_to_flores_as_immich_maps_them() {
        assert_eq!(flores("de"), "deu_Latn");
        assert_eq!(flores("zh-CN"), "zho_Hans");
        assert_eq!(flores("pt-BR"), "por_Latn");
        assert_eq!(flores("en"), "eng_Latn");
        // without the country part, then English
        assert_eq!(flores("de-AT"), "deu_Latn");
        assert_eq!(flores("xx-YY"), "eng_Latn");
        assert_eq!(known_flores("xx-YY"), None);
        // a FLORES-200 code is taken as it is
        assert_eq!(flores("fra_Latn"), "fra_Latn");
        assert!(!is_flores("fra_latn") && !is_flores("de"));
    }

    #[test]
    fn towers_name_their_languages_by_code_or_flores() {
        let english = Languages::English;
        assert!(english.names("en") && english.names("en-GB") && english.names("eng_Latn"));
        assert!(!english.names("de") && !english.names("xx"));
        let listed = Languages::from_config(&["de".into(), "fra_Latn".into()], Languages::English);
        assert!(listed.names("deu_Latn") && listed.names("de-CH") && listed.names("fr"));
        assert!(!listed.names("en"));
        assert_eq!(
            Languages::from_config(&["*".into()], Languages::English),
            Languages::Any
        );
        assert!(!Languages::Any.names("de"));
        assert_eq!(Languages::from_config(&[], Languages::Any), Languages::Any);
    }
}
