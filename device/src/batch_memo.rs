//! Remembers the image tower's measured batch in the state folder, per model and machine, so
//! that a restart does not measure it again (on a Pi with ViT-B-32 that is ~10 runs of the
//! model).
//!
//! The file is a cache: a missing, unreadable or stale one (another model, another CPU) means
//! measuring again, and a failed write costs only the next start's measurement.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::encode::BatchTimings;

/// File name in the state folder.
pub const FILE: &str = "encoder-batch.json";

/// What is kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Memo {
    model: String,
    machine: String,
    batch: usize,
    single_ms: Option<f64>,
    batched_ms: Vec<(usize, f64)>,
    #[serde(default)]
    single_again_ms: Option<f64>,
}

fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

/// The batch measured earlier for `model` on `machine`, if any.
pub fn recall(state_dir: &Path, model: &str, machine: &str) -> Option<usize> {
    let bytes = std::fs::read(path(state_dir)).ok()?;
    let memo: Memo = serde_json::from_slice(&bytes).ok()?;
    (memo.model == model
        && memo.machine == machine
        && (1..=crate::encode::MAX_AUTO_BATCH).contains(&memo.batch))
    .then_some(memo.batch)
}

/// Keeps `batch` (with the timings that chose it) for `model` on `machine`.
pub fn remember(
    state_dir: &Path,
    model: &str,
    machine: &str,
    batch: usize,
    timings: &BatchTimings,
) -> std::io::Result<()> {
    let memo = Memo {
        model: model.to_string(),
        machine: machine.to_string(),
        batch,
        single_ms: timings.single_ms,
        batched_ms: timings.batched_ms.clone(),
        single_again_ms: timings.single_again_ms,
    };
    std::fs::create_dir_all(state_dir)?;
    let tmp = state_dir.join(format!("{FILE}.tmp"));
    std::fs::write(
        &tmp,
        serde_json::to_vec_pretty(&memo).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(tmp, path(state_dir))
}

/// This machine as far as the speed of the model goes: architecture, cores and the CPU's name
/// (`model name` on x86, the board's `Model` or the cores' `CPU part` on ARM).
pub fn this_machine() -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        cpuinfo.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == name).then(|| v.trim().to_string())
        })
    };
    let cpu = field("model name")
        .or_else(|| field("Model"))
        .or_else(|| field("CPU part"))
        .unwrap_or_default();
    format!("{} {cores} cores {cpu}", std::env::consts::ARCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_recalled_only_for_its_model_and_machine() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        assert_eq!(recall(&state, "m", "x"), None);
        let timings = BatchTimings {
            single_ms: Some(140.0),
            batched_ms: vec![(2, 125.0), (3, 117.0), (4, 180.0)],
            single_again_ms: Some(138.0),
            batch_1_only: None,
        };
        remember(&state, "m", "x", 3, &timings).unwrap();
        assert_eq!(recall(&state, "m", "x"), Some(3));
        assert_eq!(recall(&state, "other model", "x"), None);
        assert_eq!(recall(&state, "m", "another machine"), None);
        // A damaged file or an impossible batch means measuring again.
        std::fs::write(state.join(FILE), b"{not json").unwrap();
        assert_eq!(recall(&state, "m", "x"), None);
        remember(&state, "m", "x", 99, &timings).unwrap();
        assert_eq!(recall(&state, "m", "x"), None);
        assert!(this_machine().starts_with(std::env::consts::ARCH));
    }
}
