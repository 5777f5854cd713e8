//! HTTPS serving: the broker's certificate and key (`--tls-cert` / `--tls-key`, or the config
//! file's `tls` section, as Trustee KBS's `certificate` / `private_key`) loaded into a rustls
//! server, and the accept loop that hands every TLS connection to the same router as plain
//! HTTP.
//!
//! The provider is ring, the one the workspace's ureq clients (the guest agent, the admin
//! client) already build: the broker links no second crypto library.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use zeroize::Zeroizing;

use crate::config::TlsConfig;

/// A client that opened a connection but did not finish its handshake in this time is
/// dropped, so that idle sockets cannot pile up.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed `accept` (e.g. out of file descriptors) before trying again.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(100);

/// Why the broker's TLS identity could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// A certificate or key file cannot be read.
    #[error("cannot read the TLS {what} {path}: {source}; check the path and its permissions")]
    Read {
        /// `certificate` or `private key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The certificate file holds no usable PEM certificate.
    #[error("the TLS certificate {path} holds no PEM certificate ({reason}); give the PEM chain, the broker's own certificate first")]
    Certificate {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The key file holds no usable PEM private key.
    #[error("the TLS private key {path} holds no PEM private key ({reason}); give a PKCS#8, PKCS#1 or SEC1 PEM key")]
    PrivateKey {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The key does not belong to the certificate.
    #[error("the TLS private key {private_key} does not belong to the certificate {certificate}; give the key the certificate was issued for")]
    Mismatch {
        /// The certificate file.
        certificate: PathBuf,
        /// The key file.
        private_key: PathBuf,
    },
    /// rustls refused the certificate and key for another reason (e.g. an unsupported key type).
    #[error("cannot use the TLS certificate {certificate} with the key {private_key}: {reason}")]
    Unusable {
        /// The certificate file.
        certificate: PathBuf,
        /// The key file.
        private_key: PathBuf,
        /// rustls's reason.
        reason: String,
    },
}

/// The rustls server configuration for `tls`: its chain and key, HTTP/1.1, no client
/// certificates (guests prove themselves with attestation, admins with signed tokens).
pub fn server_config(tls: &TlsConfig) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let chain = load_certificates(&tls.certificate)?;
    let key = load_private_key(&tls.private_key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let unusable = |error: rustls::Error| match error {
        rustls::Error::InconsistentKeys(_) => TlsSetupError::Mismatch {
            certificate: tls.certificate.clone(),
            private_key: tls.private_key.clone(),
        },
        other => TlsSetupError::Unusable {
            certificate: tls.certificate.clone(),
            private_key: tls.private_key.clone(),
            reason: other.to_string(),
        },
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(unusable)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(unusable)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn read_file(what: &'static str, path: &Path) -> Result<Zeroizing<Vec<u8>>, TlsSetupError> {
    std::fs::read(path)
        .map(Zeroizing::new)
        .map_err(|source| TlsSetupError::Read {
            what,
            path: path.to_path_buf(),
            source,
        })
}

fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let pem = read_file("certificate", path)?;
    let refused = |reason: String| TlsSetupError::Certificate {
        path: path.to_path_buf(),
        reason,
    };
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| refused(error.to_string()))?;
    if chain.is_empty() {
        return Err(refused("no CERTIFICATE block".to_owned()));
    }
    Ok(chain)
}

fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsSetupError> {
    let pem = read_file("private key", path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|error| TlsSetupError::PrivateKey {
        path: path.to_path_buf(),
        reason: error.to_string(),
    })
}

/// Serves `app` over TLS on `listener` until the task is aborted. Each connection's
/// handshake and requests run in their own task, so one slow client holds up no other.
pub async fn serve_tls(
    listener: TcpListener,
    app: Router,
    config: Arc<ServerConfig>,
) -> std::io::Result<()> {
    let acceptor = TlsAcceptor::from(config);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "accepting a connection failed; retrying");
                tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
                continue;
            }
        };
        tokio::spawn(serve_connection(
            acceptor.clone(),
            stream,
            peer,
            app.clone(),
        ));
    }
}

async fn serve_connection(
    acceptor: TlsAcceptor,
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    app: Router,
) {
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            // A client that does not trust our certificate ends up here too: its side names why.
            tracing::info!(%peer, %error, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::info!(%peer, timeout_s = HANDSHAKE_TIMEOUT.as_secs(), "TLS handshake timed out");
            return;
        }
    };
    let service = TowerToHyperService::new(app);
    if let Err(error) = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        tracing::debug!(%peer, %error, "HTTPS connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
    use ureq::tls::{Certificate, RootCerts};
    use veil_kbs_client::{ClientError, Connection, Tee};

    use crate::config::KbsConfig;
    use crate::Broker;

    /// A private CA and the PEM files of a server certificate it issued for 127.0.0.1.
    struct Pki {
        dir: tempfile::TempDir,
        ca_der: Vec<u8>,
        tls: TlsConfig,
    }

    fn new_ca() -> (rcgen::Certificate, KeyPair) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        (params.self_signed(&key).unwrap(), key)
    }

    fn server_pki() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let (ca, ca_key) = new_ca();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![SanType::IpAddress([127, 0, 0, 1].into())];
        let certificate = params.signed_by(&key, &ca, &ca_key).unwrap();
        let tls = TlsConfig {
            certificate: dir.path().join("kbs.crt"),
            private_key: dir.path().join("kbs.key"),
        };
        std::fs::write(&tls.certificate, certificate.pem()).unwrap();
        std::fs::write(&tls.private_key, key.serialize_pem()).unwrap();
        Pki {
            ca_der: ca.der().to_vec(),
            dir,
            tls,
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
    }

    fn https_broker(runtime: &tokio::runtime::Runtime, pki: &Pki) -> Broker {
        let admin_key = pki.dir.path().join("admin.key");
        crate::admin::generate_admin_key(&admin_key).unwrap();
        let mut config = KbsConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            pki.dir.path().join("state"),
            vec![pki.dir.path().join("admin.key.pub")],
        );
        config.tls = Some(pki.tls.clone());
        runtime.block_on(Broker::start(&config)).unwrap()
    }

    fn trusting(ca_der: &[u8]) -> RootCerts {
        RootCerts::new_with_certs(&[Certificate::from_der(ca_der).to_owned()])
    }

    fn auth(url: &str, roots: Option<RootCerts>) -> Result<(), ClientError> {
        Connection::with_transport(url, Duration::from_secs(20), None, roots)
            .auth(Tee::Sample)
            .map(|_| ())
    }

    #[test]
    fn a_client_that_trusts_the_ca_gets_answers_over_https() {
        let pki = server_pki();
        let runtime = runtime();
        let broker = https_broker(&runtime, &pki);
        assert!(
            broker.url().starts_with("https://127.0.0.1:"),
            "{}",
            broker.url()
        );
        auth(&broker.url(), Some(trusting(&pki.ca_der))).unwrap();
        broker.stop();
    }

    #[test]
    fn admin_and_guest_run_the_whole_protocol_over_https() {
        let pki = server_pki();
        let runtime = runtime();
        let broker = https_broker(&runtime, &pki);
        let admin = crate::admin_client::AdminClient::from_key_file(
            &broker.url(),
            &pki.dir.path().join("admin.key"),
        )
        .unwrap()
        .trusting(trusting(&pki.ca_der));
        admin.put_resource("models/key/tls", b"secret").unwrap();
        admin
            .set_policy("models/key/tls", "claims.tee == 'sample'")
            .unwrap();
        let mut config = veil_kbs_client::KbsClientConfig::new(
            broker.url(),
            veil_kbs_client::Attester::Sample(veil_kbs_client::SampleClaims {
                measurement: "m".to_owned(),
                host_data: String::new(),
            }),
        );
        config.root_certs = Some(trusting(&pki.ca_der));
        let secret = veil_kbs_client::fetch_resource(&config, "models/key/tls").unwrap();
        assert_eq!(secret.as_slice(), b"secret");
        broker.stop();
    }

    #[test]
    fn a_client_without_the_ca_is_refused_by_its_own_tls_check() {
        let pki = server_pki();
        let runtime = runtime();
        let broker = https_broker(&runtime, &pki);
        let (other_ca, _) = new_ca();
        for roots in [None, Some(trusting(other_ca.der()))] {
            let error = auth(&broker.url(), roots).expect_err("an untrusted broker answered");
            assert!(
                matches!(error, ClientError::UntrustedCertificate { .. }),
                "{error}"
            );
            assert!(error.to_string().contains("not trusted"), "{error}");
        }
        let plain = broker.url().replacen("https://", "http://", 1);
        let error = auth(&plain, None).expect_err("plain HTTP got an answer from the HTTPS port");
        assert!(matches!(error, ClientError::Transport { .. }), "{error}");
        // The broker still serves after refused handshakes.
        auth(&broker.url(), Some(trusting(&pki.ca_der))).unwrap();
        broker.stop();
    }

    #[test]
    fn a_key_of_another_certificate_is_refused_naming_both_files() {
        let pki = server_pki();
        let other_key = pki.dir.path().join("other.key");
        std::fs::write(&other_key, KeyPair::generate().unwrap().serialize_pem()).unwrap();
        let tls = TlsConfig {
            private_key: other_key,
            ..pki.tls.clone()
        };
        let error = server_config(&tls).expect_err("a mismatched key was accepted");
        assert!(matches!(error, TlsSetupError::Mismatch { .. }), "{error}");
        let message = error.to_string();
        assert!(
            message.contains("kbs.crt") && message.contains("other.key"),
            "{message}"
        );
    }

    #[test]
    fn unreadable_or_empty_files_are_refused_naming_the_file() {
        let pki = server_pki();
        let missing = TlsConfig {
            certificate: pki.dir.path().join("absent.crt"),
            ..pki.tls.clone()
        };
        let error = server_config(&missing).expect_err("missing certificate");
        assert!(matches!(error, TlsSetupError::Read { .. }), "{error}");
        assert!(error.to_string().contains("absent.crt"), "{error}");

        let not_pem = pki.dir.path().join("not.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let error = server_config(&TlsConfig {
            certificate: not_pem.clone(),
            ..pki.tls.clone()
        })
        .expect_err("no certificate");
        assert!(
            matches!(error, TlsSetupError::Certificate { .. }),
            "{error}"
        );
        let error = server_config(&TlsConfig {
            private_key: not_pem,
            ..pki.tls.clone()
        })
        .expect_err("no key");
        assert!(matches!(error, TlsSetupError::PrivateKey { .. }), "{error}");
        assert!(error.to_string().contains("not.pem"), "{error}");
    }

    #[test]
    fn a_matching_pair_loads() {
        let pki = server_pki();
        let config = server_config(&pki.tls).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }
}
