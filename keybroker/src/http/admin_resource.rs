//! `POST /kbs/v0/resource/{repo}/{type}/{tag}` (admin): store a resource from the raw body.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use veil_kbs_client::jwe::MAX_PLAINTEXT_BYTES;

use super::{authorization, AppState};
use crate::error::KbsError;
use crate::resources::ResourceId;

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
    if body.is_empty() || body.len() > MAX_PLAINTEXT_BYTES {
        return Err(KbsError::InvalidRequest {
            what: "resource",
            reason: format!(
                "must be 1..={MAX_PLAINTEXT_BYTES} bytes, got {}",
                body.len()
            ),
        });
    }
    state.store.write_resource(&id, &body)?;
    tracing::info!(resource = %id, bytes = body.len(), "resource stored by admin");
    Ok(StatusCode::NO_CONTENT)
}
