//! `veil rootfs digest DIR`: the digest of an unpacked container rootfs, as a model owner
//! approves it (see `veil_protocol::rootfs` for what it covers and what it leaves out).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use veil_protocol::rootfs::{digest_tree, format_digest};

/// Arguments of `veil rootfs`.
#[derive(Debug, Args)]
pub struct RootfsArgs {
    #[command(subcommand)]
    command: RootfsCommand,
}

#[derive(Debug, Subcommand)]
enum RootfsCommand {
    /// Print `sha256:<hex>` of the tree at DIR (an unpacked image, e.g. from
    /// `ctr images mount`): directories, files and symlinks with their paths, permission
    /// bits, sizes, contents and targets; not owners or times.
    Digest {
        /// The rootfs directory.
        dir: PathBuf,
    },
}

/// Runs `veil rootfs`.
pub fn run(args: RootfsArgs) -> anyhow::Result<()> {
    match args.command {
        RootfsCommand::Digest { dir } => {
            let digest = digest_tree(&dir)
                .with_context(|| format!("cannot digest the rootfs at {}", dir.display()))?;
            crate::doctor::write_stdout(&format!("{}\n", format_digest(&digest)))
        }
    }
}
