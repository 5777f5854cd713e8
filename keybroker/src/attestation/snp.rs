//! The SEV-SNP verifier: AMD-signed attestation reports.
//!
//! Evidence is Trustee's SNP evidence JSON ([`SnpEvidence`]): the report in the `sev`
//! crate's serde form and the extended report's certificate table.
//!
//! Checks, in order, each with its own error:
//! 1. the report decodes (`sev` crate), encodes to the 1184 bytes the signature covers, and
//!    those bytes decode and re-encode identically (nothing the parser skipped can hide a
//!    change); claims come from those signed bytes;
//! 2. a VCEK is available: the `VCEK` entry of `cert_chain`, else the offline cache directory
//!    (`<cache>/<chip_id hex>-<bootloader>-<tee>-<snp>-<microcode>.der`, the reported TCB);
//!    there is no network fetch (Trustee would ask AMD's KDS). VLEK-signed reports are not
//!    supported;
//! 3. VCEK -> ASK -> ARK verifies against one of the built-in AMD roots (Milan, Genoa,
//!    Turin). `ASK`/`ARK` entries sent with the evidence may narrow the product but the ARK
//!    must equal a built-in root;
//! 4. the VCEK signs the report;
//! 5. the report data equals the runtime digest zero-padded to 64 bytes;
//! 6. the guest policy does not allow debugging;
//! 7. the reported TCB is at least the configured minimum.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sev::certs::snp::{builtin, ca, Certificate, Chain, Verifiable};
use sev::firmware::guest::AttestationReport;
use sev::firmware::host::{CertTableEntry, CertType, TcbVersion};
use sev::parser::ByteParser;
use veil_kbs_client::evidence::{SnpEvidence, SNP_REPORT_LEN};
use veil_kbs_client::wire::RUNTIME_DIGEST_LEN;
use veil_kbs_client::Tee;

use super::{check_report_data, Claims, Verifier, VerifyError};

/// AMD product lines whose roots are built in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Product {
    /// EPYC 7003.
    Milan,
    /// EPYC 9004.
    Genoa,
    /// EPYC 9005.
    Turin,
}

impl Product {
    const ALL: [Product; 3] = [Product::Milan, Product::Genoa, Product::Turin];

    /// Lower-case product name, as in claims.
    pub fn name(self) -> &'static str {
        match self {
            Product::Milan => "milan",
            Product::Genoa => "genoa",
            Product::Turin => "turin",
        }
    }

    fn builtin_chain(self) -> Result<ca::Chain, VerifyError> {
        let (ark, ask) = match self {
            Product::Milan => (builtin::milan::ark(), builtin::milan::ask()),
            Product::Genoa => (builtin::genoa::ark(), builtin::genoa::ask()),
            Product::Turin => (builtin::turin::ark(), builtin::turin::ask()),
        };
        let bad = |e: std::io::Error| {
            VerifyError::SnpChainInvalid(format!("built-in {} root unreadable: {e}", self.name()))
        };
        Ok(ca::Chain {
            ark: ark.map_err(bad)?,
            ask: ask.map_err(bad)?,
        })
    }
}

/// The minimum acceptable reported TCB, component by component.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MinTcb {
    /// Minimum PSP bootloader SVN.
    pub bootloader: u8,
    /// Minimum PSP OS (TEE) SVN.
    pub tee: u8,
    /// Minimum SNP firmware SVN.
    pub snp: u8,
    /// Minimum microcode patch level.
    pub microcode: u8,
}

impl std::fmt::Display for MinTcb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "bootloader {} tee {} snp {} microcode {}",
            self.bootloader, self.tee, self.snp, self.microcode
        )
    }
}

/// The SEV-SNP verifier.
#[derive(Clone, Debug, Default)]
pub struct SnpVerifier {
    /// Directory of VCEK certificates (DER) for chips whose evidence carries none.
    pub vcek_cache_dir: Option<PathBuf>,
    /// Minimum reported TCB.
    pub min_tcb: MinTcb,
}

/// A report whose signature chain verified, before the binding and policy checks.
#[derive(Debug)]
pub struct VerifiedReport {
    /// The parsed report.
    pub report: AttestationReport,
    /// Whose root signed it.
    pub product: Product,
}

impl Verifier for SnpVerifier {
    fn tee(&self) -> Tee {
        Tee::Snp
    }

    fn verify(
        &self,
        evidence: &Value,
        runtime_digest: &[u8; RUNTIME_DIGEST_LEN],
    ) -> Result<Claims, VerifyError> {
        let evidence: SnpEvidence = serde_json::from_value(evidence.clone()).map_err(|e| {
            VerifyError::MalformedEvidence {
                tee: "snp",
                reason: e.to_string(),
            }
        })?;
        let verified = self.verify_report(&evidence)?;
        check_report_data(&verified.report.report_data, runtime_digest)?;
        self.check_guest(&verified.report)?;
        tracing::info!(
            tee = "snp",
            product = verified.product.name(),
            measurement = %hex::encode(verified.report.measurement),
            "SEV-SNP evidence verified"
        );
        Ok(claims_of(&verified))
    }
}

impl SnpVerifier {
    /// Checks 1-4: decoding, VCEK, certificate chain and report signature.
    pub fn verify_report(&self, evidence: &SnpEvidence) -> Result<VerifiedReport, VerifyError> {
        let raw = evidence
            .attestation_report
            .to_bytes()
            .map_err(|e| VerifyError::SnpReportMalformed(format!("does not encode: {e}")))?;
        let report = parse_report(raw.as_slice())?;
        let certs = evidence.cert_chain.as_deref().unwrap_or_default();
        let vcek = self.find_vcek(certs, &report)?;
        let candidates = candidate_chains(certs)?;
        let (product, chain) = verify_chain(candidates, vcek)?;
        (&chain, &report)
            .verify()
            .map_err(|e| VerifyError::SnpSignatureInvalid(e.to_string()))?;
        Ok(VerifiedReport { report, product })
    }

    /// Checks 6-7: guest policy and TCB.
    pub fn check_guest(&self, report: &AttestationReport) -> Result<(), VerifyError> {
        if report.policy.debug_allowed() {
            return Err(VerifyError::SnpDebugAllowed(report.policy.0));
        }
        let tcb = report.reported_tcb;
        let min = self.min_tcb;
        let below = tcb.bootloader < min.bootloader
            || tcb.tee < min.tee
            || tcb.snp < min.snp
            || tcb.microcode < min.microcode;
        if below {
            return Err(VerifyError::SnpTcbTooOld {
                found: format_tcb(&tcb),
                minimum: min.to_string(),
            });
        }
        Ok(())
    }

    fn find_vcek(
        &self,
        certs: &[CertTableEntry],
        report: &AttestationReport,
    ) -> Result<Certificate, VerifyError> {
        if let Some(der) = cert_of_type(certs, &CertType::VCEK)? {
            return Ok(der);
        }
        if certs.iter().any(|c| c.cert_type == CertType::VLEK) {
            return Err(VerifyError::SnpVcekMissing(
                "the report is signed by a VLEK, which this broker does not verify (only VCEK-signed reports)".into(),
            ));
        }
        let Some(dir) = &self.vcek_cache_dir else {
            return Err(VerifyError::SnpVcekMissing(
                "no snp.vcek_cache_dir is configured".into(),
            ));
        };
        let path = dir.join(vcek_cache_name(report));
        let der = std::fs::read(&path).map_err(|e| {
            VerifyError::SnpVcekMissing(format!("{} cannot be read ({e})", path.display()))
        })?;
        Certificate::from_der(&der).map_err(|e| {
            VerifyError::SnpChainInvalid(format!("{} is not DER X.509: {e}", path.display()))
        })
    }
}

/// File name of a chip's VCEK in the offline cache, keyed like AMD's KDS query.
pub fn vcek_cache_name(report: &AttestationReport) -> String {
    let tcb = report.reported_tcb;
    format!(
        "{}-{}-{}-{}-{}.der",
        hex::encode(report.chip_id),
        tcb.bootloader,
        tcb.tee,
        tcb.snp,
        tcb.microcode
    )
}

/// Decodes a raw report; refuses anything the `sev` parser would not re-encode identically.
pub fn parse_report(raw: &[u8]) -> Result<AttestationReport, VerifyError> {
    if raw.len() != SNP_REPORT_LEN {
        return Err(VerifyError::SnpReportMalformed(format!(
            "{} bytes, expected {SNP_REPORT_LEN}",
            raw.len()
        )));
    }
    let report = AttestationReport::from_bytes(raw)
        .map_err(|e| VerifyError::SnpReportMalformed(e.to_string()))?;
    let reencoded = report
        .to_bytes()
        .map_err(|e| VerifyError::SnpReportMalformed(e.to_string()))?;
    // The signature is checked over the re-encoded bytes, so they must be the bytes we got.
    if reencoded.as_slice() != raw {
        return Err(VerifyError::SnpReportMalformed(
            "report has bits in fields the parser does not keep (reserved or unknown)".into(),
        ));
    }
    Ok(report)
}

/// The one certificate of `kind` in the table, if any (two of a kind are refused).
fn cert_of_type(
    certs: &[CertTableEntry],
    kind: &CertType,
) -> Result<Option<Certificate>, VerifyError> {
    let mut found = certs.iter().filter(|c| c.cert_type == *kind);
    let Some(entry) = found.next() else {
        return Ok(None);
    };
    if found.next().is_some() {
        return Err(VerifyError::SnpChainInvalid(format!(
            "cert_chain holds more than one {kind:?} certificate"
        )));
    }
    Certificate::from_der(entry.data())
        .map(Some)
        .map_err(|e| VerifyError::SnpChainInvalid(format!("{kind:?} is not DER X.509: {e}")))
}

/// The chains to try: the built-in ones, or, when the evidence sends an ARK, the built-in
/// chain of that ARK's product with the sent ASK (if any).
fn candidate_chains(certs: &[CertTableEntry]) -> Result<Vec<(Product, ca::Chain)>, VerifyError> {
    if certs.len() > MAX_CERT_ENTRIES {
        return Err(VerifyError::SnpChainInvalid(format!(
            "cert_chain has {} entries, more than {MAX_CERT_ENTRIES}",
            certs.len()
        )));
    }
    let Some(ark) = cert_of_type(certs, &CertType::ARK)? else {
        return Product::ALL
            .iter()
            .map(|p| Ok((*p, p.builtin_chain()?)))
            .collect();
    };
    let sent_ask = cert_of_type(certs, &CertType::ASK)?;
    for product in Product::ALL {
        let builtin = product.builtin_chain()?;
        if ark == builtin.ark {
            let ask = sent_ask.unwrap_or(builtin.ask);
            return Ok(vec![(
                product,
                ca::Chain {
                    ark: builtin.ark,
                    ask,
                },
            )]);
        }
    }
    Err(VerifyError::SnpChainInvalid(
        "the ARK in cert_chain is none of the built-in AMD roots (Milan, Genoa, Turin)".into(),
    ))
}

/// The extended report's table holds VCEK, ASK, ARK and maybe a CRL; more is not a table.
const MAX_CERT_ENTRIES: usize = 8;

fn verify_chain(
    candidates: Vec<(Product, ca::Chain)>,
    vcek: Certificate,
) -> Result<(Product, Chain), VerifyError> {
    let mut failures = Vec::new();
    for (product, ca) in candidates {
        let chain = Chain {
            ca,
            vek: vcek.clone(),
        };
        match (&chain).verify() {
            Ok(_) => return Ok((product, chain)),
            Err(e) => failures.push(format!("{}: {e}", product.name())),
        }
    }
    Err(VerifyError::SnpChainInvalid(format!(
        "the VCEK does not chain to an AMD root ({})",
        failures.join("; ")
    )))
}

fn format_tcb(tcb: &TcbVersion) -> String {
    format!(
        "bootloader {} tee {} snp {} microcode {}",
        tcb.bootloader, tcb.tee, tcb.snp, tcb.microcode
    )
}

/// The claims of a verified report (see the table in the module above).
pub fn claims_of(verified: &VerifiedReport) -> Claims {
    let r = &verified.report;
    let tcb = r.reported_tcb;
    let mut fields = Map::new();
    fields.insert("measurement".into(), hex::encode(r.measurement).into());
    fields.insert("host_data".into(), hex::encode(r.host_data).into());
    fields.insert("report_data".into(), hex::encode(r.report_data).into());
    fields.insert("chip_id".into(), hex::encode(r.chip_id).into());
    fields.insert("product".into(), verified.product.name().into());
    fields.insert(
        "policy".into(),
        json!({
            "raw": r.policy.0,
            "debug": r.policy.debug_allowed(),
            "migrate_ma": r.policy.migrate_ma_allowed(),
            "smt": r.policy.smt_allowed(),
            "single_socket": r.policy.single_socket_required(),
            "abi_major": r.policy.abi_major(),
            "abi_minor": r.policy.abi_minor(),
        }),
    );
    fields.insert(
        "tcb".into(),
        json!({
            "bootloader": tcb.bootloader,
            "tee": tcb.tee,
            "snp": tcb.snp,
            "microcode": tcb.microcode,
        }),
    );
    fields.insert("guest_svn".into(), r.guest_svn.into());
    fields.insert("vmpl".into(), r.vmpl.into());
    fields.insert("report_version".into(), r.version.into());
    fields.insert("family_id".into(), hex::encode(r.family_id).into());
    fields.insert("image_id".into(), hex::encode(r.image_id).into());
    fields.insert("id_key_digest".into(), hex::encode(r.id_key_digest).into());
    fields.insert(
        "author_key_digest".into(),
        hex::encode(r.author_key_digest).into(),
    );
    Claims::new(Tee::Snp, false, fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT_HEX: &str = include_str!("../../tests/data/snp/report_milan.hex");
    const MILAN_VCEK: &[u8] = include_bytes!("../../tests/data/snp/vcek_milan.der");
    const TURIN_VCEK: &[u8] = include_bytes!("../../tests/data/snp/vcek_turin.der");
    const MILAN_CHAIN: &str = include_str!("../../tests/data/snp/cert_chain_milan");
    const TURIN_CHAIN: &str = include_str!("../../tests/data/snp/cert_chain_turin");
    const MEASUREMENT: &str = "7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d3e1a0dc39b2c60bd95b9c480cd81841f";

    fn report_bytes() -> Vec<u8> {
        hex::decode(REPORT_HEX.trim()).unwrap()
    }

    /// DER of the certificates in a PEM chain file, in file order (AMD: ASK, then ARK).
    fn pem_ders(pem: &str) -> Vec<Vec<u8>> {
        pem.split_inclusive("-----END CERTIFICATE-----")
            .filter(|b| b.contains("BEGIN"))
            .map(|b| {
                Certificate::from_pem(b.trim().as_bytes())
                    .unwrap()
                    .to_der()
                    .unwrap()
            })
            .collect()
    }

    /// Trustee-shaped evidence: the VCEK and, from a PEM chain, the ASK and ARK entries.
    fn evidence(report: &[u8], vcek: Option<&[u8]>, chain: Option<&str>) -> SnpEvidence {
        let mut table = Vec::new();
        if let Some(vcek) = vcek {
            table.push(CertTableEntry::new(CertType::VCEK, vcek.to_vec()));
        }
        if let Some(chain) = chain {
            let ders = pem_ders(chain);
            table.push(CertTableEntry::new(CertType::ASK, ders[0].clone()));
            table.push(CertTableEntry::new(CertType::ARK, ders[1].clone()));
        }
        let table = (!table.is_empty()).then_some(table);
        veil_kbs_client::evidence::snp_evidence_from_report(report, table).unwrap()
    }

    #[test]
    fn recorded_milan_report_verifies_with_builtin_roots() {
        let verified = SnpVerifier::default()
            .verify_report(&evidence(&report_bytes(), Some(MILAN_VCEK), None))
            .unwrap();
        assert_eq!(verified.product, Product::Milan);
        let claims = claims_of(&verified);
        assert_eq!(claims.json["measurement"], MEASUREMENT);
        assert_eq!(claims.json["policy"]["debug"], false);
        assert_eq!(claims.json["product"], "milan");
        assert!(!claims.insecure);
    }

    #[test]
    fn recorded_milan_report_verifies_with_its_sent_chain() {
        let verified = SnpVerifier::default()
            .verify_report(&evidence(
                &report_bytes(),
                Some(MILAN_VCEK),
                Some(MILAN_CHAIN),
            ))
            .unwrap();
        assert_eq!(verified.product, Product::Milan);
    }

    #[test]
    fn flipped_bit_is_refused() {
        let mut raw = report_bytes();
        raw[21] ^= 0x80; // the sev crate's own tamper test
        let err = SnpVerifier::default()
            .verify_report(&evidence(&raw, Some(MILAN_VCEK), None))
            .unwrap_err();
        assert!(
            matches!(
                err,
                VerifyError::SnpSignatureInvalid(_) | VerifyError::SnpReportMalformed(_)
            ),
            "{err}"
        );
    }

    #[test]
    fn flipped_bit_in_measurement_fails_the_signature() {
        let mut raw = report_bytes();
        raw[0x90] ^= 0x01; // first byte of MEASUREMENT
        let err = SnpVerifier::default()
            .verify_report(&evidence(&raw, Some(MILAN_VCEK), None))
            .unwrap_err();
        assert_eq!(err.slug(), "snp-signature-invalid", "{err}");
    }

    #[test]
    fn swapped_vcek_is_refused() {
        // The Turin VCEK chains to the Turin root, but did not sign this Milan report.
        let err = SnpVerifier::default()
            .verify_report(&evidence(&report_bytes(), Some(TURIN_VCEK), None))
            .unwrap_err();
        assert_eq!(err.slug(), "snp-signature-invalid", "{err}");
    }

    #[test]
    fn turin_chain_for_milan_report_is_refused() {
        let err = SnpVerifier::default()
            .verify_report(&evidence(
                &report_bytes(),
                Some(MILAN_VCEK),
                Some(TURIN_CHAIN),
            ))
            .unwrap_err();
        assert_eq!(err.slug(), "snp-chain-invalid", "{err}");
        assert!(err.to_string().contains("turin"), "{err}");
    }

    #[test]
    fn foreign_root_in_sent_chain_is_refused() {
        // An "ARK" that is none of the built-in roots (here: the Milan ASK).
        let mut ev = evidence(&report_bytes(), Some(MILAN_VCEK), None);
        let ask = pem_ders(MILAN_CHAIN).remove(0);
        ev.cert_chain
            .as_mut()
            .unwrap()
            .push(CertTableEntry::new(CertType::ARK, ask));
        let err = SnpVerifier::default().verify_report(&ev).unwrap_err();
        assert_eq!(err.slug(), "snp-chain-invalid", "{err}");
    }

    #[test]
    fn vlek_signed_reports_are_refused_by_name() {
        let mut ev = evidence(&report_bytes(), None, None);
        ev.cert_chain = Some(vec![CertTableEntry::new(
            CertType::VLEK,
            MILAN_VCEK.to_vec(),
        )]);
        let err = SnpVerifier::default().verify_report(&ev).unwrap_err();
        assert_eq!(err.slug(), "snp-vcek-missing");
        assert!(err.to_string().contains("VLEK"), "{err}");
    }

    /// The evidence JSON guest-components' SNP attester (sev 6.3.1) produces for the recorded
    /// report verifies here unchanged.
    #[test]
    fn trustee_attester_evidence_verifies() {
        let json = include_str!("../../tests/data/trustee/snp_evidence_sev6.json");
        let theirs: SnpEvidence = serde_json::from_str(json).unwrap();
        let verified = SnpVerifier::default().verify_report(&theirs).unwrap();
        assert_eq!(verified.product, Product::Milan);
        assert_eq!(claims_of(&verified).json["measurement"], MEASUREMENT);
        // Its report data was made for another session (and is not a zero-padded digest),
        // so the full verifier refuses it for exactly that reason.
        let value: Value = serde_json::from_str(json).unwrap();
        let err = SnpVerifier::default().verify(&value, &[0; 48]).unwrap_err();
        assert_eq!(err.slug(), "report-data-mismatch");
    }

    #[test]
    fn vcek_comes_from_the_offline_cache() {
        let raw = report_bytes();
        let report = parse_report(&raw).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(vcek_cache_name(&report)), MILAN_VCEK).unwrap();
        let verifier = SnpVerifier {
            vcek_cache_dir: Some(dir.path().to_owned()),
            min_tcb: MinTcb::default(),
        };
        verifier.verify_report(&evidence(&raw, None, None)).unwrap();
    }

    #[test]
    fn missing_vcek_is_its_own_error() {
        let err = SnpVerifier::default()
            .verify_report(&evidence(&report_bytes(), None, None))
            .unwrap_err();
        assert_eq!(err.slug(), "snp-vcek-missing");
    }

    #[test]
    fn recorded_report_is_not_bound_to_a_veil_nonce() {
        let err = SnpVerifier::default()
            .verify(
                &serde_json::to_value(evidence(&report_bytes(), Some(MILAN_VCEK), None)).unwrap(),
                &[0u8; 48],
            )
            .unwrap_err();
        assert_eq!(err.slug(), "report-data-mismatch");
    }

    #[test]
    fn debug_policy_is_refused() {
        let mut report = parse_report(&report_bytes()).unwrap();
        report.policy.set_debug_allowed(true);
        let err = SnpVerifier::default().check_guest(&report).unwrap_err();
        assert_eq!(err.slug(), "snp-debug-allowed");
    }

    #[test]
    fn tcb_below_minimum_is_refused() {
        let report = parse_report(&report_bytes()).unwrap();
        let verifier = SnpVerifier {
            vcek_cache_dir: None,
            min_tcb: MinTcb {
                snp: report.reported_tcb.snp.saturating_add(1),
                ..MinTcb::default()
            },
        };
        let err = verifier.check_guest(&report).unwrap_err();
        assert_eq!(err.slug(), "snp-tcb-too-old");
        SnpVerifier::default().check_guest(&report).unwrap();
    }

    #[test]
    fn truncated_report_is_malformed() {
        let err = parse_report(&report_bytes()[..100]).unwrap_err();
        assert_eq!(err.slug(), "snp-report-malformed");
    }
}
