//! Choosing QEMU's acceleration: KVM only where it runs a standard guest at full
//! speed. /dev/kvm alone proves nothing: on these development hosts it is PVM
//! (software nested virtualization) where a stock guest crawls through KVM's
//! instruction emulator and hangs in the kernel decompressor.

use veil_config::Accel;

/// The acceleration chosen and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccelChoice {
    /// Use KVM (else TCG).
    pub kvm: bool,
    /// Why, for the log.
    pub reason: String,
}

/// Facts about the host that decide whether KVM is usable: one decision shared with
/// `veil doctor`, which lives in `veil-host`.
pub use veil_host::HostFacts;

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
