//! The attestation-gated key broker (Trustee KBS protocol) and its policy engine.
//!
//! A guest proves what it is (TEE evidence bound to a fresh nonce and to a key pair it
//! generated); the broker verifies the evidence ([`attestation`]), checks the resource's CEL
//! policy ([`policy`]) and only then releases the resource, encrypted to the guest's key.
//! Every refusal is an RFC 7807 problem naming the failed check ([`error`]).
//!
//! Start one with [`Broker::start`]; the `veil-kbs` binary and `veil kbs serve` do that.

#![forbid(unsafe_code)]

pub mod admin;
pub mod admin_client;
pub mod admin_replay;
pub mod attestation;
pub mod config;
pub mod error;
pub mod fuzz_entry;
pub mod http;
pub mod jws;
pub mod policy;
pub mod resources;
pub mod session;
pub mod tee_key;
pub mod token;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use veil_kbs_client::Tee;

use crate::admin::{AdminAuth, AdminKeyError};
use crate::admin_replay::{ReplayGuard, ReplayLogError, REPLAY_LOG_FILE};
use crate::attestation::sample::SampleVerifier;
use crate::attestation::snp::SnpVerifier;
use crate::attestation::Verifier;
use crate::config::{ConfigError, KbsConfig};
use crate::http::AppState;
use crate::resources::{FsResourceStore, StoreError};
use crate::session::{Clock, SessionStore, SystemClock};
use crate::token::{TokenIssuer, TokenKeyError};

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// An admin public key could not be read.
    #[error(transparent)]
    AdminKey(#[from] AdminKeyError),
    /// The state directory is unusable.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The token key is unusable.
    #[error(transparent)]
    TokenKey(#[from] TokenKeyError),
    /// The admin replay log is unusable.
    #[error(transparent)]
    ReplayLog(#[from] ReplayLogError),
    /// The TLS certificate or key is unusable.
    #[error(transparent)]
    Tls(#[from] http::tls::TlsSetupError),
    /// Binding the listen address failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
}

/// A running broker.
#[derive(Debug)]
pub struct Broker {
    /// The address it actually listens on (useful with port 0).
    pub local_addr: SocketAddr,
    /// Shared state, e.g. for tests that inspect it.
    pub state: Arc<AppState>,
    https: bool,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Broker {
    /// Validates `config`, opens the state, binds and starts serving on the current runtime.
    pub async fn start(config: &KbsConfig) -> Result<Self, StartError> {
        Self::start_with_clock(config, Arc::new(SystemClock)).await
    }

    /// As [`Broker::start`], with a chosen time source (tests use a manual clock).
    pub async fn start_with_clock(
        config: &KbsConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, StartError> {
        let state = Arc::new(build_state(config, clock)?);
        let tls = config
            .tls
            .as_ref()
            .map(http::tls::server_config)
            .transpose()?;
        let https = tls.is_some();
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
        let app = http::router(state.clone());
        let task = tokio::spawn(http::serve(listener, app, tls));
        tracing::info!(%local_addr, tees = ?state.verifiers.keys().collect::<Vec<_>>(), "veil-kbs listening");
        Ok(Self {
            local_addr,
            state,
            https,
            task,
        })
    }

    /// Base URL of this broker, e.g. `http://127.0.0.1:40123` (`https://` with a certificate).
    pub fn url(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}", self.local_addr)
    }

    /// Serves until the server task ends (it only ends on an I/O error).
    pub async fn wait(self) -> std::io::Result<()> {
        self.task
            .await
            .map_err(|e| std::io::Error::other(format!("server task: {e}")))?
    }

    /// Stops serving.
    pub fn stop(&self) {
        self.task.abort();
    }
}

/// Builds the shared state from a configuration (validated here).
pub fn build_state(config: &KbsConfig, clock: Arc<dyn Clock>) -> Result<AppState, StartError> {
    config.validate()?;
    let admin_keys = config
        .admin_public_keys
        .iter()
        .map(|path| admin::load_verifying_key(path))
        .collect::<Result<Vec<_>, _>>()?;
    let store = FsResourceStore::open(&config.state_dir)?;
    let tokens = TokenIssuer::load_or_create(&config.state_dir, config.token_ttl_secs)?;
    let snp = SnpVerifier {
        vcek_cache_dir: config.snp.vcek_cache_dir.clone(),
        min_tcb: config.snp.min_tcb,
    };
    let mut verifiers: HashMap<Tee, Arc<dyn Verifier>> = HashMap::new();
    verifiers.insert(Tee::Snp, Arc::new(snp));
    verifiers.insert(Tee::Sample, Arc::new(SampleVerifier));
    Ok(AppState {
        sessions: SessionStore::new(config.session_ttl_secs, config.max_sessions, clock.clone()),
        verifiers,
        store: Arc::new(store),
        tokens,
        admin: AdminAuth::with_replay_guard(
            admin_keys,
            ReplayGuard::persisted(&config.state_dir.join(REPLAY_LOG_FILE))?,
        ),
        clock,
    })
}
