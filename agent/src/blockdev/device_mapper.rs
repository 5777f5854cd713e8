//! Read-only dm-verity devices: the four device-mapper commands that create one, load its
//! table, activate it and remove it (linux/dm-ioctl.h, interface version 4).

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::PathBuf;

const CONTROL: &str = "/dev/mapper/control";
/// The interface version the commands are written against; the kernel takes any request
/// whose major matches and whose minor is not above its own.
const VERSION: [u32; 3] = [4, 0, 0];
const DM_READONLY_FLAG: u32 = 1;
const DM_DEFERRED_REMOVE: u32 = 1 << 17;
const DEV_CREATE: u8 = 3;
const DEV_REMOVE: u8 = 4;
const DEV_SUSPEND: u8 = 6;
const TABLE_LOAD: u8 = 9;
const HEADER_SIZE: usize = std::mem::size_of::<DmIoctl>();
const TARGET_SPEC_SIZE: usize = std::mem::size_of::<DmTargetSpec>();
/// dm-verity's block size for data and hash blocks: the one the shim makes images with.
const VERITY_BLOCK_SIZE: u64 = veil_protocol::ROOTFS_IMAGE_BLOCK_SIZE;

/// `struct dm_ioctl`.
#[repr(C)]
#[derive(Clone, Copy)]
struct DmIoctl {
    version: [u32; 3],
    data_size: u32,
    data_start: u32,
    target_count: u32,
    open_count: i32,
    flags: u32,
    event_nr: u32,
    padding: u32,
    dev: u64,
    name: [u8; 128],
    uuid: [u8; 129],
    data: [u8; 7],
}

/// `struct dm_target_spec`; the target's parameter string follows it.
#[repr(C)]
struct DmTargetSpec {
    sector_start: u64,
    length: u64,
    status: i32,
    next: u32,
    target_type: [u8; 16],
}

/// Setting up or removing a device-mapper device failed.
#[derive(Debug, thiserror::Error)]
pub enum DeviceMapperError {
    /// The kernel has no device mapper (`CONFIG_BLK_DEV_DM`, `CONFIG_DM_VERITY`).
    #[error("this guest kernel has no device mapper ({CONTROL}: {0}); build it with CONFIG_BLK_DEV_DM and CONFIG_DM_VERITY")]
    Unsupported(#[source] std::io::Error),
    /// A name that does not fit the kernel's field.
    #[error("device-mapper name {0:?} is empty or longer than 127 bytes")]
    Name(String),
    /// A command failed.
    #[error("device-mapper {command} of {name}: {source}")]
    Command {
        /// The command.
        command: &'static str,
        /// The device.
        name: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Where dm-verity finds its data and hash tree, and what the tree's root must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerityTable {
    /// The data device, `major:minor`.
    pub data_device: String,
    /// The hash device, `major:minor`; the tree starts at its first block (no superblock).
    pub hash_device: String,
    /// The data device's size in [`VERITY_BLOCK_SIZE`] blocks.
    pub data_blocks: u64,
    /// The tree's SHA-256 root, hex.
    pub root_hash: String,
    /// The salt, hex (`-` for none).
    pub salt: String,
}

impl VerityTable {
    /// The target's parameters as in the kernel's dm-verity documentation (format version
    /// 1, SHA-256, the hash tree from block 0 of the hash device).
    pub fn parameters(&self) -> String {
        format!(
            "1 {} {} {VERITY_BLOCK_SIZE} {VERITY_BLOCK_SIZE} {} 0 sha256 {} {}",
            self.data_device, self.hash_device, self.data_blocks, self.root_hash, self.salt
        )
    }

    /// The device's length in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.data_blocks * (VERITY_BLOCK_SIZE / 512)
    }
}

/// A dm-verity device the agent created; [`VerityDevice::remove`] takes it away.
#[derive(Debug)]
pub struct VerityDevice {
    name: String,
    node: PathBuf,
}

impl VerityDevice {
    /// The device node devtmpfs made for it (`/dev/dm-N`).
    pub fn node(&self) -> &std::path::Path {
        &self.node
    }

    /// Removes the device, or, while something still holds it open (a mount that a
    /// lingering mount namespace keeps), has the kernel remove it on the last close.
    pub fn remove(&self) -> Result<(), DeviceMapperError> {
        let control = open_control()?;
        let header = header(&self.name, DM_DEFERRED_REMOVE)?;
        command(&control, DEV_REMOVE, "remove", &self.name, header).map(|_| ())
    }
}

/// Creates the read-only verity device `name` and activates `table` on it. On a failure
/// after the create, the half-made device is removed again.
pub fn create_verity(name: &str, table: &VerityTable) -> Result<VerityDevice, DeviceMapperError> {
    let control = open_control()?;
    let created = command(&control, DEV_CREATE, "create", name, header(name, 0)?)?;
    let activated = load_verity_table(&control, name, table)
        .and_then(|()| command(&control, DEV_SUSPEND, "resume", name, header(name, 0)?));
    if let Err(error) = activated {
        let _ = header(name, 0).and_then(|h| command(&control, DEV_REMOVE, "remove", name, h));
        return Err(error);
    }
    Ok(VerityDevice {
        name: name.to_string(),
        node: PathBuf::from(format!("/dev/dm-{}", minor_of(created.dev))),
    })
}

fn open_control() -> Result<File, DeviceMapperError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(CONTROL)
        .map_err(DeviceMapperError::Unsupported)
}

fn header(name: &str, flags: u32) -> Result<DmIoctl, DeviceMapperError> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= 128 || bytes.contains(&0) {
        return Err(DeviceMapperError::Name(name.to_string()));
    }
    let mut header = DmIoctl {
        version: VERSION,
        data_size: HEADER_SIZE as u32,
        data_start: HEADER_SIZE as u32,
        target_count: 0,
        open_count: 0,
        flags,
        event_nr: 0,
        padding: 0,
        dev: 0,
        name: [0; 128],
        uuid: [0; 129],
        data: [0; 7],
    };
    header.name[..bytes.len()].copy_from_slice(bytes);
    Ok(header)
}

fn load_verity_table(
    control: &File,
    name: &str,
    table: &VerityTable,
) -> Result<(), DeviceMapperError> {
    let mut buffer = table_load_buffer(header(name, DM_READONLY_FLAG)?, table);
    run(control, TABLE_LOAD, &mut buffer).map_err(|source| DeviceMapperError::Command {
        command: "table load",
        name: name.to_string(),
        source,
    })
}

/// The header, one `verity` target spec and its NUL-terminated parameters, padded to 8
/// bytes as the kernel expects of each spec.
fn table_load_buffer(mut header: DmIoctl, table: &VerityTable) -> Vec<u8> {
    let parameters = table.parameters();
    let spec_len = (TARGET_SPEC_SIZE + parameters.len() + 1).next_multiple_of(8);
    let total = HEADER_SIZE + spec_len;
    header.data_size = total as u32;
    header.target_count = 1;
    let mut target_type = [0u8; 16];
    target_type[..6].copy_from_slice(b"verity");
    let spec = DmTargetSpec {
        sector_start: 0,
        length: table.sectors(),
        status: 0,
        next: spec_len as u32,
        target_type,
    };
    let mut buffer = vec![0u8; total];
    write_raw(&mut buffer, 0, &header);
    write_raw(&mut buffer, HEADER_SIZE, &spec);
    let start = HEADER_SIZE + TARGET_SPEC_SIZE;
    buffer[start..start + parameters.len()].copy_from_slice(parameters.as_bytes());
    buffer
}

/// Runs a command whose only payload is the header; returns the header the kernel wrote
/// back.
fn command(
    control: &File,
    code: u8,
    command: &'static str,
    name: &str,
    header: DmIoctl,
) -> Result<DmIoctl, DeviceMapperError> {
    let mut buffer = vec![0u8; HEADER_SIZE];
    write_raw(&mut buffer, 0, &header);
    run(control, code, &mut buffer).map_err(|source| DeviceMapperError::Command {
        command,
        name: name.to_string(),
        source,
    })?;
    // SAFETY: the buffer still holds one header, which the kernel filled in.
    Ok(unsafe { std::ptr::read_unaligned(buffer.as_ptr().cast::<DmIoctl>()) })
}

/// Copies one of the kernel's structures into `buffer` at `offset`, as the ioctl reads it.
fn write_raw<T: KernelStruct>(buffer: &mut [u8], offset: usize, value: &T) {
    let size = std::mem::size_of::<T>();
    assert!(
        offset + size <= buffer.len(),
        "a device-mapper buffer too small"
    );
    // SAFETY: `T` is a `repr(C)` structure of integers and byte arrays (no padding the kernel
    // would misread, no pointers), and the destination range was checked to fit.
    unsafe {
        std::ptr::copy_nonoverlapping(
            (value as *const T).cast::<u8>(),
            buffer.as_mut_ptr().add(offset),
            size,
        );
    }
}

/// The structures [`write_raw`] may copy: `repr(C)`, integers and byte arrays only.
trait KernelStruct {}
impl KernelStruct for DmIoctl {}
impl KernelStruct for DmTargetSpec {}

fn run(control: &File, code: u8, buffer: &mut [u8]) -> std::io::Result<()> {
    let request = nix::request_code_readwrite!(0xfd, code, HEADER_SIZE);
    // SAFETY: the buffer starts with a `struct dm_ioctl` whose data_size is the buffer's
    // length, so the kernel reads and writes only inside it.
    let result = unsafe { libc::ioctl(control.as_raw_fd(), request as _, buffer.as_mut_ptr()) };
    if result < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The minor number of a device as device-mapper reports it (the kernel's `huge_encode_dev`).
fn minor_of(dev: u64) -> u64 {
    (dev & 0xff) | ((dev >> 12) & 0xfff00)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> VerityTable {
        VerityTable {
            data_device: "7:0".into(),
            hash_device: "7:1".into(),
            data_blocks: 1000,
            root_hash: "ab".repeat(32),
            salt: "cd".repeat(32),
        }
    }

    #[test]
    fn structures_have_the_kernels_layout() {
        assert_eq!(HEADER_SIZE, 312);
        assert_eq!(TARGET_SPEC_SIZE, 40);
        assert_eq!(std::mem::offset_of!(DmIoctl, dev), 40);
        assert_eq!(std::mem::offset_of!(DmIoctl, name), 48);
        assert_eq!(std::mem::offset_of!(DmIoctl, uuid), 176);
    }

    #[test]
    fn the_table_is_the_documented_verity_line() {
        let table = table();
        assert_eq!(
            table.parameters(),
            format!(
                "1 7:0 7:1 4096 4096 1000 0 sha256 {} {}",
                "ab".repeat(32),
                "cd".repeat(32)
            )
        );
        assert_eq!(table.sectors(), 8000);
    }

    #[test]
    fn the_table_load_buffer_holds_one_padded_read_only_target() {
        let table = table();
        let buffer = table_load_buffer(header("veil-c1", DM_READONLY_FLAG).unwrap(), &table);
        assert_eq!(buffer.len() % 8, 0);
        let u32_at =
            |offset: usize| u32::from_ne_bytes(buffer[offset..offset + 4].try_into().unwrap());
        assert_eq!(u32_at(0), 4, "interface major");
        assert_eq!(u32_at(12) as usize, buffer.len(), "data_size");
        assert_eq!(u32_at(16) as usize, HEADER_SIZE, "data_start");
        assert_eq!(u32_at(20), 1, "target_count");
        assert_eq!(u32_at(28), DM_READONLY_FLAG, "flags");
        assert_eq!(&buffer[48..56], b"veil-c1\0");
        let spec = HEADER_SIZE;
        let u64_at =
            |offset: usize| u64::from_ne_bytes(buffer[offset..offset + 8].try_into().unwrap());
        assert_eq!(u64_at(spec + 8), 8000, "length in sectors");
        assert_eq!(&buffer[spec + 24..spec + 31], b"verity\0");
        let parameters = &buffer[spec + TARGET_SPEC_SIZE..];
        let end = parameters.iter().position(|b| *b == 0).unwrap();
        assert_eq!(parameters[..end], *table.parameters().as_bytes());
    }

    #[test]
    fn names_that_do_not_fit_are_refused() {
        assert!(matches!(header("", 0), Err(DeviceMapperError::Name(_))));
        assert!(matches!(
            header(&"x".repeat(128), 0),
            Err(DeviceMapperError::Name(_))
        ));
        assert!(header(&"x".repeat(127), 0).is_ok());
    }

    #[test]
    fn minors_decode_from_the_kernels_encoding() {
        // 253:0 and 253:300, as huge_encode_dev writes them.
        assert_eq!(minor_of(253 << 8), 0);
        let encoded = (300 & 0xff) | (253 << 8) | ((300 & !0xff) << 12);
        assert_eq!(minor_of(encoded), 300);
    }
}
