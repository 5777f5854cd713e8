//! Relays a process's standard streams between containerd's FIFOs on the host and
//! the agent's stream calls.

use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
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

/// How long an output relay waits for containerd's reader to open a FIFO before it
/// discards the output.
const READER_WAIT: std::time::Duration = std::time::Duration::from_secs(60);
const READER_POLL: std::time::Duration = std::time::Duration::from_millis(5);

/// Where a relay writes: the FIFO or file, and for a FIFO a read handle of the relay's own.
struct Output {
    writer: Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
    /// Keeps the FIFO open for reading, so that a reader that goes away (containerd
    /// restarting) leaves the writes blocked rather than failing with EPIPE.
    _keep_open: Option<std::fs::File>,
}

async fn open_output(path: &str) -> std::io::Result<Output> {
    let path = strip_scheme(path);
    let is_fifo = std::fs::metadata(&path)
        .map(|m| m.file_type().is_fifo())
        .unwrap_or(false);
    if is_fifo {
        let writer = open_fifo_writer(&path).await?;
        let keep_open = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)?;
        Ok(Output {
            writer: Box::new(writer),
            _keep_open: Some(keep_open),
        })
    } else {
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .await?;
        Ok(Output {
            writer: Box::new(file),
            _keep_open: None,
        })
    }
}

/// Opens the FIFO for writing once its reader (containerd, or ctr) has it open, as runc's
/// shim does with a blocking open: a FIFO written and closed before its reader arrives
/// drops what it held, and a short-lived process's whole output with it. A non-blocking
/// open fails with ENXIO until there is a reader, so it is retried until READER_WAIT.
async fn open_fifo_writer(path: &std::path::Path) -> std::io::Result<pipe::Sender> {
    let deadline = std::time::Instant::now() + READER_WAIT;
    loop {
        match pipe::OpenOptions::new().open_sender(path) {
            Err(error) if error.raw_os_error() == Some(libc::ENXIO) => {
                if std::time::Instant::now() >= deadline {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!(
                            "no reader opened the FIFO within {}s",
                            READER_WAIT.as_secs()
                        ),
                    ));
                }
                tokio::time::sleep(READER_POLL).await;
            }
            opened => return opened,
        }
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
        let mut output = match open_output(&path).await {
            Ok(output) => Some(output),
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
            if let Some(open) = output.as_mut() {
                if let Err(error) = open.writer.write_all(&chunk).await {
                    tracing::warn!(%path, %error, "output write failed; discarding the rest");
                    output = None;
                }
            }
        }
        if let Some(mut open) = output {
            let _ = open.writer.flush().await;
        }
    })
}

/// How a process's stdin relay is told to end: by CloseIO (the client wrote all it will;
/// the process's stdin is closed once that is relayed) or by the process's deletion (the
/// agent forgets the process, so there is nothing left there to close).
#[derive(Debug, Default)]
pub struct StdinEnd {
    notify: Notify,
    deleted: std::sync::atomic::AtomicBool,
}

impl StdinEnd {
    /// CloseIO.
    pub fn close(&self) {
        self.notify.notify_one();
    }

    /// The process is being deleted.
    pub fn delete(&self) {
        self.deleted
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.notify.notify_one();
    }

    fn deleted(&self) -> bool {
        self.deleted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Copies stdin from containerd's FIFO to the agent; closes the process's stdin at end of
/// file or at CloseIO, and stops at the process's deletion ([`StdinEnd`]).
pub fn relay_stdin(
    agent: AgentClient,
    container_id: String,
    exec_id: String,
    path: String,
    end: Arc<StdinEnd>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        match StdinFifo::at(&strip_scheme(&path)) {
            Ok(fifo) => {
                if let Some((file, closing)) = open_stdin(Arc::new(fifo), &end.notify).await {
                    copy_stdin(&agent, &container_id, &exec_id, file, &end.notify, closing).await;
                }
            }
            Err(error) => {
                tracing::warn!(container = %container_id, exec = %exec_id, %path, %error, "stdin FIFO not opened; the process gets none");
            }
        }
        // A deleted process is gone from the agent; asking it to close that stdin would
        // only log a failed request in the guest for every exec and container.
        if end.deleted() {
            return;
        }
        if let Err(error) = agent.close_stdin(&container_id, &exec_id).await {
            tracing::debug!(container = %container_id, exec = %exec_id, %error, "close stdin");
        }
    })
}

/// containerd's stdin FIFO, held by an `O_PATH` handle: a wait for its writer can then be
/// released through `/proc/self/fd` even once containerd has removed the FIFO's name
/// (`ctr run --rm` does so before it deletes the task), as containerd's own fifo package
/// does.
struct StdinFifo {
    handle: std::os::fd::OwnedFd,
}

impl StdinFifo {
    fn at(path: &std::path::Path) -> std::io::Result<StdinFifo> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH)
            .open(path)?;
        Ok(StdinFifo {
            handle: file.into(),
        })
    }

    fn reopened(&self) -> PathBuf {
        use std::os::fd::AsRawFd;
        PathBuf::from(format!("/proc/self/fd/{}", self.handle.as_raw_fd()))
    }

    /// Opens the read side, waiting for a writer.
    fn open_reader(&self) -> std::io::Result<std::fs::File> {
        std::fs::File::open(self.reopened())
    }

    /// Pairs a reader waiting in [`Self::open_reader`] by opening the write side once;
    /// fails, harmlessly, when no reader waits.
    fn release_reader(&self) {
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(self.reopened());
    }
}

/// Opens the FIFO for reading on a blocking thread (a FIFO's read side waits for its
/// writer); with whether CloseIO came first. `None` when nothing can be read.
async fn open_stdin(fifo: Arc<StdinFifo>, close: &Notify) -> Option<(std::fs::File, bool)> {
    let mut open = tokio::task::spawn_blocking({
        let fifo = fifo.clone();
        move || fifo.open_reader()
    });
    // Biased: a client that wrote its input and sent CloseIO at once can find both ready,
    // and an opened FIFO holds that input, which must still be read.
    let (opened, closing) = tokio::select! {
        biased;
        opened = &mut open => (Some(opened), false),
        () = close.notified() => (released_open(&fifo, &mut open).await, true),
    };
    Some((opened?.ok()?.ok()?, closing))
}

/// After CloseIO: the reader's open, released. A writer that opened just now pairs with it
/// (its input in the FIFO); if none came, the release does, and it reads nothing. Retried,
/// as the blocking thread may not be waiting in its open yet; bounded by [`STDIN_DRAIN`].
async fn released_open(
    fifo: &StdinFifo,
    open: &mut JoinHandle<std::io::Result<std::fs::File>>,
) -> Option<Result<std::io::Result<std::fs::File>, tokio::task::JoinError>> {
    let deadline = tokio::time::Instant::now() + STDIN_DRAIN;
    loop {
        fifo.release_reader();
        match tokio::time::timeout(READER_POLL, &mut *open).await {
            Ok(opened) => return Some(opened),
            Err(_) if tokio::time::Instant::now() < deadline => continue,
            Err(_) => return None,
        }
    }
}

async fn copy_stdin(
    agent: &AgentClient,
    container_id: &str,
    exec_id: &str,
    file: std::fs::File,
    close: &Notify,
    mut closing: bool,
) {
    let mut reader = tokio::fs::File::from_std(file);
    let mut buffer = vec![0u8; 32 * 1024];
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

    #[test]
    fn a_read_open_no_writer_will_come_to_is_released_even_once_the_fifo_is_unlinked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("stdin");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        let fifo = Arc::new(StdinFifo::at(&path).expect("O_PATH"));
        let (opened, waiting) = std::sync::mpsc::channel();
        let reader = fifo.clone();
        std::thread::spawn(move || {
            let _ = opened.send(reader.open_reader().is_ok());
        });
        // `ctr run --rm` removes the FIFO before it deletes the task.
        std::fs::remove_file(&path).expect("unlink");
        // Whether or not the reader waits yet, a release neither fails nor blocks; it is
        // repeated until the reader's open is paired.
        let released = (0..1000).find_map(|_| {
            fifo.release_reader();
            waiting
                .recv_timeout(std::time::Duration::from_millis(10))
                .ok()
        });
        assert_eq!(released, Some(true), "the blocked open never returned");
    }

    #[tokio::test]
    async fn output_to_a_plain_file_appends() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("out.log");
        let mut output = open_output(path.to_str().expect("utf-8"))
            .await
            .expect("open");
        output.writer.write_all(b"hello\n").await.expect("write");
        output.writer.flush().await.expect("flush");
        assert_eq!(std::fs::read(&path).expect("read"), b"hello\n");
    }

    /// A process can print and exit before ctr's reader has opened its FIFO (seen under
    /// load as an exec whose output never arrived). What it printed must still reach the
    /// reader that comes late.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn output_written_before_the_fifo_reader_opens_reaches_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("stdout");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .expect("mkfifo");
        let path = fifo.to_str().expect("utf-8").to_string();
        let relay = tokio::spawn(async move {
            let mut output = open_output(&path).await.expect("open");
            output.writer.write_all(b"hello\n").await.expect("write");
            output.writer.flush().await.expect("flush");
        });
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        // A thread of its own: with the output dropped, its open never returns.
        let (sender, received) = std::sync::mpsc::channel();
        std::thread::spawn(move || sender.send(std::fs::read(&fifo)));
        let read = tokio::task::spawn_blocking(move || {
            received.recv_timeout(std::time::Duration::from_secs(10))
        })
        .await
        .expect("join")
        .expect("the late reader found no writer: the output was dropped")
        .expect("read");
        assert_eq!(read, b"hello\n");
        relay.await.expect("relay");
    }
}
