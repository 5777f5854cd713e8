//! Reading a cgroup v2 directory's statistics (cpu.stat, memory.*, pids.*), the figures
//! containerd's cgroups v2 `Metrics` carries.

use std::collections::BTreeMap;
use std::path::Path;

use super::CgroupError;

/// CPU time from cpu.stat (microseconds).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CpuStats {
    /// Total CPU time.
    pub usage_usec: u64,
    /// CPU time in user mode.
    pub user_usec: u64,
    /// CPU time in kernel mode.
    pub system_usec: u64,
    /// CFS periods elapsed while a quota was set.
    pub nr_periods: u64,
    /// Periods in which the cgroup was throttled.
    pub nr_throttled: u64,
    /// Time spent throttled.
    pub throttled_usec: u64,
}

/// memory.events counters.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MemoryEvents {
    /// Times usage went below memory.low protection.
    pub low: u64,
    /// Times usage went over memory.high.
    pub high: u64,
    /// Times usage hit memory.max.
    pub max: u64,
    /// Times the cgroup ran out of memory.
    pub oom: u64,
    /// Processes killed by the OOM killer in this cgroup.
    pub oom_kill: u64,
}

/// Memory figures (bytes, except the event counters).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MemoryStats {
    /// memory.current.
    pub current: u64,
    /// memory.max; `None` when unlimited ("max").
    pub max: Option<u64>,
    /// memory.swap.current (0 where swap is not accounted).
    pub swap_current: u64,
    /// memory.stat as key -> value (anon, file, inactive_file, pgfault, ...).
    pub stat: BTreeMap<String, u64>,
    /// memory.events.
    pub events: MemoryEvents,
}

/// Task counts.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PidsStats {
    /// pids.current.
    pub current: u64,
    /// pids.max; `None` when unlimited ("max").
    pub max: Option<u64>,
}

/// A container cgroup's statistics. A controller that is not enabled reads as zeros.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CgroupStats {
    /// CPU time.
    pub cpu: CpuStats,
    /// Memory use and limit.
    pub memory: MemoryStats,
    /// Tasks.
    pub pids: PidsStats,
}

/// How many times the kernel's OOM killer acted in the cgroup directory `dir`
/// (`memory.events` `oom_kill`; 0 when the memory controller is off).
pub(super) fn read_oom_kills(dir: &Path) -> Result<u64, CgroupError> {
    Ok(read_flat_keyed(dir, "memory.events")?
        .get("oom_kill")
        .copied()
        .unwrap_or(0))
}

/// Reads the statistics of the cgroup directory `dir`.
pub(super) fn read_stats(dir: &Path) -> Result<CgroupStats, CgroupError> {
    let cpu = read_flat_keyed(dir, "cpu.stat")?;
    let events = read_flat_keyed(dir, "memory.events")?;
    let counter = |map: &BTreeMap<String, u64>, key: &str| map.get(key).copied().unwrap_or(0);
    Ok(CgroupStats {
        cpu: CpuStats {
            usage_usec: counter(&cpu, "usage_usec"),
            user_usec: counter(&cpu, "user_usec"),
            system_usec: counter(&cpu, "system_usec"),
            nr_periods: counter(&cpu, "nr_periods"),
            nr_throttled: counter(&cpu, "nr_throttled"),
            throttled_usec: counter(&cpu, "throttled_usec"),
        },
        memory: MemoryStats {
            current: read_single(dir, "memory.current")?.flatten().unwrap_or(0),
            max: read_single(dir, "memory.max")?.flatten(),
            swap_current: read_single(dir, "memory.swap.current")?
                .flatten()
                .unwrap_or(0),
            stat: read_flat_keyed(dir, "memory.stat")?,
            events: MemoryEvents {
                low: counter(&events, "low"),
                high: counter(&events, "high"),
                max: counter(&events, "max"),
                oom: counter(&events, "oom"),
                oom_kill: counter(&events, "oom_kill"),
            },
        },
        pids: PidsStats {
            current: read_single(dir, "pids.current")?.flatten().unwrap_or(0),
            max: read_single(dir, "pids.max")?.flatten(),
        },
    })
}

/// The file's text, or `None` when the file does not exist (its controller is off).
fn read_optional(dir: &Path, file: &str) -> Result<Option<String>, CgroupError> {
    let path = dir.join(file);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(text)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CgroupError::Read { path, source }),
    }
}

/// A single-value file: `Some(None)` for "max", `None` when the file is absent.
fn read_single(dir: &Path, file: &str) -> Result<Option<Option<u64>>, CgroupError> {
    let Some(text) = read_optional(dir, file)? else {
        return Ok(None);
    };
    parse_single(&text)
        .map(Some)
        .ok_or_else(|| CgroupError::Parse {
            path: dir.join(file),
            detail: format!("expected a number or \"max\", found {:?}", text.trim()),
        })
}

fn parse_single(text: &str) -> Option<Option<u64>> {
    match text.trim() {
        "max" => Some(None),
        value => value.parse().ok().map(Some),
    }
}

/// A flat keyed file ("key value" lines); an absent file reads as empty.
fn read_flat_keyed(dir: &Path, file: &str) -> Result<BTreeMap<String, u64>, CgroupError> {
    Ok(read_optional(dir, file)?
        .map(|text| parse_flat_keyed(&text))
        .unwrap_or_default())
}

/// Lines that are not "key number" (none in today's kernels) are skipped rather than
/// failing every stats call on a newer kernel's additions.
fn parse_flat_keyed(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let (key, value) = line.split_once(' ')?;
            Some((key.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, file: &str, text: &str) {
        std::fs::write(dir.join(file), text).unwrap();
    }

    #[test]
    fn reads_a_cgroup_as_the_kernel_writes_it() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(d, "cpu.stat", "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 10\nnr_throttled 2\nthrottled_usec 300\n");
        write(d, "memory.current", "4096000\n");
        write(d, "memory.max", "67108864\n");
        write(
            d,
            "memory.stat",
            "anon 1000\nfile 2000\ninactive_file 500\n",
        );
        write(
            d,
            "memory.events",
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
        );
        write(d, "pids.current", "3\n");
        write(d, "pids.max", "max\n");
        let stats = read_stats(d).unwrap();
        assert_eq!(stats.cpu.usage_usec, 1500);
        assert_eq!(stats.cpu.nr_throttled, 2);
        assert_eq!(stats.memory.current, 4_096_000);
        assert_eq!(stats.memory.max, Some(67_108_864));
        assert_eq!(stats.memory.stat.get("inactive_file"), Some(&500));
        assert_eq!(stats.memory.events.oom_kill, 1);
        assert_eq!(read_oom_kills(dir.path()).expect("oom kills"), 1);
        assert_eq!(stats.pids.current, 3);
        assert_eq!(stats.pids.max, None);
    }

    #[test]
    fn disabled_controllers_read_as_zero() {
        let dir = tempfile::tempdir().unwrap();
        let stats = read_stats(dir.path()).unwrap();
        assert_eq!(stats, CgroupStats::default());
    }

    #[test]
    fn garbage_in_a_single_value_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "memory.current", "lots\n");
        let error = read_stats(dir.path()).unwrap_err().to_string();
        assert!(error.contains("memory.current"), "{error}");
    }
}
