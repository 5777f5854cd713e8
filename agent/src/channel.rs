//! The byte channel the agent API is served on.
//!
//! * virtio-serial: QEMU exposes a port named [`veil_protocol::SERIAL_PORT_NAME`]; its
//!   host side is a Unix socket the shim connects to. A serial port has no
//!   accept(): the port itself is the one connection. When the host side is closed
//!   (the port reports hang-up), reads see end-of-file and ttrpc drops the
//!   connection; the listener then waits for the host to reconnect and hands the
//!   port out again.
//! * vsock: an ordinary listening socket, for hosts with vhost-vsock.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use veil_protocol::ttrpc::r#async::transport::{Listener, Socket};

/// Opening the agent channel failed.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// No virtio-serial port carries the agent's name.
    #[error("no virtio-serial port named {name} under {dir}; the VM needs `-device virtserialport,name={name}` and the guest the virtio_console driver")]
    NoSerialPort {
        /// The port name looked for.
        name: String,
        /// Where ports were looked for.
        dir: PathBuf,
    },
    /// An I/O error on the channel.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
}

fn io_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ChannelError {
    let what = what.into();
    move |source| ChannelError::Io { what, source }
}

/// Finds the /dev node of the virtio-serial port called `name`.
///
/// There is no udev in the guest to create /dev/virtio-ports/<name>, so the name is
/// read from sysfs (`/sys/class/virtio-ports/vportNpM/name`).
pub fn find_serial_port(sys_class: &Path, dev: &Path, name: &str) -> Result<PathBuf, ChannelError> {
    let not_found = || ChannelError::NoSerialPort {
        name: name.to_string(),
        dir: sys_class.to_path_buf(),
    };
    let entries = std::fs::read_dir(sys_class).map_err(|_| not_found())?;
    for entry in entries.flatten() {
        let port_name = std::fs::read_to_string(entry.path().join("name")).unwrap_or_default();
        if port_name.trim() == name {
            return Ok(dev.join(entry.file_name()));
        }
    }
    Err(not_found())
}

/// A listener that yields the serial port as a connection each time the host is connected.
pub fn serial_listener(port: PathBuf) -> Listener {
    let connections = futures_stream(port);
    Listener::new(connections)
}

fn futures_stream(
    port: PathBuf,
) -> impl futures_core::Stream<Item = std::io::Result<Socket>> + Send + 'static {
    async_stream::stream! {
        loop {
            let waited = tokio::task::spawn_blocking({
                let port = port.clone();
                move || open_when_host_connected(&port)
            })
            .await;
            match waited {
                Ok(Ok(socket)) => yield Ok(socket),
                // The port is open for the current connection: the listener asks for the
                // next one all along, and gets it once the host reconnects.
                Ok(Err(error)) if error.raw_os_error() == Some(libc::EBUSY) => {
                    tracing::trace!("agent port busy with the current connection");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Ok(Err(error)) => {
                    tracing::error!(%error, "serial port unusable");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(join) => {
                    tracing::error!(%join, "serial port waiter failed");
                    return;
                }
            }
        }
    }
}

/// Opens the port and blocks until the host side is connected (no POLLHUP), so that
/// ttrpc does not start reading from a port that only returns end-of-file.
fn open_when_host_connected(port: &Path) -> std::io::Result<Socket> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(port)?;
    wait_for_host(&file)?;
    tracing::info!(port = %port.display(), "host connected to the agent port");
    split_into_socket(file)
}

fn wait_for_host(file: &File) -> std::io::Result<()> {
    loop {
        let mut fds = [PollFd::new(
            file.as_fd(),
            PollFlags::POLLIN | PollFlags::POLLOUT,
        )];
        poll(&mut fds, PollTimeout::from(100u16)).map_err(std::io::Error::from)?;
        let revents = fds[0].revents().unwrap_or(PollFlags::empty());
        if !revents.contains(PollFlags::POLLHUP) && !revents.is_empty() {
            return Ok(());
        }
        // POLLHUP is level-triggered while the host is away: wait before asking again.
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Bytes moved per read or write between the port and the in-memory pipe.
const RELAY_CHUNK: usize = 64 * 1024;

/// Turns the port into a full-duplex async stream for ttrpc: one thread blocks reading the
/// port and one blocks writing it, joined to ttrpc by an in-memory pipe.
///
/// Why not epoll: with the port registered twice (a reader and a writer descriptor of one
/// open file), a request larger than one virtio buffer (4 KiB) sometimes stayed unread for
/// good under load: an edge went unseen. A blocking read waits on the port's own wait queue,
/// whose condition the kernel rechecks, so no wakeup can be lost.
fn split_into_socket(file: File) -> std::io::Result<Socket> {
    Ok(Socket::new(relay_port(file)?))
}

/// The in-memory end of the two relay threads over `file` (see [`split_into_socket`]).
fn relay_port(file: File) -> std::io::Result<tokio::io::DuplexStream> {
    set_blocking(&file)?;
    let reader_file = file.try_clone()?;
    tracing::debug!(fd = file.as_raw_fd(), "serving ttrpc on the serial port");
    let (ours, theirs) = tokio::io::duplex(RELAY_CHUNK);
    let (from_ttrpc, to_ttrpc) = tokio::io::split(theirs);
    let handle = tokio::runtime::Handle::current();
    std::thread::Builder::new()
        .name("agent-port-in".into())
        .spawn({
            let handle = handle.clone();
            move || relay_port_to_ttrpc(reader_file, to_ttrpc, &handle)
        })?;
    std::thread::Builder::new()
        .name("agent-port-out".into())
        .spawn(move || relay_ttrpc_to_port(from_ttrpc, file, &handle))?;
    Ok(ours)
}

/// Clears O_NONBLOCK (set to wait for the host without blocking) on the open port.
fn set_blocking(file: &File) -> std::io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = fcntl(file, FcntlArg::F_GETFL).map_err(std::io::Error::from)?;
    let flags = OFlag::from_bits_truncate(flags) & !OFlag::O_NONBLOCK;
    fcntl(file, FcntlArg::F_SETFL(flags)).map_err(std::io::Error::from)?;
    Ok(())
}

/// Host to agent: ends at the host's hang-up (end of file), which ttrpc then sees.
fn relay_port_to_ttrpc(
    mut port: File,
    mut ttrpc: tokio::io::WriteHalf<tokio::io::DuplexStream>,
    handle: &tokio::runtime::Handle,
) {
    use std::io::Read;
    use tokio::io::AsyncWriteExt;
    let mut buf = vec![0u8; RELAY_CHUNK];
    loop {
        let n = match port.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => {
                tracing::warn!(%error, "reading the agent port failed; dropping the connection");
                break;
            }
        };
        if handle.block_on(ttrpc.write_all(&buf[..n])).is_err() {
            break;
        }
    }
    let _ = handle.block_on(ttrpc.shutdown());
    tracing::debug!("agent port: host side closed");
}

/// Agent to host: ends when ttrpc drops the connection, which closes the port.
fn relay_ttrpc_to_port(
    mut ttrpc: tokio::io::ReadHalf<tokio::io::DuplexStream>,
    mut port: File,
    handle: &tokio::runtime::Handle,
) {
    use std::io::Write;
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; RELAY_CHUNK];
    loop {
        let n = match handle.block_on(ttrpc.read(&mut buf)) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Err(error) = port.write_all(&buf[..n]) {
            tracing::warn!(%error, "writing the agent port failed; dropping the connection");
            break;
        }
    }
}

/// A vsock listener on [`veil_protocol::VSOCK_PORT`] for any CID.
pub fn vsock_listener() -> Result<Listener, ChannelError> {
    Listener::bind(format!("vsock://-1:{}", veil_protocol::VSOCK_PORT))
        .map_err(io_error("listen on vsock"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_port_by_its_sysfs_name() {
        let sys = tempfile::tempdir().expect("tempdir");
        for (node, name) in [("vport0p0", "other"), ("vport0p1", "veil.agent")] {
            std::fs::create_dir_all(sys.path().join(node)).expect("mkdir");
            std::fs::write(sys.path().join(node).join("name"), format!("{name}\n")).expect("write");
        }
        let found = find_serial_port(sys.path(), Path::new("/dev"), "veil.agent").expect("found");
        assert_eq!(found, PathBuf::from("/dev/vport0p1"));
    }

    /// The relay over a socket pair standing in for the port: a message far larger than one
    /// virtio buffer crosses both ways whole, and the host's hang-up reaches ttrpc as EOF.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_relay_carries_large_messages_both_ways_and_ends_at_hang_up() {
        use std::io::{Read, Write};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let (host, guest) = std::os::unix::net::UnixStream::pair().expect("socket pair");
        let port = File::from(std::os::fd::OwnedFd::from(guest));
        let mut agent = relay_port(port).expect("relay");
        let request: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();

        let mut host_writer = host.try_clone().expect("clone");
        let sent = request.clone();
        let writer = std::thread::spawn(move || host_writer.write_all(&sent));
        let mut received = vec![0u8; request.len()];
        agent
            .read_exact(&mut received)
            .await
            .expect("read the request");
        assert_eq!(received, request);
        writer.join().expect("join").expect("host write");

        agent.write_all(&request).await.expect("answer");
        let mut host_reader = host.try_clone().expect("clone");
        let answer = tokio::task::spawn_blocking(move || {
            let mut answer = vec![0u8; 200_000];
            host_reader.read_exact(&mut answer).map(|()| answer)
        })
        .await
        .expect("join")
        .expect("host read");
        assert_eq!(answer, request);

        drop(host);
        let mut rest = Vec::new();
        agent.read_to_end(&mut rest).await.expect("end of file");
        assert!(rest.is_empty());
    }

    #[test]
    fn missing_port_error_says_what_the_vm_needs() {
        let sys = tempfile::tempdir().expect("tempdir");
        let error =
            find_serial_port(sys.path(), Path::new("/dev"), "veil.agent").expect_err("none");
        assert!(error.to_string().contains("virtserialport,name=veil.agent"));
    }
}
