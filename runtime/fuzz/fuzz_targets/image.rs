#![no_main]
//! `cargo +nightly fuzz run image` (from runtime/): see edgemm_fuzz::image.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    edgemm_fuzz::image(data);
});
