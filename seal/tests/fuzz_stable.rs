//! Stable-toolchain fuzzing: the cargo-fuzz entry points (`veil_seal::fuzz_entry`) fed with
//! proptest inputs, random bytes and mutations of the seed corpus in `fuzz/seeds/`.
//! Bounded by `PROPTEST_CASES` (default 256 per target); any panic fails the test.

use proptest::prelude::*;
use veil_seal::fuzz_entry;

type Entry = fn(&[u8]);

const TARGETS: [(&str, Entry); 4] = [
    ("header", fuzz_entry::header),
    ("keyset_json", fuzz_entry::keyset_json),
    ("keyset_binary", fuzz_entry::keyset_binary),
    ("decrypt", fuzz_entry::decrypt),
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

/// The decrypt seeds must be valid ciphertexts under the fuzz keyset, or mutating them
/// would only ever exercise the header checks.
#[test]
fn decrypt_seeds_open_with_the_fuzz_keyset() {
    let keyset = fuzz_entry::fuzz_keyset();
    for seed in seeds("decrypt") {
        let mut out = Vec::new();
        veil_seal::decrypt_sequential(
            &seed[..],
            &keyset,
            fuzz_entry::FUZZ_ASSOCIATED_DATA,
            &mut out,
        )
        .unwrap();
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

/// Cuts a seed into two pieces and joins them in another order, repeating or dropping a
/// range: reordered, duplicated and removed segments, which bit flips alone rarely produce.
fn spliced(seed: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let len = seed.len();
    (0..=len, 0..=len, 0..=len).prop_map(move |(a, b, c)| {
        let (lo, hi) = (a.min(b), a.max(b));
        let mut bytes = seed[..c].to_vec();
        bytes.extend_from_slice(&seed[lo..hi]);
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
                splice in prop::sample::select(seeds($target)).prop_flat_map(spliced),
            ) {
                let f = entry($target);
                f(&random);
                f(&mutant);
                f(&splice);
            }
        }
    };
}

fuzz_target_test!(header_never_panics, "header");
fuzz_target_test!(keyset_json_never_panics, "keyset_json");
fuzz_target_test!(keyset_binary_never_panics, "keyset_binary");
fuzz_target_test!(decrypt_never_panics, "decrypt");
