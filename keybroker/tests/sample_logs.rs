//! Every log line about the `sample` attester says it is insecure, and so does its token.
//! Own test binary: it installs a global log subscriber that captures every thread's lines.

use std::io::Write;
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use veil_kbs_client::client::build_attestation;
use veil_kbs_client::jwe::EphemeralKey;
use veil_kbs_client::{fetch_resource, Attester, Connection, KbsClientConfig, SampleClaims, Tee};
use veil_keybroker::admin::generate_admin_key;
use veil_keybroker::admin_client::AdminClient;
use veil_keybroker::config::KbsConfig;
use veil_keybroker::Broker;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn sample_log_lines_and_tokens_say_insecure() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_ansi(false)
        .with_env_filter("veil_keybroker=trace,veil_kbs_client=trace")
        .with_writer(move || writer.clone())
        .init();

    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("admin.key");
    generate_admin_key(&key).unwrap();
    let config = KbsConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        dir.path().join("state"),
        vec![dir.path().join("admin.key.pub")],
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let broker = runtime.block_on(Broker::start(&config)).unwrap();
    let admin = AdminClient::from_key_file(&broker.url(), &key).unwrap();
    admin.put_resource("m/key/ok", b"secret").unwrap();
    admin
        .set_policy("m/key/ok", "claims.tee == 'sample'")
        .unwrap();
    admin.put_resource("m/key/snp", b"secret").unwrap();
    admin
        .set_policy("m/key/snp", "claims.tee == 'snp'")
        .unwrap();
    // From here on every line is about a sample guest (the admin lines quote policy text).
    captured.0.lock().unwrap().clear();
    let sample = Attester::Sample(SampleClaims::default());
    let client = KbsClientConfig::new(broker.url(), sample.clone());
    fetch_resource(&client, "m/key/ok").unwrap();
    fetch_resource(&client, "m/key/snp").unwrap_err();

    // The token itself.
    let mut conn = Connection::new(&broker.url(), std::time::Duration::from_secs(20));
    let challenge = conn.auth(Tee::Sample).unwrap();
    let attestation =
        build_attestation(&sample, &challenge.nonce, &EphemeralKey::generate()).unwrap();
    let token = conn.attest(&attestation).unwrap().token;
    let payload = token.split('.').nth(1).unwrap();
    let body: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    assert_eq!(body["insecure"], true);
    assert!(body["warning"].as_str().unwrap().contains("INSECURE"));
    broker.stop();

    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let about_sample: Vec<&str> = text.lines().filter(|l| l.contains("sample")).collect();
    assert!(about_sample.len() >= 4, "too few sample lines:\n{text}");
    for line in about_sample {
        assert!(
            line.contains("insecure=true") || line.contains("INSECURE"),
            "a line about sample does not say insecure: {line}\n---\n{text}"
        );
    }
}
