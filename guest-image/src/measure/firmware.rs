//! Reading an OVMF image's SEV layout: the metadata sections the launch measures besides the
//! image itself, the SEV hashes table (present only in AmdSev builds), and the SEV-ES reset
//! address every VMSA starts at. Parsing is the `sev` crate's; this module guards it and turns
//! its failures into errors that say which firmware to use instead.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use serde::Serialize;
use sev::measurement::ovmf::{SectionType, OVMF};

/// Smaller files cannot hold a reset vector, footer table and metadata; the `sev` crate's
/// parser indexes without bounds checks, so such files are refused before it sees them.
pub const MIN_FIRMWARE_BYTES: u64 = 64 * 1024;

/// A firmware image cannot be used for an SNP launch measurement.
#[derive(Debug, thiserror::Error)]
pub enum ReadFirmwareError {
    /// The file cannot be read.
    #[error("cannot read firmware {path}: {source}")]
    Io {
        /// The firmware path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is too small or not page-aligned.
    #[error("firmware {path} is {size} bytes: an OVMF image is a whole number of 4 KiB pages and at least {MIN_FIRMWARE_BYTES} bytes (pass OVMF_CODE*.fd or an AmdSev OVMF.fd, not OVMF_VARS)")]
    BadSize {
        /// The firmware path.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// The file has no OVMF footer table with SEV metadata.
    #[error("firmware {path} is not an OVMF image with SEV metadata ({reason}), so it cannot boot an SNP guest: use an OVMF built with SEV support (OvmfPkg/AmdSev/AmdSevX64.dsc for measured direct boot; of Debian's ovmf package, /usr/share/OVMF/OVMF_CODE.fd has SEV metadata and OVMF_CODE_4M.fd does not)")]
    NoSevMetadata {
        /// The firmware path.
        path: PathBuf,
        /// What the parser found missing.
        reason: String,
    },
}

/// The kind of one SEV metadata section, as OVMF declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SectionKind {
    /// Pre-validated zero pages (SNP_SEC_MEM).
    SecureMemory,
    /// The secrets page the PSP fills (SNP_SECRETS).
    Secrets,
    /// The CPUID page the PSP checks (CPUID).
    Cpuid,
    /// The SVSM calling area (SVSM_CAA).
    SvsmCallingArea,
    /// The page holding the SEV hashes table (SNP_KERNEL_HASHES).
    KernelHashes,
}

impl From<SectionType> for SectionKind {
    fn from(value: SectionType) -> Self {
        match value {
            SectionType::SnpSecMemory => SectionKind::SecureMemory,
            SectionType::SnpSecrets => SectionKind::Secrets,
            SectionType::Cpuid => SectionKind::Cpuid,
            SectionType::SvsmCaa => SectionKind::SvsmCallingArea,
            SectionType::SnpKernelHashes => SectionKind::KernelHashes,
        }
    }
}

/// One SEV metadata section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Section {
    /// Guest physical address.
    pub gpa: u32,
    /// Size in bytes.
    pub size: u32,
    /// What the launch puts there.
    pub kind: SectionKind,
}

/// What an SNP launch measures about a firmware image, besides its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FirmwareLayout {
    /// Image size in bytes.
    pub size: u64,
    /// Guest physical address of the image's first byte (it ends at 4 GiB).
    pub gpa: u64,
    /// The SEV metadata sections, in the order the launch measures them.
    pub sections: Vec<Section>,
    /// Where the SEV hashes table goes, when the image has one (AmdSev builds only).
    pub sev_hashes_table_gpa: Option<u64>,
    /// The SEV-ES reset address of the APs (and BSP) in every VMSA.
    pub sev_es_reset_eip: u32,
}

impl FirmwareLayout {
    /// True when the image can measure kernel, initrd and command line (`kernel-hashes=on`).
    pub fn has_kernel_hashes_table(&self) -> bool {
        self.sev_hashes_table_gpa.is_some()
            && self
                .sections
                .iter()
                .any(|section| section.kind == SectionKind::KernelHashes)
    }
}

/// Reads the SEV layout of the OVMF image at `path`.
pub fn read_layout(path: &Path) -> Result<FirmwareLayout, ReadFirmwareError> {
    let ovmf = parse(path)?;
    let no_metadata = |reason: String| ReadFirmwareError::NoSevMetadata {
        path: path.to_path_buf(),
        reason,
    };
    let sev_es_reset_eip = ovmf
        .sev_es_reset_eip()
        .map_err(|error| no_metadata(error.to_string()))?;
    let sev_hashes_table_gpa = if ovmf.is_sev_hashes_table_supported() {
        ovmf.sev_hashes_table_gpa().ok()
    } else {
        None
    };
    Ok(FirmwareLayout {
        size: ovmf.data().len() as u64,
        gpa: ovmf.gpa(),
        sections: ovmf
            .metadata_items()
            .iter()
            .map(|item| Section {
                gpa: item.gpa,
                size: item.size,
                kind: item.section_type.into(),
            })
            .collect(),
        sev_hashes_table_gpa,
        sev_es_reset_eip,
    })
}

/// Parses `path` with the `sev` crate after the checks that keep its parser in bounds.
pub(crate) fn parse(path: &Path) -> Result<OVMF, ReadFirmwareError> {
    check_size(path)?;
    let parsed = catch_unwind(AssertUnwindSafe(|| OVMF::new(path.to_path_buf())));
    match parsed {
        Ok(Ok(ovmf)) => Ok(ovmf),
        Ok(Err(error)) => Err(ReadFirmwareError::NoSevMetadata {
            path: path.to_path_buf(),
            reason: error.to_string(),
        }),
        Err(_) => Err(ReadFirmwareError::NoSevMetadata {
            path: path.to_path_buf(),
            reason: "its footer table or metadata points outside the file".to_owned(),
        }),
    }
}

fn check_size(path: &Path) -> Result<(), ReadFirmwareError> {
    let size = std::fs::metadata(path)
        .map_err(|source| ReadFirmwareError::Io {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    if size < MIN_FIRMWARE_BYTES || size % 4096 != 0 {
        return Err(ReadFirmwareError::BadSize {
            path: path.to_path_buf(),
            size,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::synthetic::SyntheticFirmware;

    #[test]
    fn a_synthetic_amdsev_image_shows_its_sections_and_table() {
        let dir = tempfile::tempdir().unwrap();
        let firmware = SyntheticFirmware::amdsev().write(dir.path());
        let layout = read_layout(&firmware).unwrap();
        assert!(layout.has_kernel_hashes_table());
        assert_eq!(layout.gpa + layout.size, 1 << 32);
        assert_eq!(
            layout.sev_hashes_table_gpa,
            Some(SyntheticFirmware::HASHES_TABLE_GPA)
        );
        assert_eq!(layout.sev_es_reset_eip, SyntheticFirmware::RESET_EIP);
        let kinds: Vec<SectionKind> = layout.sections.iter().map(|s| s.kind).collect();
        assert_eq!(
            kinds,
            [
                SectionKind::SecureMemory,
                SectionKind::Secrets,
                SectionKind::Cpuid,
                SectionKind::KernelHashes
            ]
        );
    }

    #[test]
    fn an_ovmfx64_shaped_image_has_no_kernel_hashes_table() {
        let dir = tempfile::tempdir().unwrap();
        let firmware = SyntheticFirmware::ovmf_x64().write(dir.path());
        let layout = read_layout(&firmware).unwrap();
        assert!(!layout.has_kernel_hashes_table());
    }

    #[test]
    fn garbage_is_refused_with_a_hint() {
        let dir = tempfile::tempdir().unwrap();
        let small = dir.path().join("small.fd");
        std::fs::write(&small, [0u8; 100]).unwrap();
        assert!(matches!(
            read_layout(&small),
            Err(ReadFirmwareError::BadSize { .. })
        ));
        let zeros = dir.path().join("zeros.fd");
        std::fs::write(&zeros, vec![0u8; 128 * 1024]).unwrap();
        let error = read_layout(&zeros).unwrap_err();
        assert!(error.to_string().contains("AmdSevX64"), "{error}");
    }

    #[test]
    fn a_metadata_offset_past_the_file_is_an_error_not_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let firmware = SyntheticFirmware::amdsev()
            .with_metadata_offset(u32::MAX / 2)
            .write(dir.path());
        assert!(matches!(
            read_layout(&firmware),
            Err(ReadFirmwareError::NoSevMetadata { .. })
        ));
    }
}
