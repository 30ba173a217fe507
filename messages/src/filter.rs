//! [`Filter`]: which pictures a search may return. The one definition shared by the JSON
//! search messages, the device's index and the command line.

use serde::{Deserialize, Serialize};

/// Which pictures a search may return. Every field is optional; an empty filter keeps every
/// picture.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Filter {
    /// Only pictures under this folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folder: Option<String>,
    /// Only pictures taken at or after this time (seconds since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<i64>,
    /// Only pictures taken before this time (seconds since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<i64>,
    /// Only hits scoring at least this much (cosine similarity, -1..1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_score: Option<f32>,
    /// Only pictures of this source: a camera's name (`""`: only library pictures).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

impl Filter {
    /// Whether a picture passes the folder, time and source conditions (not the score, which
    /// is known only once ranked). `path_under` tells whether the picture lies under a folder;
    /// the caller decides how paths compare (the device compares path components).
    pub fn keeps(&self, taken_s: i64, source: &str, path_under: impl Fn(&str) -> bool) -> bool {
        self.after.is_none_or(|t| taken_s >= t)
            && self.before.is_none_or(|t| taken_s < t)
            && self.source.as_deref().is_none_or(|s| s == source)
            && self.folder.as_deref().is_none_or(path_under)
    }

    /// Whether a score passes `min_score`.
    pub fn scores(&self, score: f32) -> bool {
        self.min_score.is_none_or(|m| score >= m)
    }

    /// True when the filter keeps every picture.
    pub fn is_empty(&self) -> bool {
        *self == Filter::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_condition_narrows_and_an_empty_filter_keeps_everything() {
        let anywhere = |_: &str| true;
        assert!(Filter::default().keeps(0, "", anywhere));
        let window = Filter {
            after: Some(10),
            before: Some(20),
            ..Filter::default()
        };
        assert!(window.keeps(10, "", anywhere) && window.keeps(19, "", anywhere));
        assert!(!window.keeps(9, "", anywhere) && !window.keeps(20, "", anywhere));
        let camera = Filter {
            source: Some("door".into()),
            ..Filter::default()
        };
        assert!(camera.keeps(0, "door", anywhere) && !camera.keeps(0, "", anywhere));
        let library = Filter {
            source: Some(String::new()),
            ..Filter::default()
        };
        assert!(library.keeps(0, "", anywhere) && !library.keeps(0, "door", anywhere));
        let folder = Filter {
            folder: Some("/a".into()),
            ..Filter::default()
        };
        assert!(!folder.keeps(0, "", |f| f == "/b"));
        assert!(folder.keeps(0, "", |f| f == "/a"));
        let scored = Filter {
            min_score: Some(0.2),
            ..Filter::default()
        };
        assert!(scored.scores(0.2) && !scored.scores(0.19) && Filter::default().scores(-1.0));
    }
}
