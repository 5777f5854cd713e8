//! Fuzz target: `veil_keybroker::fuzz_entry::policy` must not panic on any input.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    veil_keybroker::fuzz_entry::policy(data);
});
