//! libFuzzer entry of the `openai_request` target (encore_fuzz::targets::openai_request).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| encore_fuzz::targets::openai_request(data));
