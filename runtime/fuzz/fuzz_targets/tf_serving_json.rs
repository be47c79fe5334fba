#![no_main]
//! `cargo +nightly fuzz run tf_serving_json` (from runtime/): see edgemm_fuzz::tf_serving_json.
//! Requests go to the shipped CIFAR model, through a runtime made once per process.

use std::path::Path;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let repository = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/repository");
    edgemm_fuzz::tf_serving_json(edgemm_fuzz::runtime(&repository), data);
});
