//! The error a container's init helper or child reports back to the caller: which step
//! failed and with which errno, so that "mount proc at /proc: EPERM" reaches the shim intact.

use std::fmt;

use nix::errno::Errno;
use serde::{Deserialize, Serialize};

/// A failed step inside the container's init helper or init process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitFailure {
    /// What was being done, e.g. `mount proc at /proc`.
    pub step: String,
    /// The errno of the failing system call, when there was one.
    pub errno: Option<i32>,
    /// Extra words for the reader (the path that was missing, the value that was refused).
    pub detail: String,
}

impl InitFailure {
    /// A failure of a system call.
    pub fn from_errno(step: impl Into<String>, errno: Errno) -> Self {
        InitFailure {
            step: step.into(),
            errno: Some(errno as i32),
            detail: String::new(),
        }
    }

    /// A failure that is not a system call error (bad input, missing executable, ...).
    pub fn new(step: impl Into<String>, detail: impl Into<String>) -> Self {
        InitFailure {
            step: step.into(),
            errno: None,
            detail: detail.into(),
        }
    }

    /// The errno as nix's type, if any.
    pub fn errno(&self) -> Option<Errno> {
        self.errno.map(Errno::from_raw)
    }
}

impl fmt::Display for InitFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.step)?;
        if let Some(errno) = self.errno() {
            // Errno's Display is "EPERM: Operation not permitted".
            write!(f, ": {errno}")?;
        }
        if !self.detail.is_empty() {
            write!(f, " ({})", self.detail)?;
        }
        Ok(())
    }
}

impl std::error::Error for InitFailure {}

/// Attaches the step name to a system call result inside the init code.
pub(crate) trait StepContext<T> {
    /// Names the step that produced this result.
    fn step(self, step: impl FnOnce() -> String) -> Result<T, InitFailure>;
}

impl<T> StepContext<T> for nix::Result<T> {
    fn step(self, step: impl FnOnce() -> String) -> Result<T, InitFailure> {
        self.map_err(|errno| InitFailure::from_errno(step(), errno))
    }
}

impl<T> StepContext<T> for std::io::Result<T> {
    fn step(self, step: impl FnOnce() -> String) -> Result<T, InitFailure> {
        self.map_err(|e| match e.raw_os_error() {
            Some(raw) => InitFailure::from_errno(step(), Errno::from_raw(raw)),
            None => InitFailure::new(step(), e.to_string()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_step_and_errno() {
        let f = InitFailure::from_errno("mount proc at /proc", Errno::EPERM);
        assert_eq!(
            f.to_string(),
            "mount proc at /proc: EPERM: Operation not permitted"
        );
    }

    #[test]
    fn display_without_errno_shows_detail() {
        let f = InitFailure::new("find executable \"nope\"", "not found in PATH /bin");
        assert_eq!(
            f.to_string(),
            "find executable \"nope\" (not found in PATH /bin)"
        );
    }

    #[test]
    fn round_trips_through_json() {
        let f = InitFailure::from_errno("pivot_root", Errno::EINVAL);
        let json = serde_json::to_string(&f).unwrap();
        assert_eq!(serde_json::from_str::<InitFailure>(&json).unwrap(), f);
    }
}
