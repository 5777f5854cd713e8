//! HTTPS for the owner's servers: a private CA made for the test, one server certificate it
//! issued, and a TLS front for the model store (`veil-kbs` serves TLS itself).
//!
//! The certificate names the node as the guest dials it (`10.0.2.2`: the shim rewrites the
//! annotations' `127.0.0.1`, see `veil_protocol::egress`) and `127.0.0.1`, where the owner's
//! own admin calls go. Pods trust the CA through `io.veil.model.ca`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use ureq::tls::{Certificate, RootCerts};

/// A client that does not finish its handshake in this time is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A private CA and the server certificate it issued for the owner's store and broker.
pub struct OwnerPki {
    /// The CA's certificate, PEM: what `io.veil.model.ca` carries.
    pub ca_pem: String,
    ca_der: Vec<u8>,
    /// The servers' PEM certificate and key files.
    pub identity: veil_keybroker::config::TlsConfig,
}

impl OwnerPki {
    /// Makes the CA and issues the server certificate, written as `server.crt` and
    /// `server.key` in `dir` (the owner's directory, off the node in reality).
    pub fn create(dir: &Path) -> Result<OwnerPki> {
        let (ca, ca_key) = new_ca("veil test owner CA")?;
        let key = KeyPair::generate().context("server key")?;
        let mut params = CertificateParams::new(Vec::<String>::new()).context("server params")?;
        params
            .distinguished_name
            .push(DnType::CommonName, "veil test model owner");
        params.subject_alt_names = server_addresses()
            .into_iter()
            .map(SanType::IpAddress)
            .collect();
        let certificate = params
            .signed_by(&key, &ca, &ca_key)
            .context("issue the server certificate")?;
        let identity = veil_keybroker::config::TlsConfig {
            certificate: dir.join("server.crt"),
            private_key: dir.join("server.key"),
        };
        write(&identity.certificate, &certificate.pem())?;
        write(&identity.private_key, &key.serialize_pem())?;
        Ok(OwnerPki {
            ca_pem: ca.pem(),
            ca_der: ca.der().to_vec(),
            identity,
        })
    }

    /// Roots that trust this CA alone, for the owner's own clients.
    pub fn roots(&self) -> RootCerts {
        RootCerts::new_with_certs(&[Certificate::from_der(&self.ca_der).to_owned()])
    }

    /// The servers' rustls configuration, loaded as `veil-kbs` loads its own.
    fn server_config(&self) -> Result<Arc<tokio_rustls::rustls::ServerConfig>> {
        veil_keybroker::http::tls::server_config(&self.identity)
            .context("load the owner's server certificate")
    }
}

/// The addresses the servers' certificate names: the node as the guest reaches it, and
/// the node's loopback.
fn server_addresses() -> [IpAddr; 2] {
    [
        IpAddr::V4(Ipv4Addr::from(veil_protocol::egress::HOST_ADDRESS)),
        IpAddr::V4(Ipv4Addr::LOCALHOST),
    ]
}

fn new_ca(name: &str) -> Result<(rcgen::Certificate, KeyPair)> {
    let key = KeyPair::generate().context("CA key")?;
    let mut params = CertificateParams::new(Vec::<String>::new()).context("CA params")?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let certificate = params.self_signed(&key).context("self-sign the CA")?;
    Ok((certificate, key))
}

/// The PEM certificate of a CA that issued nothing the owner serves: a pod that trusts it
/// alone must refuse the owner's servers.
pub fn unrelated_ca_pem() -> Result<String> {
    Ok(new_ca("veil test unrelated CA")?.0.pem())
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("write {}", path.display()))
}

/// Terminates TLS on 127.0.0.1 and relays the bytes to a plain HTTP server there, so the
/// model store (a plain `tiny_http` server) answers over HTTPS. Stops when dropped.
pub struct TlsFront {
    /// The HTTPS port.
    pub port: u16,
    runtime: Option<tokio::runtime::Runtime>,
}

impl TlsFront {
    /// Serves HTTPS with `pki`'s certificate in front of `backend`.
    pub fn start(pki: &OwnerPki, backend: SocketAddr) -> Result<TlsFront> {
        let acceptor = TlsAcceptor::from(pki.server_config()?);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .context("TLS front runtime")?;
        let listener = runtime
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .context("bind the TLS front")?;
        let port = listener.local_addr().context("TLS front address")?.port();
        runtime.spawn(relay_connections(listener, acceptor, backend));
        Ok(TlsFront {
            port,
            runtime: Some(runtime),
        })
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

async fn relay_connections(listener: TcpListener, acceptor: TlsAcceptor, backend: SocketAddr) {
    // Ends with the runtime (dropping the front); a failed accept is retried after a pause.
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(relay(acceptor.clone(), stream, backend));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn relay(acceptor: TlsAcceptor, stream: TcpStream, backend: SocketAddr) {
    // A client that refuses the certificate ends the handshake: its side reports why.
    let Ok(Ok(mut tls)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
    else {
        return;
    };
    let Ok(mut plain) = TcpStream::connect(backend).await else {
        return;
    };
    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::io::{Read, Write};

    /// A plain server on 127.0.0.1 that answers one request with `body`.
    fn plain_backend(body: &'static str) -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            if let Ok((mut stream, _)) = listener.accept() {
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request);
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        addr
    }

    fn get(url: &str, roots: RootCerts) -> Result<String, ureq::Error> {
        let config = ureq::Agent::config_builder()
            .tls_config(ureq::tls::TlsConfig::builder().root_certs(roots).build())
            .timeout_global(Some(Duration::from_secs(20)))
            .build();
        ureq::Agent::new_with_config(config)
            .get(url)
            .call()?
            .body_mut()
            .read_to_string()
    }

    #[test]
    fn the_front_serves_the_backend_to_clients_of_the_ca_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = OwnerPki::create(dir.path()).expect("pki");
        let front = TlsFront::start(&pki, plain_backend("sealed bytes")).expect("front");
        let url = format!("https://127.0.0.1:{}/model.sealed", front.port);
        assert_eq!(get(&url, pki.roots()).expect("get"), "sealed bytes");

        let other = ureq::tls::parse_pem(unrelated_ca_pem().expect("ca").as_bytes())
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect::<Vec<_>>();
        let error = get(&url, RootCerts::new_with_certs(&other)).expect_err("untrusted");
        assert!(error.to_string().contains("UnknownIssuer"), "{error}");
    }

    #[test]
    fn the_certificate_names_the_node_as_the_guest_reaches_it() {
        assert_eq!(
            server_addresses()[0],
            IpAddr::V4(Ipv4Addr::new(10, 0, 2, 2))
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = OwnerPki::create(dir.path()).expect("pki");
        assert!(pki.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        pki.server_config().expect("the certificate and key match");
    }
}
