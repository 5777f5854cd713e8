//! QEMU: its version, and whether it can launch SEV-SNP guests (the `sev-snp-guest` object,
//! QEMU 9.1 and later; Debian 12's QEMU 7.2 has only `sev-guest`, i.e. SEV and SEV-ES).

use crate::command::{first_line, version_line, CommandRunner};
use crate::finding::{Finding, Status};

/// The QEMU binary veil runs unless configured otherwise.
pub const DEFAULT_QEMU: &str = "qemu-system-x86_64";

/// The findings `qemu` (present, version) and `qemu-sev-snp` (has `sev-snp-guest`).
pub fn check(runner: &dyn CommandRunner, qemu: &str) -> Vec<Finding> {
    let version = match version_line(
        runner,
        "qemu",
        qemu,
        "install Debian's qemu-system-x86 package or set hypervisor.path",
    ) {
        Ok(version) => version,
        Err(finding) => {
            let snp = match finding.status {
                Status::Missing => Finding::missing("qemu-sev-snp", format!("no QEMU at `{qemu}`")),
                _ => Finding::unusable("qemu-sev-snp", format!("`{qemu}` does not run")),
            };
            return vec![finding, snp];
        }
    };
    vec![
        Finding::ok("qemu", format!("{qemu}: {version}")),
        check_snp_object(runner, qemu, &version),
    ]
}

fn check_snp_object(runner: &dyn CommandRunner, qemu: &str, version: &str) -> Finding {
    let objects = match runner.run(qemu, &["-object", "help"]) {
        Ok(output) if output.success => output.stdout,
        Ok(output) => {
            return Finding::unusable(
                "qemu-sev-snp",
                format!(
                    "`{qemu} -object help` failed: {}",
                    first_line(&output.stderr)
                ),
            )
        }
        Err(error) => return Finding::unusable("qemu-sev-snp", error.to_string()),
    };
    if has_object(&objects, "sev-snp-guest") {
        Finding::ok("qemu-sev-snp", "has the sev-snp-guest object")
    } else if has_object(&objects, "sev-guest") {
        Finding::missing(
            "qemu-sev-snp",
            format!("{version} has sev-guest (SEV, SEV-ES) but no sev-snp-guest: SNP needs QEMU 9.1 or later"),
        )
    } else {
        Finding::missing(
            "qemu-sev-snp",
            format!("{version} has neither sev-guest nor sev-snp-guest: SNP needs QEMU 9.1 or later built with SEV support"),
        )
    }
}

/// `-object help` lists one type per indented line.
fn has_object(listing: &str, name: &str) -> bool {
    listing.lines().any(|line| line.trim() == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::fake::FakeRunner;
    use crate::finding::Status;

    const QEMU_7_2_OBJECTS: &str =
        "List of user creatable objects:\n  authz-list\n  sev-guest\n  tls-creds-x509\n";

    #[test]
    fn debian_qemu_7_2_has_no_snp() {
        let runner = FakeRunner::default()
            .answer(
                "qemu --version",
                "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\nCopyright\n",
            )
            .answer("qemu -object help", QEMU_7_2_OBJECTS);
        let findings = check(&runner, "qemu");
        assert_eq!(findings[0].status, Status::Ok);
        assert!(findings[0].detail.contains("7.2.22"));
        assert_eq!(findings[1].status, Status::Missing);
        assert!(findings[1].detail.contains("9.1"), "{}", findings[1].detail);
    }

    #[test]
    fn a_qemu_with_sev_snp_guest_is_ok() {
        let runner = FakeRunner::default()
            .answer("qemu --version", "QEMU emulator version 9.2.0\n")
            .answer("qemu -object help", "  sev-guest\n  sev-snp-guest\n");
        assert!(check(&runner, "qemu").iter().all(Finding::is_ok));
    }

    #[test]
    fn no_qemu_says_what_to_install() {
        let findings = check(&FakeRunner::default(), "qemu");
        assert_eq!(findings[0].status, Status::Missing);
        assert!(findings[0].detail.contains("qemu-system-x86"));
        assert_eq!(findings[1].status, Status::Missing);
    }

    #[test]
    fn object_names_are_matched_whole() {
        assert!(!has_object("  sev-snp-guest-extra\n", "sev-snp-guest"));
        assert!(has_object("List:\n  sev-snp-guest\n", "sev-snp-guest"));
    }
}
