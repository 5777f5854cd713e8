//! The expected SEV-SNP launch digest of a veil guest, computed in advance from public inputs
//! so that a model owner's broker policy can pin exactly veil's firmware, kernel, initramfs
//! and command line (`claims.measurement`, 48 bytes hex).
//!
//! # Inputs
//!
//! - the OVMF firmware image (QEMU `-bios`), an AmdSev build when the kernel is measured;
//! - with QEMU `kernel-hashes=on` ([`DirectBoot`]): the kernel file (`-kernel`), the initrd
//!   (`-initrd`) and the command line (`-append`), exactly as QEMU is given them;
//! - the number of vCPUs (`-smp`), the vCPU model (`-cpu`, see [`VcpuType`]), the SEV
//!   features the guest enables (VMSA `SEV_FEATURES`, default `0x1` = SNP active), and the
//!   VMM (QEMU).
//!
//! # What the digest covers
//!
//! The PSP starts from 48 zero bytes and, for every page the VMM adds with
//! SNP_LAUNCH_UPDATE, replaces the digest by SHA-384 of a 112-byte PAGE_INFO structure
//! (AMD SEV-SNP ABI, "Launch Digest Calculation"):
//!
//! | offset | bytes | field |
//! | --- | --- | --- |
//! | 0 | 48 | the digest so far |
//! | 48 | 48 | SHA-384 of the page's contents (zero for zero, secrets and CPUID pages) |
//! | 96 | 2 | length of PAGE_INFO (0x70) |
//! | 98 | 1 | page type (normal 1, VMSA 2, zero 3, unmeasured 4, secrets 5, CPUID 6) |
//! | 99 | 1 | IMI page (0) |
//! | 100 | 3 | VMPL3, VMPL2, VMPL1 permissions (0) |
//! | 103 | 1 | reserved, zero |
//! | 104 | 8 | guest physical address |
//!
//! in this order: (1) every 4 KiB page of the firmware image, which ends at 4 GiB;
//! (2) the firmware's SEV metadata sections in the order it declares them (see
//! [`firmware::FirmwareLayout`]): secure-memory ranges as zero pages, the secrets page, the
//! CPUID page, and the kernel-hashes page, which holds the SEV hashes table with the SHA-256
//! of kernel, initrd and command line (see [`kernel_hashes`]) or is a zero page without
//! direct boot; (3) one VMSA page per vCPU at GPA `0xFFFFFFFFF000`, the BSP's starting at the
//! reset vector and the APs' at the firmware's SEV-ES reset address, each carrying the vCPU
//! model's CPUID signature and the SEV features.
//!
//! The page walk, PAGE_INFO, SHA-384, VMSA and table encoding are the `sev` crate's
//! (`sev::measurement`); this module chooses and checks the inputs, refuses the combinations
//! that would give a digest QEMU cannot reproduce, and reports each input's SHA-256.
//!
//! # Debian's OVMF
//!
//! Debian's `ovmf` package (2022.11) ships OvmfX64 builds only. `OVMF_CODE.fd` (2 MiB) has
//! SEV metadata (secure memory, secrets, CPUID) but no kernel-hashes section, so it can be
//! measured only without direct boot (the guest then loads a kernel the measurement does not
//! cover); [`measure`] refuses a kernel with it, as `sev-snp-measure` does. `OVMF_CODE_4M.fd`
//! has no SEV metadata at all and cannot boot an SNP guest; [`measure`] refuses it, while
//! `sev-snp-measure` silently measures it as if it declared no sections.

pub mod firmware;
pub mod kernel_hashes;
#[cfg(test)]
mod synthetic;
#[cfg(test)]
mod tests;
pub mod vcpu;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

use serde::Serialize;
use sev::measurement::snp::{snp_calc_launch_digest, SnpMeasurementArgs};
use sev::measurement::vmsa::{GuestFeatures, VMMType};
use sev::parser::ByteParser;

use crate::digest::{sha256_file, HashFileError};
pub use firmware::{FirmwareLayout, ReadFirmwareError};
pub use kernel_hashes::{DirectBoot, DirectBootHashes, HashDirectBootError};
pub use vcpu::{ParseVcpuTypeError, VcpuType};

/// The guest features sev-snp-measure and the `sev` crate assume: SNP active, nothing else.
pub const DEFAULT_GUEST_FEATURES: u64 = 0x1;
/// More vCPUs than QEMU's SNP guests can have is certainly a typo.
pub const MAX_VCPUS: u32 = 512;

/// Everything the launch digest depends on.
#[derive(Debug, Clone, PartialEq)]
pub struct MeasureInputs {
    /// The OVMF image.
    pub firmware: PathBuf,
    /// Kernel, initrd and command line when QEMU boots them with `kernel-hashes=on`.
    pub direct_boot: Option<DirectBoot>,
    /// Number of vCPUs.
    pub vcpus: u32,
    /// The vCPU model.
    pub vcpu_type: VcpuType,
    /// The VMSA SEV_FEATURES the guest runs with.
    pub guest_features: u64,
}

/// An expected launch measurement could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum MeasureError {
    /// The firmware cannot be used.
    #[error(transparent)]
    Firmware(#[from] ReadFirmwareError),
    /// A kernel was given but the firmware cannot measure it.
    #[error("firmware {firmware} has no SEV kernel-hashes table (an OvmfX64 build such as Debian's ovmf package): QEMU cannot measure the kernel, initrd and command line with it; use an AmdSev OVMF (OvmfPkg/AmdSev/AmdSevX64.dsc) or measure the firmware alone without --kernel")]
    NoKernelHashesTable {
        /// The firmware path.
        firmware: PathBuf,
    },
    /// The kernel, initrd or command line cannot be hashed as QEMU would.
    #[error(transparent)]
    DirectBoot(#[from] HashDirectBootError),
    /// An input file cannot be hashed for the report.
    #[error(transparent)]
    Hash(#[from] HashFileError),
    /// The vCPU count is out of range.
    #[error("{vcpus} vCPUs: an SNP guest has between 1 and {MAX_VCPUS}")]
    VcpuCount {
        /// The count given.
        vcpus: u32,
    },
    /// The `sev` crate refused the inputs.
    #[error("computing the SNP launch digest failed: {0}")]
    Compute(String),
}

/// The expected launch digest and the inputs it was computed from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Measurement {
    /// The launch digest, 48 bytes as lowercase hex (`claims.measurement`).
    pub launch_digest: String,
    /// The firmware path and SHA-256.
    pub firmware: InputFile,
    /// The firmware's SEV layout.
    pub firmware_layout: FirmwareLayout,
    /// The kernel path and SHA-256, with direct boot.
    pub kernel: Option<InputFile>,
    /// The initrd path and SHA-256, with direct boot and an initrd.
    pub initrd: Option<InputFile>,
    /// The command line, with direct boot.
    pub append: Option<String>,
    /// The SHA-256 values written into the SEV hashes table, with direct boot.
    pub kernel_hashes: Option<DirectBootHashes>,
    /// Number of vCPUs.
    pub vcpus: u32,
    /// The vCPU model, as QEMU names it.
    pub vcpu_type: String,
    /// The VMSA SEV_FEATURES, hex with `0x`.
    pub guest_features: String,
    /// The VMM whose VMSA conventions were used.
    pub vmm: &'static str,
}

/// A measured input file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InputFile {
    /// The path as given.
    pub path: PathBuf,
    /// SHA-256 of its bytes, hex.
    pub sha256: String,
}

impl Measurement {
    /// The broker policy condition pinning this guest: `claims.tee == 'snp' &&
    /// claims.measurement == '<hex>'`, ready for `veil kbs policy set`.
    pub fn policy_condition(&self) -> String {
        format!(
            "claims.tee == 'snp' && claims.measurement == '{}'",
            self.launch_digest
        )
    }
}

/// Computes the expected launch digest for `inputs` and reports every input's hash.
pub fn measure(inputs: &MeasureInputs) -> Result<Measurement, MeasureError> {
    let layout = check_inputs(inputs)?;
    let launch_digest = launch_digest(inputs)?;
    let direct = inputs.direct_boot.as_ref();
    let kernel_hashes = direct.map(DirectBoot::hashes).transpose()?;
    let input_file = |path: &PathBuf| -> Result<InputFile, MeasureError> {
        Ok(InputFile {
            path: path.clone(),
            sha256: sha256_file(path)?,
        })
    };
    let measurement = Measurement {
        launch_digest,
        firmware: input_file(&inputs.firmware)?,
        firmware_layout: layout,
        kernel: direct.map(|boot| input_file(&boot.kernel)).transpose()?,
        initrd: direct
            .and_then(|boot| boot.initrd.as_ref())
            .map(input_file)
            .transpose()?,
        append: direct.and_then(|boot| boot.append.clone()),
        kernel_hashes,
        vcpus: inputs.vcpus,
        vcpu_type: inputs.vcpu_type.to_string(),
        guest_features: format!("{:#x}", inputs.guest_features),
        vmm: "qemu",
    };
    tracing::info!(
        launch_digest = %measurement.launch_digest,
        firmware_sha256 = %measurement.firmware.sha256,
        vcpus = inputs.vcpus,
        vcpu_type = %measurement.vcpu_type,
        direct_boot = direct.is_some(),
        "expected SNP launch digest"
    );
    Ok(measurement)
}

/// Checks what the `sev` crate would not, or would answer with a panic or a vague error.
fn check_inputs(inputs: &MeasureInputs) -> Result<FirmwareLayout, MeasureError> {
    if inputs.vcpus == 0 || inputs.vcpus > MAX_VCPUS {
        return Err(MeasureError::VcpuCount {
            vcpus: inputs.vcpus,
        });
    }
    let layout = firmware::read_layout(&inputs.firmware)?;
    if let Some(boot) = &inputs.direct_boot {
        if !layout.has_kernel_hashes_table() {
            return Err(MeasureError::NoKernelHashesTable {
                firmware: inputs.firmware.clone(),
            });
        }
        boot.validate()?;
        for file in boot.files() {
            // Hashing now gives a "cannot read <path>" error before the crate's bare io error.
            sha256_file(file)?;
        }
    }
    Ok(layout)
}

/// The 48-byte launch digest as lowercase hex, by the `sev` crate.
fn launch_digest(inputs: &MeasureInputs) -> Result<String, MeasureError> {
    let guest_features = GuestFeatures::from_bytes(&inputs.guest_features.to_le_bytes())
        .map_err(|error| MeasureError::Compute(format!("guest features: {error}")))?;
    let direct = inputs.direct_boot.as_ref();
    let args = SnpMeasurementArgs {
        vcpus: inputs.vcpus,
        vcpu_type: inputs.vcpu_type.cpu_type(),
        ovmf_file: inputs.firmware.clone(),
        guest_features,
        kernel_file: direct.map(|boot| boot.kernel.clone()),
        initrd_file: direct.and_then(|boot| boot.initrd.clone()),
        append: direct.and_then(|boot| boot.append.as_deref()),
        ovmf_hash_str: None,
        vmm_type: Some(VMMType::QEMU),
    };
    // The firmware was parsed once already; this guards against the crate asserting on
    // anything else it meets.
    let digest = catch_unwind(AssertUnwindSafe(|| snp_calc_launch_digest(args)))
        .map_err(|_| MeasureError::Compute("the sev crate panicked on these inputs".to_owned()))?
        .map_err(|error| MeasureError::Compute(error.to_string()))?;
    Ok(digest.get_hex_ld())
}
