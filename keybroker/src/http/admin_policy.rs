//! `POST /kbs/v0/resource-policy/{repo}/{type}/{tag}` (admin): set a resource's CEL policy.
//! Body: `{"policy": "<CEL>"}`. A policy that does not compile is refused here, not later.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};

use super::{authorization, parse_json, AppState};
use crate::error::KbsError;
use crate::policy::Policy;
use crate::resources::ResourceId;

/// Body of the set-policy call.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetPolicy {
    /// The CEL condition.
    pub policy: String,
}

pub(super) async fn handle(
    State(state): State<Arc<AppState>>,
    Path((repo, kind, tag)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, KbsError> {
    state
        .admin
        .authenticate(authorization(&headers), state.clock.now())?;
    let id = ResourceId::new(&repo, &kind, &tag)?;
    let request: SetPolicy = parse_json("policy request", &body)?;
    let policy = Policy::compile(&request.policy)?;
    state.store.write_policy(&id, policy.source())?;
    tracing::info!(resource = %id, policy = policy.source(), "policy set by admin");
    Ok(StatusCode::NO_CONTENT)
}
