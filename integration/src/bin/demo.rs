//! `make demo`: a container in a veil VM through a real, private containerd.
//!
//! Starts containerd with veil installed into it, imports a busybox image built
//! locally, runs the same command with runc and with veil, and shows that the veil
//! one ran inside a VM (its own kernel, its own boot id).

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use veil_integration::{Containerd, Runtime};

fn main() -> Result<()> {
    println!("== starting a private containerd with the veil runtime");
    let containerd = Containerd::start()?;
    containerd.import_busybox()?;
    let host_kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let host_boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    println!(
        "host : kernel {}, boot {}",
        host_kernel.trim(),
        host_boot.trim()
    );

    let command = [
        "sh",
        "-c",
        "echo \"kernel $(uname -r), boot $(cat /proc/sys/kernel/random/boot_id)\"",
    ];
    let started = Instant::now();
    let runc = containerd.run(Runtime::Runc, "demo-runc", &command, None)?;
    println!(
        "runc : {} ({:.2} s)",
        runc.stdout.trim(),
        started.elapsed().as_secs_f64()
    );

    let started = Instant::now();
    let veil = containerd.run(Runtime::Veil, "demo-veil", &command, None)?;
    println!(
        "veil : {} ({:.2} s)",
        veil.stdout.trim(),
        started.elapsed().as_secs_f64()
    );
    if veil.code != 0 {
        bail!("veil run failed ({}): {}", veil.code, veil.stderr);
    }
    if veil.stdout.contains(host_boot.trim()) {
        bail!("the veil container reported the host's boot id: it did not run in a VM");
    }
    println!("== the veil container ran in its own VM: its own kernel boot, not the host's (runc shares the host's)");
    std::thread::sleep(Duration::from_millis(100));
    Ok(())
}
