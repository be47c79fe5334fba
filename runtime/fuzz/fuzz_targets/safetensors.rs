#![no_main]
//! `cargo +nightly fuzz run safetensors` (from runtime/): see edgemm_fuzz::safetensors.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    edgemm_fuzz::safetensors(data);
});
