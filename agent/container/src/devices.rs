//! The device nodes and links every container's /dev gets (runc's defaults), plus the
//! spec's `linux.devices`.

use std::path::{Path, PathBuf};

use nix::sys::stat::SFlag;
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType};

use crate::failure::{InitFailure, StepContext};
use crate::secure_join::secure_join;
use crate::syscall::Syscall;

/// A device node to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeviceNode {
    /// Path inside the container, e.g. `/dev/null`.
    pub path: PathBuf,
    /// Character, block or fifo.
    pub kind: SFlag,
    /// Major number.
    pub major: u64,
    /// Minor number.
    pub minor: u64,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

fn char_device(path: &str, major: u64, minor: u64) -> DeviceNode {
    DeviceNode {
        path: PathBuf::from(path),
        kind: SFlag::S_IFCHR,
        major,
        minor,
        mode: 0o666,
        uid: 0,
        gid: 0,
    }
}

/// The devices runc creates in every container.
pub(crate) fn default_devices() -> Vec<DeviceNode> {
    vec![
        char_device("/dev/null", 1, 3),
        char_device("/dev/zero", 1, 5),
        char_device("/dev/full", 1, 7),
        char_device("/dev/random", 1, 8),
        char_device("/dev/urandom", 1, 9),
        char_device("/dev/tty", 5, 0),
    ]
}

/// The symlinks every container's /dev gets.
pub(crate) const DEFAULT_LINKS: [(&str, &str); 5] = [
    ("/dev/fd", "/proc/self/fd"),
    ("/dev/stdin", "/proc/self/fd/0"),
    ("/dev/stdout", "/proc/self/fd/1"),
    ("/dev/stderr", "/proc/self/fd/2"),
    ("/dev/ptmx", "pts/ptmx"),
];

/// Converts a spec device; a spec entry for a default path replaces the default.
pub(crate) fn from_spec(device: &LinuxDevice) -> DeviceNode {
    let kind = match device.typ() {
        LinuxDeviceType::B => SFlag::S_IFBLK,
        LinuxDeviceType::P => SFlag::S_IFIFO,
        LinuxDeviceType::C | LinuxDeviceType::U | LinuxDeviceType::A => SFlag::S_IFCHR,
    };
    DeviceNode {
        path: device.path().clone(),
        kind,
        major: u64::try_from(device.major()).unwrap_or(0),
        minor: u64::try_from(device.minor()).unwrap_or(0),
        mode: device.file_mode().unwrap_or(0o666) & 0o7777,
        uid: device.uid().unwrap_or(0),
        gid: device.gid().unwrap_or(0),
    }
}

/// Creates the default devices, the spec's devices and the standard links under `rootfs`.
pub(crate) fn create_devices(
    sys: &dyn Syscall,
    rootfs: &Path,
    spec_devices: &[LinuxDevice],
) -> Result<(), InitFailure> {
    let mut nodes: Vec<DeviceNode> = default_devices()
        .into_iter()
        .filter(|d| !spec_devices.iter().any(|s| s.path() == &d.path))
        .collect();
    nodes.extend(spec_devices.iter().map(from_spec));
    let dev = rootfs.join("dev");
    sys.mkdir_all(&dev).step(|| "create /dev".into())?;
    for node in &nodes {
        create_node(sys, rootfs, node)?;
    }
    for (link, target) in DEFAULT_LINKS {
        let host = secure_join(rootfs, Path::new(link));
        sys.symlink(Path::new(target), &host)
            .step(|| format!("link {link} to {target}"))?;
    }
    Ok(())
}

fn create_node(sys: &dyn Syscall, rootfs: &Path, node: &DeviceNode) -> Result<(), InitFailure> {
    let host = secure_join(rootfs, &node.path);
    if let Some(parent) = host.parent() {
        sys.mkdir_all(parent)
            .step(|| format!("create the directory of device {}", node.path.display()))?;
    }
    let dev = libc::makedev(
        u32::try_from(node.major).unwrap_or(0),
        u32::try_from(node.minor).unwrap_or(0),
    );
    sys.mknod(&host, node.kind, node.mode, dev)
        .step(|| format!("create device {}", node.path.display()))?;
    if node.uid != 0 || node.gid != 0 {
        sys.chown(&host, node.uid, node.gid)
            .step(|| format!("chown device {}", node.path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syscall::recording::RecordingSyscall;
    use oci_spec::runtime::LinuxDeviceBuilder;

    #[test]
    fn creates_defaults_then_links() {
        let sys = RecordingSyscall::new();
        create_devices(&sys, Path::new("/r"), &[]).unwrap();
        let calls = sys.calls();
        assert_eq!(calls[0], "mkdir /r/dev");
        assert!(calls.contains(&"mknod /r/dev/null c 1:3 666".to_string()));
        assert!(calls.contains(&"mknod /r/dev/tty c 5:0 666".to_string()));
        assert_eq!(
            calls.last().unwrap(),
            "symlink /r/dev/ptmx -> pts/ptmx",
            "links come after the nodes"
        );
        assert!(calls.contains(&"symlink /r/dev/fd -> /proc/self/fd".to_string()));
    }

    #[test]
    fn spec_device_replaces_default_and_is_chowned() {
        let fuse = LinuxDeviceBuilder::default()
            .path("/dev/null")
            .typ(LinuxDeviceType::C)
            .major(1)
            .minor(3)
            .file_mode(0o600u32)
            .uid(1000u32)
            .gid(1000u32)
            .build()
            .unwrap();
        let sys = RecordingSyscall::new();
        create_devices(&sys, Path::new("/r"), &[fuse]).unwrap();
        let calls = sys.calls();
        let nulls: Vec<_> = calls.iter().filter(|c| c.contains("/r/dev/null")).collect();
        assert_eq!(
            nulls,
            vec!["mknod /r/dev/null c 1:3 600", "chown /r/dev/null 1000:1000"]
        );
    }

    #[test]
    fn failing_mknod_names_the_device() {
        let sys = RecordingSyscall::new().failing("mknod /r/dev/zero", nix::errno::Errno::EPERM);
        let err = create_devices(&sys, Path::new("/r"), &[]).unwrap_err();
        assert_eq!(err.step, "create device /dev/zero");
    }
}
