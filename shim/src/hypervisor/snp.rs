//! SEV-SNP launch on QEMU 9.1 or later (the `sev-snp-guest` object), the way Kata and
//! QEMU's own documentation launch an SNP guest:
//!
//! ```text
//! -machine q35,accel=kvm,confidential-guest-support=snp0,memory-backend=ram0,kernel-irqchip=split
//! -cpu EPYC-v4
//! -object memory-backend-memfd,id=ram0,size=<memory_mib>M,share=true,prealloc=false
//! -object sev-snp-guest,id=snp0,cbitpos=51,reduced-phys-bits=1,policy=0x30000,kernel-hashes=on,host-data=<base64>
//! -bios <AmdSev OVMF>
//! -device virtio-...-pci,disable-legacy=on,iommu_platform=true
//! ```
//!
//! - The object's property names are QEMU's `SevCommonProperties` (`cbitpos`,
//!   `reduced-phys-bits`, `kernel-hashes`) and `SevSnpGuestProperties` (`policy`,
//!   `host-data`: 32 bytes, base64) in `qapi/qom.json` since 9.1.
//! - `kernel-hashes=on` makes QEMU put the SHA-256 of kernel, initrd and command line into
//!   the firmware's SEV hashes table, so the launch digest covers them: the digest `veil
//!   measure` computes for the same firmware, kernel (the bzImage OVMF boots, not the PVH
//!   vmlinux), initramfs, command line, vCPU count and vCPU model.
//! - `host-data` carries [`veil_protocol::delivery::declaration_digest_bytes`] of the pod's
//!   model delivery (32 zero bytes for a pod without one, which is also QEMU's default):
//!   the guest finds it in its attestation report and refuses to ask for a key when it is
//!   not the declaration it was given, and a broker policy can pin it.
//! - Guest RAM: QEMU backs an SNP guest's private (encrypted) memory with KVM's guest_memfd,
//!   which the host kernel allocates on first use and cannot swap or share; the memfd
//!   backend holds only the pages the guest converts to shared (virtio buffers). It is not
//!   preallocated (`prealloc=false`, as in Kata's default `enable_mem_prealloc = false` and
//!   AMD's launch scripts): preallocating would commit the full size twice.
//! - The guest's virtio devices must use the DMA API (`iommu_platform`), so that Linux
//!   bounces their buffers through the shared swiotlb pool, and be modern-only: a guest with
//!   encrypted memory refuses legacy virtio devices.
//! - `kernel-irqchip=split`: SNP guests get their interrupts through the userspace IOAPIC.
//!
//! Nothing here has run on SEV-SNP hardware: the command line is checked against golden
//! files (`shim/tests/golden/qemu-snp.args`) and the QAPI schema's names.

use std::io::Read;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use veil_config::{ConfidentialGuest, HypervisorConfig};

use crate::error::Error;

/// The `sev-snp-guest` object's id (the machine's `confidential-guest-support`).
pub const SNP_OBJECT_ID: &str = "snp0";
/// The guest RAM backend's id (the machine's `memory-backend`).
pub const RAM_BACKEND_ID: &str = "ram0";
/// Guest policy: bit 16 is reserved and must be one, bit 17 allows SMT on the host; debug
/// (bit 19) and migration agents (bit 18) stay off. QEMU's default, and what the broker sees
/// as `policy` in the report.
pub const GUEST_POLICY: u64 = 0x30000;
/// Physical address bits lost to memory encryption (1 on every SNP part so far; Kata's value).
pub const REDUCED_PHYS_BITS: u32 = 1;
/// Options every virtio device of an SNP guest gets (see the module documentation).
pub const VIRTIO_OPTIONS: &str = ",disable-legacy=on,iommu_platform=true";
/// The `host_data` of a pod without a model delivery: QEMU's default, all zero.
pub const NO_DELIVERY_HOST_DATA: [u8; 32] = [0; 32];

/// An SEV-SNP launch cannot be prepared.
#[derive(Debug, thiserror::Error)]
pub enum PrepareSnpLaunchError {
    /// No firmware is configured.
    #[error("hypervisor.confidential_guest = \"snp\" needs hypervisor.firmware: an AmdSev OVMF build (OvmfPkg/AmdSev/AmdSevX64.dsc)")]
    NoFirmware,
    /// The configured firmware does not exist.
    #[error(
        "SEV-SNP firmware {0} does not exist: set hypervisor.firmware to an AmdSev OVMF build"
    )]
    MissingFirmware(PathBuf),
    /// The machine type is not q35.
    #[error("hypervisor.machine = {0:?} cannot run an SEV-SNP guest: set machine = \"q35\" (SNP boots through OVMF on PCI; microvm has neither)")]
    NotQ35(String),
    /// The acceleration is not KVM.
    #[error("an SEV-SNP guest runs only under KVM, but QEMU would use TCG here ({0}); set hypervisor.accel = \"auto\" or \"kvm\"")]
    NotKvm(String),
    /// Neither CPUID nor the configuration gives the C-bit position.
    #[error("cannot read the C-bit position from CPUID 0x8000001F on this host; set hypervisor.cbitpos (51 on Milan and Genoa)")]
    UnknownCbitpos,
    /// The kernel could not be read.
    #[error("read guest kernel {path}: {source}")]
    ReadKernel {
        /// The kernel.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The kernel is not a bzImage.
    #[error("guest kernel {0} is not a bzImage: an SEV-SNP guest boots through OVMF, which loads the compressed kernel (vmlinuz), not the PVH vmlinux; set hypervisor.kernel to the image's vmlinuz")]
    NotBzImage(PathBuf),
}

impl From<PrepareSnpLaunchError> for Error {
    fn from(error: PrepareSnpLaunchError) -> Self {
        match error {
            PrepareSnpLaunchError::MissingFirmware(path) => Error::MissingFile {
                what: "SEV-SNP firmware",
                path,
                hint:
                    "set hypervisor.firmware to an AmdSev OVMF build (OvmfPkg/AmdSev/AmdSevX64.dsc)"
                        .to_string(),
            },
            other => Error::Vm(other.to_string()),
        }
    }
}

/// Whether `config` asks for an SEV-SNP guest.
pub fn enabled(config: &HypervisorConfig) -> bool {
    config.confidential_guest == ConfidentialGuest::Snp
}

/// Checks that `config` can launch an SNP guest on this host (whose SNP support the caller
/// has checked with `veil_host::snp_support_with_qemu`), and returns `config` with the
/// C-bit position resolved (CPUID first, then the configuration). Ordinary VMs pass
/// through unchanged. `kvm` is the acceleration the shim chose, with its reason.
pub fn prepare(
    config: &HypervisorConfig,
    kvm: (bool, &str),
) -> Result<HypervisorConfig, PrepareSnpLaunchError> {
    if !enabled(config) {
        return Ok(config.clone());
    }
    check_config(config)?;
    if !kvm.0 {
        return Err(PrepareSnpLaunchError::NotKvm(kvm.1.to_string()));
    }
    check_bootable_kernel(&config.kernel)?;
    let cbitpos = host_cbitpos()
        .or(config.cbitpos)
        .ok_or(PrepareSnpLaunchError::UnknownCbitpos)?;
    if config
        .cbitpos
        .is_some_and(|configured| configured != cbitpos)
    {
        tracing::warn!(
            configured = ?config.cbitpos,
            cpuid = cbitpos,
            "hypervisor.cbitpos differs from this host's CPUID; using CPUID"
        );
    }
    Ok(HypervisorConfig {
        cbitpos: Some(cbitpos),
        ..config.clone()
    })
}

/// The checks that need no host: machine type and firmware.
pub fn check_config(config: &HypervisorConfig) -> Result<(), PrepareSnpLaunchError> {
    if !veil_config::is_q35(&config.machine) {
        return Err(PrepareSnpLaunchError::NotQ35(config.machine.clone()));
    }
    let firmware = config
        .firmware
        .as_ref()
        .filter(|f| !f.as_os_str().is_empty())
        .ok_or(PrepareSnpLaunchError::NoFirmware)?;
    if !firmware.exists() {
        return Err(PrepareSnpLaunchError::MissingFirmware(firmware.clone()));
    }
    Ok(())
}

/// Refuses a kernel OVMF cannot boot: anything without the bzImage setup header (`HdrS` at
/// offset 0x202), such as the ELF vmlinux veil uses for PVH direct boot.
pub fn check_bootable_kernel(path: &Path) -> Result<(), PrepareSnpLaunchError> {
    let read_error = |source| PrepareSnpLaunchError::ReadKernel {
        path: path.to_path_buf(),
        source,
    };
    let mut header = [0u8; 0x206];
    std::fs::File::open(path)
        .and_then(|mut file| file.read_exact(&mut header))
        .map_err(read_error)?;
    if &header[0x202..0x206] == b"HdrS" {
        Ok(())
    } else {
        Err(PrepareSnpLaunchError::NotBzImage(path.to_path_buf()))
    }
}

/// The `-machine` options an SNP guest adds (empty for an ordinary VM).
pub fn machine_options(config: &HypervisorConfig) -> String {
    if !enabled(config) {
        return String::new();
    }
    format!(
        ",confidential-guest-support={SNP_OBJECT_ID},memory-backend={RAM_BACKEND_ID},kernel-irqchip=split"
    )
}

/// The `-cpu` model of an SNP guest (measured, so never `host`); `None` for an ordinary VM.
pub fn vcpu_model(config: &HypervisorConfig) -> Option<&str> {
    enabled(config).then_some(config.vcpu_type.as_str())
}

/// The options every virtio device gets (empty for an ordinary VM).
pub fn virtio_options(config: &HypervisorConfig) -> &'static str {
    if enabled(config) {
        VIRTIO_OPTIONS
    } else {
        ""
    }
}

/// The RAM backend, the `sev-snp-guest` object and the firmware (empty for an ordinary
/// VM). `config.cbitpos` is the one [`prepare`] resolved; `host_data` goes to the guest's
/// attestation report.
pub fn launch_args(config: &HypervisorConfig, host_data: &[u8; 32]) -> Vec<String> {
    if !enabled(config) {
        return Vec::new();
    }
    // prepare() has resolved it; 51 (every SNP part so far) keeps this function total.
    let cbitpos = config.cbitpos.unwrap_or(51);
    let firmware = config
        .firmware
        .as_ref()
        .map(|f| f.display().to_string())
        .unwrap_or_default();
    vec![
        "-object".into(),
        format!(
            "memory-backend-memfd,id={RAM_BACKEND_ID},size={}M,share=true,prealloc=false",
            config.memory_mib
        ),
        "-object".into(),
        format!(
            "sev-snp-guest,id={SNP_OBJECT_ID},cbitpos={cbitpos},reduced-phys-bits={REDUCED_PHYS_BITS},policy={GUEST_POLICY:#x},kernel-hashes=on,host-data={}",
            STANDARD.encode(host_data)
        ),
        "-bios".into(),
        firmware,
    ]
}

/// The C-bit position from this CPU's CPUID leaf 0x8000001F (EBX bits 5:0), when it is
/// an AMD CPU that reports SEV; `None` elsewhere (as on hosts without SEV, or under a
/// hypervisor that hides the leaf).
pub fn host_cbitpos() -> Option<u32> {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::__cpuid;
        // SAFETY: CPUID exists on every x86_64 CPU and only reads registers; leaves above
        // the maximum return zeros or the highest leaf's values, which the checks below
        // treat as "no SEV". (`__cpuid` is a safe fn on newer toolchains.)
        #[allow(unused_unsafe)]
        let (vendor, max_extended, sev) = unsafe {
            let vendor = __cpuid(0);
            let max_extended = __cpuid(0x8000_0000).eax;
            let sev = __cpuid(0x8000_001f);
            (vendor, max_extended, sev)
        };
        let amd = [vendor.ebx, vendor.edx, vendor.ecx] == AMD_VENDOR;
        cbitpos_from_cpuid(amd, max_extended, sev.eax, sev.ebx)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        None
    }
}

/// "AuthenticAMD" as CPUID leaf 0 returns it in EBX, EDX, ECX.
const AMD_VENDOR: [u32; 3] = [0x6874_7541, 0x6974_6e65, 0x444d_4163];

/// Leaf 0x8000001F: EAX bit 1 says SEV is supported, EBX bits 5:0 hold the C-bit position.
fn cbitpos_from_cpuid(amd: bool, max_extended: u32, eax: u32, ebx: u32) -> Option<u32> {
    if !amd || max_extended < 0x8000_001f || eax & 0b10 == 0 {
        return None;
    }
    Some(ebx & 0x3f).filter(|bit| *bit >= 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snp_config(dir: &Path) -> HypervisorConfig {
        let firmware = dir.join("OVMF.amdsev.fd");
        std::fs::write(&firmware, b"fw").expect("write firmware");
        HypervisorConfig {
            confidential_guest: ConfidentialGuest::Snp,
            machine: "q35".into(),
            firmware: Some(firmware),
            ..HypervisorConfig::default()
        }
    }

    #[test]
    fn an_ordinary_vm_gets_nothing_from_here() {
        let plain = HypervisorConfig::default();
        assert!(launch_args(&plain, &[1; 32]).is_empty());
        assert_eq!(machine_options(&plain), "");
        assert_eq!(virtio_options(&plain), "");
        assert_eq!(vcpu_model(&plain), None);
        assert_eq!(prepare(&plain, (false, "tcg")).expect("plain"), plain);
    }

    #[test]
    fn the_snp_object_carries_the_host_data_in_base64() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = HypervisorConfig {
            cbitpos: Some(47),
            memory_mib: 2048,
            ..snp_config(dir.path())
        };
        let args = launch_args(&config, &[0xab; 32]);
        assert_eq!(args[0], "-object");
        assert_eq!(
            args[1],
            "memory-backend-memfd,id=ram0,size=2048M,share=true,prealloc=false"
        );
        assert_eq!(
            args[3],
            format!(
                "sev-snp-guest,id=snp0,cbitpos=47,reduced-phys-bits=1,policy=0x30000,kernel-hashes=on,host-data={}",
                STANDARD.encode([0xab; 32])
            )
        );
        assert_eq!(
            args[4..],
            [
                "-bios".to_string(),
                config.firmware.unwrap().display().to_string()
            ]
        );
        assert_eq!(
            STANDARD
                .decode("q6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=")
                .unwrap(),
            [0xab; 32]
        );
    }

    #[test]
    fn microvm_and_a_missing_firmware_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let microvm = HypervisorConfig {
            machine: "microvm,acpi=on".into(),
            ..snp_config(dir.path())
        };
        assert!(matches!(
            check_config(&microvm),
            Err(PrepareSnpLaunchError::NotQ35(_))
        ));
        let unset = HypervisorConfig {
            firmware: None,
            ..snp_config(dir.path())
        };
        assert!(matches!(
            check_config(&unset),
            Err(PrepareSnpLaunchError::NoFirmware)
        ));
        let missing = HypervisorConfig {
            firmware: Some(dir.path().join("nope.fd")),
            ..snp_config(dir.path())
        };
        let error = Error::from(check_config(&missing).expect_err("missing"));
        assert!(error.to_string().contains("nope.fd"), "{error}");
        assert!(check_config(&snp_config(dir.path())).is_ok());
    }

    #[test]
    fn only_a_bzimage_boots_through_ovmf() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut bzimage = vec![0u8; 0x400];
        bzimage[0x202..0x206].copy_from_slice(b"HdrS");
        let vmlinuz = dir.path().join("vmlinuz");
        std::fs::write(&vmlinuz, &bzimage).expect("write");
        assert!(check_bootable_kernel(&vmlinuz).is_ok());
        let mut elf = vec![0u8; 0x400];
        elf[..4].copy_from_slice(b"\x7fELF");
        let vmlinux = dir.path().join("vmlinux");
        std::fs::write(&vmlinux, &elf).expect("write");
        let error = check_bootable_kernel(&vmlinux).expect_err("vmlinux");
        assert!(error.to_string().contains("vmlinuz"), "{error}");
        assert!(matches!(
            check_bootable_kernel(&dir.path().join("none")),
            Err(PrepareSnpLaunchError::ReadKernel { .. })
        ));
    }

    #[test]
    fn the_c_bit_comes_from_cpuid_leaf_8000001f_on_amd_with_sev() {
        // Milan: leaf 0x8000001F EAX = 0x0001_a7ff (SME, SEV, ..., SNP), EBX = 0x0000_0173.
        assert_eq!(
            cbitpos_from_cpuid(true, 0x8000_0023, 0x0001_a7ff, 0x173),
            Some(51)
        );
        assert_eq!(
            cbitpos_from_cpuid(false, 0x8000_0023, 0x0001_a7ff, 0x173),
            None
        );
        assert_eq!(
            cbitpos_from_cpuid(true, 0x8000_0008, 0x0001_a7ff, 0x173),
            None
        );
        assert_eq!(cbitpos_from_cpuid(true, 0x8000_0023, 0x1, 0x173), None);
        assert_eq!(cbitpos_from_cpuid(true, 0x8000_0023, 0x2, 0), None);
    }

    #[test]
    fn this_host_without_sev_reports_no_c_bit() {
        let host_has_sev = Path::new("/sys/module/kvm_amd/parameters/sev").exists()
            || std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| c.contains(" sev "));
        if !host_has_sev {
            assert_eq!(host_cbitpos(), None);
        }
    }

    #[test]
    fn snp_needs_kvm() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(matches!(
            prepare(&snp_config(dir.path()), (false, "tcg requested")),
            Err(PrepareSnpLaunchError::NotKvm(_))
        ));
    }
}
