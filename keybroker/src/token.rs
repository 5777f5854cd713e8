//! Attestation results tokens: EdDSA JWTs signed by the broker's own key, returned by
//! `/attest` and accepted back as `Authorization: Bearer` on resource requests.
//!
//! The signing key lives in `<state>/token-signing-key.pem` (PKCS#8, 0600) and is created on
//! first start, so tokens stay valid across restarts.

use std::path::Path;

use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::SigningKey;
use rand_core::OsRng;
use serde_json::{json, Value};
use veil_kbs_client::wire::TeePubKey;

use crate::attestation::Claims;
use crate::jws::{self, JwsError};
use crate::resources::{write_private_atomic, StoreError};
use crate::session::Attested;

/// Issuer name in every token.
pub const ISSUER: &str = "veil-kbs";

/// Why the token key could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum TokenKeyError {
    /// The key file exists but is not a PKCS#8 Ed25519 key.
    #[error("{path} is not a PKCS#8 PEM Ed25519 key ({reason}); move it away to let the broker create a new one")]
    Invalid {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a bearer token was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Signature or format.
    #[error("attestation token refused: {0}")]
    Jws(#[from] JwsError),
    /// Past `exp`.
    #[error("attestation token expired at {0}; attest again")]
    Expired(u64),
    /// A claim is missing or has the wrong type.
    #[error("attestation token lacks a valid `{0}` claim")]
    Claim(&'static str),
}

/// Issues and checks attestation tokens.
pub struct TokenIssuer {
    key: SigningKey,
    ttl_secs: u64,
}

impl std::fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenIssuer")
            .field("ttl_secs", &self.ttl_secs)
            .finish_non_exhaustive()
    }
}

impl TokenIssuer {
    /// Loads `<state>/token-signing-key.pem`, creating it if missing.
    pub fn load_or_create(state_dir: &Path, ttl_secs: u64) -> Result<Self, TokenKeyError> {
        let path = state_dir.join("token-signing-key.pem");
        let key = match std::fs::read_to_string(&path) {
            Ok(pem) => SigningKey::from_pkcs8_pem(&pem).map_err(|e| TokenKeyError::Invalid {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = SigningKey::generate(&mut OsRng);
                let pem =
                    key.to_pkcs8_pem(Default::default())
                        .map_err(|e| TokenKeyError::Invalid {
                            path: path.display().to_string(),
                            reason: e.to_string(),
                        })?;
                write_private_atomic(&path, pem.as_bytes())?;
                key
            }
            Err(source) => {
                return Err(StoreError::Read {
                    path: path.clone(),
                    source,
                }
                .into())
            }
        };
        Ok(Self { key, ttl_secs })
    }

    /// A token for a successful attestation. Insecure claims say so in the token.
    pub fn issue(&self, claims: &Claims, tee_pubkey: &TeePubKey, now: u64) -> String {
        let mut body = json!({
            "iss": ISSUER,
            "iat": now,
            "exp": now.saturating_add(self.ttl_secs),
            "tee": claims.tee.as_str(),
            "insecure": claims.insecure,
            "tee-pubkey": tee_pubkey,
            "claims": claims.json,
        });
        if claims.insecure {
            body["warning"] =
                "INSECURE: sample attester, claims are self-reported and prove nothing".into();
        }
        jws::sign(&self.key, &body)
    }

    /// Verifies a bearer token and recovers the attestation it records.
    pub fn verify(&self, token: &str, now: u64) -> Result<Attested, TokenError> {
        let body = jws::verify(&[self.key.verifying_key()], token)?;
        let exp = body
            .get("exp")
            .and_then(Value::as_u64)
            .ok_or(TokenError::Claim("exp"))?;
        if exp <= now {
            return Err(TokenError::Expired(exp));
        }
        let tee_pubkey: TeePubKey = body
            .get("tee-pubkey")
            .cloned()
            .and_then(|v| serde_json::from_value(v).ok())
            .ok_or(TokenError::Claim("tee-pubkey"))?;
        let tee = body
            .get("tee")
            .cloned()
            .and_then(|v| serde_json::from_value(v).ok())
            .ok_or(TokenError::Claim("tee"))?;
        let insecure = body
            .get("insecure")
            .and_then(Value::as_bool)
            .ok_or(TokenError::Claim("insecure"))?;
        let fields = body
            .get("claims")
            .and_then(Value::as_object)
            .cloned()
            .ok_or(TokenError::Claim("claims"))?;
        Ok(Attested {
            claims: Claims::new(tee, insecure, fields),
            tee_pubkey,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use veil_kbs_client::jwe::EphemeralKey;
    use veil_kbs_client::Tee;

    #[test]
    fn tokens_round_trip_expire_and_survive_restart() {
        let dir = tempfile::tempdir().unwrap();
        let issuer = TokenIssuer::load_or_create(dir.path(), 60).unwrap();
        let claims = Claims::new(Tee::Sample, true, Default::default());
        let key = EphemeralKey::generate().public_jwk();
        let token = issuer.issue(&claims, &key, 1000);
        let reloaded = TokenIssuer::load_or_create(dir.path(), 60).unwrap();
        let attested = reloaded.verify(&token, 1010).unwrap();
        assert!(attested.claims.insecure);
        assert_eq!(attested.tee_pubkey, key);
        assert!(matches!(
            reloaded.verify(&token, 1060),
            Err(TokenError::Expired(1060))
        ));
    }

    #[test]
    fn sample_tokens_say_insecure() {
        let dir = tempfile::tempdir().unwrap();
        let issuer = TokenIssuer::load_or_create(dir.path(), 60).unwrap();
        let claims = Claims::new(Tee::Sample, true, Default::default());
        let token = issuer.issue(&claims, &EphemeralKey::generate().public_jwk(), 1);
        let body = jws::verify(&[issuer.key.verifying_key()], &token).unwrap();
        assert!(body["warning"].as_str().unwrap().contains("INSECURE"));
    }
}
