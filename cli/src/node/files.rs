//! Idempotent file installation and removal: a file is written only when its contents
//! differ, always through a temporary file and a rename, so a reader (containerd starting a
//! shim, the shim reading its configuration) never sees half a file.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// What happened (or, in a dry run, would happen) to one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileChange {
    /// It did not exist and was written.
    Created,
    /// It existed with other contents and was replaced.
    Replaced,
    /// It already had these contents.
    Unchanged,
    /// It existed and was removed.
    Removed,
    /// It did not exist, so there was nothing to remove.
    Absent,
}

impl FileChange {
    /// Whether the file system was (or would be) modified.
    pub fn is_change(self) -> bool {
        matches!(
            self,
            FileChange::Created | FileChange::Replaced | FileChange::Removed
        )
    }
}

/// Reading, writing or removing an installed file failed.
#[derive(Debug, thiserror::Error)]
pub enum InstallFileError {
    /// A file could not be read.
    #[error("read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file or directory could not be written or removed.
    #[error("write {path}: {source} (run as root, or choose paths you can write with --prefix)")]
    Write {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

fn write_error(path: &Path) -> impl FnOnce(std::io::Error) -> InstallFileError + '_ {
    move |source| InstallFileError::Write {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads `path`, or `None` when it does not exist.
pub fn read_if_exists(path: &Path) -> Result<Option<Vec<u8>>, InstallFileError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(InstallFileError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Makes `dest` hold `contents` with permission bits `mode` (creating parent directories).
pub fn install_bytes(
    dest: &Path,
    contents: &[u8],
    mode: u32,
    dry_run: bool,
) -> Result<FileChange, InstallFileError> {
    let change = match read_if_exists(dest)? {
        None => FileChange::Created,
        Some(current) if current == contents => return Ok(FileChange::Unchanged),
        Some(_) => FileChange::Replaced,
    };
    if !dry_run {
        write_atomically(dest, contents, mode)?;
    }
    Ok(change)
}

/// Copies `source` to `dest` (see [`install_bytes`]).
pub fn install_copy(
    source: &Path,
    dest: &Path,
    mode: u32,
    dry_run: bool,
) -> Result<FileChange, InstallFileError> {
    let contents = fs::read(source).map_err(|error| InstallFileError::Read {
        path: source.to_path_buf(),
        source: error,
    })?;
    install_bytes(dest, &contents, mode, dry_run)
}

/// Writes through a temporary file in the same directory and renames it over `dest`.
pub fn write_atomically(dest: &Path, contents: &[u8], mode: u32) -> Result<(), InstallFileError> {
    let dir = dest.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(write_error(dir))?;
    let mut temp = tempfile::Builder::new()
        .prefix(".veil-install-")
        .tempfile_in(dir)
        .map_err(write_error(dir))?;
    temp.write_all(contents).map_err(write_error(temp.path()))?;
    temp.as_file()
        .set_permissions(fs::Permissions::from_mode(mode))
        .map_err(write_error(dest))?;
    temp.as_file().sync_all().map_err(write_error(dest))?;
    temp.persist(dest)
        .map_err(|error| write_error(dest)(error.error))?;
    Ok(())
}

/// Rewrites an operator's file in place of the file `path` resolves to, so a symlinked config
/// (common where configuration management owns /etc) stays a symlink, with its permission bits.
pub fn write_through_symlink(path: &Path, contents: &[u8]) -> Result<(), InstallFileError> {
    let target = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    write_atomically(&target, contents, mode_of(&target))
}

/// Removes `path` if it exists.
pub fn remove(path: &Path, dry_run: bool) -> Result<FileChange, InstallFileError> {
    if fs::symlink_metadata(path).is_err() {
        return Ok(FileChange::Absent);
    }
    if !dry_run {
        match fs::remove_file(path) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(FileChange::Absent)
            }
            Err(source) => return Err(write_error(path)(source)),
        }
    }
    Ok(FileChange::Removed)
}

/// Removes the directory `dir` if it exists and is empty; anything else in it keeps it.
pub fn remove_dir_if_empty(dir: &Path, dry_run: bool) -> Result<FileChange, InstallFileError> {
    let mut entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Ok(FileChange::Absent)
        }
        Err(source) => {
            return Err(InstallFileError::Read {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    if entries.next().is_some() {
        return Ok(FileChange::Unchanged);
    }
    if !dry_run {
        fs::remove_dir(dir).map_err(write_error(dir))?;
    }
    Ok(FileChange::Removed)
}

/// Keeps the permission bits of an existing file when rewriting it (0644 for a new one).
pub fn mode_of(path: &Path) -> u32 {
    fs::metadata(path)
        .map(|meta| meta.permissions().mode() & 0o7777)
        .unwrap_or(0o644)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_creates_then_reports_unchanged_then_replaces() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("a/b/file");
        assert_eq!(
            install_bytes(&dest, b"one", 0o755, false).expect("create"),
            FileChange::Created
        );
        assert_eq!(fs::read(&dest).expect("read"), b"one");
        assert_eq!(mode_of(&dest), 0o755);
        assert_eq!(
            install_bytes(&dest, b"one", 0o755, false).expect("again"),
            FileChange::Unchanged
        );
        assert_eq!(
            install_bytes(&dest, b"two", 0o644, false).expect("replace"),
            FileChange::Replaced
        );
        assert_eq!(fs::read(&dest).expect("read"), b"two");
        // Nothing but the file itself is left in the directory (no temporary files).
        assert_eq!(
            fs::read_dir(dest.parent().expect("parent"))
                .expect("ls")
                .count(),
            1
        );
    }

    #[test]
    fn dry_run_writes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("file");
        assert_eq!(
            install_bytes(&dest, b"x", 0o644, true).expect("dry"),
            FileChange::Created
        );
        assert!(!dest.exists());
        fs::write(&dest, b"x").expect("write");
        assert_eq!(
            remove(&dest, true).expect("dry remove"),
            FileChange::Removed
        );
        assert!(dest.exists());
    }

    #[test]
    fn remove_is_idempotent_and_dirs_go_only_when_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sub = dir.path().join("sub");
        fs::create_dir(&sub).expect("mkdir");
        let file = sub.join("f");
        fs::write(&file, b"x").expect("write");
        assert_eq!(
            remove_dir_if_empty(&sub, false).expect("full"),
            FileChange::Unchanged
        );
        assert_eq!(remove(&file, false).expect("remove"), FileChange::Removed);
        assert_eq!(remove(&file, false).expect("again"), FileChange::Absent);
        assert_eq!(
            remove_dir_if_empty(&sub, false).expect("empty"),
            FileChange::Removed
        );
        assert_eq!(
            remove_dir_if_empty(&sub, false).expect("gone"),
            FileChange::Absent
        );
    }

    #[test]
    fn a_symlinked_file_is_written_through_and_keeps_its_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let real = dir.path().join("real.toml");
        fs::write(&real, b"old").expect("write");
        fs::set_permissions(&real, fs::Permissions::from_mode(0o600)).expect("chmod");
        let link = dir.path().join("config.toml");
        std::os::unix::fs::symlink(&real, &link).expect("symlink");
        write_through_symlink(&link, b"new").expect("write");
        assert!(fs::symlink_metadata(&link)
            .expect("lstat")
            .file_type()
            .is_symlink());
        assert_eq!(fs::read(&real).expect("read"), b"new");
        assert_eq!(mode_of(&real), 0o600);
    }

    #[test]
    fn copy_of_a_missing_source_names_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let error = install_copy(
            &dir.path().join("nope"),
            &dir.path().join("d"),
            0o644,
            false,
        )
        .expect_err("missing");
        assert!(error.to_string().contains("nope"), "{error}");
    }
}
