//! Evidence verification: one [`Verifier`] per TEE, each producing [`Claims`].
//!
//! # Claims
//!
//! Every verifier returns a JSON object that policies see as `claims`:
//!
//! | claim | type | `snp` | `sample` |
//! | --- | --- | --- | --- |
//! | `tee` | string | `"snp"` | `"sample"` |
//! | `insecure` | bool | `false` | `true` (self-reported, proves nothing) |
//! | `measurement` | hex string | launch digest (48 bytes) | as claimed by the guest, if sent |
//! | `host_data` | hex string | HOST_DATA (32 bytes) set at launch | as claimed, if sent |
//! | `report_data` | hex string | REPORT_DATA (64 bytes) | as sent (48-byte digest) |
//! | `svn` | string | absent | as claimed (Trustee's sample `svn`) |
//! | `chip_id` | hex string | CHIP_ID (64 bytes) | absent |
//! | `product` | string | `milan`, `genoa` or `turin`: whose AMD root signed | absent |
//! | `policy` | map | guest policy: `raw`, `debug`, `migrate_ma`, `smt`, `single_socket`, `abi_major`, `abi_minor` | absent |
//! | `tcb` | map | reported TCB: `bootloader`, `tee`, `snp`, `microcode` | absent |
//! | `guest_svn`, `vmpl`, `report_version` | int | from the report | absent |
//! | `family_id`, `image_id`, `id_key_digest`, `author_key_digest` | hex string | from the report | absent |

pub mod sample;
pub mod snp;

use veil_kbs_client::wire::{pad_to_report_data, RUNTIME_DIGEST_LEN};
use veil_kbs_client::Tee;

/// What a verifier established about a guest, as seen by policies.
#[derive(Clone, Debug, PartialEq)]
pub struct Claims {
    /// The TEE whose evidence produced these claims.
    pub tee: Tee,
    /// True when nothing in the claims is proven (the `sample` attester).
    pub insecure: bool,
    /// The claims object (always contains `tee` and `insecure`).
    pub json: serde_json::Map<String, serde_json::Value>,
}

impl Claims {
    /// Claims of `tee` from `fields`, with `tee` and `insecure` filled in.
    pub fn new(
        tee: Tee,
        insecure: bool,
        mut fields: serde_json::Map<String, serde_json::Value>,
    ) -> Self {
        fields.insert("tee".into(), tee.as_str().into());
        fields.insert("insecure".into(), insecure.into());
        Self {
            tee,
            insecure,
            json: fields,
        }
    }
}

/// Why evidence was refused. Each variant is one named check.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The evidence JSON does not have the TEE's shape.
    #[error("{tee} evidence is malformed: {reason}")]
    MalformedEvidence {
        /// The TEE.
        tee: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// The evidence's report data is not the runtime-data digest.
    #[error("report_data in the evidence ({found}) is not SHA-384 of the canonical runtime data {{additional-evidence, nonce, tee-pubkey}} (Trustee KBS protocol 0.4.0); expected {expected}")]
    ReportDataMismatch {
        /// Hex of the report data found.
        found: String,
        /// Hex of the expected report data.
        expected: String,
    },
    /// SNP: the report cannot be parsed.
    #[error("SEV-SNP report is malformed: {0}")]
    SnpReportMalformed(String),
    /// SNP: no VCEK in the evidence and none in the offline cache.
    #[error("no VCEK for this chip: the evidence carries none and {0}; put the VCEK (DER) there or send it with the evidence")]
    SnpVcekMissing(String),
    /// SNP: the VCEK -> ASK -> ARK chain does not verify against a built-in AMD root.
    #[error("SEV-SNP certificate chain does not verify: {0}")]
    SnpChainInvalid(String),
    /// SNP: the VCEK does not sign the report.
    #[error("SEV-SNP report signature does not verify with the VCEK: {0}")]
    SnpSignatureInvalid(String),
    /// SNP: the guest policy allows debugging, so guest memory is readable by the host.
    #[error("SEV-SNP guest policy {0:#x} allows debugging (host can read guest memory); relaunch with debug off")]
    SnpDebugAllowed(u64),
    /// SNP: the reported TCB is below the configured minimum.
    #[error("SEV-SNP reported TCB {found} is below the minimum {minimum}; update the host firmware or lower snp.min_tcb")]
    SnpTcbTooOld {
        /// The reported TCB.
        found: String,
        /// The configured minimum.
        minimum: String,
    },
}

impl VerifyError {
    /// The stable problem-type slug of this check.
    pub fn slug(&self) -> &'static str {
        match self {
            VerifyError::MalformedEvidence { .. } => "evidence-malformed",
            VerifyError::ReportDataMismatch { .. } => "report-data-mismatch",
            VerifyError::SnpReportMalformed(_) => "snp-report-malformed",
            VerifyError::SnpVcekMissing(_) => "snp-vcek-missing",
            VerifyError::SnpChainInvalid(_) => "snp-chain-invalid",
            VerifyError::SnpSignatureInvalid(_) => "snp-signature-invalid",
            VerifyError::SnpDebugAllowed(_) => "snp-debug-allowed",
            VerifyError::SnpTcbTooOld { .. } => "snp-tcb-too-old",
        }
    }
}

/// Checks one TEE's evidence and turns it into claims.
pub trait Verifier: Send + Sync {
    /// The TEE this verifier handles.
    fn tee(&self) -> Tee;

    /// Verifies `evidence` and checks that it is bound to `runtime_digest`
    /// ([`veil_kbs_client::wire::RuntimeData::digest`]).
    fn verify(
        &self,
        evidence: &serde_json::Value,
        runtime_digest: &[u8; RUNTIME_DIGEST_LEN],
    ) -> Result<Claims, VerifyError>;
}

/// Checks that the evidence's report data is the runtime digest, either as is (Trustee's
/// sample attester) or zero-padded to 64 bytes (SNP, Trustee's `regularize_data`).
pub(crate) fn check_report_data(
    found: &[u8],
    runtime_digest: &[u8; RUNTIME_DIGEST_LEN],
) -> Result<(), VerifyError> {
    let padded = pad_to_report_data(runtime_digest);
    if found == runtime_digest.as_slice() || found == padded.as_slice() {
        Ok(())
    } else {
        Err(VerifyError::ReportDataMismatch {
            found: hex::encode(found),
            expected: hex::encode(padded),
        })
    }
}
