//! Whole networks on the fast kernels against the same networks on candle's ops (issue #8):
//! every architecture, every instruction set this CPU has (the portable fallback included),
//! batches of one and several, and input sizes the architectures were not designed around;
//! and the same on weights stored in f16 (the fast kernels keep dense layers in f16, candle
//! converts every tensor to f32).

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use edgemm_models::golden::max_relative_error;
use edgemm_models::{architecture, init, Isa, Kernels};

fn compare(name: &str, config: serde_json::Value, inputs: &[(usize, usize, usize)]) {
    compare_stored(name, config, inputs, DType::F32)
}

/// [`compare`] on weights stored as `dtype`, handed out by a `VarBuilder` of that dtype as the
/// runtime's is.
fn compare_stored(
    name: &str,
    config: serde_json::Value,
    inputs: &[(usize, usize, usize)],
    dtype: DType,
) {
    let arch = architecture(name).unwrap();
    let specs = arch.tensor_specs(&config).unwrap();
    let mut weights = init::seeded_weights(&specs, 11, &Device::Cpu).unwrap();
    for tensor in weights.values_mut() {
        *tensor = tensor.to_dtype(dtype).unwrap();
    }
    let build = |kernels| {
        let vb = VarBuilder::from_tensors(weights.clone(), dtype, &Device::Cpu);
        arch.build_with(&config, vb, kernels).unwrap()
    };
    let reference = build(Kernels::Reference);
    for isa in Isa::supported() {
        let fast = build(Kernels::Fast(isa));
        for &(n, h, w) in inputs {
            let x = Tensor::rand(-1f32, 1f32, (n, 3, h, w), &Device::Cpu).unwrap();
            let expected = reference.forward(&x).unwrap();
            let actual = fast.forward(&x).unwrap();
            assert_eq!(actual.dims(), expected.dims());
            let err = max_relative_error(&actual, &expected).unwrap();
            println!("{name} {dtype:?} {} {n}x{h}x{w}: {err:.2e}", isa.name());
            assert!(
                err <= 1e-4,
                "{name} {dtype:?} {} {n}x{h}x{w}: {err:e}",
                isa.name()
            );
        }
    }
}

#[test]
fn alexnet_small_fast_matches_reference() {
    let config = serde_json::json!({ "input_size": 24, "channels": [5, 17, 33], "hidden": 19 });
    compare("alexnet-small", config, &[(1, 24, 24), (3, 24, 24)]);
}

#[test]
fn efficientnet_lite0_fast_matches_reference() {
    // Odd sizes exercise TF-SAME's uneven padding at every stride-2 layer.
    compare(
        "efficientnet-lite0",
        serde_json::json!({ "classes": 7 }),
        &[(1, 67, 45), (2, 32, 32)],
    );
}

#[test]
fn vgg16_fast_matches_reference() {
    let config =
        serde_json::json!({ "input_height": 32, "input_width": 64, "hidden": 24, "classes": 5 });
    compare("vgg16", config, &[(1, 32, 64), (2, 32, 64)]);
}

/// Dense layers kept in f16: batches of 1 and 5 (one pass of four rows and a single row), a
/// hidden width that leaves the last strip part-filled.
#[test]
fn f16_weights_fast_matches_reference() {
    let config = serde_json::json!({ "input_size": 24, "channels": [5, 17, 33], "hidden": 19 });
    compare_stored(
        "alexnet-small",
        config,
        &[(1, 24, 24), (5, 24, 24)],
        DType::F16,
    );
    let config =
        serde_json::json!({ "input_height": 32, "input_width": 32, "hidden": 37, "classes": 5 });
    compare_stored("vgg16", config, &[(1, 32, 32), (5, 32, 32)], DType::F16);
}

/// bf16 weights: every tensor converted to f32 at load, dense layers included.
#[test]
fn bf16_weights_fast_matches_reference() {
    let config = serde_json::json!({ "input_size": 24, "channels": [5, 17, 33], "hidden": 19 });
    compare_stored(
        "alexnet-small",
        config,
        &[(1, 24, 24), (5, 24, 24)],
        DType::BF16,
    );
}

/// The switch itself: names parse, unknown ones are refused with the known list.
#[test]
fn kernels_parse_from_names() {
    assert_eq!(Kernels::parse("reference").unwrap(), Kernels::Reference);
    assert_eq!(Kernels::parse("fast").unwrap(), Kernels::Fast(Isa::best()));
    assert_eq!(
        Kernels::parse("portable").unwrap(),
        Kernels::Fast(Isa::portable())
    );
    let err = Kernels::parse("sse9").unwrap_err().to_string();
    assert!(err.contains("sse9") && err.contains("portable"), "{err}");
}
