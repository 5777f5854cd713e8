//! The veil configuration file install writes: the shipped defaults (every key documented)
//! with the guest kernel and initramfs pointing at the installed image.

use std::path::{Path, PathBuf};

use toml_edit::{DocumentMut, Item, Value};
use veil_config::{Config, ConfigError, DEFAULT_CONFIG_TOML};

/// Rendering the configuration failed (a bug in the shipped defaults or an unusable path).
#[derive(Debug, thiserror::Error)]
pub enum RenderRuntimeConfigError {
    /// The shipped defaults are not TOML or lack `[hypervisor]`.
    #[error(
        "the built-in configuration.toml cannot be edited: {0}; this is a veil bug, report it"
    )]
    Defaults(String),
    /// The result does not load in the shim.
    #[error("the configuration for the installed image is invalid: {0}")]
    Invalid(#[from] ConfigError),
}

/// The text of the configuration for a guest image installed at `kernel` and `initrd`, to be
/// booted on the QEMU `machine` its kernel needs; with `snp_firmware`, for SEV-SNP guests
/// booted through that OVMF build.
pub fn render(
    kernel: &Path,
    initrd: &Path,
    machine: &str,
    snp_firmware: Option<&Path>,
) -> Result<String, RenderRuntimeConfigError> {
    let mut doc: DocumentMut =
        DEFAULT_CONFIG_TOML
            .parse()
            .map_err(|error: toml_edit::TomlError| {
                RenderRuntimeConfigError::Defaults(error.to_string())
            })?;
    let hypervisor = doc
        .get_mut("hypervisor")
        .and_then(Item::as_table_mut)
        .ok_or_else(|| RenderRuntimeConfigError::Defaults("no [hypervisor] table".to_string()))?;
    for (key, value) in [
        ("kernel", kernel.to_string_lossy()),
        ("initrd", initrd.to_string_lossy()),
        ("machine", machine.into()),
    ] {
        set_keeping_comments(hypervisor, key, &value);
    }
    if let Some(firmware) = snp_firmware {
        set_keeping_comments(hypervisor, "confidential_guest", "snp");
        set_keeping_comments(hypervisor, "firmware", &firmware.to_string_lossy());
    }
    let text = doc.to_string();
    // The shim must be able to load what was installed; check it here, not at first pod.
    Config::parse(&text, Path::new(veil_config::DEFAULT_CONFIG_PATH))?;
    Ok(text)
}

/// Replaces the value of `key` while keeping the comment lines above it and the spacing.
fn set_keeping_comments(table: &mut toml_edit::Table, key: &str, wanted: &str) {
    let Some(item) = table.get_mut(key) else {
        table.insert(key, toml_edit::value(wanted));
        return;
    };
    if item.as_str() == Some(wanted) {
        return;
    }
    let decor = item.as_value().map(|value| value.decor().clone());
    let mut value = Value::from(wanted);
    if let Some(decor) = decor {
        *value.decor_mut() = decor;
    }
    *item = Item::Value(value);
}

/// The machine an SEV-SNP guest needs: OVMF on PCI.
pub const SNP_MACHINE: &str = "q35";

/// Where the installed image's kernel and initramfs are.
pub fn image_paths(share_dir: &Path) -> (PathBuf, PathBuf) {
    (
        share_dir.join(veil_guest_image::VMLINUX_FILE),
        share_dir.join(veil_guest_image::INITRAMFS_FILE),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_prefix_gives_the_shipped_file_unchanged() {
        let (kernel, initrd) = image_paths(Path::new("/usr/local/share/veil"));
        let text = render(&kernel, &initrd, veil_config::DEFAULT_MACHINE, None).expect("render");
        assert_eq!(text, DEFAULT_CONFIG_TOML);
    }

    #[test]
    fn an_snp_install_configures_snp_guests_the_shim_accepts() {
        let share = Path::new("/usr/local/share/veil");
        let kernel = share.join(veil_guest_image::VMLINUZ_FILE);
        let initrd = share.join(veil_guest_image::INITRAMFS_FILE);
        let firmware = Path::new("/usr/local/share/veil/OVMF-AmdSev.fd");
        let text = render(&kernel, &initrd, SNP_MACHINE, Some(firmware)).expect("render");
        let config = Config::parse(&text, Path::new("c.toml")).expect("the shim loads it");
        assert_eq!(
            config.hypervisor.confidential_guest,
            veil_config::ConfidentialGuest::Snp
        );
        assert_eq!(config.hypervisor.machine, "q35");
        assert_eq!(config.hypervisor.kernel, kernel);
        assert_eq!(config.hypervisor.firmware.as_deref(), Some(firmware));
    }

    #[test]
    fn the_stock_kernel_image_gets_the_machine_it_boots_on() {
        let (kernel, initrd) = image_paths(Path::new("/usr/local/share/veil"));
        let machine = veil_guest_image::KernelChoice::Debian.machine();
        let text = render(&kernel, &initrd, machine, None).expect("render");
        let config = Config::parse(&text, Path::new("c.toml")).expect("loads");
        assert_eq!(config.hypervisor.machine, "q35");
        let minimal = veil_guest_image::KernelChoice::Minimal.machine();
        assert_eq!(minimal, veil_config::DEFAULT_MACHINE);
    }

    #[test]
    fn another_prefix_changes_only_the_two_paths() {
        let (kernel, initrd) = image_paths(Path::new("/opt/veil/share/veil"));
        let text = render(&kernel, &initrd, veil_config::DEFAULT_MACHINE, None).expect("render");
        let config = Config::parse(&text, Path::new("c.toml")).expect("loads");
        assert_eq!(config.hypervisor.kernel, kernel);
        assert_eq!(config.hypervisor.initrd, initrd);
        let differing: Vec<(&str, &str)> = text
            .lines()
            .zip(DEFAULT_CONFIG_TOML.lines())
            .filter(|(a, b)| a != b)
            .collect();
        assert_eq!(differing.len(), 2, "{differing:?}");
        assert_eq!(text.lines().count(), DEFAULT_CONFIG_TOML.lines().count());
    }
}
