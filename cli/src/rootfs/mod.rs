//! `veil rootfs digest DIR` and `veil rootfs digest --oci ARCHIVE`: the digest of a
//! container rootfs, unpacked or as an image's layers give it, as a model owner approves it
//! (see `veil_protocol::rootfs` for what it covers and what it leaves out).

mod oci;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use veil_protocol::rootfs::{digest_entries, digest_tree_reporting, format_digest};

use crate::progress::Progress;

/// Arguments of `veil rootfs`.
#[derive(Debug, Args)]
pub struct RootfsArgs {
    #[command(subcommand)]
    command: RootfsCommand,
}

#[derive(Debug, Subcommand)]
enum RootfsCommand {
    /// Print `sha256:<hex>` of the tree at DIR (an unpacked image, e.g. from
    /// `ctr images mount`), or of an image's rootfs with --oci: directories, files and
    /// symlinks with their paths, permission bits, sizes, contents and targets; not owners
    /// or times.
    Digest {
        /// The rootfs directory (without --oci).
        #[arg(required_unless_present = "oci", conflicts_with = "oci")]
        dir: Option<PathBuf>,
        /// An OCI image archive or layout directory (`podman save --format oci-archive`,
        /// `skopeo copy docker://IMAGE oci-archive:FILE`, `docker save` on Docker 25+): its
        /// layers are applied in memory as containerd applies them; nothing is unpacked.
        #[arg(long, value_name = "ARCHIVE")]
        oci: Option<PathBuf>,
        /// Which image of the archive (its io.containerd.image.name or
        /// org.opencontainers.image.ref.name), when it holds several.
        #[arg(long, value_name = "NAME", requires = "oci")]
        image: Option<String>,
    },
}

/// Runs `veil rootfs`.
pub fn run(args: RootfsArgs) -> anyhow::Result<()> {
    match args.command {
        RootfsCommand::Digest {
            oci: Some(archive),
            image,
            ..
        } => {
            let progress = Progress::new("digested", None);
            let tree = oci::image_tree(&archive, image.as_deref(), &mut |read| {
                progress.iter().for_each(|p| p.update(read))
            })
            .with_context(|| format!("cannot digest the image rootfs in {}", archive.display()))?;
            progress.iter().for_each(Progress::finish);
            let digest = digest_entries(tree.iter().map(|(p, e)| (p.as_path(), e)));
            crate::doctor::write_stdout(&format!("{}\n", format_digest(&digest)))
        }
        RootfsCommand::Digest { dir, .. } => {
            let dir = dir.context("give the rootfs directory, or --oci ARCHIVE")?;
            let progress = Progress::new("digested", None);
            let digest = digest_tree_reporting(&dir, &mut |read| {
                progress.iter().for_each(|p| p.update(read))
            })
            .with_context(|| format!("cannot digest the rootfs at {}", dir.display()))?;
            progress.iter().for_each(Progress::finish);
            crate::doctor::write_stdout(&format!("{}\n", format_digest(&digest)))
        }
    }
}
