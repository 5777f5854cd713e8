//! The HTTP server: tiny_http's connection threads hand requests to one loop that answers them
//! with [`crate::routes::route`]. A prediction takes microseconds, so one loop is plenty and keeps
//! shutdown simple.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tracing::{info, warn};

use crate::model::Model;
use crate::routes::{self, Reply};

/// Serving failed to start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The listening socket could not be opened.
    #[error("cannot listen on {addr}: {source}; pick a free port (0 for any) or an address this host has")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// What tiny_http reported.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The socket is not an IP socket (cannot happen for the addresses `bind` takes).
    #[error("the server on {addr} has no IP address to report")]
    NoIpAddress {
        /// The address asked for.
        addr: SocketAddr,
    },
    /// The SIGTERM/SIGINT handlers could not be installed.
    #[error("cannot install the SIGTERM/SIGINT handlers: {0}")]
    Signals(#[source] std::io::Error),
}

/// A bound server for one model.
pub struct ModelServer {
    http: Arc<tiny_http::Server>,
    stopping: Arc<AtomicBool>,
    model: Model,
    local_addr: SocketAddr,
}

/// Stops a running [`ModelServer`] from another thread (a signal handler thread, a test).
#[derive(Clone)]
pub struct StopHandle {
    http: Arc<tiny_http::Server>,
    stopping: Arc<AtomicBool>,
}

impl StopHandle {
    /// Makes [`ModelServer::run`] return after the request it is answering, if any.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.http.unblock();
    }
}

impl ModelServer {
    /// Opens the listening socket; port 0 picks a free port (see [`ModelServer::local_addr`]).
    pub fn bind(model: Model, addr: SocketAddr) -> Result<ModelServer, ServeError> {
        let http =
            tiny_http::Server::http(addr).map_err(|source| ServeError::Bind { addr, source })?;
        let local_addr = http
            .server_addr()
            .to_ip()
            .ok_or(ServeError::NoIpAddress { addr })?;
        Ok(ModelServer {
            http: Arc::new(http),
            stopping: Arc::new(AtomicBool::new(false)),
            model,
            local_addr,
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle that stops [`ModelServer::run`].
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            http: Arc::clone(&self.http),
            stopping: Arc::clone(&self.stopping),
        }
    }

    /// Answers requests until a [`StopHandle`] stops the server.
    pub fn run(&self) {
        loop {
            match self.http.recv() {
                Ok(request) => self.answer(request),
                Err(_) if self.stopping.load(Ordering::SeqCst) => break,
                Err(error) => warn!(%error, "accepting a connection failed; still serving"),
            }
        }
        info!(addr = %self.local_addr, "server stopped");
    }

    fn answer(&self, mut request: tiny_http::Request) {
        let started = Instant::now();
        let method = request.method().as_str().to_owned();
        let url = request.url().to_owned();
        let reply = routes::route(&self.model, &method, &url, request.as_reader());
        let status = reply.status;
        let result = request.respond(into_response(reply));
        let path = url.split_once('?').map_or(url.as_str(), |(path, _)| path);
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        match result {
            Ok(()) => info!(method, path, status, micros, "request"),
            Err(error) => warn!(method, path, status, %error, "cannot send the response"),
        }
    }
}

fn into_response(reply: Reply) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    let mut response = tiny_http::Response::from_data(reply.body).with_status_code(reply.status);
    // Both values are fixed ASCII strings from routes, which tiny_http always accepts.
    if let Ok(header) = tiny_http::Header::from_bytes("Content-Type", reply.content_type) {
        response.add_header(header);
    }
    if let Some(allow) = reply.allow {
        if let Ok(header) = tiny_http::Header::from_bytes("Allow", allow) {
            response.add_header(header);
        }
    }
    response
}

/// Stops the server on the first SIGTERM or SIGINT. Containers are stopped with SIGTERM, and as PID
/// 1 of its namespace the server would otherwise ignore it until the runtime sends SIGKILL.
///
/// The handlers are installed before this returns, so a signal sent after it is never lost.
pub fn stop_on_termination_signals(handle: StopHandle) -> Result<(), ServeError> {
    let mut signals = Signals::new([SIGTERM, SIGINT]).map_err(ServeError::Signals)?;
    std::thread::Builder::new()
        .name("signals".to_owned())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                info!(signal, "stopping on signal");
                handle.stop();
            }
        })
        .map_err(ServeError::Signals)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Duration;

    use super::*;
    use crate::demo::{write_demo_model, DemoModelOptions};

    #[test]
    fn serves_until_stopped() {
        let dir = tempfile::tempdir().unwrap();
        write_demo_model(dir.path(), &DemoModelOptions::default()).unwrap();
        let server = ModelServer::bind(
            Model::load(dir.path()).unwrap(),
            "127.0.0.1:0".parse().unwrap(),
        )
        .unwrap();
        let addr = server.local_addr();
        let stop = server.stop_handle();
        let running = std::thread::spawn(move || server.run());

        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("ok"), "{answer}");

        stop.stop();
        running.join().unwrap();
    }

    #[test]
    fn busy_port_is_a_bind_error_naming_the_address() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let dir = tempfile::tempdir().unwrap();
        write_demo_model(dir.path(), &DemoModelOptions::default()).unwrap();
        let error = ModelServer::bind(Model::load(dir.path()).unwrap(), addr)
            .err()
            .unwrap();
        assert!(error.to_string().contains(&addr.to_string()), "{error}");
    }
}
