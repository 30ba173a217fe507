//! How a search's answer is presented, pure: thumbnail URLs on hits, the best match to
//! publish for dashboards, the text an answer names for a "like" or "duplicates" search, and
//! `took_ms`. Reading and thumbnailing the best match's file is the shell's IO; this only
//! says which picture it is.

use std::time::Instant;

use edgeclip_messages::dashboard::SearchResponse;
use edgeclip_messages::Hit;

/// The URL of a picture's thumbnail on the device's HTTP endpoint at `base`
/// (`http://host:port`).
pub fn thumb_url(base: &str, id: &str) -> String {
    format!("{base}/thumb/{id}")
}

/// Gives each hit the URL of its thumbnail when the device's HTTP endpoint is on (`base`).
pub fn add_thumb_urls(base: Option<&str>, hits: &mut [Hit]) {
    if let Some(base) = base {
        for hit in hits {
            hit.thumb_url = Some(thumb_url(base, &hit.id));
        }
    }
}

/// Gives the ranked hits of an answer their thumbnail URLs. The pictures of a duplicates
/// search's `groups` get none.
pub fn add_response_thumb_urls(base: Option<&str>, response: &mut SearchResponse) {
    if let SearchResponse::Results(results) = response {
        add_thumb_urls(base, &mut results.hits);
    }
}

/// What dashboards are shown of an answer's best match: the URL published retained on
/// `best/url` (when the hit has one), and the picture whose thumbnail the shell may make and
/// publish on `best/image`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BestMatch {
    /// The best hit's thumbnail URL, if the HTTP endpoint is on.
    pub url: Option<String>,
    /// The best hit's path on the device.
    pub path: String,
}

/// The best match of an answer: its first ranked hit. Errors and duplicates searches (whose
/// `hits` are empty) have none.
pub fn best_match(response: &SearchResponse) -> Option<BestMatch> {
    let SearchResponse::Results(results) = response else {
        return None;
    };
    results.hits.first().map(|best| BestMatch {
        url: best.thumb_url.clone(),
        path: best.path.clone(),
    })
}

/// The text a "more like this" search answers with: the request's text, or `like <picture>`
/// when it has none.
pub fn like_text(text: String, like: &str) -> String {
    if text.is_empty() {
        format!("like {like}")
    } else {
        text
    }
}

/// The text a near-duplicates search answers with: the request's text, or
/// `duplicates at <threshold>` when it has none.
pub fn duplicates_text(text: String, threshold: f32) -> String {
    if text.is_empty() {
        format!("duplicates at {threshold}")
    } else {
        text
    }
}

/// Whole milliseconds from `started` to `now` (0 if `now` is earlier).
pub fn took_ms(started: Instant, now: Instant) -> u64 {
    now.saturating_duration_since(started).as_millis() as u64
}

/// The JSON published on the device's results topic.
pub fn results_json(response: &SearchResponse) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(response)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use edgeclip_messages::dashboard::{SearchError, SearchResults};

    use super::*;

    fn hit(id: &str, path: &str) -> Hit {
        Hit {
            id: id.into(),
            path: path.into(),
            score: 0.5,
            ..Hit::default()
        }
    }

    fn results(hits: Vec<Hit>, groups: Vec<Vec<Hit>>) -> SearchResponse {
        SearchResponse::Results(SearchResults {
            id: "q".into(),
            text: "t".into(),
            model: "m".into(),
            took_ms: 0,
            hits,
            partial: false,
            groups,
        })
    }

    #[test]
    fn hits_get_thumbnail_urls_only_when_the_http_endpoint_is_on() {
        let mut hits = vec![hit("00000000000000aa", "/p/a.jpg")];
        add_thumb_urls(None, &mut hits);
        assert_eq!(hits[0].thumb_url, None);
        add_thumb_urls(Some("http://cam.local:8080"), &mut hits);
        assert_eq!(
            hits[0].thumb_url.as_deref(),
            Some("http://cam.local:8080/thumb/00000000000000aa")
        );
    }

    #[test]
    fn an_answer_gets_urls_on_its_hits_and_none_in_its_groups() {
        let mut response = results(vec![hit("a", "/a")], vec![vec![hit("b", "/b")]]);
        add_response_thumb_urls(Some("http://d"), &mut response);
        let SearchResponse::Results(r) = response else {
            panic!("not results")
        };
        assert_eq!(r.hits[0].thumb_url.as_deref(), Some("http://d/thumb/a"));
        assert_eq!(r.groups[0][0].thumb_url, None);
    }

    #[test]
    fn the_best_match_is_the_first_hit_and_errors_have_none() {
        let mut response = results(vec![hit("a", "/p/a.jpg"), hit("b", "/p/b.jpg")], vec![]);
        assert_eq!(
            best_match(&response),
            Some(BestMatch {
                url: None,
                path: "/p/a.jpg".into()
            })
        );
        add_response_thumb_urls(Some("http://d"), &mut response);
        assert_eq!(
            best_match(&response).and_then(|b| b.url).as_deref(),
            Some("http://d/thumb/a")
        );
        assert_eq!(
            best_match(&results(vec![], vec![vec![hit("a", "/a")]])),
            None
        );
        let error = SearchResponse::Error(SearchError {
            id: "q".into(),
            error: "e".into(),
        });
        assert_eq!(best_match(&error), None);
    }

    #[test]
    fn like_and_duplicates_searches_are_named_by_their_text_or_their_subject() {
        assert_eq!(like_text(String::new(), "/p/a.jpg"), "like /p/a.jpg");
        assert_eq!(like_text("mine".into(), "/p/a.jpg"), "mine");
        assert_eq!(duplicates_text(String::new(), 0.95), "duplicates at 0.95");
        assert_eq!(duplicates_text("mine".into(), 0.95), "mine");
    }

    #[test]
    fn took_ms_counts_whole_milliseconds_and_never_goes_negative() {
        let t0 = Instant::now();
        assert_eq!(took_ms(t0, t0 + Duration::from_micros(120_900)), 120);
        assert_eq!(took_ms(t0 + Duration::from_secs(1), t0), 0);
    }
}
