//! End-to-end tests: a real `veil-kbs` on 127.0.0.1:0, driven by the guest client library.
//!
//! The policy cases are a table (policy x evidence -> expected outcome); protocol refusals
//! (nonces, sessions, key binding, admin auth, tampering) each have their own test.

use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use veil_kbs_client::client::build_attestation;
use veil_kbs_client::jwe::{EphemeralKey, JweDecryptError};
use veil_kbs_client::{
    fetch_resource, Attester, ClientError, Connection, KbsClientConfig, ResourcePath, SampleClaims,
    Tee,
};
use veil_keybroker::admin::{admin_token, generate_admin_key, load_signing_key};
use veil_keybroker::admin_client::{AdminCallError, AdminClient};
use veil_keybroker::config::KbsConfig;
use veil_keybroker::session::{Clock, ManualClock, SystemClock};
use veil_keybroker::Broker;

const TIMEOUT: Duration = Duration::from_secs(20);
const RESOURCE: &str = "models/key/llama";
const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

/// A broker on loopback with its own state directory, admin key and manual clock.
struct Harness {
    runtime: tokio::runtime::Runtime,
    broker: Broker,
    clock: Arc<ManualClock>,
    admin: AdminClient,
    admin_key: SigningKey,
    config: KbsConfig,
    _dir: tempfile::TempDir,
}

impl Harness {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("admin.key");
        generate_admin_key(&key_file).unwrap();
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
        // Admin tokens are signed with the real time, so the manual clock starts there.
        let clock = Arc::new(ManualClock::new(SystemClock.now()));
        let broker = runtime
            .block_on(Broker::start_with_clock(&config, clock.clone()))
            .unwrap();
        let admin = AdminClient::from_key_file(&broker.url(), &key_file).unwrap();
        let admin_key = load_signing_key(&key_file).unwrap();
        Self {
            runtime,
            broker,
            clock,
            admin,
            admin_key,
            config,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        self.broker.url()
    }

    fn provision(&self, resource: &str, policy: Option<&str>) {
        self.admin.put_resource(resource, SECRET).unwrap();
        if let Some(policy) = policy {
            self.admin.set_policy(resource, policy).unwrap();
        }
    }

    fn sample_config(&self, measurement: &str) -> KbsClientConfig {
        KbsClientConfig {
            url: self.url(),
            attester: sample(measurement),
            timeout: TIMEOUT,
            resolver: None,
            root_certs: None,
        }
    }

    fn connection(&self) -> Connection {
        Connection::new(&self.url(), TIMEOUT)
    }

    fn restart(self) -> Self {
        self.broker.stop();
        let broker = self
            .runtime
            .block_on(Broker::start_with_clock(&self.config, self.clock.clone()))
            .unwrap();
        Self { broker, ..self }
    }
}

fn sample(measurement: &str) -> Attester {
    Attester::Sample(SampleClaims {
        measurement: measurement.to_owned(),
        host_data: String::new(),
    })
}

/// The broker's problem slug for a refusal.
fn refusal(err: ClientError) -> String {
    match err {
        ClientError::Refused { problem, .. } => problem.kind().to_owned(),
        other => panic!("expected a refusal from the broker, got: {other}"),
    }
}

fn admin_refusal(err: AdminCallError) -> String {
    match err {
        AdminCallError::Refused { problem } => problem.kind().to_owned(),
        other => panic!("expected a refusal from the broker, got: {other}"),
    }
}

struct PolicyCase {
    name: &'static str,
    policy: Option<&'static str>,
    measurement: &'static str,
    expect: Result<(), &'static str>,
}

#[test]
fn policy_cases() {
    let cases = [
        PolicyCase {
            name: "sample allowed by an explicit policy",
            policy: Some("claims.tee == 'sample'"),
            measurement: "m1",
            expect: Ok(()),
        },
        PolicyCase {
            name: "right measurement",
            policy: Some("claims.tee == 'sample' && claims.measurement in ['m1', 'm2']"),
            measurement: "m2",
            expect: Ok(()),
        },
        PolicyCase {
            name: "policy refuses sample (does not name it)",
            policy: Some("claims.tee == 'snp' && claims.measurement == 'm1'"),
            measurement: "m1",
            expect: Err("sample-not-allowed"),
        },
        PolicyCase {
            name: "policy names sample only in a string (no claim test): refused",
            policy: Some("claims.measurement == 'sample'"),
            measurement: "sample",
            expect: Err("sample-not-allowed"),
        },
        PolicyCase {
            name: "policy would grant these claims to any TEE: refused",
            policy: Some("claims.measurement == 'm1'"),
            measurement: "m1",
            expect: Err("sample-not-allowed"),
        },
        PolicyCase {
            name: "policy asks for the insecure claim",
            policy: Some("claims.insecure && claims.measurement == 'm1'"),
            measurement: "m1",
            expect: Ok(()),
        },
        PolicyCase {
            name: "wrong measurement",
            policy: Some("claims.tee == 'sample' && claims.measurement == 'm1'"),
            measurement: "evil",
            expect: Err("policy-denied"),
        },
        PolicyCase {
            name: "no policy: released to nobody",
            policy: None,
            measurement: "m1",
            expect: Err("no-policy"),
        },
    ];
    let h = Harness::start();
    for (i, case) in cases.iter().enumerate() {
        let resource = format!("models/key/case{i}");
        h.provision(&resource, case.policy);
        let outcome = fetch_resource(&h.sample_config(case.measurement), &resource);
        match (&case.expect, outcome) {
            (Ok(()), Ok(secret)) => assert_eq!(secret.as_slice(), SECRET, "{}", case.name),
            (Err(slug), Err(err)) => assert_eq!(refusal(err), *slug, "{}", case.name),
            (expect, got) => panic!(
                "case `{}`: expected {expect:?}, got {:?}",
                case.name,
                got.map(|s| s.len())
            ),
        }
    }
}

#[test]
fn full_sample_flow_releases_the_resource() {
    let h = Harness::start();
    h.provision(RESOURCE, Some("claims.tee == 'sample' && claims.insecure"));
    let secret = fetch_resource(&h.sample_config("dev"), RESOURCE).unwrap();
    assert_eq!(secret.as_slice(), SECRET);
}

/// Resolves every name to the loopback address, and counts the lookups.
#[derive(Debug, Default)]
struct LoopbackResolver {
    lookups: std::sync::atomic::AtomicUsize,
}

impl ureq::unversioned::resolver::Resolver for LoopbackResolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        _config: &ureq::config::Config,
        _timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<ureq::unversioned::resolver::ResolvedSocketAddrs, ureq::Error> {
        self.lookups
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let port = uri.port_u16().ok_or(ureq::Error::HostNotFound)?;
        let mut addresses = self.empty();
        addresses.push(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
        Ok(addresses)
    }
}

#[test]
fn the_broker_is_reached_by_name_through_the_configured_resolver() {
    let h = Harness::start();
    h.provision(RESOURCE, Some("claims.tee == 'sample' && claims.insecure"));
    let port = h.url().rsplit(':').next().unwrap().to_string();
    let resolver = Arc::new(LoopbackResolver::default());
    let config = KbsClientConfig {
        url: format!("http://broker.veil.invalid:{port}"),
        resolver: Some(resolver.clone()),
        ..h.sample_config("dev")
    };
    let secret = fetch_resource(&config, RESOURCE).unwrap();
    assert_eq!(secret.as_slice(), SECRET);
    assert!(resolver.lookups.load(std::sync::atomic::Ordering::SeqCst) >= 1);
}

#[test]
fn wrong_measurement_names_the_failed_condition() {
    let h = Harness::start();
    h.provision(
        RESOURCE,
        Some("claims.tee == 'sample' && claims.measurement == 'good'"),
    );
    let err = fetch_resource(&h.sample_config("bad"), RESOURCE).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("claims.measurement == 'good'"),
        "{message}"
    );
}

#[test]
fn unknown_resource_is_not_found() {
    let h = Harness::start();
    let err = fetch_resource(&h.sample_config("dev"), "models/key/absent").unwrap_err();
    assert_eq!(refusal(err), "resource-not-found");
}

#[test]
fn nonce_is_good_once() {
    let h = Harness::start();
    let mut conn = h.connection();
    let challenge = conn.auth(Tee::Sample).unwrap();
    let key = EphemeralKey::generate();
    let attestation = build_attestation(&sample("dev"), &challenge.nonce, &key).unwrap();
    conn.attest(&attestation).unwrap();
    let err = conn.attest(&attestation).unwrap_err();
    assert_eq!(refusal(err), "nonce-reused");
}

#[test]
fn nonce_from_another_session_is_refused() {
    let h = Harness::start();
    let mut first = h.connection();
    let mut second = h.connection();
    let first_challenge = first.auth(Tee::Sample).unwrap();
    second.auth(Tee::Sample).unwrap();
    let key = EphemeralKey::generate();
    let attestation = build_attestation(&sample("dev"), &first_challenge.nonce, &key).unwrap();
    let err = second.attest(&attestation).unwrap_err();
    assert_eq!(refusal(err), "nonce-mismatch");
}

#[test]
fn report_data_not_matching_the_key_is_refused() {
    let h = Harness::start();
    let mut conn = h.connection();
    let challenge = conn.auth(Tee::Sample).unwrap();
    let key = EphemeralKey::generate();
    let mut attestation = build_attestation(&sample("dev"), &challenge.nonce, &key).unwrap();
    // An attacker swaps in its own key, keeping the guest's evidence.
    attestation.runtime_data.tee_pubkey = EphemeralKey::generate().public_jwk();
    let err = conn.attest(&attestation).unwrap_err();
    assert_eq!(refusal(err), "report-data-mismatch");
}

#[test]
fn expired_session_is_refused() {
    let h = Harness::start();
    let mut conn = h.connection();
    let challenge = conn.auth(Tee::Sample).unwrap();
    h.clock.advance(h.config.session_ttl_secs + 1);
    let key = EphemeralKey::generate();
    let attestation = build_attestation(&sample("dev"), &challenge.nonce, &key).unwrap();
    let err = conn.attest(&attestation).unwrap_err();
    assert_eq!(refusal(err), "session-expired");
}

#[test]
fn attest_without_session_and_resource_before_attest_are_refused() {
    let h = Harness::start();
    h.provision(RESOURCE, Some("claims.tee == 'sample'"));
    let mut conn = h.connection();
    let key = EphemeralKey::generate();
    let attestation = build_attestation(&sample("dev"), "bm9uY2U=", &key).unwrap();
    assert_eq!(
        refusal(conn.attest(&attestation).unwrap_err()),
        "session-missing"
    );
    conn.auth(Tee::Sample).unwrap();
    let path = ResourcePath::parse(RESOURCE).unwrap();
    assert_eq!(refusal(conn.resource(&path).unwrap_err()), "not-attested");
}

#[test]
fn tampered_jwe_is_refused_by_the_client() {
    let h = Harness::start();
    h.provision(RESOURCE, Some("claims.tee == 'sample'"));
    let mut conn = h.connection();
    let challenge = conn.auth(Tee::Sample).unwrap();
    let key = EphemeralKey::generate();
    conn.attest(&build_attestation(&sample("dev"), &challenge.nonce, &key).unwrap())
        .unwrap();
    let mut response = conn
        .resource(&ResourcePath::parse(RESOURCE).unwrap())
        .unwrap();
    assert_eq!(key.decrypt(&response).unwrap().as_slice(), SECRET);
    let first = response.ciphertext.remove(0);
    response
        .ciphertext
        .insert(0, if first == 'A' { 'B' } else { 'A' });
    assert!(matches!(
        key.decrypt(&response),
        Err(JweDecryptError::Authentication)
    ));
}

#[test]
fn admin_calls_without_or_with_a_wrong_key_are_refused() {
    let h = Harness::start();
    let stranger = AdminClient::new(&h.url(), SigningKey::from_bytes(&[7u8; 32]));
    assert_eq!(
        admin_refusal(stranger.put_resource(RESOURCE, b"x").unwrap_err()),
        "admin-token-invalid"
    );
    assert_eq!(
        admin_refusal(stranger.set_policy(RESOURCE, "true").unwrap_err()),
        "admin-token-invalid"
    );
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build(),
    );
    for url in [
        format!("{}/kbs/v0/resource/{RESOURCE}", h.url()),
        format!("{}/kbs/v0/resource-policy/{RESOURCE}", h.url()),
    ] {
        let mut response = agent
            .post(&url)
            .send(&b"{\"policy\":\"true\"}"[..])
            .unwrap();
        assert_eq!(response.status().as_u16(), 401);
        let body = response.body_mut().read_to_string().unwrap();
        assert!(body.contains("admin-token-missing"), "{body}");
    }
}

#[test]
fn policy_with_a_syntax_error_is_refused_when_set() {
    let h = Harness::start();
    let err = h.admin.set_policy(RESOURCE, "claims.tee == ").unwrap_err();
    assert_eq!(admin_refusal(err), "policy-syntax");
}

#[test]
fn attestation_token_works_as_bearer() {
    let h = Harness::start();
    h.provision(RESOURCE, Some("claims.tee == 'sample'"));
    let mut conn = h.connection();
    let challenge = conn.auth(Tee::Sample).unwrap();
    let key = EphemeralKey::generate();
    let token = conn
        .attest(&build_attestation(&sample("dev"), &challenge.nonce, &key).unwrap())
        .unwrap()
        .token;
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build(),
    );
    let mut response = agent
        .get(format!("{}/kbs/v0/resource/{RESOURCE}", h.url()))
        .header("Authorization", format!("Bearer {token}"))
        .call()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let jwe: veil_kbs_client::wire::Response =
        serde_json::from_slice(&response.body_mut().read_to_vec().unwrap()).unwrap();
    assert_eq!(key.decrypt(&jwe).unwrap().as_slice(), SECRET);
}

#[test]
fn state_survives_a_restart() {
    let h = Harness::start();
    h.provision(RESOURCE, Some("claims.tee == 'sample'"));
    let h = h.restart();
    let secret = fetch_resource(&h.sample_config("dev"), RESOURCE).unwrap();
    assert_eq!(secret.as_slice(), SECRET);
}

#[test]
fn snp_session_with_recorded_report_fails_only_on_the_nonce_binding() {
    // The recorded report is genuine (chain and signature verify) but was not made for this
    // session's nonce and key, so the broker must refuse it for exactly that reason.
    let h = Harness::start();
    let mut conn = h.connection();
    let challenge = conn.auth(Tee::Snp).unwrap();
    let key = EphemeralKey::generate();
    let report = hex::decode(include_str!("data/snp/report_milan.hex").trim()).unwrap();
    let evidence = veil_kbs_client::evidence::snp_evidence_from_parts(
        &report,
        Some(include_bytes!("data/snp/vcek_milan.der")),
    )
    .unwrap();
    let mut attestation = build_attestation(&sample("unused"), &challenge.nonce, &key).unwrap();
    attestation.tee_evidence.primary_evidence = serde_json::to_value(evidence).unwrap();
    let err = conn.attest(&attestation).unwrap_err();
    assert_eq!(refusal(err), "report-data-mismatch");
}

/// POSTs a policy with a given admin token; returns (status, body).
fn post_policy_with(h: &Harness, token: &str) -> (u16, String) {
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build(),
    );
    let mut response = agent
        .post(format!("{}/kbs/v0/resource-policy/{RESOURCE}", h.url()))
        .header("Authorization", format!("Bearer {token}"))
        .send(&br#"{"policy":"claims.tee == 'sample'"}"#[..])
        .unwrap();
    let status = response.status().as_u16();
    (status, response.body_mut().read_to_string().unwrap())
}

#[test]
fn a_replayed_admin_token_is_refused_even_after_a_restart() {
    let h = Harness::start();
    let token = admin_token(&h.admin_key, SystemClock.now());
    assert_eq!(post_policy_with(&h, &token).0, 204);
    let (status, body) = post_policy_with(&h, &token);
    assert_eq!(status, 401);
    assert!(body.contains("admin-token-replayed"), "{body}");
    let h = h.restart();
    let (status, body) = post_policy_with(&h, &token);
    assert_eq!(status, 401);
    assert!(body.contains("admin-token-replayed"), "{body}");
    // The CLI's client signs a fresh token per call, so it keeps working.
    AdminClient::new(&h.url(), h.admin_key.clone())
        .set_policy(RESOURCE, "claims.tee == 'sample'")
        .unwrap();
}
