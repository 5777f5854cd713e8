//! Fuzz target: `veil_keybroker::fuzz_entry::protocol_json` must not panic on any input.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    veil_keybroker::fuzz_entry::protocol_json(data);
});
