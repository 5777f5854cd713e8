//! The guest agent's model-delivery stage events, read from the VM's console log.
//!
//! The agent logs `delivery.fetch.opened`, `delivery.key.released`, `delivery.decrypted`
//! and `delivery.unpacked` (tar models only) with `elapsed_ms` since its delivery worker
//! started, and `delivery.ready` with `elapsed_ms` since `delivery.started` (which also
//! counts the wait for the guest network). Elapsed times are used rather than the guest's
//! timestamps because the guest clock is only set to the second at boot.

/// The store answered and the sealed model's length is known.
pub const FETCH_OPENED: &str = "delivery.fetch.opened";
/// The broker released the key after attestation.
pub const KEY_RELEASED: &str = "delivery.key.released";
/// The model was decrypted and verified into the guest tmpfs.
pub const DECRYPTED: &str = "delivery.decrypted";
/// A tar model was unpacked.
pub const UNPACKED: &str = "delivery.unpacked";
/// The volume is sealed read-only and the container may start.
pub const READY: &str = "delivery.ready";

/// A delivery's stages could not be read from the console log.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryLogError {
    /// A stage is not in the log.
    #[error(
        "{stage} is not in the VM console log: did the delivery fail (look for \
         delivery.failed) or does the agent log below info level?"
    )]
    MissingStage {
        /// The stage.
        stage: &'static str,
    },
}

/// One delivery stage event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryEvent {
    /// Stage name.
    pub stage: String,
    /// `elapsed_ms` of the event.
    pub elapsed_ms: u64,
    /// `bytes` of the event, where it has one.
    pub bytes: Option<u64>,
}

fn field<'a>(words: &[&'a str], name: &str) -> Option<&'a str> {
    words.iter().find_map(|w| w.strip_prefix(name))
}

/// The delivery stage events in a console log, in log order. Lines the kernel garbled by
/// writing into the middle of them are skipped.
pub fn delivery_events(console: &str) -> Vec<DeliveryEvent> {
    const STAGES: [&str; 5] = [FETCH_OPENED, KEY_RELEASED, DECRYPTED, UNPACKED, READY];
    console
        .lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let stage = words.iter().find(|w| STAGES.contains(w))?;
            let elapsed_ms = field(&words, "elapsed_ms=")?.parse().ok()?;
            let bytes = field(&words, "bytes=").and_then(|b| b.parse().ok());
            Some(DeliveryEvent {
                stage: stage.to_string(),
                elapsed_ms,
                bytes,
            })
        })
        .collect()
}

/// When each stage of one delivery happened, in milliseconds (see the module docs for
/// what each is measured from).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryTimes {
    /// Store answered.
    pub fetch_opened_ms: u64,
    /// Key released (attestation and broker round trip done).
    pub key_released_ms: u64,
    /// Decrypted and verified into the guest tmpfs.
    pub decrypted_ms: u64,
    /// Unpacked (tar models only).
    pub unpacked_ms: Option<u64>,
    /// Ready, since `delivery.started`.
    pub ready_ms: u64,
    /// Plaintext bytes written.
    pub plaintext_bytes: u64,
}

impl DeliveryTimes {
    /// The first delivery in `console`.
    pub fn from_console(console: &str) -> Result<DeliveryTimes, DeliveryLogError> {
        let events = delivery_events(console);
        let find = |stage: &'static str| {
            events
                .iter()
                .find(|e| e.stage == stage)
                .ok_or(DeliveryLogError::MissingStage { stage })
        };
        // Looked up in the order they happen, so the error names the first one missing.
        let fetch_opened_ms = find(FETCH_OPENED)?.elapsed_ms;
        let key_released_ms = find(KEY_RELEASED)?.elapsed_ms;
        let decrypted = find(DECRYPTED)?;
        Ok(DeliveryTimes {
            fetch_opened_ms,
            key_released_ms,
            decrypted_ms: decrypted.elapsed_ms,
            unpacked_ms: find(UNPACKED).ok().map(|e| e.elapsed_ms),
            ready_ms: find(READY)?.elapsed_ms,
            plaintext_bytes: decrypted.bytes.unwrap_or(0),
        })
    }

    /// Milliseconds spent fetching, decrypting, verifying and writing to the tmpfs (the
    /// fetch streams through the decryption, so they cannot be told apart).
    pub fn decrypt_ms(&self) -> u64 {
        self.decrypted_ms.saturating_sub(self.key_released_ms)
    }

    /// Plaintext MB/s (10^6 bytes) of fetch + decrypt + verify + write; None when the
    /// step took under a millisecond.
    pub fn decrypt_mb_per_s(&self) -> Option<f64> {
        let ms = self.decrypt_ms();
        (ms > 0).then(|| self.plaintext_bytes as f64 / 1e6 / (ms as f64 / 1e3))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONSOLE: &str = "\
[    1.234567] random: crng init done
2026-11-22T15:40:01.000000Z  INFO delivery.started volume=model source=http://10.0.2.2:1/m kbs=http://10.0.2.2:2
2026-11-22T15:40:01.000000Z  INFO delivery.fetch.opened length=Some(1036) elapsed_ms=121
2026-11-22T15:40:01.000000Z  INFO delivery.key.released elapsed_ms=480
2026-11-22T15:40:02.000000Z  INFO delivery.decrypted bytes=2000000 elapsed_ms=1480
2026-11-22T15:40:02.000000Z  INFO delivery.ready volume=/run/veil/volumes/model bytes=2000000 sha256=ab elapsed_ms=1502
";

    #[test]
    fn reads_every_stage_and_the_throughput() {
        let times = DeliveryTimes::from_console(CONSOLE).expect("times");
        assert_eq!(
            (
                times.fetch_opened_ms,
                times.key_released_ms,
                times.decrypted_ms,
                times.ready_ms
            ),
            (121, 480, 1480, 1502)
        );
        assert_eq!(times.unpacked_ms, None);
        assert_eq!(times.plaintext_bytes, 2_000_000);
        assert_eq!(times.decrypt_ms(), 1000);
        assert_eq!(times.decrypt_mb_per_s(), Some(2.0));
    }

    #[test]
    fn a_failed_delivery_names_the_missing_stage() {
        let console =
            "2026-11-22T15:40:01.000000Z  INFO delivery.fetch.opened length=None elapsed_ms=3\n\
                       2026-11-22T15:40:01.000000Z ERROR delivery.failed error=refused\n";
        let error = DeliveryTimes::from_console(console).expect_err("no key");
        assert!(error.to_string().contains(KEY_RELEASED), "{error}");
    }
}
