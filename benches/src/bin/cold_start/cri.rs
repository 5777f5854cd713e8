//! A whole pod through containerd's CRI, the way kubelet starts one: RunPodSandbox (for
//! veil, the pod VM boots here), CreateContainer, StartContainer (returns once the process
//! runs); veil and runc alternating in the same run, against their own CRI containerd.

use std::collections::HashMap;
use std::time::Instant;

use anyhow::{Context, Result};
use veil_integration::cri::{self, CriClient, RUNC_HANDLER, VEIL_HANDLER};
use veil_integration::{Containerd, Options};

use crate::table;

/// The CRI calls of one pod start, in order.
const STEPS: [&str; 3] = ["RunPodSandbox", "CreateContainer", "StartContainer"];

/// One pod started through CRI.
#[derive(Debug, Clone, PartialEq)]
pub struct PodStart {
    /// The runtime handler's name in the results (`veil` or `runc`).
    pub runtime: &'static str,
    /// Seconds each of [`STEPS`] took, in order.
    pub steps: [f64; 3],
}

impl PodStart {
    /// RunPodSandbox sent -> StartContainer answered.
    pub fn total(&self) -> f64 {
        self.steps.iter().sum()
    }
}

/// Starts `runs` pods of each runtime (runc, veil, runc, ...), each removed before the next.
pub fn measure(runs: usize, options: &Options) -> Result<Vec<PodStart>> {
    let containerd = Containerd::start_cri(options).context("start containerd with CRI")?;
    cri::import_images(&containerd).context("import the pause and busybox images")?;
    let mut client = CriClient::connect(&containerd.socket)?;
    let mut starts = Vec::with_capacity(runs * 2);
    for run in 0..runs {
        for (runtime, handler) in [("runc", RUNC_HANDLER), ("veil", VEIL_HANDLER)] {
            let name = format!("bench-{runtime}-{run}");
            let start = start_one_pod(&mut client, &containerd, runtime, handler, &name)
                .with_context(|| {
                    format!(
                        "{runtime} pod {name}; containerd log:\n{}",
                        containerd.log()
                    )
                })?;
            eprintln!("cri {runtime} run {run}: {:.3} s", start.total());
            starts.push(start);
        }
    }
    Ok(starts)
}

fn start_one_pod(
    client: &mut CriClient,
    containerd: &Containerd,
    runtime: &'static str,
    handler: &str,
    name: &str,
) -> Result<PodStart> {
    let dir = containerd.dir().join("bench-pods").join(name);
    std::fs::create_dir_all(&dir)?;
    let sandbox = cri::host_network_pod(name, &dir, HashMap::new());
    let container = cri::busybox_container("main", &["sleep", "3600"], Vec::new());

    let began = Instant::now();
    let pod = client.run_pod_sandbox(&sandbox, handler)?;
    let sandbox_ready = Instant::now();
    let id = client.create_container(&pod, &container, &sandbox)?;
    let created = Instant::now();
    client.start_container(&id)?;
    let started = Instant::now();

    client.stop_pod_sandbox(&pod)?;
    client.remove_pod_sandbox(&pod)?;
    Ok(PodStart {
        runtime,
        steps: [
            (sandbox_ready - began).as_secs_f64(),
            (created - sandbox_ready).as_secs_f64(),
            (started - created).as_secs_f64(),
        ],
    })
}

fn samples(starts: &[PodStart], runtime: &str, value: impl Fn(&PodStart) -> f64) -> Vec<f64> {
    starts
        .iter()
        .filter(|start| start.runtime == runtime)
        .map(value)
        .collect()
}

/// The Markdown section.
pub fn markdown(starts: &[PodStart]) -> String {
    let mut out = String::from(
        "## A whole pod through CRI\n\n\
         What kubelet does, over containerd's CRI socket: RunPodSandbox (host network; for veil \
         the VM boots and its agent answers here), CreateContainer, StartContainer (answered \
         once the process runs), timed by the harness around each call; veil and runc \
         alternating, each pod removed before the next.\n\n",
    );
    out.push_str(&table::header("step", "s"));
    for runtime in ["veil", "runc"] {
        for (index, step) in STEPS.iter().enumerate() {
            let values = samples(starts, runtime, |start| start.steps[index]);
            out.push_str(&table::row(&format!("{runtime} `{step}`"), &values));
        }
        let totals = samples(starts, runtime, PodStart::total);
        out.push_str(&table::row(
            &format!("**{runtime} total** RunPodSandbox -> container running"),
            &totals,
        ));
    }
    out.push('\n');
    out
}

/// The JSON record.
pub fn json(starts: &[PodStart]) -> serde_json::Value {
    let per_runtime = |runtime: &str| {
        let mut steps = serde_json::Map::new();
        for (index, step) in STEPS.iter().enumerate() {
            let values = samples(starts, runtime, |start| start.steps[index]);
            steps.insert((*step).into(), table::summary_json(&values));
        }
        serde_json::json!({
            "steps_seconds": steps,
            "total_seconds": table::summary_json(&samples(starts, runtime, PodStart::total)),
            "samples": samples(starts, runtime, PodStart::total),
        })
    };
    serde_json::json!({ "veil": per_runtime("veil"), "runc": per_runtime("runc") })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn starts() -> Vec<PodStart> {
        vec![
            PodStart {
                runtime: "veil",
                steps: [1.5, 0.25, 0.125],
            },
            PodStart {
                runtime: "runc",
                steps: [0.25, 0.125, 0.0625],
            },
        ]
    }

    #[test]
    fn the_steps_add_up_to_the_total() {
        for start in starts() {
            let total: f64 = start.steps.iter().sum();
            assert_eq!(start.total(), total);
        }
    }

    #[test]
    fn every_step_and_total_is_reported_for_both_runtimes() {
        let text = markdown(&starts());
        for runtime in ["veil", "runc"] {
            for step in STEPS {
                assert!(text.contains(&format!("{runtime} `{step}`")), "{text}");
            }
            assert!(text.contains(&format!("**{runtime} total**")), "{text}");
        }
        let record = json(&starts());
        assert_eq!(record["veil"]["total_seconds"]["median"], 1.875);
        assert_eq!(record["runc"]["steps_seconds"]["RunPodSandbox"]["n"], 1);
    }
}
