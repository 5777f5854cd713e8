//! Trust for an https:// key broker or model store: the anchors (the public WebPKI roots, or
//! a private CA given as PEM, the model owner's own, named by the pod or on the command line),
//! and telling a refused certificate from connection trouble.

use ureq::tls::PemItem;
pub use ureq::tls::RootCerts;

/// PEM text that cannot serve as trust anchors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CaPemError {
    /// The text does not parse as PEM.
    #[error("not valid PEM ({0}); give the CA's certificate as PEM text")]
    Parse(String),
    /// The PEM text holds no certificate.
    #[error("no certificate in the PEM text; give the CA's certificate, not its key")]
    NoCertificate,
}

/// The roots made of every certificate in `pem`. A key pasted along with the certificate is
/// not needed, and not kept.
pub fn root_certs_from_pem(pem: &[u8]) -> Result<RootCerts, CaPemError> {
    let mut certificates = Vec::new();
    for item in ureq::tls::parse_pem(pem) {
        if let PemItem::Certificate(certificate) =
            item.map_err(|error| CaPemError::Parse(error.to_string()))?
        {
            certificates.push(certificate);
        }
    }
    if certificates.is_empty() {
        return Err(CaPemError::NoCertificate);
    }
    Ok(RootCerts::new_with_certs(&certificates))
}

/// Whether a call failed in the TLS handshake, e.g. on an untrusted certificate: trying again
/// cannot help, unlike connection trouble. ureq reports rustls's verdict directly or wrapped in
/// an I/O error.
pub fn is_tls_failure(error: &ureq::Error) -> bool {
    match error {
        ureq::Error::Rustls(_) | ureq::Error::Tls(_) => true,
        ureq::Error::Io(io) => io
            .get_ref()
            .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some()),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_without_a_certificate_is_refused() {
        let key_only = b"-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----\n";
        assert!(root_certs_from_pem(key_only).is_err());
        assert_eq!(
            root_certs_from_pem(b"plain text").err(),
            Some(CaPemError::NoCertificate)
        );
    }
}
