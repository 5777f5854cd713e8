//! The `veil` command line for node operators and model owners.
//!
//! Each subcommand lives in its own module; this file only parses and dispatches.

use clap::{Parser, Subcommand};

mod doctor;
mod host_data;
mod kbs;
mod measure;
mod node;
mod progress;
mod rootfs;
mod seal;
mod stages;

/// veil: confidential model serving in lightweight VMs.
#[derive(Debug, Parser)]
#[command(name = "veil", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Host capabilities: KVM, SEV-SNP, vsock, QEMU, OVMF, containerd, memory.
    Doctor(doctor::DoctorArgs),
    /// The SEV-SNP host_data of a pod's model delivery, as a broker policy condition.
    HostData(host_data::HostDataArgs),
    /// Key broker: serve, admin keys, resources, policies, and guest-side get.
    Kbs(kbs::KbsArgs),
    /// The expected SEV-SNP launch digest of a guest, as a broker policy condition.
    Measure(measure::MeasureArgs),
    /// Node setup: install or uninstall the shim, guest image and containerd registration.
    Node(node::NodeArgs),
    /// Container rootfs: the digest a model owner approves.
    Rootfs(rootfs::RootfsArgs),
    /// Sealed models: keygen, encrypt, decrypt and inspect (Tink streaming AEAD).
    Seal(seal::SealArgs),
    /// Cold-start stages of one container, from containerd's or the shim's log.
    Stages(stages::StagesArgs),
    /// Print the version.
    Version,
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("VEIL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> anyhow::Result<()> {
    init_logging();
    let cli = Cli::parse();
    match cli.command {
        Command::Doctor(args) => doctor::run(args),
        Command::Stages(args) => stages::run(args),
        Command::Kbs(args) => kbs::run(args),
        Command::HostData(args) => host_data::run(args),
        Command::Measure(args) => measure::run(args),
        Command::Rootfs(args) => rootfs::run(args),
        Command::Node(args) => node::run(args),
        Command::Seal(args) => seal::run(args),
        Command::Version => {
            println!("veil {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
    }
}
