//! Is KVM usable for a standard guest? /dev/kvm alone proves nothing: on the development hosts
//! it is PVM (software nested virtualization), where a stock guest crawls through KVM's
//! instruction emulator and hangs in the kernel decompressor.
//!
//! [`HostFacts`] is the one place this is decided; the shim's acceleration choice
//! (`veil_shim::hypervisor::accel`) re-exports it.

use std::path::Path;

use crate::finding::Finding;

/// Facts about the host that decide whether KVM is usable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostFacts {
    /// /dev/kvm can be opened read-write.
    pub kvm_device_usable: bool,
    /// /sys/module/kvm_pvm exists (KVM is PVM, not hardware).
    pub kvm_is_pvm: bool,
    /// The CPU flags include vmx or svm.
    pub cpu_has_virtualization: bool,
}

impl HostFacts {
    /// Reads the facts from this host.
    pub fn probe() -> HostFacts {
        HostFacts::probe_at(Path::new("/"))
    }

    /// Reads the facts below `root` (a test can point it at a fake tree).
    pub fn probe_at(root: &Path) -> HostFacts {
        let kvm_device_usable = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(root.join("dev/kvm"))
            .is_ok();
        let kvm_is_pvm = root.join("sys/module/kvm_pvm").exists();
        let cpuinfo = std::fs::read_to_string(root.join("proc/cpuinfo")).unwrap_or_default();
        let cpu_has_virtualization = cpu_flags(&cpuinfo).any(|flag| flag == "vmx" || flag == "svm");
        HostFacts {
            kvm_device_usable,
            kvm_is_pvm,
            cpu_has_virtualization,
        }
    }

    /// Why KVM cannot run a standard guest at full speed here, if it cannot.
    pub fn kvm_unusable_reason(&self) -> Option<String> {
        if !self.kvm_device_usable {
            Some("/dev/kvm is missing or cannot be opened read-write".to_string())
        } else if self.kvm_is_pvm {
            Some("host KVM is PVM (software nested virtualization, /sys/module/kvm_pvm): a standard guest would run through the instruction emulator".to_string())
        } else if !self.cpu_has_virtualization {
            Some(
                "the CPU shows no vmx/svm flags: KVM has no hardware virtualization under it"
                    .to_string(),
            )
        } else {
            None
        }
    }
}

/// The words of the `flags` lines of a /proc/cpuinfo text.
pub(crate) fn cpu_flags(cpuinfo: &str) -> impl Iterator<Item = &str> {
    cpuinfo
        .lines()
        .filter(|line| line.starts_with("flags"))
        .filter_map(|line| line.split_once(':'))
        .flat_map(|(_, flags)| flags.split_whitespace())
}

/// The doctor's `kvm` finding for the host below `root`.
pub fn check(root: &Path) -> Finding {
    let facts = HostFacts::probe_at(root);
    match facts.kvm_unusable_reason() {
        None => Finding::ok("kvm", "/dev/kvm with hardware virtualization (vmx/svm)"),
        Some(reason) if !facts.kvm_device_usable => Finding::missing(
            "kvm",
            format!("{reason}: veil falls back to TCG (slow); load kvm_intel/kvm_amd or run as a user in the kvm group"),
        ),
        Some(reason) => Finding::unusable(
            "kvm",
            format!("{reason}: veil uses TCG (software emulation) for standard guests; use a host with hardware KVM for speed and SEV-SNP"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finding::Status;
    use crate::testing::FakeTree;

    #[test]
    fn probe_reads_a_fake_host_tree() {
        let tree = FakeTree::new()
            .dir("sys/module/kvm_pvm")
            .file("proc/cpuinfo", "flags\t: fpu sse svm\n");
        let facts = HostFacts::probe_at(tree.root());
        assert!(facts.cpu_has_virtualization && facts.kvm_is_pvm && !facts.kvm_device_usable);
        assert_eq!(check(tree.root()).status, Status::Missing);
    }

    #[test]
    fn pvm_is_unusable_for_standard_guests() {
        let tree = FakeTree::new()
            .file("dev/kvm", "")
            .dir("sys/module/kvm_pvm")
            .file("proc/cpuinfo", "flags\t: fpu sse\n");
        let finding = check(tree.root());
        assert_eq!(finding.status, Status::Unusable);
        assert!(finding.detail.contains("PVM"), "{}", finding.detail);
        assert!(finding.detail.contains("TCG"), "{}", finding.detail);
    }

    #[test]
    fn hardware_kvm_is_ok_and_missing_flags_are_unusable() {
        let hardware = FakeTree::new()
            .file("dev/kvm", "")
            .file("proc/cpuinfo", "flags\t: fpu vmx sse\n");
        assert!(check(hardware.root()).is_ok());
        let no_flags = FakeTree::new()
            .file("dev/kvm", "")
            .file("proc/cpuinfo", "flags\t: fpu sse\n");
        let finding = check(no_flags.root());
        assert_eq!(finding.status, Status::Unusable);
        assert!(finding.detail.contains("vmx/svm"), "{}", finding.detail);
    }

    #[test]
    fn flag_names_are_matched_whole() {
        // "svm_lock" style words and the "flags" label itself are not the svm flag.
        assert!(!cpu_flags("flags\t: fpu svm_lock\n").any(|flag| flag == "svm"));
        assert!(cpu_flags("flags\t: fpu svm\n").any(|flag| flag == "svm"));
    }
}
