//! Parameters of the two Tink streaming AEAD key types, their validation, and Tink's key
//! templates.

use std::fmt;
use std::str::FromStr;

use crate::proto::HashTypeProto;

/// Type URL of Tink's AES-GCM-HKDF streaming key.
pub const AES_GCM_HKDF_TYPE_URL: &str =
    "type.googleapis.com/google.crypto.tink.AesGcmHkdfStreamingKey";
/// Type URL of Tink's AES-CTR-HMAC streaming key.
pub const AES_CTR_HMAC_TYPE_URL: &str =
    "type.googleapis.com/google.crypto.tink.AesCtrHmacStreamingKey";

/// Largest ciphertext segment veil accepts. Tink allows up to 2^31 - 1, but the decrypting
/// pipeline holds a few segments per worker in memory, so a hostile keyset with a 2 GiB segment
/// size would exhaust guest RAM. Tink's own templates use 4 KiB and 1 MiB.
pub const MAX_SEGMENT_SIZE: u32 = 64 << 20;
/// Largest HKDF input key material accepted (Tink's templates use 16 or 32 bytes).
pub const MAX_KEY_VALUE_LEN: usize = 1024;
/// Bytes of the random nonce prefix in every header.
pub const NONCE_PREFIX_LEN: usize = 7;
/// Bytes of the AES-GCM tag closing every AES-GCM-HKDF segment.
pub const GCM_TAG_LEN: usize = 16;
/// Bytes of the HMAC key derived next to the AES key for AES-CTR-HMAC.
pub const CTR_HMAC_KEY_LEN: usize = 32;

/// A hash function allowed in streaming AEAD keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HashType {
    /// SHA-1 (HKDF and HMAC; legacy keys only).
    Sha1,
    /// SHA-256.
    Sha256,
    /// SHA-512.
    Sha512,
}

impl HashType {
    /// Output size of the hash in bytes (the largest HMAC tag it allows).
    pub fn output_len(self) -> usize {
        match self {
            HashType::Sha1 => 20,
            HashType::Sha256 => 32,
            HashType::Sha512 => 64,
        }
    }

    pub(crate) fn from_proto(value: i32) -> Result<Self, ParamsError> {
        match HashTypeProto::try_from(value) {
            Ok(HashTypeProto::Sha1) => Ok(HashType::Sha1),
            Ok(HashTypeProto::Sha256) => Ok(HashType::Sha256),
            Ok(HashTypeProto::Sha512) => Ok(HashType::Sha512),
            _ => Err(ParamsError::UnsupportedHash(value)),
        }
    }

    pub(crate) fn to_proto(self) -> i32 {
        match self {
            HashType::Sha1 => HashTypeProto::Sha1 as i32,
            HashType::Sha256 => HashTypeProto::Sha256 as i32,
            HashType::Sha512 => HashTypeProto::Sha512 as i32,
        }
    }
}

impl fmt::Display for HashType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HashType::Sha1 => "SHA1",
            HashType::Sha256 => "SHA256",
            HashType::Sha512 => "SHA512",
        })
    }
}

/// Why a key's parameters cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParamsError {
    /// The hash enum value is not SHA1, SHA256 or SHA512.
    #[error("hash type {0} is not allowed for streaming AEAD keys (use SHA1, SHA256 or SHA512)")]
    UnsupportedHash(i32),
    /// The derived key size is neither 16 nor 32.
    #[error("derived key size {0} is not allowed (use 16 or 32 bytes)")]
    DerivedKeySize(u32),
    /// The key value is shorter than the derived key or absurdly long.
    #[error("key value of {len} bytes is not allowed (need {min} to {max} bytes)")]
    KeyValueLength {
        /// Length found.
        len: usize,
        /// Smallest allowed (the derived key size).
        min: usize,
        /// Largest allowed.
        max: usize,
    },
    /// The segment is too small to hold the header and a tag, or larger than veil allows.
    #[error("ciphertext segment size {size} is not allowed (need {min} to {max} bytes)")]
    SegmentSize {
        /// Size found.
        size: u32,
        /// Smallest allowed for this key.
        min: u32,
        /// Largest allowed ([`MAX_SEGMENT_SIZE`]).
        max: u32,
    },
    /// The HMAC tag size is outside 10..=hash output size.
    #[error("HMAC tag size {size} is not allowed with {hash} (use 10 to {max} bytes)")]
    TagSize {
        /// Size found.
        size: u32,
        /// Hash of the HMAC.
        hash: HashType,
        /// Largest allowed.
        max: usize,
    },
    /// The key's version is newer than Tink's version 0.
    #[error("key version {0} is not supported (only version 0 exists)")]
    Version(u32),
    /// A required params message is absent.
    #[error("key has no parameters")]
    MissingParams,
}

/// Parameters of an AES-GCM-HKDF streaming key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GcmHkdfParams {
    /// Size of each ciphertext segment (the first one includes the header).
    pub segment_size: u32,
    /// AES key size derived per stream: 16 or 32.
    pub derived_key_size: usize,
    /// Hash used by HKDF.
    pub hkdf_hash: HashType,
}

/// Parameters of an AES-CTR-HMAC streaming key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtrHmacParams {
    /// Size of each ciphertext segment (the first one includes the header).
    pub segment_size: u32,
    /// AES key size derived per stream: 16 or 32.
    pub derived_key_size: usize,
    /// Hash used by HKDF.
    pub hkdf_hash: HashType,
    /// Hash used by the per-segment HMAC.
    pub hmac_hash: HashType,
    /// Bytes of the truncated HMAC tag closing every segment.
    pub tag_size: usize,
}

/// Parameters of either streaming AEAD key type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamingParams {
    /// AES-GCM-HKDF streaming.
    AesGcmHkdf(GcmHkdfParams),
    /// AES-CTR-HMAC streaming.
    AesCtrHmac(CtrHmacParams),
}

impl StreamingParams {
    /// Ciphertext segment size (the first segment includes the header).
    pub fn segment_size(&self) -> usize {
        self.segment_size_u32() as usize
    }

    fn segment_size_u32(&self) -> u32 {
        match self {
            StreamingParams::AesGcmHkdf(p) => p.segment_size,
            StreamingParams::AesCtrHmac(p) => p.segment_size,
        }
    }

    /// Size of the per-stream AES key.
    pub fn derived_key_size(&self) -> usize {
        match self {
            StreamingParams::AesGcmHkdf(p) => p.derived_key_size,
            StreamingParams::AesCtrHmac(p) => p.derived_key_size,
        }
    }

    /// Hash used by HKDF.
    pub fn hkdf_hash(&self) -> HashType {
        match self {
            StreamingParams::AesGcmHkdf(p) => p.hkdf_hash,
            StreamingParams::AesCtrHmac(p) => p.hkdf_hash,
        }
    }

    /// Bytes of authentication tag at the end of every segment.
    pub fn tag_len(&self) -> usize {
        match self {
            StreamingParams::AesGcmHkdf(_) => GCM_TAG_LEN,
            StreamingParams::AesCtrHmac(p) => p.tag_size,
        }
    }

    /// Header length: one length byte, the salt (derived key size) and the nonce prefix.
    pub fn header_len(&self) -> usize {
        1 + self.derived_key_size() + NONCE_PREFIX_LEN
    }

    /// Ciphertext bytes of segment 0 (the header is counted in the first segment).
    pub fn first_segment_len(&self) -> usize {
        self.segment_size() - self.header_len()
    }

    /// Plaintext bytes held by a full segment 0.
    pub fn first_plaintext_len(&self) -> usize {
        self.first_segment_len() - self.tag_len()
    }

    /// Plaintext bytes held by a full segment other than the first.
    pub fn plaintext_len(&self) -> usize {
        self.segment_size() - self.tag_len()
    }

    /// Tink type URL of keys with these parameters.
    pub fn type_url(&self) -> &'static str {
        match self {
            StreamingParams::AesGcmHkdf(_) => AES_GCM_HKDF_TYPE_URL,
            StreamingParams::AesCtrHmac(_) => AES_CTR_HMAC_TYPE_URL,
        }
    }

    /// Short name of the key type, for logs and `inspect`.
    pub fn kind_name(&self) -> &'static str {
        match self {
            StreamingParams::AesGcmHkdf(_) => "AES-GCM-HKDF",
            StreamingParams::AesCtrHmac(_) => "AES-CTR-HMAC",
        }
    }

    /// Ciphertext length of a plaintext of `plaintext_len` bytes, or `None` on overflow.
    pub fn ciphertext_len(&self, plaintext_len: u64) -> Option<u64> {
        let first = self.first_plaintext_len() as u64;
        let rest = plaintext_len.saturating_sub(first);
        let full = self.plaintext_len() as u64;
        let extra_segments = rest.div_ceil(full);
        let overhead = (self.header_len() as u64)
            .checked_add((extra_segments.checked_add(1)?).checked_mul(self.tag_len() as u64)?)?;
        plaintext_len.checked_add(overhead)
    }

    /// Plaintext length of a `ciphertext_len` long stream made with these parameters, or `None`
    /// when no such stream has that length (shorter than a header and a tag, or a last segment
    /// too short for its tag): the inverse of [`StreamingParams::ciphertext_len`].
    pub fn plaintext_len_of(&self, ciphertext_len: u64) -> Option<u64> {
        if ciphertext_len < self.header_len() as u64 {
            return None;
        }
        let info = crate::inspect::StreamInfo {
            header_len: self.header_len(),
            derived_key_size: self.derived_key_size(),
            ciphertext_bytes: ciphertext_len,
        };
        info.layout(self).map(|layout| layout.plaintext_bytes)
    }

    /// Checks these parameters and a key value of `key_len` bytes against Tink's rules and
    /// veil's size limits.
    pub fn validate(&self, key_len: usize) -> Result<(), ParamsError> {
        let derived = self.derived_key_size();
        if derived != 16 && derived != 32 {
            return Err(ParamsError::DerivedKeySize(derived as u32));
        }
        if key_len < derived || key_len > MAX_KEY_VALUE_LEN {
            return Err(ParamsError::KeyValueLength {
                len: key_len,
                min: derived,
                max: MAX_KEY_VALUE_LEN,
            });
        }
        if let StreamingParams::AesCtrHmac(p) = self {
            let max = p.hmac_hash.output_len();
            if p.tag_size < 10 || p.tag_size > max {
                return Err(ParamsError::TagSize {
                    size: p.tag_size as u32,
                    hash: p.hmac_hash,
                    max,
                });
            }
        }
        // The first segment must hold the header, a tag and at least one plaintext byte.
        let min = (self.header_len() + self.tag_len() + 1) as u32;
        let size = self.segment_size_u32();
        if size < min || size > MAX_SEGMENT_SIZE {
            return Err(ParamsError::SegmentSize {
                size,
                min,
                max: MAX_SEGMENT_SIZE,
            });
        }
        Ok(())
    }
}

/// Tink's predefined streaming AEAD key templates. The default is veil's choice for new seals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum KeyTemplate {
    /// 16-byte key, SHA256 HKDF, 4 KiB segments.
    Aes128GcmHkdf4Kb,
    /// 16-byte key, SHA256 HKDF, 1 MiB segments.
    Aes128GcmHkdf1Mb,
    /// 32-byte key, SHA256 HKDF, 4 KiB segments.
    Aes256GcmHkdf4Kb,
    /// 32-byte key, SHA256 HKDF, 1 MiB segments: veil's default for new seals.
    #[default]
    Aes256GcmHkdf1Mb,
    /// 16-byte key, SHA256 HKDF, HMAC-SHA256 32-byte tags, 4 KiB segments.
    Aes128CtrHmacSha2564Kb,
    /// 16-byte key, SHA256 HKDF, HMAC-SHA256 32-byte tags, 1 MiB segments.
    Aes128CtrHmacSha2561Mb,
    /// 32-byte key, SHA256 HKDF, HMAC-SHA256 32-byte tags, 4 KiB segments.
    Aes256CtrHmacSha2564Kb,
    /// 32-byte key, SHA256 HKDF, HMAC-SHA256 32-byte tags, 1 MiB segments.
    Aes256CtrHmacSha2561Mb,
}

impl KeyTemplate {
    /// Every template, in Tink's order.
    pub const ALL: [KeyTemplate; 8] = [
        KeyTemplate::Aes128GcmHkdf4Kb,
        KeyTemplate::Aes128GcmHkdf1Mb,
        KeyTemplate::Aes256GcmHkdf4Kb,
        KeyTemplate::Aes256GcmHkdf1Mb,
        KeyTemplate::Aes128CtrHmacSha2564Kb,
        KeyTemplate::Aes128CtrHmacSha2561Mb,
        KeyTemplate::Aes256CtrHmacSha2564Kb,
        KeyTemplate::Aes256CtrHmacSha2561Mb,
    ];

    /// Tink's name of the template, e.g. `AES256_GCM_HKDF_1MB`.
    pub fn tink_name(self) -> &'static str {
        match self {
            KeyTemplate::Aes128GcmHkdf4Kb => "AES128_GCM_HKDF_4KB",
            KeyTemplate::Aes128GcmHkdf1Mb => "AES128_GCM_HKDF_1MB",
            KeyTemplate::Aes256GcmHkdf4Kb => "AES256_GCM_HKDF_4KB",
            KeyTemplate::Aes256GcmHkdf1Mb => "AES256_GCM_HKDF_1MB",
            KeyTemplate::Aes128CtrHmacSha2564Kb => "AES128_CTR_HMAC_SHA256_4KB",
            KeyTemplate::Aes128CtrHmacSha2561Mb => "AES128_CTR_HMAC_SHA256_1MB",
            KeyTemplate::Aes256CtrHmacSha2564Kb => "AES256_CTR_HMAC_SHA256_4KB",
            KeyTemplate::Aes256CtrHmacSha2561Mb => "AES256_CTR_HMAC_SHA256_1MB",
        }
    }

    /// The command-line spelling, e.g. `aes256-gcm-hkdf-1mb`.
    pub fn cli_name(self) -> String {
        self.tink_name().to_ascii_lowercase().replace('_', "-")
    }

    /// Bytes of key material a key from this template holds.
    pub fn key_size(self) -> usize {
        self.params().derived_key_size()
    }

    /// Parameters of keys made from this template.
    pub fn params(self) -> StreamingParams {
        const KB4: u32 = 4096;
        const MB1: u32 = 1 << 20;
        let gcm = |derived_key_size, segment_size| {
            StreamingParams::AesGcmHkdf(GcmHkdfParams {
                segment_size,
                derived_key_size,
                hkdf_hash: HashType::Sha256,
            })
        };
        let ctr = |derived_key_size, segment_size| {
            StreamingParams::AesCtrHmac(CtrHmacParams {
                segment_size,
                derived_key_size,
                hkdf_hash: HashType::Sha256,
                hmac_hash: HashType::Sha256,
                tag_size: 32,
            })
        };
        match self {
            KeyTemplate::Aes128GcmHkdf4Kb => gcm(16, KB4),
            KeyTemplate::Aes128GcmHkdf1Mb => gcm(16, MB1),
            KeyTemplate::Aes256GcmHkdf4Kb => gcm(32, KB4),
            KeyTemplate::Aes256GcmHkdf1Mb => gcm(32, MB1),
            KeyTemplate::Aes128CtrHmacSha2564Kb => ctr(16, KB4),
            KeyTemplate::Aes128CtrHmacSha2561Mb => ctr(16, MB1),
            KeyTemplate::Aes256CtrHmacSha2564Kb => ctr(32, KB4),
            KeyTemplate::Aes256CtrHmacSha2561Mb => ctr(32, MB1),
        }
    }
}

impl fmt::Display for KeyTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.cli_name())
    }
}

/// A template name that matches none of Tink's streaming AEAD templates.
#[derive(Debug, thiserror::Error)]
#[error("unknown key template {name:?}; known templates: {known}")]
pub struct UnknownTemplate {
    name: String,
    known: String,
}

impl FromStr for KeyTemplate {
    type Err = UnknownTemplate;

    /// Accepts Tink's name (`AES256_GCM_HKDF_1MB`) or the CLI form (`aes256-gcm-hkdf-1mb`).
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        let wanted = name.trim().to_ascii_uppercase().replace('-', "_");
        KeyTemplate::ALL
            .into_iter()
            .find(|t| t.tink_name() == wanted)
            .ok_or_else(|| UnknownTemplate {
                name: name.to_string(),
                known: KeyTemplate::ALL
                    .iter()
                    .map(|t| t.cli_name())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_names_round_trip_in_both_spellings() {
        for t in KeyTemplate::ALL {
            assert_eq!(t.tink_name().parse::<KeyTemplate>().unwrap(), t);
            assert_eq!(t.cli_name().parse::<KeyTemplate>().unwrap(), t);
            t.params().validate(t.key_size()).unwrap();
        }
        assert!("aes512-gcm".parse::<KeyTemplate>().is_err());
    }

    #[test]
    fn segment_layout_of_the_default_template() {
        let p = KeyTemplate::Aes256GcmHkdf1Mb.params();
        assert_eq!(p.header_len(), 40);
        assert_eq!(p.first_plaintext_len(), (1 << 20) - 40 - 16);
        assert_eq!(p.plaintext_len(), (1 << 20) - 16);
        assert_eq!(p.ciphertext_len(0), Some(56));
        assert_eq!(
            p.ciphertext_len(p.first_plaintext_len() as u64),
            Some(1 << 20)
        );
        assert_eq!(
            p.ciphertext_len(p.first_plaintext_len() as u64 + 1),
            Some((1 << 20) + 17)
        );
    }

    #[test]
    fn plaintext_len_of_inverts_ciphertext_len_and_refuses_impossible_lengths() {
        for template in KeyTemplate::ALL {
            let p = template.params();
            let first = p.first_plaintext_len() as u64;
            let full = p.plaintext_len() as u64;
            for plaintext in [0, 1, first, first + 1, first + full, first + 3 * full + 7] {
                let sealed = p.ciphertext_len(plaintext).unwrap();
                assert_eq!(p.plaintext_len_of(sealed), Some(plaintext), "{template:?}");
            }
            // Shorter than a header, or a last segment shorter than its tag.
            assert_eq!(p.plaintext_len_of(3), None);
            assert_eq!(p.plaintext_len_of(p.header_len() as u64), None);
            let one_segment_over = p.ciphertext_len(first).unwrap() + 1;
            assert_eq!(p.plaintext_len_of(one_segment_over), None);
        }
    }

    #[test]
    fn validation_rejects_what_tink_rejects_and_huge_segments() {
        let mut p = match KeyTemplate::Aes128CtrHmacSha2564Kb.params() {
            StreamingParams::AesCtrHmac(p) => p,
            StreamingParams::AesGcmHkdf(_) => unreachable!(),
        };
        p.tag_size = 33;
        assert!(matches!(
            StreamingParams::AesCtrHmac(p).validate(16),
            Err(ParamsError::TagSize { .. })
        ));
        p.tag_size = 9;
        assert!(matches!(
            StreamingParams::AesCtrHmac(p).validate(16),
            Err(ParamsError::TagSize { .. })
        ));
        let gcm = |segment_size, derived_key_size| {
            StreamingParams::AesGcmHkdf(GcmHkdfParams {
                segment_size,
                derived_key_size,
                hkdf_hash: HashType::Sha256,
            })
        };
        assert!(matches!(
            gcm(40, 16).validate(16),
            Err(ParamsError::SegmentSize { .. })
        ));
        assert!(matches!(
            gcm(MAX_SEGMENT_SIZE + 1, 16).validate(16),
            Err(ParamsError::SegmentSize { .. })
        ));
        assert!(matches!(
            gcm(4096, 24).validate(32),
            Err(ParamsError::DerivedKeySize(24))
        ));
        assert!(matches!(
            gcm(4096, 32).validate(16),
            Err(ParamsError::KeyValueLength { .. })
        ));
    }
}
