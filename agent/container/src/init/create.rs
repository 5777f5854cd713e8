//! Create in init mode: enter the namespaces, fork the container's init, and in it prepare
//! the rootfs and the process, report ready, wait for start and exec.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;

use super::{close_other_fds_on_exec, exec, fork_and_report_pid, join_cgroup, report_failure};
use crate::failure::{InitFailure, StepContext};
use crate::mount_options::rootfs_propagation;
use crate::process_setup::{prepare_process, ExecTarget, SessionSetup};
use crate::request::CreateRequest;
use crate::rootfs::{finish_rootfs, prepare_rootfs, RootfsFinish, RootfsSetup};
use crate::sync::{send, SyncMessage};
use crate::syscall::{LinuxSyscall, Syscall};

/// Enters the namespaces, forks the container's init (pid 1 of a new pid namespace),
/// reports its pid and exits; the init reparents to the caller (PID 1 or a subreaper).
pub(super) fn create_helper(request: &CreateRequest, sync: OwnedFd, start: Option<OwnedFd>) -> i32 {
    // Before unshare: a new cgroup namespace is then rooted at the container's cgroup,
    // and the init forked below starts inside it.
    if let Err(failure) = join_cgroup(request.cgroup.as_deref()) {
        return report_failure(sync.as_fd(), failure);
    }
    if let Err(failure) = request.namespaces.apply(&LinuxSyscall) {
        return report_failure(sync.as_fd(), failure);
    }
    fork_and_report_pid(sync.as_fd(), "the container init", || {
        container_init(request, sync.as_fd(), start)
    })
}

/// The container's init: set up, report ready, wait for start, exec.
fn container_init(request: &CreateRequest, sync: BorrowedFd<'_>, start: Option<OwnedFd>) -> i32 {
    let target = match setup_container(request) {
        Ok(t) => t,
        Err(failure) => return report_failure(sync, failure),
    };
    if send(sync, &SyncMessage::Ready).is_err() {
        return 1;
    }
    match wait_for_start(start) {
        Ok(true) => exec(sync, &target),
        // The caller deleted the container before starting it.
        Ok(false) => 0,
        Err(failure) => report_failure(sync, failure),
    }
}

fn setup_container(request: &CreateRequest) -> Result<ExecTarget, InitFailure> {
    let spec = &request.spec;
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| InitFailure::new("read the spec", "process is missing"))?;
    let linux = spec.linux().clone().unwrap_or_default();
    let propagation = rootfs_propagation(linux.rootfs_propagation().as_deref())
        .map_err(|value| InitFailure::new("read linux.rootfsPropagation", value))?;
    let console = if request.terminal {
        Some(std::fs::read_link("/proc/self/fd/0").step(|| "find the pty slave's path".into())?)
    } else {
        None
    };
    let sys = LinuxSyscall;
    prepare_rootfs(
        &sys,
        &RootfsSetup {
            rootfs: &request.rootfs,
            mounts: spec.mounts().as_deref().unwrap_or_default(),
            propagation,
            devices: linux.devices().as_deref().unwrap_or_default(),
            console: console.as_deref(),
            cwd: process.cwd(),
            root_switch: request.root_switch,
            pins: request.pins.as_ref(),
        },
    )?;
    let mut sysctl: Vec<(&str, &str)> = linux
        .sysctl()
        .iter()
        .flatten()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    sysctl.sort_unstable();
    finish_rootfs(
        &sys,
        &RootfsFinish {
            sysctl,
            readonly_paths: linux.readonly_paths().as_deref().unwrap_or_default(),
            masked_paths: linux.masked_paths().as_deref().unwrap_or_default(),
            readonly_root: spec
                .root()
                .as_ref()
                .and_then(|r| r.readonly())
                .unwrap_or(false),
        },
    )?;
    // As runc does: a new network namespace gets a working loopback (servers in the
    // container answer on 127.0.0.1, e.g. to an exec'd client).
    if request.namespaces.creates(crate::namespaces::Kind::Net) {
        sys.loopback_up()
            .step(|| "bring up lo in the new network namespace".into())?;
    }
    if let Some(hostname) = spec.hostname().as_deref().filter(|h| !h.is_empty()) {
        sys.sethostname(hostname)
            .step(|| format!("set hostname {hostname:?}"))?;
    }
    if let Some(domain) = spec.domainname().as_deref().filter(|d| !d.is_empty()) {
        sys.setdomainname(domain)
            .step(|| format!("set domainname {domain:?}"))?;
    }
    let target = prepare_process(
        process,
        SessionSetup {
            new_session: true,
            terminal: request.terminal,
        },
        linux.seccomp().as_ref(),
    )?;
    close_other_fds_on_exec()?;
    Ok(target)
}

/// Blocks until the caller writes the start byte (true) or closes the gate (false).
fn wait_for_start(start: Option<OwnedFd>) -> Result<bool, InitFailure> {
    let Some(start) = start else {
        return Ok(true);
    };
    let mut byte = [0u8; 1];
    loop {
        match nix::unistd::read(start.as_fd(), &mut byte) {
            Ok(0) => return Ok(false),
            Ok(_) => return Ok(true),
            Err(Errno::EINTR) => continue,
            Err(errno) => return Err(InitFailure::from_errno("wait for start", errno)),
        }
    }
}
