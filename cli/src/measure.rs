//! `veil measure`: the expected SEV-SNP launch digest of a veil guest, printed as the broker
//! policy condition that pins it (or, with `--json`, with every input and its SHA-256).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use veil_guest_image::measure::{
    measure, DirectBoot, MeasureInputs, Measurement, VcpuType, DEFAULT_GUEST_FEATURES,
};

/// Arguments of `veil measure`.
#[derive(Debug, Args)]
pub struct MeasureArgs {
    /// OVMF firmware image (QEMU -bios); an AmdSev build when --kernel is given.
    #[arg(long)]
    firmware: PathBuf,
    /// Kernel measured through the SEV hashes table (QEMU -kernel with kernel-hashes=on).
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Initramfs (QEMU -initrd).
    #[arg(long, requires = "kernel")]
    initrd: Option<PathBuf>,
    /// Kernel command line (QEMU -append), exactly as QEMU gets it.
    #[arg(long, requires = "kernel")]
    append: Option<String>,
    /// Number of vCPUs (QEMU -smp).
    #[arg(long)]
    vcpus: u32,
    /// vCPU model as QEMU names it (-cpu), e.g. EPYC-v4, EPYC-Milan, EPYC-Genoa.
    #[arg(long)]
    vcpu_type: String,
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

fn inputs(args: &MeasureArgs) -> anyhow::Result<MeasureInputs> {
    Ok(MeasureInputs {
        firmware: args.firmware.clone(),
        direct_boot: args.kernel.as_ref().map(|kernel| DirectBoot {
            kernel: kernel.clone(),
            initrd: args.initrd.clone(),
            append: args.append.clone(),
        }),
        vcpus: args.vcpus,
        vcpu_type: VcpuType::parse(&args.vcpu_type)?,
        guest_features: args.guest_features,
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

    #[test]
    fn an_unknown_vcpu_type_lists_the_known_ones() {
        let args = parse(&["--firmware", "f", "--vcpus", "1", "--vcpu-type", "Skylake"]).unwrap();
        let error = inputs(&args).unwrap_err();
        assert!(error.to_string().contains("EPYC-Milan"), "{error}");
    }
}
