//! Bounded memory: a 2 GiB sealed stream decrypts with a small, constant resident set.
//!
//! Alone in its own test binary so that the peak RSS it reads belongs to this test only.

use std::io::{self, Read, Write};
use std::num::NonZeroUsize;

use crossbeam_channel::{bounded, Receiver};
use veil_seal::{decrypt_to_file, DecryptOptions, EncryptingWriter, KeyTemplate, Keyset};

const TOTAL: u64 = 2 << 30;

/// Reads chunks produced by another thread, so the 2 GiB ciphertext never exists in full.
struct ChannelReader {
    chunks: Receiver<Vec<u8>>,
    current: io::Cursor<Vec<u8>>,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let n = self.current.read(buf)?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            match self.chunks.recv() {
                Ok(chunk) => self.current = io::Cursor::new(chunk),
                Err(_) => return Ok(0),
            }
        }
    }
}

struct ChannelWriter(crossbeam_channel::Sender<Vec<u8>>);

impl io::Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .send(buf.to_vec())
            .map_err(|_| io::Error::other("reader gone"))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn two_gib_stream_decrypts_in_bounded_memory() {
    let keyset = Keyset::generate(KeyTemplate::Aes256GcmHkdf1Mb).unwrap();
    let (tx, rx) = bounded::<Vec<u8>>(4);
    let producer_keyset = keyset.clone();
    let producer = std::thread::spawn(move || {
        let mut writer =
            EncryptingWriter::new(ChannelWriter(tx), &producer_keyset, b"big").unwrap();
        let block = vec![0x5Au8; 1 << 20];
        let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
        for _ in 0..(TOTAL >> 20) {
            io::Write::write_all(&mut writer, &block).unwrap();
            digest.update(&block);
        }
        writer.finish().unwrap();
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.finish().as_ref());
        out
    });
    let before = peak_rss_kib();
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("model.bin");
    let options = DecryptOptions {
        threads: NonZeroUsize::new(2),
        ..DecryptOptions::default()
    };
    let source = ChannelReader {
        chunks: rx,
        current: io::Cursor::new(Vec::new()),
    };
    let report = decrypt_to_file(source, &keyset, b"big", &dest, &options).unwrap();
    let expected = producer.join().unwrap();
    let peak = peak_rss_kib();
    // Written to the stderr handle rather than with eprintln!, which the test harness captures,
    // so the figure shows in every test log.
    let _ = writeln!(
        io::stderr(),
        "seal memory test: 2 GiB decrypt, peak RSS {} MiB (before decrypting {} MiB), {} segments, 2 workers",
        peak / 1024,
        before / 1024,
        report.segments
    );
    assert_eq!(report.plaintext_bytes, TOTAL);
    assert_eq!(report.sha256, Some(expected));
    assert_eq!(std::fs::metadata(&dest).unwrap().len(), TOTAL);
    // Pipeline: (2 workers x 3 + 1) 1 MiB buffers + reader lookahead + producer queue; the
    // plaintext file lives in the page cache, not in this process.
    assert!(
        peak < 128 * 1024,
        "peak RSS {} MiB is not bounded",
        peak / 1024
    );
}
