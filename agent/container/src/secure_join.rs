//! Resolves a container path (a mount destination, the cwd) to a host path that stays
//! inside the rootfs even when the image holds hostile symlinks (`/proc -> /`), like
//! runc's securejoin.

use std::fs;
use std::path::{Component, Path, PathBuf};

/// Symlinks followed before giving up; the kernel's own limit is 40.
const MAX_SYMLINKS: usize = 255;

/// Joins `unsafe_path` onto `root`, resolving each symlink as if `root` were `/`. Missing
/// components are joined as they are (they will be created). Too many links end resolution
/// at the path reached so far, which is still inside `root`.
pub(crate) fn secure_join(root: &Path, unsafe_path: &Path) -> PathBuf {
    let mut resolved = PathBuf::new(); // relative to root
    let mut pending: Vec<PathBuf> = components_reversed(unsafe_path);
    let mut links = 0;
    while let Some(part) = pending.pop() {
        if part.as_os_str() == ".." {
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&part);
        let on_host = root.join(&candidate);
        match fs::symlink_metadata(&on_host) {
            Ok(meta) if meta.file_type().is_symlink() && links < MAX_SYMLINKS => {
                links += 1;
                let Ok(target) = fs::read_link(&on_host) else {
                    resolved = candidate;
                    continue;
                };
                if target.is_absolute() {
                    resolved = PathBuf::new();
                }
                pending.extend(components_reversed(&target));
            }
            _ => resolved = candidate,
        }
    }
    root.join(resolved)
}

/// Normal and `..` components, last first (so `pop` yields them in order); `/` and `.` vanish.
fn components_reversed(path: &Path) -> Vec<PathBuf> {
    let mut parts: Vec<PathBuf> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(PathBuf::from(name)),
            Component::ParentDir => Some(PathBuf::from("..")),
            _ => None,
        })
        .collect();
    parts.reverse();
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn plain_paths_join_lexically() {
        let root = Path::new("/nonexistent-root");
        assert_eq!(
            secure_join(root, Path::new("/dev/pts")),
            PathBuf::from("/nonexistent-root/dev/pts")
        );
        assert_eq!(
            secure_join(root, Path::new("/../../etc/./x")),
            PathBuf::from("/nonexistent-root/etc/x")
        );
    }

    #[test]
    fn absolute_symlinks_stay_inside_root() {
        let dir = tempfile::tempdir().unwrap();
        symlink("/", dir.path().join("escape")).unwrap();
        assert_eq!(
            secure_join(dir.path(), Path::new("/escape/etc/passwd")),
            dir.path().join("etc/passwd")
        );
    }

    #[test]
    fn relative_symlinks_cannot_climb_out() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("a")).unwrap();
        symlink("../../../../tmp", dir.path().join("a/up")).unwrap();
        assert_eq!(
            secure_join(dir.path(), Path::new("/a/up/x")),
            dir.path().join("tmp/x")
        );
    }

    #[test]
    fn symlink_loops_end() {
        let dir = tempfile::tempdir().unwrap();
        symlink("/loop", dir.path().join("loop")).unwrap();
        let joined = secure_join(dir.path(), Path::new("/loop"));
        assert!(joined.starts_with(dir.path()));
    }
}
