//! JSON messages on the dashboard-facing topics (Home Assistant, Node-RED, MQTT Explorer, CLI).

use serde::{Deserialize, Serialize};

pub use crate::filter::Filter;
pub use crate::hit::Hit;
use crate::WireError;

/// A search as a dashboard sends it: plain UTF-8 text, or this JSON object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchRequest {
    /// The search text (may be empty for a `like` search).
    #[serde(default)]
    pub text: String,
    /// How many hits to return (device default when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k: Option<usize>,
    /// Correlation id echoed in the answer (the device makes one when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// "More like this": rank by the vector of this indexed picture, given by its path or its
    /// id (answered on the device
    /// alone, no cloud round trip) instead of a text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub like: Option<String>,
    /// Who ranks: the device (default, method A) or the cloud (method B).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<SearchMode>,
    /// Near-duplicate groups instead of a ranking: groups of pictures whose vectors have a
    /// cosine of at least this (0 < d <= 1, e.g. 0.95), answered on the device alone; `k`
    /// bounds the number of groups, the filters which pictures are compared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicates: Option<f32>,
    /// The search text's language (`de`, `zh-CN`, `deu_Latn`, ...), for a cloud with a
    /// multilingual text tower; absent: the cloud's default (English) tower. Sent to the cloud
    /// with the text (see [`crate::wire::EncodeRequest::lang`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lang: Option<String>,
    /// Which pictures may be returned: `folder`, `after`, `before`, `min_score`, `source`, at
    /// the top level of the JSON object.
    #[serde(flatten)]
    pub filter: Filter,
}

/// Every field a JSON search may hold: [`SearchRequest::parse`] refuses others by name
/// (serde's `deny_unknown_fields` does not work beside a flattened field).
const SEARCH_FIELDS: &[&str] = &[
    "text",
    "k",
    "id",
    "like",
    "mode",
    "duplicates",
    "lang",
    "folder",
    "after",
    "before",
    "min_score",
    "source",
];

/// Who ranks the pictures of a search.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SearchMode {
    /// The cloud returns the text vector; the device ranks (method A).
    Device,
    /// The device sends the text with its (int8) vectors; the cloud ranks (method B).
    Server,
}

impl SearchRequest {
    /// A plain text search with the device's defaults.
    pub fn text(text: impl Into<String>) -> Self {
        SearchRequest {
            text: text.into(),
            k: None,
            id: None,
            like: None,
            mode: None,
            duplicates: None,
            lang: None,
            filter: Filter::default(),
        }
    }

    /// Parses a payload of the search topic: a JSON object if it starts with `{`, otherwise
    /// the whole payload is the search text. Texts are trimmed; empty, over-long, non-UTF-8 or
    /// wrongly-shaped payloads are refused.
    pub fn parse(payload: &[u8], max_text_bytes: usize) -> Result<Self, WireError> {
        let text = std::str::from_utf8(payload).map_err(|e| WireError::Field {
            field: "text",
            reason: format!("not UTF-8: {e}"),
        })?;
        let trimmed = text.trim();
        let request = if trimmed.starts_with('{') {
            let object: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(trimmed).map_err(|e| WireError::Json(e.to_string()))?;
            if let Some(field) = object.keys().find(|f| !SEARCH_FIELDS.contains(&f.as_str())) {
                let shown: String = field.chars().take(64).collect();
                return Err(WireError::Json(format!(
                    "unknown field `{shown}`, expected one of {}",
                    SEARCH_FIELDS.join(", ")
                )));
            }
            serde_json::from_value::<SearchRequest>(serde_json::Value::Object(object))
                .map_err(|e| WireError::Json(e.to_string()))?
        } else {
            SearchRequest::text(trimmed)
        };
        request.validated(max_text_bytes)
    }

    /// Checks a search however it came (a payload through [`SearchRequest::parse`], the HTTP
    /// endpoint, the command line, a test), after trimming its text: the one set of rules
    /// every search meets. Refuses an empty search (no text, `like` or `duplicates`), a
    /// `duplicates` threshold outside (0, 1], a `min_score` that is not a number, a text over
    /// `max_text_bytes`, a `k` of 0 and an `id` over 128 bytes.
    pub fn validated(mut self, max_text_bytes: usize) -> Result<Self, WireError> {
        if self.text.trim().len() != self.text.len() {
            self.text = self.text.trim().to_string();
        }
        if self.text.is_empty() && self.like.is_none() && self.duplicates.is_none() {
            return Err(WireError::Field {
                field: "text",
                reason: "is empty (give a text, a picture path in like, or a duplicates threshold)"
                    .into(),
            });
        }
        if self.duplicates.is_some_and(|d| !(d > 0.0 && d <= 1.0)) {
            return Err(WireError::Field {
                field: "duplicates",
                reason: "must be a cosine in (0, 1]".into(),
            });
        }
        if self.filter.min_score.is_some_and(|m| !m.is_finite()) {
            return Err(WireError::Field {
                field: "min_score",
                reason: "must be a number".into(),
            });
        }
        if self.text.len() > max_text_bytes {
            return Err(WireError::Field {
                field: "text",
                reason: format!(
                    "{} bytes is over the limit of {max_text_bytes}",
                    self.text.len()
                ),
            });
        }
        if self.k == Some(0) {
            return Err(WireError::Field {
                field: "k",
                reason: "must be at least 1".into(),
            });
        }
        if let Some(lang) = &self.lang {
            crate::wire::validate_lang(lang)?;
        }
        if let Some(id) = &self.id {
            if id.len() > 128 {
                return Err(WireError::Field {
                    field: "id",
                    reason: "longer than 128 bytes".into(),
                });
            }
        }
        Ok(self)
    }
}

/// The answer to a search, on `edgeclip/<device>/results`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SearchResponse {
    /// The ranked hits.
    Results(SearchResults),
    /// Why the search failed.
    Error(SearchError),
}

impl SearchResponse {
    /// The correlation id of the search this answers.
    pub fn id(&self) -> &str {
        match self {
            SearchResponse::Results(r) => &r.id,
            SearchResponse::Error(e) => &e.id,
        }
    }
}

/// A successful search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchResults {
    /// Correlation id of the search.
    pub id: String,
    /// The search text.
    pub text: String,
    /// Model id of the vectors that were compared.
    pub model: String,
    /// Milliseconds from receiving the search to publishing the answer.
    pub took_ms: u64,
    /// Best hits first.
    pub hits: Vec<Hit>,
    /// True when the hits come from an index still being built (the device re-indexes for a
    /// new model, and the cloud serves only the new one): pictures not yet re-encoded are
    /// missing. Absent (false) otherwise.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub partial: bool,
    /// For a `duplicates` search: the groups, largest first; each hit's `score` is its best
    /// cosine with another picture of its group (`hits` is then empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<Vec<Hit>>,
}

/// A failed search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchError {
    /// Correlation id of the search (empty when the request could not be parsed at all).
    pub id: String,
    /// What went wrong, one line.
    pub error: String,
}

/// A fleet search (`edgeclip/fleet/search`): one text, encoded once by the cloud, ranked by
/// every online device; plain UTF-8 text or this JSON object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetSearchRequest {
    /// The search text.
    pub text: String,
    /// Hits wanted in the merged answer (and from each device); the cloud's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k: Option<usize>,
    /// Correlation id, echoed in the answer; letters, digits, `.`, `_`, `-` (it names the
    /// default reply topic). The cloud makes one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Where the answer goes; default `edgeclip/fleet/results/<id>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// How long devices may take to answer, in milliseconds from the cloud receiving the
    /// search; devices still silent then are listed as missing. The cloud's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// The text's language, as in [`SearchRequest::lang`]: the cloud encodes it with a
    /// multilingual text tower when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lang: Option<String>,
}

impl FleetSearchRequest {
    /// A plain text fleet search with the cloud's defaults.
    pub fn text(text: impl Into<String>) -> Self {
        FleetSearchRequest {
            text: text.into(),
            k: None,
            id: None,
            reply_to: None,
            deadline_ms: None,
            lang: None,
        }
    }

    /// Parses a payload of the fleet search topic (JSON if it starts with `{`, else the text),
    /// refusing empty or over-long texts, `k = 0`, bad ids and unusable reply topics.
    pub fn parse(payload: &[u8], max_text_bytes: usize) -> Result<Self, WireError> {
        let text = std::str::from_utf8(payload).map_err(|e| WireError::Field {
            field: "text",
            reason: format!("not UTF-8: {e}"),
        })?;
        let trimmed = text.trim();
        let mut request = if trimmed.starts_with('{') {
            serde_json::from_str::<FleetSearchRequest>(trimmed)
                .map_err(|e| WireError::Json(e.to_string()))?
        } else {
            FleetSearchRequest::text(trimmed)
        };
        request.text = request.text.trim().to_string();
        if request.text.is_empty() {
            return Err(WireError::Field {
                field: "text",
                reason: "is empty".into(),
            });
        }
        if request.text.len() > max_text_bytes {
            return Err(WireError::Field {
                field: "text",
                reason: format!(
                    "{} bytes is over the limit of {max_text_bytes}",
                    request.text.len()
                ),
            });
        }
        if request.k == Some(0) {
            return Err(WireError::Field {
                field: "k",
                reason: "must be at least 1".into(),
            });
        }
        if request.deadline_ms == Some(0) {
            return Err(WireError::Field {
                field: "deadline_ms",
                reason: "must be at least 1".into(),
            });
        }
        if let Some(id) = &request.id {
            validate_fleet_id(id)?;
        }
        if let Some(lang) = &request.lang {
            crate::wire::validate_lang(lang)?;
        }
        if let Some(topic) = &request.reply_to {
            crate::topics::validate_fleet_reply_topic(topic)?;
        }
        Ok(request)
    }
}

/// Checks a fleet search id: 1 to 128 letters, digits, `.`, `_` or `-` (it is a topic level).
pub fn validate_fleet_id(id: &str) -> Result<(), WireError> {
    if id.is_empty()
        || id.len() > 128
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(WireError::Field {
            field: "id",
            reason: "must be 1 to 128 letters, digits, '.', '_' or '-'".into(),
        });
    }
    Ok(())
}

/// A device that answered a fleet search with an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceFailure {
    /// The device.
    pub device: String,
    /// Its error, one line.
    pub error: String,
}

/// The merged answer of a fleet search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetResults {
    /// Correlation id of the search.
    pub id: String,
    /// The search text.
    pub text: String,
    /// Model id of the text vector.
    pub model: String,
    /// Milliseconds from the cloud receiving the search to publishing this answer.
    pub took_ms: u64,
    /// Devices that were online and were asked, sorted.
    pub asked: Vec<String>,
    /// Devices whose hits are merged below, sorted.
    pub answered: Vec<String>,
    /// Devices that did not answer before the deadline, sorted.
    pub missing: Vec<String>,
    /// Devices that answered with an error.
    pub failed: Vec<DeviceFailure>,
    /// Devices known on the broker but offline (not asked), sorted.
    pub offline: Vec<String>,
    /// Best hits of all devices first (ties: device, then path), each naming its `device`.
    pub hits: Vec<Hit>,
}

/// The answer to a fleet search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FleetResponse {
    /// The merged hits.
    Results(FleetResults),
    /// Why the fleet search failed as a whole (bad request, no device online, encoding failed).
    Error(SearchError),
}

impl FleetResponse {
    /// The correlation id of the search this answers.
    pub fn id(&self) -> &str {
        match self {
            FleetResponse::Results(r) => &r.id,
            FleetResponse::Error(e) => &e.id,
        }
    }
}

/// What the device is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceState {
    /// Loading the model and opening the index.
    Starting,
    /// Pictures are waiting to be encoded.
    Indexing,
    /// Everything found is indexed.
    Idle,
    /// Shutting down.
    Stopping,
}

/// A picture that could not be indexed, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    /// Path of the picture.
    pub path: String,
    /// Why it was skipped.
    pub error: String,
}

/// The retained status of a device, on `edgeclip/<device>/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceStatus {
    /// The device id.
    pub device_id: String,
    /// What the device is doing.
    pub state: DeviceState,
    /// Pictures in the index.
    pub indexed: u64,
    /// Why the index cannot be written (disk full, read-only, I/O error), while that lasts:
    /// encoded pictures then wait in memory (`unsaved`) and are written once it works again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_error: Option<String>,
    /// Pictures encoded but not yet written to the index (see `storage_error`).
    #[serde(default)]
    pub unsaved: u64,
    /// Pictures found but not yet encoded.
    pub pending: u64,
    /// Pictures skipped because they could not be read or decoded.
    pub failed: u64,
    /// Pictures encoded since the device started (unchanged pictures are never re-encoded).
    pub encoded: u64,
    /// Pictures indexed per second in the current indexing run (0 when idle).
    pub rate_per_s: f64,
    /// Estimated seconds until everything pending is indexed, while indexing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_s: Option<u64>,
    /// Model id of the index.
    pub model: String,
    /// Vector dimension of the model.
    pub dim: usize,
    /// The folders the device indexes.
    pub folders: Vec<String>,
    /// The most recent failures, newest last (bounded).
    pub recent_failures: Vec<Failure>,
    /// While the device re-indexes for a new model: the progress of the new index. Searches
    /// are answered from the complete index of `model` meanwhile, and from this one once it
    /// is complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reindex: Option<Reindex>,
    /// The cameras the device polls for snapshots.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cameras: Vec<CameraStatus>,
    /// Pictures per run of the image tower (measured at the first start unless configured;
    /// 0 from a device that does not say).
    #[serde(default)]
    pub encoder_batch: u32,
    /// edgeclip version of the device.
    pub version: String,
}

/// A camera the device polls (see [`DeviceStatus::cameras`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CameraStatus {
    /// The camera's name: the source id of its frames.
    pub name: String,
    /// Snapshots fetched and saved.
    pub polled: u64,
    /// Polls that failed (no answer, HTTP error, not a picture, too large).
    pub failed: u64,
    /// Frames kept (indexed).
    pub kept: u64,
    /// Frames deleted as near-duplicates of the last kept one.
    pub skipped: u64,
    /// Frames deleted for age or count (`keep_days`, `keep_frames`).
    #[serde(default)]
    pub pruned: u64,
    /// The last poll's error, while polls fail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// Progress of a re-index for a new model (see [`DeviceStatus::reindex`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reindex {
    /// Model id of the index being built.
    pub model: String,
    /// Pictures in it so far.
    pub indexed: u64,
    /// Pictures it will hold once complete, as far as known (indexed + pending).
    pub total: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_search_built_in_process_meets_the_rules_a_payload_meets() {
        let ok = SearchRequest::text("  a red circle\n")
            .validated(100)
            .unwrap();
        assert_eq!(ok, SearchRequest::parse(b"a red circle", 100).unwrap());
        let refused = |change: fn(&mut SearchRequest)| {
            let mut r = SearchRequest::text("cat");
            change(&mut r);
            r.validated(100).unwrap_err().to_string()
        };
        assert_eq!(
            refused(|r| r.k = Some(0)),
            "invalid field k: must be at least 1"
        );
        assert!(refused(|r| r.text = " ".into()).starts_with("invalid field text: is empty"));
        assert_eq!(
            refused(|r| r.filter.min_score = Some(f32::NAN)),
            "invalid field min_score: must be a number"
        );
        assert!(refused(|r| r.text = "x".repeat(101)).contains("over the limit of 100"));
    }

    #[test]
    fn plain_text_and_json_searches_are_both_accepted() {
        let plain = SearchRequest::parse(b"  a red circle \n", 100).unwrap();
        assert_eq!(plain, SearchRequest::text("a red circle"));
        let json = SearchRequest::parse(br#"{"text":"a blue star","k":3,"id":"q1"}"#, 100).unwrap();
        assert_eq!(
            json,
            SearchRequest {
                k: Some(3),
                id: Some("q1".into()),
                ..SearchRequest::text("a blue star")
            }
        );
        let like = SearchRequest::parse(
            br#"{"like":"/photos/a.jpg","folder":"/photos","after":5,"min_score":0.2}"#,
            100,
        )
        .unwrap();
        assert_eq!(like.like.as_deref(), Some("/photos/a.jpg"));
        assert_eq!(
            (like.filter.after, like.filter.min_score),
            (Some(5), Some(0.2))
        );
        let camera = SearchRequest::parse(br#"{"text":"a person","source":"door"}"#, 100).unwrap();
        assert_eq!(camera.filter.source.as_deref(), Some("door"));
        let dups = SearchRequest::parse(br#"{"duplicates":0.95,"folder":"/photos"}"#, 100).unwrap();
        assert_eq!(dups.duplicates, Some(0.95));
        for bad in [
            &br#"{"duplicates":0}"#[..],
            br#"{"duplicates":1.5}"#,
            br#"{"duplicates":-0.5}"#,
        ] {
            assert!(
                SearchRequest::parse(bad, 100).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn every_field_a_search_serialises_is_one_parse_accepts() {
        let full = SearchRequest {
            k: Some(3),
            id: Some("q".into()),
            like: Some("p".into()),
            mode: Some(SearchMode::Server),
            duplicates: Some(0.9),
            lang: Some("de".into()),
            filter: Filter {
                folder: Some("/f".into()),
                after: Some(1),
                before: Some(2),
                min_score: Some(0.1),
                source: Some("door".into()),
            },
            ..SearchRequest::text("t")
        };
        let json = serde_json::to_value(&full).unwrap();
        let fields: Vec<&String> = json.as_object().unwrap().keys().collect();
        assert_eq!(fields.len(), SEARCH_FIELDS.len(), "{fields:?}");
        let back = SearchRequest::parse(json.to_string().as_bytes(), 100).unwrap();
        assert_eq!(back, full);
    }

    #[test]
    fn bad_searches_are_refused_with_a_reason() {
        assert!(SearchRequest::parse(b"", 100).is_err());
        assert!(SearchRequest::parse(b"   ", 100).is_err());
        assert!(SearchRequest::parse(&[0xff, 0xfe, b'a'], 100).is_err());
        let unknown = SearchRequest::parse(br#"{"txt":"x"}"#, 100).unwrap_err();
        assert!(
            unknown.to_string().contains("unknown field `txt`"),
            "{unknown}"
        );
        assert!(SearchRequest::parse(br#"{"text":5}"#, 100).is_err());
        assert!(SearchRequest::parse(br#"{"text":"x","k":0}"#, 100).is_err());
        assert!(SearchRequest::parse("x".repeat(101).as_bytes(), 100).is_err());
        assert!(SearchRequest::parse(br#"{"text":"x","lang":"de CH"}"#, 100).is_err());
        let german = SearchRequest::parse(br#"{"text":"ein Hund","lang":"de"}"#, 100).unwrap();
        assert_eq!(german.lang.as_deref(), Some("de"));
    }

    #[test]
    fn fleet_searches_parse_and_bad_ones_are_refused() {
        assert_eq!(
            FleetSearchRequest::parse(b" a red circle ", 100).unwrap(),
            FleetSearchRequest::text("a red circle")
        );
        let json = FleetSearchRequest::parse(
            br#"{"text":"x","k":3,"id":"q-1","deadline_ms":500,"reply_to":"nodered/answers"}"#,
            100,
        )
        .unwrap();
        assert_eq!(
            (json.k, json.deadline_ms, json.id.as_deref()),
            (Some(3), Some(500), Some("q-1"))
        );
        let chinese =
            FleetSearchRequest::parse(r#"{"text":"海滩上的狗","lang":"zh-CN"}"#.as_bytes(), 100)
                .unwrap();
        assert_eq!(chinese.lang.as_deref(), Some("zh-CN"));
        for bad in [
            &br#"{"text":""}"#[..],
            br#"{"text":"x","k":0}"#,
            br#"{"text":"x","id":"a/b"}"#,
            br#"{"text":"x","reply_to":"edgeclip/cam/search"}"#,
            br#"{"text":"x","deadline_ms":0}"#,
            br#"{"text":"x","like":"y"}"#,
            br#"{"text":"x","lang":""}"#,
        ] {
            assert!(
                FleetSearchRequest::parse(bad, 100).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let results = FleetResponse::Results(FleetResults {
            id: "q".into(),
            text: "t".into(),
            model: "m".into(),
            took_ms: 1,
            asked: vec!["a".into()],
            answered: vec![],
            missing: vec!["a".into()],
            failed: vec![],
            offline: vec![],
            hits: vec![],
        });
        let back: FleetResponse =
            serde_json::from_str(&serde_json::to_string(&results).unwrap()).unwrap();
        assert_eq!(back, results);
        let error: FleetResponse =
            serde_json::from_str(r#"{"id":"q","error":"no device is online"}"#).unwrap();
        assert!(matches!(error, FleetResponse::Error(_)));
    }

    #[test]
    fn responses_parse_back_into_the_right_variant() {
        let ok = r#"{"id":"1","text":"t","model":"m","took_ms":3,"hits":[{"path":"a.jpg","score":0.5,"taken_s":0}]}"#;
        assert!(matches!(
            serde_json::from_str::<SearchResponse>(ok).unwrap(),
            SearchResponse::Results(_)
        ));
        let err = r#"{"id":"1","error":"cloud did not answer within 5000 ms"}"#;
        let parsed = serde_json::from_str::<SearchResponse>(err).unwrap();
        assert!(matches!(parsed, SearchResponse::Error(_)));
        assert_eq!(parsed.id(), "1");
    }
}
