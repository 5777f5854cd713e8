//! A container's cgroup statistics as the agent API carries them.

use veil_container::cgroups::CgroupStats;
use veil_protocol as api;

/// How the API writes "no limit" ("max"): 2^64-1, as containerd's cgroups v2 metrics do.
const UNLIMITED: u64 = u64::MAX;

/// Converts what the cgroup files said into the API's response.
pub(super) fn stats_response(stats: CgroupStats) -> api::StatsContainerResponse {
    let CgroupStats { cpu, memory, pids } = stats;
    api::StatsContainerResponse {
        cpu: protobuf_some(api::CpuStats {
            usage_usec: cpu.usage_usec,
            user_usec: cpu.user_usec,
            system_usec: cpu.system_usec,
            nr_periods: cpu.nr_periods,
            nr_throttled: cpu.nr_throttled,
            throttled_usec: cpu.throttled_usec,
            ..Default::default()
        }),
        memory: protobuf_some(api::MemoryStats {
            current: memory.current,
            max: memory.max.unwrap_or(UNLIMITED),
            swap_current: memory.swap_current,
            stat: memory.stat.into_iter().collect(),
            events: protobuf_some(api::MemoryEvents {
                low: memory.events.low,
                high: memory.events.high,
                max: memory.events.max,
                oom: memory.events.oom,
                oom_kill: memory.events.oom_kill,
                ..Default::default()
            }),
            ..Default::default()
        }),
        pids: protobuf_some(api::PidsStats {
            current: pids.current,
            max: pids.max.unwrap_or(UNLIMITED),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn protobuf_some<T>(value: T) -> api::protobuf::MessageField<T> {
    api::protobuf::MessageField::some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_maxima_become_all_ones_and_figures_pass_through() {
        let mut stats = CgroupStats::default();
        stats.cpu.usage_usec = 1500;
        stats.memory.current = 4096;
        stats.memory.stat.insert("anon".into(), 1024);
        stats.memory.events.oom_kill = 1;
        stats.pids.current = 2;
        stats.pids.max = Some(100);
        let response = stats_response(stats);
        assert_eq!(response.cpu.usage_usec, 1500);
        assert_eq!(response.memory.current, 4096);
        assert_eq!(response.memory.max, u64::MAX);
        assert_eq!(response.memory.stat.get("anon"), Some(&1024));
        assert_eq!(response.memory.events.oom_kill, 1);
        assert_eq!(response.pids.max, 100);
    }
}
