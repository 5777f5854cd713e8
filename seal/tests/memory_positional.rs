//! Bounded memory on the positional path: a 512 MiB sealed file decrypts into a file on 8
//! workers with a small resident set (one segment buffer per worker, nothing read ahead).
//!
//! Alone in its own test binary so that the peak RSS it reads belongs to this test only.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::num::NonZeroUsize;

use veil_seal::{decrypt_file_to_file, DecryptOptions, EncryptingWriter, KeyTemplate, Keyset};

const TOTAL: u64 = 512 << 20;
const WORKERS: usize = 8;

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_sealed_file_decrypts_positionally_in_bounded_memory() {
    let keyset = Keyset::generate(KeyTemplate::Aes256GcmHkdf1Mb).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sealed = dir.path().join("model.sealed");
    {
        let file = BufWriter::new(File::create(&sealed).unwrap());
        let mut writer = EncryptingWriter::new(file, &keyset, b"big").unwrap();
        let block = vec![0xA5u8; 1 << 20];
        for _ in 0..(TOTAL >> 20) {
            writer.write_all(&block).unwrap();
        }
        writer.finish().unwrap();
    }
    let before = peak_rss_kib();
    let dest = dir.path().join("model.bin");
    let options = DecryptOptions {
        threads: NonZeroUsize::new(WORKERS),
        skip_sha256: true,
        ..DecryptOptions::default()
    };
    let source = File::open(&sealed).unwrap();
    let report = decrypt_file_to_file(&source, &keyset, b"big", &dest, &options).unwrap();
    let peak = peak_rss_kib();
    // Written to the stderr handle rather than with eprintln!, which the test harness captures,
    // so the figure shows in every test log.
    let _ = writeln!(
        io::stderr(),
        "seal memory test (positional): 512 MiB file to file, peak RSS {} MiB (before decrypting {} MiB), {} segments, {WORKERS} workers",
        peak / 1024,
        before / 1024,
        report.segments
    );
    assert_eq!(report.plaintext_bytes, TOTAL);
    assert_eq!(report.sha256, None);
    assert_eq!(std::fs::metadata(&dest).unwrap().len(), TOTAL);
    // One 1 MiB segment buffer per worker, plus a copy for the last segment's retry; the
    // plaintext lives in the page cache, not in this process.
    assert!(
        peak < 64 * 1024,
        "peak RSS {} MiB is not bounded",
        peak / 1024
    );
}
