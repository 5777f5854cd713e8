//! Building veil's minimal, all-built-in guest kernel from Debian's `linux-source-6.1`.
//!
//! Recipe: unpack the pinned `linux-source-6.1` package (never installed on the host), untar
//! its source, `make tinyconfig`, merge `kernel/minimal.fragment.config` (this crate's copy of
//! the measured fragment plus veil's additions such as virtio-rng) with
//! `scripts/kconfig/merge_config.sh`, `make olddefconfig`, then `make bzImage` with fixed
//! `KBUILD_BUILD_*` values so the build does not stamp host, user or time into the kernel.
//!
//! The result is cached under `<cache>/kernels/minimal-<key>/` where the key is the SHA-256
//! of (recipe version, source package name + version + .deb SHA-256, fragment, `gcc
//! --version`): building again with the same inputs reuses it; changing any input rebuilds.
//! The build takes about 6 minutes on 2 idle cores (14 under load). Two independent builds
//! (different cache and scratch directories) gave bit-identical `bzImage` and `vmlinux`, so
//! a key broker can recompute the kernel's digest from the pinned inputs.

use crate::apt::{self, FetchPackageError, PinnedPackage, ResolvePackageError};
use crate::command::{run_captured, run_reporting_progress, RunToolError};
use crate::digest::sha256_bytes;
use crate::elf;
use crate::kconfig::KernelConfig;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The config fragment applied on top of `make tinyconfig`.
pub const FRAGMENT: &str = include_str!("../kernel/minimal.fragment.config");
/// The Debian package the kernel source comes from.
pub const SOURCE_PACKAGE: &str = "linux-source-6.1";
/// Bump when the build steps change in a way that changes the kernel.
const RECIPE_VERSION: u32 = 1;
/// Fixed values for the strings kbuild would otherwise take from the host.
const KBUILD_ENV: [(&str, &str); 4] = [
    ("KBUILD_BUILD_TIMESTAMP", "Thu Jan  1 00:00:00 UTC 1970"),
    ("KBUILD_BUILD_USER", "veil"),
    ("KBUILD_BUILD_HOST", "veil"),
    ("KBUILD_BUILD_VERSION", "1"),
];
/// What to install when a build tool is missing.
const BUILD_TOOLS_HINT: &str =
    "apt-get install -y make gcc flex bison bc libelf-dev libssl-dev xz-utils";
const BZIMAGE: &str = "bzImage";
const VMLINUX: &str = "vmlinux";
const RELEASE: &str = "release";
const CONFIG: &str = "config";

/// Building (or finding in the cache) the minimal kernel failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildMinimalKernelError {
    /// The source package could not be resolved.
    #[error(transparent)]
    Resolve(#[from] ResolvePackageError),
    /// The source package could not be fetched.
    #[error(transparent)]
    Fetch(#[from] FetchPackageError),
    /// A file or directory in the cache could not be used.
    #[error("cannot use {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A build step failed.
    #[error("minimal kernel build step `{step}` failed: {source}")]
    Step {
        /// What was being done.
        step: &'static str,
        /// The tool's failure (its stderr tail says why).
        source: RunToolError,
    },
    /// The source package does not hold exactly one kernel source tarball.
    #[error("{deb} holds no single usr/src/linux-source-*.tar.xz")]
    NoSourceTarball {
        /// The package file.
        deb: PathBuf,
    },
    /// The built kernel has no PVH entry.
    #[error("the built vmlinux has no PVH entry note; the fragment must keep CONFIG_PVH=y")]
    NoPvhEntry,
}

/// A built (or cached) minimal kernel.
#[derive(Debug, Clone)]
pub struct MinimalKernel {
    /// The compressed kernel image.
    pub bzimage: PathBuf,
    /// The uncompressed ELF (PVH entry).
    pub vmlinux: PathBuf,
    /// The final `.config`.
    pub config: PathBuf,
    /// `make kernelrelease`.
    pub release: String,
    /// The pinned source package.
    pub source_package: PinnedPackage,
    /// SHA-256 of [`FRAGMENT`].
    pub fragment_sha256: String,
    /// First line of `gcc --version`.
    pub compiler: String,
    /// The cache key (SHA-256 over all inputs).
    pub cache_key: String,
    /// Whether it came from the cache.
    pub reused: bool,
}

/// Returns the minimal kernel for the current inputs, building it only when the cache has none.
pub fn build_or_reuse(cache_dir: &Path) -> Result<MinimalKernel, BuildMinimalKernelError> {
    let source_package = apt::resolve_package(SOURCE_PACKAGE)?;
    let compiler = compiler_version()?;
    let cache_key = cache_key(&source_package, FRAGMENT, &compiler);
    let kernels = cache_dir.join("kernels");
    create_dir(&kernels)?;
    let dir = kernels.join(format!("minimal-{}", &cache_key[..16]));
    let reused = dir.join(RELEASE).is_file();
    if reused {
        tracing::info!(dir = %dir.display(), %cache_key, "reusing cached minimal kernel");
    } else {
        let deb = apt::fetch(&source_package, cache_dir)?;
        build_into(&deb, &kernels, &dir)?;
    }
    let release_path = dir.join(RELEASE);
    let release = std::fs::read_to_string(&release_path)
        .map_err(|source| BuildMinimalKernelError::Io {
            path: release_path,
            source,
        })?
        .trim()
        .to_owned();
    Ok(MinimalKernel {
        bzimage: dir.join(BZIMAGE),
        vmlinux: dir.join(VMLINUX),
        config: dir.join(CONFIG),
        release,
        source_package,
        fragment_sha256: sha256_bytes(FRAGMENT.as_bytes()),
        compiler,
        cache_key,
        reused,
    })
}

/// SHA-256 over everything that determines the built kernel.
pub fn cache_key(source: &PinnedPackage, fragment: &str, compiler: &str) -> String {
    let text = format!(
        "recipe={RECIPE_VERSION}\nsource={} {} {}\ncompiler={compiler}\nfragment_sha256={}\n",
        source.name,
        source.version,
        source.deb_sha256,
        sha256_bytes(fragment.as_bytes())
    );
    sha256_bytes(text.as_bytes())
}

fn compiler_version() -> Result<String, BuildMinimalKernelError> {
    let text = run_captured(
        Command::new("gcc").arg("--version"),
        "apt-get install -y gcc",
    )
    .map_err(|source| BuildMinimalKernelError::Step {
        step: "gcc --version",
        source,
    })?;
    Ok(text.lines().next().unwrap_or_default().trim().to_owned())
}

/// Builds in a scratch dir under `kernels` and renames the results into `dir` at the end, so
/// an interrupted build never looks like a cached one.
fn build_into(deb: &Path, kernels: &Path, dir: &Path) -> Result<(), BuildMinimalKernelError> {
    let scratch = tempfile::Builder::new()
        .prefix("build-minimal-")
        .tempdir_in(kernels)
        .map_err(|source| BuildMinimalKernelError::Io {
            path: kernels.to_path_buf(),
            source,
        })?;
    let tree = unpack_source(deb, scratch.path())?;
    configure(&tree)?;
    let jobs = std::thread::available_parallelism().map_or(1, usize::from);
    tracing::info!(jobs, tree = %tree.display(), "building the minimal kernel (about 6 minutes on 2 cores)");
    // Not silent (-s), so that each compiled file is a line of progress.
    let mut build = Command::new("make");
    build
        .current_dir(&tree)
        .envs(KBUILD_ENV)
        .arg(format!("-j{jobs}"))
        .arg("bzImage");
    let steps =
        run_reporting_progress(&mut build, BUILD_TOOLS_HINT, "make bzImage").map_err(|source| {
            BuildMinimalKernelError::Step {
                step: "make bzImage",
                source,
            }
        })?;
    tracing::info!(steps, "kernel compiled");
    let release = step("make kernelrelease", make(&tree).arg("kernelrelease"))?;

    let staged = scratch.path().join("out");
    create_dir(&staged)?;
    copy(&tree.join("arch/x86/boot/bzImage"), &staged.join(BZIMAGE))?;
    copy(&tree.join("vmlinux"), &staged.join(VMLINUX))?;
    copy(&tree.join(".config"), &staged.join(CONFIG))?;
    let vmlinux = read(&staged.join(VMLINUX))?;
    if !elf::has_pvh_entry(&vmlinux) {
        return Err(BuildMinimalKernelError::NoPvhEntry);
    }
    write(
        &staged.join(RELEASE),
        format!("{}\n", release.trim()).as_bytes(),
    )?;
    if let Err(source) = std::fs::rename(&staged, dir) {
        // A concurrent build of the same inputs may have finished first; its kernel is ours.
        if !dir.join(RELEASE).is_file() {
            return Err(BuildMinimalKernelError::Io {
                path: dir.to_path_buf(),
                source,
            });
        }
        tracing::info!(dir = %dir.display(), "a concurrent build cached the same kernel first");
    }
    tracing::info!(release = %release.trim(), dir = %dir.display(), "minimal kernel built and cached");
    Ok(())
}

/// Unpacks the .deb and its source tarball; returns the kernel tree.
fn unpack_source(deb: &Path, scratch: &Path) -> Result<PathBuf, BuildMinimalKernelError> {
    let package_root = scratch.join("package");
    tracing::info!(deb = %deb.display(), "unpacking kernel source package");
    step(
        "dpkg-deb -x",
        Command::new("dpkg-deb")
            .arg("-x")
            .arg(deb)
            .arg(&package_root),
    )?;
    let usr_src = package_root.join("usr/src");
    let tarballs: Vec<PathBuf> = std::fs::read_dir(&usr_src)
        .map_err(|source| BuildMinimalKernelError::Io {
            path: usr_src.clone(),
            source,
        })?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.to_string_lossy().ends_with(".tar.xz"))
        .collect();
    let [tarball] = tarballs.as_slice() else {
        return Err(BuildMinimalKernelError::NoSourceTarball {
            deb: deb.to_path_buf(),
        });
    };
    let tree = scratch.join("linux");
    create_dir(&tree)?;
    tracing::info!(tarball = %tarball.display(), "extracting kernel source");
    step(
        "tar -x kernel source",
        Command::new("tar")
            .arg("-xf")
            .arg(tarball)
            .arg("--strip-components=1")
            .arg("-C")
            .arg(&tree),
    )?;
    // The tarball is large and no longer needed.
    let _ = std::fs::remove_dir_all(&package_root);
    Ok(tree)
}

/// tinyconfig + fragment + olddefconfig; warns about fragment options that did not stick.
fn configure(tree: &Path) -> Result<(), BuildMinimalKernelError> {
    let fragment_path = tree.join("veil.fragment.config");
    write(&fragment_path, FRAGMENT.as_bytes())?;
    step("make tinyconfig", make(tree).arg("tinyconfig"))?;
    step(
        "merge_config.sh",
        Command::new("scripts/kconfig/merge_config.sh")
            .args(["-m", ".config"])
            .arg(&fragment_path)
            .current_dir(tree),
    )?;
    step("make olddefconfig", make(tree).arg("olddefconfig"))?;
    let final_config = KernelConfig::parse(&String::from_utf8_lossy(&read(&tree.join(".config"))?));
    let dropped = dropped_options(FRAGMENT, &final_config);
    if !dropped.is_empty() {
        tracing::warn!(
            ?dropped,
            "fragment options not in the final .config (unmet dependencies)"
        );
    }
    Ok(())
}

/// Fragment lines `CONFIG_X=v` whose value the final config does not have.
fn dropped_options(fragment: &str, config: &KernelConfig) -> Vec<String> {
    fragment
        .lines()
        .filter_map(|line| line.strip_prefix("CONFIG_")?.split_once('='))
        .filter(|(name, value)| config.value(name) != Some(*value))
        .map(|(name, value)| format!("CONFIG_{name}={value}"))
        .collect()
}

fn make(tree: &Path) -> Command {
    let mut command = Command::new("make");
    command.arg("-s").current_dir(tree).envs(KBUILD_ENV);
    command
}

fn step(name: &'static str, command: &mut Command) -> Result<String, BuildMinimalKernelError> {
    run_captured(command, BUILD_TOOLS_HINT)
        .map_err(|source| BuildMinimalKernelError::Step { step: name, source })
}

fn create_dir(path: &Path) -> Result<(), BuildMinimalKernelError> {
    std::fs::create_dir_all(path).map_err(|source| BuildMinimalKernelError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn copy(from: &Path, to: &Path) -> Result<(), BuildMinimalKernelError> {
    std::fs::copy(from, to)
        .map(drop)
        .map_err(|source| BuildMinimalKernelError::Io {
            path: from.to_path_buf(),
            source,
        })
}

fn read(path: &Path) -> Result<Vec<u8>, BuildMinimalKernelError> {
    std::fs::read(path).map_err(|source| BuildMinimalKernelError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn write(path: &Path, data: &[u8]) -> Result<(), BuildMinimalKernelError> {
    std::fs::write(path, data).map_err(|source| BuildMinimalKernelError::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> PinnedPackage {
        PinnedPackage {
            name: SOURCE_PACKAGE.into(),
            version: "6.1.192-2".into(),
            deb_sha256: "ae".into(),
        }
    }

    #[test]
    fn cache_key_changes_with_every_input() {
        let gcc = "gcc (Debian 12.2.0-14+deb12u1) 12.2.0";
        let base = cache_key(&source(), FRAGMENT, gcc);
        assert_eq!(base, cache_key(&source(), FRAGMENT, gcc));
        let changed_fragment = format!("{FRAGMENT}CONFIG_EXTRA=y\n");
        assert_ne!(base, cache_key(&source(), &changed_fragment, gcc));
        assert_ne!(base, cache_key(&source(), FRAGMENT, "gcc 13"));
        let mut newer = source();
        newer.version = "6.1.193-1".into();
        assert_ne!(base, cache_key(&newer, FRAGMENT, gcc));
    }

    #[test]
    fn fragment_has_what_the_guest_needs() {
        for option in [
            "CONFIG_PVH=y",
            "CONFIG_64BIT=y",
            "CONFIG_VIRTIO_CONSOLE=y",
            "CONFIG_9P_FS=y",
            "CONFIG_HW_RANDOM_VIRTIO=y",
            "CONFIG_OVERLAY_FS=y",
            "CONFIG_DEVTMPFS=y",
            "CONFIG_TRANSPARENT_HUGEPAGE=y",
            "CONFIG_BASE_FULL=y",
            "CONFIG_DM_VERITY=y",
            "CONFIG_CRYPTO_SHA256=y",
            "CONFIG_BLK_DEV_LOOP=y",
            "CONFIG_EROFS_FS=y",
            "CONFIG_TMPFS_XATTR=y",
        ] {
            assert!(
                FRAGMENT.lines().any(|line| line == option),
                "{option} missing from the fragment"
            );
        }
    }

    #[test]
    fn dropped_options_are_reported() {
        let config = KernelConfig::parse("CONFIG_A=y\nCONFIG_B=m\n");
        let dropped = dropped_options(
            "CONFIG_A=y\nCONFIG_B=y\n# CONFIG_C is not set\nCONFIG_D=y\n",
            &config,
        );
        assert_eq!(dropped, ["CONFIG_B=y", "CONFIG_D=y"]);
    }
}
