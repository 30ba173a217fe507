//! Running a cloud worker: start the supervisor, serve until shutdown, stop in order.

use std::time::Duration;

use ractor::{Actor, ActorRef};
use tokio::task::JoinHandle;

use crate::actors::supervisor::{CloudSupervisor, CloudSupervisorMsg};
use crate::config::CloudConfig;
use crate::error::CloudError;

/// A running cloud worker.
pub struct Cloud {
    supervisor: ActorRef<CloudSupervisorMsg>,
    handle: JoinHandle<()>,
}

impl Cloud {
    /// Loads the tokenizer and the text tower and connects; fails with the reason.
    pub async fn start(config: CloudConfig) -> Result<Self, CloudError> {
        let (supervisor, handle) = Actor::spawn(None, CloudSupervisor, config)
            .await
            .map_err(|e| CloudError::Actor(format!("cloud worker did not start: {e}")))?;
        Ok(Self { supervisor, handle })
    }

    /// Waits until the worker stops by itself (an actor failed).
    pub async fn stopped(&mut self) {
        let _ = (&mut self.handle).await;
    }

    /// Stops: finish queued requests, publish offline, disconnect.
    pub async fn shutdown(self) -> Result<(), CloudError> {
        let result = ractor::call_t!(self.supervisor, CloudSupervisorMsg::Shutdown, 15_000);
        self.supervisor.stop(None);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.handle).await;
        result.map_err(|e| CloudError::Actor(format!("shutdown: {e}")))
    }
}
