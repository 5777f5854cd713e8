//! Where the init helper is loaded in memory.
//!
//! Each container create and exec runs a fresh copy of the agent binary (the helper). Under
//! QEMU's TCG, translated guest code is looked up by virtual address: with address-space
//! randomization every helper lands somewhere new, and QEMU translates all the code it runs
//! again. Loading every helper at one address lets later helpers reuse that translation.
//! Measured under TCG on the 2-core development machine (A/B, same image otherwise): a
//! `ctr task exec` round trip took 103 ms median against 182 ms, and a pod's second
//! container was created in the guest in about 85 ms against 155 ms. The first helper of
//! a VM gains nothing: there is nothing to reuse yet.
//!
//! The switch applies to the helpers only. The container's own program gets randomization
//! back before it is exec'd ([`restore_for_program`]), so what runs in a container is laid
//! out as on any Linux host. Under KVM (and always under SEV-SNP) nothing is translated and
//! the switch is not used: there the helper, which reads the host-provided rootfs before
//! exec, keeps randomization too.

use nix::errno::Errno;
use nix::sys::personality::{self, Persona};

/// Makes the processes this process execs from now on (the helpers) load without
/// address-space randomization. Call before any thread starts: threads copy the setting
/// when they are created.
pub fn fix_helper_addresses() -> Result<(), Errno> {
    let current = personality::get()?;
    personality::set(current | Persona::ADDR_NO_RANDOMIZE).map(|_| ())
}

/// Clears [`fix_helper_addresses`]'s switch in the process about to exec the container's
/// program (it is inherited through fork and exec). A no-op when it was never set.
pub(crate) fn restore_for_program() -> Result<(), Errno> {
    let current = personality::get()?;
    if current.contains(Persona::ADDR_NO_RANDOMIZE) {
        personality::set(current - Persona::ADDR_NO_RANDOMIZE)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `check` in a forked child, so that the test process's own setting (shared by
    /// every test) is untouched; returns the child's exit code.
    fn in_child(check: fn() -> i32) -> i32 {
        // SAFETY: the child only makes personality(2) calls and _exits.
        match unsafe { nix::unistd::fork() }.expect("fork") {
            nix::unistd::ForkResult::Child => {
                let code = check();
                // SAFETY: _exit ends the forked child without running the test harness's
                // atexit handlers or flushing its buffers.
                unsafe { libc::_exit(code) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                match nix::sys::wait::waitpid(child, None).expect("wait") {
                    nix::sys::wait::WaitStatus::Exited(_, code) => code,
                    other => panic!("child ended with {other:?}"),
                }
            }
        }
    }

    fn randomized() -> bool {
        !personality::get()
            .expect("personality")
            .contains(Persona::ADDR_NO_RANDOMIZE)
    }

    #[test]
    fn the_switch_is_set_for_helpers_and_cleared_for_the_program() {
        let code = in_child(|| {
            if fix_helper_addresses().is_err() || randomized() {
                return 1;
            }
            if restore_for_program().is_err() || !randomized() {
                return 2;
            }
            0
        });
        assert_eq!(code, 0);
    }

    #[test]
    fn restoring_without_the_switch_changes_nothing() {
        let code = in_child(|| {
            let before = personality::get().map(|p| p.bits());
            if restore_for_program().is_err() || personality::get().map(|p| p.bits()) != before {
                return 1;
            }
            0
        });
        assert_eq!(code, 0);
    }
}
