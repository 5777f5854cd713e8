//! Synthetic OVMF images for tests: a filler body with a real OVMF footer table and SEV
//! metadata (the layout edk2's `OvmfPkg/ResetVector` emits), so that the kernel-hashes
//! measurement path can be exercised and cross-checked where no AmdSev OVMF exists.
//!
//! Layout, from the end of the image: 32 bytes of reset vector, the footer entry
//! (`u16 size`, GUID `96b582de-...`) whose size covers the whole table, then the table's
//! entries back to front, each `data, u16 size, GUID` (size includes the 18-byte header).
//! The SEV metadata entry points (offset from the end) at an `ASEV` header followed by
//! 12-byte section descriptors (`u32 gpa, u32 size, u32 type`).

use std::path::{Path, PathBuf};

const FOOTER_GUID: &str = "96b582de-1fb2-45f7-baea-a366c55a082d";
const SEV_HASH_TABLE_RV_GUID: &str = "7255371f-3a3b-4b04-927b-1da6efa8d454";
const SEV_ES_RESET_BLOCK_GUID: &str = "00f771de-1a7e-4fcb-890e-68c77e2fb44e";
const OVMF_SEV_META_DATA_GUID: &str = "dc886566-984a-4798-a75e-5585a7bf67cc";
const ENTRY_HEADER: usize = 18;
const IMAGE_BYTES: usize = 256 * 1024;
/// Where the metadata header sits, counted back from the end of the image.
const METADATA_OFFSET_FROM_END: u32 = 0x800;

const SEC_MEM: u32 = 1;
const SECRETS: u32 = 2;
const CPUID: u32 = 3;
const KERNEL_HASHES: u32 = 0x10;

/// A synthetic firmware image to write into a test directory.
pub struct SyntheticFirmware {
    name: &'static str,
    sections: Vec<(u32, u32, u32)>,
    hashes_table: bool,
    metadata_offset: u32,
}

impl SyntheticFirmware {
    /// The SEV hashes table's address (not page-aligned, to exercise the in-page offset).
    pub const HASHES_TABLE_GPA: u64 = 0x80_b400;
    /// The SEV-ES reset address in the reset block.
    pub const RESET_EIP: u32 = 0xffff_e3f4;

    /// Shaped like an AmdSevX64 build: kernel-hashes section and hashes table.
    pub fn amdsev() -> Self {
        Self {
            name: "synthetic-amdsev.fd",
            sections: vec![
                (0x80_0000, 0x9000, SEC_MEM),
                (0x80_9000, 0x1000, SECRETS),
                (0x80_a000, 0x1000, CPUID),
                (0x80_b000, 0x1000, KERNEL_HASHES),
            ],
            hashes_table: true,
            metadata_offset: METADATA_OFFSET_FROM_END,
        }
    }

    /// Shaped like an OvmfX64 build: SEV metadata without kernel hashes.
    pub fn ovmf_x64() -> Self {
        Self {
            name: "synthetic-ovmfx64.fd",
            sections: vec![
                (0x80_0000, 0x9000, SEC_MEM),
                (0x80_9000, 0x1000, SECRETS),
                (0x80_a000, 0x1000, CPUID),
            ],
            hashes_table: false,
            metadata_offset: METADATA_OFFSET_FROM_END,
        }
    }

    /// Points the metadata entry at `offset` bytes before the end (to build corrupt images).
    pub fn with_metadata_offset(mut self, offset: u32) -> Self {
        self.metadata_offset = offset;
        self
    }

    /// Writes the image into `dir` and returns its path.
    pub fn write(&self, dir: &Path) -> PathBuf {
        let path = dir.join(self.name);
        std::fs::write(&path, self.bytes()).expect("write synthetic firmware");
        path
    }

    fn bytes(&self) -> Vec<u8> {
        // A non-constant body, so the measurement of the image bytes is exercised too.
        let mut image: Vec<u8> = (0..IMAGE_BYTES).map(|i| (i % 251) as u8).collect();
        self.place_metadata(&mut image);
        self.place_footer_table(&mut image);
        image
    }

    fn place_metadata(&self, image: &mut [u8]) {
        let count = self.sections.len() as u32;
        let mut header = Vec::new();
        header.extend_from_slice(b"ASEV");
        header.extend_from_slice(&(16 + 12 * count).to_le_bytes());
        header.extend_from_slice(&1u32.to_le_bytes());
        header.extend_from_slice(&count.to_le_bytes());
        for (gpa, size, kind) in &self.sections {
            header.extend_from_slice(&gpa.to_le_bytes());
            header.extend_from_slice(&size.to_le_bytes());
            header.extend_from_slice(&kind.to_le_bytes());
        }
        let start = IMAGE_BYTES - METADATA_OFFSET_FROM_END as usize;
        image[start..start + header.len()].copy_from_slice(&header);
    }

    fn place_footer_table(&self, image: &mut [u8]) {
        let mut table = Vec::new();
        push_entry(
            &mut table,
            OVMF_SEV_META_DATA_GUID,
            &self.metadata_offset.to_le_bytes(),
        );
        if self.hashes_table {
            let mut data = (Self::HASHES_TABLE_GPA as u32).to_le_bytes().to_vec();
            data.extend_from_slice(&0x400u32.to_le_bytes());
            push_entry(&mut table, SEV_HASH_TABLE_RV_GUID, &data);
        }
        push_entry(
            &mut table,
            SEV_ES_RESET_BLOCK_GUID,
            &Self::RESET_EIP.to_le_bytes(),
        );
        let footer_size = (table.len() + ENTRY_HEADER) as u16;
        table.extend_from_slice(&footer_size.to_le_bytes());
        table.extend_from_slice(&guid_le(FOOTER_GUID));
        let end = IMAGE_BYTES - 32;
        image[end - table.len()..end].copy_from_slice(&table);
    }
}

fn push_entry(table: &mut Vec<u8>, guid: &str, data: &[u8]) {
    table.extend_from_slice(data);
    table.extend_from_slice(&((data.len() + ENTRY_HEADER) as u16).to_le_bytes());
    table.extend_from_slice(&guid_le(guid));
}

/// A GUID in the mixed-endian byte order UEFI stores (first three fields little-endian).
pub fn guid_le(text: &str) -> [u8; 16] {
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    let bytes: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("guid hex"))
        .collect();
    let mut out = [0u8; 16];
    out[..4].copy_from_slice(&[bytes[3], bytes[2], bytes[1], bytes[0]]);
    out[4..6].copy_from_slice(&[bytes[5], bytes[4]]);
    out[6..8].copy_from_slice(&[bytes[7], bytes[6]]);
    out[8..].copy_from_slice(&bytes[8..]);
    out
}
