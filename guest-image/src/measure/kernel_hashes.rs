//! The SEV hashes table: with `kernel-hashes=on` QEMU writes the SHA-256 of the kernel, the
//! initrd and the command line into a page the firmware declares, and that page is measured.
//! OVMF later refuses to boot a kernel, initrd or command line whose hash differs.
//!
//! Table layout (QEMU `target/i386/sev.c`, `SevHashTable`), all little-endian, at the
//! table's offset inside its page, the rest of the page zero:
//!
//! | bytes | field |
//! | --- | --- |
//! | 16 | GUID `9438d606-4f22-4cc9-b479-a793d411fd21` (table header) |
//! | 2 | table length (168) |
//! | 16 + 2 + 32 | cmdline entry: GUID `97d02dd8-...`, length 50, SHA-256 of the command line and its NUL |
//! | 16 + 2 + 32 | initrd entry: GUID `44baf731-...`, length 50, SHA-256 of the initrd (of nothing without one) |
//! | 16 + 2 + 32 | kernel entry: GUID `4de79437-...`, length 50, SHA-256 of the kernel file |
//! | 8 | zero padding to a multiple of 16 |

use std::path::{Path, PathBuf};

use serde::Serialize;
use sev::measurement::sev_hashes::SevHashes;

use crate::digest::{sha256_bytes, sha256_file, HashFileError};

/// The direct-boot inputs that the hashes table covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectBoot {
    /// The kernel as QEMU's `-kernel` gets it (the bzImage).
    pub kernel: PathBuf,
    /// QEMU's `-initrd`, if any.
    pub initrd: Option<PathBuf>,
    /// QEMU's `-append`, if any.
    pub append: Option<String>,
}

/// The direct-boot inputs cannot be hashed as QEMU would.
#[derive(Debug, thiserror::Error)]
pub enum HashDirectBootError {
    /// An input file cannot be read.
    #[error(transparent)]
    Read(#[from] HashFileError),
    /// The command line starts or ends with whitespace.
    #[error("the kernel command line {append:?} starts or ends with whitespace: QEMU hashes it byte for byte but the sev crate trims it, so the expected digest would be wrong; remove the surrounding whitespace")]
    PaddedCommandLine {
        /// The command line.
        append: String,
    },
    /// The command line contains a NUL byte, which QEMU's C string would cut.
    #[error(
        "the kernel command line contains a NUL byte: QEMU would pass only the part before it"
    )]
    NulInCommandLine,
    /// The `sev` crate could not build the table page.
    #[error("cannot build the SEV hashes page: {0}")]
    Build(String),
}

/// The three SHA-256 values in the table, hex, for reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DirectBootHashes {
    /// SHA-256 of the kernel file.
    pub kernel_sha256: String,
    /// SHA-256 of the initrd file, or of no bytes without one (as QEMU does).
    pub initrd_sha256: String,
    /// SHA-256 of the command line followed by its NUL terminator (of `"\0"` without one).
    pub cmdline_sha256: String,
}

impl DirectBoot {
    /// Refuses inputs whose hash QEMU and the `sev` crate would compute differently.
    pub fn validate(&self) -> Result<(), HashDirectBootError> {
        if let Some(append) = &self.append {
            if append.contains('\0') {
                return Err(HashDirectBootError::NulInCommandLine);
            }
            if append.trim() != append {
                return Err(HashDirectBootError::PaddedCommandLine {
                    append: append.clone(),
                });
            }
        }
        Ok(())
    }

    /// The table's hashes, computed here (independently of the `sev` crate) for reports.
    pub fn hashes(&self) -> Result<DirectBootHashes, HashDirectBootError> {
        self.validate()?;
        let initrd_sha256 = match &self.initrd {
            Some(path) => sha256_file(path)?,
            None => sha256_bytes(b""),
        };
        Ok(DirectBootHashes {
            kernel_sha256: sha256_file(&self.kernel)?,
            initrd_sha256,
            cmdline_sha256: sha256_bytes(&command_line_bytes(self.append.as_deref())),
        })
    }

    /// The 4 KiB page QEMU writes at the hashes table's page, with the table at
    /// `offset_in_page` (the low 12 bits of the table's GPA); built by the `sev` crate.
    pub fn hashes_page(&self, offset_in_page: usize) -> Result<Vec<u8>, HashDirectBootError> {
        self.validate()?;
        let hashes = SevHashes::new(
            self.kernel.clone(),
            self.initrd.clone(),
            self.append.as_deref(),
        )
        .map_err(|error| HashDirectBootError::Build(error.to_string()))?;
        hashes
            .construct_page(offset_in_page)
            .map_err(|error| HashDirectBootError::Build(error.to_string()))
    }

    /// The files this boot reads, for error messages.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        std::iter::once(self.kernel.as_path()).chain(self.initrd.as_deref())
    }
}

/// The bytes QEMU hashes for `-append`: the string and its NUL terminator.
fn command_line_bytes(append: Option<&str>) -> Vec<u8> {
    let mut bytes = append.unwrap_or("").as_bytes().to_vec();
    bytes.push(0);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::synthetic::guid_le;
    use sha2::{Digest, Sha256};

    const TABLE_GUID: &str = "9438d606-4f22-4cc9-b479-a793d411fd21";
    const CMDLINE_GUID: &str = "97d02dd8-bd20-4c94-aa78-e7714d36ab2a";
    const INITRD_GUID: &str = "44baf731-3a2f-4bd7-9af1-41e29169781d";
    const KERNEL_GUID: &str = "4de79437-abd2-427f-b835-d5b172d2045b";

    fn boot(dir: &Path, append: Option<&str>, initrd: bool) -> DirectBoot {
        std::fs::write(dir.join("kernel"), b"stand-in bzImage bytes").unwrap();
        std::fs::write(dir.join("initrd"), b"stand-in initramfs bytes").unwrap();
        DirectBoot {
            kernel: dir.join("kernel"),
            initrd: initrd.then(|| dir.join("initrd")),
            append: append.map(str::to_owned),
        }
    }

    fn entry(page: &[u8], at: usize, guid: &str, hash: &[u8]) {
        assert_eq!(&page[at..at + 16], guid_le(guid), "guid at {at}");
        assert_eq!(
            &page[at + 16..at + 18],
            50u16.to_le_bytes(),
            "length at {at}"
        );
        assert_eq!(&page[at + 18..at + 50], hash, "hash at {at}");
    }

    #[test]
    fn the_page_has_qemus_table_layout_at_the_offset() {
        let dir = tempfile::tempdir().unwrap();
        let boot = boot(dir.path(), Some("console=ttyS0 quiet"), true);
        let offset = 0x400;
        let page = boot.hashes_page(offset).unwrap();
        assert_eq!(page.len(), 4096);
        assert!(page[..offset].iter().all(|b| *b == 0));
        assert_eq!(&page[offset..offset + 16], guid_le(TABLE_GUID));
        assert_eq!(&page[offset + 16..offset + 18], 168u16.to_le_bytes());
        entry(
            &page,
            offset + 18,
            CMDLINE_GUID,
            &Sha256::digest(b"console=ttyS0 quiet\0"),
        );
        entry(
            &page,
            offset + 68,
            INITRD_GUID,
            &Sha256::digest(b"stand-in initramfs bytes"),
        );
        entry(
            &page,
            offset + 118,
            KERNEL_GUID,
            &Sha256::digest(b"stand-in bzImage bytes"),
        );
        assert!(page[offset + 168..].iter().all(|b| *b == 0));
    }

    #[test]
    fn without_initrd_and_cmdline_qemu_hashes_empty_inputs() {
        let dir = tempfile::tempdir().unwrap();
        let boot = boot(dir.path(), None, false);
        let page = boot.hashes_page(0).unwrap();
        entry(&page, 18, CMDLINE_GUID, &Sha256::digest(b"\0"));
        entry(&page, 68, INITRD_GUID, &Sha256::digest(b""));
    }

    #[test]
    fn reported_hashes_are_the_ones_in_the_page() {
        let dir = tempfile::tempdir().unwrap();
        let boot = boot(dir.path(), Some("root=/dev/vda"), true);
        let page = boot.hashes_page(0).unwrap();
        let hashes = boot.hashes().unwrap();
        assert_eq!(hex::encode(&page[36..68]), hashes.cmdline_sha256);
        assert_eq!(hex::encode(&page[86..118]), hashes.initrd_sha256);
        assert_eq!(hex::encode(&page[136..168]), hashes.kernel_sha256);
    }

    #[test]
    fn padded_or_nul_command_lines_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let padded = boot(dir.path(), Some("console=ttyS0 "), true);
        assert!(matches!(
            padded.hashes_page(0),
            Err(HashDirectBootError::PaddedCommandLine { .. })
        ));
        let nul = boot(dir.path(), Some("a\0b"), true);
        assert!(matches!(
            nul.validate(),
            Err(HashDirectBootError::NulInCommandLine)
        ));
    }
}
