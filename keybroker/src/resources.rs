//! Resource and policy storage: a trait, and the on-disk store the broker uses.
//!
//! Layout under the state directory (directories 0700, files 0600, written atomically):
//!
//! ```text
//! resources/<repo>/<type>/<tag>        the secret bytes
//! policies/<repo>/<type>/<tag>.cel     the CEL policy text
//! ```

use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use veil_kbs_client::client::is_valid_segment;
use veil_kbs_client::jwe::MAX_PLAINTEXT_BYTES;
use zeroize::Zeroizing;

/// A validated `repo/type/tag` resource id.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ResourceId {
    repo: String,
    kind: String,
    tag: String,
}

/// Why a resource id was refused.
#[derive(Debug, thiserror::Error)]
#[error("resource id `{0}` is not REPO/TYPE/TAG with segments of [A-Za-z0-9._-] (1-128 chars, not `.` or `..`)")]
pub struct InvalidResourceId(pub String);

impl ResourceId {
    /// Validates the three segments.
    pub fn new(repo: &str, kind: &str, tag: &str) -> Result<Self, InvalidResourceId> {
        if [repo, kind, tag].iter().all(|s| is_valid_segment(s)) {
            Ok(Self {
                repo: repo.to_owned(),
                kind: kind.to_owned(),
                tag: tag.to_owned(),
            })
        } else {
            Err(InvalidResourceId(format!("{repo}/{kind}/{tag}")))
        }
    }

    fn relative(&self) -> PathBuf {
        Path::new(&self.repo).join(&self.kind).join(&self.tag)
    }
}

impl fmt::Display for ResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.repo, self.kind, self.tag)
    }
}

/// Why storage failed. These are server faults (HTTP 500), never the guest's.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading a file failed.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Writing a file failed.
    #[error("cannot write {path}: {source}; check that the state directory is writable")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A stored file is larger than allowed.
    #[error("{path} is larger than {MAX_PLAINTEXT_BYTES} bytes")]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
}

/// Where resources and their policies live.
pub trait ResourceStore: Send + Sync {
    /// The resource's bytes, or `None` if it does not exist.
    fn read_resource(&self, id: &ResourceId) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError>;
    /// Creates or replaces a resource.
    fn write_resource(&self, id: &ResourceId, bytes: &[u8]) -> Result<(), StoreError>;
    /// The resource's policy text, or `None` if none was set.
    fn read_policy(&self, id: &ResourceId) -> Result<Option<String>, StoreError>;
    /// Creates or replaces a resource's policy text.
    fn write_policy(&self, id: &ResourceId, policy: &str) -> Result<(), StoreError>;
}

/// Files under a state directory; survives restarts.
#[derive(Debug, Clone)]
pub struct FsResourceStore {
    root: PathBuf,
}

impl FsResourceStore {
    /// A store rooted at `state_dir` (created 0700 if missing).
    pub fn open(state_dir: &Path) -> Result<Self, StoreError> {
        create_private_dir(state_dir)?;
        Ok(Self {
            root: state_dir.to_owned(),
        })
    }

    fn resource_path(&self, id: &ResourceId) -> PathBuf {
        self.root.join("resources").join(id.relative())
    }

    fn policy_path(&self, id: &ResourceId) -> PathBuf {
        let mut path = self.root.join("policies").join(id.relative());
        path.as_mut_os_string().push(".cel");
        path
    }
}

impl ResourceStore for FsResourceStore {
    fn read_resource(&self, id: &ResourceId) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
        read_optional(&self.resource_path(id)).map(|o| o.map(Zeroizing::new))
    }

    fn write_resource(&self, id: &ResourceId, bytes: &[u8]) -> Result<(), StoreError> {
        write_private_atomic(&self.resource_path(id), bytes)
    }

    fn read_policy(&self, id: &ResourceId) -> Result<Option<String>, StoreError> {
        let path = self.policy_path(id);
        read_optional(&path)?
            .map(|bytes| {
                String::from_utf8(bytes).map_err(|e| StoreError::Read {
                    path: path.clone(),
                    source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
                })
            })
            .transpose()
    }

    fn write_policy(&self, id: &ResourceId, policy: &str) -> Result<(), StoreError> {
        write_private_atomic(&self.policy_path(id), policy.as_bytes())
    }
}

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, StoreError> {
    match fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StoreError::Read {
                path: path.to_owned(),
                source,
            })
        }
        Ok(meta) if meta.len() > MAX_PLAINTEXT_BYTES as u64 => {
            return Err(StoreError::TooLarge {
                path: path.to_owned(),
            })
        }
        Ok(_) => {}
    }
    fs::read(path).map(Some).map_err(|source| StoreError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Creates `dir` and its parents with mode 0700.
pub fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| StoreError::Write {
            path: dir.to_owned(),
            source,
        })
}

/// Writes `bytes` to `path` with mode 0600 via a temporary file and a rename, so a crash
/// leaves either the old or the new content.
pub fn write_private_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let parent = path.parent().unwrap_or(Path::new("."));
    create_private_dir(parent)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let write_err = |source| StoreError::Write {
        path: path.to_owned(),
        source,
    };
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(write_err)?;
    file.write_all(bytes).map_err(write_err)?;
    file.sync_all().map_err(write_err)?;
    fs::rename(&tmp, path).map_err(write_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn ids_reject_traversal_and_odd_characters() {
        assert!(ResourceId::new("models", "key", "llama-3.1").is_ok());
        for (r, k, t) in [
            ("..", "a", "b"),
            ("a", "", "b"),
            ("a", "b/c", "d"),
            ("a", "b", "c d"),
        ] {
            assert!(ResourceId::new(r, k, t).is_err(), "{r}/{k}/{t}");
        }
    }

    #[test]
    fn resources_are_0600_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let id = ResourceId::new("m", "key", "a").unwrap();
        FsResourceStore::open(dir.path())
            .unwrap()
            .write_resource(&id, b"secret")
            .unwrap();
        let path = dir.path().join("resources/m/key/a");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let reopened = FsResourceStore::open(dir.path()).unwrap();
        assert_eq!(
            reopened.read_resource(&id).unwrap().unwrap().as_slice(),
            b"secret"
        );
        let missing = ResourceId::new("m", "key", "b").unwrap();
        assert!(reopened.read_resource(&missing).unwrap().is_none());
    }

    #[test]
    fn policies_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsResourceStore::open(dir.path()).unwrap();
        let id = ResourceId::new("m", "key", "a").unwrap();
        assert!(store.read_policy(&id).unwrap().is_none());
        store.write_policy(&id, "claims.tee == 'snp'").unwrap();
        assert_eq!(
            store.read_policy(&id).unwrap().as_deref(),
            Some("claims.tee == 'snp'")
        );
        assert!(dir.path().join("policies/m/key/a.cel").exists());
    }
}
