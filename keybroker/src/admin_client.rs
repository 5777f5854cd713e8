//! The owner's side of the admin API: store a resource, set a policy (blocking).

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ed25519_dalek::SigningKey;
use ureq::tls::{RootCerts, TlsConfig};
use veil_kbs_client::client::ResourcePath;
use veil_kbs_client::wire::Problem;

use crate::admin::{admin_token, load_signing_key, AdminKeyError};

/// Why an admin call failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminCallError {
    /// The admin key could not be loaded.
    #[error(transparent)]
    Key(#[from] AdminKeyError),
    /// The resource id is not `repo/type/tag`.
    #[error("resource path `{0}` is not REPO/TYPE/TAG")]
    Path(String),
    /// The broker refused.
    #[error("the key broker refused: {} ({})", problem.detail, problem.kind())]
    Refused {
        /// The broker's problem document.
        problem: Problem,
    },
    /// Transport failure.
    #[error("cannot reach the key broker at {url}: {reason}")]
    Transport {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
}

fn admin_agent(roots: Option<RootCerts>) -> ureq::Agent {
    let mut config = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(30)))
        .http_status_as_error(false)
        .max_redirects(0);
    if let Some(roots) = roots {
        config = config.tls_config(TlsConfig::builder().root_certs(roots).build());
    }
    ureq::Agent::new_with_config(config.build())
}

/// An authenticated admin connection.
pub struct AdminClient {
    base: String,
    key: SigningKey,
    agent: ureq::Agent,
}

impl std::fmt::Debug for AdminClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl AdminClient {
    /// A client for `base_url` signing with the private key in `key_file`.
    pub fn from_key_file(base_url: &str, key_file: &Path) -> Result<Self, AdminCallError> {
        Ok(Self::new(base_url, load_signing_key(key_file)?))
    }

    /// A client for `base_url` signing with `key`.
    pub fn new(base_url: &str, key: SigningKey) -> Self {
        Self {
            base: base_url.trim_end_matches('/').to_owned(),
            key,
            agent: admin_agent(None),
        }
    }

    /// This client, verifying an https:// broker against `roots` (e.g. the owner's private
    /// CA) instead of the WebPKI roots.
    pub fn trusting(self, roots: RootCerts) -> Self {
        Self {
            agent: admin_agent(Some(roots)),
            ..self
        }
    }

    /// Stores `bytes` as resource `repo/type/tag`.
    pub fn put_resource(&self, resource: &str, bytes: &[u8]) -> Result<(), AdminCallError> {
        let path = parse(resource)?;
        let url = format!("{}/kbs/v0/resource/{}", self.base, path.as_str());
        self.post(&url, "application/octet-stream", bytes)
    }

    /// Sets the CEL policy of resource `repo/type/tag`.
    pub fn set_policy(&self, resource: &str, cel: &str) -> Result<(), AdminCallError> {
        let path = parse(resource)?;
        let url = format!("{}/kbs/v0/resource-policy/{}", self.base, path.as_str());
        let body = serde_json::json!({ "policy": cel }).to_string();
        self.post(&url, "application/json", body.as_bytes())
    }

    fn post(&self, url: &str, content_type: &str, body: &[u8]) -> Result<(), AdminCallError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let token = admin_token(&self.key, now);
        let transport = |e: ureq::Error| AdminCallError::Transport {
            url: url.to_owned(),
            reason: e.to_string(),
        };
        let mut response = self
            .agent
            .post(url)
            .header("Authorization", format!("Bearer {token}"))
            .header("Content-Type", content_type)
            .send(body)
            .map_err(transport)?;
        if response.status().is_success() {
            return Ok(());
        }
        let status = response.status();
        let text = response
            .body_mut()
            .with_config()
            .limit(64 * 1024)
            .read_to_vec()
            .map_err(transport)?;
        let problem = serde_json::from_slice(&text).unwrap_or_else(|_| Problem {
            problem_type: "about:blank".into(),
            title: status.to_string(),
            status: status.as_u16(),
            detail: String::from_utf8_lossy(&text).chars().take(512).collect(),
        });
        Err(AdminCallError::Refused { problem })
    }
}

fn parse(resource: &str) -> Result<ResourcePath, AdminCallError> {
    ResourcePath::parse(resource).map_err(|_| AdminCallError::Path(resource.to_owned()))
}
