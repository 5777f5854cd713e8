//! The initramfs layout: what goes where, with which modes.
//!
//! ```text
//! /init                          the agent (0755)
//! /dev/console  c 5,1 (0600)     so the kernel can open init's console before /dev is mounted
//! /dev/null     c 1,3 (0666)
//! /proc /sys /run (0755), /tmp (1777)   mount points the agent uses
//! /etc/veil/modules.load         module paths, one per line, dependencies first
//! /etc/veil/image.json           the ImageManifest (inputs of this image)
//! /lib/modules/<release>/...     the listed .ko files (0644), uncompressed
//! ```

use crate::cpio::{Archive, CpioError};
use crate::manifest::{ImageManifest, ModuleManifest};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// Where the agent finds the modules to load, in order.
pub const MODULES_LOAD_PATH: &str = "/etc/veil/modules.load";
/// Where the agent finds the image manifest.
pub const IMAGE_MANIFEST_PATH: &str = "/etc/veil/image.json";

/// A module to copy into the initramfs.
#[derive(Debug, Clone)]
pub struct ModuleSource {
    /// Its manifest entry (the `path` field is its absolute guest path).
    pub manifest: ModuleManifest,
    /// The `.ko` file on the host.
    pub host_path: PathBuf,
}

/// Assembling the initramfs failed.
#[derive(Debug, thiserror::Error)]
pub enum AssembleInitramfsError {
    /// An entry could not be added.
    #[error("cannot add to the initramfs: {0}")]
    Entry(#[from] CpioError),
    /// The image manifest could not be serialized.
    #[error("cannot serialize the image manifest: {0}")]
    Manifest(#[from] serde_json::Error),
}

/// Writing the initramfs file failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteInitramfsError {
    /// The output file could not be created, flushed or renamed into place.
    #[error("cannot write {path}: {source}")]
    File {
        /// The output path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Producing the archive bytes failed.
    #[error("cannot write {path}: {source}")]
    Archive {
        /// The output path.
        path: PathBuf,
        /// The underlying error.
        source: CpioError,
    },
}

/// Lays out the initramfs for `agent`, `modules` (in load order) and `image`.
pub fn assemble(
    agent: &Path,
    modules: &[ModuleSource],
    image: &ImageManifest,
) -> Result<Archive, AssembleInitramfsError> {
    let mut archive = Archive::new();
    archive.add_file("init", 0o755, agent)?;
    archive.add_char_device("dev/console", 0o600, 5, 1)?;
    archive.add_char_device("dev/null", 0o666, 1, 3)?;
    for mount_point in ["proc", "sys", "run"] {
        archive.add_directory(mount_point, 0o755)?;
    }
    archive.add_directory("tmp", 0o1777)?;
    for module in modules {
        archive.add_file(&module.manifest.path, 0o644, &module.host_path)?;
    }
    let load_list = modules_load_text(modules.iter().map(|module| &module.manifest));
    archive.add_bytes(MODULES_LOAD_PATH, 0o644, load_list.into_bytes())?;
    let mut manifest_json = serde_json::to_vec_pretty(image)?;
    manifest_json.push(b'\n');
    archive.add_bytes(IMAGE_MANIFEST_PATH, 0o644, manifest_json)?;
    Ok(archive)
}

/// The text of `/etc/veil/modules.load`: one absolute guest path per line.
pub fn modules_load_text<'a>(modules: impl Iterator<Item = &'a ModuleManifest>) -> String {
    modules.map(|module| format!("{}\n", module.path)).collect()
}

/// Writes `archive` to `path` through a temporary file renamed into place, so a reader never
/// sees a half-written initramfs. Returns the size in bytes.
pub fn write_atomically(archive: &Archive, path: &Path) -> Result<u64, WriteInitramfsError> {
    let file_err = |source| WriteInitramfsError::File {
        path: path.to_path_buf(),
        source,
    };
    let partial = partial_path(path);
    let file = std::fs::File::create(&partial).map_err(file_err)?;
    let mut writer = BufWriter::new(file);
    let size = archive
        .write_to(&mut writer)
        .map_err(|source| WriteInitramfsError::Archive {
            path: path.to_path_buf(),
            source,
        })?;
    writer.flush().map_err(file_err)?;
    std::fs::rename(&partial, path).map_err(file_err)?;
    Ok(size)
}

/// `dir/name` -> `dir/.name.partial`.
pub(crate) fn partial_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.partial"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apt::{KernelPin, PinnedPackage};
    use crate::manifest::{AgentManifest, KernelManifest, KernelOrigin, ModulesManifest};

    fn image(modules: &[ModuleSource]) -> ImageManifest {
        ImageManifest {
            schema: 1,
            kernel: KernelManifest {
                origin: KernelOrigin::Debian {
                    pin: KernelPin {
                        meta_package: "m".into(),
                        meta_version: "1".into(),
                        package: PinnedPackage {
                            name: "p".into(),
                            version: "1".into(),
                            deb_sha256: "00".into(),
                        },
                    },
                },
                release: "6.1.0-test".into(),
                vmlinuz_sha256: "11".into(),
                vmlinux_sha256: "12".into(),
            },
            agent: AgentManifest {
                sha256: "22".into(),
                size: 4,
            },
            modules: ModulesManifest {
                load_order: modules.iter().map(|m| m.manifest.clone()).collect(),
                builtin: vec![],
            },
            initramfs_format: "newc".into(),
        }
    }

    #[test]
    fn layout_has_init_devices_modules_and_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let agent = dir.path().join("agent");
        let ko = dir.path().join("a.ko");
        std::fs::write(&agent, b"\x7fELF").unwrap();
        std::fs::write(&ko, b"ko").unwrap();
        let modules = vec![ModuleSource {
            manifest: ModuleManifest {
                name: "a".into(),
                path: "/lib/modules/6.1.0-test/kernel/a.ko".into(),
                sha256: "33".into(),
            },
            host_path: ko,
        }];
        let archive = assemble(&agent, &modules, &image(&modules)).unwrap();
        let paths: Vec<&str> = archive.paths().collect();
        for expected in [
            "init",
            "dev/console",
            "dev/null",
            "etc/veil/modules.load",
            "etc/veil/image.json",
            "lib/modules/6.1.0-test/kernel/a.ko",
            "tmp",
        ] {
            assert!(
                paths.contains(&expected),
                "{expected} missing from {paths:?}"
            );
        }
        let out = dir.path().join("initramfs.img");
        let size = write_atomically(&archive, &out).unwrap();
        assert_eq!(std::fs::metadata(&out).unwrap().len(), size);
        assert!(!partial_path(&out).exists());
    }

    #[test]
    fn modules_load_lists_absolute_paths_in_order() {
        let entry = |name: &str| ModuleManifest {
            name: name.into(),
            path: format!("/lib/modules/r/{name}.ko"),
            sha256: String::new(),
        };
        let text = modules_load_text([entry("virtio_ring"), entry("virtio")].iter());
        assert_eq!(
            text,
            "/lib/modules/r/virtio_ring.ko\n/lib/modules/r/virtio.ko\n"
        );
    }
}
