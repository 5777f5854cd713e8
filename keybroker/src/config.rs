//! Broker configuration: serde with defaults, unknown fields refused, then [`KbsConfig::validate`].

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::attestation::snp::MinTcb;

/// The broker's configuration (JSON when read from a file).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KbsConfig {
    /// Address to listen on, e.g. `127.0.0.1:8080` (port 0 picks one).
    pub listen: SocketAddr,
    /// Directory for resources, policies and the token key (created 0700).
    pub state_dir: PathBuf,
    /// PEM Ed25519 public keys whose signed tokens may call the admin endpoints.
    pub admin_public_keys: Vec<PathBuf>,
    /// Lifetime of an attestation session (cookie), seconds.
    #[serde(default = "default_session_ttl")]
    pub session_ttl_secs: u64,
    /// Lifetime of an attestation token, seconds.
    #[serde(default = "default_token_ttl")]
    pub token_ttl_secs: u64,
    /// Most sessions held at once.
    #[serde(default = "default_max_sessions")]
    pub max_sessions: usize,
    /// SEV-SNP verification settings.
    #[serde(default)]
    pub snp: SnpConfig,
    /// Serve HTTPS with this certificate and key; absent: plain HTTP (loopback demos only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
}

/// The broker's TLS identity, as Trustee KBS's `certificate` / `private_key`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, the broker's own certificate first.
    pub certificate: PathBuf,
    /// PEM private key of that certificate (PKCS#8, PKCS#1 or SEC1).
    pub private_key: PathBuf,
}

impl TlsConfig {
    /// The identity given as a certificate flag and a key flag, when both are given
    /// (command lines require them together).
    pub fn from_flags(certificate: Option<PathBuf>, private_key: Option<PathBuf>) -> Option<Self> {
        certificate
            .zip(private_key)
            .map(|(certificate, private_key)| TlsConfig {
                certificate,
                private_key,
            })
    }
}

/// SEV-SNP verification settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnpConfig {
    /// Offline VCEK cache (`<chip_id hex>-<bl>-<tee>-<snp>-<ucode>.der`) for evidence without one.
    #[serde(default)]
    pub vcek_cache_dir: Option<PathBuf>,
    /// Minimum reported TCB.
    #[serde(default)]
    pub min_tcb: MinTcb,
}

fn default_session_ttl() -> u64 {
    300
}
fn default_token_ttl() -> u64 {
    600
}
fn default_max_sessions() -> usize {
    10_000
}

/// Longest session or token lifetime accepted.
pub const MAX_TTL_SECS: u64 = 24 * 3600;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// No admin key: the admin endpoints would be anonymous.
    #[error("no admin public key configured; admin endpoints are never anonymous (create one with `veil kbs admin-keygen` and pass --admin-pubkey)")]
    NoAdminKey,
    /// A lifetime is zero or too long.
    #[error("{field} must be 1..={MAX_TTL_SECS} seconds, got {value}")]
    Ttl {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// `max_sessions` is zero.
    #[error("max_sessions must be at least 1")]
    MaxSessions,
    /// The file could not be read or parsed.
    #[error("cannot load config {path}: {reason}")]
    Load {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

impl KbsConfig {
    /// A configuration with defaults for everything but the essentials.
    pub fn new(listen: SocketAddr, state_dir: PathBuf, admin_public_keys: Vec<PathBuf>) -> Self {
        Self {
            listen,
            state_dir,
            admin_public_keys,
            session_ttl_secs: default_session_ttl(),
            token_ttl_secs: default_token_ttl(),
            max_sessions: default_max_sessions(),
            snp: SnpConfig::default(),
            tls: None,
        }
    }

    /// Reads a JSON configuration file and validates it.
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let load_err = |reason: String| ConfigError::Load {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| load_err(e.to_string()))?;
        let config: Self = serde_json::from_str(&text).map_err(|e| load_err(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the invariants serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.admin_public_keys.is_empty() {
            return Err(ConfigError::NoAdminKey);
        }
        for (field, value) in [
            ("session_ttl_secs", self.session_ttl_secs),
            ("token_ttl_secs", self.token_ttl_secs),
        ] {
            if value == 0 || value > MAX_TTL_SECS {
                return Err(ConfigError::Ttl { field, value });
            }
        }
        if self.max_sessions == 0 {
            return Err(ConfigError::MaxSessions);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> KbsConfig {
        KbsConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            "/tmp/x".into(),
            vec!["admin.pub".into()],
        )
    }

    #[test]
    fn defaults_validate() {
        valid().validate().unwrap();
    }

    #[test]
    fn admin_key_is_required() {
        let mut c = valid();
        c.admin_public_keys.clear();
        assert!(matches!(c.validate(), Err(ConfigError::NoAdminKey)));
    }

    #[test]
    fn zero_ttl_is_refused() {
        let mut c = valid();
        c.session_ttl_secs = 0;
        assert!(matches!(c.validate(), Err(ConfigError::Ttl { .. })));
    }

    #[test]
    fn unknown_fields_are_refused() {
        let json = r#"{"listen":"127.0.0.1:0","state_dir":"/s","admin_public_keys":["a"],"alow_sample":true}"#;
        assert!(serde_json::from_str::<KbsConfig>(json).is_err());
        let json = r#"{"listen":"127.0.0.1:0","state_dir":"/s","admin_public_keys":["a"],"snp":{"min_tcb":{"snp":8}}}"#;
        let c: KbsConfig = serde_json::from_str(json).unwrap();
        assert_eq!(c.snp.min_tcb.snp, 8);
    }

    #[test]
    fn tls_is_optional_and_names_its_files() {
        let json = r#"{"listen":"127.0.0.1:0","state_dir":"/s","admin_public_keys":["a"]}"#;
        assert_eq!(serde_json::from_str::<KbsConfig>(json).unwrap().tls, None);
        let json = r#"{"listen":"127.0.0.1:0","state_dir":"/s","admin_public_keys":["a"],
            "tls":{"certificate":"/c.pem","private_key":"/k.pem"}}"#;
        let tls = serde_json::from_str::<KbsConfig>(json)
            .unwrap()
            .tls
            .unwrap();
        assert_eq!(tls.certificate, PathBuf::from("/c.pem"));
        assert_eq!(tls.private_key, PathBuf::from("/k.pem"));
        let json = r#"{"listen":"127.0.0.1:0","state_dir":"/s","admin_public_keys":["a"],
            "tls":{"certificate":"/c.pem","key":"/k.pem"}}"#;
        assert!(serde_json::from_str::<KbsConfig>(json).is_err());
    }
}
