//! End-to-end benchmarks of veil next to runc, in one run on one machine: cold start per
//! stage, pods started at once, a whole pod through CRI, memory per pod, and sealed-model
//! delivery to the first inference answer. Writes benches/results/cold-start.{md,json}.
//!
//! `veil-bench-cold-start [RUNS] [--concurrency 1,4] [--with-8] [--model-mib 64] ...`
//! (`--help`). Needs root and the built artifacts (`make bench` builds them).

mod concurrency;
mod cri;
mod ctr;
mod delivery;
mod memory;
mod soak;
mod stages;
mod table;

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use veil_benches::machine_facts;
use veil_integration::{Containerd, Options};

/// A part of the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Part {
    /// Per-stage cold start, veil vs runc.
    ColdStart,
    /// N pods started at once.
    Concurrency,
    /// Memory per pod.
    Memory,
    /// Sealed-model delivery to the first inference answer.
    Delivery,
    /// A whole pod through containerd's CRI, veil vs runc.
    Cri,
    /// A serving pod's host memory as predictions go on.
    Soak,
}

/// veil end-to-end benchmarks.
#[derive(Debug, Parser)]
struct Args {
    /// Cold-start runs of each runtime (and pods measured for memory).
    #[arg(default_value_t = 5)]
    runs: usize,
    /// Pod counts started at once.
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    concurrency: Vec<usize>,
    /// Also start 8 pods at once (slow on a 2-core machine under TCG).
    #[arg(long)]
    with_8: bool,
    /// Padding of the large sealed model, MiB (the issue asks 256; under TCG that takes minutes).
    #[arg(long, default_value_t = 64)]
    model_mib: u32,
    /// Deliveries of each model size.
    #[arg(long, default_value_t = 1)]
    delivery_runs: usize,
    /// Client containers the soak part starts in the serving pod, one after another.
    #[arg(long, default_value_t = 40)]
    soak_batches: usize,
    /// Predictions each soak client asks for.
    #[arg(long, default_value_t = 25)]
    soak_predictions: u32,
    /// Only these parts (default: all but soak).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Part>,
    /// Bound on any one container start, seconds.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
    /// A sentence on the conditions of the run (what else ran, why), put into the results.
    #[arg(long)]
    note: Option<String>,
    /// Guest memory of every VM, MiB (default: veil's default). A model must fit in the
    /// guest tmpfs, which holds at most half of it: 256 MiB needs `--memory-mib 1024`.
    #[arg(long)]
    memory_mib: Option<u32>,
    /// `hypervisor.tcg_cache_mib` of every VM (default: veil's default; 0: QEMU's own,
    /// 1 GiB), to compare cache sizes under TCG.
    #[arg(long)]
    tcg_cache_mib: Option<u32>,
    /// `hypervisor.shared_fs` of every VM ("virtio-fs", "virtio-9p"; default: veil's
    /// default, auto), to compare the two.
    #[arg(long)]
    shared_fs: Option<String>,
    /// Stem of the results files: benches/results/<NAME>.{md,json}.
    #[arg(long, default_value = "cold-start")]
    name: String,
}

impl Args {
    /// The soak runs apart (`make bench` writes it to its own results file), so only when
    /// named.
    fn wants(&self, part: Part) -> bool {
        (self.only.is_empty() && part != Part::Soak) || self.only.contains(&part)
    }

    fn concurrency_levels(&self) -> Vec<usize> {
        let mut levels = self.concurrency.clone();
        if self.with_8 && !levels.contains(&8) {
            levels.push(8);
        }
        levels
    }
}

/// This run's arguments, without the note's text (it gets its own line).
fn command_line() -> String {
    let mut words = Vec::new();
    let mut skip_value = false;
    for word in std::env::args().skip(1) {
        if std::mem::take(&mut skip_value) {
            continue;
        }
        skip_value = word == "--note";
        if !skip_value && !word.starts_with("--note=") {
            words.push(word);
        }
    }
    words.join(" ")
}

fn acceleration(facts: &serde_json::Value) -> &'static str {
    if facts["kvm_pvm"].as_bool() == Some(true) {
        "TCG (software emulation): host KVM is PVM, unusable for standard guests"
    } else {
        "auto (see the shim log: KVM where usable, else TCG)"
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let timeout = Duration::from_secs(args.timeout_secs);
    let facts_before = machine_facts();
    eprintln!("machine before: load {}", facts_before["loadavg"]);
    let options = Options {
        shared_fs: args.shared_fs.clone(),
        ..Options::default()
    };
    let containerd = Containerd::start_with(&options)?;
    containerd.import_busybox()?;
    if let Some(memory_mib) = args.memory_mib {
        set_hypervisor_key(&containerd.veil_config, "memory_mib", memory_mib)?;
    }
    if let Some(mib) = args.tcg_cache_mib {
        set_hypervisor_key(&containerd.veil_config, "tcg_cache_mib", mib)?;
    }
    let hypervisor = veil_config::Config::load(&containerd.veil_config)
        .context("read the harness's veil configuration")?
        .hypervisor;
    let memory_mib = hypervisor.memory_mib;
    let share = match veil_shim::hypervisor::virtiofs::choose(&hypervisor)? {
        veil_shim::hypervisor::Share::Virtio9p => "virtio-9p".to_string(),
        veil_shim::hypervisor::Share::VirtioFs { daemon } => {
            format!("virtio-fs ({})", daemon.display())
        }
    };
    let mut markdown = String::new();
    let mut json = serde_json::Map::new();

    if args.wants(Part::ColdStart) {
        let cold = stages::measure(&containerd, args.runs, timeout)?;
        markdown.push_str(&cold.markdown());
        json.insert("cold_start".into(), cold.json());
    }
    if args.wants(Part::Concurrency) {
        let levels = concurrency::measure(&containerd, &args.concurrency_levels(), timeout)?;
        let cores = facts_before["cores"].as_u64().unwrap_or(0) as usize;
        markdown.push_str(&concurrency::markdown(&levels, cores));
        json.insert("concurrency".into(), concurrency::json(&levels));
    }
    if args.wants(Part::Memory) {
        let pods = memory::measure(&containerd, args.runs.min(3), timeout)?;
        markdown.push_str(&memory::markdown(&pods, memory_mib));
        json.insert("memory".into(), memory::json(&pods, memory_mib));
    }
    if args.wants(Part::Cri) {
        let starts = cri::measure(args.runs, &options)?;
        markdown.push_str(&cri::markdown(&starts));
        json.insert("cri".into(), cri::json(&starts));
    }
    if args.wants(Part::Delivery) {
        containerd.import_model_server()?;
        let mut sizes = Vec::new();
        for pad_mib in [1, args.model_mib] {
            sizes.push((
                pad_mib,
                delivery::measure(&containerd, pad_mib, args.delivery_runs)?,
            ));
        }
        markdown.push_str(&delivery::markdown(&sizes));
        json.insert("delivery".into(), delivery::json(&sizes));
    }
    if args.wants(Part::Soak) {
        containerd.import_model_server()?;
        let samples = soak::measure(&containerd, args.soak_batches, args.soak_predictions)?;
        let cache = hypervisor.tcg_cache_mib;
        markdown.push_str(&soak::markdown(&samples, memory_mib, cache));
        json.insert("soak".into(), soak::json(&samples, memory_mib, cache));
    }

    let facts_after = machine_facts();
    let header = format!(
        "# veil end to end: cold start, concurrency, memory, model delivery\n\n\
         Written by `veil-bench-cold-start {}` (`make bench`). {} cold-start runs per runtime; \
         large model padded {} MiB (default 64; the issue asks 256 MiB: pass `--model-mib 256 \
         --memory-mib 1024`, as the guest tmpfs of the default 512 MiB VM cannot hold it; about \
         40 s per delivery under TCG).\n\n\
         Acceleration: {}. Guest kernel `{}`, initramfs `{}`, QEMU machine `{}`, containers' \
         files over {}.\n\n\
         Conditions: {}\n\n\
         Machine before: `{facts_before}`\n\n\
         Machine after (load average shows what else ran): `{facts_after}`\n\n",
        command_line(),
        args.runs,
        args.model_mib,
        acceleration(&facts_before),
        containerd.artifacts.kernel.display(),
        containerd.artifacts.initrd.display(),
        containerd.artifacts.machine,
        share,
        args.note.as_deref().unwrap_or(
            "not described (pass --note); the load averages below are the only record of what \
             else ran"
        ),
    );
    let markdown = format!("{header}{markdown}");
    json.insert("benchmark".into(), "veil-end-to-end".into());
    json.insert("runs".into(), args.runs.into());
    json.insert("acceleration".into(), acceleration(&facts_before).into());
    json.insert("shared_fs".into(), share.clone().into());
    json.insert(
        "qemu_machine".into(),
        containerd.artifacts.machine.clone().into(),
    );
    json.insert("note".into(), args.note.clone().into());
    json.insert("machine_before".into(), facts_before);
    json.insert("machine_after".into(), facts_after);
    write_results(&args.name, &markdown, &serde_json::Value::Object(json))?;
    print!("{markdown}");
    Ok(())
}

/// Sets `hypervisor.<key>` in the harness's veil configuration (read by every shim at its
/// start), which the harness writes without it.
fn set_hypervisor_key(config: &Path, key: &str, value: u32) -> Result<()> {
    let text =
        std::fs::read_to_string(config).with_context(|| format!("read {}", config.display()))?;
    if text
        .lines()
        .any(|line| line.starts_with(&format!("{key} =")))
    {
        anyhow::bail!("{} already sets {key}; not overriding it", config.display());
    }
    let changed = text.replacen(
        "[hypervisor]\n",
        &format!("[hypervisor]\n{key} = {value}\n"),
        1,
    );
    std::fs::write(config, changed).with_context(|| format!("write {}", config.display()))
}

fn write_results(name: &str, markdown: &str, json: &serde_json::Value) -> Result<()> {
    let results = Path::new(env!("CARGO_MANIFEST_DIR")).join("results");
    std::fs::create_dir_all(&results).with_context(|| format!("create {}", results.display()))?;
    std::fs::write(results.join(format!("{name}.md")), markdown)?;
    std::fs::write(
        results.join(format!("{name}.json")),
        serde_json::to_string_pretty(json)?,
    )?;
    eprintln!(
        "results written to {}/{name}.{{md,json}}",
        results.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn make_bench_s_positional_run_count_still_parses() {
        let args = Args::try_parse_from(["veil-bench-cold-start", "5"]).expect("args");
        assert_eq!(args.runs, 5);
        assert_eq!(args.concurrency_levels(), vec![1, 4]);
        assert_eq!(args.model_mib, 64);
        assert!(Part::ColdStart != Part::Delivery && args.wants(Part::Delivery));
    }

    #[test]
    fn eight_pods_only_when_asked_and_parts_can_be_picked() {
        let args = Args::try_parse_from([
            "veil-bench-cold-start",
            "--with-8",
            "--only",
            "cold-start,memory",
        ])
        .expect("args");
        assert_eq!(args.concurrency_levels(), vec![1, 4, 8]);
        assert!(args.wants(Part::Memory) && !args.wants(Part::Delivery));
        let all = Args::try_parse_from(["veil-bench-cold-start"]).expect("args");
        assert!(all.wants(Part::Cri) && !all.wants(Part::Soak));
    }
}
