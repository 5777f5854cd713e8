//! What an https:// model store or key broker is verified against: the public WebPKI roots,
//! or, when the pod names a private CA (`io.veil.model.ca`), that CA alone. The CA is part of
//! the delivery declaration, so on SEV-SNP it is covered by the launch's `host_data`: the
//! node cannot swap in its own CA without the guest refusing to ask for the key.

use ureq::tls::RootCerts;
use veil_kbs_client::CaPemError;

/// The declared CA is unusable.
#[derive(Debug, thiserror::Error)]
pub enum TrustedCaError {
    /// The PEM text does not parse.
    #[error("io.veil.model.ca is not valid PEM ({0}); give the CA's certificate as PEM text")]
    Parse(String),
    /// The PEM text holds no certificate.
    #[error("io.veil.model.ca holds no certificate; give the CA's certificate as PEM text")]
    NoCertificate,
}

/// The roots for a delivery's https:// URLs.
pub fn root_certs(trusted_ca_pem: Option<&str>) -> Result<RootCerts, TrustedCaError> {
    let Some(pem) = trusted_ca_pem else {
        return Ok(RootCerts::WebPki);
    };
    veil_kbs_client::root_certs_from_pem(pem.as_bytes()).map_err(|error| match error {
        CaPemError::Parse(detail) => TrustedCaError::Parse(detail),
        CaPemError::NoCertificate => TrustedCaError::NoCertificate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_ca_means_the_webpki_roots() {
        assert!(matches!(root_certs(None), Ok(RootCerts::WebPki)));
    }

    #[test]
    fn a_ca_without_a_certificate_is_refused_by_name() {
        let error = root_certs(Some(
            "-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----\n",
        ))
        .expect_err("no certificate");
        assert!(error.to_string().contains("io.veil.model.ca"), "{error}");
        let error = root_certs(Some("plain text")).expect_err("no certificate");
        assert!(error.to_string().contains("io.veil.model.ca"), "{error}");
    }
}
