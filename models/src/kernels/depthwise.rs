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
        let run = |(r, out): (usize, &mut [f32])| {
            let (image, oy) = (r / g.out_height, r % g.out_height);
            depthwise_row(isa, self, &g, input, image, 0, oy, out);
        };
        // A depthwise multiply-add loads its input (no register blocking over output
        // channels as in the GEMM), so it is weighted like the matrix-vector product's.
        if parallel(8 * output.len() * self.kernel * self.kernel) {
            output.par_chunks_mut(row).enumerate().for_each(run);
        } else {
            output.chunks_mut(row).enumerate().for_each(run);
        }
    }
}

/// Channels per register block: one AVX-512 vector, two AVX2 or four NEON ones.
const LANES: usize = 16;
/// Output pixels computed together.
const GROUP: usize = 4;

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
        for b in 0..blocks {
            let c0 = b * LANES;
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
                        (3, 1) => tap_row::<FMA, 3, 1>(&mut acc, x, w, c),
                        (3, 2) => tap_row::<FMA, 3, 2>(&mut acc, x, w, c),
                        (5, 1) => tap_row::<FMA, 5, 1>(&mut acc, x, w, c),
                        (5, 2) => tap_row::<FMA, 5, 2>(&mut acc, x, w, c),
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
        for b in 0..blocks {
            let c0 = b * LANES;
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
        let c0 = blocks * LANES;
        if c0 < c {
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

/// One row of `K` taps for the `GROUP` pixels of a group, stride `S`, with `x` and `w` as
/// [`depthwise_row`] slices them. With the window known at compile time the loops unroll,
/// and at stride 1 an input column shared by neighbouring pixels' taps (pixel `q`'s tap `kx`
/// is pixel `q + 1`'s tap `kx - 1`) is loaded once: `GROUP + K - 1` input loads instead of
/// `GROUP * K`.
#[inline(always)]
fn tap_row<const FMA: bool, const K: usize, const S: usize>(
    acc: &mut [[f32; LANES]; GROUP],
    x: &[f32],
    w: &[f32],
    c: usize,
) {
    assert!(x.len() >= ((GROUP - 1) * S + K - 1) * c + LANES && w.len() >= (K - 1) * c + LANES);
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

    /// Odd sizes, strides 1 and 2, kernels 3 and 5, both paddings, channel counts in whole
    /// register blocks and with a remainder, every instruction set,
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
                    [1 + rng.below(40), 16 * (1 + rng.below(3))][(case / 3) % 2],
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
                let mut out = vec![f32::NAN; expected.len()];
                dw.run(isa, &to_nhwc(&x, (n, c, h, w)), (n, h, w), &mut out);
                let err = max_relative_error(&out, &expected);
                assert!(
                    err <= 1e-4,
                    "{} case {case} k{kernel} s{stride} {padding:?}: {err:e}",
                    isa.name()
                );
            }
        }
    }
}
