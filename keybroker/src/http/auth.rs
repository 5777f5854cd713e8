//! `POST /kbs/v0/auth`: Request -> Challenge and a new session cookie.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use veil_kbs_client::wire::{Challenge, Request};

use super::{parse_json, set_cookie, AppState};
use crate::error::KbsError;

/// Versions accepted in `Request.version`: Trustee's 0.4.x, whose runtime-data binding
/// includes `additional-evidence` (Trustee itself accepts exactly 0.4.0).
pub const SUPPORTED_VERSION_PREFIX: &str = "0.4.";

pub(super) async fn handle(
    State(state): State<Arc<AppState>>,
    body: Bytes,
) -> Result<Response, KbsError> {
    let request: Request = parse_json("KBS Request", &body)?;
    if !request.version.starts_with(SUPPORTED_VERSION_PREFIX) {
        return Err(KbsError::UnsupportedVersion(request.version));
    }
    if !state.verifiers.contains_key(&request.tee) {
        return Err(KbsError::UnsupportedTee(request.tee.as_str().to_owned()));
    }
    let (id, nonce) = state.sessions.create(request.tee)?;
    tracing::info!(
        tee = request.tee.as_str(),
        insecure = request.tee == veil_kbs_client::Tee::Sample,
        "session opened"
    );
    // Trustee answers every TEE but IBM SE with an empty string here, which both older
    // guests (that parse a string) and newer ones (that parse any JSON) accept.
    let challenge = Challenge {
        nonce,
        extra_params: serde_json::Value::String(String::new()),
    };
    let cookie = set_cookie(&id, state.sessions.ttl_secs())?;
    Ok(([(header::SET_COOKIE, cookie)], Json(challenge)).into_response())
}
