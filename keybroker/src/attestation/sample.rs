//! The INSECURE `sample` verifier: accepts self-reported claims for machines without a TEE.
//!
//! It proves nothing about the guest. It exists so the whole flow runs in development and CI.
//! Its claims carry `insecure: true`, every log line and token says so, and the broker only
//! releases a resource to it when that resource's policy names `'sample'` explicitly.

use veil_kbs_client::evidence::SampleEvidence;
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
        expected_report_data: &[u8; 64],
    ) -> Result<Claims, VerifyError> {
        let evidence: SampleEvidence =
            serde_json::from_value(evidence.clone()).map_err(|e| malformed(e.to_string()))?;
        let report_data = hex::decode(&evidence.report_data)
            .map_err(|e| malformed(format!("report_data is not hex: {e}")))?;
        // Even insecure evidence must be bound to the nonce and key, so that the protocol
        // checks (replay, key binding) are exercised the same way as with a real TEE.
        check_report_data(&report_data, expected_report_data)?;
        tracing::warn!(
            tee = "sample",
            insecure = true,
            measurement = %evidence.measurement,
            "accepted INSECURE sample evidence: claims are self-reported"
        );
        let mut fields = serde_json::Map::new();
        fields.insert("measurement".into(), evidence.measurement.into());
        fields.insert("host_data".into(), evidence.host_data.into());
        fields.insert("report_data".into(), evidence.report_data.into());
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

    fn evidence(report_data: &[u8; 64]) -> serde_json::Value {
        serde_json::json!({
            "measurement": "abcd",
            "host_data": "",
            "report_data": hex::encode(report_data),
        })
    }

    #[test]
    fn claims_are_marked_insecure() {
        let claims = SampleVerifier
            .verify(&evidence(&[1; 64]), &[1; 64])
            .unwrap();
        assert!(claims.insecure);
        assert_eq!(claims.json["insecure"], true);
        assert_eq!(claims.json["tee"], "sample");
        assert_eq!(claims.json["measurement"], "abcd");
    }

    #[test]
    fn report_data_must_match() {
        let err = SampleVerifier
            .verify(&evidence(&[1; 64]), &[2; 64])
            .unwrap_err();
        assert_eq!(err.slug(), "report-data-mismatch");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let mut ev = evidence(&[1; 64]);
        ev["debug"] = true.into();
        let err = SampleVerifier.verify(&ev, &[1; 64]).unwrap_err();
        assert_eq!(err.slug(), "evidence-malformed");
    }
}
