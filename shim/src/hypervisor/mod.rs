//! Hypervisor backends. QEMU is the first (the one Kata uses for SEV-SNP); the
//! trait keeps the sandbox independent of it.

pub mod accel;
#[cfg(test)]
mod golden_tests;
pub mod net;
pub mod qemu;
pub mod snp;
pub mod virtiofs;

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
    /// How the shim reaches the agent.
    pub channel: Channel,
    /// Where the guest console is written.
    pub console_log: PathBuf,
    /// Give the guest a user-network NIC for egress to the model store and key broker
    /// (only pods with a model delivery get one).
    pub egress: bool,
    /// SEV-SNP `host_data`: the digest of the pod's model delivery declaration
    /// ([`snp::NO_DELIVERY_HOST_DATA`] without one); ignored by ordinary VMs.
    pub host_data: [u8; 32],
    /// How `shared_dir` reaches the guest ([`virtiofs::choose`]).
    pub share: Share,
}

/// The transport of the shared directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Share {
    /// virtio-9p, served by QEMU.
    Virtio9p,
    /// virtio-fs, served by this virtiofsd.
    VirtioFs {
        /// The daemon binary.
        daemon: PathBuf,
    },
}

impl Share {
    /// The kernel command-line word telling the agent how to mount the share, if it is
    /// not the default 9p.
    pub fn kernel_word(&self) -> Option<&'static str> {
        match self {
            Share::Virtio9p => None,
            Share::VirtioFs { .. } => Some(veil_protocol::VIRTIOFS_CMDLINE_WORD),
        }
    }
}

/// The agent channel of one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Channel {
    /// A virtio-serial port whose host side is this Unix socket.
    Serial {
        /// The socket QEMU listens on.
        socket: PathBuf,
    },
    /// vsock through the host's vhost-vsock, to this guest CID.
    Vsock {
        /// The guest's context id.
        cid: u32,
    },
}

impl Channel {
    /// The kernel command-line value telling the agent which channel to serve.
    pub fn kernel_word(&self) -> &'static str {
        match self {
            Channel::Serial { .. } => "serial",
            Channel::Vsock { .. } => "vsock",
        }
    }
}

/// A guest CID for a VM: derived from its state directory (unique per host), kept
/// clear of the reserved CIDs 0-2 and of u32::MAX. Two live VMs colliding is
/// possible but unlikely (1 in 2^31 per pair); QEMU then refuses to start and says so.
pub fn vsock_cid_for(state_dir: &std::path::Path) -> u32 {
    // FNV-1a: stable across runs and Rust versions, unlike the std hasher.
    let mut hash: u32 = 0x811c_9dc5;
    for byte in state_dir.as_os_str().as_encoded_bytes() {
        hash ^= u32::from(*byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    3 + (hash & 0x7fff_ffff)
}

/// Lets `command`'s child inherit `fds` under their own numbers. They are close-on-exec
/// in the shim, so no other child gets them.
pub fn inherit_fds(command: &mut tokio::process::Command, fds: Vec<std::os::fd::RawFd>) {
    // SAFETY: the closure runs in the forked child before exec and calls only fcntl,
    // which is async-signal-safe; it allocates nothing (the Vec was built before fork).
    unsafe {
        command.pre_exec(move || {
            for fd in &fds {
                if libc::fcntl(*fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vsock_cids_are_stable_and_never_reserved() {
        let a = vsock_cid_for(std::path::Path::new("/run/veil/default/pod-a"));
        assert_eq!(
            a,
            vsock_cid_for(std::path::Path::new("/run/veil/default/pod-a"))
        );
        assert_ne!(
            a,
            vsock_cid_for(std::path::Path::new("/run/veil/default/pod-b"))
        );
        for dir in ["", "/", "/run/veil/x"] {
            let cid = vsock_cid_for(std::path::Path::new(dir));
            assert!((3..u32::MAX).contains(&cid));
        }
    }
}
