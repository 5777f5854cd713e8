//! Fetching the sealed model: a streaming reader over HTTP(S) or a shared file, opened
//! with bounded retries, that logs progress as bytes arrive.

use std::io::Read;
use std::time::{Duration, Instant};

use ureq::tls::{RootCerts, TlsConfig};
use veil_protocol::delivery::Source;

use super::resolve::GuestResolver;

/// How often the fetch is tried before the delivery gives up.
pub const ATTEMPTS: u32 = 3;
/// Pause before the first retry; doubled for each later one.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// Progress is logged at most this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// Opening the sealed model failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The store could not be reached or answered with an error.
    #[error("GET {url}: {detail}")]
    Http {
        /// The URL.
        url: String,
        /// What went wrong.
        detail: String,
        /// Whether trying again may help (connection trouble, 5xx).
        transient: bool,
    },
    /// The shared file could not be opened.
    #[error("open {path}: {source}")]
    File {
        /// The guest path.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl FetchError {
    fn is_transient(&self) -> bool {
        match self {
            FetchError::Http { transient, .. } => *transient,
            FetchError::File { .. } => false,
        }
    }
}

/// An open sealed model.
pub struct Fetched {
    /// The ciphertext stream.
    pub reader: Box<dyn Read + Send>,
    /// Its length, when the store said.
    pub length: Option<u64>,
}

fn http_agent(roots: &RootCerts) -> ureq::Agent {
    let config = ureq::Agent::config_builder()
        .tls_config(TlsConfig::builder().root_certs(roots.clone()).build())
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(10)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        // A stalled store must end the delivery, not hang the pod: no read waits longer.
        .timeout_per_read(Some(Duration::from_secs(60)))
        .build();
    // Host names resolve through the guest's resolv.conf, not glibc's NSS (absent here).
    ureq::Agent::with_parts(
        config,
        ureq::unversioned::transport::DefaultConnector::new(),
        GuestResolver::system(),
    )
}

fn open_http(url: &str, roots: &RootCerts) -> Result<Fetched, FetchError> {
    let http = |detail: String, transient: bool| FetchError::Http {
        url: url.to_string(),
        detail,
        transient,
    };
    let response = http_agent(roots).get(url).call().map_err(|e| match e {
        // Trying again cannot make an untrusted certificate trusted.
        e if veil_kbs_client::is_tls_failure(&e) => http(
            format!(
                "{e}; the store's TLS certificate is not trusted: for a private CA, give its \
                 certificate in io.veil.model.ca"
            ),
            false,
        ),
        other => http(
            format!("{other}; check that the model store is up and reachable from the VM"),
            true,
        ),
    })?;
    let status = response.status();
    if !status.is_success() {
        return Err(http(
            format!("the store answered {status}"),
            status.is_server_error(),
        ));
    }
    let length = response.body().content_length();
    Ok(Fetched {
        reader: Box::new(response.into_body().into_reader()),
        length,
    })
}

fn open_file(path: &std::path::Path) -> Result<Fetched, FetchError> {
    let file = std::fs::File::open(path).map_err(|source| FetchError::File {
        path: path.display().to_string(),
        source,
    })?;
    let length = file.metadata().ok().map(|m| m.len());
    Ok(Fetched {
        reader: Box::new(file),
        length,
    })
}

/// Opens `source` (an https:// one verified against `roots`), retrying connection trouble
/// and server errors up to [`ATTEMPTS`] times.
pub fn open(source: &Source, roots: &RootCerts) -> Result<Fetched, FetchError> {
    let mut backoff = FIRST_BACKOFF;
    let mut attempt = 1;
    loop {
        let opened = match source {
            Source::Http(url) => open_http(url, roots),
            Source::File(path) => open_file(path),
        };
        match opened {
            Err(error) if error.is_transient() && attempt < ATTEMPTS => {
                tracing::warn!(%source, attempt, %error, retry_in_ms = backoff.as_millis() as u64, "model fetch failed; retrying");
                std::thread::sleep(backoff);
                backoff *= 2;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Wraps a reader to log how much has arrived, every [`PROGRESS_EVERY`].
pub struct ProgressReader<R> {
    inner: R,
    total: Option<u64>,
    read: u64,
    started: Instant,
    last_report: Instant,
}

impl<R: Read> ProgressReader<R> {
    /// Counts what `inner` yields; `total` is the expected length, when known.
    pub fn new(inner: R, total: Option<u64>) -> Self {
        let now = Instant::now();
        ProgressReader {
            inner,
            total,
            read: 0,
            started: now,
            last_report: now,
        }
    }

    fn report(&self) {
        let seconds = self.started.elapsed().as_secs_f64().max(1e-3);
        let mib_per_s = self.read as f64 / (1 << 20) as f64 / seconds;
        match self.total {
            Some(total) if total > 0 => tracing::info!(
                bytes = self.read,
                total,
                percent = self.read * 100 / total,
                mib_per_s = format!("{mib_per_s:.1}"),
                "fetching sealed model"
            ),
            _ => tracing::info!(
                bytes = self.read,
                mib_per_s = format!("{mib_per_s:.1}"),
                "fetching sealed model"
            ),
        }
    }
}

impl<R: Read> Read for ProgressReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.last_report.elapsed() >= PROGRESS_EVERY {
            self.last_report = Instant::now();
            self.report();
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;

    fn serve_once(
        status_line: &'static str,
        body: &'static [u8],
    ) -> (String, std::thread::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!(
            "http://{}/model.sealed",
            listener.local_addr().expect("addr")
        );
        let handle = std::thread::spawn(move || {
            if let Ok((mut stream, _)) = listener.accept() {
                let mut request = [0u8; 1024];
                let _ = stream.read(&mut request);
                let _ = write!(
                    stream,
                    "{status_line}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(body);
            }
        });
        (url, handle)
    }

    #[test]
    fn streams_an_http_body_with_its_length() {
        let (url, server) = serve_once("HTTP/1.1 200 OK", b"ciphertext");
        let mut fetched = open(&Source::Http(url), &RootCerts::WebPki).expect("open");
        assert_eq!(fetched.length, Some(10));
        let mut body = Vec::new();
        ProgressReader::new(&mut fetched.reader, fetched.length)
            .read_to_end(&mut body)
            .expect("read");
        assert_eq!(body, b"ciphertext");
        server.join().expect("server");
    }

    #[test]
    fn a_client_error_is_not_retried_and_names_the_status() {
        let (url, server) = serve_once("HTTP/1.1 404 Not Found", b"");
        let error = open(&Source::Http(url.clone()), &RootCerts::WebPki)
            .err()
            .expect("refused");
        assert!(!error.is_transient());
        let text = error.to_string();
        assert!(text.contains(&url) && text.contains("404"), "{text}");
        server.join().expect("server");
    }

    #[test]
    fn an_unreachable_store_fails_after_the_retries() {
        // Bind then drop: the port is closed, so connecting is refused at once.
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let url = format!("http://127.0.0.1:{port}/m");
        let error = open(&Source::Http(url), &RootCerts::WebPki)
            .err()
            .expect("unreachable");
        assert!(error.is_transient());
        assert!(error.to_string().contains("reachable"), "{error}");
    }

    fn openssl(args: &[&str], dir: &std::path::Path) {
        let status = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl (apt-get install openssl)");
        assert!(status.success(), "openssl {args:?} failed");
    }

    /// A private CA and a certificate it issued for 127.0.0.1 (made by openssl): the CA's
    /// certificate, the server's certificate and the server's key, as PEM.
    fn private_ca_and_server_certificate() -> (String, String, String) {
        let dir = tempfile::tempdir().expect("tempdir");
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut ca = vec!["req", "-x509", "-days", "1", "-subj", "/CN=veil-test-ca"];
        ca.extend(ec);
        ca.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
        openssl(&ca, dir.path());
        let mut request = vec!["req", "-new", "-subj", "/CN=veil-test-store"];
        request.extend(ec);
        request.extend(["-keyout", "server.key", "-out", "server.csr"]);
        openssl(&request, dir.path());
        std::fs::write(dir.path().join("san.ext"), "subjectAltName=IP:127.0.0.1\n").expect("ext");
        openssl(
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "1",
                "-extfile",
                "san.ext",
                "-out",
                "server.pem",
            ],
            dir.path(),
        );
        let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).expect("read pem");
        (read("ca.pem"), read("server.pem"), read("server.key"))
    }

    /// An HTTPS server on 127.0.0.1 that answers one connection with `body`.
    fn serve_tls_once(
        cert_pem: &str,
        key_pem: &str,
        body: &'static [u8],
    ) -> (String, std::thread::JoinHandle<()>) {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
        let mut chain = Vec::new();
        let mut key = None;
        for item in ureq::tls::parse_pem(format!("{cert_pem}{key_pem}").as_bytes()) {
            match item.expect("pem") {
                ureq::tls::PemItem::Certificate(c) => {
                    chain.push(CertificateDer::from(c.der().to_vec()))
                }
                ureq::tls::PemItem::PrivateKey(k) => {
                    key = Some(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
                        k.der().to_vec(),
                    )))
                }
                _ => {}
            }
        }
        let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocols")
        .with_no_client_auth()
        .with_single_cert(chain, key.expect("key"))
        .expect("server config");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!(
            "https://127.0.0.1:{}/model.sealed",
            listener.local_addr().expect("addr").port()
        );
        let handle = std::thread::spawn(move || {
            let Ok((socket, _)) = listener.accept() else {
                return;
            };
            let connection =
                rustls::ServerConnection::new(std::sync::Arc::new(config)).expect("tls");
            let mut stream = rustls::StreamOwned::new(connection, socket);
            let mut request = [0u8; 1024];
            if stream.read(&mut request).is_ok() {
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(body);
                stream.conn.send_close_notify();
                let _ = stream.flush();
            }
        });
        (url, handle)
    }

    #[test]
    fn an_https_store_is_verified_against_the_declared_ca_and_refused_without_it() {
        let (ca, cert, key) = private_ca_and_server_certificate();
        let (url, server) = serve_tls_once(&cert, &key, b"ciphertext");
        let roots = super::super::tls::root_certs(Some(&ca)).expect("roots");
        let mut fetched = open(&Source::Http(url), &roots).expect("open over https");
        let mut body = Vec::new();
        fetched.reader.read_to_end(&mut body).expect("read");
        assert_eq!(body, b"ciphertext");
        server.join().expect("server");

        let (url, server) = serve_tls_once(&cert, &key, b"ciphertext");
        let error = open(&Source::Http(url), &RootCerts::WebPki)
            .err()
            .expect("a self-signed store is not trusted by the public roots");
        assert!(!error.is_transient(), "{error}");
        assert!(error.to_string().contains("io.veil.model.ca"), "{error}");
        server.join().expect("server");
    }

    #[test]
    fn a_missing_shared_file_is_named() {
        let error = open(
            &Source::File("/nonexistent/m.sealed".into()),
            &RootCerts::WebPki,
        )
        .err()
        .expect("missing");
        assert!(error.to_string().contains("/nonexistent/m.sealed"));
    }
}
