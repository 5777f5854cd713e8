//! The Trustee KBS protocol's JSON messages, shared by the broker and the guest.
//!
//! Field names follow `kbs/docs/kbs_attestation_protocol.md` of confidential-containers/trustee
//! (protocol version 0.1.1): `Request` -> `Challenge` -> `Attestation` -> token, then a resource
//! as a flattened-JSON JWE (`Response`). Errors are RFC 7807 problem details.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha384};

/// The protocol version this crate speaks in `Request.version`.
pub const PROTOCOL_VERSION: &str = "0.1.1";

/// Name of the session cookie set by `/auth` and sent back on every later call.
pub const SESSION_COOKIE: &str = "kbs-session-id";

/// Largest JSON body either side accepts; evidence with certificates fits well below it.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// The TEE a guest claims to run in (`Request.tee`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tee {
    /// AMD SEV-SNP: evidence is a hardware-signed attestation report.
    Snp,
    /// The insecure development attester: evidence is self-reported and proves nothing.
    Sample,
}

impl Tee {
    /// The protocol name of this TEE.
    pub fn as_str(self) -> &'static str {
        match self {
            Tee::Snp => "snp",
            Tee::Sample => "sample",
        }
    }
}

/// `POST /kbs/v0/auth` body: the guest announces its TEE and protocol version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// Protocol version used by the client, e.g. `0.1.1`.
    pub version: String,
    /// The TEE the client runs in.
    pub tee: Tee,
    /// Reserved for TEE-specific handshakes; veil sends and expects an empty object.
    #[serde(rename = "extra-params", default)]
    pub extra_params: serde_json::Value,
}

/// `/auth` response body: the nonce the evidence must be bound to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Challenge {
    /// Fresh random nonce (base64), good for one attestation in this session.
    pub nonce: String,
    /// Reserved; empty for SNP and sample.
    #[serde(rename = "extra-params", default)]
    pub extra_params: serde_json::Value,
}

/// The guest's ephemeral public key as a JWK (`kty` EC, P-256, `ECDH-ES+A256KW`).
///
/// Fields are declared in lexicographic order so that serializing this struct gives the same
/// bytes as serializing it as a sorted JSON map, which is what Trustee hashes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeePubKey {
    /// Key management algorithm the broker must use: `ECDH-ES+A256KW`.
    pub alg: String,
    /// Curve name: `P-256`.
    pub crv: String,
    /// Key type: `EC`.
    pub kty: String,
    /// X coordinate, base64url without padding.
    pub x: String,
    /// Y coordinate, base64url without padding.
    pub y: String,
}

/// What the evidence's report data commits to: the challenge nonce and the guest's key.
///
/// Fields in lexicographic order for the same reason as [`TeePubKey`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeData {
    /// The nonce from the [`Challenge`].
    pub nonce: String,
    /// The guest's ephemeral public key.
    #[serde(rename = "tee-pubkey")]
    pub tee_pubkey: TeePubKey,
}

impl RuntimeData {
    /// The 64 bytes the TEE report data must hold: SHA-384 of this struct's compact JSON
    /// (keys sorted, no whitespace), zero padded. SEV-SNP's report data field is 64 bytes.
    pub fn report_data(&self) -> Result<[u8; 64], serde_json::Error> {
        let json = serde_json::to_vec(self)?;
        let digest = Sha384::digest(&json);
        let mut out = [0u8; 64];
        out[..digest.len()].copy_from_slice(&digest);
        Ok(out)
    }
}

/// The TEE evidence inside an [`Attestation`] (Trustee's composite shape).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeeEvidence {
    /// Evidence of the TEE named in the [`Request`]; its shape depends on that TEE.
    pub primary_evidence: serde_json::Value,
    /// Evidence of secondary devices as a JSON string; veil does not use it and sends `{}`.
    #[serde(default)]
    pub additional_evidence: String,
}

/// `POST /kbs/v0/attest` body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attestation {
    /// Optional init data; veil does not bind any and refuses it rather than ignore it.
    #[serde(rename = "init-data", default, skip_serializing_if = "Option::is_none")]
    pub init_data: Option<serde_json::Value>,
    /// The nonce and key the evidence is bound to.
    #[serde(rename = "runtime-data")]
    pub runtime_data: RuntimeData,
    /// The evidence itself.
    #[serde(rename = "tee-evidence")]
    pub tee_evidence: TeeEvidence,
}

/// `/attest` response body: the attestation results token (a JWT signed by the broker).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttestationToken {
    /// Compact JWS.
    pub token: String,
}

/// A resource encrypted to the guest's key: JWE flattened JSON serialization (RFC 7516 §7.2.2).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Response {
    /// base64url(JSON protected header): `alg`, `enc`, `epk`.
    pub protected: String,
    /// base64url(wrapped content-encryption key).
    pub encrypted_key: String,
    /// Additional authenticated data, if any (Trustee sets it equal to `protected`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aad: Option<String>,
    /// base64url(96-bit GCM nonce).
    pub iv: String,
    /// base64url(ciphertext).
    pub ciphertext: String,
    /// base64url(128-bit GCM tag).
    pub tag: String,
}

/// An RFC 7807 problem: `type` names the failed check, `detail` says what to do.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Problem {
    /// Stable URI naming the problem type, e.g. `.../errors/policy-denied`.
    #[serde(rename = "type")]
    pub problem_type: String,
    /// Short summary of the problem type.
    #[serde(default)]
    pub title: String,
    /// HTTP status code.
    #[serde(default)]
    pub status: u16,
    /// What failed for this request and what to do about it.
    #[serde(default)]
    pub detail: String,
}

impl Problem {
    /// The last path segment of `type`, e.g. `policy-denied`.
    pub fn kind(&self) -> &str {
        self.problem_type
            .rsplit('/')
            .next()
            .unwrap_or(&self.problem_type)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_runtime_data() -> RuntimeData {
        RuntimeData {
            nonce: "bm9uY2U".into(),
            tee_pubkey: TeePubKey {
                alg: "ECDH-ES+A256KW".into(),
                crv: "P-256".into(),
                kty: "EC".into(),
                x: "eA".into(),
                y: "eQ".into(),
            },
        }
    }

    #[test]
    fn runtime_data_serializes_like_a_sorted_json_map() {
        let rd = sample_runtime_data();
        let typed = serde_json::to_string(&rd).unwrap();
        // A serde_json::Value map without preserve_order sorts its keys.
        let value: serde_json::Value = serde_json::from_str(&typed).unwrap();
        let mut sorted = std::collections::BTreeMap::new();
        for (k, v) in value.as_object().unwrap() {
            sorted.insert(k.clone(), v.clone());
        }
        assert_eq!(typed, serde_json::to_string(&sorted).unwrap());
        assert!(typed.starts_with(r#"{"nonce":"#));
    }

    #[test]
    fn report_data_is_sha384_then_zero_padding() {
        let rd = sample_runtime_data();
        let rdata = rd.report_data().unwrap();
        let digest = Sha384::digest(serde_json::to_vec(&rd).unwrap());
        assert_eq!(&rdata[..48], digest.as_slice());
        assert_eq!(&rdata[48..], &[0u8; 16]);
    }

    #[test]
    fn request_round_trips_with_trustee_field_names() {
        let json = r#"{"version":"0.1.1","tee":"snp","extra-params":{}}"#;
        let req: Request = serde_json::from_str(json).unwrap();
        assert_eq!(req.tee, Tee::Snp);
        assert_eq!(serde_json::to_string(&req).unwrap(), json);
    }

    #[test]
    fn problem_kind_is_the_last_type_segment() {
        let p = Problem {
            problem_type: "https://veil.dev/kbs/errors/nonce-reused".into(),
            title: String::new(),
            status: 401,
            detail: String::new(),
        };
        assert_eq!(p.kind(), "nonce-reused");
    }
}
