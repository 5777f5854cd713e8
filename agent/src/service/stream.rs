//! Non-blocking readers and writers over the agent's ends of process pipes and ptys.

use std::os::fd::OwnedFd;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use tokio::net::unix::pipe;

/// tokio's `from_file_unchecked` leaves the descriptor as it is, and process pipes are
/// created blocking: a read after readiness was consumed would then block the agent's
/// only worker thread (the guest has one vCPU) and with it every other call.
fn non_blocking(fd: OwnedFd) -> std::io::Result<std::fs::File> {
    let flags = OFlag::from_bits_retain(fcntl(&fd, FcntlArg::F_GETFL)?);
    fcntl(&fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(std::fs::File::from(fd))
}

/// Reads a process's output (pipe read end or pty master).
#[derive(Debug)]
pub struct FdReader(pipe::Receiver);

impl FdReader {
    /// Wraps `fd`, switching it to non-blocking.
    pub fn new(fd: OwnedFd) -> std::io::Result<Self> {
        // "unchecked": a pty master is a character device, not a FIFO, and epoll works on it.
        Ok(FdReader(pipe::Receiver::from_file_unchecked(
            non_blocking(fd)?,
        )?))
    }

    /// Reads up to `max` bytes; an empty result means end of stream. A pty master
    /// reports EIO once the terminal's last user closed it: that is end of stream too.
    pub async fn read(&self, max: usize) -> std::io::Result<Vec<u8>> {
        let mut buffer = vec![0u8; max.max(1)];
        loop {
            self.0.readable().await?;
            match self.0.try_read(&mut buffer) {
                Ok(n) => {
                    buffer.truncate(n);
                    return Ok(buffer);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) if e.raw_os_error() == Some(libc::EIO) => return Ok(Vec::new()),
                Err(e) => return Err(e),
            }
        }
    }
}

/// Writes a process's input (pipe write end or pty master).
#[derive(Debug)]
pub struct FdWriter(pipe::Sender);

impl FdWriter {
    /// Wraps `fd`, switching it to non-blocking.
    pub fn new(fd: OwnedFd) -> std::io::Result<Self> {
        Ok(FdWriter(pipe::Sender::from_file_unchecked(non_blocking(
            fd,
        )?)?))
    }

    /// Writes all of `data`.
    pub async fn write_all(&self, mut data: &[u8]) -> std::io::Result<usize> {
        let total = data.len();
        while !data.is_empty() {
            self.0.writable().await?;
            match self.0.try_write(data) {
                Ok(n) => data = &data[n..],
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pipe_round_trip_then_end_of_stream() {
        let (read_end, write_end) = nix::unistd::pipe().expect("pipe");
        let reader = FdReader::new(read_end).expect("reader");
        let writer = FdWriter::new(write_end).expect("writer");
        assert_eq!(writer.write_all(b"hello").await.expect("write"), 5);
        assert_eq!(reader.read(64).await.expect("read"), b"hello");
        drop(writer);
        assert!(reader.read(64).await.expect("eof").is_empty());
    }

    /// A read that waits for output must leave the (single) worker thread free: after a
    /// first chunk, a second read with nothing to read times out instead of blocking.
    #[test]
    fn waiting_for_output_does_not_block_the_runtime() {
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let outcome = runtime.block_on(async {
                let (read_end, write_end) = nix::unistd::pipe().expect("pipe");
                let reader = FdReader::new(read_end).expect("reader");
                nix::unistd::write(&write_end, b"out\n").expect("write");
                assert_eq!(reader.read(64).await.expect("first read"), b"out\n");
                tokio::time::timeout(std::time::Duration::from_millis(200), reader.read(64))
                    .await
                    .is_err()
            });
            let _ = done.send(outcome);
        });
        let timed_out = finished
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("the second read blocked the runtime thread");
        assert!(timed_out, "the second read returned without data");
    }
}
