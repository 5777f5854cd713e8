//! Running a container with `ctr` and timing it to its first output line, bounded in time.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use veil_integration::{oci::BUSYBOX_IMAGE, Containerd, Runtime, VEIL_RUNTIME};

/// What the container prints; checked so a timing never counts an error message.
const EXPECTED: &str = "hi";

/// When one `ctr run` started and when its first output line was read.
#[derive(Debug, Clone, Copy)]
pub struct FirstOutput {
    /// Host wall clock when ctr was spawned (same clock as the shim's log).
    pub started_at: SystemTime,
    /// Host wall clock when the first line was read.
    pub read_at: SystemTime,
    /// Monotonic instants of the same two moments.
    pub started: Instant,
    /// See `started`.
    pub read: Instant,
}

impl FirstOutput {
    /// Seconds from `ctr run` to the first output line.
    pub fn seconds(&self) -> f64 {
        (self.read - self.started).as_secs_f64()
    }
}

/// The short name of a runtime, for ids and reports.
pub fn runtime_name(runtime: Runtime) -> &'static str {
    match runtime {
        Runtime::Runc => "runc",
        Runtime::Veil => "veil",
    }
}

/// `ctr run --rm [--runtime veil] busybox <id> echo hi`, timed to the line `hi`; waits for
/// ctr to exit (the container removed) before returning. Everything bounded by `timeout`.
pub fn run_to_first_line(
    containerd: &Containerd,
    runtime: Runtime,
    id: &str,
    timeout: Duration,
) -> Result<FirstOutput> {
    let mut args = vec!["run", "--rm"];
    if runtime == Runtime::Veil {
        args.extend(["--runtime", VEIL_RUNTIME]);
    }
    args.extend([BUSYBOX_IMAGE, id, "echo", EXPECTED]);
    let deadline = Instant::now() + timeout;
    let (started_at, started) = (SystemTime::now(), Instant::now());
    let mut child = containerd
        .ctr(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("start ctr: is containerd's ctr on PATH?")?;
    let stdout = child.stdout.take().context("ctr has no stdout pipe")?;
    let stderr = collect_stderr(&mut child)?;
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let outcome = BufReader::new(stdout).read_line(&mut line).map(|_| line);
        let _ = sender.send((outcome, SystemTime::now(), Instant::now()));
    });
    let (line, read_at, read) = match receiver.recv_timeout(timeout) {
        Ok((Ok(line), read_at, read)) => (line, read_at, read),
        Ok((Err(error), _, _)) => {
            kill(&mut child);
            bail!("{id}: reading ctr's output failed: {error}");
        }
        Err(_) => {
            kill(&mut child);
            bail!("{id}: no output within {timeout:?}; see containerd's log");
        }
    };
    wait_until(&mut child, deadline, id)
        .map_err(|error| why_ctr_failed(error, containerd, stderr.join().unwrap_or_default()))?;
    if line.trim() != EXPECTED {
        bail!("{id}: expected {EXPECTED:?} as the first line, got {line:?}");
    }
    Ok(FirstOutput {
        started_at,
        read_at,
        started,
        read,
    })
}

/// Reads ctr's stderr on a thread of its own, so a full pipe never stalls ctr.
fn collect_stderr(child: &mut Child) -> Result<std::thread::JoinHandle<String>> {
    let mut stderr = child.stderr.take().context("ctr has no stderr pipe")?;
    Ok(std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    }))
}

/// A failed `ctr run` with what ctr said and the end of containerd's log (where the shim's
/// errors land), since a bare exit status says nothing.
fn why_ctr_failed(error: anyhow::Error, containerd: &Containerd, stderr: String) -> anyhow::Error {
    let log = containerd.log();
    let tail: Vec<&str> = log.lines().rev().take(20).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    error.context(format!(
        "ctr said: {}\ncontainerd log (last 20 lines):\n{}",
        stderr.trim(),
        tail.join("\n")
    ))
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn wait_until(child: &mut Child, deadline: Instant, id: &str) -> Result<()> {
    loop {
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                bail!("{id}: ctr run exited with {status}");
            }
            return Ok(());
        }
        if Instant::now() >= deadline {
            kill(child);
            bail!("{id}: ctr run printed but did not exit in time; see containerd's log");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
