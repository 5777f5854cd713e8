//! `linux.resources` of an OCI spec as cgroup v2 interface-file writes, as runc and crun
//! translate them. Pure: [`plan_resources`] decides, [`super::Cgroup::apply`] writes.

use oci_spec::runtime::{LinuxCpu, LinuxMemory, LinuxResources};

/// The default CFS period (µs) the kernel and runc use when only a quota is given.
const DEFAULT_CPU_PERIOD_USEC: u64 = 100_000;

/// What to write for a `linux.resources`, and what veil does not apply.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ResourcePlan {
    /// (interface file, value) in write order, e.g. `("memory.max", "67108864")`.
    pub writes: Vec<(String, String)>,
    /// Fields accepted but not applied (logged at debug level by the caller).
    pub ignored: Vec<&'static str>,
}

impl ResourcePlan {
    fn write(&mut self, file: &str, value: impl Into<String>) {
        self.writes.push((file.to_string(), value.into()));
    }
}

/// Maps `resources` onto cgroup v2 files: memory.limit -> memory.max, memory.reservation
/// -> memory.low, cpu.quota/period -> cpu.max, cpu.shares -> cpu.weight, pids.limit ->
/// pids.max, and `unified` entries as given (devices are a program, not a file:
/// [`super::DeviceRules`]). memory.swap, cpu.cpus/mems (host numbering), block I/O, hugepages, network and RDMA are listed in `ignored`.
pub fn plan_resources(resources: &LinuxResources) -> ResourcePlan {
    let mut plan = ResourcePlan::default();
    if let Some(memory) = resources.memory() {
        plan_memory(memory, &mut plan);
    }
    if let Some(cpu) = resources.cpu() {
        plan_cpu(cpu, &mut plan);
    }
    if let Some(pids) = resources.pids() {
        plan.write("pids.max", limit_value(pids.limit()));
    }
    plan_unified(resources, &mut plan);
    let unsupported = [
        ("linux.resources.blockIO", resources.block_io().is_some()),
        (
            "linux.resources.hugepageLimits",
            resources.hugepage_limits().is_some(),
        ),
        ("linux.resources.network", resources.network().is_some()),
        ("linux.resources.rdma", resources.rdma().is_some()),
    ];
    plan.ignored.extend(
        unsupported
            .into_iter()
            .filter(|(_, present)| *present)
            .map(|(name, _)| name),
    );
    plan
}

fn plan_memory(memory: &LinuxMemory, plan: &mut ResourcePlan) {
    if let Some(limit) = memory.limit() {
        plan.write("memory.max", limit_value(limit));
    }
    if let Some(reservation) = memory.reservation() {
        plan.write("memory.low", limit_value(reservation));
    }
    // The guest has no swap; a swap limit would only fail or mislead.
    let ignored = [
        ("linux.resources.memory.swap", memory.swap().is_some()),
        ("linux.resources.memory.kernel", memory.kernel().is_some()),
        (
            "linux.resources.memory.kernelTCP",
            memory.kernel_tcp().is_some(),
        ),
        (
            "linux.resources.memory.swappiness",
            memory.swappiness().is_some(),
        ),
        (
            "linux.resources.memory.disableOOMKiller",
            memory.disable_oom_killer() == Some(true),
        ),
    ];
    plan.ignored.extend(
        ignored
            .into_iter()
            .filter(|(_, present)| *present)
            .map(|(name, _)| name),
    );
}

fn plan_cpu(cpu: &LinuxCpu, plan: &mut ResourcePlan) {
    if let Some(weight) = cpu.shares().and_then(shares_to_weight) {
        plan.write("cpu.weight", weight.to_string());
    }
    if let Some(max) = cpu_max(cpu.quota(), cpu.period()) {
        plan.write("cpu.max", max);
    }
    // The host's CPU and NUMA numbers (kubelet's CPU manager) name nothing in a VM with
    // its own few vCPUs: writing them would fail the container, so they are left out.
    if cpu.cpus().as_deref().is_some_and(|c| !c.is_empty()) {
        plan.ignored
            .push("linux.resources.cpu.cpus (host CPU numbers)");
    }
    if cpu.mems().as_deref().is_some_and(|m| !m.is_empty()) {
        plan.ignored
            .push("linux.resources.cpu.mems (host NUMA nodes)");
    }
    if cpu.realtime_runtime().is_some() || cpu.realtime_period().is_some() {
        plan.ignored.push("linux.resources.cpu.realtime");
    }
    if cpu.burst().is_some() {
        plan.ignored.push("linux.resources.cpu.burst");
    }
    if cpu.idle().is_some() {
        plan.ignored.push("linux.resources.cpu.idle");
    }
}

/// `unified` is cgroup v2 already; only plain file names are accepted so that a spec can
/// never write outside the container's cgroup or into its membership files.
fn plan_unified(resources: &LinuxResources, plan: &mut ResourcePlan) {
    let Some(unified) = resources.unified() else {
        return;
    };
    let mut entries: Vec<_> = unified.iter().collect();
    entries.sort();
    for (file, value) in entries {
        if is_writable_interface_file(file) {
            plan.write(file, value.as_str());
        } else {
            plan.ignored
                .push("linux.resources.unified (a key that is not a controller file)");
        }
    }
}

fn is_writable_interface_file(name: &str) -> bool {
    let controller_file = name
        .split_once('.')
        .is_some_and(|(controller, rest)| !controller.is_empty() && !rest.is_empty());
    controller_file
        && !name.starts_with("cgroup.")
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_')
}

/// A limit as cgroup v2 writes it: a positive value, or "max" for none (OCI uses -1).
fn limit_value(limit: i64) -> String {
    if limit > 0 {
        limit.to_string()
    } else {
        "max".to_string()
    }
}

/// runc's conversion of cgroup v1 shares [2, 262144] onto cgroup v2 weight [1, 10000]
/// (`1 + (shares - 2) * 9999 / 262142`); 0 means "not set".
pub fn shares_to_weight(shares: u64) -> Option<u64> {
    if shares == 0 {
        return None;
    }
    let shares = shares.clamp(2, 262_144);
    Some(1 + (shares - 2) * 9999 / 262_142)
}

/// cpu.max from a CFS quota and period, as runc writes it: "max <period>" without a
/// positive quota, "<quota> <period>" otherwise; nothing when neither is set.
pub fn cpu_max(quota: Option<i64>, period: Option<u64>) -> Option<String> {
    let quota = quota.unwrap_or(0);
    let period = period.unwrap_or(0);
    if quota == 0 && period == 0 {
        return None;
    }
    let period = if period == 0 {
        DEFAULT_CPU_PERIOD_USEC
    } else {
        period
    };
    Some(if quota > 0 {
        format!("{quota} {period}")
    } else {
        format!("max {period}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{
        LinuxCpuBuilder, LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResourcesBuilder,
    };

    fn writes(plan: &ResourcePlan) -> Vec<(&str, &str)> {
        plan.writes
            .iter()
            .map(|(f, v)| (f.as_str(), v.as_str()))
            .collect()
    }

    #[test]
    fn kubernetes_limits_become_cgroup_v2_files() {
        let resources = LinuxResourcesBuilder::default()
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(64 * 1024 * 1024)
                    .swap(64 * 1024 * 1024)
                    .build()
                    .unwrap(),
            )
            .cpu(
                LinuxCpuBuilder::default()
                    .shares(512u64)
                    .quota(50_000i64)
                    .period(100_000u64)
                    .build()
                    .unwrap(),
            )
            .pids(LinuxPidsBuilder::default().limit(100).build().unwrap())
            .build()
            .unwrap();
        let plan = plan_resources(&resources);
        assert_eq!(
            writes(&plan),
            vec![
                ("memory.max", "67108864"),
                ("cpu.weight", "20"),
                ("cpu.max", "50000 100000"),
                ("pids.max", "100"),
            ]
        );
        assert_eq!(plan.ignored, vec!["linux.resources.memory.swap"]);
    }

    #[test]
    fn no_limit_is_max() {
        assert_eq!(limit_value(-1), "max");
        assert_eq!(limit_value(0), "max");
        assert_eq!(
            cpu_max(Some(-1), Some(100_000)).as_deref(),
            Some("max 100000")
        );
        assert_eq!(cpu_max(Some(20_000), None).as_deref(), Some("20000 100000"));
        assert_eq!(cpu_max(None, None), None);
    }

    #[test]
    fn shares_convert_as_runc_does() {
        assert_eq!(shares_to_weight(0), None);
        assert_eq!(shares_to_weight(2), Some(1));
        assert_eq!(shares_to_weight(1024), Some(39));
        assert_eq!(shares_to_weight(262_144), Some(10_000));
        // Out-of-range shares clamp instead of overflowing the weight range.
        assert_eq!(shares_to_weight(1), Some(1));
        assert_eq!(shares_to_weight(u64::MAX), Some(10_000));
    }

    #[test]
    fn unified_keys_cannot_escape_the_cgroup() {
        let unified: std::collections::HashMap<String, String> = [
            ("memory.high", "1000000"),
            ("../../cgroup.procs", "1"),
            ("cgroup.procs", "1"),
            ("noextension", "1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let resources = LinuxResourcesBuilder::default()
            .unified(unified)
            .build()
            .unwrap();
        let plan = plan_resources(&resources);
        assert_eq!(writes(&plan), vec![("memory.high", "1000000")]);
        assert_eq!(plan.ignored.len(), 3);
    }

    #[test]
    fn host_cpu_sets_are_not_written_into_the_guest() {
        let resources = LinuxResourcesBuilder::default()
            .cpu(
                LinuxCpuBuilder::default()
                    .cpus("4-7")
                    .mems("1")
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let plan = plan_resources(&resources);
        assert!(plan.writes.is_empty(), "{plan:?}");
        assert_eq!(plan.ignored.len(), 2);
    }

    #[test]
    fn unsupported_fields_are_listed_not_refused() {
        let resources: LinuxResources =
            serde_json::from_str(r#"{"devices":[],"hugepageLimits":[]}"#).unwrap();
        let plan = plan_resources(&resources);
        assert!(plan.writes.is_empty());
        assert_eq!(plan.ignored, vec!["linux.resources.hugepageLimits"]);
    }
}
