//! A fake that records every call as a line of text and fails the calls a test asks for.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use nix::sys::stat::SFlag;

use super::{OpenedPath, PathKind, Syscall};

/// Records calls; paths not in `kinds` do not exist.
#[derive(Default)]
pub(crate) struct RecordingSyscall {
    calls: RefCell<Vec<String>>,
    kinds: RefCell<HashMap<PathBuf, PathKind>>,
    /// Where `open_path` says a path leads; paths not here lead to themselves.
    links: HashMap<PathBuf, PathBuf>,
    opened: RefCell<usize>,
    /// A call whose recorded line starts with this prefix fails with the errno.
    fail: Option<(String, Errno)>,
    filesystems: HashSet<String>,
}

impl RecordingSyscall {
    pub fn new() -> Self {
        let mut fake = RecordingSyscall::default();
        fake.filesystems.insert("cgroup2".into());
        fake
    }

    pub fn with_path(mut self, path: &str, kind: PathKind) -> Self {
        self.kinds.get_mut().insert(PathBuf::from(path), kind);
        self
    }

    /// `open_path(path)` will lead to `to` (a symlink, or a path a file server changed).
    pub fn with_link(mut self, path: &str, to: &str) -> Self {
        self.links.insert(PathBuf::from(path), PathBuf::from(to));
        self
    }

    pub fn failing(mut self, prefix: &str, errno: Errno) -> Self {
        self.fail = Some((prefix.to_string(), errno));
        self
    }

    pub fn without_filesystem(mut self, fstype: &str) -> Self {
        self.filesystems.remove(fstype);
        self
    }

    pub fn calls(&self) -> Vec<String> {
        self.calls.borrow().clone()
    }

    fn record(&self, line: String) -> nix::Result<()> {
        let failing = matches!(&self.fail, Some((prefix, _)) if line.starts_with(prefix.as_str()));
        self.calls.borrow_mut().push(line);
        match &self.fail {
            Some((_, errno)) if failing => Err(*errno),
            _ => Ok(()),
        }
    }
}

fn flags_text(flags: MsFlags) -> String {
    const NAMES: &[(MsFlags, &str)] = &[
        (MsFlags::MS_RDONLY, "ro"),
        (MsFlags::MS_NOSUID, "nosuid"),
        (MsFlags::MS_NODEV, "nodev"),
        (MsFlags::MS_NOEXEC, "noexec"),
        (MsFlags::MS_REMOUNT, "remount"),
        (MsFlags::MS_BIND, "bind"),
        (MsFlags::MS_MOVE, "move"),
        (MsFlags::MS_REC, "rec"),
        (MsFlags::MS_PRIVATE, "private"),
        (MsFlags::MS_SLAVE, "slave"),
        (MsFlags::MS_SHARED, "shared"),
        (MsFlags::MS_RELATIME, "relatime"),
        (MsFlags::MS_STRICTATIME, "strictatime"),
    ];
    let words: Vec<&str> = NAMES
        .iter()
        .filter(|(f, _)| flags.contains(*f))
        .map(|(_, n)| *n)
        .collect();
    words.join("|")
}

fn opt(p: Option<&Path>) -> String {
    p.map_or("-".into(), |p| p.display().to_string())
}

impl Syscall for RecordingSyscall {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> nix::Result<()> {
        self.record(format!(
            "mount {} {} {} [{}] {}",
            opt(source),
            target.display(),
            fstype.unwrap_or("-"),
            flags_text(flags),
            data.unwrap_or("-")
        ))
    }

    fn umount_detach(&self, target: &Path) -> nix::Result<()> {
        self.record(format!("umount {}", target.display()))
    }

    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> nix::Result<()> {
        self.record(format!(
            "pivot_root {} {}",
            new_root.display(),
            put_old.display()
        ))
    }

    fn chroot(&self, path: &Path) -> nix::Result<()> {
        self.record(format!("chroot {}", path.display()))
    }

    fn chdir(&self, path: &Path) -> nix::Result<()> {
        self.record(format!("chdir {}", path.display()))
    }

    fn mkdir_all(&self, path: &Path) -> nix::Result<()> {
        self.record(format!("mkdir {}", path.display()))
    }

    fn create_file(&self, path: &Path) -> nix::Result<()> {
        self.record(format!("touch {}", path.display()))
    }

    fn symlink(&self, target: &Path, link: &Path) -> nix::Result<()> {
        self.record(format!(
            "symlink {} -> {}",
            link.display(),
            target.display()
        ))
    }

    fn mknod(&self, path: &Path, kind: SFlag, mode: u32, dev: u64) -> nix::Result<()> {
        let kind = if kind == SFlag::S_IFCHR { "c" } else { "other" };
        let (major, minor) = (libc::major(dev), libc::minor(dev));
        self.record(format!(
            "mknod {} {kind} {major}:{minor} {mode:o}",
            path.display()
        ))
    }

    fn chown(&self, path: &Path, uid: u32, gid: u32) -> nix::Result<()> {
        self.record(format!("chown {} {uid}:{gid}", path.display()))
    }

    /// Descriptors count up from 10; `/proc/self/fd/N` takes the kind of what it leads to.
    fn open_path(&self, path: &Path) -> nix::Result<OpenedPath> {
        self.record(format!("open_path {}", path.display()))?;
        let leads_to = self.links.get(path).cloned().unwrap_or(path.to_path_buf());
        let kind = self.path_kind(&leads_to).ok_or(Errno::ENOENT)?;
        let number = {
            let mut opened = self.opened.borrow_mut();
            *opened += 1;
            9 + *opened
        };
        let by_fd = PathBuf::from(format!("/proc/self/fd/{number}"));
        self.kinds.borrow_mut().insert(by_fd.clone(), kind);
        Ok(OpenedPath {
            _fd: None,
            by_fd,
            leads_to,
        })
    }

    fn path_kind(&self, path: &Path) -> Option<PathKind> {
        self.kinds.borrow().get(path).copied()
    }

    fn unshare(&self, flags: CloneFlags) -> nix::Result<()> {
        self.record(format!("unshare {flags:?}"))
    }

    fn setns(&self, path: &Path, kind: CloneFlags) -> nix::Result<()> {
        self.record(format!("setns {} {kind:?}", path.display()))
    }

    fn sethostname(&self, name: &str) -> nix::Result<()> {
        self.record(format!("sethostname {name}"))
    }

    fn loopback_up(&self) -> nix::Result<()> {
        self.record("loopback up".to_string())
    }

    fn setdomainname(&self, name: &str) -> nix::Result<()> {
        self.record(format!("setdomainname {name}"))
    }

    fn write_file(&self, path: &Path, contents: &str) -> nix::Result<()> {
        self.record(format!("write {} {contents}", path.display()))
    }

    fn filesystem_supported(&self, fstype: &str) -> bool {
        self.filesystems.contains(fstype)
    }
}
