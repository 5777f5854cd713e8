//! Choosing QEMU's acceleration: KVM only where it runs a standard guest at full
//! speed. /dev/kvm alone proves nothing: on these development hosts it is PVM
//! (software nested virtualization) where a stock guest crawls through KVM's
//! instruction emulator and hangs in the kernel decompressor.

use std::path::Path;

use veil_config::Accel;

/// The acceleration chosen and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccelChoice {
    /// Use KVM (else TCG).
    pub kvm: bool,
    /// Why, for the log.
    pub reason: String,
}

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
        let cpu_has_virtualization = cpuinfo
            .lines()
            .filter(|line| line.starts_with("flags"))
            .any(|line| {
                line.split_whitespace()
                    .any(|flag| flag == "vmx" || flag == "svm")
            });
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

/// Decides the acceleration for `wanted` on a host with `facts`. Forcing `kvm` on a host
/// where it is unusable is an error naming the reason.
pub fn choose(wanted: Accel, facts: &HostFacts) -> Result<AccelChoice, String> {
    let unusable = facts.kvm_unusable_reason();
    match (wanted, unusable) {
        (Accel::Tcg, _) => Ok(AccelChoice {
            kvm: false,
            reason: "tcg requested by configuration".to_string(),
        }),
        (Accel::Kvm, None) | (Accel::Auto, None) => Ok(AccelChoice {
            kvm: true,
            reason: "KVM with hardware virtualization".to_string(),
        }),
        (Accel::Kvm, Some(reason)) => Err(format!(
            "hypervisor.accel = \"kvm\" but KVM is unusable here: {reason}; set accel = \"auto\" or \"tcg\""
        )),
        (Accel::Auto, Some(reason)) => Ok(AccelChoice {
            kvm: false,
            reason: format!("TCG (software emulation) because {reason}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HARDWARE: HostFacts = HostFacts {
        kvm_device_usable: true,
        kvm_is_pvm: false,
        cpu_has_virtualization: true,
    };

    #[test]
    fn auto_uses_kvm_only_with_hardware_virtualization() {
        assert!(choose(Accel::Auto, &HARDWARE).expect("choice").kvm);
        let pvm = HostFacts {
            kvm_is_pvm: true,
            ..HARDWARE
        };
        let choice = choose(Accel::Auto, &pvm).expect("choice");
        assert!(!choice.kvm);
        assert!(choice.reason.contains("PVM"));
        let no_flags = HostFacts {
            cpu_has_virtualization: false,
            ..HARDWARE
        };
        assert!(!choose(Accel::Auto, &no_flags).expect("choice").kvm);
        assert!(
            !choose(Accel::Auto, &HostFacts::default())
                .expect("choice")
                .kvm
        );
    }

    #[test]
    fn forced_kvm_on_an_unusable_host_is_refused_with_the_reason() {
        let pvm = HostFacts {
            kvm_is_pvm: true,
            ..HARDWARE
        };
        let error = choose(Accel::Kvm, &pvm).expect_err("refused");
        assert!(error.contains("PVM") && error.contains("tcg"));
    }

    #[test]
    fn probe_reads_a_fake_host_tree() {
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(root.path().join("proc")).expect("mkdir");
        std::fs::create_dir_all(root.path().join("sys/module/kvm_pvm")).expect("mkdir");
        std::fs::write(root.path().join("proc/cpuinfo"), "flags\t: fpu sse svm\n").expect("write");
        let facts = HostFacts::probe_at(root.path());
        assert!(facts.cpu_has_virtualization && facts.kvm_is_pvm && !facts.kvm_device_usable);
    }

    #[test]
    fn this_machine_is_described_truthfully() {
        // Whatever the host, the reason must be consistent with the facts.
        let facts = HostFacts::probe();
        assert_eq!(
            facts.kvm_unusable_reason().is_none(),
            choose(Accel::Auto, &facts).expect("auto").kvm
        );
    }
}
