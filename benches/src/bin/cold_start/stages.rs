//! Per-stage cold start: veil's stages from the shim's events, next to the total `ctr run`
//! to first output of veil and runc, interleaved in one run.

use std::time::Duration;

use anyhow::{Context, Result};
use veil_benches::timeline::{cold_start_timeline, Timeline, COLD_START_INSTANTS};
use veil_integration::{eventually, Containerd, Runtime};
use veil_shim::stages::OUTPUT_FIRST;

use crate::ctr::{run_to_first_line, FirstOutput};
use crate::table;

/// The samples of the per-stage cold start.
pub struct ColdStart {
    /// runc totals, seconds.
    pub runc: Vec<f64>,
    /// veil timelines.
    pub veil: Vec<Timeline>,
}

/// Runs `runs` interleaved runc and veil cold starts.
pub fn measure(containerd: &Containerd, runs: usize, timeout: Duration) -> Result<ColdStart> {
    let mut samples = ColdStart {
        runc: Vec::new(),
        veil: Vec::new(),
    };
    for run in 0..runs {
        let runc = run_to_first_line(containerd, Runtime::Runc, &format!("runc-{run}"), timeout)?;
        samples.runc.push(runc.seconds());
        let id = format!("veil-{run}");
        let veil = run_to_first_line(containerd, Runtime::Veil, &id, timeout)?;
        let timeline = veil_timeline(containerd, &id, &veil)?;
        eprintln!(
            "cold start {}/{runs}: runc {:.3} s, veil {:.3} s",
            run + 1,
            runc.seconds(),
            timeline.total
        );
        samples.veil.push(timeline);
    }
    Ok(samples)
}

/// The timeline of veil container `id`, once the shim's last stage reached containerd's log
/// (the shim's log goes through containerd, which may lag behind ctr).
pub fn veil_timeline(containerd: &Containerd, id: &str, output: &FirstOutput) -> Result<Timeline> {
    let needle = format!("{OUTPUT_FIRST} container={id} ");
    eventually(Duration::from_secs(10), || {
        containerd.log().contains(&needle)
    });
    cold_start_timeline(&containerd.log(), id, output.started_at, output.read_at)
        .with_context(|| format!("stages of {id}"))
}

/// What each step of the veil timeline is, for readers of the table.
fn step_label(stage: &str) -> &'static str {
    match stage {
        "create.received" => "ctr run -> shim Create (containerd, shim start)",
        "vm.spawned" => "shim Create -> QEMU spawned",
        "agent.connected" => "QEMU spawned -> agent answers (firmware, kernel boot, agent)",
        "container.created" => "agent -> container created in the guest",
        "process.started" => "container created -> process started",
        "output.first" => "process started -> first output at the shim",
        "output.read" => "shim -> first output read from ctr",
        _ => "?",
    }
}

fn column(samples: &ColdStart, stage: &str) -> Vec<f64> {
    samples.veil.iter().filter_map(|t| t.step(stage)).collect()
}

impl ColdStart {
    /// The Markdown section.
    pub fn markdown(&self) -> String {
        let mut out = String::from(
            "## Cold start, per stage\n\n\
             `ctr run --rm IMAGE ID echo hi`, veil and runc interleaved. Stages from the shim's \
             events in containerd's log (host clock); the first and last step are timed by the \
             harness on the same clock, so the stages add up to the total.\n\n",
        );
        out.push_str(&table::header("veil stage", "s"));
        for stage in &COLD_START_INSTANTS[1..] {
            out.push_str(&table::row(
                &format!("`{stage}`: {}", step_label(stage)),
                &column(self, stage),
            ));
        }
        let veil_totals: Vec<f64> = self.veil.iter().map(|t| t.total).collect();
        out.push_str(&table::row(
            "**veil total** `ctr run` -> first output",
            &veil_totals,
        ));
        out.push_str(&table::row(
            "**runc total** `ctr run` -> first output",
            &self.runc,
        ));
        let ratio = table::median(&veil_totals) / table::median(&self.runc).max(1e-9);
        out.push_str(&format!("\nveil / runc (medians): {ratio:.1}x\n\n"));
        out
    }

    /// The JSON record.
    pub fn json(&self) -> serde_json::Value {
        let stages: serde_json::Map<String, serde_json::Value> = COLD_START_INSTANTS[1..]
            .iter()
            .map(|stage| (stage.to_string(), table::summary_json(&column(self, stage))))
            .collect();
        let veil_totals: Vec<f64> = self.veil.iter().map(|t| t.total).collect();
        serde_json::json!({
            "veil_stage_seconds": stages,
            "veil_total_seconds": table::summary_json(&veil_totals),
            "runc_total_seconds": table::summary_json(&self.runc),
            "samples": {
                "veil": self.veil.iter().map(|t| serde_json::json!({"total": t.total, "steps": t.steps})).collect::<Vec<_>>(),
                "runc": self.runc,
            },
        })
    }
}
