//! Benchmarks: cold start and decrypt throughput, and the machine facts every result
//! file carries (so a figure is never read without knowing where it was taken).
//!
//! The end-to-end harness is the `veil-bench-cold-start` binary; this library holds what it
//! reads and computes (stage timelines from the shim's log, delivery stages from the VM
//! console, memory figures), so that can be tested without a VM.

use std::process::Command;

pub mod delivery;
pub mod memory;
pub mod timeline;

/// A sample's median and spread.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Median.
    pub median: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
    /// How many samples.
    pub count: usize,
}

/// Median, min and max of `samples` (None when empty).
pub fn summarize(samples: &[f64]) -> Option<Summary> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    let median = if sorted.len() % 2 == 0 {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    } else {
        sorted[middle]
    };
    Some(Summary {
        median,
        min: sorted[0],
        max: sorted[sorted.len() - 1],
        count: sorted.len(),
    })
}

fn first_line(command: &str, args: &[&str]) -> String {
    Command::new(command)
        .args(args)
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_else(|| "unknown".to_string())
}

/// Facts about the machine a benchmark ran on.
pub fn machine_facts() -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    serde_json::json!({
        "cpu": cpu,
        "cores": cores,
        "memory": memory,
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "kvm_pvm": std::path::Path::new("/sys/module/kvm_pvm").exists(),
        // Other work on the machine skews wall-clock figures: record how busy it was.
        "loadavg": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
        "qemu": first_line("qemu-system-x86_64", &["--version"]),
        "containerd": first_line("containerd", &["--version"]),
        "git_revision": first_line("git", &["rev-parse", "--short", "HEAD"]),
        "date": first_line("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_samples() {
        assert_eq!(summarize(&[3.0, 1.0, 2.0]).map(|s| s.median), Some(2.0));
        let even = summarize(&[4.0, 1.0, 2.0, 3.0]).expect("summary");
        assert_eq!(
            (even.median, even.min, even.max, even.count),
            (2.5, 1.0, 4.0, 4)
        );
        assert!(summarize(&[]).is_none());
    }

    #[test]
    fn machine_facts_name_the_essentials() {
        let facts = machine_facts();
        for key in ["cpu", "cores", "qemu", "containerd", "git_revision", "date"] {
            assert!(facts.get(key).is_some(), "missing {key}");
        }
    }
}
