//! `veil measure`: the expected SEV-SNP launch digest of a veil guest, printed as the broker
//! policy condition that pins it (or, with `--json`, with every input and its SHA-256).
//!
//! The inputs come from flags, or with `--config` from a veil configuration file, taken
//! exactly as the shim launches an SNP pod with a model delivery (the pods that ask a broker
//! for a key): firmware, kernel, initramfs, vCPUs and vCPU model from `[hypervisor]`, and the
//! kernel command line from the shim's own function (`kernel_cmdline_for`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use veil_config::{AgentChannel, ConfidentialGuest, Config};
use veil_guest_image::measure::{
    measure, DirectBoot, MeasureInputs, Measurement, VcpuType, DEFAULT_GUEST_FEATURES,
};
use veil_shim::hypervisor::{qemu::kernel_cmdline_for, snp, Channel};

/// Arguments of `veil measure`.
#[derive(Debug, Args)]
pub struct MeasureArgs {
    /// A veil configuration.toml: measure the SNP pods its shim launches (instead of
    /// --firmware, --kernel, --initrd, --append and --vcpu-type; --vcpus, when given, is the
    /// pods' vCPU count in place of the configured base).
    #[arg(long, conflicts_with_all = ["firmware", "kernel", "initrd", "append", "vcpu_type"])]
    config: Option<PathBuf>,
    /// With --config whose agent.channel is "auto": the channel the nodes use (vsock
    /// where they have /dev/vhost-vsock, else serial); it is on the measured command line.
    #[arg(long, value_enum, requires = "config")]
    agent_channel: Option<ChannelChoice>,
    /// OVMF firmware image (QEMU -bios); an AmdSev build when --kernel is given.
    #[arg(long, required_unless_present = "config")]
    firmware: Option<PathBuf>,
    /// Kernel measured through the SEV hashes table (QEMU -kernel with kernel-hashes=on).
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Initramfs (QEMU -initrd).
    #[arg(long, requires = "kernel")]
    initrd: Option<PathBuf>,
    /// Kernel command line (QEMU -append), exactly as QEMU gets it.
    #[arg(long, requires = "kernel")]
    append: Option<String>,
    /// Number of vCPUs (QEMU -smp). A pod's VM has the configured base plus its containers'
    /// CPU limits (or its io.veil.vm.vcpus), and each count measures differently.
    #[arg(long, required_unless_present = "config")]
    vcpus: Option<u32>,
    /// vCPU model as QEMU names it (-cpu), e.g. EPYC-v4, EPYC-Milan, EPYC-Genoa.
    #[arg(long, required_unless_present = "config")]
    vcpu_type: Option<String>,
    /// VMSA SEV_FEATURES the guest runs with, hex (0x1 = SNP active only).
    #[arg(long, value_parser = parse_hex_u64, default_value_t = DEFAULT_GUEST_FEATURES)]
    guest_features: u64,
    /// Print the digest with every input and its SHA-256 as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `veil measure`.
pub fn run(args: MeasureArgs) -> anyhow::Result<()> {
    let measurement =
        measure(&inputs(&args)?).context("cannot compute the expected launch digest")?;
    crate::doctor::write_stdout(&format!("{}\n", render(&measurement, args.json)?))
}

/// The agent channel the measured nodes use, when the configuration leaves it to them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ChannelChoice {
    /// A virtio-serial port.
    Serial,
    /// vsock through the host's vhost-vsock.
    Vsock,
}

fn inputs(args: &MeasureArgs) -> anyhow::Result<MeasureInputs> {
    if let Some(config) = &args.config {
        let mut inputs = inputs_from_config(config, args.agent_channel, args.guest_features)?;
        inputs.vcpus = args.vcpus.unwrap_or(inputs.vcpus);
        return Ok(inputs);
    }
    let (Some(firmware), Some(vcpus), Some(vcpu_type)) =
        (&args.firmware, args.vcpus, &args.vcpu_type)
    else {
        bail!("give --config, or --firmware, --vcpus and --vcpu-type");
    };
    Ok(MeasureInputs {
        firmware: firmware.clone(),
        direct_boot: args.kernel.as_ref().map(|kernel| DirectBoot {
            kernel: kernel.clone(),
            initrd: args.initrd.clone(),
            append: args.append.clone(),
        }),
        vcpus,
        vcpu_type: VcpuType::parse(vcpu_type)?,
        guest_features: args.guest_features,
    })
}

/// The inputs of the SNP pods the shim launches with the configuration at `path`.
fn inputs_from_config(
    path: &Path,
    channel: Option<ChannelChoice>,
    guest_features: u64,
) -> anyhow::Result<MeasureInputs> {
    let config = Config::load(path)?;
    let hypervisor = &config.hypervisor;
    if hypervisor.confidential_guest != ConfidentialGuest::Snp {
        bail!(
            "{} does not set hypervisor.confidential_guest = \"snp\": its pods are not SEV-SNP guests and have no launch measurement",
            path.display()
        );
    }
    snp::check_bootable_kernel(&hypervisor.kernel)?;
    let firmware = hypervisor
        .firmware
        .clone()
        .with_context(|| format!("{} sets no hypervisor.firmware", path.display()))?;
    let channel = measured_channel(config.agent.channel, channel, path)?;
    // Only pods with a model delivery ask a broker for a key: they have egress.
    let append = kernel_cmdline_for(
        hypervisor,
        &config.agent.log_level,
        &channel,
        true,
        &veil_shim::hypervisor::Share::Virtio9p,
        false,
    );
    Ok(MeasureInputs {
        firmware,
        direct_boot: Some(DirectBoot {
            kernel: hypervisor.kernel.clone(),
            initrd: Some(hypervisor.initrd.clone()),
            append: Some(append),
        }),
        vcpus: hypervisor.vcpus,
        vcpu_type: VcpuType::parse(&hypervisor.vcpu_type)?,
        guest_features,
    })
}

/// The channel on the measured command line: the configuration's, or `--agent-channel`
/// where the configuration leaves it to each node (`auto`).
fn measured_channel(
    configured: AgentChannel,
    given: Option<ChannelChoice>,
    path: &Path,
) -> anyhow::Result<Channel> {
    let choice = match (configured, given) {
        (AgentChannel::Serial, None | Some(ChannelChoice::Serial)) => ChannelChoice::Serial,
        (AgentChannel::Vsock, None | Some(ChannelChoice::Vsock)) => ChannelChoice::Vsock,
        (AgentChannel::Auto, Some(choice)) => choice,
        (AgentChannel::Auto, None) => bail!(
            "{} has agent.channel = \"auto\", which each node resolves (vsock where /dev/vhost-vsock exists, else serial) and which is on the measured command line: pass --agent-channel serial or vsock",
            path.display()
        ),
        (configured, Some(given)) => bail!(
            "--agent-channel {given:?} contradicts agent.channel = {configured:?} in {}",
            path.display()
        ),
    };
    // Only the channel's kind reaches the command line, never its socket or CID.
    Ok(match choice {
        ChannelChoice::Serial => Channel::Serial {
            socket: PathBuf::new(),
        },
        ChannelChoice::Vsock => Channel::Vsock { cid: 0 },
    })
}

/// The policy condition, or the JSON report with the condition added.
fn render(measurement: &Measurement, json: bool) -> anyhow::Result<String> {
    if !json {
        return Ok(measurement.policy_condition());
    }
    let mut value = serde_json::to_value(measurement)?;
    if let Some(object) = value.as_object_mut() {
        object.insert(
            "policy_condition".to_owned(),
            measurement.policy_condition().into(),
        );
    }
    Ok(serde_json::to_string_pretty(&value)?)
}

fn parse_hex_u64(text: &str) -> Result<u64, String> {
    let digits = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .unwrap_or(text);
    u64::from_str_radix(digits, 16)
        .map_err(|error| format!("`{text}` is not a hex number such as 0x1: {error}"))
}

/// The synthetic AmdSev-shaped firmware the guest-image measurement tests use (test-only
/// code of that crate, compiled here too rather than copied).
#[cfg(test)]
#[allow(dead_code)]
#[path = "../../guest-image/src/measure/synthetic.rs"]
mod synthetic;

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: MeasureArgs,
    }

    const DEBIAN_OVMF_2M: &str = "/usr/share/OVMF/OVMF_CODE.fd";

    fn parse(args: &[&str]) -> Result<MeasureArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("measure").chain(args.iter().copied()))
            .map(|cli| cli.args)
    }

    #[test]
    fn guest_features_are_hex_with_or_without_prefix() {
        assert_eq!(parse_hex_u64("0x21"), Ok(0x21));
        assert_eq!(parse_hex_u64("21"), Ok(0x21));
        assert!(parse_hex_u64("0xzz").unwrap_err().contains("hex"));
    }

    #[test]
    fn initrd_and_append_need_a_kernel() {
        let error = parse(&[
            "--firmware",
            "f",
            "--vcpus",
            "1",
            "--vcpu-type",
            "EPYC-v4",
            "--append",
            "quiet",
        ])
        .unwrap_err();
        assert!(error.to_string().contains("--kernel"), "{error}");
    }

    #[test]
    fn debian_ovmf_prints_a_policy_condition_and_json_with_inputs() {
        assert!(
            std::path::Path::new(DEBIAN_OVMF_2M).is_file(),
            "{DEBIAN_OVMF_2M} is missing: apt-get install ovmf"
        );
        let args = parse(&[
            "--firmware",
            DEBIAN_OVMF_2M,
            "--vcpus",
            "4",
            "--vcpu-type",
            "EPYC-Milan",
            "--json",
        ])
        .unwrap();
        let measurement = measure(&inputs(&args).unwrap()).unwrap();
        let condition = render(&measurement, false).unwrap();
        assert_eq!(
            condition,
            format!(
                "claims.tee == 'snp' && claims.measurement == '{}'",
                measurement.launch_digest
            )
        );
        let json: serde_json::Value =
            serde_json::from_str(&render(&measurement, true).unwrap()).unwrap();
        assert_eq!(json["policy_condition"], condition);
        assert_eq!(json["vcpus"], 4);
        assert_eq!(json["firmware"]["sha256"].as_str().unwrap().len(), 64);
        assert!(json["kernel"].is_null());
    }

    /// A kernel, initramfs and AmdSev-shaped firmware in `dir`, and a configuration naming
    /// them with `extra` lines appended to `[hypervisor]` and `agent` as `[agent]`.
    fn snp_node(dir: &Path, hypervisor_extra: &str, agent: &str) -> PathBuf {
        let firmware = synthetic::SyntheticFirmware::amdsev().write(dir);
        let mut kernel: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 253) as u8).collect();
        kernel[0x202..0x206].copy_from_slice(b"HdrS");
        std::fs::write(dir.join("vmlinuz"), kernel).unwrap();
        std::fs::write(dir.join("initramfs.img"), vec![5u8; 100_000]).unwrap();
        let config = dir.join("configuration.toml");
        std::fs::write(
            &config,
            format!(
                "[hypervisor]\nconfidential_guest = \"snp\"\nmachine = \"q35\"\nfirmware = \"{}\"\nkernel = \"{}\"\ninitrd = \"{}\"\n{hypervisor_extra}\n[agent]\n{agent}\n",
                firmware.display(),
                dir.join("vmlinuz").display(),
                dir.join("initramfs.img").display(),
            ),
        )
        .unwrap();
        config
    }

    /// The `-append` value of the shim's SNP golden command line (log level info, vsock,
    /// egress, no extra kernel words).
    fn golden_snp_append() -> String {
        let golden = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../shim/tests/golden/qemu-snp.args"),
        )
        .unwrap();
        let lines: Vec<&str> = golden.lines().collect();
        let at = lines.iter().position(|l| *l == "-append").unwrap();
        lines[at + 1].to_owned()
    }

    /// The digest the independent implementation (PyPI `sev-snp-measure`) computes.
    fn sev_snp_measure(inputs: &MeasureInputs) -> String {
        let boot = inputs.direct_boot.as_ref().unwrap();
        let output = std::process::Command::new("sev-snp-measure")
            .args(["--mode", "snp", "--output-format", "hex", "--vcpus"])
            .arg(inputs.vcpus.to_string())
            .arg("--vcpu-type")
            .arg(inputs.vcpu_type.to_string())
            .arg("--ovmf")
            .arg(&inputs.firmware)
            .arg("--kernel")
            .arg(&boot.kernel)
            .arg("--initrd")
            .arg(boot.initrd.as_ref().unwrap())
            .arg("--append")
            .arg(boot.append.as_ref().unwrap())
            .output()
            .unwrap_or_else(|error| {
                panic!("cannot run sev-snp-measure ({error}): pip install sev-snp-measure")
            });
        assert!(output.status.success(), "{output:?}");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    #[test]
    fn config_measures_what_the_explicit_flags_measure() {
        let dir = tempfile::tempdir().unwrap();
        let config = snp_node(
            dir.path(),
            "vcpus = 2\nvcpu_type = \"EPYC-Milan\"",
            "channel = \"vsock\"",
        );
        let from_config = parse(&["--config", config.to_str().unwrap()]).unwrap();
        let from_config_inputs = inputs(&from_config).unwrap();
        let append = golden_snp_append();
        let direct = from_config_inputs.direct_boot.clone().unwrap();
        assert_eq!(direct.append.as_deref(), Some(append.as_str()));
        let explicit = parse(&[
            "--firmware",
            from_config_inputs.firmware.to_str().unwrap(),
            "--kernel",
            direct.kernel.to_str().unwrap(),
            "--initrd",
            direct.initrd.as_ref().unwrap().to_str().unwrap(),
            "--append",
            &append,
            "--vcpus",
            "2",
            "--vcpu-type",
            "EPYC-Milan",
        ])
        .unwrap();
        let ours = measure(&from_config_inputs).unwrap();
        assert_eq!(ours, measure(&inputs(&explicit).unwrap()).unwrap());
        assert_eq!(ours.launch_digest, sev_snp_measure(&from_config_inputs));
        assert!(render(&ours, false).unwrap().contains(&ours.launch_digest));
    }

    #[test]
    fn an_auto_channel_must_be_named_and_the_command_line_follows_it() {
        let dir = tempfile::tempdir().unwrap();
        let config = snp_node(dir.path(), "", "channel = \"auto\"");
        let config = config.to_str().unwrap();
        let error = inputs(&parse(&["--config", config]).unwrap()).unwrap_err();
        assert!(error.to_string().contains("--agent-channel"), "{error}");
        let append = |channel: &str| {
            inputs(&parse(&["--config", config, "--agent-channel", channel]).unwrap())
                .unwrap()
                .direct_boot
                .unwrap()
                .append
                .unwrap()
        };
        assert!(append("serial").contains("veil.channel=serial veil.egress=user"));
        assert!(append("vsock").contains("veil.channel=vsock veil.egress=user"));
        let vsock = snp_node(dir.path(), "", "channel = \"vsock\"");
        let error = inputs(
            &parse(&[
                "--config",
                vsock.to_str().unwrap(),
                "--agent-channel",
                "serial",
            ])
            .unwrap(),
        )
        .unwrap_err();
        assert!(error.to_string().contains("contradicts"), "{error}");
    }

    #[test]
    fn config_is_exclusive_with_the_explicit_inputs_but_the_vcpu_count() {
        let error = parse(&["--config", "c.toml", "--vcpu-type", "EPYC-v4"]).unwrap_err();
        assert!(error.to_string().contains("--vcpu-type"), "{error}");
        assert!(parse(&["--vcpus", "2", "--vcpu-type", "EPYC-v4"]).is_err());
    }

    /// A pod whose containers' CPU limits add vCPUs to the configured base is measured with
    /// its own count: the same inputs otherwise, another digest.
    #[test]
    fn vcpus_with_config_measure_the_pods_of_that_size() {
        let dir = tempfile::tempdir().unwrap();
        let config = snp_node(dir.path(), "vcpus = 1", "channel = \"serial\"");
        let config = config.to_str().unwrap();
        let base = inputs(&parse(&["--config", config]).unwrap()).unwrap();
        let four = inputs(&parse(&["--config", config, "--vcpus", "4"]).unwrap()).unwrap();
        assert_eq!((base.vcpus, four.vcpus), (1, 4));
        assert_eq!(four.direct_boot, base.direct_boot);
        let (base, four) = (measure(&base).unwrap(), measure(&four).unwrap());
        assert_ne!(base.launch_digest, four.launch_digest);
    }

    #[test]
    fn a_config_without_snp_or_with_the_pvh_vmlinux_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain.toml");
        std::fs::write(&plain, "[hypervisor]\nmachine = \"q35\"\n").unwrap();
        let error = inputs(&parse(&["--config", plain.to_str().unwrap()]).unwrap()).unwrap_err();
        assert!(error.to_string().contains("confidential_guest"), "{error}");

        let config = snp_node(dir.path(), "", "channel = \"serial\"");
        let mut elf = vec![0u8; 0x1000];
        elf[..4].copy_from_slice(b"\x7fELF");
        std::fs::write(dir.path().join("vmlinuz"), elf).unwrap();
        let error = inputs(&parse(&["--config", config.to_str().unwrap()]).unwrap()).unwrap_err();
        assert!(error.to_string().contains("bzImage"), "{error}");
    }

    #[test]
    fn an_unknown_vcpu_type_lists_the_known_ones() {
        let args = parse(&["--firmware", "f", "--vcpus", "1", "--vcpu-type", "Skylake"]).unwrap();
        let error = inputs(&args).unwrap_err();
        assert!(error.to_string().contains("EPYC-Milan"), "{error}");
    }
}
