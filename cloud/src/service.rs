//! Running a cloud worker: start the supervisor, serve until shutdown, stop in order.

use std::time::Duration;

use ractor::{Actor, ActorRef};
use tokio::task::JoinHandle;

use crate::actors::supervisor::{CloudSupervisor, CloudSupervisorMsg};
use crate::config::CloudConfig;
use crate::error::CloudError;

/// How long the supervisor may take to stop the worker in order. Each step has its own bound
/// (`STOP_TIMEOUT`, the link's disconnect) and takes milliseconds on a live broker; this one
/// catches a supervisor that does not answer at all.
const SHUTDOWN_TIMEOUT_MS: u64 = 15_000;

/// How long the supervisor's task may take to end once it has stopped its actors (it ends at
/// once); a bound so that an actor stuck in its handler cannot hold the program.
const EXIT_TIMEOUT: Duration = Duration::from_secs(5);

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
            .map_err(CloudError::Start)?;
        Ok(Self { supervisor, handle })
    }

    /// Waits until the worker stops by itself (an actor failed).
    pub async fn stopped(&mut self) {
        let _ = (&mut self.handle).await;
    }

    /// Stops: finish queued requests, publish offline, disconnect.
    pub async fn shutdown(self) -> Result<(), CloudError> {
        let result = ractor::call_t!(
            self.supervisor,
            CloudSupervisorMsg::Shutdown,
            SHUTDOWN_TIMEOUT_MS
        );
        self.supervisor.stop(None);
        let _ = tokio::time::timeout(EXIT_TIMEOUT, self.handle).await;
        result.map_err(|e| CloudError::Shutdown(e.map(|_| ())))
    }
}
