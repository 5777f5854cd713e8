//! Protobuf messages of Tink's keysets and streaming AEAD keys, written as prost structs.
//!
//! Field numbers and enum values follow Tink's `tink.proto`, `common.proto`,
//! `aes_gcm_hkdf_streaming.proto` and `aes_ctr_hmac_streaming.proto`, so the bytes these
//! structs encode are the bytes Tink reads and writes.

/// `google.crypto.tink.HashType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum HashTypeProto {
    /// Not set.
    UnknownHash = 0,
    /// SHA-1.
    Sha1 = 1,
    /// SHA-384 (not allowed for streaming AEAD keys).
    Sha384 = 2,
    /// SHA-256.
    Sha256 = 3,
    /// SHA-512.
    Sha512 = 4,
    /// SHA-224 (not allowed for streaming AEAD keys).
    Sha224 = 5,
}

/// `google.crypto.tink.KeyData.KeyMaterialType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum KeyMaterialType {
    /// Not set.
    UnknownKeymaterial = 0,
    /// A symmetric key: the type of every streaming AEAD key.
    Symmetric = 1,
    /// An asymmetric private key.
    AsymmetricPrivate = 2,
    /// An asymmetric public key.
    AsymmetricPublic = 3,
    /// A key held by a remote service.
    Remote = 4,
}

/// `google.crypto.tink.KeyStatusType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum KeyStatusType {
    /// Not set: rejected.
    UnknownStatus = 0,
    /// Used for decryption, and for encryption when primary.
    Enabled = 1,
    /// Kept in the keyset but never used.
    Disabled = 2,
    /// Key material erased.
    Destroyed = 3,
}

/// `google.crypto.tink.OutputPrefixType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum OutputPrefixType {
    /// Not set: rejected.
    UnknownPrefix = 0,
    /// 5-byte prefix with the key id (not used by streaming AEAD).
    Tink = 1,
    /// Legacy prefix (not used by streaming AEAD).
    Legacy = 2,
    /// No prefix: the only type streaming AEAD keys use.
    Raw = 3,
    /// Crunchy prefix (not used by streaming AEAD).
    Crunchy = 4,
}

/// `google.crypto.tink.KeyData`.
#[derive(Clone, PartialEq, prost::Message)]
#[prost(skip_debug)] // holds secret key bytes: Debug is redacted below
pub struct KeyData {
    /// Type URL naming the key's protobuf type.
    #[prost(string, tag = "1")]
    pub type_url: String,
    /// The serialized key protobuf (secret).
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
    /// What kind of key material `value` holds.
    #[prost(enumeration = "KeyMaterialType", tag = "3")]
    pub key_material_type: i32,
}

/// `google.crypto.tink.Keyset.Key`.
#[derive(Clone, PartialEq, prost::Message)]
#[prost(skip_debug)] // holds secret key bytes: Debug is redacted below
pub struct KeysetKey {
    /// The key itself.
    #[prost(message, optional, tag = "1")]
    pub key_data: Option<KeyData>,
    /// Whether the key is in use.
    #[prost(enumeration = "KeyStatusType", tag = "2")]
    pub status: i32,
    /// Identifier, unique within the keyset.
    #[prost(uint32, tag = "3")]
    pub key_id: u32,
    /// Ciphertext prefix (RAW for streaming AEAD).
    #[prost(enumeration = "OutputPrefixType", tag = "4")]
    pub output_prefix_type: i32,
}

/// `google.crypto.tink.Keyset`.
#[derive(Clone, PartialEq, prost::Message)]
#[prost(skip_debug)] // holds secret key bytes: Debug is redacted below
pub struct Keyset {
    /// Id of the key that encrypts.
    #[prost(uint32, tag = "1")]
    pub primary_key_id: u32,
    /// All keys.
    #[prost(message, repeated, tag = "2")]
    pub key: Vec<KeysetKey>,
}

/// `google.crypto.tink.AesGcmHkdfStreamingParams`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AesGcmHkdfStreamingParams {
    /// Size of each ciphertext segment, header included in the first.
    #[prost(uint32, tag = "1")]
    pub ciphertext_segment_size: u32,
    /// Size of the derived AES key (16 or 32).
    #[prost(uint32, tag = "2")]
    pub derived_key_size: u32,
    /// Hash used by HKDF.
    #[prost(enumeration = "HashTypeProto", tag = "3")]
    pub hkdf_hash_type: i32,
}

/// `google.crypto.tink.AesGcmHkdfStreamingKey`.
#[derive(Clone, PartialEq, prost::Message)]
#[prost(skip_debug)] // holds secret key bytes: Debug is redacted below
pub struct AesGcmHkdfStreamingKey {
    /// Key version (0).
    #[prost(uint32, tag = "1")]
    pub version: u32,
    /// Parameters.
    #[prost(message, optional, tag = "2")]
    pub params: Option<AesGcmHkdfStreamingParams>,
    /// HKDF input key material (secret).
    #[prost(bytes = "vec", tag = "3")]
    pub key_value: Vec<u8>,
}

/// `google.crypto.tink.HmacParams`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HmacParams {
    /// Hash used by the HMAC.
    #[prost(enumeration = "HashTypeProto", tag = "1")]
    pub hash: i32,
    /// Tag size in bytes after truncation.
    #[prost(uint32, tag = "2")]
    pub tag_size: u32,
}

/// `google.crypto.tink.AesCtrHmacStreamingParams`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AesCtrHmacStreamingParams {
    /// Size of each ciphertext segment, header included in the first.
    #[prost(uint32, tag = "1")]
    pub ciphertext_segment_size: u32,
    /// Size of the derived AES key (16 or 32).
    #[prost(uint32, tag = "2")]
    pub derived_key_size: u32,
    /// Hash used by HKDF.
    #[prost(enumeration = "HashTypeProto", tag = "3")]
    pub hkdf_hash_type: i32,
    /// HMAC hash and tag size.
    #[prost(message, optional, tag = "4")]
    pub hmac_params: Option<HmacParams>,
}

/// `google.crypto.tink.AesCtrHmacStreamingKey`.
#[derive(Clone, PartialEq, prost::Message)]
#[prost(skip_debug)] // holds secret key bytes: Debug is redacted below
pub struct AesCtrHmacStreamingKey {
    /// Key version (0).
    #[prost(uint32, tag = "1")]
    pub version: u32,
    /// Parameters.
    #[prost(message, optional, tag = "2")]
    pub params: Option<AesCtrHmacStreamingParams>,
    /// HKDF input key material (secret).
    #[prost(bytes = "vec", tag = "3")]
    pub key_value: Vec<u8>,
}

/// Protobuf JSON names of enum values, as prost-build would generate them.
macro_rules! enum_names {
    ($ty:ident { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            /// The value's name in protobuf's JSON mapping.
            pub fn as_str_name(self) -> &'static str {
                match self { $($ty::$variant => $name),+ }
            }

            /// The value with this JSON name, if any.
            pub fn from_str_name(name: &str) -> Option<Self> {
                match name { $($name => Some($ty::$variant),)+ _ => None }
            }
        }
    };
}

enum_names!(KeyMaterialType {
    UnknownKeymaterial => "UNKNOWN_KEYMATERIAL",
    Symmetric => "SYMMETRIC",
    AsymmetricPrivate => "ASYMMETRIC_PRIVATE",
    AsymmetricPublic => "ASYMMETRIC_PUBLIC",
    Remote => "REMOTE",
});

enum_names!(KeyStatusType {
    UnknownStatus => "UNKNOWN_STATUS",
    Enabled => "ENABLED",
    Disabled => "DISABLED",
    Destroyed => "DESTROYED",
});

enum_names!(OutputPrefixType {
    UnknownPrefix => "UNKNOWN_PREFIX",
    Tink => "TINK",
    Legacy => "LEGACY",
    Raw => "RAW",
    Crunchy => "CRUNCHY",
});

/// Debug for messages that hold key bytes: shows only the type name.
macro_rules! redacted_debug {
    ($($ty:ident),+) => {
        $(impl std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(concat!(stringify!($ty), "(<redacted>)"))
            }
        })+
    };
}

redacted_debug!(
    KeyData,
    KeysetKey,
    Keyset,
    AesGcmHkdfStreamingKey,
    AesCtrHmacStreamingKey
);
