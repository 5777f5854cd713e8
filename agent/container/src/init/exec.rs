//! Exec in init mode: join a running container's namespaces, fork (to be inside its pid
//! namespace), chroot into its root, prepare the process and exec.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{open, OFlag};
use nix::sys::stat::Mode;

use super::{close_other_fds_on_exec, exec, fork_and_report_pid, join_cgroup, report_failure};
use crate::failure::{InitFailure, StepContext};
use crate::namespaces::{Kind, NamespacePlan, JOIN_ORDER};
use crate::process_setup::{prepare_process, ExecTarget, SessionSetup};
use crate::request::ExecRequest;
use crate::syscall::LinuxSyscall;

/// Joins the container's namespaces, forks the process (so it is inside the pid
/// namespace), reports its pid and exits.
pub(super) fn exec_helper(request: &ExecRequest, sync: OwnedFd) -> i32 {
    let pid = request.container_pid;
    // While the agent's /sys/fs/cgroup is still in view (before joining the mount namespace).
    let prepared = join_cgroup(request.cgroup.as_deref())
        .and_then(|()| exec_namespaces(pid))
        .and_then(|plan| {
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
    fork_and_report_pid(sync.as_fd(), "the exec process", || {
        match exec_setup(request, root) {
            Ok(target) => exec(sync.as_fd(), &target),
            Err(failure) => report_failure(sync.as_fd(), failure),
        }
    })
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
        request.seccomp.as_ref(),
    )?;
    close_other_fds_on_exec()?;
    Ok(target)
}
