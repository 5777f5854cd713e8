//! Sealed models: Tink-compatible streaming AEAD, keysets and a parallel decrypting pipeline.
//!
//! A model owner seals a model once with a Tink streaming AEAD keyset; veil's guest agent opens
//! it with [`decrypt_to_file`], using every vCPU, after the key broker released the keyset. The
//! format is Google Tink's, byte for byte, so files sealed by Tink open here and the reverse.
//!
//! # Byte layout
//!
//! ```text
//! ciphertext = header || C_0 || C_1 || ... || C_{n-1}
//! header     = L (1 byte, = len(header)) || salt (D bytes) || nonce_prefix (7 bytes)
//!              D = derived key size (16 or 32), so L = 24 or 40
//! C_i        = body_i || tag_i       every segment is `segment_size` bytes long, except:
//!              C_0 is `segment_size - L` bytes long (the header counts in the first segment),
//!              C_{n-1} may be shorter (but holds at least its tag);
//!              an empty plaintext is one segment with an empty body.
//! ```
//!
//! Per-stream keys: `HKDF(hash, ikm = key value, salt = salt, info = associated data)`.
//!
//! * AES-GCM-HKDF: HKDF yields a D-byte AES key; `C_i = AES-GCM(key, nonce_i, M_i, aad = "")`
//!   with a 16-byte tag and `nonce_i = nonce_prefix || i (u32 big-endian) || last (1 byte: 1
//!   for the last segment, else 0)`.
//! * AES-CTR-HMAC: HKDF yields D + 32 bytes: the AES key, then the HMAC key.
//!   `iv_i = nonce_prefix || i (u32 BE) || last (1 byte) || 0u32`; `body_i = AES-CTR(key,
//!   iv_i, M_i)`; `tag_i = HMAC(hash, hmac key, iv_i || body_i)` truncated to the tag size.
//!
//! The segment index stops reordering, the last-segment flag stops truncation at a segment
//! boundary, and the associated data (HKDF info) binds the stream to its name. Each segment's
//! plaintext is released only after its tag verifies.
//!
//! # Limits checked before decoding
//!
//! Keysets larger than [`keyset::MAX_KEYSET_LEN`] or with more than [`keyset::MAX_KEYS`] keys,
//! segment sizes above [`params::MAX_SEGMENT_SIZE`] (which bounds the pipeline's memory), key
//! values above [`params::MAX_KEY_VALUE_LEN`], and streams of more than 2^32 segments are
//! refused.
//!
//! # Entry points
//!
//! * [`Keyset::parse`] / [`Keyset::from_json`] / [`Keyset::from_binary`], [`Keyset::generate`]
//!   with a [`KeyTemplate`].
//! * [`decrypt_to_file`] (parallel, all or nothing, SHA-256 of the plaintext, typed errors),
//!   [`decrypt_to_writer`], [`decrypt_sequential`].
//! * [`decrypt_file_to_file`]: the same from a sealed regular file; without the digest, every
//!   worker reads and writes its own segments at their offsets, so the copies scale too.
//! * [`EncryptingWriter`] and [`encrypt`].
//! * [`inspect`] for header facts and sizes without a key.

#![forbid(unsafe_code)]

mod cipher;
mod decrypt;
mod encrypt;
mod error;
pub mod fuzz_entry;
mod inspect;
pub mod keyset;
pub mod params;
mod pipeline;
mod positional;
mod proto;
mod random;
mod reader;

pub use decrypt::{decrypt_sequential, DecryptReport};
pub use encrypt::{encrypt, EncryptReport, EncryptingWriter};
pub use error::{DecryptError, EncryptError, HeaderProblem, SegmentFailure};
pub use inspect::{inspect, InspectError, StreamInfo, StreamLayout};
pub use keyset::{KeyStatus, Keyset, KeysetError, StreamingKey};
pub use params::{HashType, KeyTemplate, StreamingParams};
pub use pipeline::{
    decrypt_to_file, decrypt_to_writer, DecryptOptions, ProgressFn, BUFFERS_PER_WORKER,
};
pub use positional::decrypt_file_to_file;

/// Lowercase hex of `bytes` (digests, ids; never key material).
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses a SHA-256 digest written as 64 hex digits.
pub fn parse_sha256_hex(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}
