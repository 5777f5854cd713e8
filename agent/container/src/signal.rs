//! Signals to a container's init, to one of its processes, or to all of them.
//!
//! Note the pid-namespace rule: the init is PID 1 of its namespace, so the kernel drops
//! signals it has no handler for, except SIGKILL and SIGSTOP. SIGTERM therefore ends an
//! init only if the program handles it (as with runc; `ctr task kill` then needs SIGKILL).
//! Killing the init of a container with its own pid namespace kills every process in it.

use std::os::unix::fs::MetadataExt;

use nix::errno::Errno;

use crate::container::Container;
use crate::status::ContainerStatus;

/// The highest signal number Linux accepts (SIGRTMAX).
const MAX_SIGNAL: i32 = 64;

/// Sending a signal failed.
#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    /// Signals reach only created or running containers.
    #[error("container {id} is {status}; it has no processes to signal")]
    InvalidState {
        /// The container id.
        id: String,
        /// Its state.
        status: ContainerStatus,
    },
    /// Not a Linux signal number.
    #[error("signal {0} is not a valid signal number (1-{MAX_SIGNAL})")]
    InvalidSignal(i32),
    /// kill(2) failed; ESRCH means the process already exited.
    #[error("send signal {signal} to pid {pid}: {errno}")]
    Kill {
        /// The target.
        pid: i32,
        /// The signal.
        signal: i32,
        /// The errno.
        errno: Errno,
    },
    /// /proc could not be read to find the container's processes.
    #[error("list the processes of container {id} in /proc: {source}")]
    ListProcesses {
        /// The container id.
        id: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Sends `signal` to one process (an exec'd process, by the pid [`crate::Process`] gave).
pub fn signal_process(pid: i32, signal: i32) -> Result<(), SignalError> {
    if !(1..=MAX_SIGNAL).contains(&signal) {
        return Err(SignalError::InvalidSignal(signal));
    }
    if pid <= 0 {
        // kill(0 or negative) would hit process groups, never a container process.
        return Err(SignalError::Kill {
            pid,
            signal,
            errno: Errno::ESRCH,
        });
    }
    // SAFETY: kill(2) with a positive pid and a checked signal number touches no memory.
    let rc = unsafe { libc::kill(pid, signal) };
    Errno::result(rc)
        .map(drop)
        .map_err(|errno| SignalError::Kill { pid, signal, errno })
}

impl Container {
    /// Sends `signal` to the container's init.
    pub fn signal(&self, signal: i32) -> Result<(), SignalError> {
        self.check_can_kill()?;
        signal_process(self.init_pid, signal)
    }

    /// Sends `signal` to every process in the container (those in the init's mount
    /// namespace, which only this container's processes share); needed when the container
    /// shares a pid namespace, where the init's death does not end the others. Returns how
    /// many processes were signalled; processes that exit meanwhile are skipped.
    pub fn signal_all(&self, signal: i32) -> Result<usize, SignalError> {
        self.check_can_kill()?;
        let pids = self.pids()?;
        let mut sent = 0;
        for pid in pids {
            match signal_process(pid, signal) {
                Ok(()) => sent += 1,
                Err(SignalError::Kill {
                    errno: Errno::ESRCH,
                    ..
                }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(sent)
    }

    /// Pids (in the caller's pid namespace) of every process in the container, for the
    /// shim's Pids call; empty once the container's last process is gone.
    pub fn pids(&self) -> Result<Vec<i32>, SignalError> {
        processes_in_mount_namespace(self.mount_namespace.id()).map_err(|source| {
            SignalError::ListProcesses {
                id: self.id.clone(),
                source,
            }
        })
    }

    fn check_can_kill(&self) -> Result<(), SignalError> {
        if self.status.can_kill() {
            Ok(())
        } else {
            Err(SignalError::InvalidState {
                id: self.id.clone(),
                status: self.status,
            })
        }
    }
}

/// Identifies a namespace: device and inode of its /proc/<pid>/ns file.
pub(crate) type NamespaceId = (u64, u64);

/// The mount namespace of `pid`.
pub(crate) fn mount_namespace_of(pid: &str) -> std::io::Result<NamespaceId> {
    let meta = std::fs::metadata(format!("/proc/{pid}/ns/mnt"))?;
    Ok((meta.dev(), meta.ino()))
}

/// A container's mount namespace, held open for the container's life. A namespace's inode
/// number is all that names it, and the kernel hands a freed one's number to the next
/// namespace made: a container whose last process had exited, deleted while another
/// container of the pod started, found the newcomer's processes under its old number and
/// killed them. Held, the namespace (and its number) lives until the container is deleted.
#[derive(Debug)]
pub(crate) struct HeldNamespace {
    _file: std::fs::File,
    id: NamespaceId,
}

impl HeldNamespace {
    /// Holds the mount namespace of `pid`.
    pub(crate) fn of(pid: i32) -> std::io::Result<HeldNamespace> {
        let file = std::fs::File::open(format!("/proc/{pid}/ns/mnt"))?;
        let meta = file.metadata()?;
        Ok(HeldNamespace {
            id: (meta.dev(), meta.ino()),
            _file: file,
        })
    }

    /// Its identity, unique while it is held.
    pub(crate) fn id(&self) -> NamespaceId {
        self.id
    }
}

/// Pids in the mount namespace `target`. Never the caller's own namespace: a mistake
/// there would kill the agent.
pub(crate) fn processes_in_mount_namespace(target: NamespaceId) -> std::io::Result<Vec<i32>> {
    if mount_namespace_of("self")? == target {
        return Ok(Vec::new());
    }
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(other) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        // Processes exit while we look; a missing entry is not an error.
        if let Ok(meta) = std::fs::metadata(format!("/proc/{other}/ns/mnt")) {
            if (meta.dev(), meta.ino()) == target {
                pids.push(other);
            }
        }
    }
    Ok(pids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_bad_signal_numbers_and_pids() {
        assert!(matches!(
            signal_process(1, 0),
            Err(SignalError::InvalidSignal(0))
        ));
        assert!(matches!(
            signal_process(1, 65),
            Err(SignalError::InvalidSignal(65))
        ));
        assert!(matches!(
            signal_process(0, 15),
            Err(SignalError::Kill {
                errno: Errno::ESRCH,
                ..
            })
        ));
        assert!(matches!(
            signal_process(-1, 15),
            Err(SignalError::Kill {
                errno: Errno::ESRCH,
                ..
            })
        ));
    }

    #[test]
    fn never_lists_the_callers_own_namespace() {
        let own = mount_namespace_of("self").unwrap();
        assert!(processes_in_mount_namespace(own).unwrap().is_empty());
    }
}
