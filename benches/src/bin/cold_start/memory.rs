//! Memory per pod: the shim's and QEMU's resident sets on the host, and what the guest
//! reports as used, next to the configured VM size.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use veil_benches::memory::{parse_meminfo, process_memory, GuestMemory, ProcessMemory};
use veil_integration::{eventually, oci::BUSYBOX_IMAGE, Containerd, VEIL_RUNTIME};

/// One pod's figures, KiB.
pub struct PodMemory {
    /// The shim.
    pub shim: ProcessMemory,
    /// QEMU.
    pub qemu: ProcessMemory,
    /// The guest's view.
    pub guest: GuestMemory,
}

/// Starts `sleep` in a veil pod, measures it while it runs, removes it.
pub fn measure_one(containerd: &Containerd, id: &str, timeout: Duration) -> Result<PodMemory> {
    let started = containerd.run_ctr(
        &[
            "run",
            "-d",
            "--null-io",
            "--runtime",
            VEIL_RUNTIME,
            BUSYBOX_IMAGE,
            id,
            "sleep",
            "600",
        ],
        None,
        timeout,
    )?;
    let measured = if started.code == 0 {
        measure_running(containerd, id)
    } else {
        Err(anyhow::anyhow!(
            "{id}: ctr run -d failed: {}",
            started.stderr
        ))
    };
    containerd.remove(id);
    measured
}

fn only_one(pids: Vec<u32>, what: &str) -> Result<u32> {
    match pids.as_slice() {
        [pid] => Ok(*pid),
        _ => bail!("expected one {what} process while measuring one pod, found {pids:?}"),
    }
}

fn measure_running(containerd: &Containerd, id: &str) -> Result<PodMemory> {
    eventually(Duration::from_secs(30), || {
        containerd.qemu_processes().len() == 1 && containerd.shim_processes().len() == 1
    });
    let qemu = only_one(containerd.qemu_processes(), "QEMU")?;
    let shim = only_one(containerd.shim_processes(), "veil shim")?;
    let meminfo = containerd.exec(id, "meminfo", &["cat", "/proc/meminfo"])?;
    if meminfo.code != 0 {
        bail!(
            "{id}: cat /proc/meminfo in the guest failed: {}",
            meminfo.stderr
        );
    }
    let guest = parse_meminfo(&meminfo.stdout)
        .with_context(|| format!("{id}: no MemTotal/MemAvailable in {:?}", meminfo.stdout))?;
    // Read after the exec, so QEMU and the shim have served a container and an exec.
    Ok(PodMemory {
        shim: process_memory(shim)?,
        qemu: process_memory(qemu)?,
        guest,
    })
}

/// `pods` pods, one after another.
pub fn measure(containerd: &Containerd, pods: usize, timeout: Duration) -> Result<Vec<PodMemory>> {
    let mut all = Vec::new();
    for pod in 0..pods {
        let figures = measure_one(containerd, &format!("mem-{pod}"), timeout)?;
        eprintln!(
            "memory {}/{pods}: shim {} KiB, QEMU {} KiB, guest used {} KiB",
            pod + 1,
            figures.shim.rss_kib,
            figures.qemu.rss_kib,
            figures.guest.used_kib()
        );
        all.push(figures);
    }
    Ok(all)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn rows(pods: &[PodMemory]) -> Vec<(&'static str, Vec<f64>)> {
    let column = |f: &dyn Fn(&PodMemory) -> u64| pods.iter().map(|p| mib(f(p))).collect();
    vec![
        ("shim VmRSS", column(&|p| p.shim.rss_kib)),
        ("shim VmHWM (peak)", column(&|p| p.shim.peak_kib)),
        ("QEMU VmRSS", column(&|p| p.qemu.rss_kib)),
        ("QEMU VmHWM (peak)", column(&|p| p.qemu.peak_kib)),
        ("QEMU RssAnon", column(&|p| p.qemu.anon_kib)),
        ("QEMU RssFile", column(&|p| p.qemu.file_kib)),
        ("QEMU RssShmem", column(&|p| p.qemu.shmem_kib)),
        ("guest MemTotal", column(&|p| p.guest.total_kib)),
        (
            "guest used (MemTotal - MemAvailable)",
            column(&|p| p.guest.used_kib()),
        ),
        (
            "guest not free (MemTotal - MemFree, incl. page cache)",
            column(&|p| p.guest.not_free_kib()),
        ),
    ]
}

/// The Markdown section.
pub fn markdown(pods: &[PodMemory], memory_mib: u32) -> String {
    let mut out = format!(
        "## Memory per pod\n\n\
         One `sleep` container per pod, measured while it runs, after one exec \
         (`cat /proc/meminfo` in the container, which shows the VM's memory). Host figures from \
         /proc/<pid>/status. Configured VM size: **{memory_mib} MiB** (`hypervisor.memory_mib`). \
         QEMU's resident set is more than the guest uses: it also holds guest pages the guest \
         touched and freed (nothing gives them back to the host), QEMU's heap (its copies of the \
         guest kernel and initramfs are candidates, not verified here) and, under TCG, the \
         translated-code cache that KVM would not need; RssAnon/RssFile/RssShmem split it.\n\n"
    );
    out.push_str(&crate::table::header("figure", "MiB"));
    for (name, samples) in rows(pods) {
        out.push_str(&crate::table::row(name, &samples));
    }
    out.push('\n');
    out
}

/// The JSON record.
pub fn json(pods: &[PodMemory], memory_mib: u32) -> serde_json::Value {
    let figures: serde_json::Map<String, serde_json::Value> = rows(pods)
        .into_iter()
        .map(|(name, samples)| (name.to_string(), crate::table::summary_json(&samples)))
        .collect();
    serde_json::json!({"configured_memory_mib": memory_mib, "mib": figures})
}
