//! `start`: release the created init into exec (runc's create/start split).

use nix::errno::Errno;

use crate::container::Container;
use crate::failure::InitFailure;
use crate::status::ContainerStatus;
use crate::sync::{SyncError, SyncMessage};

/// Starting a container failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Only a created container can start.
    #[error("container {id} is {status}; only a created container can start")]
    InvalidState {
        /// The container id.
        id: String,
        /// Its state.
        status: ContainerStatus,
    },
    /// Writing the start byte failed: the init died before start (its exit status is
    /// with the reaper).
    #[error("container {id}: release the init: {errno}; the init exited before start")]
    Release {
        /// The container id.
        id: String,
        /// The errno of the write.
        errno: Errno,
    },
    /// The init could not exec the program.
    #[error("container {id}: {failure}")]
    Exec {
        /// The container id.
        id: String,
        /// The failed step.
        failure: InitFailure,
    },
    /// The sync pipe failed or timed out.
    #[error("container {id}: {source}")]
    Sync {
        /// The container id.
        id: String,
        /// Why.
        source: SyncError,
    },
}

impl Container {
    /// Lets the init exec the container's program. Returns once the exec happened (or
    /// failed); the program's exit reaches the caller's reaper as usual.
    pub fn start(&mut self) -> Result<(), StartError> {
        if !self.status.can_start() {
            return Err(StartError::InvalidState {
                id: self.id.clone(),
                status: self.status,
            });
        }
        let gate = self.start_gate.take();
        if let Some(gate) = gate {
            nix::unistd::write(&gate, &[1u8]).map_err(|errno| StartError::Release {
                id: self.id.clone(),
                errno,
            })?;
        }
        // From here the program may already run: the state changes even if reading the
        // outcome fails.
        self.status = ContainerStatus::Running;
        let Some(mut sync) = self.sync.take() else {
            return Ok(());
        };
        loop {
            match sync.next() {
                Ok(None) => break,
                Ok(Some(SyncMessage::Failed(failure))) => {
                    self.status = ContainerStatus::Stopped;
                    return Err(StartError::Exec {
                        id: self.id.clone(),
                        failure,
                    });
                }
                Ok(Some(_)) => continue,
                Err(source) => {
                    return Err(StartError::Sync {
                        id: self.id.clone(),
                        source,
                    })
                }
            }
        }
        tracing::debug!(container = %self.id, pid = self.init_pid, "container started");
        Ok(())
    }
}
