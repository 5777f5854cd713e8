//! A serving pod under load: QEMU's and the shim's resident sets as predictions go on.
//!
//! The RuntimeClass charges a pod a fixed overhead beyond its VM's memory, and kubelet's
//! cgroup enforces it on QEMU. Anything in QEMU that grows with the pod's life (under TCG,
//! the translated-code cache, which grows with the guest code that runs) would take a
//! long-running pod past it; a cold start alone cannot show that.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use veil_benches::memory::{process_memory, ProcessMemory};
use veil_integration::owner::ModelOwner;
use veil_integration::{eventually, Containerd};

/// An iris flower, as the demo model expects.
const INPUT: &str = "5.1,3.5,1.4,0.2";

/// The pod's host processes after some number of predictions.
pub struct Sample {
    /// Predictions answered so far.
    pub predictions: u64,
    /// Since the server was healthy.
    pub seconds: f64,
    /// QEMU.
    pub qemu: ProcessMemory,
    /// The shim.
    pub shim: ProcessMemory,
    /// The shim's threads and open descriptors: relays of processes long gone would
    /// show here.
    pub shim_threads: usize,
    /// See `shim_threads`.
    pub shim_fds: usize,
}

fn entries(dir: &str) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// Serves the demo model in one pod and runs `batches` client containers in it, each asking
/// for `per_batch` predictions, sampling the host processes after each.
pub fn measure(containerd: &Containerd, batches: usize, per_batch: u32) -> Result<Vec<Sample>> {
    eprintln!("soak: sealing the model");
    let owner = ModelOwner::start(11, 0).context("seal the model and start store and broker")?;
    let id = "soak";
    let started = containerd.run_model_server(id, &owner.annotations("model"))?;
    if started.code != 0 {
        bail!("{id}: ctr run failed: {}", started.stderr);
    }
    let measured = load_and_sample(containerd, id, batches, per_batch);
    let console = containerd.console_log(id);
    containerd.remove(id);
    measured.with_context(|| format!("console of {id}:\n{console}"))
}

fn load_and_sample(
    containerd: &Containerd,
    id: &str,
    batches: usize,
    per_batch: u32,
) -> Result<Vec<Sample>> {
    // The first answer waits for the server, which loads the model before it listens.
    containerd.model_server_answer(id, INPUT)?;
    eventually(Duration::from_secs(30), || {
        containerd.qemu_processes().len() == 1 && containerd.shim_processes().len() == 1
    });
    let [qemu] = containerd.qemu_processes()[..] else {
        bail!("expected one QEMU process for the one pod");
    };
    let [shim] = containerd.shim_processes()[..] else {
        bail!("expected one veil shim for the one pod");
    };
    let healthy = Instant::now();
    let sample = |predictions| -> Result<Sample> {
        Ok(Sample {
            predictions,
            seconds: healthy.elapsed().as_secs_f64(),
            qemu: process_memory(qemu)?,
            shim: process_memory(shim)?,
            shim_threads: entries(&format!("/proc/{shim}/task")),
            shim_fds: entries(&format!("/proc/{shim}/fd")),
        })
    };
    let mut samples = vec![sample(1)?];
    let repeat = per_batch.to_string();
    for batch in 1..=batches {
        let answer = containerd.run_in_pod(
            id,
            &format!("load{batch}"),
            &[
                "veil-model-server",
                "query",
                "--url",
                "http://127.0.0.1:8080",
                "--input",
                INPUT,
                "--repeat",
                &repeat,
                "--wait-secs",
                "60",
            ],
        )?;
        if answer.code != 0 || !answer.stdout.contains("label") {
            bail!(
                "{id}: batch {batch} of {per_batch} predictions failed ({}): {} {}",
                answer.code,
                answer.stdout,
                answer.stderr
            );
        }
        let last = sample(1 + batch as u64 * u64::from(per_batch))?;
        eprintln!(
            "soak batch {batch}/{batches}: {} predictions, {:.0} s, QEMU VmRSS {} KiB",
            last.predictions, last.seconds, last.qemu.rss_kib
        );
        samples.push(last);
    }
    Ok(samples)
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

/// The Markdown section.
pub fn markdown(samples: &[Sample], memory_mib: u32, tcg_cache_mib: u32) -> String {
    let cache = match tcg_cache_mib {
        0 => "QEMU's own default, 1 GiB".to_string(),
        mib => format!("{mib} MiB"),
    };
    let mut out = format!(
        "## A serving pod over time\n\n\
         The demo model server in one pod (VM of **{memory_mib} MiB**; under TCG, a code cache \
         of **{cache}**, `hypervisor.tcg_cache_mib`), a first prediction, then \
         one client container after another started in the pod (`veil-model-server query \
         --repeat N`, over the VM's loopback), each asking for the same prediction N times. \
         After each: the host processes' resident sets from /proc/<pid>/status, MiB, and the \
         shim's threads and open descriptors. What \
         grows here grows with the pod's life, and must fit in the RuntimeClass overhead \
         beyond the VM's memory.\n\n\
         | predictions | s since healthy | QEMU VmRSS | QEMU RssAnon | QEMU VmHWM | shim VmRSS | shim threads | shim fds |\n\
         | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n"
    );
    for s in samples {
        out.push_str(&format!(
            "| {} | {:.0} | {} | {} | {} | {} | {} | {} |\n",
            s.predictions,
            s.seconds,
            mib(s.qemu.rss_kib),
            mib(s.qemu.anon_kib),
            mib(s.qemu.peak_kib),
            mib(s.shim.rss_kib),
            s.shim_threads,
            s.shim_fds
        ));
    }
    if let (Some(first), Some(last)) = (samples.first(), samples.last()) {
        out.push_str(&format!(
            "\nQEMU VmRSS grew {} MiB from the first prediction to the last ({} predictions, \
             {} client containers).\n",
            mib(last.qemu.rss_kib.saturating_sub(first.qemu.rss_kib)),
            last.predictions,
            samples.len() - 1
        ));
    }
    out.push('\n');
    out
}

/// The JSON record.
pub fn json(samples: &[Sample], memory_mib: u32, tcg_cache_mib: u32) -> serde_json::Value {
    serde_json::json!({
        "configured_memory_mib": memory_mib,
        "tcg_cache_mib": tcg_cache_mib,
        "samples": samples.iter().map(|s| serde_json::json!({
            "predictions": s.predictions,
            "seconds": s.seconds,
            "qemu_rss_kib": s.qemu.rss_kib,
            "qemu_anon_kib": s.qemu.anon_kib,
            "qemu_peak_kib": s.qemu.peak_kib,
            "shim_rss_kib": s.shim.rss_kib,
            "shim_threads": s.shim_threads,
            "shim_fds": s.shim_fds,
        })).collect::<Vec<_>>(),
    })
}
