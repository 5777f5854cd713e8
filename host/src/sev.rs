//! SEV, SEV-ES and SEV-SNP on the host: the kvm_amd module parameters that say whether KVM
//! offers them, and the AMD secure processor's device `/dev/sev` with its firmware version.

use std::path::Path;

use crate::finding::Finding;

/// The kvm_amd parameter directory, relative to the root.
const KVM_AMD_PARAMETERS: &str = "sys/module/kvm_amd/parameters";
/// The AMD secure processor device, relative to the root.
const SEV_DEVICE: &str = "dev/sev";

/// One SEV generation and the kvm_amd parameter that enables it.
struct Generation {
    check: &'static str,
    parameter: &'static str,
    name: &'static str,
    /// What else the host needs when the parameter is missing.
    needs: &'static str,
}

const GENERATIONS: [Generation; 3] = [
    Generation {
        check: "sev",
        parameter: "sev",
        name: "SEV",
        needs: "an AMD EPYC CPU with SEV enabled in the BIOS (SMEE, SEV ASIDs)",
    },
    Generation {
        check: "sev-es",
        parameter: "sev_es",
        name: "SEV-ES",
        needs: "an AMD EPYC CPU with SEV-ES enabled in the BIOS",
    },
    Generation {
        check: "sev-snp",
        parameter: "sev_snp",
        name: "SEV-SNP",
        needs: "an AMD EPYC Milan or later with SNP and the RMP table enabled in the BIOS, and a host kernel with SNP host support (Linux 6.11 or later)",
    },
];

/// The findings `sev`, `sev-es` and `sev-snp` for the host below `root`.
pub fn check_generations(root: &Path) -> Vec<Finding> {
    let module = root.join("sys/module/kvm_amd");
    GENERATIONS
        .iter()
        .map(|generation| {
            if !module.exists() {
                return Finding::missing(
                    generation.check,
                    format!(
                        "kvm_amd is not loaded (/sys/module/kvm_amd absent): {} needs {}",
                        generation.name, generation.needs
                    ),
                );
            }
            check_parameter(root, generation)
        })
        .collect()
}

fn check_parameter(root: &Path, generation: &Generation) -> Finding {
    let path = root.join(KVM_AMD_PARAMETERS).join(generation.parameter);
    match std::fs::read_to_string(&path) {
        Err(_) => Finding::missing(
            generation.check,
            format!(
                "kvm_amd has no `{}` parameter: this host kernel cannot run {} guests; it needs {}",
                generation.parameter, generation.name, generation.needs
            ),
        ),
        Ok(value) if parameter_enabled(&value) => Finding::ok(
            generation.check,
            format!("kvm_amd.{}={}", generation.parameter, value.trim()),
        ),
        Ok(value) => Finding::unusable(
            generation.check,
            format!(
                "kvm_amd.{}={}: KVM does not offer {}; it needs {}, then load kvm_amd with {}=1 (see dmesg for `SEV` lines)",
                generation.parameter,
                value.trim(),
                generation.name,
                generation.needs,
                generation.parameter
            ),
        ),
    }
}

/// kvm_amd prints booleans as `Y`/`N` and integer parameters as `1`/`0`.
fn parameter_enabled(value: &str) -> bool {
    matches!(value.trim(), "Y" | "y" | "1")
}

/// The `sev-firmware` finding: /dev/sev and, on the real host, the SNP firmware's version as
/// the `sev` crate's firmware API reports it.
pub fn check_firmware(root: &Path) -> Finding {
    let device = root.join(SEV_DEVICE);
    if !device.exists() {
        return Finding::missing(
            "sev-firmware",
            "/dev/sev is absent: no AMD secure processor is exposed (ccp module not loaded, or not an SEV-capable AMD host)",
        );
    }
    if root != Path::new("/") {
        // The sev crate opens /dev/sev itself; a fake tree can only say the node exists.
        return Finding::ok(
            "sev-firmware",
            format!(
                "{} exists (firmware not queried below a test root)",
                device.display()
            ),
        );
    }
    query_snp_firmware()
}

#[cfg(target_os = "linux")]
fn query_snp_firmware() -> Finding {
    let mut firmware = match sev::firmware::host::Firmware::open() {
        Ok(firmware) => firmware,
        Err(error) => {
            return Finding::unusable(
                "sev-firmware",
                format!("/dev/sev exists but cannot be opened: {error} (run as root or grant access to /dev/sev)"),
            )
        }
    };
    match firmware.snp_platform_status() {
        Ok(status) => Finding::ok(
            "sev-firmware",
            format!(
                "SNP firmware {}.{} build {}, reported TCB bootloader {} tee {} snp {} microcode {}",
                status.version.0,
                status.version.1,
                status.build_id,
                status.reported_tcb_version.bootloader,
                status.reported_tcb_version.tee,
                status.reported_tcb_version.snp,
                status.reported_tcb_version.microcode
            ),
        ),
        Err(error) => Finding::unusable(
            "sev-firmware",
            format!("/dev/sev answers but SNP_PLATFORM_STATUS failed: {error} (SNP not initialized: enable SNP in the BIOS and kvm_amd.sev_snp=1)"),
        ),
    }
}

#[cfg(not(target_os = "linux"))]
fn query_snp_firmware() -> Finding {
    Finding::missing("sev-firmware", "SEV firmware queries need Linux")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finding::Status;
    use crate::testing::FakeTree;

    fn status_of(findings: &[Finding], check: &str) -> Status {
        findings
            .iter()
            .find(|finding| finding.check == check)
            .map(|finding| finding.status)
            .expect("finding")
    }

    #[test]
    fn no_kvm_amd_means_everything_is_missing() {
        let tree = FakeTree::new();
        let findings = check_generations(tree.root());
        assert_eq!(findings.len(), 3);
        assert!(findings.iter().all(|f| f.status == Status::Missing));
        assert!(findings[2].detail.contains("kvm_amd is not loaded"));
    }

    #[test]
    fn parameters_decide_each_generation() {
        let tree = FakeTree::new()
            .file("sys/module/kvm_amd/parameters/sev", "Y\n")
            .file("sys/module/kvm_amd/parameters/sev_es", "1\n")
            .file("sys/module/kvm_amd/parameters/sev_snp", "N\n");
        let findings = check_generations(tree.root());
        assert_eq!(status_of(&findings, "sev"), Status::Ok);
        assert_eq!(status_of(&findings, "sev-es"), Status::Ok);
        assert_eq!(status_of(&findings, "sev-snp"), Status::Unusable);
        assert!(
            findings[2].detail.contains("sev_snp=1"),
            "{}",
            findings[2].detail
        );
    }

    #[test]
    fn an_old_kernel_without_the_snp_parameter_says_so() {
        let tree = FakeTree::new().file("sys/module/kvm_amd/parameters/sev", "Y\n");
        let findings = check_generations(tree.root());
        assert_eq!(status_of(&findings, "sev-snp"), Status::Missing);
        assert!(
            findings[2].detail.contains("6.11"),
            "{}",
            findings[2].detail
        );
    }

    #[test]
    fn the_sev_device_is_looked_up_below_the_root() {
        assert_eq!(
            check_firmware(FakeTree::new().root()).status,
            Status::Missing
        );
        let tree = FakeTree::new().file("dev/sev", "");
        assert_eq!(check_firmware(tree.root()).status, Status::Ok);
    }
}
