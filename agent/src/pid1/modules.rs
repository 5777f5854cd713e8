//! Loads the kernel modules the guest image lists, in the order it lists them.
//!
//! The guest-image build resolves dependencies (modules.dep) and writes the load
//! order to [`MODULES_LOAD_FILE`]; the agent only follows it.

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::kmod::{finit_module, ModuleInitFlags};

/// One module path per line, dependencies first; `#` starts a comment.
pub const MODULES_LOAD_FILE: &str = "/etc/veil/modules.load";

/// Loading a module failed.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    /// The load list could not be read.
    #[error("read module list {path}: {source}; rebuild the guest image")]
    ReadList {
        /// The list file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A listed module could not be opened.
    #[error("open module {path}: {source}; the guest image is incomplete, rebuild it")]
    Open {
        /// The module file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The kernel refused a module.
    #[error("load module {path}: {source}; the module may not match the guest kernel, rebuild the guest image")]
    Load {
        /// The module file.
        path: PathBuf,
        /// Why.
        #[source]
        source: nix::Error,
    },
}

/// Loads every module named in `list` (a missing list means a kernel with everything
/// built in, which is not an error). Returns how many modules were loaded.
pub fn load_modules(list: &Path) -> Result<usize, ModuleError> {
    let text = match std::fs::read_to_string(list) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(source) => {
            return Err(ModuleError::ReadList {
                path: list.to_path_buf(),
                source,
            })
        }
    };
    let mut loaded = 0;
    for path in module_paths(&text) {
        load_one(&path)?;
        loaded += 1;
    }
    Ok(loaded)
}

fn module_paths(list: &str) -> Vec<PathBuf> {
    list.lines()
        .map(|line| line.split('#').next().unwrap_or("").trim())
        .filter(|line| !line.is_empty())
        .map(PathBuf::from)
        .collect()
}

fn load_one(path: &Path) -> Result<(), ModuleError> {
    let file = File::open(path).map_err(|source| ModuleError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let flags = if is_compressed(path) {
        // The kernel decompresses in-kernel (CONFIG_MODULE_DECOMPRESS) when told to.
        ModuleInitFlags::from_bits_retain(4) // MODULE_INIT_COMPRESSED_FILE
    } else {
        ModuleInitFlags::empty()
    };
    match finit_module(&file, c"", flags) {
        Ok(()) | Err(nix::Error::EEXIST) => {
            tracing::debug!(module = %path.display(), "loaded");
            Ok(())
        }
        Err(source) => Err(ModuleError::Load {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn is_compressed(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("xz" | "zst" | "gz")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_keeps_order_and_skips_comments_and_blanks() {
        let list = "# dependencies first\n/lib/modules/a.ko\n\n/lib/modules/b.ko  # needs a\n";
        assert_eq!(
            module_paths(list),
            vec![
                PathBuf::from("/lib/modules/a.ko"),
                PathBuf::from("/lib/modules/b.ko")
            ]
        );
    }

    #[test]
    fn missing_list_means_nothing_to_load() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(
            load_modules(&dir.path().join("absent")).expect("no list"),
            0
        );
    }

    #[test]
    fn missing_module_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let list = dir.path().join("modules.load");
        std::fs::write(&list, "/nonexistent/virtio_pci.ko\n").expect("write list");
        let error = load_modules(&list).expect_err("module is missing");
        assert!(error.to_string().contains("/nonexistent/virtio_pci.ko"));
    }

    #[test]
    fn compressed_modules_are_recognised() {
        assert!(is_compressed(Path::new("x.ko.xz")));
        assert!(is_compressed(Path::new("x.ko.zst")));
        assert!(!is_compressed(Path::new("x.ko")));
    }
}
