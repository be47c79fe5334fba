//! EfficientNet-Lite0 with its real ImageNet weights, loaded from the shipped artifact through
//! the runtime's own path (extract, verify, mmap, check, build), against the numpy reference
//! (`models/reference/golden.py`).

mod common;

use edgemm::{Runtime, RuntimeOptions};
use edgemm_models::golden::{max_relative_error, GoldenFile, TOLERANCE};

#[test]
fn shipped_efficientnet_lite0_matches_numpy_reference() {
    let golden = GoldenFile::read(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../models/tests/golden/efficientnet_lite0.safetensors"),
    )
    .unwrap();
    let cache = tempfile::tempdir().unwrap();
    let mut options = RuntimeOptions::new(common::shipped_repository());
    options.cache_dir = cache.path().to_path_buf();
    let runtime = Runtime::new(options).unwrap();
    let model = runtime.model("efficientnet-lite0.tar.gz").unwrap();
    assert_eq!(
        model.manifest.weights.sha256, golden.metadata["weights_sha256"],
        "the golden file was made from other weights"
    );

    let logits = model.forward(&golden.input_nchw().unwrap()).unwrap();
    let err = max_relative_error(&logits, &golden.logits).unwrap();
    println!("efficientnet-lite0: max relative error {err:.3e}");
    assert!(
        err <= TOLERANCE,
        "max relative error {err:.3e} > {TOLERANCE:e}"
    );

    // The golden batch is [grace_hopper, hot_dog].
    let rows = logits.to_vec2::<f32>().unwrap();
    let top1 = |row: &[f32]| {
        (0..row.len())
            .max_by(|&a, &b| row[a].total_cmp(&row[b]))
            .unwrap()
    };
    assert!(model.manifest.labels[top1(&rows[0])].starts_with("military uniform"));
    assert!(model.manifest.labels[top1(&rows[1])].starts_with("hotdog"));
}
