//! Running a device: start the supervisor, serve until shutdown, stop in order.

use std::time::Duration;

use edgeclip_messages::dashboard::{DeviceStatus, SearchRequest, SearchResponse};
use ractor::{Actor, ActorRef};
use tokio::task::JoinHandle;

use crate::actors::supervisor::{DeviceSupervisor, SupervisorMsg};
use crate::config::DeviceConfig;
use crate::error::DeviceError;

/// A running device.
pub struct Device {
    supervisor: ActorRef<SupervisorMsg>,
    handle: JoinHandle<()>,
    search_timeout: Duration,
}

impl Device {
    /// Loads the model and starts every actor; fails with the reason if the model or the
    /// configuration is unusable.
    pub async fn start(config: DeviceConfig) -> Result<Self, DeviceError> {
        let search_timeout = config.cloud_timeout() + Duration::from_secs(5);
        let (supervisor, handle) = Actor::spawn(None, DeviceSupervisor, config)
            .await
            .map_err(|e| DeviceError::Actor(format!("device did not start: {e}")))?;
        Ok(Self {
            supervisor,
            handle,
            search_timeout,
        })
    }

    /// Runs a search in-process; the answer is also published on the results topic.
    pub async fn search(&self, request: SearchRequest) -> Result<SearchResponse, DeviceError> {
        ractor::call_t!(
            self.supervisor,
            |p| SupervisorMsg::Search(request, p),
            self.search_timeout.as_millis() as u64
        )
        .map_err(|e| DeviceError::Actor(e.to_string()))
    }

    /// The current status.
    pub async fn status(&self) -> Result<DeviceStatus, DeviceError> {
        ractor::call_t!(self.supervisor, SupervisorMsg::Status, 5000)
            .map_err(|e| DeviceError::Actor(e.to_string()))
    }

    /// Scans the folders now.
    pub fn rescan(&self) {
        let _ = self.supervisor.cast(SupervisorMsg::Rescan);
    }

    /// Where the HTTP endpoint (search page, thumbnails) listens, if it is on.
    pub async fn http_addr(&self) -> Result<Option<std::net::SocketAddr>, DeviceError> {
        ractor::call_t!(self.supervisor, SupervisorMsg::HttpAddr, 5000)
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
        let result = ractor::call_t!(self.supervisor, SupervisorMsg::Shutdown, 40_000);
        self.supervisor.stop(None);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.handle).await;
        result.map_err(|e| DeviceError::Actor(format!("shutdown: {e}")))
    }
}
