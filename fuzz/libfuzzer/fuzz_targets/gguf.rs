//! libFuzzer entry of the `gguf` target (encore_fuzz::targets::gguf).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| encore_fuzz::targets::gguf(data));
