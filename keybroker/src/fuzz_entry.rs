//! Entry points for fuzzers: each takes arbitrary bytes and must never panic, whatever they
//! are. The cargo-fuzz targets in `keybroker/fuzz/` and the stable property tests in
//! `tests/fuzz_stable.rs` both call these, so the two runners exercise the same code.

use veil_kbs_client::jwe::EphemeralKey;
use veil_kbs_client::wire::{Attestation, Challenge, Request, Response};

use crate::attestation::sample::SampleVerifier;
use crate::attestation::snp::{claims_of, parse_report, SnpVerifier, VerifiedReport};
use crate::attestation::Verifier;
use crate::policy::Policy;

/// A raw SEV-SNP report: decode, and derive claims as if it had verified.
pub fn snp_report(data: &[u8]) {
    if let Ok(report) = parse_report(data) {
        let _ = claims_of(&VerifiedReport {
            report,
            product: crate::attestation::snp::Product::Milan,
        });
    }
}

/// SNP evidence JSON through the whole verifier (no VCEK cache configured).
pub fn snp_evidence(data: &[u8]) {
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = SnpVerifier::default().verify(&value, &[0u8; 48]);
    }
}

/// Sample evidence JSON through the sample verifier.
pub fn sample_evidence(data: &[u8]) {
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = SampleVerifier.verify(&value, &[0u8; 48]);
    }
}

/// The protocol's JSON bodies, as the broker and the client parse them.
pub fn protocol_json(data: &[u8]) {
    let _ = serde_json::from_slice::<Request>(data);
    let _ = serde_json::from_slice::<Challenge>(data);
    if let Ok(attestation) = serde_json::from_slice::<Attestation>(data) {
        let _ = attestation.runtime_digest();
        let _ = crate::tee_key::check(&attestation.runtime_data.tee_pubkey);
    }
}

/// A resource response (JWE) as the guest decrypts it.
pub fn jwe_response(data: &[u8]) {
    if let Ok(response) = serde_json::from_slice::<Response>(data) {
        let _ = EphemeralKey::generate().decrypt(&response);
    }
}

/// A policy text: compile, and evaluate against fixed claims.
pub fn policy(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(policy) = Policy::compile(text) {
        let claims = serde_json::json!({
            "tee": "snp", "insecure": false, "measurement": "aa",
            "tcb": {"snp": 8}, "policy": {"debug": false}
        });
        if let Some(map) = claims.as_object() {
            let _ = policy.evaluate("r/t/g", map, false);
        }
    }
}
