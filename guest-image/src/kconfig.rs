//! Reading a kernel's `.config` (`/boot/config-<release>` in Debian's image package).

use std::collections::BTreeMap;

/// How the kernel was built with respect to one option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tristate {
    /// `=y`: built in.
    BuiltIn,
    /// `=m`: a loadable module.
    Module,
    /// `# CONFIG_X is not set`, or absent.
    Off,
}

/// A parsed kernel configuration.
#[derive(Debug, Clone, Default)]
pub struct KernelConfig {
    values: BTreeMap<String, String>,
}

impl KernelConfig {
    /// Parses `.config` text; comments and blank lines are skipped.
    pub fn parse(text: &str) -> Self {
        let values = text
            .lines()
            .filter(|line| line.starts_with("CONFIG_"))
            .filter_map(|line| line.split_once('='))
            .map(|(key, value)| (key.to_owned(), value.to_owned()))
            .collect();
        Self { values }
    }

    /// The value of `CONFIG_<name>` (`name` without the prefix), if set.
    pub fn value(&self, name: &str) -> Option<&str> {
        self.values
            .get(&format!("CONFIG_{name}"))
            .map(String::as_str)
    }

    /// Whether `CONFIG_<name>` is built in, a module, or off.
    pub fn tristate(&self, name: &str) -> Tristate {
        match self.value(name) {
            Some("y") => Tristate::BuiltIn,
            Some("m") => Tristate::Module,
            _ => Tristate::Off,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_tristates_and_strings() {
        let config = KernelConfig::parse(
            "# comment\nCONFIG_VIRTIO=m\nCONFIG_DEVTMPFS=y\n# CONFIG_MODULE_DECOMPRESS is not set\nCONFIG_MODULE_SIG_HASH=\"sha256\"\n",
        );
        assert_eq!(config.tristate("VIRTIO"), Tristate::Module);
        assert_eq!(config.tristate("DEVTMPFS"), Tristate::BuiltIn);
        assert_eq!(config.tristate("MODULE_DECOMPRESS"), Tristate::Off);
        assert_eq!(config.value("MODULE_SIG_HASH"), Some("\"sha256\""));
    }
}
