//! The last steps before exec, shared by a container's init and exec'd processes: terminal,
//! oom score, rlimits, user and groups, capabilities, umask, cwd, no_new_privileges, and
//! the executable lookup (like runc, in the container's PATH, so a missing binary fails at
//! create rather than at start).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::resource::{setrlimit, Resource};
use nix::unistd::{Gid, Uid};
use oci_spec::runtime::{PosixRlimitType, Process};

use crate::capabilities::CapabilitySets;
use crate::failure::{InitFailure, StepContext};
use crate::seccomp::SeccompFilter;

/// The PATH used for the lookup when the process env has none (runc's default).
pub(crate) const DEFAULT_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What execve gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ExecTarget {
    pub path: CString,
    pub args: Vec<CString>,
    pub env: Vec<CString>,
    /// A seccomp filter to install just before execve (with no_new_privileges; without,
    /// it was installed before the capabilities were dropped).
    pub seccomp: Option<SeccompFilter>,
}

nix::ioctl_write_int_bad!(set_controlling_terminal, libc::TIOCSCTTY);

/// How the process relates to its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SessionSetup {
    /// Start a new session (the container's init always does).
    pub new_session: bool,
    /// stdin is a pty slave that becomes the controlling terminal.
    pub terminal: bool,
}

/// Applies the process spec to the calling process and resolves the executable.
pub(crate) fn prepare_process(
    process: &Process,
    session: SessionSetup,
    seccomp: Option<&oci_spec::runtime::LinuxSeccomp>,
) -> Result<ExecTarget, InitFailure> {
    let filter = seccomp
        .map(crate::seccomp::compile)
        .transpose()
        .map_err(|e| InitFailure::new("compile the seccomp profile", e.to_string()))?;
    let no_new_privileges = process.no_new_privileges().unwrap_or(false);
    reset_signals()?;
    setup_session(session)?;
    if let Some(score) = process.oom_score_adj() {
        std::fs::write("/proc/self/oom_score_adj", score.to_string())
            .step(|| format!("set oom_score_adj to {score} (is /proc mounted?)"))?;
    }
    apply_rlimits(process)?;
    // Without no_new_privileges installing a filter needs CAP_SYS_ADMIN, which is about to
    // go: as runc does, install it now, so the profile must allow what follows.
    if let Some(filter) = filter.as_ref().filter(|_| !no_new_privileges) {
        crate::seccomp::install(filter).step(|| "install the seccomp filter".into())?;
    }
    let caps = CapabilitySets::from_spec(process.capabilities().as_ref());
    caps.apply_bounding()?;
    switch_user(process)?;
    caps.apply_process_sets()?;
    if let Some(umask) = process.user().umask() {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(umask & 0o777));
    }
    let cwd = process.cwd();
    nix::unistd::chdir(cwd).step(|| format!("enter the working directory {}", cwd.display()))?;
    if no_new_privileges {
        nix::sys::prctl::set_no_new_privs().step(|| "set no_new_privileges".into())?;
    }
    let mut target = exec_target(process)?;
    target.seccomp = filter.filter(|_| no_new_privileges);
    Ok(target)
}

/// The kernel's `struct sigaction` for rt_sigaction(2) on x86_64.
#[repr(C)]
struct KernelSigaction {
    handler: libc::c_ulong,
    flags: libc::c_ulong,
    restorer: libc::c_ulong,
    mask: u64,
}

/// The helper is a Rust program, whose runtime ignores SIGPIPE, and ignored signals and
/// the signal mask survive exec: restore the defaults a freshly started program expects
/// (`yes | head` must end by SIGPIPE). The raw system call is used because glibc silently
/// skips the signals it reserves for itself (32 and 33), which a parent may still have
/// set to ignored.
fn reset_signals() -> Result<(), InitFailure> {
    let default = KernelSigaction {
        handler: 0, // SIG_DFL
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    for signal in 1..=64 {
        if signal == libc::SIGKILL || signal == libc::SIGSTOP {
            continue;
        }
        // SAFETY: `default` is a valid kernel sigaction that outlives the call, the old
        // action pointer is NULL and the size is the kernel's sigset size (8 bytes).
        let rc = unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                signal,
                &default as *const KernelSigaction,
                std::ptr::null_mut::<KernelSigaction>(),
                std::mem::size_of::<u64>(),
            )
        };
        Errno::result(rc).step(|| format!("reset the action of signal {signal}"))?;
    }
    nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&nix::sys::signal::SigSet::empty()),
        None,
    )
    .step(|| "clear the signal mask".into())
}

fn setup_session(session: SessionSetup) -> Result<(), InitFailure> {
    if session.new_session || session.terminal {
        nix::unistd::setsid().step(|| "start a new session".into())?;
    }
    if session.terminal {
        // SAFETY: TIOCSCTTY on fd 0 takes an integer argument and touches no memory.
        unsafe { set_controlling_terminal(0, 0) }
            .step(|| "make the pty the controlling terminal".into())?;
    }
    Ok(())
}

fn apply_rlimits(process: &Process) -> Result<(), InitFailure> {
    for limit in process.rlimits().iter().flatten() {
        let resource = resource_of(limit.typ());
        setrlimit(resource, limit.soft(), limit.hard()).step(|| {
            format!(
                "set rlimit {:?} to {}/{}",
                limit.typ(),
                limit.soft(),
                limit.hard()
            )
        })?;
    }
    Ok(())
}

fn resource_of(typ: PosixRlimitType) -> Resource {
    match typ {
        PosixRlimitType::RlimitCpu => Resource::RLIMIT_CPU,
        PosixRlimitType::RlimitFsize => Resource::RLIMIT_FSIZE,
        PosixRlimitType::RlimitData => Resource::RLIMIT_DATA,
        PosixRlimitType::RlimitStack => Resource::RLIMIT_STACK,
        PosixRlimitType::RlimitCore => Resource::RLIMIT_CORE,
        PosixRlimitType::RlimitRss => Resource::RLIMIT_RSS,
        PosixRlimitType::RlimitNproc => Resource::RLIMIT_NPROC,
        PosixRlimitType::RlimitNofile => Resource::RLIMIT_NOFILE,
        PosixRlimitType::RlimitMemlock => Resource::RLIMIT_MEMLOCK,
        PosixRlimitType::RlimitAs => Resource::RLIMIT_AS,
        PosixRlimitType::RlimitLocks => Resource::RLIMIT_LOCKS,
        PosixRlimitType::RlimitSigpending => Resource::RLIMIT_SIGPENDING,
        PosixRlimitType::RlimitMsgqueue => Resource::RLIMIT_MSGQUEUE,
        PosixRlimitType::RlimitNice => Resource::RLIMIT_NICE,
        PosixRlimitType::RlimitRtprio => Resource::RLIMIT_RTPRIO,
        PosixRlimitType::RlimitRttime => Resource::RLIMIT_RTTIME,
    }
}

/// setgroups, setgid, setuid with keep-caps so the permitted set survives the uid change
/// and can then be trimmed to the spec.
fn switch_user(process: &Process) -> Result<(), InitFailure> {
    let user = process.user();
    let (uid, gid) = (user.uid(), user.gid());
    nix::sys::prctl::set_keepcaps(true).step(|| "keep capabilities across setuid".into())?;
    let groups: Vec<Gid> = user
        .additional_gids()
        .iter()
        .flatten()
        .map(|g| Gid::from_raw(*g))
        .collect();
    nix::unistd::setgroups(&groups).step(|| format!("set additional groups {groups:?}"))?;
    nix::unistd::setgid(Gid::from_raw(gid)).step(|| format!("set gid {gid}"))?;
    nix::unistd::setuid(Uid::from_raw(uid)).step(|| format!("set uid {uid}"))?;
    nix::sys::prctl::set_keepcaps(false).step(|| "clear keep-capabilities".into())
}

/// Resolves `args[0]` and builds execve's arguments.
pub(crate) fn exec_target(process: &Process) -> Result<ExecTarget, InitFailure> {
    let args = process.args().as_deref().unwrap_or_default();
    let program = args
        .first()
        .ok_or_else(|| InitFailure::new("find the executable", "process.args is empty"))?;
    let env = process.env().as_deref().unwrap_or_default();
    let search_path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    let path = find_executable(program, search_path)?;
    Ok(ExecTarget {
        path: c_string(path.as_os_str().as_bytes(), "executable path")?,
        args: args
            .iter()
            .map(|a| c_string(a.as_bytes(), "process.args"))
            .collect::<Result<_, _>>()?,
        env: env
            .iter()
            .map(|e| c_string(e.as_bytes(), "process.env"))
            .collect::<Result<_, _>>()?,
        seccomp: None,
    })
}

fn c_string(bytes: &[u8], what: &str) -> Result<CString, InitFailure> {
    CString::new(bytes).map_err(|_| InitFailure::new(format!("read {what}"), "contains a NUL byte"))
}

/// Finds `program` like execvp: a name with a slash is used as is; otherwise the first
/// executable regular file in the PATH entries.
pub(crate) fn find_executable(program: &str, search_path: &str) -> Result<PathBuf, InitFailure> {
    let step = || format!("find executable {program:?}");
    if program.contains('/') {
        let path = PathBuf::from(program);
        return match is_executable_file(&path) {
            Ok(()) => Ok(path),
            Err(errno) => Err(InitFailure::from_errno(step(), errno)),
        };
    }
    let mut denied = false;
    for dir in search_path.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let candidate = Path::new(dir).join(program);
        match is_executable_file(&candidate) {
            Ok(()) => return Ok(candidate),
            Err(Errno::EACCES) => denied = true,
            Err(_) => {}
        }
    }
    let errno = if denied { Errno::EACCES } else { Errno::ENOENT };
    Err(InitFailure {
        step: step(),
        errno: Some(errno as i32),
        detail: format!("not found in PATH {search_path}"),
    })
}

fn is_executable_file(path: &Path) -> Result<(), Errno> {
    let meta = std::fs::metadata(path)
        .map_err(|e| e.raw_os_error().map_or(Errno::ENOENT, Errno::from_raw))?;
    if !meta.is_file() {
        return Err(Errno::EACCES);
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(Errno::EACCES);
    }
    nix::unistd::access(path, nix::unistd::AccessFlags::X_OK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::ProcessBuilder;
    use std::fs;

    fn executable(dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        fs::write(&path, "#!/bin/sh\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[test]
    fn lookup_follows_path_order() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let in_b = executable(b.path(), "tool");
        let search = format!("{}:{}", a.path().display(), b.path().display());
        assert_eq!(find_executable("tool", &search).unwrap(), in_b);
        let in_a = executable(a.path(), "tool");
        assert_eq!(find_executable("tool", &search).unwrap(), in_a);
    }

    #[test]
    fn missing_program_names_the_path() {
        let err = find_executable("nope", "/nonexistent").unwrap_err();
        assert_eq!(err.errno(), Some(Errno::ENOENT));
        assert!(
            err.to_string().contains("not found in PATH /nonexistent"),
            "{err}"
        );
    }

    #[test]
    fn directories_and_plain_files_are_not_executables() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("tool")).unwrap();
        fs::write(dir.path().join("data"), "x").unwrap();
        let search = dir.path().display().to_string();
        assert_eq!(
            find_executable("tool", &search).unwrap_err().errno(),
            Some(Errno::EACCES)
        );
        assert_eq!(
            find_executable("data", &search).unwrap_err().errno(),
            Some(Errno::EACCES)
        );
    }

    #[test]
    fn exec_target_uses_the_process_env_path() {
        let dir = tempfile::tempdir().unwrap();
        let tool = executable(dir.path(), "tool");
        let process = ProcessBuilder::default()
            .args(vec!["tool".to_string(), "arg".to_string()])
            .env(vec![
                format!("PATH={}", dir.path().display()),
                "A=b".to_string(),
            ])
            .build()
            .unwrap();
        let target = exec_target(&process).unwrap();
        assert_eq!(target.path.to_bytes(), tool.as_os_str().as_bytes());
        assert_eq!(target.args.len(), 2);
        assert_eq!(target.env[1].to_str().unwrap(), "A=b");
    }

    #[test]
    fn empty_args_are_refused() {
        let process = ProcessBuilder::default()
            .args(Vec::<String>::new())
            .build()
            .unwrap();
        assert!(exec_target(&process).unwrap_err().detail.contains("empty"));
    }
}
