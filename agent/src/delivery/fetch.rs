//! Fetching the sealed model: a streaming reader over HTTP(S) or a shared file, opened
//! with bounded retries, that logs progress as bytes arrive.

use std::io::Read;
use std::time::{Duration, Instant};

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

fn http_agent() -> ureq::Agent {
    let config = ureq::Agent::config_builder()
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

fn open_http(url: &str) -> Result<Fetched, FetchError> {
    let http = |detail: String, transient: bool| FetchError::Http {
        url: url.to_string(),
        detail,
        transient,
    };
    let response = http_agent().get(url).call().map_err(|e| {
        http(
            format!("{e}; check that the model store is up and reachable from the VM"),
            true,
        )
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

/// Opens `source`, retrying connection trouble and server errors up to [`ATTEMPTS`] times.
pub fn open(source: &Source) -> Result<Fetched, FetchError> {
    let mut backoff = FIRST_BACKOFF;
    let mut attempt = 1;
    loop {
        let opened = match source {
            Source::Http(url) => open_http(url),
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
        let mut fetched = open(&Source::Http(url)).expect("open");
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
        let error = open(&Source::Http(url.clone())).err().expect("refused");
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
        let error = open(&Source::Http(url)).err().expect("unreachable");
        assert!(error.is_transient());
        assert!(error.to_string().contains("reachable"), "{error}");
    }

    #[test]
    fn a_missing_shared_file_is_named() {
        let error = open(&Source::File("/nonexistent/m.sealed".into()))
            .err()
            .expect("missing");
        assert!(error.to_string().contains("/nonexistent/m.sealed"));
    }
}
