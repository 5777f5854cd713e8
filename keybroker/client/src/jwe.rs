//! JWE to the guest's ephemeral key: `ECDH-ES+A256KW` key agreement, `A256GCM` content.
//!
//! The algorithms are RFC 7518 §4.6 (ECDH-ES on P-256, Concat KDF with SHA-256, AES-256 key
//! wrap of a random content key) and §5.3 (AES-256-GCM), in the flattened JSON serialization
//! that Trustee's KBS returns for resources. Every primitive comes from a RustCrypto crate;
//! this module only wires them together in the order the RFCs give.

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use aes_kw::KekAes256;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use p256::elliptic_curve::sec1::{FromEncodedPoint, ToEncodedPoint};
use p256::{EncodedPoint, PublicKey, SecretKey};
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::wire::{EcPublicJwk, Response, TeePubKey};

/// `alg` of the tee-pubkey and of the JWE header.
pub const KEY_ALG: &str = "ECDH-ES+A256KW";
/// `enc` of the JWE header.
pub const CONTENT_ENC: &str = "A256GCM";
/// The only curve veil generates and accepts.
pub const CURVE: &str = "P-256";

/// Largest plaintext the broker encrypts and the guest decrypts (model keys are tiny).
pub const MAX_PLAINTEXT_BYTES: usize = 1024 * 1024;

/// The tee-pubkey kinds a veil broker can encrypt to, for error messages.
pub const SUPPORTED_KEYS: &str =
    "EC P-256 with ECDH-ES+A256KW, or RSA 2048-4096 bit with RSA-OAEP-256";

/// Why encrypting a resource to a guest key failed.
#[derive(Debug, thiserror::Error)]
pub enum JweEncryptError {
    /// The JWK is of a kind or algorithm the broker does not encrypt to.
    #[error("tee-pubkey is unsupported ({0}); supported: {SUPPORTED_KEYS}")]
    UnsupportedKey(String),
    /// The coordinates do not decode to a point on P-256.
    #[error("tee-pubkey coordinates are not a valid {CURVE} point: {0}")]
    InvalidPoint(String),
    /// The plaintext is larger than the limit.
    #[error("plaintext of {0} bytes exceeds the {MAX_PLAINTEXT_BYTES}-byte limit")]
    TooLarge(usize),
    /// A primitive failed (key derivation, wrap, or GCM).
    #[error("JWE encryption failed in {0}")]
    Crypto(&'static str),
}

/// Why decrypting a resource failed: the response was tampered with, or not for this key.
#[derive(Debug, thiserror::Error)]
pub enum JweDecryptError {
    /// A field is not base64url or the header is not JSON.
    #[error("JWE field `{field}` is malformed: {reason}")]
    Malformed {
        /// The JWE field.
        field: &'static str,
        /// What was wrong with it.
        reason: String,
    },
    /// The header names algorithms veil does not accept.
    #[error(
        "JWE header has alg `{alg}` / enc `{enc}`; only {KEY_ALG} / {CONTENT_ENC} are accepted"
    )]
    UnsupportedAlgorithm {
        /// The header's `alg`.
        alg: String,
        /// The header's `enc`.
        enc: String,
    },
    /// The wrapped key does not unwrap with the agreed key: tampered or for another key.
    #[error("JWE encrypted_key does not unwrap: the response was tampered with or encrypted to another key")]
    KeyUnwrap,
    /// The GCM tag does not verify: ciphertext, iv, header or tag were changed.
    #[error("JWE authentication tag does not verify: the response was tampered with")]
    Authentication,
}

/// The JOSE protected header for ECDH-ES, field for field as Trustee's KBS writes it
/// (`{"alg","enc","epk":{"crv","kty","x","y"}}`): already in sorted key order, so guests
/// that re-serialize the parsed header to compute the AAD (guest-components does) get the
/// same bytes.
#[derive(Debug, Serialize, Deserialize)]
struct ProtectedHeader {
    alg: String,
    enc: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    epk: Option<EphemeralJwk>,
}

/// The sender's ephemeral EC key in the header. Unknown members (such as an `alg`) are
/// ignored, as RFC 7517 allows.
#[derive(Debug, Serialize, Deserialize)]
struct EphemeralJwk {
    crv: String,
    kty: String,
    x: String,
    y: String,
}

/// The guest's ephemeral key pair. The private half never leaves the guest's memory and is
/// zeroized on drop (p256's `SecretKey` zeroizes itself).
pub struct EphemeralKey {
    secret: SecretKey,
}

impl std::fmt::Debug for EphemeralKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EphemeralKey")
            .field("public", &self.public_jwk())
            .finish_non_exhaustive()
    }
}

impl EphemeralKey {
    /// Generates a fresh P-256 key pair from the OS random source.
    pub fn generate() -> Self {
        Self {
            secret: SecretKey::random(&mut OsRng),
        }
    }

    /// The public key as the protocol's `tee-pubkey` JWK.
    pub fn public_jwk(&self) -> TeePubKey {
        TeePubKey::Ec(ec_jwk_from_public(&self.secret.public_key()))
    }

    /// Decrypts a resource response addressed to this key.
    pub fn decrypt(&self, response: &Response) -> Result<Zeroizing<Vec<u8>>, JweDecryptError> {
        let header_json = b64_field("protected", &response.protected)?;
        let header: ProtectedHeader =
            serde_json::from_slice(&header_json).map_err(|e| JweDecryptError::Malformed {
                field: "protected",
                reason: e.to_string(),
            })?;
        if header.alg != KEY_ALG || header.enc != CONTENT_ENC {
            return Err(JweDecryptError::UnsupportedAlgorithm {
                alg: header.alg,
                enc: header.enc,
            });
        }
        let epk = header
            .epk
            .ok_or(JweDecryptError::Malformed {
                field: "protected.epk",
                reason: format!("missing; {KEY_ALG} needs the sender's ephemeral key"),
            })
            .and_then(|epk| {
                ephemeral_public(&epk).map_err(|e| JweDecryptError::Malformed {
                    field: "protected.epk",
                    reason: e.to_string(),
                })
            })?;
        let shared = p256::ecdh::diffie_hellman(self.secret.to_nonzero_scalar(), epk.as_affine());
        let kek = derive_kek(shared.raw_secret_bytes()).map_err(|_| JweDecryptError::KeyUnwrap)?;

        let wrapped = b64_field("encrypted_key", &response.encrypted_key)?;
        let mut cek = Zeroizing::new([0u8; 32]);
        KekAes256::from(*kek)
            .unwrap(&wrapped, cek.as_mut())
            .map_err(|_| JweDecryptError::KeyUnwrap)?;
        open_with_cek(response, &cek)
    }
}

/// Decrypts the `A256GCM` content of `response` with an already unwrapped content key,
/// authenticating the protected header (and `aad`) as RFC 7516 §5.2 says.
pub fn open_with_cek(
    response: &Response,
    cek: &[u8; 32],
) -> Result<Zeroizing<Vec<u8>>, JweDecryptError> {
    let iv = b64_field("iv", &response.iv)?;
    if iv.len() != 12 {
        return Err(JweDecryptError::Malformed {
            field: "iv",
            reason: format!("{} bytes, expected 12", iv.len()),
        });
    }
    let tag = b64_field("tag", &response.tag)?;
    if tag.len() != 16 {
        return Err(JweDecryptError::Malformed {
            field: "tag",
            reason: format!("{} bytes, expected 16", tag.len()),
        });
    }
    let mut plaintext = Zeroizing::new(b64_field("ciphertext", &response.ciphertext)?);
    if plaintext.len() > MAX_PLAINTEXT_BYTES {
        return Err(JweDecryptError::Malformed {
            field: "ciphertext",
            reason: format!("{} bytes exceeds the limit", plaintext.len()),
        });
    }
    let aad = additional_data(&response.protected, response.aad.as_deref());
    Aes256Gcm::new(cek.into())
        .decrypt_in_place_detached(
            Nonce::from_slice(&iv),
            aad.as_bytes(),
            &mut plaintext,
            tag.as_slice().into(),
        )
        .map_err(|_| JweDecryptError::Authentication)?;
    Ok(plaintext)
}

/// Encrypts `plaintext` to an EC `recipient` (the tee-pubkey from the attestation). RSA
/// recipients are the broker's business (`veil_keybroker::jwe_rsa`), so that the guest does
/// not carry an RSA implementation it never uses.
pub fn encrypt(recipient: &TeePubKey, plaintext: &[u8]) -> Result<Response, JweEncryptError> {
    match recipient {
        TeePubKey::Ec(ec) => encrypt_ec(ec, plaintext),
        TeePubKey::Rsa(rsa) => Err(JweEncryptError::UnsupportedKey(format!(
            "RSA key with alg `{}`: this client-side encrypter handles EC only",
            rsa.alg
        ))),
    }
}

/// Encrypts `plaintext` to a P-256 key with `ECDH-ES+A256KW` / `A256GCM`.
pub fn encrypt_ec(recipient: &EcPublicJwk, plaintext: &[u8]) -> Result<Response, JweEncryptError> {
    if plaintext.len() > MAX_PLAINTEXT_BYTES {
        return Err(JweEncryptError::TooLarge(plaintext.len()));
    }
    let recipient_key = public_from_jwk(recipient)?;
    let ephemeral = SecretKey::random(&mut OsRng);
    let shared =
        p256::ecdh::diffie_hellman(ephemeral.to_nonzero_scalar(), recipient_key.as_affine());
    let kek = derive_kek(shared.raw_secret_bytes()).map_err(|_| JweEncryptError::Crypto("kdf"))?;

    let mut cek = Zeroizing::new([0u8; 32]);
    OsRng.fill_bytes(cek.as_mut());
    let mut wrapped = [0u8; 40];
    KekAes256::from(*kek)
        .wrap(cek.as_ref(), &mut wrapped)
        .map_err(|_| JweEncryptError::Crypto("key wrap"))?;

    let epk = ec_jwk_from_public(&ephemeral.public_key());
    let header = ProtectedHeader {
        alg: KEY_ALG.to_owned(),
        enc: CONTENT_ENC.to_owned(),
        epk: Some(EphemeralJwk {
            crv: epk.crv,
            kty: "EC".to_owned(),
            x: epk.x,
            y: epk.y,
        }),
    };
    let header_json =
        serde_json::to_vec(&header).map_err(|_| JweEncryptError::Crypto("header encoding"))?;
    seal_with_cek(&header_json, &cek, &wrapped, plaintext)
}

/// Encrypts `plaintext` with `A256GCM` under `cek` and assembles the flattened JWE: the
/// protected header is `header_json` (base64url'd, also the AAD) and `encrypted_key` is the
/// content key as already wrapped for the recipient.
pub fn seal_with_cek(
    header_json: &[u8],
    cek: &[u8; 32],
    encrypted_key: &[u8],
    plaintext: &[u8],
) -> Result<Response, JweEncryptError> {
    if plaintext.len() > MAX_PLAINTEXT_BYTES {
        return Err(JweEncryptError::TooLarge(plaintext.len()));
    }
    let protected = URL_SAFE_NO_PAD.encode(header_json);
    let mut iv = [0u8; 12];
    OsRng.fill_bytes(&mut iv);
    let mut ciphertext = plaintext.to_vec();
    let tag = Aes256Gcm::new(cek.into())
        .encrypt_in_place_detached(
            Nonce::from_slice(&iv),
            protected.as_bytes(),
            &mut ciphertext,
        )
        .map_err(|_| JweEncryptError::Crypto("AES-GCM"))?;

    Ok(Response {
        protected,
        encrypted_key: URL_SAFE_NO_PAD.encode(encrypted_key),
        aad: None,
        iv: URL_SAFE_NO_PAD.encode(iv),
        ciphertext: URL_SAFE_NO_PAD.encode(&ciphertext),
        tag: URL_SAFE_NO_PAD.encode(tag),
    })
}

/// Checks that a JWK is a P-256 key for `ECDH-ES+A256KW` and returns the point.
pub fn public_from_jwk(jwk: &EcPublicJwk) -> Result<PublicKey, JweEncryptError> {
    if jwk.crv != CURVE || jwk.alg != KEY_ALG {
        return Err(JweEncryptError::UnsupportedKey(format!(
            "EC key with crv `{}` and alg `{}`",
            jwk.crv, jwk.alg
        )));
    }
    point_from_coordinates(&jwk.x, &jwk.y)
}

fn ephemeral_public(epk: &EphemeralJwk) -> Result<PublicKey, JweEncryptError> {
    if epk.kty != "EC" || epk.crv != CURVE {
        return Err(JweEncryptError::UnsupportedKey(format!(
            "epk with kty `{}` and crv `{}`",
            epk.kty, epk.crv
        )));
    }
    point_from_coordinates(&epk.x, &epk.y)
}

fn point_from_coordinates(x: &str, y: &str) -> Result<PublicKey, JweEncryptError> {
    let x = decode_coordinate(x)?;
    let y = decode_coordinate(y)?;
    let point = EncodedPoint::from_affine_coordinates(&x.into(), &y.into(), false);
    Option::from(PublicKey::from_encoded_point(&point))
        .ok_or_else(|| JweEncryptError::InvalidPoint("not on the curve".into()))
}

fn decode_coordinate(b64: &str) -> Result<[u8; 32], JweEncryptError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(b64)
        .map_err(|e| JweEncryptError::InvalidPoint(e.to_string()))?;
    bytes
        .try_into()
        .map_err(|_| JweEncryptError::InvalidPoint("coordinate is not 32 bytes".into()))
}

fn ec_jwk_from_public(key: &PublicKey) -> EcPublicJwk {
    let point = key.to_encoded_point(false);
    // An uncompressed point from a valid PublicKey always has both coordinates.
    let x = point.x().map(|x| URL_SAFE_NO_PAD.encode(x));
    let y = point.y().map(|y| URL_SAFE_NO_PAD.encode(y));
    EcPublicJwk {
        alg: KEY_ALG.to_owned(),
        crv: CURVE.to_owned(),
        x: x.unwrap_or_default(),
        y: y.unwrap_or_default(),
    }
}

/// Concat KDF (NIST SP 800-56A §5.8.1, as profiled by RFC 7518 §4.6.2) with empty `apu`/`apv`.
fn derive_kek(shared_secret: &[u8]) -> Result<Zeroizing<[u8; 32]>, concat_kdf::Error> {
    let mut kek = Zeroizing::new([0u8; 32]);
    concat_kdf::derive_key_into::<sha2::Sha256>(
        shared_secret,
        &kdf_other_info(KEY_ALG, b"", b"", 256),
        kek.as_mut(),
    )?;
    Ok(kek)
}

/// RFC 7518 §4.6.2 OtherInfo: AlgorithmID || PartyUInfo || PartyVInfo || SuppPubInfo, each
/// variable field prefixed by its 32-bit big-endian length.
fn kdf_other_info(alg: &str, apu: &[u8], apv: &[u8], key_bits: u32) -> Vec<u8> {
    let mut info = Vec::with_capacity(16 + alg.len() + apu.len() + apv.len());
    for field in [alg.as_bytes(), apu, apv] {
        // Fields are bounded by the JWE header size, far below u32::MAX.
        let len = u32::try_from(field.len()).unwrap_or(u32::MAX);
        info.extend_from_slice(&len.to_be_bytes());
        info.extend_from_slice(field);
    }
    info.extend_from_slice(&key_bits.to_be_bytes());
    info
}

/// RFC 7516 §5.2 step 14. Trustee uses `protected` as the AAD (older versions also wrote an
/// `aad` member equal to it); a distinct `aad` follows the RFC (`protected || '.' || aad`).
fn additional_data(protected: &str, aad: Option<&str>) -> String {
    match aad {
        Some(aad) if aad != protected => format!("{protected}.{aad}"),
        _ => protected.to_owned(),
    }
}

fn b64_field(field: &'static str, value: &str) -> Result<Vec<u8>, JweDecryptError> {
    URL_SAFE_NO_PAD
        .decode(value)
        .map_err(|e| JweDecryptError::Malformed {
            field,
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_recovers_the_plaintext() {
        let key = EphemeralKey::generate();
        let jwe = encrypt(&key.public_jwk(), b"model key").unwrap();
        assert_eq!(key.decrypt(&jwe).unwrap().as_slice(), b"model key");
    }

    #[test]
    fn another_key_cannot_decrypt() {
        let key = EphemeralKey::generate();
        let other = EphemeralKey::generate();
        let jwe = encrypt(&key.public_jwk(), b"secret").unwrap();
        assert!(matches!(
            other.decrypt(&jwe),
            Err(JweDecryptError::KeyUnwrap)
        ));
    }

    fn flip_first_char(s: &mut String) {
        let first = s.remove(0);
        s.insert(0, if first == 'A' { 'B' } else { 'A' });
    }

    #[test]
    fn tampered_ciphertext_fails_authentication() {
        let key = EphemeralKey::generate();
        let mut jwe = encrypt(&key.public_jwk(), b"secret bytes").unwrap();
        flip_first_char(&mut jwe.ciphertext);
        assert!(matches!(
            key.decrypt(&jwe),
            Err(JweDecryptError::Authentication)
        ));
    }

    #[test]
    fn tampered_tag_or_iv_fails_authentication() {
        let key = EphemeralKey::generate();
        let jwe = encrypt(&key.public_jwk(), b"secret bytes").unwrap();
        let mut bad_tag = jwe.clone();
        flip_first_char(&mut bad_tag.tag);
        assert!(matches!(
            key.decrypt(&bad_tag),
            Err(JweDecryptError::Authentication)
        ));
        let mut bad_iv = jwe;
        flip_first_char(&mut bad_iv.iv);
        assert!(matches!(
            key.decrypt(&bad_iv),
            Err(JweDecryptError::Authentication)
        ));
    }

    #[test]
    fn tampered_wrapped_key_fails_unwrap() {
        let key = EphemeralKey::generate();
        let mut jwe = encrypt(&key.public_jwk(), b"secret").unwrap();
        flip_first_char(&mut jwe.encrypted_key);
        assert!(matches!(key.decrypt(&jwe), Err(JweDecryptError::KeyUnwrap)));
    }

    #[test]
    fn downgraded_algorithm_is_refused() {
        let key = EphemeralKey::generate();
        let mut jwe = encrypt(&key.public_jwk(), b"secret").unwrap();
        let header = URL_SAFE_NO_PAD.decode(&jwe.protected).unwrap();
        let header = String::from_utf8(header)
            .unwrap()
            .replace("A256GCM", "A128GCM");
        jwe.protected = URL_SAFE_NO_PAD.encode(header);
        assert!(matches!(
            key.decrypt(&jwe),
            Err(JweDecryptError::UnsupportedAlgorithm { .. })
        ));
    }

    fn ec_jwk(key: &EphemeralKey) -> EcPublicJwk {
        match key.public_jwk() {
            TeePubKey::Ec(ec) => ec,
            TeePubKey::Rsa(_) => unreachable!("ephemeral keys are EC"),
        }
    }

    #[test]
    fn key_not_on_curve_is_refused() {
        let mut jwk = ec_jwk(&EphemeralKey::generate());
        jwk.y = URL_SAFE_NO_PAD.encode([7u8; 32]);
        assert!(matches!(
            encrypt(&TeePubKey::Ec(jwk), b"x"),
            Err(JweEncryptError::InvalidPoint(_))
        ));
    }

    #[test]
    fn other_curves_are_refused_naming_what_is_supported() {
        let mut jwk = ec_jwk(&EphemeralKey::generate());
        jwk.crv = "P-521".into();
        let err = encrypt(&TeePubKey::Ec(jwk), b"x").unwrap_err();
        assert!(matches!(err, JweEncryptError::UnsupportedKey(_)));
        assert!(err.to_string().contains("RSA-OAEP-256"), "{err}");
    }

    /// The header Trustee's KBS writes for P-256 (`epk` without `alg`) decrypts, and ours is
    /// byte-identical in layout to it.
    #[test]
    fn header_layout_matches_trustee() {
        let key = EphemeralKey::generate();
        let jwe = encrypt(&key.public_jwk(), b"abc").unwrap();
        let header = String::from_utf8(URL_SAFE_NO_PAD.decode(&jwe.protected).unwrap()).unwrap();
        assert!(
            header.starts_with(
                r#"{"alg":"ECDH-ES+A256KW","enc":"A256GCM","epk":{"crv":"P-256","kty":"EC","x":""#
            ),
            "{header}"
        );
        // Re-serializing the parsed header (what guest-components does for the AAD) gives
        // the same bytes.
        let parsed: serde_json::Value = serde_json::from_str(&header).unwrap();
        assert_eq!(serde_json::to_string(&parsed).unwrap(), header);
    }

    /// RFC 7518 Appendix C: ECDH-ES key agreement with Concat KDF, known answer.
    #[test]
    fn concat_kdf_matches_rfc7518_appendix_c() {
        let d = URL_SAFE_NO_PAD
            .decode("VEmDZpDXXK8p8N0Cndsxs924q6nS1RXFASRl6BfUqdw")
            .unwrap();
        let bob = SecretKey::from_slice(&d).unwrap();
        let alice_epk = public_from_jwk(&EcPublicJwk {
            alg: KEY_ALG.into(),
            crv: CURVE.into(),
            x: "gI0GAILBdu7T53akrFmMyGcsF3n5dO7MmwNBHKW5SV0".into(),
            y: "SLW_xSffzlPWrHEVI30DHM_4egVwt3NQqeUD7nMFpps".into(),
        })
        .unwrap();
        let shared = p256::ecdh::diffie_hellman(bob.to_nonzero_scalar(), alice_epk.as_affine());
        let mut key = [0u8; 16];
        concat_kdf::derive_key_into::<sha2::Sha256>(
            shared.raw_secret_bytes(),
            &kdf_other_info("A128GCM", b"Alice", b"Bob", 128),
            &mut key,
        )
        .unwrap();
        assert_eq!(URL_SAFE_NO_PAD.encode(key), "VqqN6vgjbSBcIijNcacQGg");
    }

    /// A JWE assembled step by step the way Trustee's KBS `ecdh_es_a256kw_p256` does it
    /// (its own KDF input layout, header via a JSON map, `aad` absent) decrypts here.
    #[test]
    fn trustee_kbs_ecdh_es_response_decrypts() {
        let guest = EphemeralKey::generate();
        let TeePubKey::Ec(guest_jwk) = guest.public_jwk() else {
            unreachable!("EC")
        };
        let guest_point = public_from_jwk(&guest_jwk).unwrap();
        let sender = SecretKey::random(&mut OsRng);
        let z = p256::ecdh::diffie_hellman(sender.to_nonzero_scalar(), guest_point.as_affine());
        let mut materials = Vec::new();
        materials.extend_from_slice(&(KEY_ALG.len() as u32).to_be_bytes());
        materials.extend_from_slice(KEY_ALG.as_bytes());
        materials.extend_from_slice(&0u32.to_be_bytes());
        materials.extend_from_slice(&0u32.to_be_bytes());
        materials.extend_from_slice(&256u32.to_be_bytes());
        let mut wrapping_key = [0u8; 32];
        concat_kdf::derive_key_into::<sha2::Sha256>(
            z.raw_secret_bytes(),
            &materials,
            &mut wrapping_key,
        )
        .unwrap();
        let cek = [0x42u8; 32];
        let mut encrypted_key = [0u8; 40];
        KekAes256::from(wrapping_key)
            .wrap(&cek, &mut encrypted_key)
            .unwrap();
        let epk = sender.public_key().to_encoded_point(false);
        let header = serde_json::json!({
            "alg": KEY_ALG,
            "enc": CONTENT_ENC,
            "epk": {
                "crv": CURVE,
                "kty": "EC",
                "x": URL_SAFE_NO_PAD.encode(epk.x().unwrap()),
                "y": URL_SAFE_NO_PAD.encode(epk.y().unwrap()),
            }
        });
        let protected = URL_SAFE_NO_PAD.encode(serde_json::to_string(&header).unwrap());
        let iv = [7u8; 12];
        let mut ciphertext = b"from trustee".to_vec();
        let tag = Aes256Gcm::new((&cek).into())
            .encrypt_in_place_detached(
                Nonce::from_slice(&iv),
                protected.as_bytes(),
                &mut ciphertext,
            )
            .unwrap();
        let response = Response {
            protected,
            encrypted_key: URL_SAFE_NO_PAD.encode(encrypted_key),
            aad: None,
            iv: URL_SAFE_NO_PAD.encode(iv),
            ciphertext: URL_SAFE_NO_PAD.encode(ciphertext),
            tag: URL_SAFE_NO_PAD.encode(tag),
        };
        assert_eq!(
            guest.decrypt(&response).unwrap().as_slice(),
            b"from trustee"
        );
    }

    #[test]
    fn trustee_style_aad_equal_to_protected_is_accepted() {
        let key = EphemeralKey::generate();
        let mut jwe = encrypt(&key.public_jwk(), b"abc").unwrap();
        jwe.aad = Some(jwe.protected.clone());
        assert_eq!(key.decrypt(&jwe).unwrap().as_slice(), b"abc");
    }
}
