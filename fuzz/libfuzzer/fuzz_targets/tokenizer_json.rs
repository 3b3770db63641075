//! libFuzzer entry of the `tokenizer_json` target (encore_fuzz::targets::tokenizer_json).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| encore_fuzz::targets::tokenizer_json(data));
