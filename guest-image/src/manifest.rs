//! The manifests that pin every input and output of a guest image build.
//!
//! Two documents:
//! - [`ImageManifest`], stored in the initramfs as `/etc/veil/image.json`: the inputs (kernel
//!   package, agent, modules). It must be deterministic, so it holds no time or host data.
//! - [`BuildManifest`], written next to the outputs as `manifest.json`: the image manifest
//!   plus the SHA-256 of `vmlinuz` and `initramfs.img`, which the attestation measurement and
//!   the key broker's reference values are computed from.

use crate::apt::{KernelPin, PinnedPackage};
use serde::{Deserialize, Serialize};

/// Version of the manifest layout; bump on incompatible changes.
pub const MANIFEST_SCHEMA: u32 = 1;

/// Where the guest kernel came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum KernelOrigin {
    /// Debian's prebuilt linux-image package.
    Debian {
        /// The meta package and the image package it selected.
        #[serde(flatten)]
        pin: KernelPin,
    },
    /// Built from Debian's linux-source package with veil's config fragment.
    Minimal {
        /// The linux-source package.
        source_package: PinnedPackage,
        /// SHA-256 of the config fragment (with veil's additions).
        fragment_sha256: String,
        /// `gcc --version` first line.
        compiler: String,
        /// SHA-256 over the three inputs above: the kernel cache key.
        cache_key: String,
    },
}

/// The kernel of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelManifest {
    /// Where it came from.
    #[serde(flatten)]
    pub origin: KernelOrigin,
    /// Kernel release (`uname -r` in the guest).
    pub release: String,
    /// SHA-256 of the `vmlinuz` (bzImage).
    pub vmlinuz_sha256: String,
    /// SHA-256 of the uncompressed `vmlinux` (PVH entry) extracted from or built with it.
    pub vmlinux_sha256: String,
}

/// One module in the initramfs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleManifest {
    /// Module name as the kernel reports it.
    pub name: String,
    /// Absolute path inside the guest.
    pub path: String,
    /// SHA-256 of the `.ko` file.
    pub sha256: String,
}

/// The modules of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModulesManifest {
    /// Modules in load order (each after its dependencies), as in `/etc/veil/modules.load`.
    pub load_order: Vec<ModuleManifest>,
    /// Wanted features the kernel builds in.
    pub builtin: Vec<String>,
}

/// The agent binary that runs as `/init`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentManifest {
    /// SHA-256 of the binary.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}

/// Everything that went into the initramfs; stored in it as `/etc/veil/image.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageManifest {
    /// [`MANIFEST_SCHEMA`].
    pub schema: u32,
    /// The guest kernel.
    pub kernel: KernelManifest,
    /// The agent (`/init`).
    pub agent: AgentManifest,
    /// Kernel modules loaded by the agent.
    pub modules: ModulesManifest,
    /// Initramfs format: always `newc` (uncompressed cpio).
    pub initramfs_format: String,
}

/// One output file and its digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputFile {
    /// File name inside the output directory.
    pub file: String,
    /// SHA-256 of the file.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}

/// The outputs of a build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outputs {
    /// The kernel image (bzImage), for firmware boot (the measured SEV-SNP path).
    pub vmlinuz: OutputFile,
    /// The uncompressed kernel ELF with a PVH entry, for QEMU direct boot (`-kernel vmlinux`).
    pub vmlinux: OutputFile,
    /// The initramfs.
    pub initramfs: OutputFile,
}

/// `manifest.json` in the output directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildManifest {
    /// The inputs, identical to the initramfs's `/etc/veil/image.json`.
    pub image: ImageManifest,
    /// The outputs and their digests.
    pub outputs: Outputs,
    /// Name and version of the builder.
    pub builder: String,
}

/// `manifest.json` of a built image could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadManifestError {
    /// The file could not be read.
    #[error("cannot read the image manifest {path}: {source}; rebuild the image (`make image`)")]
    Io {
        /// The manifest path.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a manifest of this schema.
    #[error("{path} is not a veil image manifest: {source}; rebuild the image (`make image`)")]
    Parse {
        /// The manifest path.
        path: std::path::PathBuf,
        /// Why.
        source: serde_json::Error,
    },
}

/// Reads `manifest.json` from the image directory `dir`.
pub fn read_manifest(dir: &std::path::Path) -> Result<BuildManifest, ReadManifestError> {
    let path = dir.join(crate::MANIFEST_FILE);
    let text = std::fs::read(&path).map_err(|source| ReadManifestError::Io {
        path: path.clone(),
        source,
    })?;
    serde_json::from_slice(&text).map_err(|source| ReadManifestError::Parse { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debian_origin_serializes_flat_with_a_source_tag() {
        let kernel = KernelManifest {
            origin: KernelOrigin::Debian {
                pin: KernelPin {
                    meta_package: "linux-image-amd64".into(),
                    meta_version: "6.1.192-2".into(),
                    package: PinnedPackage {
                        name: "linux-image-6.1.0-56-amd64".into(),
                        version: "6.1.192-2".into(),
                        deb_sha256: "ab".into(),
                    },
                },
            },
            release: "6.1.0-56-amd64".into(),
            vmlinuz_sha256: "cd".into(),
            vmlinux_sha256: "ef".into(),
        };
        let json = serde_json::to_value(&kernel).unwrap();
        assert_eq!(json["source"], "debian");
        assert_eq!(json["meta_package"], "linux-image-amd64");
        assert_eq!(json["package"]["deb_sha256"], "ab");
        let back: KernelManifest = serde_json::from_value(json).unwrap();
        assert_eq!(back, kernel);
    }
}
