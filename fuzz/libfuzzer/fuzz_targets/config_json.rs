//! libFuzzer entry of the `config_json` target (encore_fuzz::targets::config_json).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| encore_fuzz::targets::config_json(data));
