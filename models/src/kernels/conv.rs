//! Dense 2-D convolution over NHWC activations as one packed GEMM per call.
//!
//! Output pixels are the GEMM's rows, output channels its columns and `(ky, kx, c_in)` its
//! depth. The left operand is an implicit im2col ([`Im2col`]): each `MR x KC` panel is
//! gathered from the input when it is packed, so no im2col buffer is ever built. A 1x1
//! stride-1 convolution multiplies its input in place: NHWC activations are already the
//! `[pixels, c_in]` left operand. 3x3 stride-1
//! convolutions with enough input channels go through [`Winograd`] instead.

use super::direct::DirectWeights;
use super::gemm::{self, Epilogue, PackA, PackedB};
use super::winograd::{Tile, Winograd};
use super::{Fused, Isa};
use crate::layers::Padding;

/// Geometry of a convolution, resolved for one input size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub batch: usize,
    pub height: usize,
    pub width: usize,
    pub c_in: usize,
    pub kernel: usize,
    pub stride: usize,
    pub pad_top: usize,
    pub pad_left: usize,
    pub out_height: usize,
    pub out_width: usize,
}

impl Geometry {
    pub fn new(
        (batch, height, width, c_in): (usize, usize, usize, usize),
        kernel: usize,
        stride: usize,
        padding: Padding,
    ) -> Self {
        let (pad_top, _, out_height) = padding.rows(height, kernel, stride);
        let (pad_left, _, out_width) = padding.cols(width, kernel, stride);
        Self {
            batch,
            height,
            width,
            c_in,
            kernel,
            stride,
            pad_top,
            pad_left,
            out_height,
            out_width,
        }
    }

    pub fn out_pixels(&self) -> usize {
        self.batch * self.out_height * self.out_width
    }

    /// Input row and column that output `(oy, ox)`'s tap `(ky, kx)` reads, if inside.
    #[inline]
    pub fn source(&self, oy: usize, ox: usize, ky: usize, kx: usize) -> Option<(usize, usize)> {
        let iy = (oy * self.stride + ky).checked_sub(self.pad_top)?;
        let ix = (ox * self.stride + kx).checked_sub(self.pad_left)?;
        (iy < self.height && ix < self.width).then_some((iy, ix))
    }
}

/// The im2col matrix of an NHWC input, gathered panel by panel as the GEMM packs it.
pub struct Im2col<'a> {
    pub input: &'a [f32],
    pub geometry: Geometry,
}

impl PackA for Im2col<'_> {
    fn rows(&self) -> usize {
        self.geometry.out_pixels()
    }

    fn depth(&self) -> usize {
        self.geometry.kernel * self.geometry.kernel * self.geometry.c_in
    }

    fn pack(&self, m0: usize, k0: usize, kc: usize, mr: usize, out: &mut [f32]) {
        let g = &self.geometry;
        let c = g.c_in;
        // Row m is pixel (image, oy, ox) and depth k is tap (ky, kx), channel ci. Both are
        // stepped rather than divided out per row and per tap: with 3 input channels (a
        // network's first convolution) a run is 3 values and divisions would cost more than
        // the copies.
        let per_image = g.out_height * g.out_width;
        let (mut image, pixel) = (m0 / per_image, m0 % per_image);
        let (mut oy, mut ox) = (pixel / g.out_width, pixel % g.out_width);
        let (first_tap, first_ci) = (k0 / c, k0 % c);
        for r in 0..mr {
            if m0 + r >= self.rows() {
                (0..kc).for_each(|p| out[p * mr + r] = 0.0);
                continue;
            }
            let (mut ky, mut kx) = (first_tap / g.kernel, first_tap % g.kernel);
            let (mut k, mut ci) = (k0, first_ci);
            while k < k0 + kc {
                let run = (c - ci).min(k0 + kc - k);
                let dst = (k - k0) * mr + r;
                match g.source(oy, ox, ky, kx) {
                    Some((iy, ix)) => {
                        let at = ((image * g.height + iy) * g.width + ix) * c + ci;
                        for (q, v) in self.input[at..at + run].iter().enumerate() {
                            out[dst + q * mr] = *v;
                        }
                    }
                    None => (0..run).for_each(|q| out[dst + q * mr] = 0.0),
                }
                k += run;
                ci = 0;
                kx += 1;
                if kx == g.kernel {
                    (kx, ky) = (0, ky + 1);
                }
            }
            ox += 1;
            if ox == g.out_width {
                (ox, oy) = (0, oy + 1);
                if oy == g.out_height {
                    (oy, image) = (0, image + 1);
                }
            }
        }
    }

    fn row_major(&self) -> Option<(&[f32], usize)> {
        let g = &self.geometry;
        // A 1x1 stride-1 unpadded convolution's im2col is its input, a [pixels, c_in] matrix.
        (g.kernel == 1 && g.stride == 1 && g.pad_top == 0 && g.pad_left == 0)
            .then(|| (&self.input[..g.out_pixels() * g.c_in], g.c_in))
    }
}

/// Below this many input channels a 3x3 convolution stays on im2col: Winograd's transforms
/// cost per channel what its smaller GEMMs save per channel pair.
const WINOGRAD_MIN_CHANNELS: usize = 16;

/// The Winograd variant 3x3 convolutions use: F(4x4, 3x3) does 1.8x fewer multiplies than
/// F(2x2, 3x3) (see [`super::winograd`] for what it costs in rounding and memory).
const WINOGRAD_TILE: Tile = Tile::F4;

/// Maps of at most this side take F(2x2, 3x3) in [`Conv::for_map`]. Measured per layer at
/// batch 1 (25th percentiles of alternating runs): alexnet-small's 8x8 layer 356-422 ->
/// 325-386 us, VGG16's three 14x14 layers 22.2/27.2 -> 19.0/19.4 ms together; 16x16 maps stay
/// faster with F(4x4).
const WINOGRAD_F2_MAX_SIDE: usize = 14;

/// Up to this many input channels (an RGB network's first layer) a convolution wider than
/// 1x1 with at most 64 output channels runs as a direct convolution ([`super::direct`]):
/// packing its im2col panels would cost more than its multiplies. The 64-channel first layers,
/// im2col -> direct (25th percentiles, alternating runs): alexnet-small's 55-72 -> 40-43 us,
/// VGG16's 2.5-3.5 -> 1.8 ms.
const DIRECT_MAX_CHANNELS: (usize, usize) = (4, 64);

/// OIHW `weight` packed as the right operand of an implicit-im2col GEMM, whose depth index
/// (ky, kx, ci) reads OIHW element (o, ci, ky, kx).
fn im2col_weights(
    isa: Isa,
    weight: &[f32],
    (c_in, c_out, kernel): (usize, usize, usize),
) -> PackedB {
    assert_eq!(weight.len(), c_out * c_in * kernel * kernel);
    let kk = kernel * kernel;
    PackedB::new(isa, kk * c_in, c_out, |k, o| {
        let (tap, ci) = (k / c_in, k % c_in);
        weight[(o * c_in + ci) * kk + tap]
    })
}

/// How a [`Conv`] computes.
enum Algorithm {
    /// Implicit im2col and one GEMM; the weights packed as its right operand.
    Im2col(PackedB),
    Winograd(Winograd),
    Direct(DirectWeights),
}

/// A convolution with its weights packed for its algorithm (batch norm already folded in).
pub struct Conv {
    pub c_in: usize,
    pub c_out: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: Padding,
    algorithm: Algorithm,
    bias: Vec<f32>,
    /// What follows the bias: the activation, and where it falls, the residual.
    pub fused: Fused,
}

impl Conv {
    /// `weight` is OIHW `[c_out, c_in, kernel, kernel]` (PyTorch's layout), `bias` `[c_out]`.
    /// 3x3 stride-1 convolutions with at least 16 input channels use Winograd, wider than 1x1
    /// ones with few channels (`DIRECT_MAX_CHANNELS`) the direct kernel, the others im2col.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        isa: Isa,
        weight: &[f32],
        bias: Vec<f32>,
        (c_in, c_out, kernel): (usize, usize, usize),
        stride: usize,
        padding: Padding,
        fused: impl Into<Fused>,
    ) -> Self {
        let fused = fused.into();
        let algorithm = if kernel == 3 && stride == 1 && c_in >= WINOGRAD_MIN_CHANNELS {
            Algorithm::Winograd(Winograd::new(isa, WINOGRAD_TILE, weight, c_in, c_out))
        } else if kernel > 1 && c_in <= DIRECT_MAX_CHANNELS.0 && c_out <= DIRECT_MAX_CHANNELS.1 {
            Algorithm::Direct(DirectWeights::new(weight, (c_in, c_out, kernel)))
        } else {
            Algorithm::Im2col(im2col_weights(isa, weight, (c_in, c_out, kernel)))
        };
        assert_eq!(bias.len(), c_out);
        Self {
            c_in,
            c_out,
            kernel,
            stride,
            padding,
            algorithm,
            bias,
            fused,
        }
    }

    /// As [`Conv::new`], for a network whose input size is fixed: `side` is the side of the
    /// square map the layer sees, and a Winograd layer on a map of at most
    /// `WINOGRAD_F2_MAX_SIDE` uses F(2x2, 3x3), whose transformed weights are 16/9 of the
    /// 3x3 ones where F(4x4)'s are 36/9: on a small map the GEMMs have few rows, and the time
    /// goes into streaming those weights.
    #[allow(clippy::too_many_arguments)]
    pub fn for_map(
        isa: Isa,
        weight: &[f32],
        bias: Vec<f32>,
        (c_in, c_out, kernel): (usize, usize, usize),
        stride: usize,
        padding: Padding,
        fused: impl Into<Fused>,
        side: usize,
    ) -> Self {
        let conv = Self::new(
            isa,
            weight,
            bias,
            (c_in, c_out, kernel),
            stride,
            padding,
            fused,
        );
        match conv.algorithm {
            Algorithm::Winograd(_) if side <= WINOGRAD_F2_MAX_SIDE => Self {
                algorithm: Algorithm::Winograd(Winograd::new(isa, Tile::F2, weight, c_in, c_out)),
                ..conv
            },
            _ => conv,
        }
    }

    /// The same convolution through im2col, whatever [`Conv::new`] chose: the reference the
    /// other algorithms' tests compare with. `weight` is the one it was made from.
    #[cfg(test)]
    pub(crate) fn into_im2col(self, isa: Isa, weight: &[f32]) -> Self {
        let weights = im2col_weights(isa, weight, (self.c_in, self.c_out, self.kernel));
        Self {
            algorithm: Algorithm::Im2col(weights),
            ..self
        }
    }

    pub fn geometry(&self, (n, h, w): (usize, usize, usize)) -> Geometry {
        Geometry::new((n, h, w, self.c_in), self.kernel, self.stride, self.padding)
    }

    /// Whether this is a 1x1 stride-1 unpadded convolution: a product of each pixel's
    /// channels with a matrix, which [`Conv::pointwise_serial`] computes.
    pub(crate) fn is_pointwise(&self) -> bool {
        self.kernel == 1
            && self.stride == 1
            && self.padding.is_none_for_pointwise()
            && matches!(self.algorithm, Algorithm::Im2col(_))
    }

    /// `output = fused(input · weights + bias)` for a pointwise convolution
    /// ([`Conv::is_pointwise`]) of `pixels` NHWC pixels, on the calling thread alone: for a
    /// kernel that shares out work of its own (a fused block's bands).
    pub(crate) fn pointwise_serial(
        &self,
        isa: Isa,
        input: &[f32],
        pixels: usize,
        output: &mut [f32],
        residual: Option<&[f32]>,
    ) {
        let Algorithm::Im2col(weights) = &self.algorithm else {
            panic!("pointwise_serial on a Winograd convolution");
        };
        assert!(
            self.is_pointwise(),
            "pointwise_serial on a {}x{} convolution",
            self.kernel,
            self.kernel
        );
        let a = gemm::RowMajor {
            data: &input[..pixels * self.c_in],
            rows: pixels,
            cols: self.c_in,
        };
        let epilogue = Epilogue {
            bias: Some(&self.bias),
            fused: self.fused,
            residual,
        };
        let strips = self.c_out.div_ceil(weights.nr());
        gemm::gemm_serial(isa, &a, weights, output, 0..strips, &epilogue, false);
    }

    /// Bytes of packed weights and bias.
    pub fn bytes(&self) -> usize {
        let weights = match &self.algorithm {
            Algorithm::Im2col(w) => w.bytes(),
            Algorithm::Winograd(w) => w.bytes(),
            Algorithm::Direct(w) => w.bytes(),
        };
        weights + 4 * self.bias.len()
    }

    /// `output = fused(conv(input) + bias)`, `fused` reading `residual` where it adds it;
    /// `input` is NHWC `(n, h, w)` with
    /// `c_in` channels, `output` (and `residual`) NHWC with `c_out` channels.
    pub fn run(
        &self,
        isa: Isa,
        input: &[f32],
        dims: (usize, usize, usize),
        output: &mut [f32],
        residual: Option<&[f32]>,
    ) {
        let geometry = self.geometry(dims);
        match &self.algorithm {
            Algorithm::Im2col(weights) => {
                let a = Im2col { input, geometry };
                let epilogue = Epilogue {
                    bias: Some(&self.bias),
                    fused: self.fused,
                    residual,
                };
                gemm::gemm(isa, &a, weights, output, &epilogue);
            }
            Algorithm::Winograd(w) => w.run(
                isa, input, &geometry, &self.bias, self.fused, residual, output,
            ),
            Algorithm::Direct(w) => w.run(
                isa, &geometry, input, &self.bias, self.fused, output, residual,
            ),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use candle_core::{Device, Tensor};

    use super::*;
    use crate::kernels::testing::{max_relative_error, Rng};
    use crate::kernels::Activation;

    /// NCHW data to NHWC.
    pub fn to_nhwc(x: &[f32], (n, c, h, w): (usize, usize, usize, usize)) -> Vec<f32> {
        let mut out = vec![0f32; x.len()];
        for i in 0..n {
            for ch in 0..c {
                for y in 0..h {
                    for xx in 0..w {
                        out[((i * h + y) * w + xx) * c + ch] = x[((i * c + ch) * h + y) * w + xx];
                    }
                }
            }
        }
        out
    }

    /// The reference: candle's NCHW conv2d through the reference layer (padding included),
    /// returned as NHWC.
    fn reference(
        x: &[f32],
        dims: (usize, usize, usize, usize),
        weight: &[f32],
        bias: &[f32],
        (c_out, kernel, stride): (usize, usize, usize),
        padding: Padding,
    ) -> Vec<f32> {
        let (n, c, h, w) = dims;
        let dev = Device::Cpu;
        let x = Tensor::from_slice(x, dims, &dev).unwrap();
        let wt = Tensor::from_slice(weight, (c_out, c, kernel, kernel), &dev).unwrap();
        let b = Tensor::from_slice(bias, c_out, &dev).unwrap();
        let y = crate::layers::Conv2d::from_tensors(wt, Some(b), stride, padding)
            .forward(&x)
            .unwrap();
        let (_, _, oh, ow) = y.dims4().unwrap();
        let y = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let _ = (n, h, w);
        to_nhwc(&y, (n, c_out, oh, ow))
    }

    /// Random shapes, strides, paddings and odd sizes on every instruction set.
    #[test]
    fn conv_matches_candle_reference() {
        let mut rng = Rng::new(2);
        for isa in Isa::supported() {
            for case in 0..24 {
                let kernel = [1, 3, 5, 2][case % 4];
                let stride = 1 + rng.below(2);
                let padding = if case % 3 == 0 {
                    Padding::TfSame
                } else {
                    Padding::Symmetric(rng.below(kernel))
                };
                let (n, c, h, w) = (
                    1 + rng.below(2),
                    1 + rng.below(20),
                    5 + rng.below(12),
                    5 + rng.below(12),
                );
                let c_out = 1 + rng.below(40);
                let x = rng.vec(n * c * h * w);
                let weight = rng.vec(c_out * c * kernel * kernel);
                let bias = rng.vec(c_out);
                let expected = reference(
                    &x,
                    (n, c, h, w),
                    &weight,
                    &bias,
                    (c_out, kernel, stride),
                    padding,
                );
                let conv = Conv::new(
                    isa,
                    &weight,
                    bias,
                    (c, c_out, kernel),
                    stride,
                    padding,
                    Fused::NONE,
                );
                let mut out = vec![f32::NAN; expected.len()];
                assert_eq!(conv.geometry((n, h, w)).out_pixels() * c_out, out.len());
                conv.run(isa, &to_nhwc(&x, (n, c, h, w)), (n, h, w), &mut out, None);
                let err = max_relative_error(&out, &expected);
                assert!(
                    err <= 1e-4,
                    "{} case {case} k{kernel} s{stride} {padding:?} {n}x{c}x{h}x{w}->{c_out}: {err:e}",
                    isa.name()
                );
            }
        }
    }

    /// 1x1 convolutions, which read their input in place: pixel counts around the tile
    /// height (partial last panels), depths past one packed block, residual and ReLU6 fused.
    #[test]
    fn pointwise_conv_reads_its_input_in_place() {
        let mut rng = Rng::new(7);
        for isa in Isa::supported() {
            for case in 0..12 {
                let (n, h, w) = (1 + rng.below(2), 1 + rng.below(14), 1 + rng.below(14));
                let c_in = [1, 16, 37, 300, 600][case % 5] + rng.below(3);
                let c_out = 1 + rng.below(70);
                let x = rng.vec(n * h * w * c_in);
                let weight = rng.vec(c_out * c_in);
                let bias = rng.vec(c_out);
                let residual = rng.vec(n * h * w * c_out);
                let mut expected = vec![0f32; n * h * w * c_out];
                for (p, out) in expected.chunks_exact_mut(c_out).enumerate() {
                    for (o, y) in out.iter_mut().enumerate() {
                        let dot: f64 = (0..c_in)
                            .map(|i| f64::from(x[p * c_in + i]) * f64::from(weight[o * c_in + i]))
                            .sum();
                        let v = (dot as f32 + bias[o]).clamp(0.0, 6.0);
                        *y = v + residual[p * c_out + o];
                    }
                }
                let conv = Conv::new(
                    isa,
                    &weight,
                    bias,
                    (c_in, c_out, 1),
                    1,
                    Padding::TfSame,
                    Fused::from(Activation::Relu6).with_residual(),
                );
                let mut out = vec![f32::NAN; expected.len()];
                conv.run(isa, &x, (n, h, w), &mut out, Some(&residual));
                let err = max_relative_error(&out, &expected);
                assert!(
                    err <= 1e-5,
                    "{} {n}x{h}x{w} {c_in}->{c_out}: {err:e}",
                    isa.name()
                );
            }
        }
    }
}
