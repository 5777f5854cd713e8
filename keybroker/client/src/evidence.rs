//! Evidence formats (shared with the broker) and how the guest collects them.
//!
//! Both are the JSON that Trustee's attesters (guest-components `attestation-agent/attester`)
//! emit and Trustee's verifiers (`deps/verifier/src/{sample,snp}`) read:
//!
//! - `sample` ([`SampleEvidence`]): `{"svn": "1", "report_data": base64(runtime digest)}`,
//!   INSECURE, for machines without a TEE. veil adds optional self-reported `measurement` and
//!   `host_data`, which Trustee ignores.
//! - `snp` ([`SnpEvidence`]): `{"attestation_report": <sev crate serde form of the report>,
//!   "cert_chain": [{"cert_type": "VCEK", "data": [..DER bytes..]}, ..] | null}` from the
//!   extended report. The report's `report_data` holds the runtime digest zero-padded to 64.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use sev::firmware::guest::AttestationReport;
use sev::firmware::host::{CertTableEntry, CertType};
use sev::parser::ByteParser;

use crate::wire::{pad_to_report_data, Tee, RUNTIME_DIGEST_LEN};

/// Size of an SEV-SNP attestation report (all versions so far).
pub const SNP_REPORT_LEN: usize = 1184;

/// The `svn` veil's sample attester reports (Trustee's sample attester reports `"1"` too).
pub const SAMPLE_SVN: &str = "1";

/// Evidence of the insecure `sample` attester. Nothing in it is proven: a broker must only
/// accept it when its policy explicitly asks for `sample`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SampleEvidence {
    /// Self-reported security version number (Trustee's sample field).
    pub svn: String,
    /// base64 (standard, padded) of the runtime-data digest the evidence is bound to.
    pub report_data: String,
    /// veil extension: self-reported launch measurement (hex by convention).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measurement: Option<String>,
    /// veil extension: self-reported host data (hex by convention).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_data: Option<String>,
}

/// Evidence of an SEV-SNP guest, in the shape Trustee's SNP attester serializes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnpEvidence {
    /// The attestation report, as the `sev` crate (6.x to 8.x: same serde form) writes it.
    pub attestation_report: AttestationReport,
    /// The certificate table of the extended report (VCEK, maybe ASK/ARK), when the host
    /// provisioned one; otherwise the broker looks the VCEK up in its offline cache.
    pub cert_chain: Option<Vec<CertTableEntry>>,
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
        /// The `host_data` the VM must have been launched with (veil: the digest of the
        /// pod's model delivery declaration). When the report carries other data, no
        /// evidence is produced, so the broker is never asked for a key.
        expected_host_data: Option<[u8; 32]>,
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

    /// Produces evidence bound to `runtime_digest` (see [`crate::wire::RuntimeData::digest`]).
    pub fn collect(
        &self,
        runtime_digest: &[u8; RUNTIME_DIGEST_LEN],
    ) -> Result<serde_json::Value, EvidenceError> {
        match self {
            Attester::Sample(claims) => {
                tracing::warn!(
                    attester = "sample",
                    insecure = true,
                    "producing INSECURE sample evidence: nothing in it is proven"
                );
                serde_json::to_value(sample_evidence(claims, runtime_digest))
                    .map_err(EvidenceError::Encode)
            }
            Attester::Snp {
                vmpl,
                expected_host_data,
            } => {
                let evidence = snp_guest::collect(&pad_to_report_data(runtime_digest), *vmpl)?;
                if let Some(expected) = expected_host_data {
                    check_host_data(&evidence.attestation_report, expected)?;
                }
                serde_json::to_value(evidence).map_err(EvidenceError::Encode)
            }
        }
    }
}

/// The sample evidence for `claims`, bound to `runtime_digest`.
pub fn sample_evidence(
    claims: &SampleClaims,
    runtime_digest: &[u8; RUNTIME_DIGEST_LEN],
) -> SampleEvidence {
    // Both are always sent (empty when unset) so that policies comparing them evaluate
    // instead of failing on a missing claim; Trustee's verifier ignores them.
    SampleEvidence {
        svn: SAMPLE_SVN.to_owned(),
        report_data: STANDARD.encode(runtime_digest),
        measurement: Some(claims.measurement.clone()),
        host_data: Some(claims.host_data.clone()),
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
    /// The report bytes do not decode.
    #[error("the SEV-SNP report does not decode: {0}")]
    ReportDecode(String),
    /// This build has no SNP support (`snp` feature off).
    #[error("this build of veil-kbs-client has no SEV-SNP support; enable the `snp` feature")]
    SnpUnsupported,
    /// The report's host_data is not what this guest expects.
    #[error("the VM's host_data {reported} does not match this pod's delivery declaration {expected}: the host launched the VM with a different configuration; no key is requested")]
    HostDataMismatch {
        /// What the report carries, hex.
        reported: String,
        /// What the guest expects, hex.
        expected: String,
    },
    /// JSON encoding failed.
    #[error("cannot encode evidence: {0}")]
    Encode(serde_json::Error),
}

/// Checks that the SNP report carries the `host_data` the guest expects. The secure
/// processor copies host_data from the launch (QEMU's `host-data`) into every report, so a
/// host that launched the VM for another declaration is caught here, before any evidence
/// leaves the guest.
pub fn check_host_data(
    report: &AttestationReport,
    expected: &[u8; 32],
) -> Result<(), EvidenceError> {
    if report.host_data == *expected {
        return Ok(());
    }
    Err(EvidenceError::HostDataMismatch {
        reported: hex::encode(report.host_data),
        expected: hex::encode(expected),
    })
}

/// Builds SNP evidence from a raw report and, when known, its VCEK (DER).
pub fn snp_evidence_from_parts(
    report: &[u8],
    vcek_der: Option<&[u8]>,
) -> Result<SnpEvidence, EvidenceError> {
    let certs = vcek_der.map(|der| vec![CertTableEntry::new(CertType::VCEK, der.to_vec())]);
    snp_evidence_from_report(report, certs)
}

/// Builds SNP evidence from a raw report and the certificate table the firmware returned.
pub fn snp_evidence_from_report(
    report: &[u8],
    cert_chain: Option<Vec<CertTableEntry>>,
) -> Result<SnpEvidence, EvidenceError> {
    if report.len() != SNP_REPORT_LEN {
        return Err(EvidenceError::ReportSize(report.len()));
    }
    let attestation_report = AttestationReport::from_bytes(report)
        .map_err(|e| EvidenceError::ReportDecode(e.to_string()))?;
    Ok(SnpEvidence {
        attestation_report,
        cert_chain,
    })
}

#[cfg(feature = "snp")]
mod snp_guest {
    use super::{snp_evidence_from_report, EvidenceError, SnpEvidence};
    use sev::firmware::guest::Firmware;

    /// Asks the AMD secure processor for an extended report bound to `report_data`.
    pub(super) fn collect(report_data: &[u8; 64], vmpl: u32) -> Result<SnpEvidence, EvidenceError> {
        let mut firmware = Firmware::open().map_err(EvidenceError::OpenDevice)?;
        let (report, certs) = firmware
            .get_ext_report(None, Some(*report_data), Some(vmpl))
            .map_err(|e| EvidenceError::Firmware(e.to_string()))?;
        tracing::info!(
            tee = "snp",
            vmpl,
            certificates_from_host = certs.as_ref().map_or(0, Vec::len),
            "collected SEV-SNP extended report"
        );
        snp_evidence_from_report(&report, certs)
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

    const REPORT_HEX: &str = include_str!("../../tests/data/snp/report_milan.hex");
    const MILAN_VCEK: &[u8] = include_bytes!("../../tests/data/snp/vcek_milan.der");
    /// Produced by the sev crate 6.3.1 (the version guest-components' SNP attester uses)
    /// from the recorded Milan report and VCEK: `serde_json::to_string(&SnpEvidence {..})`.
    const SEV6_EVIDENCE: &str = include_str!("../../tests/data/trustee/snp_evidence_sev6.json");

    #[test]
    fn sample_evidence_is_trustee_shaped() {
        let attester = Attester::Sample(SampleClaims {
            measurement: "aa".into(),
            host_data: String::new(),
        });
        let value = attester.collect(&[0x11; 48]).unwrap();
        assert_eq!(value["svn"], "1");
        assert_eq!(value["report_data"], STANDARD.encode([0x11; 48]));
        assert_eq!(value["measurement"], "aa");
        assert_eq!(value["host_data"], "");
    }

    #[test]
    fn trustee_sample_evidence_parses() {
        // guest-components' SampleAttester output for a 48-byte digest.
        let json = format!(
            r#"{{"svn":"1","report_data":"{}"}}"#,
            STANDARD.encode([7u8; 48])
        );
        let evidence: SampleEvidence = serde_json::from_str(&json).unwrap();
        assert_eq!(evidence.measurement, None);
    }

    #[test]
    fn snp_evidence_requires_a_full_report() {
        assert!(matches!(
            snp_evidence_from_parts(&[0u8; 100], None),
            Err(EvidenceError::ReportSize(100))
        ));
    }

    #[test]
    fn snp_evidence_matches_what_sev_6_serializes() {
        let raw = hex::decode(REPORT_HEX.trim()).unwrap();
        let ours = snp_evidence_from_parts(&raw, Some(MILAN_VCEK)).unwrap();
        assert_eq!(serde_json::to_string(&ours).unwrap(), SEV6_EVIDENCE.trim());
        let theirs: SnpEvidence = serde_json::from_str(SEV6_EVIDENCE).unwrap();
        assert_eq!(
            theirs.attestation_report.to_bytes().unwrap().as_slice(),
            raw
        );
        assert_eq!(theirs.cert_chain.unwrap()[0].cert_type, CertType::VCEK);
    }

    #[test]
    fn the_recorded_reports_host_data_is_checked() {
        let raw = hex::decode(REPORT_HEX.trim()).unwrap();
        let report = snp_evidence_from_parts(&raw, None)
            .unwrap()
            .attestation_report;
        // The recorded Milan report was launched without host data: 32 zero bytes (offset 0xC0).
        assert_eq!(raw[0xc0..0xe0], [0u8; 32]);
        check_host_data(&report, &[0; 32]).expect("the launch's host_data");
        let error = check_host_data(&report, &[0xab; 32]).unwrap_err();
        assert!(matches!(error, EvidenceError::HostDataMismatch { .. }));
        let text = error.to_string();
        assert!(
            text.contains(&"00".repeat(32))
                && text.contains(&"ab".repeat(32))
                && text.contains("the host launched the VM with a different configuration"),
            "{text}"
        );
    }

    #[test]
    fn a_changed_host_data_byte_is_caught() {
        let mut raw = hex::decode(REPORT_HEX.trim()).unwrap();
        raw[0xc0 + 31] ^= 1;
        let report = snp_evidence_from_parts(&raw, None)
            .unwrap()
            .attestation_report;
        assert!(check_host_data(&report, &[0; 32]).is_err());
    }

    #[test]
    fn snp_collection_fails_cleanly_without_the_device() {
        if std::path::Path::new("/dev/sev-guest").exists() {
            return; // a real SNP guest: covered by the hardware test plan instead
        }
        let err = Attester::Snp {
            vmpl: 0,
            expected_host_data: None,
        }
        .collect(&[0; 48])
        .unwrap_err();
        assert!(matches!(
            err,
            EvidenceError::OpenDevice(_) | EvidenceError::SnpUnsupported
        ));
    }
}
