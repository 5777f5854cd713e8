//! `delete`: end whatever is left of a container and release what the crate holds.
//!
//! Every mount the crate makes lives in the container's own mount namespace, which the
//! kernel tears down with its last process; no state is kept on disk. So delete kills
//! leftovers, removes the container's cgroup and closes the caller's descriptors; the
//! rootfs directory (the shim's share) stays for the caller to unmount.

use nix::errno::Errno;

use crate::container::Container;
use crate::signal::SignalError;
use crate::status::ContainerStatus;

/// Deleting a container failed.
#[derive(Debug, thiserror::Error)]
pub enum DeleteError {
    /// A running container must be killed and its exit seen first.
    #[error("container {id} is running; kill it and wait for its exit before delete")]
    StillRunning {
        /// The container id.
        id: String,
    },
    /// Killing what was left failed.
    #[error("container {id}: kill its remaining processes: {source}")]
    Kill {
        /// The container id.
        id: String,
        /// Why.
        source: SignalError,
    },
}

impl Container {
    /// Deletes a created or stopped container: a created init is told to exit (its start
    /// gate closes) and killed; processes left in the container's mount namespace get
    /// SIGKILL. The caller still reaps them.
    pub fn delete(mut self) -> Result<(), DeleteError> {
        if !self.status.can_delete() {
            return Err(DeleteError::StillRunning { id: self.id });
        }
        if self.status == ContainerStatus::Created {
            // Closing the gate makes the waiting init exit on its own; SIGKILL covers an
            // init stuck elsewhere.
            self.start_gate = None;
            match crate::signal::signal_process(self.init_pid, libc::SIGKILL) {
                Ok(())
                | Err(SignalError::Kill {
                    errno: Errno::ESRCH,
                    ..
                }) => {}
                Err(source) => {
                    return Err(DeleteError::Kill {
                        id: self.id,
                        source,
                    })
                }
            }
        }
        self.kill_leftovers()?;
        if let Some(cgroup) = self.cgroup.take() {
            // A leftover empty directory costs nothing and must not keep the container
            // from being deleted; the warning says which one.
            if let Err(error) = cgroup.remove() {
                tracing::warn!(container = %self.id, %error, "container cgroup left behind");
            }
        }
        tracing::debug!(container = %self.id, "container deleted");
        Ok(())
    }

    /// SIGKILLs processes still in the container's mount namespace (exec'd processes of
    /// a container sharing a pid namespace). The namespace was recorded at create, so a
    /// reused init pid cannot mislead this.
    fn kill_leftovers(&self) -> Result<(), DeleteError> {
        let pids = crate::signal::processes_in_mount_namespace(self.mount_namespace.id()).map_err(
            |source| DeleteError::Kill {
                id: self.id.clone(),
                source: SignalError::ListProcesses {
                    id: self.id.clone(),
                    source,
                },
            },
        )?;
        for pid in pids {
            match crate::signal::signal_process(pid, libc::SIGKILL) {
                Ok(())
                | Err(SignalError::Kill {
                    errno: Errno::ESRCH,
                    ..
                }) => {}
                Err(source) => {
                    return Err(DeleteError::Kill {
                        id: self.id.clone(),
                        source,
                    })
                }
            }
        }
        Ok(())
    }
}
