//! One process known to the shim (a container's init or an exec) and its status.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::io::StdioPaths;

/// Lifecycle of a process as containerd sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Created, not yet started.
    Created,
    /// Running.
    Running,
    /// Running, with every process of the container frozen (`ctr task pause`).
    Paused,
    /// Exited (or never started and killed).
    Stopped,
}

impl Status {
    /// Start is allowed only once, from Created.
    pub fn can_start(self) -> bool {
        self == Status::Created
    }

    /// The containerd status code.
    pub fn to_containerd(self) -> containerd_shim::api::Status {
        match self {
            Status::Created => containerd_shim::api::Status::CREATED,
            Status::Running => containerd_shim::api::Status::RUNNING,
            Status::Paused => containerd_shim::api::Status::PAUSED,
            Status::Stopped => containerd_shim::api::Status::STOPPED,
        }
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    /// Exit code or 128 + signal.
    pub status: u32,
    /// When.
    pub at: SystemTime,
}

/// Mutable part of a process.
#[derive(Debug)]
struct Inner {
    status: Status,
    pid: u32,
}

/// A process and its streams.
pub struct ProcessState {
    /// Container id.
    pub container_id: String,
    /// Exec id ("" for init).
    pub exec_id: String,
    /// Where its streams go.
    pub stdio: StdioPaths,
    /// For execs: the OCI process JSON to run on Start.
    pub exec_spec: Option<Vec<u8>>,
    inner: Mutex<Inner>,
    exit_tx: watch::Sender<Option<ExitInfo>>,
    /// Ends the stdin relay: CloseIO, or the process's deletion.
    pub stdin_end: Arc<crate::io::StdinEnd>,
    /// Held by Start until TaskStart is published, so TaskExit never overtakes it.
    pub start_lock: tokio::sync::Mutex<()>,
    relays: Mutex<Vec<JoinHandle<()>>>,
}

impl ProcessState {
    /// A created process.
    pub fn new(
        container_id: &str,
        exec_id: &str,
        stdio: StdioPaths,
        exec_spec: Option<Vec<u8>>,
    ) -> Self {
        ProcessState {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            stdio,
            exec_spec,
            inner: Mutex::new(Inner {
                status: Status::Created,
                pid: 0,
            }),
            exit_tx: watch::channel(None).0,
            stdin_end: Arc::default(),
            start_lock: tokio::sync::Mutex::new(()),
            relays: Mutex::new(Vec::new()),
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Current status.
    pub fn status(&self) -> Status {
        self.inner().status
    }

    /// Pid inside the guest (0 before creation).
    pub fn pid(&self) -> u32 {
        self.inner().pid
    }

    /// Records the pid the agent gave.
    pub fn set_pid(&self, pid: u32) {
        self.inner().pid = pid;
    }

    /// Moves Created -> Running; false if it was not Created.
    pub fn mark_running(&self) -> bool {
        let mut inner = self.inner();
        if inner.status.can_start() {
            inner.status = Status::Running;
            true
        } else {
            false
        }
    }

    /// Moves `from` -> `to` (Running <-> Paused); false if it was not `from`.
    pub fn mark_transition(&self, from: Status, to: Status) -> bool {
        let mut inner = self.inner();
        if inner.status == from {
            inner.status = to;
            true
        } else {
            false
        }
    }

    /// Records the exit (first one wins); returns false if it had already exited.
    pub fn mark_exited(&self, exit: ExitInfo) -> bool {
        let mut inner = self.inner();
        if inner.status == Status::Stopped {
            return false;
        }
        inner.status = Status::Stopped;
        drop(inner);
        self.exit_tx.send_replace(Some(exit));
        true
    }

    /// The exit, if it happened.
    pub fn exit(&self) -> Option<ExitInfo> {
        *self.exit_tx.borrow()
    }

    /// Waits for the exit.
    pub async fn wait(&self) -> ExitInfo {
        let mut receiver = self.exit_tx.subscribe();
        loop {
            if let Some(exit) = *receiver.borrow_and_update() {
                return exit;
            }
            if receiver.changed().await.is_err() {
                return ExitInfo {
                    status: 255,
                    at: SystemTime::now(),
                };
            }
        }
    }

    /// Keeps a relay task to await before reporting the exit.
    pub fn add_relay(&self, relay: JoinHandle<()>) {
        self.relays
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(relay);
    }

    /// Ends the stdin relay of a process being deleted. A client that never opened its end
    /// of the stdin FIFO (`ctr task exec` with stdin at end of file closes it unopened)
    /// would otherwise keep the relay's blocking open, and its thread, for the shim's life;
    /// the relay releases it as for CloseIO ([`crate::io::relay_stdin`]).
    pub fn release_stdin(&self) {
        self.stdin_end.delete();
    }

    /// Takes the output relays (to await them).
    pub fn take_relays(&self) -> Vec<JoinHandle<()>> {
        std::mem::take(&mut *self.relays.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_only_once_and_exit_only_once() {
        let process = ProcessState::new("c", "", StdioPaths::default(), None);
        assert_eq!(process.status(), Status::Created);
        assert!(process.mark_running());
        assert!(!process.mark_running());
        let exit = ExitInfo {
            status: 7,
            at: SystemTime::UNIX_EPOCH,
        };
        assert!(process.mark_exited(exit));
        assert!(!process.mark_exited(ExitInfo { status: 1, ..exit }));
        assert_eq!(process.exit(), Some(exit));
        assert_eq!(process.status(), Status::Stopped);
    }

    #[tokio::test]
    async fn wait_returns_after_exit() {
        let process = Arc::new(ProcessState::new("c", "", StdioPaths::default(), None));
        let waiter = tokio::spawn({
            let process = process.clone();
            async move { process.wait().await }
        });
        process.mark_exited(ExitInfo {
            status: 3,
            at: SystemTime::UNIX_EPOCH,
        });
        assert_eq!(waiter.await.expect("join").status, 3);
    }
}
