//! The HTTP API (axum): one file per endpoint, state shared through [`AppState`].
//!
//! | method | path | who |
//! | --- | --- | --- |
//! | POST | `/kbs/v0/auth` | guest: Request -> Challenge + session cookie |
//! | POST | `/kbs/v0/attest` | guest: Attestation -> attestation token |
//! | GET | `/kbs/v0/resource/{repo}/{type}/{tag}` | guest: resource as JWE |
//! | POST | `/kbs/v0/resource/{repo}/{type}/{tag}` | admin: store a resource (raw body) |
//! | POST | `/kbs/v0/resource-policy/{repo}/{type}/{tag}` | admin: `{"policy": "<CEL>"}` |
//!
//! [`serve`] runs the routes over HTTPS when the broker has a certificate ([`tls`]), over
//! plain HTTP otherwise.

mod admin_policy;
mod admin_resource;
mod attest;
mod auth;
mod resource;
pub mod tls;

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::routing::post;
use axum::Router;
use veil_kbs_client::jwe::MAX_PLAINTEXT_BYTES;
use veil_kbs_client::wire::{MAX_BODY_BYTES, SESSION_COOKIE};
use veil_kbs_client::Tee;

use crate::admin::AdminAuth;
use crate::attestation::Verifier;
use crate::error::KbsError;
use crate::resources::ResourceStore;
use crate::session::{Clock, SessionStore};
use crate::token::TokenIssuer;

/// Everything the handlers share.
pub struct AppState {
    /// Live sessions.
    pub sessions: SessionStore,
    /// One verifier per supported TEE.
    pub verifiers: HashMap<Tee, Arc<dyn Verifier>>,
    /// Resources and policies.
    pub store: Arc<dyn ResourceStore>,
    /// Attestation token issuer.
    pub tokens: TokenIssuer,
    /// Trusted admin keys.
    pub admin: AdminAuth,
    /// Time source.
    pub clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("sessions", &self.sessions)
            .field("tees", &self.verifiers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// The broker's routes.
pub fn router(state: Arc<AppState>) -> Router {
    let resource_path = "/kbs/v0/resource/{repo}/{kind}/{tag}";
    Router::new()
        .route("/kbs/v0/auth", post(auth::handle))
        .route("/kbs/v0/attest", post(attest::handle))
        .route(
            resource_path,
            axum::routing::get(resource::handle).post(admin_resource::handle),
        )
        .route(
            "/kbs/v0/resource-policy/{repo}/{kind}/{tag}",
            post(admin_policy::handle),
        )
        .layer(DefaultBodyLimit::max(
            MAX_BODY_BYTES.max(MAX_PLAINTEXT_BYTES),
        ))
        .with_state(state)
}

/// Serves `app` on `listener` until the task is aborted: over TLS with `tls`, else plain HTTP.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> std::io::Result<()> {
    let local_addr = listener.local_addr()?;
    match tls {
        Some(config) => {
            tracing::info!(%local_addr, "serving HTTPS");
            tls::serve_tls(listener, app, config).await
        }
        None => {
            if local_addr.ip().is_loopback() {
                tracing::info!(%local_addr, "serving plain HTTP (loopback only)");
            } else {
                tracing::warn!(
                    %local_addr,
                    "serving plain HTTP beyond loopback: admin tokens and attestation travel in \
                     clear; pass --tls-cert and --tls-key (or the config's `tls`) to serve HTTPS"
                );
            }
            axum::serve(listener, app).await
        }
    }
}

/// The `kbs-session-id` cookie value, if any.
fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.to_owned())
}

/// `Set-Cookie` for a session.
fn set_cookie(id: &str, ttl_secs: u64) -> Result<HeaderValue, KbsError> {
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={id}; Path=/kbs; Max-Age={ttl_secs}; HttpOnly; SameSite=Strict"
    ))
    .map_err(|e| KbsError::Internal(format!("session cookie: {e}")))
}

/// Parses a JSON body, naming the expected message on failure.
fn parse_json<T: serde::de::DeserializeOwned>(
    what: &'static str,
    body: &[u8],
) -> Result<T, KbsError> {
    serde_json::from_slice(body).map_err(|e| KbsError::InvalidRequest {
        what,
        reason: e.to_string(),
    })
}

/// The bearer token of the `Authorization` header, if any.
fn authorization(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; kbs-session-id=xyz; b=2"),
        );
        assert_eq!(session_cookie(&headers).as_deref(), Some("xyz"));
        assert_eq!(session_cookie(&HeaderMap::new()), None);
    }
}
