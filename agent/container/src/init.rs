//! The init side: the helper process started in init mode, and the container process it
//! forks. The helper is single-threaded (it is a fresh exec and runs before the agent starts
//! any threads), so it may unshare, setns and fork freely; the forked child may allocate.

use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{open, OFlag};
use nix::sys::stat::Mode;
use nix::unistd::ForkResult;

use crate::failure::{InitFailure, StepContext};
use crate::mount_options::rootfs_propagation;
use crate::namespaces::{Kind, NamespacePlan, JOIN_ORDER};
use crate::process_setup::{prepare_process, ExecTarget, SessionSetup};
use crate::request::{CreateRequest, ExecRequest, InitRequest};
use crate::rootfs::{finish_rootfs, prepare_rootfs, RootfsFinish, RootfsSetup};
use crate::spawn::INIT_ARG;
use crate::sync::{send, SyncMessage};
use crate::syscall::{LinuxSyscall, Syscall};

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

fn report_failure(sync: BorrowedFd<'_>, failure: InitFailure) -> i32 {
    // If the caller is gone there is nobody left to tell.
    let _ = send(sync, &SyncMessage::Failed(failure));
    1
}

/// Enters the namespaces, forks the container's init (pid 1 of a new pid namespace),
/// reports its pid and exits; the init reparents to the caller (PID 1 or a subreaper).
fn create_helper(request: &CreateRequest, sync: OwnedFd, start: Option<OwnedFd>) -> i32 {
    if let Err(failure) = request.namespaces.apply(&LinuxSyscall) {
        return report_failure(sync.as_fd(), failure);
    }
    // SAFETY: this helper is single-threaded (a fresh exec that started no threads), so the
    // child may run arbitrary code.
    match unsafe { nix::unistd::fork() } {
        Err(errno) => report_failure(
            sync.as_fd(),
            InitFailure::from_errno("fork the container init", errno),
        ),
        Ok(ForkResult::Parent { child }) => {
            let _ = send(
                sync.as_fd(),
                &SyncMessage::ChildPid {
                    pid: child.as_raw(),
                },
            );
            0
        }
        Ok(ForkResult::Child) => {
            let code = container_init(request, sync.as_fd(), start);
            // SAFETY: _exit ends the child without running the helper's atexit handlers
            // or flushing buffers that belong to the parent.
            unsafe { libc::_exit(code) }
        }
    }
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

/// execve; returns only on failure, after reporting it.
fn exec(sync: BorrowedFd<'_>, target: &ExecTarget) -> i32 {
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

/// Joins the container's namespaces, forks the process (so it is inside the pid
/// namespace), reports its pid and exits.
fn exec_helper(request: &ExecRequest, sync: OwnedFd) -> i32 {
    let pid = request.container_pid;
    let prepared = exec_namespaces(pid).and_then(|plan| {
        let root = open(
            &PathBuf::from(format!("/proc/{pid}/root")),
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .step(|| format!("open the root of container process {pid}"))?;
        plan.apply(&LinuxSyscall)?;
        Ok(root)
    });
    let root = match prepared {
        Ok(root) => root,
        Err(failure) => return report_failure(sync.as_fd(), failure),
    };
    // SAFETY: single-threaded helper, see create_helper.
    match unsafe { nix::unistd::fork() } {
        Err(errno) => report_failure(
            sync.as_fd(),
            InitFailure::from_errno("fork the exec process", errno),
        ),
        Ok(ForkResult::Parent { child }) => {
            let _ = send(
                sync.as_fd(),
                &SyncMessage::ChildPid {
                    pid: child.as_raw(),
                },
            );
            0
        }
        Ok(ForkResult::Child) => {
            let code = match exec_setup(request, root) {
                Ok(target) => exec(sync.as_fd(), &target),
                Err(failure) => report_failure(sync.as_fd(), failure),
            };
            // SAFETY: see create_helper.
            unsafe { libc::_exit(code) }
        }
    }
}

/// The namespaces of `pid` that differ from ours, in join order.
fn exec_namespaces(pid: i32) -> Result<NamespacePlan, InitFailure> {
    let mut plan = NamespacePlan::default();
    for kind in JOIN_ORDER {
        let theirs = PathBuf::from(format!("/proc/{pid}/ns/{}", kind.proc_name()));
        let ours = PathBuf::from(format!("/proc/self/ns/{}", kind.proc_name()));
        if !same_file(&theirs, &ours)? {
            plan.join.push((kind, theirs));
        }
    }
    if !plan.join.iter().any(|(k, _)| *k == Kind::Mount) {
        return Err(InitFailure::new(
            format!("join the mount namespace of container process {pid}"),
            "it shares the agent's mount namespace (is the container still running?)",
        ));
    }
    Ok(plan)
}

fn same_file(a: &Path, b: &Path) -> Result<bool, InitFailure> {
    let ma = std::fs::metadata(a).step(|| format!("read namespace {}", a.display()))?;
    let mb = std::fs::metadata(b).step(|| format!("read namespace {}", b.display()))?;
    Ok(ma.dev() == mb.dev() && ma.ino() == mb.ino())
}

fn exec_setup(request: &ExecRequest, root: OwnedFd) -> Result<ExecTarget, InitFailure> {
    nix::unistd::fchdir(&root).step(|| "enter the container root".into())?;
    nix::unistd::chroot(".").step(|| "chroot into the container root".into())?;
    nix::unistd::chdir("/").step(|| "enter the container root".into())?;
    drop(root);
    let target = prepare_process(
        &request.process,
        SessionSetup {
            new_session: false,
            terminal: request.terminal,
        },
    )?;
    close_other_fds_on_exec()?;
    Ok(target)
}
