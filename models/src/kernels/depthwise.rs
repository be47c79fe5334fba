//! Depthwise convolution over NHWC activations, vectorised over channels.
//!
//! In NHWC the channels of a pixel are contiguous, and so are the weights of one tap once
//! stored `[ky][kx][c]`: every tap is one multiply-add over two contiguous rows, which the
//! compiler vectorises for the instruction set the kernel is compiled for. Output rows are
//! shared out over rayon's pool.

use rayon::prelude::*;

use super::conv::Geometry;
use super::{multiversion, Activation, Isa};
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
        output[..g.batch * g.out_height * row]
            .par_chunks_mut(row)
            .enumerate()
            .for_each(|(r, out)| {
                let (image, oy) = (r / g.out_height, r % g.out_height);
                depthwise_row(isa, self, &g, input, image, oy, out);
            });
    }
}

multiversion! {
    /// One output row `(image, oy)` of a depthwise convolution.
    fn depthwise_row(
        dw: &Depthwise,
        g: &Geometry,
        input: &[f32],
        image: usize,
        oy: usize,
        out: &mut [f32],
    ) {
        let c = dw.channels;
        for (ox, acc) in out.chunks_exact_mut(c).enumerate() {
            acc.copy_from_slice(&dw.bias);
            for ky in 0..g.kernel {
                for kx in 0..g.kernel {
                    if let Some((iy, ix)) = g.source(oy, ox, ky, kx) {
                        let at = ((image * g.height + iy) * g.width + ix) * c;
                        let x = &input[at..at + c];
                        let w = &dw.weights[(ky * g.kernel + kx) * c..][..c];
                        for ((a, x), w) in acc.iter_mut().zip(x).zip(w) {
                            *a += *x * *w;
                        }
                    }
                }
            }
            dw.activation.apply(acc);
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;
    use crate::kernels::conv::tests::to_nhwc;
    use crate::kernels::testing::{max_relative_error, Rng};

    /// Odd sizes, strides 1 and 2, kernels 3 and 5, both paddings, every instruction set,
    /// against the reference layer (candle ops).
    #[test]
    fn depthwise_matches_candle_reference() {
        let mut rng = Rng::new(3);
        for isa in Isa::supported() {
            for case in 0..16 {
                let kernel = [3, 5, 1][case % 3];
                let stride = 1 + case % 2;
                let padding = if case % 4 < 2 {
                    Padding::TfSame
                } else {
                    Padding::Symmetric(kernel / 2)
                };
                let (n, c, h, w) = (
                    1 + rng.below(2),
                    1 + rng.below(40),
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
