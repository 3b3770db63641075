//! libFuzzer entry of the `safetensors_index` target (encore_fuzz::targets::safetensors_index).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| encore_fuzz::targets::safetensors_index(data));
