//! [`CameraActor`]: one camera. Polls its snapshot URL every `interval`, saves each frame in the
//! camera's folder (named by its UTC poll time, modification time = poll time) and tells the
//! capture to scan, so the frame goes the way of any picture. The image encoder hands the
//! camera every picture of its folder once encoded; the actor applies
//! [`Retention`](crate::camera::Retention) (a fresh frame that is a near-duplicate of the last
//! kept one is deleted, a kept one is indexed and the frames before it beyond `keep_frames`
//! deleted) and passes the rest on to the index. After each saved frame, frames older than
//! `keep_days` are deleted (the capture's next scan takes them out of the index). The camera's
//! counters go to the index actor, which publishes them in the status. One actor per camera:
//! a slow camera delays only itself.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing::{debug, warn};

use super::capture::CaptureMsg;
use super::image_encoder::Outcome;
use super::index::IndexMsg;
use crate::camera::{fetch, frame_name, picture_extension, prune_frames, CameraUrl};
use crate::camera::{Retention, Verdict};
use crate::error::DeviceError;
use crate::index::CatalogReader;

/// Messages of the camera actor.
pub enum CameraMsg {
    /// Start polling; saved frames are announced to this capture (which is spawned after the
    /// cameras, since the encoder it feeds hands frames back to them).
    Start(ActorRef<CaptureMsg>),
    /// Timer: fetch a snapshot now.
    Poll,
    /// A picture of the camera's folder, encoded or not.
    Picture(Outcome),
}

/// Arguments of the camera actor.
pub struct CameraArgs {
    /// Position of the camera in the configuration (the status lists cameras in this order).
    pub number: usize,
    /// The camera's name.
    pub name: String,
    /// Its snapshot URL.
    pub url: CameraUrl,
    /// Time between polls.
    pub interval: Duration,
    /// Longest a poll may take.
    pub timeout: Duration,
    /// Largest snapshot accepted.
    pub max_bytes: usize,
    /// Where frames are saved.
    pub folder: PathBuf,
    /// Frames polled longer ago than this are deleted.
    pub keep_for: Option<Duration>,
    /// Most frames kept (0: no limit).
    pub keep_frames: usize,
    /// Cosine at or above which a new frame is a near-duplicate of the last kept one.
    pub duplicate_threshold: f32,
    /// Where pictures go, and the camera's counters.
    pub index: ActorRef<IndexMsg>,
    /// Where the last kept frame's vector is read, once.
    pub catalog: CatalogReader,
}

/// State of the camera actor.
pub struct CameraState {
    args: CameraArgs,
    retention: Retention,
    capture: Option<ActorRef<CaptureMsg>>,
}

/// The camera actor.
pub struct CameraActor;

impl Actor for CameraActor {
    type Msg = CameraMsg;
    type State = CameraState;
    type Arguments = CameraArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<CameraMsg>,
        args: CameraArgs,
    ) -> Result<CameraState, ActorProcessingErr> {
        std::fs::create_dir_all(&args.folder).map_err(|e| {
            DeviceError::Camera(format!(
                "camera {}: cannot create {}: {e}",
                args.name,
                args.folder.display()
            ))
        })?;
        let retention = Retention::new(&args.name, args.duplicate_threshold, args.keep_frames);
        Ok(CameraState {
            args,
            retention,
            capture: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<CameraMsg>,
        msg: CameraMsg,
        state: &mut CameraState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            CameraMsg::Start(capture) => {
                state.capture = Some(capture);
                myself.cast(CameraMsg::Poll)?;
            }
            CameraMsg::Poll => {
                match poll(&state.args).await {
                    Ok(frame) => {
                        state.retention.saved(frame);
                        let pruned = prune_old(&state.args).await;
                        state.retention.pruned(pruned);
                        if let Some(capture) = &state.capture {
                            let _ = capture.cast(CaptureMsg::Changed);
                        }
                    }
                    Err(e) => {
                        warn!(camera = %state.args.name, error = %e, "snapshot failed");
                        state.retention.poll_failed(e.to_string());
                    }
                }
                report(state);
                // The next poll is timed from the end of this one, so a slow camera never
                // piles up polls.
                myself.send_after(state.args.interval, || CameraMsg::Poll);
            }
            CameraMsg::Picture(Outcome::Failed { path, error }) => {
                state.retention.failed(&path);
                let _ = state
                    .args
                    .index
                    .cast(IndexMsg::Picture(Outcome::Failed { path, error }));
            }
            CameraMsg::Picture(Outcome::Encoded {
                key,
                mut entry,
                vector,
                encoded,
            }) => {
                state.retention.label(&mut entry);
                if state.retention.needs_last_kept(&entry.path) {
                    let (catalog, name) = (state.args.catalog.clone(), state.args.name.clone());
                    let last = tokio::task::spawn_blocking(move || catalog.last_of_source(&name))
                        .await
                        .unwrap_or_default();
                    state.retention.last_kept_is(last);
                }
                match state.retention.judge(&entry.path, &vector) {
                    Verdict::Index => {}
                    Verdict::Duplicate => {
                        delete(entry.path).await;
                        report(state);
                        let _ = state.args.index.cast(IndexMsg::Discarded { encoded });
                        return Ok(());
                    }
                    Verdict::Keep { keep, waiting } => {
                        let pruned = keep_newest(&state.args, keep, waiting).await;
                        state.retention.pruned(pruned);
                        report(state);
                    }
                }
                let picture = Outcome::Encoded {
                    key,
                    entry,
                    vector,
                    encoded,
                };
                let _ = state.args.index.cast(IndexMsg::Picture(picture));
            }
        }
        Ok(())
    }
}

/// Hands the camera's counters to the index actor, which publishes them in the status.
fn report(state: &CameraState) {
    let counts = state.retention.counts().clone();
    let _ = state
        .args
        .index
        .cast(IndexMsg::Camera(state.args.number, counts));
}

/// Deletes a near-duplicate frame (the capture's next scan sees it gone; it was never indexed).
async fn delete(frame: PathBuf) {
    let shown = frame.display().to_string();
    let deleted = tokio::task::spawn_blocking(move || std::fs::remove_file(&frame)).await;
    match deleted {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(frame = %shown, error = %e, "near-duplicate frame not deleted"),
        Err(e) => warn!(frame = %shown, error = %e, "near-duplicate frame not deleted"),
    }
}

/// Applies `keep_frames` once a frame is known to stay: the oldest frames beyond the newest
/// `keep` are deleted (the capture's next scan takes them out of the index). Frames still
/// `waiting` for their near-duplicate check are left out, so they never push a kept frame out.
/// Returns how many were deleted.
async fn keep_newest(args: &CameraArgs, keep: Option<usize>, waiting: HashSet<String>) -> usize {
    let Some(keep) = keep else {
        return 0;
    };
    let folder = args.folder.clone();
    let (deleted, problems) =
        tokio::task::spawn_blocking(move || prune_frames(&folder, &waiting, None, Some(keep)))
            .await
            .unwrap_or_default();
    for problem in problems {
        warn!(camera = %args.name, %problem, "pruning frames beyond keep_frames");
    }
    deleted
}

/// Deletes the frames polled longer ago than `keep_for`; returns how many. (The count limit
/// is applied when a frame is kept: only then is it known which frames stay.)
async fn prune_old(args: &CameraArgs) -> usize {
    let Some(cutoff_ms) = args
        .keep_for
        .and_then(|d| SystemTime::now().checked_sub(d))
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as i64)
    else {
        return 0;
    };
    let folder = args.folder.clone();
    let (pruned, problems) = tokio::task::spawn_blocking(move || {
        prune_frames(&folder, &HashSet::new(), Some(cutoff_ms), None)
    })
    .await
    .unwrap_or_default();
    for problem in problems {
        warn!(camera = %args.name, %problem, "pruning old frames");
    }
    if pruned > 0 {
        debug!(camera = %args.name, pruned, "frames older than keep_days deleted");
    }
    pruned
}

/// Fetches a snapshot and saves it: written under a name the scan ignores, given the poll time
/// as its modification time, then renamed, so the scan only ever sees complete frames.
async fn poll(args: &CameraArgs) -> Result<PathBuf, DeviceError> {
    let polled = SystemTime::now();
    let bytes = fetch(&args.url, args.timeout, args.max_bytes).await?;
    let ext = picture_extension(&bytes).ok_or_else(|| {
        DeviceError::Camera(format!(
            "the camera's answer is not a picture ({} bytes)",
            bytes.len()
        ))
    })?;
    let ms = polled
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let folder = args.folder.clone();
    let name = frame_name(ms);
    tokio::task::spawn_blocking(move || {
        let part = folder.join(".frame.part");
        let write = || -> std::io::Result<PathBuf> {
            std::fs::write(&part, &bytes)?;
            std::fs::File::options()
                .write(true)
                .open(&part)?
                .set_modified(polled)?;
            let mut target = folder.join(format!("{name}.{ext}"));
            let mut n = 1;
            while target.exists() {
                target = folder.join(format!("{name}-{n}.{ext}"));
                n += 1;
            }
            std::fs::rename(&part, &target)?;
            Ok(target)
        };
        let saved = write();
        if saved.is_err() {
            let _ = std::fs::remove_file(&part);
        }
        saved.map_err(|e| {
            DeviceError::Camera(format!("saving the frame in {}: {e}", folder.display()))
        })
    })
    .await
    .map_err(|e| DeviceError::Camera(format!("saving the frame: {e}")))?
    .inspect(|p| debug!(frame = %p.display(), "frame saved"))
}
