//! Stable-toolchain fuzzing: the cargo-fuzz entry points (`veil_keybroker::fuzz_entry`) fed
//! with proptest inputs, random bytes and mutations of the seed corpus in `fuzz/seeds/`.
//! Bounded by `PROPTEST_CASES` (default 256 per target); any panic fails the test.

use proptest::prelude::*;
use veil_keybroker::fuzz_entry;

type Entry = fn(&[u8]);

const TARGETS: [(&str, Entry); 6] = [
    ("snp_report", fuzz_entry::snp_report),
    ("snp_evidence", fuzz_entry::snp_evidence),
    ("sample_evidence", fuzz_entry::sample_evidence),
    ("protocol_json", fuzz_entry::protocol_json),
    ("jwe_response", fuzz_entry::jwe_response),
    ("policy", fuzz_entry::policy),
];

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target);
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        out.push(std::fs::read(entry.unwrap().path()).unwrap());
    }
    assert!(!out.is_empty(), "no seeds in {}", dir.display());
    out
}

fn entry(target: &str) -> Entry {
    TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .map(|(_, f)| *f)
        .unwrap()
}

#[test]
fn seeds_pass_through_every_target() {
    for (name, f) in TARGETS {
        for seed in seeds(name) {
            f(&seed);
        }
    }
}

/// Flips, overwrites or truncates bytes of a seed.
fn mutated(seed: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let len = seed.len().max(1);
    (prop::collection::vec((0..len, any::<u8>()), 1..8), 0..=len).prop_map(move |(edits, keep)| {
        let mut bytes = seed.clone();
        for (at, value) in edits {
            if let Some(b) = bytes.get_mut(at) {
                *b ^= value;
            }
        }
        bytes.truncate(keep.max(1));
        bytes
    })
}

macro_rules! fuzz_target_test {
    ($test:ident, $target:literal) => {
        proptest! {
            #[test]
            fn $test(
                random in prop::collection::vec(any::<u8>(), 0..2048),
                mutant in prop::sample::select(seeds($target)).prop_flat_map(mutated),
            ) {
                let f = entry($target);
                f(&random);
                f(&mutant);
            }
        }
    };
}

fuzz_target_test!(snp_report_never_panics, "snp_report");
fuzz_target_test!(snp_evidence_never_panics, "snp_evidence");
fuzz_target_test!(sample_evidence_never_panics, "sample_evidence");
fuzz_target_test!(protocol_json_never_panics, "protocol_json");
fuzz_target_test!(jwe_response_never_panics, "jwe_response");
fuzz_target_test!(policy_never_panics, "policy");
