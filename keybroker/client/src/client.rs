//! The protocol driver: `/auth`, `/attest`, `/resource` over blocking HTTP (ureq).
//!
//! [`fetch_resource`] is what the agent calls. [`Connection`] exposes each step so tests (and
//! tools) can drive the protocol one call at a time.

use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use ureq::tls::{RootCerts, TlsConfig};
use ureq::unversioned::resolver::{ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};
use zeroize::Zeroizing;

use crate::evidence::{Attester, EvidenceError};
use crate::jwe::{EphemeralKey, JweDecryptError};
use crate::wire::{
    Attestation, AttestationToken, Challenge, Problem, Request, Response, RuntimeData, TeeEvidence,
    MAX_BODY_BYTES, PROTOCOL_VERSION, SESSION_COOKIE,
};
use crate::Tee;

/// Where the broker is and how to attest to it.
#[derive(Clone, Debug)]
pub struct KbsClientConfig {
    /// Base URL of the broker, e.g. `http://10.0.2.2:8080` (no trailing `/kbs/v0`).
    pub url: String,
    /// How this guest produces evidence.
    pub attester: Attester,
    /// Bound on each HTTP call, connection included.
    pub timeout: Duration,
    /// How the broker's host name is looked up; `None`: the system's resolver. A guest whose
    /// libc cannot resolve names (veil's static agent) passes its own.
    pub resolver: Option<Arc<dyn Resolver>>,
    /// What an https:// broker's certificate is verified against; `None`: the WebPKI roots.
    pub root_certs: Option<RootCerts>,
}

impl KbsClientConfig {
    /// A configuration with the default 30 s timeout per call and the system's resolver.
    pub fn new(url: impl Into<String>, attester: Attester) -> Self {
        Self {
            url: url.into(),
            attester,
            timeout: Duration::from_secs(30),
            resolver: None,
            root_certs: None,
        }
    }
}

/// A shared resolver, as ureq's agent wants one by value.
#[derive(Debug)]
struct SharedResolver(Arc<dyn Resolver>);

impl Resolver for SharedResolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        self.0.resolve(uri, config, timeout)
    }
}

/// Why fetching a resource failed. Every message starts with the step that failed
/// (`auth`, `attest`, `resource` or `connection`), then the broker's own words if it answered.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The broker refused a step; `problem.detail` says which check failed.
    #[error("key broker step `{step}` refused: {} (problem `{}`)", problem.detail, problem.kind())]
    Refused {
        /// `auth`, `attest` or `resource`.
        step: &'static str,
        /// The broker's RFC 7807 problem.
        problem: Problem,
    },
    /// The broker could not be reached or the connection failed.
    #[error("key broker step `connection` failed: cannot reach {url}: {reason}")]
    Transport {
        /// The URL called.
        url: String,
        /// The transport error.
        reason: String,
    },
    /// The broker's TLS certificate is not trusted by the configured roots: trying again
    /// cannot help, the caller's roots (or the broker's certificate) must change.
    #[error("key broker step `connection` failed: the TLS certificate of {url} is not trusted: {reason}")]
    UntrustedCertificate {
        /// The URL called.
        url: String,
        /// rustls's verdict.
        reason: String,
    },
    /// The broker answered with something that is not the protocol.
    #[error("key broker step `{step}` failed: unexpected answer: {reason}")]
    Protocol {
        /// The step.
        step: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// The resource path is not `repo/type/tag`.
    #[error("key broker step `resource` not attempted: path `{0}` is not REPO/TYPE/TAG")]
    ResourcePath(String),
    /// Evidence could not be collected.
    #[error("key broker step `attest` failed: collecting evidence: {0}")]
    Evidence(#[from] EvidenceError),
    /// The resource could not be decrypted (tampered, or not for our key).
    #[error("key broker step `resource` failed: the response does not decrypt: {0}")]
    Decrypt(#[from] JweDecryptError),
}

/// A failed call as [`ClientError::UntrustedCertificate`] when the TLS handshake refused the
/// broker's certificate, [`ClientError::Transport`] otherwise.
fn transport_error(url: &str, error: &ureq::Error) -> ClientError {
    let (url, reason) = (url.to_owned(), error.to_string());
    if crate::roots::is_tls_failure(error) {
        ClientError::UntrustedCertificate { url, reason }
    } else {
        ClientError::Transport { url, reason }
    }
}

/// Attests with `config.attester` and returns the resource `repo/type/tag`, decrypted.
///
/// Blocking. The secret only ever lives in the returned zeroizing buffer and is never written
/// to disk; the ephemeral key is dropped (and zeroized) before this returns.
pub fn fetch_resource(
    config: &KbsClientConfig,
    resource: &str,
) -> Result<Zeroizing<Vec<u8>>, ClientError> {
    let path = ResourcePath::parse(resource)?;
    let mut conn = Connection::with_transport(
        &config.url,
        config.timeout,
        config.resolver.clone(),
        config.root_certs.clone(),
    );
    let key = EphemeralKey::generate();
    let challenge = conn.auth(config.attester.tee())?;
    let attestation = build_attestation(&config.attester, &challenge.nonce, &key)?;
    conn.attest(&attestation)?;
    let response = conn.resource(&path)?;
    Ok(key.decrypt(&response)?)
}

/// Builds the `/attest` body: runtime data (nonce + our key) and evidence bound to its
/// digest. No device evidence: `additional_evidence` is `""`, as Trustee guests send it.
pub fn build_attestation(
    attester: &Attester,
    nonce: &str,
    key: &EphemeralKey,
) -> Result<Attestation, ClientError> {
    let runtime_data = RuntimeData {
        nonce: nonce.to_owned(),
        tee_pubkey: key.public_jwk(),
    };
    let additional_evidence = String::new();
    let digest = runtime_data
        .digest(&additional_evidence)
        .map_err(|e| ClientError::Protocol {
            step: "attest",
            reason: format!("cannot encode runtime data: {e}"),
        })?;
    let evidence = attester.collect(&digest)?;
    Ok(Attestation {
        init_data: None,
        runtime_data,
        tee_evidence: TeeEvidence {
            primary_evidence: evidence,
            additional_evidence,
        },
    })
}

/// A validated `repo/type/tag`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourcePath(String);

impl ResourcePath {
    /// Accepts exactly three non-empty segments of `[A-Za-z0-9._-]`, none `.` or `..`.
    pub fn parse(path: &str) -> Result<Self, ClientError> {
        let segments: Vec<&str> = path.split('/').collect();
        let valid = segments.len() == 3 && segments.iter().all(|s| is_valid_segment(s));
        if valid {
            Ok(Self(path.to_owned()))
        } else {
            Err(ClientError::ResourcePath(path.to_owned()))
        }
    }

    /// The path as `repo/type/tag`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One path segment of a resource id: short, plain characters, never a traversal.
pub fn is_valid_segment(segment: &str) -> bool {
    !segment.is_empty()
        && segment.len() <= 128
        && segment != "."
        && segment != ".."
        && segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// One client session with a broker: carries the session cookie between calls.
pub struct Connection {
    base: String,
    agent: ureq::Agent,
    cookie: Option<String>,
}

impl Connection {
    /// A connection to `base_url` with `timeout` per call.
    pub fn new(base_url: &str, timeout: Duration) -> Self {
        Self::with_transport(base_url, timeout, None, None)
    }

    /// Like [`Connection::new`], looking host names up with `resolver` and verifying an
    /// https:// broker against `root_certs`, when given.
    pub fn with_transport(
        base_url: &str,
        timeout: Duration,
        resolver: Option<Arc<dyn Resolver>>,
        root_certs: Option<RootCerts>,
    ) -> Self {
        let mut config = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .max_redirects(0);
        if let Some(roots) = root_certs {
            config = config.tls_config(TlsConfig::builder().root_certs(roots).build());
        }
        let config = config.build();
        let agent = match resolver {
            Some(resolver) => {
                ureq::Agent::with_parts(config, DefaultConnector::new(), SharedResolver(resolver))
            }
            None => ureq::Agent::new_with_config(config),
        };
        Self {
            base: base_url.trim_end_matches('/').to_owned(),
            agent,
            cookie: None,
        }
    }

    /// The session cookie value (`kbs-session-id`), once `/auth` has set it.
    pub fn session_cookie(&self) -> Option<&str> {
        self.cookie.as_deref()
    }

    /// Replaces the session cookie (tests use this to mix sessions).
    pub fn set_session_cookie(&mut self, cookie: Option<String>) {
        self.cookie = cookie;
    }

    /// `POST /kbs/v0/auth`: starts a session and returns the challenge.
    pub fn auth(&mut self, tee: Tee) -> Result<Challenge, ClientError> {
        let request = Request {
            version: PROTOCOL_VERSION.to_owned(),
            tee,
            extra_params: serde_json::json!({}),
        };
        self.post_json("auth", "/kbs/v0/auth", &request)
    }

    /// `POST /kbs/v0/attest`: sends evidence; returns the attestation token.
    pub fn attest(&mut self, attestation: &Attestation) -> Result<AttestationToken, ClientError> {
        self.post_json("attest", "/kbs/v0/attest", attestation)
    }

    /// `GET /kbs/v0/resource/<repo>/<type>/<tag>`: the resource as a JWE.
    pub fn resource(&mut self, path: &ResourcePath) -> Result<Response, ClientError> {
        let url = format!("{}/kbs/v0/resource/{}", self.base, path.as_str());
        let mut request = self.agent.get(&url);
        if let Some(cookie) = &self.cookie {
            request = request.header("Cookie", format!("{SESSION_COOKIE}={cookie}"));
        }
        let result = request.call();
        self.finish("resource", &url, result)
    }

    fn post_json<B: Serialize, T: DeserializeOwned>(
        &mut self,
        step: &'static str,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let url = format!("{}{}", self.base, path);
        let bytes = serde_json::to_vec(body).map_err(|e| ClientError::Protocol {
            step,
            reason: format!("cannot encode request: {e}"),
        })?;
        let mut request = self
            .agent
            .post(&url)
            .header("Content-Type", "application/json");
        if let Some(cookie) = &self.cookie {
            request = request.header("Cookie", format!("{SESSION_COOKIE}={cookie}"));
        }
        let result = request.send(&bytes[..]);
        self.finish(step, &url, result)
    }

    fn finish<T: DeserializeOwned>(
        &mut self,
        step: &'static str,
        url: &str,
        result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<T, ClientError> {
        let mut response = result.map_err(|e| transport_error(url, &e))?;
        if let Some(cookie) = session_cookie_from(response.headers()) {
            self.cookie = Some(cookie);
        }
        let status = response.status();
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_BODY_BYTES as u64)
            .read_to_vec()
            .map_err(|e| ClientError::Transport {
                url: url.to_owned(),
                reason: e.to_string(),
            })?;
        if !status.is_success() {
            let problem = serde_json::from_slice::<Problem>(&body).unwrap_or_else(|_| Problem {
                problem_type: "about:blank".to_owned(),
                title: status.to_string(),
                status: status.as_u16(),
                detail: String::from_utf8_lossy(&body).chars().take(512).collect(),
            });
            return Err(ClientError::Refused { step, problem });
        }
        serde_json::from_slice(&body).map_err(|e| ClientError::Protocol {
            step,
            reason: format!("HTTP {status} with a body that is not the expected JSON: {e}"),
        })
    }
}

fn session_cookie_from(headers: &ureq::http::HeaderMap) -> Option<String> {
    headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .find_map(|value| {
            let first = value.split(';').next()?.trim();
            let (name, id) = first.split_once('=')?;
            (name == SESSION_COOKIE).then(|| id.to_owned())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_paths_are_three_plain_segments() {
        assert!(ResourcePath::parse("models/key/llama").is_ok());
        for bad in [
            "a/b",
            "a/b/c/d",
            "a/../c",
            "a/b/",
            "/a/b",
            "a/b c/d",
            "a/b/%2e%2e",
        ] {
            assert!(ResourcePath::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn session_cookie_is_read_from_set_cookie() {
        let mut headers = ureq::http::HeaderMap::new();
        headers.append("set-cookie", "other=1".parse().unwrap());
        headers.append(
            "set-cookie",
            "kbs-session-id=abc123; Path=/kbs; HttpOnly"
                .parse()
                .unwrap(),
        );
        assert_eq!(session_cookie_from(&headers).as_deref(), Some("abc123"));
    }

    #[test]
    fn attestation_is_bound_to_key_and_nonce() {
        let key = EphemeralKey::generate();
        let attester = Attester::Sample(Default::default());
        let attestation = build_attestation(&attester, "bm9uY2U=", &key).unwrap();
        let digest = attestation.runtime_digest().unwrap();
        let evidence: crate::evidence::SampleEvidence =
            serde_json::from_value(attestation.tee_evidence.primary_evidence.clone()).unwrap();
        use base64::Engine;
        let sent = base64::engine::general_purpose::STANDARD
            .decode(evidence.report_data)
            .unwrap();
        assert_eq!(sent, digest);
        assert_eq!(attestation.tee_evidence.additional_evidence, "");
    }

    #[test]
    fn errors_name_the_failed_step() {
        let refused = ClientError::Refused {
            step: "resource",
            problem: Problem {
                problem_type: "/kbs/v0/errors/policy-denied".into(),
                title: String::new(),
                status: 403,
                detail: "condition `x` is false".into(),
            },
        };
        let text = refused.to_string();
        assert!(
            text.contains("`resource`") && text.contains("condition `x` is false"),
            "{text}"
        );
        let transport = ClientError::Transport {
            url: "http://h".into(),
            reason: "refused".into(),
        };
        assert!(transport.to_string().contains("`connection`"));
        let evidence = ClientError::from(EvidenceError::SnpUnsupported);
        assert!(evidence.to_string().contains("`attest`"));
    }

    #[test]
    fn unreachable_broker_is_a_transport_error() {
        let config = KbsClientConfig {
            url: "http://127.0.0.1:1".into(),
            attester: Attester::Sample(Default::default()),
            timeout: Duration::from_secs(5),
            resolver: None,
            root_certs: None,
        };
        let err = fetch_resource(&config, "a/b/c").unwrap_err();
        assert!(matches!(err, ClientError::Transport { .. }), "{err}");
    }
}
