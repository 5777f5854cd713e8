//! Compact JWS with EdDSA (Ed25519), the signature format of admin and attestation tokens.
//!
//! Only `{"alg":"EdDSA","typ":"JWT"}` is produced and accepted: no algorithm negotiation, so
//! no `none` or HMAC confusion.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde_json::Value;

const HEADER: &str = r#"{"alg":"EdDSA","typ":"JWT"}"#;

/// Largest token accepted.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum JwsError {
    /// Not three base64url parts of JSON, or too large.
    #[error("token is not a compact JWS: {0}")]
    Malformed(String),
    /// The header is not EdDSA/JWT.
    #[error("token header must be {HEADER}")]
    Algorithm,
    /// No trusted key made this signature.
    #[error("token signature does not verify with any trusted key")]
    Signature,
}

/// Signs `claims` (a JSON object) into a compact JWS.
pub fn sign(key: &SigningKey, claims: &Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(HEADER);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signing_input = format!("{header}.{payload}");
    let signature = key.sign(signing_input.as_bytes());
    format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(signature.to_bytes())
    )
}

/// Verifies `token` against any of `keys` and returns its claims.
pub fn verify(keys: &[VerifyingKey], token: &str) -> Result<Value, JwsError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(JwsError::Malformed("too large".into()));
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwsError::Malformed(
            "expected three dot-separated parts".into(),
        ));
    };
    let header_json = decode(header)?;
    let header_value: Value =
        serde_json::from_slice(&header_json).map_err(|e| JwsError::Malformed(e.to_string()))?;
    if header_value.get("alg").and_then(Value::as_str) != Some("EdDSA") {
        return Err(JwsError::Algorithm);
    }
    let signature_bytes: [u8; 64] = decode(signature)?
        .try_into()
        .map_err(|_| JwsError::Malformed("signature is not 64 bytes".into()))?;
    let signature = Signature::from_bytes(&signature_bytes);
    let signing_input = &token[..header.len() + 1 + payload.len()];
    if !keys
        .iter()
        .any(|k| k.verify(signing_input.as_bytes(), &signature).is_ok())
    {
        return Err(JwsError::Signature);
    }
    serde_json::from_slice(&decode(payload)?).map_err(|e| JwsError::Malformed(e.to_string()))
}

fn decode(part: &str) -> Result<Vec<u8>, JwsError> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|e| JwsError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::OsRng;

    #[test]
    fn signed_tokens_verify_and_others_do_not() {
        let key = SigningKey::generate(&mut OsRng);
        let other = SigningKey::generate(&mut OsRng);
        let token = sign(&key, &serde_json::json!({"iat": 1}));
        assert_eq!(verify(&[key.verifying_key()], &token).unwrap()["iat"], 1);
        assert!(matches!(
            verify(&[other.verifying_key()], &token),
            Err(JwsError::Signature)
        ));
        let mut tampered = token.clone();
        tampered.insert(40, 'A');
        assert!(verify(&[key.verifying_key()], &tampered).is_err());
    }

    #[test]
    fn alg_none_is_refused() {
        let key = SigningKey::generate(&mut OsRng);
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#);
        let payload = URL_SAFE_NO_PAD.encode("{}");
        let token = format!("{header}.{payload}.");
        assert!(matches!(
            verify(&[key.verifying_key()], &token),
            Err(JwsError::Algorithm)
        ));
    }
}
