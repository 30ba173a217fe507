//! How answers are printed for people: a ranked table, a status summary.

use std::fmt::Write;

use edgeclip_messages::dashboard::{DeviceStatus, SearchResponse};

/// A search answer as a table (rank, score, path), or its error line.
pub fn results_table(response: &SearchResponse) -> String {
    match response {
        SearchResponse::Error(e) => format!("error: {}\n", e.error),
        SearchResponse::Results(r) => {
            let mut out = String::new();
            if r.hits.is_empty() {
                let _ = writeln!(out, "no pictures indexed yet ({} ms)", r.took_ms);
                return out;
            }
            let _ = writeln!(out, "{:>4}  {:>7}  {:<16}  {:>11}  path", "#", "score", "id", "size");
            for (i, hit) in r.hits.iter().enumerate() {
                let size = format!("{}x{}", hit.width, hit.height);
                let _ = writeln!(out, "{:>4}  {:>7.4}  {:<16}  {:>11}  {}", i + 1, hit.score, hit.id, size, hit.path);
            }
            let _ = writeln!(out, "{} hits for {:?} in {} ms (model {})", r.hits.len(), r.text, r.took_ms, r.model);
            out
        }
    }
}

/// A device status for people.
pub fn status_summary(s: &DeviceStatus) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "device   {} ({:?}, edgeclip {})", s.device_id, s.state, s.version);
    let _ = writeln!(out, "indexed  {} pictures, {} pending, {} failed ({} encoded since start)", s.indexed, s.pending, s.failed, s.encoded);
    let _ = writeln!(out, "model    {} (dimension {})", s.model, s.dim);
    let _ = writeln!(out, "folders  {}", s.folders.join(", "));
    for f in &s.recent_failures {
        let _ = writeln!(out, "skipped  {}: {}", f.path, f.error);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgeclip_messages::dashboard::{Hit, SearchError, SearchResults};

    fn hit(path: &str, score: f32) -> Hit {
        Hit { path: path.into(), score, taken_s: 0, id: "0123456789abcdef".into(), bytes: 1, width: 2, height: 3, thumb_url: None }
    }

    #[test]
    fn tables_list_hits_in_order_and_errors_in_one_line() {
        let r = SearchResponse::Results(SearchResults {
            id: "1".into(),
            text: "a red circle".into(),
            model: "m".into(),
            took_ms: 12,
            hits: vec![hit("a.jpg", 0.5), hit("b.jpg", 0.25)],
        });
        let t = results_table(&r);
        assert!(t.find("a.jpg").unwrap() < t.find("b.jpg").unwrap());
        assert!(t.contains("0.5000") && t.contains("2 hits"));
        assert!(t.contains("0123456789abcdef") && t.contains("2x3"), "{t}");
        let e = SearchResponse::Error(SearchError { id: "1".into(), error: "cloud did not answer".into() });
        assert_eq!(results_table(&e), "error: cloud did not answer\n");
    }
}
