//! The node's cache of reader rootfs images ([`super::rootfs_image`]), shared by every pod:
//! `<state_dir>/_rootfs-images/<snapshot key>/`, one entry per snapshot the images were made
//! from. A container whose snapshot has an entry gets hard links to it instead of a new
//! `mkfs.erofs` and `veritysetup` run over its whole image (about 4.6 s per GiB of image on
//! the 2-CPU development machine).
//!
//! An entry is in use while a container's share links its image (its link count is above
//! one); an entry in use is never dropped. Of the entries no container uses, the node keeps
//! the most recently used up to `[runtime] image_cache_mib` and to half the room the file
//! system would have without them; entries whose snapshot layers are gone or were made anew
//! are dropped at once. Collection runs when a new entry is made and when a pod ends.
//!
//! Several shims share the directory without locks: an entry is staged under a name of its
//! own and renamed into place, so a shim sees a whole entry or none, and a shim that loses
//! a race (the entry removed between its look and its links, or made by another shim
//! first) makes or keeps its own image as if there were no cache. Nothing here is trusted
//! by the guest, which checks a linked image as it checks a new one.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use containerd_shim::protos::types::mount::Mount;
use serde::Serialize;
use sha2::{Digest, Sha256};
use veil_protocol::RootfsImage;

use super::rootfs_image::{ImageParameters, HASH_TREE_FILE, IMAGE_FILE};

/// The cache's directory under `[runtime] state_dir`. Sandboxes live in
/// `<state_dir>/<namespace>/<id>`, and a containerd namespace cannot start with `_`.
pub const DIR_NAME: &str = "_rootfs-images";
const PARAMETERS_FILE: &str = "parameters.json";
const LAYERS_FILE: &str = "layers.json";
/// Suffix of an entry being staged, after the staging shim's pid.
const STAGING_SUFFIX: &str = "partial";

/// Names the tree a rootfs was mounted from, when an image of it may be reused: an overlay
/// (containerd's overlayfs snapshotter) whose writable layer is still empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotKey {
    /// Hex SHA-256 of the read-only layers' paths and identities.
    pub name: String,
    layers: Vec<PathBuf>,
}

impl SnapshotKey {
    /// The key of a rootfs mounted with `mounts`, or `None` for anything but an overlay with
    /// an empty writable layer and layers that exist.
    pub fn of(mounts: &[Mount]) -> Option<SnapshotKey> {
        let [mount] = mounts else { return None };
        if mount.type_ != "overlay" {
            return None;
        }
        let option = |name: &str| mount.options.iter().find_map(|o| o.strip_prefix(name));
        if let Some(upper) = option("upperdir=") {
            std::fs::read_dir(upper)
                .ok()?
                .next()
                .is_none()
                .then_some(())?;
        }
        Self::of_layers(option("lowerdir=")?.split(':').map(PathBuf::from).collect())
    }

    /// The key of a snapshot of these read-only layers (uppermost first), or `None` when
    /// one of them is missing.
    pub fn of_layers(layers: Vec<PathBuf>) -> Option<SnapshotKey> {
        let name = Self::name_of(&layers)?;
        Some(SnapshotKey { name, layers })
    }

    /// A snapshot's layer directories are never written once committed, but a path can
    /// come back holding other files (containerd's metadata wiped and images pulled anew),
    /// so each layer counts with the identity of its directory, not its path alone.
    fn name_of(layers: &[PathBuf]) -> Option<String> {
        let mut hash = Sha256::new();
        for layer in layers {
            let meta = std::fs::metadata(layer).ok()?;
            hash.update(layer.as_os_str().as_encoded_bytes());
            for number in [meta.dev(), meta.ino()] {
                hash.update(number.to_le_bytes());
            }
            hash.update(meta.ctime().to_le_bytes());
            hash.update(meta.ctime_nsec().to_le_bytes());
        }
        Some(hash.finalize().iter().map(|b| format!("{b:02x}")).collect())
    }

    /// Whether the layers still exist as they were when the key was taken.
    fn is_current(&self) -> bool {
        Self::name_of(&self.layers).as_deref() == Some(self.name.as_str())
    }
}

/// What a collection dropped.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Collected {
    /// Entries whose snapshot is gone.
    pub stale: usize,
    /// Entries no container used, dropped to stay within the limit.
    pub evicted: usize,
    /// Staging directories of shims that are gone.
    pub abandoned: usize,
    /// What the evicted entries held.
    pub evicted_bytes: u64,
}

/// What [`ImageCache::clear`] did with one directory of the cache.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Cleared {
    /// Removed (in a dry run: would be).
    Removed,
    /// Kept: this many containers' shares link its image, so their pods still run.
    InUse(u64),
    /// Kept: the shim with this pid is staging it now.
    Staging(u32),
    /// Kept: it could not be removed, for this reason.
    Failed(String),
}

/// The node's image cache.
#[derive(Debug, Clone)]
pub struct ImageCache {
    dir: PathBuf,
    idle_limit_bytes: u64,
}

impl ImageCache {
    /// The cache under `state_root` (`[runtime] state_dir`), keeping at most `idle_limit_mib`
    /// of images no container uses.
    pub fn new(state_root: &Path, idle_limit_mib: u64) -> Self {
        ImageCache {
            dir: state_root.join(DIR_NAME),
            idle_limit_bytes: idle_limit_mib.saturating_mul(1 << 20),
        }
    }

    fn entry(&self, key: &SnapshotKey) -> PathBuf {
        self.dir.join(&key.name)
    }

    /// Links the image cached for `key` into `share`; `None` (and nothing left behind) when
    /// there is none or it cannot be linked.
    pub fn link_into(
        &self,
        key: &SnapshotKey,
        share: &Path,
        container_id: &str,
    ) -> Option<RootfsImage> {
        let entry = self.entry(key);
        let parameters: ImageParameters =
            serde_json::from_slice(&std::fs::read(entry.join(PARAMETERS_FILE)).ok()?).ok()?;
        let linked = [IMAGE_FILE, HASH_TREE_FILE]
            .iter()
            .try_for_each(|file| std::fs::hard_link(entry.join(file), share.join(file)));
        if let Err(error) = linked {
            tracing::warn!(container = %container_id, cache = %entry.display(), %error, "cached rootfs image not linked; making a new one");
            for file in [IMAGE_FILE, HASH_TREE_FILE] {
                let _ = std::fs::remove_file(share.join(file));
            }
            return None;
        }
        mark_used(&entry);
        Some(parameters.for_container(container_id))
    }

    /// Keeps the image just made in `share` as the entry of `key`. Another shim may have
    /// kept one first; its entry stays, and this image is still the container's.
    pub fn keep(
        &self,
        key: &SnapshotKey,
        share: &Path,
        image: &RootfsImage,
    ) -> std::io::Result<()> {
        let entry = self.entry(key);
        let staging = self.dir.join(format!(
            "{}.{}.{STAGING_SUFFIX}",
            key.name,
            std::process::id()
        ));
        std::fs::create_dir_all(&staging)?;
        let staged = (|| {
            for file in [IMAGE_FILE, HASH_TREE_FILE] {
                std::fs::hard_link(share.join(file), staging.join(file))?;
            }
            write_json(&staging.join(LAYERS_FILE), &key.layers)?;
            write_json(&staging.join(PARAMETERS_FILE), &ImageParameters::of(image))?;
            std::fs::rename(&staging, &entry)
        })();
        if staged.is_err() {
            let _ = std::fs::remove_dir_all(&staging);
        }
        match staged {
            Err(error) if entry.join(PARAMETERS_FILE).exists() => {
                tracing::debug!(cache = %entry.display(), %error, "another shim cached this snapshot's image first");
                Ok(())
            }
            other => other,
        }
    }

    /// What the cache holds, in no particular order: entries, staging directories and
    /// stale entries alike. Anything but a directory is not the cache's, and is left out.
    pub fn entries(&self) -> Vec<Entry> {
        let Ok(listing) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        listing
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| Entry::read(&e.path()))
            .collect()
    }

    /// Drops stale entries, abandoned staging directories, and the least recently used
    /// entries no container uses beyond the limit. Best effort: what cannot be read or
    /// removed stays, and is logged.
    pub fn collect(&self) -> Collected {
        let mut collected = Collected::default();
        let mut idle = Vec::new();
        for entry in self.entries() {
            match entry.state {
                EntryState::Staging { pid } if !shim_is_running(pid) => {
                    collected.abandoned += usize::from(remove(&entry.path, "its shim is gone"));
                }
                EntryState::Staging { .. } => {}
                EntryState::Stale => {
                    collected.stale += usize::from(remove(&entry.path, "its snapshot is gone"));
                }
                EntryState::Kept(image) if image.users == 0 => idle.push((entry.path, image)),
                EntryState::Kept(_) => {}
            }
        }
        let idle_bytes = idle
            .iter()
            .map(|(_, i)| i.bytes)
            .fold(0, u64::saturating_add);
        let limit = idle_limit(
            self.idle_limit_bytes,
            available_bytes(&self.dir),
            idle_bytes,
        );
        // Newest first: everything past the limit goes, oldest last used first.
        idle.sort_by_key(|(_, image)| std::cmp::Reverse(image.last_used));
        let mut kept_bytes = 0u64;
        for (path, image) in idle {
            kept_bytes = kept_bytes.saturating_add(image.bytes);
            if kept_bytes > limit {
                let why = "unused, beyond image_cache_mib or half the room left in state_dir";
                if remove(&path, why) {
                    collected.evicted += 1;
                    collected.evicted_bytes = collected.evicted_bytes.saturating_add(image.bytes);
                }
            }
        }
        collected
    }

    /// Drops every directory of the cache but the images containers link now and the
    /// staging of shims that run, then the cache's own directory once empty: what
    /// `veil node uninstall` leaves is what pods still use. Unlike [`Self::collect`], use
    /// is read from the image's links alone, whatever the snapshot's layers: an installer
    /// running in a pod need not see them.
    pub fn clear(&self, dry_run: bool) -> Vec<(PathBuf, Cleared)> {
        let cleared: Vec<(PathBuf, Cleared)> = self
            .entries()
            .into_iter()
            .map(|entry| {
                let fate = match entry.state {
                    EntryState::Staging { pid } if shim_is_running(pid) => Cleared::Staging(pid),
                    _ => match links_to_image(&entry.path) {
                        0 if dry_run => Cleared::Removed,
                        0 => match std::fs::remove_dir_all(&entry.path) {
                            Ok(()) => Cleared::Removed,
                            Err(error) => Cleared::Failed(error.to_string()),
                        },
                        users => Cleared::InUse(users),
                    },
                };
                (entry.path, fate)
            })
            .collect();
        if !dry_run && cleared.iter().all(|(_, fate)| *fate == Cleared::Removed) {
            // Another shim may be making its first entry; then the directory stays.
            let _ = std::fs::remove_dir(&self.dir);
        }
        cleared
    }
}

/// Containers' shares linking the image of the cache directory `path` (0 when it has none).
fn links_to_image(path: &Path) -> u64 {
    std::fs::metadata(path.join(IMAGE_FILE)).map_or(0, |m| m.nlink().saturating_sub(1))
}

/// Whether the shim that staged an entry still runs; a staging directory of one that is
/// gone will never be renamed into place.
fn shim_is_running(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// How many bytes of unused images to keep: at most `configured`, and at most half of what
/// the file system would have free without them, so that kept images never fill
/// `state_dir` (node memory by default) and leave no room for the next image to be made.
fn idle_limit(configured: u64, available: Option<u64>, idle_bytes: u64) -> u64 {
    available.map_or(configured, |available| {
        configured.min(available.saturating_add(idle_bytes) / 2)
    })
}

/// Bytes free to unprivileged writers on the file system holding `dir`.
fn available_bytes(dir: &Path) -> Option<u64> {
    let fs = nix::sys::statfs::statfs(dir).ok()?;
    let block = u64::try_from(fs.block_size()).ok()?;
    Some(fs.blocks_available().saturating_mul(block))
}

/// A directory of the cache, as listing and collection find it.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The directory.
    pub path: PathBuf,
    /// What it holds.
    pub state: EntryState,
}

/// What a directory of the cache holds.
#[derive(Debug, Clone)]
pub enum EntryState {
    /// Being made by a shim (or left behind by one that is gone).
    Staging {
        /// The shim's process.
        pid: u32,
    },
    /// Its snapshot's layers are gone or were made anew, or it cannot be read.
    Stale,
    /// A whole image of a snapshot that is still there.
    Kept(KeptImage),
}

/// A whole entry whose snapshot is still there.
#[derive(Debug, Clone)]
pub struct KeptImage {
    /// The image and its hash tree.
    pub bytes: u64,
    /// Containers whose shares link the image now; 0 means unused, and up for eviction.
    pub users: u64,
    /// When a container last got it (made or linked), which orders eviction.
    pub last_used: SystemTime,
    /// The snapshot's read-only layers.
    pub layers: Vec<PathBuf>,
}

impl Entry {
    fn read(path: &Path) -> Entry {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let mut parts = name.rsplitn(3, '.');
        let state = match (parts.next(), parts.next().map(str::parse), parts.next()) {
            (Some(STAGING_SUFFIX), Some(Ok(pid)), Some(_)) => EntryState::Staging { pid },
            _ => Self::read_kept(path, name).map_or(EntryState::Stale, EntryState::Kept),
        };
        Entry {
            path: path.to_path_buf(),
            state,
        }
    }

    fn read_kept(path: &Path, name: &str) -> Option<KeptImage> {
        let layers: Vec<PathBuf> =
            serde_json::from_slice(&std::fs::read(path.join(LAYERS_FILE)).ok()?).ok()?;
        let key = SnapshotKey {
            name: name.to_string(),
            layers,
        };
        if !key.is_current() {
            return None;
        }
        let image = std::fs::metadata(path.join(IMAGE_FILE)).ok()?;
        let tree = std::fs::metadata(path.join(HASH_TREE_FILE)).ok()?;
        let last_used = std::fs::metadata(path.join(PARAMETERS_FILE))
            .and_then(|m| m.modified())
            .ok()?;
        Some(KeptImage {
            bytes: image.len().saturating_add(tree.len()),
            users: image.nlink().saturating_sub(1),
            last_used,
            layers: key.layers,
        })
    }

    /// The snapshot key the entry is kept under (for a staging directory, the one it will be).
    pub fn key(&self) -> &str {
        let name = self
            .path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        name.split('.').next().unwrap_or(name)
    }
}

/// Records a use in the entry's parameters' modification time, which orders eviction.
fn mark_used(entry: &Path) {
    let touched = std::fs::File::open(entry.join(PARAMETERS_FILE))
        .and_then(|file| file.set_modified(SystemTime::now()));
    if let Err(error) = touched {
        tracing::debug!(cache = %entry.display(), %error, "cache entry's last use not recorded");
    }
}

fn write_json(path: &Path, value: &impl Serialize) -> std::io::Result<()> {
    std::fs::write(
        path,
        serde_json::to_vec(value).map_err(std::io::Error::other)?,
    )
}

/// Removes a cache directory; says whether it went.
fn remove(path: &Path, why: &str) -> bool {
    match std::fs::remove_dir_all(path) {
        Ok(()) => {
            tracing::info!(cache = %path.display(), "rootfs image dropped from the node's cache: {why}");
            true
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => false,
        Err(error) => {
            tracing::warn!(cache = %path.display(), %error, "rootfs image not dropped from the node's cache ({why})");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn overlay(lower: &str, upper: &Path) -> Mount {
        Mount {
            type_: "overlay".into(),
            source: "overlay".into(),
            options: vec![
                "index=off".into(),
                format!("upperdir={}", upper.display()),
                format!("lowerdir={lower}"),
            ],
            ..Default::default()
        }
    }

    /// Layer directories `names` under `dir`, created.
    fn layers(dir: &Path, names: &[&str]) -> String {
        let paths: Vec<String> = names
            .iter()
            .map(|name| {
                let path = dir.join(name);
                std::fs::create_dir_all(&path).unwrap();
                path.display().to_string()
            })
            .collect();
        paths.join(":")
    }

    #[test]
    fn an_overlay_with_an_empty_writable_layer_is_named_by_its_read_only_layers() {
        let dir = tempfile::tempdir().unwrap();
        let upper = dir.path().join("upper");
        std::fs::create_dir(&upper).unwrap();
        let image = layers(dir.path(), &["2", "1"]);
        let key = SnapshotKey::of(&[overlay(&image, &upper)]).expect("a key");
        assert_eq!(key.name.len(), 64);
        assert_eq!(
            SnapshotKey::of(&[overlay(&image, &upper)]),
            Some(key.clone())
        );
        let other = layers(dir.path(), &["3", "1"]);
        assert_ne!(SnapshotKey::of(&[overlay(&other, &upper)]), Some(key));
        let missing = format!("{}:{}", dir.path().join("gone").display(), image);
        assert_eq!(
            SnapshotKey::of(&[overlay(&missing, &upper)]),
            None,
            "a layer is missing"
        );
        let bind = Mount {
            type_: "bind".into(),
            source: dir.path().join("1").display().to_string(),
            ..Default::default()
        };
        assert_eq!(SnapshotKey::of(&[bind]), None, "not an overlay");
        std::fs::write(upper.join("written"), b"x").unwrap();
        assert_eq!(
            SnapshotKey::of(&[overlay(&image, &upper)]),
            None,
            "the writable layer has files the layers do not"
        );
    }

    #[test]
    fn a_layer_made_anew_at_the_same_path_is_another_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let upper = dir.path().join("upper");
        std::fs::create_dir(&upper).unwrap();
        let image = layers(dir.path(), &["2", "1"]);
        let before = SnapshotKey::of(&[overlay(&image, &upper)]).unwrap();
        assert!(before.is_current());
        // containerd's metadata wiped and the image pulled again: the same path, other files.
        std::fs::rename(dir.path().join("1"), dir.path().join("old")).unwrap();
        std::fs::create_dir(dir.path().join("1")).unwrap();
        let after = SnapshotKey::of(&[overlay(&image, &upper)]).unwrap();
        assert_ne!(before, after);
        assert!(!before.is_current());
    }

    /// A share holding an image of `bytes` bytes and a small tree, as `build` leaves it.
    fn share_with_image(dir: &Path, name: &str, bytes: usize) -> (PathBuf, RootfsImage) {
        let share = dir.join(name);
        std::fs::create_dir_all(&share).unwrap();
        std::fs::write(share.join(IMAGE_FILE), vec![1u8; bytes]).unwrap();
        std::fs::write(share.join(HASH_TREE_FILE), [2u8; 64]).unwrap();
        let image = RootfsImage {
            root_hash: format!("{name:0>64}"),
            salt: "00".into(),
            data_blocks: (bytes / 4096) as u64,
            ..Default::default()
        };
        (share, image)
    }

    fn key_of(dir: &Path, layer: &str) -> SnapshotKey {
        let upper = dir.join("upper");
        std::fs::create_dir_all(&upper).unwrap();
        SnapshotKey::of(&[overlay(&layers(dir, &[layer]), &upper)]).unwrap()
    }

    /// What a kept entry holds (all entries here are made alike, so any one tells).
    fn entry_bytes(cache: &ImageCache, key: &SnapshotKey) -> u64 {
        [IMAGE_FILE, HASH_TREE_FILE]
            .iter()
            .map(|f| std::fs::metadata(cache.entry(key).join(f)).unwrap().len())
            .sum()
    }

    fn cached(cache: &ImageCache, key: &SnapshotKey) -> bool {
        cache.entry(key).join(PARAMETERS_FILE).exists()
    }

    #[test]
    fn a_kept_image_is_linked_into_the_next_share_with_its_parameters() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let cache = ImageCache::new(&dir.path().join("state"), 0);
        let key = key_of(dir.path(), "layer");
        assert_eq!(
            cache.link_into(&key, dir.path(), "c0"),
            None,
            "nothing cached yet"
        );
        let (first, image) = share_with_image(dir.path(), "c1", 8192);
        cache.keep(&key, &first, &image).unwrap();
        let second = dir.path().join("c2");
        std::fs::create_dir(&second).unwrap();
        let linked = cache.link_into(&key, &second, "c2").expect("linked");
        assert_eq!(
            linked.image,
            format!("{}/c2/{IMAGE_FILE}", veil_protocol::GUEST_SHARED_DIR)
        );
        assert_eq!(
            (&linked.root_hash, &linked.salt, linked.data_blocks),
            (&image.root_hash, &image.salt, image.data_blocks)
        );
        let inode = |share: &Path| std::fs::metadata(share.join(IMAGE_FILE)).unwrap().ino();
        assert_eq!(inode(&first), inode(&second), "one image on the node");
        // A second keep of the same snapshot (another shim that made its own) leaves the
        // entry as it was.
        let (third, other) = share_with_image(dir.path(), "c3", 4096);
        cache.keep(&key, &third, &other).unwrap();
        assert_eq!(inode(&cache.entry(&key)), inode(&first));
    }

    #[test]
    fn collection_keeps_images_in_use_and_the_most_recently_used_within_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        // 1 MiB for unused images; each image here is 600 KiB.
        let cache = ImageCache::new(&state, 1);
        let bytes = 600 << 10;
        let keys: Vec<SnapshotKey> = ["old", "recent", "in-use", "gone"]
            .iter()
            .map(|layer| key_of(dir.path(), layer))
            .collect();
        for (n, key) in keys.iter().enumerate() {
            let (share, image) = share_with_image(dir.path(), &format!("share{n}"), bytes);
            cache.keep(key, &share, &image).unwrap();
        }
        let long_ago = SystemTime::now() - Duration::from_secs(3600);
        std::fs::File::open(cache.entry(&keys[0]).join(PARAMETERS_FILE))
            .unwrap()
            .set_modified(long_ago)
            .unwrap();
        // The pods of "old", "recent" and "gone" ended; "in-use"'s container still runs.
        for n in [0, 1, 3] {
            std::fs::remove_dir_all(dir.path().join(format!("share{n}"))).unwrap();
        }
        std::fs::remove_dir_all(dir.path().join("gone")).unwrap();
        // A shim that died while staging, and one staging now.
        let abandoned = cache
            .dir
            .join(format!("{}.4294967295.{STAGING_SUFFIX}", keys[0].name));
        let staging = cache.dir.join(format!(
            "{}.{}.{STAGING_SUFFIX}",
            keys[1].name,
            std::process::id()
        ));
        std::fs::create_dir(&abandoned).unwrap();
        std::fs::create_dir(&staging).unwrap();

        let listed = |state: fn(&EntryState) -> bool| {
            let mut keys: Vec<String> = cache
                .entries()
                .into_iter()
                .filter(|e| state(&e.state))
                .map(|e| e.key().to_string())
                .collect();
            keys.sort();
            keys
        };
        let sorted = |mut keys: Vec<String>| {
            keys.sort();
            keys
        };
        assert_eq!(
            listed(|s| matches!(s, EntryState::Kept(i) if i.users == 0)),
            sorted(vec![keys[0].name.clone(), keys[1].name.clone()])
        );
        assert_eq!(
            listed(|s| matches!(s, EntryState::Kept(i) if i.users == 1 && i.bytes >= 600 << 10)),
            vec![keys[2].name.clone()]
        );
        assert_eq!(
            listed(|s| matches!(s, EntryState::Stale)),
            vec![keys[3].name.clone()]
        );
        assert_eq!(
            listed(|s| matches!(s, EntryState::Staging { .. })),
            sorted(vec![keys[0].name.clone(), keys[1].name.clone()])
        );

        let collected = cache.collect();
        assert_eq!(
            collected,
            Collected {
                stale: 1,
                evicted: 1,
                abandoned: 1,
                evicted_bytes: entry_bytes(&cache, &keys[1]),
            }
        );
        assert!(
            !cached(&cache, &keys[0]),
            "least recently used, beyond the limit"
        );
        assert!(
            cached(&cache, &keys[1]),
            "most recently used, within the limit"
        );
        assert!(cached(&cache, &keys[2]), "in use");
        assert!(!cache.entry(&keys[3]).exists(), "its snapshot is gone");
        assert!(!abandoned.exists() && staging.exists());

        // With no room for unused images, an image goes once its last container does.
        let cache = ImageCache::new(&state, 0);
        assert_eq!(cache.collect().evicted, 1);
        assert!(cached(&cache, &keys[2]));
        std::fs::remove_dir_all(dir.path().join("share2")).unwrap();
        assert_eq!(cache.collect().evicted, 1);
        assert!(!cached(&cache, &keys[2]));
    }

    #[test]
    fn clearing_keeps_only_images_containers_link_and_staging_of_running_shims() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let cache = ImageCache::new(&state, 4096);
        let keys: Vec<SnapshotKey> = ["unused", "in-use", "gone-in-use"]
            .iter()
            .map(|layer| key_of(dir.path(), layer))
            .collect();
        for (n, key) in keys.iter().enumerate() {
            let (share, image) = share_with_image(dir.path(), &format!("share{n}"), 4096);
            cache.keep(key, &share, &image).unwrap();
        }
        std::fs::remove_dir_all(dir.path().join("share0")).unwrap();
        // Layers out of sight (an installer in a pod) do not make an image unused.
        std::fs::remove_dir_all(dir.path().join("gone-in-use")).unwrap();
        let abandoned = cache.dir.join(format!("x.4294967295.{STAGING_SUFFIX}"));
        let staging = cache
            .dir
            .join(format!("y.{}.{STAGING_SUFFIX}", std::process::id()));
        std::fs::create_dir(&abandoned).unwrap();
        std::fs::create_dir(&staging).unwrap();
        let fates = |dry_run| {
            let mut fates = cache.clear(dry_run);
            fates.sort();
            fates
        };
        let mut expected = vec![
            (cache.entry(&keys[0]), Cleared::Removed),
            (cache.entry(&keys[1]), Cleared::InUse(1)),
            (cache.entry(&keys[2]), Cleared::InUse(1)),
            (abandoned.clone(), Cleared::Removed),
            (staging.clone(), Cleared::Staging(std::process::id())),
        ];
        expected.sort();

        assert_eq!(fates(true), expected);
        assert!(cached(&cache, &keys[0]) && abandoned.exists(), "a dry run");
        assert_eq!(fates(false), expected);
        assert!(!cached(&cache, &keys[0]) && !abandoned.exists());
        assert!(cached(&cache, &keys[1]) && cached(&cache, &keys[2]) && staging.exists());

        // Once the pods end and the staging shim is done, nothing is left, the directory
        // included.
        std::fs::remove_dir(&staging).unwrap();
        for n in [1, 2] {
            std::fs::remove_dir_all(dir.path().join(format!("share{n}"))).unwrap();
        }
        assert!(fates(false)
            .iter()
            .all(|(_, fate)| *fate == Cleared::Removed));
        assert!(!cache.dir.exists() && state.exists());
    }

    #[test]
    fn unused_images_keep_half_the_room_the_file_system_would_have_without_them() {
        const GIB: u64 = 1 << 30;
        assert_eq!(idle_limit(4 * GIB, Some(100 * GIB), GIB), 4 * GIB);
        assert_eq!(idle_limit(4 * GIB, Some(GIB), 2 * GIB), 3 * GIB / 2);
        assert_eq!(idle_limit(4 * GIB, Some(0), 0), 0);
        assert_eq!(idle_limit(4 * GIB, None, GIB), 4 * GIB, "statfs failed");
        assert!(available_bytes(Path::new("/")).is_some());
    }

    #[tokio::test]
    async fn a_container_of_a_snapshot_another_pod_made_an_image_of_gets_links_to_it() {
        use std::os::unix::fs::MetadataExt;
        let Some((dir, rootfs)) = super::super::rootfs_image::tests::small_rootfs_and_tools()
        else {
            return;
        };
        let cache = ImageCache::new(&dir.path().join("state"), 0);
        let key = key_of(dir.path(), "layer");
        let mut offered = Vec::new();
        for pod in ["pod1", "pod2"] {
            let share = dir.path().join(pod).join("c");
            std::fs::create_dir_all(&share).unwrap();
            offered.push(
                super::super::rootfs_image::build_or_reuse(
                    &rootfs,
                    &share,
                    "c",
                    Some((&cache, &key)),
                )
                .await
                .expect("image"),
            );
        }
        let [(first, made), (second, reused)] = [offered[0].clone(), offered[1].clone()];
        assert!(!made && reused);
        assert_eq!(second, first);
        let inode = |pod: &str| {
            std::fs::metadata(dir.path().join(pod).join("c").join(IMAGE_FILE))
                .unwrap()
                .ino()
        };
        assert_eq!(
            inode("pod2"),
            inode("pod1"),
            "one image on the node, linked"
        );
    }
}
