//! Fuzz target: `veil_keybroker::fuzz_entry::sample_evidence` must not panic on any input.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    veil_keybroker::fuzz_entry::sample_evidence(data);
});
