//! Per-stream keys and per-segment encryption of both Tink streaming AEAD key types.
//!
//! A stream's header carries a random salt and nonce prefix; HKDF(key value, salt, info =
//! associated data) derives the stream's keys. Each segment is then sealed on its own under a
//! nonce made of the prefix, the segment index and a last-segment flag, so segments can be
//! processed in any order and on any thread.

use std::fmt;

use aes::cipher::{InnerIvInit, KeyInit, StreamCipher};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use ring::aead::{self, Aad, LessSafeKey, Nonce, Tag, UnboundKey};
use zeroize::Zeroizing;

use crate::keyset::StreamingKey;
use crate::params::{HashType, StreamingParams, CTR_HMAC_KEY_LEN, GCM_TAG_LEN, NONCE_PREFIX_LEN};

/// A segment's tag did not verify.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TagMismatch;

/// The stream header: length byte, salt and nonce prefix.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) salt: Vec<u8>,
    pub(crate) nonce_prefix: [u8; NONCE_PREFIX_LEN],
}

impl fmt::Debug for Header {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Header")
            .field("salt_len", &self.salt.len())
            .finish_non_exhaustive()
    }
}

impl Header {
    /// A fresh header with random salt and nonce prefix for keys with `params`.
    pub(crate) fn random(params: &StreamingParams) -> Result<Self, ring::error::Unspecified> {
        let mut salt = vec![0u8; params.derived_key_size()];
        let mut nonce_prefix = [0u8; NONCE_PREFIX_LEN];
        crate::random::fill(&mut salt)?;
        crate::random::fill(&mut nonce_prefix)?;
        Ok(Header { salt, nonce_prefix })
    }

    /// Splits a complete header (length byte included) whose length the caller checked.
    pub(crate) fn from_bytes(bytes: &[u8]) -> Self {
        let salt_end = bytes.len() - NONCE_PREFIX_LEN;
        let mut nonce_prefix = [0u8; NONCE_PREFIX_LEN];
        nonce_prefix.copy_from_slice(&bytes[salt_end..]);
        Header {
            salt: bytes[1..salt_end].to_vec(),
            nonce_prefix,
        }
    }

    /// The header bytes as written at the start of the ciphertext.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let len = 1 + self.salt.len() + NONCE_PREFIX_LEN;
        let mut out = Vec::with_capacity(len);
        // Header lengths are 24 or 40 (derived key size 16 or 32), so they fit one byte.
        out.push(len as u8);
        out.extend_from_slice(&self.salt);
        out.extend_from_slice(&self.nonce_prefix);
        out
    }
}

/// The keys of one stream, derived from a key, a header and the associated data.
// Built once per stream and shared by reference with the workers, so variant size is moot.
#[allow(clippy::large_enum_variant)]
pub(crate) enum SegmentCipher {
    Gcm {
        key: LessSafeKey,
        nonce_prefix: [u8; NONCE_PREFIX_LEN],
    },
    CtrHmac {
        aes: CtrAes,
        hmac: HmacKey,
        tag_len: usize,
        nonce_prefix: [u8; NONCE_PREFIX_LEN],
    },
}

/// An expanded AES key for CTR mode (zeroized on drop by the `aes` crate).
#[derive(Clone)]
#[allow(clippy::large_enum_variant)] // one per stream
pub(crate) enum CtrAes {
    Aes128(aes::Aes128),
    Aes256(aes::Aes256),
}

/// An HMAC key, keyed once per stream and cloned per segment.
#[derive(Clone)]
pub(crate) enum HmacKey {
    Sha1(Hmac<sha1::Sha1>),
    Sha256(Hmac<sha2::Sha256>),
    Sha512(Hmac<sha2::Sha512>),
}

impl fmt::Debug for SegmentCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SegmentCipher(<redacted>)")
    }
}

fn hkdf(hash: HashType, ikm: &[u8], salt: &[u8], info: &[u8], out: &mut [u8]) {
    // Output lengths here are at most 64 bytes, far below HKDF's 255 * hash-length limit.
    let result = match hash {
        HashType::Sha1 => Hkdf::<sha1::Sha1>::new(Some(salt), ikm).expand(info, out),
        HashType::Sha256 => Hkdf::<sha2::Sha256>::new(Some(salt), ikm).expand(info, out),
        HashType::Sha512 => Hkdf::<sha2::Sha512>::new(Some(salt), ikm).expand(info, out),
    };
    debug_assert!(result.is_ok(), "HKDF output length within limits");
}

impl SegmentCipher {
    /// Derives the stream's keys: HKDF(hash, ikm = key value, salt, info = associated data).
    pub(crate) fn derive(key: &StreamingKey, header: &Header, associated_data: &[u8]) -> Self {
        let params = key.params();
        let derived_len = params.derived_key_size();
        match params {
            StreamingParams::AesGcmHkdf(p) => {
                let mut derived = Zeroizing::new(vec![0u8; derived_len]);
                hkdf(
                    p.hkdf_hash,
                    key.key_value(),
                    &header.salt,
                    associated_data,
                    &mut derived,
                );
                let algorithm = if derived_len == 16 {
                    &aead::AES_128_GCM
                } else {
                    &aead::AES_256_GCM
                };
                // Validation pinned the derived key size to 16 or 32, the two lengths ring takes.
                let unbound = match UnboundKey::new(algorithm, &derived) {
                    Ok(k) => k,
                    Err(_) => unreachable_key_length(),
                };
                SegmentCipher::Gcm {
                    key: LessSafeKey::new(unbound),
                    nonce_prefix: header.nonce_prefix,
                }
            }
            StreamingParams::AesCtrHmac(p) => {
                let mut derived = Zeroizing::new(vec![0u8; derived_len + CTR_HMAC_KEY_LEN]);
                hkdf(
                    p.hkdf_hash,
                    key.key_value(),
                    &header.salt,
                    associated_data,
                    &mut derived,
                );
                let (aes_key, hmac_key) = derived.split_at(derived_len);
                let aes = match derived_len {
                    16 => aes::Aes128::new_from_slice(aes_key).map(CtrAes::Aes128),
                    _ => aes::Aes256::new_from_slice(aes_key).map(CtrAes::Aes256),
                };
                let aes = aes.unwrap_or_else(|_| unreachable_key_length());
                // HMAC accepts keys of any length.
                let hmac =
                    match p.hmac_hash {
                        HashType::Sha1 => {
                            <Hmac<sha1::Sha1> as Mac>::new_from_slice(hmac_key).map(HmacKey::Sha1)
                        }
                        HashType::Sha256 => <Hmac<sha2::Sha256> as Mac>::new_from_slice(hmac_key)
                            .map(HmacKey::Sha256),
                        HashType::Sha512 => <Hmac<sha2::Sha512> as Mac>::new_from_slice(hmac_key)
                            .map(HmacKey::Sha512),
                    };
                let hmac = hmac.unwrap_or_else(|_| unreachable_key_length());
                SegmentCipher::CtrHmac {
                    aes,
                    hmac,
                    tag_len: p.tag_size,
                    nonce_prefix: header.nonce_prefix,
                }
            }
        }
    }

    /// Bytes of tag at the end of each segment.
    pub(crate) fn tag_len(&self) -> usize {
        match self {
            SegmentCipher::Gcm { .. } => GCM_TAG_LEN,
            SegmentCipher::CtrHmac { tag_len, .. } => *tag_len,
        }
    }

    /// Encrypts `buf` (one segment's plaintext) in place and appends its tag.
    pub(crate) fn seal(&self, index: u32, last: bool, buf: &mut Vec<u8>) {
        match self {
            SegmentCipher::Gcm { key, nonce_prefix } => {
                let nonce = gcm_nonce(nonce_prefix, index, last);
                // ring fails only for inputs over 64 GiB; segments are at most 64 MiB.
                match key.seal_in_place_separate_tag(nonce, Aad::empty(), buf) {
                    Ok(tag) => buf.extend_from_slice(tag.as_ref()),
                    Err(_) => unreachable_key_length(),
                }
            }
            SegmentCipher::CtrHmac {
                aes,
                hmac,
                tag_len,
                nonce_prefix,
            } => {
                let iv = ctr_iv(nonce_prefix, index, last);
                apply_ctr(aes, &iv, buf);
                let tag = hmac_tag(hmac, &iv, buf);
                buf.extend_from_slice(&tag[..*tag_len]);
            }
        }
    }

    /// Verifies and decrypts one segment (ciphertext followed by its tag) in place; returns the
    /// plaintext length. Nothing in `segment` is plaintext unless this returns `Ok`.
    pub(crate) fn open(
        &self,
        index: u32,
        last: bool,
        segment: &mut [u8],
    ) -> Result<usize, TagMismatch> {
        let tag_len = self.tag_len();
        let Some(body_len) = segment.len().checked_sub(tag_len) else {
            return Err(TagMismatch);
        };
        let (body, tag) = segment.split_at_mut(body_len);
        match self {
            SegmentCipher::Gcm { key, nonce_prefix } => {
                let nonce = gcm_nonce(nonce_prefix, index, last);
                let tag: [u8; GCM_TAG_LEN] = tag.try_into().map_err(|_| TagMismatch)?;
                key.open_in_place_separate_tag(nonce, Aad::empty(), Tag::from(tag), body, 0..)
                    .map_err(|_| TagMismatch)?;
            }
            SegmentCipher::CtrHmac {
                aes,
                hmac,
                nonce_prefix,
                ..
            } => {
                let iv = ctr_iv(nonce_prefix, index, last);
                verify_hmac(hmac, &iv, body, tag)?;
                apply_ctr(aes, &iv, body);
            }
        }
        Ok(body_len)
    }
}

#[cold]
fn unreachable_key_length() -> ! {
    // Key lengths are validated when a keyset is parsed; reaching this is a bug in veil-seal.
    panic!("veil-seal: key length was validated at keyset parse time")
}

/// GCM nonce: prefix (7) || index (4, big-endian) || last flag (1).
fn gcm_nonce(prefix: &[u8; NONCE_PREFIX_LEN], index: u32, last: bool) -> Nonce {
    let mut nonce = [0u8; 12];
    nonce[..7].copy_from_slice(prefix);
    nonce[7..11].copy_from_slice(&index.to_be_bytes());
    nonce[11] = u8::from(last);
    Nonce::assume_unique_for_key(nonce)
}

/// CTR initial counter block: prefix (7) || index (4, big-endian) || last flag (1) || 0 (4).
fn ctr_iv(prefix: &[u8; NONCE_PREFIX_LEN], index: u32, last: bool) -> [u8; 16] {
    let mut iv = [0u8; 16];
    iv[..7].copy_from_slice(prefix);
    iv[7..11].copy_from_slice(&index.to_be_bytes());
    iv[11] = u8::from(last);
    iv
}

fn apply_ctr(aes: &CtrAes, iv: &[u8; 16], buf: &mut [u8]) {
    match aes {
        CtrAes::Aes128(k) => {
            let core = ctr::CtrCore::<aes::Aes128, ctr::flavors::Ctr128BE>::inner_iv_init(
                k.clone(),
                iv.into(),
            );
            ctr::Ctr128BE::<aes::Aes128>::from_core(core).apply_keystream(buf)
        }
        CtrAes::Aes256(k) => {
            let core = ctr::CtrCore::<aes::Aes256, ctr::flavors::Ctr128BE>::inner_iv_init(
                k.clone(),
                iv.into(),
            );
            ctr::Ctr128BE::<aes::Aes256>::from_core(core).apply_keystream(buf)
        }
    }
}

/// HMAC(iv || ciphertext), full length; the caller truncates.
fn hmac_tag(hmac: &HmacKey, iv: &[u8], body: &[u8]) -> Zeroizing<Vec<u8>> {
    fn run<M: Mac + Clone>(m: &M, iv: &[u8], body: &[u8]) -> Zeroizing<Vec<u8>> {
        let mut m = m.clone();
        m.update(iv);
        m.update(body);
        Zeroizing::new(m.finalize().into_bytes().to_vec())
    }
    match hmac {
        HmacKey::Sha1(m) => run(m, iv, body),
        HmacKey::Sha256(m) => run(m, iv, body),
        HmacKey::Sha512(m) => run(m, iv, body),
    }
}

/// Checks a truncated HMAC tag in constant time.
fn verify_hmac(hmac: &HmacKey, iv: &[u8], body: &[u8], tag: &[u8]) -> Result<(), TagMismatch> {
    fn run<M: Mac + Clone>(m: &M, iv: &[u8], body: &[u8], tag: &[u8]) -> Result<(), TagMismatch> {
        let mut m = m.clone();
        m.update(iv);
        m.update(body);
        m.verify_truncated_left(tag).map_err(|_| TagMismatch)
    }
    match hmac {
        HmacKey::Sha1(m) => run(m, iv, body, tag),
        HmacKey::Sha256(m) => run(m, iv, body, tag),
        HmacKey::Sha512(m) => run(m, iv, body, tag),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::KeyTemplate;

    fn cipher(template: KeyTemplate, aad: &[u8]) -> (SegmentCipher, Header) {
        let key = StreamingKey::generate(1, template).unwrap();
        let header = Header::random(key.params()).unwrap();
        (SegmentCipher::derive(&key, &header, aad), header)
    }

    #[test]
    fn segments_open_only_with_their_index_and_flag() {
        for template in [
            KeyTemplate::Aes128GcmHkdf4Kb,
            KeyTemplate::Aes256CtrHmacSha2564Kb,
        ] {
            let (c, _) = cipher(template, b"aad");
            let mut seg = b"hello segment".to_vec();
            c.seal(3, false, &mut seg);
            assert_eq!(seg.len(), 13 + c.tag_len());
            assert_eq!(c.open(3, true, &mut seg.clone()), Err(TagMismatch));
            assert_eq!(c.open(4, false, &mut seg.clone()), Err(TagMismatch));
            let mut ok = seg.clone();
            assert_eq!(c.open(3, false, &mut ok), Ok(13));
            assert_eq!(&ok[..13], b"hello segment");
        }
    }

    #[test]
    fn header_round_trips() {
        let (_, header) = cipher(KeyTemplate::Aes256GcmHkdf1Mb, b"");
        let bytes = header.to_bytes();
        assert_eq!(bytes.len(), 40);
        assert_eq!(bytes[0], 40);
        assert_eq!(Header::from_bytes(&bytes), header);
    }
}
