//! Evidence formats (shared with the broker) and how the guest collects them.
//!
//! - `sample` ([`SampleEvidence`]): self-reported values, INSECURE, for machines without a TEE.
//! - `snp` ([`SnpEvidence`]): the raw 1184-byte SEV-SNP attestation report from
//!   `/dev/sev-guest` plus, when the host provisioned one, the VCEK certificate from the
//!   extended report. The report's `report_data` holds [`RuntimeData::report_data`].
//!
//! [`RuntimeData::report_data`]: crate::wire::RuntimeData::report_data

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::wire::Tee;

/// Size of an SEV-SNP attestation report (all versions so far).
pub const SNP_REPORT_LEN: usize = 1184;

/// Evidence of the insecure `sample` attester. Nothing in it is proven: a broker must only
/// accept it when its policy explicitly names `sample`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SampleEvidence {
    /// Self-reported launch measurement (hex by convention).
    pub measurement: String,
    /// Self-reported host data (hex by convention).
    #[serde(default)]
    pub host_data: String,
    /// Hex of the 64-byte report data, i.e. the runtime data hash.
    pub report_data: String,
}

/// Evidence of an SEV-SNP guest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnpEvidence {
    /// base64 of the raw attestation report as returned by the firmware.
    pub attestation_report: String,
    /// base64 of the VCEK certificate (DER), when the host provisioned it; otherwise the
    /// broker looks it up in its offline VCEK cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcek: Option<String>,
    /// PEM of the ASK and ARK, optional: the broker only accepts an ARK equal to one of its
    /// built-in AMD roots, so this can narrow the product but never add trust.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_chain: Option<String>,
}

/// The self-reported values the `sample` attester claims.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SampleClaims {
    /// Claimed launch measurement.
    pub measurement: String,
    /// Claimed host data.
    pub host_data: String,
}

/// Which attester the guest uses to produce evidence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attester {
    /// INSECURE: self-reported claims, for development machines without a TEE.
    Sample(SampleClaims),
    /// SEV-SNP through `/dev/sev-guest`, asking for a report at this VMPL.
    Snp {
        /// The VMPL to request the report for (0 for a guest without an SVSM).
        vmpl: u32,
    },
}

impl Attester {
    /// The TEE this attester declares in the protocol `Request`.
    pub fn tee(&self) -> Tee {
        match self {
            Attester::Sample(_) => Tee::Sample,
            Attester::Snp { .. } => Tee::Snp,
        }
    }

    /// Produces evidence whose report data is `report_data`.
    pub fn collect(&self, report_data: &[u8; 64]) -> Result<serde_json::Value, EvidenceError> {
        match self {
            Attester::Sample(claims) => {
                tracing::warn!(
                    attester = "sample",
                    insecure = true,
                    "producing INSECURE sample evidence: nothing in it is proven"
                );
                let evidence = SampleEvidence {
                    measurement: claims.measurement.clone(),
                    host_data: claims.host_data.clone(),
                    report_data: hex::encode(report_data),
                };
                serde_json::to_value(evidence).map_err(EvidenceError::Encode)
            }
            Attester::Snp { vmpl } => {
                let evidence = snp_guest::collect(report_data, *vmpl)?;
                serde_json::to_value(evidence).map_err(EvidenceError::Encode)
            }
        }
    }
}

/// Why the guest could not produce evidence.
#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    /// `/dev/sev-guest` could not be opened.
    #[error("cannot open /dev/sev-guest ({0}); is this an SEV-SNP guest with the sev-guest driver loaded?")]
    OpenDevice(std::io::Error),
    /// The firmware refused or failed the report request.
    #[error("the SEV-SNP firmware did not return a report: {0}")]
    Firmware(String),
    /// The report has an unexpected size.
    #[error("the SEV-SNP firmware returned {0} bytes, expected {SNP_REPORT_LEN}")]
    ReportSize(usize),
    /// This build has no SNP support (`snp` feature off).
    #[error("this build of veil-kbs-client has no SEV-SNP support; enable the `snp` feature")]
    SnpUnsupported,
    /// JSON encoding failed.
    #[error("cannot encode evidence: {0}")]
    Encode(serde_json::Error),
}

/// Builds SNP evidence from a raw report and the certificates the firmware returned.
pub fn snp_evidence_from_parts(
    report: &[u8],
    vcek_der: Option<&[u8]>,
) -> Result<SnpEvidence, EvidenceError> {
    if report.len() != SNP_REPORT_LEN {
        return Err(EvidenceError::ReportSize(report.len()));
    }
    Ok(SnpEvidence {
        attestation_report: STANDARD.encode(report),
        vcek: vcek_der.map(|der| STANDARD.encode(der)),
        cert_chain: None,
    })
}

#[cfg(feature = "snp")]
mod snp_guest {
    use super::{snp_evidence_from_parts, EvidenceError, SnpEvidence};
    use sev::firmware::guest::Firmware;
    use sev::firmware::host::CertType;

    /// Asks the AMD secure processor for an extended report bound to `report_data`.
    pub(super) fn collect(report_data: &[u8; 64], vmpl: u32) -> Result<SnpEvidence, EvidenceError> {
        let mut firmware = Firmware::open().map_err(EvidenceError::OpenDevice)?;
        let (report, certs) = firmware
            .get_ext_report(None, Some(*report_data), Some(vmpl))
            .map_err(|e| EvidenceError::Firmware(e.to_string()))?;
        let vcek = certs.as_ref().and_then(|certs| {
            certs
                .iter()
                .find(|entry| entry.cert_type == CertType::VCEK)
                .map(|entry| entry.data().to_vec())
        });
        tracing::info!(
            tee = "snp",
            vmpl,
            vcek_from_host = vcek.is_some(),
            "collected SEV-SNP extended report"
        );
        snp_evidence_from_parts(&report, vcek.as_deref())
    }
}

#[cfg(not(feature = "snp"))]
mod snp_guest {
    use super::{EvidenceError, SnpEvidence};

    pub(super) fn collect(_: &[u8; 64], _: u32) -> Result<SnpEvidence, EvidenceError> {
        Err(EvidenceError::SnpUnsupported)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_evidence_carries_the_report_data_in_hex() {
        let attester = Attester::Sample(SampleClaims {
            measurement: "aa".into(),
            host_data: String::new(),
        });
        let value = attester.collect(&[0x11; 64]).unwrap();
        let evidence: SampleEvidence = serde_json::from_value(value).unwrap();
        assert_eq!(evidence.report_data, "11".repeat(64));
        assert_eq!(evidence.measurement, "aa");
    }

    #[test]
    fn snp_evidence_requires_a_full_report() {
        assert!(matches!(
            snp_evidence_from_parts(&[0u8; 100], None),
            Err(EvidenceError::ReportSize(100))
        ));
        let ok = snp_evidence_from_parts(&[0u8; SNP_REPORT_LEN], Some(b"der")).unwrap();
        assert_eq!(ok.vcek.as_deref(), Some("ZGVy"));
    }

    #[test]
    fn snp_collection_fails_cleanly_without_the_device() {
        if std::path::Path::new("/dev/sev-guest").exists() {
            return; // a real SNP guest: covered by the hardware test plan instead
        }
        let err = Attester::Snp { vmpl: 0 }.collect(&[0; 64]).unwrap_err();
        assert!(matches!(
            err,
            EvidenceError::OpenDevice(_) | EvidenceError::SnpUnsupported
        ));
    }
}
