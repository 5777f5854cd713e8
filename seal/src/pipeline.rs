//! The parallel decrypting pipeline: one reader thread cuts the ciphertext into segments, N
//! worker threads verify and decrypt them, the calling thread writes the plaintext in order, and
//! a hasher thread computes its SHA-256 behind the writer. SHA-256 cannot be split across
//! threads and costs about twice AES-GCM per byte, so it gets a core of its own rather than
//! delaying the writes.
//!
//! Memory is bounded by a fixed pool of segment buffers (`BUFFERS_PER_WORKER` per worker plus
//! the reader's lookahead): the reader blocks until the writer hands a buffer back, so a fast
//! source cannot run ahead of a slow destination.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File};
use std::io::{BufWriter, Read, Write};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_channel::{bounded, Receiver, Sender};

use crate::cipher::SegmentCipher;
use crate::decrypt::{open_segment, open_stream, segment_error, DecryptReport, PlaintextSink};
use crate::error::DecryptError;
use crate::keyset::Keyset;
use crate::reader::{Chunk, SegmentReader};

/// Segment buffers in flight per worker: one being decrypted, one queued, one being written.
pub const BUFFERS_PER_WORKER: usize = 3;

/// Progress callback: receives the plaintext bytes written so far.
pub type ProgressFn = Box<dyn Fn(u64) + Send + Sync>;

/// Options of [`decrypt_to_file`] and [`decrypt_to_writer`].
#[derive(Default)]
pub struct DecryptOptions {
    /// Worker threads; `None` means one per available CPU.
    pub threads: Option<NonZeroUsize>,
    /// When set, the plaintext's SHA-256 must equal it or decryption fails (and, for a file,
    /// the output is removed).
    pub expected_sha256: Option<[u8; 32]>,
    /// Called on the calling thread after each segment is written.
    pub progress: Option<ProgressFn>,
}

impl fmt::Debug for DecryptOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DecryptOptions")
            .field("threads", &self.threads)
            .field(
                "expected_sha256",
                &self.expected_sha256.map(|d| crate::hex(&d)),
            )
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

impl DecryptOptions {
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
/// println!("{} bytes, sha256 {}", report.plaintext_bytes, report.sha256_hex());
/// # Ok(()) }
/// ```
pub fn decrypt_to_file<R: Read + Send>(
    source: R,
    keyset: &Keyset,
    associated_data: &[u8],
    dest: &Path,
    options: &DecryptOptions,
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
    let result = decrypt_into_file(source, keyset, associated_data, file, options)
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

fn decrypt_into_file<R: Read + Send>(
    source: R,
    keyset: &Keyset,
    associated_data: &[u8],
    file: File,
    options: &DecryptOptions,
) -> Result<DecryptReport, DecryptError> {
    // Small segments (4 KiB) are batched into larger writes; 1 MiB ones bypass the buffer.
    let mut out = BufWriter::with_capacity(256 << 10, file);
    decrypt_to_writer(source, keyset, associated_data, &mut out, options)
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
    let mut sink = PlaintextSink::new(out);
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

fn report_progress(options: &DecryptOptions, bytes: u64) {
    if let Some(progress) = &options.progress {
        progress(bytes);
    }
}

fn check_digest(report: &DecryptReport, options: &DecryptOptions) -> Result<(), DecryptError> {
    match options.expected_sha256 {
        Some(expected) if expected != report.sha256 => Err(DecryptError::DigestMismatch {
            expected: crate::hex(&expected),
            actual: report.sha256_hex(),
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
                    decrypt_segments(cipher, segment_size, &jobs, &events, cancel)
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
        let result = write_in_order(event_rx, hash_tx, sink, options);
        cancel.store(true, Ordering::Relaxed);
        let digest = hasher
            .join()
            .map_err(|_| DecryptError::Worker("the hasher thread panicked".into()))?;
        sink.set_digest(digest);
        result
    })
}

/// Hasher thread: continues the plaintext digest in segment order, then recycles the buffers.
fn hash_segments(
    mut digest: ring::digest::Context,
    segments: &Receiver<(Vec<u8>, usize)>,
    pool: &Sender<Vec<u8>>,
) -> ring::digest::Context {
    while let Ok((buf, len)) = segments.recv() {
        digest.update(&buf[..len]);
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

/// Worker thread: verifies and decrypts segments in place.
fn decrypt_segments(
    cipher: &SegmentCipher,
    full_len: usize,
    jobs: &Receiver<Chunk>,
    events: &Sender<Event>,
    cancel: &AtomicBool,
) {
    while let Ok(mut chunk) = jobs.recv() {
        if cancel.load(Ordering::Relaxed) {
            return;
        }
        let event = match open_segment(cipher, &mut chunk, full_len) {
            Ok(len) => Event::Decrypted {
                index: chunk.index,
                buf: chunk.data,
                len,
            },
            Err(failure) => Event::Failed(segment_error(&chunk, failure)),
        };
        if events.send(event).is_err() {
            return;
        }
    }
}

/// Calling thread: writes decrypted segments in index order, then passes them to the hasher.
fn write_in_order<W: Write>(
    events: Receiver<Event>,
    hasher: Sender<(Vec<u8>, usize)>,
    sink: &mut PlaintextSink<'_, W>,
    options: &DecryptOptions,
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
            sink.write_unhashed(&buf[..len])?;
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
            expected_sha256: Some(report.sha256),
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
