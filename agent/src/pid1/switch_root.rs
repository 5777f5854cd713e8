//! Moves the guest's root from the initramfs onto a tmpfs.
//!
//! The kernel refuses pivot_root(2) while the root is the initramfs ("rootfs" has no
//! parent mount), and every container needs pivot_root. So, like switch_root(8), the
//! agent copies its few files onto a tmpfs, moves that tmpfs over `/` and chroots
//! into it; from then on the root is an ordinary mount and pivot_root works in the
//! containers' mount namespaces.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};
use nix::sys::statfs::{statfs, FsType, TMPFS_MAGIC};

/// ramfs's magic number (nix has no constant for it).
const RAMFS_MAGIC: FsType = FsType(0x8584_58f6);

/// Where the new root is assembled before it is moved over `/`.
const NEW_ROOT: &str = "/.veil-root";
/// Top-level entries not copied: kernel filesystems are mounted afresh afterwards.
const SKIPPED: &[&str] = &["proc", "sys", "dev", ".veil-root"];

/// A step of leaving the initramfs failed.
#[derive(Debug, thiserror::Error)]
#[error("leave the initramfs: {step}: {source}")]
pub struct SwitchRootError {
    step: String,
    #[source]
    source: std::io::Error,
}

fn step_error(step: impl Into<String>) -> impl FnOnce(std::io::Error) -> SwitchRootError {
    let step = step.into();
    move |source| SwitchRootError { step, source }
}

fn nix_io(error: nix::Error) -> std::io::Error {
    std::io::Error::from_raw_os_error(error as i32)
}

/// Whether `/` is the initramfs, i.e. PID 1 on a ramfs/tmpfs root that is not yet switched.
pub fn is_on_initramfs() -> bool {
    let on_ram = statfs("/")
        .map(|s| s.filesystem_type() == RAMFS_MAGIC || s.filesystem_type() == TMPFS_MAGIC)
        .unwrap_or(false);
    on_ram && std::process::id() == 1 && !Path::new(NEW_ROOT).exists()
}

/// Copies the initramfs onto a fresh tmpfs and makes it the root. Does nothing when
/// the root is not the initramfs (a restarted agent, a test run on a host).
pub fn leave_initramfs() -> Result<bool, SwitchRootError> {
    if !is_on_initramfs() {
        return Ok(false);
    }
    fs::create_dir_all(NEW_ROOT).map_err(step_error(format!("create {NEW_ROOT}")))?;
    mount(
        Some("rootfs"),
        NEW_ROOT,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=0755"),
    )
    .map_err(|e| step_error("mount tmpfs for the new root")(nix_io(e)))?;
    copy_tree(Path::new("/"), Path::new(NEW_ROOT), true)?;
    std::env::set_current_dir(NEW_ROOT).map_err(step_error("enter the new root"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(|e| step_error("move the new root over /")(nix_io(e)))?;
    nix::unistd::chroot(".").map_err(|e| step_error("chroot into the new root")(nix_io(e)))?;
    std::env::set_current_dir("/").map_err(step_error("chdir to /"))?;
    Ok(true)
}

fn copy_tree(from: &Path, to: &Path, top: bool) -> Result<(), SwitchRootError> {
    let entries = fs::read_dir(from).map_err(step_error(format!("list {}", from.display())))?;
    for entry in entries {
        let entry = entry.map_err(step_error(format!("list {}", from.display())))?;
        let name = entry.file_name();
        if top && SKIPPED.iter().any(|s| name == *s) {
            let _ = fs::create_dir_all(to.join(&name));
            continue;
        }
        copy_entry(&entry.path(), &to.join(&name))?;
    }
    Ok(())
}

fn copy_entry(source: &Path, target: &PathBuf) -> Result<(), SwitchRootError> {
    let meta =
        fs::symlink_metadata(source).map_err(step_error(format!("stat {}", source.display())))?;
    let kind = meta.file_type();
    if kind.is_dir() {
        fs::create_dir_all(target).map_err(step_error(format!("create {}", target.display())))?;
        fs::set_permissions(target, meta.permissions())
            .map_err(step_error(format!("chmod {}", target.display())))?;
        copy_tree(source, target, false)
    } else if kind.is_symlink() {
        let link =
            fs::read_link(source).map_err(step_error(format!("readlink {}", source.display())))?;
        symlink(link, target).map_err(step_error(format!("symlink {}", target.display())))
    } else if kind.is_file() {
        fs::copy(source, target).map_err(step_error(format!("copy {}", source.display())))?;
        fs::set_permissions(
            target,
            fs::Permissions::from_mode(meta.permissions().mode()),
        )
        .map_err(step_error(format!("chmod {}", target.display())))
    } else {
        // Device nodes and sockets are recreated by devtmpfs and the agent itself.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_tree_keeps_files_modes_and_links() {
        let from = tempfile::tempdir().expect("tempdir");
        let to = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(from.path().join("etc/veil")).expect("mkdir");
        fs::write(from.path().join("init"), b"agent").expect("write");
        fs::set_permissions(from.path().join("init"), fs::Permissions::from_mode(0o755))
            .expect("chmod");
        fs::write(from.path().join("etc/veil/modules.load"), b"a.ko\n").expect("write");
        symlink("init", from.path().join("sbin-init")).expect("symlink");

        copy_tree(from.path(), to.path(), false).expect("copy");

        assert_eq!(fs::read(to.path().join("init")).expect("read"), b"agent");
        let mode = fs::metadata(to.path().join("init"))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        assert_eq!(
            fs::read(to.path().join("etc/veil/modules.load")).expect("read"),
            b"a.ko\n"
        );
        assert_eq!(
            fs::read_link(to.path().join("sbin-init")).expect("link"),
            PathBuf::from("init")
        );
    }

    #[test]
    fn a_test_process_is_never_on_the_initramfs() {
        assert!(!is_on_initramfs());
        assert!(!leave_initramfs().expect("no-op"));
    }
}
