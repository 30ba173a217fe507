//! Indexing progress as the status reports it: pictures queued and settling, handled, failed
//! and encoded; the rate of the current run and the time left. A pure engine: the time is
//! passed in, never read here, so the rules are tested with made-up instants.
//!
//! A *run* starts when a scan queues pictures while nothing was pending, and ends when nothing
//! is pending or settling any more; the rate is the run's pictures over its duration, so a
//! device that was idle for a day does not report a rate diluted by that day.

use std::collections::VecDeque;
use std::path::Path;
use std::time::Instant;

use edgeclip_messages::dashboard::{CameraStatus, DeviceState, DeviceStatus, Failure, Reindex};

use crate::index::Inventory;

/// Failures kept for the status message (the newest; the count of all is kept apart).
pub const RECENT_FAILURES: usize = 10;

/// What the status says besides progress and the index: fixed for the device's lifetime.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    /// The device id.
    pub device_id: String,
    /// The folders indexed.
    pub folders: Vec<String>,
    /// Pictures per run of the image tower.
    pub encoder_batch: usize,
}

/// Progress counters of the device's indexing.
#[derive(Debug)]
pub struct Progress {
    /// Pictures queued for encoding and not handled yet.
    pending: u64,
    /// Pictures found but still being written, at the last scan.
    settling: u64,
    /// Start of the current run and the pictures handled in it.
    run: Option<(Instant, u64)>,
    failed: u64,
    encoded: u64,
    recent: VecDeque<Failure>,
    /// Starting (until the first scan) or stopping; `None`: indexing or idle, as pending says.
    lifecycle: Option<DeviceState>,
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress {
    /// A device that has not scanned yet: `starting`.
    pub fn new() -> Self {
        Progress {
            pending: 0,
            settling: 0,
            run: None,
            failed: 0,
            encoded: 0,
            recent: VecDeque::new(),
            lifecycle: Some(DeviceState::Starting),
        }
    }

    /// A scan finished at `now`: it queued `queued` pictures and left `settling` ones for a
    /// later scan. The first scan ends `starting`: before it, "nothing pending" does not mean
    /// "everything indexed".
    pub fn scanned(&mut self, queued: u64, settling: u64, now: Instant) {
        if self.pending == 0 && queued > 0 {
            self.run = Some((now, 0));
        }
        self.pending += queued;
        self.settling = settling;
        if self.lifecycle == Some(DeviceState::Starting) {
            self.lifecycle = None;
        }
    }

    /// One queued picture was handled (indexed, kept waiting for the store, or discarded as
    /// a camera's near-duplicate); `encoded` if the image tower ran for it.
    pub fn handled(&mut self, encoded: bool) {
        self.done_one();
        self.encoded += u64::from(encoded);
    }

    /// One queued picture could not be indexed.
    pub fn failed(&mut self, path: &Path, error: String) {
        self.done_one();
        self.record_failure(path, error);
    }

    /// A picture counted as failed that was not queued (a format edgeclip cannot read, or an
    /// encoded picture the store could not take).
    pub fn record_failure(&mut self, path: &Path, error: String) {
        tracing::warn!(path = %path.display(), %error, "picture skipped");
        self.failed += 1;
        if self.recent.len() == RECENT_FAILURES {
            self.recent.pop_front();
        }
        self.recent.push_back(Failure {
            path: path.display().to_string(),
            error,
        });
    }

    /// The device is shutting down.
    pub fn stopping(&mut self) {
        self.lifecycle = Some(DeviceState::Stopping);
    }

    /// Starting or stopping: not the time to switch indexes.
    pub fn in_lifecycle(&self) -> bool {
        self.lifecycle.is_some()
    }

    /// Nothing queued or settling: every picture found was handled. Ends the current run.
    pub fn caught_up(&mut self) -> bool {
        let caught_up = self.pending + self.settling == 0;
        if caught_up {
            self.run = None;
        }
        caught_up
    }

    fn done_one(&mut self) {
        self.pending = self.pending.saturating_sub(1);
        if let Some((_, done)) = &mut self.run {
            *done += 1;
        }
    }

    /// Pictures handled per second in the current run, at `now` (0 outside a run).
    pub fn rate(&self, now: Instant) -> f64 {
        match self.run {
            Some((started, done)) if done > 0 => {
                done as f64
                    / now
                        .saturating_duration_since(started)
                        .as_secs_f64()
                        .max(1e-3)
            }
            _ => 0.0,
        }
    }

    /// The status at `now`, with what the index holds and the cameras' counters.
    pub fn status(
        &self,
        now: Instant,
        identity: &Identity,
        inventory: &Inventory,
        cameras: &[CameraStatus],
    ) -> DeviceStatus {
        let waiting = self.pending + self.settling + inventory.unsaved + inventory.held;
        let state = self.lifecycle.unwrap_or(if waiting > 0 {
            DeviceState::Indexing
        } else {
            DeviceState::Idle
        });
        let rate = self.rate(now);
        DeviceStatus {
            device_id: identity.device_id.clone(),
            state,
            indexed: inventory.indexed,
            storage_error: inventory.storage_error.clone(),
            unsaved: inventory.unsaved,
            pending: waiting,
            failed: self.failed,
            encoded: self.encoded,
            rate_per_s: rate,
            eta_s: (waiting > 0 && rate > 0.0).then(|| (waiting as f64 / rate).ceil() as u64),
            model: inventory.model.clone(),
            dim: inventory.dim,
            folders: identity.folders.clone(),
            recent_failures: self.recent.iter().cloned().collect(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            cameras: cameras.to_vec(),
            encoder_batch: identity.encoder_batch as u32,
            reindex: inventory.building.as_ref().map(|(model, indexed)| Reindex {
                model: model.clone(),
                indexed: *indexed,
                total: indexed + waiting,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn inventory() -> Inventory {
        Inventory {
            model: "m".into(),
            dim: 2,
            indexed: 5,
            ..Inventory::default()
        }
    }

    #[test]
    fn the_device_starts_then_indexes_then_is_idle() {
        let t0 = Instant::now();
        let (me, inv) = (Identity::default(), inventory());
        let mut p = Progress::new();
        assert_eq!(p.status(t0, &me, &inv, &[]).state, DeviceState::Starting);
        assert!(p.in_lifecycle());
        p.scanned(2, 1, t0);
        let s = p.status(t0, &me, &inv, &[]);
        assert_eq!(
            (s.state, s.pending, s.indexed),
            (DeviceState::Indexing, 3, 5)
        );
        p.handled(true);
        p.handled(false);
        assert!(!p.caught_up(), "one picture still settling");
        p.scanned(0, 0, t0);
        assert!(p.caught_up());
        let s = p.status(t0, &me, &inv, &[]);
        assert_eq!((s.state, s.pending, s.encoded), (DeviceState::Idle, 0, 1));
        p.stopping();
        assert_eq!(p.status(t0, &me, &inv, &[]).state, DeviceState::Stopping);
    }

    #[test]
    fn rate_and_eta_come_from_the_current_run_only() {
        let t0 = Instant::now();
        let (me, inv) = (Identity::default(), inventory());
        let mut p = Progress::new();
        p.scanned(10, 0, t0);
        assert_eq!(p.rate(t0 + Duration::from_secs(1)), 0.0, "nothing done yet");
        for _ in 0..4 {
            p.handled(true);
        }
        let at = t0 + Duration::from_secs(2);
        assert_eq!(p.rate(at), 2.0);
        let s = p.status(at, &me, &inv, &[]);
        assert_eq!((s.pending, s.rate_per_s, s.eta_s), (6, 2.0, Some(3)));
        // Pictures waiting for the store count as waiting too.
        let held = Inventory {
            unsaved: 1,
            held: 1,
            ..inventory()
        };
        assert_eq!(p.status(at, &me, &held, &[]).eta_s, Some(4));
        for _ in 0..6 {
            p.handled(false);
        }
        assert!(p.caught_up());
        assert_eq!(p.rate(at), 0.0, "the run ended");
        // A new run starts afresh, much later.
        let later = t0 + Duration::from_secs(3600);
        p.scanned(1, 0, later);
        p.handled(true);
        assert_eq!(p.rate(later + Duration::from_secs(1)), 1.0);
    }

    #[test]
    fn failures_are_counted_and_the_newest_kept() {
        let t0 = Instant::now();
        let mut p = Progress::new();
        p.scanned(RECENT_FAILURES as u64 + 3, 0, t0);
        for i in 0..RECENT_FAILURES + 3 {
            p.failed(Path::new(&format!("/p/{i}.jpg")), format!("bad {i}"));
        }
        p.record_failure(Path::new("/p/movie.mov"), "format not supported".into());
        let s = p.status(t0, &Identity::default(), &inventory(), &[]);
        assert_eq!((s.failed, s.pending), (RECENT_FAILURES as u64 + 4, 0));
        assert_eq!(s.recent_failures.len(), RECENT_FAILURES);
        assert_eq!(s.recent_failures.last().unwrap().path, "/p/movie.mov");
        assert_eq!(s.recent_failures[0].path, "/p/4.jpg");
    }

    #[test]
    fn a_reindex_reports_the_new_index_and_its_total() {
        let t0 = Instant::now();
        let mut p = Progress::new();
        p.scanned(3, 0, t0);
        let inv = Inventory {
            building: Some(("new".into(), 2)),
            ..inventory()
        };
        let s = p.status(t0, &Identity::default(), &inv, &[]);
        assert_eq!(
            s.reindex,
            Some(Reindex {
                model: "new".into(),
                indexed: 2,
                total: 5
            })
        );
        assert_eq!((s.model.as_str(), s.indexed), ("m", 5));
    }
}
