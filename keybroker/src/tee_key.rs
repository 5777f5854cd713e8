//! Encrypting a released resource to the attested `tee-pubkey`, whatever kind the guest sent.
//!
//! | `kty` | `alg` | what the broker does |
//! | --- | --- | --- |
//! | `EC` (P-256) | `ECDH-ES+A256KW` | Concat KDF + AES key wrap (`veil_kbs_client::jwe`) |
//! | `RSA` (2048-4096 bit) | `RSA-OAEP-256` | RSAES-OAEP, SHA-256 and MGF1-SHA-256 (RFC 7518 §4.3) |
//! | `RSA` | `RSA1_5` | refused: PKCS#1 v1.5 encryption invites padding-oracle attacks |
//! | `EC` (P-521, others) | any | refused, naming the supported kinds |
//!
//! Content is always `A256GCM`. Trustee's KBS wraps to the same key kinds (plus P-521 and the
//! deprecated `RSA1_5`), with the same header layout, so Trustee guests decrypt these JWEs.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand_core::{OsRng, RngCore};
use rsa::traits::PublicKeyParts;
use rsa::{BigUint, Oaep, RsaPublicKey};
use veil_kbs_client::jwe::{self, JweEncryptError, CONTENT_ENC};
use veil_kbs_client::wire::{Response, RsaPublicJwk, TeePubKey};
use zeroize::Zeroizing;

/// `alg` of RSA tee-pubkeys the broker wraps to.
pub const RSA_OAEP_256: &str = "RSA-OAEP-256";
/// The deprecated RSA key-management algorithm older Trustee guests ask for.
pub const RSA1_5: &str = "RSA1_5";
/// Smallest RSA modulus accepted, in bits.
pub const MIN_RSA_BITS: usize = 2048;

/// Checks, before any evidence is verified, that a resource could be encrypted to `key`.
pub fn check(key: &TeePubKey) -> Result<(), JweEncryptError> {
    match key {
        TeePubKey::Ec(ec) => jwe::public_from_jwk(ec).map(|_| ()),
        TeePubKey::Rsa(rsa) => rsa_public(rsa).map(|_| ()),
    }
}

/// Encrypts `plaintext` to `key` as a flattened JWE.
pub fn encrypt(key: &TeePubKey, plaintext: &[u8]) -> Result<Response, JweEncryptError> {
    match key {
        TeePubKey::Ec(ec) => jwe::encrypt_ec(ec, plaintext),
        TeePubKey::Rsa(rsa) => encrypt_rsa_oaep_256(rsa, plaintext),
    }
}

fn encrypt_rsa_oaep_256(jwk: &RsaPublicJwk, plaintext: &[u8]) -> Result<Response, JweEncryptError> {
    let public = rsa_public(jwk)?;
    let mut cek = Zeroizing::new([0u8; 32]);
    OsRng.fill_bytes(cek.as_mut());
    let wrapped = public
        .encrypt(&mut OsRng, Oaep::new::<sha2::Sha256>(), cek.as_ref())
        .map_err(|_| JweEncryptError::Crypto("RSA-OAEP-256"))?;
    // Written out in the order Trustee uses (and sorted), so guests that re-serialize the
    // parsed header for the AAD get these exact bytes.
    let header = format!(r#"{{"alg":"{RSA_OAEP_256}","enc":"{CONTENT_ENC}"}}"#);
    jwe::seal_with_cek(header.as_bytes(), &cek, &wrapped, plaintext)
}

fn rsa_public(jwk: &RsaPublicJwk) -> Result<RsaPublicKey, JweEncryptError> {
    match jwk.alg.as_str() {
        RSA_OAEP_256 => {}
        RSA1_5 => {
            return Err(JweEncryptError::UnsupportedKey(
                "RSA key with alg `RSA1_5`: PKCS#1 v1.5 key transport is refused (padding-oracle attacks); generate the tee key for RSA-OAEP-256".into(),
            ))
        }
        other => {
            return Err(JweEncryptError::UnsupportedKey(format!(
                "RSA key with alg `{other}`"
            )))
        }
    }
    let n = decode_unsigned("n", &jwk.n)?;
    let e = decode_unsigned("e", &jwk.e)?;
    // `RsaPublicKey::new` bounds the modulus at 4096 bits and checks the exponent.
    let key = RsaPublicKey::new(n, e)
        .map_err(|e| JweEncryptError::InvalidPoint(format!("RSA public key: {e}")))?;
    let bits = key.n().bits();
    if bits < MIN_RSA_BITS {
        return Err(JweEncryptError::UnsupportedKey(format!(
            "RSA modulus of {bits} bits, fewer than {MIN_RSA_BITS}"
        )));
    }
    Ok(key)
}

fn decode_unsigned(field: &str, b64: &str) -> Result<BigUint, JweEncryptError> {
    let bytes = URL_SAFE_NO_PAD.decode(b64).map_err(|e| {
        JweEncryptError::InvalidPoint(format!("RSA `{field}` is not base64url: {e}"))
    })?;
    Ok(BigUint::from_bytes_be(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey};
    use rsa::RsaPrivateKey;
    use veil_kbs_client::jwe::{open_with_cek, EphemeralKey};

    const TEST_KEY: &[u8] = include_bytes!("../tests/data/rsa/test_key_2048.pk8.der");
    const WEAK_KEY: &[u8] = include_bytes!("../tests/data/rsa/weak_key_1024.spki.der");

    fn jwk_of(key: &RsaPublicKey, alg: &str) -> TeePubKey {
        TeePubKey::Rsa(RsaPublicJwk {
            alg: alg.to_owned(),
            n: URL_SAFE_NO_PAD.encode(key.n().to_bytes_be()),
            e: URL_SAFE_NO_PAD.encode(key.e().to_bytes_be()),
        })
    }

    /// What a Trustee guest with an RSA-OAEP-256 key does with the response: unwrap the CEK
    /// with its private key, then open the content with the protected header as AAD.
    #[test]
    fn rsa_oaep_256_round_trip() {
        let private = RsaPrivateKey::from_pkcs8_der(TEST_KEY).unwrap();
        let jwk = jwk_of(&private.to_public_key(), RSA_OAEP_256);
        check(&jwk).unwrap();
        let response = encrypt(&jwk, b"model key").unwrap();
        let header = URL_SAFE_NO_PAD.decode(&response.protected).unwrap();
        assert_eq!(header, br#"{"alg":"RSA-OAEP-256","enc":"A256GCM"}"#);
        let wrapped = URL_SAFE_NO_PAD.decode(&response.encrypted_key).unwrap();
        let cek = private
            .decrypt(Oaep::new::<sha2::Sha256>(), &wrapped)
            .unwrap();
        let cek: [u8; 32] = cek.try_into().unwrap();
        assert_eq!(
            open_with_cek(&response, &cek).unwrap().as_slice(),
            b"model key"
        );
    }

    #[test]
    fn rsa1_5_is_refused_naming_the_alternatives() {
        let private = RsaPrivateKey::from_pkcs8_der(TEST_KEY).unwrap();
        let err = check(&jwk_of(&private.to_public_key(), RSA1_5)).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("RSA1_5") && text.contains("RSA-OAEP-256"),
            "{text}"
        );
    }

    #[test]
    fn short_rsa_keys_are_refused() {
        let weak = RsaPublicKey::from_public_key_der(WEAK_KEY).unwrap();
        let err = check(&jwk_of(&weak, RSA_OAEP_256)).unwrap_err();
        assert!(err.to_string().contains("1024 bits"), "{err}");
    }

    #[test]
    fn ec_keys_go_through_ecdh_es() {
        let key = EphemeralKey::generate();
        let response = encrypt(&key.public_jwk(), b"abc").unwrap();
        assert_eq!(key.decrypt(&response).unwrap().as_slice(), b"abc");
    }
}
