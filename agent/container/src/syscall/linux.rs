//! The real system calls.

use std::fs;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{open, OFlag};
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::stat::{Mode, SFlag};

use super::{OpenedPath, PathKind, Syscall};

/// Calls straight into the kernel.
pub(crate) struct LinuxSyscall;

fn io_errno(e: std::io::Error) -> Errno {
    e.raw_os_error().map_or(Errno::EIO, Errno::from_raw)
}

impl Syscall for LinuxSyscall {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> nix::Result<()> {
        nix::mount::mount(source, target, fstype, flags, data)
    }

    fn umount_detach(&self, target: &Path) -> nix::Result<()> {
        nix::mount::umount2(target, MntFlags::MNT_DETACH)
    }

    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> nix::Result<()> {
        nix::unistd::pivot_root(new_root, put_old)
    }

    fn chroot(&self, path: &Path) -> nix::Result<()> {
        nix::unistd::chroot(path)
    }

    fn chdir(&self, path: &Path) -> nix::Result<()> {
        nix::unistd::chdir(path)
    }

    fn mkdir_all(&self, path: &Path) -> nix::Result<()> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(path)
            .map_err(io_errno)
    }

    fn create_file(&self, path: &Path) -> nix::Result<()> {
        if fs::symlink_metadata(path).is_ok() {
            return Ok(());
        }
        if let Some(parent) = path.parent() {
            self.mkdir_all(parent)?;
        }
        fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(path)
            .map(drop)
            .map_err(io_errno)
    }

    fn symlink(&self, target: &Path, link: &Path) -> nix::Result<()> {
        match std::os::unix::fs::symlink(target, link) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            other => other.map_err(io_errno),
        }
    }

    fn mknod(&self, path: &Path, kind: SFlag, mode: u32, dev: u64) -> nix::Result<()> {
        let perm = Mode::from_bits_truncate(mode);
        match nix::sys::stat::mknod(path, kind, perm, dev) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(errno) => return Err(errno),
        }
        // mknod applies the umask; the spec's mode is meant literally.
        nix::sys::stat::fchmodat(
            nix::fcntl::AT_FDCWD,
            path,
            perm,
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )
    }

    fn chown(&self, path: &Path, uid: u32, gid: u32) -> nix::Result<()> {
        nix::unistd::chown(
            path,
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
        )
    }

    fn open_path(&self, path: &Path) -> nix::Result<OpenedPath> {
        let fd = open(path, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty())?;
        let by_fd = std::path::PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        let leads_to = fs::read_link(&by_fd).map_err(io_errno)?;
        Ok(OpenedPath {
            _fd: Some(fd),
            by_fd,
            leads_to,
        })
    }

    fn path_kind(&self, path: &Path) -> Option<PathKind> {
        let meta = fs::metadata(path).ok()?;
        Some(if meta.is_dir() {
            PathKind::Directory
        } else {
            PathKind::File
        })
    }

    fn unshare(&self, flags: CloneFlags) -> nix::Result<()> {
        nix::sched::unshare(flags)
    }

    fn setns(&self, path: &Path, kind: CloneFlags) -> nix::Result<()> {
        let fd = open(path, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())?;
        nix::sched::setns(fd, kind)
    }

    fn sethostname(&self, name: &str) -> nix::Result<()> {
        nix::unistd::sethostname(name)
    }

    // Two ioctls rather than a netlink client: the init is a single-threaded forked
    // process where the agent's async rtnetlink client cannot run.
    fn loopback_up(&self) -> nix::Result<()> {
        let socket = nix::sys::socket::socket(
            nix::sys::socket::AddressFamily::Inet,
            nix::sys::socket::SockType::Datagram,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        // SAFETY: ifreq is plain old data; all-zero is a valid value.
        let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
        for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo\0") {
            *slot = *byte as libc::c_char;
        }
        let fd = std::os::fd::AsRawFd::as_raw_fd(&socket);
        // SAFETY: SIOCGIFFLAGS reads the flags of the interface named in `request`, which
        // is a valid ifreq that outlives the call.
        Errno::result(unsafe { libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut request) })?;
        // SAFETY: the union member ifru_flags is the one SIOCGIFFLAGS just filled.
        unsafe { request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
        // SAFETY: as above; SIOCSIFFLAGS reads `request`.
        Errno::result(unsafe { libc::ioctl(fd, libc::SIOCSIFFLAGS, &request) }).map(drop)
    }

    fn setdomainname(&self, name: &str) -> nix::Result<()> {
        // SAFETY: the pointer and length describe `name`'s bytes, which outlive the call;
        // the kernel copies them and does not need a terminating NUL.
        let res = unsafe { libc::setdomainname(name.as_ptr().cast(), name.len()) };
        Errno::result(res).map(drop)
    }

    fn write_file(&self, path: &Path, contents: &str) -> nix::Result<()> {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io_errno)?;
        file.write_all(contents.as_bytes()).map_err(io_errno)
    }

    fn filesystem_supported(&self, fstype: &str) -> bool {
        fs::read_to_string("/proc/filesystems").is_ok_and(|list| {
            list.lines()
                .any(|line| line.split_whitespace().last() == Some(fstype))
        })
    }
}
