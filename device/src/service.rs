//! Running a device: start the supervisor, serve until shutdown, stop in order.

use std::time::Duration;

use edgeclip_messages::dashboard::{DeviceStatus, SearchRequest, SearchResponse};
use ractor::{Actor, ActorRef};
use tokio::task::JoinHandle;

use crate::actors::supervisor::{DeviceSupervisor, SupervisorMsg};
use crate::config::DeviceConfig;
use crate::error::DeviceError;

/// How much longer than the cloud's timeout an in-process search may wait for its answer: the
/// search actor answers at the cloud timeout at the latest; this covers ranking and queues.
const SEARCH_SLACK: Duration = Duration::from_secs(5);
/// How long the supervisor may take to answer a question (the status, the HTTP address): it
/// passes it on or answers from memory, so this only guards against a stuck device.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an ordered shutdown may take: the encoder's drain (20 s), then each actor's stop
/// and the link's disconnect (5 s each at most), with room to spare.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(40);
/// How long the supervisor's task may take to end once it has stopped.
const STOPPED_TIMEOUT: Duration = Duration::from_secs(5);

/// A running device.
pub struct Device {
    supervisor: ActorRef<SupervisorMsg>,
    handle: JoinHandle<()>,
    search_timeout: Duration,
    /// Held until the device has shut down.
    _lock: crate::state_lock::StateLock,
}

impl Device {
    /// Loads the model and starts every actor; fails with the reason if the model or the
    /// configuration is unusable.
    pub async fn start(config: DeviceConfig) -> Result<Self, DeviceError> {
        let search_timeout = config.cloud_timeout() + SEARCH_SLACK;
        let lock = crate::state_lock::StateLock::acquire(&config.state_dir)?;
        let (supervisor, handle) =
            Actor::spawn(None, DeviceSupervisor, config)
                .await
                .map_err(|e| match e {
                    // The device's own reason (a model file, the configuration, the state
                    // folder), as it is: nothing panicked.
                    ractor::SpawnErr::StartupFailed(inner) => match inner.downcast::<DeviceError>()
                    {
                        Ok(reason) => *reason,
                        Err(other) => DeviceError::Actor(format!("device did not start: {other}")),
                    },
                    other => DeviceError::Actor(format!("device did not start: {other}")),
                })?;
        Ok(Self {
            supervisor,
            handle,
            search_timeout,
            _lock: lock,
        })
    }

    /// Runs a search in-process; the answer is also published on the results topic.
    pub async fn search(&self, request: SearchRequest) -> Result<SearchResponse, DeviceError> {
        ractor::call_t!(
            self.supervisor,
            |p| SupervisorMsg::Search(Box::new(request), p),
            self.search_timeout.as_millis() as u64
        )
        .map_err(|e| DeviceError::Actor(e.to_string()))
    }

    /// The current status.
    pub async fn status(&self) -> Result<DeviceStatus, DeviceError> {
        ractor::call_t!(
            self.supervisor,
            SupervisorMsg::Status,
            ANSWER_TIMEOUT.as_millis() as u64
        )
        .map_err(|e| DeviceError::Actor(e.to_string()))
    }

    /// Scans the folders now.
    pub fn rescan(&self) {
        let _ = self.supervisor.cast(SupervisorMsg::Rescan);
    }

    /// Where the HTTP endpoint (search page, thumbnails) listens, if it is on.
    pub async fn http_addr(&self) -> Result<Option<std::net::SocketAddr>, DeviceError> {
        ractor::call_t!(
            self.supervisor,
            SupervisorMsg::HttpAddr,
            ANSWER_TIMEOUT.as_millis() as u64
        )
        .map_err(|e| DeviceError::Actor(e.to_string()))
    }

    /// True once the device has stopped (after a shutdown or a failure).
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    /// Waits until the device stops by itself (an actor failed).
    pub async fn stopped(&mut self) {
        let _ = (&mut self.handle).await;
    }

    /// Stops in order: no new pictures, finish encoding, publish offline, disconnect.
    pub async fn shutdown(self) -> Result<(), DeviceError> {
        let result = ractor::call_t!(
            self.supervisor,
            SupervisorMsg::Shutdown,
            SHUTDOWN_TIMEOUT.as_millis() as u64
        );
        self.supervisor.stop(None);
        let _ = tokio::time::timeout(STOPPED_TIMEOUT, self.handle).await;
        result.map_err(|e| DeviceError::Actor(format!("shutdown: {e}")))
    }
}
