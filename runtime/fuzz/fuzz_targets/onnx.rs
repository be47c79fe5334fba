#![no_main]
//! `cargo +nightly fuzz run onnx` (from runtime/): see edgemm_fuzz::onnx.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    edgemm_fuzz::onnx(data);
});
