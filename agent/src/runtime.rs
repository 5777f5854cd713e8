//! What the API service needs from a container runtime, as a trait so the service is
//! testable without namespaces (a fake runs plain host processes).

use std::os::fd::OwnedFd;
use std::path::Path;

use oci_spec::runtime::LinuxResources;
use veil_container::cgroups::CgroupStats;

/// Which standard streams a new process gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StdioRequest {
    /// Keep a writable stdin.
    pub stdin: bool,
    /// Capture stdout (else /dev/null).
    pub stdout: bool,
    /// Capture stderr (else /dev/null).
    pub stderr: bool,
    /// Allocate a terminal instead of pipes.
    pub terminal: bool,
}

impl From<&veil_protocol::Stdio> for StdioRequest {
    fn from(stdio: &veil_protocol::Stdio) -> Self {
        StdioRequest {
            stdin: stdio.stdin,
            stdout: stdio.stdout,
            stderr: stdio.stderr,
            terminal: stdio.terminal,
        }
    }
}

/// A process the runtime created: its pid and the agent's ends of its streams.
#[derive(Debug)]
pub struct SpawnedProcess {
    /// Pid in the agent's pid namespace.
    pub pid: i32,
    /// Write end of its stdin pipe.
    pub stdin: Option<OwnedFd>,
    /// Read end of its stdout pipe.
    pub stdout: Option<OwnedFd>,
    /// Read end of its stderr pipe.
    pub stderr: Option<OwnedFd>,
    /// Master side of its terminal.
    pub pty_master: Option<OwnedFd>,
}

/// A runtime error, carried as text to the shim (which shows it to containerd's user).
pub type RuntimeError = Box<dyn std::error::Error + Send + Sync>;

/// Creates, starts and removes containers. Calls block; the service runs them on
/// blocking threads while holding the reaper's spawn guard.
pub trait ContainerRuntime: Send + Sync + 'static {
    /// Creates the container's init process, stopped before exec until [`Self::start`].
    /// With `pins`, its rootfs and bind sources are mounted only if they still lead where
    /// the agent's checks saw them lead ([`veil_container::SourcePins`]).
    fn create(
        &self,
        id: &str,
        rootfs: &Path,
        spec: oci_spec::runtime::Spec,
        stdio: StdioRequest,
        pins: Option<veil_container::SourcePins>,
    ) -> Result<SpawnedProcess, RuntimeError>;

    /// Lets the init process exec the container's command.
    fn start(&self, id: &str) -> Result<(), RuntimeError>;

    /// Runs another process in the running container.
    fn exec(
        &self,
        id: &str,
        exec_id: &str,
        process: oci_spec::runtime::Process,
        stdio: StdioRequest,
    ) -> Result<SpawnedProcess, RuntimeError>;

    /// Releases what the runtime holds for the container (its processes are gone).
    fn delete(&self, id: &str) -> Result<(), RuntimeError>;

    /// The container's cgroup statistics. Runtimes without cgroups say so.
    fn stats(&self, id: &str) -> Result<CgroupStats, RuntimeError> {
        Err(
            format!("container {id}: this runtime keeps no cgroups, so it has no statistics")
                .into(),
        )
    }

    /// How many times the kernel's OOM killer acted in the container's cgroup. Runtimes
    /// without cgroups say so.
    fn oom_kills(&self, id: &str) -> Result<u64, RuntimeError> {
        Err(format!("container {id}: this runtime keeps no cgroups").into())
    }

    /// Every process of the container, found by its cgroup; `None` from a runtime that keeps
    /// no cgroups (the caller then goes by the init's pid namespace).
    fn processes(&self, _id: &str) -> Result<Option<Vec<i32>>, RuntimeError> {
        Ok(None)
    }

    /// Freezes (`frozen`) or thaws every process of the container. Runtimes without cgroups
    /// say so.
    fn freeze(&self, id: &str, _frozen: bool) -> Result<(), RuntimeError> {
        Err(format!("container {id}: this runtime keeps no cgroups, so it cannot pause").into())
    }

    /// Applies new resources to the container's cgroup. Runtimes without cgroups say so.
    fn update(&self, id: &str, _resources: &LinuxResources) -> Result<(), RuntimeError> {
        Err(
            format!("container {id}: this runtime keeps no cgroups, so resources cannot change")
                .into(),
        )
    }
}
