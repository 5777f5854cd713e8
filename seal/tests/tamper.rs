//! Tampering: every modification gives its specific error and leaves no output file.

mod common;

use std::num::NonZeroUsize;
use std::path::Path;

use common::pseudo_random;
use veil_seal::{
    decrypt_file_to_file, decrypt_to_file, encrypt, DecryptError, DecryptOptions, HeaderProblem,
    KeyTemplate, Keyset, SegmentFailure,
};

const SEG: usize = 4096;
/// AES128_GCM_HKDF_4KB: header 24 + segment 0 (4072) = 4096, so segment i >= 1 starts at 4096 * i.
const TEMPLATE: KeyTemplate = KeyTemplate::Aes128GcmHkdf4Kb;
/// Segments 0..=3 full, segment 4 holds 1000 plaintext bytes (1016 ciphertext bytes).
const SHORT_LAST_LEN: usize = 4056 + 3 * 4080 + 1000;
/// Segments 0..=3, all full.
const FULL_LAST_LEN: usize = 4056 + 3 * 4080;

fn sealed(keyset: &Keyset, len: usize, aad: &[u8]) -> Vec<u8> {
    let mut ct = Vec::new();
    encrypt(&pseudo_random(len, len as u64)[..], keyset, aad, &mut ct).unwrap();
    ct
}

fn assert_no_output(dir: &Path) {
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "decryption left files behind: {left:?}");
}

/// Decrypts `ct` to a file through both paths and returns the error, checking that both give
/// the same error and that nothing was left on disk: the streaming pipeline
/// ([`decrypt_to_file`], computing the digest) and the positional one
/// ([`decrypt_file_to_file`] from a sealed file, digest skipped).
fn fail(ct: &[u8], keyset: &Keyset, aad: &[u8], threads: usize) -> DecryptError {
    let streaming = fail_streaming(ct, keyset, aad, threads);
    let positional = fail_positional(ct, keyset, aad, threads);
    assert_eq!(
        positional.to_string(),
        streaming.to_string(),
        "the positional path reports a different error"
    );
    streaming
}

fn fail_streaming(ct: &[u8], keyset: &Keyset, aad: &[u8], threads: usize) -> DecryptError {
    let dir = tempfile::tempdir().unwrap();
    let options = DecryptOptions {
        threads: NonZeroUsize::new(threads),
        ..DecryptOptions::default()
    };
    let result = decrypt_to_file(ct, keyset, aad, &dir.path().join("model.bin"), &options);
    assert_no_output(dir.path());
    match result {
        Ok(report) => panic!("tampered ciphertext decrypted: {report:?}"),
        Err(e) => e,
    }
}

fn fail_positional(ct: &[u8], keyset: &Keyset, aad: &[u8], threads: usize) -> DecryptError {
    let sealed_dir = tempfile::tempdir().unwrap();
    let sealed_path = sealed_dir.path().join("model.sealed");
    std::fs::write(&sealed_path, ct).unwrap();
    let source = std::fs::File::open(&sealed_path).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let options = DecryptOptions {
        threads: NonZeroUsize::new(threads),
        skip_sha256: true,
        ..DecryptOptions::default()
    };
    let result = decrypt_file_to_file(
        &source,
        keyset,
        aad,
        &dir.path().join("model.bin"),
        &options,
    );
    assert_no_output(dir.path());
    match result {
        Ok(report) => panic!("tampered ciphertext decrypted by the positional path: {report:?}"),
        Err(e) => e,
    }
}

fn segment(error: &DecryptError) -> (u32, SegmentFailure) {
    error
        .segment_failure()
        .unwrap_or_else(|| panic!("expected a segment error, got: {error}"))
}

fn flip(ct: &[u8], byte: usize, bit: u8) -> Vec<u8> {
    let mut out = ct.to_vec();
    out[byte] ^= 1 << bit;
    out
}

#[test]
fn every_header_bit_flip_is_detected() {
    let keyset = Keyset::generate(TEMPLATE).unwrap();
    let ct = sealed(&keyset, SHORT_LAST_LEN, b"aad");
    for byte in 0..24 {
        for bit in 0..8 {
            let error = fail(&flip(&ct, byte, bit), &keyset, b"aad", 2);
            if byte == 0 {
                assert!(
                    matches!(
                        error,
                        DecryptError::BadHeader(HeaderProblem::UnknownLength { .. })
                    ),
                    "byte 0 bit {bit}: {error}"
                );
            } else {
                // Salt or nonce prefix changed: the derived key or nonces differ, so no key opens
                // segment 0.
                assert!(
                    matches!(error, DecryptError::NoKeyMatched { keys_tried: 1 }),
                    "byte {byte} bit {bit}: {error}"
                );
            }
        }
    }
}

#[test]
fn bit_flips_in_tags_and_bodies_of_first_middle_and_last_segments() {
    let keyset = Keyset::generate(TEMPLATE).unwrap();
    let ct = sealed(&keyset, SHORT_LAST_LEN, b"");
    let last = ct.len() - 1;
    // (byte, what) for segment 0: body and tag.
    for byte in [24, 1000, 4096 - 16, 4095] {
        let error = fail(&flip(&ct, byte, 3), &keyset, b"", 2);
        assert!(
            matches!(error, DecryptError::NoKeyMatched { .. }),
            "segment 0 byte {byte}: {error}"
        );
    }
    // Middle segment 2 spans 8192..12288: first body byte, a middle one, tag bytes.
    for byte in [8192, 10000, 12288 - 16, 12287] {
        for threads in 1..=8 {
            let error = fail(&flip(&ct, byte, 0), &keyset, b"", threads);
            assert_eq!(
                segment(&error),
                (2, SegmentFailure::TagMismatch),
                "byte {byte}"
            );
        }
    }
    // Last segment 4 spans 16384..end.
    for byte in [16384, 16900, last - 15, last] {
        let error = fail(&flip(&ct, byte, 7), &keyset, b"", 2);
        assert_eq!(
            segment(&error),
            (4, SegmentFailure::LastSegmentInvalid),
            "byte {byte}"
        );
    }
}

#[test]
fn truncation_at_segment_boundaries_reports_the_missing_last_segment() {
    let keyset = Keyset::generate(TEMPLATE).unwrap();
    let ct = sealed(&keyset, SHORT_LAST_LEN, b"");
    for k in 1..=4 {
        let error = fail(&ct[..SEG * k], &keyset, b"", 2);
        assert_eq!(
            segment(&error),
            ((k - 1) as u32, SegmentFailure::MissingLastSegment),
            "cut at {}",
            SEG * k
        );
    }
    assert_eq!(
        segment(&fail(&ct[..24], &keyset, b"", 2)),
        (0, SegmentFailure::Truncated)
    );
    assert!(matches!(
        fail(&ct[..10], &keyset, b"", 2),
        DecryptError::BadHeader(HeaderProblem::Truncated { have: 10, need: 24 })
    ));
    assert!(matches!(
        fail(&[], &keyset, b"", 2),
        DecryptError::BadHeader(HeaderProblem::Empty)
    ));
}

#[test]
fn truncation_between_segment_boundaries() {
    let keyset = Keyset::generate(TEMPLATE).unwrap();
    let ct = sealed(&keyset, SHORT_LAST_LEN, b"");
    for k in 1..=4 {
        // Fewer bytes than a tag: certainly cut.
        assert_eq!(
            segment(&fail(&ct[..SEG * k + 5], &keyset, b"", 2)),
            (k as u32, SegmentFailure::Truncated)
        );
        // A partial segment that holds a tag's worth of bytes cannot be told from a modified last one.
        assert_eq!(
            segment(&fail(&ct[..SEG * k + 700], &keyset, b"", 2)),
            (k as u32, SegmentFailure::LastSegmentInvalid)
        );
    }
    // Cut inside segment 0: no key opens it.
    assert!(matches!(
        fail(&ct[..2000], &keyset, b"", 2),
        DecryptError::NoKeyMatched { .. }
    ));
}

#[test]
fn removed_duplicated_and_swapped_segments() {
    let keyset = Keyset::generate(TEMPLATE).unwrap();
    let ct = sealed(&keyset, SHORT_LAST_LEN, b"");
    let seg = |i: usize| &ct[SEG * i..(SEG * (i + 1)).min(ct.len())];
    let join = |parts: &[&[u8]]| parts.concat();

    let removed_middle = join(&[&ct[..SEG * 2], seg(3), seg(4)]);
    assert_eq!(
        segment(&fail(&removed_middle, &keyset, b"", 1)),
        (2, SegmentFailure::TagMismatch)
    );
    let removed_last = ct[..SEG * 4].to_vec();
    assert_eq!(
        segment(&fail(&removed_last, &keyset, b"", 1)),
        (3, SegmentFailure::MissingLastSegment)
    );
    let duplicated = join(&[&ct[..SEG * 3], seg(2), seg(3), seg(4)]);
    assert_eq!(
        segment(&fail(&duplicated, &keyset, b"", 1)),
        (3, SegmentFailure::TagMismatch)
    );
    let swapped = join(&[&ct[..SEG * 2], seg(3), seg(2), seg(4)]);
    assert_eq!(
        segment(&fail(&swapped, &keyset, b"", 1)),
        (2, SegmentFailure::TagMismatch)
    );
    // With several workers either swapped segment may be reported first.
    let (index, failure) = segment(&fail(&swapped, &keyset, b"", 4));
    assert!(index == 2 || index == 3, "swap reported at segment {index}");
    assert_eq!(failure, SegmentFailure::TagMismatch);
    // Moving the last segment earlier.
    let last_moved = join(&[&ct[..SEG * 2], seg(4), seg(2), seg(3)]);
    assert_eq!(
        segment(&fail(&last_moved, &keyset, b"", 1)),
        (2, SegmentFailure::TagMismatch)
    );
}

#[test]
fn appended_bytes() {
    let keyset = Keyset::generate(TEMPLATE).unwrap();
    // After a full last segment the last segment is intact and marked last: trailing data.
    let full = sealed(&keyset, FULL_LAST_LEN, b"");
    assert_eq!(full.len(), SEG * 4);
    for extra in [1usize, 16, 100, SEG] {
        let mut ct = full.clone();
        ct.extend(std::iter::repeat_n(0xA5, extra));
        assert_eq!(
            segment(&fail(&ct, &keyset, b"", 2)),
            (3, SegmentFailure::TrailingData),
            "{extra} bytes appended"
        );
    }
    // Appended to a short last segment the bytes merge into it.
    let short = sealed(&keyset, SHORT_LAST_LEN, b"");
    let mut ct = short.clone();
    ct.extend_from_slice(b"x");
    assert_eq!(
        segment(&fail(&ct, &keyset, b"", 2)),
        (4, SegmentFailure::LastSegmentInvalid)
    );
    // Appended to an empty message (a single segment 0 holding only its tag).
    let mut empty = sealed(&keyset, 0, b"");
    empty.extend_from_slice(b"tail");
    assert!(matches!(
        fail(&empty, &keyset, b"", 2),
        DecryptError::NoKeyMatched { .. }
    ));
}

#[test]
fn wrong_associated_data_and_wrong_keys() {
    let keyset = Keyset::generate(TEMPLATE).unwrap();
    let ct = sealed(&keyset, SHORT_LAST_LEN, b"model-a");
    assert!(matches!(
        fail(&ct, &keyset, b"model-b", 2),
        DecryptError::NoKeyMatched { keys_tried: 1 }
    ));
    assert!(matches!(
        fail(&ct, &keyset, b"", 2),
        DecryptError::NoKeyMatched { keys_tried: 1 }
    ));
    let mut other = Keyset::generate(TEMPLATE).unwrap();
    assert!(matches!(
        fail(&ct, &other, b"model-a", 2),
        DecryptError::NoKeyMatched { keys_tried: 1 }
    ));
    other
        .add_generated(KeyTemplate::Aes128CtrHmacSha2564Kb)
        .unwrap();
    assert!(matches!(
        fail(&ct, &other, b"model-a", 2),
        DecryptError::NoKeyMatched { keys_tried: 2 }
    ));
    // A keyset whose keys make 40-byte headers cannot even read this 24-byte header.
    let bigger = Keyset::generate(KeyTemplate::Aes256GcmHkdf4Kb).unwrap();
    assert!(matches!(
        fail(&ct, &bigger, b"model-a", 2),
        DecryptError::BadHeader(HeaderProblem::UnknownLength { found: 24 })
    ));
}

#[test]
fn digest_mismatch_leaves_no_output() {
    let keyset = Keyset::generate(TEMPLATE).unwrap();
    let ct = sealed(&keyset, SHORT_LAST_LEN, b"");
    let dir = tempfile::tempdir().unwrap();
    let options = DecryptOptions {
        expected_sha256: Some([0u8; 32]),
        ..DecryptOptions::default()
    };
    let error =
        decrypt_to_file(&ct[..], &keyset, b"", &dir.path().join("out"), &options).unwrap_err();
    assert!(
        matches!(error, DecryptError::DigestMismatch { .. }),
        "{error}"
    );
    assert_no_output(dir.path());

    // An expected digest is checked by the file-to-file entry point too, even with skip_sha256.
    let sealed_dir = tempfile::tempdir().unwrap();
    let sealed_path = sealed_dir.path().join("model.sealed");
    std::fs::write(&sealed_path, &ct).unwrap();
    let source = std::fs::File::open(&sealed_path).unwrap();
    let options = DecryptOptions {
        skip_sha256: true,
        ..options
    };
    let error =
        decrypt_file_to_file(&source, &keyset, b"", &dir.path().join("out"), &options).unwrap_err();
    assert!(
        matches!(error, DecryptError::DigestMismatch { .. }),
        "{error}"
    );
    assert_no_output(dir.path());
}

#[test]
fn aes_ctr_hmac_tampering() {
    let keyset = Keyset::generate(KeyTemplate::Aes128CtrHmacSha2564Kb).unwrap();
    // Header 24; 32-byte tags; segment 0 holds 4040 plaintext bytes, the others 4064.
    let ct = sealed(&keyset, 4040 + 4064 * 2 + 10, b"");
    assert_eq!(
        segment(&fail(&flip(&ct, SEG + 5, 1), &keyset, b"", 2)),
        (1, SegmentFailure::TagMismatch)
    );
    assert_eq!(
        segment(&fail(&flip(&ct, SEG * 2 - 1, 1), &keyset, b"", 2)),
        (1, SegmentFailure::TagMismatch)
    );
    assert_eq!(
        segment(&fail(&ct[..SEG * 2], &keyset, b"", 2)),
        (1, SegmentFailure::MissingLastSegment)
    );
    assert_eq!(
        segment(&fail(&flip(&ct, ct.len() - 1, 1), &keyset, b"", 2)),
        (3, SegmentFailure::LastSegmentInvalid)
    );
    let full = sealed(&keyset, 4040 + 4064, b"");
    let mut appended = full.clone();
    appended.push(0);
    assert_eq!(
        segment(&fail(&appended, &keyset, b"", 2)),
        (1, SegmentFailure::TrailingData)
    );
    assert!(matches!(
        fail(&ct, &keyset, b"x", 2),
        DecryptError::NoKeyMatched { .. }
    ));
}

/// With 64 KiB segments every segment is a claim of its own in the positional path, so its
/// workers really race: the errors must still be the streaming pipeline's, at any thread count.
#[test]
fn large_segments_fail_alike_on_both_paths_at_any_thread_count() {
    let keyset = common::positional_keyset(true);
    const BIG: usize = 64 << 10;
    // Segments 0..=5, the last one short.
    let ct = sealed(&keyset, 5 * (BIG - 16) - 24 + 3000, b"");
    let last = ct.len() - 1;
    for threads in 1..=8 {
        let (index, failure) = segment(&fail(&flip(&ct, 3 * BIG + 7, 2), &keyset, b"", threads));
        assert_eq!((index, failure), (3, SegmentFailure::TagMismatch));
        assert_eq!(
            segment(&fail(&flip(&ct, last, 0), &keyset, b"", threads)),
            (5, SegmentFailure::LastSegmentInvalid)
        );
        assert_eq!(
            segment(&fail(&ct[..4 * BIG], &keyset, b"", threads)),
            (3, SegmentFailure::MissingLastSegment)
        );
        assert_eq!(
            segment(&fail(&ct[..4 * BIG + 10], &keyset, b"", threads)),
            (4, SegmentFailure::Truncated)
        );
        let mut two_flips = flip(&ct, 4 * BIG + 1, 0);
        two_flips[BIG + 1] ^= 1;
        assert_eq!(
            segment(&fail(&two_flips, &keyset, b"", threads)),
            (1, SegmentFailure::TagMismatch)
        );
    }
    let full = sealed(&keyset, 4 * (BIG - 16) - 24, b"");
    assert_eq!(full.len(), 4 * BIG);
    let mut appended = full.clone();
    appended.extend_from_slice(&[0; 20]);
    for threads in [1, 3, 8] {
        assert_eq!(
            segment(&fail(&appended, &keyset, b"", threads)),
            (3, SegmentFailure::TrailingData)
        );
    }
}
