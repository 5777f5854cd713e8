//! Interoperability with Google's Tink, both directions (needs `pip install tink`).

mod common;

use std::num::NonZeroUsize;

use common::{pseudo_random, tink_batch, tink_keyset, TinkOp};
use veil_seal::{decrypt_to_file, encrypt, DecryptOptions, KeyTemplate, Keyset};

/// Key shapes covering both key types, key sizes 16 and 32, HKDF SHA256/SHA512 (and SHA1),
/// HMAC SHA1/SHA256/SHA512, segment sizes 4 KiB and 1 MiB.
const SPECS: &[&str] = &[
    "gcm:16:SHA256:16:4096",
    "gcm:32:SHA512:32:4096",
    "gcm:16:SHA512:16:1048576",
    "gcm:32:SHA256:32:1048576",
    "ctr:16:SHA256:16:SHA256:32:4096",
    "ctr:32:SHA512:32:SHA256:16:4096",
    "ctr:16:SHA512:16:SHA512:64:1048576",
    "ctr:32:SHA1:32:SHA1:20:1048576",
];

fn options(threads: usize) -> DecryptOptions {
    DecryptOptions {
        threads: NonZeroUsize::new(threads),
        ..DecryptOptions::default()
    }
}

fn veil_encrypt(keyset: &Keyset, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encrypt(plaintext, keyset, aad, &mut out).unwrap();
    out
}

fn veil_decrypt_file(
    keyset: &Keyset,
    aad: &[u8],
    ciphertext: &std::path::Path,
    dir: &std::path::Path,
) -> Vec<u8> {
    let dest = dir.join("veil-plain");
    let report = decrypt_to_file(
        std::fs::File::open(ciphertext).unwrap(),
        keyset,
        aad,
        &dest,
        &options(2),
    )
    .unwrap_or_else(|e| panic!("veil failed to open {}: {e}", ciphertext.display()));
    let plaintext = std::fs::read(&dest).unwrap();
    assert_eq!(report.plaintext_bytes, plaintext.len() as u64);
    std::fs::remove_file(&dest).unwrap();
    plaintext
}

/// For every key shape: messages of 0, 1, exactly one segment and one byte over, with and
/// without associated data; Tink encrypts and veil decrypts, and the reverse.
#[test]
fn both_key_types_all_sizes_both_directions() {
    let dir = tempfile::tempdir().unwrap();
    let mut ops = Vec::new();
    let mut cases = Vec::new();
    for (k, spec) in SPECS.iter().enumerate() {
        let (keyset_path, keyset) = tink_keyset(dir.path(), &format!("ks{k}.json"), &[spec], 0);
        let one_segment = keyset.primary().unwrap().params().first_plaintext_len();
        for (s, len) in [0, 1, one_segment, one_segment + 1].into_iter().enumerate() {
            for aad in [&b""[..], b"model-v1"] {
                let id = format!("{k}-{s}-{}", aad.len());
                let plaintext = pseudo_random(len, (k * 100 + s) as u64);
                let plain_path = dir.path().join(format!("plain-{id}"));
                std::fs::write(&plain_path, &plaintext).unwrap();
                let veil_ct = dir.path().join(format!("veil-ct-{id}"));
                std::fs::write(&veil_ct, veil_encrypt(&keyset, aad, &plaintext)).unwrap();
                let tink_ct = dir.path().join(format!("tink-ct-{id}"));
                let tink_plain = dir.path().join(format!("tink-plain-{id}"));
                ops.push(TinkOp {
                    encrypt: true,
                    keyset: keyset_path.clone(),
                    aad: aad.to_vec(),
                    input: plain_path,
                    output: tink_ct.clone(),
                });
                ops.push(TinkOp {
                    encrypt: false,
                    keyset: keyset_path.clone(),
                    aad: aad.to_vec(),
                    input: veil_ct,
                    output: tink_plain.clone(),
                });
                cases.push((
                    spec,
                    len,
                    aad,
                    keyset.clone(),
                    plaintext,
                    tink_ct,
                    tink_plain,
                ));
            }
        }
    }
    let results = tink_batch(dir.path(), &ops);
    for (i, (ok, error)) in results.iter().enumerate() {
        let (spec, len, aad, ..) = &cases[i / 2];
        assert!(
            ok,
            "Tink {} failed for {spec}, {len} bytes, aad {aad:?}: {error}",
            if i % 2 == 0 { "encrypt" } else { "decrypt" }
        );
    }
    for (spec, len, aad, keyset, plaintext, tink_ct, tink_plain) in &cases {
        let ct_len = std::fs::metadata(tink_ct).unwrap().len();
        let expected_len = keyset
            .primary()
            .unwrap()
            .params()
            .ciphertext_len(*len as u64)
            .unwrap();
        assert_eq!(
            ct_len, expected_len,
            "Tink ciphertext length for {spec}, {len} bytes"
        );
        assert_eq!(
            &veil_decrypt_file(keyset, aad, tink_ct, dir.path()),
            plaintext,
            "veil opening Tink's {spec}, {len} bytes"
        );
        assert_eq!(
            &std::fs::read(tink_plain).unwrap(),
            plaintext,
            "Tink opening veil's {spec}, {len} bytes"
        );
    }
}

/// Keysets with several keys where the primary is not the first, made by Tink and by veil.
#[test]
fn multi_key_keysets_with_primary_not_first() {
    let dir = tempfile::tempdir().unwrap();
    let specs = [
        "gcm:32:SHA256:32:4096",
        "ctr:16:SHA256:16:SHA256:32:4096",
        "gcm:16:SHA256:16:1048576",
    ];
    let (tink_path, tink_keyset) = tink_keyset(dir.path(), "tink-multi.json", &specs, 2);
    assert_eq!(tink_keyset.enabled_keys().count(), 3);
    // Tink's binary form of the same keyset reads to the same keys.
    let binary = std::fs::read(dir.path().join("tink-multi.json.bin")).unwrap();
    let from_binary = Keyset::from_binary(&binary).unwrap();
    assert_eq!(from_binary.to_json(), tink_keyset.to_json());
    assert_eq!(from_binary.to_binary().as_slice(), binary.as_slice());

    let mut veil_keyset = Keyset::generate(KeyTemplate::Aes256GcmHkdf4Kb).unwrap();
    veil_keyset
        .add_generated(KeyTemplate::Aes128CtrHmacSha2564Kb)
        .unwrap();
    let last = veil_keyset
        .add_generated(KeyTemplate::Aes128GcmHkdf1Mb)
        .unwrap();
    veil_keyset.set_primary(last).unwrap();
    let veil_path = dir.path().join("veil-multi.json");
    std::fs::write(&veil_path, veil_keyset.to_json().as_bytes()).unwrap();

    let plaintext = pseudo_random(3 * 4096 + 17, 7);
    let plain_path = dir.path().join("plain");
    std::fs::write(&plain_path, &plaintext).unwrap();
    let mut ops = Vec::new();
    for (name, path, keyset) in [
        ("tink", &tink_path, &tink_keyset),
        ("veil", &veil_path, &veil_keyset),
    ] {
        let veil_ct = dir.path().join(format!("{name}-keyset-veil-ct"));
        std::fs::write(&veil_ct, veil_encrypt(keyset, b"aad", &plaintext)).unwrap();
        ops.push(TinkOp {
            encrypt: true,
            keyset: path.clone(),
            aad: b"aad".to_vec(),
            input: plain_path.clone(),
            output: dir.path().join(format!("{name}-keyset-tink-ct")),
        });
        ops.push(TinkOp {
            encrypt: false,
            keyset: path.clone(),
            aad: b"aad".to_vec(),
            input: veil_ct,
            output: dir.path().join(format!("{name}-keyset-tink-plain")),
        });
    }
    for (ok, error) in tink_batch(dir.path(), &ops) {
        assert!(ok, "Tink failed: {error}");
    }
    for (name, keyset) in [("tink", &tink_keyset), ("veil", &veil_keyset)] {
        let opened = veil_decrypt_file(
            keyset,
            b"aad",
            &dir.path().join(format!("{name}-keyset-tink-ct")),
            dir.path(),
        );
        assert_eq!(
            opened, plaintext,
            "veil opening Tink's ciphertext under the {name} keyset"
        );
        assert_eq!(
            std::fs::read(dir.path().join(format!("{name}-keyset-tink-plain"))).unwrap(),
            plaintext
        );
    }

    // A ciphertext of a non-primary key still opens: decryption tries every enabled key.
    let mut first_only = tink_keyset.clone();
    let first_id = tink_keyset.enabled_keys().nth(1).unwrap().id();
    first_only.set_primary(first_id).unwrap();
    let ct = dir.path().join("non-primary-ct");
    std::fs::write(&ct, veil_encrypt(&first_only, b"aad", &plaintext)).unwrap();
    assert_eq!(
        veil_decrypt_file(&tink_keyset, b"aad", &ct, dir.path()),
        plaintext
    );
}

/// 64 MiB messages, both directions, for each key type with 1 MiB segments.
#[test]
fn large_64_mib_both_directions() {
    let dir = tempfile::tempdir().unwrap();
    let plaintext = pseudo_random(64 << 20, 64);
    let plain_path = dir.path().join("plain");
    std::fs::write(&plain_path, &plaintext).unwrap();
    for (k, spec) in [
        "gcm:32:SHA256:32:1048576",
        "ctr:32:SHA256:32:SHA256:32:1048576",
    ]
    .iter()
    .enumerate()
    {
        let (keyset_path, keyset) = tink_keyset(dir.path(), &format!("big{k}.json"), &[spec], 0);
        let veil_ct = dir.path().join(format!("veil-ct-{k}"));
        std::fs::write(&veil_ct, veil_encrypt(&keyset, b"big", &plaintext)).unwrap();
        let tink_ct = dir.path().join(format!("tink-ct-{k}"));
        let tink_plain = dir.path().join(format!("tink-plain-{k}"));
        let ops = [
            TinkOp {
                encrypt: true,
                keyset: keyset_path.clone(),
                aad: b"big".to_vec(),
                input: plain_path.clone(),
                output: tink_ct.clone(),
            },
            TinkOp {
                encrypt: false,
                keyset: keyset_path,
                aad: b"big".to_vec(),
                input: veil_ct,
                output: tink_plain.clone(),
            },
        ];
        for (ok, error) in tink_batch(dir.path(), &ops) {
            assert!(ok, "Tink failed on {spec}: {error}");
        }
        assert!(
            veil_decrypt_file(&keyset, b"big", &tink_ct, dir.path()) == plaintext,
            "veil opening Tink's 64 MiB {spec}"
        );
        assert!(
            std::fs::read(&tink_plain).unwrap() == plaintext,
            "Tink opening veil's 64 MiB {spec}"
        );
    }
}
