//! A [`Graph`] run as candle ops, NCHW: the reference every faster path is held to, what
//! runs on CUDA, and the fallback of the fast plan for a node its kernels cannot run.

use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;

use super::{Activation, DenseLayout, Graph, Node, Op, Pads, Pool};
use crate::layers::{self, DepthwiseConv2d};
use crate::{Classifier, Error, Result};

/// One node, its weights loaded.
pub(crate) enum Layer {
    Conv {
        weight: Tensor,
        bias: Option<Tensor>,
        conv: super::Conv,
    },
    Depthwise {
        conv: DepthwiseConv2d,
        bias: Option<Tensor>,
    },
    /// Batch norm folded to `x * scale + shift`, both `[1, C, 1, 1]`.
    Affine {
        scale: Tensor,
        shift: Tensor,
    },
    Activation(Activation),
    Prelu(Tensor),
    Add,
    Mul,
    GlobalAvgPool,
    MaxPool(Pool),
    AvgPool(Pool),
    Dense {
        /// `[in, out]`.
        weight: Tensor,
        bias: Option<Tensor>,
    },
    Flatten,
    Concat,
    Pad([usize; 4], f32),
    Softmax,
}

fn get(vb: &VarBuilder, shape: &[usize], name: &str) -> Result<Tensor> {
    Ok(vb.get(shape, name)?.to_dtype(DType::F32)?)
}

fn unsupported(node: &Node, what: &str) -> Error {
    Error::Config {
        architecture: super::GRAPH_ARCHITECTURE,
        reason: format!(
            "node {:?} ({}): {what} is not supported by the candle reference",
            node.name,
            node.op.kind()
        ),
    }
}

impl Layer {
    /// Loads `node`'s weights from `vb` (names as the graph gives them, from its root).
    pub(crate) fn load(node: &Node, vb: &VarBuilder) -> Result<Layer> {
        Ok(match &node.op {
            Op::Conv(c) => {
                let weight = get(vb, &c.weight_shape(), &c.weight)?;
                let bias = c
                    .bias
                    .as_ref()
                    .map(|b| -> Result<Tensor> {
                        Ok(get(vb, &[c.out_channels], b)?.reshape((1, c.out_channels, 1, 1))?)
                    })
                    .transpose()?;
                let square = c.kernel[0] == c.kernel[1] && c.stride[0] == c.stride[1];
                if c.is_depthwise() && square && c.dilation == [1, 1] {
                    // candle's grouped convolution loops over the groups, ~10x slower.
                    let conv = DepthwiseConv2d::from_tensor(weight, c.stride[0], c.pads.padding())?;
                    Layer::Depthwise { conv, bias }
                } else {
                    if c.stride[0] != c.stride[1] || c.dilation[0] != c.dilation[1] {
                        return Err(unsupported(node, "a stride or dilation differing by axis"));
                    }
                    Layer::Conv {
                        weight,
                        bias,
                        conv: c.clone(),
                    }
                }
            }
            Op::BatchNorm(bn) => {
                let c = bn.channels;
                let gamma = get(vb, &[c], &bn.scale)?;
                let beta = get(vb, &[c], &bn.bias)?;
                let mean = get(vb, &[c], &bn.mean)?;
                let var = get(vb, &[c], &bn.var)?;
                let scale = gamma.broadcast_div(&(var + bn.epsilon)?.sqrt()?)?;
                let shift = (beta - mean.mul(&scale)?)?;
                Layer::Affine {
                    scale: scale.reshape((1, c, 1, 1))?,
                    shift: shift.reshape((1, c, 1, 1))?,
                }
            }
            Op::Activation { function } => Layer::Activation(*function),
            Op::Prelu { channels, slope } => Layer::Prelu(get(vb, &[*channels], slope)?),
            Op::Add => Layer::Add,
            Op::Mul => Layer::Mul,
            Op::GlobalAvgPool => Layer::GlobalAvgPool,
            Op::MaxPool(p) => Layer::MaxPool(p.clone()),
            Op::AvgPool(p) => Layer::AvgPool(p.clone()),
            Op::Dense(d) => {
                let weight = match d.layout {
                    DenseLayout::OutIn => get(vb, &[d.out_features, d.in_features], &d.weight)?
                        .t()?
                        .contiguous()?,
                    DenseLayout::InOut => get(vb, &[d.in_features, d.out_features], &d.weight)?,
                };
                let bias = d
                    .bias
                    .as_ref()
                    .map(|b| get(vb, &[d.out_features], b))
                    .transpose()?;
                Layer::Dense { weight, bias }
            }
            Op::Flatten => Layer::Flatten,
            Op::Concat => Layer::Concat,
            Op::Pad { pads, value } => Layer::Pad(*pads, *value),
            Op::Softmax => Layer::Softmax,
        })
    }

    /// The node's output from its inputs (NCHW maps, `[N, F]` flat values).
    pub(crate) fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor> {
        let x = inputs[0];
        Ok(match self {
            Layer::Conv { weight, bias, conv } => {
                let (_, _, h, w) = x.dims4()?;
                let [t, l, b, r] = match conv.pads {
                    Pads::Explicit(p) => p,
                    Pads::SameUpper => {
                        let span = |k: usize| (k - 1) * conv.dilation[0] + 1;
                        let (top, bottom, _) =
                            crate::Padding::TfSame.rows(h, span(conv.kernel[0]), conv.stride[0]);
                        let (left, right, _) =
                            crate::Padding::TfSame.cols(w, span(conv.kernel[1]), conv.stride[1]);
                        [top, left, bottom, right]
                    }
                };
                let y = if t == l && l == b && b == r {
                    x.conv2d(weight, t, conv.stride[0], conv.dilation[0], conv.groups)?
                } else {
                    pad_with(x, [t, l, b, r], 0.0)?.conv2d(
                        weight,
                        0,
                        conv.stride[0],
                        conv.dilation[0],
                        conv.groups,
                    )?
                };
                match bias {
                    Some(b) => y.broadcast_add(b)?,
                    None => y,
                }
            }
            Layer::Depthwise { conv, bias } => {
                let y = conv.forward(x)?;
                match bias {
                    Some(b) => y.broadcast_add(b)?,
                    None => y,
                }
            }
            Layer::Affine { scale, shift } if x.rank() == 2 => {
                let c = scale.elem_count();
                x.broadcast_mul(&scale.reshape((1, c))?)?
                    .broadcast_add(&shift.reshape((1, c))?)?
            }
            Layer::Affine { scale, shift } => x.broadcast_mul(scale)?.broadcast_add(shift)?,
            Layer::Activation(f) => activation(x, *f)?,
            Layer::Prelu(slope) => {
                let c = slope.dim(0)?;
                let slope = match x.rank() {
                    4 => slope.reshape((1, c, 1, 1))?,
                    _ => slope.reshape((1, c))?,
                };
                (x.relu()? - x.neg()?.relu()?.broadcast_mul(&slope)?)?
            }
            Layer::Add | Layer::Mul => {
                let (a, b) = broadcastable(inputs[0], inputs[1])?;
                if matches!(self, Layer::Add) {
                    a.broadcast_add(&b)?
                } else {
                    a.broadcast_mul(&b)?
                }
            }
            Layer::GlobalAvgPool => x.mean_keepdim(D::Minus1)?.mean_keepdim(D::Minus2)?,
            Layer::MaxPool(p) => {
                let (_, _, h, w) = x.dims4()?;
                let padded = pad_with(x, window_pads(p, (h, w)), f32::NEG_INFINITY)?;
                padded.max_pool2d_with_stride(
                    (p.kernel[0], p.kernel[1]),
                    (p.stride[0], p.stride[1]),
                )?
            }
            Layer::AvgPool(p) => {
                let (_, _, h, w) = x.dims4()?;
                let pads = window_pads(p, (h, w));
                // sum(x) / count over each window: the count of input pixels, or of input and
                // explicit padding (never of the ceil-mode overhang), as a pooled mask.
                let mask_pads = if p.count_include_pad {
                    let [t, l, b, r] = p.pads;
                    let inner = Tensor::ones((1, 1, h + t + b, w + l + r), DType::F32, x.device())?;
                    pad_with(&inner, [0, 0, pads[2] - b, pads[3] - r], 0.0)?
                } else {
                    pad_with(
                        &Tensor::ones((1, 1, h, w), DType::F32, x.device())?,
                        pads,
                        0.0,
                    )?
                };
                let (k, s) = ((p.kernel[0], p.kernel[1]), (p.stride[0], p.stride[1]));
                let sums = pad_with(x, pads, 0.0)?.avg_pool2d_with_stride(k, s)?;
                let counts = mask_pads.avg_pool2d_with_stride(k, s)?;
                sums.broadcast_div(&counts)?
            }
            Layer::Dense { weight, bias } => {
                let x = flat(x)?;
                let y = x.matmul(weight)?;
                match bias {
                    Some(b) => y.broadcast_add(b)?,
                    None => y,
                }
            }
            Layer::Flatten => flat(x)?,
            Layer::Concat => Tensor::cat(inputs, 1)?,
            Layer::Pad(pads, value) => pad_with(x, *pads, *value)?,
            Layer::Softmax => candle_nn::ops::softmax(&flat(x)?, 1)?,
        })
    }
}

/// `[N, C, H, W]` (or `[N, F]`) as `[N, C * H * W]`.
fn flat(x: &Tensor) -> Result<Tensor> {
    let n = x.dim(0)?;
    Ok(x.reshape((n, x.elem_count() / n.max(1)))?)
}

/// The two operands of an elementwise op, a per-channel one shaped to broadcast over the
/// other: `[N, C]` against a map becomes `[N, C, 1, 1]`, a `[N, C, 1, 1]` against flat
/// features `[N, C]`.
fn broadcastable(a: &Tensor, b: &Tensor) -> Result<(Tensor, Tensor)> {
    let fit = |small: &Tensor, like: &Tensor| -> Result<Tensor> {
        Ok(match (small.rank(), like.rank()) {
            (2, 4) => small.unsqueeze(2)?.unsqueeze(3)?,
            (4, 2) => flat(small)?,
            _ => small.clone(),
        })
    };
    if a.elem_count() >= b.elem_count() {
        Ok((a.clone(), fit(b, a)?))
    } else {
        Ok((fit(a, b)?, b.clone()))
    }
}

pub(crate) fn activation(x: &Tensor, f: Activation) -> Result<Tensor> {
    Ok(match f {
        Activation::Relu => x.relu()?,
        Activation::Clip { min, max } => x.clamp(min, max)?,
        Activation::HardSwish => (x * ((x + 3.0)?.clamp(0f32, 6f32)? / 6.0)?)?,
        Activation::HardSigmoid { alpha, beta } => x
            .affine(f64::from(alpha), f64::from(beta))?
            .clamp(0f32, 1f32)?,
        Activation::Sigmoid => candle_nn::ops::sigmoid(x)?,
        Activation::Silu => x.silu()?,
        Activation::LeakyRelu { alpha } => (x.relu()? - (x.neg()?.relu()? * f64::from(alpha))?)?,
        Activation::Tanh => x.tanh()?,
    })
}

/// The zeros (or `-inf`) a pooling window needs around an `h x w` map: the explicit pads,
/// and at the end what a ceil-mode last window reaches past them.
fn window_pads(p: &Pool, (h, w): (usize, usize)) -> [usize; 4] {
    let [t, l, b, r] = p.pads;
    let (oh, ow) = p.out_size((h, w)).unwrap_or((1, 1));
    let reach = |out: usize, k: usize, s: usize, len: usize, before: usize, after: usize| {
        ((out - 1) * s + k).saturating_sub(len + before).max(after)
    };
    [
        t,
        l,
        reach(oh, p.kernel[0], p.stride[0], h, t, b),
        reach(ow, p.kernel[1], p.stride[1], w, l, r),
    ]
}

/// `x` (NCHW) with `[top, left, bottom, right]` rows and columns of `value` around it.
fn pad_with(x: &Tensor, [t, l, b, r]: [usize; 4], value: f32) -> Result<Tensor> {
    if value == 0.0 {
        return Ok(x.pad_with_zeros(2, t, b)?.pad_with_zeros(3, l, r)?);
    }
    let (n, c, h, w) = x.dims4()?;
    let full = |rows: usize, cols: usize| {
        Tensor::full(value, (n, c, rows, cols), x.device()).and_then(|t| t.to_dtype(x.dtype()))
    };
    let mut y = x.clone();
    if t + b > 0 {
        y = Tensor::cat(&[&full(t, w)?, &y, &full(b, w)?], 2)?;
    }
    if l + r > 0 {
        let rows = h + t + b;
        y = Tensor::cat(&[&full(rows, l)?, &y, &full(rows, r)?], 3)?;
    }
    Ok(y)
}

/// A graph as candle ops: [`Classifier`] over NCHW tensors, on any device.
pub struct GraphNetwork {
    layers: Vec<Layer>,
    inputs: Vec<Vec<usize>>,
    /// Per value, the last node that reads it (values are dropped after it).
    last_use: Vec<usize>,
    output: usize,
    classes: usize,
}

impl GraphNetwork {
    /// Loads every node's weights from `vb` (after [`Graph::validate`]).
    pub fn new(graph: &Graph, vb: VarBuilder) -> Result<Self> {
        let resolved = graph.validate()?;
        let classes = graph.classes()?;
        let layers = graph
            .nodes
            .iter()
            .map(|node| Layer::load(node, &vb))
            .collect::<Result<Vec<_>>>()?;
        let mut last_use = vec![0; graph.nodes.len() + 1];
        for (i, reads) in resolved.inputs.iter().enumerate() {
            for &v in reads {
                last_use[v] = i;
            }
        }
        last_use[resolved.output] = usize::MAX;
        Ok(GraphNetwork {
            layers,
            inputs: resolved.inputs,
            last_use,
            output: resolved.output,
            classes,
        })
    }
}

impl Classifier for GraphNetwork {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        layers::check_input(x, super::GRAPH_ARCHITECTURE)?;
        let mut values: Vec<Option<Tensor>> = vec![None; self.layers.len() + 1];
        values[0] = Some(x.clone());
        for (i, (layer, reads)) in self.layers.iter().zip(&self.inputs).enumerate() {
            let args: Vec<&Tensor> = reads
                .iter()
                .map(|&v| values[v].as_ref().expect("read before its last use"))
                .collect();
            let y = layer.forward(&args)?;
            for &v in reads {
                if self.last_use[v] == i {
                    values[v] = None;
                }
            }
            values[i + 1] = Some(y);
        }
        let y = values[self.output].take().expect("the output is kept");
        flat(&y)
    }

    fn num_classes(&self) -> usize {
        self.classes
    }
}

/// Runs one layer on NHWC buffers: what the fast plan calls for a node its kernels cannot run.
pub(crate) fn run_nhwc(
    layer: &Layer,
    inputs: &[(&[f32], super::Shape)],
    batch: usize,
    output: &mut [f32],
) -> Result<()> {
    let tensors = inputs
        .iter()
        .map(|(data, shape)| nhwc_to_tensor(data, *shape, batch))
        .collect::<Result<Vec<_>>>()?;
    let refs: Vec<&Tensor> = tensors.iter().collect();
    let y = layer.forward(&refs)?;
    let y = match y.rank() {
        4 => y.permute((0, 2, 3, 1))?.contiguous()?,
        _ => y.contiguous()?,
    };
    let values = y.flatten_all()?.to_vec1::<f32>()?;
    output[..values.len()].copy_from_slice(&values);
    Ok(())
}

fn nhwc_to_tensor(data: &[f32], shape: super::Shape, batch: usize) -> Result<Tensor> {
    let data = &data[..batch * shape.numel()];
    Ok(match shape {
        super::Shape::Map { c, h, w } => Tensor::from_slice(data, (batch, h, w, c), &Device::Cpu)?
            .permute((0, 3, 1, 2))?
            .contiguous()?,
        super::Shape::Flat(f) => Tensor::from_slice(data, (batch, f), &Device::Cpu)?,
    })
}
