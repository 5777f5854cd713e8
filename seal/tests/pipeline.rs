//! The parallel pipeline against the single-threaded reference path.

mod common;

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use common::{positional_keyset, pseudo_random};
use proptest::prelude::*;
use veil_seal::{
    decrypt_file_to_file, decrypt_sequential, decrypt_to_writer, encrypt, DecryptOptions,
    DecryptReport, KeyTemplate, Keyset,
};

const TEMPLATES: [KeyTemplate; 2] = [
    KeyTemplate::Aes128GcmHkdf4Kb,
    KeyTemplate::Aes256CtrHmacSha2564Kb,
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Byte-identical plaintext and identical reports for random sizes, thread counts and
    /// associated data.
    #[test]
    fn parallel_equals_sequential(
        len in prop_oneof![0usize..10_000, 10_000usize..120_000],
        threads in 1usize..=8,
        template in 0usize..2,
        aad in proptest::collection::vec(any::<u8>(), 0..20),
        seed in any::<u64>(),
    ) {
        let keyset = Keyset::generate(TEMPLATES[template]).unwrap();
        let plaintext = pseudo_random(len, seed);
        let mut ct = Vec::new();
        encrypt(&plaintext[..], &keyset, &aad, &mut ct).unwrap();

        let mut sequential = Vec::new();
        let expected = decrypt_sequential(&ct[..], &keyset, &aad, &mut sequential).unwrap();
        let mut parallel = Vec::new();
        let options = DecryptOptions { threads: NonZeroUsize::new(threads), ..DecryptOptions::default() };
        let report = decrypt_to_writer(&ct[..], &keyset, &aad, &mut parallel, &options).unwrap();
        prop_assert!(parallel == sequential);
        prop_assert!(sequential == plaintext);
        prop_assert_eq!(&report, &expected);

        let (positional, report) = file_to_file_without_digest(&ct, &keyset, &aad, threads);
        prop_assert!(positional == plaintext);
        prop_assert_eq!(report, DecryptReport { sha256: None, ..expected });
    }
}

/// Decrypts `ct` from a sealed file with [`decrypt_file_to_file`] and the digest skipped (the
/// positional path: workers read and write their own segments); returns the plaintext file.
fn file_to_file_without_digest(
    ct: &[u8],
    keyset: &Keyset,
    aad: &[u8],
    threads: usize,
) -> (Vec<u8>, DecryptReport) {
    let dir = tempfile::tempdir().unwrap();
    let sealed = dir.path().join("model.sealed");
    std::fs::write(&sealed, ct).unwrap();
    let dest = dir.path().join("model.bin");
    let options = DecryptOptions {
        threads: NonZeroUsize::new(threads),
        skip_sha256: true,
        ..DecryptOptions::default()
    };
    let source = std::fs::File::open(&sealed).unwrap();
    let report = decrypt_file_to_file(&source, keyset, aad, &dest, &options).unwrap();
    (std::fs::read(&dest).unwrap(), report)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Files written by the workers at segment offsets equal the sequential plaintext, for
    /// sizes around segment boundaries and any thread count.
    #[test]
    fn positional_file_writes_equal_sequential(
        segments in 0usize..6,
        extra in prop_oneof![Just(0usize), 1usize..100, 65_000usize..65_600],
        threads in 1usize..=8,
        gcm in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let keyset = positional_keyset(gcm);
        let plaintext = pseudo_random(segments * 65_000 + extra, seed);
        let mut ct = Vec::new();
        encrypt(&plaintext[..], &keyset, b"pos", &mut ct).unwrap();
        let mut sequential = Vec::new();
        let expected = decrypt_sequential(&ct[..], &keyset, b"pos", &mut sequential).unwrap();

        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("model.bin");
        let options = DecryptOptions { threads: NonZeroUsize::new(threads), ..DecryptOptions::default() };
        let report = veil_seal::decrypt_to_file(&ct[..], &keyset, b"pos", &dest, &options).unwrap();
        prop_assert!(std::fs::read(&dest).unwrap() == plaintext);
        prop_assert!(sequential == plaintext);
        prop_assert_eq!(&report, &expected);

        let (positional, report) = file_to_file_without_digest(&ct, &keyset, b"pos", threads);
        prop_assert!(positional == plaintext);
        prop_assert_eq!(report, DecryptReport { sha256: None, ..expected });
    }
}

#[test]
fn positional_writes_leave_no_file_when_a_middle_segment_is_modified() {
    let keyset = positional_keyset(true);
    let plaintext = pseudo_random(5 * 65_536, 11);
    let mut ct = Vec::new();
    encrypt(&plaintext[..], &keyset, b"", &mut ct).unwrap();
    // Segment 3 starts at 3 * 64 KiB (the header counts in segment 0).
    ct[3 * 65_536 + 100] ^= 1;
    let dir = tempfile::tempdir().unwrap();
    let options = DecryptOptions {
        threads: NonZeroUsize::new(3),
        ..DecryptOptions::default()
    };
    let error = veil_seal::decrypt_to_file(
        &ct[..],
        &keyset,
        b"",
        &dir.path().join("model.bin"),
        &options,
    )
    .unwrap_err();
    assert_eq!(
        error.segment_failure(),
        Some((3, veil_seal::SegmentFailure::TagMismatch)),
        "{error}"
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn progress_reports_every_byte_once_in_order() {
    let keyset = Keyset::generate(KeyTemplate::Aes128GcmHkdf4Kb).unwrap();
    let plaintext = pseudo_random(100_000, 1);
    let mut ct = Vec::new();
    encrypt(&plaintext[..], &keyset, b"", &mut ct).unwrap();
    let seen = Arc::new(AtomicU64::new(0));
    let seen_in_callback = Arc::clone(&seen);
    let options = DecryptOptions {
        threads: NonZeroUsize::new(3),
        progress: Some(Box::new(move |done| {
            let before = seen_in_callback.swap(done, Ordering::SeqCst);
            assert!(done > before || (done == 4056 && before == 0));
        })),
        ..DecryptOptions::default()
    };
    let mut out = Vec::new();
    let report = decrypt_to_writer(&ct[..], &keyset, b"", &mut out, &options).unwrap();
    assert_eq!(seen.load(Ordering::SeqCst), 100_000);
    assert_eq!(report.plaintext_bytes, 100_000);
    assert_eq!(
        report.sha256.expect("hashed by default").as_slice(),
        ring::digest::digest(&ring::digest::SHA256, &plaintext).as_ref()
    );
}

/// A source like a slow HTTP body: tiny reads, interruptions, and optionally a failure.
struct Trickle {
    data: Vec<u8>,
    at: usize,
    calls: usize,
    fail_at: Option<usize>,
}

impl std::io::Read for Trickle {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.calls += 1;
        if self.calls % 5 == 0 {
            return Err(std::io::ErrorKind::Interrupted.into());
        }
        if self.fail_at.is_some_and(|f| self.at >= f) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "peer reset",
            ));
        }
        let n = (self.calls % 7 + 1)
            .min(buf.len())
            .min(self.data.len() - self.at);
        buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[test]
fn tiny_and_interrupted_reads_decrypt_and_a_failing_source_leaves_no_file() {
    let keyset = Keyset::generate(KeyTemplate::Aes256CtrHmacSha2564Kb).unwrap();
    let plaintext = pseudo_random(30_000, 3);
    let mut ct = Vec::new();
    encrypt(&plaintext[..], &keyset, b"", &mut ct).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("model.bin");
    let options = DecryptOptions {
        threads: NonZeroUsize::new(2),
        ..DecryptOptions::default()
    };
    let source = Trickle {
        data: ct.clone(),
        at: 0,
        calls: 0,
        fail_at: None,
    };
    veil_seal::decrypt_to_file(source, &keyset, b"", &dest, &options).unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), plaintext);
    std::fs::remove_file(&dest).unwrap();

    let failing = Trickle {
        data: ct,
        at: 0,
        calls: 0,
        fail_at: Some(20_000),
    };
    let error = veil_seal::decrypt_to_file(failing, &keyset, b"", &dest, &options).unwrap_err();
    assert!(
        matches!(error, veil_seal::DecryptError::Read { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("peer reset"));
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "no output left"
    );
}
