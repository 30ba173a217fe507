//! The encoder's threads: a fixed pool of named OS threads running at a lower priority than
//! the rest of the device, so that indexing a library never makes searches, MQTT or the HTTP
//! endpoint sluggish (nor, on a NAS, the other services of the box).
//!
//! Linux gives every thread its own nice value and scheduling policy: `low` sets the worker
//! threads' nice to 10 (unless already higher), `idle` puts them under `SCHED_IDLE` (they run
//! only when a core would otherwise be idle). Neither needs privileges. Lowering a thread's
//! priority cannot be undone without privileges, which is why these are dedicated threads
//! and not tokio's shared blocking pool (its threads also do the index's fsyncs).

use std::panic::AssertUnwindSafe;
use std::sync::{mpsc, Arc, Mutex};

use serde::Deserialize;

use crate::error::DeviceError;

/// How the encoder's threads are scheduled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// As the rest of the device.
    Normal,
    /// nice 10 (Linux).
    #[default]
    Low,
    /// `SCHED_IDLE`: only otherwise idle CPU time (Linux).
    Idle,
}

/// Nice value of [`Priority::Low`].
pub const LOW_NICE: i32 = 10;

type Job = Box<dyn FnOnce() + Send>;

/// A fixed pool of threads at one priority. Cloning shares the pool; the threads end when
/// the last clone is dropped.
#[derive(Clone)]
pub struct Workers {
    jobs: mpsc::Sender<Job>,
}

impl Workers {
    /// Starts `n` threads (at least one) named `edgeclip-encode-<i>` at `priority`. A priority
    /// the kernel refuses is logged once per thread; the thread then runs at normal priority.
    pub fn start(n: usize, priority: Priority) -> std::io::Result<Workers> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..n.max(1) {
            let queue = queue.clone();
            std::thread::Builder::new().name(format!("edgeclip-encode-{i}")).spawn(move || {
                if let Err(e) = lower_current_thread(priority) {
                    tracing::warn!(error = %e, ?priority, "encoder thread keeps normal priority");
                }
                loop {
                    let job = match queue.lock() {
                        Ok(q) => q.recv(),
                        Err(_) => return,
                    };
                    match job {
                        Ok(job) => job(),
                        Err(_) => return,
                    }
                }
            })?;
        }
        Ok(Workers { jobs })
    }

    /// Runs `f` on one of the threads and waits for its result without blocking the async
    /// threads. A panic in `f` is an error, and the thread lives on.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, DeviceError> {
        let (done, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = done.send(std::panic::catch_unwind(AssertUnwindSafe(f)));
        });
        self.jobs
            .send(job)
            .map_err(|_| DeviceError::Worker("the encoder threads are gone".into()))?;
        match result.await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(_)) => Err(DeviceError::Worker("the encoder panicked".into())),
            Err(_) => Err(DeviceError::Worker("the encoder thread ended".into())),
        }
    }
}

/// Lowers the calling thread's priority; a no-op for [`Priority::Normal`] and off Linux.
pub fn lower_current_thread(priority: Priority) -> std::io::Result<()> {
    imp::lower(priority)
}

#[cfg(target_os = "linux")]
mod imp {
    use super::{Priority, LOW_NICE};

    pub fn lower(priority: Priority) -> std::io::Result<()> {
        match priority {
            Priority::Normal => Ok(()),
            Priority::Low => {
                // SAFETY: plain system calls on the calling thread's own id.
                let tid = unsafe { libc::syscall(libc::SYS_gettid) } as libc::id_t;
                // getpriority may legitimately return -1; a nice already at 10 or above stays.
                let current = unsafe { libc::getpriority(libc::PRIO_PROCESS as _, tid) };
                if current >= LOW_NICE {
                    return Ok(());
                }
                if unsafe { libc::setpriority(libc::PRIO_PROCESS as _, tid, LOW_NICE) } != 0 {
                    let e = std::io::Error::last_os_error();
                    return Err(std::io::Error::new(e.kind(), format!("setpriority: {e}")));
                }
                Ok(())
            }
            Priority::Idle => {
                let param = libc::sched_param { sched_priority: 0 };
                // SAFETY: pid 0 is the calling thread; `param` outlives the call.
                if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
                    let e = std::io::Error::last_os_error();
                    return Err(std::io::Error::new(
                        e.kind(),
                        format!("sched_setscheduler(SCHED_IDLE): {e}"),
                    ));
                }
                Ok(())
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use super::Priority;

    pub fn lower(_priority: Priority) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// (nice, scheduling policy) of the calling thread, from /proc.
    fn scheduling() -> (i32, i32) {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        // Fields after the command name (which may hold spaces) in parentheses; nice is field 19.
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let nice = after.split(' ').nth(16).unwrap().parse().unwrap();
        (nice, unsafe { libc::sched_getscheduler(0) })
    }

    #[tokio::test]
    async fn workers_run_at_their_priority_and_survive_a_panic() {
        let here = scheduling();
        let low = Workers::start(2, Priority::Low).unwrap();
        let (nice, policy) = low.run(scheduling).await.unwrap();
        assert!(nice >= LOW_NICE, "nice {nice}");
        assert_eq!(policy, libc::SCHED_OTHER);
        let idle = Workers::start(1, Priority::Idle).unwrap();
        assert_eq!(idle.run(scheduling).await.unwrap().1, libc::SCHED_IDLE);
        let normal = Workers::start(1, Priority::Normal).unwrap();
        assert_eq!(normal.run(scheduling).await.unwrap(), here);
        // The caller's thread is untouched.
        assert_eq!(scheduling(), here);
        assert!(low.run(|| panic!("a hostile picture")).await.is_err());
        for _ in 0..4 {
            assert_eq!(low.run(|| 2 + 2).await.ok(), Some(4));
        }
    }
}
