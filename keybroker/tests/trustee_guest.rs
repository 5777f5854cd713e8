//! A Trustee (Confidential Containers) guest against `veil-kbs`: every body is written as
//! guest-components' `kbs_protocol` 0.4.0 sends it (raw JSON, not veil's client types), with
//! an RSA-OAEP-256 tee key as `TeeKeyAlgorithm::RsaOaep256` exports it and the sample
//! attester's evidence. This checks the documented format only; no Trustee binary ran here.

use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use rsa::pkcs8::DecodePrivateKey;
use rsa::traits::PublicKeyParts;
use rsa::{Oaep, RsaPrivateKey};
use serde_json::{json, Value};
use sha2::{Digest, Sha384};
use veil_kbs_client::jwe::open_with_cek;
use veil_kbs_client::wire::Response;
use veil_keybroker::admin::generate_admin_key;
use veil_keybroker::admin_client::AdminClient;
use veil_keybroker::config::KbsConfig;
use veil_keybroker::Broker;

const TEST_KEY: &[u8] = include_bytes!("data/rsa/test_key_2048.pk8.der");
const RESOURCE: &str = "default/key/model";

struct Kbs {
    _runtime: tokio::runtime::Runtime,
    broker: Broker,
    _dir: tempfile::TempDir,
}

impl Kbs {
    fn start(policy: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("admin.key");
        generate_admin_key(&key).unwrap();
        let config = KbsConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            dir.path().join("state"),
            vec![dir.path().join("admin.key.pub")],
        );
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let broker = runtime.block_on(Broker::start(&config)).unwrap();
        let admin = AdminClient::from_key_file(&broker.url(), &key).unwrap();
        admin.put_resource(RESOURCE, b"trustee secret").unwrap();
        admin.set_policy(RESOURCE, policy).unwrap();
        Self {
            _runtime: runtime,
            broker,
            _dir: dir,
        }
    }
}

/// One guest session: a cookie jar of one cookie, like reqwest's in `kbs_protocol`.
struct Guest {
    agent: ureq::Agent,
    base: String,
    cookie: Option<String>,
}

impl Guest {
    fn new(kbs: &Kbs) -> Self {
        let agent = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(20)))
                .build(),
        );
        Self {
            agent,
            base: kbs.broker.url(),
            cookie: None,
        }
    }

    /// Returns (status, JSON body).
    fn call(&mut self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        let cookie = self.cookie.clone().unwrap_or_default();
        let result = match body {
            Some(body) => self
                .agent
                .post(&url)
                .header("Content-Type", "application/json")
                .header("Cookie", cookie)
                .send(body.to_string().as_bytes()),
            None => {
                assert_eq!(method, "GET");
                self.agent.get(&url).header("Cookie", cookie).call()
            }
        };
        let mut response = result.unwrap();
        if let Some(set) = response.headers().get("set-cookie") {
            let first = set.to_str().unwrap().split(';').next().unwrap().to_owned();
            self.cookie = Some(first);
        }
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }
}

fn rsa_key() -> RsaPrivateKey {
    RsaPrivateKey::from_pkcs8_der(TEST_KEY).unwrap()
}

/// `TeePubKey::RSA { alg, k_mod, k_exp }` as kbs-types serializes it.
fn rsa_tee_pubkey(key: &RsaPrivateKey, alg: &str) -> Value {
    json!({
        "kty": "RSA",
        "alg": alg,
        "n": URL_SAFE_NO_PAD.encode(key.n().to_bytes_be()),
        "e": URL_SAFE_NO_PAD.encode(key.e().to_bytes_be()),
    })
}

/// kbs_protocol's `get_composite_evidence`: canonical JSON of the primary runtime data,
/// SHA-384, and the sample attester's `{"svn":"1","report_data": base64(digest)}`.
fn sample_attestation(nonce: &str, tee_pubkey: &Value, additional_evidence: &str) -> Value {
    let runtime = json!({
        "tee-pubkey": tee_pubkey,
        "nonce": nonce,
        "additional-evidence": additional_evidence,
    });
    let canonical = serde_json_canonical(&runtime);
    let digest = Sha384::digest(canonical.as_bytes());
    json!({
        "init-data": null,
        "runtime-data": {"nonce": nonce, "tee-pubkey": tee_pubkey},
        "tee-evidence": {
            "primary_evidence": {"svn": "1", "report_data": STANDARD.encode(digest)},
            "additional_evidence": additional_evidence,
        }
    })
}

/// RFC 8785 for this test's inputs (ASCII strings and objects only): sorted keys, no spaces.
/// Written independently of the broker's canonicalizer so that the two check each other.
fn serde_json_canonical(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let members: Vec<String> = keys
                .iter()
                .map(|k| {
                    format!(
                        "{}:{}",
                        Value::String((*k).clone()),
                        serde_json_canonical(&map[*k])
                    )
                })
                .collect();
            format!("{{{}}}", members.join(","))
        }
        other => other.to_string(),
    }
}

fn request(version: &str) -> Value {
    json!({
        "version": version,
        "tee": "sample",
        "extra-params": {"supported-hash-algorithms": ["sha256", "sha384", "sha512"]},
    })
}

#[test]
fn trustee_guest_with_rsa_oaep_256_key_gets_the_resource() {
    let kbs = Kbs::start("claims.tee == 'sample' && claims.svn == '1'");
    let mut guest = Guest::new(&kbs);
    let (status, challenge) = guest.call("POST", "/kbs/v0/auth", Some(&request("0.4.0")));
    assert_eq!(status, 200, "{challenge}");
    assert_eq!(challenge["extra-params"], "", "Trustee's challenge shape");
    let nonce = challenge["nonce"].as_str().unwrap().to_owned();

    let key = rsa_key();
    let tee_pubkey = rsa_tee_pubkey(&key, "RSA-OAEP-256");
    let body = sample_attestation(&nonce, &tee_pubkey, "");
    let (status, token) = guest.call("POST", "/kbs/v0/attest", Some(&body));
    assert_eq!(status, 200, "{token}");
    assert!(token["token"].is_string());

    let (status, jwe) = guest.call("GET", &format!("/kbs/v0/resource/{RESOURCE}"), None);
    assert_eq!(status, 200, "{jwe}");
    // kbs_protocol's decrypt_response: AAD = base64url(re-serialized protected header).
    let response: Response = serde_json::from_value(jwe).unwrap();
    let header: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&response.protected).unwrap()).unwrap();
    assert_eq!(
        URL_SAFE_NO_PAD.encode(serde_json::to_string(&header).unwrap()),
        response.protected
    );
    let wrapped = URL_SAFE_NO_PAD.decode(&response.encrypted_key).unwrap();
    let cek: [u8; 32] = key
        .decrypt(Oaep::new::<sha2::Sha256>(), &wrapped)
        .unwrap()
        .try_into()
        .unwrap();
    assert_eq!(
        open_with_cek(&response, &cek).unwrap().as_slice(),
        b"trustee secret"
    );
}

#[test]
fn protocol_0_1_clients_are_refused_by_version() {
    let kbs = Kbs::start("claims.tee == 'sample'");
    let mut guest = Guest::new(&kbs);
    let (status, problem) = guest.call("POST", "/kbs/v0/auth", Some(&request("0.1.1")));
    assert_eq!(status, 400);
    assert!(
        problem["type"]
            .as_str()
            .unwrap()
            .ends_with("unsupported-version"),
        "{problem}"
    );
}

#[test]
fn device_evidence_is_refused_not_ignored() {
    let kbs = Kbs::start("claims.tee == 'sample'");
    let mut guest = Guest::new(&kbs);
    let (_, challenge) = guest.call("POST", "/kbs/v0/auth", Some(&request("0.4.0")));
    let nonce = challenge["nonce"].as_str().unwrap();
    let tee_pubkey = rsa_tee_pubkey(&rsa_key(), "RSA-OAEP-256");
    let body = sample_attestation(nonce, &tee_pubkey, r#"{"nvidia":{"evidence":"x"}}"#);
    let (status, problem) = guest.call("POST", "/kbs/v0/attest", Some(&body));
    assert_eq!(status, 400);
    assert!(
        problem["type"]
            .as_str()
            .unwrap()
            .ends_with("additional-evidence-unsupported"),
        "{problem}"
    );
}

#[test]
fn rsa1_5_tee_keys_are_refused_naming_the_supported_ones() {
    let kbs = Kbs::start("claims.tee == 'sample'");
    let mut guest = Guest::new(&kbs);
    let (_, challenge) = guest.call("POST", "/kbs/v0/auth", Some(&request("0.4.0")));
    let nonce = challenge["nonce"].as_str().unwrap();
    let tee_pubkey = rsa_tee_pubkey(&rsa_key(), "RSA1_5");
    let body = sample_attestation(nonce, &tee_pubkey, "");
    let (status, problem) = guest.call("POST", "/kbs/v0/attest", Some(&body));
    assert_eq!(status, 400);
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        problem["type"]
            .as_str()
            .unwrap()
            .ends_with("tee-pubkey-invalid"),
        "{problem}"
    );
    assert!(
        detail.contains("RSA-OAEP-256") && detail.contains("ECDH-ES+A256KW"),
        "{detail}"
    );
}
