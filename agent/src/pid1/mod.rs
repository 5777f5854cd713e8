//! PID-1 duties: the guest's early filesystems, kernel modules, and power-off.
//!
//! These run before the API is served; a failure here cannot be reported to the
//! shim yet, so each step logs to the console (which the shim keeps as the VM's
//! console log) and the agent keeps going where it safely can.

mod filesystems;
mod modules;
mod switch_root;

pub use filesystems::{mount_early_filesystems, mount_shared_directory, MountError};
pub use modules::{load_modules, ModuleError, MODULES_LOAD_FILE};
pub use switch_root::{leave_initramfs, SwitchRootError};

/// Flushes filesystems and powers the VM off; QEMU exits when the guest does.
pub fn power_off() -> ! {
    nix::unistd::sync();
    let error = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    // Only reached when not PID 1 (tests, a misconfigured VM): there is nothing left to do.
    tracing::error!(?error, "power off failed; exiting instead");
    std::process::exit(1)
}
