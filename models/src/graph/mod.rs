//! A network as data: typed nodes over named values, with shape inference and validation.
//!
//! One [`Graph`] describes a network once, and everything else is read from it:
//!
//! - [`Graph::tensor_specs`]: the tensors a weights file must hold, with their shapes;
//! - [`reference::GraphNetwork`]: the network as candle ops (the reference, and what runs on
//!   CUDA);
//! - [`planner::plan`]: the network lowered onto the fast CPU kernels, node by node, with
//!   batch norm folded, activations and residual adds fused, and a candle fallback for any
//!   node the kernels cannot run.
//!
//! Values are NCHW maps `[N, C, H, W]` or flat features `[N, F]`; the batch is implicit. A
//! node's output is named after the node, the graph's input by [`GraphInput::name`], and a
//! node may only read values defined before it, so the node list is a topological order.
//! Weights are named by the tensors of the weights file (`features.0.weight`,
//! `onnx::Conv_123`); a tensor may be read by several nodes.
//!
//! Graphs are serde types: an imported model's graph is stored in its manifest
//! (`"architecture": "graph"`, `"config": {"graph": ...}`), and the built-in architectures
//! build theirs in Rust.

pub mod planner;
pub mod reference;

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::{Error, Result, Role, TensorSpec};

/// The registry name of graphs carried in a manifest's config.
pub const GRAPH_ARCHITECTURE: &str = "graph";

/// At most this many nodes: far above any image classifier (ResNet50 has ~180 after
/// import), and a bound on what a hostile manifest can make the loader walk.
pub const MAX_NODES: usize = 4096;

/// At most this many channels, features or kernel taps per side: a bound on the buffers a
/// hostile graph can ask for before any weight is read.
pub const MAX_DIM: usize = 1 << 16;

/// A network: its input, its nodes in a topological order, and the value it answers.
///
/// Every architecture is one; the tensor list, the candle reference and the plan over the
/// fast kernels are all read from it.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use edgemm_models::graph::{planner, reference::GraphNetwork};
/// use edgemm_models::{architecture, init, Classifier, Isa};
///
/// let config = serde_json::json!({ "classes": 10 });
/// let graph = architecture("alexnet-small")?.graph(&config)?;
/// let summary = graph.summary()?; // per node: op, output shape, parameters, FLOPs
/// assert_eq!(summary[0].op, "conv");
/// assert_eq!(summary.last().unwrap().shape, "10");
///
/// // Seeded weights with the graph's tensor list, then the graph read two ways.
/// let weights = init::seeded_weights(&graph.tensor_specs()?, 7, &Device::Cpu)?;
/// let vb = candle_nn::VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu);
/// let reference = GraphNetwork::new(&graph, vb.clone())?;
/// let plan = planner::plan(&graph, &vb, Isa::best(), "alexnet-small")?;
/// let x = Tensor::randn(0f32, 1.0, (2, 3, 32, 32), &Device::Cpu)?;
/// let (a, b) = (reference.forward(&x)?, plan.forward(&x)?);
/// let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
/// assert!(diff < 1e-3, "candle and the fast kernels differ by {diff}");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Graph {
    pub input: GraphInput,
    pub nodes: Vec<Node>,
    /// The `[N, classes]` value the network answers.
    pub output: String,
}

/// The network input: an NCHW batch of normalised images.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphInput {
    pub name: String,
    /// Always 3: edgemm feeds RGB images.
    pub channels: usize,
    /// The input size the network requires, or `None` when any size works.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<(usize, usize)>,
}

/// One operation and the values it reads.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// Unique; also the name of the node's output.
    pub name: String,
    pub inputs: Vec<String>,
    pub op: Op,
}

/// Zeros around a map, as a convolution or a pooling window sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pads {
    /// `[top, left, bottom, right]`, as ONNX's `pads` lists them.
    Explicit([usize; 4]),
    /// TensorFlow's "SAME" (ONNX `auto_pad = SAME_UPPER`): output `ceil(in / stride)`, the
    /// odd zero after. Depends on the input size.
    SameUpper,
}

impl Pads {
    pub const NONE: Pads = Pads::Explicit([0; 4]);

    /// Symmetric padding of `p` on every side.
    pub fn same(p: usize) -> Self {
        Pads::Explicit([p; 4])
    }

    /// The kernels' padding rule for square windows.
    pub fn padding(self) -> crate::Padding {
        match self {
            Pads::SameUpper => crate::Padding::TfSame,
            Pads::Explicit([t, l, b, r]) if t == l && l == b && b == r => {
                crate::Padding::Symmetric(t)
            }
            Pads::Explicit([top, left, bottom, right]) => crate::Padding::Explicit {
                top,
                left,
                bottom,
                right,
            },
        }
    }
}

/// A 2-D convolution: dense (`groups == 1`), depthwise (`groups == in == out channels`) or
/// grouped. Weight `[out, in / groups, kh, kw]` (PyTorch's and ONNX's OIHW).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conv {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub pads: Pads,
    pub dilation: [usize; 2],
    pub groups: usize,
    pub weight: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bias: Option<String>,
}

impl Conv {
    /// A square convolution with symmetric padding, groups 1, no dilation.
    pub fn square(
        (in_channels, out_channels, kernel): (usize, usize, usize),
        stride: usize,
        pads: Pads,
        weight: impl Into<String>,
        bias: Option<String>,
    ) -> Self {
        Conv {
            in_channels,
            out_channels,
            kernel: [kernel; 2],
            stride: [stride; 2],
            pads,
            dilation: [1, 1],
            groups: 1,
            weight: weight.into(),
            bias,
        }
    }

    pub fn is_depthwise(&self) -> bool {
        self.groups > 1 && self.groups == self.in_channels && self.groups == self.out_channels
    }

    fn weight_shape(&self) -> Vec<usize> {
        vec![
            self.out_channels,
            self.in_channels / self.groups.max(1),
            self.kernel[0],
            self.kernel[1],
        ]
    }
}

/// Inference batch norm, `(x - mean) / sqrt(var + epsilon) * scale + bias` per channel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchNorm {
    pub channels: usize,
    pub epsilon: f64,
    pub scale: String,
    pub bias: String,
    pub mean: String,
    pub var: String,
}

impl BatchNorm {
    /// PyTorch's names under `prefix` (`weight`, `bias`, `running_mean`, `running_var`).
    pub fn torch(prefix: &str, channels: usize, epsilon: f64) -> Self {
        BatchNorm {
            channels,
            epsilon,
            scale: format!("{prefix}.weight"),
            bias: format!("{prefix}.bias"),
            mean: format!("{prefix}.running_mean"),
            var: format!("{prefix}.running_var"),
        }
    }
}

/// Max or average pooling over a window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub pads: [usize; 4],
    /// Output size rounded up (a last window may start in the padding's end), as ONNX's and
    /// PyTorch's `ceil_mode`.
    #[serde(default)]
    pub ceil_mode: bool,
    /// Average pooling only: whether padded zeros count in a window's mean.
    #[serde(default)]
    pub count_include_pad: bool,
}

impl Pool {
    /// A `k x k` window at stride `k`, no padding (`nn.MaxPool2d(k)`).
    pub fn square(k: usize) -> Self {
        Pool {
            kernel: [k; 2],
            stride: [k; 2],
            pads: [0; 4],
            ceil_mode: false,
            count_include_pad: false,
        }
    }

    /// Output rows and columns for an `h x w` map, or `None` when the window does not fit.
    pub fn out_size(&self, (h, w): (usize, usize)) -> Option<(usize, usize)> {
        let axis = |len: usize, k: usize, s: usize, before: usize, after: usize| {
            let span = (len + before + after).checked_sub(k)?;
            if s == 0 {
                return None;
            }
            let mut out = if self.ceil_mode {
                span.div_ceil(s) + 1
            } else {
                span / s + 1
            };
            // A window that would start inside the end padding is dropped (PyTorch's rule).
            if self.ceil_mode && (out - 1) * s >= len + before {
                out -= 1;
            }
            Some(out)
        };
        let [t, l, b, r] = self.pads;
        Some((
            axis(h, self.kernel[0], self.stride[0], t, b)?,
            axis(w, self.kernel[1], self.stride[1], l, r)?,
        ))
    }
}

/// A fully connected layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dense {
    pub in_features: usize,
    pub out_features: usize,
    pub weight: String,
    /// `[out, in]` (PyTorch's Linear, ONNX Gemm with `transB = 1`) or `[in, out]` (MatMul).
    #[serde(default)]
    pub layout: DenseLayout,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bias: Option<String>,
}

impl Dense {
    /// PyTorch's `nn.Linear` under `prefix`: `{prefix}.weight` `[out, in]`, `{prefix}.bias`.
    pub fn torch(prefix: &str, in_features: usize, out_features: usize) -> Self {
        Dense {
            in_features,
            out_features,
            weight: format!("{prefix}.weight"),
            layout: DenseLayout::OutIn,
            bias: Some(format!("{prefix}.bias")),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DenseLayout {
    #[default]
    OutIn,
    InOut,
}

/// An elementwise function of one value.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Activation {
    Relu,
    /// `min(max(x, min), max)`; ReLU6 is `Clip { 0, 6 }`.
    Clip {
        min: f32,
        max: f32,
    },
    /// `x * relu6(x + 3) / 6`.
    HardSwish,
    /// `max(0, min(1, alpha * x + beta))`.
    HardSigmoid {
        alpha: f32,
        beta: f32,
    },
    Sigmoid,
    /// `x * sigmoid(x)` (swish).
    Silu,
    /// `x` where positive, `alpha * x` elsewhere.
    LeakyRelu {
        alpha: f32,
    },
    Tanh,
}

impl Activation {
    pub const RELU6: Activation = Activation::Clip { min: 0.0, max: 6.0 };

    /// The activation of one value: the definition every kernel and the reference follow.
    #[inline(always)]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Activation::Relu => x.max(0.0),
            Activation::Clip { min, max } => x.max(min).min(max),
            Activation::HardSwish => x * (x + 3.0).clamp(0.0, 6.0) * (1.0 / 6.0),
            Activation::HardSigmoid { alpha, beta } => (alpha * x + beta).clamp(0.0, 1.0),
            Activation::Sigmoid => 1.0 / (1.0 + (-x).exp()),
            Activation::Silu => x / (1.0 + (-x).exp()),
            Activation::LeakyRelu { alpha } => {
                if x >= 0.0 {
                    x
                } else {
                    alpha * x
                }
            }
            Activation::Tanh => x.tanh(),
        }
    }
}

/// What a node computes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Op {
    Conv(Conv),
    BatchNorm(BatchNorm),
    Activation {
        function: Activation,
    },
    /// `x` where positive, `slope[c] * x` elsewhere; `slope` holds `channels` values (or
    /// one, shared).
    Prelu {
        channels: usize,
        slope: String,
    },
    /// Two values of the same shape, or a map and a per-channel `[C, 1, 1]` value (either
    /// side); a flat value and a `[F]` one likewise.
    Add,
    /// As [`Op::Add`]: squeeze-excitation multiplies a map by a per-channel gate.
    Mul,
    /// `[N, C, H, W]` to `[N, C, 1, 1]`.
    GlobalAvgPool,
    MaxPool(Pool),
    AvgPool(Pool),
    Dense(Dense),
    /// `[N, C, H, W]` to `[N, C * H * W]` in NCHW order (ONNX `Flatten`, `axis = 1`).
    Flatten,
    /// Along the channels of maps of one size.
    Concat,
    /// Constant padding of a map, `[top, left, bottom, right]`.
    Pad {
        pads: [usize; 4],
        value: f32,
    },
    /// Over the features of a flat value.
    Softmax,
}

impl Op {
    /// A short name for listings and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Conv(c) if c.is_depthwise() => "conv (depthwise)",
            Op::Conv(c) if c.groups > 1 => "conv (grouped)",
            Op::Conv(_) => "conv",
            Op::BatchNorm(_) => "batch_norm",
            Op::Activation { function } => match function {
                Activation::Relu => "relu",
                Activation::Clip { .. } => "clip",
                Activation::HardSwish => "hard_swish",
                Activation::HardSigmoid { .. } => "hard_sigmoid",
                Activation::Sigmoid => "sigmoid",
                Activation::Silu => "silu",
                Activation::LeakyRelu { .. } => "leaky_relu",
                Activation::Tanh => "tanh",
            },
            Op::Prelu { .. } => "prelu",
            Op::Add => "add",
            Op::Mul => "mul",
            Op::GlobalAvgPool => "global_avg_pool",
            Op::MaxPool(_) => "max_pool",
            Op::AvgPool(_) => "avg_pool",
            Op::Dense(_) => "dense",
            Op::Flatten => "flatten",
            Op::Concat => "concat",
            Op::Pad { .. } => "pad",
            Op::Softmax => "softmax",
        }
    }

    /// How many inputs the op reads (`None`: any number, at least one).
    fn arity(&self) -> Option<usize> {
        match self {
            Op::Add | Op::Mul => Some(2),
            Op::Concat => None,
            _ => Some(1),
        }
    }
}

/// The shape of one value, without the batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Shape {
    /// `[C, H, W]`.
    Map { c: usize, h: usize, w: usize },
    /// `[F]`.
    Flat(usize),
}

impl Shape {
    pub fn numel(self) -> usize {
        match self {
            Shape::Map { c, h, w } => c * h * w,
            Shape::Flat(f) => f,
        }
    }

    pub fn channels(self) -> usize {
        match self {
            Shape::Map { c, .. } => c,
            Shape::Flat(f) => f,
        }
    }

    /// A map of one pixel per channel, or a flat value: what broadcasts over a map's channels.
    fn is_per_channel(self) -> bool {
        matches!(self, Shape::Map { h: 1, w: 1, .. } | Shape::Flat(_))
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Shape::Map { c, h, w } => write!(f, "{c}x{h}x{w}"),
            Shape::Flat(n) => write!(f, "{n}"),
        }
    }
}

/// A graph whose names are resolved to value indices: value 0 is the input, value `i + 1`
/// node `i`'s output.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// Per node, the values it reads.
    pub inputs: Vec<Vec<usize>>,
    /// The value the network answers.
    pub output: usize,
}

/// The input size validation probes a graph without a fixed one at.
pub(crate) const PROBE_SIZE: (usize, usize) = (224, 224);

impl Graph {
    fn error(&self, reason: impl Into<String>) -> Error {
        Error::Config {
            architecture: GRAPH_ARCHITECTURE,
            reason: reason.into(),
        }
    }

    fn node_error(&self, node: &Node, reason: impl std::fmt::Display) -> Error {
        self.error(format!(
            "node {:?} ({}): {reason}",
            node.name,
            node.op.kind()
        ))
    }

    /// Resolves every name: each input must be defined earlier, names must be unique.
    pub fn resolve(&self) -> Result<Resolved> {
        if self.nodes.len() > MAX_NODES {
            return Err(self.error(format!(
                "{} nodes, more than the {MAX_NODES} a graph may have",
                self.nodes.len()
            )));
        }
        let mut index: HashMap<&str, usize> = HashMap::with_capacity(self.nodes.len() + 1);
        index.insert(&self.input.name, 0);
        let mut inputs = Vec::with_capacity(self.nodes.len());
        for (i, node) in self.nodes.iter().enumerate() {
            let reads = node
                .inputs
                .iter()
                .map(|name| {
                    index.get(name.as_str()).copied().ok_or_else(|| {
                        self.node_error(
                            node,
                            format!("reads {name:?}, which no earlier node defines"),
                        )
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            match node.op.arity() {
                Some(n) if reads.len() != n => {
                    return Err(
                        self.node_error(node, format!("takes {n} input(s), given {}", reads.len()))
                    )
                }
                None if reads.is_empty() => {
                    return Err(self.node_error(node, "takes at least one input"))
                }
                _ => {}
            }
            if index.insert(&node.name, i + 1).is_some() {
                return Err(self.node_error(node, "a value of this name is already defined"));
            }
            inputs.push(reads);
        }
        let output = *index
            .get(self.output.as_str())
            .ok_or_else(|| self.error(format!("the output {:?} is not defined", self.output)))?;
        Ok(Resolved { inputs, output })
    }

    /// Checks the graph: names, arities, every node's attributes and shapes at the graph's
    /// input size (or at 224x224 when any size works), and that it answers flat features.
    pub fn validate(&self) -> Result<Resolved> {
        if self.input.channels != 3 {
            return Err(self.error(format!(
                "the input has {} channels; edgemm feeds RGB images (3)",
                self.input.channels
            )));
        }
        let resolved = self.resolve()?;
        let shapes = self.shapes(&resolved, self.input.size.unwrap_or(PROBE_SIZE))?;
        match shapes[resolved.output] {
            Shape::Flat(_) => Ok(resolved),
            Shape::Map { c, h: 1, w: 1 } if c > 0 => Ok(resolved),
            other => Err(self.error(format!(
                "the output {:?} is a {other} map; a classifier answers [N, classes]",
                self.output
            ))),
        }
    }

    /// The number of classes: the output's features.
    pub fn classes(&self) -> Result<usize> {
        let resolved = self.validate()?;
        let shapes = self.shapes(&resolved, self.input.size.unwrap_or(PROBE_SIZE))?;
        Ok(shapes[resolved.output].channels())
    }

    /// The shape of every value for an `h x w` input; an error names the first node that
    /// cannot take its inputs.
    pub fn shapes(&self, resolved: &Resolved, (h, w): (usize, usize)) -> Result<Vec<Shape>> {
        let mut shapes = Vec::with_capacity(self.nodes.len() + 1);
        shapes.push(Shape::Map {
            c: self.input.channels,
            h,
            w,
        });
        for (node, reads) in self.nodes.iter().zip(&resolved.inputs) {
            let inputs: Vec<Shape> = reads.iter().map(|&v| shapes[v]).collect();
            let shape = infer(&node.op, &inputs).map_err(|reason| self.node_error(node, reason))?;
            if shape.numel() == 0 {
                return Err(self.node_error(
                    node,
                    format!("a {h}x{w} input leaves it nothing to compute (output {shape})"),
                ));
            }
            shapes.push(shape);
        }
        Ok(shapes)
    }

    /// Every tensor the weights file must hold, in node order, each once.
    pub fn tensor_specs(&self) -> Result<Vec<TensorSpec>> {
        self.validate()?;
        let mut specs: Vec<TensorSpec> = Vec::new();
        let mut seen: HashMap<String, usize> = HashMap::new();
        for node in &self.nodes {
            for (name, shape, role) in node_tensors(&node.op) {
                match seen.get(&name) {
                    Some(&i) if specs[i].shape != shape => {
                        return Err(self.node_error(
                            node,
                            format!(
                                "reads tensor {name:?} as {shape:?}, an earlier node as {:?}",
                                specs[i].shape
                            ),
                        ))
                    }
                    Some(_) => {}
                    None => {
                        seen.insert(name.clone(), specs.len());
                        specs.push(TensorSpec::new(name, &shape, role));
                    }
                }
            }
        }
        Ok(specs)
    }
}

/// One node's output shape from its inputs' shapes.
pub(crate) fn infer(op: &Op, inputs: &[Shape]) -> std::result::Result<Shape, String> {
    let x = inputs[0];
    let map = |s: Shape| match s {
        Shape::Map { c, h, w } => Ok((c, h, w)),
        Shape::Flat(f) => Err(format!("takes a map, given {f} flat features")),
    };
    let bounded = |what: &str, v: usize| {
        if v == 0 || v > MAX_DIM {
            Err(format!("{what} {v} is outside 1..={MAX_DIM}"))
        } else {
            Ok(())
        }
    };
    Ok(match op {
        Op::Conv(conv) => {
            let (c, h, w) = map(x)?;
            bounded("in_channels", conv.in_channels)?;
            bounded("out_channels", conv.out_channels)?;
            for v in conv.kernel.iter().chain(&conv.stride).chain(&conv.dilation) {
                bounded("kernel, stride or dilation", *v)?;
            }
            bounded("groups", conv.groups)?;
            if c != conv.in_channels {
                return Err(format!("takes {} channels, given {c}", conv.in_channels));
            }
            if conv.in_channels % conv.groups != 0 || conv.out_channels % conv.groups != 0 {
                return Err(format!(
                    "groups {} do not divide {} -> {} channels",
                    conv.groups, conv.in_channels, conv.out_channels
                ));
            }
            let span = |k: usize, d: usize| (k - 1) * d + 1;
            let (kh, kw) = (
                span(conv.kernel[0], conv.dilation[0]),
                span(conv.kernel[1], conv.dilation[1]),
            );
            let (oh, ow) = match conv.pads {
                Pads::SameUpper => (h.div_ceil(conv.stride[0]), w.div_ceil(conv.stride[1])),
                Pads::Explicit([t, l, b, r]) => {
                    let out = |len: usize, k: usize, s: usize, p: usize| {
                        (len + p).checked_sub(k).map_or(0, |span| span / s + 1)
                    };
                    (
                        out(h, kh, conv.stride[0], t + b),
                        out(w, kw, conv.stride[1], l + r),
                    )
                }
            };
            Shape::Map {
                c: conv.out_channels,
                h: oh,
                w: ow,
            }
        }
        Op::BatchNorm(bn) => {
            let c = x.channels();
            if c != bn.channels {
                return Err(format!("normalises {} channels, given {c}", bn.channels));
            }
            if !(bn.epsilon.is_finite() && bn.epsilon >= 0.0) {
                return Err(format!("epsilon {} is not a finite value >= 0", bn.epsilon));
            }
            x
        }
        Op::Activation { function } => {
            let finite = match *function {
                Activation::Clip { min, max } => min.is_finite() && max.is_finite() && min <= max,
                Activation::HardSigmoid { alpha, beta } => alpha.is_finite() && beta.is_finite(),
                Activation::LeakyRelu { alpha } => alpha.is_finite(),
                _ => true,
            };
            if !finite {
                return Err(format!(
                    "parameters {function:?} are not finite (or min > max)"
                ));
            }
            x
        }
        Op::Prelu { channels, .. } => {
            if *channels != 1 && *channels != x.channels() {
                return Err(format!(
                    "has {channels} slopes for {} channels",
                    x.channels()
                ));
            }
            x
        }
        Op::Add | Op::Mul => {
            let (a, b) = (inputs[0], inputs[1]);
            if a == b || (a.channels() == b.channels() && b.is_per_channel()) {
                a
            } else if a.channels() == b.channels() && a.is_per_channel() {
                b
            } else {
                return Err(format!("cannot broadcast {a} with {b}"));
            }
        }
        Op::GlobalAvgPool => {
            let (c, ..) = map(x)?;
            Shape::Map { c, h: 1, w: 1 }
        }
        Op::MaxPool(pool) | Op::AvgPool(pool) => {
            let (c, h, w) = map(x)?;
            for v in pool.kernel.iter().chain(&pool.stride) {
                bounded("kernel or stride", *v)?;
            }
            if pool
                .pads
                .iter()
                .zip([0, 1, 0, 1])
                .any(|(p, a)| *p >= pool.kernel[a])
            {
                return Err(format!(
                    "pads {:?} reach a whole {:?} window",
                    pool.pads, pool.kernel
                ));
            }
            let (oh, ow) = pool
                .out_size((h, w))
                .ok_or_else(|| format!("a {h}x{w} map is smaller than the window"))?;
            Shape::Map { c, h: oh, w: ow }
        }
        Op::Dense(d) => {
            bounded("in_features", d.in_features)?;
            bounded("out_features", d.out_features)?;
            let features = match x {
                Shape::Flat(f) => f,
                Shape::Map { c, h: 1, w: 1 } => c,
                Shape::Map { .. } => {
                    return Err(format!("takes flat features, given a {x} map (flatten it)"))
                }
            };
            if features != d.in_features {
                return Err(format!(
                    "takes {} features, given {features}",
                    d.in_features
                ));
            }
            Shape::Flat(d.out_features)
        }
        Op::Flatten => Shape::Flat(x.numel()),
        Op::Concat => {
            let (_, h, w) = map(x)?;
            let mut channels = 0;
            for s in inputs {
                let (c, sh, sw) = map(*s)?;
                if (sh, sw) != (h, w) {
                    return Err(format!("joins a {sh}x{sw} map to a {h}x{w} one"));
                }
                channels += c;
            }
            Shape::Map { c: channels, h, w }
        }
        Op::Pad { pads, value } => {
            let (c, h, w) = map(x)?;
            if !value.is_finite() || pads.iter().any(|p| *p > MAX_DIM) {
                return Err(format!("pads {pads:?} with {value} are out of range"));
            }
            Shape::Map {
                c,
                h: h + pads[0] + pads[2],
                w: w + pads[1] + pads[3],
            }
        }
        Op::Softmax => match x {
            Shape::Flat(_) | Shape::Map { h: 1, w: 1, .. } => Shape::Flat(x.channels()),
            Shape::Map { .. } => return Err(format!("takes flat features, given a {x} map")),
        },
    })
}

/// The tensors one node reads: name, shape, role.
fn node_tensors(op: &Op) -> Vec<(String, Vec<usize>, Role)> {
    match op {
        Op::Conv(c) => {
            let mut t = vec![(c.weight.clone(), c.weight_shape(), Role::Weight)];
            if let Some(b) = &c.bias {
                t.push((b.clone(), vec![c.out_channels], Role::Bias));
            }
            t
        }
        Op::BatchNorm(bn) => vec![
            (bn.scale.clone(), vec![bn.channels], Role::BnWeight),
            (bn.bias.clone(), vec![bn.channels], Role::BnBias),
            (bn.mean.clone(), vec![bn.channels], Role::BnMean),
            (bn.var.clone(), vec![bn.channels], Role::BnVar),
        ],
        Op::Prelu { channels, slope } => vec![(slope.clone(), vec![*channels], Role::Bias)],
        Op::Dense(d) => {
            let shape = match d.layout {
                DenseLayout::OutIn => vec![d.out_features, d.in_features],
                DenseLayout::InOut => vec![d.in_features, d.out_features],
            };
            let mut t = vec![(d.weight.clone(), shape, Role::Weight)];
            if let Some(b) = &d.bias {
                t.push((b.clone(), vec![d.out_features], Role::Bias));
            }
            t
        }
        _ => Vec::new(),
    }
}

/// One node as `edgemm inspect` lists it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NodeSummary {
    pub name: String,
    pub op: &'static str,
    pub inputs: Vec<String>,
    /// The output's shape, without the batch.
    pub shape: String,
    /// Weight values the node reads.
    pub parameters: usize,
    /// Floating-point operations per image (a multiply-add counts two).
    pub flops: u64,
}

impl Graph {
    /// Every node with its output shape, parameters and FLOPs at the graph's input size (or
    /// 224x224 when any size works).
    pub fn summary(&self) -> Result<Vec<NodeSummary>> {
        let resolved = self.validate()?;
        let shapes = self.shapes(&resolved, self.input.size.unwrap_or(PROBE_SIZE))?;
        Ok(self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, node)| {
                let out = shapes[i + 1];
                let parameters = node_tensors(&node.op)
                    .iter()
                    .map(|(_, shape, _)| shape.iter().product::<usize>())
                    .sum();
                let flops = match &node.op {
                    Op::Conv(c) => {
                        2 * out.numel() as u64
                            * (c.in_channels / c.groups * c.kernel[0] * c.kernel[1]) as u64
                    }
                    Op::Dense(d) => 2 * (d.in_features * d.out_features) as u64,
                    Op::MaxPool(p) | Op::AvgPool(p) => {
                        out.numel() as u64 * (p.kernel[0] * p.kernel[1]) as u64
                    }
                    Op::GlobalAvgPool => shapes[resolved.inputs[i][0]].numel() as u64,
                    _ => out.numel() as u64,
                };
                NodeSummary {
                    name: node.name.clone(),
                    op: node.op.kind(),
                    inputs: node.inputs.clone(),
                    shape: out.to_string(),
                    parameters,
                    flops,
                }
            })
            .collect())
    }
}

/// The config of the `graph` architecture: the graph itself, as `edgemm pack --onnx` writes
/// it into the manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphConfig {
    pub graph: Graph,
}

/// The graph a `graph` manifest's config carries.
pub fn from_config(config: &serde_json::Value) -> Result<Graph> {
    let c: GraphConfig = serde_json::from_value(config.clone()).map_err(|e| Error::Config {
        architecture: GRAPH_ARCHITECTURE,
        reason: e.to_string(),
    })?;
    Ok(c.graph)
}

/// The registry entry for graphs carried in the manifest.
pub(crate) const ARCHITECTURE: crate::Architecture = crate::graph_architecture!(
    GRAPH_ARCHITECTURE,
    "a network described node by node in the manifest (edgemm pack --onnx)",
    from_config
);

/// A graph under construction, for the built-in architectures: each call appends a node
/// reading the given values and returns its output's name.
pub struct GraphBuilder {
    graph: Graph,
}

impl GraphBuilder {
    /// A graph over an RGB input named `input`, of a fixed size or any.
    pub fn new(size: Option<(usize, usize)>) -> Self {
        GraphBuilder {
            graph: Graph {
                input: GraphInput {
                    name: "input".into(),
                    channels: 3,
                    size,
                },
                nodes: Vec::new(),
                output: String::new(),
            },
        }
    }

    pub fn input(&self) -> String {
        self.graph.input.name.clone()
    }

    /// Appends node `name` computing `op` over `inputs`.
    pub fn node(&mut self, name: impl Into<String>, op: Op, inputs: &[&str]) -> String {
        let name = name.into();
        self.graph.nodes.push(Node {
            name: name.clone(),
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            op,
        });
        name
    }

    /// Convolution `conv` (weight `{prefix}.weight`) followed by batch norm `bn` (PyTorch
    /// names) and `activation`: the unit most image classifiers are made of.
    pub fn conv_bn(
        &mut self,
        x: &str,
        (conv_prefix, conv): (&str, Conv),
        (bn_prefix, eps): (&str, f64),
        activation: Option<Activation>,
    ) -> String {
        let channels = conv.out_channels;
        let y = self.node(conv_prefix, Op::Conv(conv), &[x]);
        let mut y = self.node(
            bn_prefix,
            Op::BatchNorm(BatchNorm::torch(bn_prefix, channels, eps)),
            &[&y],
        );
        if let Some(function) = activation {
            y = self.node(
                format!("{bn_prefix}.act"),
                Op::Activation { function },
                &[&y],
            );
        }
        y
    }

    /// Finishes with `output` as the answer, validated.
    pub fn finish(mut self, output: &str) -> Result<Graph> {
        self.graph.output = output.to_string();
        self.graph.validate()?;
        Ok(self.graph)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Graph {
        let mut b = GraphBuilder::new(Some((8, 8)));
        let x = b.input();
        let y = b.conv_bn(
            &x,
            (
                "c1",
                Conv::square((3, 4, 3), 1, Pads::same(1), "c1.weight", None),
            ),
            ("bn1", 1e-5),
            Some(Activation::Relu),
        );
        let y = b.node("gap", Op::GlobalAvgPool, &[&y]);
        let y = b.node("flat", Op::Flatten, &[&y]);
        let fc = Dense {
            in_features: 4,
            out_features: 2,
            weight: "fc.weight".into(),
            layout: DenseLayout::OutIn,
            bias: Some("fc.bias".into()),
        };
        let y = b.node("fc", Op::Dense(fc), &[&y]);
        b.finish(&y).unwrap()
    }

    #[test]
    fn shapes_and_specs_follow_the_nodes() {
        let g = tiny();
        let r = g.validate().unwrap();
        let shapes = g.shapes(&r, (8, 8)).unwrap();
        assert_eq!(shapes[1], Shape::Map { c: 4, h: 8, w: 8 });
        assert_eq!(shapes[r.output], Shape::Flat(2));
        let names: Vec<String> = g
            .tensor_specs()
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(
            names,
            [
                "c1.weight",
                "bn1.weight",
                "bn1.bias",
                "bn1.running_mean",
                "bn1.running_var",
                "fc.weight",
                "fc.bias"
            ]
        );
        assert_eq!(g.classes().unwrap(), 2);
        // Round trip through JSON, as a manifest stores it.
        let json = serde_json::to_string(&g).unwrap();
        assert_eq!(serde_json::from_str::<Graph>(&json).unwrap(), g);
    }

    #[test]
    fn bad_graphs_name_the_node_and_the_problem() {
        let mut g = tiny();
        g.nodes[0].inputs = vec!["nowhere".into()];
        let e = g.validate().unwrap_err().to_string();
        assert!(e.contains("\"c1\"") && e.contains("nowhere"), "{e}");

        let mut g = tiny();
        if let Op::Conv(c) = &mut g.nodes[0].op {
            c.in_channels = 5;
        }
        let e = g.validate().unwrap_err().to_string();
        assert!(e.contains("takes 5 channels, given 3"), "{e}");

        let mut g = tiny();
        g.nodes.swap(2, 3);
        let e = g.validate().unwrap_err().to_string();
        assert!(e.contains("no earlier node defines"), "{e}");

        let mut g = tiny();
        g.output = "c1".into();
        let e = g.validate().unwrap_err().to_string();
        assert!(e.contains("4x8x8 map"), "{e}");
    }

    /// PyTorch's ceil-mode rule: the last window may not start in the end padding.
    #[test]
    fn pool_output_sizes_follow_pytorch() {
        let pool = |k: usize, s: usize, p: usize, ceil_mode| Pool {
            kernel: [k; 2],
            stride: [s; 2],
            pads: [p; 4],
            ceil_mode,
            count_include_pad: false,
        };
        // torch.nn.MaxPool2d(3, 2, 1) on 112 -> 56 (ResNet's stem).
        assert_eq!(pool(3, 2, 1, false).out_size((112, 112)), Some((56, 56)));
        // MaxPool2d(3, 2, ceil_mode=True) on 55 -> 27, on 56 -> 28.
        assert_eq!(pool(3, 2, 0, true).out_size((55, 56)), Some((27, 28)));
        // MaxPool2d(2, 2, padding=1, ceil_mode=True) on 5: (5+2-2)/2 -> ceil 2.5 = 3, +1 = 4,
        // but the 4th window would start at 6 >= 5 + 1: 3.
        assert_eq!(pool(2, 2, 1, true).out_size((5, 5)), Some((3, 3)));
        assert_eq!(pool(3, 1, 0, false).out_size((2, 2)), None);
    }
}
