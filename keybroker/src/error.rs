//! The one place where errors become HTTP responses: status + RFC 7807 problem JSON whose
//! `type` names the failed check and whose `detail` says what to do.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use veil_kbs_client::jwe::JweEncryptError;
use veil_kbs_client::wire::Problem;

use crate::admin::AdminAuthError;
use crate::admin_replay::ReplayError;
use crate::attestation::VerifyError;
use crate::policy::{PolicyDenied, PolicySyntaxError};
use crate::resources::{InvalidResourceId, StoreError};
use crate::session::SessionError;
use crate::token::TokenError;

/// Prefix of every problem type; the last segment is the stable check name.
pub const PROBLEM_TYPE_PREFIX: &str = "/kbs/v0/errors/";

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum KbsError {
    /// The body is not the expected JSON.
    #[error("request body is not a valid {what}: {reason}")]
    InvalidRequest {
        /// The expected message.
        what: &'static str,
        /// The parser's message.
        reason: String,
    },
    /// The client speaks a protocol version this broker does not.
    #[error("protocol version `{0}` is not supported; this broker speaks the Trustee KBS protocol 0.4.x (runtime data bound with additional-evidence)")]
    UnsupportedVersion(String),
    /// The TEE has no verifier here.
    #[error("TEE `{0}` is not supported by this broker")]
    UnsupportedTee(String),
    /// Init data was sent; veil binds none and will not ignore it silently.
    #[error("init-data is not supported by this broker; send the attestation without it")]
    InitDataUnsupported,
    /// Device (additional) evidence was sent; this broker verifies none.
    #[error("tee-evidence.additional_evidence is not supported by this broker (no device attestation); send \"\" ")]
    AdditionalEvidenceUnsupported,
    /// The tee-pubkey cannot be used to encrypt.
    #[error("runtime-data tee-pubkey is unusable: {0}")]
    TeePubKey(JweEncryptError),
    /// A session check failed.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// Evidence verification failed.
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// A bearer attestation token was refused.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The policy refused the claims.
    #[error(transparent)]
    PolicyDenied(#[from] PolicyDenied),
    /// A stored policy failed to compile (set by an older broker, or edited by hand).
    #[error("stored policy for {resource} does not compile ({source}); set it again")]
    StoredPolicyInvalid {
        /// The resource.
        resource: String,
        /// The compile error.
        source: PolicySyntaxError,
    },
    /// The resource exists but has no policy: nobody gets it.
    #[error("resource {0} has no policy, so it is released to nobody; set one with `veil kbs policy set`")]
    NoPolicy(String),
    /// A new policy does not compile.
    #[error(transparent)]
    PolicySyntax(#[from] PolicySyntaxError),
    /// No such resource.
    #[error("resource {0} does not exist")]
    ResourceNotFound(String),
    /// The path is not a valid resource id.
    #[error(transparent)]
    InvalidResourceId(#[from] InvalidResourceId),
    /// Admin authentication failed.
    #[error(transparent)]
    Admin(#[from] AdminAuthError),
    /// Storage failed (server fault).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Anything else that is the broker's fault.
    #[error("internal error: {0}")]
    Internal(String),
}

impl KbsError {
    /// HTTP status and stable problem slug of this error.
    pub fn status_and_slug(&self) -> (StatusCode, &'static str) {
        use StatusCode as S;
        match self {
            KbsError::InvalidRequest { .. } => (S::BAD_REQUEST, "invalid-request"),
            KbsError::UnsupportedVersion(_) => (S::BAD_REQUEST, "unsupported-version"),
            KbsError::UnsupportedTee(_) => (S::BAD_REQUEST, "unsupported-tee"),
            KbsError::InitDataUnsupported => (S::BAD_REQUEST, "init-data-unsupported"),
            KbsError::AdditionalEvidenceUnsupported => {
                (S::BAD_REQUEST, "additional-evidence-unsupported")
            }
            KbsError::TeePubKey(_) => (S::BAD_REQUEST, "tee-pubkey-invalid"),
            KbsError::Session(e) => session_status(e),
            KbsError::Verify(e) => match e {
                VerifyError::MalformedEvidence { .. } | VerifyError::SnpReportMalformed(_) => {
                    (S::BAD_REQUEST, e.slug())
                }
                _ => (S::UNAUTHORIZED, e.slug()),
            },
            KbsError::Token(_) => (S::UNAUTHORIZED, "token-invalid"),
            KbsError::PolicyDenied(PolicyDenied::SampleNotAllowed { .. }) => {
                (S::FORBIDDEN, "sample-not-allowed")
            }
            KbsError::PolicyDenied(PolicyDenied::ConditionFailed { .. }) => {
                (S::FORBIDDEN, "policy-denied")
            }
            KbsError::StoredPolicyInvalid { .. } => (S::FORBIDDEN, "stored-policy-invalid"),
            KbsError::NoPolicy(_) => (S::FORBIDDEN, "no-policy"),
            KbsError::PolicySyntax(_) => (S::BAD_REQUEST, "policy-syntax"),
            KbsError::ResourceNotFound(_) => (S::NOT_FOUND, "resource-not-found"),
            KbsError::InvalidResourceId(_) => (S::BAD_REQUEST, "invalid-resource-id"),
            KbsError::Admin(AdminAuthError::MissingToken) => {
                (S::UNAUTHORIZED, "admin-token-missing")
            }
            KbsError::Admin(AdminAuthError::Invalid(_)) => (S::UNAUTHORIZED, "admin-token-invalid"),
            KbsError::Admin(AdminAuthError::Stale(_)) => (S::UNAUTHORIZED, "admin-token-stale"),
            KbsError::Admin(AdminAuthError::Replay(ReplayError::Replayed(_))) => {
                (S::UNAUTHORIZED, "admin-token-replayed")
            }
            KbsError::Admin(AdminAuthError::Replay(ReplayError::TooMany)) => {
                (S::SERVICE_UNAVAILABLE, "admin-tokens-exhausted")
            }
            KbsError::Admin(AdminAuthError::Replay(ReplayError::Persist(_))) => {
                (S::INTERNAL_SERVER_ERROR, "internal")
            }
            KbsError::Store(_) | KbsError::Internal(_) => (S::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    /// The problem document sent to the client. Server faults keep their details in the log.
    pub fn problem(&self) -> Problem {
        let (status, slug) = self.status_and_slug();
        let detail = if status.is_server_error() {
            "the broker failed internally; its log has the details".to_owned()
        } else {
            self.to_string()
        };
        Problem {
            problem_type: format!("{PROBLEM_TYPE_PREFIX}{slug}"),
            title: status.canonical_reason().unwrap_or("error").to_owned(),
            status: status.as_u16(),
            detail,
        }
    }
}

fn session_status(e: &SessionError) -> (StatusCode, &'static str) {
    use StatusCode as S;
    match e {
        SessionError::Missing => (S::UNAUTHORIZED, "session-missing"),
        SessionError::Unknown => (S::UNAUTHORIZED, "session-unknown"),
        SessionError::Expired(_) => (S::UNAUTHORIZED, "session-expired"),
        SessionError::NonceReused => (S::UNAUTHORIZED, "nonce-reused"),
        SessionError::NonceMismatch => (S::UNAUTHORIZED, "nonce-mismatch"),
        SessionError::NotAttested => (S::UNAUTHORIZED, "not-attested"),
        SessionError::TooMany(_) => (S::SERVICE_UNAVAILABLE, "too-many-sessions"),
    }
}

impl IntoResponse for KbsError {
    fn into_response(self) -> Response {
        let problem = self.problem();
        let (status, slug) = self.status_and_slug();
        if status.is_server_error() {
            tracing::error!(problem = slug, error = %self, "request failed: broker fault");
        } else {
            tracing::info!(problem = slug, detail = %problem.detail, "request refused");
        }
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        (
            status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body,
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_names_its_check() {
        let cases: Vec<(KbsError, u16, &str)> = vec![
            (SessionError::NonceReused.into(), 401, "nonce-reused"),
            (SessionError::NonceMismatch.into(), 401, "nonce-mismatch"),
            (SessionError::Expired(3).into(), 401, "session-expired"),
            (
                KbsError::ResourceNotFound("a/b/c".into()),
                404,
                "resource-not-found",
            ),
            (
                AdminAuthError::MissingToken.into(),
                401,
                "admin-token-missing",
            ),
            (KbsError::Internal("x".into()), 500, "internal"),
        ];
        for (err, status, slug) in cases {
            let p = err.problem();
            assert_eq!(p.status, status);
            assert_eq!(p.kind(), slug);
            assert!(p.problem_type.starts_with(PROBLEM_TYPE_PREFIX));
        }
    }

    #[test]
    fn server_faults_do_not_leak_details() {
        let p = KbsError::Internal("/secret/path".into()).problem();
        assert!(!p.detail.contains("/secret/path"));
    }
}
