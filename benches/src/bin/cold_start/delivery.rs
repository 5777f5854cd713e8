//! Model delivery end to end: pod create to the first inference answer for a sealed model,
//! split into VM boot, the agent's delivery stages, container start and server ready.

use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use veil_benches::delivery::DeliveryTimes;
use veil_benches::timeline::{stage_instants, unix_seconds, Timeline, CTR_STARTED};
use veil_integration::owner::ModelOwner;
use veil_integration::{eventually, Containerd};
use veil_shim::stages;

/// The host-side instant the server's health check first passed (not a shim event).
const HEALTHY: &str = "server.healthy";
/// The host-side instant the first inference answer came back (not a shim event).
const ANSWERED: &str = "answer.received";
/// An iris flower, as the demo model expects.
const INPUT: &str = "5.1,3.5,1.4,0.2";

const INSTANTS: &[&str] = &[
    CTR_STARTED,
    stages::CREATE_RECEIVED,
    stages::VM_SPAWNED,
    stages::AGENT_CONNECTED,
    // Not container.created: the agent starts the delivery when the container is created
    // and holds its start until the model is ready, so the delivery straddles that event.
    stages::PROCESS_STARTED,
    HEALTHY,
    ANSWERED,
];

/// One delivery run.
pub struct DeliveryRun {
    /// Host-side timeline.
    pub timeline: Timeline,
    /// The agent's stages.
    pub delivery: DeliveryTimes,
}

/// Runs the serving image's query client in the container: `--health` polls /healthz
/// until the server (which loads the model before it listens) answers, else one prediction.
fn query(containerd: &Containerd, id: &str, health: bool) -> Result<()> {
    let mut args = vec![
        "veil-model-server",
        "query",
        "--url",
        "http://127.0.0.1:8080",
        "--wait-secs",
        "120",
    ];
    if health {
        args.push("--health");
    } else {
        args.extend(["--input", INPUT]);
    }
    let exec_id = if health { "health" } else { "predict" };
    let answer = containerd.exec(id, exec_id, &args)?;
    let expected = if health { "ok" } else { "label" };
    if answer.code != 0 || !answer.stdout.contains(expected) {
        bail!(
            "{id}: {exec_id} failed ({}): {} {}",
            answer.code,
            answer.stdout,
            answer.stderr
        );
    }
    Ok(())
}

fn serve_and_query(containerd: &Containerd, owner: &ModelOwner, id: &str) -> Result<Timeline> {
    let started_at = SystemTime::now();
    // The query runs in the server's container, timed apart from any container start, so
    // this owner allows exec (which changes nothing in the delivery being timed).
    let started = containerd.run_model_server(id, &owner.annotations_allowing_exec("model"))?;
    if started.code != 0 {
        bail!("{id}: ctr run failed: {}", started.stderr);
    }
    query(containerd, id, true)?;
    let healthy_at = SystemTime::now();
    query(containerd, id, false)?;
    let answered_at = SystemTime::now();
    let needle = format!("{} container={id} ", stages::PROCESS_STARTED);
    eventually(Duration::from_secs(10), || {
        containerd.log().contains(&needle)
    });
    let mut instants = stage_instants(&containerd.log(), id)?;
    instants.insert(CTR_STARTED.to_string(), unix_seconds(started_at));
    instants.insert(HEALTHY.to_string(), unix_seconds(healthy_at));
    instants.insert(ANSWERED.to_string(), unix_seconds(answered_at));
    Ok(Timeline::from_instants(&instants, INSTANTS, id)?)
}

/// `runs` deliveries of a demo model padded with `pad_mib` MiB, each in a fresh pod.
pub fn measure(containerd: &Containerd, pad_mib: u32, runs: usize) -> Result<Vec<DeliveryRun>> {
    eprintln!("delivery {pad_mib} MiB: sealing the model");
    let owner =
        ModelOwner::start(7, pad_mib).context("seal the model and start store and broker")?;
    let mut all = Vec::new();
    for run in 0..runs {
        let id = format!("model-{pad_mib}m-{run}");
        let timeline = serve_and_query(containerd, &owner, &id);
        let console = containerd.console_log(&id);
        containerd.remove(&id);
        let timeline = timeline.with_context(|| format!("console of {id}:\n{console}"))?;
        let delivery = DeliveryTimes::from_console(&console)
            .with_context(|| format!("console of {id}:\n{console}"))?;
        eprintln!(
            "delivery {pad_mib} MiB {}/{runs}: answer after {:.3} s, decrypt {:.1} MB/s",
            run + 1,
            timeline.total,
            delivery.decrypt_mb_per_s().unwrap_or(0.0)
        );
        all.push(DeliveryRun { timeline, delivery });
    }
    Ok(all)
}

fn rows(runs: &[DeliveryRun]) -> Vec<(&'static str, Vec<f64>)> {
    let step =
        |stage: &str| -> Vec<f64> { runs.iter().filter_map(|r| r.timeline.step(stage)).collect() };
    let ms = |f: &dyn Fn(&DeliveryTimes) -> u64| -> Vec<f64> {
        runs.iter().map(|r| f(&r.delivery) as f64 / 1e3).collect()
    };
    let rest: Vec<f64> = runs
        .iter()
        .filter_map(|r| {
            let start = r.timeline.step(stages::PROCESS_STARTED)?;
            Some(start - r.delivery.ready_ms as f64 / 1e3)
        })
        .collect();
    vec![
        ("`ctr run` -> shim Create", step(stages::CREATE_RECEIVED)),
        ("shim Create -> QEMU spawned", step(stages::VM_SPAWNED)),
        (
            "VM boot: QEMU spawned -> agent answers",
            step(stages::AGENT_CONNECTED),
        ),
        (
            "agent answers -> process started (create, delivery, start)",
            step(stages::PROCESS_STARTED),
        ),
        (
            "&nbsp;&nbsp;of which delivery, started -> ready (agent clock)",
            ms(&|d| d.ready_ms),
        ),
        (
            "&nbsp;&nbsp;&nbsp;&nbsp;store answered (fetch opened)",
            ms(&|d| d.fetch_opened_ms),
        ),
        (
            "&nbsp;&nbsp;&nbsp;&nbsp;attested, key released",
            ms(&|d| d.key_released_ms.saturating_sub(d.fetch_opened_ms)),
        ),
        (
            "&nbsp;&nbsp;&nbsp;&nbsp;fetch + decrypt + verify into tmpfs",
            ms(&|d| d.decrypt_ms()),
        ),
        (
            "&nbsp;&nbsp;of which container create and start outside the delivery",
            rest,
        ),
        (
            "process started -> server healthy (model load; polled by an exec)",
            step(HEALTHY),
        ),
        (
            "server healthy -> first inference answer (one exec)",
            step(ANSWERED),
        ),
        (
            "**total: `ctr run` -> first inference answer**",
            runs.iter().map(|r| r.timeline.total).collect(),
        ),
    ]
}

fn throughput(runs: &[DeliveryRun]) -> Vec<f64> {
    runs.iter()
        .filter_map(|r| r.delivery.decrypt_mb_per_s())
        .collect()
}

/// The Markdown section for every size.
pub fn markdown(sizes: &[(u32, Vec<DeliveryRun>)]) -> String {
    let mut out = String::from(
        "## Model delivery end to end\n\n\
         The demo model server with a sealed model padded to each size: `ctr run -d` (the shim \
         boots the VM, the agent fetches the sealed model from the host's HTTP store, attests with \
         the INSECURE sample attester (no SEV on this machine), gets the key from veil-kbs, \
         decrypts and verifies into a guest tmpfs), then `ctr task exec ... query --health` until \
         the server answers its health check (it loads the model before it listens), then one \
         `ctr task exec ... query` for a prediction. Delivery stages from the agent's `elapsed_ms` in the VM console log; the \
         rest from the shim's events and the harness's clock. The agent starts the delivery when \
         the container is created and holds its start until the model is ready, so the delivery \
         is shown inside the step from agent to process started; the top-level steps add up to \
         the total. The fetch streams through the \
         decryption, so the decrypt figure includes the download over QEMU's user network.\n\n",
    );
    for (pad_mib, runs) in sizes {
        let bytes = runs
            .first()
            .map(|r| r.delivery.plaintext_bytes)
            .unwrap_or(0);
        out.push_str(&format!(
            "### Padded {pad_mib} MiB ({bytes} plaintext bytes)\n\n"
        ));
        out.push_str(&crate::table::header("step", "s"));
        for (name, samples) in rows(runs) {
            out.push_str(&crate::table::row(name, &samples));
        }
        out.push_str(&crate::table::row(
            "decrypt + verify into tmpfs, MB/s",
            &throughput(runs),
        ));
        out.push('\n');
    }
    out
}

/// The JSON record for every size.
pub fn json(sizes: &[(u32, Vec<DeliveryRun>)]) -> serde_json::Value {
    sizes
        .iter()
        .map(|(pad_mib, runs)| {
            let steps: serde_json::Map<String, serde_json::Value> = rows(runs)
                .into_iter()
                .map(|(name, samples)| (name.to_string(), crate::table::summary_json(&samples)))
                .collect();
            serde_json::json!({
                "pad_mib": pad_mib,
                "plaintext_bytes": runs.first().map(|r| r.delivery.plaintext_bytes),
                "seconds": steps,
                "decrypt_mb_per_s": crate::table::summary_json(&throughput(runs)),
                "samples": runs.iter().map(|r| serde_json::json!({
                    "steps": r.timeline.steps,
                    "total": r.timeline.total,
                    "delivery_ms": {
                        "fetch_opened": r.delivery.fetch_opened_ms,
                        "key_released": r.delivery.key_released_ms,
                        "decrypted": r.delivery.decrypted_ms,
                        "unpacked": r.delivery.unpacked_ms,
                        "ready": r.delivery.ready_ms,
                    },
                })).collect::<Vec<_>>(),
            })
        })
        .collect()
}
