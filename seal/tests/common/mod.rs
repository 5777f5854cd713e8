//! Helpers shared by veil-seal's integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use veil_seal::{KeyTemplate, Keyset};

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tink_interop.py")
}

/// Runs the Tink driver script; fails the test with install instructions when Tink is missing.
pub fn tink(args: &[&str]) -> String {
    let output = Command::new("python3")
        .arg(script())
        .args(args)
        .output()
        .expect(
            "python3 must be installed to run the Tink interop tests (apt-get install python3)",
        );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("pip install tink"),
        "Google's Tink for Python is required by these tests: run `pip install tink`\n{stderr}"
    );
    assert!(
        output.status.success(),
        "tink_interop.py {args:?} failed: {stderr}"
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Makes a keyset with Tink itself: one key per spec (see tink_interop.py), key `primary` primary.
pub fn tink_keyset(dir: &Path, name: &str, specs: &[&str], primary: usize) -> (PathBuf, Keyset) {
    let path = dir.join(name);
    let primary = primary.to_string();
    let mut args = vec!["keygen", path.to_str().unwrap()];
    args.extend_from_slice(specs);
    args.extend_from_slice(&["--primary", &primary]);
    tink(&args);
    let keyset = Keyset::from_json(&std::fs::read(&path).unwrap()).unwrap();
    (path, keyset)
}

/// One operation for `tink_interop.py batch`.
pub struct TinkOp {
    pub encrypt: bool,
    pub keyset: PathBuf,
    pub aad: Vec<u8>,
    pub input: PathBuf,
    pub output: PathBuf,
}

/// Runs many Tink operations in one Python process; returns (ok, error) per operation.
pub fn tink_batch(dir: &Path, ops: &[TinkOp]) -> Vec<(bool, String)> {
    let list: Vec<_> = ops
        .iter()
        .map(|op| {
            serde_json::json!({
                "op": if op.encrypt { "encrypt" } else { "decrypt" },
                "keyset": op.keyset,
                "aad_hex": hex::encode(&op.aad),
                "in": op.input,
                "out": op.output,
            })
        })
        .collect();
    let ops_path = dir.join("ops.json");
    std::fs::write(&ops_path, serde_json::to_vec(&list).unwrap()).unwrap();
    let out = tink(&["batch", ops_path.to_str().unwrap()]);
    let results: Vec<serde_json::Value> = serde_json::from_str(out.trim()).unwrap();
    results
        .iter()
        .map(|r| {
            (
                r["ok"].as_bool().unwrap(),
                r["error"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// A keyset of one key with 64 KiB segments: the smallest size whose segments the workers
/// write to the output file themselves.
pub fn positional_keyset(gcm: bool) -> Keyset {
    use veil_seal::params::{CtrHmacParams, GcmHkdfParams};
    use veil_seal::{HashType, StreamingKey, StreamingParams};
    let segment_size = 64 << 10;
    let params = if gcm {
        StreamingParams::AesGcmHkdf(GcmHkdfParams {
            segment_size,
            derived_key_size: 16,
            hkdf_hash: HashType::Sha256,
        })
    } else {
        StreamingParams::AesCtrHmac(CtrHmacParams {
            segment_size,
            derived_key_size: 32,
            hkdf_hash: HashType::Sha256,
            hmac_hash: HashType::Sha256,
            tag_size: 32,
        })
    };
    let key = StreamingKey::new(7, params, pseudo_random(32, 7).into()).unwrap();
    let mut keyset = Keyset::generate(KeyTemplate::Aes128GcmHkdf4Kb).unwrap();
    let generated = keyset.primary_key_id();
    keyset.add_key(key).unwrap();
    keyset.set_primary(7).unwrap();
    keyset
        .set_status(generated, veil_seal::KeyStatus::Disabled)
        .unwrap();
    keyset
}
