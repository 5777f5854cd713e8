//! The doctor's findings on the machine running the tests are true: each verdict is compared
//! with what the machine really has, read here independently of the crate's checks.
//!
//! Needs QEMU installed (`apt-get install qemu-system-x86`); fails, not skips, without it.

use std::path::Path;
use std::process::Command;

use veil_host::{doctor_this_host, snp_support, Report, Status};

fn report() -> Report {
    doctor_this_host()
}

fn status(report: &Report, check: &str) -> Status {
    report
        .get(check)
        .unwrap_or_else(|| panic!("no `{check}` finding in {report:?}"))
        .status
}

fn cpu_has_virtualization_flag() -> bool {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").expect("read /proc/cpuinfo");
    cpuinfo
        .lines()
        .filter(|line| line.starts_with("flags"))
        .flat_map(str::split_whitespace)
        .any(|flag| flag == "vmx" || flag == "svm")
}

fn kvm_amd_snp_enabled() -> bool {
    std::fs::read_to_string("/sys/module/kvm_amd/parameters/sev_snp")
        .map(|value| matches!(value.trim(), "Y" | "1"))
        .unwrap_or(false)
}

fn qemu_output(args: &[&str]) -> String {
    let output = Command::new("qemu-system-x86_64")
        .args(args)
        .output()
        .expect(
            "qemu-system-x86_64 must be installed for this test: apt-get install qemu-system-x86",
        );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn kvm_verdict_matches_the_machine() {
    let report = report();
    let finding = report.get("kvm").expect("kvm finding");
    let device = Path::new("/dev/kvm").exists();
    let pvm = Path::new("/sys/module/kvm_pvm").exists();
    if !device {
        assert_eq!(finding.status, Status::Missing, "{finding:?}");
    } else if pvm {
        // The development machines: PVM KVM must be called unusable for standard guests.
        assert_eq!(finding.status, Status::Unusable, "{finding:?}");
        assert!(finding.detail.contains("PVM"), "{finding:?}");
    } else if !cpu_has_virtualization_flag() {
        assert_eq!(finding.status, Status::Unusable, "{finding:?}");
    } else {
        // /dev/kvm may exist but not be writable by this user.
        assert_ne!(finding.status, Status::Unusable, "{finding:?}");
    }
}

#[test]
fn snp_verdicts_match_the_machine() {
    let report = report();
    let kvm_amd = Path::new("/sys/module/kvm_amd").exists();
    let snp = kvm_amd_snp_enabled();
    assert_eq!(status(&report, "sev-snp") == Status::Ok, snp, "{report:?}");
    if !kvm_amd {
        assert_eq!(status(&report, "sev-snp"), Status::Missing);
    }
    assert_eq!(
        status(&report, "sev-firmware") == Status::Missing,
        !Path::new("/dev/sev").exists()
    );
    let has_snp_object = qemu_output(&["-object", "help"])
        .lines()
        .any(|line| line.trim() == "sev-snp-guest");
    assert_eq!(
        status(&report, "qemu-sev-snp") == Status::Ok,
        has_snp_object
    );
    // Without every piece, the shim's question must be answered no, with reasons.
    if !snp || !has_snp_object || report.get("kvm").is_some_and(|f| !f.is_ok()) {
        let reason = snp_support().expect_err("this host lacks SNP");
        assert!(reason.contains("cannot launch SEV-SNP"), "{reason}");
        if !snp {
            assert!(reason.contains("sev-snp: "), "{reason}");
        }
        if !has_snp_object {
            assert!(reason.contains("qemu-sev-snp: "), "{reason}");
        }
    }
}

#[test]
fn qemu_is_present_with_its_real_version() {
    let report = report();
    let version = qemu_output(&["--version"]);
    let first = version.lines().next().expect("qemu prints its version");
    let finding = report.get("qemu").expect("qemu finding");
    assert_eq!(finding.status, Status::Ok, "{finding:?}");
    assert!(
        finding.detail.contains(first.trim()),
        "{finding:?} vs {first}"
    );
}

#[test]
fn device_firmware_and_memory_verdicts_match_the_machine() {
    let report = report();
    assert_eq!(
        status(&report, "vhost-vsock") == Status::Ok,
        Path::new("/dev/vhost-vsock").exists()
    );
    let any_ovmf = veil_host::ovmf::FIRMWARE_CANDIDATES
        .iter()
        .any(|path| Path::new("/").join(path).is_file());
    assert_eq!(status(&report, "ovmf") == Status::Ok, any_ovmf);
    assert_eq!(
        status(&report, "containerd") == Status::Ok,
        Command::new("containerd")
            .arg("--version")
            .output()
            .is_ok_and(|output| output.status.success())
    );
    assert_ne!(status(&report, "memory"), Status::Missing);
    assert_eq!(
        status(&report, "virtiofsd") == Status::Ok,
        veil_host::virtiofsd::KNOWN_PATHS
            .iter()
            .any(|path| Path::new(path).exists())
    );
    assert_eq!(
        status(&report, "systemd-cgroup") == Status::Ok,
        !Path::new("/run/systemd/system").is_dir()
            || Path::new("/run/dbus/system_bus_socket").exists()
    );
}
