//! The client side of Kubernetes' streaming protocols over WebSocket (`v4.channel.k8s.io`),
//! which kubectl speaks to the URLs that CRI's Attach, Exec and PortForward calls return.
//! Every binary message is one channel byte followed by that channel's data:
//! - remote command (`kubectl attach`, `kubectl exec`): 0 stdin, 1 stdout, 2 stderr, 3 error,
//!   4 resize;
//! - port forward (`kubectl port-forward`), per port asked for in the URL's `port` query: a
//!   data channel and an error channel (0 and 1 for the first port), each starting with the
//!   port as two little-endian bytes.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tungstenite::client::IntoClientRequest;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

/// The subprotocol kubectl offers first.
const PROTOCOL: &str = "v4.channel.k8s.io";

/// Channel numbers of the protocol.
const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;

/// How long one read waits before the deadline is checked again.
const READ_SLICE: Duration = Duration::from_millis(200);

/// One attach or exec session.
pub struct RemoteCommand {
    socket: Socket,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    error: Vec<u8>,
}

/// The WebSocket form of the `http://` URL that containerd's streaming server hands out.
fn websocket_url(url: &str) -> Result<String> {
    match url.strip_prefix("http://") {
        Some(rest) => Ok(format!("ws://{rest}")),
        None => match url.strip_prefix("https://") {
            Some(rest) => Ok(format!("wss://{rest}")),
            None => bail!("a streaming URL should be http(s)://, got {url:?}"),
        },
    }
}

type Socket = WebSocket<MaybeTlsStream<TcpStream>>;

/// Opens a `v4.channel.k8s.io` WebSocket at `url` (an http(s) URL from CRI), reading in
/// slices of [`READ_SLICE`].
fn open(url: &str) -> Result<Socket> {
    let mut request = websocket_url(url)?
        .into_client_request()
        .with_context(|| format!("a WebSocket request for {url}"))?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        PROTOCOL.parse().context("the subprotocol header")?,
    );
    let (socket, response) =
        tungstenite::connect(request).with_context(|| format!("open the stream at {url}"))?;
    let agreed = response
        .headers()
        .get("Sec-WebSocket-Protocol")
        .and_then(|v| v.to_str().ok());
    if agreed != Some(PROTOCOL) {
        bail!("the streaming server did not agree to {PROTOCOL}: it answered {agreed:?}");
    }
    if let MaybeTlsStream::Plain(stream) = socket.get_ref() {
        stream
            .set_read_timeout(Some(READ_SLICE))
            .context("set the stream's read timeout")?;
    }
    Ok(socket)
}

/// Sends `data` as one message on `channel`.
fn send_on(socket: &mut Socket, channel: u8, data: &[u8]) -> tungstenite::Result<()> {
    let mut message = Vec::with_capacity(data.len() + 1);
    message.push(channel);
    message.extend_from_slice(data);
    socket.send(Message::Binary(message.into()))
}

/// Closes the stream; a server that already went away is not an error.
fn close(socket: &mut Socket) {
    let _ = socket.close(None);
    let _ = socket.flush();
}

/// What one read of the socket gave.
enum Received {
    /// A binary message: channel byte and data.
    Message(Vec<u8>),
    /// Nothing within [`READ_SLICE`], or a message of another kind.
    Nothing,
    /// The server closed the stream.
    Closed(String),
}

fn receive(socket: &mut Socket) -> Result<Received> {
    match socket.read() {
        Ok(Message::Binary(data)) => Ok(Received::Message(data.to_vec())),
        Ok(Message::Close(frame)) => Ok(Received::Closed(format!("{frame:?}"))),
        Ok(_) => Ok(Received::Nothing),
        Err(tungstenite::Error::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Ok(Received::Nothing)
        }
        Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
            Ok(Received::Closed("connection closed".into()))
        }
        Err(e) => Err(e).context("reading the stream failed"),
    }
}

impl RemoteCommand {
    /// Opens the session at `url` (from CRI Attach or Exec).
    pub fn connect(url: &str) -> Result<RemoteCommand> {
        Ok(RemoteCommand {
            socket: open(url)?,
            stdout: Vec::new(),
            stderr: Vec::new(),
            error: Vec::new(),
        })
    }

    /// Writes `data` to the process's stdin.
    pub fn send_stdin(&mut self, data: &[u8]) -> Result<()> {
        send_on(&mut self.socket, STDIN, data).context("send stdin")
    }

    /// Reads until the process's stdout contains `needle`, the stream ends, or `timeout`
    /// passes; returns all stdout so far. An error names what the stream carried instead.
    pub fn read_stdout_until(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        while !String::from_utf8_lossy(&self.stdout).contains(needle) {
            if Instant::now() >= deadline {
                bail!(
                    "no {needle:?} on stdout within {timeout:?}: {}",
                    self.transcript()
                );
            }
            match receive(&mut self.socket).with_context(|| self.transcript())? {
                Received::Message(data) => self.record(&data),
                Received::Closed(why) => {
                    bail!("the stream closed ({why}): {}", self.transcript())
                }
                Received::Nothing => {}
            }
        }
        Ok(String::from_utf8_lossy(&self.stdout).into_owned())
    }

    fn record(&mut self, message: &[u8]) {
        let Some((&channel, data)) = message.split_first() else {
            return;
        };
        match channel {
            STDOUT => self.stdout.extend_from_slice(data),
            STDERR => self.stderr.extend_from_slice(data),
            ERROR => self.error.extend_from_slice(data),
            _ => {}
        }
    }

    fn transcript(&self) -> String {
        format!(
            "stdout {:?}, stderr {:?}, error channel {:?}",
            String::from_utf8_lossy(&self.stdout),
            String::from_utf8_lossy(&self.stderr),
            String::from_utf8_lossy(&self.error)
        )
    }

    /// Closes the session.
    pub fn close(mut self) {
        close(&mut self.socket);
    }
}

/// One forwarded connection to a pod port, as `kubectl port-forward` opens per client
/// connection.
pub struct PortForward {
    socket: Socket,
    port: u16,
    channels: PortChannels,
    closed: Option<String>,
}

/// What a port forward's two channels carried so far, without their port prefixes.
#[derive(Default)]
struct PortChannels {
    data: Vec<u8>,
    error: Vec<u8>,
    /// Port-prefix bytes already stripped from the data and error channels.
    prefix_seen: [usize; 2],
}

impl PortChannels {
    fn record(&mut self, message: &[u8]) {
        let Some((&channel, data)) = message.split_first() else {
            return;
        };
        let Some(seen) = self.prefix_seen.get_mut(usize::from(channel)) else {
            return;
        };
        let skip = (2 - *seen).min(data.len());
        *seen += skip;
        let data = &data[skip..];
        match channel {
            DATA => self.data.extend_from_slice(data),
            PORT_ERROR => self.error.extend_from_slice(data),
            _ => {}
        }
    }
}

/// Channel numbers of a port forward with one port.
const DATA: u8 = 0;
const PORT_ERROR: u8 = 1;

impl PortForward {
    /// Opens a forward to `port` of the pod at `url` (from CRI PortForward).
    pub fn connect(url: &str, port: u16) -> Result<PortForward> {
        let separator = if url.contains('?') { '&' } else { '?' };
        Ok(PortForward {
            socket: open(&format!("{url}{separator}port={port}"))?,
            port,
            channels: PortChannels::default(),
            closed: None,
        })
    }

    /// Sends `data` to the pod's port.
    pub fn send(&mut self, data: &[u8]) -> Result<()> {
        send_on(&mut self.socket, DATA, data).context("send on the data channel")
    }

    /// Reads until the data from the pod contains `needle`; returns all of it. An error
    /// names what came instead (the error channel, a close, the timeout).
    pub fn read_data_until(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        self.read_until(timeout, |f| {
            String::from_utf8_lossy(&f.channels.data).contains(needle)
        })
        .with_context(|| format!("no {needle:?} from port {}", self.port))?;
        Ok(String::from_utf8_lossy(&self.channels.data).into_owned())
    }

    /// Reads until the server closes the stream (after the pod's side of the connection
    /// ended); returns all the data. The error channel must stay empty.
    pub fn read_data_to_end(&mut self, timeout: Duration) -> Result<Vec<u8>> {
        self.read_until(timeout, |f| f.closed.is_some())
            .with_context(|| format!("port {} did not end", self.port))?;
        if !self.channels.error.is_empty() {
            bail!("the forward failed: {}", self.transcript());
        }
        Ok(std::mem::take(&mut self.channels.data))
    }

    /// Reads until the error channel carries a message or the stream closes; returns the
    /// message (empty when the stream closed without one).
    pub fn read_error(&mut self, timeout: Duration) -> Result<String> {
        self.read_until(timeout, |f| {
            !f.channels.error.is_empty() || f.closed.is_some()
        })
        .with_context(|| format!("no error for port {}", self.port))?;
        Ok(String::from_utf8_lossy(&self.channels.error).into_owned())
    }

    fn read_until(&mut self, timeout: Duration, done: impl Fn(&PortForward) -> bool) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while !done(self) {
            if let Some(why) = &self.closed {
                bail!("the stream closed ({why}): {}", self.transcript());
            }
            if Instant::now() >= deadline {
                bail!("nothing within {timeout:?}: {}", self.transcript());
            }
            match receive(&mut self.socket).with_context(|| self.transcript())? {
                Received::Message(message) => self.channels.record(&message),
                Received::Closed(why) => self.closed = Some(why),
                Received::Nothing => {}
            }
        }
        Ok(())
    }

    fn transcript(&self) -> String {
        format!(
            "data {:?}, error channel {:?}",
            String::from_utf8_lossy(&self.channels.data),
            String::from_utf8_lossy(&self.channels.error)
        )
    }

    /// Closes the forward.
    pub fn close(mut self) {
        close(&mut self.socket);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streaming_urls_become_websocket_urls() {
        assert_eq!(
            websocket_url("http://127.0.0.1:1234/attach/abc").unwrap(),
            "ws://127.0.0.1:1234/attach/abc"
        );
        assert_eq!(websocket_url("https://h/exec/x").unwrap(), "wss://h/exec/x");
        assert!(websocket_url("unix:///x").is_err());
    }

    #[test]
    fn port_prefixes_are_stripped_even_when_split_across_messages() {
        let mut channels = PortChannels::default();
        channels.record(&[DATA, 0x90]);
        channels.record(&[DATA, 0x1f, b'H', b'T']);
        channels.record(&[PORT_ERROR, 0x90, 0x1f]);
        channels.record(&[DATA, b'T', b'P']);
        assert_eq!(channels.data, b"HTTP");
        assert!(channels.error.is_empty());
        channels.record(&[PORT_ERROR, b'r', b'e', b's', b'e', b't']);
        assert_eq!(channels.error, b"reset");
        channels.record(&[7, b'x']);
        channels.record(&[]);
        assert_eq!(channels.data, b"HTTP");
    }
}
