//! Relays a process's standard streams between containerd's FIFOs on the host and
//! the agent's stream calls.

use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::agent::AgentClient;

/// After CloseIO, how long the stdin FIFO may stay quiet before the process's stdin is closed.
const STDIN_DRAIN: std::time::Duration = std::time::Duration::from_secs(1);

/// Where containerd wants a process's streams.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StdioPaths {
    /// stdin FIFO (empty: none).
    pub stdin: String,
    /// stdout FIFO or file (empty: discard).
    pub stdout: String,
    /// stderr FIFO or file (empty: discard).
    pub stderr: String,
    /// A terminal was asked for.
    pub terminal: bool,
}

impl StdioPaths {
    /// What the agent must wire up for these paths.
    pub fn to_agent(&self) -> veil_protocol::Stdio {
        veil_protocol::Stdio {
            stdin: !self.stdin.is_empty(),
            stdout: !self.stdout.is_empty(),
            stderr: !self.stderr.is_empty() && !self.terminal,
            terminal: self.terminal,
            ..Default::default()
        }
    }
}

fn strip_scheme(path: &str) -> PathBuf {
    PathBuf::from(path.strip_prefix("file://").unwrap_or(path))
}

async fn open_output(path: &str) -> std::io::Result<Box<dyn tokio::io::AsyncWrite + Unpin + Send>> {
    let path = strip_scheme(path);
    let is_fifo = std::fs::metadata(&path)
        .map(|m| m.file_type().is_fifo())
        .unwrap_or(false);
    if is_fifo {
        // Read-write so the open never blocks and a vanished reader never gives EPIPE.
        let sender = tokio::net::unix::pipe::OpenOptions::new()
            .read_write(true)
            .open_sender(&path)?;
        Ok(Box::new(sender))
    } else {
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .await?;
        Ok(Box::new(file))
    }
}

/// Copies stdout (or stderr) from the agent to `path` until the process's end of stream.
pub fn relay_output(
    agent: AgentClient,
    container_id: String,
    exec_id: String,
    path: String,
    stderr: bool,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut sink = match open_output(&path).await {
            Ok(sink) => Some(sink),
            Err(error) => {
                tracing::warn!(%path, %error, "cannot open output; discarding it");
                None
            }
        };
        let mut first = true;
        loop {
            let chunk = match agent.read_output(&container_id, &exec_id, stderr).await {
                Ok(chunk) if chunk.is_empty() => break,
                Ok(chunk) => chunk,
                Err(error) => {
                    tracing::debug!(container = %container_id, exec = %exec_id, %error, "output relay ended");
                    break;
                }
            };
            if first {
                first = false;
                tracing::info!(container = %container_id, exec = %exec_id, stderr, "{}", crate::stages::OUTPUT_FIRST);
            }
            if let Some(writer) = sink.as_mut() {
                if let Err(error) = writer.write_all(&chunk).await {
                    tracing::warn!(%path, %error, "output write failed; discarding the rest");
                    sink = None;
                }
            }
        }
        if let Some(mut writer) = sink {
            let _ = writer.flush().await;
        }
    })
}

/// Copies stdin from containerd's FIFO to the agent; closes the process's stdin at
/// end of file or when `close` is notified (CloseIO).
pub fn relay_stdin(
    agent: AgentClient,
    container_id: String,
    exec_id: String,
    path: String,
    close: Arc<Notify>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let fifo = strip_scheme(&path);
        // Opening a FIFO for reading waits for its writer: do it on a blocking thread,
        // and give up when CloseIO comes first.
        let open = tokio::task::spawn_blocking({
            let fifo = fifo.clone();
            move || std::fs::OpenOptions::new().read(true).open(fifo)
        });
        let file = tokio::select! {
            opened = open => opened.ok().and_then(Result::ok),
            () = close.notified() => {
                release_blocked_open(&fifo);
                None
            }
        };
        if let Some(file) = file {
            copy_stdin(&agent, &container_id, &exec_id, file, &close).await;
        }
        if let Err(error) = agent.close_stdin(&container_id, &exec_id).await {
            tracing::debug!(container = %container_id, exec = %exec_id, %error, "close stdin");
        }
    })
}

async fn copy_stdin(
    agent: &AgentClient,
    container_id: &str,
    exec_id: &str,
    file: std::fs::File,
    close: &Notify,
) {
    let mut reader = tokio::fs::File::from_std(file);
    let mut buffer = vec![0u8; 32 * 1024];
    let mut closing = false;
    loop {
        let read = if closing {
            // CloseIO means the client wrote all it will; what is still in the FIFO is
            // part of it, so take it (until end of file, or until the FIFO goes quiet).
            match tokio::time::timeout(STDIN_DRAIN, reader.read(&mut buffer)).await {
                Ok(read) => read,
                Err(_) => return,
            }
        } else {
            tokio::select! {
                read = reader.read(&mut buffer) => read,
                () = close.notified() => {
                    closing = true;
                    continue;
                }
            }
        };
        match read {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if let Err(error) = agent
                    .write_stdin(container_id, exec_id, buffer[..n].to_vec())
                    .await
                {
                    tracing::debug!(container = %container_id, exec = %exec_id, %error, "stdin relay ended");
                    return;
                }
            }
        }
    }
}

/// Unblocks a thread stuck opening `fifo` for reading by opening its write side once.
fn release_blocked_open(fifo: &std::path::Path) {
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(fifo);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_processes_have_no_separate_stderr() {
        let paths = StdioPaths {
            stdin: "/f/0".into(),
            stdout: "/f/1".into(),
            stderr: "/f/2".into(),
            terminal: true,
        };
        let stdio = paths.to_agent();
        assert!(stdio.stdin && stdio.stdout && stdio.terminal && !stdio.stderr);
        assert!(!StdioPaths::default().to_agent().stdout);
    }

    #[test]
    fn file_scheme_is_stripped() {
        assert_eq!(
            strip_scheme("file:///var/log/x"),
            PathBuf::from("/var/log/x")
        );
        assert_eq!(strip_scheme("/run/fifo"), PathBuf::from("/run/fifo"));
    }

    #[tokio::test]
    async fn output_to_a_plain_file_appends() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("out.log");
        let mut writer = open_output(path.to_str().expect("utf-8"))
            .await
            .expect("open");
        writer.write_all(b"hello\n").await.expect("write");
        writer.flush().await.expect("flush");
        assert_eq!(std::fs::read(&path).expect("read"), b"hello\n");
    }
}
