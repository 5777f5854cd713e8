//! The parallel decrypting pipeline: one reader thread cuts the ciphertext into segments, N
//! worker threads verify and decrypt them, the calling thread puts the plaintext in order, and
//! a hasher thread computes its SHA-256 behind it. SHA-256 cannot be split across threads and
//! costs about three and a half times AES-GCM per byte (SHA-NI against VAES, profiled), so it
//! gets a core of its own rather than delaying the writes.
//!
//! Writing the plaintext is the other large cost: into tmpfs or the page cache it is a copy
//! into freshly allocated pages, which at times profiled slower than SHA-256 (see
//! `benches/results/seal-throughput.md`). So when the destination is a file and segments are
//! large, each worker writes the segments it verified at their own offsets
//! (`Placement::Positional`) and the writes run on every worker; the calling thread then only
//! orders the buffers for the hasher. Small segments (4 KiB) are written in order through a
//! buffer instead, where one large write beats many small positional ones.
//!
//! Memory is bounded by a fixed pool of segment buffers (`BUFFERS_PER_WORKER` per worker plus
//! the reader's lookahead): the reader blocks until the writer hands a buffer back, so a fast
//! source cannot run ahead of a slow destination.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File};
use std::io::{BufWriter, Read, Write};
use std::num::NonZeroUsize;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_channel::{bounded, Receiver, Sender};

use crate::cipher::SegmentCipher;
use crate::decrypt::{
    open_segment, open_stream, segment_error, DecryptReport, OpenedStream, PlaintextSink,
};
use crate::error::DecryptError;
use crate::keyset::Keyset;
use crate::params::StreamingParams;
use crate::reader::{Chunk, SegmentReader};

/// Segment buffers in flight per worker: one being decrypted, one queued, one being written.
pub const BUFFERS_PER_WORKER: usize = 3;

/// Smallest segment size that workers write to the output file themselves. Below it a segment
/// is cheaper to batch into a larger in-order write than to write with a syscall of its own.
const POSITIONAL_WRITE_MIN_SEGMENT: usize = 64 << 10;

/// Progress callback: receives the plaintext bytes written so far.
pub type ProgressFn = Box<dyn Fn(u64) + Send + Sync>;

/// Options of [`decrypt_to_file`], [`decrypt_to_writer`] and [`crate::decrypt_file_to_file`].
#[derive(Default)]
pub struct DecryptOptions {
    /// Worker threads; `None` means one per available CPU.
    pub threads: Option<NonZeroUsize>,
    /// When set, the plaintext's SHA-256 must equal it or decryption fails (and, for a file,
    /// the output is removed).
    pub expected_sha256: Option<[u8; 32]>,
    /// Skips the plaintext SHA-256 (the report then has none). Every segment is still
    /// authenticated by the AEAD; only the whole-file digest, whose single stream caps the
    /// throughput at one core's SHA-256 speed, is left out. Ignored when `expected_sha256` is
    /// set, so a check asked for is never silently dropped.
    pub skip_sha256: bool,
    /// Called on the calling thread with the plaintext bytes written so far: after each
    /// segment, or, when [`crate::decrypt_file_to_file`] lets the workers read and write at
    /// their own offsets, a few times a second and once at the end.
    pub progress: Option<ProgressFn>,
    /// The sealed stream's length in bytes, when the caller knows it before decrypting (an
    /// HTTP Content-Length; [`crate::decrypt_file_to_file`] takes a file's own). A file
    /// destination is then sized to the plaintext before the first write, and cut to what was
    /// written if the length was wrong. On a tmpfs mounted `huge=within_size`, as veil-agent
    /// mounts memory volumes, Linux 6.1 (the guest's kernel) gives a file huge pages only
    /// inside its size, so a file written front to back would get none without it.
    pub sealed_len: Option<u64>,
}

impl fmt::Debug for DecryptOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DecryptOptions")
            .field("threads", &self.threads)
            .field(
                "expected_sha256",
                &self.expected_sha256.map(|d| crate::hex(&d)),
            )
            .field("skip_sha256", &self.skip_sha256)
            .field("progress", &self.progress.is_some())
            .field("sealed_len", &self.sealed_len)
            .finish()
    }
}

impl DecryptOptions {
    /// Whether the plaintext SHA-256 is computed.
    pub fn computes_sha256(&self) -> bool {
        !self.skip_sha256 || self.expected_sha256.is_some()
    }

    /// Worker threads to use.
    pub fn worker_count(&self) -> usize {
        self.threads
            .or_else(|| std::thread::available_parallelism().ok())
            .map_or(1, NonZeroUsize::get)
    }
}

/// Decrypts `source` into a new file at `dest`, all or nothing.
///
/// The plaintext goes to a hidden temporary file next to `dest`, renamed to `dest` only after
/// every segment verified (and the SHA-256 matched, when expected). On any error the temporary
/// file is removed, so no partial or unverified plaintext is left under any name. `dest` is
/// replaced if it exists.
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // The keyset arrives as Tink JSON bytes, e.g. released by the key broker.
/// let keyset = veil_seal::Keyset::from_json(&std::fs::read("keyset.json")?)?;
/// let source = std::fs::File::open("model.sealed")?;
/// let report = veil_seal::decrypt_to_file(
///     source,
///     &keyset,
///     b"model-v1",
///     std::path::Path::new("/run/model/model.bin"),
///     &veil_seal::DecryptOptions::default(),
/// )?;
/// println!("{} bytes, sha256 {:?}", report.plaintext_bytes, report.sha256_hex());
/// # Ok(()) }
/// ```
pub fn decrypt_to_file<R: Read + Send>(
    source: R,
    keyset: &Keyset,
    associated_data: &[u8],
    dest: &Path,
    options: &DecryptOptions,
) -> Result<DecryptReport, DecryptError> {
    write_all_or_nothing(dest, |file| {
        decrypt_into_file(
            source,
            keyset,
            associated_data,
            file,
            options,
            options.sealed_len,
        )
    })
}

/// Runs `decrypt` on a new hidden file next to `dest` and renames it to `dest` on success; on
/// any failure removes it. Write errors without a path get `dest`'s.
pub(crate) fn write_all_or_nothing(
    dest: &Path,
    decrypt: impl FnOnce(File) -> Result<DecryptReport, DecryptError>,
) -> Result<DecryptReport, DecryptError> {
    let temp = temp_path(dest);
    let with_path = |source| DecryptError::Write {
        path: Some(dest.to_path_buf()),
        source,
    };
    let file = File::options()
        .write(true)
        .create_new(true)
        .open(&temp)
        .map_err(with_path)?;
    let result = decrypt(file)
        .map_err(|e| match e {
            DecryptError::Write { path: None, source } => with_path(source),
            other => other,
        })
        .and_then(|report| fs::rename(&temp, dest).map(|()| report).map_err(with_path));
    if result.is_err() {
        if let Err(error) = fs::remove_file(&temp) {
            tracing::warn!(path = %temp.display(), %error, "could not remove partial plaintext");
        }
    }
    result
}

/// Decrypts into `file`, sized in advance from `sealed_len` (see [`DecryptOptions::sealed_len`]).
pub(crate) fn decrypt_into_file<R: Read + Send>(
    source: R,
    keyset: &Keyset,
    associated_data: &[u8],
    file: File,
    options: &DecryptOptions,
    sealed_len: Option<u64>,
) -> Result<DecryptReport, DecryptError> {
    let stream = open_stream(source, keyset, associated_data)?;
    let presized = presize(&file, &stream.params, sealed_len);
    let report = if stream.params.segment_size() >= POSITIONAL_WRITE_MIN_SEGMENT {
        let placement = Placement::positional(&file, &stream.params);
        // Segment 0 goes through the file cursor at offset 0; workers write the rest at their
        // offsets without moving it.
        let mut out = &file;
        decrypt_opened(stream, &mut out, options, placement)?
    } else {
        // Small segments (4 KiB) are batched into larger writes.
        let mut out = BufWriter::with_capacity(256 << 10, &file);
        decrypt_opened(stream, &mut out, options, Placement::InOrder)?
    };
    if presized {
        cut_to_plaintext(&file, &report)?;
    }
    Ok(report)
}

/// Sizes `file` to the plaintext of a `sealed_len` long stream under `params` (see
/// [`DecryptOptions::sealed_len`]); returns whether it did. Only an optimisation: a length
/// no stream can have, or a file that cannot be sized, leaves the file as it is.
pub(crate) fn presize(file: &File, params: &StreamingParams, sealed_len: Option<u64>) -> bool {
    let Some(plaintext) = sealed_len.and_then(|len| params.plaintext_len_of(len)) else {
        return false;
    };
    match file.set_len(plaintext) {
        Ok(()) => true,
        Err(error) => {
            tracing::debug!(plaintext, %error, "could not size the plaintext file in advance");
            false
        }
    }
}

/// Cuts a presized file to the plaintext actually written, in case the announced length was
/// longer.
fn cut_to_plaintext(file: &File, report: &DecryptReport) -> Result<(), DecryptError> {
    file.set_len(report.plaintext_bytes)
        .map_err(|source| DecryptError::Write { path: None, source })
}

/// Where the plaintext of segments 1, 2, ... goes.
#[derive(Clone, Copy)]
enum Placement<'f> {
    /// The calling thread writes each segment to the sink, in order.
    InOrder,
    /// Each worker writes the segments it verified at their plaintext offset in `file`.
    Positional {
        file: &'f File,
        /// Plaintext bytes of segment 0 (the header shares its ciphertext segment).
        first_len: u64,
        /// Plaintext bytes of every later segment but the last.
        segment_len: u64,
    },
}

impl<'f> Placement<'f> {
    fn positional(file: &'f File, params: &StreamingParams) -> Self {
        Placement::Positional {
            file,
            first_len: params.first_plaintext_len() as u64,
            segment_len: params.plaintext_len() as u64,
        }
    }

    /// Writes a verified segment (index >= 1) to its place when workers do the writing.
    fn place(&self, index: u32, plaintext: &[u8]) -> Result<(), DecryptError> {
        let Placement::Positional {
            file,
            first_len,
            segment_len,
        } = *self
        else {
            return Ok(());
        };
        let Some(after_first) = index.checked_sub(1) else {
            return Err(DecryptError::Worker(
                "segment 0 reached a worker; this is a bug in veil-seal".into(),
            ));
        };
        // Every segment before the last is full, so a segment's offset follows from its index.
        let offset = first_len + u64::from(after_first) * segment_len;
        file.write_all_at(plaintext, offset)
            .map_err(|source| DecryptError::Write { path: None, source })
    }
}

/// `.<name>.veil-partial-<pid>-<random>` next to `dest`.
fn temp_path(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map_or_else(|| "plaintext".into(), |n| n.to_string_lossy().into_owned());
    let mut tag = [0u8; 4];
    // A failed random draw only makes a name collision likelier; create_new still refuses one.
    let _ = crate::random::fill(&mut tag);
    dest.with_file_name(format!(
        ".{name}.veil-partial-{}-{}",
        std::process::id(),
        crate::hex(&tag)
    ))
}

/// Decrypts `source` into `out` on [`DecryptOptions::threads`] workers, in order.
///
/// Only verified plaintext is written, but on failure the segments before the failing one have
/// already reached `out`; the caller must discard them ([`decrypt_to_file`] does). A failure
/// returns once the reader thread's read in progress completes, so give network sources a read
/// timeout.
pub fn decrypt_to_writer<R: Read + Send, W: Write>(
    source: R,
    keyset: &Keyset,
    associated_data: &[u8],
    out: &mut W,
    options: &DecryptOptions,
) -> Result<DecryptReport, DecryptError> {
    let stream = open_stream(source, keyset, associated_data)?;
    decrypt_opened(stream, out, options, Placement::InOrder)
}

/// Decrypts the segments after segment 0 of an opened stream and checks the digest.
fn decrypt_opened<R: Read + Send, W: Write>(
    stream: OpenedStream<R>,
    out: &mut W,
    options: &DecryptOptions,
    placement: Placement<'_>,
) -> Result<DecryptReport, DecryptError> {
    let mut sink = PlaintextSink::hashing(out, options.computes_sha256());
    sink.write_segment(&stream.first_plaintext)?;
    report_progress(options, sink.bytes);
    if let Some(rest) = stream.rest {
        let workers = options.worker_count();
        tracing::debug!(
            workers,
            segment_size = stream.params.segment_size(),
            "parallel decryption"
        );
        run_pipeline(
            rest,
            &stream.cipher,
            stream.params.segment_size(),
            workers,
            &mut sink,
            options,
            placement,
        )?;
    }
    let report = sink.finish(stream.key_id)?;
    check_digest(&report, options)?;
    tracing::debug!(
        plaintext_bytes = report.plaintext_bytes,
        segments = report.segments,
        key_id = report.key_id,
        "stream decrypted and verified"
    );
    Ok(report)
}

pub(crate) fn report_progress(options: &DecryptOptions, bytes: u64) {
    if let Some(progress) = &options.progress {
        progress(bytes);
    }
}

fn check_digest(report: &DecryptReport, options: &DecryptOptions) -> Result<(), DecryptError> {
    match (options.expected_sha256, report.sha256) {
        (Some(expected), Some(actual)) if expected != actual => Err(DecryptError::DigestMismatch {
            expected: crate::hex(&expected),
            actual: crate::hex(&actual),
        }),
        _ => Ok(()),
    }
}

/// What workers and the reader tell the writer.
enum Event {
    Decrypted {
        index: u32,
        buf: Vec<u8>,
        len: usize,
    },
    Failed(DecryptError),
    /// The reader reached the end; `last_index` is the final segment's index.
    End {
        last_index: u32,
    },
}

fn run_pipeline<R: Read + Send, W: Write>(
    mut reader: SegmentReader<R>,
    cipher: &SegmentCipher,
    segment_size: usize,
    workers: usize,
    sink: &mut PlaintextSink<'_, W>,
    options: &DecryptOptions,
    placement: Placement<'_>,
) -> Result<(), DecryptError> {
    let buffers = workers * BUFFERS_PER_WORKER + 1;
    let (pool_tx, pool_rx) = bounded::<Vec<u8>>(buffers);
    for _ in 0..buffers {
        // The pool channel holds exactly `buffers` entries, so these sends never block.
        let _ = pool_tx.send(Vec::with_capacity(segment_size));
    }
    let (job_tx, job_rx) = bounded::<Chunk>(workers);
    let (event_tx, event_rx) = bounded::<Event>(buffers + 1);

    let (hash_tx, hash_rx) = bounded::<(Vec<u8>, usize)>(buffers);
    let cancel = AtomicBool::new(false);

    std::thread::scope(|scope| {
        let cancel = &cancel;
        let reader_events = event_tx.clone();
        let spawned = std::thread::Builder::new()
            .name("seal-reader".into())
            .spawn_scoped(scope, move || {
                read_segments(&mut reader, &pool_rx, &job_tx, &reader_events, cancel)
            });
        if let Err(e) = spawned {
            return Err(DecryptError::Worker(format!(
                "cannot start the reader thread: {e}"
            )));
        }
        for n in 0..workers {
            let (jobs, events) = (job_rx.clone(), event_tx.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("seal-worker-{n}"))
                .spawn_scoped(scope, move || {
                    decrypt_segments(cipher, segment_size, placement, &jobs, &events, cancel)
                });
            if let Err(e) = spawned {
                cancel.store(true, Ordering::Relaxed);
                return Err(DecryptError::Worker(format!(
                    "cannot start worker thread {n}: {e}"
                )));
            }
        }
        drop((job_rx, event_tx));
        let digest = sink.digest();
        let hasher = std::thread::Builder::new()
            .name("seal-hasher".into())
            .spawn_scoped(scope, move || hash_segments(digest, &hash_rx, &pool_tx));
        let hasher = match hasher {
            Ok(handle) => handle,
            Err(e) => {
                cancel.store(true, Ordering::Relaxed);
                return Err(DecryptError::Worker(format!(
                    "cannot start the hasher thread: {e}"
                )));
            }
        };
        let result = write_in_order(event_rx, hash_tx, sink, options, placement);
        cancel.store(true, Ordering::Relaxed);
        let digest = hasher
            .join()
            .map_err(|_| DecryptError::Worker("the hasher thread panicked".into()))?;
        sink.set_digest(digest);
        result
    })
}

/// Hasher thread: continues the plaintext digest (if any) in segment order, then recycles the
/// buffers.
fn hash_segments(
    mut digest: Option<ring::digest::Context>,
    segments: &Receiver<(Vec<u8>, usize)>,
    pool: &Sender<Vec<u8>>,
) -> Option<ring::digest::Context> {
    while let Ok((buf, len)) = segments.recv() {
        if let Some(digest) = &mut digest {
            digest.update(&buf[..len]);
        }
        // The reader may have stopped; the buffer is then simply dropped.
        let _ = pool.send(buf);
    }
    digest
}

/// Reader thread: cuts segments into pooled buffers and queues them for the workers.
fn read_segments<R: Read>(
    reader: &mut SegmentReader<R>,
    pool: &Receiver<Vec<u8>>,
    jobs: &Sender<Chunk>,
    events: &Sender<Event>,
    cancel: &AtomicBool,
) {
    let mut last_index = 0;
    loop {
        if cancel.load(Ordering::Relaxed) {
            return;
        }
        match reader.next_chunk(|| pool.recv().ok()) {
            Ok(Some(chunk)) => {
                last_index = chunk.index;
                if jobs.send(chunk).is_err() {
                    return;
                }
            }
            Ok(None) => {
                let _ = events.send(Event::End { last_index });
                return;
            }
            Err(error) => {
                let _ = events.send(Event::Failed(error));
                return;
            }
        }
    }
}

/// Worker thread: verifies and decrypts segments in place, and writes them to their place in
/// the output file when the placement says so.
fn decrypt_segments(
    cipher: &SegmentCipher,
    full_len: usize,
    placement: Placement<'_>,
    jobs: &Receiver<Chunk>,
    events: &Sender<Event>,
    cancel: &AtomicBool,
) {
    while let Ok(mut chunk) = jobs.recv() {
        if cancel.load(Ordering::Relaxed) {
            return;
        }
        let event = match open_segment(cipher, &mut chunk, full_len) {
            Ok(len) => match placement.place(chunk.index, &chunk.data[..len]) {
                Ok(()) => Event::Decrypted {
                    index: chunk.index,
                    buf: chunk.data,
                    len,
                },
                Err(error) => Event::Failed(error),
            },
            Err(failure) => Event::Failed(segment_error(&chunk, failure)),
        };
        if events.send(event).is_err() {
            return;
        }
    }
}

/// Calling thread: writes decrypted segments in index order (or, when the workers wrote them,
/// counts them in order), then passes them to the hasher.
fn write_in_order<W: Write>(
    events: Receiver<Event>,
    hasher: Sender<(Vec<u8>, usize)>,
    sink: &mut PlaintextSink<'_, W>,
    options: &DecryptOptions,
    placement: Placement<'_>,
) -> Result<(), DecryptError> {
    let mut pending: BTreeMap<u32, (Vec<u8>, usize)> = BTreeMap::new();
    // Segment failures wait for their turn, like plaintext: the reader and the workers
    // race, and the error reported must not depend on which thread was faster.
    let mut failures: BTreeMap<u32, DecryptError> = BTreeMap::new();
    let mut next: u32 = 1;
    let mut end: Option<u32> = None;
    loop {
        if end.is_some_and(|last| next > last) {
            return Ok(());
        }
        let event = events.recv().map_err(|_| {
            DecryptError::Worker("decryption threads stopped before the end of the stream".into())
        })?;
        match event {
            Event::Decrypted { index, buf, len } => {
                pending.insert(index, (buf, len));
            }
            Event::Failed(error) => match error.segment_failure() {
                Some((index, _)) if index >= next => {
                    failures.insert(index, error);
                }
                _ => return Err(error),
            },
            Event::End { last_index } => end = Some(last_index),
        }
        loop {
            if let Some(error) = failures.remove(&next) {
                return Err(error);
            }
            let Some((buf, len)) = pending.remove(&next) else {
                break;
            };
            match placement {
                Placement::InOrder => sink.write_unhashed(&buf[..len])?,
                Placement::Positional { .. } => sink.record_placed(len),
            }
            report_progress(options, sink.bytes);
            hasher
                .send((buf, len))
                .map_err(|_| DecryptError::Worker("the hasher thread stopped early".into()))?;
            next = next.wrapping_add(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::KeyTemplate;

    fn sealed(keyset: &Keyset, len: usize) -> Vec<u8> {
        let mut ct = Vec::new();
        crate::encrypt(&vec![9u8; len][..], keyset, b"a", &mut ct).unwrap();
        ct
    }

    /// Options whose progress callback records the size of `dir`'s partial plaintext file
    /// each time it is called.
    fn recording_partial_sizes(
        dir: &Path,
    ) -> (DecryptOptions, std::sync::Arc<std::sync::Mutex<Vec<u64>>>) {
        let sizes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (dir, seen) = (dir.to_path_buf(), sizes.clone());
        let progress: ProgressFn = Box::new(move |_| {
            let partial = fs::read_dir(&dir)
                .unwrap()
                .map(|entry| entry.unwrap())
                .find(|entry| {
                    entry
                        .file_name()
                        .to_string_lossy()
                        .contains(".veil-partial-")
                });
            if let Some(partial) = partial {
                seen.lock().unwrap().push(partial.metadata().unwrap().len());
            }
        });
        let options = DecryptOptions {
            progress: Some(progress),
            threads: NonZeroUsize::new(2),
            ..DecryptOptions::default()
        };
        (options, sizes)
    }

    #[test]
    fn a_file_destination_is_sized_to_the_plaintext_before_the_first_write() {
        let len = 3 << 20;
        for template in [KeyTemplate::Aes256GcmHkdf1Mb, KeyTemplate::Aes128GcmHkdf4Kb] {
            let keyset = Keyset::generate(template).unwrap();
            let ct = sealed(&keyset, len);
            let dir = tempfile::tempdir().unwrap();
            let dest = dir.path().join("model.bin");
            let sealed_file = dir.path().join("sealed");
            fs::write(&sealed_file, &ct).unwrap();

            // Told the sealed length, a stream's file is sized first.
            let (mut options, sizes) = recording_partial_sizes(dir.path());
            options.sealed_len = Some(ct.len() as u64);
            decrypt_to_file(&ct[..], &keyset, b"a", &dest, &options).unwrap();
            assert_eq!(sizes.lock().unwrap()[0], len as u64, "{template:?}");
            assert_eq!(fs::read(&dest).unwrap(), vec![9u8; len]);

            // Not told, it grows as written.
            let (options, sizes) = recording_partial_sizes(dir.path());
            decrypt_to_file(&ct[..], &keyset, b"a", &dest, &options).unwrap();
            assert!(sizes.lock().unwrap()[0] < len as u64, "{template:?}");

            // From a sealed file, with and without the digest, the file's length says it.
            for skip_sha256 in [false, true] {
                let (mut options, sizes) = recording_partial_sizes(dir.path());
                options.skip_sha256 = skip_sha256;
                let source = File::open(&sealed_file).unwrap();
                crate::decrypt_file_to_file(&source, &keyset, b"a", &dest, &options).unwrap();
                assert_eq!(
                    sizes.lock().unwrap()[0],
                    len as u64,
                    "{template:?} {skip_sha256}"
                );
                assert_eq!(fs::read(&dest).unwrap(), vec![9u8; len]);
            }
        }
    }

    #[test]
    fn a_wrong_sealed_length_changes_nothing_in_the_plaintext() {
        let keyset = Keyset::generate(KeyTemplate::Aes128GcmHkdf4Kb).unwrap();
        let ct = sealed(&keyset, 50_000);
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("model.bin");
        // Longer than the stream, a length no stream has, and shorter than the stream.
        for sealed_len in [ct.len() as u64 + 8192, 3, ct.len() as u64 - 4096] {
            let options = DecryptOptions {
                sealed_len: Some(sealed_len),
                ..DecryptOptions::default()
            };
            let report = decrypt_to_file(&ct[..], &keyset, b"a", &dest, &options).unwrap();
            assert_eq!(report.plaintext_bytes, 50_000);
            assert_eq!(fs::read(&dest).unwrap(), vec![9u8; 50_000], "{sealed_len}");
        }
    }

    #[test]
    fn partial_files_are_hidden_siblings_of_the_destination() {
        let temp = temp_path(Path::new("/run/models/model.bin"));
        assert_eq!(temp.parent(), Some(Path::new("/run/models")));
        assert!(temp
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(".model.bin.veil-partial-"));
    }

    #[test]
    fn decrypt_to_file_replaces_the_destination_and_checks_the_digest() {
        let keyset = Keyset::generate(KeyTemplate::Aes128GcmHkdf4Kb).unwrap();
        let ct = sealed(&keyset, 10_000);
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("model.bin");
        fs::write(&dest, b"old").unwrap();
        let report =
            decrypt_to_file(&ct[..], &keyset, b"a", &dest, &DecryptOptions::default()).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), vec![9u8; 10_000]);
        let options = DecryptOptions {
            expected_sha256: report.sha256,
            ..DecryptOptions::default()
        };
        assert!(decrypt_to_file(&ct[..], &keyset, b"a", &dest, &options).is_ok());
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no partial file left"
        );
    }

    #[test]
    fn skipping_the_digest_gives_the_same_plaintext_and_no_sha256() {
        let keyset = Keyset::generate(KeyTemplate::Aes128GcmHkdf4Kb).unwrap();
        let ct = sealed(&keyset, 50_000);
        let skip = DecryptOptions {
            skip_sha256: true,
            threads: NonZeroUsize::new(3),
            ..DecryptOptions::default()
        };
        let (mut hashed, mut unhashed) = (Vec::new(), Vec::new());
        let full = decrypt_to_writer(
            &ct[..],
            &keyset,
            b"a",
            &mut hashed,
            &DecryptOptions::default(),
        )
        .unwrap();
        let report = decrypt_to_writer(&ct[..], &keyset, b"a", &mut unhashed, &skip).unwrap();
        assert_eq!(hashed, unhashed);
        assert!(full.sha256.is_some());
        assert_eq!(report.sha256, None);
        assert_eq!(report.plaintext_bytes, 50_000);
    }

    #[test]
    fn an_expected_digest_is_checked_even_when_asked_to_skip_it() {
        let keyset = Keyset::generate(KeyTemplate::Aes128GcmHkdf4Kb).unwrap();
        let ct = sealed(&keyset, 50_000);
        let options = DecryptOptions {
            skip_sha256: true,
            expected_sha256: Some([7; 32]),
            ..DecryptOptions::default()
        };
        let error =
            decrypt_to_writer(&ct[..], &keyset, b"a", &mut Vec::new(), &options).unwrap_err();
        assert!(
            matches!(error, DecryptError::DigestMismatch { .. }),
            "{error}"
        );
    }

    #[test]
    fn a_missing_destination_directory_is_a_write_error_naming_it() {
        let keyset = Keyset::generate(KeyTemplate::Aes128GcmHkdf4Kb).unwrap();
        let ct = sealed(&keyset, 10);
        let dest = Path::new("/nonexistent-veil-dir/model.bin");
        let error =
            decrypt_to_file(&ct[..], &keyset, b"a", dest, &DecryptOptions::default()).unwrap_err();
        assert!(
            matches!(&error, DecryptError::Write { path: Some(p), .. } if p == dest),
            "{error}"
        );
    }
}
