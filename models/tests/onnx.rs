//! ONNX import against ONNX Runtime (issue #20): torchvision's MobileNetV3 (small and large,
//! opsets 11, 13 and 17, batch norm kept or folded by the exporter) and ResNets (bottleneck
//! and basic blocks), exported by `models/reference/onnx/export.py` with seeded weights, run
//! on the five reference photos; `reference.py` wrote ONNX Runtime's logits beside each file.
//! Every graph runs as candle ops and on the fast kernels of every instruction set this CPU
//! has, and must agree with ONNX Runtime to a relative 1e-4 (largest difference over largest
//! logit). A fuzz-style test feeds truncated and mutated files to the importer.
//!
//! Keras models converted by tf2onnx (`export_keras.py`: a small VGG-style model, committed,
//! and the full `keras.applications.VGG16`, made by CI) take NHWC input; ONNX Runtime was fed
//! the same photos transposed, and the imported graph takes the NCHW batch.

mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use common::{dir, large_models, Expected};
use edgemm_models::graph::{planner, reference::GraphNetwork};
use edgemm_models::{onnx, Classifier, Isa};

fn weights(imported: &onnx::Imported) -> HashMap<String, Tensor> {
    imported
        .tensors
        .iter()
        .map(|(name, shape, values)| {
            let t = Tensor::from_slice(values, shape.as_slice(), &Device::Cpu).unwrap();
            (name.clone(), t)
        })
        .collect()
}

fn check(model: &str) {
    check_in(&dir(), model)
}

/// [`check`] for `model.onnx` and `model.expected.json` in `files`.
fn check_in(files: &Path, model: &str) {
    let imported = onnx::import_file(&files.join(format!("{model}.onnx"))).unwrap();
    let expected = Expected::load(files, model);
    let layout = match expected.layout.as_str() {
        "NHWC" => onnx::InputLayout::Nhwc,
        _ => onnx::InputLayout::Nchw,
    };
    assert_eq!(imported.input_layout, layout, "{model}");
    let tensors = weights(&imported);
    let vb = || VarBuilder::from_tensors(tensors.clone(), DType::F32, &Device::Cpu);
    let mut networks: Vec<(String, Box<dyn Classifier>)> = vec![(
        "candle".into(),
        Box::new(GraphNetwork::new(&imported.graph, vb()).unwrap()),
    )];
    for isa in Isa::supported() {
        let plan = planner::plan(&imported.graph, &vb(), isa, "graph").unwrap();
        networks.push((isa.name().into(), Box::new(plan)));
    }
    common::assert_matches(model, &networks, &expected);
}

#[test]
fn mobilenet_v3_small_matches_onnx_runtime() {
    check("mobilenet_v3_small_w050_c10");
}

#[test]
fn mobilenet_v3_small_opset11_matches_onnx_runtime() {
    check("mobilenet_v3_small_w050_c10_opset11");
}

#[test]
fn mobilenet_v3_small_opset17_matches_onnx_runtime() {
    check("mobilenet_v3_small_w050_c10_opset17");
}

#[test]
fn mobilenet_v3_small_exporter_folded_bn_matches_onnx_runtime() {
    check("mobilenet_v3_small_w050_c10_bnfused");
}

#[test]
fn mobilenet_v3_large_matches_onnx_runtime() {
    check("mobilenet_v3_large_w035_c10");
}

#[test]
fn resnet_bottleneck_matches_onnx_runtime() {
    check("resnet_bottleneck_tiny_c10");
}

#[test]
fn resnet_basic_matches_onnx_runtime() {
    check("resnet_basic_tiny_c10");
}

/// The pretrained EfficientNet-Lite0 as ONNX (TF-SAME padding written out as asymmetric pads,
/// ReLU6 as Clip), built from `../shared/data` by `models/reference/onnx/efficientnet_lite0.py`
/// with onnx's own graph builder (CI does, into `target/onnx-models`; `$EDGEMM_ONNX_MODELS`
/// points elsewhere).
#[test]
fn efficientnet_lite0_matches_onnx_runtime() {
    let files = large_models();
    if !files.join("efficientnet_lite0.onnx").exists() {
        println!("skipped: {} has no efficientnet_lite0.onnx (models/reference/onnx/efficientnet_lite0.py makes it)", files.display());
        return;
    }
    check_in(&files, "efficientnet_lite0");
}

/// torchvision's full-size `mobilenet_v3_large`, `mobilenet_v3_small` and `resnet50`
/// (seeded, 1000 classes, 10-100 MB each, so not committed: `export.py --set full` makes
/// them, and CI does, into `target/onnx-models`).
#[test]
fn torchvision_full_size_models_match_onnx_runtime() {
    let files = large_models();
    for model in ["mobilenet_v3_large", "mobilenet_v3_small", "resnet50"] {
        if !files.join(format!("{model}.onnx")).exists() {
            eprintln!("skipped: {} has no {model}.onnx (models/reference/onnx/export.py --set full makes it)", files.display());
            continue;
        }
        check_in(&files, model);
    }
}

/// A VGG-style Keras model (Conv2D same + ReLU, MaxPooling2D, Flatten, Dense, softmax)
/// converted by tf2onnx: NHWC input, the Flatten's Transpose back to NHWC and its computed
/// Reshape shape, MatMul + Add.
#[test]
fn keras_vgg_tiny_matches_onnx_runtime() {
    check("keras_vgg_tiny_c10");
    let imported = onnx::import_file(&dir().join("keras_vgg_tiny_c10.onnx")).unwrap();
    assert!(imported.ends_in_softmax);
    // Both Transposes fold away; no shape arithmetic is left in the graph.
    let ops: Vec<_> = imported.graph.nodes.iter().map(|n| n.op.kind()).collect();
    assert_eq!(
        ops.iter().filter(|k| **k == "flatten").count(),
        1,
        "{ops:?}"
    );
    assert_eq!(
        imported.graph.nodes.len(),
        8 + 8 + 5 + 1 + 3 + 2 + 1,
        "{ops:?}"
    );
}

/// `keras.applications.VGG16(weights=None, classes=1000, classifier_activation=None)`,
/// seeded, converted by tf2onnx (553 MB, so CI makes it into `target/onnx-models` with
/// `models/reference/onnx/export_keras.py --set full`).
#[test]
fn keras_vgg16_matches_onnx_runtime() {
    let files = large_models();
    if !files.join("keras_vgg16.onnx").exists() {
        eprintln!("skipped: {} has no keras_vgg16.onnx (models/reference/onnx/export_keras.py --set full makes it)", files.display());
        return;
    }
    check_in(&files, "keras_vgg16");
}

/// A Transpose other than the two a Keras export holds is refused, naming the node and perm.
#[test]
fn unrecognised_transpose_names_the_node() {
    let bytes = std::fs::read(dir().join("keras_vgg_tiny_c10.onnx")).unwrap();
    for (k, perm) in [(0, vec![0, 2, 1, 3]), (1, vec![0, 3, 2, 1])] {
        let mut model = <onnx::proto::ModelProto as prost::Message>::decode(&bytes[..]).unwrap();
        let graph = model.graph.as_mut().unwrap();
        let node = graph
            .node
            .iter_mut()
            .filter(|n| n.op_type == "Transpose")
            .nth(k)
            .unwrap();
        node.attribute[0].ints = perm.clone();
        let name = node.name.clone();
        let e = onnx::import(&prost::Message::encode_to_vec(&model))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("{name:?} (Transpose)")) && e.contains(&format!("perm {perm:?}")),
            "{e}"
        );
    }
    // A map left in NHWC layout may not reach a convolution.
    let mut model = <onnx::proto::ModelProto as prost::Message>::decode(&bytes[..]).unwrap();
    let graph = model.graph.as_mut().unwrap();
    let first = graph.node[0].output[0].clone();
    graph.node[1].input[0] = graph.node[0].input[0].clone();
    graph.node.remove(0);
    assert!(graph.node.iter().all(|n| !n.input.contains(&first)));
    let e = onnx::import(&prost::Message::encode_to_vec(&model))
        .unwrap_err()
        .to_string();
    assert!(e.contains("(Conv)") && e.contains("NHWC"), "{e}");
}

/// The importer reads hostile bytes as an error, never a panic: every truncation length on a
/// stride, and single-byte mutations at seeded positions, of a real export.
#[test]
fn truncated_and_mutated_files_are_errors_not_panics() {
    let bytes = std::fs::read(dir().join("resnet_basic_tiny_c10.onnx")).unwrap();
    let mut rejected = 0;
    for len in (0..bytes.len()).step_by(bytes.len() / 300) {
        if onnx::import(&bytes[..len]).is_err() {
            rejected += 1;
        }
    }
    assert!(
        rejected > 250,
        "truncated files accepted: {rejected} rejected of ~300"
    );
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    // Mutations in the graph's structure (the first and last 64 KiB: nodes, attributes,
    // shapes) rather than inside weight values, where they are still a valid model.
    let mut errors = HashMap::new();
    for _ in 0..3000 {
        let mut m = bytes.clone();
        let region = if next() % 2 == 0 {
            0
        } else {
            m.len().saturating_sub(1 << 16)
        };
        let at = region + (next() as usize) % (1 << 16).min(m.len());
        let at = at.min(m.len() - 1);
        m[at] = next() as u8;
        if let Err(e) = onnx::import(&m) {
            let text = e.to_string();
            assert!(text.starts_with("ONNX import: "), "{text}");
            *errors
                .entry(text.split(':').nth(1).unwrap_or("").to_string())
                .or_insert(0) += 1;
        }
    }
    assert!(!errors.is_empty(), "no mutation was refused");
}

#[test]
fn unsupported_ops_and_attributes_name_the_node() {
    let bytes = std::fs::read(dir().join("resnet_basic_tiny_c10.onnx")).unwrap();
    let mut model = <onnx::proto::ModelProto as prost::Message>::decode(&bytes[..]).unwrap();
    let graph = model.graph.as_mut().unwrap();
    let node = graph.node.iter_mut().find(|n| n.op_type == "Relu").unwrap();
    node.op_type = "Elu".into();
    let name = node.name.clone();
    let bytes = prost::Message::encode_to_vec(&model);
    let e = onnx::import(&bytes).unwrap_err().to_string();
    assert!(
        e.contains(&format!("{name:?} (Elu)")) && e.contains("not supported") && e.contains("Conv"),
        "{e}"
    );

    let mut model = <onnx::proto::ModelProto as prost::Message>::decode(
        &std::fs::read(dir().join("resnet_basic_tiny_c10.onnx")).unwrap()[..],
    )
    .unwrap();
    let graph = model.graph.as_mut().unwrap();
    let node = graph.node.iter_mut().find(|n| n.op_type == "Conv").unwrap();
    node.attribute.push(onnx::proto::AttributeProto {
        name: "auto_pad".into(),
        s: b"SAME_LOWER".to_vec(),
        ..Default::default()
    });
    let e = onnx::import(&prost::Message::encode_to_vec(&model))
        .unwrap_err()
        .to_string();
    assert!(e.contains("SAME_LOWER"), "{e}");

    let mut model = <onnx::proto::ModelProto as prost::Message>::decode(
        &std::fs::read(dir().join("resnet_basic_tiny_c10.onnx")).unwrap()[..],
    )
    .unwrap();
    model.opset_import[0].version = 9;
    let e = onnx::import(&prost::Message::encode_to_vec(&model))
        .unwrap_err()
        .to_string();
    assert!(e.contains("opset 9"), "{e}");
}
