//! The guest's end of `kubectl port-forward`.
//!
//! containerd serves a port-forward by dialing `localhost:PORT` in the pod's network
//! namespace on the host. Under veil nothing listens there: the pod's containers run in
//! the VM, and their loopback is the guest's. So the shim takes the connection in that
//! namespace and asks the agent to open the matching one here, to `127.0.0.1:PORT` in the
//! guest's network namespace (the pod network of every container that shares it), then
//! relays the bytes through [`ForwardedConnections::read`] and
//! [`ForwardedConnections::write`], the way process output and input cross.
//!
//! Only loopback is ever dialed, so the shim cannot use this to reach anything but the pod
//! itself; that is what port-forward gives on runc too.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

/// Connections open at once. A kubectl session opens one per client connection; the bound
/// only stops a runaway host from exhausting the guest's descriptors.
pub const MAX_CONNECTIONS: usize = 1024;

/// The most bytes one read returns.
pub const MAX_READ: usize = 64 * 1024;

/// How long a connect to the guest's loopback may take. Loopback answers at once, with a
/// connection or a refusal; the bound is for a guest too loaded to run the listener.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A port-forward call failed.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The port is 0 or above 65535.
    #[error("port {0} is not a TCP port (1-65535)")]
    InvalidPort(u32),
    /// Too many connections are open.
    #[error("{0} forwarded connections are already open in the VM; close some (end idle kubectl port-forward sessions) and retry")]
    TooMany(usize),
    /// Nothing accepted the connection.
    #[error("connect to 127.0.0.1:{port} in the pod: {source}; is a container of the pod listening on port {port} (on 127.0.0.1 or 0.0.0.0)?")]
    Connect {
        /// The port.
        port: u16,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The id names no open connection.
    #[error("forwarded connection {0} is not open in the VM (it was closed, or the VM restarted)")]
    UnknownConnection(u64),
    /// A read or write on an open connection failed.
    #[error("{what} forwarded connection {id} (127.0.0.1:{port} in the pod): {source}")]
    Io {
        /// "read from" or "write to".
        what: &'static str,
        /// The connection.
        id: u64,
        /// Its port.
        port: u16,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// One connection to the guest's loopback.
struct Connection {
    port: u16,
    reader: tokio::sync::Mutex<OwnedReadHalf>,
    /// `None` once the host half-closed it.
    writer: tokio::sync::Mutex<Option<OwnedWriteHalf>>,
    /// Becomes true when the connection is closed, so a read waiting for data returns.
    closed: watch::Sender<bool>,
    /// This connection's place under the cap, given back when the last reference goes.
    _slot: OwnedSemaphorePermit,
}

/// The open forwarded connections of this VM.
pub struct ForwardedConnections {
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Connection>>>,
    /// One permit per connection that may still open. Taken before the connect, so that
    /// connects arriving together cannot pass the cap between a count and an insert.
    slots: Arc<Semaphore>,
    limit: usize,
}

impl Default for ForwardedConnections {
    fn default() -> Self {
        Self::with_limit(MAX_CONNECTIONS)
    }
}

fn tcp_port(port: u32) -> Result<u16, ForwardError> {
    u16::try_from(port)
        .ok()
        .filter(|&p| p != 0)
        .ok_or(ForwardError::InvalidPort(port))
}

impl ForwardedConnections {
    /// At most `limit` connections open at once.
    pub fn with_limit(limit: usize) -> Self {
        ForwardedConnections {
            next_id: AtomicU64::new(0),
            open: Mutex::new(HashMap::new()),
            slots: Arc::new(Semaphore::new(limit)),
            limit,
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Connection>>> {
        self.open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn get(&self, id: u64) -> Result<Arc<Connection>, ForwardError> {
        self.table()
            .get(&id)
            .cloned()
            .ok_or(ForwardError::UnknownConnection(id))
    }

    /// Opens a connection to `127.0.0.1:port` and returns its id.
    pub async fn connect(&self, port: u32) -> Result<u64, ForwardError> {
        let port = tcp_port(port)?;
        let slot = self
            .slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| ForwardError::TooMany(self.limit))?;
        let address = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address)).await
        {
            Ok(connected) => connected.map_err(|source| ForwardError::Connect { port, source })?,
            Err(_) => {
                return Err(ForwardError::Connect {
                    port,
                    source: std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no answer within {CONNECT_TIMEOUT:?}"),
                    ),
                })
            }
        };
        // Forwarded traffic is mostly request and answer: do not hold small writes back.
        let _ = stream.set_nodelay(true);
        let (reader, writer) = stream.into_split();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let connection = Connection {
            port,
            reader: tokio::sync::Mutex::new(reader),
            writer: tokio::sync::Mutex::new(Some(writer)),
            closed: watch::channel(false).0,
            _slot: slot,
        };
        self.table().insert(id, Arc::new(connection));
        tracing::info!(id, port, "forwarded connection opened");
        Ok(id)
    }

    /// The next bytes (at most `max`, 0 meaning [`MAX_READ`]) the guest side sent; empty when
    /// it closed its end or the connection was closed meanwhile.
    pub async fn read(&self, id: u64, max: u32) -> Result<Vec<u8>, ForwardError> {
        let connection = self.get(id)?;
        let max = match usize::try_from(max) {
            Ok(0) | Err(_) => MAX_READ,
            Ok(n) => n.min(MAX_READ),
        };
        let mut closed = connection.closed.subscribe();
        let mut reader = connection.reader.lock().await;
        let mut buffer = vec![0u8; max];
        tokio::select! {
            read = reader.read(&mut buffer) => {
                let n = read.map_err(|source| ForwardError::Io {
                    what: "read from",
                    id,
                    port: connection.port,
                    source,
                })?;
                buffer.truncate(n);
                Ok(buffer)
            }
            _ = closed.wait_for(|closed| *closed) => Ok(Vec::new()),
        }
    }

    /// Sends all of `data` to the guest side.
    pub async fn write(&self, id: u64, data: &[u8]) -> Result<(), ForwardError> {
        let connection = self.get(id)?;
        let mut writer = connection.writer.lock().await;
        let Some(writer) = writer.as_mut() else {
            return Err(ForwardError::Io {
                what: "write to",
                id,
                port: connection.port,
                source: std::io::Error::new(
                    std::io::ErrorKind::BrokenPipe,
                    "the host side already ended its direction",
                ),
            });
        };
        writer
            .write_all(data)
            .await
            .map_err(|source| ForwardError::Io {
                what: "write to",
                id,
                port: connection.port,
                source,
            })
    }

    /// Ends the host-to-guest direction (`write_only`), or closes the connection and forgets
    /// it. Closing one already forgotten is not an error: both relay directions of the shim
    /// may close it.
    pub async fn close(&self, id: u64, write_only: bool) -> Result<(), ForwardError> {
        if write_only {
            let connection = self.get(id)?;
            if let Some(mut writer) = connection.writer.lock().await.take() {
                // The peer may be gone already; the close still succeeds.
                let _ = writer.shutdown().await;
            }
            return Ok(());
        }
        if let Some(connection) = self.table().remove(&id) {
            connection.closed.send_replace(true);
            tracing::info!(id, port = connection.port, "forwarded connection closed");
        }
        Ok(())
    }

    /// How many connections are open.
    pub fn len(&self) -> usize {
        self.table().len()
    }

    /// Whether none is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn echo_once(listener: TcpListener) {
        let (mut stream, _) = listener.accept().await.expect("accept");
        let mut received = Vec::new();
        stream.read_to_end(&mut received).await.expect("read");
        stream.write_all(b"echo:").await.expect("write");
        stream.write_all(&received).await.expect("write");
    }

    async fn listener() -> (TcpListener, u32) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        (listener, u32::from(port))
    }

    async fn read_to_end(connections: &ForwardedConnections, id: u64) -> Vec<u8> {
        let mut all = Vec::new();
        for _ in 0..1000 {
            let chunk = connections.read(id, 3).await.expect("read");
            if chunk.is_empty() {
                return all;
            }
            all.extend(chunk);
        }
        panic!("no end of stream after 1000 reads");
    }

    #[tokio::test]
    async fn bytes_cross_both_ways_and_a_half_close_reaches_the_server() {
        let (listener, port) = listener().await;
        let server = tokio::spawn(echo_once(listener));
        let connections = ForwardedConnections::default();
        let id = connections.connect(port).await.expect("connect");
        connections.write(id, b"hello ").await.expect("write");
        connections.write(id, b"guest").await.expect("write");
        connections.close(id, true).await.expect("half close");
        assert_eq!(read_to_end(&connections, id).await, b"echo:hello guest");
        server.await.expect("server");
        let after = connections.write(id, b"x").await.unwrap_err();
        assert!(after.to_string().contains("already ended"), "{after}");
        connections.close(id, false).await.expect("close");
        assert!(connections.is_empty());
        assert!(matches!(
            connections.read(id, 0).await,
            Err(ForwardError::UnknownConnection(i)) if i == id
        ));
        connections
            .close(id, false)
            .await
            .expect("closing twice is fine");
    }

    #[tokio::test]
    async fn closing_ends_a_read_that_waits_for_data() {
        let (listener, port) = listener().await;
        let connections = Arc::new(ForwardedConnections::default());
        let id = connections.connect(port).await.expect("connect");
        let (_held, _) = listener.accept().await.expect("accept");
        let waiting = tokio::spawn({
            let connections = connections.clone();
            async move { connections.read(id, 0).await }
        });
        tokio::task::yield_now().await;
        connections.close(id, false).await.expect("close");
        let read = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("the read returned")
            .expect("join");
        assert_eq!(read.expect("read"), Vec::<u8>::new());
    }

    #[tokio::test]
    async fn connects_arriving_together_never_pass_the_cap() {
        let (_listener, port) = listener().await;
        let connections = Arc::new(ForwardedConnections::with_limit(2));
        let attempts: Vec<_> = (0..8)
            .map(|_| {
                let connections = connections.clone();
                tokio::spawn(async move { connections.connect(port).await })
            })
            .collect();
        let mut opened = Vec::new();
        for attempt in attempts {
            match attempt.await.expect("join") {
                Ok(id) => opened.push(id),
                Err(error) => {
                    assert!(matches!(error, ForwardError::TooMany(2)), "{error}");
                    assert!(
                        error
                            .to_string()
                            .starts_with("2 forwarded connections are already open"),
                        "{error}"
                    );
                }
            }
        }
        assert_eq!(opened.len(), 2, "only the cap's worth may open");
        connections.close(opened[0], false).await.expect("close");
        connections
            .connect(port)
            .await
            .expect("a closed connection gives its place back");
    }

    #[tokio::test]
    async fn a_refused_connect_gives_its_place_back() {
        let (listener, port) = listener().await;
        drop(listener);
        let connections = ForwardedConnections::with_limit(1);
        for _ in 0..3 {
            let error = connections.connect(port).await.expect_err("refused");
            assert!(matches!(error, ForwardError::Connect { .. }), "{error}");
        }
    }

    #[tokio::test]
    async fn a_port_nobody_listens_on_names_the_port_and_what_to_check() {
        let (listener, port) = listener().await;
        drop(listener);
        let connections = ForwardedConnections::default();
        let error = connections.connect(port).await.unwrap_err();
        let text = error.to_string();
        assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
        assert!(text.contains("listening"), "{text}");
        assert!(connections.is_empty());
    }

    #[tokio::test]
    async fn ports_outside_tcp_range_are_refused() {
        let connections = ForwardedConnections::default();
        for port in [0, 65536, u32::MAX] {
            assert!(matches!(
                connections.connect(port).await,
                Err(ForwardError::InvalidPort(p)) if p == port
            ));
        }
    }
}
