//! Opening a stream (header, key selection on segment 0) and verifying segments, shared by the
//! sequential and the parallel decryptors.

use std::io::{Chain, Cursor, ErrorKind, Read, Write};

use ring::digest;

use crate::cipher::{Header, SegmentCipher};
use crate::error::{DecryptError, HeaderProblem, SegmentFailure};
use crate::keyset::{Keyset, StreamingKey};
use crate::params::StreamingParams;
use crate::reader::{Chunk, SegmentReader};

/// Outcome of a successful decryption.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecryptReport {
    /// Plaintext bytes written.
    pub plaintext_bytes: u64,
    /// SHA-256 of the plaintext; `None` when the caller skipped it
    /// ([`crate::DecryptOptions::skip_sha256`]).
    pub sha256: Option<[u8; 32]>,
    /// Number of segments in the ciphertext.
    pub segments: u64,
    /// Id of the keyset key that opened the stream.
    pub key_id: u32,
}

impl DecryptReport {
    /// The plaintext SHA-256 in lowercase hex, when it was computed.
    pub fn sha256_hex(&self) -> Option<String> {
        self.sha256.as_ref().map(|d| crate::hex(d))
    }
}

/// A stream whose header and segment 0 have been read and verified.
pub(crate) struct OpenedStream<R> {
    pub(crate) cipher: SegmentCipher,
    pub(crate) params: StreamingParams,
    pub(crate) key_id: u32,
    /// Verified plaintext of segment 0.
    pub(crate) first_plaintext: Vec<u8>,
    /// Segments after segment 0, or `None` when segment 0 was the last.
    pub(crate) rest: Option<SegmentReader<Chain<Cursor<Vec<u8>>, R>>>,
}

/// Reads until `buf` is full or the source ends; returns the bytes read.
fn read_up_to(source: &mut impl Read, buf: &mut [u8], offset: u64) -> Result<usize, DecryptError> {
    let mut filled = 0;
    while filled < buf.len() {
        match source.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(DecryptError::Read {
                    offset: offset + filled as u64,
                    source,
                })
            }
        }
    }
    Ok(filled)
}

/// Reads the header, finds the enabled key that opens segment 0 (as Tink does, trying each key
/// whose header length matches), and returns segment 0's plaintext with a reader for the rest.
pub(crate) fn open_stream<R: Read>(
    mut source: R,
    keyset: &Keyset,
    associated_data: &[u8],
) -> Result<OpenedStream<R>, DecryptError> {
    let mut len_byte = [0u8; 1];
    if read_up_to(&mut source, &mut len_byte, 0)? == 0 {
        return Err(DecryptError::BadHeader(HeaderProblem::Empty));
    }
    let header_len = usize::from(len_byte[0]);
    let candidates: Vec<&StreamingKey> = keyset
        .enabled_keys()
        .filter(|k| k.params().header_len() == header_len)
        .collect();
    if candidates.is_empty() {
        return Err(DecryptError::BadHeader(HeaderProblem::UnknownLength {
            found: len_byte[0],
        }));
    }
    let mut header_bytes = vec![0u8; header_len];
    header_bytes[0] = len_byte[0];
    let have = 1 + read_up_to(&mut source, &mut header_bytes[1..], 1)?;
    if have < header_len {
        return Err(DecryptError::BadHeader(HeaderProblem::Truncated {
            have,
            need: header_len,
        }));
    }
    let header = Header::from_bytes(&header_bytes);

    // Keys may differ in segment size: read enough for the longest segment 0, plus one byte to
    // learn whether the stream goes on after it.
    let longest = candidates
        .iter()
        .map(|k| k.params().first_segment_len())
        .max()
        .unwrap_or(0);
    let mut prefix = vec![0u8; longest + 1];
    let got = read_up_to(&mut source, &mut prefix, header_len as u64)?;
    prefix.truncate(got);

    let mut truncated_for_all = true;
    for key in &candidates {
        let params = *key.params();
        let first_len = params.first_segment_len();
        let chunk_len = prefix.len().min(first_len);
        let cipher = SegmentCipher::derive(key, &header, associated_data);
        let mut chunk = Chunk {
            index: 0,
            offset: header_len as u64,
            data: prefix[..chunk_len].to_vec(),
            is_final: prefix.len() <= first_len,
            // Segment 0 is always copied before opening, so both flags can be tried.
            is_penultimate: true,
        };
        match open_segment(&cipher, &mut chunk, first_len) {
            Ok(plaintext_len) => {
                chunk.data.truncate(plaintext_len);
                let rest = (!chunk.is_final).then(|| {
                    let leftover = Cursor::new(prefix[chunk_len..].to_vec());
                    SegmentReader::new(
                        leftover.chain(source),
                        params.segment_size(),
                        (header_len + first_len) as u64,
                    )
                });
                tracing::debug!(
                    key_id = key.id(),
                    kind = params.kind_name(),
                    "stream opened"
                );
                return Ok(OpenedStream {
                    cipher,
                    params,
                    key_id: key.id(),
                    first_plaintext: chunk.data,
                    rest,
                });
            }
            // The key opens segment 0 with the other last-segment flag: it is the right key and
            // the stream was cut or extended.
            Err(failure @ (SegmentFailure::MissingLastSegment | SegmentFailure::TrailingData)) => {
                return Err(DecryptError::Segment {
                    index: 0,
                    offset: header_len as u64,
                    failure,
                });
            }
            Err(SegmentFailure::Truncated) => {}
            Err(_) => truncated_for_all = false,
        }
    }
    if truncated_for_all {
        return Err(DecryptError::Segment {
            index: 0,
            offset: header_len as u64,
            failure: SegmentFailure::Truncated,
        });
    }
    Err(DecryptError::NoKeyMatched {
        keys_tried: candidates.len(),
    })
}

/// Where a segment sits in the stream: what its nonce and the last-segment retry depend on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SegmentPosition {
    pub(crate) index: u32,
    /// The stream ends right after this segment.
    pub(crate) is_final: bool,
    /// The next segment is the final one.
    pub(crate) is_penultimate: bool,
}

/// Verifies and decrypts one segment in place; returns its plaintext length.
///
/// When the segment is final or just before the final one and fails, it is tried again with the
/// opposite last-segment flag (on a copy, because a failed open wipes the buffer): success there
/// means the stream was truncated at a boundary or extended, not that the segment was modified.
pub(crate) fn open_segment(
    cipher: &SegmentCipher,
    chunk: &mut Chunk,
    full_len: usize,
) -> Result<usize, SegmentFailure> {
    let position = SegmentPosition {
        index: chunk.index,
        is_final: chunk.is_final,
        is_penultimate: chunk.is_penultimate,
    };
    open_segment_in(cipher, position, &mut chunk.data, full_len)
}

/// [`open_segment`] on a segment held in any buffer: the plaintext is left at its start.
pub(crate) fn open_segment_in(
    cipher: &SegmentCipher,
    position: SegmentPosition,
    segment: &mut [u8],
    full_len: usize,
) -> Result<usize, SegmentFailure> {
    if segment.len() < cipher.tag_len() {
        return Err(SegmentFailure::Truncated);
    }
    let full = segment.len() == full_len;
    let retry = if full && (position.is_final || position.is_penultimate) {
        Some(segment.to_vec())
    } else {
        None
    };
    match cipher.open(position.index, position.is_final, segment) {
        Ok(len) => Ok(len),
        Err(_) => {
            let flipped_opens = retry.is_some_and(|mut copy| {
                cipher
                    .open(position.index, !position.is_final, &mut copy)
                    .is_ok()
            });
            Err(match (position.is_final, flipped_opens) {
                (true, true) => SegmentFailure::MissingLastSegment,
                (true, false) => SegmentFailure::LastSegmentInvalid,
                (false, true) => SegmentFailure::TrailingData,
                (false, false) => SegmentFailure::TagMismatch,
            })
        }
    }
}

/// Converts a segment failure into the error naming that segment.
pub(crate) fn segment_error(chunk: &Chunk, failure: SegmentFailure) -> DecryptError {
    DecryptError::Segment {
        index: chunk.index,
        offset: chunk.offset,
        failure,
    }
}

/// Plaintext sink shared by both decryptors: writes, hashes (unless skipped) and counts.
pub(crate) struct PlaintextSink<'w, W: Write> {
    out: &'w mut W,
    digest: Option<digest::Context>,
    pub(crate) bytes: u64,
    pub(crate) segments: u64,
}

impl<'w, W: Write> PlaintextSink<'w, W> {
    pub(crate) fn new(out: &'w mut W) -> Self {
        PlaintextSink::hashing(out, true)
    }

    /// A sink that computes the plaintext SHA-256 only when `sha256` is true.
    pub(crate) fn hashing(out: &'w mut W, sha256: bool) -> Self {
        PlaintextSink {
            out,
            digest: sha256.then(|| digest::Context::new(&digest::SHA256)),
            bytes: 0,
            segments: 0,
        }
    }

    pub(crate) fn write_segment(&mut self, plaintext: &[u8]) -> Result<(), DecryptError> {
        self.write_unhashed(plaintext)?;
        if let Some(digest) = &mut self.digest {
            digest.update(plaintext);
        }
        Ok(())
    }

    /// Writes and counts a segment whose hashing the caller arranges (on another thread).
    pub(crate) fn write_unhashed(&mut self, plaintext: &[u8]) -> Result<(), DecryptError> {
        self.out
            .write_all(plaintext)
            .map_err(|source| DecryptError::Write { path: None, source })?;
        self.bytes += plaintext.len() as u64;
        self.segments += 1;
        Ok(())
    }

    /// Counts a segment that a worker already wrote to its place in the output file.
    pub(crate) fn record_placed(&mut self, plaintext_len: usize) {
        self.bytes += plaintext_len as u64;
        self.segments += 1;
    }

    /// The running digest, for a hashing thread to continue; give it back with `set_digest`.
    pub(crate) fn digest(&self) -> Option<digest::Context> {
        self.digest.clone()
    }

    pub(crate) fn set_digest(&mut self, digest: Option<digest::Context>) {
        self.digest = digest;
    }

    pub(crate) fn finish(self, key_id: u32) -> Result<DecryptReport, DecryptError> {
        self.out
            .flush()
            .map_err(|source| DecryptError::Write { path: None, source })?;
        let sha256 = self.digest.map(|digest| {
            let mut sha256 = [0u8; 32];
            sha256.copy_from_slice(digest.finish().as_ref());
            sha256
        });
        Ok(DecryptReport {
            plaintext_bytes: self.bytes,
            sha256,
            segments: self.segments,
            key_id,
        })
    }
}

/// Decrypts `source` into `out` on the calling thread, one segment at a time.
///
/// The reference path for the parallel pipeline. Only verified plaintext is written, but when
/// it fails after some segments, those segments have already reached `out`: use
/// [`crate::decrypt_to_file`] for all-or-nothing output.
pub fn decrypt_sequential<R: Read, W: Write>(
    source: R,
    keyset: &Keyset,
    associated_data: &[u8],
    out: &mut W,
) -> Result<DecryptReport, DecryptError> {
    let stream = open_stream(source, keyset, associated_data)?;
    let mut sink = PlaintextSink::new(out);
    sink.write_segment(&stream.first_plaintext)?;
    if let Some(mut rest) = stream.rest {
        let full_len = stream.params.segment_size();
        let mut spare = Vec::with_capacity(full_len);
        while let Some(mut chunk) = rest.next_chunk(|| Some(std::mem::take(&mut spare)))? {
            let len = open_segment(&stream.cipher, &mut chunk, full_len)
                .map_err(|f| segment_error(&chunk, f))?;
            sink.write_segment(&chunk.data[..len])?;
            spare = chunk.data;
        }
    }
    sink.finish(stream.key_id)
}
