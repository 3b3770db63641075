//! libFuzzer entry of the `chat_template` target (encore_fuzz::targets::chat_template).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| encore_fuzz::targets::chat_template(data));
