//! `POST /kbs/v0/attest`: Attestation -> attestation token.
//!
//! Order of checks: body shape, no init-data, usable tee-pubkey, session and nonce (spent
//! here, success or not), evidence verification bound to SHA-384(runtime-data).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use veil_kbs_client::jwe::public_from_jwk;
use veil_kbs_client::wire::{Attestation, AttestationToken};

use super::{parse_json, session_cookie, set_cookie, AppState};
use crate::error::KbsError;
use crate::session::{Attested, SessionError};

pub(super) async fn handle(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, KbsError> {
    let cookie = session_cookie(&headers);
    let attestation: Attestation = parse_json("KBS Attestation", &body)?;
    if attestation.init_data.is_some() {
        return Err(KbsError::InitDataUnsupported);
    }
    let runtime_data = attestation.runtime_data;
    public_from_jwk(&runtime_data.tee_pubkey).map_err(KbsError::TeePubKey)?;
    let tee = state
        .sessions
        .take_nonce(cookie.as_deref(), &runtime_data.nonce)?;
    let id = cookie.ok_or(SessionError::Missing)?;
    let verifier = state
        .verifiers
        .get(&tee)
        .cloned()
        .ok_or_else(|| KbsError::UnsupportedTee(tee.as_str().to_owned()))?;
    let expected = runtime_data
        .report_data()
        .map_err(|e| KbsError::Internal(format!("runtime data encoding: {e}")))?;
    let evidence = attestation.tee_evidence.primary_evidence;
    // Certificate and signature checks are CPU work: keep them off the async workers.
    let claims = tokio::task::spawn_blocking(move || verifier.verify(&evidence, &expected))
        .await
        .map_err(|e| KbsError::Internal(format!("verifier task: {e}")))??;

    let token = state
        .tokens
        .issue(&claims, &runtime_data.tee_pubkey, state.clock.now());
    if claims.insecure {
        tracing::warn!(
            tee = tee.as_str(),
            insecure = true,
            "attestation accepted from the INSECURE sample attester"
        );
    } else {
        tracing::info!(tee = tee.as_str(), insecure = false, "attestation accepted");
    }
    state.sessions.mark_attested(
        &id,
        Attested {
            claims,
            tee_pubkey: runtime_data.tee_pubkey,
        },
    )?;
    let cookie = set_cookie(&id, state.sessions.ttl_secs())?;
    Ok((
        [(header::SET_COOKIE, cookie)],
        Json(AttestationToken { token }),
    )
        .into_response())
}
