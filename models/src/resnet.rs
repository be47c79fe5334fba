//! ResNet (He et al., "Deep Residual Learning for Image Recognition", 2015) as torchvision
//! builds it, described once as a [`Graph`]: v1.5, the stride on the 3x3 convolution. The
//! weights are torchvision's `state_dict` as it is: `layer1.0.conv1.weight`,
//! `layer2.0.downsample.1.running_var`, `fc.bias`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::graph::{Activation, Graph, GraphBuilder, Op, Pool, MAX_DIM};
use crate::torch::TorchLayers;
use crate::{Architecture, Error, Result};

/// torchvision's batch norm epsilon (torch's default).
const EPS: f64 = 1e-5;
const RELU: Option<Activation> = Some(Activation::Relu);

/// The config of every depth: torchvision's constructor arguments.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub classes: usize,
    /// Blocks per stage; `None`: the registry name's (`[3, 4, 6, 3]` for ResNet50).
    pub layers: Option<[usize; 4]>,
    /// Each stage's `planes`: a basic block's width, a bottleneck's inner width (its output
    /// is 4 times that). The stem keeps its 64 channels.
    pub planes: [usize; 4],
    /// `(height, width)` when the network is for one input size; `None`: any size.
    pub input_size: Option<(usize, usize)>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            classes: 1000,
            layers: None,
            planes: [64, 128, 256, 512],
            input_size: None,
        }
    }
}

/// A ResNet of `bottleneck` blocks (else basic ones), `layers` blocks per stage by default.
fn graph(
    name: &'static str,
    bottleneck: bool,
    layers: [usize; 4],
    config: &Value,
) -> Result<Graph> {
    let c: Config = crate::parse_config(name, config)?;
    let layers = c.layers.unwrap_or(layers);
    // Bounded before the loops run: the graph's own checks come after it is built.
    if layers.iter().any(|&n| n > 512) || c.planes.iter().any(|&p| p > MAX_DIM) {
        let reason = format!(
            "layers {layers:?} (each <= 512) or planes {:?} too large",
            c.planes
        );
        return Err(Error::Config {
            architecture: name,
            reason,
        });
    }
    let expansion = if bottleneck { 4 } else { 1 };
    let mut b = GraphBuilder::new(c.input_size);
    let input = b.input();
    let x = b.conv2d_bn(&input, ("conv1", "bn1"), [3, 64, 7, 2, 1], EPS, RELU);
    let pool = Pool {
        kernel: [3, 3],
        stride: [2, 2],
        pads: [1; 4],
        ceil_mode: false,
        count_include_pad: false,
    };
    let mut x = b.node("maxpool", Op::MaxPool(pool), &[&x]);
    let mut cin = 64;
    for (stage, (&blocks, &planes)) in layers.iter().zip(&c.planes).enumerate() {
        let out = planes * expansion;
        for i in 0..blocks {
            let p = format!("layer{}.{i}", stage + 1);
            let stride = if stage > 0 && i == 0 { 2 } else { 1 };
            // Each convolution (in, out, kernel, stride) with its batch norm.
            let convs = match bottleneck {
                true => vec![
                    [cin, planes, 1, 1],
                    [planes, planes, 3, stride],
                    [planes, out, 1, 1],
                ],
                false => vec![[cin, planes, 3, stride], [planes, planes, 3, 1]],
            };
            let mut y = x.clone();
            for (j, [ci, co, k, s]) in convs.iter().copied().enumerate() {
                let (conv, bn) = (format!("{p}.conv{}", j + 1), format!("{p}.bn{}", j + 1));
                let act = if j + 1 < convs.len() { RELU } else { None };
                y = b.conv2d_bn(&y, (&conv, &bn), [ci, co, k, s, 1], EPS, act);
            }
            // The shortcut after the main branch, as torchvision's forward computes it.
            let shortcut = if stride != 1 || cin != out {
                let (conv, bn) = (format!("{p}.downsample.0"), format!("{p}.downsample.1"));
                b.conv2d_bn(&x, (&conv, &bn), [cin, out, 1, stride, 1], EPS, None)
            } else {
                x.clone()
            };
            let y = b.node(format!("{p}.add"), Op::Add, &[&y, &shortcut]);
            x = b.activation(&y, format!("{p}.relu"), Activation::Relu);
            cin = out;
        }
    }
    let x = b.node("avgpool", Op::GlobalAvgPool, &[&x]);
    let x = b.node("flatten", Op::Flatten, &[&x]);
    let x = b.linear(&x, "fc", (cin, c.classes));
    b.finish(&x)
}

/// torchvision's `resnet18`: basic blocks, `[2, 2, 2, 2]`.
pub fn resnet18(config: &Value) -> Result<Graph> {
    graph("resnet18", false, [2, 2, 2, 2], config)
}

/// torchvision's `resnet34`: basic blocks, `[3, 4, 6, 3]`.
pub fn resnet34(config: &Value) -> Result<Graph> {
    graph("resnet34", false, [3, 4, 6, 3], config)
}

/// torchvision's `resnet50`: bottleneck blocks, `[3, 4, 6, 3]`.
pub fn resnet50(config: &Value) -> Result<Graph> {
    graph("resnet50", true, [3, 4, 6, 3], config)
}

pub(crate) const RESNET18: Architecture = crate::graph_architecture!(
    "resnet18",
    "torchvision's ResNet18: 8 basic residual blocks",
    resnet18
);

pub(crate) const RESNET34: Architecture = crate::graph_architecture!(
    "resnet34",
    "torchvision's ResNet34: 16 basic residual blocks",
    resnet34
);

pub(crate) const RESNET50: Architecture = crate::graph_architecture!(
    "resnet50",
    "torchvision's ResNet50: 16 bottleneck residual blocks",
    resnet50
);
