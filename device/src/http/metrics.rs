//! `GET /metrics`: the device's status in Prometheus' text format (version 0.0.4), for the
//! Grafana/Prometheus setups NAS owners already run. Every value comes from the same
//! [`DeviceStatus`] the status topic carries, so the two never disagree.

use std::fmt::Write;

use edgeclip_messages::dashboard::{DeviceState, DeviceStatus};

/// The content type Prometheus expects for this format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Renders `status` as Prometheus metrics.
pub fn render(status: &DeviceStatus) -> String {
    let mut out = String::new();
    let device = label(&status.device_id);
    let mut one = |name: &str, kind: &str, help: &str, value: f64| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        let _ = writeln!(out, "{name}{{device=\"{device}\"}} {value}");
    };
    one(
        "edgeclip_pictures_indexed",
        "gauge",
        "Pictures in the serving index.",
        status.indexed as f64,
    );
    one(
        "edgeclip_pictures_pending",
        "gauge",
        "Pictures found and not indexed yet.",
        status.pending as f64,
    );
    one(
        "edgeclip_pictures_failed",
        "gauge",
        "Pictures that could not be read or encoded.",
        status.failed as f64,
    );
    one(
        "edgeclip_pictures_unsaved",
        "gauge",
        "Encoded pictures waiting for the disk to accept them.",
        status.unsaved as f64,
    );
    one(
        "edgeclip_pictures_encoded_total",
        "counter",
        "Pictures encoded since the device started.",
        status.encoded as f64,
    );
    one(
        "edgeclip_encode_rate_per_second",
        "gauge",
        "Pictures encoded per second, recently.",
        status.rate_per_s,
    );
    one(
        "edgeclip_encoder_batch",
        "gauge",
        "Pictures per run of the image tower.",
        f64::from(status.encoder_batch),
    );
    one(
        "edgeclip_storage_error",
        "gauge",
        "1 while the index cannot be written.",
        if status.storage_error.is_some() {
            1.0
        } else {
            0.0
        },
    );
    if let Some(r) = &status.reindex {
        one(
            "edgeclip_reindex_indexed",
            "gauge",
            "Pictures in the index being built for a new model.",
            r.indexed as f64,
        );
        one(
            "edgeclip_reindex_total",
            "gauge",
            "Pictures the index being built will hold.",
            r.total as f64,
        );
    }
    let _ = writeln!(
        out,
        "# HELP edgeclip_state The device's state (1 for the current one)."
    );
    let _ = writeln!(out, "# TYPE edgeclip_state gauge");
    for (state, name) in [
        (DeviceState::Starting, "starting"),
        (DeviceState::Indexing, "indexing"),
        (DeviceState::Idle, "idle"),
        (DeviceState::Stopping, "stopping"),
    ] {
        let on = u8::from(status.state == state);
        let _ = writeln!(
            out,
            "edgeclip_state{{device=\"{device}\",state=\"{name}\"}} {on}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP edgeclip_model_info The model of the serving index.\n# TYPE edgeclip_model_info gauge\nedgeclip_model_info{{device=\"{device}\",model=\"{}\",dim=\"{}\",version=\"{}\"}} 1",
        label(&status.model),
        status.dim,
        label(&status.version)
    );
    if !status.cameras.is_empty() {
        for (name, help, value) in [
            (
                "edgeclip_camera_polls_total",
                "Snapshots fetched.",
                (|c: &edgeclip_messages::dashboard::CameraStatus| c.polled) as fn(&_) -> u64,
            ),
            (
                "edgeclip_camera_poll_failures_total",
                "Polls that failed.",
                |c| c.failed,
            ),
            ("edgeclip_camera_frames_kept_total", "Frames kept.", |c| {
                c.kept
            }),
            (
                "edgeclip_camera_frames_skipped_total",
                "Frames deleted as near-duplicates.",
                |c| c.skipped,
            ),
            (
                "edgeclip_camera_frames_pruned_total",
                "Frames deleted for age or count.",
                |c| c.pruned,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for camera in &status.cameras {
                let _ = writeln!(
                    out,
                    "{name}{{device=\"{device}\",camera=\"{}\"}} {}",
                    label(&camera.name),
                    value(camera)
                );
            }
        }
    }
    out
}

/// A label value escaped as the format requires (backslash, quote, newline).
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgeclip_messages::dashboard::{CameraStatus, Reindex};

    fn status() -> DeviceStatus {
        DeviceStatus {
            device_id: "nas\"1".into(),
            state: DeviceState::Indexing,
            indexed: 120,
            storage_error: Some("disk full".into()),
            unsaved: 3,
            pending: 7,
            failed: 2,
            encoded: 130,
            rate_per_s: 4.5,
            eta_s: Some(2),
            model: "clip-shapes@abc".into(),
            dim: 64,
            folders: vec![],
            recent_failures: vec![],
            reindex: Some(Reindex {
                model: "new@def".into(),
                indexed: 10,
                total: 127,
            }),
            cameras: vec![CameraStatus {
                name: "door".into(),
                polled: 9,
                failed: 1,
                kept: 3,
                skipped: 5,
                pruned: 2,
                last_error: None,
            }],
            encoder_batch: 4,
            version: "0.1.0".into(),
        }
    }

    #[test]
    fn every_counter_of_the_status_is_a_sample_with_escaped_labels() {
        let text = render(&status());
        for line in [
            "edgeclip_pictures_indexed{device=\"nas\\\"1\"} 120",
            "edgeclip_pictures_pending{device=\"nas\\\"1\"} 7",
            "edgeclip_storage_error{device=\"nas\\\"1\"} 1",
            "edgeclip_encode_rate_per_second{device=\"nas\\\"1\"} 4.5",
            "edgeclip_reindex_total{device=\"nas\\\"1\"} 127",
            "edgeclip_state{device=\"nas\\\"1\",state=\"indexing\"} 1",
            "edgeclip_state{device=\"nas\\\"1\",state=\"idle\"} 0",
            "edgeclip_camera_frames_pruned_total{device=\"nas\\\"1\",camera=\"door\"} 2",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        // Each metric is declared once, before its samples.
        let types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE")).collect();
        let mut unique = types.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(types.len(), unique.len());
    }
}
