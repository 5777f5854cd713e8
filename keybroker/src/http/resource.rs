//! `GET /kbs/v0/resource/{repo}/{type}/{tag}`: the resource, encrypted to the attested key,
//! if the resource's policy accepts the session's (or bearer token's) claims.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use veil_kbs_client::wire::Response;

use super::{authorization, session_cookie, AppState};
use crate::error::KbsError;
use crate::policy::Policy;
use crate::resources::ResourceId;
use crate::session::Attested;
use crate::tee_key;

pub(super) async fn handle(
    State(state): State<Arc<AppState>>,
    Path((repo, kind, tag)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Json<Response>, KbsError> {
    let id = ResourceId::new(&repo, &kind, &tag)?;
    let attested = attestation_of(&state, &headers)?;
    let outcome = release(&state, &id, &attested);
    if let Err(refusal) = &outcome {
        if attested.claims.insecure {
            tracing::warn!(resource = %id, tee = attested.claims.tee.as_str(), insecure = true,
                problem = refusal.status_and_slug().1,
                "resource refused to the INSECURE sample attester");
        }
    }
    outcome.map(Json)
}

/// Existence, policy and encryption for an attested requester.
fn release(state: &AppState, id: &ResourceId, attested: &Attested) -> Result<Response, KbsError> {
    let secret = state
        .store
        .read_resource(id)?
        .ok_or_else(|| KbsError::ResourceNotFound(id.to_string()))?;
    let policy_text = state
        .store
        .read_policy(id)?
        .ok_or_else(|| KbsError::NoPolicy(id.to_string()))?;
    let policy = Policy::compile(&policy_text).map_err(|source| KbsError::StoredPolicyInvalid {
        resource: id.to_string(),
        source,
    })?;
    policy.evaluate(
        &id.to_string(),
        &attested.claims.json,
        attested.claims.insecure,
    )?;
    let response = tee_key::encrypt(&attested.tee_pubkey, &secret)
        .map_err(|e| KbsError::Internal(format!("encrypting {id}: {e}")))?;
    if attested.claims.insecure {
        tracing::warn!(resource = %id, tee = attested.claims.tee.as_str(), insecure = true,
            "resource released to the INSECURE sample attester (policy allows sample)");
    } else {
        tracing::info!(resource = %id, tee = attested.claims.tee.as_str(), insecure = false,
            "resource released");
    }
    Ok(response)
}

/// The attestation behind this request: a bearer token if sent, else the session cookie.
fn attestation_of(state: &AppState, headers: &HeaderMap) -> Result<Attested, KbsError> {
    if let Some(token) = authorization(headers).and_then(|h| h.strip_prefix("Bearer ")) {
        return Ok(state.tokens.verify(token.trim(), state.clock.now())?);
    }
    Ok(state
        .sessions
        .attested(session_cookie(headers).as_deref())?)
}
