//! Direct convolution for layers with very few input channels: a network's first layer, on
//! RGB.
//!
//! With 3 input channels a GEMM's depth is `k * k * 3` (27 for a 3x3 window), and packing its
//! left operand (an im2col gather of 3-value runs) costs more than the multiplies: the
//! EfficientNet stem took 0.6-0.7 ms for its 11 M multiply-adds, packing most of it. Here
//! each input value is broadcast and multiplied straight into the output channels' sums, a
//! register block of channels (32 on AVX-512, 16 elsewhere) and several neighbouring pixels
//! together (6 and 4), so each weight load serves several pixels. Output rows are shared out
//! over rayon's pool.

use rayon::prelude::*;

use super::conv::Geometry;
use super::depthwise::tap_range;
use super::{parallel, Fused, Isa};

/// Output channels are padded to a multiple of this, the widest register block.
const PAD: usize = 32;

/// Weights of a direct convolution, `[ky][kx][c_in][c_out]` with `c_out` padded with zeros
/// to a multiple of `PAD`.
pub struct DirectWeights {
    weights: Vec<f32>,
    c_out: usize,
    padded: usize,
}

impl DirectWeights {
    /// `weight` is OIHW `[c_out, c_in, kernel, kernel]`.
    pub fn new(weight: &[f32], (c_in, c_out, kernel): (usize, usize, usize)) -> Self {
        let kk = kernel * kernel;
        assert_eq!(weight.len(), c_out * c_in * kk);
        let padded = c_out.div_ceil(PAD) * PAD;
        let mut weights = vec![0f32; kk * c_in * padded];
        for o in 0..c_out {
            for ci in 0..c_in {
                for tap in 0..kk {
                    weights[(tap * c_in + ci) * padded + o] = weight[(o * c_in + ci) * kk + tap];
                }
            }
        }
        Self {
            weights,
            c_out,
            padded,
        }
    }

    pub fn bytes(&self) -> usize {
        4 * self.weights.len()
    }

    /// `output = fused(conv(input) + bias)`, `fused` reading `residual` where it adds it;
    /// NHWC in and out.
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        isa: Isa,
        g: &Geometry,
        input: &[f32],
        bias: &[f32],
        fused: Fused,
        output: &mut [f32],
        residual: Option<&[f32]>,
    ) {
        fused.check_residual(residual.is_some());
        assert_eq!(bias.len(), self.c_out);
        assert!(
            input.len() >= g.batch * g.height * g.width * g.c_in,
            "input too small"
        );
        let row = g.out_width * self.c_out;
        let output = &mut output[..g.batch * g.out_height * row];
        if let Some(r) = residual {
            assert!(r.len() >= output.len(), "residual too small");
        }
        // Bias padded like the weights, so that every block adds a whole vector.
        let mut padded_bias = vec![0f32; self.padded];
        padded_bias[..self.c_out].copy_from_slice(bias);
        let run = |(r, out): (usize, &mut [f32])| {
            let (image, oy) = (r / g.out_height, r % g.out_height);
            direct_row(isa, self, g, input, &padded_bias, (image, oy), out);
            fused.apply(out, residual.map(|res| &res[r * row..(r + 1) * row]));
        };
        let work = output.len() * g.kernel * g.kernel * g.c_in;
        if parallel(work) {
            output.par_chunks_mut(row).enumerate().for_each(run);
        } else {
            output.chunks_mut(row).enumerate().for_each(run);
        }
    }
}

/// One output row `(image, oy)`, bias added, before the activation, compiled for `isa`.
fn direct_row(
    isa: Isa,
    dw: &DirectWeights,
    g: &Geometry,
    input: &[f32],
    bias: &[f32],
    pixel_row: (usize, usize),
    out: &mut [f32],
) {
    // Unlike the other kernels' `multiversion!`, the x86 paths use fused multiply-adds: this
    // kernel is bound by its arithmetic, and `mul_add` without the FMA instructions (the
    // portable path, and armv7) would be a library call per value.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma")]
    fn avx512(
        dw: &DirectWeights,
        g: &Geometry,
        input: &[f32],
        bias: &[f32],
        pixel_row: (usize, usize),
        out: &mut [f32],
    ) {
        // 32 channels (two registers) by 6 pixels: 12 of the 32 registers hold sums, and each
        // broadcast input value feeds two multiply-adds.
        body::<true, 32, 6>(dw, g, input, bias, pixel_row, out)
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn avx2(
        dw: &DirectWeights,
        g: &Geometry,
        input: &[f32],
        bias: &[f32],
        pixel_row: (usize, usize),
        out: &mut [f32],
    ) {
        body::<true, 16, 4>(dw, g, input, bias, pixel_row, out)
    }
    match isa.arch() {
        // SAFETY: an `Isa` holds an instruction set only when the CPU has it.
        #[cfg(target_arch = "x86_64")]
        super::Arch::Avx512 => unsafe { avx512(dw, g, input, bias, pixel_row, out) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        super::Arch::Avx2 => unsafe { avx2(dw, g, input, bias, pixel_row, out) },
        // NEON has fused multiply-adds in its baseline.
        #[cfg(target_arch = "aarch64")]
        _ => body::<true, 16, 4>(dw, g, input, bias, pixel_row, out),
        #[cfg(not(target_arch = "aarch64"))]
        _ => body::<false, 16, 4>(dw, g, input, bias, pixel_row, out),
    }
}

/// `acc += x * w`, fused when `FMA`.
#[inline(always)]
fn madd<const FMA: bool, const L: usize>(acc: &mut [f32; L], x: f32, w: &[f32; L]) {
    for l in 0..L {
        acc[l] = if FMA {
            x.mul_add(w[l], acc[l])
        } else {
            acc[l] + x * w[l]
        };
    }
}

/// [`direct_row`]'s body: output channels in blocks of `L` (dividing [`PAD`]), pixels `G` at
/// a time, so that each weight load serves `G` pixels.
#[inline(always)]
fn body<const FMA: bool, const L: usize, const G: usize>(
    dw: &DirectWeights,
    g: &Geometry,
    input: &[f32],
    bias: &[f32],
    pixel_row: (usize, usize),
    out: &mut [f32],
) {
    let (image, oy) = pixel_row;
    let (c_in, k, s) = (g.c_in, g.kernel, g.stride);
    let (c_out, padded) = (dw.c_out, dw.padded);
    let taps_y = tap_range(oy * s, g.pad_top, g.height, k);
    let ow = g.out_width;
    // The input rows copied with the padding as zeros (column p is input column
    // p - pad_left), so that every pixel goes G at a time, the row's first and last
    // included: a last group that would run past the row is moved back to end with
    // it, recomputing a few pixels (in a row narrower than G, the pixels past it are
    // computed on zeros and dropped). The copy is a few thousand values per row.
    let pw = (ow.max(G) - 1) * s + k;
    let mut rows = vec![0f32; k * pw * c_in];
    for ky in taps_y.clone() {
        let iy = oy * s + ky - g.pad_top;
        let src = &input[((image * g.height + iy) * g.width) * c_in..][..g.width * c_in];
        let cols = g.width.min(pw.saturating_sub(g.pad_left));
        rows[(ky * pw + g.pad_left) * c_in..][..cols * c_in].copy_from_slice(&src[..cols * c_in]);
    }
    for group in 0..ow.div_ceil(G) {
        let ox0 = (group * G).min(ow.saturating_sub(G));
        for c0 in (0..c_out).step_by(L) {
            let mut acc = [load(bias, c0); G];
            // A row of taps is k * c_in values, contiguous in the input row (from the pixel's
            // first column) and in the weights (`padded` apart): one loop over them.
            let taps = k * c_in;
            for ky in taps_y.clone() {
                let x = &rows[(ky * pw + ox0 * s) * c_in..][..(G - 1) * s * c_in + taps];
                let w = &dw.weights[ky * taps * padded + c0..][..(taps - 1) * padded + L];
                for t in 0..taps {
                    // SAFETY: t < taps bounds the read by `w`'s length.
                    let wt = unsafe {
                        w.as_ptr()
                            .add(t * padded)
                            .cast::<[f32; L]>()
                            .read_unaligned()
                    };
                    for (q, acc) in acc.iter_mut().enumerate() {
                        // SAFETY: q < G and t < taps keep the index below `x`'s length.
                        let x = unsafe { *x.get_unchecked(q * s * c_in + t) };
                        madd::<FMA, L>(acc, x, &wt);
                    }
                }
            }
            for (q, acc) in acc.iter().enumerate().take(ow - ox0) {
                let at = (ox0 + q) * c_out + c0;
                let n = L.min(c_out - c0);
                out[at..at + n].copy_from_slice(&acc[..n]);
            }
        }
    }
}

/// The `L` values of `v` from `at` on.
#[inline(always)]
fn load<const L: usize>(v: &[f32], at: usize) -> [f32; L] {
    v[at..at + L].try_into().unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::conv::Conv;
    use crate::kernels::testing::{fused_case, max_relative_error, Rng};
    use crate::layers::Padding;

    /// Against the im2col GEMM (which the conv tests check against candle): every instruction
    /// set, 1-4 input channels, kernels 2-7, strides 1-3, paddings up to the kernel and TF
    /// SAME, output channels around the register block, inputs narrower than the kernel,
    /// ReLU6 and a residual.
    #[test]
    fn direct_matches_im2col() {
        let mut rng = Rng::new(11);
        for isa in Isa::supported() {
            for case in 0..40 {
                let c_in = 1 + case % 4;
                let kernel = [2, 3, 5, 7][(case / 4) % 4];
                let stride = 1 + rng.below(3);
                let padding = if case % 3 == 0 {
                    Padding::TfSame
                } else {
                    Padding::Symmetric(rng.below(kernel + 1))
                };
                let (n, h, w) = (1 + rng.below(2), 1 + rng.below(20), 1 + rng.below(20));
                let c_out = [1, 15, 16, 17, 32, 40, 64][rng.below(7)];
                let geometry = Geometry::new((n, h, w, c_in), kernel, stride, padding);
                if geometry.out_height == 0 || geometry.out_width == 0 {
                    continue;
                }
                let weight = rng.vec(c_out * c_in * kernel * kernel);
                let bias = rng.vec(c_out);
                let x = rng.vec(n * h * w * c_in);
                let out_len = geometry.out_pixels() * c_out;
                let residual = rng.vec(out_len);
                let shape = (c_in, c_out, kernel);
                // Every epilogue of the GEMM's tests in turn (which check it against its
                // definition), the residual where it adds one.
                let fused = fused_case(case);
                let residual = fused.has_residual().then_some(&residual[..]);
                let conv = Conv::new(isa, &weight, bias, shape, stride, padding, fused);
                let mut out = vec![f32::NAN; out_len + 5];
                conv.run(isa, &x, (n, h, w), &mut out, residual);
                let reference = conv.into_im2col(isa, &weight);
                let mut expected = vec![0f32; out_len];
                reference.run(isa, &x, (n, h, w), &mut expected, residual);
                assert!(
                    out[out_len..].iter().all(|v| v.is_nan()),
                    "wrote past the output"
                );
                let err = max_relative_error(&out[..out_len], &expected);
                assert!(
                    err <= 1e-5,
                    "{} case {case}: {n}x{h}x{w}x{c_in} k{kernel} s{stride} {padding:?} -> {c_out}: {err:e}",
                    isa.name()
                );
            }
        }
    }
}
