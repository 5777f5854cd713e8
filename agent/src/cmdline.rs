//! Options the shim passes to the agent on the kernel command line (`veil.<key>=<value>`).
//!
//! The command line is part of the SNP launch measurement, so everything here is
//! attested; nothing secret may ever be put there.

/// How the agent reaches the shim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind {
    /// A virtio-serial port named [`veil_protocol::SERIAL_PORT_NAME`] (works without host vhost).
    Serial,
    /// AF_VSOCK on [`veil_protocol::VSOCK_PORT`] (needs vhost-vsock on the host).
    Vsock,
}

/// The agent's settings, read from the kernel command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentOptions {
    /// Which channel to serve the API on.
    pub channel: ChannelKind,
    /// A `tracing` filter directive, e.g. `info` or `veil_agent=debug`.
    pub log_filter: String,
    /// The VM has a user-network NIC for egress to the model store and key broker.
    pub egress: bool,
    /// The VM runs under QEMU's TCG (emulation), not KVM.
    pub emulated: bool,
    /// The shared directory is a virtio-fs device (else virtio-9p).
    pub virtio_fs: bool,
}

impl Default for AgentOptions {
    fn default() -> Self {
        Self {
            channel: ChannelKind::Serial,
            log_filter: "info".to_string(),
            egress: false,
            emulated: false,
            virtio_fs: false,
        }
    }
}

/// Parses `veil.channel=serial|vsock`, `veil.log=<filter>`, `veil.egress=user`,
/// `veil.accel=tcg` and `veil.share=virtiofs`; unknown words are left
/// to the kernel and unknown values fall back to the default with a warning recorded
/// in the returned list, because PID 1 must come up even when the command line is odd.
pub fn parse(cmdline: &str) -> (AgentOptions, Vec<String>) {
    let mut options = AgentOptions::default();
    let mut warnings = Vec::new();
    for word in cmdline.split_whitespace() {
        let Some((key, value)) = word.split_once('=') else {
            continue;
        };
        match key {
            "veil.channel" => match value {
                "serial" => options.channel = ChannelKind::Serial,
                "vsock" => options.channel = ChannelKind::Vsock,
                other => warnings.push(format!(
                    "veil.channel={other} is not serial or vsock; using serial"
                )),
            },
            "veil.log" => options.log_filter = value.to_string(),
            "veil.egress" if word == veil_protocol::egress::CMDLINE_WORD => options.egress = true,
            "veil.egress" => warnings.push(format!(
                "{word} is not {}; no egress network",
                veil_protocol::egress::CMDLINE_WORD
            )),
            "veil.share" if word == veil_protocol::VIRTIOFS_CMDLINE_WORD => {
                options.virtio_fs = true
            }
            "veil.share" => warnings.push(format!(
                "{word} is not {}; mounting the shared directory as virtio-9p",
                veil_protocol::VIRTIOFS_CMDLINE_WORD
            )),
            "veil.accel" if word == veil_protocol::EMULATED_CMDLINE_WORD => options.emulated = true,
            "veil.accel" => warnings.push(format!(
                "{word} is not {}; treating the VM as hardware-accelerated",
                veil_protocol::EMULATED_CMDLINE_WORD
            )),
            _ => {}
        }
    }
    (options, warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_to_serial_and_info() {
        let (options, warnings) = parse("console=ttyS0 quiet panic=-1");
        assert_eq!(options, AgentOptions::default());
        assert!(warnings.is_empty());
    }

    #[test]
    fn reads_channel_and_log_filter() {
        let (options, _) = parse("quiet veil.channel=vsock veil.log=debug veil.egress=user");
        assert_eq!(options.channel, ChannelKind::Vsock);
        assert_eq!(options.log_filter, "debug");
        assert!(options.egress);
    }

    #[test]
    fn reads_the_shared_directory_transport() {
        assert!(!parse("quiet").0.virtio_fs);
        let (options, warnings) = parse("quiet veil.share=virtiofs");
        assert!(options.virtio_fs && warnings.is_empty());
        let (options, warnings) = parse("veil.share=nfs");
        assert!(!options.virtio_fs);
        assert!(warnings[0].contains("veil.share=nfs"), "{warnings:?}");
    }

    #[test]
    fn reads_that_the_vm_is_emulated() {
        let (options, warnings) = parse("quiet veil.accel=tcg");
        assert!(options.emulated);
        assert!(warnings.is_empty());
        let (options, warnings) = parse("quiet veil.accel=warp");
        assert!(!options.emulated);
        assert!(warnings[0].contains("veil.accel=warp"), "{warnings:?}");
    }

    #[test]
    fn unknown_channel_falls_back_with_a_warning() {
        let (options, warnings) = parse("veil.channel=pigeon");
        assert_eq!(options.channel, ChannelKind::Serial);
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("pigeon"));
    }
}
