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

/// `message` in the context of `what` ("what: message"), unless the message already begins
/// with it: errors that cross the agent API (and veil-container's) name what failed
/// themselves, and a caller adding the same words again only makes them harder to read.
pub fn in_context(what: &str, message: &str) -> String {
    if what.is_empty() || message.starts_with(what) {
        message.to_string()
    } else {
        format!("{what}: {message}")
    }
}

#[cfg(test)]
mod in_context_tests {
    use super::in_context;

    #[test]
    fn context_is_added_once() {
        assert_eq!(
            in_context("exec e in container c", "no such file"),
            "exec e in container c: no such file"
        );
        assert_eq!(
            in_context(
                "exec e in container c",
                "exec e in container c: no such file"
            ),
            "exec e in container c: no such file"
        );
        assert_eq!(in_context("", "why"), "why");
    }
}
