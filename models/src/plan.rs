//! A network compiled for the fast CPU kernels ([`crate::kernels`]): a fixed list of steps over
//! NHWC buffers that are allocated once per input shape and reused.
//!
//! The planner ([`crate::graph::planner`]) lowers a network's graph to a [`PlanBuilder`] at
//! load (batch norm folded into the convolutions, weights packed). Each step's output gets a buffer by a liveness scan, so
//! a chain of layers ping-pongs between a few buffers and a residual input stays alive until
//! its add. For small networks this removes what dominated candle's eager path: one tensor
//! allocation and one op dispatch per layer.

use std::borrow::Cow;
use std::sync::Mutex;

use candle_core::{DType, Device, Storage, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;

use crate::graph;
use crate::kernels::conv::Conv;
use crate::kernels::dense::Dense;
use crate::kernels::depthwise::Depthwise;
use crate::kernels::elementwise::{self, BinaryOp, PoolKind};
use crate::kernels::mbconv::MbConv;
use crate::kernels::{self, pool, Isa};
use crate::{layers, Classifier, Error, Result};

/// A value flowing through the plan: the network input or one step's output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Value(usize);

/// `(batch, height, width, channels)`; flat features are `(batch, 1, 1, features)`.
type Shape = (usize, usize, usize, usize);

pub(crate) enum Op {
    /// Reads the input and, when given, a residual of the output's shape.
    Conv(Conv),
    Depthwise(Depthwise),
    /// Reads the input and, when given, a residual of the output's shape.
    MbConv(Box<MbConv>),
    MaxPool2x2,
    /// A window of any size, stride and padding.
    Pool(graph::Pool, PoolKind),
    GlobalAvgPool,
    Dense(Dense),
    Activation(graph::Activation),
    /// Per-channel `x * scale + shift` (a batch norm no convolution absorbed).
    Affine {
        scale: Vec<f32>,
        shift: Vec<f32>,
    },
    /// Two inputs: the second of the first's shape, or one value per image and channel;
    /// then an optional activation.
    Binary(BinaryOp, Option<graph::Activation>),
    /// NHWC to NCHW-ordered flat features.
    Flatten,
    /// Softmax over the channels of a 1x1 map (flat features).
    Softmax,
    Concat,
    /// A node the kernels cannot run, as candle ops over converted copies of its inputs.
    /// `flat` says which inputs are flat features rather than maps.
    Fallback {
        layer: Box<graph::reference::Layer>,
        op: Box<graph::Op>,
        flat: Vec<bool>,
    },
}

impl Op {
    fn name(&self) -> String {
        match self {
            Op::Conv(c) if c.fused.is_empty() => {
                format!("conv{}x{}s{}", c.kernel, c.kernel, c.stride)
            }
            Op::Conv(c) => format!(
                "conv{}x{}s{}+{}",
                c.kernel,
                c.kernel,
                c.stride,
                c.fused.describe()
            ),
            Op::Depthwise(d) => format!("dw{}x{}s{}", d.kernel, d.kernel, d.stride),
            Op::MbConv(_) => "mbconv".into(),
            Op::MaxPool2x2 => "maxpool".into(),
            Op::Pool(p, kind) => {
                let kind = match kind {
                    PoolKind::Max => "max",
                    PoolKind::Average => "avg",
                };
                format!("{kind}pool{}x{}s{}", p.kernel[0], p.kernel[1], p.stride[0])
            }
            Op::GlobalAvgPool => "avgpool".into(),
            Op::Dense(_) => "dense".into(),
            Op::Activation(function) => graph::Op::Activation {
                function: *function,
            }
            .kind()
            .into(),
            Op::Affine { .. } => "affine".into(),
            Op::Binary(BinaryOp::Add, _) => "add".into(),
            Op::Binary(BinaryOp::Mul, _) => "mul".into(),
            Op::Flatten => "flatten".into(),
            Op::Softmax => "softmax".into(),
            Op::Concat => "concat".into(),
            Op::Fallback { op, .. } => format!("candle:{}", op.kind()),
        }
    }

    /// Bytes of weights the step holds (packed, transformed), as the kernels report them.
    fn bytes(&self) -> usize {
        match self {
            Op::Conv(c) => c.bytes(),
            Op::Depthwise(d) => d.bytes(),
            Op::MbConv(b) => b.bytes(),
            Op::Dense(d) => d.bytes(),
            Op::Affine { scale, shift } => 4 * (scale.len() + shift.len()),
            _ => 0,
        }
    }
}

pub(crate) struct Step {
    op: Op,
    inputs: Vec<Value>,
    /// The graph nodes this step computes.
    nodes: Vec<String>,
}

/// How a step of a plan runs, for `edgemm inspect`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct StepInfo {
    /// The kernel, e.g. `conv3x3s1`, `mbconv`, `candle:prelu`.
    pub kernel: String,
    /// `fused kernel` (several graph nodes in one step), `kernel`, or `candle fallback`.
    pub path: &'static str,
    /// The graph nodes it computes.
    pub nodes: Vec<String>,
    /// Bytes of packed weights it holds.
    pub bytes: usize,
}

/// Builds a [`Plan`] step by step. Step `i` defines value `i + 1`; value 0 is the input.
pub(crate) struct PlanBuilder {
    isa: Isa,
    steps: Vec<Step>,
}

impl PlanBuilder {
    pub fn new(isa: Isa) -> Self {
        Self {
            isa,
            steps: Vec::new(),
        }
    }

    /// The network input, NHWC with three channels.
    pub fn input(&self) -> Value {
        Value(0)
    }

    /// Appends a step computing graph nodes `nodes` (for the listing).
    pub fn push(&mut self, op: Op, inputs: &[Value], nodes: Vec<String>) -> Value {
        self.steps.push(Step {
            op,
            inputs: inputs.to_vec(),
            nodes,
        });
        Value(self.steps.len())
    }

    /// Finishes the plan; `output` must be a `[N, classes]` value (a dense layer's).
    pub fn finish(self, output: Value, architecture: &'static str, classes: usize) -> Plan {
        let buffers = assign_buffers(&self.steps, output);
        Plan {
            isa: self.isa,
            steps: self.steps,
            buffers,
            output,
            architecture,
            classes,
            workspaces: Mutex::new(Vec::new()),
            profile: std::env::var_os("EDGEMM_PROFILE_STEPS").is_some(),
        }
    }
}

/// Gives every value a buffer index so that no step writes a buffer it reads and no live value
/// is overwritten: a linear scan, freeing a buffer after the last step that reads it.
fn assign_buffers(steps: &[Step], output: Value) -> Vec<usize> {
    let values = steps.len() + 1;
    let mut last_use = vec![0usize; values];
    for (i, step) in steps.iter().enumerate() {
        for v in &step.inputs {
            last_use[v.0] = i;
        }
    }
    last_use[output.0] = usize::MAX;
    let mut buffer = vec![0usize; values];
    let mut free: Vec<usize> = Vec::new();
    let mut count = 1;
    for (i, _) in steps.iter().enumerate() {
        let out = i + 1;
        buffer[out] = free.pop().unwrap_or_else(|| {
            count += 1;
            count - 1
        });
        for v in 0..=i {
            if last_use[v] == i && !free.contains(&buffer[v]) {
                free.push(buffer[v]);
            }
        }
    }
    buffer
}

/// Buffers sized for one input shape.
struct Workspace {
    dims: (usize, usize, usize),
    buffers: Vec<Vec<f32>>,
}

/// A compiled network: [`Classifier`] over the fast kernels.
pub struct Plan {
    isa: Isa,
    steps: Vec<Step>,
    /// Buffer index of each value.
    buffers: Vec<usize>,
    output: Value,
    architecture: &'static str,
    classes: usize,
    /// Idle workspaces; concurrent calls each take one (or make one).
    workspaces: Mutex<Vec<Workspace>>,
    /// `EDGEMM_PROFILE_STEPS` was set when the plan was built: every call prints each step's
    /// time to stderr (a developer's tool for the kernel work of issue #8).
    profile: bool,
}

impl Plan {
    /// Every step: its kernel, how it runs, the graph nodes it covers and its weight bytes.
    pub fn steps(&self) -> Vec<StepInfo> {
        self.steps
            .iter()
            .map(|s| StepInfo {
                kernel: s.op.name(),
                path: match (&s.op, s.nodes.len()) {
                    (Op::Fallback { .. }, _) => "candle fallback",
                    (_, n) if n > 1 => "fused kernel",
                    _ => "kernel",
                },
                nodes: s.nodes.clone(),
                bytes: s.op.bytes(),
            })
            .collect()
    }

    /// Bytes of weights the plan holds, packed as its kernels read them.
    pub fn weight_bytes(&self) -> usize {
        self.steps.iter().map(|s| s.op.bytes()).sum()
    }

    fn input_error(&self, reason: String) -> Error {
        Error::Input {
            architecture: self.architecture,
            reason,
        }
    }

    /// The shape of every value for an `(n, h, w)` input.
    fn shapes(&self, (n, h, w): (usize, usize, usize)) -> Result<Vec<Shape>> {
        let mut shapes = vec![(n, h, w, 3)];
        for step in &self.steps {
            let s = shapes[step.inputs[0].0];
            let out = match &step.op {
                Op::Conv(c) => {
                    let g = c.geometry((s.0, s.1, s.2));
                    (n, g.out_height, g.out_width, c.c_out)
                }
                Op::Depthwise(d) => {
                    let g = d.geometry((s.0, s.1, s.2));
                    (n, g.out_height, g.out_width, d.channels)
                }
                Op::MbConv(b) => {
                    let (oh, ow) = b.out_size((s.0, s.1, s.2));
                    (n, oh, ow, b.c_out())
                }
                Op::MaxPool2x2 => (n, s.1 / 2, s.2 / 2, s.3),
                Op::Pool(p, _) => {
                    let (oh, ow) = p.out_size((s.1, s.2)).unwrap_or((0, 0));
                    (n, oh, ow, s.3)
                }
                Op::GlobalAvgPool => (n, 1, 1, s.3),
                Op::Dense(d) => {
                    if s.1 * s.2 * s.3 != d.inputs {
                        return Err(self.input_error(format!(
                            "a {h}x{w} input gives {} features where the dense layer takes {}",
                            s.1 * s.2 * s.3,
                            d.inputs
                        )));
                    }
                    (n, 1, 1, d.outputs)
                }
                Op::Activation(_) | Op::Affine { .. } => s,
                Op::Binary(..) => {
                    let t = shapes[step.inputs[1].0];
                    if t.1 * t.2 > s.1 * s.2 {
                        t
                    } else {
                        s
                    }
                }
                Op::Flatten => (n, 1, 1, s.1 * s.2 * s.3),
                Op::Softmax => (n, 1, 1, s.1 * s.2 * s.3),
                Op::Concat => {
                    let c = step.inputs.iter().map(|v| shapes[v.0].3).sum();
                    (n, s.1, s.2, c)
                }
                Op::Fallback { op, flat, .. } => {
                    let inputs: Vec<graph::Shape> = step
                        .inputs
                        .iter()
                        .zip(flat)
                        .map(|(v, flat)| graph_shape(shapes[v.0], *flat))
                        .collect();
                    let shape = graph::infer(op, &inputs).map_err(|e| self.input_error(e))?;
                    match shape {
                        graph::Shape::Map { c, h, w } => (n, h, w, c),
                        graph::Shape::Flat(f) => (n, 1, 1, f),
                    }
                }
            };
            if out.1 == 0 || out.2 == 0 {
                return Err(
                    self.input_error(format!("a {h}x{w} input is too small for this network"))
                );
            }
            shapes.push(out);
        }
        Ok(shapes)
    }

    fn workspace(&self, dims: (usize, usize, usize), shapes: &[Shape]) -> Workspace {
        let idle = self.workspaces.lock().expect("workspace pool").pop();
        let mut ws = idle.unwrap_or(Workspace {
            dims,
            buffers: Vec::new(),
        });
        if ws.dims != dims || ws.buffers.is_empty() {
            let count = self.buffers.iter().max().map_or(1, |m| m + 1);
            let mut sizes = vec![0usize; count];
            for (v, s) in shapes.iter().enumerate() {
                let b = self.buffers[v];
                sizes[b] = sizes[b].max(s.0 * s.1 * s.2 * s.3);
            }
            ws.buffers = sizes.into_iter().map(|len| vec![0f32; len]).collect();
            ws.dims = dims;
        }
        ws
    }

    fn run_step(
        &self,
        step: &Step,
        shapes: &[Shape],
        bufs: &mut [Vec<f32>],
        out: Value,
    ) -> Result<()> {
        let isa = self.isa;
        let mut output = std::mem::take(&mut bufs[self.buffers[out.0]]);
        let input = &bufs[self.buffers[step.inputs[0].0]];
        let second = step.inputs.get(1).map(|r| &bufs[self.buffers[r.0]][..]);
        let s = shapes[step.inputs[0].0];
        let o = shapes[out.0];
        let len = o.0 * o.1 * o.2 * o.3;
        match &step.op {
            Op::Conv(c) => c.run(isa, input, (s.0, s.1, s.2), &mut output, second),
            Op::Depthwise(d) => d.run(isa, input, (s.0, s.1, s.2), &mut output),
            Op::MbConv(b) => b.run(isa, input, (s.0, s.1, s.2), &mut output, second),
            Op::MaxPool2x2 => pool::max_pool_2x2(isa, input, s, &mut output),
            Op::Pool(p, kind) => elementwise::pool(isa, input, s, p, *kind, &mut output),
            Op::GlobalAvgPool => pool::global_avg_pool(isa, input, s, &mut output),
            Op::Dense(d) => d.run(isa, input, s.0, &mut output),
            Op::Activation(f) => elementwise::activation(isa, input, &mut output, len, *f),
            Op::Affine { scale, shift } => {
                elementwise::affine(isa, input, scale, shift, &mut output, len)
            }
            Op::Binary(op, then) => {
                // The full-size operand first; the other is the same size or per channel.
                let t = shapes[step.inputs[1].0];
                let (a, b, small) = if t.1 * t.2 > s.1 * s.2 {
                    (second.expect("two inputs"), &input[..], s)
                } else {
                    (&input[..], second.expect("two inputs"), t)
                };
                let per_channel = small.1 * small.2 != o.1 * o.2;
                elementwise::binary(
                    isa,
                    a,
                    b,
                    (o.0, o.1 * o.2, o.3),
                    per_channel,
                    *op,
                    *then,
                    &mut output,
                );
            }
            Op::Flatten => elementwise::flatten_nchw(input, s, &mut output),
            Op::Softmax => elementwise::softmax(input, s.0, s.1 * s.2 * s.3, &mut output),
            Op::Concat => {
                let parts: Vec<(&[f32], usize)> = step
                    .inputs
                    .iter()
                    .map(|v| (&bufs[self.buffers[v.0]][..], shapes[v.0].3))
                    .collect();
                elementwise::concat(&parts, o.0 * o.1 * o.2, &mut output);
            }
            Op::Fallback { layer, flat, .. } => {
                let inputs: Vec<(&[f32], graph::Shape)> = step
                    .inputs
                    .iter()
                    .zip(flat)
                    .map(|(v, flat)| {
                        (
                            &bufs[self.buffers[v.0]][..],
                            graph_shape(shapes[v.0], *flat),
                        )
                    })
                    .collect();
                let result = graph::reference::run_nhwc(layer, &inputs, o.0, &mut output);
                bufs[self.buffers[out.0]] = output;
                return result;
            }
        }
        bufs[self.buffers[out.0]] = output;
        Ok(())
    }
}

/// A plan shape as the graph sees it.
fn graph_shape((_, h, w, c): Shape, flat: bool) -> graph::Shape {
    if flat {
        graph::Shape::Flat(h * w * c)
    } else {
        graph::Shape::Map { c, h, w }
    }
}

impl Classifier for Plan {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        layers::check_input(x, self.architecture)?;
        let (n, _, h, w) = x.dims4()?;
        let shapes = self.shapes((n, h, w))?;
        let mut ws = self.workspace((n, h, w), &shapes);
        let mut profile = String::new();
        // The steps run on a thread of rayon's pool. From any other thread, each kernel call
        // that shares its work out would hand it to the pool and sleep until a pool thread
        // wakes it: one sleep and wake-up per call, dozens per forward. From a pool thread the
        // calling thread works on its share and joins the others without sleeping, and the
        // other pool threads are kept polling for work meanwhile.
        // The input's copy to NHWC runs inside too: the other pool threads, asleep between
        // forwards, wake up (tens of microseconds on a VM) while it runs, not during the
        // first layer.
        kernels::with_pool_awake(|| {
            let started = self.profile.then(std::time::Instant::now);
            write_nhwc(x, &mut ws.buffers[self.buffers[0]])?;
            if let Some(started) = started {
                profile += &format!(" input:{:.0}us", started.elapsed().as_secs_f64() * 1e6);
            }
            for (i, step) in self.steps.iter().enumerate() {
                let started = self.profile.then(std::time::Instant::now);
                self.run_step(step, &shapes, &mut ws.buffers, Value(i + 1))?;
                if let Some(started) = started {
                    let s = shapes[i + 1];
                    profile += &format!(
                        " {}->{}x{}x{}:{:.0}us",
                        step.op.name(),
                        s.1,
                        s.2,
                        s.3,
                        started.elapsed().as_secs_f64() * 1e6
                    );
                }
            }
            Ok::<(), Error>(())
        })?;
        if self.profile {
            eprintln!("edgemm plan {} n={n}:{profile}", self.architecture);
        }
        let out = &ws.buffers[self.buffers[self.output.0]][..n * self.classes];
        let logits = Tensor::from_slice(out, (n, self.classes), &Device::Cpu)?;
        self.workspaces.lock().expect("workspace pool").push(ws);
        Ok(logits)
    }

    fn num_classes(&self) -> usize {
        self.classes
    }

    fn steps(&self) -> Option<Vec<StepInfo>> {
        Some(Plan::steps(self))
    }
}

/// Copies an NCHW CPU tensor into an NHWC buffer.
fn write_nhwc(x: &Tensor, out: &mut [f32]) -> Result<()> {
    let x = x.contiguous()?;
    let (n, c, h, w) = x.dims4()?;
    let (storage, layout) = x.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        return Err(Error::Candle(candle_core::Error::Msg(
            "the fast kernels run on the CPU".into(),
        )));
    };
    let (start, end) = layout.contiguous_offsets().expect("made contiguous above");
    let data = &cpu.as_slice::<f32>()?[start..end];
    let plane = h * w;
    let images = data
        .chunks_exact(c * plane)
        .zip(out.chunks_exact_mut(c * plane));
    for (src, dst) in images.take(n) {
        // Pixel by pixel, writing each pixel's channels together; an RGB input (nearly
        // always) with the channel count known, so the loop has no inner loop. Both threads
        // share a 224x224 image (the sign model: 129-135 -> 48-59 us, 25th percentiles).
        let rows = |(dst, y): (&mut [f32], usize)| {
            let at = y * w;
            if c == 3 {
                let (r, g, b) = (&src[at..], &src[plane + at..], &src[2 * plane + at..]);
                for (x, px) in dst.chunks_exact_mut(3).enumerate() {
                    px.copy_from_slice(&[r[x], g[x], b[x]]);
                }
            } else {
                for (x, px) in dst.chunks_exact_mut(c).enumerate() {
                    for (ch, v) in px.iter_mut().enumerate() {
                        *v = src[ch * plane + at + x];
                    }
                }
            }
        };
        if kernels::parallel(8 * c * plane) {
            dst.par_chunks_mut(w * c).zip(0..h).for_each(rows);
        } else {
            dst.chunks_mut(w * c).zip(0..h).for_each(rows);
        }
    }
    Ok(())
}

/// Loads a tensor of `shape` as a flat f32 vector.
pub(crate) fn load(vb: &VarBuilder, shape: &[usize], name: &str) -> Result<Vec<f32>> {
    with_weights(vb, shape, name, <[f32]>::to_vec)
}

/// Calls `f` on the values of a tensor of `shape`, read where the tensor stores them: weights
/// that are only repacked (not folded) are then never copied twice, which is what bounds the
/// peak memory of loading a large dense layer.
pub(crate) fn with_weights<T>(
    vb: &VarBuilder,
    shape: &[usize],
    name: &str,
    f: impl FnOnce(&[f32]) -> T,
) -> Result<T> {
    // In f32 whatever the artifact stores (a `VarBuilder` of an f16 artifact hands out its
    // tensors in f16; see `dense`).
    with_values(vb.get(shape, name)?.to_dtype(DType::F32)?, f)
}

/// Calls `f` on the values of a CPU tensor, in its dtype `E`.
fn with_values<E: candle_core::WithDType, T>(
    tensor: Tensor,
    f: impl FnOnce(&[E]) -> T,
) -> Result<T> {
    let tensor = tensor.contiguous()?;
    let (storage, layout) = tensor.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        return Err(Error::Candle(candle_core::Error::Msg(
            "the fast kernels run on the CPU".into(),
        )));
    };
    let (start, end) = layout.contiguous_offsets().expect("made contiguous above");
    Ok(f(&cpu.as_slice::<E>()?[start..end]))
}

/// A dense layer of weight `names.0` and bias `names.1` (zeros when `None`), stored
/// `[outputs, inputs]`, or `[inputs, outputs]` when `in_out` (ONNX MatMul's layout). When the
/// artifact stores f16 (the `VarBuilder`'s dtype is the stored one), the layer keeps its
/// weights in f16 ([`Dense::new_f16`]): half the memory, and half the bytes a matrix-vector
/// product streams; otherwise in f32.
pub(crate) fn dense_named(
    isa: Isa,
    vb: &VarBuilder,
    (weight, bias): (&str, Option<&str>),
    (outputs, inputs): (usize, usize),
    in_out: bool,
    activation: kernels::Activation,
    column: impl Fn(usize) -> usize,
) -> Result<Dense> {
    let bias = match bias {
        Some(name) => load(vb, &[outputs], name)?,
        None => vec![0.0; outputs],
    };
    let shape = if in_out {
        [inputs, outputs]
    } else {
        [outputs, inputs]
    };
    // `[inputs, outputs]` as `[outputs, inputs]`.
    fn out_in<T: Copy>(w: &[T], in_out: bool, (inputs, outputs): (usize, usize)) -> Cow<'_, [T]> {
        if !in_out {
            return Cow::Borrowed(w);
        }
        let t = (0..outputs * inputs).map(|k| w[(k % inputs) * outputs + k / inputs]);
        Cow::Owned(t.collect())
    }
    let dims = (inputs, outputs);
    if vb.dtype() == DType::F16 {
        with_values(vb.get(&shape[..], weight)?, |w: &[half::f16]| {
            Dense::new_f16(isa, &out_in(w, in_out, dims), bias, activation, column)
        })
    } else {
        with_weights(vb, &shape, weight, |w| {
            Dense::new(isa, &out_in(w, in_out, dims), bias, activation, column)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every channel count (RGB has its own loop), images large enough to be shared out and
    /// small ones, a batch of two: each NCHW element lands at its NHWC place.
    #[test]
    fn input_copy_to_nhwc_moves_every_element() {
        for (n, c, h, w) in [
            (2, 3, 5, 7),
            (1, 3, 224, 224),
            (2, 1, 4, 3),
            (1, 4, 130, 129),
        ] {
            let x: Vec<f32> = (0..n * c * h * w).map(|i| i as f32).collect();
            let tensor = Tensor::from_vec(x.clone(), (n, c, h, w), &Device::Cpu).unwrap();
            let mut out = vec![f32::NAN; x.len()];
            write_nhwc(&tensor, &mut out).unwrap();
            for (i, v) in x.iter().enumerate() {
                let (b, ch, y, px) = (i / (c * h * w), i / (h * w) % c, i / w % h, i % w);
                assert_eq!(out[((b * h + y) * w + px) * c + ch], *v, "{n}x{c}x{h}x{w}");
            }
        }
    }

    /// A chain ping-pongs between two buffers; a value read later keeps its buffer.
    #[test]
    fn buffers_are_reused_but_never_while_live() {
        let step = |input: usize, residual: Option<usize>| Step {
            op: Op::MaxPool2x2,
            inputs: std::iter::once(input).chain(residual).map(Value).collect(),
            nodes: Vec::new(),
        };
        // 0 -> 1 -> 2 -> 3 (+1) -> 4
        let steps = vec![
            step(0, None),
            step(1, None),
            step(2, Some(1)),
            step(3, None),
        ];
        let b = assign_buffers(&steps, Value(4));
        assert_ne!(b[1], b[0]);
        assert_ne!(b[2], b[1]);
        assert_ne!(b[3], b[2]);
        assert_ne!(
            b[3], b[1],
            "value 1 is read by step 2, which writes value 3"
        );
        assert_ne!(b[4], b[3]);
        assert_eq!(*b.iter().max().unwrap(), 2, "three buffers suffice");
    }
}
