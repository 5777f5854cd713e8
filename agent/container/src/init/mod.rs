//! The init side: the helper process started in init mode, and the container process it
//! forks. The helper is single-threaded (it is a fresh exec and runs before the agent starts
//! any threads), so it may unshare, setns and fork freely; the forked child may allocate.

mod create;
mod exec;

use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use crate::failure::{InitFailure, StepContext};
use crate::process_setup::ExecTarget;
use crate::request::InitRequest;
use crate::spawn::INIT_ARG;
use crate::sync::{send, SyncMessage};

use create::create_helper;
use exec::exec_helper;

/// Runs the container init helper and exits when this process was started for it;
/// returns at once otherwise.
///
/// The binary that creates containers (the agent) must call this first thing in `main`,
/// before it starts any thread or async runtime: container creation re-executes the
/// binary (`/proc/self/exe`) in this mode.
pub fn maybe_run_init() {
    let mut args = std::env::args_os();
    if args.nth(1).as_deref() != Some(OsStr::new(INIT_ARG)) {
        return;
    }
    let rest: Vec<String> = args.map(|a| a.to_string_lossy().into_owned()).collect();
    std::process::exit(run_helper(&rest));
}

/// The helper's descriptors, named by the caller on the command line.
struct HelperFds {
    request: OwnedFd,
    sync: OwnedFd,
    start: Option<OwnedFd>,
}

fn take_fd(arg: Option<&String>) -> Option<OwnedFd> {
    let raw: RawFd = arg?.parse().ok()?;
    if raw < 3 {
        return None;
    }
    // SAFETY: the caller passed this descriptor to us (close-on-exec cleared for this
    // child only) and named it on the command line; nothing else in this fresh process
    // owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // Keep it out of the container's program.
    // SAFETY: F_SETFD on a descriptor we own touches no memory.
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    Some(fd)
}

fn run_helper(args: &[String]) -> i32 {
    let (Some(request), Some(sync)) = (take_fd(args.first()), take_fd(args.get(1))) else {
        eprintln!("{INIT_ARG}: missing descriptors; this mode is only for veil-container");
        return 2;
    };
    let fds = HelperFds {
        request,
        sync,
        start: take_fd(args.get(2)),
    };
    if let Err(failure) = ensure_single_threaded() {
        return report_failure(fds.sync.as_fd(), failure);
    }
    let request = match read_request(fds.request) {
        Ok(r) => r,
        Err(failure) => return report_failure(fds.sync.as_fd(), failure),
    };
    match request {
        InitRequest::Create(create) => create_helper(&create, fds.sync, fds.start),
        InitRequest::Exec(exec) => exec_helper(&exec, fds.sync),
    }
}

/// unshare(CLONE_NEWNS) and fork need a single-threaded helper; `#[tokio::main]` starts
/// threads before `main`'s body, so say so instead of failing obscurely later.
fn ensure_single_threaded() -> Result<(), InitFailure> {
    let status =
        std::fs::read_to_string("/proc/self/status").step(|| "read /proc/self/status".into())?;
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse::<u32>().ok())
        .unwrap_or(1);
    if threads > 1 {
        return Err(InitFailure::new(
            "start the init helper",
            format!("it runs {threads} threads; call veil_container::maybe_run_init() first in main, before any thread or runtime starts (no #[tokio::main])"),
        ));
    }
    Ok(())
}

fn read_request(fd: OwnedFd) -> Result<InitRequest, InitFailure> {
    let mut bytes = Vec::new();
    File::from(fd)
        .read_to_end(&mut bytes)
        .step(|| "read the init request".into())?;
    serde_json::from_slice(&bytes)
        .map_err(|e| InitFailure::new("decode the init request", e.to_string()))
}

/// Forks the process the helper exists for, reports its pid from the helper (which then
/// exits, so the process reparents to the caller), and runs `child` in it, ending with
/// its exit code. `what` names the process in the fork error ("the container init").
///
/// Only call from the single-threaded helper.
fn fork_and_report_pid(sync: BorrowedFd<'_>, what: &str, child: impl FnOnce() -> i32) -> i32 {
    // SAFETY: the helper is single-threaded (a fresh exec that started no threads, checked
    // by ensure_single_threaded), so the child may run arbitrary code.
    match unsafe { nix::unistd::fork() } {
        Err(errno) => report_failure(sync, InitFailure::from_errno(format!("fork {what}"), errno)),
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            let _ = send(
                sync,
                &SyncMessage::ChildPid {
                    pid: child.as_raw(),
                },
            );
            0
        }
        Ok(nix::unistd::ForkResult::Child) => {
            let code = child();
            // SAFETY: _exit ends the child without running the helper's atexit handlers
            // or flushing buffers that belong to the parent.
            unsafe { libc::_exit(code) }
        }
    }
}

/// Joins the container's cgroup, when it has one.
fn join_cgroup(cgroup: Option<&std::path::Path>) -> Result<(), InitFailure> {
    let Some(path) = cgroup else {
        return Ok(());
    };
    crate::cgroups::join(path).step(|| format!("join cgroup {}", path.display()))
}

fn report_failure(sync: BorrowedFd<'_>, failure: InitFailure) -> i32 {
    // If the caller is gone there is nobody left to tell.
    let _ = send(sync, &SyncMessage::Failed(failure));
    1
}

/// execve; returns only on failure, after reporting it.
fn exec(sync: BorrowedFd<'_>, target: &ExecTarget) -> i32 {
    if let Err(errno) = crate::address_layout::restore_for_program() {
        let failure = InitFailure::from_errno("restore address-space randomization", errno);
        return report_failure(sync, failure);
    }
    // Last, so that the profile need allow only execve itself.
    if let Some(filter) = &target.seccomp {
        if let Err(errno) = crate::seccomp::install(filter) {
            let failure = InitFailure::from_errno("install the seccomp filter", errno);
            return report_failure(sync, failure);
        }
    }
    let Err(errno) = nix::unistd::execve(&target.path, &target.args, &target.env);
    let failure = InitFailure::from_errno(format!("exec {}", target.path.to_string_lossy()), errno);
    report_failure(sync, failure);
    127
}

/// Marks every descriptor above stderr close-on-exec so that nothing of the agent leaks
/// into the container's program.
fn close_other_fds_on_exec() -> Result<(), InitFailure> {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only changes descriptor flags.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    // Kernels before 5.11: walk /proc/self/fd.
    let entries = std::fs::read_dir("/proc/self/fd").step(|| "list open descriptors".into())?;
    for entry in entries.flatten() {
        if let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<RawFd>().ok())
        {
            if fd > 2 {
                // SAFETY: F_SETFD only changes a descriptor flag; a stale fd fails harmlessly.
                unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
            }
        }
    }
    Ok(())
}
