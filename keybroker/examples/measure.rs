//! Rough timings (not a test): full sample flow on loopback and SEV-SNP report verification.
//! Run: `cargo run --release -p veil-keybroker --example measure`.

use std::time::{Duration, Instant};

use veil_kbs_client::evidence::snp_evidence_from_parts;
use veil_kbs_client::{fetch_resource, Attester, KbsClientConfig, SampleClaims};
use veil_keybroker::admin::generate_admin_key;
use veil_keybroker::admin_client::AdminClient;
use veil_keybroker::attestation::snp::SnpVerifier;
use veil_keybroker::config::KbsConfig;
use veil_keybroker::Broker;

const ROUNDS: usize = 50;

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let key = dir.path().join("admin.key");
    generate_admin_key(&key)?;
    let config = KbsConfig::new(
        "127.0.0.1:0".parse()?,
        dir.path().join("state"),
        vec![dir.path().join("admin.key.pub")],
    );
    let runtime = tokio::runtime::Runtime::new()?;
    let broker = runtime.block_on(Broker::start(&config))?;
    let admin = AdminClient::from_key_file(&broker.url(), &key)?;
    admin.put_resource("m/key/a", &[7u8; 32])?;
    admin.set_policy("m/key/a", "claims.tee == 'sample'")?;
    let client = KbsClientConfig::new(broker.url(), Attester::Sample(SampleClaims::default()));
    let mut flow = Vec::new();
    for _ in 0..ROUNDS {
        let start = Instant::now();
        fetch_resource(&client, "m/key/a")?;
        flow.push(start.elapsed());
    }
    println!(
        "sample flow (auth+attest+resource+decrypt, loopback): median {:?} over {ROUNDS}",
        median(flow)
    );

    let report = hex::decode(include_str!("../tests/data/snp/report_milan.hex").trim())?;
    let evidence = snp_evidence_from_parts(
        &report,
        Some(include_bytes!("../tests/data/snp/vcek_milan.der")),
    )?;
    let verifier = SnpVerifier::default();
    let mut snp = Vec::new();
    for _ in 0..ROUNDS {
        let start = Instant::now();
        verifier.verify_report(&evidence)?;
        snp.push(start.elapsed());
    }
    println!(
        "SNP report verification (parse + VCEK->ASK->ARK + signature): median {:?} over {ROUNDS}",
        median(snp)
    );
    broker.stop();
    Ok(())
}
