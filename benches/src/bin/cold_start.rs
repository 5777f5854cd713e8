//! Cold start: time from `ctr run` to the container's first output line, veil vs runc,
//! in the same run on the same machine. Writes benches/results/cold-start.{md,json}.
//!
//! `veil-bench-cold-start [RUNS]` (default 5). Needs root and the built artifacts
//! (`make bench`).

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use veil_benches::{machine_facts, summarize, Summary};
use veil_integration::{oci::BUSYBOX_IMAGE, Containerd, VEIL_RUNTIME};

fn time_to_first_line(containerd: &Containerd, runtime: Option<&str>, id: &str) -> Result<f64> {
    let mut args = vec!["run", "--rm"];
    if let Some(runtime) = runtime {
        args.extend(["--runtime", runtime]);
    }
    args.extend([BUSYBOX_IMAGE, id, "echo", "hi"]);
    let started = Instant::now();
    let mut child = containerd
        .ctr(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("start ctr")?;
    let stdout = child.stdout.take().context("ctr stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let elapsed = started.elapsed().as_secs_f64();
    let status = child.wait()?;
    if line.trim() != "hi" || !status.success() {
        bail!("{id}: expected `hi`, got {line:?} ({status})");
    }
    Ok(elapsed)
}

fn row(name: &str, summary: &Summary) -> String {
    format!(
        "| {name} | {:.3} | {:.3} | {:.3} | {} |",
        summary.median, summary.min, summary.max, summary.count
    )
}

fn main() -> Result<()> {
    let runs: usize = std::env::args()
        .nth(1)
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(5);
    let containerd = Containerd::start()?;
    containerd.import_busybox()?;
    let (mut veil, mut runc) = (Vec::new(), Vec::new());
    for run in 0..runs {
        runc.push(time_to_first_line(
            &containerd,
            None,
            &format!("runc-{run}"),
        )?);
        veil.push(time_to_first_line(
            &containerd,
            Some(VEIL_RUNTIME),
            &format!("veil-{run}"),
        )?);
        eprintln!(
            "run {}/{runs}: runc {:.3} s, veil {:.3} s",
            run + 1,
            runc[run],
            veil[run]
        );
    }
    let (veil_summary, runc_summary) = (
        summarize(&veil).context("no samples")?,
        summarize(&runc).context("no samples")?,
    );
    let facts = machine_facts();
    let accel = if facts["kvm_pvm"].as_bool() == Some(true) {
        "TCG (software emulation): host KVM is PVM, unusable for standard guests"
    } else {
        "auto (see the shim log: KVM where usable, else TCG)"
    };
    let markdown = format!(
        "# Cold start: `ctr run` to first output\n\n\
         `ctr run --rm IMAGE ID echo hi`, time from starting ctr to reading `hi`, {runs} runs each, \
         interleaved, same containerd, same machine.\n\n\
         | runtime | median s | min s | max s | runs |\n| --- | ---: | ---: | ---: | ---: |\n{}\n{}\n\n\
         veil / runc (median): {:.1}x\n\n\
         Acceleration: {accel}. Guest kernel: `{}` (q35), initramfs `{}`.\n\n\
         Machine: `{}`\n",
        row("runc", &runc_summary),
        row("veil", &veil_summary),
        veil_summary.median / runc_summary.median,
        containerd.artifacts.kernel.display(),
        containerd.artifacts.initrd.display(),
        facts
    );
    let json = serde_json::json!({
        "benchmark": "cold-start",
        "runs": runs,
        "acceleration": accel,
        "kernel": containerd.artifacts.kernel.display().to_string(),
        "seconds": {"veil": veil, "runc": runc},
        "median_seconds": {"veil": veil_summary.median, "runc": runc_summary.median},
        "machine": facts,
    });
    let results = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("results");
    std::fs::create_dir_all(&results)?;
    std::fs::write(results.join("cold-start.md"), &markdown)?;
    std::fs::write(
        results.join("cold-start.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    print!("{markdown}");
    Ok(())
}
