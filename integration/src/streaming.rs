//! The client side of Kubernetes' remote-command streaming protocol over WebSocket
//! (`v4.channel.k8s.io`), which `kubectl attach` and `kubectl exec` speak to the URL that
//! CRI's Attach and Exec calls return. Every binary message is one channel byte (0 stdin,
//! 1 stdout, 2 stderr, 3 error, 4 resize) followed by that channel's data.

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
    socket: WebSocket<MaybeTlsStream<TcpStream>>,
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

impl RemoteCommand {
    /// Opens the session at `url` (from CRI Attach or Exec).
    pub fn connect(url: &str) -> Result<RemoteCommand> {
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
        Ok(RemoteCommand {
            socket,
            stdout: Vec::new(),
            stderr: Vec::new(),
            error: Vec::new(),
        })
    }

    /// Writes `data` to the process's stdin.
    pub fn send_stdin(&mut self, data: &[u8]) -> Result<()> {
        let mut message = Vec::with_capacity(data.len() + 1);
        message.push(STDIN);
        message.extend_from_slice(data);
        self.socket
            .send(Message::Binary(message.into()))
            .context("send stdin")
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
            match self.socket.read() {
                Ok(Message::Binary(data)) => self.record(&data),
                Ok(Message::Close(frame)) => {
                    bail!("the stream closed ({frame:?}): {}", self.transcript())
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => bail!("reading the stream failed: {e}: {}", self.transcript()),
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
        let _ = self.socket.close(None);
        let _ = self.socket.flush();
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
}
