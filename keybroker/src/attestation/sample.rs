//! The INSECURE `sample` verifier: accepts self-reported claims for machines without a TEE.
//!
//! It proves nothing about the guest. It exists so the whole flow runs in development and CI.
//! Its claims carry `insecure: true`, every log line and token says so, and the broker only
//! releases a resource to it when that resource's policy depends on `claims.tee` or
//! `claims.insecure` (see [`crate::policy`]).
//!
//! Evidence is Trustee's sample shape, `{"svn", "report_data": base64(digest)}`, plus veil's
//! optional self-reported `measurement` and `host_data`.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use veil_kbs_client::evidence::SampleEvidence;
use veil_kbs_client::wire::RUNTIME_DIGEST_LEN;
use veil_kbs_client::Tee;

use super::{check_report_data, Claims, Verifier, VerifyError};

/// The insecure sample verifier.
#[derive(Debug, Default)]
pub struct SampleVerifier;

impl Verifier for SampleVerifier {
    fn tee(&self) -> Tee {
        Tee::Sample
    }

    fn verify(
        &self,
        evidence: &serde_json::Value,
        runtime_digest: &[u8; RUNTIME_DIGEST_LEN],
    ) -> Result<Claims, VerifyError> {
        let evidence: SampleEvidence =
            serde_json::from_value(evidence.clone()).map_err(|e| malformed(e.to_string()))?;
        let report_data = STANDARD
            .decode(&evidence.report_data)
            .map_err(|e| malformed(format!("report_data is not base64: {e}")))?;
        // Even insecure evidence must be bound to the nonce and key, so that the protocol
        // checks (replay, key binding) are exercised the same way as with a real TEE.
        check_report_data(&report_data, runtime_digest)?;
        tracing::warn!(
            tee = "sample",
            insecure = true,
            measurement = evidence.measurement.as_deref().unwrap_or(""),
            "accepted INSECURE sample evidence: claims are self-reported"
        );
        let mut fields = serde_json::Map::new();
        fields.insert("svn".into(), evidence.svn.into());
        if let Some(measurement) = evidence.measurement {
            fields.insert("measurement".into(), measurement.into());
        }
        if let Some(host_data) = evidence.host_data {
            fields.insert("host_data".into(), host_data.into());
        }
        fields.insert("report_data".into(), hex::encode(report_data).into());
        Ok(Claims::new(Tee::Sample, true, fields))
    }
}

fn malformed(reason: String) -> VerifyError {
    VerifyError::MalformedEvidence {
        tee: "sample",
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn evidence(report_data: &[u8]) -> serde_json::Value {
        serde_json::json!({
            "svn": "1",
            "measurement": "abcd",
            "report_data": STANDARD.encode(report_data),
        })
    }

    #[test]
    fn claims_are_marked_insecure() {
        let claims = SampleVerifier
            .verify(&evidence(&[1; 48]), &[1; 48])
            .unwrap();
        assert!(claims.insecure);
        assert_eq!(claims.json["insecure"], true);
        assert_eq!(claims.json["tee"], "sample");
        assert_eq!(claims.json["measurement"], "abcd");
    }

    #[test]
    fn report_data_must_match() {
        let err = SampleVerifier
            .verify(&evidence(&[1; 48]), &[2; 48])
            .unwrap_err();
        assert_eq!(err.slug(), "report-data-mismatch");
    }

    #[test]
    fn zero_padded_report_data_is_the_same_binding() {
        let mut padded = [0u8; 64];
        padded[..48].copy_from_slice(&[3; 48]);
        SampleVerifier.verify(&evidence(&padded), &[3; 48]).unwrap();
    }

    /// Exactly what guest-components' sample attester sends: no veil fields.
    #[test]
    fn trustee_sample_evidence_verifies() {
        let ev = serde_json::json!({"svn": "1", "report_data": STANDARD.encode([9u8; 48])});
        let claims = SampleVerifier.verify(&ev, &[9; 48]).unwrap();
        assert_eq!(claims.json["svn"], "1");
        assert!(claims.json.get("measurement").is_none());
    }

    #[test]
    fn unknown_fields_are_refused() {
        let mut ev = evidence(&[1; 48]);
        ev["debug"] = true.into();
        let err = SampleVerifier.verify(&ev, &[1; 48]).unwrap_err();
        assert_eq!(err.slug(), "evidence-malformed");
    }
}
