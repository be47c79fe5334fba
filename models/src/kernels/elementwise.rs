//! Elementwise and data-movement kernels over NHWC activations: the steps of an imported
//! graph that are not convolutions or products (activations that no epilogue fuses, batch
//! norm on its own, squeeze-excitation's per-channel gate, residual adds followed by an
//! activation, flatten, concat, windowed pooling). Each is one pass over its output, compiled
//! per instruction set; large ones are shared out over rayon's pool by rows.

use rayon::prelude::*;

use super::{multiversion, parallel, Isa};
use crate::graph::{Activation, Pool};

/// Rows of this many values at least are one task when a call is shared out.
const TASK_VALUES: usize = 4096;

/// Calls `f(first_value_index, chunk)` over `out` in chunks of whole `row`s, in parallel when
/// the call is large enough.
fn by_rows(out: &mut [f32], row: usize, work: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    let row = row.max(1);
    let chunk = row * TASK_VALUES.div_ceil(row);
    if parallel(work) {
        out.par_chunks_mut(chunk)
            .enumerate()
            .for_each(|(i, c)| f(i * chunk, c));
    } else {
        out.chunks_mut(chunk)
            .enumerate()
            .for_each(|(i, c)| f(i * chunk, c));
    }
}

multiversion! {
    fn activate(input: &[f32], out: &mut [f32], function: Activation) {
        for (o, x) in out.iter_mut().zip(input) {
            *o = function.apply(*x);
        }
    }
}

/// `output = function(input)` over `len` values.
pub fn activation(isa: Isa, input: &[f32], output: &mut [f32], len: usize, function: Activation) {
    by_rows(&mut output[..len], 1, 4 * len, |at, out| {
        activate(isa, &input[at..at + out.len()], out, function)
    });
}

/// What [`binary`] computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Mul,
}

multiversion! {
    fn combine(
        a: &[f32],
        b: &[f32],
        out: &mut [f32],
        op: BinaryOp,
        then: Option<Activation>,
    ) {
        match (op, then) {
            (BinaryOp::Add, None) => {
                for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
                    *o = *x + *y;
                }
            }
            (BinaryOp::Mul, None) => {
                for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
                    *o = *x * *y;
                }
            }
            (BinaryOp::Add, Some(f)) => {
                for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
                    *o = f.apply(*x + *y);
                }
            }
            (BinaryOp::Mul, Some(f)) => {
                for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
                    *o = f.apply(*x * *y);
                }
            }
        }
    }
}

/// `output = then(a op b)` for NHWC `a` of `batch` images of `pixels` pixels and `channels`
/// channels; `b` is either the same shape or one value per image and channel (`[N, C]`, a
/// squeeze-excitation gate), repeated over the pixels.
#[allow(clippy::too_many_arguments)]
pub fn binary(
    isa: Isa,
    a: &[f32],
    b: &[f32],
    (batch, pixels, channels): (usize, usize, usize),
    per_channel: bool,
    op: BinaryOp,
    then: Option<Activation>,
    output: &mut [f32],
) {
    let len = batch * pixels * channels;
    by_rows(&mut output[..len], channels, 2 * len, |at, out| {
        let a = &a[at..at + out.len()];
        if per_channel {
            for (i, (o, x)) in out.chunks_mut(channels).zip(a.chunks(channels)).enumerate() {
                let image = (at / channels + i) / pixels;
                let gate = &b[image * channels..(image + 1) * channels];
                combine(isa, x, gate, o, op, then);
            }
        } else {
            combine(isa, a, &b[at..at + out.len()], out, op, then);
        }
    });
}

multiversion! {
    fn scale_shift(input: &[f32], scale: &[f32], shift: &[f32], out: &mut [f32]) {
        let c = scale.len();
        for (o, x) in out.chunks_exact_mut(c).zip(input.chunks_exact(c)) {
            for i in 0..c {
                o[i] = x[i] * scale[i] + shift[i];
            }
        }
    }
}

/// `output[.., c] = input[.., c] * scale[c] + shift[c]` over `len` NHWC values: batch norm
/// that no convolution absorbs.
pub fn affine(
    isa: Isa,
    input: &[f32],
    scale: &[f32],
    shift: &[f32],
    output: &mut [f32],
    len: usize,
) {
    let c = scale.len();
    by_rows(&mut output[..len], c, 2 * len, |at, out| {
        scale_shift(isa, &input[at..at + out.len()], scale, shift, out)
    });
}

/// NHWC `(n, h, w, c)` to the NCHW order of ONNX's and PyTorch's `flatten(1)`.
pub fn flatten_nchw(input: &[f32], (n, h, w, c): (usize, usize, usize, usize), output: &mut [f32]) {
    let plane = h * w;
    for image in 0..n {
        let src = &input[image * plane * c..(image + 1) * plane * c];
        let dst = &mut output[image * plane * c..(image + 1) * plane * c];
        if plane == 1 {
            dst.copy_from_slice(src);
            continue;
        }
        for (p, px) in src.chunks_exact(c).enumerate() {
            for (ch, v) in px.iter().enumerate() {
                dst[ch * plane + p] = *v;
            }
        }
    }
}

/// Softmax of each of `rows` rows of `width` values: `exp(x - max) / sum`, as candle's and
/// ONNX Runtime's (the maximum subtracted first, so no row overflows).
pub fn softmax(input: &[f32], rows: usize, width: usize, output: &mut [f32]) {
    let (input, output) = (&input[..rows * width], &mut output[..rows * width]);
    for (x, y) in input
        .chunks_exact(width)
        .zip(output.chunks_exact_mut(width))
    {
        let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for (x, y) in x.iter().zip(y.iter_mut()) {
            *y = (x - max).exp();
            sum += *y;
        }
        let inverse = 1.0 / sum;
        y.iter_mut().for_each(|y| *y *= inverse);
    }
}

/// Joins NHWC maps of `pixels` pixels along their channels.
pub fn concat(inputs: &[(&[f32], usize)], pixels: usize, output: &mut [f32]) {
    let total: usize = inputs.iter().map(|(_, c)| c).sum();
    for (p, out) in output[..pixels * total].chunks_exact_mut(total).enumerate() {
        let mut at = 0;
        for (data, c) in inputs {
            out[at..at + c].copy_from_slice(&data[p * c..(p + 1) * c]);
            at += c;
        }
    }
}

/// Max or average pooling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolKind {
    Max,
    Average,
}

multiversion! {
    fn pool_pixel(
        input: &[f32],
        dims: (usize, usize),
        window: (std::ops::Range<usize>, std::ops::Range<usize>),
        kind: PoolKind,
        divisor: f32,
        out: &mut [f32],
    ) {
        let ((w, c), (rows, cols)) = (dims, window);
        match kind {
            PoolKind::Max => out.fill(f32::NEG_INFINITY),
            PoolKind::Average => out.fill(0.0),
        }
        for y in rows {
            let row = &input[y * w * c..(y + 1) * w * c];
            for x in cols.clone() {
                let px = &row[x * c..(x + 1) * c];
                match kind {
                    PoolKind::Max => out.iter_mut().zip(px).for_each(|(o, v)| *o = o.max(*v)),
                    PoolKind::Average => out.iter_mut().zip(px).for_each(|(o, v)| *o += *v),
                }
            }
        }
        if kind == PoolKind::Average {
            let scale = 1.0 / divisor;
            out.iter_mut().for_each(|o| *o *= scale);
        }
    }
}

/// Windowed pooling of NHWC `(n, h, w, c)` as `pool` says (padding, ceil mode and, for
/// averages, whether padding counts), into `(n, oh, ow, c)`.
pub fn pool(
    isa: Isa,
    input: &[f32],
    (n, h, w, c): (usize, usize, usize, usize),
    pool: &Pool,
    kind: PoolKind,
    output: &mut [f32],
) {
    let (oh, ow) = pool
        .out_size((h, w))
        .expect("checked when the plan was built");
    let [t, l, b, r] = pool.pads;
    let (kh, kw) = (pool.kernel[0], pool.kernel[1]);
    let (sh, sw) = (pool.stride[0], pool.stride[1]);
    let row = ow * c;
    by_rows(
        &mut output[..n * oh * row],
        row,
        n * oh * row * kh * kw,
        |at, out| {
            for (i, out_row) in out.chunks_mut(row).enumerate() {
                let r_index = at / row + i;
                let (image, oy) = (r_index / oh, r_index % oh);
                let image_in = &input[image * h * w * c..(image + 1) * h * w * c];
                // The window in padded coordinates, then clipped to the input.
                let y0 = oy * sh;
                let rows = y0.saturating_sub(t)..(y0 + kh).saturating_sub(t).min(h);
                let padded_rows = (y0 + kh).min(h + t + b) - y0;
                for (ox, px) in out_row.chunks_exact_mut(c).enumerate() {
                    let x0 = ox * sw;
                    let cols = x0.saturating_sub(l)..(x0 + kw).saturating_sub(l).min(w);
                    let divisor = if pool.count_include_pad {
                        (padded_rows * ((x0 + kw).min(w + l + r) - x0)) as f32
                    } else {
                        (rows.len() * cols.len()) as f32
                    };
                    pool_pixel(
                        isa,
                        image_in,
                        (w, c),
                        (rows.clone(), cols),
                        kind,
                        divisor,
                        px,
                    );
                }
            }
        },
    );
}
