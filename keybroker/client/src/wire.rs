//! The Trustee KBS protocol's JSON messages, shared by the broker and the guest.
//!
//! Matched against confidential-containers/trustee `kbs/docs/kbs_attestation_protocol.md`,
//! the KBS server (`kbs/src/attestation/backend.rs`, protocol version 0.4.0), the `kbs-types`
//! crate, and guest-components' `kbs_protocol` client (`rcar_client.rs`), as stored in 2026.
//! See `keybroker/README.md` ("Trustee compatibility") for what was and was not verified.
//!
//! `Request` -> `Challenge` -> `Attestation` -> token, then a resource as a flattened-JSON JWE
//! (`Response`). Errors are RFC 7807 problem details (Trustee's `ErrorInformation` is the
//! `type` + `detail` subset of it).
//!
//! # Binding (protocol 0.4.0)
//!
//! The TEE report data commits to SHA-384 of the RFC 8785 canonical JSON of
//! `{"additional-evidence": <tee-evidence.additional_evidence>, "nonce": <nonce>,
//! "tee-pubkey": <JWK>}`. SEV-SNP report data holds that digest zero-padded to 64 bytes;
//! `sample` evidence carries the 48-byte digest itself (base64).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha384};

/// The protocol version this crate speaks in `Request.version` (Trustee KBS requires exactly
/// this version since the composite `tee-evidence` and the `additional-evidence` binding).
pub const PROTOCOL_VERSION: &str = "0.4.0";

/// Name of the session cookie set by `/auth` and sent back on every later call.
pub const SESSION_COOKIE: &str = "kbs-session-id";

/// Largest JSON body either side accepts; evidence with certificates fits well below it.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// Length of the runtime-data digest (SHA-384).
pub const RUNTIME_DIGEST_LEN: usize = 48;

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
    /// Protocol version used by the client, e.g. `0.4.0`.
    pub version: String,
    /// The TEE the client runs in.
    pub tee: Tee,
    /// TEE-specific handshake parameters. Trustee guests send
    /// `{"supported-hash-algorithms": [...]}` and may send `tee-metadata`; veil sends `{}`.
    #[serde(rename = "extra-params", default)]
    pub extra_params: serde_json::Value,
}

/// `/auth` response body: the nonce the evidence must be bound to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Challenge {
    /// Fresh random nonce (base64), good for one attestation in this session.
    pub nonce: String,
    /// Trustee sends the empty string here for every TEE but IBM SE (older guests parse it
    /// as a string), or `{"selected-hash-algorithm": ...}`; veil sends `""` as well.
    #[serde(rename = "extra-params", default)]
    pub extra_params: serde_json::Value,
}

/// The guest's ephemeral public key as a JWK, tagged by `kty` like `kbs_types::TeePubKey`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kty")]
pub enum TeePubKey {
    /// An elliptic-curve key (`kty` `EC`); veil generates P-256 for `ECDH-ES+A256KW`.
    #[serde(rename = "EC")]
    Ec(EcPublicJwk),
    /// An RSA key (`kty` `RSA`), as older or configured Trustee guests send; the broker
    /// wraps to it with `RSA-OAEP-256` only.
    #[serde(rename = "RSA")]
    Rsa(RsaPublicJwk),
}

impl TeePubKey {
    /// The key-management algorithm the guest asked for (`alg`).
    pub fn alg(&self) -> &str {
        match self {
            TeePubKey::Ec(k) => &k.alg,
            TeePubKey::Rsa(k) => &k.alg,
        }
    }
}

/// EC public key fields (RFC 7518 §6.2.1) without `kty`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EcPublicJwk {
    /// Key management algorithm the broker must use: `ECDH-ES+A256KW`.
    pub alg: String,
    /// Curve name, e.g. `P-256`.
    pub crv: String,
    /// X coordinate, base64url without padding.
    pub x: String,
    /// Y coordinate, base64url without padding.
    pub y: String,
}

/// RSA public key fields (RFC 7518 §6.3.1) without `kty`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RsaPublicJwk {
    /// Key management algorithm the broker must use, e.g. `RSA-OAEP-256`.
    pub alg: String,
    /// Modulus, base64url big-endian without padding.
    pub n: String,
    /// Public exponent, base64url big-endian without padding.
    pub e: String,
}

/// What the evidence's report data commits to: the challenge nonce and the guest's key.
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
    /// SHA-384 of the canonical JSON (RFC 8785) of
    /// `{"additional-evidence", "nonce", "tee-pubkey"}`, as Trustee's KBS builds it for the
    /// primary evidence and guest-components' `kbs_protocol` hashes it.
    pub fn digest(
        &self,
        additional_evidence: &str,
    ) -> Result<[u8; RUNTIME_DIGEST_LEN], serde_json::Error> {
        let bound = serde_json::json!({
            "additional-evidence": additional_evidence,
            "nonce": self.nonce,
            "tee-pubkey": self.tee_pubkey,
        });
        let canonical = serde_json_canonicalizer::to_vec(&bound)?;
        Ok(Sha384::digest(&canonical).into())
    }

    /// The 64-byte SEV-SNP report data for this runtime data: [`RuntimeData::digest`]
    /// followed by 16 zero bytes (Trustee's `regularize_data` and the SNP attester's
    /// `resize(64, 0)`).
    pub fn report_data(&self, additional_evidence: &str) -> Result<[u8; 64], serde_json::Error> {
        Ok(pad_to_report_data(&self.digest(additional_evidence)?))
    }
}

/// Zero-pads a runtime-data digest to the 64-byte SEV-SNP report data.
pub fn pad_to_report_data(digest: &[u8; RUNTIME_DIGEST_LEN]) -> [u8; 64] {
    let mut out = [0u8; 64];
    out[..RUNTIME_DIGEST_LEN].copy_from_slice(digest);
    out
}

/// The TEE evidence inside an [`Attestation`] (Trustee's `CompositeEvidence`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeeEvidence {
    /// Evidence of the TEE named in the [`Request`]; its shape depends on that TEE.
    pub primary_evidence: serde_json::Value,
    /// Evidence of secondary devices as a JSON string (TEE -> evidence map). It is part of
    /// the runtime-data binding. veil sends `""` (no devices), as Trustee guests do.
    #[serde(default)]
    pub additional_evidence: String,
}

/// `POST /kbs/v0/attest` body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attestation {
    /// Optional init data (`{"format":"toml","body":...}` from Trustee guests); veil does not
    /// bind any and the broker refuses it rather than ignore it.
    #[serde(rename = "init-data", default, skip_serializing_if = "Option::is_none")]
    pub init_data: Option<serde_json::Value>,
    /// The nonce and key the evidence is bound to.
    #[serde(rename = "runtime-data")]
    pub runtime_data: RuntimeData,
    /// The evidence itself.
    #[serde(rename = "tee-evidence")]
    pub tee_evidence: TeeEvidence,
}

impl Attestation {
    /// The runtime-data digest this attestation's primary evidence must carry.
    pub fn runtime_digest(&self) -> Result<[u8; RUNTIME_DIGEST_LEN], serde_json::Error> {
        self.runtime_data
            .digest(&self.tee_evidence.additional_evidence)
    }
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
    /// base64url(JSON protected header): `alg`, `enc`, and `epk` for ECDH-ES.
    pub protected: String,
    /// base64url(wrapped content-encryption key).
    pub encrypted_key: String,
    /// Additional authenticated data, if any (older Trustee sets it equal to `protected`).
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

    fn ec_runtime_data() -> RuntimeData {
        RuntimeData {
            nonce: "bm9uY2U".into(),
            tee_pubkey: TeePubKey::Ec(EcPublicJwk {
                alg: "ECDH-ES+A256KW".into(),
                crv: "P-256".into(),
                x: "eA".into(),
                y: "eQ".into(),
            }),
        }
    }

    #[test]
    fn digest_is_sha384_of_the_canonical_json_trustee_builds() {
        let rd = ec_runtime_data();
        // What Trustee's KBS hashes for the primary evidence, written out by hand: keys
        // sorted at every level (RFC 8785), no whitespace.
        let expected_json = r#"{"additional-evidence":"","nonce":"bm9uY2U","tee-pubkey":{"alg":"ECDH-ES+A256KW","crv":"P-256","kty":"EC","x":"eA","y":"eQ"}}"#;
        let expected: [u8; 48] = Sha384::digest(expected_json.as_bytes()).into();
        assert_eq!(rd.digest("").unwrap(), expected);
        let padded = rd.report_data("").unwrap();
        assert_eq!(&padded[..48], expected.as_slice());
        assert_eq!(&padded[48..], &[0u8; 16]);
        assert_ne!(
            rd.digest("{}").unwrap(),
            expected,
            "additional evidence is bound"
        );
    }

    #[test]
    fn request_round_trips_with_trustee_field_names() {
        let json = r#"{"version":"0.4.0","tee":"snp","extra-params":{}}"#;
        let req: Request = serde_json::from_str(json).unwrap();
        assert_eq!(req.tee, Tee::Snp);
        assert_eq!(serde_json::to_string(&req).unwrap(), json);
    }

    /// The bodies of guest-components' `kbs_protocol` (0.4.0): a `Request` with supported
    /// hash algorithms, Trustee's `Challenge` with an empty-string `extra-params`, and an
    /// `Attestation` with an RSA-OAEP-256 key and empty additional evidence.
    #[test]
    fn trustee_guest_bodies_parse() {
        let request: Request = serde_json::from_str(
            r#"{"version":"0.4.0","tee":"sample","extra-params":{"supported-hash-algorithms":["sha256","sha384","sha512"]}}"#,
        )
        .unwrap();
        assert_eq!(request.tee, Tee::Sample);
        let challenge: Challenge =
            serde_json::from_str(r#"{"nonce":"q1b0c3RlZS1ub25jZQ==","extra-params":""}"#).unwrap();
        assert_eq!(challenge.extra_params, "");
        let attestation: Attestation = serde_json::from_str(
            r#"{"init-data":null,"runtime-data":{"nonce":"q1b0c3RlZS1ub25jZQ==","tee-pubkey":{"kty":"RSA","alg":"RSA-OAEP-256","n":"AQAB","e":"AQAB"}},"tee-evidence":{"primary_evidence":{"svn":"1","report_data":"AA=="},"additional_evidence":""}}"#,
        )
        .unwrap();
        assert!(matches!(
            attestation.runtime_data.tee_pubkey,
            TeePubKey::Rsa(_)
        ));
        assert_eq!(attestation.runtime_data.tee_pubkey.alg(), "RSA-OAEP-256");
        assert_eq!(attestation.init_data, None);
    }

    #[test]
    fn tee_pubkey_is_tagged_by_kty_and_strict() {
        let ec = serde_json::to_value(&ec_runtime_data().tee_pubkey).unwrap();
        assert_eq!(ec["kty"], "EC");
        let bad = r#"{"kty":"EC","alg":"a","crv":"c","x":"x","y":"y","d":"leaked"}"#;
        assert!(serde_json::from_str::<TeePubKey>(bad).is_err());
        let okp = r#"{"kty":"OKP","alg":"a","crv":"X25519","x":"x"}"#;
        assert!(serde_json::from_str::<TeePubKey>(okp).is_err());
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

    #[test]
    fn trustee_error_information_parses_as_a_problem() {
        let p: Problem = serde_json::from_str(
            r#"{"type":"https://github.com/confidential-containers/kbs/errors/PolicyDeny","detail":"Resource policy denied"}"#,
        )
        .unwrap();
        assert_eq!(p.kind(), "PolicyDeny");
    }
}
