//! N pods started at once: time until every one printed, and each pod's own start time.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use veil_integration::{Containerd, Runtime};

use crate::ctr::{run_to_first_line, runtime_name};
use crate::table;

/// One level of concurrency for one runtime.
pub struct Level {
    /// The runtime.
    pub runtime: Runtime,
    /// Pods started at once.
    pub pods: usize,
    /// Seconds from starting them to the last first output.
    pub all_seconds: f64,
    /// Each pod's `ctr run` -> first output, seconds.
    pub per_pod: Vec<f64>,
}

/// Starts `pods` containers of `runtime` at once (one thread each) and times them.
pub fn start_at_once(
    containerd: &Containerd,
    runtime: Runtime,
    pods: usize,
    timeout: Duration,
) -> Result<Level> {
    let name = runtime_name(runtime);
    let began = Instant::now();
    let outcomes: Vec<Result<_>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..pods)
            .map(|pod| {
                let id = format!("{name}-x{pods}-{pod}");
                scope.spawn(move || run_to_first_line(containerd, runtime, &id, timeout))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow!("a pod's thread panicked")))
            })
            .collect()
    });
    let mut per_pod = Vec::with_capacity(pods);
    let mut last = began;
    for outcome in outcomes {
        let output = outcome?;
        per_pod.push(output.seconds());
        last = last.max(output.read);
    }
    let level = Level {
        runtime,
        pods,
        all_seconds: (last - began).as_secs_f64(),
        per_pod,
    };
    eprintln!(
        "concurrency {name} x{pods}: all printed after {:.3} s",
        level.all_seconds
    );
    Ok(level)
}

/// Every level in `counts`, runc then veil at each.
pub fn measure(containerd: &Containerd, counts: &[usize], timeout: Duration) -> Result<Vec<Level>> {
    let mut levels = Vec::new();
    for &pods in counts {
        for runtime in [Runtime::Runc, Runtime::Veil] {
            levels.push(start_at_once(containerd, runtime, pods, timeout)?);
        }
    }
    Ok(levels)
}

/// The Markdown section.
pub fn markdown(levels: &[Level], cores: usize) -> String {
    let mut out = format!(
        "## Concurrency: N pods started at once\n\n\
         N `ctr run --rm ... echo hi` started together (one round per N); time until all printed, \
         and each pod's own `ctr run` -> first output. This machine has {cores} cores, so under \
         TCG the VMs compete for them.\n\n\
         | runtime | N | all printed s | per pod median s | per pod min s | per pod max s |\n\
         | --- | ---: | ---: | ---: | ---: | ---: |\n"
    );
    for level in levels {
        let summary = veil_benches::summarize(&level.per_pod);
        let (median, min, max) = summary
            .map(|s| (s.median, s.min, s.max))
            .unwrap_or_default();
        out.push_str(&format!(
            "| {} | {} | {:.3} | {median:.3} | {min:.3} | {max:.3} |\n",
            runtime_name(level.runtime),
            level.pods,
            level.all_seconds
        ));
    }
    out.push('\n');
    out
}

/// The JSON record.
pub fn json(levels: &[Level]) -> serde_json::Value {
    levels
        .iter()
        .map(|level| {
            serde_json::json!({
                "runtime": runtime_name(level.runtime),
                "pods": level.pods,
                "all_printed_seconds": level.all_seconds,
                "per_pod_seconds": table::summary_json(&level.per_pod),
                "samples": level.per_pod,
            })
        })
        .collect()
}
