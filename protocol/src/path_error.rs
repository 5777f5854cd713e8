//! An I/O call on a path that failed, as the guest's and the CLI's file walks report it:
//! what was being done, to which path, and why.

use std::path::{Path, PathBuf};

/// `<what> <path>: <why>`, e.g. `create /run/veil/verified/c1: No space left on device`.
#[derive(Debug, thiserror::Error)]
#[error("{what} {}: {source}", .path.display())]
pub struct PathError {
    /// What was being done.
    pub what: &'static str,
    /// The path.
    pub path: PathBuf,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

impl PathError {
    /// For `map_err` after a call doing `what` to `path`.
    pub fn at<'a, E: Into<std::io::Error>>(
        what: &'static str,
        path: &'a Path,
    ) -> impl FnOnce(E) -> PathError + 'a {
        move |source| PathError {
            what,
            path: path.to_path_buf(),
            source: source.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_says_what_to_which_path_and_why() {
        let error = PathError::at("create", Path::new("/run/x"))(std::io::Error::from(
            std::io::ErrorKind::NotFound,
        ));
        assert_eq!(error.to_string(), "create /run/x: entity not found");
        assert!(std::error::Error::source(&error).is_some());
    }
}
