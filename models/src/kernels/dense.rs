//! Fully connected layers: one GEMM with the batch as rows, or, on weights an artifact stores
//! in f16, a strip kernel that converts them as it multiplies.

use half::f16;
use rayon::prelude::*;

use super::gemm::{self, Epilogue, Microkernel, PackedB, RowMajor};
use super::{multiversion, parallel, Activation, Isa, SyncPtr};

/// A dense layer with its weights packed for the GEMM.
pub struct Dense {
    pub inputs: usize,
    pub outputs: usize,
    weights: Weights,
    bias: Vec<f32>,
    pub activation: Activation,
}

/// A dense layer's weights, as the layer keeps them.
enum Weights {
    F32(PackedB),
    /// f16 bits as the artifact stored them, in [`PackedB`]'s layout: strip `s` holds
    /// columns `s * nr ..` as `k` rows of `nr` values (zero past `n`).
    F16 {
        k: usize,
        n: usize,
        nr: usize,
        data: Vec<u16>,
    },
}

/// Rows of the input multiplied per pass over an f16 strip: four rows' sums fill 8 of the
/// vector registers, and a batch of 8 streams the weights twice (f32's GEMM streams them once,
/// at twice the bytes).
const F16_ROWS: usize = 4;

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
        let (inputs, outputs) = Self::shape(weight.len(), &bias);
        let weights = PackedB::new(isa, inputs, outputs, |i, o| weight[o * inputs + column(i)]);
        Self::with(inputs, outputs, Weights::F32(weights), bias, activation)
    }

    /// `(inputs, outputs)` of `values` weights for `bias`'s outputs.
    fn shape(values: usize, bias: &[f32]) -> (usize, usize) {
        let outputs = bias.len();
        let inputs = values / outputs.max(1);
        assert_eq!(values, inputs * outputs, "weights not [outputs, inputs]");
        (inputs, outputs)
    }

    fn with(
        inputs: usize,
        outputs: usize,
        weights: Weights,
        bias: Vec<f32>,
        activation: Activation,
    ) -> Self {
        Self {
            inputs,
            outputs,
            weights,
            bias,
            activation,
        }
    }

    /// As [`Dense::new`] on weights stored in f16, which the layer keeps in f16 (half the
    /// memory) and converts to f32 as it multiplies them: the products and sums are f32, the
    /// result that of the f32 layer on the same (f16-valued) weights.
    pub fn new_f16(
        isa: Isa,
        weight: &[f16],
        bias: Vec<f32>,
        activation: Activation,
        column: impl Fn(usize) -> usize,
    ) -> Self {
        let (inputs, outputs) = Self::shape(weight.len(), &bias);
        let (k, n, nr) = (inputs, outputs, Microkernel::for_isa(isa).nr);
        let mut data = vec![0u16; n.div_ceil(nr) * k * nr];
        for (s, strip) in data.chunks_exact_mut((k * nr).max(1)).enumerate() {
            for p in 0..k {
                for j in 0..nr.min(n - s * nr) {
                    strip[p * nr + j] = weight[(s * nr + j) * inputs + column(p)].to_bits();
                }
            }
        }
        let weights = Weights::F16 { k, n, nr, data };
        Self::with(inputs, outputs, weights, bias, activation)
    }

    pub fn bytes(&self) -> usize {
        let weights = match &self.weights {
            Weights::F32(w) => w.bytes(),
            Weights::F16 { data, .. } => 2 * data.len(),
        };
        weights + 4 * self.bias.len()
    }

    /// `output[batch, outputs] = activation(input[batch, inputs] · W^T + bias)`.
    pub fn run(&self, isa: Isa, input: &[f32], batch: usize, output: &mut [f32]) {
        let weights = match &self.weights {
            Weights::F32(w) => w,
            Weights::F16 { k, n, nr, data } => {
                return self.run_f16(isa, &input[..batch * k], (*k, *n, *nr), data, output)
            }
        };
        let a = RowMajor {
            data: &input[..batch * self.inputs],
            rows: batch,
            cols: self.inputs,
        };
        let epilogue = Epilogue {
            bias: Some(&self.bias),
            fused: self.activation.into(),
            residual: None,
        };
        gemm::gemm(isa, &a, weights, output, &epilogue);
    }

    /// [`Dense::run`] on f16 weights: each strip, shared out over rayon's pool, multiplies
    /// [`F16_ROWS`] input rows at a time (a last single row alone).
    fn run_f16(
        &self,
        isa: Isa,
        input: &[f32],
        (k, n, nr): (usize, usize, usize),
        data: &[u16],
        output: &mut [f32],
    ) {
        let batch = input.len() / k.max(1);
        let out = SyncPtr::new(output);
        let run = |s: usize| {
            let strip = &data[s * k * nr..(s + 1) * k * nr];
            let (col0, cols) = (s * nr, nr.min(n - s * nr));
            let mut acc = vec![0f32; F16_ROWS * nr];
            let mut r0 = 0;
            while r0 < batch {
                let rows = if batch - r0 >= F16_ROWS { F16_ROWS } else { 1 };
                gemv16(
                    isa,
                    &input[r0 * k..(r0 + rows) * k],
                    k,
                    strip,
                    &mut acc[..rows * nr],
                );
                for r in 0..rows {
                    let row = r0 + r;
                    // SAFETY: strip s owns columns col0..col0+cols of every row of the
                    // output, which holds batch x n values and outlives the loop.
                    let dst = unsafe {
                        std::slice::from_raw_parts_mut(out.get().add(row * n + col0), cols)
                    };
                    dst.copy_from_slice(&acc[r * nr..r * nr + cols]);
                    let bias = &self.bias[col0..col0 + cols];
                    gemm::finish(isa, dst, Some(bias), &self.activation.into(), None);
                }
                r0 += rows;
            }
        };
        let strips = n.div_ceil(nr);
        // Bound by the stream of weights, as the f32 matrix-vector product (see `gemm`).
        if parallel(8 * batch * n * k) {
            (0..strips).into_par_iter().for_each(run);
        } else {
            (0..strips).for_each(run);
        }
    }
}

/// `acc[i * nr + j] = sum_p x[i * k + p] * f32(strip[p * nr + j])` for the 1 or
/// [`F16_ROWS`] rows `x` holds: the x86 kernels where the CPU has them, else a portable loop.
fn gemv16(isa: Isa, x: &[f32], k: usize, strip: &[u16], acc: &mut [f32]) {
    let rows = x.len() / k.max(1);
    let nr = acc.len() / rows.max(1);
    assert!(strip.len() >= k * nr && x.len() == rows * k && acc.len() == rows * nr);
    #[cfg(target_arch = "x86_64")]
    {
        use super::{x86_64, Arch};
        let row = |i: usize| x[i * k..].as_ptr();
        let (w, a) = (strip.as_ptr(), acc.as_mut_ptr());
        // The safety of every call below: the rows hold k values each, the strip (checked) nr * k, acc
        // nr per row; the kernel's instruction set is the Isa's, which it can only be when
        // the CPU has it (F16C is tested here).
        match (isa.arch(), nr, rows) {
            (Arch::Avx512, 32, 1) => {
                // SAFETY: the lengths asserted above; the kernel's instruction set is the Isa's.
                return unsafe { x86_64::avx512_gemv16_strip::<1, 4>(k, [row(0)], w, a) };
            }
            (Arch::Avx512, 32, F16_ROWS) => {
                // SAFETY: the lengths asserted above; the kernel's instruction set is the Isa's.
                return unsafe {
                    x86_64::avx512_gemv16_strip::<F16_ROWS, 1>(k, std::array::from_fn(row), w, a)
                };
            }
            (Arch::Avx2, 16, 1) if std::arch::is_x86_feature_detected!("f16c") => {
                // SAFETY: the lengths asserted above; AVX2 is the Isa's, F16C tested in the guard.
                return unsafe { x86_64::avx2_gemv16_strip::<1, 4>(k, [row(0)], w, a) };
            }
            (Arch::Avx2, 16, F16_ROWS) if std::arch::is_x86_feature_detected!("f16c") => {
                // SAFETY: the lengths asserted above; AVX2 is the Isa's, F16C tested in the guard.
                return unsafe {
                    x86_64::avx2_gemv16_strip::<F16_ROWS, 1>(k, std::array::from_fn(row), w, a)
                };
            }
            _ => {}
        }
    }
    gemv16_loop(isa, x, k, strip, acc);
}

multiversion! {
    /// [`gemv16`]'s portable loop, each weight converted once per depth for all the rows.
    fn gemv16_loop(x: &[f32], k: usize, strip: &[u16], acc: &mut [f32]) {
        let rows = x.len() / k.max(1);
        let nr = acc.len() / rows.max(1);
        acc.fill(0.0);
        let mut w = vec![0f32; nr];
        for p in 0..k {
            for (w, &bits) in w.iter_mut().zip(&strip[p * nr..(p + 1) * nr]) {
                *w = f16::from_bits(bits).to_f32();
            }
            for (i, sums) in acc.chunks_exact_mut(nr).enumerate() {
                let xp = x[i * k + p];
                for (s, w) in sums.iter_mut().zip(&w) {
                    *s += xp * *w;
                }
            }
        }
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

    /// f16 weights against the naive layer on the same weights in f32: every instruction
    /// set, batches that take the four-row kernel, the one-row kernel and both, depths with
    /// and without a remainder past the kernels' steps of four, a part-filled last strip.
    #[test]
    fn f16_dense_matches_naive_layer() {
        let mut rng = Rng::new(6);
        for isa in Isa::supported() {
            for (inputs, outputs) in [(1, 1), (7, 3), (64, 40), (259, 70)] {
                let weight: Vec<f16> = rng
                    .vec(outputs * inputs)
                    .into_iter()
                    .map(f16::from_f32)
                    .collect();
                let wide: Vec<f32> = weight.iter().map(|w| w.to_f32()).collect();
                let bias = rng.vec(outputs);
                let dense = Dense::new_f16(isa, &weight, bias.clone(), Activation::Relu6, |i| i);
                assert_eq!(
                    dense.bytes(),
                    2 * outputs.div_ceil(Microkernel::for_isa(isa).nr)
                        * Microkernel::for_isa(isa).nr
                        * inputs
                        + 4 * outputs
                );
                for batch in [1, 2, 4, 5, 9] {
                    let x = rng.vec(batch * inputs);
                    let mut expected = vec![0f32; batch * outputs];
                    for b in 0..batch {
                        for o in 0..outputs {
                            let dot: f64 = (0..inputs)
                                .map(|i| {
                                    f64::from(x[b * inputs + i]) * f64::from(wide[o * inputs + i])
                                })
                                .sum();
                            expected[b * outputs + o] = (dot as f32 + bias[o]).clamp(0.0, 6.0);
                        }
                    }
                    let mut out = vec![f32::NAN; batch * outputs];
                    dense.run(isa, &x, batch, &mut out);
                    let err = max_relative_error(&out, &expected);
                    assert!(
                        err <= 1e-5,
                        "{} {inputs}->{outputs} batch {batch}: {err:e}",
                        isa.name()
                    );
                }
            }
        }
    }
}
