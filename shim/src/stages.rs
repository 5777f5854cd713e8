//! The cold-start stages the shim logs, one tracing event each, so that every second of
//! a start can be seen in the log and measured (`veil stages`, the benchmarks).

/// containerd's Create reached the shim.
pub const CREATE_RECEIVED: &str = "create.received";
/// QEMU was spawned.
pub const VM_SPAWNED: &str = "vm.spawned";
/// The guest agent answered its first ping.
pub const AGENT_CONNECTED: &str = "agent.connected";
/// The container's init exists in the guest.
pub const CONTAINER_CREATED: &str = "container.created";
/// The process exec'd.
pub const PROCESS_STARTED: &str = "process.started";
/// Its first output reached the shim.
pub const OUTPUT_FIRST: &str = "output.first";
/// It exited.
pub const PROCESS_EXITED: &str = "process.exited";

/// The stages of one container's cold start, in the order they happen.
pub const COLD_START: &[&str] = &[
    CREATE_RECEIVED,
    VM_SPAWNED,
    AGENT_CONNECTED,
    CONTAINER_CREATED,
    PROCESS_STARTED,
    OUTPUT_FIRST,
    PROCESS_EXITED,
];

/// One logged stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageEvent {
    /// Stage name (one of [`COLD_START`]).
    pub stage: String,
    /// RFC 3339 UTC timestamp with microseconds, as the shim's log writes it.
    pub timestamp: String,
}

/// The stage events of `container` (and of the sandbox it started) in a shim log — or a
/// containerd log, which carries the shim's lines — in log order.
pub fn events_in_log(log: &str, container: &str) -> Vec<StageEvent> {
    let container_field = format!("container={container}");
    let sandbox_field = format!("sandbox={container}");
    log.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let timestamp = words.next()?;
            let _level = words.next()?;
            let stage = words.next()?;
            let ours = words.any(|w| w == container_field || w == sandbox_field);
            (COLD_START.contains(&stage) && ours).then(|| StageEvent {
                stage: stage.to_string(),
                timestamp: timestamp.to_string(),
            })
        })
        .collect()
}

/// Seconds since midnight of an RFC 3339 timestamp (`...THH:MM:SS.ffffffZ`).
fn seconds_of_day(timestamp: &str) -> Option<f64> {
    let time = timestamp.split('T').nth(1)?.trim_end_matches('Z');
    let mut parts = time.split(':');
    let hours: f64 = parts.next()?.parse().ok()?;
    let minutes: f64 = parts.next()?.parse().ok()?;
    let seconds: f64 = parts.next()?.parse().ok()?;
    Some(hours * 3600.0 + minutes * 60.0 + seconds)
}

/// A table of the stages with the time since the first and since the previous stage.
pub fn report(events: &[StageEvent]) -> String {
    let mut out = format!("{:<18} {:>10} {:>10}\n", "stage", "at (s)", "step (s)");
    let first = events.first().and_then(|e| seconds_of_day(&e.timestamp));
    let mut previous = first;
    for event in events {
        let at = seconds_of_day(&event.timestamp);
        let since = |from: Option<f64>| match (at, from) {
            (Some(at), Some(from)) => format!("{:.3}", at - from),
            _ => "?".to_string(),
        };
        out.push_str(&format!(
            "{:<18} {:>10} {:>10}\n",
            event.stage,
            since(first),
            since(previous)
        ));
        previous = at;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "\
2026-11-22T13:28:06.957535Z  INFO create.received container=tt3
2026-11-22T13:28:06.962749Z  INFO vm.spawned sandbox=tt3 pid=17425 accel=\"tcg\"
2026-11-22T13:28:06.970000Z  INFO vm.spawned sandbox=other pid=1
2026-11-22T13:28:09.933486Z  INFO agent.connected sandbox=tt3 vm=QEMU
2026-11-22T13:28:10.186996Z  INFO container.created container=tt3 pid=83
time=\"2026-11-22T13:28:10Z\" level=info msg=\"unrelated containerd line\"
2026-11-22T13:28:10.210755Z  INFO process.started container=tt3 exec= pid=83
2026-11-22T13:28:10.253136Z  INFO output.first container=tt3 exec= stderr=false
2026-11-22T13:28:10.281488Z  INFO process.exited container=tt3 exec= status=0
";

    #[test]
    fn finds_one_containers_stages_in_order() {
        let events = events_in_log(LOG, "tt3");
        let names: Vec<&str> = events.iter().map(|e| e.stage.as_str()).collect();
        assert_eq!(names, COLD_START);
        assert!(events_in_log(LOG, "nope").is_empty());
    }

    #[test]
    fn report_shows_offsets_and_steps() {
        let table = report(&events_in_log(LOG, "tt3"));
        assert!(table.contains("agent.connected"), "{table}");
        assert!(
            table.contains("2.971"),
            "agent.connected is 2.971 s after create: {table}"
        );
        assert!(
            table.contains("3.324"),
            "process.exited at 3.324 s: {table}"
        );
    }
}
