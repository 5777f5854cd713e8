//! The rootfs of a container that may be approved to read a delivered model, offered to the
//! guest as a read-only erofs image with a dm-verity hash tree (`[runtime] reader_rootfs =
//! "image"`), so that the agent verifies it in place instead of copying it into guest
//! memory. The shim is the node's: nothing it writes here is trusted by the guest, which
//! digests the mounted image itself (see the agent's `delivery::reader_image`).
//!
//! The image is made with `mkfs.erofs` (erofs-utils) and the tree with `veritysetup format`
//! (cryptsetup), the tools Kata's and Confidential Containers' image builders use; veil
//! does not re-implement either format.
//!
//! A container of an image the node already made one of (the same snapshot, in any pod) gets
//! hard links to it from the node's cache ([`super::image_cache`]) instead of a new one.

use std::path::Path;

use oci_spec::runtime::Spec;
use serde::{Deserialize, Serialize};
use tokio::process::Command;
use veil_protocol::{ModelDelivery, RootfsImage, GUEST_SHARED_DIR, GUEST_VOLUMES_DIR};

use super::image_cache::{ImageCache, SnapshotKey};
use crate::error::{Error, Result};

/// The image's file name in the container's share.
pub const IMAGE_FILE: &str = "rootfs.erofs";
/// The hash tree's file name in the container's share.
pub const HASH_TREE_FILE: &str = "rootfs.verity";
/// dm-verity's data and hash block size, the one the agent's table uses.
const BLOCK_SIZE: u64 = veil_protocol::ROOTFS_IMAGE_BLOCK_SIZE;

/// Whether a container is one whose rootfs the agent must verify: its pod's delivery
/// approves readers and it mounts the delivered volume.
pub fn is_reader_candidate(spec: &Spec, delivery: Option<&ModelDelivery>) -> bool {
    let Some(delivery) = delivery.filter(|d| !d.readers.is_empty()) else {
        return false;
    };
    let volume = Path::new(GUEST_VOLUMES_DIR).join(&delivery.volume);
    spec.mounts().iter().flatten().any(|mount| {
        mount
            .source()
            .as_ref()
            .is_some_and(|source| source.starts_with(&volume))
    })
}

/// Builds the image of `host_rootfs` and its hash tree in `share` (the container's share on
/// the host), and returns what the agent needs to read it.
pub async fn build(host_rootfs: &Path, share: &Path, container_id: &str) -> Result<RootfsImage> {
    let image = share.join(IMAGE_FILE);
    let tree = share.join(HASH_TREE_FILE);
    run_tool(mkfs_erofs(&image, host_rootfs), "mkfs.erofs", "erofs-utils").await?;
    let image_len = std::fs::metadata(&image)
        .map_err(Error::io(format!("stat {}", image.display())))?
        .len();
    if image_len == 0 || image_len % BLOCK_SIZE != 0 {
        return Err(Error::FailedPrecondition(format!(
            "mkfs.erofs wrote {} of {image_len} bytes, not a whole number of {BLOCK_SIZE}-byte blocks; this erofs-utils does not make 4 KiB blocks",
            image.display()
        )));
    }
    let output = run_tool(
        veritysetup_format(&image, &tree),
        "veritysetup",
        "cryptsetup-bin",
    )
    .await?;
    let (root_hash, salt) = parse_veritysetup_format(&output)?;
    Ok(ImageParameters {
        root_hash,
        salt,
        data_blocks: image_len / BLOCK_SIZE,
    }
    .for_container(container_id))
}

/// What the agent needs besides the files' paths; kept beside a cached image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct ImageParameters {
    root_hash: String,
    salt: String,
    data_blocks: u64,
}

impl ImageParameters {
    pub(super) fn of(image: &RootfsImage) -> Self {
        ImageParameters {
            root_hash: image.root_hash.clone(),
            salt: image.salt.clone(),
            data_blocks: image.data_blocks,
        }
    }

    pub(super) fn for_container(self, container_id: &str) -> RootfsImage {
        let guest = |file: &str| format!("{GUEST_SHARED_DIR}/{container_id}/{file}");
        RootfsImage {
            image: guest(IMAGE_FILE),
            hash_tree: guest(HASH_TREE_FILE),
            root_hash: self.root_hash,
            salt: self.salt,
            data_blocks: self.data_blocks,
            ..Default::default()
        }
    }
}

/// [`build`], or the image already made from the same snapshot (`cache`: the node's cache
/// and the snapshot's key) linked into `share`. Says whether it was reused.
pub async fn build_or_reuse(
    host_rootfs: &Path,
    share: &Path,
    container_id: &str,
    cache: Option<(&ImageCache, &SnapshotKey)>,
) -> Result<(RootfsImage, bool)> {
    if let Some(image) = cache.and_then(|(cache, key)| cache.link_into(key, share, container_id)) {
        return Ok((image, true));
    }
    let image = build(host_rootfs, share, container_id).await?;
    if let Some((cache, key)) = cache {
        if let Err(error) = cache.keep(key, share, &image) {
            tracing::warn!(container = %container_id, snapshot = %key.name, %error, "rootfs image not cached; the next container of this image makes its own");
        }
        let cache = cache.clone();
        let _ = tokio::task::spawn_blocking(move || cache.collect()).await;
    }
    Ok((image, false))
}

/// Times are fixed so that the same tree gives the same image; owners and extended
/// attributes are kept as the snapshot has them.
fn mkfs_erofs(image: &Path, rootfs: &Path) -> Command {
    let mut command = Command::new("mkfs.erofs");
    command.arg("--quiet").arg("-T0").arg(image).arg(rootfs);
    command
}

fn veritysetup_format(image: &Path, tree: &Path) -> Command {
    let mut command = Command::new("veritysetup");
    command
        .arg("format")
        .arg("--no-superblock")
        .arg("--hash=sha256")
        .arg(format!("--data-block-size={BLOCK_SIZE}"))
        .arg(format!("--hash-block-size={BLOCK_SIZE}"))
        .arg(image)
        .arg(tree);
    command
}

async fn run_tool(mut command: Command, tool: &str, package: &str) -> Result<String> {
    let output = command.output().await.map_err(|e| {
        Error::FailedPrecondition(format!(
            "run {tool} to make the rootfs image of a container that reads a sealed model: {e}; install {package}, or set reader_rootfs = \"copy\" under [runtime] in the veil configuration"
        ))
    })?;
    if !output.status.success() {
        return Err(Error::FailedPrecondition(format!(
            "{tool} failed ({}) making the rootfs image of a container that reads a sealed model: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The root hash and salt from `veritysetup format`'s report.
fn parse_veritysetup_format(output: &str) -> Result<(String, String)> {
    let field = |name: &str| {
        output
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .map(|rest| rest.trim_start_matches(':').trim().to_string())
            .filter(|value| !value.is_empty())
    };
    match (field("Root hash"), field("Salt")) {
        (Some(root), Some(salt)) => Ok((root, if salt == "-" { String::new() } else { salt })),
        _ => Err(Error::FailedPrecondition(format!(
            "veritysetup format printed no root hash and salt; its output was: {}",
            output.trim()
        ))),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// `veritysetup format --no-superblock` of cryptsetup 2.6.1 (Debian 12), as printed.
    const RECORDED_FORMAT: &str = "VERITY header information for et/tree\nUUID:            \t\nHash type:       \t1\nData blocks:     \t1\nData block size: \t4096\nHash blocks:     \t0\nHash block size: \t4096\nHash algorithm:  \tsha256\nSalt:            \tfb70b426e4890c9fb84b0ec40d1bab7963b2f3fed846f30d3ba85b0ca8622c6d\nRoot hash:      \t1cf4efdc3405d017f4b239e79c9cc4511385520b5a57f1b93911026e551bee92\nHash device size: \t0 [bytes]\n";

    #[test]
    fn the_root_hash_and_salt_are_read_from_veritysetups_report() {
        let (root, salt) = parse_veritysetup_format(RECORDED_FORMAT).unwrap();
        assert_eq!(
            root,
            "1cf4efdc3405d017f4b239e79c9cc4511385520b5a57f1b93911026e551bee92"
        );
        assert_eq!(
            salt,
            "fb70b426e4890c9fb84b0ec40d1bab7963b2f3fed846f30d3ba85b0ca8622c6d"
        );
        let error = parse_veritysetup_format("Salt: -\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("no root hash"), "{error}");
    }

    #[test]
    fn the_tools_get_fixed_times_and_4k_blocks_without_a_superblock() {
        let mkfs = mkfs_erofs(Path::new("/s/rootfs.erofs"), Path::new("/b/rootfs"));
        let args: Vec<_> = mkfs
            .as_std()
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(args, ["--quiet", "-T0", "/s/rootfs.erofs", "/b/rootfs"]);
        let verity =
            veritysetup_format(Path::new("/s/rootfs.erofs"), Path::new("/s/rootfs.verity"));
        let args: Vec<_> = verity
            .as_std()
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "format",
                "--no-superblock",
                "--hash=sha256",
                "--data-block-size=4096",
                "--hash-block-size=4096",
                "/s/rootfs.erofs",
                "/s/rootfs.verity"
            ]
        );
    }

    fn spec_mounting(source: &str) -> Spec {
        serde_json::from_str(&format!(
            r#"{{"ociVersion": "1.0.2", "root": {{"path": "rootfs"}}, "mounts": [{{"destination": "/model", "type": "bind", "source": "{source}", "options": ["rbind"]}}]}}"#
        ))
        .unwrap()
    }

    #[test]
    fn only_containers_mounting_a_volume_with_approved_readers_get_an_image() {
        let mut delivery = ModelDelivery {
            volume: "model".into(),
            ..Default::default()
        };
        let reader = spec_mounting(&format!("{GUEST_VOLUMES_DIR}/model"));
        let other = spec_mounting(&format!("{GUEST_VOLUMES_DIR}/scratch"));
        assert!(
            !is_reader_candidate(&reader, Some(&delivery)),
            "no readers declared"
        );
        delivery.readers.push(Default::default());
        assert!(is_reader_candidate(&reader, Some(&delivery)));
        assert!(!is_reader_candidate(&other, Some(&delivery)));
        assert!(!is_reader_candidate(&reader, None));
    }

    /// A one-file rootfs in a temporary directory, where mkfs.erofs and veritysetup are
    /// installed (`make setup` installs them); `None`, saying so, where they are not.
    pub(in crate::sandbox) fn small_rootfs_and_tools(
    ) -> Option<(tempfile::TempDir, std::path::PathBuf)> {
        let tools = ["mkfs.erofs", "veritysetup"];
        if tools.iter().any(|t| which(t).is_none()) {
            eprintln!("skipped: needs {tools:?}");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("bin")).unwrap();
        std::fs::write(rootfs.join("bin/server"), vec![7u8; 100_000]).unwrap();
        Some((dir, rootfs))
    }

    #[tokio::test]
    async fn a_built_image_has_whole_blocks_and_a_tree_that_veritysetup_verifies() {
        let Some((dir, rootfs)) = small_rootfs_and_tools() else {
            return;
        };
        let share = dir.path().join("share");
        std::fs::create_dir(&share).unwrap();
        let offered = build(&rootfs, &share, "c1").await.expect("build");
        assert_eq!(offered.image, format!("{GUEST_SHARED_DIR}/c1/{IMAGE_FILE}"));
        assert_eq!(offered.root_hash.len(), 64);
        let (image, tree) = (share.join(IMAGE_FILE), share.join(HASH_TREE_FILE));
        assert_eq!(
            std::fs::metadata(&image).unwrap().len(),
            offered.data_blocks * BLOCK_SIZE
        );
        let verify = |root: &str| {
            std::process::Command::new("veritysetup")
                .args(["verify", "--no-superblock", "--hash=sha256"])
                .arg(format!("--data-blocks={}", offered.data_blocks))
                .arg(format!("--salt={}", offered.salt))
                .arg(&image)
                .arg(&tree)
                .arg(root)
                .status()
                .unwrap()
                .success()
        };
        assert!(verify(&offered.root_hash));
        assert!(!verify(&"0".repeat(64)));
    }

    fn which(tool: &str) -> Option<std::path::PathBuf> {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(tool))
                .find(|path| path.is_file())
        })
    }
}
