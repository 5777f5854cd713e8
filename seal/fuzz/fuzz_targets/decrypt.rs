//! Fuzz target: `veil_seal::fuzz_entry::decrypt` must not panic on any input, and the parallel
//! pipeline must agree with the sequential decryptor.
#![no_main]

use std::sync::OnceLock;

static KEYSET: OnceLock<veil_seal::Keyset> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let keyset = KEYSET.get_or_init(veil_seal::fuzz_entry::fuzz_keyset);
    veil_seal::fuzz_entry::decrypt_with(keyset, data);
});
