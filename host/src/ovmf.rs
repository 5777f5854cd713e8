//! OVMF (UEFI firmware for QEMU): is one installed, and is one an AmdSev build, the only kind
//! whose SEV hashes table lets an SNP launch measure the kernel, initramfs and command line
//! (QEMU `kernel-hashes=on`)?

use std::path::{Path, PathBuf};

use sev::measurement::ovmf::{SectionType, OVMF};

use crate::finding::Finding;

/// Where Debian's `ovmf` package and common AmdSev builds put firmware images, relative to
/// the root. The AmdSev names are where Debian (trixie and later) and distributions that
/// package `OvmfPkg/AmdSev/AmdSevX64.dsc` install it.
pub const FIRMWARE_CANDIDATES: [&str; 6] = [
    "usr/share/OVMF/OVMF.amdsev.fd",
    "usr/share/ovmf/OVMF.amdsev.fd",
    "usr/share/OVMF/OVMF_CODE_4M.fd",
    "usr/share/OVMF/OVMF_CODE.fd",
    "usr/share/ovmf/OVMF.fd",
    "usr/share/qemu/OVMF.fd",
];

/// What the SEV metadata of one firmware image allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirmwareKind {
    /// Has the SNP kernel-hashes section and the SEV hashes table: measured direct boot.
    AmdSev,
    /// Has SEV metadata but no kernel-hashes table (e.g. OvmfX64): SNP without kernel hashes.
    SevWithoutKernelHashes,
    /// Not parseable as an OVMF image with SEV metadata.
    NoSevMetadata,
}

impl FirmwareKind {
    /// A few words for the doctor's table.
    pub fn describe(self) -> &'static str {
        match self {
            FirmwareKind::AmdSev => "AmdSev: SNP with kernel hashes",
            FirmwareKind::SevWithoutKernelHashes => "SEV metadata, no kernel hashes",
            FirmwareKind::NoSevMetadata => "no SEV metadata: not for SNP",
        }
    }
}

/// Smaller files cannot hold a reset vector, footer table and metadata; the `sev` crate's
/// parser indexes without bounds checks on such input, so they are refused before it.
const MIN_FIRMWARE_BYTES: u64 = 64 * 1024;

/// Reads `path`'s OVMF footer table and SEV metadata.
pub fn classify(path: &Path) -> FirmwareKind {
    let big_enough = std::fs::metadata(path)
        .map(|meta| meta.len() >= MIN_FIRMWARE_BYTES)
        .unwrap_or(false);
    if !big_enough {
        return FirmwareKind::NoSevMetadata;
    }
    // The parser trusts offsets read from the file; a corrupt image must not abort the doctor.
    let parsed = std::panic::catch_unwind(|| OVMF::new(path.to_path_buf()));
    match parsed {
        Ok(Ok(ovmf))
            if ovmf.has_metadata_section(SectionType::SnpKernelHashes)
                && ovmf.is_sev_hashes_table_supported() =>
        {
            FirmwareKind::AmdSev
        }
        Ok(Ok(_)) => FirmwareKind::SevWithoutKernelHashes,
        Ok(Err(_)) | Err(_) => FirmwareKind::NoSevMetadata,
    }
}

/// The findings `ovmf` (some firmware installed) and `ovmf-amdsev` (one with the SEV hashes
/// table) for the host below `root`.
pub fn check(root: &Path) -> Vec<Finding> {
    let present: Vec<PathBuf> = FIRMWARE_CANDIDATES
        .iter()
        .map(|candidate| root.join(candidate))
        .filter(|path| path.is_file())
        .collect();
    if present.is_empty() {
        return vec![
            Finding::missing(
                "ovmf",
                "no OVMF firmware in /usr/share/OVMF or /usr/share/ovmf: apt-get install ovmf",
            ),
            Finding::missing("ovmf-amdsev", "no OVMF firmware at all"),
        ];
    }
    let classified: Vec<(&PathBuf, FirmwareKind)> =
        present.iter().map(|path| (path, classify(path))).collect();
    let listed = classified
        .iter()
        .map(|(path, kind)| format!("{} ({})", path.display(), kind.describe()))
        .collect::<Vec<_>>()
        .join(", ");
    let amdsev = classified
        .iter()
        .find(|(_, kind)| *kind == FirmwareKind::AmdSev)
        .map(|(path, _)| path);
    let amdsev_finding = match amdsev {
        Some(path) => Finding::ok(
            "ovmf-amdsev",
            format!("{} has the SEV kernel-hashes table", path.display()),
        ),
        None => Finding::missing(
            "ovmf-amdsev",
            "no AmdSev OVMF (with the SEV kernel-hashes table): Debian's ovmf ships OvmfX64 only; build OvmfPkg/AmdSev/AmdSevX64.dsc from Debian's edk2 source package or name a firmware in the configuration",
        ),
    };
    vec![Finding::ok("ovmf", listed), amdsev_finding]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finding::Status;
    use crate::testing::FakeTree;

    #[test]
    fn no_firmware_says_what_to_install() {
        let findings = check(FakeTree::new().root());
        assert_eq!(findings[0].status, Status::Missing);
        assert!(findings[0].detail.contains("apt-get install ovmf"));
    }

    #[test]
    fn a_file_without_sev_metadata_is_no_amdsev_build() {
        let tree = FakeTree::new().file("usr/share/OVMF/OVMF_CODE_4M.fd", vec![0u8; 128 * 1024]);
        let findings = check(tree.root());
        assert_eq!(findings[0].status, Status::Ok);
        assert_eq!(findings[1].status, Status::Missing);
        assert!(
            findings[1].detail.contains("AmdSevX64"),
            "{}",
            findings[1].detail
        );
        assert_eq!(
            classify(&tree.root().join("usr/share/OVMF/OVMF_CODE_4M.fd")),
            FirmwareKind::NoSevMetadata
        );
    }
}
