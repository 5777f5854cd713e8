//! Read-only loop devices over an open file, released by the kernel when their last user
//! (the agent's descriptor, a device-mapper table, a mount) lets go (`LO_FLAGS_AUTOCLEAR`).

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

const LOOP_CONTROL: &str = "/dev/loop-control";
const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
/// How often a free loop device is asked for again when another attach took it first.
const ATTACH_ATTEMPTS: usize = 8;

/// `struct loop_info64` (linux/loop.h).
#[repr(C)]
struct LoopInfo64 {
    device: u64,
    inode: u64,
    rdevice: u64,
    offset: u64,
    size_limit: u64,
    number: u32,
    encrypt_type: u32,
    encrypt_key_size: u32,
    flags: u32,
    file_name: [u8; 64],
    crypt_name: [u8; 64],
    encrypt_key: [u8; 32],
    init: [u64; 2],
}

/// `struct loop_config` (linux/loop.h, Linux 5.8 and later).
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

mod ioctl {
    use super::LoopConfig;
    nix::ioctl_none_bad!(loop_ctl_get_free, 0x4C82);
    nix::ioctl_write_ptr_bad!(loop_configure, 0x4C0A, LoopConfig);
}
use ioctl::{loop_configure, loop_ctl_get_free};

/// Attaching a loop device failed.
#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    /// The kernel has no loop driver (`CONFIG_BLK_DEV_LOOP`).
    #[error("this guest kernel has no loop devices ({LOOP_CONTROL}: {0}); build it with CONFIG_BLK_DEV_LOOP")]
    Unsupported(#[source] std::io::Error),
    /// An open or ioctl failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A loop device the agent attached; dropping it closes the agent's descriptor, and the
/// kernel detaches the device once nothing else holds it.
#[derive(Debug)]
pub struct LoopDevice {
    path: PathBuf,
    device: File,
}

impl LoopDevice {
    /// The device node (`/dev/loopN`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The device's number as `major:minor`, the form device-mapper tables take.
    pub fn device_number(&self) -> Result<String, LoopError> {
        let stat = nix::sys::stat::fstat(&self.device).map_err(|e| LoopError::Io {
            what: format!("stat {}", self.path.display()),
            source: e.into(),
        })?;
        let rdev = stat.st_rdev;
        Ok(format!("{}:{}", libc::major(rdev), libc::minor(rdev)))
    }
}

/// Attaches `backing` (already open, so the caller decides which file it is) to a free loop
/// device, read-only.
pub fn attach_read_only(backing: &File, name: &Path) -> Result<LoopDevice, LoopError> {
    let control = OpenOptions::new()
        .read(true)
        .write(true)
        .open(LOOP_CONTROL)
        .map_err(LoopError::Unsupported)?;
    let mut last_busy = None;
    for _ in 0..ATTACH_ATTEMPTS {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number.
        let number =
            unsafe { loop_ctl_get_free(control.as_raw_fd()) }.map_err(|e| LoopError::Io {
                what: format!("find a free loop device ({LOOP_CONTROL})"),
                source: e.into(),
            })?;
        let path = PathBuf::from(format!("/dev/loop{number}"));
        let device = OpenOptions::new()
            .read(true)
            .open(&path)
            .map_err(|source| LoopError::Io {
                what: format!("open {}", path.display()),
                source,
            })?;
        let config = config_for(backing, name);
        // SAFETY: `config` is a fully initialised `struct loop_config` that outlives the call.
        match unsafe { loop_configure(device.as_raw_fd(), &config) } {
            Ok(_) => return Ok(LoopDevice { path, device }),
            // Another attach took this device between the two calls: ask for another.
            Err(nix::errno::Errno::EBUSY) => last_busy = Some(path),
            Err(e) => {
                return Err(LoopError::Io {
                    what: format!("attach {} to {}", name.display(), path.display()),
                    source: e.into(),
                })
            }
        }
    }
    Err(LoopError::Io {
        what: format!(
            "attach {}: every free loop device was taken first (last {:?})",
            name.display(),
            last_busy
        ),
        source: std::io::Error::from_raw_os_error(libc::EBUSY),
    })
}

fn config_for(backing: &File, name: &Path) -> LoopConfig {
    let mut file_name = [0u8; 64];
    let bytes = name.as_os_str().as_encoded_bytes();
    // The name is informational (losetup shows it); the last byte stays NUL.
    let kept = bytes.len().min(file_name.len() - 1);
    file_name[..kept].copy_from_slice(&bytes[..kept]);
    LoopConfig {
        fd: backing.as_raw_fd() as u32,
        block_size: 0,
        info: LoopInfo64 {
            device: 0,
            inode: 0,
            rdevice: 0,
            offset: 0,
            size_limit: 0,
            number: 0,
            encrypt_type: 0,
            encrypt_key_size: 0,
            flags: LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR,
            file_name,
            crypt_name: [0; 64],
            encrypt_key: [0; 32],
            init: [0; 2],
        },
        reserved: [0; 8],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn structures_have_the_kernels_layout() {
        assert_eq!(std::mem::size_of::<LoopInfo64>(), 232);
        assert_eq!(std::mem::size_of::<LoopConfig>(), 304);
        assert_eq!(std::mem::offset_of!(LoopInfo64, flags), 52);
        assert_eq!(std::mem::offset_of!(LoopInfo64, file_name), 56);
    }

    #[test]
    fn a_long_name_is_cut_and_stays_terminated() {
        let file = tempfile::tempfile().unwrap();
        let long = PathBuf::from("/".repeat(100));
        let config = config_for(&file, &long);
        assert_eq!(config.info.file_name[63], 0);
        assert_eq!(config.info.file_name[62], b'/');
        assert_eq!(config.info.flags, LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR);
    }

    /// Needs root and the host's loop driver; skipped (and says so) without them.
    #[test]
    fn an_attached_file_reads_back_read_only_and_is_released() {
        if !nix::unistd::Uid::effective().is_root() || !Path::new(LOOP_CONTROL).exists() {
            eprintln!("skipped: needs root and {LOOP_CONTROL}");
            return;
        }
        let mut backing = tempfile::NamedTempFile::new().unwrap();
        let content: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
        backing.write_all(&content).unwrap();
        backing.flush().unwrap();
        let file = File::open(backing.path()).unwrap();
        let device = attach_read_only(&file, backing.path()).expect("attach");
        let number = device.device_number().unwrap();
        assert!(number.starts_with("7:"), "{number}");
        let mut read = Vec::new();
        File::open(device.path())
            .unwrap()
            .read_to_end(&mut read)
            .unwrap();
        assert_eq!(read, content);
        let path = device.path().to_path_buf();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let read_only = std::fs::read_to_string(Path::new("/sys/block").join(&name).join("ro"));
        assert_eq!(
            read_only.unwrap().trim(),
            "1",
            "{} is writable",
            path.display()
        );
        let written = OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|mut d| d.write_all(&[0u8; 4096]).and_then(|()| d.sync_all()));
        assert!(written.is_err(), "{} took a write", path.display());
        drop(device);
        let backing_file = Path::new("/sys/block")
            .join(&name)
            .join("loop/backing_file");
        assert!(
            !backing_file.exists(),
            "{} still attached after its last user closed it",
            path.display()
        );
    }
}
