//! Checking that the agent binary can run as `/init` in an initramfs with no libraries.

use std::io::Read;
use std::path::{Path, PathBuf};

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const PT_INTERP: u32 = 3;
const PT_NOTE: u32 = 4;
/// `XEN_ELFNOTE_PHYS32_ENTRY`: the 32-bit PVH entry point QEMU uses for direct boot.
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
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
    let headers = program_headers(head)?;
    Some(
        headers
            .iter()
            .any(|header| read_u32(header, 0) == Some(PT_INTERP)),
    )
}

/// Whether the ELF image `bytes` carries a PVH entry note (`Xen`, type 18) in a PT_NOTE segment.
pub fn has_pvh_entry(bytes: &[u8]) -> bool {
    program_headers(bytes)
        .into_iter()
        .flatten()
        .filter(|header| read_u32(header, 0) == Some(PT_NOTE))
        .filter_map(|header| {
            let offset = usize::try_from(read_u64(header, 8)?).ok()?;
            let size = usize::try_from(read_u64(header, 32)?).ok()?;
            bytes.get(offset..offset.checked_add(size)?)
        })
        .any(|notes| notes_contain(notes, b"Xen\0", XEN_ELFNOTE_PHYS32_ENTRY))
}

/// The program header table entries, or `None` if `bytes` is not a readable ELF64 LE file.
fn program_headers(bytes: &[u8]) -> Option<Vec<&[u8]>> {
    if bytes.get(..4)? != ELF_MAGIC || *bytes.get(4)? != ELFCLASS64 || *bytes.get(5)? != ELFDATA2LSB
    {
        return None;
    }
    let phoff = usize::try_from(read_u64(bytes, 0x20)?).ok()?;
    let phentsize = usize::from(read_u16(bytes, 0x36)?);
    let phnum = usize::from(read_u16(bytes, 0x38)?);
    (0..phnum)
        .map(|index| {
            let start = phoff.checked_add(index.checked_mul(phentsize)?)?;
            bytes.get(start..start.checked_add(phentsize)?)
        })
        .collect()
}

fn notes_contain(mut notes: &[u8], name: &[u8], wanted_type: u32) -> bool {
    let align4 = |len: usize| len.div_ceil(4) * 4;
    while let (Some(namesz), Some(descsz), Some(note_type)) =
        (read_u32(notes, 0), read_u32(notes, 4), read_u32(notes, 8))
    {
        let (Ok(namesz), Ok(descsz)) = (usize::try_from(namesz), usize::try_from(descsz)) else {
            return false;
        };
        let name_end = 12 + namesz;
        if note_type == wanted_type && notes.get(12..name_end) == Some(name) {
            return true;
        }
        match notes.get(12 + align4(namesz) + align4(descsz)..) {
            Some(rest) if !rest.is_empty() => notes = rest,
            _ => return false,
        }
    }
    false
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
    fn finds_the_pvh_note() {
        let mut image = vec![0u8; 64 + 56];
        image[..6].copy_from_slice(b"\x7fELF\x02\x01");
        image[0x20] = 64;
        image[0x36] = 56;
        image[0x38] = 1;
        image[64] = 4; // PT_NOTE
        image[64 + 8] = 120; // p_offset
                             // An unrelated note first, then Xen type 18.
        let mut notes = Vec::new();
        for (name, note_type) in [(&b"GNU\0"[..], 3u32), (&b"Xen\0"[..], 18u32)] {
            notes.extend_from_slice(&4u32.to_le_bytes());
            notes.extend_from_slice(&8u32.to_le_bytes());
            notes.extend_from_slice(&note_type.to_le_bytes());
            notes.extend_from_slice(name);
            notes.extend_from_slice(&[0u8; 8]);
        }
        image[64 + 32] = u8::try_from(notes.len()).unwrap(); // p_filesz
        image.extend_from_slice(&notes);
        assert!(has_pvh_entry(&image));
        let xen_type_at = image.len() - 16;
        image[xen_type_at] = 17;
        assert!(!has_pvh_entry(&image));
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
        assert!(!has_pvh_entry(&header));
        assert_eq!(has_interpreter(&header), Some(false));
        header[64] = 3;
        assert_eq!(has_interpreter(&header), Some(true));
    }
}
