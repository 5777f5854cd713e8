//! Unpacking Debian's linux-image package into a scratch tree (never installing it).
//!
//! `dpkg-deb -x` unpacks the `.deb` under the cache directory; `depmod -b` then writes
//! `modules.dep` for that tree (the package ships none: Debian runs depmod at install time).
//! The scratch tree is removed when the [`UnpackedKernel`] is dropped.

use crate::command::{run_captured, RunToolError};
use crate::kconfig::{KernelConfig, Tristate};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Unpacking or indexing the kernel package failed.
#[derive(Debug, thiserror::Error)]
pub enum UnpackKernelError {
    /// The scratch directory could not be created.
    #[error("cannot create a scratch directory in {path}: {source}")]
    Scratch {
        /// The parent directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// dpkg-deb failed.
    #[error("cannot unpack {deb}: {source}")]
    Extract {
        /// The package file.
        deb: PathBuf,
        /// The underlying error.
        source: RunToolError,
    },
    /// The package does not have exactly one `/lib/modules/<release>`.
    #[error("{deb} has no single lib/modules/<release> directory (found {found:?}); is it a linux-image package?")]
    Release {
        /// The package file.
        deb: PathBuf,
        /// Release directories found.
        found: Vec<String>,
    },
    /// A file every linux-image package has is missing or unreadable.
    #[error("cannot read {path} from the kernel package: {source}")]
    MissingFile {
        /// The expected path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// depmod failed.
    #[error("cannot index the kernel's modules: {0}")]
    Depmod(#[source] RunToolError),
    /// Its modules are compressed; veil ships and loads only plain `.ko` files.
    #[error("kernel {release} ships compressed modules ({setting}); veil loads plain .ko files with finit_module(flags 0): use a kernel built with CONFIG_MODULE_COMPRESS_NONE")]
    CompressedModules {
        /// The kernel release.
        release: String,
        /// The CONFIG_MODULE_COMPRESS_* option that is set.
        setting: String,
    },
}

/// A linux-image package unpacked into a scratch directory.
#[derive(Debug)]
pub struct UnpackedKernel {
    scratch: tempfile::TempDir,
    /// The kernel release, e.g. `6.1.0-56-amd64`.
    pub release: String,
    /// The kernel's build configuration.
    pub config: KernelConfig,
}

impl UnpackedKernel {
    /// Path of the compressed kernel image (`boot/vmlinuz-<release>`).
    pub fn vmlinuz(&self) -> PathBuf {
        self.scratch
            .path()
            .join(format!("boot/vmlinuz-{}", self.release))
    }

    /// `lib/modules/<release>` inside the unpacked tree.
    pub fn modules_dir(&self) -> PathBuf {
        self.scratch
            .path()
            .join(format!("lib/modules/{}", self.release))
    }

    /// Reads a file under `lib/modules/<release>` (e.g. `modules.dep`) as text.
    pub fn read_modules_file(&self, name: &str) -> Result<String, UnpackKernelError> {
        let path = self.modules_dir().join(name);
        std::fs::read_to_string(&path)
            .map_err(|source| UnpackKernelError::MissingFile { path, source })
    }
}

/// Unpacks `deb` under `scratch_parent`, runs depmod on it and reads its config.
pub fn unpack(deb: &Path, scratch_parent: &Path) -> Result<UnpackedKernel, UnpackKernelError> {
    let scratch = tempfile::Builder::new()
        .prefix("unpack-kernel-")
        .tempdir_in(scratch_parent)
        .map_err(|source| UnpackKernelError::Scratch {
            path: scratch_parent.to_path_buf(),
            source,
        })?;
    tracing::info!(deb = %deb.display(), into = %scratch.path().display(), "unpacking kernel package");
    run_captured(
        Command::new("dpkg-deb")
            .arg("-x")
            .arg(deb)
            .arg(scratch.path()),
        "apt-get install -y dpkg",
    )
    .map_err(|source| UnpackKernelError::Extract {
        deb: deb.to_path_buf(),
        source,
    })?;
    let release = single_release(deb, &scratch.path().join("lib/modules"))?;
    let config_path = scratch.path().join(format!("boot/config-{release}"));
    let config_text =
        std::fs::read_to_string(&config_path).map_err(|source| UnpackKernelError::MissingFile {
            path: config_path,
            source,
        })?;
    let config = KernelConfig::parse(&config_text);
    check_module_compression(&release, &config)?;
    tracing::info!(%release, "indexing modules with depmod");
    run_captured(
        Command::new("depmod")
            .arg("-b")
            .arg(scratch.path())
            .arg(&release),
        "apt-get install -y kmod",
    )
    .map_err(UnpackKernelError::Depmod)?;
    Ok(UnpackedKernel {
        scratch,
        release,
        config,
    })
}

fn single_release(deb: &Path, modules_root: &Path) -> Result<String, UnpackKernelError> {
    let found: Vec<String> = std::fs::read_dir(modules_root)
        .map_err(|source| UnpackKernelError::MissingFile {
            path: modules_root.to_path_buf(),
            source,
        })?
        .filter_map(Result::ok)
        .filter(|entry| entry.path().is_dir())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    match found.as_slice() {
        [release] => Ok(release.clone()),
        _ => Err(UnpackKernelError::Release {
            deb: deb.to_path_buf(),
            found,
        }),
    }
}

/// veil's loader calls finit_module without MODULE_INIT_COMPRESSED_FILE, so compressed
/// modules work only if we never ship them; Debian 6.1 builds MODULE_COMPRESS_NONE.
fn check_module_compression(release: &str, config: &KernelConfig) -> Result<(), UnpackKernelError> {
    let compressed = ["GZIP", "XZ", "ZSTD"]
        .into_iter()
        .find(|kind| config.tristate(&format!("MODULE_COMPRESS_{kind}")) == Tristate::BuiltIn);
    match compressed {
        Some(kind) => Err(UnpackKernelError::CompressedModules {
            release: release.to_owned(),
            setting: format!("CONFIG_MODULE_COMPRESS_{kind}"),
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compressed_modules_are_refused() {
        let config = KernelConfig::parse("CONFIG_MODULE_COMPRESS_XZ=y\n");
        let error = check_module_compression("6.9", &config).unwrap_err();
        assert!(
            error.to_string().contains("CONFIG_MODULE_COMPRESS_XZ"),
            "{error}"
        );
        let config = KernelConfig::parse("CONFIG_MODULE_COMPRESS_NONE=y\n");
        assert!(check_module_compression("6.1", &config).is_ok());
    }

    #[test]
    fn a_tree_without_a_single_release_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("6.1-a")).unwrap();
        std::fs::create_dir_all(dir.path().join("6.1-b")).unwrap();
        let error = single_release(Path::new("x.deb"), dir.path()).unwrap_err();
        assert!(matches!(error, UnpackKernelError::Release { ref found, .. } if found.len() == 2));
    }
}
