//! The state folder's lock: one device per `state_dir`.
//!
//! Two devices on one folder would use the same temporary names, delete each other's vector
//! files, append to a journal the other has replaced (pictures silently lost) and share a
//! broker client id. So the device holds an exclusive `flock` on `<state_dir>/lock` for as long
//! as it runs; the kernel releases it when the process ends, however it ends, so a crash never
//! leaves a stale lock. The file holds the holder's process id, for the error the next one
//! prints.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::error::DeviceError;

/// The lock's file name inside the state folder.
pub const LOCK_FILE: &str = "lock";

/// The held lock; released when dropped.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
    path: PathBuf,
}

impl StateLock {
    /// Creates `state_dir` if needed and locks it, or says which process holds it.
    pub fn acquire(state_dir: &Path) -> Result<StateLock, DeviceError> {
        std::fs::create_dir_all(state_dir).map_err(|e| DeviceError::io(state_dir, e))?;
        let path = state_dir.join(LOCK_FILE);
        let mut file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| DeviceError::io(&path, e))?;
        // SAFETY: flock on a descriptor this function owns; no memory is involved.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(DeviceError::io(&path, error));
            }
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let who = if holder.is_empty() {
                "another process".to_string()
            } else {
                format!("process {holder}")
            };
            return Err(DeviceError::StateLocked {
                dir: state_dir.to_path_buf(),
                holder: who,
            });
        }
        let written = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "{}", std::process::id()))
            .and_then(|()| file.flush());
        written.map_err(|e| DeviceError::io(&path, e))?;
        Ok(StateLock { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid_until_it_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let first = StateLock::acquire(&state).expect("the first device locks");
        assert_eq!(
            std::fs::read_to_string(first.path()).unwrap().trim(),
            std::process::id().to_string()
        );
        // flock locks belong to the open file, so a second open in this process conflicts
        // exactly as another process would.
        let refused = StateLock::acquire(&state).expect_err("a second device is refused");
        let message = refused.to_string();
        assert!(
            message.contains(&std::process::id().to_string())
                && message.contains(&state.display().to_string()),
            "{message}"
        );
        drop(first);
        StateLock::acquire(&state).expect("free again once the first lets go");
    }
}
