//! A camera's frames: their names (the UTC poll time, so names sort by time), which to prune
//! for age or count, and [`Retention`], the rule that keeps a new frame only if it differs
//! from the camera's last kept one.
//!
//! A frame is kept when its vector differs enough from the camera's last *kept* frame (cosine
//! below the threshold): a static scene keeps one frame, and a slow drift (the light over a
//! day) still adds one whenever it has drifted far enough. The rule applies only to frames the
//! camera just saved, never to a picture already kept (a re-index encodes every frame again).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use edgeclip_messages::dashboard::CameraStatus;

use crate::index::Entry;

/// A frame's file name (without extension) from its poll time, in UTC:
/// `YYYYMMDD-HHMMSS-mmm`, so names sort by time.
pub fn frame_name(unix_ms: i64) -> String {
    let (days, ms_of_day) = (
        unix_ms.div_euclid(86_400_000),
        unix_ms.rem_euclid(86_400_000),
    );
    let (y, m, d) = civil_from_days(days);
    let s = ms_of_day / 1000;
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}-{:03}",
        s / 3600,
        s / 60 % 60,
        s % 60,
        ms_of_day % 1000
    )
}

/// Length of a [`frame_name`]: `YYYYMMDD-HHMMSS-mmm`.
const FRAME_NAME_LEN: usize = 19;

/// Whether `file` is a frame the camera actor saved: a [`frame_name`], an optional `-n` (two
/// polls in one millisecond), then a picture extension. Nothing else in a camera's folder is
/// ever pruned.
pub fn is_frame_file(file: &str) -> bool {
    let Some((stem, ext)) = file.rsplit_once('.') else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let time = stem.get(..FRAME_NAME_LEN).unwrap_or("");
    let shape = time.len() == FRAME_NAME_LEN
        && digits(&time[..8])
        && &time[8..9] == "-"
        && digits(&time[9..15])
        && &time[15..16] == "-"
        && digits(&time[16..]);
    let rest = &stem[time.len()..];
    shape
        && (rest.is_empty() || rest.strip_prefix('-').is_some_and(digits))
        && ["jpg", "png", "gif", "webp", "bmp"].contains(&ext)
}

/// The frames of one camera's folder to delete, given its file names: every frame polled
/// before `cutoff_ms` (when set), then the oldest beyond the newest `keep` (when set). Frame
/// names sort by poll time, so no file is read; files that are not frames are never chosen.
pub fn frames_to_prune(
    names: impl IntoIterator<Item = String>,
    cutoff_ms: Option<i64>,
    keep: Option<usize>,
) -> Vec<String> {
    let mut frames: Vec<String> = names.into_iter().filter(|n| is_frame_file(n)).collect();
    frames.sort_unstable();
    let cutoff = cutoff_ms.map(frame_name);
    let too_old = cutoff.map_or(0, |c| frames.partition_point(|f| f[..FRAME_NAME_LEN] < *c));
    let too_many = keep.map_or(0, |k| frames.len().saturating_sub(k));
    frames.truncate(too_old.max(too_many));
    frames
}

/// Deletes the frames of `folder` that [`frames_to_prune`] chooses, leaving out the names in
/// `waiting` (frames not judged yet: neither counted nor deleted). Only names are listed:
/// cheap at every poll even with tens of thousands of frames. Returns how many were deleted
/// and what failed (a frame already gone is not a failure).
pub fn prune_frames(
    folder: &Path,
    waiting: &HashSet<String>,
    cutoff_ms: Option<i64>,
    keep: Option<usize>,
) -> (usize, Vec<String>) {
    if cutoff_ms.is_none() && keep.is_none() {
        return (0, Vec::new());
    }
    let names: Vec<String> = match std::fs::read_dir(folder) {
        Ok(dir) => dir
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| !waiting.contains(n))
            .collect(),
        Err(e) => return (0, vec![format!("listing {}: {e}", folder.display())]),
    };
    let (mut deleted, mut problems) = (0, Vec::new());
    for frame in frames_to_prune(names, cutoff_ms, keep) {
        match std::fs::remove_file(folder.join(&frame)) {
            Ok(()) => deleted += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => problems.push(format!("deleting {frame}: {e}")),
        }
    }
    (deleted, problems)
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Whether a frame is a near-duplicate of the last kept one: the cosine of their unit vectors
/// is at least `threshold`. Vectors of different lengths are never duplicates.
pub fn near_duplicate(last_kept: &[f32], frame: &[f32], threshold: f32) -> bool {
    last_kept.len() == frame.len() && crate::rank::dot(last_kept, frame) >= threshold
}

/// Makes `entry` a frame of camera `name`: its source is the camera, and its capture time the
/// poll time (the file's modification time), whatever its EXIF says.
pub fn label(entry: &mut Entry, name: &str) {
    entry.source = name.into();
    entry.taken_s = entry.mtime_ns.div_euclid(1_000_000_000);
}

/// The counters of camera `name` before its first poll.
pub fn counts(name: &str) -> CameraStatus {
    CameraStatus {
        name: name.to_string(),
        polled: 0,
        failed: 0,
        kept: 0,
        skipped: 0,
        pruned: 0,
        last_error: None,
    }
}

/// What becomes of an encoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Not a frame the camera just saved: indexed like any picture.
    Index,
    /// A near-duplicate of the last kept frame: deleted, never indexed.
    Duplicate,
    /// Kept and indexed; then the oldest frames beyond the newest `keep` are deleted
    /// (`None`: no count limit), leaving out those still `waiting` for their own verdict.
    /// Frames are encoded in no set order, so a waiting frame may be older than this one: it
    /// is either a near-duplicate (deleted) or kept later, and never pushes a kept one out.
    Keep {
        /// Frames that stay, this one included.
        keep: Option<usize>,
        /// File names of the frames saved and not judged yet.
        waiting: HashSet<String>,
    },
}

/// One camera's rules for its frames and its counters for the status.
#[derive(Debug)]
pub struct Retention {
    threshold: f32,
    keep_frames: usize,
    /// Frames saved and not encoded yet: the only ones the near-duplicate rule applies to.
    fresh: HashSet<PathBuf>,
    /// The vector of the last kept frame; `None` until the index has been asked (inside:
    /// `None` when the camera has no frame yet).
    last_kept: Option<Option<Vec<f32>>>,
    counts: CameraStatus,
}

impl Retention {
    /// Camera `name`'s rules: a frame whose cosine with the last kept one is at least
    /// `threshold` is a near-duplicate; at most `keep_frames` frames are kept (0: no limit).
    pub fn new(name: &str, threshold: f32, keep_frames: usize) -> Self {
        Retention {
            threshold,
            keep_frames,
            fresh: HashSet::new(),
            last_kept: None,
            counts: counts(name),
        }
    }

    /// The counters for the status.
    pub fn counts(&self) -> &CameraStatus {
        &self.counts
    }

    /// A poll saved `frame`.
    pub fn saved(&mut self, frame: PathBuf) {
        self.counts.polled += 1;
        self.counts.last_error = None;
        self.fresh.insert(frame);
    }

    /// A poll failed.
    pub fn poll_failed(&mut self, error: String) {
        self.counts.failed += 1;
        self.counts.last_error = Some(error);
    }

    /// `n` frames were deleted for age or count.
    pub fn pruned(&mut self, n: usize) {
        self.counts.pruned += n as u64;
    }

    /// Labels an encoded picture of the camera's folder as its frame (see [`label`]).
    pub fn label(&self, entry: &mut Entry) {
        label(entry, &self.counts.name);
    }

    /// Whether judging `frame` needs the vector of the camera's last kept frame first (read
    /// once from the index, at the first fresh frame).
    pub fn needs_last_kept(&self, frame: &Path) -> bool {
        self.last_kept.is_none() && self.fresh.contains(frame)
    }

    /// The vector of the camera's newest frame in the index (`None`: it has none).
    pub fn last_kept_is(&mut self, vector: Option<Vec<f32>>) {
        self.last_kept = Some(vector);
    }

    /// Judges an encoded frame: a fresh one is a near-duplicate of the last kept frame, or
    /// becomes the last kept frame.
    pub fn judge(&mut self, frame: &Path, vector: &[f32]) -> Verdict {
        if !self.fresh.remove(frame) {
            return Verdict::Index;
        }
        let last = self.last_kept.get_or_insert(None);
        if last
            .as_deref()
            .is_some_and(|l| near_duplicate(l, vector, self.threshold))
        {
            self.counts.skipped += 1;
            return Verdict::Duplicate;
        }
        *last = Some(vector.to_vec());
        self.counts.kept += 1;
        Verdict::Keep {
            keep: (self.keep_frames > 0).then_some(self.keep_frames),
            waiting: self
                .fresh
                .iter()
                .filter_map(|f| Some(f.file_name()?.to_str()?.to_string()))
                .collect(),
        }
    }

    /// A frame that could not be encoded stays on disk (listed as failed by the index) and is
    /// no longer fresh.
    pub fn failed(&mut self, frame: &Path) {
        self.fresh.remove(frame);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_frame_files_are_pruned_oldest_first_by_age_and_count() {
        let day = 86_400_000i64;
        let t0 = 1_700_000_000_000i64;
        let frames: Vec<String> = (0..5)
            .map(|i| format!("{}.jpg", frame_name(t0 + i * day)))
            .collect();
        let mut names = frames.clone();
        names.extend(
            [
                "holiday.jpg",
                "notes.txt",
                ".frame.part",
                "20231114-221320-000.txt",
                "2023111-221320-000.jpg",
            ]
            .map(String::from),
        );
        names.push(format!("{}-1.png", frame_name(t0)));
        assert!(
            names[..5].iter().all(|n| is_frame_file(n)) && is_frame_file(names.last().unwrap())
        );
        assert!(!names[5..10].iter().any(|n| is_frame_file(n)), "{names:?}");
        // Nothing to do without limits.
        assert!(frames_to_prune(names.clone(), None, None).is_empty());
        // By age: frames polled before day 2.
        let old = frames_to_prune(names.clone(), Some(t0 + 2 * day), None);
        assert_eq!(
            old,
            vec![
                format!("{}-1.png", frame_name(t0)),
                frames[0].clone(),
                frames[1].clone()
            ]
        );
        // By count: the newest 2 stay.
        let many = frames_to_prune(names.clone(), None, Some(2));
        assert_eq!(many.len(), 4);
        assert!(!many.contains(&frames[3]) && !many.contains(&frames[4]));
        // Both: whichever removes more.
        assert_eq!(
            frames_to_prune(names.clone(), Some(t0 + 4 * day), Some(3)).len(),
            5
        );
        assert_eq!(
            frames_to_prune(names.clone(), Some(t0 + day), Some(5)).len(),
            2
        );
        // Keeping none deletes every frame, and only frames.
        assert_eq!(frames_to_prune(names, None, Some(0)).len(), 6);
    }

    #[test]
    fn frame_names_are_utc_times_that_sort() {
        assert_eq!(frame_name(0), "19700101-000000-000");
        assert_eq!(frame_name(1_709_210_096_789), "20240229-123456-789");
        assert_eq!(frame_name(-1), "19691231-235959-999");
        assert!(frame_name(1_709_210_096_789) < frame_name(1_709_210_097_000));
    }

    #[test]
    fn near_duplicates_are_at_or_above_the_threshold() {
        let a = [1.0, 0.0];
        assert!(near_duplicate(&a, &[1.0, 0.0], 0.98));
        assert!(near_duplicate(&a, &[0.99, 0.141], 0.98));
        assert!(!near_duplicate(&a, &[0.8, 0.6], 0.98));
        assert!(!near_duplicate(&a, &[1.0, 0.0, 0.0], 0.5));
    }

    #[test]
    fn only_fresh_frames_that_differ_from_the_last_kept_one_are_kept() {
        let mut r = Retention::new("door", 0.98, 3);
        let (a, b, c) = (
            Path::new("/cam/a.jpg"),
            Path::new("/cam/b.jpg"),
            Path::new("/cam/c.jpg"),
        );
        // A frame that was not just saved (found by a scan, re-indexed) is indexed as is.
        assert_eq!(r.judge(a, &[1.0, 0.0]), Verdict::Index);
        r.saved(a.to_path_buf());
        r.saved(b.to_path_buf());
        assert!(r.needs_last_kept(a) && !r.needs_last_kept(Path::new("/cam/other.jpg")));
        // The camera's newest frame in the index shows the scene already.
        r.last_kept_is(Some(vec![1.0, 0.0]));
        assert!(!r.needs_last_kept(a));
        assert_eq!(r.judge(a, &[0.99, 0.141]), Verdict::Duplicate);
        // c was saved after b but is judged first (encoding has no set order): the verdict on
        // c names b as waiting, so b is neither counted nor deleted by c's count limit.
        r.saved(c.to_path_buf());
        assert_eq!(
            r.judge(c, &[0.6, 0.8]),
            Verdict::Keep {
                keep: Some(3),
                waiting: HashSet::from(["b.jpg".to_string()]),
            }
        );
        assert_eq!(r.judge(b, &[0.61, 0.79]), Verdict::Duplicate);
        assert_eq!(r.judge(c, &[0.6, 0.8]), Verdict::Index, "judged once only");
        let counts = r.counts();
        assert_eq!((counts.polled, counts.kept, counts.skipped), (3, 1, 2));
    }

    #[test]
    fn a_camera_without_frames_keeps_its_first_and_failures_are_counted() {
        let mut r = Retention::new("yard", 0.9, 0);
        let a = Path::new("/yard/a.jpg");
        r.poll_failed("no snapshot".into());
        assert_eq!(r.counts().last_error.as_deref(), Some("no snapshot"));
        r.saved(a.to_path_buf());
        assert!(r.counts().last_error.is_none());
        r.last_kept_is(None);
        assert_eq!(
            r.judge(a, &[1.0, 0.0]),
            Verdict::Keep {
                keep: None,
                waiting: HashSet::new()
            }
        );
        // A frame that fails to encode is no longer fresh.
        let b = Path::new("/yard/b.jpg");
        r.saved(b.to_path_buf());
        r.failed(b);
        assert_eq!(r.judge(b, &[1.0, 0.0]), Verdict::Index);
        r.pruned(3);
        let c = r.counts();
        assert_eq!((c.polled, c.failed, c.kept, c.pruned), (2, 1, 1, 3));
        let mut e = Entry {
            path: PathBuf::from("/yard/a.jpg"),
            size: 1,
            mtime_ns: 1_700_000_000_999_000_000,
            hash: [0; 32],
            width: 1,
            height: 1,
            taken_s: 5,
            source: Box::default(),
        };
        r.label(&mut e);
        assert_eq!((&*e.source, e.taken_s), ("yard", 1_700_000_000));
    }
}
