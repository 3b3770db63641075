//! libFuzzer entry of the `safetensors` target (encore_fuzz::targets::safetensors).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| encore_fuzz::targets::safetensors(data));
