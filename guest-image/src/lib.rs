//! Builds the guest kernel and a reproducible initramfs with veil-agent as init.
//!
//! # What a build does
//!
//! [`build`] with [`KernelChoice::Debian`]:
//! 1. checks that the agent is a static ELF (it runs as `/init` with no libraries);
//! 2. resolves the candidate of Debian's `linux-image-amd64` to the exact image package it
//!    depends on (name, version, and the SHA-256 the archive index lists) — the pin;
//! 3. fetches that `.deb` with `apt-get download` into `<cache>/debs/` (verified against the
//!    pin; a cached file with the right hash is reused, so a second build downloads nothing),
//!    unpacks it with `dpkg-deb -x` into a scratch directory (never installs it), and runs
//!    `depmod -b` on the unpacked tree;
//! 4. picks the modules of [`modules::GUEST_MODULES`] that the kernel does not build in, adds
//!    their dependencies from `modules.dep`, and orders them dependencies first;
//! 5. writes `vmlinuz` (the bzImage), `vmlinux` (the uncompressed ELF extracted from it, for
//!    PVH direct boot, see [`bzimage`]), `initramfs.img` and `manifest.json` into the output
//!    directory.
//!
//! # Reproducibility
//!
//! The initramfs is an uncompressed newc cpio written by [`cpio::Archive`] (a small writer in
//! this crate, so that no host metadata leaks in): entries sorted by path, inode numbers
//! assigned in that order from 1, mtime 0, uid/gid 0, fixed modes (0755 for `/init` and
//! directories, 0644 for other files). The same agent and kernel package give a bit-identical
//! initramfs.
//!
//! It is not compressed. Measured with the smoke test's image (7.3 MB: 20 modules + a static
//! /init) on the Debian kernel under TCG, counting guest instructions with QEMU
//! `-icount shift=0,sleep=off` (load-independent; wall times on the shared 2-core machine
//! were too noisy to rank them): unpacking took about 17 M instructions uncompressed,
//! 50 M with lz4 (legacy format), 115 M with zstd -19 and 125 M with gzip -9; kernel start to
//! /init's first mount 1.70 G vs 1.72 / 1.78 / 1.80 G. Copying the larger file into guest
//! memory is done by QEMU on the host and costs next to nothing.
//!
//! # Kernel modules
//!
//! Debian's 6.1 kernel ships uncompressed `.ko` files (`CONFIG_MODULE_COMPRESS_NONE=y`), so
//! they are copied as they are and the agent loads each with `finit_module(fd, "", 0)`, in the
//! order of `/etc/veil/modules.load`. A kernel with compressed modules is refused at build
//! time rather than shipped with a loader that cannot read them.
//!
//! # The minimal kernel
//!
//! [`KernelChoice::Minimal`] builds veil's all-built-in kernel from Debian's
//! `linux-source-6.1` with `kernel/minimal.fragment.config` (see [`minimal_kernel`]); it is
//! cached by the hash of its inputs. Its image has no modules and an empty `modules.load`.
//!
//! # Booting the outputs
//!
//! - `vmlinux` + `initramfs.img` with QEMU `-kernel vmlinux` (PVH direct boot): fastest.
//! - `vmlinuz` (bzImage) + `initramfs.img`: the firmware path, and what an SEV-SNP launch
//!   measures with OVMF.
//!
//! The boot smoke test (`tests/boot_smoke.rs`) has the exact QEMU arguments that work.

pub mod apt;
pub mod bzimage;
pub mod command;
pub mod cpio;
pub mod debian_kernel;
pub mod digest;
pub mod elf;
pub mod initramfs;
pub mod kconfig;
pub mod manifest;
pub mod measure;
pub mod minimal_kernel;
pub mod modules;

use apt::{FetchPackageError, ResolvePackageError};
use debian_kernel::{UnpackKernelError, UnpackedKernel};
use digest::{sha256_file, HashFileError};
use initramfs::{AssembleInitramfsError, ModuleSource, WriteInitramfsError};
use manifest::{
    AgentManifest, BuildManifest, ImageManifest, KernelManifest, KernelOrigin, ModuleManifest,
    ModulesManifest, OutputFile, Outputs, MANIFEST_SCHEMA,
};
use modules::{ModuleIndex, ParseModuleIndexError, PlanModulesError};
use std::path::{Path, PathBuf};

/// The Debian meta package whose candidate selects the guest kernel.
pub const DEBIAN_KERNEL_META_PACKAGE: &str = "linux-image-amd64";
/// Output file name of the kernel image.
pub const VMLINUZ_FILE: &str = "vmlinuz";
/// Output file name of the uncompressed kernel ELF (PVH direct boot).
pub const VMLINUX_FILE: &str = "vmlinux";
/// Output file name of the initramfs.
pub const INITRAMFS_FILE: &str = "initramfs.img";
/// Output file name of the build manifest.
pub const MANIFEST_FILE: &str = "manifest.json";

/// Which guest kernel to build the image for (`"debian"` or `"minimal"` in configuration).
///
/// The minimal kernel is the default: it boots in about a third of the stock kernel's time
/// and needs no modules. Debian's kernel stays as the fallback for a guest that needs a
/// driver the minimal one leaves out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KernelChoice {
    /// Debian's prebuilt linux-image package with its modules.
    Debian,
    /// veil's all-built-in kernel from `linux-source-6.1` (see [`minimal_kernel`]); no modules.
    #[default]
    Minimal,
}

impl KernelChoice {
    /// The QEMU machine (veil's `hypervisor.machine`) an image with this kernel boots on:
    /// microvm for the minimal kernel, which has virtio-mmio built in; q35 for Debian's, whose
    /// PCI drivers are what its modules list is planned and tested with.
    pub fn machine(self) -> &'static str {
        match self {
            KernelChoice::Debian => "q35",
            KernelChoice::Minimal => "microvm,acpi=on",
        }
    }

    /// Which kernel an image was built with, from its manifest.
    pub fn of(manifest: &BuildManifest) -> KernelChoice {
        match manifest.image.kernel.origin {
            KernelOrigin::Debian { .. } => KernelChoice::Debian,
            KernelOrigin::Minimal { .. } => KernelChoice::Minimal,
        }
    }
}

/// What to build and where.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The static veil-agent binary to install as `/init`.
    pub agent: PathBuf,
    /// Directory that receives `vmlinuz`, `initramfs.img` and `manifest.json`.
    pub out_dir: PathBuf,
    /// Directory for downloaded packages and scratch trees (see [`default_cache_dir`]).
    pub cache_dir: PathBuf,
    /// Which kernel.
    pub kernel: KernelChoice,
}

/// The result of a build.
#[derive(Debug, Clone)]
pub struct BuildOutput {
    /// Path of the kernel image (bzImage).
    pub vmlinuz: PathBuf,
    /// Path of the uncompressed kernel ELF for PVH direct boot.
    pub vmlinux: PathBuf,
    /// Path of the initramfs.
    pub initramfs: PathBuf,
    /// Path of `manifest.json`.
    pub manifest_path: PathBuf,
    /// The manifest that was written.
    pub manifest: BuildManifest,
}

/// A guest image build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildImageError {
    /// The agent binary cannot be `/init`.
    #[error(transparent)]
    Agent(#[from] elf::CheckStaticBinaryError),
    /// An output or cache directory could not be created or written.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Hashing an input or output failed.
    #[error(transparent)]
    Hash(#[from] HashFileError),
    /// The kernel package could not be resolved.
    #[error(transparent)]
    Resolve(#[from] ResolvePackageError),
    /// The kernel package could not be fetched.
    #[error(transparent)]
    Fetch(#[from] FetchPackageError),
    /// The kernel package could not be unpacked.
    #[error(transparent)]
    Unpack(#[from] UnpackKernelError),
    /// The PVH-bootable vmlinux could not be extracted.
    #[error(transparent)]
    ExtractVmlinux(#[from] bzimage::ExtractVmlinuxError),
    /// The minimal kernel could not be built.
    #[error(transparent)]
    MinimalKernel(#[from] minimal_kernel::BuildMinimalKernelError),
    /// The module index could not be read.
    #[error(transparent)]
    ModuleIndex(#[from] ParseModuleIndexError),
    /// The wanted modules could not be planned.
    #[error(transparent)]
    PlanModules(#[from] PlanModulesError),
    /// The initramfs could not be assembled.
    #[error(transparent)]
    Assemble(#[from] AssembleInitramfsError),
    /// The initramfs could not be written.
    #[error(transparent)]
    WriteInitramfs(#[from] WriteInitramfsError),
    /// The manifest could not be serialized.
    #[error("cannot serialize manifest.json: {0}")]
    Manifest(#[from] serde_json::Error),
}

/// Environment variable naming the cache directory, so that `make image` and the tests share
/// one kernel build.
pub const CACHE_DIR_ENV: &str = "VEIL_GUEST_IMAGE_CACHE";

/// `$VEIL_GUEST_IMAGE_CACHE`, else `$XDG_CACHE_HOME/veil/guest-image`, else
/// `$HOME/.cache/veil/guest-image`, else `/var/cache/veil/guest-image`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(CACHE_DIR_ENV).filter(|value| !value.is_empty()) {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|value| !value.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|value| !value.is_empty())
                .map(|home| PathBuf::from(home).join(".cache"))
        })
        .unwrap_or_else(|| PathBuf::from("/var/cache"));
    base.join("veil").join("guest-image")
}

/// Builds the guest image described by `options`.
pub fn build(options: &BuildOptions) -> Result<BuildOutput, BuildImageError> {
    let agent = describe_agent(&options.agent)?;
    create_dir(&options.out_dir)?;
    create_dir(&options.cache_dir)?;
    match options.kernel {
        KernelChoice::Debian => build_with_debian_kernel(options, agent),
        KernelChoice::Minimal => build_with_minimal_kernel(options, agent),
    }
}

fn build_with_minimal_kernel(
    options: &BuildOptions,
    agent: AgentManifest,
) -> Result<BuildOutput, BuildImageError> {
    let kernel = minimal_kernel::build_or_reuse(&options.cache_dir)?;
    let vmlinuz = options.out_dir.join(VMLINUZ_FILE);
    let vmlinux = options.out_dir.join(VMLINUX_FILE);
    copy_atomically(&kernel.bzimage, &vmlinuz)?;
    copy_atomically(&kernel.vmlinux, &vmlinux)?;
    let kernel_manifest = KernelManifest {
        origin: KernelOrigin::Minimal {
            source_package: kernel.source_package,
            fragment_sha256: kernel.fragment_sha256,
            compiler: kernel.compiler,
            cache_key: kernel.cache_key,
        },
        release: kernel.release,
        vmlinuz_sha256: sha256_file(&vmlinuz)?,
        vmlinux_sha256: sha256_file(&vmlinux)?,
    };
    let image = ImageManifest {
        schema: MANIFEST_SCHEMA,
        kernel: kernel_manifest,
        agent,
        // Everything is built in: the agent finds an empty modules.load.
        modules: ModulesManifest {
            load_order: Vec::new(),
            builtin: Vec::new(),
        },
        initramfs_format: "newc".to_owned(),
    };
    finish(options, &[], image)
}

fn build_with_debian_kernel(
    options: &BuildOptions,
    agent: AgentManifest,
) -> Result<BuildOutput, BuildImageError> {
    let pin = apt::resolve_kernel(DEBIAN_KERNEL_META_PACKAGE)?;
    let deb = apt::fetch(&pin.package, &options.cache_dir)?;
    let kernel = debian_kernel::unpack(&deb, &options.cache_dir)?;
    let modules = plan_modules(&kernel)?;
    let vmlinuz = options.out_dir.join(VMLINUZ_FILE);
    copy_atomically(&kernel.vmlinuz(), &vmlinuz)?;
    let vmlinux = options.out_dir.join(VMLINUX_FILE);
    let partial = initramfs::partial_path(&vmlinux);
    bzimage::extract_vmlinux(&vmlinuz, &partial)?;
    rename(&partial, &vmlinux)?;
    let kernel_manifest = KernelManifest {
        origin: KernelOrigin::Debian { pin },
        release: kernel.release.clone(),
        vmlinuz_sha256: sha256_file(&vmlinuz)?,
        vmlinux_sha256: sha256_file(&vmlinux)?,
    };
    let image = ImageManifest {
        schema: MANIFEST_SCHEMA,
        kernel: kernel_manifest,
        agent,
        modules: ModulesManifest {
            load_order: modules
                .sources
                .iter()
                .map(|source| source.manifest.clone())
                .collect(),
            builtin: modules.builtin,
        },
        initramfs_format: "newc".to_owned(),
    };
    finish(options, &modules.sources, image)
}

/// Writes the initramfs and manifest.json for an image whose kernel is already in place.
fn finish(
    options: &BuildOptions,
    modules: &[ModuleSource],
    image: ImageManifest,
) -> Result<BuildOutput, BuildImageError> {
    let archive = initramfs::assemble(&options.agent, modules, &image)?;
    let initramfs = options.out_dir.join(INITRAMFS_FILE);
    initramfs::write_atomically(&archive, &initramfs)?;
    let vmlinuz = options.out_dir.join(VMLINUZ_FILE);
    let vmlinux = options.out_dir.join(VMLINUX_FILE);
    let manifest = BuildManifest {
        image,
        outputs: Outputs {
            vmlinuz: output_file(&vmlinuz)?,
            vmlinux: output_file(&vmlinux)?,
            initramfs: output_file(&initramfs)?,
        },
        builder: format!("{} {}", env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION")),
    };
    let manifest_path = options.out_dir.join(MANIFEST_FILE);
    let mut json = serde_json::to_vec_pretty(&manifest)?;
    json.push(b'\n');
    write_file_atomically(&manifest_path, &json)?;
    tracing::info!(
        vmlinuz_sha256 = %manifest.outputs.vmlinuz.sha256,
        vmlinux_sha256 = %manifest.outputs.vmlinux.sha256,
        initramfs_sha256 = %manifest.outputs.initramfs.sha256,
        initramfs_bytes = manifest.outputs.initramfs.size,
        out = %options.out_dir.display(),
        "guest image built"
    );
    Ok(BuildOutput {
        vmlinuz,
        vmlinux,
        initramfs,
        manifest_path,
        manifest,
    })
}

struct PlannedModules {
    sources: Vec<ModuleSource>,
    builtin: Vec<String>,
}

fn plan_modules(kernel: &UnpackedKernel) -> Result<PlannedModules, BuildImageError> {
    let index = ModuleIndex::parse(
        &kernel.read_modules_file("modules.dep")?,
        &kernel.read_modules_file("modules.builtin")?,
    )?;
    let plan = index.plan(modules::GUEST_MODULES)?;
    let modules_dir = kernel.modules_dir();
    let mut sources = Vec::with_capacity(plan.load_order.len());
    for module in plan.load_order {
        let host_path = modules_dir.join(&module.path);
        let manifest = ModuleManifest {
            sha256: sha256_file(&host_path)?,
            path: format!("/lib/modules/{}/{}", kernel.release, module.path),
            name: module.name,
        };
        sources.push(ModuleSource {
            manifest,
            host_path,
        });
    }
    let names: Vec<&str> = sources
        .iter()
        .map(|source| source.manifest.name.as_str())
        .collect();
    tracing::info!(load_order = ?names, builtin = ?plan.builtin, "planned guest modules");
    Ok(PlannedModules {
        sources,
        builtin: plan.builtin,
    })
}

fn describe_agent(path: &Path) -> Result<AgentManifest, BuildImageError> {
    elf::check_static_elf(path)?;
    let size = std::fs::metadata(path)
        .map_err(|source| BuildImageError::Io {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    Ok(AgentManifest {
        sha256: sha256_file(path)?,
        size,
    })
}

fn output_file(path: &Path) -> Result<OutputFile, BuildImageError> {
    let size = std::fs::metadata(path)
        .map_err(|source| BuildImageError::Io {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    Ok(OutputFile {
        file: path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default(),
        sha256: sha256_file(path)?,
        size,
    })
}

fn create_dir(path: &Path) -> Result<(), BuildImageError> {
    std::fs::create_dir_all(path).map_err(|source| BuildImageError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn copy_atomically(from: &Path, to: &Path) -> Result<(), BuildImageError> {
    let partial = initramfs::partial_path(to);
    let io_err = |source| BuildImageError::Io {
        path: to.to_path_buf(),
        source,
    };
    std::fs::copy(from, &partial).map_err(io_err)?;
    std::fs::rename(&partial, to).map_err(io_err)
}

fn rename(from: &Path, to: &Path) -> Result<(), BuildImageError> {
    std::fs::rename(from, to).map_err(|source| BuildImageError::Io {
        path: to.to_path_buf(),
        source,
    })
}

fn write_file_atomically(path: &Path, data: &[u8]) -> Result<(), BuildImageError> {
    let partial = initramfs::partial_path(path);
    let io_err = |source| BuildImageError::Io {
        path: path.to_path_buf(),
        source,
    };
    std::fs::write(&partial, data).map_err(io_err)?;
    std::fs::rename(&partial, path).map_err(io_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dynamic_agent_is_refused_before_any_download() {
        let dir = tempfile::tempdir().unwrap();
        let options = BuildOptions {
            agent: PathBuf::from("/bin/sh"),
            out_dir: dir.path().join("out"),
            cache_dir: dir.path().join("cache"),
            kernel: KernelChoice::Debian,
        };
        let error = build(&options).unwrap_err();
        assert!(matches!(error, BuildImageError::Agent(_)), "{error}");
        assert!(error.to_string().contains("crt-static"), "{error}");
        assert!(!dir.path().join("cache").exists());
    }
}
