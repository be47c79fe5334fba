//! MobileNetV3 (Howard et al., "Searching for MobileNetV3", 2019), large and small, as
//! torchvision builds them, described once as a [`Graph`]. The weights are torchvision's
//! `state_dict` as it is: `features.4.block.2.fc1.weight`, `classifier.3.bias`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::graph::{Activation, Graph, GraphBuilder, Op};
use crate::torch::TorchLayers;
use crate::{Architecture, Error, Result};

/// torchvision's batch norm epsilon for MobileNetV3.
const EPS: f64 = 0.001;
const RE: Activation = Activation::Relu;
const HS: Activation = Activation::HardSwish;
/// torchvision's `Hardsigmoid`, `relu6(x + 3) / 6`: squeeze-excitation's gate.
const GATE: Activation = Activation::HardSigmoid {
    alpha: 1.0 / 6.0,
    beta: 0.5,
};

/// A row of torchvision's `_mobilenet_v3_conf` at width 1 (input channels: the previous
/// row's output): kernel, expanded channels, output channels, squeeze-excitation,
/// activation, stride.
type Row = (usize, usize, usize, bool, Activation, usize);

const LARGE_ROWS: &[Row] = &[
    (3, 16, 16, false, RE, 1),
    (3, 64, 24, false, RE, 2),
    (3, 72, 24, false, RE, 1),
    (5, 72, 40, true, RE, 2),
    (5, 120, 40, true, RE, 1),
    (5, 120, 40, true, RE, 1),
    (3, 240, 80, false, HS, 2),
    (3, 200, 80, false, HS, 1),
    (3, 184, 80, false, HS, 1),
    (3, 184, 80, false, HS, 1),
    (3, 480, 112, true, HS, 1),
    (3, 672, 112, true, HS, 1),
    (5, 672, 160, true, HS, 2),
    (5, 960, 160, true, HS, 1),
    (5, 960, 160, true, HS, 1),
];

const SMALL_ROWS: &[Row] = &[
    (3, 16, 16, true, RE, 2),
    (3, 72, 24, false, RE, 2),
    (3, 88, 24, false, RE, 1),
    (5, 96, 40, true, HS, 2),
    (5, 240, 40, true, HS, 1),
    (5, 240, 40, true, HS, 1),
    (5, 120, 48, true, HS, 1),
    (5, 144, 48, true, HS, 1),
    (5, 288, 96, true, HS, 2),
    (5, 576, 96, true, HS, 1),
    (5, 576, 96, true, HS, 1),
];

/// The config of both variants: torchvision's constructor arguments.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Scales every layer's channels, rounded as torchvision's `_make_divisible` (to 8).
    pub width_mult: f64,
    pub classes: usize,
    /// Training only: accepted so torchvision's arguments carry over, ignored here.
    pub dropout: f64,
    /// `(height, width)` when the network is for one input size; `None`: any size.
    pub input_size: Option<(usize, usize)>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            width_mult: 1.0,
            classes: 1000,
            dropout: 0.2,
            input_size: None,
        }
    }
}

/// torchvision's `_make_divisible(v, 8)`: the nearest multiple of 8, at least 8, and not
/// more than 10% below `v`.
fn make_divisible(v: f64) -> usize {
    let rounded = ((v + 4.0) as usize / 8 * 8).max(8);
    rounded + if (rounded as f64) < 0.9 * v { 8 } else { 0 }
}

/// torchvision's `Conv2dNormActivation` `p`: convolution `{p}.0` of shape `s` (see
/// [`TorchLayers::conv2d_bn`]), batch norm `{p}.1`, activation `a`.
fn unit(b: &mut GraphBuilder, x: &str, p: &str, s: [usize; 5], a: Option<Activation>) -> String {
    b.conv2d_bn(x, (&format!("{p}.0"), &format!("{p}.1")), s, EPS, a)
}

fn graph(name: &'static str, rows: &[Row], last: usize, config: &Value) -> Result<Graph> {
    let c: Config = crate::parse_config(name, config)?;
    if !(c.width_mult > 0.0 && c.width_mult <= 100.0) {
        let reason = format!("width_mult {} is outside (0, 100]", c.width_mult);
        return Err(Error::Config {
            architecture: name,
            reason,
        });
    }
    let ch = |v: usize| make_divisible(v as f64 * c.width_mult);
    let mut b = GraphBuilder::new(c.input_size);
    let (input, mut cin) = (b.input(), ch(16));
    let mut x = unit(&mut b, &input, "features.0", [3, cin, 3, 2, 1], Some(HS));
    for (n, &(k, h, out, se, act, stride)) in rows.iter().enumerate() {
        let p = format!("features.{}.block", n + 1);
        let (h, out, a) = (ch(h), ch(out), Some(act));
        // The block's modules: the expansion if any, depthwise, squeeze-excitation, projection.
        let expand = usize::from(h != cin);
        let mut y = x.clone();
        if expand == 1 {
            y = unit(&mut b, &y, &format!("{p}.0"), [cin, h, 1, 1, 1], a);
        }
        let depthwise = format!("{p}.{expand}");
        y = unit(&mut b, &y, &depthwise, [h, h, k, stride, h], a);
        if se {
            let s = format!("{p}.{}", expand + 1);
            let squeeze = make_divisible((h / 4) as f64);
            let g = b.node(format!("{s}.avgpool"), Op::GlobalAvgPool, &[&y]);
            let g = b.conv2d_1x1(&g, &format!("{s}.fc1"), (h, squeeze));
            let g = b.activation(&g, format!("{s}.activation"), RE);
            let g = b.conv2d_1x1(&g, &format!("{s}.fc2"), (squeeze, h));
            let g = b.activation(&g, format!("{s}.scale_activation"), GATE);
            y = b.node(s, Op::Mul, &[&g, &y]);
        }
        let project = format!("{p}.{}", expand + 1 + usize::from(se));
        y = unit(&mut b, &y, &project, [h, out, 1, 1, 1], None);
        if stride == 1 && cin == out {
            y = b.node(format!("features.{}.add", n + 1), Op::Add, &[&y, &x]);
        }
        (x, cin) = (y, out);
    }
    let features = format!("features.{}", rows.len() + 1);
    let x = unit(&mut b, &x, &features, [cin, 6 * cin, 1, 1, 1], Some(HS));
    let x = b.node("avgpool", Op::GlobalAvgPool, &[&x]);
    let x = b.node("flatten", Op::Flatten, &[&x]);
    let last = ch(last);
    let x = b.linear(&x, "classifier.0", (6 * cin, last));
    let x = b.activation(&x, "classifier.1".into(), HS);
    let x = b.linear(&x, "classifier.3", (last, c.classes));
    b.finish(&x)
}

/// torchvision's `mobilenet_v3_large`.
pub fn large(config: &Value) -> Result<Graph> {
    graph("mobilenet-v3-large", LARGE_ROWS, 1280, config)
}

/// torchvision's `mobilenet_v3_small`.
pub fn small(config: &Value) -> Result<Graph> {
    graph("mobilenet-v3-small", SMALL_ROWS, 1024, config)
}

pub(crate) const LARGE: Architecture = crate::graph_architecture!(
    "mobilenet-v3-large",
    "torchvision's MobileNetV3-Large: 15 bottlenecks, squeeze-excitation, hard-swish",
    large
);

pub(crate) const SMALL: Architecture = crate::graph_architecture!(
    "mobilenet-v3-small",
    "torchvision's MobileNetV3-Small: 11 bottlenecks, squeeze-excitation, hard-swish",
    small
);
