#![no_main]
//! `cargo +nightly fuzz run artifact` (from runtime/): see edgemm_fuzz::artifact.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    edgemm_fuzz::artifact(data);
});
