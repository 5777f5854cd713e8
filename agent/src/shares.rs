//! What the node shares for each container, below [`veil_protocol::GUEST_SHARED_DIR`]`/<id>`:
//! its rootfs and the directories its mounts bind.
//!
//! Over virtio-fs every directory the host mounted into the share (the rootfs, a bound
//! volume) reaches the guest as a submount of its own: the guest kernel mounts it, with a
//! superblock of its own, the first time a path crosses it, and never expires it. The
//! host's unmount at the container's delete does not reach the guest, so without
//! [`release`] each container removed from a running pod left its submounts, and the
//! inodes and dentries they pin, in guest memory for the pod's life (one mount and about
//! 8 KiB per container, measured over 300 containers in one pod).

use std::os::unix::ffi::OsStringExt;
use std::path::{Component, Path, PathBuf};

use nix::mount::{umount2, MntFlags};

/// Lazily unmounts every mount below container `id`'s share under `shared_root`, deepest
/// first; returns how many went. What fails is logged: the container is gone either way.
pub fn release(shared_root: &Path, id: &str) -> usize {
    if !is_one_name(id) {
        tracing::warn!(container = %id, "not a container id that names a share; nothing unmounted");
        return 0;
    }
    let share = shared_root.join(id);
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mounts_below(&mountinfo, &share)
        .into_iter()
        .filter(|target| match umount2(target, MntFlags::MNT_DETACH) {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(container = %id, mount = %target.display(), %error, "could not unmount the container's share");
                false
            }
        })
        .count()
}

/// A container id is one path component, so its share is never another's or above them.
fn is_one_name(id: &str) -> bool {
    let mut components = Path::new(id).components();
    matches!(components.next(), Some(Component::Normal(_))) && components.next().is_none()
}

/// The mount points strictly below `dir` in a `/proc/<pid>/mountinfo` text, deepest first.
fn mounts_below(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    let mut targets: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split_whitespace().nth(4))
        .map(unescape)
        .filter(|target| target.starts_with(dir) && target != dir)
        .collect();
    targets.sort_by_key(|target| std::cmp::Reverse(target.components().count()));
    targets
}

/// mountinfo writes space, tab, newline and backslash in paths as octal escapes.
fn unescape(field: &str) -> PathBuf {
    let mut bytes = Vec::with_capacity(field.len());
    let raw = field.as_bytes();
    let mut i = 0;
    while i < raw.len() {
        let octal = raw.get(i + 1..i + 4).and_then(|digits| {
            std::str::from_utf8(digits)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (raw[i], octal) {
            (b'\\', Some(byte)) => {
                bytes.push(byte);
                i += 4;
            }
            (byte, _) => {
                bytes.push(byte);
                i += 1;
            }
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The agent's mountinfo after containers c0 and c1 of a pod ran and were removed
    /// (recorded in a guest on virtio-fs, before release existed), with a bound volume and
    /// a path with a space added.
    const MOUNTINFO: &str = "\
21 1 0:20 / /run/veil/shared rw,relatime - virtiofs veil rw
22 1 0:21 / /run/veil/volumes rw,nosuid,nodev - tmpfs tmpfs rw
31 21 0:30 / /run/veil/shared/c0/rootfs rw,nodev,relatime - virtiofs none rw
32 21 0:31 / /run/veil/shared/c1/rootfs rw,nodev,relatime - virtiofs none rw
33 21 0:32 / /run/veil/shared/c1/mounts/0 rw,nodev,relatime - virtiofs none rw
34 33 0:33 / /run/veil/shared/c1/mounts/0/my\\040dir rw,nodev,relatime - virtiofs none rw
35 21 0:34 / /run/veil/shared/c10/rootfs rw,nodev,relatime - virtiofs none rw
";

    #[test]
    fn a_containers_share_mounts_are_found_deepest_first_and_no_one_elses() {
        let c1 = mounts_below(MOUNTINFO, Path::new("/run/veil/shared/c1"));
        assert_eq!(
            c1,
            [
                "/run/veil/shared/c1/mounts/0/my dir",
                "/run/veil/shared/c1/mounts/0",
                "/run/veil/shared/c1/rootfs",
            ]
            .map(PathBuf::from)
        );
        assert_eq!(
            mounts_below(MOUNTINFO, Path::new("/run/veil/shared/c0")),
            [PathBuf::from("/run/veil/shared/c0/rootfs")]
        );
        assert!(mounts_below(MOUNTINFO, Path::new("/run/veil/shared/c2")).is_empty());
    }

    #[test]
    fn only_a_single_name_is_a_share() {
        assert!(is_one_name("c1") && is_one_name("3e7bae46.x"));
        for bad in ["", ".", "..", "a/b", "/c1", "../volumes"] {
            assert!(!is_one_name(bad), "{bad:?}");
        }
        assert_eq!(release(Path::new("/run/veil/shared"), ".."), 0);
    }

    #[test]
    fn releasing_unmounts_what_is_mounted_below_the_share() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: mounting needs root");
            return;
        }
        let root = tempfile::tempdir().unwrap();
        let rootfs = root.path().join("c1/rootfs");
        let other = root.path().join("c2/rootfs");
        for dir in [&rootfs, &other] {
            std::fs::create_dir_all(dir).unwrap();
            nix::mount::mount(
                Some("tmpfs"),
                dir.as_path(),
                Some("tmpfs"),
                nix::mount::MsFlags::empty(),
                None::<&str>,
            )
            .unwrap();
        }
        let mounted = |dir: &Path| {
            std::fs::read_to_string("/proc/self/mountinfo")
                .unwrap()
                .lines()
                .any(|l| l.split_whitespace().nth(4) == Some(dir.to_str().unwrap()))
        };
        assert_eq!(release(root.path(), "c1"), 1);
        assert!(!mounted(&rootfs), "c1's rootfs is still mounted");
        assert!(mounted(&other), "another container's share was unmounted");
        assert_eq!(release(root.path(), "c2"), 1);
    }
}
