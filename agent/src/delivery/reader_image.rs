//! An approved reader's rootfs from the erofs image the node offers (`RootfsImage`), read
//! through dm-verity instead of copied into guest memory.
//!
//! The node builds the image and its hash tree, so neither is trusted: the agent sets up
//! dm-verity with the root hash the node gave, mounts the image read-only, and digests the
//! mounted tree as [`super::readers::copy_approved`] digests a copy. That digest is what the
//! owner approved, so the image's contents are checked; dm-verity then holds every block to
//! the root hash fixed in guest memory, so no later read (after the page cache dropped a
//! page, say) can return anything else: a block the node changes reads as an I/O error. The
//! container runs from an overlay whose writable layer is in guest memory, so its writes
//! cost guest RAM and its image does not.

use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use sha2::{Digest, Sha256};
use veil_protocol::rootfs::{digest_tree, TreeError};
use veil_protocol::{PathError, RootfsImage, GUEST_SHARED_DIR};

use super::readers::{check_digest, ApprovedDigests, Unapproved};
use crate::blockdev::device_mapper::{self, DeviceMapperError, VerityDevice, VerityTable};
use crate::blockdev::loop_device::{self, LoopError};

/// Setting the image up failed before its contents could be checked; the agent can still
/// verify a copy of the shared rootfs instead.
#[derive(Debug, thiserror::Error)]
pub enum ImageSetupError {
    /// The image or its tree is not a plain file in the container's share.
    #[error("{} is not a file in {}: {reason}", .path.display(), .share.display())]
    Outside {
        /// The path the node gave.
        path: PathBuf,
        /// The container's share in the guest.
        share: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// Parameters the node gave that dm-verity cannot take.
    #[error("the node's rootfs image parameters are malformed: {0}")]
    Parameters(String),
    /// A loop device.
    #[error(transparent)]
    Loop(#[from] LoopError),
    /// The verity device.
    #[error(transparent)]
    DeviceMapper(#[from] DeviceMapperError),
    /// A directory, mount or unmount.
    #[error(transparent)]
    Io(#[from] PathError),
}

/// Why an offered image was not used.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// It could not be set up (or this guest kernel cannot); a copy can still be verified.
    #[error("its rootfs image could not be set up: {0}")]
    Setup(#[from] ImageSetupError),
    /// It was set up, and reading it failed: dm-verity reads a block that does not match
    /// the hash tree as an I/O error.
    #[error("its rootfs image could not be read through dm-verity ({0}); a block that does not match the image's hash tree reads as an I/O error, so the node changed the image after making its tree, or the share failed; recreate the container")]
    Read(#[source] TreeError),
    /// It was set up, and its contents are not what the owner approved.
    #[error(transparent)]
    Unapproved(#[from] Unapproved),
}

/// A verified image mounted for one container: the verity device, the image's read-only
/// mount, and the overlay the container runs from.
#[derive(Debug)]
pub struct MountedImage {
    dir: PathBuf,
    device: Option<VerityDevice>,
}

impl MountedImage {
    /// What the container runs from: the overlay over the verified image.
    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    fn image_mount(&self) -> PathBuf {
        self.dir.join("image")
    }

    fn writable_mount(&self) -> PathBuf {
        self.dir.join("rw")
    }

    /// Unmounts and removes everything; what fails is logged, since the container is gone
    /// either way and all of it is guest memory.
    pub fn release(&self, id: &str) {
        for mount in [self.root(), self.image_mount(), self.writable_mount()] {
            if let Err(error) = umount2(&mount, MntFlags::MNT_DETACH) {
                if error != nix::errno::Errno::EINVAL && error != nix::errno::Errno::ENOENT {
                    tracing::warn!(container = %id, mount = %mount.display(), %error, "could not unmount");
                }
            }
        }
        if let Some(device) = &self.device {
            if let Err(error) = device.remove() {
                tracing::warn!(container = %id, %error, "the verity device of its rootfs image stays");
            }
        }
        if let Err(error) = std::fs::remove_dir_all(&self.dir) {
            if error.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(container = %id, dir = %self.dir.display(), %error, "could not remove");
            }
        }
    }
}

/// Mounts container `id`'s offered image under `dir` through dm-verity, and keeps it only if
/// the mounted tree's digest is approved for every pinned volume. Returns the mount and the
/// digest.
pub fn mount_approved(
    id: &str,
    offered: &RootfsImage,
    dir: &Path,
    approved: &ApprovedDigests,
) -> Result<(MountedImage, [u8; 32]), ImageError> {
    let mut mounted = MountedImage {
        dir: dir.to_path_buf(),
        device: None,
    };
    let outcome = set_up(id, offered, &mut mounted)
        .map_err(ImageError::from)
        .and_then(|()| {
            let digest = digest_tree(&mounted.image_mount()).map_err(ImageError::Read)?;
            check_digest(digest, approved)?;
            overlay(&mounted)?;
            Ok(digest)
        });
    match outcome {
        Ok(digest) => Ok((mounted, digest)),
        Err(error) => {
            mounted.release(id);
            Err(error)
        }
    }
}

fn set_up(
    id: &str,
    offered: &RootfsImage,
    mounted: &mut MountedImage,
) -> Result<(), ImageSetupError> {
    let (root_hash, salt, data_blocks) = parameters(offered)?;
    let share = Path::new(GUEST_SHARED_DIR).join(id);
    let image = open_in_share(Path::new(&offered.image), &share)?;
    let tree = open_in_share(Path::new(&offered.hash_tree), &share)?;
    let image_loop = loop_device::attach_read_only(&image, Path::new(&offered.image))?;
    let tree_loop = loop_device::attach_read_only(&tree, Path::new(&offered.hash_tree))?;
    let table = VerityTable {
        data_device: image_loop.device_number()?,
        hash_device: tree_loop.device_number()?,
        data_blocks,
        root_hash,
        salt,
    };
    let _ = std::fs::remove_dir_all(&mounted.dir);
    for dir in [
        mounted.image_mount(),
        mounted.writable_mount(),
        mounted.root(),
    ] {
        std::fs::create_dir_all(&dir).map_err(PathError::at("create", &dir))?;
    }
    let device = device_mapper::create_verity(&device_name(id), &table)?;
    // The table holds both loop devices now; they go when it is removed.
    drop((image_loop, tree_loop));
    let node = device.node().to_path_buf();
    mounted.device = Some(device);
    mount(
        Some(&node),
        &mounted.image_mount(),
        Some("erofs"),
        MsFlags::MS_RDONLY | MsFlags::MS_NODEV,
        None::<&str>,
    )
    .map_err(PathError::at("mount the erofs image from", &node))?;
    Ok(())
}

/// The writable layer lives on a tmpfs of its own, in guest memory.
fn overlay(mounted: &MountedImage) -> Result<(), ImageSetupError> {
    let rw = mounted.writable_mount();
    mount(
        Some("tmpfs"),
        &rw,
        Some("tmpfs"),
        MsFlags::MS_NODEV,
        Some("mode=0755"),
    )
    .map_err(PathError::at("mount the writable layer's tmpfs at", &rw))?;
    let (upper, work) = (rw.join("upper"), rw.join("work"));
    for dir in [&upper, &work] {
        std::fs::create_dir(dir).map_err(PathError::at("create", dir))?;
    }
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        mounted.image_mount().display(),
        upper.display(),
        work.display()
    );
    mount(
        Some("overlay"),
        &mounted.root(),
        Some("overlay"),
        MsFlags::empty(),
        Some(options.as_str()),
    )
    .map_err(PathError::at(
        "mount the container's overlay at",
        &mounted.root(),
    ))?;
    Ok(())
}

/// The node's root hash, salt and block count, checked for shape (their values are the
/// node's to choose: a wrong one only makes the image unreadable).
fn parameters(offered: &RootfsImage) -> Result<(String, String, u64), ImageSetupError> {
    let is_hex = |text: &str, max: usize| {
        !text.is_empty()
            && text.len() % 2 == 0
            && text.len() <= max
            && text.bytes().all(|b| b.is_ascii_hexdigit())
    };
    if offered.root_hash.len() != 64 || !is_hex(&offered.root_hash, 64) {
        return Err(ImageSetupError::Parameters(format!(
            "root hash {:?} is not 64 hex digits (SHA-256)",
            offered.root_hash
        )));
    }
    let salt = if offered.salt.is_empty() {
        "-".to_string()
    } else if is_hex(&offered.salt, 512) {
        offered.salt.clone()
    } else {
        return Err(ImageSetupError::Parameters(format!(
            "salt {:?} is not hex",
            offered.salt
        )));
    };
    if offered.data_blocks == 0 {
        return Err(ImageSetupError::Parameters(
            "the image has no blocks".into(),
        ));
    }
    Ok((
        offered.root_hash.to_ascii_lowercase(),
        salt,
        offered.data_blocks,
    ))
}

/// Opens a file the node names, refusing anything that is not a regular file that resolves
/// into the container's own share (a symlink to the model's volume, say).
fn open_in_share(path: &Path, share: &Path) -> Result<File, ImageSetupError> {
    let outside = |reason: String| ImageSetupError::Outside {
        path: path.to_path_buf(),
        share: share.to_path_buf(),
        reason,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| outside(format!("open: {e}")))?;
    let opened = std::fs::read_link(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&file)
    ))
    .map_err(|e| outside(format!("read where it leads: {e}")))?;
    if !opened.starts_with(share) {
        return Err(outside(format!("it leads to {}", opened.display())));
    }
    let metadata = file.metadata().map_err(|e| outside(format!("stat: {e}")))?;
    if !metadata.is_file() {
        return Err(outside("it is not a regular file".into()));
    }
    Ok(file)
}

/// Device-mapper names are at most 127 bytes and container ids up to 256.
fn device_name(id: &str) -> String {
    let digest = Sha256::digest(id.as_bytes());
    format!("veil-rootfs-{}", hex::encode(&digest[..8]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offered() -> RootfsImage {
        RootfsImage {
            image: format!("{GUEST_SHARED_DIR}/c1/rootfs.erofs"),
            hash_tree: format!("{GUEST_SHARED_DIR}/c1/rootfs.verity"),
            root_hash: "AB".repeat(32),
            salt: "cd".repeat(32),
            data_blocks: 10,
            ..Default::default()
        }
    }

    #[test]
    fn parameters_are_checked_for_shape() {
        let (root, salt, blocks) = parameters(&offered()).unwrap();
        assert_eq!(root, "ab".repeat(32));
        assert_eq!(salt, "cd".repeat(32));
        assert_eq!(blocks, 10);
        let no_salt = RootfsImage {
            salt: String::new(),
            ..offered()
        };
        assert_eq!(parameters(&no_salt).unwrap().1, "-");
        for bad in [
            RootfsImage {
                root_hash: "ab".repeat(16),
                ..offered()
            },
            RootfsImage {
                root_hash: format!("{} 0", "ab".repeat(31)),
                ..offered()
            },
            RootfsImage {
                salt: "cd 1 restart_on_corruption".into(),
                ..offered()
            },
            RootfsImage {
                data_blocks: 0,
                ..offered()
            },
        ] {
            assert!(
                matches!(parameters(&bad), Err(ImageSetupError::Parameters(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn files_outside_the_share_or_not_regular_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let share = root.path().join("c1");
        std::fs::create_dir(&share).unwrap();
        std::fs::write(share.join("rootfs.erofs"), b"x").unwrap();
        std::fs::write(root.path().join("model"), b"secret").unwrap();
        std::os::unix::fs::symlink(root.path().join("model"), share.join("link")).unwrap();
        std::fs::create_dir(share.join("dir")).unwrap();
        assert!(open_in_share(&share.join("rootfs.erofs"), &share).is_ok());
        for (path, why) in [
            (share.join("link"), "open"),
            (root.path().join("model"), "leads to"),
            (share.join("../model"), "leads to"),
            (share.join("dir"), "not a regular file"),
        ] {
            let error = open_in_share(&path, &share).unwrap_err().to_string();
            assert!(error.contains(why), "{}: {error}", path.display());
        }
    }

    #[test]
    fn device_names_fit_for_any_container_id() {
        let long = device_name(&"c".repeat(256));
        assert!(long.len() < 128);
        assert_ne!(device_name("a"), device_name("b"));
        assert_eq!(device_name("a"), device_name("a"));
    }
}
