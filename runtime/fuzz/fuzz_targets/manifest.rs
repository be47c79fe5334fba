#![no_main]
//! `cargo +nightly fuzz run manifest` (from runtime/): see edgemm_fuzz::manifest.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    edgemm_fuzz::manifest(data);
});
