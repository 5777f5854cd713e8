//! An image's rootfs as containerd unpacks it, without unpacking it: the layers of one image
//! in an OCI image archive (`docker save` on Docker 25 and later, `podman save --format
//! oci-archive`, `skopeo copy ... oci-archive:FILE`) or OCI layout directory, applied in
//! order to a tree held in memory, whiteouts included, and digested as
//! [`veil_protocol::rootfs`] digests a directory.
//!
//! Applied as containerd's applier does: a path is cleaned lexically, its parent resolved
//! through the symlinks of the tree so far (an absolute link counts from the image's root),
//! missing parents are directories of mode 0755, a directory over a directory keeps its
//! contents, anything else replaces what was there; `.wh.NAME` removes `NAME` of the layers
//! below, `.wh..wh..opq` empties its directory of them. Nothing is written to disk, so a
//! hostile layer cannot reach outside the tree.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use veil_protocol::rootfs::{clean_lexically, TreeEntry};

/// The platform veil's guests run.
const GUEST_PLATFORM: (&str, &str) = ("linux", "amd64");
/// Symlinks followed while resolving one path, as the kernel's limit.
const MAX_LINKS: usize = 40;
/// The largest index or manifest read (they are small JSON documents).
const MAX_JSON: u64 = 4 << 20;
const OPAQUE: &str = ".wh..wh..opq";
const WHITEOUT_PREFIX: &str = ".wh.";

/// A rootfs in memory: every path (the root is the empty path) and what is there.
pub type Tree = BTreeMap<PathBuf, TreeEntry>;

#[derive(Deserialize)]
struct Index {
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    platform: Option<Platform>,
    #[serde(default)]
    annotations: HashMap<String, String>,
}

#[derive(Deserialize)]
struct Platform {
    os: String,
    architecture: String,
}

#[derive(Deserialize)]
struct Manifest {
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

/// Where an image's files are: a layout directory, or an archive of one.
enum Blobs {
    Directory(PathBuf),
    Archive {
        path: PathBuf,
        /// Each member's data: offset and length.
        members: HashMap<PathBuf, (u64, u64)>,
    },
}

impl Blobs {
    fn open(source: &Path) -> Result<Blobs> {
        if source.is_dir() {
            return Ok(Blobs::Directory(source.to_path_buf()));
        }
        let file = File::open(source).with_context(|| format!("open {}", source.display()))?;
        let mut archive = tar::Archive::new(file);
        let mut members = HashMap::new();
        // Seeking past the members' data: an archive holds the image's whole layers.
        for entry in archive
            .entries_with_seek()
            .with_context(|| format!("read {} as a tar archive", source.display()))?
        {
            let entry = entry.with_context(|| format!("read {}", source.display()))?;
            let name = clean_lexically(&entry.path()?);
            members.insert(name, (entry.raw_file_position(), entry.size()));
        }
        Ok(Blobs::Archive {
            path: source.to_path_buf(),
            members,
        })
    }

    fn read(&self, name: &Path) -> Result<Box<dyn Read>> {
        match self {
            Blobs::Directory(root) => {
                let path = root.join(name);
                let file = File::open(&path).with_context(|| format!("open {}", path.display()))?;
                Ok(Box::new(file))
            }
            Blobs::Archive { path, members } => {
                let &(offset, size) = members
                    .get(name)
                    .with_context(|| format!("{} has no {}", path.display(), name.display()))?;
                let mut file =
                    File::open(path).with_context(|| format!("open {}", path.display()))?;
                file.seek(SeekFrom::Start(offset))?;
                Ok(Box::new(file.take(size)))
            }
        }
    }

    fn json<T: serde::de::DeserializeOwned>(&self, name: &Path) -> Result<T> {
        let mut text = Vec::new();
        self.read(name)?
            .take(MAX_JSON)
            .read_to_end(&mut text)
            .with_context(|| format!("read {}", name.display()))?;
        serde_json::from_slice(&text).with_context(|| format!("parse {}", name.display()))
    }
}

fn blob_path(digest: &str) -> Result<PathBuf> {
    let (algorithm, hex) = digest
        .split_once(':')
        .filter(|(a, h)| !a.is_empty() && !h.is_empty() && !h.contains('/'))
        .with_context(|| format!("{digest:?} is not a digest (algorithm:hex)"))?;
    Ok(PathBuf::from("blobs").join(algorithm).join(hex))
}

/// The rootfs of `image` (or of the only image) in the OCI archive or layout at `source`;
/// `progress` gets the bytes of file content read so far.
pub fn image_tree(
    source: &Path,
    image: Option<&str>,
    progress: &mut dyn FnMut(u64),
) -> Result<Tree> {
    let blobs = Blobs::open(source)?;
    let index: Index = blobs.json(Path::new("index.json")).with_context(|| {
        format!(
            "{} is not an OCI image archive or layout (no index.json): save the image as OCI, e.g. `podman save --format oci-archive`, `skopeo copy docker://IMAGE oci-archive:FILE` or `docker save` (Docker 25+)",
            source.display()
        )
    })?;
    let chosen = choose_image(&index.manifests, image)?;
    let layers = layers_of(&blobs, chosen, 0)?;
    let mut tree = Tree::new();
    tree.insert(PathBuf::new(), TreeEntry::Directory { mode: 0o755 });
    let mut read = 0u64;
    let mut on_file = |size: u64| {
        read += size;
        progress(read);
    };
    for (number, layer) in layers.iter().enumerate() {
        let reader = blobs.read(&blob_path(&layer.digest)?)?;
        apply_layer(&mut tree, decompressed(reader)?, &mut on_file)
            .with_context(|| format!("layer {} ({})", number + 1, layer.digest))?;
    }
    Ok(tree)
}

fn image_names(descriptor: &Descriptor) -> Vec<&str> {
    [
        "io.containerd.image.name",
        "org.opencontainers.image.ref.name",
    ]
    .iter()
    .filter_map(|key| descriptor.annotations.get(*key).map(String::as_str))
    .collect()
}

fn choose_image<'a>(manifests: &'a [Descriptor], image: Option<&str>) -> Result<&'a Descriptor> {
    let names = || {
        manifests
            .iter()
            .flat_map(image_names)
            .collect::<Vec<_>>()
            .join(", ")
    };
    match image {
        Some(wanted) => manifests
            .iter()
            .find(|m| image_names(m).contains(&wanted))
            .with_context(|| {
                format!(
                    "no image named {wanted:?} in the archive; it holds: {}",
                    names()
                )
            }),
        None => match manifests {
            [only] => Ok(only),
            [] => bail!("the archive's index.json lists no image"),
            _ if manifests.iter().all(|m| m.platform.is_some()) => for_guest_platform(manifests),
            _ => bail!(
                "the archive holds {} images ({}); choose one with --image NAME",
                manifests.len(),
                names()
            ),
        },
    }
}

fn for_guest_platform(manifests: &[Descriptor]) -> Result<&Descriptor> {
    let (os, architecture) = GUEST_PLATFORM;
    manifests
        .iter()
        .find(|m| {
            m.platform
                .as_ref()
                .is_some_and(|p| p.os == os && p.architecture == architecture)
        })
        .with_context(|| {
            format!("the image has no {os}/{architecture} variant, which veil's guests run")
        })
}

/// The layers of the manifest `descriptor` names, following an index to the guest's
/// platform.
fn layers_of(blobs: &Blobs, descriptor: &Descriptor, depth: usize) -> Result<Vec<Descriptor>> {
    if depth > 4 {
        bail!("indexes nest too deep at {}", descriptor.digest);
    }
    let manifest: Manifest = blobs.json(&blob_path(&descriptor.digest)?)?;
    match manifest.manifests {
        Some(variants) => layers_of(blobs, for_guest_platform(&variants)?, depth + 1),
        None if descriptor.media_type.contains("index")
            || descriptor.media_type.contains("list") =>
        {
            bail!("{} is an index without manifests", descriptor.digest)
        }
        None => Ok(manifest.layers),
    }
}

/// gzip is recognised by its magic bytes whatever the media type says; zstd is refused.
fn decompressed(mut reader: Box<dyn Read>) -> Result<Box<dyn Read>> {
    let mut magic = [0u8; 4];
    let mut filled = 0;
    while filled < magic.len() {
        let n = reader.read(&mut magic[filled..])?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    let whole = std::io::Cursor::new(magic[..filled].to_vec()).chain(reader);
    match magic {
        [0x1f, 0x8b, ..] => Ok(Box::new(flate2::read::GzDecoder::new(whole))),
        [0x28, 0xb5, 0x2f, 0xfd] => {
            bail!("the layer is zstd-compressed, which veil does not read; save the image with gzip or uncompressed layers")
        }
        _ => Ok(Box::new(whole)),
    }
}

/// `path` with every symlink among its components resolved within the tree (the last
/// component too when `follow_last`).
fn resolve(tree: &Tree, path: &Path, follow_last: bool) -> Result<PathBuf> {
    let mut resolved = PathBuf::new();
    let mut pending: Vec<PathBuf> = path
        .components()
        .rev()
        .map(|c| PathBuf::from(c.as_os_str()))
        .collect();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        if part.as_os_str() == ".." {
            resolved.pop();
            continue;
        }
        if part.as_os_str() == "." || part.as_os_str() == "/" {
            continue;
        }
        let candidate = resolved.join(&part);
        let is_last = pending.is_empty();
        match tree.get(&candidate) {
            Some(TreeEntry::Symlink { target }) if !is_last || follow_last => {
                links += 1;
                if links > MAX_LINKS {
                    bail!("too many symlinks resolving {}", path.display());
                }
                if target.is_absolute() {
                    resolved = PathBuf::new();
                }
                pending.extend(
                    target
                        .components()
                        .rev()
                        .map(|c| PathBuf::from(c.as_os_str())),
                );
            }
            _ => resolved = candidate,
        }
    }
    Ok(resolved)
}

fn remove_subtree(tree: &mut Tree, path: &Path) {
    let doomed: Vec<PathBuf> = tree
        .range(path.to_path_buf()..)
        .take_while(|(p, _)| p.starts_with(path))
        .map(|(p, _)| p.clone())
        .collect();
    for p in doomed {
        tree.remove(&p);
    }
}

fn make_parents(tree: &mut Tree, path: &Path) -> Result<()> {
    let mut prefix = PathBuf::new();
    for component in path.parent().into_iter().flat_map(Path::components) {
        prefix.push(component);
        match tree.get(&prefix) {
            Some(TreeEntry::Directory { .. }) => {}
            None => {
                tree.insert(prefix.clone(), TreeEntry::Directory { mode: 0o755 });
            }
            Some(_) => bail!(
                "{} needs {} to be a directory, and an earlier entry made it something else",
                path.display(),
                prefix.display()
            ),
        }
    }
    Ok(())
}

/// Applies one layer; `on_file` gets each regular file's size as it is read.
fn apply_layer(tree: &mut Tree, reader: impl Read, on_file: &mut dyn FnMut(u64)) -> Result<()> {
    let mut archive = tar::Archive::new(reader);
    let mut this_layer: HashSet<PathBuf> = HashSet::new();
    for entry in archive
        .entries()
        .context("read the layer as a tar archive")?
    {
        let mut entry = entry.context("read the layer")?;
        let given = clean_lexically(&entry.path()?);
        let name = given.file_name().map(|n| n.to_string_lossy().into_owned());
        let parent = resolve(tree, given.parent().unwrap_or(Path::new("")), true)?;
        if name.as_deref() == Some(OPAQUE) {
            let lower: Vec<PathBuf> = tree
                .range(parent.clone()..)
                .take_while(|(p, _)| p.starts_with(&parent))
                .filter(|(p, _)| p.parent() == Some(parent.as_path()) && !this_layer.contains(*p))
                .map(|(p, _)| p.clone())
                .collect();
            for child in lower {
                remove_subtree(tree, &child);
            }
            continue;
        }
        if let Some(hidden) = name
            .as_deref()
            .and_then(|n| n.strip_prefix(WHITEOUT_PREFIX))
        {
            remove_subtree(tree, &parent.join(hidden));
            continue;
        }
        let path = match given.file_name() {
            Some(file_name) => parent.join(file_name),
            None => PathBuf::new(),
        };
        let mode = entry.header().mode().context("read the entry's mode")? & 0o7777;
        let new = match entry.header().entry_type() {
            tar::EntryType::Directory => TreeEntry::Directory { mode },
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let mut hasher = Sha256::new();
                let size = std::io::copy(&mut entry, &mut hasher)
                    .with_context(|| format!("read {}", path.display()))?;
                on_file(size);
                TreeEntry::File {
                    mode,
                    size,
                    sha256: hasher.finalize().into(),
                }
            }
            tar::EntryType::Symlink => TreeEntry::Symlink {
                target: entry
                    .link_name()?
                    .with_context(|| format!("the symlink {} has no target", path.display()))?
                    .into_owned(),
            },
            tar::EntryType::Link => {
                let target = entry
                    .link_name()?
                    .with_context(|| format!("the hard link {} has no target", path.display()))?;
                let target = resolve(tree, &clean_lexically(&target), false)?;
                tree.get(&target).cloned().with_context(|| {
                    format!(
                        "the hard link {} names {}, which no earlier entry made",
                        path.display(),
                        target.display()
                    )
                })?
            }
            other => bail!(
                "{} is a {other:?} entry; an approved rootfs holds only directories, regular files and symlinks",
                path.display()
            ),
        };
        let keeps_contents = matches!(
            (tree.get(&path), &new),
            (
                Some(TreeEntry::Directory { .. }),
                TreeEntry::Directory { .. }
            )
        );
        if !keeps_contents {
            remove_subtree(tree, &path);
        }
        make_parents(tree, &path)?;
        tree.insert(path.clone(), new);
        this_layer.insert(path);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A layer of `(path, kind, mode, content or link target)`.
    fn layer(entries: &[(&str, tar::EntryType, u32, &str)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, kind, mode, data) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(*kind);
            header.set_mode(*mode);
            let body: &[u8] = if *kind == tar::EntryType::Regular {
                data.as_bytes()
            } else {
                &[]
            };
            header.set_size(body.len() as u64);
            if matches!(kind, tar::EntryType::Symlink | tar::EntryType::Link) {
                builder
                    .append_link(&mut header, path, data)
                    .expect("append link");
            } else {
                builder
                    .append_data(&mut header, path, body)
                    .expect("append");
            }
        }
        builder.into_inner().expect("tar")
    }

    fn applied(layers: &[Vec<u8>]) -> Tree {
        let mut tree = Tree::new();
        tree.insert(PathBuf::new(), TreeEntry::Directory { mode: 0o755 });
        for bytes in layers {
            apply_layer(&mut tree, bytes.as_slice(), &mut |_| {}).expect("apply");
        }
        tree
    }

    fn paths(tree: &Tree) -> Vec<String> {
        tree.keys().map(|p| p.display().to_string()).collect()
    }

    use tar::EntryType::{Directory as D, Link as H, Regular as F, Symlink as L};

    #[test]
    fn whiteouts_hide_the_lower_layers_and_opaque_directories_keep_their_own_layer() {
        let lower = layer(&[
            ("etc/", D, 0o755, ""),
            ("etc/passwd", F, 0o644, "root"),
            ("etc/shadow", F, 0o600, "x"),
            ("opt/app/old", F, 0o644, "old"),
        ]);
        let upper = layer(&[
            ("etc/.wh.shadow", F, 0o644, ""),
            ("opt/app/new", F, 0o644, "new"),
            ("opt/app/.wh..wh..opq", F, 0o644, ""),
        ]);
        let tree = applied(&[lower, upper]);
        assert_eq!(
            paths(&tree),
            ["", "etc", "etc/passwd", "opt", "opt/app", "opt/app/new"]
        );
        assert_eq!(tree[Path::new("opt")], TreeEntry::Directory { mode: 0o755 });
    }

    #[test]
    fn parents_resolve_through_the_trees_symlinks_and_stay_inside_it() {
        let tree = applied(&[layer(&[
            ("usr/lib/", D, 0o755, ""),
            ("lib", L, 0o777, "usr/lib"),
            ("escape", L, 0o777, "/../../usr"),
            ("lib/libc.so", F, 0o755, "libc"),
            ("escape/bin/tool", F, 0o755, "tool"),
            ("usr/lib/libm.so", H, 0o755, "lib/libc.so"),
        ])]);
        assert!(tree.contains_key(Path::new("usr/lib/libc.so")));
        assert!(tree.contains_key(Path::new("usr/bin/tool")));
        assert!(!tree.contains_key(Path::new("lib/libc.so")));
        assert_eq!(
            tree[Path::new("usr/lib/libm.so")],
            tree[Path::new("usr/lib/libc.so")]
        );
    }

    #[test]
    fn a_later_entry_replaces_an_earlier_one_and_a_directory_keeps_its_contents() {
        let tree = applied(&[
            layer(&[
                ("data/", D, 0o755, ""),
                ("data/keep", F, 0o644, "k"),
                ("tool", F, 0o755, "v1"),
            ]),
            layer(&[
                ("data/", D, 0o700, ""),
                ("tool/", D, 0o755, ""),
                ("tool/x", F, 0o4755, "suid"),
            ]),
        ]);
        assert_eq!(
            tree[Path::new("data")],
            TreeEntry::Directory { mode: 0o700 }
        );
        assert!(tree.contains_key(Path::new("data/keep")));
        assert!(matches!(
            tree[Path::new("tool/x")],
            TreeEntry::File { mode: 0o4755, .. }
        ));
    }

    #[test]
    fn a_device_node_is_refused_by_path() {
        let mut tree = applied(&[]);
        let error = apply_layer(
            &mut tree,
            layer(&[("dev/sda", tar::EntryType::Block, 0o600, "")]).as_slice(),
            &mut |_| {},
        )
        .expect_err("device");
        assert!(error.to_string().contains("dev/sda"), "{error}");
    }
}
