//! `veil-guest-image`: builds the guest kernel and initramfs (see the library docs).

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;
use veil_guest_image::{build, default_cache_dir, BuildOptions, KernelChoice};

/// Builds veil's guest kernel and reproducible initramfs from Debian packages.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build vmlinuz, vmlinux, initramfs.img and manifest.json into --out; prints their sha256.
    Build {
        /// The static veil-agent binary to install as /init.
        #[arg(long)]
        agent: PathBuf,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Cache directory for downloaded packages and built kernels
        /// [default: $VEIL_GUEST_IMAGE_CACHE, else $XDG_CACHE_HOME/veil/guest-image].
        #[arg(long)]
        cache: Option<PathBuf>,
        /// Which guest kernel: veil's minimal one, or Debian's stock kernel as a fallback.
        #[arg(long, value_enum, default_value_t = KernelArg::Minimal)]
        kernel: KernelArg,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum KernelArg {
    /// Debian's linux-image-amd64 with its modules.
    Debian,
    /// veil's all-built-in kernel built from linux-source-6.1 (cached; ~6 min on 2 cores).
    Minimal,
}

impl From<KernelArg> for KernelChoice {
    fn from(value: KernelArg) -> Self {
        match value {
            KernelArg::Debian => KernelChoice::Debian,
            KernelArg::Minimal => KernelChoice::Minimal,
        }
    }
}

fn main() -> ExitCode {
    init_tracing();
    let cli = Cli::parse();
    match cli.command {
        Command::Build {
            agent,
            out,
            cache,
            kernel,
        } => {
            let options = BuildOptions {
                agent,
                out_dir: out,
                cache_dir: cache.unwrap_or_else(default_cache_dir),
                kernel: kernel.into(),
            };
            match build(&options) {
                Ok(output) => {
                    // sha256sum's format, so `sha256sum -c` can check the outputs.
                    println!(
                        "{}  {}",
                        output.manifest.outputs.vmlinuz.sha256,
                        output.vmlinuz.display()
                    );
                    println!(
                        "{}  {}",
                        output.manifest.outputs.vmlinux.sha256,
                        output.vmlinux.display()
                    );
                    println!(
                        "{}  {}",
                        output.manifest.outputs.initramfs.sha256,
                        output.initramfs.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    report(&error);
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Every error of the library already says what failed and why (its message includes the
/// underlying cause), so printing the top-level message is the whole story.
fn report(error: &dyn std::error::Error) {
    eprintln!("veil-guest-image: {error}");
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
