//! The built-in torchvision architectures (issue #20: adding an architecture costs a graph
//! description only). Each registry entry, configured as a committed ONNX export was made
//! (`models/reference/onnx/export.py`: torchvision's own classes, seeded weights, batch norm
//! kept), must read exactly the export's initializers (names and shapes: torchvision's
//! `state_dict`) and, with those loaded as its weights, agree with ONNX Runtime's logits on
//! the five photos to a relative 1e-4, as candle ops and on the fast kernels of every
//! instruction set this CPU has, with no candle fallback, and plan to the same kernels as
//! the imported export. The weights are read from the ONNX file directly, not through the
//! importer.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use common::{dir, large_models, Expected};
use edgemm_models::graph::planner;
use edgemm_models::onnx::{self, proto::ModelProto, proto::TensorProto};
use edgemm_models::{architecture, Classifier, Isa, Kernels, Role, StepInfo};
use prost::Message;
use serde_json::{json, Value};

/// An initializer's f32 values, from `raw_data` (little-endian) or `float_data`.
fn values(t: &TensorProto) -> Vec<f32> {
    assert_eq!(t.data_type, 1, "{} is not float32", t.name);
    if t.raw_data.is_empty() {
        return t.float_data.clone();
    }
    let bytes = t.raw_data.chunks_exact(4);
    bytes
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

/// Builds `arch` with `config`, the initializers of `files/model.onnx` as its weights, and
/// holds it to `model.expected.json`.
fn check(files: &Path, model: &str, arch: &str, config: Value) {
    let bytes = std::fs::read(files.join(format!("{model}.onnx"))).unwrap();
    let initializers = ModelProto::decode(&bytes[..])
        .unwrap()
        .graph
        .unwrap()
        .initializer;
    let shapes: BTreeMap<String, Vec<usize>> = initializers
        .iter()
        .map(|t| (t.name.clone(), t.dims.iter().map(|&d| d as usize).collect()))
        .collect();
    let architecture = architecture(arch).unwrap();
    let specs: BTreeMap<String, Vec<usize>> = architecture
        .tensor_specs(&config)
        .unwrap()
        .into_iter()
        .map(|s| (s.name, s.shape))
        .collect();
    assert_eq!(
        specs, shapes,
        "{arch} {config} reads {model}'s initializers"
    );
    let tensors: HashMap<String, Tensor> = initializers
        .iter()
        .map(|t| {
            let shape = &shapes[&t.name];
            let tensor = Tensor::from_vec(values(t), shape.as_slice(), &Device::Cpu).unwrap();
            (t.name.clone(), tensor)
        })
        .collect();
    let build = |kernels| {
        let vb = VarBuilder::from_tensors(tensors.clone(), DType::F32, &Device::Cpu);
        architecture.build_with(&config, vb, kernels).unwrap()
    };
    let mut networks: Vec<(String, Box<dyn Classifier>)> =
        vec![("candle".into(), build(Kernels::Reference))];
    for isa in Isa::supported() {
        networks.push((isa.name().into(), build(Kernels::Fast(isa))));
    }
    // The description plans as the export does once imported: the same kernels in the same
    // order, so nothing the planner fuses in torchvision's graph is lost.
    let imported = onnx::import(&bytes).unwrap();
    let vb = VarBuilder::from_tensors(tensors.clone(), DType::F32, &Device::Cpu);
    let plan = planner::plan(&imported.graph, &vb, Isa::supported()[0], "graph").unwrap();
    let kernels = |steps: Vec<StepInfo>| steps.into_iter().map(|s| s.kernel).collect::<Vec<_>>();
    let (ours, theirs) = (networks[1].1.steps().unwrap(), plan.steps());
    assert_eq!(
        kernels(ours),
        kernels(theirs),
        "{arch} and {model} imported"
    );
    let expected = Expected::load(files, model);
    assert_eq!(expected.layout, "NCHW", "{model}");
    common::assert_matches(model, &networks, &expected);
}

#[test]
fn mobilenet_v3_small_matches_onnx_runtime() {
    let config = json!({ "width_mult": 0.5, "classes": 10 });
    check(
        &dir(),
        "mobilenet_v3_small_w050_c10",
        "mobilenet-v3-small",
        config,
    );
}

#[test]
fn mobilenet_v3_large_matches_onnx_runtime() {
    let config = json!({ "width_mult": 0.35, "classes": 10 });
    check(
        &dir(),
        "mobilenet_v3_large_w035_c10",
        "mobilenet-v3-large",
        config,
    );
}

/// export.py's `SlimResNet(Bottleneck, [1, 1, 1, 1], width_div=4)`: ResNet50's planes / 4.
#[test]
fn resnet_bottleneck_matches_onnx_runtime() {
    let config = json!({ "layers": [1, 1, 1, 1], "planes": [16, 32, 64, 128], "classes": 10 });
    check(&dir(), "resnet_bottleneck_tiny_c10", "resnet50", config);
}

/// export.py's `SlimResNet(BasicBlock, [1, 1, 1, 1], width_div=8)`: ResNet18's planes / 8.
#[test]
fn resnet_basic_matches_onnx_runtime() {
    let config = json!({ "layers": [1, 1, 1, 1], "planes": [8, 16, 32, 64], "classes": 10 });
    check(&dir(), "resnet_basic_tiny_c10", "resnet18", config);
}

/// The default configs against torchvision's full-size `mobilenet_v3_large`,
/// `mobilenet_v3_small` and `resnet50` (10-100 MB each, so not committed: `export.py --set
/// full` makes them, and CI does, into `target/onnx-models`).
#[test]
fn default_configs_match_full_size_exports() {
    let files = large_models();
    for (model, arch) in [
        ("mobilenet_v3_large", "mobilenet-v3-large"),
        ("mobilenet_v3_small", "mobilenet-v3-small"),
        ("resnet50", "resnet50"),
    ] {
        if !files.join(format!("{model}.onnx")).exists() {
            eprintln!("skipped: {} has no {model}.onnx (models/reference/onnx/export.py --set full makes it)", files.display());
            continue;
        }
        check(&files, model, arch, json!({}));
    }
}

/// The default configs have torchvision's parameter counts (`num_params` of its ImageNet
/// weights; running statistics are buffers, not parameters) and answer 1000 classes.
#[test]
fn default_configs_have_torchvision_parameter_counts() {
    for (arch, params) in [
        ("mobilenet-v3-large", 5_483_032),
        ("mobilenet-v3-small", 2_542_856),
        ("resnet18", 11_689_512),
        ("resnet34", 21_797_672),
        ("resnet50", 25_557_032),
    ] {
        let architecture = architecture(arch).unwrap();
        let specs = architecture.tensor_specs(&json!(null)).unwrap();
        let counted: usize = specs
            .iter()
            .filter(|s| !matches!(s.role, Role::BnMean | Role::BnVar))
            .map(|s| s.numel())
            .sum();
        assert_eq!(counted, params, "{arch}");
        assert_eq!(architecture.num_classes(&json!({})).unwrap(), 1000);
        assert_eq!(architecture.input_size(&json!({})).unwrap(), None, "{arch}");
    }
}

#[test]
fn bad_configs_are_refused_with_the_reason() {
    let cases = [
        (
            "mobilenet-v3-small",
            json!({ "width_mult": 0.0 }),
            "width_mult",
        ),
        (
            "mobilenet-v3-large",
            json!({ "variant": "small" }),
            "variant",
        ),
        ("resnet50", json!({ "layers": [3, 4, 6] }), "length 4"),
        ("resnet18", json!({ "layers": [1, 1, 1, 1000] }), "layers"),
        ("resnet34", json!({ "width": 2 }), "width"),
    ];
    for (arch, config, word) in cases {
        let e = architecture(arch)
            .unwrap()
            .tensor_specs(&config)
            .unwrap_err()
            .to_string();
        assert!(e.contains(arch) && e.contains(word), "{arch} {config}: {e}");
    }
}
