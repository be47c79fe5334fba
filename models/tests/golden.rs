//! The random-weight architectures against the numpy reference (`models/reference/golden.py`).
//! EfficientNet-Lite0 with its real weights is checked through the runtime's load path in
//! `runtime/tests/golden_efficientnet.rs`.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use edgemm_models::golden::{max_relative_error, GoldenFile, TOLERANCE};
use edgemm_models::{architecture, init, Isa, Kernels};

fn golden_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

fn argmax(row: &[f32]) -> usize {
    (0..row.len())
        .max_by(|&a, &b| row[a].total_cmp(&row[b]))
        .unwrap()
}

/// Candle's ops and the fast kernels on every instruction set this CPU has.
fn all_kernels() -> Vec<Kernels> {
    std::iter::once(Kernels::Reference)
        .chain(Isa::supported().into_iter().map(Kernels::Fast))
        .collect()
}

/// Builds the architecture with the golden file's seeded weights, checks the generator agrees
/// with numpy bit for bit on the recorded check values, and compares the logits of every
/// kernel choice.
fn check_random_weight_model(file: &str) {
    let golden = GoldenFile::read(&golden_path(file)).unwrap();
    let arch = architecture(&golden.metadata["architecture"]).unwrap();
    let config = golden.config().unwrap();
    let seed: u64 = golden.metadata["seed"].parse().unwrap();
    let specs = arch.tensor_specs(&config).unwrap();

    let check = specs
        .iter()
        .find(|s| s.name == golden.metadata["check_tensor"])
        .expect("check tensor is part of the architecture");
    let values = init::seeded_values(check, seed);
    let first3: Vec<f64> = serde_json::from_str(&golden.metadata["check_first3"]).unwrap();
    for (ours, theirs) in values.iter().zip(&first3) {
        assert_eq!(f64::from(*ours), *theirs, "generator differs from numpy");
    }
    let sum: f64 = values.iter().map(|v| f64::from(*v)).sum();
    let expected_sum: f64 = golden.metadata["check_sum"].parse().unwrap();
    assert!((sum - expected_sum).abs() < 1e-9, "{sum} vs {expected_sum}");

    let weights = init::seeded_weights(&specs, seed, &Device::Cpu).unwrap();
    for kernels in all_kernels() {
        let vb = VarBuilder::from_tensors(weights.clone(), DType::F32, &Device::Cpu);
        let net = arch.build_with(&config, vb, kernels).unwrap();
        let logits = net.forward(&golden.input_nchw().unwrap()).unwrap();

        let err = max_relative_error(&logits, &golden.logits).unwrap();
        println!("{file} {kernels:?}: max relative error {err:.3e}");
        assert!(
            err <= TOLERANCE,
            "{file} {kernels:?}: max relative error {err:.3e} > {TOLERANCE:e}"
        );
        let ours = logits.to_vec2::<f32>().unwrap();
        let theirs = golden.logits.to_vec2::<f32>().unwrap();
        for (a, b) in ours.iter().zip(&theirs) {
            assert_eq!(argmax(a), argmax(b), "{kernels:?}");
        }
    }
}

#[test]
fn alexnet_small_matches_numpy_reference() {
    check_random_weight_model("alexnet_small.safetensors");
}

#[test]
fn vgg16_matches_numpy_reference() {
    check_random_weight_model("vgg16.safetensors");
}

/// The comparison itself must be able to fail: a perturbed network is caught.
#[test]
fn perturbed_weights_are_caught() {
    let golden = GoldenFile::read(&golden_path("alexnet_small.safetensors")).unwrap();
    let arch = architecture("alexnet-small").unwrap();
    let config = golden.config().unwrap();
    let specs = arch.tensor_specs(&config).unwrap();
    let seed: u64 = golden.metadata["seed"].parse().unwrap();
    let mut weights = init::seeded_weights(&specs, seed, &Device::Cpu).unwrap();
    let bias = weights.get_mut("fc2.bias").unwrap();
    *bias = (bias.clone() + 1e-2).unwrap();
    let vb = VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu);
    let logits = arch
        .build(&config, vb)
        .unwrap()
        .forward(&golden.input_nchw().unwrap())
        .unwrap();
    assert!(max_relative_error(&logits, &golden.logits).unwrap() > TOLERANCE);
}
