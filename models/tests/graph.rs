//! Graphs on the fast kernels against the same graphs as candle ops (issue #20): a graph
//! that uses every node type and every pattern the planner fuses (inverted-residual blocks,
//! squeeze-excitation, add-before-activation, conv + batch norm + activation), plus nodes
//! that fall back to candle, on every instruction set this CPU has.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use edgemm_models::golden::max_relative_error;
use edgemm_models::graph::{
    Activation, Conv, Dense, DenseLayout, Graph, GraphBuilder, GraphConfig, Op, Pads, Pool,
};
use edgemm_models::{architecture, init, Isa, Kernels};

fn conv(shape: (usize, usize, usize), stride: usize, pads: Pads, name: &str) -> (String, Conv) {
    (
        name.to_string(),
        Conv::square(shape, stride, pads, format!("{name}.weight"), None),
    )
}

fn pool(k: usize, s: usize, p: usize, ceil_mode: bool, count_include_pad: bool) -> Pool {
    Pool {
        kernel: [k; 2],
        stride: [s; 2],
        pads: [p; 4],
        ceil_mode,
        count_include_pad,
    }
}

/// A small network touching every op.
fn every_op(size: Option<(usize, usize)>) -> Graph {
    let mut b = GraphBuilder::new(size);
    let x = b.input();
    let hswish = Some(Activation::HardSwish);
    let relu6 = Some(Activation::RELU6);
    // Stem: direct convolution, TF-SAME padding, hard-swish (not fusable: its own step).
    let (n, c) = conv((3, 16, 3), 2, Pads::SameUpper, "stem");
    let x = b.conv_bn(&x, (&n, c), ("stem_bn", 1e-3), hswish);
    // Inverted residual with expansion and a residual add: one fused step.
    let (n, c) = conv((16, 48, 1), 1, Pads::NONE, "b1.expand");
    let y = b.conv_bn(&x, (&n, c), ("b1.bn0", 1e-3), relu6);
    let mut dw = Conv::square((48, 48, 3), 1, Pads::same(1), "b1.dw.weight", None);
    dw.groups = 48;
    let y = b.conv_bn(&y, ("b1.dw", dw), ("b1.bn1", 1e-3), relu6);
    let (n, c) = conv((48, 16, 1), 1, Pads::NONE, "b1.project");
    let y = b.conv_bn(&y, (&n, c), ("b1.bn2", 1e-3), None);
    let x = b.node("b1.add", Op::Add, &[&y, &x]);
    // Depthwise with stride 2 and asymmetric padding, then squeeze-excitation.
    let mut dw = Conv::square(
        (16, 16, 5),
        2,
        Pads::Explicit([1, 1, 2, 2]),
        "b2.dw.weight",
        None,
    );
    dw.groups = 16;
    let x = b.conv_bn(&x, ("b2.dw", dw), ("b2.bn", 1e-3), Some(Activation::Relu));
    let s = b.node("se.pool", Op::GlobalAvgPool, &[&x]);
    let mut fc1 = Conv::square((16, 8, 1), 1, Pads::NONE, "se.fc1.weight", None);
    fc1.bias = Some("se.fc1.bias".into());
    let s = b.node("se.fc1", Op::Conv(fc1), &[&s]);
    let s = b.node(
        "se.relu",
        Op::Activation {
            function: Activation::Relu,
        },
        &[&s],
    );
    let mut fc2 = Conv::square((8, 16, 1), 1, Pads::NONE, "se.fc2.weight", None);
    fc2.bias = Some("se.fc2.bias".into());
    let s = b.node("se.fc2", Op::Conv(fc2), &[&s]);
    let gate = Activation::HardSigmoid {
        alpha: 1.0 / 6.0,
        beta: 0.5,
    };
    let s = b.node("se.gate", Op::Activation { function: gate }, &[&s]);
    let x = b.node("se.scale", Op::Mul, &[&x, &s]);
    // A ResNet basic block: add before the activation, with a strided projection shortcut.
    let (n, c) = conv((16, 24, 3), 2, Pads::same(1), "r.conv1");
    let y = b.conv_bn(&x, (&n, c), ("r.bn1", 1e-5), Some(Activation::Relu));
    let (n, c) = conv((24, 24, 3), 1, Pads::same(1), "r.conv2");
    let y = b.conv_bn(&y, (&n, c), ("r.bn2", 1e-5), None);
    let (n, c) = conv((16, 24, 1), 2, Pads::NONE, "r.down");
    let shortcut = b.conv_bn(&x, (&n, c), ("r.down_bn", 1e-5), None);
    let y = b.node("r.add", Op::Add, &[&y, &shortcut]);
    let x = b.node(
        "r.relu",
        Op::Activation {
            function: Activation::Relu,
        },
        &[&y],
    );
    // Pools, standalone batch norm, leaky ReLU, concat, grouped conv and PReLU (fallbacks).
    let p1 = b.node("maxpool", Op::MaxPool(pool(3, 1, 1, false, false)), &[&x]);
    let p2 = b.node("avgpool", Op::AvgPool(pool(3, 1, 1, false, false)), &[&x]);
    let x = b.node("cat", Op::Concat, &[&p1, &p2, &x]);
    let mut grouped = Conv::square((72, 32, 3), 1, Pads::same(1), "grouped.weight", None);
    grouped.groups = 4;
    grouped.bias = Some("grouped.bias".into());
    let x = b.node("grouped", Op::Conv(grouped), &[&x]);
    let x = b.node(
        "bn_alone",
        Op::BatchNorm(edgemm_models::graph::BatchNorm::torch("bn_alone", 32, 1e-5)),
        &[&x],
    );
    let x = b.node(
        "prelu",
        Op::Prelu {
            channels: 32,
            slope: "prelu.slope".into(),
        },
        &[&x],
    );
    let x = b.node("ceil_pool", Op::MaxPool(pool(2, 2, 0, true, false)), &[&x]);
    let x = b.node("avg_ceil", Op::AvgPool(pool(3, 2, 1, true, true)), &[&x]);
    let x = b.node(
        "leaky",
        Op::Activation {
            function: Activation::LeakyRelu { alpha: 0.1 },
        },
        &[&x],
    );
    let x = b.node("gap", Op::GlobalAvgPool, &[&x]);
    let x = b.node("flat", Op::Flatten, &[&x]);
    let fc = Dense {
        in_features: 32,
        out_features: 20,
        weight: "fc.weight".into(),
        layout: DenseLayout::InOut,
        bias: Some("fc.bias".into()),
    };
    let x = b.node("fc", Op::Dense(fc), &[&x]);
    let x = b.node(
        "fc.relu",
        Op::Activation {
            function: Activation::Relu,
        },
        &[&x],
    );
    let fc = Dense {
        in_features: 20,
        out_features: 10,
        weight: "head.weight".into(),
        layout: DenseLayout::OutIn,
        bias: Some("head.bias".into()),
    };
    let x = b.node("head", Op::Dense(fc), &[&x]);
    b.finish(&x).unwrap()
}

fn compare(graph: Graph, inputs: &[(usize, usize, usize)]) -> Vec<edgemm_models::StepInfo> {
    let arch = architecture("graph").unwrap();
    let config = serde_json::to_value(GraphConfig { graph }).unwrap();
    let specs = arch.tensor_specs(&config).unwrap();
    let weights = init::seeded_weights(&specs, 5, &Device::Cpu).unwrap();
    let build = |kernels| {
        let vb = VarBuilder::from_tensors(weights.clone(), DType::F32, &Device::Cpu);
        arch.build_with(&config, vb, kernels).unwrap()
    };
    let reference = build(Kernels::Reference);
    let mut steps = Vec::new();
    for isa in Isa::supported() {
        let fast = build(Kernels::Fast(isa));
        steps = fast.steps().expect("a plan lists its steps");
        for &(n, h, w) in inputs {
            let x = Tensor::rand(-1f32, 1f32, (n, 3, h, w), &Device::Cpu).unwrap();
            let expected = reference.forward(&x).unwrap();
            let actual = fast.forward(&x).unwrap();
            assert_eq!(actual.dims(), expected.dims());
            let err = max_relative_error(&actual, &expected).unwrap();
            println!("{} {n}x{h}x{w}: {err:.2e}", isa.name());
            assert!(err <= 1e-4, "{} {n}x{h}x{w}: {err:e}", isa.name());
        }
    }
    steps
}

#[test]
fn every_op_on_the_fast_plan_matches_candle() {
    let steps = compare(every_op(None), &[(1, 33, 40), (2, 32, 32)]);
    for s in &steps {
        println!("{:<16} {:<16} {:?}", s.kernel, s.path, s.nodes);
    }
    let step_of = |node: &str| {
        steps
            .iter()
            .find(|s| s.nodes.iter().any(|n| n == node))
            .unwrap_or_else(|| panic!("no step computes {node}"))
    };
    // The inverted-residual block is one fused step, its add included.
    assert_eq!(step_of("b1.expand").kernel, "mbconv");
    assert_eq!(step_of("b1.expand").nodes.len(), 9);
    assert_eq!(step_of("b1.add").kernel, "mbconv");
    // Conv + batch norm + ReLU in one step; the residual add fused into the second conv.
    assert_eq!(step_of("r.conv1").nodes, ["r.conv1", "r.bn1", "r.bn1.act"]);
    assert_eq!(step_of("r.add").path, "fused kernel");
    // What the kernels cannot run says so.
    assert_eq!(step_of("grouped").path, "candle fallback");
    assert_eq!(step_of("prelu").path, "candle fallback");
    assert_eq!(step_of("maxpool").path, "kernel");
}

/// A fixed input size lets the kernels pick per map side (F(2x2) Winograd on small maps).
#[test]
fn a_fixed_size_graph_matches_candle() {
    compare(every_op(Some((32, 32))), &[(1, 32, 32), (3, 32, 32)]);
}
