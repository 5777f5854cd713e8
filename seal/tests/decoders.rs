//! Decoders never panic on hostile input: arbitrary keysets and arbitrary ciphertexts give
//! typed errors (fuzz-style property tests; a cargo-fuzz target can reuse the same calls).

mod common;

use proptest::prelude::*;
use veil_seal::{decrypt_sequential, encrypt, inspect, KeyTemplate, Keyset};

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_the_keyset_parser(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Keyset::parse(&bytes);
        let _ = Keyset::from_binary(&bytes);
        let _ = Keyset::from_json(&bytes);
    }

    #[test]
    fn arbitrary_json_shapes_never_panic_the_keyset_parser(
        primary in any::<u32>(),
        status in "[A-Z_]{0,12}",
        prefix in "[A-Z_]{0,8}",
        value in "[A-Za-z0-9+/=]{0,80}",
        type_url in prop_oneof![
            Just("type.googleapis.com/google.crypto.tink.AesGcmHkdfStreamingKey".to_string()),
            Just("type.googleapis.com/google.crypto.tink.AesCtrHmacStreamingKey".to_string()),
            "[a-z./]{0,30}",
        ],
    ) {
        let json = format!(
            r#"{{"primaryKeyId":{primary},"key":[{{"keyData":{{"typeUrl":"{type_url}","value":"{value}","keyMaterialType":"SYMMETRIC"}},"status":"{status}","keyId":{primary},"outputPrefixType":"{prefix}"}}]}}"#
        );
        let _ = Keyset::from_json(json.as_bytes());
    }

    #[test]
    fn mutated_ciphertexts_fail_cleanly(
        len in 0usize..20_000,
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let keyset = Keyset::generate(KeyTemplate::Aes128CtrHmacSha2564Kb).unwrap();
        let mut ct = Vec::new();
        encrypt(&common::pseudo_random(len, len as u64)[..], &keyset, b"", &mut ct).unwrap();
        let original = ct.clone();
        for (at, value) in &edits {
            let i = at.index(ct.len());
            ct[i] ^= value | 1;
        }
        if truncate {
            ct.truncate(cut.index(ct.len()));
        }
        prop_assume!(ct != original);
        let mut out = Vec::new();
        prop_assert!(decrypt_sequential(&ct[..], &keyset, b"", &mut out).is_err());
        let _ = inspect(&ct[..]);
    }
}
