//! Decrypting a sealed regular file into a file with positional reads and writes.
//!
//! When the ciphertext is a regular file, its length tells where every segment lies: segment
//! `i >= 1` starts at `i * segment_size` (the header counts in segment 0) and the last segment
//! ends at the end of the file. The workers then need neither a reader thread nor an in-order
//! writer: each claims the next run of segments from an atomic counter, reads it with one
//! positional read, verifies and decrypts it, and writes the plaintext at its own offset. The
//! copies out of and into the page cache, which bound the streaming pipeline once the digest is
//! skipped (`benches/seal/analysis.md`), then run on every worker instead of on one thread.
//! Only the writes themselves take turns: the kernel serializes buffered writes into one file,
//! so into tmpfs the speed stops growing at about 2 workers, where writing takes half the time
//! (`benches/results/seal-throughput-xeon16.md`).
//!
//! The plaintext SHA-256 needs every byte in order on one thread, so when it is computed the
//! streaming pipeline runs instead, reading the file from its start.
//!
//! Errors are the streaming pipeline's: every segment is opened with the same position flags
//! (final, just before the final), so each truncation, extension or modification gives the same
//! [`DecryptError::Segment`]; when several segments fail, the lowest index is reported, whatever
//! the workers' timing.

use std::fs::File;
use std::io::{self, ErrorKind, Read};
use std::ops::RangeInclusive;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError};

use crate::cipher::SegmentCipher;
use crate::decrypt::{open_segment_in, open_stream, DecryptReport, SegmentPosition};
use crate::error::DecryptError;
use crate::keyset::Keyset;
use crate::params::StreamingParams;
use crate::pipeline::{
    decrypt_into_file, decrypt_to_file, presize, report_progress, write_all_or_nothing,
    DecryptOptions,
};

/// Ciphertext bytes a worker claims at once, rounded down to whole segments (at least one).
/// Small (4 KiB) segments are read and written in runs, because a system call per segment
/// would cost more than decrypting it; 1 MiB segments are claimed one by one.
const CLAIM_BYTES: usize = 64 << 10;

/// How often the calling thread reports progress while the workers run.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(200);

/// Decrypts the sealed file `source` into a new file at `dest`, all or nothing, like
/// [`decrypt_to_file`].
///
/// When `source` is a regular file and the plaintext SHA-256 is not computed
/// ([`DecryptOptions::skip_sha256`] without an expected digest), every worker reads its own
/// segments at their offsets and writes their plaintext at its own, so the copies in and out
/// scale with the workers. Otherwise this is [`decrypt_to_file`]: a regular file is then read
/// from its start, anything else (a pipe, a device) from where it stands. A regular file's
/// cursor is neither used nor moved. Memory: one run of segments (about one segment, at least
/// 64 KiB) per worker.
///
/// The file must not change while it is decrypted: a size change is reported as
/// [`DecryptError::Read`].
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let keyset = veil_seal::Keyset::from_json(&std::fs::read("keyset.json")?)?;
/// let source = std::fs::File::open("model.sealed")?;
/// let options = veil_seal::DecryptOptions {
///     skip_sha256: true,
///     ..veil_seal::DecryptOptions::default()
/// };
/// let report = veil_seal::decrypt_file_to_file(
///     &source,
///     &keyset,
///     b"model-v1",
///     std::path::Path::new("/run/model/model.bin"),
///     &options,
/// )?;
/// println!("{} bytes in {} segments", report.plaintext_bytes, report.segments);
/// # Ok(()) }
/// ```
pub fn decrypt_file_to_file(
    source: &File,
    keyset: &Keyset,
    associated_data: &[u8],
    dest: &Path,
    options: &DecryptOptions,
) -> Result<DecryptReport, DecryptError> {
    let metadata = source
        .metadata()
        .map_err(|source| DecryptError::Read { offset: 0, source })?;
    if !metadata.is_file() {
        return decrypt_to_file(source, keyset, associated_data, dest, options);
    }
    if options.computes_sha256() {
        let from_start = FileReader::new(source, u64::MAX);
        return write_all_or_nothing(dest, |out| {
            decrypt_into_file(
                from_start,
                keyset,
                associated_data,
                out,
                options,
                Some(metadata.len()),
            )
        });
    }
    let stream = Ciphertext {
        file: source,
        len: metadata.len(),
    };
    write_all_or_nothing(dest, |out| {
        decrypt_positionally(stream, keyset, associated_data, &out, options, CLAIM_BYTES)
    })
}

/// The ciphertext file and its length when decryption started.
#[derive(Clone, Copy)]
struct Ciphertext<'f> {
    file: &'f File,
    len: u64,
}

impl Ciphertext<'_> {
    /// Fails when the file's size differs from the one the segment layout was computed from.
    fn check_unchanged(&self) -> Result<(), DecryptError> {
        let now = self
            .file
            .metadata()
            .map_err(|source| DecryptError::Read {
                offset: self.len,
                source,
            })?
            .len();
        if now == self.len {
            return Ok(());
        }
        Err(DecryptError::Read {
            offset: self.len.min(now),
            source: io::Error::other(format!(
                "the sealed file changed size from {} to {now} bytes while it was decrypted; \
                 decrypt it again once nothing writes to it",
                self.len
            )),
        })
    }
}

/// Reads a file from offset 0 up to `end` with positional reads, leaving its cursor alone.
struct FileReader<'f> {
    file: &'f File,
    offset: u64,
    end: u64,
}

impl<'f> FileReader<'f> {
    fn new(file: &'f File, end: u64) -> Self {
        FileReader {
            file,
            offset: 0,
            end,
        }
    }
}

impl Read for FileReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = usize::try_from(self.end.saturating_sub(self.offset)).unwrap_or(usize::MAX);
        let want = buf.len().min(left);
        let n = self.file.read_at(&mut buf[..want], self.offset)?;
        self.offset += n as u64;
        Ok(n)
    }
}

/// Opens the stream (header and segment 0 on the calling thread), then lets the workers do
/// the rest. `claim_bytes` is [`CLAIM_BYTES`] outside tests.
fn decrypt_positionally(
    source: Ciphertext<'_>,
    keyset: &Keyset,
    associated_data: &[u8],
    out: &File,
    options: &DecryptOptions,
    claim_bytes: usize,
) -> Result<DecryptReport, DecryptError> {
    let stream = open_stream(
        FileReader::new(source.file, source.len),
        keyset,
        associated_data,
    )?;
    // The length is the file's own, so the plaintext fills the presized file exactly.
    presize(out, &stream.params, Some(source.len));
    out.write_all_at(&stream.first_plaintext, 0)
        .map_err(|source| DecryptError::Write { path: None, source })?;
    let mut report = DecryptReport {
        plaintext_bytes: stream.first_plaintext.len() as u64,
        sha256: None,
        segments: 1,
        key_id: stream.key_id,
    };
    report_progress(options, report.plaintext_bytes);
    // `rest` is there exactly when the file holds more than segment 0.
    if stream.rest.is_some() {
        let layout = FileLayout::new(&stream.params, source.len)?;
        let work = Work::new(source.file, out, &stream.cipher, layout, claim_bytes);
        let written = work.run(options, report.plaintext_bytes)?;
        report.plaintext_bytes += written;
        report.segments += u64::from(layout.last_index);
        report_progress(options, report.plaintext_bytes);
    }
    source.check_unchanged()?;
    tracing::debug!(
        plaintext_bytes = report.plaintext_bytes,
        segments = report.segments,
        key_id = report.key_id,
        "sealed file decrypted with positional reads and writes"
    );
    Ok(report)
}

/// Where segments 1..=`last_index` lie in a ciphertext file of `len` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileLayout {
    segment_size: u64,
    /// Plaintext bytes of segment 0.
    first_plaintext: u64,
    /// Plaintext bytes of every later segment but the last.
    plaintext_len: u64,
    last_index: u32,
    len: u64,
}

impl FileLayout {
    /// The layout of a file longer than segment 0 (`len > segment_size`).
    fn new(params: &StreamingParams, len: u64) -> Result<Self, DecryptError> {
        let segment_size = params.segment_size() as u64;
        // Segment i >= 1 starts at i * segment_size; the last one holds the file's last byte.
        let last_index = len.saturating_sub(1) / segment_size.max(1);
        // The streaming reader refuses index u32::MAX, since no index would follow it.
        let last_index = u32::try_from(last_index)
            .ok()
            .filter(|&index| index < u32::MAX)
            .ok_or(DecryptError::TooManySegments)?;
        Ok(FileLayout {
            segment_size,
            first_plaintext: params.first_plaintext_len() as u64,
            plaintext_len: params.plaintext_len() as u64,
            last_index: last_index.max(1),
            len,
        })
    }

    fn ciphertext_start(&self, index: u32) -> u64 {
        u64::from(index) * self.segment_size
    }

    fn ciphertext_end(&self, index: u32) -> u64 {
        (self.ciphertext_start(index) + self.segment_size).min(self.len)
    }

    /// Plaintext offset of segment `index >= 1`: every segment before the last is full.
    fn plaintext_start(&self, index: u32) -> u64 {
        self.first_plaintext + u64::from(index.saturating_sub(1)) * self.plaintext_len
    }

    fn position(&self, index: u32) -> SegmentPosition {
        SegmentPosition {
            index,
            is_final: index == self.last_index,
            is_penultimate: index.checked_add(1) == Some(self.last_index),
        }
    }

    /// Segments per claim for runs of about `claim_bytes`.
    fn segments_per_claim(&self, claim_bytes: usize) -> u32 {
        let segments = claim_bytes as u64 / self.segment_size;
        u32::try_from(segments).unwrap_or(u32::MAX).max(1)
    }
}

/// The failure of the lowest segment index seen so far.
struct FirstFailure {
    /// Its index, or `u64::MAX` while nothing failed; read without the lock by the workers.
    lowest: AtomicU64,
    error: Mutex<Option<DecryptError>>,
}

impl FirstFailure {
    fn new() -> Self {
        FirstFailure {
            lowest: AtomicU64::new(u64::MAX),
            error: Mutex::new(None),
        }
    }

    fn record(&self, index: u32, error: DecryptError) {
        let mut kept = self.error.lock().unwrap_or_else(PoisonError::into_inner);
        let index = u64::from(index);
        if kept.is_none() || index < self.lowest.load(Ordering::Acquire) {
            *kept = Some(error);
            self.lowest.store(index, Ordering::Release);
        }
    }

    fn any(&self) -> bool {
        self.lowest.load(Ordering::Acquire) != u64::MAX
    }

    /// Whether a segment before `index` failed, so `index` no longer matters.
    fn is_before(&self, index: u32) -> bool {
        self.lowest.load(Ordering::Acquire) < u64::from(index)
    }

    fn into_error(self) -> Option<DecryptError> {
        self.error
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// What the workers share: the files, the cipher, the next unclaimed segment and the outcome.
struct Work<'a> {
    source: &'a File,
    out: &'a File,
    cipher: &'a SegmentCipher,
    layout: FileLayout,
    per_claim: u32,
    next: AtomicU64,
    written: AtomicU64,
    failure: FirstFailure,
    /// Taken around every write. Linux holds the file's inode lock through each buffered
    /// write (tmpfs, ext4, XFS alike), so writes into one file never overlap anyway; queueing
    /// them here puts the waiting workers to sleep instead of spinning on that lock in the
    /// kernel, which cost more CPU than the decryption beyond 2 workers (measured).
    write_lock: Mutex<()>,
}

impl<'a> Work<'a> {
    fn new(
        source: &'a File,
        out: &'a File,
        cipher: &'a SegmentCipher,
        layout: FileLayout,
        claim_bytes: usize,
    ) -> Self {
        Work {
            source,
            out,
            cipher,
            layout,
            per_claim: layout.segments_per_claim(claim_bytes),
            next: AtomicU64::new(1),
            written: AtomicU64::new(0),
            failure: FirstFailure::new(),
            write_lock: Mutex::new(()),
        }
    }

    /// Runs the workers to the end; returns the plaintext bytes they wrote.
    fn run(self, options: &DecryptOptions, before: u64) -> Result<u64, DecryptError> {
        let claims = self.layout.last_index.div_ceil(self.per_claim) as usize;
        let workers = options.worker_count().min(claims).max(1);
        tracing::debug!(
            workers,
            segments = self.layout.last_index,
            per_claim = self.per_claim,
            "positional decryption"
        );
        let (alive_tx, alive_rx) = bounded::<()>(0);
        std::thread::scope(|scope| {
            let mut handles = Vec::with_capacity(workers);
            for n in 0..workers {
                let (work, alive) = (&self, alive_tx.clone());
                let spawned = std::thread::Builder::new()
                    .name(format!("seal-worker-{n}"))
                    .spawn_scoped(scope, move || {
                        let _alive = alive;
                        work.decrypt_claims();
                    });
                match spawned {
                    Ok(handle) => handles.push(handle),
                    Err(e) => {
                        let message = format!("cannot start worker thread {n}: {e}");
                        self.failure.record(0, DecryptError::Worker(message));
                        break;
                    }
                }
            }
            drop(alive_tx);
            self.watch_progress(&alive_rx, options, before);
            for handle in handles {
                if handle.join().is_err() {
                    let message = "a decryption worker thread panicked".to_string();
                    self.failure.record(0, DecryptError::Worker(message));
                }
            }
        });
        match self.failure.into_error() {
            Some(error) => Err(error),
            None => Ok(self.written.into_inner()),
        }
    }

    /// Calling thread: reports the bytes written a few times a second until the workers end.
    fn watch_progress(&self, alive: &Receiver<()>, options: &DecryptOptions, before: u64) {
        if options.progress.is_none() {
            return;
        }
        // Nothing is ever sent: the channel disconnects when the last worker drops its end.
        while let Err(RecvTimeoutError::Timeout) = alive.recv_timeout(PROGRESS_INTERVAL) {
            report_progress(options, before + self.written.load(Ordering::Relaxed));
        }
    }

    /// Worker thread: claims runs of segments until none is left or one failed.
    fn decrypt_claims(&self) {
        // One run of ciphertext, reused: its plaintext is decrypted and compacted in place.
        let mut buf = Vec::new();
        while let Some(run) = self.claim() {
            if let Err((index, error)) = self.decrypt_run(run, &mut buf) {
                self.failure.record(index, error);
                return;
            }
        }
    }

    /// The next run of segments, or `None` at the end or after a failure. Runs are handed out
    /// in index order, so every unclaimed segment lies after any segment that failed.
    fn claim(&self) -> Option<RangeInclusive<u32>> {
        if self.failure.any() {
            return None;
        }
        let per_claim = u64::from(self.per_claim);
        let first = self.next.fetch_add(per_claim, Ordering::Relaxed);
        let last_index = u64::from(self.layout.last_index);
        if first > last_index {
            return None;
        }
        let last = (first + per_claim - 1).min(last_index);
        // Both are at most `last_index`, a u32.
        Some(u32::try_from(first).ok()?..=u32::try_from(last).ok()?)
    }

    /// Reads, verifies, decrypts and writes one run of segments.
    fn decrypt_run(
        &self,
        run: RangeInclusive<u32>,
        buf: &mut Vec<u8>,
    ) -> Result<(), (u32, DecryptError)> {
        let (first, last) = (*run.start(), *run.end());
        let start = self.layout.ciphertext_start(first);
        self.read_run(start, self.layout.ciphertext_end(last), buf)
            .map_err(|error| (first, error))?;
        let mut plaintext_end = 0;
        for index in run {
            if self.failure.is_before(index) {
                // The output is discarded anyway.
                return Ok(());
            }
            // Offsets within the run, which is at most `CLAIM_BYTES` or one segment long.
            let segment_start = (self.layout.ciphertext_start(index) - start) as usize;
            let segment_end = (self.layout.ciphertext_end(index) - start) as usize;
            let segment = &mut buf[segment_start..segment_end];
            let len = open_segment_in(
                self.cipher,
                self.layout.position(index),
                segment,
                self.layout.segment_size as usize,
            )
            .map_err(|failure| {
                let offset = self.layout.ciphertext_start(index);
                let error = DecryptError::Segment {
                    index,
                    offset,
                    failure,
                };
                (index, error)
            })?;
            // Plaintext is shorter than its ciphertext, so it only ever moves left.
            buf.copy_within(segment_start..segment_start + len, plaintext_end);
            plaintext_end += len;
        }
        let offset = self.layout.plaintext_start(first);
        let written = {
            let _turn = self
                .write_lock
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            self.out.write_all_at(&buf[..plaintext_end], offset)
        };
        written.map_err(|source| (first, DecryptError::Write { path: None, source }))?;
        self.written
            .fetch_add(plaintext_end as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Reads the ciphertext bytes `start..end` into `buf`.
    fn read_run(&self, start: u64, end: u64, buf: &mut Vec<u8>) -> Result<(), DecryptError> {
        // A run is at most `CLAIM_BYTES` or one segment (`MAX_SEGMENT_SIZE`) long.
        let len = (end - start) as usize;
        // The buffer keeps its length between runs, so this zeroes memory only on first use.
        buf.resize(len, 0);
        self.source
            .read_exact_at(buf, start)
            .map_err(|source| DecryptError::Read {
                offset: start,
                source: if source.kind() == ErrorKind::UnexpectedEof {
                    io::Error::new(
                        ErrorKind::UnexpectedEof,
                        "the sealed file got shorter while it was decrypted; decrypt it again \
                         once nothing writes to it",
                    )
                } else {
                    source
                },
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::KeyTemplate;
    use crate::SegmentFailure;
    use std::io::Write;
    use std::num::NonZeroUsize;

    fn sealed(keyset: &Keyset, plaintext: &[u8]) -> Vec<u8> {
        let mut ct = Vec::new();
        crate::encrypt(plaintext, keyset, b"ad", &mut ct).unwrap();
        ct
    }

    fn plaintext(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    fn options(threads: usize) -> DecryptOptions {
        DecryptOptions {
            threads: NonZeroUsize::new(threads),
            skip_sha256: true,
            ..DecryptOptions::default()
        }
    }

    /// Decrypts `ct` positionally with runs of `claim_bytes`; returns the output file's bytes.
    fn positional(
        keyset: &Keyset,
        ct: &[u8],
        threads: usize,
        claim_bytes: usize,
    ) -> Result<(Vec<u8>, DecryptReport), DecryptError> {
        let dir = tempfile::tempdir().unwrap();
        let source_path = dir.path().join("sealed");
        std::fs::write(&source_path, ct).unwrap();
        let source = File::open(&source_path).unwrap();
        let out_path = dir.path().join("out");
        let out = File::create(&out_path).unwrap();
        let stream = Ciphertext {
            file: &source,
            len: ct.len() as u64,
        };
        let report =
            decrypt_positionally(stream, keyset, b"ad", &out, &options(threads), claim_bytes)?;
        Ok((std::fs::read(&out_path).unwrap(), report))
    }

    #[test]
    fn the_layout_follows_from_the_file_length() {
        let params = KeyTemplate::Aes128GcmHkdf4Kb.params();
        let layout = FileLayout::new(&params, 4096 * 3 + 17).unwrap();
        assert_eq!(layout.last_index, 3);
        assert_eq!(layout.ciphertext_start(1), 4096);
        assert_eq!(layout.ciphertext_end(3), 4096 * 3 + 17);
        assert_eq!(layout.plaintext_start(1), 4096 - 24 - 16);
        assert_eq!(layout.plaintext_start(3), 4056 + 2 * 4080);
        assert_eq!(
            layout.position(2),
            SegmentPosition {
                index: 2,
                is_final: false,
                is_penultimate: true
            }
        );
        assert!(layout.position(3).is_final);
        // A full last segment ends exactly at the end of the file.
        assert_eq!(FileLayout::new(&params, 4096 * 3).unwrap().last_index, 2);
        assert_eq!(layout.segments_per_claim(CLAIM_BYTES), 16);
        assert_eq!(layout.segments_per_claim(100), 1);
    }

    #[test]
    fn more_segments_than_the_format_allows_are_refused() {
        let params = KeyTemplate::Aes128GcmHkdf4Kb.params();
        let too_long = 4096 * u64::from(u32::MAX) + 1;
        assert!(matches!(
            FileLayout::new(&params, too_long),
            Err(DecryptError::TooManySegments)
        ));
        assert!(FileLayout::new(&params, too_long - 1).is_ok());
    }

    #[test]
    fn every_thread_count_and_run_length_gives_the_sequential_plaintext() {
        let keyset = Keyset::generate(KeyTemplate::Aes128GcmHkdf4Kb).unwrap();
        for len in [0, 1, 4056, 4057, 4056 + 4080, 4056 + 4080 + 1, 50_000] {
            let plain = plaintext(len);
            let ct = sealed(&keyset, &plain);
            let mut expected =
                crate::decrypt_sequential(&ct[..], &keyset, b"ad", &mut Vec::new()).unwrap();
            expected.sha256 = None;
            for threads in 1..=8 {
                for claim_bytes in [1, 4096 * 3, CLAIM_BYTES] {
                    let (out, report) = positional(&keyset, &ct, threads, claim_bytes).unwrap();
                    assert!(out == plain, "len {len}, {threads} threads, {claim_bytes}");
                    assert_eq!(report, expected);
                }
            }
        }
    }

    #[test]
    fn the_lowest_failing_segment_is_reported_whatever_the_timing() {
        let keyset = Keyset::generate(KeyTemplate::Aes128GcmHkdf4Kb).unwrap();
        let mut ct = sealed(&keyset, &plaintext(40 * 4080));
        for segment in [9, 5, 30] {
            ct[segment * 4096 + 10] ^= 1;
        }
        for threads in 1..=8 {
            for claim_bytes in [1, 4096 * 3] {
                let error = positional(&keyset, &ct, threads, claim_bytes).unwrap_err();
                assert_eq!(
                    error.segment_failure(),
                    Some((5, SegmentFailure::TagMismatch)),
                    "{threads} threads: {error}"
                );
            }
        }
    }

    #[test]
    fn progress_ends_at_the_plaintext_length() {
        let keyset = Keyset::generate(KeyTemplate::Aes128GcmHkdf4Kb).unwrap();
        let plain = plaintext(30_000);
        let ct = sealed(&keyset, &plain);
        let dir = tempfile::tempdir().unwrap();
        let source_path = dir.path().join("sealed");
        std::fs::write(&source_path, &ct).unwrap();
        let seen = std::sync::Arc::new(AtomicU64::new(0));
        let seen_in_callback = std::sync::Arc::clone(&seen);
        let options = DecryptOptions {
            progress: Some(Box::new(move |done| {
                let before = seen_in_callback.swap(done, Ordering::SeqCst);
                assert!(done >= before, "progress went back from {before} to {done}");
            })),
            ..options(3)
        };
        let dest = dir.path().join("out");
        let source = File::open(&source_path).unwrap();
        decrypt_file_to_file(&source, &keyset, b"ad", &dest, &options).unwrap();
        assert_eq!(seen.load(Ordering::SeqCst), 30_000);
        assert_eq!(std::fs::read(&dest).unwrap(), plain);
    }

    #[test]
    fn a_size_change_during_decryption_is_a_read_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sealed");
        std::fs::write(&path, [1u8; 100]).unwrap();
        let file = File::open(&path).unwrap();
        let stream = Ciphertext {
            file: &file,
            len: 100,
        };
        assert!(stream.check_unchanged().is_ok());
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"more")
            .unwrap();
        let error = stream.check_unchanged().unwrap_err();
        assert!(
            matches!(error, DecryptError::Read { offset: 100, .. }),
            "{error}"
        );
        assert!(error.to_string().contains("changed size from 100 to 104"));
    }

    #[test]
    fn the_file_cursor_is_neither_used_nor_moved() {
        let keyset = Keyset::generate(KeyTemplate::Aes128GcmHkdf4Kb).unwrap();
        let plain = plaintext(9_000);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sealed");
        std::fs::write(&path, sealed(&keyset, &plain)).unwrap();
        for skip_sha256 in [true, false] {
            let mut source = File::open(&path).unwrap();
            io::Seek::seek(&mut source, io::SeekFrom::Start(500)).unwrap();
            let dest = dir.path().join("out");
            let options = DecryptOptions {
                skip_sha256,
                ..options(2)
            };
            decrypt_file_to_file(&source, &keyset, b"ad", &dest, &options).unwrap();
            assert_eq!(std::fs::read(&dest).unwrap(), plain);
            assert_eq!(io::Seek::stream_position(&mut source).unwrap(), 500);
        }
    }
}
