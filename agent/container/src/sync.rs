//! The sync pipe between the caller and the init helper/child: newline-delimited JSON
//! messages, each written with a single write(2) below PIPE_BUF so that messages from the
//! helper and from the child never interleave.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use serde::{Deserialize, Serialize};

use crate::failure::InitFailure;

/// Largest message written; below PIPE_BUF (4096) so a write is atomic.
const MAX_MESSAGE: usize = 4000;
/// Bytes buffered before a newline; protects the caller from a runaway writer.
const MAX_BUFFERED: usize = 64 * 1024;

/// What the helper and the child tell the caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum SyncMessage {
    /// The helper forked the process; its pid as the caller sees it.
    ChildPid {
        /// Pid in the caller's pid namespace.
        pid: i32,
    },
    /// The child finished setting up and waits for start (create) or is about to exec.
    Ready,
    /// A step failed; the child exits.
    Failed(InitFailure),
}

/// Reading from the sync pipe failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// poll(2) or read(2) on the sync pipe failed.
    #[error("read the container init's sync pipe: {0}")]
    Read(Errno),
    /// The child did not answer in time; it may hang in a mount (a stuck 9p share).
    #[error("the container init did not report within {0:?}; check the rootfs share and the guest console log")]
    Timeout(Duration),
    /// The child sent something that is not a sync message (a bug, or a mismatched binary).
    #[error("decode a message from the container init: {0}; the agent binary and the init helper must be the same build")]
    Decode(serde_json::Error),
    /// The child wrote more than any valid message without a newline.
    #[error("the container init wrote more than {MAX_BUFFERED} bytes without a message end")]
    Oversized,
}

/// Sends one message; errors are ignored by callers that are about to exit anyway, so this
/// returns the errno for those that care.
pub(crate) fn send(fd: BorrowedFd<'_>, message: &SyncMessage) -> nix::Result<()> {
    let mut bytes = encode(message);
    bytes.push(b'\n');
    let written = nix::unistd::write(fd, &bytes)?;
    if written == bytes.len() {
        Ok(())
    } else {
        Err(Errno::EIO)
    }
}

fn encode(message: &SyncMessage) -> Vec<u8> {
    let bytes = serde_json::to_vec(message).unwrap_or_default();
    if bytes.len() <= MAX_MESSAGE {
        return bytes;
    }
    // Only a Failed message can be long (its detail); cut the detail, keep step and errno.
    match message {
        SyncMessage::Failed(failure) => {
            let mut short = failure.clone();
            short.detail = short.detail.chars().take(MAX_MESSAGE / 2).collect();
            short.step = short.step.chars().take(MAX_MESSAGE / 4).collect();
            serde_json::to_vec(&SyncMessage::Failed(short)).unwrap_or_default()
        }
        _ => bytes,
    }
}

/// Reads messages with one deadline over all of them.
pub(crate) struct SyncReader {
    fd: OwnedFd,
    buffer: Vec<u8>,
    timeout: Duration,
}

impl std::fmt::Debug for SyncReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncReader")
            .field("fd", &self.fd)
            .finish_non_exhaustive()
    }
}

impl SyncReader {
    /// Wraps the caller's read end of the sync pipe.
    pub fn new(fd: OwnedFd, timeout: Duration) -> Self {
        SyncReader {
            fd,
            buffer: Vec::new(),
            timeout,
        }
    }

    /// The next message, or `None` once every writer closed its end (the helper exited and
    /// the child exec'd or exited).
    pub fn next(&mut self) -> Result<Option<SyncMessage>, SyncError> {
        let deadline = Instant::now() + self.timeout;
        loop {
            if let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                let message = serde_json::from_slice(&line[..end]).map_err(SyncError::Decode)?;
                return Ok(Some(message));
            }
            if self.buffer.len() > MAX_BUFFERED {
                return Err(SyncError::Oversized);
            }
            if !self.wait_readable(deadline)? {
                return Err(SyncError::Timeout(self.timeout));
            }
            let mut chunk = [0u8; 4096];
            match nix::unistd::read(self.fd.as_fd(), &mut chunk) {
                Ok(0) => return Ok(None),
                Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(SyncError::Read(e)),
            }
        }
    }

    /// Waits until the pipe is readable; false when the deadline passed.
    fn wait_readable(&self, deadline: Instant) -> Result<bool, SyncError> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            let millis = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
            let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(millis)) {
                Ok(0) => continue,
                Ok(_) => return Ok(true),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(SyncError::Read(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::fcntl::OFlag;

    fn pipe() -> (OwnedFd, OwnedFd) {
        nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap()
    }

    #[test]
    fn messages_arrive_in_order_then_eof() {
        let (r, w) = pipe();
        send(w.as_fd(), &SyncMessage::ChildPid { pid: 42 }).unwrap();
        send(
            w.as_fd(),
            &SyncMessage::Failed(InitFailure::from_errno("mount proc at /proc", Errno::EPERM)),
        )
        .unwrap();
        drop(w);
        let mut reader = SyncReader::new(r, Duration::from_secs(5));
        assert_eq!(
            reader.next().unwrap(),
            Some(SyncMessage::ChildPid { pid: 42 })
        );
        match reader.next().unwrap() {
            Some(SyncMessage::Failed(f)) => assert_eq!(f.errno(), Some(Errno::EPERM)),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(reader.next().unwrap(), None);
    }

    #[test]
    fn long_failures_are_cut_below_pipe_buf() {
        let failure = InitFailure::new("x".repeat(5000), "y".repeat(10_000));
        let bytes = encode(&SyncMessage::Failed(failure));
        assert!(bytes.len() <= MAX_MESSAGE);
        assert!(serde_json::from_slice::<SyncMessage>(&bytes).is_ok());
    }

    #[test]
    fn silence_times_out() {
        let (r, _w) = pipe();
        let mut reader = SyncReader::new(r, Duration::from_millis(10));
        assert!(matches!(reader.next(), Err(SyncError::Timeout(_))));
    }

    #[test]
    fn garbage_is_a_decode_error() {
        let (r, w) = pipe();
        nix::unistd::write(&w, b"not json\n").unwrap();
        let mut reader = SyncReader::new(r, Duration::from_secs(5));
        assert!(matches!(reader.next(), Err(SyncError::Decode(_))));
    }
}
