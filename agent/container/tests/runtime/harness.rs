//! The parent side of the runtime tests: a subreaper with a reaper thread (as the agent
//! is), busybox rootfs directories and specs.

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use oci_spec::runtime::{ProcessBuilder, Spec};

/// Where Debian's busybox-static puts the binary.
pub const BUSYBOX: &str = "/bin/busybox";
const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "sleep", "id", "hostname", "pwd", "env", "stty", "grep", "ls", "touch",
    "tr", "test", "true", "false", "seq", "mount", "wc",
];
/// Bound for every wait in the tests; never asserted, only a guard against hangs.
pub const WAIT_LIMIT: Duration = Duration::from_secs(60);

/// Exit statuses collected by the reaper thread, by pid.
struct Exits {
    statuses: Mutex<HashMap<i32, WaitStatus>>,
    changed: Condvar,
}

fn exits() -> &'static Exits {
    static EXITS: OnceLock<Exits> = OnceLock::new();
    EXITS.get_or_init(|| Exits {
        statuses: Mutex::new(HashMap::new()),
        changed: Condvar::new(),
    })
}

/// Makes this process a subreaper and reaps every child in a thread, as the agent's PID 1
/// loop does; the crate itself never waits.
pub fn become_reaper() -> Result<(), String> {
    nix::sys::prctl::set_child_subreaper(true)
        .map_err(|e| format!("PR_SET_CHILD_SUBREAPER: {e}"))?;
    std::thread::spawn(|| loop {
        match waitpid(Pid::from_raw(-1), None) {
            Ok(status) => {
                if let Some(pid) = status.pid() {
                    let e = exits();
                    if let Ok(mut map) = e.statuses.lock() {
                        map.insert(pid.as_raw(), status);
                    }
                    e.changed.notify_all();
                }
            }
            Err(Errno::ECHILD) => std::thread::sleep(Duration::from_millis(20)),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    });
    Ok(())
}

/// Waits for the reaper to see `pid` exit.
pub fn wait_exit(pid: i32) -> Result<WaitStatus, String> {
    let e = exits();
    let deadline = Instant::now() + WAIT_LIMIT;
    let mut map = e.statuses.lock().map_err(|_| "reaper lock poisoned")?;
    loop {
        if let Some(status) = map.remove(&pid) {
            return Ok(status);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("pid {pid} did not exit within {WAIT_LIMIT:?}"));
        }
        map = e
            .changed
            .wait_timeout(map, left)
            .map_err(|_| "reaper lock poisoned")?
            .0;
    }
}

/// Expects a normal exit with `code`.
pub fn expect_exit_code(pid: i32, code: i32) -> Result<(), String> {
    match wait_exit(pid)? {
        WaitStatus::Exited(_, c) if c == code => Ok(()),
        other => Err(format!("expected exit code {code}, got {other:?}")),
    }
}

/// Reads a pipe or pty master to its end (EIO on a pty whose slave closed counts as end).
pub fn read_all(fd: OwnedFd) -> Result<String, String> {
    let mut file = fs::File::from(fd);
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match file.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            Err(e) if e.raw_os_error() == Some(libc::EIO) => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("read output: {e}")),
        }
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// A busybox rootfs in a temporary directory, removed on drop.
pub struct Rootfs {
    dir: tempfile::TempDir,
}

impl Rootfs {
    /// Copies busybox and links its applets.
    pub fn new() -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("veil-container-test-")
            .tempdir()
            .map_err(|e| format!("create rootfs dir: {e}"))?;
        let root = dir.path();
        for sub in ["bin", "proc", "sys", "dev", "tmp", "etc"] {
            fs::create_dir_all(root.join(sub)).map_err(|e| format!("mkdir {sub}: {e}"))?;
        }
        fs::copy(BUSYBOX, root.join("bin/busybox")).map_err(|e| format!("copy busybox: {e}"))?;
        for applet in APPLETS {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))
                .map_err(|e| format!("link {applet}: {e}"))?;
        }
        Ok(Rootfs { dir })
    }

    /// The rootfs directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A path inside the rootfs.
    pub fn join(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }
}

/// oci-spec's runc-like default spec running `args` in busybox's PATH.
pub fn spec(args: &[&str]) -> Spec {
    let mut spec = Spec::default();
    let process = ProcessBuilder::default()
        .args(args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .env(vec!["PATH=/bin".to_string()])
        .cwd("/")
        .no_new_privileges(true)
        .build()
        .unwrap_or_default();
    spec.set_process(Some(process));
    spec
}

/// Checks the preconditions and says what to install when they are missing.
pub fn check_environment() -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("the runtime tests create namespaces and mounts: run them as root".into());
    }
    if !Path::new(BUSYBOX).exists() {
        return Err(format!(
            "{BUSYBOX} is missing: install it with `apt-get install -y busybox-static`"
        ));
    }
    Ok(())
}
