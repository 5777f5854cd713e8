//! QEMU command lines compared with golden files in `shim/tests/golden/` (one argument per
//! line, so that a change shows as a readable diff).
//!
//! After an intended change to the command line, regenerate them and review the diff:
//!
//! ```text
//! VEIL_UPDATE_GOLDEN=1 cargo test -p veil-shim golden
//! git diff shim/tests/golden/
//! ```

use std::path::PathBuf;

use veil_config::{ConfidentialGuest, HypervisorConfig};
use veil_protocol::ModelDelivery;

use super::accel::AccelChoice;
use super::qemu::{command_line, kernel_cmdline};
use super::{Channel, Share, VmSpec};

/// Set to regenerate the golden files instead of comparing with them.
const UPDATE_ENV: &str = "VEIL_UPDATE_GOLDEN";

fn golden_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.args"))
}

/// The host's TSC frequency is on microvm's command line; golden files hold a placeholder.
fn without_host_specifics(argument: &str) -> String {
    argument
        .split(' ')
        .map(|word| match word.strip_prefix("tsc_early_khz=") {
            Some(_) => "tsc_early_khz=<host>",
            None => word,
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn assert_matches_golden(name: &str, args: &[String]) {
    let rendered: String = args
        .iter()
        .map(|argument| format!("{}\n", without_host_specifics(argument)))
        .collect();
    let path = golden_path(name);
    if std::env::var_os(UPDATE_ENV).is_some() {
        std::fs::create_dir_all(path.parent().expect("golden dir")).expect("create golden dir");
        std::fs::write(&path, &rendered).expect("write golden file");
        return;
    }
    let golden = std::fs::read_to_string(&path).unwrap_or_else(|error| {
        panic!(
            "{}: {error}; generate it with {UPDATE_ENV}=1 cargo test -p veil-shim golden",
            path.display()
        )
    });
    assert!(
        golden == rendered,
        "the {name} QEMU command line differs from {}; if the change is intended, run {UPDATE_ENV}=1 cargo test -p veil-shim golden and review the diff.\n--- golden\n{golden}\n--- now\n{rendered}",
        path.display()
    );
}

fn spec(channel: Channel, egress: bool, host_data: [u8; 32]) -> VmSpec {
    VmSpec {
        id: "sb1".into(),
        state_dir: "/run/veil/default/sb1".into(),
        shared_dir: "/run/veil/default/sb1/shared".into(),
        channel,
        console_log: "/run/veil/default/sb1/console.log".into(),
        egress,
        host_data,
        share: Share::Virtio9p,
    }
}

fn virtio_fs() -> Share {
    Share::VirtioFs {
        daemon: "/usr/libexec/virtiofsd".into(),
    }
}

fn serial() -> Channel {
    Channel::Serial {
        socket: "/run/veil/default/sb1/agent.sock".into(),
    }
}

fn tcg() -> AccelChoice {
    AccelChoice {
        kvm: false,
        reason: "golden".into(),
    }
}

fn base_config(machine: &str) -> HypervisorConfig {
    HypervisorConfig {
        kernel: "/usr/local/share/veil/vmlinux".into(),
        initrd: "/usr/local/share/veil/initramfs.img".into(),
        machine: machine.into(),
        ..HypervisorConfig::default()
    }
}

fn render(config: &HypervisorConfig, accel: &AccelChoice, spec: &VmSpec) -> Vec<String> {
    let cmdline = kernel_cmdline(config, "info", spec, accel);
    command_line(config, accel, spec, &cmdline)
}

/// The declaration of the SNP golden pod (what the shim makes of its annotations).
pub(crate) fn golden_delivery() -> ModelDelivery {
    ModelDelivery {
        volume: "model".into(),
        source_url: "http://10.0.2.2:8000/model.sealed".into(),
        kbs_url: "http://10.0.2.2:8080".into(),
        key_resource: "models/key/demo".into(),
        sha256: "ab".repeat(32),
        associated_data: b"demo".to_vec(),
        ..Default::default()
    }
}

#[test]
fn golden_tcg_q35() {
    let config = base_config("q35");
    assert_matches_golden(
        "qemu-tcg-q35",
        &render(&config, &tcg(), &spec(serial(), false, [0; 32])),
    );
}

#[test]
fn golden_tcg_microvm() {
    let config = base_config("microvm,acpi=on");
    assert_matches_golden(
        "qemu-tcg-microvm",
        &render(&config, &tcg(), &spec(serial(), true, [0; 32])),
    );
}

#[test]
fn golden_tcg_virtio_fs_on_microvm_and_q35() {
    for (machine, name) in [
        ("microvm,acpi=on", "qemu-tcg-microvm-virtiofs"),
        ("q35", "qemu-tcg-q35-virtiofs"),
    ] {
        let spec = VmSpec {
            share: virtio_fs(),
            ..spec(serial(), false, [0; 32])
        };
        assert_matches_golden(name, &render(&base_config(machine), &tcg(), &spec));
    }
}

#[test]
fn golden_snp() {
    let config = HypervisorConfig {
        kernel: "/usr/local/share/veil/vmlinuz".into(),
        confidential_guest: ConfidentialGuest::Snp,
        firmware: Some("/usr/local/share/veil/OVMF.amdsev.fd".into()),
        cbitpos: Some(51),
        vcpus: 2,
        memory_mib: 2048,
        ..base_config("q35")
    };
    let kvm = AccelChoice {
        kvm: true,
        reason: "golden".into(),
    };
    let host_data = crate::sandbox::delivery::host_data(Some(&golden_delivery())).expect("digest");
    let args = render(
        &config,
        &kvm,
        &spec(Channel::Vsock { cid: 1234 }, true, host_data),
    );
    assert_matches_golden("qemu-snp", &args);
}

#[test]
fn the_snp_host_data_is_the_digest_the_agents_plan_checks() {
    use base64::Engine;
    let annotations: std::collections::HashMap<String, String> = [
        ("source", "http://127.0.0.1:8000/model.sealed"),
        ("kbs", "http://127.0.0.1:8080"),
        ("key", "models/key/demo"),
        ("volume", "model"),
        ("aad", "demo"),
    ]
    .into_iter()
    .map(|(k, v)| (format!("io.veil.model.{k}"), v.to_string()))
    .collect();
    let delivery = crate::sandbox::delivery::declaration(Some(&annotations))
        .expect("valid annotations")
        .expect("a delivery");
    let host_data = crate::sandbox::delivery::host_data(Some(&delivery)).expect("digest");
    let config = HypervisorConfig {
        confidential_guest: ConfidentialGuest::Snp,
        firmware: Some("/fw/OVMF.amdsev.fd".into()),
        ..base_config("q35")
    };
    let kvm = AccelChoice {
        kvm: true,
        reason: "test".into(),
    };
    let args = render(&config, &kvm, &spec(serial(), true, host_data));
    let in_args = args
        .iter()
        .find_map(|a| a.strip_prefix("sev-snp-guest,")?.split("host-data=").nth(1))
        .expect("host-data on the command line");
    let launched = base64::engine::general_purpose::STANDARD
        .decode(in_args)
        .expect("base64");
    // The agent parses the declaration it receives into a Plan and expects this host_data.
    let plan = veil_protocol::delivery::Plan::parse(&delivery).expect("plan");
    assert_eq!(launched, plan.host_data);
    assert_eq!(
        launched
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>(),
        plan.declaration_digest
    );
}
