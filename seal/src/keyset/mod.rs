//! Tink keysets holding streaming AEAD keys, in Tink's binary (protobuf) and JSON forms.
//!
//! A keyset lists keys with an id, a status and an output prefix type; `primaryKeyId` names the
//! key that encrypts. Decryption tries every enabled key. Disabled and destroyed keys are kept
//! (so that a keyset written back is the keyset read) but never parsed or used.

mod json;

use std::fmt;

use prost::Message;
use zeroize::{Zeroize, Zeroizing};

use crate::params::{
    CtrHmacParams, GcmHkdfParams, HashType, KeyTemplate, ParamsError, StreamingParams,
    AES_CTR_HMAC_TYPE_URL, AES_GCM_HKDF_TYPE_URL,
};
use crate::proto;

/// Largest serialized keyset accepted, checked before any decoding.
pub const MAX_KEYSET_LEN: usize = 1 << 20;
/// Largest number of keys in one keyset.
pub const MAX_KEYS: usize = 1000;

/// Why a keyset could not be read, written or changed.
#[derive(Debug, thiserror::Error)]
pub enum KeysetError {
    /// The serialized keyset is larger than [`MAX_KEYSET_LEN`].
    #[error("keyset of {len} bytes is larger than the {max}-byte limit; is this really a keyset?")]
    TooLarge {
        /// Length given.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// The JSON form did not parse.
    #[error("keyset JSON is malformed: {0}")]
    Json(#[from] serde_json::Error),
    /// The binary form did not parse.
    #[error("keyset protobuf is malformed: {0}")]
    Protobuf(#[from] prost::DecodeError),
    /// The JSON form holds an encrypted keyset.
    #[error("keyset is encrypted (encryptedKeyset); decrypt it first: veil's key broker releases the cleartext keyset to an attested guest")]
    Encrypted,
    /// A key's `value` is not valid base64.
    #[error("key {key_id}: keyData.value is not valid base64")]
    Base64 {
        /// Key id.
        key_id: u32,
    },
    /// A JSON enum field holds a name or number Tink does not define.
    #[error("key {key_id}: {field} has unknown value {value:?}")]
    UnknownEnum {
        /// Key id.
        key_id: u32,
        /// Field name.
        field: &'static str,
        /// Value found.
        value: String,
    },
    /// The keyset has no keys.
    #[error("keyset has no keys")]
    Empty,
    /// The keyset has more than [`MAX_KEYS`] keys.
    #[error("keyset has {0} keys, more than the limit of {MAX_KEYS}")]
    TooManyKeys(usize),
    /// No key is enabled, so nothing can decrypt.
    #[error("keyset has no enabled key; enable one or use another keyset")]
    NoEnabledKey,
    /// An enabled key has no key data.
    #[error("key {key_id} is enabled but has no keyData")]
    MissingKeyData {
        /// Key id.
        key_id: u32,
    },
    /// An enabled key is not a streaming AEAD key.
    #[error("key {key_id} has type {type_url}, which is not a streaming AEAD key (expected AesGcmHkdfStreamingKey or AesCtrHmacStreamingKey)")]
    UnsupportedKeyType {
        /// Key id.
        key_id: u32,
        /// Type URL found.
        type_url: String,
    },
    /// An enabled key has a status or prefix streaming AEAD cannot use.
    #[error("key {key_id}: {what}")]
    UnusableKey {
        /// Key id.
        key_id: u32,
        /// What is wrong.
        what: &'static str,
    },
    /// An enabled key's protobuf did not parse.
    #[error("key {key_id}: key protobuf is malformed: {source}")]
    KeyProtobuf {
        /// Key id.
        key_id: u32,
        /// Decoder error.
        source: prost::DecodeError,
    },
    /// An enabled key's parameters are invalid.
    #[error("key {key_id}: {source}")]
    InvalidKey {
        /// Key id.
        key_id: u32,
        /// What is wrong with the parameters.
        source: ParamsError,
    },
    /// More than one enabled key carries the primary key id.
    #[error("several enabled keys carry the primary key id {0}; key ids must be unique")]
    DuplicatePrimary(u32),
    /// A key with this id is already in the keyset.
    #[error("keyset already has a key with id {0}")]
    DuplicateKeyId(u32),
    /// No key with the given id exists.
    #[error("keyset has no key with id {0}")]
    NoSuchKey(u32),
    /// The system random generator failed.
    #[error("system random number generator failed")]
    Random,
}

/// Status of a key in a keyset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyStatus {
    /// Used for decryption, and for encryption when primary.
    Enabled,
    /// Kept but never used.
    Disabled,
    /// Key material erased; never used.
    Destroyed,
}

impl KeyStatus {
    fn from_proto(key_id: u32, value: i32) -> Result<Self, KeysetError> {
        match proto::KeyStatusType::try_from(value) {
            Ok(proto::KeyStatusType::Enabled) => Ok(KeyStatus::Enabled),
            Ok(proto::KeyStatusType::Disabled) => Ok(KeyStatus::Disabled),
            Ok(proto::KeyStatusType::Destroyed) => Ok(KeyStatus::Destroyed),
            _ => Err(KeysetError::UnknownEnum {
                key_id,
                field: "status",
                value: value.to_string(),
            }),
        }
    }

    fn to_proto(self) -> i32 {
        match self {
            KeyStatus::Enabled => proto::KeyStatusType::Enabled as i32,
            KeyStatus::Disabled => proto::KeyStatusType::Disabled as i32,
            KeyStatus::Destroyed => proto::KeyStatusType::Destroyed as i32,
        }
    }
}

/// One usable streaming AEAD key: its id, parameters and secret HKDF input key material.
#[derive(Clone)]
pub struct StreamingKey {
    id: u32,
    params: StreamingParams,
    key_value: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for StreamingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamingKey")
            .field("id", &self.id)
            .field("params", &self.params)
            .field("key_value", &"<redacted>")
            .finish()
    }
}

impl StreamingKey {
    /// Builds a key from parameters and key material, checking both.
    pub fn new(
        id: u32,
        params: StreamingParams,
        key_value: Zeroizing<Vec<u8>>,
    ) -> Result<Self, KeysetError> {
        params
            .validate(key_value.len())
            .map_err(|source| KeysetError::InvalidKey { key_id: id, source })?;
        Ok(StreamingKey {
            id,
            params,
            key_value,
        })
    }

    /// Makes a fresh key with random material from a template.
    pub fn generate(id: u32, template: KeyTemplate) -> Result<Self, KeysetError> {
        let mut key_value = Zeroizing::new(vec![0u8; template.key_size()]);
        crate::random::fill(&mut key_value).map_err(|_| KeysetError::Random)?;
        StreamingKey::new(id, template.params(), key_value)
    }

    /// Key id within its keyset.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Parameters of the key.
    pub fn params(&self) -> &StreamingParams {
        &self.params
    }

    pub(crate) fn key_value(&self) -> &[u8] {
        &self.key_value
    }

    fn decode(key_id: u32, type_url: &str, value: &[u8]) -> Result<Self, KeysetError> {
        let bad_proto = |source| KeysetError::KeyProtobuf { key_id, source };
        let invalid = |source| KeysetError::InvalidKey { key_id, source };
        let (version, params, mut key_value) = match type_url {
            AES_GCM_HKDF_TYPE_URL => {
                let key = proto::AesGcmHkdfStreamingKey::decode(value).map_err(bad_proto)?;
                let p = key
                    .params
                    .as_ref()
                    .ok_or(ParamsError::MissingParams)
                    .map_err(invalid)?;
                let params = StreamingParams::AesGcmHkdf(GcmHkdfParams {
                    segment_size: p.ciphertext_segment_size,
                    derived_key_size: p.derived_key_size as usize,
                    hkdf_hash: HashType::from_proto(p.hkdf_hash_type).map_err(invalid)?,
                });
                (key.version, params, key.key_value)
            }
            AES_CTR_HMAC_TYPE_URL => {
                let key = proto::AesCtrHmacStreamingKey::decode(value).map_err(bad_proto)?;
                let p = key
                    .params
                    .as_ref()
                    .ok_or(ParamsError::MissingParams)
                    .map_err(invalid)?;
                let hmac = p
                    .hmac_params
                    .as_ref()
                    .ok_or(ParamsError::MissingParams)
                    .map_err(invalid)?;
                let params = StreamingParams::AesCtrHmac(CtrHmacParams {
                    segment_size: p.ciphertext_segment_size,
                    derived_key_size: p.derived_key_size as usize,
                    hkdf_hash: HashType::from_proto(p.hkdf_hash_type).map_err(invalid)?,
                    hmac_hash: HashType::from_proto(hmac.hash).map_err(invalid)?,
                    tag_size: hmac.tag_size as usize,
                });
                (key.version, params, key.key_value)
            }
            other => {
                return Err(KeysetError::UnsupportedKeyType {
                    key_id,
                    type_url: other.to_string(),
                })
            }
        };
        let key_value_safe = Zeroizing::new(std::mem::take(&mut key_value));
        if version != 0 {
            return Err(invalid(ParamsError::Version(version)));
        }
        StreamingKey::new(key_id, params, key_value_safe)
    }

    fn encode(&self) -> Zeroizing<Vec<u8>> {
        let key_value = self.key_value.to_vec();
        let mut encoded = match self.params {
            StreamingParams::AesGcmHkdf(p) => proto::AesGcmHkdfStreamingKey {
                version: 0,
                params: Some(proto::AesGcmHkdfStreamingParams {
                    ciphertext_segment_size: p.segment_size,
                    derived_key_size: p.derived_key_size as u32,
                    hkdf_hash_type: p.hkdf_hash.to_proto(),
                }),
                key_value,
            }
            .encode_to_vec(),
            StreamingParams::AesCtrHmac(p) => proto::AesCtrHmacStreamingKey {
                version: 0,
                params: Some(proto::AesCtrHmacStreamingParams {
                    ciphertext_segment_size: p.segment_size,
                    derived_key_size: p.derived_key_size as u32,
                    hkdf_hash_type: p.hkdf_hash.to_proto(),
                    hmac_params: Some(proto::HmacParams {
                        hash: p.hmac_hash.to_proto(),
                        tag_size: p.tag_size as u32,
                    }),
                }),
                key_value,
            }
            .encode_to_vec(),
        };
        let safe = Zeroizing::new(encoded.clone());
        encoded.zeroize();
        safe
    }
}

/// One entry of a keyset as stored, usable or not.
#[derive(Clone)]
struct Entry {
    key_id: u32,
    status: KeyStatus,
    output_prefix_type: i32,
    type_url: String,
    key_material_type: i32,
    value: Zeroizing<Vec<u8>>,
    /// Parsed key, present exactly when the entry is enabled.
    key: Option<StreamingKey>,
}

/// A Tink keyset of streaming AEAD keys.
#[derive(Clone)]
pub struct Keyset {
    primary_key_id: u32,
    entries: Vec<Entry>,
}

impl fmt::Debug for Keyset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<_> = self
            .entries
            .iter()
            .map(|e| (e.key_id, e.status, e.key.as_ref().map(|k| k.params)))
            .collect();
        f.debug_struct("Keyset")
            .field("primary_key_id", &self.primary_key_id)
            .field("keys", &keys)
            .finish()
    }
}

impl Keyset {
    /// A new keyset holding one fresh key from `template`, which is primary.
    pub fn generate(template: KeyTemplate) -> Result<Self, KeysetError> {
        let mut keyset = Keyset {
            primary_key_id: 0,
            entries: Vec::new(),
        };
        let id = keyset.add_generated(template)?;
        keyset.primary_key_id = id;
        Ok(keyset)
    }

    /// Adds a fresh enabled key from `template` (not primary) and returns its id.
    pub fn add_generated(&mut self, template: KeyTemplate) -> Result<u32, KeysetError> {
        let id = self.fresh_key_id()?;
        self.add_key(StreamingKey::generate(id, template)?)?;
        Ok(id)
    }

    /// Adds an enabled key (not primary). Its id must be new to the keyset.
    pub fn add_key(&mut self, key: StreamingKey) -> Result<(), KeysetError> {
        if self.entries.len() >= MAX_KEYS {
            return Err(KeysetError::TooManyKeys(self.entries.len() + 1));
        }
        if self.entries.iter().any(|e| e.key_id == key.id) {
            return Err(KeysetError::DuplicateKeyId(key.id));
        }
        self.entries.push(Entry {
            key_id: key.id,
            status: KeyStatus::Enabled,
            output_prefix_type: proto::OutputPrefixType::Raw as i32,
            type_url: key.params.type_url().to_string(),
            key_material_type: proto::KeyMaterialType::Symmetric as i32,
            value: key.encode(),
            key: Some(key),
        });
        Ok(())
    }

    /// Makes the key with `key_id` the one that encrypts.
    pub fn set_primary(&mut self, key_id: u32) -> Result<(), KeysetError> {
        self.entry(key_id)?;
        self.primary_key_id = key_id;
        Ok(())
    }

    /// Enables or disables a key; a disabled key is never used.
    pub fn set_status(&mut self, key_id: u32, status: KeyStatus) -> Result<(), KeysetError> {
        let entry = self
            .entries
            .iter_mut()
            .find(|e| e.key_id == key_id)
            .ok_or(KeysetError::NoSuchKey(key_id))?;
        if status == KeyStatus::Enabled && entry.key.is_none() {
            entry.key = Some(StreamingKey::decode(key_id, &entry.type_url, &entry.value)?);
        }
        if status != KeyStatus::Enabled {
            entry.key = None;
        }
        entry.status = status;
        Ok(())
    }

    fn entry(&self, key_id: u32) -> Result<&Entry, KeysetError> {
        self.entries
            .iter()
            .find(|e| e.key_id == key_id)
            .ok_or(KeysetError::NoSuchKey(key_id))
    }

    fn fresh_key_id(&self) -> Result<u32, KeysetError> {
        // Bounded: a collision among at most MAX_KEYS ids out of 2^32 is rare.
        for _ in 0..64 {
            let mut bytes = [0u8; 4];
            crate::random::fill(&mut bytes).map_err(|_| KeysetError::Random)?;
            let id = u32::from_be_bytes(bytes);
            if id != 0 && self.entries.iter().all(|e| e.key_id != id) {
                return Ok(id);
            }
        }
        Err(KeysetError::Random)
    }

    /// Id of the primary key (0 when none is set).
    pub fn primary_key_id(&self) -> u32 {
        self.primary_key_id
    }

    /// The enabled key that encrypts, if the keyset names one.
    pub fn primary(&self) -> Option<&StreamingKey> {
        self.enabled_keys().find(|k| k.id == self.primary_key_id)
    }

    /// Enabled keys, primary first, then in keyset order: the order decryption tries them.
    pub fn enabled_keys(&self) -> impl Iterator<Item = &StreamingKey> {
        let primary = self
            .entries
            .iter()
            .filter_map(|e| e.key.as_ref())
            .filter(|k| k.id == self.primary_key_id);
        let others = self
            .entries
            .iter()
            .filter_map(|e| e.key.as_ref())
            .filter(|k| k.id != self.primary_key_id);
        primary.chain(others)
    }

    /// Number of keys, usable or not.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the keyset has no keys (never true for a parsed keyset).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Reads a keyset in either form: JSON when the first non-blank byte is `{`, binary protobuf
    /// otherwise.
    pub fn parse(bytes: &[u8]) -> Result<Self, KeysetError> {
        check_len(bytes)?;
        match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'{') => Keyset::from_json(bytes),
            _ => Keyset::from_binary(bytes),
        }
    }

    /// Reads Tink's binary keyset (a serialized `google.crypto.tink.Keyset`).
    pub fn from_binary(bytes: &[u8]) -> Result<Self, KeysetError> {
        check_len(bytes)?;
        let mut keyset = proto::Keyset::decode(bytes)?;
        let result = Keyset::from_proto(&keyset);
        for key in &mut keyset.key {
            if let Some(data) = key.key_data.as_mut() {
                data.value.zeroize();
            }
        }
        result
    }

    /// Reads Tink's JSON keyset (as written by `JsonKeysetWriter` / `tink.json_proto_keyset_format`).
    pub fn from_json(bytes: &[u8]) -> Result<Self, KeysetError> {
        check_len(bytes)?;
        json::parse(bytes)
    }

    /// Writes Tink's binary keyset.
    pub fn to_binary(&self) -> Zeroizing<Vec<u8>> {
        let mut keyset = self.to_proto();
        let bytes = Zeroizing::new(keyset.encode_to_vec());
        for key in &mut keyset.key {
            if let Some(data) = key.key_data.as_mut() {
                data.value.zeroize();
            }
        }
        bytes
    }

    /// Writes Tink's JSON keyset.
    pub fn to_json(&self) -> Zeroizing<String> {
        json::write(self)
    }

    fn from_proto(keyset: &proto::Keyset) -> Result<Self, KeysetError> {
        if keyset.key.is_empty() {
            return Err(KeysetError::Empty);
        }
        if keyset.key.len() > MAX_KEYS {
            return Err(KeysetError::TooManyKeys(keyset.key.len()));
        }
        let entries = keyset
            .key
            .iter()
            .map(|k| {
                let data = k.key_data.as_ref();
                Entry::new(
                    k.key_id,
                    k.status,
                    k.output_prefix_type,
                    data.map(|d| d.type_url.clone()),
                    data.map_or(0, |d| d.key_material_type),
                    Zeroizing::new(data.map(|d| d.value.clone()).unwrap_or_default()),
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        Keyset::from_entries(keyset.primary_key_id, entries)
    }

    fn from_entries(primary_key_id: u32, entries: Vec<Entry>) -> Result<Self, KeysetError> {
        let keyset = Keyset {
            primary_key_id,
            entries,
        };
        if keyset.enabled_keys().next().is_none() {
            return Err(KeysetError::NoEnabledKey);
        }
        if keyset
            .enabled_keys()
            .filter(|k| k.id == primary_key_id)
            .count()
            > 1
        {
            return Err(KeysetError::DuplicatePrimary(primary_key_id));
        }
        Ok(keyset)
    }

    fn to_proto(&self) -> proto::Keyset {
        proto::Keyset {
            primary_key_id: self.primary_key_id,
            key: self
                .entries
                .iter()
                .map(|e| proto::KeysetKey {
                    key_data: Some(proto::KeyData {
                        type_url: e.type_url.clone(),
                        value: e.value.to_vec(),
                        key_material_type: e.key_material_type,
                    }),
                    status: e.status.to_proto(),
                    key_id: e.key_id,
                    output_prefix_type: e.output_prefix_type,
                })
                .collect(),
        }
    }
}

impl Entry {
    /// Checks one stored key; parses it only when enabled, as Tink does.
    fn new(
        key_id: u32,
        status: i32,
        output_prefix_type: i32,
        type_url: Option<String>,
        key_material_type: i32,
        value: Zeroizing<Vec<u8>>,
    ) -> Result<Self, KeysetError> {
        let status = KeyStatus::from_proto(key_id, status)?;
        let mut entry = Entry {
            key_id,
            status,
            output_prefix_type,
            type_url: type_url.clone().unwrap_or_default(),
            key_material_type,
            value,
            key: None,
        };
        if status != KeyStatus::Enabled {
            return Ok(entry);
        }
        let type_url = type_url.ok_or(KeysetError::MissingKeyData { key_id })?;
        if output_prefix_type != proto::OutputPrefixType::Raw as i32 {
            return Err(KeysetError::UnusableKey {
                key_id,
                what: "streaming AEAD keys must have output prefix type RAW",
            });
        }
        if key_material_type != proto::KeyMaterialType::Symmetric as i32 {
            return Err(KeysetError::UnusableKey {
                key_id,
                what: "streaming AEAD keys must have key material type SYMMETRIC",
            });
        }
        entry.key = Some(StreamingKey::decode(key_id, &type_url, &entry.value)?);
        Ok(entry)
    }
}

fn check_len(bytes: &[u8]) -> Result<(), KeysetError> {
    if bytes.len() > MAX_KEYSET_LEN {
        return Err(KeysetError::TooLarge {
            len: bytes.len(),
            max: MAX_KEYSET_LEN,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keyset_round_trips_through_both_forms() {
        let mut keyset = Keyset::generate(KeyTemplate::Aes256GcmHkdf1Mb).unwrap();
        let second = keyset
            .add_generated(KeyTemplate::Aes128CtrHmacSha2564Kb)
            .unwrap();
        keyset.set_primary(second).unwrap();
        for bytes in [
            keyset.to_binary().to_vec(),
            keyset.to_json().as_bytes().to_vec(),
        ] {
            let back = Keyset::parse(&bytes).unwrap();
            assert_eq!(back.primary_key_id(), second);
            assert_eq!(back.len(), 2);
            assert_eq!(back.enabled_keys().next().unwrap().id(), second);
            assert_eq!(back.to_binary(), keyset.to_binary());
        }
    }

    #[test]
    fn debug_never_shows_key_material() {
        let keyset = Keyset::generate(KeyTemplate::Aes128GcmHkdf4Kb).unwrap();
        let key = keyset.primary().unwrap();
        let shown = format!("{keyset:?} {key:?}");
        assert!(shown.contains("redacted") || !shown.contains("key_value"));
        let hex: String = key.key_value().iter().map(|b| format!("{b:02x}")).collect();
        assert!(!shown.contains(&hex));
        assert!(!format!("{key:?}").contains(&format!("{:?}", key.key_value())));
    }

    #[test]
    fn disabled_keys_are_kept_but_not_used() {
        let mut keyset = Keyset::generate(KeyTemplate::Aes128GcmHkdf4Kb).unwrap();
        let other = keyset.add_generated(KeyTemplate::Aes256GcmHkdf4Kb).unwrap();
        keyset.set_status(other, KeyStatus::Disabled).unwrap();
        let back = Keyset::parse(keyset.to_json().as_bytes()).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back.enabled_keys().count(), 1);
        keyset
            .set_status(keyset.primary_key_id(), KeyStatus::Disabled)
            .unwrap();
        assert!(matches!(
            Keyset::parse(&keyset.to_binary()),
            Err(KeysetError::NoEnabledKey)
        ));
    }

    #[test]
    fn oversized_and_garbage_keysets_are_refused_before_decoding() {
        let big = vec![b' '; MAX_KEYSET_LEN + 1];
        assert!(matches!(
            Keyset::parse(&big),
            Err(KeysetError::TooLarge { .. })
        ));
        assert!(Keyset::parse(b"\xff\xff\xff").is_err());
        assert!(matches!(
            Keyset::parse(b"{\"encryptedKeyset\":\"AAAA\"}"),
            Err(KeysetError::Encrypted)
        ));
        assert!(matches!(Keyset::parse(b"{}"), Err(KeysetError::Empty)));
    }
}
