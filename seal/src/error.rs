//! Errors of decryption, named after what failed.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Why one segment was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegmentFailure {
    /// The tag does not match: the segment was modified, or segments were reordered,
    /// duplicated or removed.
    TagMismatch,
    /// The stream ends before this segment's tag is complete.
    Truncated,
    /// The final segment received does not authenticate as a last segment: it was modified,
    /// the stream was cut inside it, or bytes were appended to it.
    LastSegmentInvalid,
    /// The stream ends after this segment, which is intact but not marked last: the ciphertext
    /// was truncated at a segment boundary.
    MissingLastSegment,
    /// This segment is intact and marked last, but more bytes follow it.
    TrailingData,
}

impl fmt::Display for SegmentFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SegmentFailure::TagMismatch => {
                "authentication tag mismatch: the segment was modified, or segments were reordered, duplicated or removed"
            }
            SegmentFailure::Truncated => "the stream ends inside this segment, before its tag: the ciphertext is truncated",
            SegmentFailure::LastSegmentInvalid => {
                "the final segment does not authenticate: it was modified, the stream was cut inside it, or bytes were appended to it"
            }
            SegmentFailure::MissingLastSegment => {
                "the stream ends after this segment but it is not the last one: the ciphertext was truncated at a segment boundary"
            }
            SegmentFailure::TrailingData => "this is the last segment but more bytes follow it: data was appended to the ciphertext",
        })
    }
}

/// Why the stream header was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderProblem {
    /// The source holds no bytes at all.
    Empty,
    /// The first byte (the header length) fits no enabled key of the keyset.
    UnknownLength {
        /// Header length byte found.
        found: u8,
    },
    /// The source ends inside the header.
    Truncated {
        /// Bytes present.
        have: usize,
        /// Header length.
        need: usize,
    },
}

impl fmt::Display for HeaderProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderProblem::Empty => f.write_str("the ciphertext is empty"),
            HeaderProblem::UnknownLength { found } => write!(
                f,
                "header length byte {found} fits no enabled key of the keyset (Tink headers are 24 or 40 bytes); \
                 the file is not a Tink streaming ciphertext, or its first byte was modified"
            ),
            HeaderProblem::Truncated { have, need } => {
                write!(f, "the ciphertext ends inside the {need}-byte header after {have} bytes")
            }
        }
    }
}

/// Why decryption failed. When decrypting to a file, no output file is left behind.
#[derive(Debug, thiserror::Error)]
pub enum DecryptError {
    /// The stream header is malformed.
    #[error("bad header: {0}")]
    BadHeader(HeaderProblem),
    /// No enabled key opens the first segment.
    #[error(
        "no key matched: none of the {keys_tried} enabled key(s) opens segment 0; wrong keyset, wrong associated \
         data, or the header or first segment was modified"
    )]
    NoKeyMatched {
        /// Number of enabled keys tried.
        keys_tried: usize,
    },
    /// A segment was rejected.
    #[error("segment {index} (ciphertext offset {offset}) rejected: {failure}")]
    Segment {
        /// Segment index (0-based).
        index: u32,
        /// Offset of the segment's first byte in the ciphertext (header included).
        offset: u64,
        /// What is wrong with it.
        failure: SegmentFailure,
    },
    /// The stream has more segments than Tink's 32-bit segment counter allows.
    #[error("the ciphertext has more than 2^32 segments, more than the format allows")]
    TooManySegments,
    /// Reading the ciphertext failed.
    #[error("reading the ciphertext failed at offset {offset}: {source}")]
    Read {
        /// Ciphertext offset of the failed read.
        offset: u64,
        /// The I/O error.
        source: io::Error,
    },
    /// Writing the plaintext failed.
    #[error("writing the plaintext to {} failed: {source}", path.as_ref().map_or("the output".into(), |p| p.display().to_string()))]
    Write {
        /// Output path, when writing a file.
        path: Option<PathBuf>,
        /// The I/O error.
        source: io::Error,
    },
    /// The plaintext decrypted correctly but its SHA-256 is not the expected one.
    #[error("plaintext SHA-256 is {actual}, expected {expected}: the keyset opens a different model than the one approved")]
    DigestMismatch {
        /// Expected digest, hex.
        expected: String,
        /// Digest of the decrypted plaintext, hex.
        actual: String,
    },
    /// A decryption worker thread could not be started or panicked.
    #[error("decryption worker failed: {0}")]
    Worker(String),
}

impl DecryptError {
    /// The segment failure, when the error is about one segment.
    pub fn segment_failure(&self) -> Option<(u32, SegmentFailure)> {
        match self {
            DecryptError::Segment { index, failure, .. } => Some((*index, *failure)),
            _ => None,
        }
    }
}

/// Why encryption failed.
#[derive(Debug, thiserror::Error)]
pub enum EncryptError {
    /// The keyset names no enabled primary key.
    #[error(
        "the keyset has no enabled primary key (primaryKeyId {primary_key_id}); set one to encrypt"
    )]
    NoPrimaryKey {
        /// The keyset's primary key id.
        primary_key_id: u32,
    },
    /// The system random generator failed.
    #[error("system random number generator failed")]
    Random,
    /// The plaintext needs more than 2^32 segments.
    #[error("the plaintext needs more than 2^32 segments; use a key with larger segments")]
    TooManySegments,
    /// Reading the plaintext failed.
    #[error("reading the plaintext failed: {0}")]
    Read(#[source] io::Error),
    /// Writing the ciphertext failed.
    #[error("writing the ciphertext failed: {0}")]
    Write(#[source] io::Error),
}
