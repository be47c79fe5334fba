//! Fully connected layers: one GEMM with the batch as rows.

use super::gemm::{self, Epilogue, PackedB, RowMajor};
use super::{Activation, Isa};

/// A dense layer with its weights packed for the GEMM.
pub struct Dense {
    pub inputs: usize,
    pub outputs: usize,
    weights: PackedB,
    bias: Vec<f32>,
    pub activation: Activation,
}

impl Dense {
    /// `weight` is `[outputs, inputs]` (PyTorch's layout). Input feature `i` of this layer
    /// multiplies weight column `column(i)`: how a flatten in another order (NHWC here, NCHW
    /// in the checkpoint) is absorbed at load instead of permuting activations at run time.
    pub fn new(
        isa: Isa,
        weight: &[f32],
        bias: Vec<f32>,
        activation: Activation,
        column: impl Fn(usize) -> usize,
    ) -> Self {
        let outputs = bias.len();
        let inputs = weight.len() / outputs.max(1);
        assert_eq!(weight.len(), inputs * outputs);
        let weights = PackedB::new(isa, inputs, outputs, |i, o| weight[o * inputs + column(i)]);
        Self {
            inputs,
            outputs,
            weights,
            bias,
            activation,
        }
    }

    pub fn bytes(&self) -> usize {
        self.weights.bytes() + 4 * self.bias.len()
    }

    /// `output[batch, outputs] = activation(input[batch, inputs] · W^T + bias)`.
    pub fn run(&self, isa: Isa, input: &[f32], batch: usize, output: &mut [f32]) {
        let a = RowMajor {
            data: &input[..batch * self.inputs],
            rows: batch,
            cols: self.inputs,
        };
        let epilogue = Epilogue {
            bias: Some(&self.bias),
            activation: self.activation,
            residual: None,
        };
        gemm::gemm(isa, &a, &self.weights, output, &epilogue);
    }
}

/// For [`Dense::new`]: the NCHW (PyTorch `flatten(1)`) index of NHWC feature `i` of an
/// `h x w x c` map.
pub fn nchw_column(h: usize, w: usize, c: usize) -> impl Fn(usize) -> usize {
    move |i| {
        let (pixel, ch) = (i / c, i % c);
        ch * h * w + pixel
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::{max_relative_error, Rng};

    /// An NHWC flatten with permuted weights equals the NCHW flatten with the original ones.
    #[test]
    fn dense_with_nchw_columns_matches_naive_layer() {
        let mut rng = Rng::new(5);
        let (h, w, c, outputs) = (3, 2, 5, 7);
        let inputs = h * w * c;
        for isa in Isa::supported() {
            for batch in [1, 2, 3, 9] {
                let nchw = rng.vec(batch * inputs);
                let weight = rng.vec(outputs * inputs);
                let bias = rng.vec(outputs);
                let mut expected = vec![0f32; batch * outputs];
                for b in 0..batch {
                    for o in 0..outputs {
                        let dot: f32 = (0..inputs)
                            .map(|i| nchw[b * inputs + i] * weight[o * inputs + i])
                            .sum();
                        expected[b * outputs + o] = (dot + bias[o]).max(0.0);
                    }
                }
                let mut nhwc = vec![0f32; nchw.len()];
                let column = nchw_column(h, w, c);
                for b in 0..batch {
                    for i in 0..inputs {
                        nhwc[b * inputs + i] = nchw[b * inputs + column(i)];
                    }
                }
                let dense = Dense::new(isa, &weight, bias, Activation::Relu, nchw_column(h, w, c));
                let mut out = vec![f32::NAN; batch * outputs];
                dense.run(isa, &nhwc, batch, &mut out);
                let err = max_relative_error(&out, &expected);
                assert!(err <= 1e-5, "{} batch {batch}: {err:e}", isa.name());
            }
        }
    }
}
