//! One cold start as a timeline: the shim's stage events (from containerd's log) plus the
//! two instants only the host sees (`ctr` started, first output read by `ctr`'s caller),
//! turned into per-stage durations that add up to the total by construction.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use veil_shim::stages;

/// The host-side instant `ctr run` was started (not a shim event).
pub const CTR_STARTED: &str = "ctr.started";
/// The host-side instant the first output line was read from `ctr` (not a shim event).
pub const OUTPUT_READ: &str = "output.read";

/// The instants of one veil cold start, in order; each step of the report is the time from
/// one to the next, named after the instant it ends at.
pub const COLD_START_INSTANTS: &[&str] = &[
    CTR_STARTED,
    stages::CREATE_RECEIVED,
    stages::VM_SPAWNED,
    stages::AGENT_CONNECTED,
    stages::CONTAINER_CREATED,
    stages::PROCESS_STARTED,
    stages::OUTPUT_FIRST,
    OUTPUT_READ,
];

/// A timeline could not be built from the log.
#[derive(Debug, thiserror::Error)]
pub enum TimelineError {
    /// A stage the shim should have logged is not in the log.
    #[error(
        "stage {stage} of container {container} is not in containerd's log: check that the \
         shim logs at info level and that the container id is right"
    )]
    MissingStage {
        /// The stage.
        stage: String,
        /// The container.
        container: String,
    },
    /// A stage's timestamp is not RFC 3339.
    #[error("stage {stage} has timestamp {timestamp:?}, not RFC 3339 as the shim writes it")]
    BadTimestamp {
        /// The stage.
        stage: String,
        /// What the log held.
        timestamp: String,
    },
}

/// Seconds since the Unix epoch of a host instant (the clock the shim's log uses too).
pub fn unix_seconds(at: SystemTime) -> f64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Seconds since the Unix epoch of an RFC 3339 timestamp.
pub fn parse_timestamp(timestamp: &str) -> Option<f64> {
    let at = OffsetDateTime::parse(timestamp, &Rfc3339).ok()?;
    Some(at.unix_timestamp_nanos() as f64 / 1e9)
}

/// The instant (Unix seconds) each of `container`'s shim stages was first logged at.
pub fn stage_instants(log: &str, container: &str) -> Result<BTreeMap<String, f64>, TimelineError> {
    let mut instants = BTreeMap::new();
    for event in stages::events_in_log(log, container) {
        if instants.contains_key(&event.stage) {
            continue;
        }
        let at = parse_timestamp(&event.timestamp).ok_or_else(|| TimelineError::BadTimestamp {
            stage: event.stage.clone(),
            timestamp: event.timestamp.clone(),
        })?;
        instants.insert(event.stage, at);
    }
    Ok(instants)
}

/// Per-stage durations of one run and the total they add up to.
#[derive(Debug, Clone, PartialEq)]
pub struct Timeline {
    /// (instant the step ends at, seconds since the previous instant), in order.
    pub steps: Vec<(String, f64)>,
    /// Seconds from the first instant to the last.
    pub total: f64,
}

impl Timeline {
    /// The steps between consecutive `order` instants; every instant must be present.
    pub fn from_instants(
        instants: &BTreeMap<String, f64>,
        order: &[&str],
        container: &str,
    ) -> Result<Timeline, TimelineError> {
        let at = |stage: &str| {
            instants
                .get(stage)
                .copied()
                .ok_or_else(|| TimelineError::MissingStage {
                    stage: stage.to_string(),
                    container: container.to_string(),
                })
        };
        let mut steps = Vec::with_capacity(order.len().saturating_sub(1));
        for pair in order.windows(2) {
            steps.push((pair[1].to_string(), at(pair[1])? - at(pair[0])?));
        }
        let total = match (order.first(), order.last()) {
            (Some(first), Some(last)) => at(last)? - at(first)?,
            _ => 0.0,
        };
        Ok(Timeline { steps, total })
    }

    /// Seconds of the step ending at `stage`.
    pub fn step(&self, stage: &str) -> Option<f64> {
        self.steps
            .iter()
            .find(|(name, _)| name == stage)
            .map(|(_, seconds)| *seconds)
    }
}

/// The cold-start timeline of `container` from containerd's `log` and the host instants
/// `ctr` was started and its first output line read.
pub fn cold_start_timeline(
    log: &str,
    container: &str,
    ctr_started: SystemTime,
    output_read: SystemTime,
) -> Result<Timeline, TimelineError> {
    let mut instants = stage_instants(log, container)?;
    instants.insert(CTR_STARTED.to_string(), unix_seconds(ctr_started));
    instants.insert(OUTPUT_READ.to_string(), unix_seconds(output_read));
    Timeline::from_instants(&instants, COLD_START_INSTANTS, container)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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

    fn at(timestamp: &str) -> SystemTime {
        let seconds = parse_timestamp(timestamp).expect("timestamp");
        UNIX_EPOCH + Duration::from_secs_f64(seconds)
    }

    #[test]
    fn every_stage_is_reported_and_the_stages_add_up_to_the_total() {
        let started = at("2026-11-22T13:28:06.900000Z");
        let read = at("2026-11-22T13:28:10.260000Z");
        let timeline = cold_start_timeline(LOG, "tt3", started, read).expect("timeline");
        let names: Vec<&str> = timeline.steps.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, &COLD_START_INSTANTS[1..]);
        let sum: f64 = timeline.steps.iter().map(|(_, s)| s).sum();
        assert!((sum - timeline.total).abs() < 1e-6, "{sum} vs {timeline:?}");
        let expected_total = unix_seconds(read) - unix_seconds(started);
        assert!((timeline.total - expected_total).abs() < 1e-6);
        let boot = timeline.step(stages::AGENT_CONNECTED).expect("boot step");
        assert!((boot - 2.970737).abs() < 1e-5, "{boot}");
    }

    #[test]
    fn a_missing_stage_is_named() {
        let log: String = LOG
            .lines()
            .filter(|l| !l.contains("agent.connected"))
            .map(|l| format!("{l}\n"))
            .collect();
        let error = cold_start_timeline(&log, "tt3", SystemTime::now(), SystemTime::now())
            .expect_err("agent.connected is missing");
        assert!(error.to_string().contains("agent.connected"), "{error}");
    }

    #[test]
    fn timestamps_across_midnight_keep_their_order() {
        let before = parse_timestamp("2026-11-22T23:59:59.900000Z").expect("before");
        let after = parse_timestamp("2026-11-23T00:00:00.100000Z").expect("after");
        assert!((after - before - 0.2).abs() < 1e-6);
        assert!(parse_timestamp("not a time").is_none());
    }
}
