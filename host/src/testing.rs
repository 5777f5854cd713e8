//! Fake host trees for tests: a temporary directory standing in for `/`.

use std::path::Path;

/// A temporary directory laid out like the parts of `/` the doctor reads.
pub struct FakeTree {
    dir: tempfile::TempDir,
}

impl FakeTree {
    /// An empty tree.
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// Adds a directory (and its parents).
    pub fn dir(self, path: &str) -> Self {
        std::fs::create_dir_all(self.dir.path().join(path)).expect("mkdir");
        self
    }

    /// Adds a file with `contents` (and its parent directories).
    pub fn file(self, path: &str, contents: impl AsRef<[u8]>) -> Self {
        let full = self.dir.path().join(path);
        if let Some(parent) = full.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(full, contents).expect("write");
        self
    }

    /// The tree's root, to pass where the doctor takes `/`.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }
}
