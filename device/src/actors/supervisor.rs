//! [`DeviceSupervisor`]: loads the model, spawns the device's actors linked to itself, routes
//! MQTT traffic to them, and shuts them down in order (stop finding, finish encoding, say
//! offline, disconnect).

use std::sync::Arc;
use std::time::Duration;

use edgeclip_link::{Incoming, LinkActor, LinkArgs, LinkMsg, Presence};
use edgeclip_messages::dashboard::{DeviceStatus, SearchRequest, SearchResponse};
use edgeclip_messages::{homeassistant, topics};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tracing::{error, info, warn};

use super::camera::{CameraActor, CameraArgs, CameraMsg};
use super::capture::{CaptureActor, CaptureArgs, CaptureMsg};
use super::discovery::{DiscoveryActor, DiscoveryArgs, DiscoveryMsg};
use super::image_encoder::{
    CameraRoute, Destinations, ImageEncoderActor, ImageEncoderArgs, ImageEncoderMsg,
};
use super::index::{IndexActor, IndexArgs, IndexMsg};
use super::search::{SearchActor, SearchArgs, SearchMsg, Thumbnails};
use crate::config::DeviceConfig;
use crate::encode::ImageTower;
use crate::error::DeviceError;
use crate::http::{HttpContext, HttpServer};
use crate::index::{Catalog, Layout};
use crate::model::ModelFolder;
use crate::preprocess::DecodeLimits;
use crate::progress::Identity;
use crate::search::{SessionConfig, DUPLICATES_TIMEOUT, INDEX_TIMEOUT};

/// How long shutdown waits for pictures being encoded: one picture on a slow board.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);
/// The encoder answers a drain at [`DRAIN_TIMEOUT`] at the latest; this long more for its
/// answer to arrive.
const DRAIN_ANSWER_SLACK: Duration = Duration::from_secs(1);
/// How long an actor may take to stop: the handler it is in finishes first (a journal write,
/// a camera's poll), which takes moments; a stuck actor must not hold up the shutdown.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the link may take to disconnect cleanly (send DISCONNECT, so the broker does not
/// publish the last will): a round trip to the broker, with room for a slow network.
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How much longer than the cloud's timeout an HTTP search may wait for its answer: the
/// search actor answers at the cloud timeout at the latest; this covers ranking and queues.
const HTTP_SEARCH_SLACK: Duration = Duration::from_secs(2);

/// The model whose vectors the device serves: its folder's, or, when the folder's image tower
/// did not load, that of the index already on disk.
struct Served {
    id: String,
    dim: usize,
}

/// Opens the model folder, loads its image tower with the configured batch (a batch measured
/// at an earlier start on this machine is recalled, a fixed-batch tower runs one picture at a
/// time without measuring) and runs a picture through decode, preprocessing and the tower.
/// Every failure is one error naming the file and what is wrong with it.
async fn load_image_side(config: &DeviceConfig) -> Result<(ModelFolder, ImageTower), DeviceError> {
    let model = ModelFolder::open(&config.model.dir, Some(config.model.id.as_str()))?;
    for note in &model.notes {
        warn!(model = %model.id, "{note}");
    }
    let (onnx, size, dim) = (
        model.visual_onnx(),
        model.preprocess.size as usize,
        model.dim,
    );
    let started = std::time::Instant::now();
    let machine = crate::batch_memo::this_machine();
    let recalled = (config.encoder.batch == 0)
        .then(|| crate::batch_memo::recall(&config.state_dir, &model.id, &machine))
        .flatten();
    let batch = recalled.unwrap_or(config.encoder.batch);
    let (tower, timings) =
        tokio::task::spawn_blocking(move || ImageTower::load_batched(&onnx, size, dim, batch))
            .await
            .map_err(|e| DeviceError::Actor(format!("the model loader crashed: {e}")))??;
    // What was measured is kept, so that the next start does not measure again.
    if batch == 0 && timings.single_ms.is_some() {
        if let Err(e) = crate::batch_memo::remember(
            &config.state_dir,
            &model.id,
            &machine,
            tower.batch(),
            &timings,
        ) {
            warn!(error = %e, "the measured batch is not kept; the next start measures it again");
        }
    }
    if let Some(why) = &timings.batch_1_only {
        info!("image tower runs one picture at a time: {why}");
    }
    let probe_model = model.clone();
    let probe_tower = tower.clone();
    tokio::task::spawn_blocking(move || crate::model::probe(&probe_model, &probe_tower))
        .await
        .map_err(|e| DeviceError::Actor(format!("the model check crashed: {e}")))??;
    info!(
        recalled = recalled.is_some(),
        model = %model.id,
        family = %model.family,
        weights = model.weights.file_name(),
        dim,
        batch = tower.batch(),
        measured_ms_per_picture = ?timings,
        took = ?started.elapsed(),
        "image tower loaded and checked on a picture"
    );
    Ok((model, tower))
}

/// The model and dimension of the index in the state folder, when there is one to serve and
/// it can be opened without a model (no switch half done).
fn serving_without_model(layout: &Layout) -> Option<Served> {
    if layout.old.exists() {
        return None;
    }
    match crate::index::Store::stored_model(&layout.current) {
        Ok(Some((id, dim))) => Some(Served { id, dim }),
        _ => None,
    }
}

/// Opens only the index searches are answered from, for its own model: the device could not
/// load a model, so nothing is built, and a re-index in progress (`index.next/`) is left as it
/// is for the next start with a working model.
fn open_serving_only(
    layout: &Layout,
    model: &str,
    dim: usize,
    precision: crate::index::Precision,
) -> Result<crate::index::reindex::Opened, DeviceError> {
    let (store, index, report) =
        crate::index::Store::open_with(&layout.current, model, dim, precision)?;
    Ok(crate::index::reindex::Opened {
        serving: (store, index),
        building: None,
        report,
        recovered: Vec::new(),
    })
}

/// Messages of the supervisor.
pub enum SupervisorMsg {
    /// Run a search in-process (the answer is also published on the results topic).
    Search(Box<SearchRequest>, RpcReplyPort<SearchResponse>),
    /// The device's status.
    Status(RpcReplyPort<DeviceStatus>),
    /// Scan the folders now.
    Rescan,
    /// Encode every picture again.
    Reindex,
    /// Where the HTTP endpoint listens, if it is on.
    HttpAddr(RpcReplyPort<Option<std::net::SocketAddr>>),
    /// Stop everything in order, then answer.
    Shutdown(RpcReplyPort<()>),
}

/// State of the supervisor: its children.
pub struct SupervisorState {
    link: ActorRef<LinkMsg>,
    index: ActorRef<IndexMsg>,
    encoder: ActorRef<ImageEncoderMsg>,
    search: ActorRef<SearchMsg>,
    capture: ActorRef<CaptureMsg>,
    cameras: Vec<ActorRef<CameraMsg>>,
    discovery: Option<ActorRef<DiscoveryMsg>>,
    http: Option<HttpServer>,
    stopping: bool,
}

/// The device supervisor.
pub struct DeviceSupervisor;

impl Actor for DeviceSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = DeviceConfig;

    async fn pre_start(
        &self,
        myself: ActorRef<SupervisorMsg>,
        config: DeviceConfig,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        // The image side: the model folder checked and its tower loaded and tried on a
        // picture. A model that does not load leaves a device that keeps answering searches
        // from the index it has, if it has one.
        let layout = Layout::new(&config.state_dir);
        let (model, image) = match load_image_side(&config).await {
            Ok((folder, tower)) => (
                Served {
                    id: folder.id.clone(),
                    dim: folder.dim,
                },
                Ok((tower, folder.preprocess)),
            ),
            Err(e) => match serving_without_model(&layout) {
                Some(served) => {
                    error!("{e}");
                    warn!(
                        serving = %served.id,
                        "the image tower did not load: searches are answered from the index of {} as before; new pictures fail until the model folder is repaired and the device restarted",
                        served.id
                    );
                    (served, Err(e.to_string()))
                }
                None => return Err(e.into()),
            },
        };
        let tower_batch = image.as_ref().map_or(0, |(tower, _)| tower.batch());

        let device = config.device_id.clone();
        let presence = Some(Presence {
            topic: topics::availability(&device),
            online: topics::ONLINE.into(),
            offline: topics::OFFLINE.into(),
        });
        let ha = &config.homeassistant;
        let listener = topics::Listener::Device {
            id: &device,
            homeassistant: ha.discovery.then_some(ha.prefix.as_str()),
        };
        let options = config
            .broker
            .link_options(topics::subscriptions(&listener), presence);
        let cell = myself.get_cell();
        let (link, _) =
            Actor::spawn_linked(None, LinkActor, LinkArgs { options }, cell.clone()).await?;
        let (store_layout, store_model, store_dim, precision) = (
            layout.clone(),
            model.id.clone(),
            model.dim,
            config.search.vectors,
        );
        let serving_only = image.is_err();
        let opened = tokio::task::spawn_blocking(move || {
            if serving_only {
                open_serving_only(&store_layout, &store_model, store_dim, precision)
            } else {
                crate::index::reindex::open(&store_layout, &store_model, store_dim, precision)
            }
        })
        .await??;
        let ((store, mut index), mut building, report) =
            (opened.serving, opened.building, opened.report);
        index.set_search_threads(config.search.threads);
        if let Some((_, b)) = &mut building {
            b.set_search_threads(config.search.threads);
        }
        for what in &opened.recovered {
            info!(%what, "index folders");
        }
        if let Some((_, b)) = &building {
            warn!(
                serving = index.model(),
                pictures = index.len(),
                building = b.model(),
                done = b.len(),
                "the index was built with another model: it keeps answering searches while every picture is encoded again in the background"
            );
        }
        if let Some(reason) = &report.reset {
            warn!(%reason, "previous index set aside; pictures will be encoded again");
        }
        if report.truncated_bytes > 0 {
            warn!(
                bytes = report.truncated_bytes,
                "cut a torn record off the index journal (power cut while writing)"
            );
        }
        if report.damaged_bytes > 0 {
            warn!(
                bytes = report.damaged_bytes,
                "the index journal was damaged in the middle (a bad sector?): the records after \
                 the damage are kept, the pictures in it will be encoded again"
            );
        }
        info!(pictures = report.pictures, replayed = report.replayed, vectors = ?index.precision(), "index opened");
        let catalog = Catalog::new((store, index), building, layout);
        let reader = catalog.reader();
        let (models_tx, models_rx) = tokio::sync::watch::channel(catalog.models());
        let index_args = IndexArgs {
            catalog,
            identity: Identity {
                device_id: device.clone(),
                folders: config
                    .folders
                    .iter()
                    .map(|f| f.display().to_string())
                    .collect(),
                encoder_batch: tower_batch,
            },
            cameras: config.cameras.iter().map(|c| c.name.clone()).collect(),
            status_interval: Duration::from_millis(config.status.interval_ms),
            link: link.clone(),
            models: models_tx,
        };
        let (index, _) = Actor::spawn_linked(None, IndexActor, index_args, cell.clone()).await?;
        // Cameras before the encoder, which hands them their frames; they start polling once
        // the capture they announce frames to exists.
        let mut cameras = Vec::new();
        let mut routes = Vec::new();
        for (number, cam) in config.cameras.iter().enumerate() {
            let args = CameraArgs {
                number,
                name: cam.name.clone(),
                url: crate::camera::CameraUrl::parse(&cam.url)?,
                interval: Duration::from_millis(cam.interval_ms),
                timeout: Duration::from_millis(cam.timeout_ms),
                max_bytes: (cam.max_frame_mib << 20) as usize,
                folder: cam.folder.clone(),
                keep_for: (cam.keep_days > 0)
                    .then(|| Duration::from_secs(u64::from(cam.keep_days) * 86_400)),
                keep_frames: cam.keep_frames,
                duplicate_threshold: cam.duplicate_threshold,
                index: index.clone(),
                catalog: reader.clone(),
            };
            let (camera, _) = Actor::spawn_linked(None, CameraActor, args, cell.clone()).await?;
            routes.push(CameraRoute {
                folder: cam.folder.clone(),
                name: cam.name.clone(),
                actor: camera.clone(),
            });
            cameras.push(camera);
        }
        let encoder_args = ImageEncoderArgs {
            image,
            limits: DecodeLimits {
                max_side: config.encoder.max_side,
                max_alloc: config.encoder.max_alloc_mib << 20,
            },
            workers: config.encoder.workers,
            priority: config.encoder.priority,
            max_file_bytes: config.encoder.max_file_mib << 20,
            catalog: reader.clone(),
            destinations: Destinations {
                index: index.clone(),
                cameras: routes,
            },
        };
        let (encoder, _) =
            Actor::spawn_linked(None, ImageEncoderActor, encoder_args, cell.clone()).await?;
        // The HTTP endpoint is optional: a port in use costs the page and thumbnails, not the
        // device's searches over MQTT.
        let bound = if config.http.enabled {
            match crate::http::bind(&config.http).await {
                Ok(bound) => Some(bound),
                Err(e) => {
                    error!(error = %e, "HTTP endpoint off; searches over MQTT still work");
                    None
                }
            }
        } else {
            None
        };
        let search_args = SearchArgs {
            session: SessionConfig {
                device_id: device.clone(),
                cloud_timeout: config.cloud_timeout(),
                cloud_retry: config.cloud_retry(),
                index_timeout: INDEX_TIMEOUT,
                duplicates_timeout: DUPLICATES_TIMEOUT,
                default_k: config.search.default_k,
                max_k: config.search.max_k,
                max_text_bytes: config.search.max_text_bytes,
                max_reply_bytes: config.broker.max_packet_bytes,
                default_mode: config.search.mode,
                allow_server_mode: config.search.allow_server_mode,
                // A chunk must fit one MQTT message: per vector `dim` int8 codes, an id and a
                // scale.
                server_chunk_vectors: config.search.server_chunk_vectors.min(
                    (config.broker.max_packet_bytes.saturating_sub(64 << 10) / (model.dim + 8))
                        .max(1),
                ),
                max_server_vectors: config.search.max_server_vectors,
                max_duplicate_pictures: config.search.max_duplicate_pictures,
                thumb_base: bound.as_ref().map(|b| b.base_url.clone()),
                best_image: ha.image_bytes,
            },
            models: models_rx,
            link: link.clone(),
            catalog: reader.clone(),
            thumbnails: Thumbnails {
                side: config.http.thumb_side,
                limits: DecodeLimits {
                    max_side: config.encoder.max_side,
                    max_alloc: config.encoder.max_alloc_mib << 20,
                },
            },
        };
        let (search, _) = Actor::spawn_linked(None, SearchActor, search_args, cell.clone()).await?;
        // Camera frames are found by the capture like any picture: their folders must exist
        // before it starts watching.
        let mut folders = config.folders.clone();
        for cam in &config.cameras {
            std::fs::create_dir_all(&cam.folder).map_err(|e| {
                DeviceError::Camera(format!(
                    "camera {}: cannot create {}: {e}",
                    cam.name,
                    cam.folder.display()
                ))
            })?;
            if !folders.contains(&cam.folder) {
                folders.push(cam.folder.clone());
            }
        }
        let capture_args = CaptureArgs {
            folders,
            extensions: config.encoder.extensions.clone(),
            rescan: (config.capture.rescan_s > 0)
                .then(|| Duration::from_secs(config.capture.rescan_s)),
            watch: config.capture.watch,
            debounce: Duration::from_millis(config.capture.debounce_ms),
            settle: Duration::from_millis(config.capture.settle_ms),
            encoder: encoder.clone(),
            index: index.clone(),
            catalog: reader.clone(),
        };
        let (capture, _) =
            Actor::spawn_linked(None, CaptureActor, capture_args, cell.clone()).await?;
        for camera in &cameras {
            camera.cast(CameraMsg::Start(capture.clone()))?;
        }
        let discovery = if ha.discovery {
            let options = homeassistant::DiscoveryOptions {
                prefix: ha.prefix.clone(),
                device_id: device.clone(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                image_url: bound.is_some(),
                image_bytes: ha.image_bytes,
            };
            let (discovery, _) = Actor::spawn_linked(
                None,
                DiscoveryActor,
                DiscoveryArgs {
                    options,
                    link: link.clone(),
                },
                cell,
            )
            .await?;
            Some(discovery)
        } else {
            None
        };
        let http = bound.map(|bound| {
            let context = HttpContext {
                search: search.clone(),
                index: index.clone(),
                catalog: reader.clone(),
                cache_dir: config.http.cache_dir.clone(),
                thumb_side: config.http.thumb_side,
                limits: DecodeLimits {
                    max_side: config.encoder.max_side,
                    max_alloc: config.encoder.max_alloc_mib << 20,
                },
                max_file_bytes: config.encoder.max_file_mib << 20,
                max_text_bytes: config.search.max_text_bytes,
                search_timeout: config.cloud_timeout() + HTTP_SEARCH_SLACK,
            };
            HttpServer::start(bound, context)
        });

        let (to_search, to_me, to_discovery) = (search.clone(), myself.clone(), discovery.clone());
        let (me, ha_prefix) = (device.clone(), ha.discovery.then(|| ha.prefix.clone()));
        let router = Arc::new(move |msg: Incoming| {
            let listener = topics::Listener::Device {
                id: &me,
                homeassistant: ha_prefix.as_deref(),
            };
            let routed = match topics::route(&msg.topic, &listener) {
                Some(topics::Route::Search) => to_search
                    .cast(SearchMsg::Payload(msg.payload))
                    .map_err(|_| "search"),
                Some(topics::Route::CloudReply) => to_search
                    .cast(SearchMsg::CloudReply(msg.payload))
                    .map_err(|_| "search"),
                Some(topics::Route::FleetQuery) => to_search
                    .cast(SearchMsg::FleetQuery(msg.payload))
                    .map_err(|_| "search"),
                Some(topics::Route::Command) => match msg.payload.trim_ascii() {
                    c if c == homeassistant::RESCAN.as_bytes() => {
                        to_me.cast(SupervisorMsg::Rescan).map_err(|_| "supervisor")
                    }
                    c if c == homeassistant::REINDEX.as_bytes() => {
                        to_me.cast(SupervisorMsg::Reindex).map_err(|_| "supervisor")
                    }
                    other => {
                        let shown: String =
                            String::from_utf8_lossy(other).chars().take(64).collect();
                        warn!(command = %shown, "unknown command ignored (rescan, reindex)");
                        Ok(())
                    }
                },
                Some(topics::Route::HomeAssistantStatus) => {
                    to_discovery.as_ref().map_or(Ok(()), |d| {
                        d.cast(DiscoveryMsg::HaStatus(msg.payload))
                            .map_err(|_| "discovery")
                    })
                }
                _ => Ok(()),
            };
            if let Err(actor) = routed {
                tracing::debug!(actor, "actor gone; publish dropped");
            }
        });
        link.cast(LinkMsg::Start(router))?;
        capture.cast(CaptureMsg::Scan)?;
        info!(device = %device, broker = %config.broker.url, folders = ?config.folders, "device started");
        Ok(SupervisorState {
            link,
            index,
            encoder,
            search,
            capture,
            cameras,
            discovery,
            http,
            stopping: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<SupervisorMsg>,
        msg: SupervisorMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Search(request, port) => {
                state.search.cast(SearchMsg::Search(*request, Some(port)))?;
            }
            SupervisorMsg::Status(port) => {
                state.index.cast(IndexMsg::Status(port))?;
            }
            SupervisorMsg::Rescan => {
                info!("rescan requested");
                state.capture.cast(CaptureMsg::Scan)?;
            }
            SupervisorMsg::Reindex => {
                state.capture.cast(CaptureMsg::Reindex)?;
            }
            SupervisorMsg::HttpAddr(port) => {
                let _ = port.send(state.http.as_ref().map(|h| h.addr));
            }
            SupervisorMsg::Shutdown(port) => {
                state.stopping = true;
                info!("device shutting down");
                if let Some(http) = state.http.take() {
                    http.shutdown(STOP_TIMEOUT).await;
                }
                for camera in state.cameras.drain(..) {
                    let _ = camera.stop_and_wait(None, Some(STOP_TIMEOUT)).await;
                }
                let _ = state.capture.stop_and_wait(None, Some(STOP_TIMEOUT)).await;
                let _ = state.index.cast(IndexMsg::Stopping);
                let drained = ractor::call_t!(
                    state.encoder,
                    |p| ImageEncoderMsg::Drain(DRAIN_TIMEOUT, p),
                    (DRAIN_TIMEOUT + DRAIN_ANSWER_SLACK).as_millis() as u64
                );
                if drained.is_err() {
                    error!("encoder did not drain in time");
                }
                let _ = state.encoder.stop_and_wait(None, Some(STOP_TIMEOUT)).await;
                let _ = state.search.stop_and_wait(None, Some(STOP_TIMEOUT)).await;
                if let Some(discovery) = state.discovery.take() {
                    let _ = discovery.stop_and_wait(None, Some(STOP_TIMEOUT)).await;
                }
                // Let the index publish its last status before the link goes.
                let _ = state.index.drain_and_wait(Some(STOP_TIMEOUT)).await;
                let _ = ractor::call_t!(
                    state.link,
                    LinkMsg::Disconnect,
                    DISCONNECT_TIMEOUT.as_millis() as u64
                );
                let _ = state.link.stop_and_wait(None, Some(STOP_TIMEOUT)).await;
                let _ = port.send(());
                myself.stop(Some("shutdown".into()));
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SupervisorMsg>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        if state.stopping {
            return Ok(());
        }
        match event {
            SupervisionEvent::ActorFailed(cell, err) => {
                error!(actor = ?cell.get_id(), error = %err, "device actor failed; stopping the device");
                myself.stop(Some(format!("actor failed: {err}")));
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                error!(actor = ?cell.get_id(), ?reason, "device actor stopped unexpectedly; stopping the device");
                myself.stop(Some("actor stopped".into()));
            }
            _ => {}
        }
        Ok(())
    }
}
