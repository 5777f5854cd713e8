//! `veil node images`: the node's cache of reader rootfs images (made by the shims under
//! `<state_dir>/_rootfs-images`), listed, and pruned on demand with the shim's own rules.
//!
//! The shims collect the cache only when they make an image and when a pod ends; an
//! operator who wants the memory back now (or sees what an idle node holds) runs this.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, Result};
use clap::Args;
use serde::Serialize;
use veil_config::Config;
use veil_shim::sandbox::image_cache::{Collected, EntryState, ImageCache, DIR_NAME};

/// Arguments of `veil node images`.
#[derive(Debug, Clone, Args)]
pub struct ImagesArgs {
    /// veil's configuration, for `[runtime] state_dir` and `image_cache_mib`
    /// [default: $VEIL_CONFIG, else /etc/veil/configuration.toml, else the built-in defaults].
    #[arg(long)]
    config: Option<PathBuf>,
    /// Drop what the shims would drop at their next collection: images whose snapshot is
    /// gone, staging left by shims that died, and the least recently used unused images
    /// beyond `image_cache_mib` (or half the room left in `state_dir`).
    #[arg(long)]
    prune: bool,
    /// With --prune: drop every image no container uses now. Images in use always stay.
    #[arg(long, requires = "prune")]
    all: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// One directory of the cache, as listed.
#[derive(Debug, Serialize)]
struct Listed {
    key: String,
    /// "in use", "unused", "stale" (its snapshot is gone) or "staging".
    state: &'static str,
    bytes: u64,
    /// Containers linking the image now.
    users: u64,
    /// Seconds since the Unix epoch.
    last_used: Option<u64>,
    layers: Vec<PathBuf>,
    path: PathBuf,
}

#[derive(Debug, Serialize)]
struct Listing {
    dir: PathBuf,
    image_cache_mib: u64,
    images: Vec<Listed>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pruned: Option<Pruned>,
}

#[derive(Debug, Serialize)]
struct Pruned {
    stale: usize,
    unused: usize,
    unused_bytes: u64,
    abandoned_staging: usize,
}

impl From<Collected> for Pruned {
    fn from(c: Collected) -> Self {
        Pruned {
            stale: c.stale,
            unused: c.evicted,
            unused_bytes: c.evicted_bytes,
            abandoned_staging: c.abandoned,
        }
    }
}

/// Runs `veil node images`.
pub fn run(args: &ImagesArgs) -> Result<()> {
    let (config, path) = Config::discover(args.config.as_deref())
        .context("read veil's configuration (give another with --config)")?;
    tracing::debug!(config = ?path, "configuration");
    let listing = examine(
        &config.runtime.state_dir,
        config.runtime.image_cache_mib,
        args,
    );
    if args.json {
        println!("{}", serde_json::to_string_pretty(&listing)?);
    } else {
        print!("{}", table(&listing, SystemTime::now()));
    }
    Ok(())
}

/// Prunes when asked, then lists what is left.
fn examine(state_dir: &Path, image_cache_mib: u64, args: &ImagesArgs) -> Listing {
    let limit = if args.all { 0 } else { image_cache_mib };
    let pruned = args
        .prune
        .then(|| ImageCache::new(state_dir, limit).collect().into());
    Listing {
        dir: state_dir.join(DIR_NAME),
        image_cache_mib,
        images: list(&ImageCache::new(state_dir, image_cache_mib)),
        pruned,
    }
}

fn list(cache: &ImageCache) -> Vec<Listed> {
    let mut images: Vec<Listed> = cache
        .entries()
        .into_iter()
        .map(|entry| {
            let key = entry.key().to_string();
            let (state, bytes, users, last_used, layers) = match entry.state {
                EntryState::Kept(image) => (
                    if image.users > 0 { "in use" } else { "unused" },
                    image.bytes,
                    image.users,
                    unix_seconds(image.last_used),
                    image.layers,
                ),
                EntryState::Stale => ("stale", 0, 0, None, Vec::new()),
                EntryState::Staging { .. } => ("staging", 0, 0, None, Vec::new()),
            };
            Listed {
                key,
                state,
                bytes,
                users,
                last_used,
                layers,
                path: entry.path,
            }
        })
        .collect();
    // Most recently used first, as eviction keeps them.
    images.sort_by(|a, b| b.last_used.cmp(&a.last_used).then(a.key.cmp(&b.key)));
    images
}

fn unix_seconds(time: SystemTime) -> Option<u64> {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

fn table(listing: &Listing, now: SystemTime) -> String {
    let mut out = String::new();
    if let Some(pruned) = &listing.pruned {
        out += &format!(
            "pruned: {} unused ({}), {} stale, {} abandoned staging\n",
            pruned.unused,
            mib(pruned.unused_bytes),
            pruned.stale,
            pruned.abandoned_staging
        );
    }
    if listing.images.is_empty() {
        out += &format!("no rootfs images cached in {}\n", listing.dir.display());
        return out;
    }
    out += &format!(
        "{:<14} {:<8} {:>10} {:>5} {:>10} {:>6}\n",
        "KEY", "STATE", "SIZE", "USERS", "LAST USED", "LAYERS"
    );
    for image in &listing.images {
        let key: String = image.key.chars().take(12).collect();
        out += &format!(
            "{key:<14} {:<8} {:>10} {:>5} {:>10} {:>6}\n",
            image.state,
            mib(image.bytes),
            image.users,
            image.last_used.map_or("-".to_string(), |t| ago(t, now)),
            image.layers.len()
        );
    }
    let total: u64 = listing.images.iter().map(|i| i.bytes).sum();
    let unused: u64 = listing
        .images
        .iter()
        .filter(|i| i.state == "unused")
        .map(|i| i.bytes)
        .sum();
    out += &format!(
        "{} in {}; {} unused, kept up to image_cache_mib = {}\n",
        mib(total),
        listing.dir.display(),
        mib(unused),
        listing.image_cache_mib
    );
    out
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1u32 << 20))
}

fn ago(unix_seconds: u64, now: SystemTime) -> String {
    let seconds = self::unix_seconds(now)
        .unwrap_or_default()
        .saturating_sub(unix_seconds);
    match seconds {
        s if s < 120 => format!("{s} s ago"),
        s if s < 2 * 3600 => format!("{} min ago", s / 60),
        s if s < 2 * 86400 => format!("{} h ago", s / 3600),
        s => format!("{} d ago", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use veil_protocol::RootfsImage;
    use veil_shim::sandbox::image_cache::SnapshotKey;

    fn args(prune: bool, all: bool) -> ImagesArgs {
        ImagesArgs {
            config: None,
            prune,
            all,
            json: false,
        }
    }

    /// An image of a snapshot of `layer`, kept in the cache as a shim keeps it, with
    /// `users` containers' shares linking it.
    fn cached_image(state: &Path, layer: &Path, bytes: usize, users: usize) {
        std::fs::create_dir_all(layer).unwrap();
        let key = SnapshotKey::of_layers(vec![layer.to_path_buf()]).unwrap();
        let share = layer.with_extension("share");
        std::fs::create_dir_all(&share).unwrap();
        std::fs::write(share.join("rootfs.erofs"), vec![0u8; bytes]).unwrap();
        std::fs::write(share.join("rootfs.verity"), b"").unwrap();
        let cache = ImageCache::new(state, 4096);
        cache.keep(&key, &share, &RootfsImage::default()).unwrap();
        for user in 1..users {
            let other = share.with_extension(user.to_string());
            std::fs::create_dir_all(&other).unwrap();
            assert!(cache.link_into(&key, &other, "c").is_some());
        }
        if users == 0 {
            std::fs::remove_dir_all(&share).unwrap();
        }
    }

    fn set_last_used(state: &Path, layer: &Path, when: SystemTime) {
        let key = SnapshotKey::of_layers(vec![layer.to_path_buf()]).unwrap();
        std::fs::File::open(state.join(DIR_NAME).join(&key.name).join("parameters.json"))
            .unwrap()
            .set_modified(when)
            .unwrap();
    }

    #[test]
    fn the_cache_is_listed_most_recent_first_and_pruned_with_the_shims_rules() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let [used, unused, gone] = ["used", "unused", "gone"].map(|l| dir.path().join(l));
        cached_image(&state, &used, 2 << 20, 1);
        cached_image(&state, &unused, 1 << 20, 0);
        cached_image(&state, &gone, 1 << 20, 0);
        std::fs::remove_dir_all(&gone).unwrap();
        set_last_used(
            &state,
            &used,
            SystemTime::now() - Duration::from_secs(3 * 3600),
        );

        let listing = examine(&state, 4096, &args(false, false));
        let states: Vec<(&str, u64)> = listing.images.iter().map(|i| (i.state, i.users)).collect();
        assert_eq!(states, [("unused", 0), ("in use", 1), ("stale", 0)]);
        let text = table(&listing, SystemTime::now());
        assert!(
            text.contains("in use") && text.contains("3 h ago"),
            "{text}"
        );
        assert!(text.contains("3.0 MiB in"), "{text}");

        // Within the limit, pruning drops only the stale entry.
        let listing = examine(&state, 4096, &args(true, false));
        let pruned = listing.pruned.as_ref().unwrap();
        assert_eq!((pruned.stale, pruned.unused), (1, 0));
        assert_eq!(listing.images.len(), 2);
        // --all drops every unused image; the one in use stays.
        let listing = examine(&state, 4096, &args(true, true));
        let pruned = listing.pruned.as_ref().unwrap();
        assert_eq!((pruned.unused, pruned.unused_bytes), (1, 1 << 20));
        let states: Vec<&str> = listing.images.iter().map(|i| i.state).collect();
        assert_eq!(states, ["in use"]);
        assert!(table(&listing, SystemTime::now()).starts_with("pruned: 1 unused (1.0 MiB)"));
    }

    #[test]
    fn a_node_without_a_cache_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let listing = examine(dir.path(), 4096, &args(true, false));
        let text = table(&listing, SystemTime::now());
        assert!(text.ends_with(&format!(
            "no rootfs images cached in {}\n",
            dir.path().join(DIR_NAME).display()
        )));
    }

    #[test]
    fn ages_read_in_the_unit_that_fits() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(10 * 86400);
        let at = |s: u64| 10 * 86400 - s;
        assert_eq!(ago(at(5), now), "5 s ago");
        assert_eq!(ago(at(600), now), "10 min ago");
        assert_eq!(ago(at(5 * 3600), now), "5 h ago");
        assert_eq!(ago(at(3 * 86400), now), "3 d ago");
    }
}
