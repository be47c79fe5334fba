#![no_main]
//! `cargo +nightly fuzz run frame` (from runtime/): see edgemm_fuzz::frame.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    edgemm_fuzz::frame(data);
});
