//! The caller's side of process creation: re-executes the init binary (normally
//! `/proc/self/exe`) in init mode with the request on a pipe, then reads what the helper
//! and the new process report on the sync pipe.
//!
//! std's `Command` is used because it spawns safely from a multi-threaded process; all
//! namespace work happens in the fresh, single-threaded helper.

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::errno::Errno;

use crate::failure::InitFailure;
use crate::request::InitRequest;
use crate::stdio::ChildStdio;
use crate::sync::{SyncError, SyncMessage, SyncReader};

/// argv[1] that puts the binary into init mode (see [`crate::maybe_run_init`]).
pub(crate) const INIT_ARG: &str = "__veil_container_init";

/// Launching a container process failed.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// pipe2(2) failed.
    #[error("create the init helper's pipes: {0}")]
    Pipe(Errno),
    /// The init binary could not be started.
    #[error("start the init helper {binary}: {source}; it must be the agent binary that calls veil_container::maybe_run_init() first in main")]
    Launch {
        /// The binary that was executed.
        binary: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The request could not be serialized (a bug).
    #[error("encode the init request: {0}")]
    Encode(serde_json::Error),
    /// The sync pipe failed or timed out.
    #[error(transparent)]
    Sync(#[from] SyncError),
    /// A step in the helper or the new process failed.
    #[error("{0}")]
    Init(InitFailure),
    /// The helper exited without reporting (it crashed or the binary ignores init mode).
    #[error("the init helper exited without reporting; the binary must call veil_container::maybe_run_init() first in main")]
    Silent,
}

/// The result of a successful launch.
pub(crate) struct Launched {
    /// The new process's pid in the caller's pid namespace.
    pub pid: i32,
    /// The sync pipe, still open for create (start errors arrive on it).
    pub sync: SyncReader,
    /// The start gate's write end (create only).
    pub start: Option<OwnedFd>,
}

/// Launch options shared by create and exec.
#[derive(Debug, Clone)]
pub(crate) struct LaunchOptions {
    /// The binary run in init mode.
    pub init_binary: PathBuf,
    /// How long to wait for each report.
    pub timeout: Duration,
}

fn pipe() -> Result<(OwnedFd, OwnedFd), SpawnError> {
    crate::fd::pipe().map_err(SpawnError::Pipe)
}

fn stdio_of(fd: Option<OwnedFd>) -> Stdio {
    fd.map_or_else(Stdio::null, Stdio::from)
}

/// Starts the helper for `request`. With `start_gate`, returns once the new process is
/// ready and waits for start; without, once it exec'd (the sync pipe closed).
pub(crate) fn launch(
    request: &InitRequest,
    stdio: ChildStdio,
    start_gate: bool,
    options: &LaunchOptions,
) -> Result<Launched, SpawnError> {
    let request_bytes = serde_json::to_vec(request).map_err(SpawnError::Encode)?;
    let (request_read, request_write) = pipe()?;
    let (sync_read, sync_write) = pipe()?;
    let (start_read, start_write) = if start_gate {
        let (r, w) = pipe()?;
        (Some(r), Some(w))
    } else {
        (None, None)
    };
    let inherited: Vec<RawFd> = [Some(&request_read), Some(&sync_write), start_read.as_ref()]
        .into_iter()
        .flatten()
        .map(AsRawFd::as_raw_fd)
        .collect();
    let mut command = Command::new(&options.init_binary);
    command
        .arg(INIT_ARG)
        .arg(request_read.as_raw_fd().to_string())
        .arg(sync_write.as_raw_fd().to_string())
        .arg(
            start_read
                .as_ref()
                .map_or(-1, AsRawFd::as_raw_fd)
                .to_string(),
        )
        .env_clear()
        .stdin(stdio_of(stdio.stdin))
        .stdout(stdio_of(stdio.stdout))
        .stderr(stdio_of(stdio.stderr));
    // SAFETY: the closure runs between fork and exec and only calls fcntl(2), which is
    // async-signal-safe; it clears close-on-exec on this child's copies of our pipe ends,
    // leaving the caller's descriptors (and other threads' spawns) untouched.
    unsafe {
        command.pre_exec(move || {
            for fd in &inherited {
                if libc::fcntl(*fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = command.spawn().map_err(|source| SpawnError::Launch {
        binary: options.init_binary.clone(),
        source,
    })?;
    // The caller's reaper collects the helper; waiting here would race it.
    drop(child);
    drop(command);
    drop((request_read, sync_write, start_read));
    if let Err(error) = send_request(request_write, &request_bytes) {
        // EPIPE: the helper exited before reading; the sync pipe says why (or nothing,
        // which is reported as Silent).
        tracing::debug!(%error, "sending the init request failed");
    }
    let mut sync = SyncReader::new(sync_read, options.timeout);
    let mut pid = None;
    let outcome = if start_gate {
        wait_ready(&mut sync, &mut pid)
    } else {
        wait_exec(&mut sync, &mut pid)
    };
    let pid = match outcome {
        Ok(pid) => pid,
        Err(error) => {
            kill_unfinished(pid, &error);
            return Err(error);
        }
    };
    Ok(Launched {
        pid,
        sync,
        start: start_write,
    })
}

fn send_request(fd: OwnedFd, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::File::from(fd).write_all(bytes)
}

/// A process that stopped answering (stuck in a mount, say) is killed so that it does not
/// linger; one that reported a failure exits by itself.
fn kill_unfinished(pid: Option<i32>, error: &SpawnError) {
    let Some(pid) = pid else { return };
    if matches!(error, SpawnError::Sync(_)) {
        tracing::warn!(pid, %error, "killing a container process that did not finish setup");
        // ESRCH (already gone) is fine; nothing else can be done about other errors.
        let _ = crate::signal::signal_process(pid, libc::SIGKILL);
    }
}

/// Create: wait for the pid and for Ready.
fn wait_ready(sync: &mut SyncReader, pid: &mut Option<i32>) -> Result<i32, SpawnError> {
    let mut ready = false;
    loop {
        if let (Some(p), true) = (*pid, ready) {
            return Ok(p);
        }
        match sync.next()? {
            Some(SyncMessage::ChildPid { pid: p }) => *pid = Some(p),
            Some(SyncMessage::Ready) => ready = true,
            Some(SyncMessage::Failed(failure)) => return Err(SpawnError::Init(failure)),
            None => return Err(SpawnError::Silent),
        }
    }
}

/// Exec: wait for the pid and for EOF (the process exec'd) or a failure.
fn wait_exec(sync: &mut SyncReader, pid: &mut Option<i32>) -> Result<i32, SpawnError> {
    loop {
        match sync.next()? {
            Some(SyncMessage::ChildPid { pid: p }) => *pid = Some(p),
            Some(SyncMessage::Ready) => {}
            Some(SyncMessage::Failed(failure)) => return Err(SpawnError::Init(failure)),
            None => return pid.ok_or(SpawnError::Silent),
        }
    }
}

/// The default init binary: the running executable.
pub(crate) fn default_init_binary() -> PathBuf {
    Path::new("/proc/self/exe").to_path_buf()
}
