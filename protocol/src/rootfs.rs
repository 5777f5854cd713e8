//! The digest of a container's root filesystem, as the model owner approves it
//! (`veil rootfs digest DIR`, the declaration's `readers`) and as the agent checks it
//! while copying the rootfs the node shares into guest memory ([`copy_tree`]): one walk,
//! one encoding, so that the two cannot drift apart.
//!
//! What it covers: every directory, regular file and symlink below the root, in a fixed
//! order (depth first, each directory's entries sorted by name bytes), with its path
//! relative to the root, its permission bits (`mode & 0o7777`, setuid included), a file's
//! size and SHA-256, and a symlink's target. Not covered: owners (a shared file system may
//! map them), times and extended attributes. Anything else (device nodes, FIFOs, sockets)
//! is refused: an image has no use for them in its rootfs, and the guest's `/dev` is
//! mounted by the container runtime.
//!
//! The walk opens each file once and digests exactly the bytes it read (and, when copying,
//! wrote), so a node that changes a file while it is read gets a digest that does not
//! match; it never follows a symlink.

use std::fs::{File, Metadata};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::PathError;

/// The `sha256:` prefix of a written digest.
pub const DIGEST_PREFIX: &str = "sha256:";

/// Why a tree could not be digested or copied.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// An entry that is not a directory, regular file or symlink.
    #[error("{} is a {kind}; an approved rootfs holds only directories, regular files and symlinks", .path.display())]
    Unsupported {
        /// The entry.
        path: PathBuf,
        /// What it is.
        kind: &'static str,
    },
    /// A read, write or metadata call failed.
    #[error(transparent)]
    Io(#[from] PathError),
}

/// Writes a digest as `sha256:<hex>`.
pub fn format_digest(digest: &[u8; 32]) -> String {
    format!("{DIGEST_PREFIX}{}", hex::encode(digest))
}

/// Reads `sha256:<hex>`.
pub fn parse_digest(text: &str) -> Option<[u8; 32]> {
    let hex_part = text.trim().strip_prefix(DIGEST_PREFIX)?;
    let mut digest = [0u8; 32];
    (hex_part.len() == 64 && hex::decode_to_slice(hex_part, &mut digest).is_ok()).then_some(digest)
}

/// The digest of the tree at `root`.
pub fn digest_tree(root: &Path) -> Result<[u8; 32], TreeError> {
    walk(root, None, &mut |_| {})
}

/// [`digest_tree`], calling `progress` as files are read with the bytes of content read so
/// far (for a progress line on a large tree).
pub fn digest_tree_reporting(
    root: &Path,
    progress: &mut dyn FnMut(u64),
) -> Result<[u8; 32], TreeError> {
    walk(root, None, progress)
}

/// Copies the tree at `root` to `destination` (which must not exist), keeping modes and
/// owners, and returns the digest of what was copied. A failed copy leaves a partial
/// destination for the caller to remove.
pub fn copy_tree(root: &Path, destination: &Path) -> Result<[u8; 32], TreeError> {
    walk(root, Some(destination), &mut |_| {})
}

/// A walk's running state: the digest so far and the content bytes read.
struct Walker<'a> {
    hasher: Sha256,
    read: u64,
    progress: &'a mut dyn FnMut(u64),
}

fn walk(
    root: &Path,
    destination: Option<&Path>,
    progress: &mut dyn FnMut(u64),
) -> Result<[u8; 32], TreeError> {
    let meta = std::fs::symlink_metadata(root).map_err(PathError::at("read", root))?;
    if !meta.is_dir() {
        return Err(TreeError::Unsupported {
            path: root.to_path_buf(),
            kind: "not a directory",
        });
    }
    let mut walker = Walker {
        hasher: Sha256::new(),
        read: 0,
        progress,
    };
    if let Some(destination) = destination {
        std::fs::create_dir(destination).map_err(PathError::at("create", destination))?;
        copy_attributes(destination, &meta, false)?;
    }
    record_entry(
        &mut walker.hasher,
        Path::new(""),
        &TreeEntry::Directory { mode: mode(&meta) },
    );
    visit(root, Path::new(""), destination, &mut walker)?;
    Ok(walker.hasher.finalize().into())
}

fn visit(
    root: &Path,
    relative: &Path,
    destination: Option<&Path>,
    walker: &mut Walker<'_>,
) -> Result<(), TreeError> {
    let dir = root.join(relative);
    let mut names: Vec<std::ffi::OsString> = std::fs::read_dir(&dir)
        .map_err(PathError::at("list", &dir))?
        .map(|entry| entry.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(PathError::at("list", &dir))?;
    names.sort_by(|a, b| a.as_encoded_bytes().cmp(b.as_encoded_bytes()));
    for name in names {
        let child = relative.join(&name);
        let source = root.join(&child);
        let target = destination.map(|d| d.join(&child));
        let meta = std::fs::symlink_metadata(&source).map_err(PathError::at("read", &source))?;
        let kind = meta.file_type();
        if kind.is_dir() {
            if let Some(target) = &target {
                std::fs::create_dir(target).map_err(PathError::at("create", target))?;
                copy_attributes(target, &meta, false)?;
            }
            let directory = TreeEntry::Directory { mode: mode(&meta) };
            record_entry(&mut walker.hasher, &child, &directory);
            visit(root, &child, destination, walker)?;
        } else if kind.is_symlink() {
            let link =
                std::fs::read_link(&source).map_err(PathError::at("read the link", &source))?;
            if let Some(target) = &target {
                std::os::unix::fs::symlink(&link, target)
                    .map_err(PathError::at("create", target))?;
                copy_attributes(target, &meta, true)?;
            }
            record_entry(
                &mut walker.hasher,
                &child,
                &TreeEntry::Symlink { target: link },
            );
        } else if kind.is_file() {
            let (size, sha256) = copy_file(&source, target.as_deref(), &mut |n| {
                walker.read += n;
                (walker.progress)(walker.read);
            })?;
            let file = TreeEntry::File {
                mode: mode(&meta),
                size,
                sha256,
            };
            record_entry(&mut walker.hasher, &child, &file);
        } else {
            return Err(TreeError::Unsupported {
                path: source,
                kind: "device, FIFO or socket",
            });
        }
    }
    Ok(())
}

/// Reads `source` once, without following a symlink put in its place, digesting (and
/// writing to `target`) exactly the bytes read.
fn copy_file(
    source: &Path,
    target: Option<&Path>,
    on_read: &mut dyn FnMut(u64),
) -> Result<(u64, [u8; 32]), TreeError> {
    let mut file = File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(source)
        .map_err(PathError::at("open", source))?;
    let meta = file.metadata().map_err(PathError::at("read", source))?;
    if !meta.is_file() {
        return Err(TreeError::Unsupported {
            path: source.to_path_buf(),
            kind: "file replaced while it was read",
        });
    }
    let mut out = match target {
        Some(target) => Some(
            File::options()
                .write(true)
                .create_new(true)
                .open(target)
                .map_err(PathError::at("create", target))?,
        ),
        None => None,
    };
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buffer)
            .map_err(PathError::at("read", source))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        size += n as u64;
        on_read(n as u64);
        if let (Some(out), Some(target)) = (out.as_mut(), target) {
            out.write_all(&buffer[..n])
                .map_err(PathError::at("write", target))?;
        }
    }
    if let Some(target) = target {
        copy_attributes(target, &meta, false)?;
    }
    Ok((size, hasher.finalize().into()))
}

fn mode(meta: &Metadata) -> u32 {
    meta.mode() & 0o7777
}

/// Gives `target` the owner and (for all but symlinks) the permission bits of `meta`.
fn copy_attributes(target: &Path, meta: &Metadata, is_symlink: bool) -> Result<(), TreeError> {
    // Owners are kept where the copier may set them (the agent runs as root); elsewhere
    // (tests, the owner's tools) the copy belongs to whoever made it.
    let _ = std::os::unix::fs::lchown(target, Some(meta.uid()), Some(meta.gid()));
    if !is_symlink {
        std::fs::set_permissions(target, std::fs::Permissions::from_mode(mode(meta)))
            .map_err(PathError::at("set the mode of", target))?;
    }
    Ok(())
}

/// `path` made relative and cleaned lexically, `..` included, as `/` + path cleans: it
/// cannot climb above the root it is later joined to.
pub fn clean_lexically(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// One entry of a rootfs as its digest sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TreeEntry {
    /// A directory and its permission bits.
    Directory {
        /// `mode & 0o7777`.
        mode: u32,
    },
    /// A regular file.
    File {
        /// `mode & 0o7777`.
        mode: u32,
        /// Its length in bytes.
        size: u64,
        /// The SHA-256 of its content.
        sha256: [u8; 32],
    },
    /// A symlink and where it points (never followed).
    Symlink {
        /// The link's target as stored.
        target: PathBuf,
    },
}

/// The digest of a tree given as its entries: paths relative to the root (the root itself
/// is the empty path) in [`Path`]'s order, which compares component by component and so is
/// the walk's order (a `BTreeMap<PathBuf, TreeEntry>` iterates in it). For a tree that is
/// not on disk, such as an image's layers applied in memory.
pub fn digest_entries<'a>(
    entries: impl IntoIterator<Item = (&'a Path, &'a TreeEntry)>,
) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for (path, entry) in entries {
        record_entry(&mut hasher, path, entry);
    }
    hasher.finalize().into()
}

fn record_entry(hasher: &mut Sha256, path: &Path, entry: &TreeEntry) {
    match entry {
        TreeEntry::Directory { mode } => record(hasher, b'd', path, *mode, &[]),
        TreeEntry::File { mode, size, sha256 } => {
            let mut facts = size.to_be_bytes().to_vec();
            facts.extend_from_slice(sha256);
            record(hasher, b'f', path, *mode, &facts);
        }
        TreeEntry::Symlink { target } => {
            record(hasher, b'l', path, 0, target.as_os_str().as_encoded_bytes())
        }
    }
}

/// One entry in the digest: kind, path, mode and the kind's facts, each length-prefixed.
fn record(hasher: &mut Sha256, kind: u8, path: &Path, mode: u32, facts: &[u8]) {
    let path = path.as_os_str().as_encoded_bytes();
    hasher.update([kind]);
    hasher.update((path.len() as u64).to_be_bytes());
    hasher.update(path);
    hasher.update(mode.to_be_bytes());
    hasher.update((facts.len() as u64).to_be_bytes());
    hasher.update(facts);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("bin")).expect("bin");
        std::fs::create_dir_all(root.join("etc/app")).expect("etc");
        std::fs::write(root.join("bin/server"), b"#!/bin/sh\necho serve\n").expect("server");
        std::fs::set_permissions(
            root.join("bin/server"),
            std::fs::Permissions::from_mode(0o755),
        )
        .expect("chmod");
        std::fs::write(root.join("etc/app/config"), b"threads=2\n").expect("config");
        std::os::unix::fs::symlink("server", root.join("bin/serve")).expect("symlink");
        dir
    }

    #[test]
    fn a_copy_has_the_digest_of_its_source_and_the_same_content() {
        let source = sample_tree();
        let digest = digest_tree(source.path()).expect("digest");
        let out = tempfile::tempdir().expect("tempdir");
        let copy = out.path().join("copy");
        assert_eq!(copy_tree(source.path(), &copy).expect("copy"), digest);
        assert_eq!(digest_tree(&copy).expect("digest of the copy"), digest);
        assert_eq!(
            std::fs::read(copy.join("bin/server")).expect("read"),
            b"#!/bin/sh\necho serve\n"
        );
        let mode = std::fs::metadata(copy.join("bin/server"))
            .expect("meta")
            .mode();
        assert_eq!(mode & 0o7777, 0o755);
        assert_eq!(
            std::fs::read_link(copy.join("bin/serve")).expect("link"),
            Path::new("server")
        );
        let written = format_digest(&digest);
        assert!(written.starts_with("sha256:") && written.len() == 71);
        assert_eq!(parse_digest(&written), Some(digest));
        assert_eq!(parse_digest("sha256:abc"), None);
        assert_eq!(parse_digest(&hex::encode(digest)), None);
    }

    #[test]
    fn every_change_an_image_can_carry_changes_the_digest() {
        let tree = sample_tree();
        let root = tree.path().to_path_buf();
        let base = digest_tree(&root).expect("digest");
        type Change = (&'static str, fn(&Path));
        let changes: [Change; 6] = [
            ("content", |r| {
                std::fs::write(r.join("etc/app/config"), b"threads=3\n").expect("write")
            }),
            ("mode", |r| {
                std::fs::set_permissions(
                    r.join("etc/app/config"),
                    std::fs::Permissions::from_mode(0o4755),
                )
                .expect("chmod")
            }),
            ("new file", |r| {
                std::fs::write(r.join("etc/extra"), b"").expect("write")
            }),
            ("symlink target", |r| {
                std::fs::remove_file(r.join("bin/serve")).expect("rm");
                std::os::unix::fs::symlink("/bin/sh", r.join("bin/serve")).expect("symlink");
            }),
            ("rename", |r| {
                std::fs::rename(r.join("etc/app/config"), r.join("etc/app/configs"))
                    .expect("rename")
            }),
            ("file to directory", |r| {
                std::fs::remove_file(r.join("etc/app/config")).expect("rm");
                std::fs::create_dir(r.join("etc/app/config")).expect("mkdir");
            }),
        ];
        for (what, change) in changes {
            let changed = sample_tree();
            change(changed.path());
            assert_ne!(digest_tree(changed.path()).expect(what), base, "{what}");
        }
        // Times are not part of it.
        let touched = File::options()
            .write(true)
            .open(root.join("etc/app/config"))
            .expect("open");
        touched
            .set_modified(std::time::SystemTime::UNIX_EPOCH)
            .expect("touch");
        assert_eq!(digest_tree(&root).expect("digest"), base);
    }

    #[test]
    fn the_entries_of_a_tree_in_path_order_digest_as_the_walk_does() {
        let tree = sample_tree();
        // "a-c" sorts before "a/b" as bytes, after it as a walk goes.
        std::fs::create_dir(tree.path().join("a")).expect("mkdir");
        std::fs::write(tree.path().join("a/b"), b"inside a").expect("write");
        std::fs::write(tree.path().join("a-c"), b"after the a directory").expect("write");
        let mut entries = std::collections::BTreeMap::new();
        let root = tree.path();
        let mut stack = vec![PathBuf::new()];
        while let Some(relative) = stack.pop() {
            let path = root.join(&relative);
            let meta = std::fs::symlink_metadata(&path).expect("stat");
            let entry = if meta.is_symlink() {
                TreeEntry::Symlink {
                    target: std::fs::read_link(&path).expect("link"),
                }
            } else if meta.is_dir() {
                for child in std::fs::read_dir(&path).expect("list") {
                    stack.push(relative.join(child.expect("entry").file_name()));
                }
                TreeEntry::Directory { mode: mode(&meta) }
            } else {
                let content = std::fs::read(&path).expect("read");
                TreeEntry::File {
                    mode: mode(&meta),
                    size: content.len() as u64,
                    sha256: Sha256::digest(&content).into(),
                }
            };
            entries.insert(relative, entry);
        }
        assert_eq!(
            digest_entries(entries.iter().map(|(p, e)| (p.as_path(), e))),
            digest_tree(root).expect("digest")
        );
    }

    #[test]
    fn a_device_or_fifo_is_refused_by_path() {
        let tree = sample_tree();
        let fifo = tree.path().join("etc/pipe");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo");
        assert!(status.success());
        let error = digest_tree(tree.path()).expect_err("fifo");
        assert!(
            matches!(&error, TreeError::Unsupported { path, .. } if path == &fifo),
            "{error}"
        );
    }
}
