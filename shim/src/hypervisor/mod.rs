//! Hypervisor backends. QEMU is the first (the one Kata uses for SEV-SNP); the
//! trait keeps the sandbox independent of it.

pub mod accel;
pub mod qemu;

use std::path::PathBuf;

use async_trait::async_trait;

use crate::error::Result;

/// Everything a backend needs to start one pod VM.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// Sandbox id (names the VM).
    pub id: String,
    /// Per-sandbox state directory (console log, sockets).
    pub state_dir: PathBuf,
    /// Directory shared with the guest (container rootfs and bind mounts).
    pub shared_dir: PathBuf,
    /// Where the agent channel's Unix socket goes.
    pub agent_socket: PathBuf,
    /// Where the guest console is written.
    pub console_log: PathBuf,
}

/// A started VM.
#[async_trait]
pub trait Vm: Send + Sync {
    /// The hypervisor process id on the host.
    fn pid(&self) -> u32;
    /// A line for logs: which acceleration and why.
    fn description(&self) -> String;
    /// Waits until the VM process has exited; returns its exit description.
    async fn wait_exit(&self) -> String;
    /// Whether it has exited already.
    fn has_exited(&self) -> bool;
    /// Kills the VM process (the guest had its chance to power off).
    async fn kill(&self);
}

/// Starts VMs.
#[async_trait]
pub trait Hypervisor: Send + Sync {
    /// Launches the VM described by `spec`; returns once the process runs.
    async fn launch(&self, spec: &VmSpec) -> Result<Box<dyn Vm>>;
}
