//! The system calls the namespace and rootfs logic makes, behind a trait so that the order
//! and arguments of mounts can be unit-tested with a recording fake (as in youki).

mod linux;
#[cfg(test)]
pub(crate) mod recording;

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use nix::sys::stat::SFlag;

pub(crate) use linux::LinuxSyscall;

/// What sits at a path (after following symlinks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PathKind {
    /// A directory.
    Directory,
    /// Anything else (regular file, device, socket, ...).
    File,
}

/// A path opened once with `O_PATH`: mounting from [`by_fd`](Self::by_fd) reaches what was
/// opened, whatever the path leads to by then.
#[derive(Debug)]
pub(crate) struct OpenedPath {
    /// Keeps the descriptor open for as long as `by_fd` is used (none in the recording fake).
    pub _fd: Option<OwnedFd>,
    /// `/proc/self/fd/N`.
    pub by_fd: PathBuf,
    /// Where the path led when opened (the descriptor's link in /proc).
    pub leads_to: PathBuf,
}

/// System calls used while entering namespaces and preparing the rootfs.
pub(crate) trait Syscall {
    /// mount(2).
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> nix::Result<()>;
    /// umount2(2) with MNT_DETACH.
    fn umount_detach(&self, target: &Path) -> nix::Result<()>;
    /// pivot_root(2).
    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> nix::Result<()>;
    /// chroot(2).
    fn chroot(&self, path: &Path) -> nix::Result<()>;
    /// chdir(2).
    fn chdir(&self, path: &Path) -> nix::Result<()>;
    /// Creates a directory and its parents (mode 0755); existing ones are fine.
    fn mkdir_all(&self, path: &Path) -> nix::Result<()>;
    /// Creates an empty file (a bind-mount target) unless something exists there.
    fn create_file(&self, path: &Path) -> nix::Result<()>;
    /// symlink(2); an existing link is fine.
    fn symlink(&self, target: &Path, link: &Path) -> nix::Result<()>;
    /// mknod(2) with the given type, permission bits and device number.
    fn mknod(&self, path: &Path, kind: SFlag, mode: u32, dev: u64) -> nix::Result<()>;
    /// chown(2).
    fn chown(&self, path: &Path, uid: u32, gid: u32) -> nix::Result<()>;
    /// open(2) with `O_PATH`, following symlinks as the kernel does, and where it led.
    fn open_path(&self, path: &Path) -> nix::Result<OpenedPath>;
    /// What exists at `path`, or `None`.
    fn path_kind(&self, path: &Path) -> Option<PathKind>;
    /// unshare(2).
    fn unshare(&self, flags: CloneFlags) -> nix::Result<()>;
    /// Opens a namespace file and setns(2) into it.
    fn setns(&self, path: &Path, kind: CloneFlags) -> nix::Result<()>;
    /// sethostname(2).
    fn sethostname(&self, name: &str) -> nix::Result<()>;
    /// Sets the loopback interface of the current network namespace up.
    fn loopback_up(&self) -> nix::Result<()>;
    /// setdomainname(2).
    fn setdomainname(&self, name: &str) -> nix::Result<()>;
    /// Writes a whole small file (sysctl, oom_score_adj).
    fn write_file(&self, path: &Path, contents: &str) -> nix::Result<()>;
    /// Whether the kernel knows a filesystem type (from /proc/filesystems).
    fn filesystem_supported(&self, fstype: &str) -> bool;
}
