//! Admin token replay protection: every admin token carries a `jti`, and a `jti` is accepted
//! once. Used `jti`s are remembered until their token's `exp` (after which the token is
//! refused as stale anyway) in memory and in `<state>/admin-tokens-used.json` (0600, written
//! atomically on every accepted token), so a restart does not reopen the replay window.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::resources::{write_private_atomic, StoreError};

/// File under the state directory holding used `jti`s and their expiry.
pub const REPLAY_LOG_FILE: &str = "admin-tokens-used.json";

/// Most unexpired admin tokens remembered at once; far above any real admin's call rate.
pub const MAX_TRACKED_TOKENS: usize = 10_000;

/// Why a token's `jti` was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The `jti` was seen before: the token is a replay.
    #[error("admin token `{0}` was already used; every admin call needs a freshly signed token (jti is single-use)")]
    Replayed(String),
    /// Too many unexpired tokens are remembered.
    #[error("{MAX_TRACKED_TOKENS} admin tokens are still unexpired; retry in a few minutes")]
    TooMany,
    /// The replay log could not be written; the token is refused rather than forgotten.
    #[error(transparent)]
    Persist(#[from] StoreError),
}

/// Why the replay log could not be loaded at start.
#[derive(Debug, thiserror::Error)]
#[error("admin replay log {path} is not valid ({reason}); it lists admin tokens already used; remove it only if no admin token was issued in the last {} s", crate::admin::MAX_ADMIN_TOKEN_SECS)]
pub struct ReplayLogError {
    /// The file.
    pub path: String,
    /// What was wrong.
    pub reason: String,
}

/// The used-`jti` set, optionally persisted.
#[derive(Debug, Default)]
pub struct ReplayGuard {
    used: Mutex<HashMap<String, u64>>,
    log: Option<PathBuf>,
}

impl ReplayGuard {
    /// An in-memory guard (tests; a restart forgets used tokens).
    pub fn in_memory() -> Self {
        Self::default()
    }

    /// A guard persisted at `path`, loading what an earlier run recorded.
    pub fn persisted(path: &Path) -> Result<Self, ReplayLogError> {
        let used = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| ReplayLogError {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
            Err(e) => {
                return Err(ReplayLogError {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })
            }
        };
        Ok(Self {
            used: Mutex::new(used),
            log: Some(path.to_owned()),
        })
    }

    /// Accepts `jti` (of a token valid until `exp`) once; refuses it ever after.
    pub fn accept_once(&self, jti: &str, exp: u64, now: u64) -> Result<(), ReplayError> {
        // A panic while holding the lock leaves the map consistent (single inserts/retains).
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        used.retain(|_, expires| *expires > now);
        if used.contains_key(jti) {
            return Err(ReplayError::Replayed(jti.to_owned()));
        }
        if used.len() >= MAX_TRACKED_TOKENS {
            return Err(ReplayError::TooMany);
        }
        used.insert(jti.to_owned(), exp);
        if let Some(path) = &self.log {
            let persisted = serde_json::to_vec(&*used)
                .map_err(|e| StoreError::Write {
                    path: path.clone(),
                    source: std::io::Error::other(e),
                })
                .and_then(|bytes| write_private_atomic(path, &bytes));
            if let Err(e) = persisted {
                // Not recorded means not accepted: forget it so the caller can retry.
                used.remove(jti);
                return Err(e.into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jti_is_good_once_until_it_expires() {
        let guard = ReplayGuard::in_memory();
        guard.accept_once("a", 1100, 1000).unwrap();
        assert!(matches!(
            guard.accept_once("a", 1100, 1050),
            Err(ReplayError::Replayed(_))
        ));
        guard.accept_once("b", 1100, 1050).unwrap();
        // Past its expiry the entry is dropped (the token itself is stale by then).
        guard.accept_once("a", 1300, 1200).unwrap();
    }

    #[test]
    fn used_jtis_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(REPLAY_LOG_FILE);
        ReplayGuard::persisted(&path)
            .unwrap()
            .accept_once("x", 2000, 1000)
            .unwrap();
        let reloaded = ReplayGuard::persisted(&path).unwrap();
        assert!(matches!(
            reloaded.accept_once("x", 2000, 1001),
            Err(ReplayError::Replayed(_))
        ));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_corrupt_log_stops_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(REPLAY_LOG_FILE);
        std::fs::write(&path, b"not json").unwrap();
        let err = ReplayGuard::persisted(&path).unwrap_err();
        assert!(err.to_string().contains("already used"), "{err}");
    }

    #[test]
    fn the_set_is_bounded() {
        let guard = ReplayGuard::in_memory();
        for i in 0..MAX_TRACKED_TOKENS {
            guard.accept_once(&i.to_string(), 2000, 1000).unwrap();
        }
        assert!(matches!(
            guard.accept_once("one-more", 2000, 1000),
            Err(ReplayError::TooMany)
        ));
    }
}
