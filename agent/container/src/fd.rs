//! Descriptor helpers. The guest agent is PID 1 and may start without stdin, stdout and
//! stderr (no /dev/console in the initramfs), so a new pipe can land on 0, 1 or 2, where
//! the child's stdio setup (dup2 onto 0/1/2) would clobber it. Every descriptor this crate
//! hands to a child is therefore moved above 2 first.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::OFlag;

/// The lowest descriptor number handed to a child besides its stdio.
const FIRST_FREE: libc::c_int = 3;

/// Moves `fd` to a number above 2 (close-on-exec), or returns it as is.
pub(crate) fn above_stdio(fd: OwnedFd) -> nix::Result<OwnedFd> {
    if fd.as_raw_fd() >= FIRST_FREE {
        return Ok(fd);
    }
    // SAFETY: F_DUPFD_CLOEXEC duplicates a descriptor we own and touches no memory.
    let raw = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, FIRST_FREE) };
    let raw = Errno::result(raw)?;
    // SAFETY: fcntl returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// A close-on-exec pipe (read end, write end), both above 2.
pub(crate) fn pipe() -> nix::Result<(OwnedFd, OwnedFd)> {
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    Ok((above_stdio(read)?, above_stdio(write)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn low_descriptors_are_moved_up() {
        // SAFETY: dup of stdin (which a test runner has) gives a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(libc::dup(0)) };
        assert!(above_stdio(fd).unwrap().as_raw_fd() >= FIRST_FREE);
        let (r, w) = pipe().unwrap();
        assert!(r.as_raw_fd() >= FIRST_FREE && w.as_raw_fd() >= FIRST_FREE);
    }
}
