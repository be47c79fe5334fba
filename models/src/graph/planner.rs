//! Lowers a [`Graph`] onto the fast CPU kernels: a [`Plan`].
//!
//! The planner walks the nodes in order and, at each one not yet covered, takes the largest
//! pattern that starts there:
//!
//! - an inverted-residual block (1x1 expand + batch norm + activation, depthwise + batch
//!   norm + the same activation (ReLU6, ReLU or hard-swish), 1x1 project + batch norm, and
//!   the residual add when it reads the block's input; or the same without the expansion)
//!   becomes one fused [`MbConv`] step (a squeeze-excitation between depthwise and project
//!   needs the whole map, so those blocks stay separate steps);
//! - a dense convolution with its batch norm, a ReLU, ReLU6 or hard-swish, a residual add
//!   and the add's activation becomes one [`Conv`] step (its fused epilogue, in that
//!   order), whose algorithm (Winograd F(4x4) or F(2x2), direct, implicit-im2col GEMM) the
//!   kernels choose from the layer's shape and, for a fixed input size, its map's side;
//! - a depthwise convolution with its batch norm and ReLU/ReLU6 becomes a [`Depthwise`] step;
//! - a dense layer with its ReLU/ReLU6 a [`Dense`](crate::kernels::dense::Dense) step; pools, activations, batch norm on its
//!   own, adds and multiplies (with a following activation), flatten and concat their own
//!   kernels;
//! - softmax over flat features its own kernel;
//! - any other node (a grouped or dilated convolution, a rectangular window, PReLU, pad)
//!   runs as candle ops on copies of its inputs, and [`Plan::steps`] says so.
//!
//! A node is fused into the one before it only when it is that node's sole reader and the
//! value between them is not the graph's output, so fusing never hides a value another node
//! needs.

use candle_nn::VarBuilder;

use super::{reference, Activation, Graph, Op, Shape, PROBE_SIZE};
use crate::kernels::conv::Conv;
use crate::kernels::depthwise::Depthwise;
use crate::kernels::elementwise::{BinaryOp, PoolKind};
use crate::kernels::mbconv::{self, MbConv, MbConvWeights};
use crate::kernels::{self, Isa};
use crate::plan::{self, Op as Step, Plan, PlanBuilder, Value};
use crate::Result;

/// The planner's view of a graph: who reads each value.
struct Graphed<'a> {
    graph: &'a Graph,
    /// Per node, the values it reads.
    inputs: Vec<Vec<usize>>,
    /// Per value, the nodes reading it (a node reading it twice counts twice).
    readers: Vec<Vec<usize>>,
    output: usize,
    /// Every value's shape at the graph's input size (or the probe size).
    shapes: Vec<Shape>,
}

impl Graphed<'_> {
    /// The node that alone reads node `i`'s output, if there is one and that output is not
    /// the graph's answer.
    fn sole_reader(&self, i: usize) -> Option<usize> {
        let v = i + 1;
        match self.readers[v].as_slice() {
            [only] if v != self.output => Some(*only),
            _ => None,
        }
    }

    fn op(&self, i: usize) -> &Op {
        &self.graph.nodes[i].op
    }

    fn name(&self, i: usize) -> String {
        self.graph.nodes[i].name.clone()
    }
}

/// The kernels' fused activation for a graph activation, where one exists.
fn epilogue(f: Activation) -> Option<kernels::Activation> {
    match f {
        Activation::Relu => Some(kernels::Activation::Relu),
        Activation::Clip { min, max } if min == 0.0 && max == 6.0 => {
            Some(kernels::Activation::Relu6)
        }
        Activation::HardSwish => Some(kernels::Activation::HardSwish),
        _ => None,
    }
}

/// A convolution (or dense layer) with what follows it folded or fused: the nodes covered.
struct Chain {
    /// The convolution's node, then its batch norm's and its activation's, if fused.
    nodes: Vec<usize>,
    batch_norm: Option<usize>,
    activation: kernels::Activation,
}

impl Chain {
    fn last(&self) -> usize {
        *self.nodes.last().expect("a chain starts with its layer")
    }
}

/// From layer `i`: its batch norm when it is the sole reader, then a fusable activation.
fn chain(g: &Graphed, i: usize, allow_bn: bool) -> Chain {
    let mut c = Chain {
        nodes: vec![i],
        batch_norm: None,
        activation: kernels::Activation::None,
    };
    if allow_bn {
        if let Some(j) = g.sole_reader(i) {
            if matches!(g.op(j), Op::BatchNorm(_)) {
                c.nodes.push(j);
                c.batch_norm = Some(j);
            }
        }
    }
    if let Some(j) = g.sole_reader(c.last()) {
        if let Op::Activation { function } = g.op(j) {
            if let Some(a) = epilogue(*function) {
                c.nodes.push(j);
                c.activation = a;
            }
        }
    }
    c
}

/// Reads graph tensors from the root of the weights.
struct Weights<'a> {
    vb: &'a VarBuilder<'a>,
}

impl Weights<'_> {
    fn load(&self, shape: &[usize], name: &str) -> Result<Vec<f32>> {
        plan::load(self.vb, shape, name)
    }

    /// A convolution's OIHW weight and bias (zeros without one), batch norm `bn` folded in.
    fn conv(&self, c: &super::Conv, bn: Option<&super::BatchNorm>) -> Result<(Vec<f32>, Vec<f32>)> {
        let mut weight = self.load(&c.weight_shape(), &c.weight)?;
        let mut bias = match &c.bias {
            Some(b) => self.load(&[c.out_channels], b)?,
            None => vec![0.0; c.out_channels],
        };
        if let Some(bn) = bn {
            let (scale, shift) = self.batch_norm(bn)?;
            let per_channel = weight.len() / bias.len();
            for o in 0..bias.len() {
                weight[o * per_channel..(o + 1) * per_channel]
                    .iter_mut()
                    .for_each(|w| *w *= scale[o]);
                bias[o] = bias[o] * scale[o] + shift[o];
            }
        }
        Ok((weight, bias))
    }

    /// Batch norm as a per-channel `scale` and `shift`, computed in f64.
    fn batch_norm(&self, bn: &super::BatchNorm) -> Result<(Vec<f32>, Vec<f32>)> {
        let c = bn.channels;
        let gamma = self.load(&[c], &bn.scale)?;
        let beta = self.load(&[c], &bn.bias)?;
        let mean = self.load(&[c], &bn.mean)?;
        let var = self.load(&[c], &bn.var)?;
        let scale: Vec<f64> = (0..c)
            .map(|o| f64::from(gamma[o]) / (f64::from(var[o]) + bn.epsilon).sqrt())
            .collect();
        let shift = (0..c)
            .map(|o| (f64::from(beta[o]) - f64::from(mean[o]) * scale[o]) as f32)
            .collect();
        Ok((scale.into_iter().map(|s| s as f32).collect(), shift))
    }
}

fn batch_norm_of(g: &Graphed, node: Option<usize>) -> Option<super::BatchNorm> {
    node.and_then(|j| match g.op(j) {
        Op::BatchNorm(bn) => Some(bn.clone()),
        _ => None,
    })
}

/// Whether a convolution runs on the fast convolution kernels: square window and stride, no
/// dilation; `groups` 1 (dense) or depthwise.
fn fast_conv(c: &super::Conv) -> bool {
    c.kernel[0] == c.kernel[1]
        && c.stride[0] == c.stride[1]
        && c.dilation == [1, 1]
        && (c.groups == 1 || c.is_depthwise())
}

fn is_pointwise(c: &super::Conv) -> bool {
    c.groups == 1
        && c.kernel == [1, 1]
        && c.stride == [1, 1]
        && c.pads.padding().is_none_for_pointwise()
}

/// Lowers `graph` for `isa`; `weights` holds its tensors by name.
pub fn plan(
    graph: &Graph,
    weights: &VarBuilder,
    isa: Isa,
    architecture: &'static str,
) -> Result<Plan> {
    let resolved = graph.validate()?;
    let shapes = graph.shapes(&resolved, graph.input.size.unwrap_or(PROBE_SIZE))?;
    let mut readers = vec![Vec::new(); graph.nodes.len() + 1];
    for (i, reads) in resolved.inputs.iter().enumerate() {
        for &v in reads {
            readers[v].push(i);
        }
    }
    let g = Graphed {
        graph,
        inputs: resolved.inputs,
        readers,
        output: resolved.output,
        shapes,
    };
    let w = Weights { vb: weights };
    let mut b = PlanBuilder::new(isa);
    // The plan value of each graph value, once computed.
    let mut values: Vec<Option<Value>> = vec![None; graph.nodes.len() + 1];
    values[0] = Some(b.input());
    let mut covered = vec![false; graph.nodes.len()];
    for i in 0..graph.nodes.len() {
        if covered[i] {
            continue;
        }
        let input = |k: usize| values[g.inputs[i][k]].expect("inputs are computed first");
        let (step, inputs, nodes) = match lower_mbconv(&g, &w, &values, isa, i)? {
            Some(lowered) => lowered,
            None => lower_node(&g, &w, &values, isa, i, input(0))?,
        };
        let names = nodes.iter().map(|&n| g.name(n)).collect();
        let out = b.push(step, &inputs, names);
        for &n in &nodes {
            covered[n] = true;
        }
        values[*nodes.last().expect("a step covers a node") + 1] = Some(out);
    }
    let output = values[g.output].expect("the output is computed");
    let classes = g.shapes[g.output].channels();
    Ok(b.finish(output, architecture, classes))
}

type Lowered = (Step, Vec<Value>, Vec<usize>);

/// A residual add after `last`: the add (sole reader of `last`) and its other input, when
/// that input is computed already and has the output's shape.
fn residual_after(g: &Graphed, values: &[Option<Value>], last: usize) -> Option<(usize, Value)> {
    let j = g.sole_reader(last)?;
    if !matches!(g.op(j), Op::Add) {
        return None;
    }
    let reads = &g.inputs[j];
    let other = if reads[0] == last + 1 {
        reads[1]
    } else {
        reads[0]
    };
    if other == last + 1 || g.shapes[other] != g.shapes[last + 1] {
        return None;
    }
    Some((j, values[other]?))
}

/// One node, with what it fuses: the general case.
fn lower_node(
    g: &Graphed,
    w: &Weights,
    values: &[Option<Value>],
    isa: Isa,
    i: usize,
    x: Value,
) -> Result<Lowered> {
    let node = &g.graph.nodes[i];
    let in_shape = g.shapes[g.inputs[i][0]];
    Ok(match &node.op {
        Op::Conv(c) if fast_conv(c) && c.groups == 1 => {
            let ch = chain(g, i, true);
            let (weight, bias) = w.conv(c, batch_norm_of(g, ch.batch_norm).as_ref())?;
            let shape = (c.in_channels, c.out_channels, c.kernel[0]);
            // With a fixed input size the kernels may choose by the map's side (no side: the
            // choice for any size).
            let side = match (g.graph.input.size, in_shape) {
                (Some(_), Shape::Map { h, w, .. }) if h == w => h,
                _ => usize::MAX,
            };
            // The epilogue: the activation, then a residual add, then the add's activation
            // (ResNet's `relu(bn(conv(x)) + shortcut)`).
            let mut fused = kernels::Fused::from(ch.activation);
            let mut nodes = ch.nodes;
            let mut inputs = vec![x];
            if let Some((add, residual)) = residual_after(g, values, *nodes.last().unwrap()) {
                fused = fused.with_residual();
                nodes.push(add);
                inputs.push(residual);
                let after = g.sole_reader(add).and_then(|j| match g.op(j) {
                    Op::Activation { function } => Some((j, epilogue(*function)?)),
                    _ => None,
                });
                if let Some((j, a)) = after {
                    if let Some(more) = fused.then(kernels::PostOp::Activation(a)) {
                        fused = more;
                        nodes.push(j);
                    }
                }
            }
            let padding = c.pads.padding();
            let conv = Conv::for_map(isa, &weight, bias, shape, c.stride[0], padding, fused, side);
            (Step::Conv(conv), inputs, nodes)
        }
        Op::Conv(c) if fast_conv(c) => {
            let ch = chain(g, i, true);
            let (weight, bias) = w.conv(c, batch_norm_of(g, ch.batch_norm).as_ref())?;
            let dw = Depthwise::new(
                &weight,
                bias,
                (c.in_channels, c.kernel[0], c.stride[0]),
                c.pads.padding(),
                ch.activation,
            );
            (Step::Depthwise(dw), vec![x], ch.nodes)
        }
        Op::Dense(d) => {
            let (dense, nodes) = lower_dense(g, w, isa, i, d, |k| k)?;
            (Step::Dense(dense), vec![x], nodes)
        }
        Op::BatchNorm(bn) => {
            let (scale, shift) = w.batch_norm(bn)?;
            (Step::Affine { scale, shift }, vec![x], vec![i])
        }
        Op::Activation { function } => (Step::Activation(*function), vec![x], vec![i]),
        Op::Add | Op::Mul => {
            let op = if matches!(node.op, Op::Add) {
                BinaryOp::Add
            } else {
                BinaryOp::Mul
            };
            let mut nodes = vec![i];
            let mut then = None;
            if let Some(j) = g.sole_reader(i) {
                if let Op::Activation { function } = g.op(j) {
                    then = Some(*function);
                    nodes.push(j);
                }
            }
            let y = values[g.inputs[i][1]].expect("inputs are computed first");
            (Step::Binary(op, then), vec![x, y], nodes)
        }
        Op::GlobalAvgPool => (Step::GlobalAvgPool, vec![x], vec![i]),
        Op::MaxPool(p)
            if p.kernel == [2, 2] && p.stride == [2, 2] && p.pads == [0; 4] && !p.ceil_mode =>
        {
            (Step::MaxPool2x2, vec![x], vec![i])
        }
        Op::MaxPool(p) if p.kernel[0] * p.kernel[1] > 0 => {
            (Step::Pool(p.clone(), PoolKind::Max), vec![x], vec![i])
        }
        Op::AvgPool(p) => (Step::Pool(p.clone(), PoolKind::Average), vec![x], vec![i]),
        Op::Flatten => match flatten_into_dense(g, i, in_shape) {
            // The dense layer reads the NHWC map itself, its weight columns permuted to the
            // NCHW flatten's order: no step moves the data.
            Some((j, d, (c, h, w_))) => {
                let column = kernels::dense::nchw_column(h, w_, c);
                let (dense, nodes) = lower_dense(g, w, isa, j, d, column)?;
                (Step::Dense(dense), vec![x], [vec![i], nodes].concat())
            }
            None => (Step::Flatten, vec![x], vec![i]),
        },
        Op::Softmax => (Step::Softmax, vec![x], vec![i]),
        Op::Concat => {
            let inputs = g.inputs[i]
                .iter()
                .map(|&v| values[v].expect("inputs are computed first"))
                .collect();
            (Step::Concat, inputs, vec![i])
        }
        _ => {
            let layer = reference::Layer::load(node, w.vb)?;
            let inputs: Vec<Value> = g.inputs[i]
                .iter()
                .map(|&v| values[v].expect("inputs are computed first"))
                .collect();
            let flat = g.inputs[i]
                .iter()
                .map(|&v| matches!(g.shapes[v], Shape::Flat(_)))
                .collect();
            let step = Step::Fallback {
                layer: Box::new(layer),
                op: Box::new(node.op.clone()),
                flat,
            };
            (step, inputs, vec![i])
        }
    })
}

/// A dense layer at node `i` with the activation it fuses; input feature `k` multiplies weight
/// column `column(k)`.
fn lower_dense(
    g: &Graphed,
    w: &Weights,
    isa: Isa,
    i: usize,
    d: &super::Dense,
    column: impl Fn(usize) -> usize,
) -> Result<(kernels::dense::Dense, Vec<usize>)> {
    let ch = chain(g, i, false);
    let dense = plan::dense_named(
        isa,
        w.vb,
        (&d.weight, d.bias.as_deref()),
        (d.out_features, d.in_features),
        d.layout == super::DenseLayout::InOut,
        ch.activation,
        column,
    )?;
    Ok((dense, ch.nodes))
}

/// The dense layer that alone reads flatten node `i`, with the flattened map's `(c, h, w)`,
/// when the map's size is known at plan time: the graph's input size is fixed, or the map is
/// one pixel (after global pooling), where any input size flattens alike.
fn flatten_into_dense<'g>(
    g: &'g Graphed,
    i: usize,
    in_shape: Shape,
) -> Option<(usize, &'g super::Dense, (usize, usize, usize))> {
    let Shape::Map { c, h, w } = in_shape else {
        return None;
    };
    if g.graph.input.size.is_none() && (h, w) != (1, 1) {
        return None;
    }
    let j = g.sole_reader(i)?;
    match g.op(j) {
        Op::Dense(d) => Some((j, d, (c, h, w))),
        _ => None,
    }
}

/// An inverted-residual block starting at node `i`, if one does: its fused step.
fn lower_mbconv(
    g: &Graphed,
    w: &Weights,
    values: &[Option<Value>],
    isa: Isa,
    i: usize,
) -> Result<Option<Lowered>> {
    let Op::Conv(first) = g.op(i) else {
        return Ok(None);
    };
    // One activation after the expansion and the depthwise layer, as MobileNets have.
    let activated = |ch: &Chain| ch.activation != kernels::Activation::None;
    // The expansion, if the block has one: a pointwise convolution into the depthwise one.
    let (expand, depthwise_at) = if is_pointwise(first) {
        let ch = chain(g, i, true);
        let next = g.sole_reader(ch.last());
        match next {
            Some(j)
                if activated(&ch)
                    && matches!(g.op(j), Op::Conv(c) if c.is_depthwise() && fast_conv(c)) =>
            {
                (Some(ch), j)
            }
            _ => return Ok(None),
        }
    } else {
        (None, i)
    };
    let Op::Conv(dw) = g.op(depthwise_at) else {
        return Ok(None);
    };
    if !(dw.is_depthwise() && fast_conv(dw)) {
        return Ok(None);
    }
    let dw_chain = chain(g, depthwise_at, true);
    let Some(project_at) = g.sole_reader(dw_chain.last()) else {
        return Ok(None);
    };
    let Op::Conv(project) = g.op(project_at) else {
        return Ok(None);
    };
    let same_activation = expand
        .as_ref()
        .is_none_or(|ch| ch.activation == dw_chain.activation);
    if !activated(&dw_chain) || !same_activation || !is_pointwise(project) {
        return Ok(None);
    }
    let project_chain = chain(g, project_at, true);
    if project_chain.activation != kernels::Activation::None {
        return Ok(None);
    }
    let c_in = match &expand {
        Some(_) => first.in_channels,
        None => dw.in_channels,
    };
    let (hidden, c_out) = (dw.in_channels, project.out_channels);
    let weights = MbConvWeights {
        expand: match &expand {
            Some(ch) => Some(w.conv(first, batch_norm_of(g, ch.batch_norm).as_ref())?),
            None => None,
        },
        depthwise: w.conv(dw, batch_norm_of(g, dw_chain.batch_norm).as_ref())?,
        project: w.conv(project, batch_norm_of(g, project_chain.batch_norm).as_ref())?,
    };
    // Parts for the threads only where the block runs by channels at the graph's input size
    // (by rows one whole part is faster; either way computes the same values, at any size).
    let parts = match g.shapes[project_at + 1] {
        Shape::Map { h, w, .. } if mbconv::runs_by_channels(h * w) => rayon::current_num_threads(),
        _ => 1,
    };
    let block = MbConv::new(
        isa,
        &weights,
        (c_in, hidden, c_out),
        (dw.kernel[0], dw.stride[0]),
        dw.pads.padding(),
        dw_chain.activation,
        parts,
    );
    let mut nodes: Vec<usize> = expand.map(|ch| ch.nodes).unwrap_or_default();
    nodes.extend(dw_chain.nodes);
    nodes.extend(project_chain.nodes);
    let x = values[g.inputs[i][0]].expect("inputs are computed first");
    let mut inputs = vec![x];
    if let Some((add, residual)) = residual_after(g, values, *nodes.last().unwrap()) {
        if residual == x {
            nodes.push(add);
            inputs.push(residual);
        }
    }
    Ok(Some((Step::MbConv(Box::new(block)), inputs, nodes)))
}
