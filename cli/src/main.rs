//! The `veil` command line for node operators and model owners.
//!
//! Each subcommand lives in its own module; this file only parses and dispatches.

use clap::{Parser, Subcommand};

mod kbs;
mod node;
mod seal;

/// veil: confidential model serving in lightweight VMs.
#[derive(Debug, Parser)]
#[command(name = "veil", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Key broker: serve, admin keys, resources, policies, and guest-side get.
    Kbs(kbs::KbsArgs),
    /// Node setup: install or uninstall the shim, guest image and containerd registration.
    Node(node::NodeArgs),
    /// Sealed models: keygen, encrypt, decrypt and inspect (Tink streaming AEAD).
    Seal(seal::SealArgs),
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
        Command::Kbs(args) => kbs::run(args),
        Command::Node(args) => node::run(args),
        Command::Seal(args) => seal::run(args),
        Command::Version => {
            println!("veil {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
    }
}
