//! Measures how long creating, starting and running a busybox `true` container takes with
//! veil-container on this machine (run as root; needs busybox-static):
//!
//! `cargo run --release -p veil-container --example create_latency -- [RUNS]`
//!
//! Prints the median and range of create (build) and start-to-exit times. A measurement,
//! not a test: nothing is asserted.

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use oci_spec::runtime::{ProcessBuilder, Spec};
use veil_container::{maybe_run_init, ContainerBuilder, StdioConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    maybe_run_init();
    nix::sys::prctl::set_child_subreaper(true)?;
    let runs: usize = std::env::args().nth(1).map_or(Ok(20), |a| a.parse())?;
    let rootfs = tempfile::tempdir()?;
    make_rootfs(rootfs.path())?;
    let mut create = Vec::with_capacity(runs);
    let mut run = Vec::with_capacity(runs);
    for i in 0..runs {
        let started = Instant::now();
        let mut container = ContainerBuilder::new(format!("bench-{i}"), rootfs.path(), spec())
            .stdio(StdioConfig::Null)
            .build()?;
        let created = Instant::now();
        let pid = container.pid();
        container.start()?;
        wait_for(pid)?;
        create.push(created - started);
        run.push(created.elapsed());
        container.mark_stopped();
        container.delete()?;
    }
    report(
        "create (namespaces, mounts, devices, pivot_root)",
        &mut create,
    );
    report("start to exit (exec busybox true)", &mut run);
    Ok(())
}

fn spec() -> Spec {
    let mut spec = Spec::default();
    let process = ProcessBuilder::default()
        .args(vec!["true".to_string()])
        .env(vec!["PATH=/bin".to_string()])
        .cwd("/")
        .build()
        .unwrap_or_default();
    spec.set_process(Some(process));
    spec
}

fn make_rootfs(root: &Path) -> std::io::Result<()> {
    for dir in ["bin", "proc", "sys", "dev", "tmp"] {
        std::fs::create_dir_all(root.join(dir))?;
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))?;
    std::os::unix::fs::symlink("busybox", root.join("bin/true"))
}

/// Reaps children until `pid` exits (the helpers exit too and are skipped).
fn wait_for(pid: i32) -> nix::Result<()> {
    for _ in 0..1000 {
        match waitpid(Pid::from_raw(-1), None)? {
            WaitStatus::Exited(p, _) | WaitStatus::Signaled(p, _, _) if p.as_raw() == pid => {
                return Ok(())
            }
            _ => continue,
        }
    }
    Err(nix::errno::Errno::ECHILD)
}

fn report(what: &str, samples: &mut [Duration]) {
    samples.sort_unstable();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    if let (Some(first), Some(last)) = (samples.first(), samples.last()) {
        println!(
            "{what}: median {:.1} ms, min {:.1} ms, max {:.1} ms over {} runs",
            ms(samples[samples.len() / 2]),
            ms(*first),
            ms(*last),
            samples.len()
        );
    }
}
