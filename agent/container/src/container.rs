//! A created container and the process handle returned for its init and exec'd processes.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use crate::cgroups::Cgroup;
use crate::signal::HeldNamespace;
use crate::spawn::{LaunchOptions, Launched};
use crate::status::ContainerStatus;
use crate::stdio::ProcessIo;
use crate::sync::SyncReader;

/// A process started in a container: its pid (in the caller's pid namespace) and the
/// caller's ends of its stdio.
#[derive(Debug)]
pub struct Process {
    /// Pid as the agent sees it; the agent's reaper gets its exit status.
    pub pid: i32,
    /// Write end of stdin (pipes with stdin only).
    pub stdin: Option<OwnedFd>,
    /// Read end of stdout (pipes only).
    pub stdout: Option<OwnedFd>,
    /// Read end of stderr (pipes only).
    pub stderr: Option<OwnedFd>,
    /// The pty master (terminal only).
    pub pty_master: Option<OwnedFd>,
}

impl Process {
    pub(crate) fn new(pid: i32, io: ProcessIo) -> Self {
        Process {
            pid,
            stdin: io.stdin,
            stdout: io.stdout,
            stderr: io.stderr,
            pty_master: io.pty_master,
        }
    }
}

/// A container created by [`crate::ContainerBuilder::build`].
///
/// Its init is PID 1 of the container's pid namespace and a child of the caller (PID 1 of
/// the guest, or a subreaper): the caller reaps it and tells the container with
/// [`Container::mark_stopped`].
#[derive(Debug)]
pub struct Container {
    pub(crate) id: String,
    pub(crate) rootfs: PathBuf,
    pub(crate) init_pid: i32,
    pub(crate) status: ContainerStatus,
    /// Write end of the start gate; one byte starts the init, closing it ends the init.
    pub(crate) start_gate: Option<OwnedFd>,
    /// Open until the init exec'd; an exec failure arrives here.
    pub(crate) sync: Option<SyncReader>,
    pub(crate) init_io: ProcessIo,
    pub(crate) options: LaunchOptions,
    /// The init's mount namespace, held from while it surely lived (see `signal_all`).
    pub(crate) mount_namespace: HeldNamespace,
    /// The cgroup its processes run in, when the caller gave one.
    pub(crate) cgroup: Option<Cgroup>,
    /// Its seccomp profile, for the processes exec'd into it.
    pub(crate) seccomp: Option<oci_spec::runtime::LinuxSeccomp>,
}

impl Container {
    pub(crate) fn new(
        id: String,
        rootfs: PathBuf,
        launched: Launched,
        io: ProcessIo,
        options: LaunchOptions,
        mount_namespace: HeldNamespace,
    ) -> Self {
        Container {
            id,
            rootfs,
            init_pid: launched.pid,
            status: ContainerStatus::Created,
            start_gate: launched.start,
            sync: Some(launched.sync),
            init_io: io,
            options,
            mount_namespace,
            cgroup: None,
            seccomp: None,
        }
    }

    /// The container's cgroup (for statistics and resource updates), when it has one.
    pub fn cgroup(&self) -> Option<&Cgroup> {
        self.cgroup.as_ref()
    }

    /// The container id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The rootfs directory it was built from.
    pub fn rootfs(&self) -> &Path {
        &self.rootfs
    }

    /// The init's pid in the caller's pid namespace.
    pub fn pid(&self) -> i32 {
        self.init_pid
    }

    /// The lifecycle state.
    pub fn status(&self) -> ContainerStatus {
        self.status
    }

    /// Takes the caller's ends of the init's stdio (once; later calls get empty ends).
    pub fn take_init_process(&mut self) -> Process {
        Process::new(self.init_pid, std::mem::take(&mut self.init_io))
    }

    /// Records that the caller reaped the init; the container can then be deleted.
    pub fn mark_stopped(&mut self) {
        self.status = ContainerStatus::Stopped;
        self.start_gate = None;
        self.sync = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn handles_can_move_between_threads() {
        // The agent keeps containers in shared state and calls them from spawn_blocking.
        assert_send_sync::<Container>();
        assert_send_sync::<Process>();
    }
}
