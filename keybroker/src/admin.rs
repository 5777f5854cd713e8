//! Admin authentication: Ed25519-signed bearer tokens, never anonymous.
//!
//! The owner creates a key pair (`veil kbs admin-keygen`), starts the broker with the public
//! half (`--admin-pubkey`), and signs a short-lived, single-use JWT per call:
//! `Authorization: Bearer <EdDSA JWT {"aud":"veil-kbs-admin","iat":..,"exp":..,"jti":..}>`.
//! A `jti` is accepted once ([`crate::admin_replay`]), so a captured token cannot be replayed.
//! Authentication (is the signature from a trusted key, is it fresh) is all there is to
//! authorization today: any trusted admin key may set any resource and policy.

use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{SigningKey, VerifyingKey};
use rand_core::{OsRng, RngCore};
use serde_json::{json, Value};

use crate::admin_replay::{ReplayError, ReplayGuard};
use crate::jws::{self, JwsError};
use crate::resources::{write_private_atomic, StoreError};

/// Audience of admin tokens, so attestation tokens can never pass as admin tokens.
pub const ADMIN_AUDIENCE: &str = "veil-kbs-admin";
/// Longest lifetime an admin token may claim.
pub const MAX_ADMIN_TOKEN_SECS: u64 = 300;
/// Lifetime of the tokens [`admin_token`] signs.
pub const ADMIN_TOKEN_SECS: u64 = 120;
/// Longest `jti` accepted.
pub const MAX_JTI_LEN: usize = 128;
/// Clock skew tolerated on `iat`.
pub const CLOCK_SKEW_SECS: u64 = 60;

/// Why an admin call was refused.
#[derive(Debug, thiserror::Error)]
pub enum AdminAuthError {
    /// No `Authorization: Bearer` header.
    #[error("admin endpoints need `Authorization: Bearer <token signed by an admin key>`; none was sent")]
    MissingToken,
    /// Signature, format, or audience wrong.
    #[error("admin token refused: {0}")]
    Invalid(String),
    /// Expired, from the future, or valid for too long.
    #[error("admin token is not fresh: {0}; sign a new one (clocks must agree within {CLOCK_SKEW_SECS} s)")]
    Stale(String),
    /// The token's `jti` was used before, or could not be recorded.
    #[error(transparent)]
    Replay(#[from] ReplayError),
}

impl From<JwsError> for AdminAuthError {
    fn from(e: JwsError) -> Self {
        AdminAuthError::Invalid(e.to_string())
    }
}

/// Why an admin key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AdminKeyError {
    /// Reading failed.
    #[error("cannot read admin key {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Not the expected PEM.
    #[error("{path} is not a PEM Ed25519 {what} key: {reason}")]
    Format {
        /// The file.
        path: String,
        /// `public` or `private`.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// Writing failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The set of trusted admin public keys and the tokens already used.
#[derive(Debug)]
pub struct AdminAuth {
    keys: Vec<VerifyingKey>,
    replay: ReplayGuard,
}

impl AdminAuth {
    /// Trusts `keys`, remembering used tokens in memory only (a restart forgets them).
    pub fn new(keys: Vec<VerifyingKey>) -> Self {
        Self::with_replay_guard(keys, ReplayGuard::in_memory())
    }

    /// Trusts `keys`, remembering used tokens with `replay` (the broker persists them).
    pub fn with_replay_guard(keys: Vec<VerifyingKey>, replay: ReplayGuard) -> Self {
        Self { keys, replay }
    }

    /// Checks the `Authorization` header value of an admin call at time `now`.
    pub fn authenticate(
        &self,
        authorization: Option<&str>,
        now: u64,
    ) -> Result<(), AdminAuthError> {
        let token = authorization
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(AdminAuthError::MissingToken)?;
        let claims = jws::verify(&self.keys, token)?;
        if claims.get("aud").and_then(Value::as_str) != Some(ADMIN_AUDIENCE) {
            return Err(AdminAuthError::Invalid(format!(
                "audience is not `{ADMIN_AUDIENCE}`"
            )));
        }
        let iat = claims.get("iat").and_then(Value::as_u64);
        let exp = claims.get("exp").and_then(Value::as_u64);
        let (Some(iat), Some(exp)) = (iat, exp) else {
            return Err(AdminAuthError::Invalid("iat and exp are required".into()));
        };
        if exp <= now {
            return Err(AdminAuthError::Stale(format!(
                "expired at {exp}, now {now}"
            )));
        }
        if iat > now.saturating_add(CLOCK_SKEW_SECS) {
            return Err(AdminAuthError::Stale(format!(
                "issued in the future ({iat})"
            )));
        }
        if exp.saturating_sub(iat) > MAX_ADMIN_TOKEN_SECS {
            return Err(AdminAuthError::Stale(format!(
                "lifetime over {MAX_ADMIN_TOKEN_SECS} s"
            )));
        }
        let jti = claims
            .get("jti")
            .and_then(Value::as_str)
            .filter(|j| !j.is_empty() && j.len() <= MAX_JTI_LEN)
            .ok_or_else(|| {
                AdminAuthError::Invalid(format!(
                    "a `jti` of 1 to {MAX_JTI_LEN} characters is required (tokens are single-use)"
                ))
            })?;
        self.replay.accept_once(jti, exp, now)?;
        Ok(())
    }
}

/// Signs a single-use admin token (random `jti`) valid for [`ADMIN_TOKEN_SECS`] from `now`.
pub fn admin_token(key: &SigningKey, now: u64) -> String {
    let mut jti = [0u8; 16];
    OsRng.fill_bytes(&mut jti);
    jws::sign(
        key,
        &json!({
            "aud": ADMIN_AUDIENCE,
            "iat": now,
            "exp": now + ADMIN_TOKEN_SECS,
            "jti": URL_SAFE_NO_PAD.encode(jti),
        }),
    )
}

/// Creates an admin key pair: `out` (PKCS#8 PEM, 0600) and `out.pub` (SPKI PEM).
pub fn generate_admin_key(out: &Path) -> Result<VerifyingKey, AdminKeyError> {
    let key = SigningKey::generate(&mut OsRng);
    let format_err = |what, reason: String| AdminKeyError::Format {
        path: out.display().to_string(),
        what,
        reason,
    };
    let private = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| format_err("private", e.to_string()))?;
    let public = key
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| format_err("public", e.to_string()))?;
    write_private_atomic(out, private.as_bytes())?;
    let mut pub_path = out.as_os_str().to_owned();
    pub_path.push(".pub");
    write_private_atomic(Path::new(&pub_path), public.as_bytes())?;
    Ok(key.verifying_key())
}

/// Reads an admin private key (PKCS#8 PEM).
pub fn load_signing_key(path: &Path) -> Result<SigningKey, AdminKeyError> {
    let pem = read(path)?;
    SigningKey::from_pkcs8_pem(&pem).map_err(|e| AdminKeyError::Format {
        path: path.display().to_string(),
        what: "private",
        reason: e.to_string(),
    })
}

/// Reads an admin public key (SPKI PEM).
pub fn load_verifying_key(path: &Path) -> Result<VerifyingKey, AdminKeyError> {
    let pem = read(path)?;
    VerifyingKey::from_public_key_pem(&pem).map_err(|e| AdminKeyError::Format {
        path: path.display().to_string(),
        what: "public",
        reason: e.to_string(),
    })
}

fn read(path: &Path) -> Result<String, AdminKeyError> {
    std::fs::read_to_string(path).map_err(|source| AdminKeyError::Read {
        path: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth_and_key() -> (AdminAuth, SigningKey) {
        let key = SigningKey::generate(&mut OsRng);
        (AdminAuth::new(vec![key.verifying_key()]), key)
    }

    #[test]
    fn fresh_token_from_trusted_key_passes() {
        let (auth, key) = auth_and_key();
        let header = format!("Bearer {}", admin_token(&key, 1000));
        auth.authenticate(Some(&header), 1010).unwrap();
    }

    #[test]
    fn missing_wrong_key_expired_are_distinct() {
        let (auth, _) = auth_and_key();
        assert!(matches!(
            auth.authenticate(None, 0),
            Err(AdminAuthError::MissingToken)
        ));
        let stranger = SigningKey::generate(&mut OsRng);
        let header = format!("Bearer {}", admin_token(&stranger, 1000));
        assert!(matches!(
            auth.authenticate(Some(&header), 1000),
            Err(AdminAuthError::Invalid(_))
        ));
        let (auth, key) = auth_and_key();
        let header = format!("Bearer {}", admin_token(&key, 1000));
        assert!(matches!(
            auth.authenticate(Some(&header), 1000 + ADMIN_TOKEN_SECS),
            Err(AdminAuthError::Stale(_))
        ));
    }

    #[test]
    fn a_token_is_good_once() {
        let (auth, key) = auth_and_key();
        let header = format!("Bearer {}", admin_token(&key, 1000));
        auth.authenticate(Some(&header), 1001).unwrap();
        let err = auth.authenticate(Some(&header), 1002).unwrap_err();
        assert!(
            matches!(err, AdminAuthError::Replay(ReplayError::Replayed(_))),
            "{err}"
        );
        // A new token from the same key is fine.
        let fresh = format!("Bearer {}", admin_token(&key, 1002));
        auth.authenticate(Some(&fresh), 1003).unwrap();
    }

    #[test]
    fn tokens_without_jti_are_refused() {
        let (auth, key) = auth_and_key();
        let token = jws::sign(
            &key,
            &json!({"aud": ADMIN_AUDIENCE, "iat": 1000, "exp": 1100}),
        );
        let err = auth
            .authenticate(Some(&format!("Bearer {token}")), 1001)
            .unwrap_err();
        assert!(err.to_string().contains("jti"), "{err}");
    }

    #[test]
    fn keygen_writes_a_usable_pair() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("admin.key");
        let public = generate_admin_key(&out).unwrap();
        let private = load_signing_key(&out).unwrap();
        let loaded_public = load_verifying_key(&dir.path().join("admin.key.pub")).unwrap();
        assert_eq!(private.verifying_key(), public);
        assert_eq!(loaded_public, public);
    }
}
