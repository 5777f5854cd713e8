//! Fuzz target: `veil_seal::fuzz_entry::header` must not panic on any input.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    veil_seal::fuzz_entry::header(data);
});
