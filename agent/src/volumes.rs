//! Memory volumes: pod volumes that live only in guest RAM (Kubernetes emptyDir with
//! `medium: Memory`). One tmpfs per volume name, mounted the first time a container
//! of the pod asks for it and shared by every container that mounts it afterwards;
//! the host never has a copy.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::mount::{mount, MsFlags};

/// Preparing a memory volume failed.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// The name cannot be used as a directory name.
    #[error("memory volume name {0:?} must be 1-63 characters of a-z, 0-9, '-' or '.'")]
    InvalidName(String),
    /// The tmpfs could not be mounted.
    #[error("mount tmpfs for memory volume {name} at {path}: {source}")]
    Mount {
        /// Volume name.
        name: String,
        /// Mount point.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The memory volumes of this VM.
pub struct MemoryVolumes {
    base: PathBuf,
    mounted: Mutex<HashMap<String, u64>>,
}

impl MemoryVolumes {
    /// Volumes mounted below `base` (the guest uses [`veil_protocol::GUEST_VOLUMES_DIR`]).
    pub fn new(base: impl Into<PathBuf>) -> Self {
        MemoryVolumes {
            base: base.into(),
            mounted: Mutex::new(HashMap::new()),
        }
    }

    /// Where volume `name` is mounted.
    pub fn path(&self, name: &str) -> PathBuf {
        self.base.join(name)
    }

    /// Whether volume `name` is mounted.
    pub fn is_mounted(&self, name: &str) -> bool {
        self.mounted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(name)
    }

    /// Mounts the tmpfs for `name` unless it already is; returns its path. A later
    /// request with another size keeps the first (the volume is already in use) and
    /// says so in the log.
    pub fn ensure(&self, name: &str, size_bytes: u64) -> Result<PathBuf, VolumeError> {
        if !veil_protocol::is_valid_volume_name(name) {
            return Err(VolumeError::InvalidName(name.to_string()));
        }
        let path = self.path(name);
        let mut mounted = self.mounted.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(existing) = mounted.get(name) {
            if *existing != size_bytes {
                tracing::warn!(
                    volume = name,
                    existing,
                    requested = size_bytes,
                    "memory volume already mounted with another size; keeping it"
                );
            }
            return Ok(path);
        }
        mount_tmpfs(name, &path, size_bytes)?;
        mounted.insert(name.to_string(), size_bytes);
        tracing::info!(volume = name, size_bytes, path = %path.display(), "memory volume mounted");
        Ok(path)
    }
}

/// Transparent huge pages inside each file's size: a model of gigabytes is held in 2 MiB
/// pages, which a decrypt fills about twice as fast as 4 KiB ones (copying into tmpfs is a
/// large share of it: `benches/results/seal-throughput.md`), while small files keep 4 KiB
/// pages and nothing is rounded up. veil-seal sizes its output before writing, which this
/// policy needs on Linux 6.1 (the guest kernel) to give a file written front to back huge pages.
const HUGE_PAGES: &str = "huge=within_size";

fn mount_tmpfs(name: &str, path: &Path, size_bytes: u64) -> Result<(), VolumeError> {
    let error = |source| VolumeError::Mount {
        name: name.to_string(),
        path: path.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(path).map_err(error)?;
    match mount_with(path, &tmpfs_options(size_bytes, true)) {
        // A kernel without transparent huge pages refuses the option; the volume works without.
        Err(nix::errno::Errno::EINVAL) => {
            tracing::info!(
                volume = name,
                "the kernel refused {HUGE_PAGES}; memory volume mounted with 4 KiB pages"
            );
            mount_with(path, &tmpfs_options(size_bytes, false))
        }
        other => other,
    }
    .map_err(|e| error(e.into()))
}

fn tmpfs_options(size_bytes: u64, huge_pages: bool) -> String {
    // emptyDir is world-writable (Kubernetes creates it 0777) so any container user can write.
    let mut options = "mode=1777".to_string();
    if size_bytes > 0 {
        options.push_str(&format!(",size={size_bytes}"));
    }
    if huge_pages {
        options.push(',');
        options.push_str(HUGE_PAGES);
    }
    options
}

fn mount_with(path: &Path, options: &str) -> nix::Result<()> {
    mount(
        Some("veil-memory-volume"),
        path,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(options),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_before_anything_is_mounted() {
        let volumes = MemoryVolumes::new("/nonexistent");
        for bad in ["", "../x", "UPPER", ".hidden", "a/b"] {
            assert!(
                matches!(volumes.ensure(bad, 0), Err(VolumeError::InvalidName(_))),
                "{bad}"
            );
        }
        assert!(veil_protocol::is_valid_volume_name("model-cache.v1"));
    }

    #[test]
    fn options_ask_for_huge_pages_only_when_the_kernel_takes_them() {
        assert_eq!(tmpfs_options(0, true), "mode=1777,huge=within_size");
        assert_eq!(tmpfs_options(1 << 20, false), "mode=1777,size=1048576");
    }

    #[test]
    fn mounts_once_with_the_size_limit_and_enforces_it() {
        if !nix::unistd::geteuid().is_root() {
            panic!("this test mounts tmpfs: run it as root (make test does)");
        }
        let base = tempfile::tempdir().expect("tempdir");
        let volumes = MemoryVolumes::new(base.path());
        let path = volumes.ensure("data", 1 << 20).expect("mount");
        assert_eq!(volumes.ensure("data", 2 << 20).expect("again"), path);
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        let mounted: Vec<&str> = mountinfo
            .lines()
            .filter(|l| l.contains(path.to_str().expect("utf-8")))
            .collect();
        assert_eq!(mounted.len(), 1, "{mounted:?}");
        assert!(mounted[0].contains("tmpfs"));
        // The test host's kernel has transparent huge pages, as the guest's has.
        assert!(mounted[0].contains(HUGE_PAGES), "{mounted:?}");
        let too_big = vec![0u8; 2 << 20];
        let error = std::fs::write(path.join("big"), &too_big).expect_err("over the limit");
        assert_eq!(error.raw_os_error(), Some(libc::ENOSPC));
        nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH).expect("umount");
    }
}
