//! The filesystems every guest needs before containers can be created.

use std::path::Path;

use nix::mount::{mount, MsFlags};

/// A mount the agent needs failed.
#[derive(Debug, thiserror::Error)]
#[error("mount {fstype} at {target}: {source}; the guest kernel may lack {fstype} support (check the guest image's kernel config)")]
pub struct MountError {
    fstype: String,
    target: String,
    #[source]
    source: nix::Error,
}

struct EarlyMount {
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
}

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// In mount order: /dev before /dev/pts, /sys before its cgroup.
const EARLY_MOUNTS: &[EarlyMount] = &[
    EarlyMount {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
    EarlyMount {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
    EarlyMount {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: MsFlags::MS_NOSUID,
        data: Some("mode=0755"),
    },
    EarlyMount {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: Some("mode=0620,ptmxmode=0666"),
    },
    EarlyMount {
        source: "shm",
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: Some("mode=1777"),
    },
    EarlyMount {
        source: "tmpfs",
        target: "/run",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=0755"),
    },
    EarlyMount {
        source: "tmpfs",
        target: "/tmp",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=1777"),
    },
    EarlyMount {
        source: "cgroup2",
        target: "/sys/fs/cgroup",
        fstype: "cgroup2",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
];

/// Mounts /proc, /sys, /dev, /dev/pts, /dev/shm, /run, /tmp and the cgroup2 hierarchy.
///
/// A mount that already exists (EBUSY) counts as done, so a restarted agent does not fail.
pub fn mount_early_filesystems() -> Result<(), MountError> {
    for early in EARLY_MOUNTS {
        mount_one(
            early.source,
            early.target,
            early.fstype,
            early.flags,
            early.data,
        )?;
    }
    Ok(())
}

/// Mounts the host's per-sandbox share (tag [`veil_protocol::SHARED_FS_TAG`]; virtio-fs
/// when the shim says so, else virtio-9p) at [`veil_protocol::GUEST_SHARED_DIR`], where
/// the shim places container rootfs.
pub fn mount_shared_directory(virtio_fs: bool) -> Result<(), MountError> {
    let (fstype, data) = if virtio_fs {
        // Each rootfs bind mount on the host arrives as a submount (virtiofsd announces them).
        ("virtiofs", None)
    } else {
        (
            "9p",
            Some("trans=virtio,version=9p2000.L,cache=mmap,msize=262144"),
        )
    };
    mount_one(
        veil_protocol::SHARED_FS_TAG,
        veil_protocol::GUEST_SHARED_DIR,
        fstype,
        MsFlags::MS_NODEV,
        data,
    )
}

fn mount_one(
    source: &str,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), MountError> {
    let error = |source| MountError {
        fstype: fstype.to_string(),
        target: target.to_string(),
        source,
    };
    std::fs::create_dir_all(target)
        .map_err(|e| error(nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO))))?;
    match mount(Some(source), Path::new(target), Some(fstype), flags, data) {
        Ok(()) | Err(nix::Error::EBUSY) => {
            tracing::debug!(target, fstype, "mounted");
            Ok(())
        }
        Err(e) => Err(error(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_are_mounted_before_children() {
        let position = |target: &str| {
            EARLY_MOUNTS
                .iter()
                .position(|m| m.target == target)
                .expect("target listed")
        };
        assert!(position("/dev") < position("/dev/pts"));
        assert!(position("/dev") < position("/dev/shm"));
        assert!(position("/sys") < position("/sys/fs/cgroup"));
    }

    #[test]
    fn mount_error_names_the_filesystem_and_what_to_check() {
        let error = MountError {
            fstype: "9p".into(),
            target: "/run/veil/shared".into(),
            source: nix::Error::ENODEV,
        };
        let text = error.to_string();
        assert!(text.contains("9p") && text.contains("/run/veil/shared"));
        assert!(text.contains("kernel config"));
    }
}
