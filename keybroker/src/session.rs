//! Attestation sessions: the cookie set by `/auth`, its nonce (good once), its expiry, and
//! after `/attest` the verified claims and the guest's key.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use rand_core::{OsRng, RngCore};
use veil_kbs_client::wire::TeePubKey;
use veil_kbs_client::Tee;

use crate::attestation::Claims;

/// Seconds since the Unix epoch, from a source tests can control.
pub trait Clock: Send + Sync {
    /// The current time in seconds since the Unix epoch.
    fn now(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }
}

/// A clock that only moves when told to (tests, simulations).
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A clock reading `start`.
    pub fn new(start: u64) -> Self {
        Self(AtomicU64::new(start))
    }

    /// Moves the clock forward by `secs`.
    pub fn advance(&self, secs: u64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// What a successful attestation left in the session.
#[derive(Clone, Debug)]
pub struct Attested {
    /// The verified claims.
    pub claims: Claims,
    /// The key resources are encrypted to.
    pub tee_pubkey: TeePubKey,
}

#[derive(Debug)]
struct Session {
    tee: Tee,
    nonce: String,
    nonce_used: bool,
    expires_at: u64,
    attested: Option<Attested>,
}

/// Why a session could not be used. Each variant is a named check.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// No `kbs-session-id` cookie.
    #[error("no kbs-session-id cookie: call POST /kbs/v0/auth first")]
    Missing,
    /// The cookie names no session this broker knows (or one it forgot on restart).
    #[error("unknown session: POST /kbs/v0/auth again to get a new one")]
    Unknown,
    /// The session is past its lifetime.
    #[error("session expired {0} s ago: POST /kbs/v0/auth again")]
    Expired(u64),
    /// The session's nonce was already presented once.
    #[error("this session's nonce was already used for an attestation; nonces are good once, POST /kbs/v0/auth again")]
    NonceReused,
    /// The runtime data carries a nonce other than this session's.
    #[error("runtime-data nonce is not the nonce issued to this session (a nonce from another session or a stale one)")]
    NonceMismatch,
    /// A resource was asked for before a successful attestation.
    #[error("this session has not attested: POST /kbs/v0/attest first")]
    NotAttested,
    /// Too many live sessions.
    #[error("too many open sessions ({0}); retry later")]
    TooMany(usize),
}

/// All live sessions, in memory (a restart forgets them, which only forces re-attestation).
pub struct SessionStore {
    sessions: Mutex<HashMap<String, Session>>,
    ttl_secs: u64,
    max_sessions: usize,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for SessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionStore")
            .field("ttl_secs", &self.ttl_secs)
            .finish_non_exhaustive()
    }
}

impl SessionStore {
    /// A store whose sessions live `ttl_secs`, holding at most `max_sessions`.
    pub fn new(ttl_secs: u64, max_sessions: usize, clock: Arc<dyn Clock>) -> Self {
        Self {
            sessions: Mutex::new(HashMap::new()),
            ttl_secs,
            max_sessions,
            clock,
        }
    }

    /// The session lifetime in seconds.
    pub fn ttl_secs(&self) -> u64 {
        self.ttl_secs
    }

    /// Opens a session for `tee`; returns (session id, nonce).
    pub fn create(&self, tee: Tee) -> Result<(String, String), SessionError> {
        let now = self.clock.now();
        let id = URL_SAFE_NO_PAD.encode(random_32());
        let nonce = STANDARD.encode(random_32());
        let mut sessions = self.lock();
        if sessions.len() >= self.max_sessions {
            sessions.retain(|_, s| s.expires_at > now);
        }
        if sessions.len() >= self.max_sessions {
            return Err(SessionError::TooMany(sessions.len()));
        }
        sessions.insert(
            id.clone(),
            Session {
                tee,
                nonce: nonce.clone(),
                nonce_used: false,
                expires_at: now.saturating_add(self.ttl_secs),
                attested: None,
            },
        );
        Ok((id, nonce))
    }

    /// Consumes the session's nonce: returns the session's TEE if `presented` is its nonce
    /// and it was not used before. The nonce is spent even when the check fails.
    pub fn take_nonce(&self, id: Option<&str>, presented: &str) -> Result<Tee, SessionError> {
        let now = self.clock.now();
        let mut sessions = self.lock();
        let session = live_session(&mut sessions, id, now)?;
        if session.nonce_used {
            return Err(SessionError::NonceReused);
        }
        session.nonce_used = true;
        if session.nonce != presented {
            return Err(SessionError::NonceMismatch);
        }
        Ok(session.tee)
    }

    /// Records a successful attestation.
    pub fn mark_attested(&self, id: &str, attested: Attested) -> Result<(), SessionError> {
        let now = self.clock.now();
        let mut sessions = self.lock();
        let session = live_session(&mut sessions, Some(id), now)?;
        session.attested = Some(attested);
        Ok(())
    }

    /// The attestation result of a live session.
    pub fn attested(&self, id: Option<&str>) -> Result<Attested, SessionError> {
        let now = self.clock.now();
        let mut sessions = self.lock();
        let session = live_session(&mut sessions, id, now)?;
        session.attested.clone().ok_or(SessionError::NotAttested)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        // A panic while holding the lock cannot leave a session half-written (each update is
        // one field store), so the poisoned map is still consistent.
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn live_session<'a>(
    sessions: &'a mut HashMap<String, Session>,
    id: Option<&str>,
    now: u64,
) -> Result<&'a mut Session, SessionError> {
    let id = id.ok_or(SessionError::Missing)?;
    let expired_for = match sessions.get(id) {
        None => return Err(SessionError::Unknown),
        Some(s) if s.expires_at <= now => Some(now - s.expires_at),
        Some(_) => None,
    };
    if let Some(ago) = expired_for {
        sessions.remove(id);
        return Err(SessionError::Expired(ago));
    }
    sessions.get_mut(id).ok_or(SessionError::Unknown)
}

fn random_32() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(clock: Arc<ManualClock>) -> SessionStore {
        SessionStore::new(60, 3, clock)
    }

    #[test]
    fn nonce_is_good_once() {
        let s = store(Arc::new(ManualClock::new(1000)));
        let (id, nonce) = s.create(Tee::Sample).unwrap();
        assert_eq!(s.take_nonce(Some(&id), &nonce).unwrap(), Tee::Sample);
        assert!(matches!(
            s.take_nonce(Some(&id), &nonce),
            Err(SessionError::NonceReused)
        ));
    }

    #[test]
    fn nonce_of_another_session_is_refused_and_spends_this_one() {
        let s = store(Arc::new(ManualClock::new(1000)));
        let (a, nonce_a) = s.create(Tee::Sample).unwrap();
        let (b, nonce_b) = s.create(Tee::Sample).unwrap();
        assert!(matches!(
            s.take_nonce(Some(&b), &nonce_a),
            Err(SessionError::NonceMismatch)
        ));
        assert!(matches!(
            s.take_nonce(Some(&b), &nonce_b),
            Err(SessionError::NonceReused)
        ));
        s.take_nonce(Some(&a), &nonce_a).unwrap();
    }

    #[test]
    fn sessions_expire() {
        let clock = Arc::new(ManualClock::new(1000));
        let s = store(clock.clone());
        let (id, nonce) = s.create(Tee::Sample).unwrap();
        clock.advance(61);
        assert!(matches!(
            s.take_nonce(Some(&id), &nonce),
            Err(SessionError::Expired(1))
        ));
        assert!(matches!(
            s.take_nonce(Some(&id), &nonce),
            Err(SessionError::Unknown)
        ));
    }

    #[test]
    fn session_count_is_bounded_but_expired_ones_make_room() {
        let clock = Arc::new(ManualClock::new(1000));
        let s = store(clock.clone());
        for _ in 0..3 {
            s.create(Tee::Sample).unwrap();
        }
        assert!(matches!(
            s.create(Tee::Sample),
            Err(SessionError::TooMany(3))
        ));
        clock.advance(100);
        s.create(Tee::Sample).unwrap();
    }

    #[test]
    fn missing_cookie_and_unattested_session_are_named() {
        let s = store(Arc::new(ManualClock::new(1000)));
        assert!(matches!(s.attested(None), Err(SessionError::Missing)));
        let (id, _) = s.create(Tee::Snp).unwrap();
        assert!(matches!(
            s.attested(Some(&id)),
            Err(SessionError::NotAttested)
        ));
    }
}
