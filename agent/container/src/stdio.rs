//! The stdio of a container process: pipes whose parent ends go to the caller, a pty whose
//! master goes to the caller, or /dev/null.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::pty::{grantpt, posix_openpt, unlockpt};

use crate::fd::above_stdio;

/// How a container process's stdin, stdout and stderr are connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StdioConfig {
    /// All three on /dev/null.
    Null,
    /// A pipe for stdout and one for stderr; a pipe for stdin when `stdin` is true
    /// (otherwise stdin is /dev/null).
    Pipes {
        /// Whether the caller writes the process's stdin.
        stdin: bool,
    },
    /// A new pty: the process gets the slave as stdin/stdout/stderr and controlling
    /// terminal, the caller gets the master.
    Terminal,
}

/// The caller's ends of a process's stdio. Reading stdout until EOF ends when every
/// process holding the write end has exited.
#[derive(Debug, Default)]
pub(crate) struct ProcessIo {
    /// Write end of the process's stdin pipe.
    pub stdin: Option<OwnedFd>,
    /// Read end of the process's stdout pipe.
    pub stdout: Option<OwnedFd>,
    /// Read end of the process's stderr pipe.
    pub stderr: Option<OwnedFd>,
    /// The pty master (read output from it, write input to it, resize it with
    /// [`resize_pty`]).
    pub pty_master: Option<OwnedFd>,
}

/// The child's ends; `None` means /dev/null.
#[derive(Debug, Default)]
pub(crate) struct ChildStdio {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

/// Allocating or resizing stdio failed.
#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    /// pipe2(2) failed (often EMFILE: the agent ran out of file descriptors).
    #[error("create a stdio pipe: {0}")]
    Pipe(Errno),
    /// A pty step failed; /dev/ptmx (devpts with ptmx) must exist in the agent's mount
    /// namespace.
    #[error("allocate a pty ({step}): {errno}; the agent needs devpts mounted on /dev/pts")]
    Pty {
        /// The failing call.
        step: &'static str,
        /// Its errno.
        errno: Errno,
    },
    /// TIOCSWINSZ failed (the fd is not a pty master).
    #[error("resize the pty to {rows}x{cols}: {errno}")]
    Resize {
        /// Requested rows.
        rows: u16,
        /// Requested columns.
        cols: u16,
        /// Its errno.
        errno: Errno,
    },
}

nix::ioctl_write_ptr_bad!(set_window_size, libc::TIOCSWINSZ, libc::winsize);

/// Sets a pty's window size; the process gets SIGWINCH and `stty size` shows it.
pub fn resize_pty(master: BorrowedFd<'_>, rows: u16, cols: u16) -> Result<(), StdioError> {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: `size` is a valid winsize that outlives the call; the kernel only reads it.
    unsafe { set_window_size(master.as_raw_fd(), &size) }
        .map(drop)
        .map_err(|errno| StdioError::Resize { rows, cols, errno })
}

/// Creates the child's and the caller's ends for `config`; `size` is the initial terminal
/// size (rows, cols) from the spec's `consoleSize`.
pub(crate) fn allocate(
    config: StdioConfig,
    size: Option<(u16, u16)>,
) -> Result<(ChildStdio, ProcessIo), StdioError> {
    match config {
        StdioConfig::Null => Ok((ChildStdio::default(), ProcessIo::default())),
        StdioConfig::Pipes { stdin } => pipes(stdin),
        StdioConfig::Terminal => terminal(size),
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), StdioError> {
    crate::fd::pipe().map_err(StdioError::Pipe)
}

fn pipes(with_stdin: bool) -> Result<(ChildStdio, ProcessIo), StdioError> {
    let (stdin_child, stdin_parent) = if with_stdin {
        let (read, write) = pipe()?;
        (Some(read), Some(write))
    } else {
        (None, None)
    };
    let (stdout_parent, stdout_child) = pipe()?;
    let (stderr_parent, stderr_child) = pipe()?;
    Ok((
        ChildStdio {
            stdin: stdin_child,
            stdout: Some(stdout_child),
            stderr: Some(stderr_child),
        },
        ProcessIo {
            stdin: stdin_parent,
            stdout: Some(stdout_parent),
            stderr: Some(stderr_parent),
            pty_master: None,
        },
    ))
}

fn terminal(size: Option<(u16, u16)>) -> Result<(ChildStdio, ProcessIo), StdioError> {
    let pty = |step| move |errno| StdioError::Pty { step, errno };
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(pty("posix_openpt"))?;
    grantpt(&master).map_err(pty("grantpt"))?;
    unlockpt(&master).map_err(pty("unlockpt"))?;
    let master = above_stdio(OwnedFd::from(master)).map_err(pty("move the master above stdio"))?;
    // TIOCGPTPEER opens the slave through the master, so no /dev/pts path lookup can be
    // raced or point at another devpts instance.
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: TIOCGPTPEER takes open flags as an integer and returns a new fd.
    let raw = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, flags) };
    let raw = Errno::result(raw).map_err(pty("TIOCGPTPEER"))?;
    // SAFETY: the ioctl returned a new descriptor that nothing else owns.
    let slave = unsafe { OwnedFd::from_raw_fd(raw) };
    let slave = above_stdio(slave).map_err(pty("move the slave above stdio"))?;
    if let Some((rows, cols)) = size {
        resize_pty(std::os::fd::AsFd::as_fd(&master), rows, cols)?;
    }
    let dup = |fd: &OwnedFd| {
        fd.try_clone().map_err(|e| StdioError::Pty {
            step: "dup",
            errno: e.raw_os_error().map_or(Errno::EIO, Errno::from_raw),
        })
    };
    Ok((
        ChildStdio {
            stdin: Some(dup(&slave)?),
            stdout: Some(dup(&slave)?),
            stderr: Some(slave),
        },
        ProcessIo {
            pty_master: Some(master),
            ..ProcessIo::default()
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn pipes_without_stdin_leave_it_null() {
        let (child, parent) = allocate(StdioConfig::Pipes { stdin: false }, None).unwrap();
        assert!(child.stdin.is_none() && parent.stdin.is_none());
        assert!(child.stdout.is_some() && parent.stdout.is_some());
        assert!(parent.pty_master.is_none());
    }

    #[test]
    fn pipe_ends_are_connected() {
        let (child, parent) = allocate(StdioConfig::Pipes { stdin: true }, None).unwrap();
        nix::unistd::write(child.stdout.as_ref().unwrap(), b"hi").unwrap();
        let mut buf = [0u8; 2];
        nix::unistd::read(parent.stdout.as_ref().unwrap().as_fd(), &mut buf).unwrap();
        assert_eq!(&buf, b"hi");
    }

    #[test]
    fn terminal_gives_a_resizable_master() {
        let (child, parent) = allocate(StdioConfig::Terminal, Some((24, 80))).unwrap();
        let master = parent.pty_master.unwrap();
        resize_pty(master.as_fd(), 50, 132).unwrap();
        let mut size = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes a winsize into `size`, which is valid for writes.
        let rc = unsafe {
            libc::ioctl(
                child.stdin.unwrap().as_raw_fd(),
                libc::TIOCGWINSZ,
                &mut size,
            )
        };
        assert_eq!(rc, 0);
        assert_eq!((size.ws_row, size.ws_col), (50, 132));
    }

    #[test]
    fn resizing_a_pipe_fails_with_the_size() {
        let (_child, parent) = allocate(StdioConfig::Pipes { stdin: false }, None).unwrap();
        let err = resize_pty(parent.stdout.as_ref().unwrap().as_fd(), 1, 2).unwrap_err();
        assert!(err.to_string().contains("1x2"), "{err}");
    }
}
