//! How answers are printed for people: a ranked table, a status summary.

use std::fmt::Write;

use edgeclip_messages::dashboard::{DeviceStatus, FleetResponse, SearchResponse};

/// A search answer as a table (rank, score, path), or its error line.
pub fn results_table(response: &SearchResponse) -> String {
    match response {
        SearchResponse::Error(e) => format!("error: {}\n", e.error),
        SearchResponse::Results(r) => {
            let mut out = String::new();
            if !r.groups.is_empty() {
                for (g, group) in r.groups.iter().enumerate() {
                    let _ = writeln!(out, "group {} ({} pictures)", g + 1, group.len());
                    for hit in group {
                        let _ = writeln!(
                            out,
                            "      {:>7.4}  {:<16}  {}",
                            hit.score, hit.id, hit.path
                        );
                    }
                }
                let _ = writeln!(
                    out,
                    "{} groups of near-duplicates in {} ms (model {})",
                    r.groups.len(),
                    r.took_ms,
                    r.model
                );
                return out;
            }
            if r.hits.is_empty() {
                let _ = writeln!(out, "no pictures indexed yet ({} ms)", r.took_ms);
                return out;
            }
            let _ = writeln!(
                out,
                "{:>4}  {:>7}  {:<16}  {:>11}  path",
                "#", "score", "id", "size"
            );
            for (i, hit) in r.hits.iter().enumerate() {
                let size = format!("{}x{}", hit.width, hit.height);
                let _ = writeln!(
                    out,
                    "{:>4}  {:>7.4}  {:<16}  {:>11}  {}",
                    i + 1,
                    hit.score,
                    hit.id,
                    size,
                    hit.path
                );
            }
            let _ = writeln!(
                out,
                "{} hits for {:?} in {} ms (model {})",
                r.hits.len(),
                r.text,
                r.took_ms,
                r.model
            );
            if r.partial {
                let _ = writeln!(out, "partial: the device is re-indexing for this model; pictures not re-encoded yet are missing");
            }
            out
        }
    }
}

/// A fleet answer as a table (rank, score, device, path), then the devices that did not
/// answer in time, failed or are offline; or its error line.
pub fn fleet_table(response: &FleetResponse) -> String {
    match response {
        FleetResponse::Error(e) => format!("error: {}\n", e.error),
        FleetResponse::Results(r) => {
            let mut out = String::new();
            let width = r
                .hits
                .iter()
                .map(|h| h.device.as_deref().unwrap_or_default().len())
                .max()
                .unwrap_or(0)
                .max("device".len());
            let _ = writeln!(
                out,
                "{:>4}  {:>7}  {:<width$}  path",
                "#", "score", "device"
            );
            for (i, hit) in r.hits.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "{:>4}  {:>7.4}  {:<width$}  {}",
                    i + 1,
                    hit.score,
                    hit.device.as_deref().unwrap_or_default(),
                    hit.path
                );
            }
            let _ = writeln!(
                out,
                "{} hits for {:?} from {} of {} devices in {} ms (model {})",
                r.hits.len(),
                r.text,
                r.answered.len(),
                r.asked.len(),
                r.took_ms,
                r.model
            );
            if !r.missing.is_empty() {
                let _ = writeln!(
                    out,
                    "missing (no answer before the deadline): {}",
                    r.missing.join(", ")
                );
            }
            for f in &r.failed {
                let _ = writeln!(out, "failed: {}: {}", f.device, f.error);
            }
            if !r.offline.is_empty() {
                let _ = writeln!(out, "offline (not asked): {}", r.offline.join(", "));
            }
            out
        }
    }
}

/// A device status for people.
pub fn status_summary(s: &DeviceStatus) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "device   {} ({:?}, edgeclip {})",
        s.device_id, s.state, s.version
    );
    let _ = writeln!(
        out,
        "indexed  {} pictures, {} pending, {} failed ({} encoded since start)",
        s.indexed, s.pending, s.failed, s.encoded
    );
    let _ = writeln!(out, "model    {} (dimension {})", s.model, s.dim);
    if let Some(r) = &s.reindex {
        let _ = writeln!(
            out,
            "reindex  {} of {} pictures for model {} (searches use {} until done)",
            r.indexed, r.total, r.model, s.model
        );
    }
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
        Hit {
            path: path.into(),
            score,
            taken_s: 0,
            id: "0123456789abcdef".into(),
            bytes: 1,
            width: 2,
            height: 3,
            ..Hit::default()
        }
    }

    #[test]
    fn tables_list_hits_in_order_and_errors_in_one_line() {
        let r = SearchResponse::Results(SearchResults {
            id: "1".into(),
            text: "a red circle".into(),
            model: "m".into(),
            took_ms: 12,
            hits: vec![hit("a.jpg", 0.5), hit("b.jpg", 0.25)],
            partial: false,
            groups: Vec::new(),
        });
        let t = results_table(&r);
        assert!(t.find("a.jpg").unwrap() < t.find("b.jpg").unwrap());
        assert!(t.contains("0.5000") && t.contains("2 hits"));
        assert!(t.contains("0123456789abcdef") && t.contains("2x3"), "{t}");
        let e = SearchResponse::Error(SearchError {
            id: "1".into(),
            error: "cloud did not answer".into(),
        });
        assert_eq!(results_table(&e), "error: cloud did not answer\n");
    }

    #[test]
    fn fleet_tables_name_the_device_of_each_hit_and_the_missing_ones() {
        use edgeclip_messages::dashboard::FleetResults;
        let hit = |device: &str, path: &str, score| Hit {
            device: Some(device.into()),
            path: path.into(),
            score,
            ..Hit::default()
        };
        let r = FleetResponse::Results(FleetResults {
            id: "1".into(),
            text: "a red circle".into(),
            model: "m".into(),
            took_ms: 40,
            asked: vec!["cam".into(), "ghost".into(), "nas".into()],
            answered: vec!["cam".into(), "nas".into()],
            missing: vec!["ghost".into()],
            failed: vec![],
            offline: vec!["old".into()],
            hits: vec![hit("nas", "/p/a.jpg", 0.5), hit("cam", "/c/b.jpg", 0.25)],
        });
        let t = fleet_table(&r);
        let first = t.lines().nth(1).unwrap();
        assert!(first.contains("nas") && first.contains("/p/a.jpg"), "{t}");
        assert!(t.contains("from 2 of 3 devices"), "{t}");
        assert!(
            t.contains("missing (no answer before the deadline): ghost"),
            "{t}"
        );
        assert!(t.contains("offline (not asked): old"), "{t}");
    }
}
