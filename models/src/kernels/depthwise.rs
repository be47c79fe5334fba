//! Depthwise convolution over NHWC activations, vectorised over channels.
//!
//! In NHWC the channels of a pixel are contiguous, and so are the weights of one tap once
//! stored `[ky][kx][c]`: every tap is one multiply-add over two contiguous rows, which the
//! compiler vectorises for the instruction set the kernel is compiled for. Output rows are
//! shared out over rayon's pool.

use rayon::prelude::*;

use super::conv::Geometry;
use super::{fma, multiversion, parallel, Activation, Isa};
use crate::layers::Padding;

/// A depthwise convolution with batch norm folded in: one `k x k` filter per channel.
pub struct Depthwise {
    pub channels: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: Padding,
    /// `[ky][kx][c]`.
    weights: Vec<f32>,
    bias: Vec<f32>,
    pub activation: Activation,
}

impl Depthwise {
    /// `weight` is `[channels, 1, kernel, kernel]` (PyTorch's layout), `bias` `[channels]`.
    pub fn new(
        weight: &[f32],
        bias: Vec<f32>,
        (channels, kernel, stride): (usize, usize, usize),
        padding: Padding,
        activation: Activation,
    ) -> Self {
        let kk = kernel * kernel;
        assert_eq!(weight.len(), channels * kk);
        assert_eq!(bias.len(), channels);
        let mut weights = vec![0f32; weight.len()];
        for c in 0..channels {
            for tap in 0..kk {
                weights[tap * channels + c] = weight[c * kk + tap];
            }
        }
        Self {
            channels,
            kernel,
            stride,
            padding,
            weights,
            bias,
            activation,
        }
    }

    pub fn geometry(&self, (n, h, w): (usize, usize, usize)) -> Geometry {
        Geometry::new(
            (n, h, w, self.channels),
            self.kernel,
            self.stride,
            self.padding,
        )
    }

    pub fn bytes(&self) -> usize {
        4 * (self.weights.len() + self.bias.len())
    }

    /// `output = activation(depthwise(input) + bias)`, NHWC in and out.
    pub fn run(&self, isa: Isa, input: &[f32], dims: (usize, usize, usize), output: &mut [f32]) {
        let g = self.geometry(dims);
        let row = g.out_width * self.channels;
        let output = &mut output[..g.batch * g.out_height * row];
        // A depthwise multiply-add loads its input (no register blocking over output
        // channels as in the GEMM), so it is weighted like the matrix-vector product's.
        let threads = if parallel(8 * output.len() * self.kernel * self.kernel) {
            rayon::current_num_threads()
        } else {
            1
        };
        // Each image's rows in as many runs as threads, a run per task.
        let run_rows = g.out_height.div_ceil(threads.div_ceil(g.batch)).max(1);
        let tasks: Vec<(usize, std::ops::Range<usize>, &mut [f32])> = output
            .chunks_mut(g.out_height * row)
            .enumerate()
            .flat_map(|(image, out)| {
                out.chunks_mut(run_rows * row)
                    .enumerate()
                    .map(move |(i, out)| {
                        let start = i * run_rows;
                        (image, start..start + out.len() / row, out)
                    })
            })
            .collect();
        let run = |(image, rows, out): (usize, std::ops::Range<usize>, &mut [f32])| {
            depthwise_band(isa, self, &g, input, (image, 0), rows, out, &mut Vec::new());
        };
        if threads > 1 {
            tasks.into_par_iter().for_each(run);
        } else {
            tasks.into_iter().for_each(run);
        }
    }
}

/// Channels per register block: one AVX-512 vector, two AVX2 or four NEON ones.
const LANES: usize = 16;
/// Output pixels computed together.
const GROUP: usize = 4;
/// Output pixels [`depthwise_rows`] computes together: a whole row of a 7x7 map, half a
/// 14x14 one's.
const ROWS_GROUP: usize = 7;

multiversion! {
    /// One output row `(image, oy)` of a depthwise convolution, reading an `input` that starts
    /// at row `first_row` of the image (0 for a whole NHWC tensor; a fused block passes the
    /// band of rows it holds, with `image` 0).
    ///
    /// Channels go in blocks of [`LANES`] whose sums stay in registers across all taps, so a
    /// tap costs two loads and a multiply-add; the taps that fall in the padding are cut off
    /// once per pixel rather than tested one by one.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn depthwise_row(
        dw: &Depthwise,
        g: &Geometry,
        input: &[f32],
        image: usize,
        first_row: usize,
        oy: usize,
        out: &mut [f32],
    ) {
        // With fused multiply-adds where the instruction set has them (`FMA`): a multiply
        // and an add are two operations on the same two ports, which bound the group path.
        let (c, k, s) = (dw.channels, g.kernel, g.stride);
        let blocks = c / LANES;
        let taps_y = tap_range(oy * s, g.pad_top, g.height, k);
        // Pixels whose whole window lies inside the input row go GROUP at a time: GROUP
        // independent sums hide the add latency, and each weight load serves GROUP pixels.
        let first = g.pad_left.div_ceil(s);
        let end = match (g.width + g.pad_left).checked_sub(k) {
            Some(span) => (span / s + 1).min(g.out_width),
            None => 0,
        };
        let groups = if blocks > 0 && first < end {
            (end - first) / GROUP
        } else {
            0
        };
        // Channel blocks outside, pixels inside: a block's k * k weight vectors stay in L1
        // (or registers) across the row instead of all channels' weights cycling through it.
        for c0 in block_starts(c) {
            for group in 0..groups {
                let ox0 = first + group * GROUP;
                // Input column of tap 0 of pixel ox0.
                let x0 = ox0 * s - g.pad_left;
                let bias: [f32; LANES] = dw.bias[c0..c0 + LANES].try_into().unwrap();
                let mut acc = [bias; GROUP];
                for ky in taps_y.clone() {
                    let iy = oy * s + ky - g.pad_top;
                    let row = ((image * g.height + iy - first_row) * g.width + x0) * c + c0;
                    // The input this row of taps reads for the GROUP pixels, and the row's
                    // weights: checked once here rather than at every load below.
                    let x = &input[row..row + ((GROUP - 1) * s + k - 1) * c + LANES];
                    let w = &dw.weights[ky * k * c + c0..][..(k - 1) * c + LANES];
                    match (k, s) {
                        (3, 1) => tap_row::<FMA, GROUP, 3, 1>(&mut acc, x, w, c),
                        (3, 2) => tap_row::<FMA, GROUP, 3, 2>(&mut acc, x, w, c),
                        (5, 1) => tap_row::<FMA, GROUP, 5, 1>(&mut acc, x, w, c),
                        (5, 2) => tap_row::<FMA, GROUP, 5, 2>(&mut acc, x, w, c),
                        _ => {
                            for kx in 0..k {
                                // SAFETY: kx < k, so (k - 1) * c + LANES bounds this read.
                                let w = unsafe { load(w, kx * c) };
                                for (q, acc) in acc.iter_mut().enumerate() {
                                    // SAFETY: q < GROUP and kx < k bound it by `x`'s length.
                                    let x = unsafe { load(x, (q * s + kx) * c) };
                                    madd::<FMA>(acc, &x, &w);
                                }
                            }
                        }
                    }
                }
                for (q, acc) in acc.iter_mut().enumerate() {
                    dw.activation.apply(acc);
                    let at = (ox0 + q) * c + c0;
                    out[at..at + LANES].copy_from_slice(acc);
                }
            }
        }
        let grouped = first..first + groups * GROUP;
        // The pixels left (windows cut by the padding, and the row's last few), one at a
        // time: again channel blocks outside, then the channels past the last whole block.
        let edge = (0..g.out_width).filter(|ox| !grouped.contains(ox));
        // Input offset of tap (ky, j-th tap kept in x) of pixel `ox`, and its taps in x.
        let window = |ox: usize| {
            let taps_x = tap_range(ox * s, g.pad_left, g.width, k);
            let x0 = ox * s + taps_x.start - g.pad_left;
            let at = move |ky: usize| {
                let iy = oy * s + ky - g.pad_top;
                ((image * g.height + iy - first_row) * g.width + x0) * c
            };
            (taps_x, at)
        };
        for c0 in block_starts(c) {
            for ox in edge.clone() {
                let (taps_x, at) = window(ox);
                let mut acc: [f32; LANES] = dw.bias[c0..c0 + LANES].try_into().unwrap();
                let (taps, kx0) = (taps_x.len(), taps_x.start);
                // A window wholly in the padding (possible with padding >= kernel) is the bias.
                let taps_y = if taps > 0 { taps_y.clone() } else { 0..0 };
                for ky in taps_y {
                    let x = &input[at(ky) + c0..][..(taps - 1) * c + LANES];
                    let w = &dw.weights[(ky * k + kx0) * c + c0..][..(taps - 1) * c + LANES];
                    // A sum per row of taps, added in at the end: the rows' chains of
                    // dependent adds overlap, instead of one chain through every tap.
                    let mut row = [0f32; LANES];
                    for j in 0..taps {
                        // SAFETY: j < taps bounds both reads by the slices' lengths.
                        let (x, w) = unsafe { (load(x, j * c), load(w, j * c)) };
                        madd::<FMA>(&mut row, &x, &w);
                    }
                    for l in 0..LANES {
                        acc[l] += row[l];
                    }
                }
                dw.activation.apply(&mut acc);
                out[ox * c + c0..][..LANES].copy_from_slice(&acc);
            }
        }
        // Fewer channels than a block: one value at a time.
        let c0 = blocks * LANES;
        if blocks == 0 {
            for ox in 0..g.out_width {
                let (taps_x, at) = window(ox);
                let acc = &mut out[ox * c + c0..(ox + 1) * c];
                acc.copy_from_slice(&dw.bias[c0..]);
                for ky in taps_y.clone() {
                    let row = at(ky);
                    for (j, kx) in taps_x.clone().enumerate() {
                        let x = &input[row + j * c + c0..row + (j + 1) * c];
                        let w = &dw.weights[(ky * k + kx) * c + c0..(ky * k + kx + 1) * c];
                        for ((a, x), w) in acc.iter_mut().zip(x).zip(w) {
                            *a += *x * *w;
                        }
                    }
                }
                dw.activation.apply(acc);
            }
        }
    }
}

/// Output rows `rows` of image `image` (of an `input` that starts at row `first_row` of the
/// image, as [`depthwise_row`] takes it) into `out`, those rows only: through
/// [`depthwise_rows`] (with `padded` as its scratch) where the layer [`uses_rows_kernel`],
/// else row by row.
#[allow(clippy::too_many_arguments)]
pub(crate) fn depthwise_band(
    isa: Isa,
    dw: &Depthwise,
    g: &Geometry,
    input: &[f32],
    (image, first_row): (usize, usize),
    rows: std::ops::Range<usize>,
    out: &mut [f32],
    padded: &mut Vec<f32>,
) {
    if uses_rows_kernel(dw, g.out_width) {
        depthwise_rows(isa, dw, g, input, image, first_row, rows, out, padded);
    } else {
        let row = g.out_width * dw.channels;
        for (oy, out) in rows.zip(out.chunks_mut(row)) {
            depthwise_row(isa, dw, g, input, image, first_row, oy, out);
        }
    }
}

/// Whether [`Depthwise::run`] and the fused blocks compute this layer with
/// [`depthwise_rows`] on output rows `out_width` wide, rather than row by row: at least a
/// register block of channels, a window it has unrolled (those of EfficientNet-Lite0), and
/// a small map, where the row kernel's cut windows and weight reloads cost more than the
/// padded copy. Single-thread medians (`cargo bench -p edgemm-models --bench depthwise`, the
/// lowest of alternating runs), row kernel -> this one: 7x7x1152 5x5 94 -> 37 us, 3x3 42 ->
/// 22; 14x14x672 5x5 170 -> 79, at stride 2 52 -> 36; 14x14x480 3x3 48 -> 32; 28x28x240 5x5
/// 180 -> 100. Slower, and so left to the row kernel: 28x28x240 3x3 stride 2 (27 -> 36 us;
/// its copy is four times its output for nine taps), 56x56x144 5x5 stride 2 (140 -> 148),
/// 56x56x144 3x3 (244 -> 290).
pub(crate) fn uses_rows_kernel(dw: &Depthwise, out_width: usize) -> bool {
    let window = matches!((dw.kernel, dw.stride), (3, 1) | (3, 2) | (5, 1) | (5, 2));
    let small = match dw.stride {
        1 => out_width <= 28,
        _ => dw.kernel == 5 && out_width <= 14,
    };
    dw.channels >= LANES && window && small
}

/// The first channel of each register block of a layer of `c >= LANES` channels: whole
/// blocks, then, when `c` is not a multiple of [`LANES`], one more ending at the last
/// channel, which overlaps the one before it. Its overlapping channels are computed twice
/// with the same operations in the same order, so both writes hold the same value; MobileNetV3's
/// 72, 120, 184 and 200 channels stay on the vector path instead of a scalar tail.
fn block_starts(c: usize) -> impl Iterator<Item = usize> + Clone {
    let whole = c / LANES;
    let tail = (whole > 0 && !c.is_multiple_of(LANES)).then(|| c - LANES);
    (0..whole).map(|b| b * LANES).chain(tail)
}

multiversion! {
    /// Output rows `rows` of image `image` into `out` (those rows only), with `input` as
    /// [`depthwise_row`] takes it, for a layer that [`uses_rows_kernel`].
    ///
    /// One block of [`LANES`] channels at a time through all the rows: the block's input
    /// is copied, zero-padded, into `padded` (a few KiB, in L1), and its `k x k` weight
    /// vectors into a contiguous array. Every pixel then runs its whole window with no test
    /// for the padding, `GROUP` pixels sharing each row's input loads, and each weight
    /// vector is loaded once per group. On small maps, where most windows are cut by the
    /// padding and a row holds a few pixels, the row kernel instead reloads every block's
    /// weights (from L2) for every pixel of every row.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn depthwise_rows(
        dw: &Depthwise,
        g: &Geometry,
        input: &[f32],
        image: usize,
        first_row: usize,
        rows: std::ops::Range<usize>,
        out: &mut [f32],
        padded: &mut Vec<f32>,
    ) {
        let (c, k, s, ow) = (dw.channels, g.kernel, g.stride, g.out_width);
        assert!(uses_rows_kernel(dw, ow), "no rows kernel for this layer");
        assert!(out.len() >= rows.len() * ow * c, "output too small");
        if rows.is_empty() || ow == 0 {
            return;
        }
        // The padded input of the rows: row `py` is padded row `rows.start * s + py`,
        // column `px` padded column `px`.
        let (hp, wp) = ((rows.len() - 1) * s + k, (ow - 1) * s + k);
        if padded.len() < hp * wp * LANES {
            padded.resize(hp * wp * LANES, 0.0);
        }
        let padded = &mut padded[..hp * wp * LANES];
        let inside = |at: usize, pad: usize, size: usize| at.checked_sub(pad).filter(|&i| i < size);
        for c0 in block_starts(c) {
            for (py, dst) in padded.chunks_exact_mut(wp * LANES).enumerate() {
                let Some(iy) = inside(rows.start * s + py, g.pad_top, g.height) else {
                    dst.fill(0.0);
                    continue;
                };
                let row = (image * g.height + iy - first_row) * g.width * c + c0;
                for (px, dst) in dst.chunks_exact_mut(LANES).enumerate() {
                    match inside(px, g.pad_left, g.width) {
                        Some(ix) => dst.copy_from_slice(&input[row + ix * c..][..LANES]),
                        None => dst.fill(0.0),
                    }
                }
            }
            let mut weights = [[0f32; LANES]; 25];
            for (tap, w) in weights.iter_mut().take(k * k).enumerate() {
                *w = dw.weights[tap * c + c0..][..LANES].try_into().unwrap();
            }
            let weights = weights.as_flattened();
            let bias: [f32; LANES] = dw.bias[c0..c0 + LANES].try_into().unwrap();
            for oy in rows.clone() {
                let r = oy - rows.start;
                let mut ox = 0;
                while ox < ow {
                    let group = (ow - ox).min(ROWS_GROUP);
                    let x = &padded[(r * s * wp + ox * s) * LANES..];
                    let out = &mut out[(r * ow + ox) * c + c0..];
                    match group {
                        7 => pixels::<FMA, 7>(x, weights, &bias, (k, s, wp), out, c, dw.activation),
                        6 => pixels::<FMA, 6>(x, weights, &bias, (k, s, wp), out, c, dw.activation),
                        5 => pixels::<FMA, 5>(x, weights, &bias, (k, s, wp), out, c, dw.activation),
                        4 => pixels::<FMA, 4>(x, weights, &bias, (k, s, wp), out, c, dw.activation),
                        3 => pixels::<FMA, 3>(x, weights, &bias, (k, s, wp), out, c, dw.activation),
                        2 => pixels::<FMA, 2>(x, weights, &bias, (k, s, wp), out, c, dw.activation),
                        _ => pixels::<FMA, 1>(x, weights, &bias, (k, s, wp), out, c, dw.activation),
                    }
                    ox += group;
                }
            }
        }
    }
}

/// `G` neighbouring output pixels of [`depthwise_rows`]: `x` is the padded input from the
/// first pixel's window on (rows `wp` pixels apart), `weights` the block's `k x k` vectors,
/// `out` the first pixel's output (pixels `c` apart).
#[inline(always)]
fn pixels<const FMA: bool, const G: usize>(
    x: &[f32],
    weights: &[f32],
    bias: &[f32; LANES],
    (k, s, wp): (usize, usize, usize),
    out: &mut [f32],
    c: usize,
    activation: Activation,
) {
    let mut acc = [*bias; G];
    for ky in 0..k {
        let x = &x[ky * wp * LANES..];
        let w = &weights[ky * k * LANES..];
        match (k, s) {
            (3, 1) => tap_row::<FMA, G, 3, 1>(&mut acc, x, w, LANES),
            (3, 2) => tap_row::<FMA, G, 3, 2>(&mut acc, x, w, LANES),
            (5, 1) => tap_row::<FMA, G, 5, 1>(&mut acc, x, w, LANES),
            _ => tap_row::<FMA, G, 5, 2>(&mut acc, x, w, LANES),
        }
    }
    for (q, acc) in acc.iter_mut().enumerate() {
        activation.apply(acc);
        out[q * c..q * c + LANES].copy_from_slice(acc);
    }
}

/// One row of `K` taps for the `G` pixels of a group, stride `S`, with `x` and `w` as
/// [`depthwise_row`] slices them (both `c` apart from tap to tap). With the window known at compile time the loops unroll,
/// and at stride 1 an input column shared by neighbouring pixels' taps (pixel `q`'s tap `kx`
/// is pixel `q + 1`'s tap `kx - 1`) is loaded once: `GROUP + K - 1` input loads instead of
/// `GROUP * K`.
#[inline(always)]
fn tap_row<const FMA: bool, const G: usize, const K: usize, const S: usize>(
    acc: &mut [[f32; LANES]; G],
    x: &[f32],
    w: &[f32],
    c: usize,
) {
    assert!(x.len() >= ((G - 1) * S + K - 1) * c + LANES && w.len() >= (K - 1) * c + LANES);
    for kx in 0..K {
        // SAFETY: kx < K, bounded by the assert.
        let w = unsafe { load(w, kx * c) };
        for (q, acc) in acc.iter_mut().enumerate() {
            // SAFETY: q < GROUP and kx < K, bounded by the assert. Unrolled, the loads of one
            // column by several (q, kx) pairs are the same expression, loaded once.
            let x = unsafe { load(x, (q * S + kx) * c) };
            madd::<FMA>(acc, &x, &w);
        }
    }
}

/// `acc += x * w` lane by lane, fused when `FMA`.
#[inline(always)]
fn madd<const FMA: bool>(acc: &mut [f32; LANES], x: &[f32; LANES], w: &[f32; LANES]) {
    for l in 0..LANES {
        acc[l] = fma::<FMA>(x[l], w[l], acc[l]);
    }
}

/// The `LANES` values of `v` from `at` on.
///
/// # Safety
/// `at + LANES <= v.len()`.
#[inline(always)]
unsafe fn load(v: &[f32], at: usize) -> [f32; LANES] {
    debug_assert!(at + LANES <= v.len());
    // SAFETY: in bounds by the contract; `read_unaligned` needs no alignment.
    unsafe { v.as_ptr().add(at).cast::<[f32; LANES]>().read_unaligned() }
}

/// The taps `t` of a `k`-tap window starting at padded position `start` whose input position
/// `start + t - pad` lies inside `0..size`.
#[inline(always)]
pub(crate) fn tap_range(start: usize, pad: usize, size: usize, k: usize) -> std::ops::Range<usize> {
    let first = pad.saturating_sub(start);
    let last = (size + pad).saturating_sub(start).min(k);
    first..last.max(first)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;
    use crate::kernels::conv::tests::to_nhwc;
    use crate::kernels::testing::{max_relative_error, Rng};

    /// Odd sizes, strides 1 and 2, kernels 3 and 5, both paddings, channel counts below a
    /// register block, in whole blocks and with a remainder, every instruction set,
    /// against the reference layer (candle ops).
    #[test]
    fn depthwise_matches_candle_reference() {
        let mut rng = Rng::new(3);
        for isa in Isa::supported() {
            for case in 0..24 {
                let kernel = [3, 5, 1][case % 3];
                let stride = 1 + case % 2;
                let padding = match case % 8 {
                    0 | 1 | 4 | 5 => Padding::TfSame,
                    // Wider than the kernel: some windows lie wholly in the padding.
                    6 => Padding::Symmetric(kernel + 1),
                    _ => Padding::Symmetric(kernel / 2),
                };
                let (n, c, h, w) = (
                    1 + rng.below(2),
                    [
                        1 + rng.below(40),
                        16 * (1 + rng.below(3)),
                        // MobileNetV3's 72, 120, 184, 200: a block overlapping the last.
                        16 * (1 + rng.below(4)) + 8,
                    ][(case / 3) % 3],
                    3 + rng.below(14),
                    3 + rng.below(14),
                );
                let x = rng.vec(n * c * h * w);
                let weight = rng.vec(c * kernel * kernel);
                let bias = rng.vec(c);
                let dev = Device::Cpu;
                let layer = crate::layers::DepthwiseConv2d::from_tensor(
                    Tensor::from_slice(&weight, (c, 1, kernel, kernel), &dev).unwrap(),
                    stride,
                    padding,
                )
                .unwrap();
                let y = layer
                    .forward(&Tensor::from_slice(&x, (n, c, h, w), &dev).unwrap())
                    .unwrap()
                    .broadcast_add(&Tensor::from_slice(&bias, (1, c, 1, 1), &dev).unwrap())
                    .unwrap()
                    .clamp(0f32, 6f32)
                    .unwrap();
                let (_, _, oh, ow) = y.dims4().unwrap();
                let expected =
                    to_nhwc(&y.flatten_all().unwrap().to_vec1().unwrap(), (n, c, oh, ow));

                let dw = Depthwise::new(
                    &weight,
                    bias,
                    (c, kernel, stride),
                    padding,
                    Activation::Relu6,
                );
                let input = to_nhwc(&x, (n, c, h, w));
                let mut out = vec![f32::NAN; expected.len()];
                dw.run(isa, &input, (n, h, w), &mut out);
                let err = max_relative_error(&out, &expected);
                assert!(
                    err <= 1e-4,
                    "{} case {case} k{kernel} s{stride} {padding:?}: {err:e}",
                    isa.name()
                );
                // `run` takes the rows kernel for these small maps where it can; the row
                // kernel (larger maps' path) must agree too.
                let g = dw.geometry((n, h, w));
                let row = ow * c;
                let mut by_row = vec![f32::NAN; expected.len()];
                for (r, out) in by_row.chunks_mut(row).enumerate() {
                    let (image, oy) = (r / oh, r % oh);
                    depthwise_row(isa, &dw, &g, &input, image, 0, oy, out);
                }
                let err = max_relative_error(&by_row, &expected);
                assert!(
                    err <= 1e-4,
                    "row kernel, {} case {case} k{kernel} s{stride} {padding:?}: {err:e}",
                    isa.name()
                );
            }
        }
    }
}
