//! Agreement with an independent implementation, AMD's Python `sev-snp-measure`
//! (`pip install sev-snp-measure`), and the refusals that keep digests reproducible.
//! These tests fail, not skip, when it or Debian's OVMF (`apt-get install ovmf`) is missing.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::synthetic::SyntheticFirmware;
use super::*;

const VCPU_COUNTS: [u32; 2] = [1, 4];
const VCPU_TYPES: [&str; 2] = ["EPYC-v4", "EPYC-Milan"];
/// Debian's 2 MiB OvmfX64 build: SEV metadata (SNP sections), no kernel-hashes section.
const DEBIAN_OVMF_2M: &str = "/usr/share/OVMF/OVMF_CODE.fd";
/// Debian's 4 MiB OvmfX64 build: no SEV metadata at all, so no SNP launch.
const DEBIAN_OVMF_4M: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const APPEND: &str = "console=ttyS0 panic=-1 reboot=t";

/// What `sev-snp-measure --mode snp` prints for the same inputs.
fn reference_digest(inputs: &MeasureInputs) -> Result<String, String> {
    let mut command = Command::new("sev-snp-measure");
    command
        .args(["--mode", "snp", "--output-format", "hex"])
        .arg("--vcpus")
        .arg(inputs.vcpus.to_string())
        .arg("--vcpu-type")
        .arg(inputs.vcpu_type.to_string())
        .arg("--guest-features")
        .arg(format!("{:#x}", inputs.guest_features))
        .arg("--ovmf")
        .arg(&inputs.firmware);
    if let Some(boot) = &inputs.direct_boot {
        command.arg("--kernel").arg(&boot.kernel);
        if let Some(initrd) = &boot.initrd {
            command.arg("--initrd").arg(initrd);
        }
        if let Some(append) = &boot.append {
            command.arg("--append").arg(append);
        }
    }
    let output = command.output().unwrap_or_else(|error| {
        panic!(
            "cannot run sev-snp-measure ({error}): install it with `pip install sev-snp-measure`"
        )
    });
    let stdout = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if output.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "{stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

fn debian_ovmf(path: &str) -> PathBuf {
    let path = PathBuf::from(path);
    assert!(
        path.is_file(),
        "Debian's OVMF {} is missing: apt-get install ovmf",
        path.display()
    );
    path
}

fn inputs(firmware: &Path, boot: Option<DirectBoot>, vcpus: u32, vcpu_type: &str) -> MeasureInputs {
    MeasureInputs {
        firmware: firmware.to_path_buf(),
        direct_boot: boot,
        vcpus,
        vcpu_type: VcpuType::parse(vcpu_type).unwrap(),
        guest_features: DEFAULT_GUEST_FEATURES,
    }
}

/// Deterministic stand-ins: the hashes table only hashes bytes, so any content works.
fn stand_in_boot(dir: &Path) -> DirectBoot {
    let kernel: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 253) as u8).collect();
    let initrd: Vec<u8> = (0..200_000u32).map(|i| (i * 13 % 241) as u8).collect();
    std::fs::write(dir.join("vmlinuz"), kernel).unwrap();
    std::fs::write(dir.join("initramfs.img"), initrd).unwrap();
    DirectBoot {
        kernel: dir.join("vmlinuz"),
        initrd: Some(dir.join("initramfs.img")),
        append: Some(APPEND.to_owned()),
    }
}

fn assert_agreement(case: &MeasureInputs) {
    let ours = measure(case).unwrap_or_else(|error| panic!("{case:?}: {error}"));
    let theirs = reference_digest(case).unwrap_or_else(|error| panic!("{case:?}: {error}"));
    assert_eq!(theirs.len(), 96, "sev-snp-measure printed {theirs:?}");
    assert_eq!(ours.launch_digest, theirs, "{case:?}");
}

#[test]
fn debian_ovmf_without_kernel_hashes_agrees_with_sev_snp_measure() {
    let firmware = debian_ovmf(DEBIAN_OVMF_2M);
    for vcpus in VCPU_COUNTS {
        for vcpu_type in VCPU_TYPES {
            assert_agreement(&inputs(&firmware, None, vcpus, vcpu_type));
        }
    }
}

/// sev-snp-measure silently measures an image without SEV metadata (as if it declared no
/// sections); such a firmware cannot boot as an SNP guest (no secrets or CPUID page, no
/// pre-validated memory), so veil refuses it rather than print a digest no guest will have.
#[test]
fn debian_4m_ovmf_without_sev_metadata_is_refused() {
    let firmware = debian_ovmf(DEBIAN_OVMF_4M);
    let case = inputs(&firmware, None, 1, "EPYC-v4");
    let error = measure(&case).unwrap_err();
    assert!(
        matches!(
            error,
            MeasureError::Firmware(ReadFirmwareError::NoSevMetadata { .. })
        ),
        "{error}"
    );
    assert!(error.to_string().contains("OVMF_CODE.fd"), "{error}");
    assert!(
        reference_digest(&case).is_ok(),
        "sev-snp-measure accepts it"
    );
}

#[test]
fn kernel_hashes_agree_with_sev_snp_measure_on_an_amdsev_shaped_firmware() {
    let dir = tempfile::tempdir().unwrap();
    let firmware = SyntheticFirmware::amdsev().write(dir.path());
    let boot = stand_in_boot(dir.path());
    for vcpus in VCPU_COUNTS {
        for vcpu_type in VCPU_TYPES {
            assert_agreement(&inputs(&firmware, Some(boot.clone()), vcpus, vcpu_type));
        }
    }
    // Without initrd and command line QEMU hashes empty inputs; both must agree on that too.
    let bare = DirectBoot {
        initrd: None,
        append: None,
        ..boot
    };
    assert_agreement(&inputs(&firmware, Some(bare), 1, "EPYC-v4"));
}

/// veil's own image, when one is built (`make image`, or `$VEIL_GUEST_IMAGE_DIR`), through
/// the AmdSev-shaped firmware: the real bzImage and initramfs bytes in the hashes table.
#[test]
fn veils_own_image_agrees_with_sev_snp_measure() {
    let dir = std::env::var_os("VEIL_GUEST_IMAGE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../build/image"));
    let kernel = dir.join(crate::VMLINUZ_FILE);
    let initrd = dir.join(crate::INITRAMFS_FILE);
    if !kernel.is_file() || !initrd.is_file() {
        eprintln!(
            "no guest image in {} (run `make image` or set VEIL_GUEST_IMAGE_DIR): covered by the stand-in test only",
            dir.display()
        );
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let firmware = SyntheticFirmware::amdsev().write(scratch.path());
    let boot = DirectBoot {
        kernel,
        initrd: Some(initrd),
        append: Some(APPEND.to_owned()),
    };
    for vcpus in VCPU_COUNTS {
        for vcpu_type in VCPU_TYPES {
            assert_agreement(&inputs(&firmware, Some(boot.clone()), vcpus, vcpu_type));
        }
    }
}

#[test]
fn other_guest_features_agree_with_sev_snp_measure() {
    let firmware = &debian_ovmf(DEBIAN_OVMF_2M);
    let mut case = inputs(firmware, None, 2, "EPYC-Milan");
    // SNP active + debug swap, as a recent host kernel enables by default.
    case.guest_features = 0x21;
    assert_agreement(&case);
}

#[test]
fn a_kernel_with_debian_ovmf_is_refused_as_sev_snp_measure_refuses_it() {
    let dir = tempfile::tempdir().unwrap();
    let case = inputs(
        &debian_ovmf(DEBIAN_OVMF_2M),
        Some(stand_in_boot(dir.path())),
        1,
        "EPYC-v4",
    );
    let error = measure(&case).unwrap_err();
    assert!(
        matches!(error, MeasureError::NoKernelHashesTable { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("AmdSevX64"), "{error}");
    let theirs = reference_digest(&case).unwrap_err();
    assert!(theirs.contains("SNP_KERNEL_HASHES"), "{theirs}");
}

#[test]
fn the_report_names_every_input_and_its_hash() {
    let dir = tempfile::tempdir().unwrap();
    let firmware = SyntheticFirmware::amdsev().write(dir.path());
    let boot = stand_in_boot(dir.path());
    let report = measure(&inputs(&firmware, Some(boot.clone()), 4, "EPYC-Milan")).unwrap();
    assert_eq!(report.launch_digest.len(), 96);
    assert_eq!(
        report.policy_condition(),
        format!(
            "claims.tee == 'snp' && claims.measurement == '{}'",
            report.launch_digest
        )
    );
    let kernel_sha256 = crate::digest::sha256_file(&boot.kernel).unwrap();
    assert_eq!(report.kernel.as_ref().unwrap().sha256, kernel_sha256);
    assert_eq!(
        report.kernel_hashes.as_ref().unwrap().kernel_sha256,
        kernel_sha256
    );
    assert_eq!(report.append.as_deref(), Some(APPEND));
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["vcpu_type"], "EPYC-Milan");
    assert_eq!(json["guest_features"], "0x1");
    assert_eq!(
        json["firmware_layout"]["sections"][3]["kind"],
        "kernel_hashes"
    );
}

#[test]
fn each_input_changes_the_digest() {
    let dir = tempfile::tempdir().unwrap();
    let firmware = SyntheticFirmware::amdsev().write(dir.path());
    let boot = stand_in_boot(dir.path());
    let base = inputs(&firmware, Some(boot.clone()), 1, "EPYC-v4");
    let digest = |case: &MeasureInputs| measure(case).unwrap().launch_digest;
    let reference = digest(&base);
    let mut other_cmdline = base.clone();
    other_cmdline.direct_boot = Some(DirectBoot {
        append: Some(format!("{APPEND} init=/bin/sh")),
        ..boot.clone()
    });
    let mut other_vcpus = base.clone();
    other_vcpus.vcpus = 2;
    let mut other_type = base.clone();
    other_type.vcpu_type = VcpuType::parse("EPYC-Milan").unwrap();
    let mut no_kernel = base.clone();
    no_kernel.direct_boot = None;
    for case in [other_cmdline, other_vcpus, other_type, no_kernel] {
        assert_ne!(digest(&case), reference, "{case:?}");
    }
    assert_eq!(digest(&base), reference, "the digest is deterministic");
}

#[test]
fn impossible_inputs_are_refused_before_computing() {
    let firmware = &debian_ovmf(DEBIAN_OVMF_2M);
    let zero = inputs(firmware, None, 0, "EPYC-v4");
    assert!(matches!(
        measure(&zero),
        Err(MeasureError::VcpuCount { vcpus: 0 })
    ));
    let dir = tempfile::tempdir().unwrap();
    let amdsev = SyntheticFirmware::amdsev().write(dir.path());
    let missing_kernel = DirectBoot {
        kernel: dir.path().join("no-such-vmlinuz"),
        initrd: None,
        append: None,
    };
    let error = measure(&inputs(&amdsev, Some(missing_kernel), 1, "EPYC-v4")).unwrap_err();
    assert!(error.to_string().contains("no-such-vmlinuz"), "{error}");
}
