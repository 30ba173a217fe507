//! [`CameraActor`]: polls one camera's snapshot URL every `interval`, saves each frame in the
//! camera's folder (named by its UTC poll time, modification time = poll time) and tells the
//! index (which decides whether it is a near-duplicate once it is encoded) and the capture
//! (which scans the folder, so the frame goes the same way as any picture). After each saved
//! frame, frames older than `keep_days` are deleted (the capture's scan then takes them out of
//! the index); the count limit `keep_frames` is applied by the index actor when it keeps a
//! frame, since only then is it known that the new frame is not a near-duplicate. One actor
//! per camera: a slow camera delays only itself.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing::{debug, warn};

use super::capture::CaptureMsg;
use super::index::IndexMsg;
use crate::camera::{fetch, frame_name, picture_extension, prune_frames, CameraUrl};

/// Messages of the camera actor.
pub enum CameraMsg {
    /// Timer: fetch a snapshot now.
    Poll,
}

/// Arguments of the camera actor.
pub struct CameraArgs {
    /// Position of the camera in the configuration (the index counts per camera).
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
    /// Told about every poll.
    pub index: ActorRef<IndexMsg>,
    /// Told to scan after every saved frame.
    pub capture: ActorRef<CaptureMsg>,
}

/// The camera actor.
pub struct CameraActor;

impl Actor for CameraActor {
    type Msg = CameraMsg;
    type State = CameraArgs;
    type Arguments = CameraArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<CameraMsg>,
        args: CameraArgs,
    ) -> Result<CameraArgs, ActorProcessingErr> {
        std::fs::create_dir_all(&args.folder).map_err(|e| {
            format!(
                "camera {}: cannot create {}: {e}",
                args.name,
                args.folder.display()
            )
        })?;
        myself.cast(CameraMsg::Poll)?;
        Ok(args)
    }

    async fn handle(
        &self,
        myself: ActorRef<CameraMsg>,
        msg: CameraMsg,
        args: &mut CameraArgs,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            CameraMsg::Poll => {
                let result = poll(args).await;
                if let Err(e) = &result {
                    warn!(camera = %args.name, error = %e, "snapshot failed");
                }
                let saved = result.is_ok();
                let pruned = if saved { prune_old(args).await } else { 0 };
                let _ = args.index.cast(IndexMsg::FramePolled {
                    camera: args.number,
                    result,
                    pruned,
                });
                if saved {
                    let _ = args.capture.cast(CaptureMsg::Changed);
                }
                // The next poll is timed from the end of this one, so a slow camera never
                // piles up polls.
                myself.send_after(args.interval, || CameraMsg::Poll);
            }
        }
        Ok(())
    }
}

/// Deletes the frames polled longer ago than `keep_for`; returns how many. (The count limit
/// is applied by the index when it keeps a frame: only then is it known which frames stay.)
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
    let (pruned, problems) =
        tokio::task::spawn_blocking(move || prune_frames(&folder, None, Some(cutoff_ms), None))
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
async fn poll(args: &CameraArgs) -> Result<PathBuf, String> {
    let polled = SystemTime::now();
    let bytes = fetch(&args.url, args.timeout, args.max_bytes).await?;
    let ext = picture_extension(&bytes).ok_or_else(|| {
        format!(
            "the camera's answer is not a picture ({} bytes)",
            bytes.len()
        )
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
        saved.map_err(|e| format!("saving the frame in {}: {e}", folder.display()))
    })
    .await
    .map_err(|e| format!("saving the frame: {e}"))?
    .inspect(|p| debug!(frame = %p.display(), "frame saved"))
}
