//! Checking that the agent binary can run as `/init` in an initramfs with no libraries.

use std::io::Read;
use std::path::{Path, PathBuf};

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const PT_INTERP: u32 = 3;
/// Enough for the ELF header plus a generous program header table.
const READ_LIMIT: u64 = 64 * 1024;

/// The agent binary is not a static x86-64 executable.
#[derive(Debug, thiserror::Error)]
pub enum CheckStaticBinaryError {
    /// The file could not be read.
    #[error("cannot read agent binary {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Not a little-endian 64-bit ELF file.
    #[error("{path} is not a 64-bit little-endian ELF executable")]
    NotElf64 {
        /// The file.
        path: PathBuf,
    },
    /// It asks for a dynamic loader, which the initramfs does not have.
    #[error("{path} is dynamically linked (has PT_INTERP); build it static: RUSTFLAGS='-C target-feature=+crt-static'")]
    Dynamic {
        /// The file.
        path: PathBuf,
    },
}

/// Fails unless `path` is a 64-bit ELF with no program interpreter (statically linked).
pub fn check_static_elf(path: &Path) -> Result<(), CheckStaticBinaryError> {
    let mut head = Vec::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(READ_LIMIT).read_to_end(&mut head))
        .map_err(|source| CheckStaticBinaryError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    match has_interpreter(&head) {
        None => Err(CheckStaticBinaryError::NotElf64 {
            path: path.to_path_buf(),
        }),
        Some(true) => Err(CheckStaticBinaryError::Dynamic {
            path: path.to_path_buf(),
        }),
        Some(false) => Ok(()),
    }
}

/// `None` when `head` is not a readable ELF64 LE header + program header table.
fn has_interpreter(head: &[u8]) -> Option<bool> {
    if head.get(..4)? != ELF_MAGIC || *head.get(4)? != ELFCLASS64 || *head.get(5)? != ELFDATA2LSB {
        return None;
    }
    let phoff = usize::try_from(read_u64(head, 0x20)?).ok()?;
    let phentsize = usize::from(read_u16(head, 0x36)?);
    let phnum = usize::from(read_u16(head, 0x38)?);
    let mut found = false;
    for index in 0..phnum {
        let offset = phoff.checked_add(index.checked_mul(phentsize)?)?;
        found |= read_u32(head, offset)? == PT_INTERP;
    }
    Some(found)
}

fn read_u16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        bytes.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        bytes.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn read_u64(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        bytes.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_tools_are_dynamic_and_text_is_not_elf() {
        // /bin/sh on Debian is dynamically linked dash.
        assert!(matches!(
            check_static_elf(Path::new("/bin/sh")),
            Err(CheckStaticBinaryError::Dynamic { .. })
        ));
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("script");
        std::fs::write(&text, "#!/bin/sh\n").unwrap();
        assert!(matches!(
            check_static_elf(&text),
            Err(CheckStaticBinaryError::NotElf64 { .. })
        ));
    }

    #[test]
    fn truncated_headers_are_rejected() {
        assert_eq!(has_interpreter(b"\x7fELF\x02\x01"), None);
        let mut header = vec![0u8; 64];
        header[..6].copy_from_slice(b"\x7fELF\x02\x01");
        header[0x20] = 64; // phoff
        header[0x36] = 56; // phentsize
        header[0x38] = 1; // phnum, but no table follows
        assert_eq!(has_interpreter(&header), None);
        header.extend_from_slice(&[0u8; 56]);
        assert_eq!(has_interpreter(&header), Some(false));
        header[64] = 3;
        assert_eq!(has_interpreter(&header), Some(true));
    }
}
