//! What this host can offer veil: the findings of `veil doctor`.
//!
//! Each check reads files below a root directory (`/` on the real host, a fake tree in tests)
//! and runs host tools through a [`CommandRunner`], so every verdict is unit-tested against
//! recorded hosts. [`doctor`] runs them all; [`snp_support`] is the subset that decides
//! whether an SEV-SNP guest can be launched, for the shim to refuse an SNP pod with the
//! doctor's reason.
//!
//! See `host/README.md` for the checks and what each verdict means.

#![forbid(unsafe_code)]

pub mod command;
pub mod containerd;
pub mod finding;
pub mod kvm;
pub mod memory;
pub mod nftables;
pub mod ovmf;
pub mod qemu;
pub mod sev;
pub mod systemd;
#[cfg(test)]
mod testing;
pub mod virtiofsd;

use std::path::Path;

use serde::Serialize;

pub use command::{CommandOutput, CommandRunner, RunCommandError, SystemRunner};
pub use finding::{Finding, Status};
pub use kvm::HostFacts;

/// Where the checks look: the root of the file tree and how to run host tools.
pub struct Probe<'a> {
    /// The directory standing in for `/`.
    pub root: &'a Path,
    /// Runs `qemu-system-x86_64`, `containerd`.
    pub runner: &'a dyn CommandRunner,
    /// The QEMU binary to examine (name on PATH or a path).
    pub qemu: &'a str,
}

/// All findings about one host, in a fixed order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// One finding per check.
    pub findings: Vec<Finding>,
}

impl Report {
    /// The finding of `check` (`kvm`, `sev-snp`, ...), if that check ran.
    pub fn get(&self, check: &str) -> Option<&Finding> {
        self.findings.iter().find(|finding| finding.check == check)
    }
}

/// The checks that must all be ok for an SEV-SNP launch, most fundamental first.
pub const SNP_CHECKS: [&str; 4] = ["kvm", "sev-snp", "sev-firmware", "qemu-sev-snp"];

/// Runs every check.
pub fn doctor(probe: &Probe<'_>) -> Report {
    let mut findings = vec![kvm::check(probe.root)];
    findings.extend(sev::check_generations(probe.root));
    findings.push(sev::check_firmware(probe.root));
    findings.push(check_vhost_vsock(probe.root));
    findings.push(check_vhost_net(probe.root));
    findings.push(virtiofsd::check(probe.root, probe.runner));
    findings.extend(qemu::check(probe.runner, probe.qemu));
    findings.extend(ovmf::check(probe.root));
    findings.extend(containerd::check(probe.runner, probe.root));
    findings.push(nftables::check(probe.runner));
    findings.push(systemd::check(probe.root));
    findings.push(memory::check(probe.root));
    for finding in &findings {
        tracing::debug!(check = finding.check, status = finding.status.as_str(), detail = %finding.detail, "host check");
    }
    Report { findings }
}

/// Runs every check on this host with the default QEMU.
pub fn doctor_this_host() -> Report {
    doctor(&Probe {
        root: Path::new("/"),
        runner: &SystemRunner::default(),
        qemu: qemu::DEFAULT_QEMU,
    })
}

/// Whether `probe`'s host can launch an SEV-SNP guest; if not, the doctor's reasons for each
/// failing check in [`SNP_CHECKS`], joined by `"; "`.
pub fn snp_support_at(probe: &Probe<'_>) -> Result<(), String> {
    let mut findings = vec![kvm::check(probe.root)];
    findings.extend(
        sev::check_generations(probe.root)
            .into_iter()
            .filter(|finding| finding.check == "sev-snp"),
    );
    findings.push(sev::check_firmware(probe.root));
    findings.extend(
        qemu::check(probe.runner, probe.qemu)
            .into_iter()
            .filter(|finding| finding.check == "qemu-sev-snp"),
    );
    refusal(&findings)
}

/// Whether this host can launch an SEV-SNP guest with QEMU `qemu`.
///
/// `Err` carries the doctor's reasons (KVM, kvm_amd `sev_snp`, `/dev/sev` firmware, QEMU's
/// `sev-snp-guest`), each saying what to do, for the shim to return when it refuses an SNP
/// pod. It runs `qemu -object help` (well under a second), so call it once per pod start.
pub fn snp_support_with_qemu(qemu: &str) -> Result<(), String> {
    snp_support_at(&Probe {
        root: Path::new("/"),
        runner: &SystemRunner::default(),
        qemu,
    })
}

/// Whether this host can launch an SEV-SNP guest with the default `qemu-system-x86_64`;
/// see [`snp_support_with_qemu`].
pub fn snp_support() -> Result<(), String> {
    snp_support_with_qemu(qemu::DEFAULT_QEMU)
}

fn refusal(findings: &[Finding]) -> Result<(), String> {
    let reasons: Vec<String> = findings
        .iter()
        .filter(|finding| !finding.is_ok())
        .map(|finding| format!("{}: {}", finding.check, finding.detail))
        .collect();
    if reasons.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "this host cannot launch SEV-SNP guests: {}",
            reasons.join("; ")
        ))
    }
}

/// The `vhost-vsock` finding: the host kernel's vsock device for guests.
pub fn check_vhost_vsock(root: &Path) -> Finding {
    check_device(
        root,
        "vhost-vsock",
        "dev/vhost-vsock",
        "(modprobe vhost_vsock): veil uses virtio-serial for the agent channel instead",
    )
}

/// The finding `vhost-net`: whether pod NICs can use the kernel's vhost-net data path (under
/// KVM; QEMU cannot use vhost under TCG).
pub fn check_vhost_net(root: &Path) -> Finding {
    check_device(
        root,
        "vhost-net",
        "dev/vhost-net",
        "(modprobe vhost_net): pod NICs use QEMU's own virtio-net emulation instead",
    )
}

/// Ok when the device node `device` (below `root`) exists; missing with `advice` otherwise.
fn check_device(root: &Path, check: &'static str, device: &str, advice: &str) -> Finding {
    let path = root.join(device);
    if path.exists() {
        Finding::ok(check, format!("{} exists", path.display()))
    } else {
        Finding::missing(check, format!("/{device} is absent {advice}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::fake::FakeRunner;
    use crate::testing::FakeTree;

    fn snp_host() -> FakeTree {
        FakeTree::new()
            .file("dev/kvm", "")
            .file("dev/sev", "")
            .file("proc/cpuinfo", "flags\t: fpu svm sev sev_es sev_snp\n")
            .file("sys/module/kvm_amd/parameters/sev", "Y\n")
            .file("sys/module/kvm_amd/parameters/sev_es", "Y\n")
            .file("sys/module/kvm_amd/parameters/sev_snp", "Y\n")
    }

    fn snp_qemu() -> FakeRunner {
        FakeRunner::default()
            .answer("qemu --version", "QEMU emulator version 9.2.0\n")
            .answer("qemu -object help", "  sev-guest\n  sev-snp-guest\n")
    }

    #[test]
    fn an_snp_host_with_an_snp_qemu_is_supported() {
        let tree = snp_host();
        let runner = snp_qemu();
        let probe = Probe {
            root: tree.root(),
            runner: &runner,
            qemu: "qemu",
        };
        assert_eq!(snp_support_at(&probe), Ok(()));
    }

    #[test]
    fn an_old_qemu_is_the_reason_for_refusal() {
        let tree = snp_host();
        let runner = FakeRunner::default()
            .answer("qemu --version", "QEMU emulator version 7.2.22\n")
            .answer("qemu -object help", "  sev-guest\n");
        let probe = Probe {
            root: tree.root(),
            runner: &runner,
            qemu: "qemu",
        };
        let reason = snp_support_at(&probe).unwrap_err();
        assert!(
            reason.contains("qemu-sev-snp") && reason.contains("9.1"),
            "{reason}"
        );
        assert!(!reason.contains("sev-firmware"), "{reason}");
    }

    #[test]
    fn vhost_net_is_found_by_its_device_node() {
        let with = FakeTree::new().file("dev/vhost-net", "");
        assert!(check_vhost_net(with.root()).is_ok());
        let without = check_vhost_net(FakeTree::new().root());
        assert!(!without.is_ok());
        assert!(
            without.detail.contains("modprobe vhost_net"),
            "{}",
            without.detail
        );
    }

    #[test]
    fn the_report_has_every_check_once_and_serializes() {
        let tree = snp_host();
        let runner = snp_qemu();
        let report = doctor(&Probe {
            root: tree.root(),
            runner: &runner,
            qemu: "qemu",
        });
        let checks: Vec<&str> = report.findings.iter().map(|f| f.check).collect();
        assert_eq!(
            checks,
            [
                "kvm",
                "sev",
                "sev-es",
                "sev-snp",
                "sev-firmware",
                "vhost-vsock",
                "vhost-net",
                "virtiofsd",
                "qemu",
                "qemu-sev-snp",
                "ovmf",
                "ovmf-amdsev",
                "containerd",
                "containerd-veil",
                "nft",
                "systemd-cgroup",
                "memory"
            ]
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["findings"][0]["check"], "kvm");
        assert_eq!(json["findings"][0]["status"], "ok");
    }
}
