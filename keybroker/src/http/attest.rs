//! `POST /kbs/v0/attest`: Attestation -> attestation token.
//!
//! Order of checks: body shape, no init-data, no device (additional) evidence, usable
//! tee-pubkey, session and nonce (spent here, success or not), evidence verification bound to
//! the runtime digest (SHA-384 of the canonical `{additional-evidence, nonce, tee-pubkey}`).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use veil_kbs_client::wire::{Attestation, AttestationToken};
use veil_kbs_client::Tee;

use super::{parse_json, session_cookie, set_cookie, AppState};
use crate::error::KbsError;
use crate::session::{Attested, SessionError};
use crate::tee_key;

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
    if !carries_no_devices(&attestation.tee_evidence.additional_evidence) {
        return Err(KbsError::AdditionalEvidenceUnsupported);
    }
    tee_key::check(&attestation.runtime_data.tee_pubkey).map_err(KbsError::TeePubKey)?;
    let tee = state
        .sessions
        .take_nonce(cookie.as_deref(), &attestation.runtime_data.nonce)?;
    let id = cookie.ok_or(SessionError::Missing)?;
    let verifier = state
        .verifiers
        .get(&tee)
        .cloned()
        .ok_or_else(|| KbsError::UnsupportedTee(tee.as_str().to_owned()))?;
    let digest = attestation
        .runtime_digest()
        .map_err(|e| KbsError::Internal(format!("runtime data encoding: {e}")))?;
    let runtime_data = attestation.runtime_data;
    let evidence = attestation.tee_evidence.primary_evidence;
    // Certificate and signature checks are CPU work: keep them off the async workers.
    let verified = tokio::task::spawn_blocking(move || verifier.verify(&evidence, &digest))
        .await
        .map_err(|e| KbsError::Internal(format!("verifier task: {e}")))?;
    let claims = match verified {
        Ok(claims) => claims,
        Err(refusal) => {
            if tee == Tee::Sample {
                tracing::warn!(
                    tee = tee.as_str(),
                    insecure = true,
                    problem = refusal.slug(),
                    "evidence from the INSECURE sample attester refused"
                );
            }
            return Err(refusal.into());
        }
    };

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

/// Device evidence is bound into the runtime digest but this broker verifies none, so only
/// "no devices" is accepted: `""` (what Trustee guests send) or an empty JSON map.
fn carries_no_devices(additional_evidence: &str) -> bool {
    let trimmed = additional_evidence.trim();
    trimmed.is_empty()
        || serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(trimmed)
            .is_ok_and(|map| map.is_empty())
}
