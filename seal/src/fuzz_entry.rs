//! Entry points for fuzzers: each takes arbitrary bytes and must never panic, whatever they
//! are. The cargo-fuzz targets in `seal/fuzz/` and the stable property tests in
//! `tests/fuzz_stable.rs` both call these, so the two runners exercise the same code.
//!
//! Besides "no panic", the entries check properties that must hold for every input: a keyset
//! that parses writes back to a keyset that parses to the same thing, and the parallel pipeline
//! agrees with the sequential reference on every ciphertext, valid or not.

use std::num::NonZeroUsize;

use crate::params::KeyTemplate;
use crate::{decrypt_sequential, decrypt_to_writer, inspect, DecryptError, DecryptOptions, Keyset};

/// The keyset every decrypting fuzz input is opened with (test keys, never used elsewhere):
/// AES128-GCM-HKDF with 64-byte segments (primary), AES256-CTR-HMAC-SHA256 with 128-byte
/// segments, AES256-GCM-HKDF-SHA512 with 256-byte segments, and one disabled key. The small
/// segments let short inputs span many segments; two keys share the 40-byte header length so
/// key selection tries more than one.
pub const FUZZ_KEYSET_JSON: &str = include_str!("../fuzz/keyset.json");

/// Associated data the fuzz ciphertexts are sealed with.
pub const FUZZ_ASSOCIATED_DATA: &[u8] = b"veil-seal fuzz";

/// The parsed [`FUZZ_KEYSET_JSON`]. It is a constant of this crate, so a parse failure is a bug
/// here, not an input problem: it panics.
pub fn fuzz_keyset() -> Keyset {
    match Keyset::from_json(FUZZ_KEYSET_JSON.as_bytes()) {
        Ok(keyset) => keyset,
        Err(error) => panic!("seal/fuzz/keyset.json does not parse: {error}"),
    }
}

/// A ciphertext's header and size, read without a key, and the layout under every template.
pub fn header(data: &[u8]) {
    if let Ok(info) = inspect(data) {
        for template in KeyTemplate::ALL {
            let _ = info.layout(&template.params());
        }
    }
}

/// A keyset in Tink's JSON form; one that parses must survive both writers unchanged.
pub fn keyset_json(data: &[u8]) {
    if let Ok(keyset) = Keyset::from_json(data) {
        assert_round_trips(&keyset);
    }
}

/// A keyset in Tink's binary (protobuf) form; one that parses must survive both writers
/// unchanged.
pub fn keyset_binary(data: &[u8]) {
    if let Ok(keyset) = Keyset::from_binary(data) {
        assert_round_trips(&keyset);
    }
}

fn assert_round_trips(keyset: &Keyset) {
    let binary = keyset.to_binary();
    let from_binary = Keyset::from_binary(&binary);
    assert!(
        from_binary
            .as_ref()
            .is_ok_and(|k| *k.to_binary() == *binary),
        "a parsed keyset does not survive to_binary / from_binary: {from_binary:?}"
    );
    let json = keyset.to_json();
    let from_json = Keyset::from_json(json.as_bytes());
    assert!(
        from_json.as_ref().is_ok_and(|k| *k.to_binary() == *binary),
        "a parsed keyset does not survive to_json / from_json: {from_json:?}"
    );
}

/// Arbitrary bytes decrypted with [`fuzz_keyset`], sequentially and on two workers: both must
/// give the same plaintext, or fail on the same segment for the same reason.
pub fn decrypt(data: &[u8]) {
    decrypt_with(&fuzz_keyset(), data);
}

/// [`decrypt`] with a keyset the caller parsed once (fuzzers call this in a loop).
pub fn decrypt_with(keyset: &Keyset, data: &[u8]) {
    let mut sequential_out = Vec::new();
    let sequential = decrypt_sequential(data, keyset, FUZZ_ASSOCIATED_DATA, &mut sequential_out);
    let mut parallel_out = Vec::new();
    let options = DecryptOptions {
        threads: NonZeroUsize::new(2),
        ..DecryptOptions::default()
    };
    let parallel = decrypt_to_writer(
        data,
        keyset,
        FUZZ_ASSOCIATED_DATA,
        &mut parallel_out,
        &options,
    );
    match (&sequential, &parallel) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a, b, "sequential and parallel reports differ");
            assert!(
                sequential_out == parallel_out,
                "sequential and parallel plaintexts differ"
            );
        }
        (Err(a), Err(b)) => assert_eq!(
            failure_of(a),
            failure_of(b),
            "sequential and parallel decryption fail differently: {a} / {b}"
        ),
        _ => panic!("sequential {sequential:?} but parallel {parallel:?}"),
    }
}

/// What identifies a failure independently of which decryptor met it.
fn failure_of(error: &DecryptError) -> String {
    match error {
        DecryptError::Segment {
            index,
            offset,
            failure,
        } => format!("segment {index} at {offset}: {failure:?}"),
        other => other.to_string(),
    }
}
