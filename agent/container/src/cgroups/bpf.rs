//! The two `bpf(2)` commands the device controller needs: load a
//! `BPF_PROG_TYPE_CGROUP_DEVICE` program and attach it to a cgroup.
//!
//! Written by hand, as the loop and device-mapper ioctls are: the crates that wrap `bpf(2)`
//! either generate bindings at build time (libbpf-sys: a C toolchain, libelf and zlib on
//! every build machine) or load programs only from ELF objects (aya). Two fixed-layout
//! structures, whose offsets the tests hold to the kernel's, are less to trust.

use std::ffi::CStr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// `enum bpf_cmd`.
const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_PROG_ATTACH: libc::c_int = 8;
/// `enum bpf_prog_type`.
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
/// `enum bpf_attach_type`.
const BPF_CGROUP_DEVICE: u32 = 6;
/// The verifier's log, asked for only when a load fails, to say why.
const VERIFIER_LOG_BYTES: usize = 64 * 1024;
/// Any string will do for a program that calls no GPL-only helper.
const LICENSE: &CStr = c"Apache-2.0";
const PROGRAM_NAME: &[u8] = b"veil_devices";

/// The `BPF_PROG_LOAD` part of `union bpf_attr`; later fields stay zero, as the kernel
/// wants them.
#[repr(C)]
#[derive(Default)]
struct ProgramLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// The `BPF_PROG_ATTACH` part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct ProgramAttach {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

/// A `bpf(2)` command failed.
#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    /// The kernel refused the program.
    #[error("the kernel refused the device program ({source}){}", refusal_advice(.log))]
    Load {
        /// The error.
        source: std::io::Error,
        /// The verifier's log, when it wrote one.
        log: String,
    },
    /// The cgroup could not be opened or the program not attached to it.
    #[error("attach the device program to {path}: {source}")]
    Attach {
        /// The cgroup directory.
        path: String,
        /// The error.
        source: std::io::Error,
    },
}

/// Without a verifier's log the kernel lacks BPF; with one, the program is wrong.
fn refusal_advice(log: &str) -> String {
    let log = log.trim();
    if log.is_empty() {
        "; the guest kernel needs CONFIG_BPF_SYSCALL and CONFIG_CGROUP_BPF".to_string()
    } else {
        format!("; its verifier said: {log}; this is a bug in veil's device program, please report it with the spec's linux.resources.devices")
    }
}

/// Loads `instructions` (eBPF, eight bytes each) as a cgroup device program.
pub(super) fn load_device_program(instructions: &[u8]) -> Result<OwnedFd, BpfError> {
    let source = match load(instructions, None) {
        Ok(fd) => return Ok(fd),
        Err(source) => source,
    };
    // Loaded again with the verifier's log only to say why.
    let mut log = vec![0u8; VERIFIER_LOG_BYTES];
    if let Ok(fd) = load(instructions, Some(&mut log)) {
        return Ok(fd);
    }
    let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
    Err(BpfError::Load {
        source,
        log: String::from_utf8_lossy(&log[..end]).into_owned(),
    })
}

fn load(instructions: &[u8], log: Option<&mut Vec<u8>>) -> Result<OwnedFd, std::io::Error> {
    let mut attr = ProgramLoad {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: u32::try_from(instructions.len() / 8).unwrap_or(u32::MAX),
        insns: instructions.as_ptr() as u64,
        license: LICENSE.as_ptr() as u64,
        ..ProgramLoad::default()
    };
    attr.prog_name[..PROGRAM_NAME.len()].copy_from_slice(PROGRAM_NAME);
    if let Some(log) = log {
        attr.log_level = 1;
        attr.log_size = u32::try_from(log.len()).unwrap_or(u32::MAX);
        attr.log_buf = log.as_mut_ptr() as u64;
    }
    // SAFETY: attr is a valid BPF_PROG_LOAD attribute whose pointers outlive the call;
    // the kernel reads the instructions and license and writes at most log_size bytes.
    let fd = unsafe { bpf(BPF_PROG_LOAD, &mut attr) }?;
    // SAFETY: a successful BPF_PROG_LOAD returns a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Attaches `program` to the cgroup at `cgroup` as its only device program, replacing one
/// attached before; without BPF_F_ALLOW_OVERRIDE or BPF_F_ALLOW_MULTI no cgroup below it
/// can attach one of its own. The cgroup keeps the program after `program` is closed.
pub(super) fn attach_device_program(cgroup: &Path, program: &OwnedFd) -> Result<(), BpfError> {
    let attach_error = |source| BpfError::Attach {
        path: cgroup.display().to_string(),
        source,
    };
    let directory = nix::fcntl::open(
        cgroup,
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|errno| attach_error(errno.into()))?;
    let mut attr = ProgramAttach {
        target_fd: directory.as_raw_fd() as u32,
        attach_bpf_fd: program.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        ..ProgramAttach::default()
    };
    // SAFETY: attr is a valid BPF_PROG_ATTACH attribute; both descriptors are open.
    unsafe { bpf(BPF_PROG_ATTACH, &mut attr) }.map_err(attach_error)?;
    Ok(())
}

/// # Safety
///
/// `attr` must be the attribute structure of `command`, with every pointer in it valid
/// for the call.
unsafe fn bpf<T>(command: libc::c_int, attr: &mut T) -> Result<libc::c_int, std::io::Error> {
    // SAFETY: the caller vouches for attr; its size is passed with it.
    let result = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command,
            attr as *mut T,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if result < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(result as libc::c_int)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    #[test]
    fn attribute_layouts_are_the_kernels() {
        assert_eq!(offset_of!(ProgramLoad, insns), 8);
        assert_eq!(offset_of!(ProgramLoad, license), 16);
        assert_eq!(offset_of!(ProgramLoad, log_level), 24);
        assert_eq!(offset_of!(ProgramLoad, log_buf), 32);
        assert_eq!(offset_of!(ProgramLoad, kern_version), 40);
        assert_eq!(offset_of!(ProgramLoad, prog_name), 48);
        assert_eq!(offset_of!(ProgramLoad, expected_attach_type), 68);
        assert_eq!(size_of::<ProgramLoad>(), 72);
        assert_eq!(offset_of!(ProgramAttach, attach_type), 8);
        assert_eq!(size_of::<ProgramAttach>(), 20);
    }

    #[test]
    fn a_refusal_says_whether_the_kernel_or_the_program_is_at_fault() {
        assert!(refusal_advice("\n").contains("CONFIG_CGROUP_BPF"));
        let verifier = refusal_advice("R0 !read_ok\n");
        assert!(
            verifier.contains("its verifier said: R0 !read_ok;"),
            "{verifier}"
        );
        assert!(verifier.contains("a bug in veil"), "{verifier}");
    }
}
