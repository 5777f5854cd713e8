//! veil runtime configuration: the TOML schema (see `configs/configuration.toml`),
//! its defaults, loading and validation.
//!
//! The shim finds the file by the containerd runtime option `ConfigPath`, then the
//! [`CONFIG_ENV`] environment variable, then [`DEFAULT_CONFIG_PATH`]; a missing file at
//! the default path means "all defaults", a missing file named explicitly is an error.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Where `veil node install` puts the configuration and the shim looks last.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/veil/configuration.toml";
/// Environment variable naming a configuration file.
pub const CONFIG_ENV: &str = "VEIL_CONFIG";
/// The default configuration file, as shipped (also the documentation of every key).
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../configuration.toml");

/// Loading or validating the configuration failed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    // The causes are in the messages and not also `source()`s: a chain printer (anyhow's
    // "Caused by") would repeat them, while the shim's log lines show the message alone.
    /// The file could not be read.
    #[error("read veil configuration {path}: {cause}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        cause: std::io::Error,
    },
    /// The file is not valid TOML for the schema.
    #[error(
        "parse veil configuration {path}: {cause}; see configs/configuration.toml for every key"
    )]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        cause: Box<toml::de::Error>,
    },
    /// A value is out of range or inconsistent.
    #[error("invalid veil configuration {path}: {field}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The offending key.
        field: &'static str,
        /// What is wrong and what to do.
        reason: String,
    },
}

/// Which acceleration QEMU uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// KVM when it runs a standard guest at full speed, else TCG.
    #[default]
    Auto,
    /// Hardware virtualization (fails when KVM is unusable).
    Kvm,
    /// Software emulation.
    Tcg,
}

/// How the containers' files (rootfs, bind mounts) cross into the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SharedFs {
    /// virtio-fs where a virtiofsd is installed (and the guest is not SEV-SNP), else virtio-9p.
    #[default]
    Auto,
    /// virtio-fs: a virtiofsd per VM serves the share (fails without one).
    VirtioFs,
    /// virtio-9p, served by QEMU itself: needs nothing else, slower on metadata.
    #[serde(rename = "virtio-9p")]
    Virtio9p,
}

/// Confidential-computing technology for the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ConfidentialGuest {
    /// An ordinary VM.
    #[default]
    None,
    /// AMD SEV-SNP.
    Snp,
}

/// `[hypervisor]`: how the pod VM is started.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HypervisorConfig {
    /// QEMU binary.
    pub path: PathBuf,
    /// Guest kernel.
    pub kernel: PathBuf,
    /// Guest initramfs (with veil-agent as /init).
    pub initrd: PathBuf,
    /// QEMU machine type.
    pub machine: String,
    /// Acceleration.
    pub accel: Accel,
    /// Guest memory in MiB before the pod's own: a pod's VM gets this (or its
    /// `io.veil.vm.memory-mib`) plus its containers' memory limits.
    pub memory_mib: u32,
    /// Guest vCPUs before the pod's own: a pod's VM gets this (or its `io.veil.vm.vcpus`)
    /// plus its containers' CPU limits, rounded up.
    pub vcpus: u32,
    /// The most memory (MiB) a pod's VM may get; 0: the host's memory.
    pub max_memory_mib: u32,
    /// The most vCPUs a pod's VM may get; 0: the host's CPUs.
    pub max_vcpus: u32,
    /// Extra kernel command-line words.
    pub kernel_params: String,
    /// Show kernel messages on the console.
    pub debug_console: bool,
    /// How the containers' files cross into the VM.
    pub shared_fs: SharedFs,
    /// The virtiofsd binary; unset: the first of veil-host's `virtiofsd::KNOWN_PATHS` that exists.
    pub virtiofsd: Option<PathBuf>,
    /// Pod NICs use the host kernel's vhost-net data path when QEMU runs under KVM and
    /// /dev/vhost-net exists (QEMU cannot use vhost under TCG); `false` keeps QEMU's own
    /// virtio-net emulation everywhere.
    pub vhost_net: bool,
    /// Seconds to wait for the agent after QEMU starts.
    pub boot_timeout_secs: u64,
    /// Under TCG only: the size (MiB) of QEMU's translated-code cache (`-accel
    /// tcg,tb-size=`); 0: QEMU's own default (1 GiB on 64-bit hosts with 8 GiB or more). QEMU
    /// keeps the cache resident as it fills, and it fills with every new program the guest
    /// runs, so an unbounded one takes a long-lived pod's QEMU far past its overhead.
    pub tcg_cache_mib: u32,
    /// Confidential guest technology.
    pub confidential_guest: ConfidentialGuest,
    /// SEV-SNP only: the OVMF firmware QEMU boots (`-bios`), an AmdSev build
    /// (OvmfPkg/AmdSev/AmdSevX64.dsc) whose SEV hashes table lets the launch measurement
    /// cover kernel, initramfs and command line. Required when `confidential_guest = "snp"`.
    pub firmware: Option<PathBuf>,
    /// SEV-SNP only: the vCPU model QEMU presents (`-cpu`); part of the launch measurement.
    pub vcpu_type: String,
    /// SEV-SNP only: the C-bit position in a guest page-table entry, for hosts whose CPUID
    /// the shim cannot read (CPUID 0x8000001F wins where it can).
    pub cbitpos: Option<u32>,
}

/// The vCPU model of an SEV-SNP guest unless configured: the one Kata and AMD's own
/// launch scripts use, which QEMU measures on Milan and later.
pub const DEFAULT_SNP_VCPU_TYPE: &str = "EPYC-v4";

/// The default TCG code cache, MiB: see `HypervisorConfig::tcg_cache_mib`.
pub const DEFAULT_TCG_CACHE_MIB: u32 = 64;

/// The default QEMU machine: microvm (virtio-mmio, no PCI bus or firmware to probe) with
/// ACPI, on which veil's minimal kernel boots fastest. Debian's stock kernel (the fallback
/// image) runs on `q35`, which `veil node install` sets for it; so does an SEV-SNP guest (OVMF).
pub const DEFAULT_MACHINE: &str = "microvm,acpi=on";

impl Default for HypervisorConfig {
    fn default() -> Self {
        HypervisorConfig {
            path: PathBuf::from("/usr/bin/qemu-system-x86_64"),
            kernel: PathBuf::from("/usr/local/share/veil/vmlinux"),
            initrd: PathBuf::from("/usr/local/share/veil/initramfs.img"),
            machine: DEFAULT_MACHINE.to_string(),
            accel: Accel::Auto,
            memory_mib: 512,
            vcpus: 1,
            max_memory_mib: 0,
            max_vcpus: 0,
            kernel_params: String::new(),
            debug_console: false,
            shared_fs: SharedFs::Auto,
            virtiofsd: None,
            vhost_net: true,
            boot_timeout_secs: 90,
            tcg_cache_mib: DEFAULT_TCG_CACHE_MIB,
            confidential_guest: ConfidentialGuest::None,
            firmware: None,
            vcpu_type: DEFAULT_SNP_VCPU_TYPE.to_string(),
            cbitpos: None,
        }
    }
}

/// How the shim reaches the guest agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AgentChannel {
    /// vsock where the host has /dev/vhost-vsock, else virtio-serial.
    #[default]
    Auto,
    /// A virtio-serial port backed by a Unix socket (needs nothing from the host kernel).
    Serial,
    /// AF_VSOCK through the host's vhost-vsock.
    Vsock,
}

/// `[agent]`: the guest agent.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// tracing filter for the agent.
    pub log_level: String,
    /// The agent channel.
    pub channel: AgentChannel,
    /// Timeout of each short shim -> agent request.
    pub request_timeout_secs: u64,
    /// How long a container start may wait for the pod's model delivery (fetch, attest,
    /// decrypt, unpack) before the shim gives up on it.
    pub delivery_timeout_secs: u64,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            log_level: "info".to_string(),
            channel: AgentChannel::Auto,
            request_timeout_secs: 60,
            delivery_timeout_secs: 1800,
        }
    }
}

/// How the rootfs of a container that may read a delivered model (its owner approves the
/// volume's readers) reaches the guest, which must verify it against the owner's digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ReaderRootfs {
    /// The shim makes a read-only erofs image and a dm-verity hash tree of it (needs
    /// mkfs.erofs and veritysetup on the node); the guest reads it in place through
    /// dm-verity, so the image costs no guest memory. A guest that cannot mount it copies.
    #[default]
    Image,
    /// The guest copies the shared rootfs into its memory and verifies the copy.
    Copy,
}

/// `[runtime]`: the shim itself.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// tracing filter for the shim.
    pub log_level: String,
    /// Per-sandbox state directory root.
    pub state_dir: PathBuf,
    /// How an approved reader's rootfs reaches the guest.
    pub reader_rootfs: ReaderRootfs,
    /// MiB of reader rootfs images that no container uses any more the node keeps under
    /// `state_dir` for the next pod of the same image; 0 keeps an image only while a
    /// container uses it.
    pub image_cache_mib: u64,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            log_level: "info".to_string(),
            state_dir: PathBuf::from("/run/veil"),
            reader_rootfs: ReaderRootfs::Image,
            image_cache_mib: 4096,
        }
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[hypervisor]`.
    pub hypervisor: HypervisorConfig,
    /// `[agent]`.
    pub agent: AgentConfig,
    /// `[runtime]`.
    pub runtime: RuntimeConfig,
}

impl Config {
    /// Parses and validates `text`, naming `path` in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|cause| ConfigError::Parse {
            path: path.to_path_buf(),
            cause: Box::new(cause),
        })?;
        config.validate(path)?;
        Ok(config)
    }

    /// Reads, parses and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
            path: path.to_path_buf(),
            cause,
        })?;
        Config::parse(&text, path)
    }

    /// Finds and loads the configuration: `explicit` (the runtime option `ConfigPath`),
    /// else `$VEIL_CONFIG`, else the default path (whose absence means defaults).
    pub fn discover(explicit: Option<&Path>) -> Result<(Config, Option<PathBuf>), ConfigError> {
        if let Some(path) = explicit.filter(|p| !p.as_os_str().is_empty()) {
            return Ok((Config::load(path)?, Some(path.to_path_buf())));
        }
        if let Some(path) = std::env::var_os(CONFIG_ENV).filter(|p| !p.is_empty()) {
            let path = PathBuf::from(path);
            return Ok((Config::load(&path)?, Some(path)));
        }
        let default = Path::new(DEFAULT_CONFIG_PATH);
        if default.exists() {
            return Ok((Config::load(default)?, Some(default.to_path_buf())));
        }
        Ok((Config::default(), None))
    }

    /// Checks ranges and consistency.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |field, reason: &str| ConfigError::Invalid {
            path: path.to_path_buf(),
            field,
            reason: reason.to_string(),
        };
        let h = &self.hypervisor;
        if !(64..=1 << 20).contains(&h.memory_mib) {
            return Err(invalid(
                "hypervisor.memory_mib",
                "must be between 64 and 1048576 MiB",
            ));
        }
        if !(1..=256).contains(&h.vcpus) {
            return Err(invalid("hypervisor.vcpus", "must be between 1 and 256"));
        }
        if h.max_memory_mib != 0 && h.max_memory_mib < h.memory_mib {
            return Err(invalid(
                "hypervisor.max_memory_mib",
                "must be 0 (the host's memory) or at least memory_mib",
            ));
        }
        if h.max_vcpus != 0 && !(h.vcpus..=256).contains(&h.max_vcpus) {
            return Err(invalid(
                "hypervisor.max_vcpus",
                "must be 0 (the host's CPUs) or between vcpus and 256",
            ));
        }
        if h.boot_timeout_secs == 0 {
            return Err(invalid(
                "hypervisor.boot_timeout_secs",
                "must be at least 1",
            ));
        }
        if h.machine.is_empty() || h.machine.contains(char::is_whitespace) {
            return Err(invalid(
                "hypervisor.machine",
                "must be a QEMU machine type such as q35",
            ));
        }
        if h.kernel_params.contains("veil.") {
            return Err(invalid(
                "hypervisor.kernel_params",
                "veil.* words are set by the shim itself; remove them",
            ));
        }
        if h.confidential_guest == ConfidentialGuest::Snp {
            validate_snp(h).map_err(|(field, reason)| invalid(field, &reason))?;
        }
        if self.agent.request_timeout_secs == 0 {
            return Err(invalid("agent.request_timeout_secs", "must be at least 1"));
        }
        if self.agent.delivery_timeout_secs == 0 {
            return Err(invalid("agent.delivery_timeout_secs", "must be at least 1"));
        }
        if !self.runtime.state_dir.is_absolute() {
            return Err(invalid("runtime.state_dir", "must be an absolute path"));
        }
        Ok(())
    }
}

/// Whether `machine` (QEMU's `-machine` value) is a q35 machine type.
pub fn is_q35(machine: &str) -> bool {
    let kind = machine.split(',').next().unwrap_or_default();
    kind == "q35" || kind.starts_with("pc-q35-")
}

/// The keys an SEV-SNP guest needs, as (field, reason) for [`ConfigError::Invalid`].
fn validate_snp(h: &HypervisorConfig) -> Result<(), (&'static str, String)> {
    if !is_q35(&h.machine) {
        return Err((
            "hypervisor.machine",
            format!(
                "{:?} cannot run an SEV-SNP guest: SNP boots through OVMF on a PCI machine; set machine = \"q35\" (microvm has neither)",
                h.machine
            ),
        ));
    }
    if h.firmware.as_ref().is_none_or(|f| f.as_os_str().is_empty()) {
        return Err((
            "hypervisor.firmware",
            "confidential_guest = \"snp\" needs an AmdSev OVMF build (OvmfPkg/AmdSev/AmdSevX64.dsc); Debian's ovmf package has none".to_string(),
        ));
    }
    if h.vcpu_type.is_empty() || h.vcpu_type.contains(char::is_whitespace) {
        return Err((
            "hypervisor.vcpu_type",
            format!("must be a QEMU CPU model such as {DEFAULT_SNP_VCPU_TYPE}"),
        ));
    }
    if h.cbitpos.is_some_and(|bit| !(32..=63).contains(&bit)) {
        return Err((
            "hypervisor.cbitpos",
            "must be a physical-address bit between 32 and 63 (51 on Milan and Genoa)".to_string(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_file_equals_the_built_in_defaults() {
        let parsed =
            Config::parse(DEFAULT_CONFIG_TOML, Path::new("configuration.toml")).expect("parse");
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn each_shared_fs_value_is_spelled_as_documented() {
        for (word, expected) in [
            ("auto", SharedFs::Auto),
            ("virtio-fs", SharedFs::VirtioFs),
            ("virtio-9p", SharedFs::Virtio9p),
        ] {
            let text = format!("[hypervisor]\nshared_fs = \"{word}\"\nvirtiofsd = \"/opt/v\"\n");
            let parsed = Config::parse(&text, Path::new("x")).expect(word);
            assert_eq!(parsed.hypervisor.shared_fs, expected);
            assert_eq!(parsed.hypervisor.virtiofsd, Some(PathBuf::from("/opt/v")));
        }
    }

    #[test]
    fn empty_file_means_defaults() {
        assert_eq!(
            Config::parse("", Path::new("x")).expect("parse"),
            Config::default()
        );
    }

    #[test]
    fn unknown_keys_are_refused_with_the_file_name() {
        let error = Config::parse(
            "[hypervisor]\nmemroy_mib = 1\n",
            Path::new("/etc/veil/c.toml"),
        )
        .expect_err("typo");
        let text = error.to_string();
        assert!(
            text.contains("/etc/veil/c.toml") && text.contains("memroy_mib"),
            "{text}"
        );
    }

    #[test]
    fn out_of_range_values_name_the_key() {
        let error =
            Config::parse("[hypervisor]\nvcpus = 0\n", Path::new("c.toml")).expect_err("zero");
        assert!(error.to_string().contains("hypervisor.vcpus"));
        let error = Config::parse("[hypervisor]\naccel = \"warp\"\n", Path::new("c.toml"))
            .expect_err("accel");
        assert!(error.to_string().contains("warp"));
    }

    #[test]
    fn snp_needs_q35_and_an_amdsev_firmware() {
        let snp = "[hypervisor]\nconfidential_guest = \"snp\"\n";
        let error = Config::parse(
            &format!("{snp}machine = \"microvm,acpi=on\"\n"),
            Path::new("c"),
        )
        .expect_err("microvm");
        let text = error.to_string();
        assert!(
            text.contains("hypervisor.machine") && text.contains("q35"),
            "{text}"
        );
        let error = Config::parse(&format!("{snp}machine = \"q35\"\n"), Path::new("c"))
            .expect_err("no firmware");
        assert!(error.to_string().contains("hypervisor.firmware"), "{error}");
        let config = Config::parse(
            &format!("{snp}machine = \"pc-q35-9.1\"\nfirmware = \"/fw/OVMF.fd\"\n"),
            Path::new("c"),
        )
        .expect("valid SNP configuration");
        assert_eq!(config.hypervisor.vcpu_type, DEFAULT_SNP_VCPU_TYPE);
        assert_eq!(config.hypervisor.cbitpos, None);
        let error = Config::parse(
            &format!("{snp}machine = \"q35\"\nfirmware = \"/fw\"\ncbitpos = 7\n"),
            Path::new("c"),
        )
        .expect_err("cbitpos");
        assert!(error.to_string().contains("hypervisor.cbitpos"), "{error}");
    }

    #[test]
    fn explicit_missing_file_is_an_error() {
        let error =
            Config::discover(Some(Path::new("/nonexistent/veil.toml"))).expect_err("missing");
        assert!(error.to_string().contains("/nonexistent/veil.toml"));
        // The cause is in the message once, not again as a source a chain printer adds.
        let chain = anyhow_like_chain(&error);
        assert_eq!(chain.matches("No such file").count(), 1, "{chain}");
    }

    /// The message and its sources, ": "-joined, as anyhow's `{:#}` prints an error.
    fn anyhow_like_chain(error: &dyn std::error::Error) -> String {
        let mut text = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            text = format!("{text}: {cause}");
            source = cause.source();
        }
        text
    }

    #[test]
    fn explicit_file_wins() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[hypervisor]\nmemory_mib = 256\naccel = \"tcg\"\n").expect("write");
        let (config, found) = Config::discover(Some(&path)).expect("load");
        assert_eq!(config.hypervisor.memory_mib, 256);
        assert_eq!(config.hypervisor.accel, Accel::Tcg);
        assert_eq!(found, Some(path));
    }
}
