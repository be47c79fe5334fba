//! CPU kernels with hand-written backward passes for the training path.
//!
//! Built from candle's generic ops, a 3x3 convolution's im2col is pad + nine `narrow`s + `cat`,
//! and its backward pass a chain of zero-padded copies; a 2x2 max pool back-propagates through
//! broadcast comparisons. Each is a handful of full-size temporaries per layer and step, and
//! they cost several times the matrix products themselves. Here each is one pass over memory.
//! Inputs must be contiguous NHWC f32.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

/// Rows per task in the row-parallel loops. Fixed, not derived from the thread count, so
/// that the per-channel sums add the same partial sums in the same order on any machine:
/// a run is bit-reproducible.
const ROWS_PER_TASK: usize = 1024;

fn contiguous_f32<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
) -> candle_core::Result<&'a [f32]> {
    let data = storage.as_slice::<f32>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{op} needs a contiguous input"),
    }
}

fn dims4(layout: &Layout, op: &str) -> candle_core::Result<(usize, usize, usize, usize)> {
    match *layout.dims() {
        [n, h, w, c] => Ok((n, h, w, c)),
        ref other => candle_core::bail!("{op} needs [N, H, W, C], got {other:?}"),
    }
}

/// `[N, H, W, C]` -> `[N*H*W, 9*C]`: row `(n, y, x)` holds the 3x3 neighbourhood (zero
/// padded), ordered `(dy, dx, c)`.
pub struct Im2Col3x3;

impl CustomOp1 for Im2Col3x3 {
    fn name(&self) -> &'static str {
        "im2col3x3"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout, self.name())?;
        let (n, h, w, c) = dims4(layout, self.name())?;
        let mut out = vec![0f32; n * h * w * 9 * c];
        // One task per image.
        out.par_chunks_mut((h * w * 9 * c).max(1))
            .enumerate()
            .for_each(|(b, out)| {
                for y in 0..h {
                    for x0 in 0..w {
                        let row = (y * w + x0) * 9 * c;
                        for dy in 0..3 {
                            let sy = y + dy;
                            if sy == 0 || sy > h {
                                continue;
                            }
                            for dx in 0..3 {
                                let sx = x0 + dx;
                                if sx == 0 || sx > w {
                                    continue;
                                }
                                let src = ((b * h + sy - 1) * w + sx - 1) * c;
                                let dst = row + (dy * 3 + dx) * c;
                                out[dst..dst + c].copy_from_slice(&x[src..src + c]);
                            }
                        }
                    }
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((n * h * w, 9 * c))))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let (n, h, w, c) = arg.dims4()?;
        Ok(Some(
            grad_res
                .contiguous()?
                .apply_op1_no_bwd(&Col2Im3x3 { n, h, w, c })?,
        ))
    }
}

/// The adjoint of [`Im2Col3x3`]: sums every column entry back onto the pixel it came from.
struct Col2Im3x3 {
    n: usize,
    h: usize,
    w: usize,
    c: usize,
}

impl CustomOp1 for Col2Im3x3 {
    fn name(&self) -> &'static str {
        "col2im3x3"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let cols = contiguous_f32(storage, layout, self.name())?;
        let Self { n, h, w, c } = *self;
        if cols.len() != n * h * w * 9 * c {
            candle_core::bail!("col2im3x3: {} values for {n}x{h}x{w}x{c}", cols.len());
        }
        let mut out = vec![0f32; n * h * w * c];
        out.par_chunks_mut((h * w * c).max(1))
            .enumerate()
            .for_each(|(b, out)| {
                for y in 0..h {
                    for x0 in 0..w {
                        let row = ((b * h + y) * w + x0) * 9 * c;
                        for dy in 0..3 {
                            let sy = y + dy;
                            if sy == 0 || sy > h {
                                continue;
                            }
                            for dx in 0..3 {
                                let sx = x0 + dx;
                                if sx == 0 || sx > w {
                                    continue;
                                }
                                let dst = ((sy - 1) * w + sx - 1) * c;
                                let src = row + (dy * 3 + dx) * c;
                                for (o, v) in out[dst..dst + c].iter_mut().zip(&cols[src..src + c])
                                {
                                    *o += v;
                                }
                            }
                        }
                    }
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((n, h, w, c))))
    }
}

/// 2x2 max pooling, stride 2, on `[N, H, W, C]` (H and W even).
pub struct MaxPool2;

impl CustomOp1 for MaxPool2 {
    fn name(&self) -> &'static str {
        "maxpool2"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout, self.name())?;
        let (n, h, w, c) = dims4(layout, self.name())?;
        let (ho, wo) = (h / 2, w / 2);
        let mut out = vec![0f32; n * ho * wo * c];
        out.par_chunks_mut((ho * wo * c).max(1))
            .enumerate()
            .for_each(|(b, out)| {
                for y in 0..ho {
                    for x0 in 0..wo {
                        let dst = (y * wo + x0) * c;
                        let at =
                            |dy: usize, dx: usize| ((b * h + 2 * y + dy) * w + 2 * x0 + dx) * c;
                        let (p, q, r, s) = (at(0, 0), at(0, 1), at(1, 0), at(1, 1));
                        for k in 0..c {
                            out[dst + k] = x[p + k].max(x[q + k]).max(x[r + k]).max(x[s + k]);
                        }
                    }
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((n, ho, wo, c))))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(arg.apply_op2_no_bwd(
            &grad_res.contiguous()?,
            &MaxPool2Backward,
        )?))
    }
}

/// Routes each pooled gradient to the first maximum of its window (PyTorch does the same).
struct MaxPool2Backward;

impl CustomOp2 for MaxPool2Backward {
    fn name(&self) -> &'static str {
        "maxpool2-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, self.name())?;
        let g = contiguous_f32(s2, l2, self.name())?;
        let (n, h, w, c) = dims4(l1, self.name())?;
        let (ho, wo) = (h / 2, w / 2);
        let mut out = vec![0f32; n * h * w * c];
        out.par_chunks_mut((h * w * c).max(1))
            .enumerate()
            .for_each(|(b, out)| {
                let x = &x[b * h * w * c..][..h * w * c];
                for y in 0..ho {
                    for x0 in 0..wo {
                        let src = ((b * ho + y) * wo + x0) * c;
                        let at = |dy: usize, dx: usize| ((2 * y + dy) * w + 2 * x0 + dx) * c;
                        let taps = [at(0, 0), at(0, 1), at(1, 0), at(1, 1)];
                        for k in 0..c {
                            let mut best = taps[0];
                            for &t in &taps[1..] {
                                if x[t + k] > x[best + k] {
                                    best = t;
                                }
                            }
                            out[best + k] = g[src + k];
                        }
                    }
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((n, h, w, c))))
    }
}

/// Per-channel mean and (biased) variance of `[M, C]`, accumulated in f64: `[2, C]`.
pub struct ChannelStats;

fn channel_stats(x: &[f32], c: usize) -> (Vec<f64>, Vec<f64>) {
    let m = (x.len() / c).max(1) as f64;
    let partial: Vec<(Vec<f64>, Vec<f64>)> = x
        .par_chunks(ROWS_PER_TASK * c)
        .map(|rows| {
            let mut sum = vec![0f64; c];
            let mut sq = vec![0f64; c];
            for row in rows.chunks_exact(c) {
                for k in 0..c {
                    let v = f64::from(row[k]);
                    sum[k] += v;
                    sq[k] += v * v;
                }
            }
            (sum, sq)
        })
        .collect();
    let (sum, sq) = add_partials(c, partial);
    let mean: Vec<f64> = sum.iter().map(|s| s / m).collect();
    let var = sq
        .iter()
        .zip(&mean)
        .map(|(q, mu)| (q / m - mu * mu).max(0.0))
        .collect();
    (mean, var)
}

/// Adds per-task partial sums in task order.
fn add_partials(c: usize, partial: Vec<(Vec<f64>, Vec<f64>)>) -> (Vec<f64>, Vec<f64>) {
    let mut a = vec![0f64; c];
    let mut b = vec![0f64; c];
    for (pa, pb) in partial {
        for k in 0..c {
            a[k] += pa[k];
            b[k] += pb[k];
        }
    }
    (a, b)
}

fn dims2(layout: &Layout, op: &str) -> candle_core::Result<(usize, usize)> {
    match *layout.dims() {
        [m, c] => Ok((m, c)),
        ref other => candle_core::bail!("{op} needs [M, C], got {other:?}"),
    }
}

impl CustomOp1 for ChannelStats {
    fn name(&self) -> &'static str {
        "channel-stats"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout, self.name())?;
        let (_, c) = dims2(layout, self.name())?;
        let (mean, var) = channel_stats(x, c);
        let out = mean.iter().chain(&var).map(|&v| v as f32).collect();
        Ok((CpuStorage::F32(out), Shape::from((2, c))))
    }
}

/// Train-mode batch norm (batch statistics) followed by ReLU, on `[M, C]` with `gamma` and
/// `beta` of `[C]`. Fused because, from generic ops, the pair is some fifteen full-size passes
/// forward and backward; here it is two forward and three backward.
pub struct BatchNormRelu {
    pub eps: f64,
}

impl candle_core::CustomOp3 for BatchNormRelu {
    fn name(&self) -> &'static str {
        "batch-norm-relu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, self.name())?;
        let gamma = contiguous_f32(s2, l2, self.name())?;
        let beta = contiguous_f32(s3, l3, self.name())?;
        let (m, c) = dims2(l1, self.name())?;
        let (mean, var) = channel_stats(x, c);
        let scale: Vec<f32> = (0..c)
            .map(|k| (f64::from(gamma[k]) / (var[k] + self.eps).sqrt()) as f32)
            .collect();
        let shift: Vec<f32> = (0..c)
            .map(|k| beta[k] - (mean[k] as f32) * scale[k])
            .collect();
        let mut out = vec![0f32; m * c];
        out.par_chunks_mut(ROWS_PER_TASK * c)
            .zip(x.par_chunks(ROWS_PER_TASK * c))
            .for_each(|(out, x)| {
                for (o, row) in out.chunks_exact_mut(c).zip(x.chunks_exact(c)) {
                    for k in 0..c {
                        o[k] = (row[k] * scale[k] + shift[k]).max(0.0);
                    }
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((m, c))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (m, _) = x.dims2()?;
        let packed = x.apply_op3_no_bwd(
            &res.contiguous()?,
            &grad_res.contiguous()?,
            &BatchNormReluBackward {
                eps: self.eps,
                gamma: gamma.to_vec1::<f32>()?,
            },
        )?;
        Ok((
            Some(packed.narrow(0, 0, m)?),
            Some(packed.get(m)?),
            Some(packed.get(m + 1)?),
        ))
    }
}

/// Gradients of [`BatchNormRelu`], packed as `[M + 2, C]`: `dx`, then `dgamma`, then `dbeta`.
struct BatchNormReluBackward {
    eps: f64,
    gamma: Vec<f32>,
}

impl candle_core::CustomOp3 for BatchNormReluBackward {
    fn name(&self) -> &'static str {
        "batch-norm-relu-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, self.name())?;
        let y = contiguous_f32(s2, l2, self.name())?;
        let g = contiguous_f32(s3, l3, self.name())?;
        let (m, c) = dims2(l1, self.name())?;
        let (mean, var) = channel_stats(x, c);
        let inv: Vec<f64> = var.iter().map(|v| 1.0 / (v + self.eps).sqrt()).collect();
        // With gm = g where the ReLU passed and 0 elsewhere, and xhat the normalised input:
        // dbeta = sum(gm), dgamma = sum(gm * xhat),
        // dx = gamma * inv / M * (M * gm - dbeta - xhat * dgamma).
        let task = ROWS_PER_TASK * c;
        let partial: Vec<(Vec<f64>, Vec<f64>)> = x
            .par_chunks(task)
            .zip(y.par_chunks(task))
            .zip(g.par_chunks(task))
            .map(|((x, y), g)| {
                let mut dbeta = vec![0f64; c];
                let mut dgamma = vec![0f64; c];
                for ((xr, yr), gr) in x
                    .chunks_exact(c)
                    .zip(y.chunks_exact(c))
                    .zip(g.chunks_exact(c))
                {
                    for k in 0..c {
                        if yr[k] > 0.0 {
                            let gm = f64::from(gr[k]);
                            dbeta[k] += gm;
                            dgamma[k] += gm * (f64::from(xr[k]) - mean[k]);
                        }
                    }
                }
                (dbeta, dgamma)
            })
            .collect();
        let (dbeta, mut dgamma) = add_partials(c, partial);
        for k in 0..c {
            dgamma[k] *= inv[k];
        }
        let mf = m as f64;
        let a: Vec<f32> = (0..c)
            .map(|k| (f64::from(self.gamma[k]) * inv[k]) as f32)
            .collect();
        let b: Vec<f32> = (0..c).map(|k| (dbeta[k] / mf) as f32).collect();
        let d: Vec<f32> = (0..c).map(|k| (dgamma[k] / mf * inv[k]) as f32).collect();
        let meanf: Vec<f32> = mean.iter().map(|&v| v as f32).collect();
        let mut out = vec![0f32; (m + 2) * c];
        out[..m * c]
            .par_chunks_mut(task)
            .zip(x.par_chunks(task))
            .zip(y.par_chunks(task))
            .zip(g.par_chunks(task))
            .for_each(|(((out, x), y), g)| {
                for (((o, xr), yr), gr) in out
                    .chunks_exact_mut(c)
                    .zip(x.chunks_exact(c))
                    .zip(y.chunks_exact(c))
                    .zip(g.chunks_exact(c))
                {
                    for k in 0..c {
                        let gm = if yr[k] > 0.0 { gr[k] } else { 0.0 };
                        o[k] = a[k] * (gm - b[k] - (xr[k] - meanf[k]) * d[k]);
                    }
                }
            });
        for k in 0..c {
            out[m * c + k] = dgamma[k] as f32;
            out[(m + 1) * c + k] = dbeta[k] as f32;
        }
        Ok((CpuStorage::F32(out), Shape::from((m + 2, c))))
    }
}

/// Geometry of a depthwise convolution on `[N, C, H, W]`: kernel `k`, stride `s`, zero
/// padding `top`/`left` in front, output `ho x wo`.
#[derive(Clone, Copy, Debug)]
struct DepthwiseGeometry {
    k: usize,
    s: usize,
    top: usize,
    left: usize,
    h: usize,
    w: usize,
    ho: usize,
    wo: usize,
}

impl DepthwiseGeometry {
    /// Calls `f(output index, input index, tap index)` for every output pixel and every tap
    /// that falls inside the input, in one `h x w` plane.
    #[inline]
    fn for_each_tap(&self, mut f: impl FnMut(usize, usize, usize)) {
        for oy in 0..self.ho {
            for i in 0..self.k {
                let Some(iy) = (oy * self.s + i).checked_sub(self.top) else {
                    continue;
                };
                if iy >= self.h {
                    continue;
                }
                for ox in 0..self.wo {
                    for j in 0..self.k {
                        let Some(ix) = (ox * self.s + j).checked_sub(self.left) else {
                            continue;
                        };
                        if ix < self.w {
                            f(oy * self.wo + ox, iy * self.w + ix, i * self.k + j);
                        }
                    }
                }
            }
        }
    }
}

/// Depthwise convolution of NCHW `x` with `[C, 1, k, k]` weights (no bias), with hand-written
/// gradients for both. The generic-op version in [`edgemm_models::layers::DepthwiseConv2d`] builds a
/// full-size temporary per tap, and as many again in its backward pass; fine-tuning
/// EfficientNet blocks spends most of its time there. Apply with
/// [`depthwise_conv2d`].
#[derive(Clone, Copy, Debug)]
pub struct DepthwiseConv {
    pub stride: usize,
    pub padding: edgemm_models::layers::Padding,
}

/// `x` `[N, C, H, W]` (any layout) convolved with `weight` `[C, 1, k, k]`, differentiable in
/// both.
pub fn depthwise_conv2d(
    x: &Tensor,
    weight: &Tensor,
    op: DepthwiseConv,
) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op2(&weight.contiguous()?, op)
}

impl DepthwiseConv {
    fn geometry(
        &self,
        x: &Layout,
        weight: &Layout,
    ) -> candle_core::Result<(usize, usize, DepthwiseGeometry)> {
        let [n, c, h, w] = *x.dims() else {
            candle_core::bail!(
                "depthwise convolution needs [N, C, H, W], got {:?}",
                x.dims()
            )
        };
        let [wc, 1, k, k2] = *weight.dims() else {
            candle_core::bail!(
                "depthwise weights must be [C, 1, k, k], got {:?}",
                weight.dims()
            )
        };
        if wc != c || k != k2 || k == 0 || self.stride == 0 {
            candle_core::bail!(
                "depthwise convolution of {:?} with weights {:?}, stride {}",
                x.dims(),
                weight.dims(),
                self.stride
            );
        }
        let (top, _, ho) = self.padding.rows(h, k, self.stride);
        let (left, _, wo) = self.padding.cols(w, k, self.stride);
        let g = DepthwiseGeometry {
            k,
            s: self.stride,
            top,
            left,
            h,
            w,
            ho,
            wo,
        };
        Ok((n, c, g))
    }
}

impl CustomOp2 for DepthwiseConv {
    fn name(&self) -> &'static str {
        "depthwise-conv"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, self.name())?;
        let wt = contiguous_f32(s2, l2, self.name())?;
        let (n, c, g) = self.geometry(l1, l2)?;
        let (plane_in, plane_out, taps) = (g.h * g.w, g.ho * g.wo, g.k * g.k);
        let mut out = vec![0f32; n * c * plane_out];
        for (p, o) in out.chunks_mut(plane_out).enumerate() {
            let xi = &x[p * plane_in..][..plane_in];
            let wc = &wt[(p % c) * taps..][..taps];
            g.for_each_tap(|oi, ii, t| o[oi] += xi[ii] * wc[t]);
        }
        Ok((CpuStorage::F32(out), Shape::from((n, c, g.ho, g.wo))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad_res.contiguous()?;
        let grad_x = grad.apply_op3_no_bwd(
            x,
            weight,
            &DepthwiseBackward {
                op: *self,
                input: true,
            },
        )?;
        let grad_w = grad.apply_op3_no_bwd(
            x,
            weight,
            &DepthwiseBackward {
                op: *self,
                input: false,
            },
        )?;
        Ok((Some(grad_x), Some(grad_w)))
    }
}

/// The gradient of [`DepthwiseConv`] with respect to its input (`input`) or its weights, from
/// (output gradient, input, weights).
struct DepthwiseBackward {
    op: DepthwiseConv,
    input: bool,
}

impl candle_core::CustomOp3 for DepthwiseBackward {
    fn name(&self) -> &'static str {
        "depthwise-conv-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let grad = contiguous_f32(s1, l1, self.name())?;
        let x = contiguous_f32(s2, l2, self.name())?;
        let wt = contiguous_f32(s3, l3, self.name())?;
        let (n, c, g) = self.op.geometry(l2, l3)?;
        let (plane_in, plane_out, taps) = (g.h * g.w, g.ho * g.wo, g.k * g.k);
        if l1.dims() != [n, c, g.ho, g.wo] {
            candle_core::bail!(
                "depthwise gradient of shape {:?} for output [{n}, {c}, {}, {}]",
                l1.dims(),
                g.ho,
                g.wo
            );
        }
        if self.input {
            let mut out = vec![0f32; n * c * plane_in];
            for (p, gx) in out.chunks_mut(plane_in).enumerate() {
                let go = &grad[p * plane_out..][..plane_out];
                let wc = &wt[(p % c) * taps..][..taps];
                g.for_each_tap(|oi, ii, t| gx[ii] += go[oi] * wc[t]);
            }
            Ok((CpuStorage::F32(out), l2.shape().clone()))
        } else {
            let mut out = vec![0f32; c * taps];
            for p in 0..n * c {
                let go = &grad[p * plane_out..][..plane_out];
                let xi = &x[p * plane_in..][..plane_in];
                let gw = &mut out[(p % c) * taps..][..taps];
                g.for_each_tap(|oi, ii, t| gw[t] += go[oi] * xi[ii]);
            }
            Ok((CpuStorage::F32(out), l3.shape().clone()))
        }
    }
}

/// `op(a) · op(b)` on the packed GEMM of [`edgemm_models::kernels::gemm`], where `op` transposes
/// the operand when its flag is set: `a` is stored `[M, K]` (or `[K, M]` when `transpose_a`),
/// `b` is stored `[K, N]` (or `[N, K]` when `transpose_b`, a dense layer's weight as stored).
///
/// candle's CPU `matmul` runs the `gemm` crate's AVX2 kernel; this one uses the microkernel
/// the inference path picked for the machine (AVX-512 where present), and its gradients are
/// products of the same kind, so the transposes are never materialised. Every output tile is
/// summed by one thread in a fixed order: a training run is bit-reproducible.
#[derive(Clone, Copy, Debug)]
pub struct MatMul {
    pub isa: edgemm_models::kernels::Isa,
    pub transpose_a: bool,
    pub transpose_b: bool,
}

impl MatMul {
    pub fn new(transpose_a: bool, transpose_b: bool) -> Self {
        Self {
            isa: edgemm_models::kernels::Isa::best(),
            transpose_a,
            transpose_b,
        }
    }

    fn with(self, transpose_a: bool, transpose_b: bool) -> Self {
        Self {
            transpose_a,
            transpose_b,
            ..self
        }
    }

    /// (M, K, N) of the product, checked against both operands.
    fn dims(&self, la: &Layout, lb: &Layout) -> candle_core::Result<(usize, usize, usize)> {
        let (a0, a1) = dims2(la, self.name())?;
        let (b0, b1) = dims2(lb, self.name())?;
        let (m, k) = if self.transpose_a { (a1, a0) } else { (a0, a1) };
        let (kb, n) = if self.transpose_b { (b1, b0) } else { (b0, b1) };
        if k != kb {
            candle_core::bail!(
                "{}: inner dimensions differ: a {:?}, b {:?} (transposed: {}, {})",
                self.name(),
                la.dims(),
                lb.dims(),
                self.transpose_a,
                self.transpose_b
            );
        }
        Ok((m, k, n))
    }
}

/// A column-major `rows x cols` operand: the transpose of a row-major `cols x rows` matrix.
struct ColumnMajor<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
}

impl edgemm_models::kernels::gemm::PackA for ColumnMajor<'_> {
    fn rows(&self) -> usize {
        self.rows
    }

    fn depth(&self) -> usize {
        self.cols
    }

    fn pack(&self, m0: usize, k0: usize, kc: usize, mr: usize, out: &mut [f32]) {
        let live = mr.min(self.rows.saturating_sub(m0));
        for p in 0..kc {
            let column = &self.data[(k0 + p) * self.rows + m0..][..live];
            let dst = &mut out[p * mr..(p + 1) * mr];
            dst[..live].copy_from_slice(column);
            dst[live..].fill(0.0);
        }
    }
}

impl CustomOp2 for MatMul {
    fn name(&self) -> &'static str {
        "packed-matmul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.product(s1, l1, s2, l2, None)
    }

    /// With `C = op(A)·op(B)` and `G = dL/dC`: `dop(A) = G·op(B)ᵀ`, `dop(B) = op(A)ᵀ·G`, each
    /// written straight into the stored layout of its operand.
    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (grad_a, grad_b) = self.gradients(a, b, &grad_res.contiguous()?)?;
        Ok((Some(grad_a), Some(grad_b)))
    }
}

/// [`MatMul`] plus a bias per output column, added in the GEMM's store: `op(a)·op(b) + bias`.
#[derive(Clone, Copy, Debug)]
pub struct MatMulBias(pub MatMul);

impl candle_core::CustomOp3 for MatMulBias {
    fn name(&self) -> &'static str {
        "packed-matmul-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let bias = contiguous_f32(s3, l3, self.name())?;
        self.0.product(s1, l1, s2, l2, Some(bias))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = grad_res.contiguous()?;
        let (grad_a, grad_b) = self.0.gradients(a, b, &g)?;
        let grad_bias = g.apply_op1_no_bwd(&ColumnSums)?;
        Ok((Some(grad_a), Some(grad_b), Some(grad_bias)))
    }
}

/// `[M, N]` -> `[N]`, the sum of every column (accumulated in f64).
struct ColumnSums;

impl CustomOp1 for ColumnSums {
    fn name(&self) -> &'static str {
        "column-sums"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = contiguous_f32(storage, layout, self.name())?;
        let (_, n) = dims2(layout, self.name())?;
        let partial: Vec<Vec<f64>> = g
            .par_chunks((ROWS_PER_TASK * n).max(1))
            .map(|rows| {
                let mut sum = vec![0f64; n];
                for row in rows.chunks_exact(n) {
                    for (s, v) in sum.iter_mut().zip(row) {
                        *s += f64::from(*v);
                    }
                }
                sum
            })
            .collect();
        let mut sum = vec![0f64; n];
        for part in partial {
            for (s, v) in sum.iter_mut().zip(part) {
                *s += v;
            }
        }
        Ok((
            CpuStorage::F32(sum.into_iter().map(|v| v as f32).collect()),
            Shape::from(n),
        ))
    }
}

impl MatMul {
    fn product(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        bias: Option<&[f32]>,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        use edgemm_models::kernels::gemm::{gemm, Epilogue, PackA, PackedB, RowMajor};
        let (m, k, n) = self.dims(l1, l2)?;
        if bias.is_some_and(|bias| bias.len() != n) {
            candle_core::bail!(
                "{}: a bias of {} values for {n} columns",
                self.name(),
                bias.map_or(0, <[f32]>::len)
            );
        }
        let a = contiguous_f32(s1, l1, self.name())?;
        let b = contiguous_f32(s2, l2, self.name())?;
        let packed = if self.transpose_b {
            PackedB::new(self.isa, k, n, |p, j| b[j * k + p])
        } else {
            PackedB::from_row_major(self.isa, k, n, b)
        };
        let mut out = vec![0f32; m * n];
        let lhs: Box<dyn PackA + '_> = if self.transpose_a {
            Box::new(ColumnMajor {
                data: a,
                rows: m,
                cols: k,
            })
        } else {
            Box::new(RowMajor {
                data: a,
                rows: m,
                cols: k,
            })
        };
        if k == 0 {
            for row in out.chunks_exact_mut(n.max(1)) {
                row.copy_from_slice(bias.unwrap_or(&vec![0.0; n]));
            }
            return Ok((CpuStorage::F32(out), Shape::from((m, n))));
        }
        let epilogue = Epilogue {
            bias,
            ..Epilogue::NONE
        };
        gemm(self.isa, lhs.as_ref(), &packed, &mut out, &epilogue);
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }

    /// The gradients of both operands, in their stored layouts, from the output's `g`.
    fn gradients(
        &self,
        a: &Tensor,
        b: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let (ta, tb) = (self.transpose_a, self.transpose_b);
        let grad_a = if ta {
            // A stored [K, M]: dAᵀ = op(B)·Gᵀ.
            b.apply_op2_no_bwd(g, &self.with(tb, true))?
        } else {
            g.apply_op2_no_bwd(b, &self.with(false, !tb))?
        };
        let grad_b = if tb {
            // B stored [N, K]: dBᵀ = Gᵀ·op(A).
            g.apply_op2_no_bwd(a, &self.with(true, ta))?
        } else {
            a.apply_op2_no_bwd(g, &self.with(!ta, false))?
        };
        Ok((grad_a, grad_b))
    }
}

#[cfg(test)]
mod tests {
    /// The packed product and both gradients agree with candle's matmul for every
    /// transposition, at sizes off the microkernels' tile multiples.
    #[test]
    fn packed_matmul_matches_candle_forward_and_backward() {
        fn rand2(rows: usize, cols: usize, seed: u64) -> Var {
            let t = rand((1, 1, rows, cols), seed)
                .reshape((rows, cols))
                .unwrap();
            Var::from_tensor(&t).unwrap()
        }
        for isa in edgemm_models::kernels::Isa::supported() {
            for &(m, k, n) in &[(1, 3, 5), (2, 7, 1), (37, 19, 45), (130, 67, 33)] {
                for ta in [false, true] {
                    for tb in [false, true] {
                        let a = if ta { rand2(k, m, 1) } else { rand2(m, k, 1) };
                        let b = if tb { rand2(n, k, 2) } else { rand2(k, n, 2) };
                        let bias = Var::from_tensor(&rand((1, 1, 1, n), 4).flatten_all().unwrap())
                            .unwrap();
                        let op = MatMul {
                            isa,
                            ..MatMul::new(ta, tb)
                        };
                        let ours = a.apply_op2(&b, op).unwrap();
                        let ours_bias = a.apply_op3(&b, &bias, MatMulBias(op)).unwrap();
                        let ta_t = if ta {
                            a.t().unwrap()
                        } else {
                            a.as_tensor().clone()
                        };
                        let tb_t = if tb {
                            b.t().unwrap()
                        } else {
                            b.as_tensor().clone()
                        };
                        let theirs = ta_t.matmul(&tb_t).unwrap();
                        let theirs_bias = theirs.broadcast_add(&bias).unwrap();
                        let case = format!("{} m{m} k{k} n{n} ta {ta} tb {tb}", isa.name());
                        assert!(max_diff(&ours, &theirs) < 1e-4, "{case}");
                        // A loss that weighs every output differently.
                        let weights = rand2(m, n, 3);
                        let g_ours = (ours * weights.as_tensor()).unwrap().sum_all().unwrap();
                        let g_theirs = (theirs * weights.as_tensor()).unwrap().sum_all().unwrap();
                        let (g1, g2) = (g_ours.backward().unwrap(), g_theirs.backward().unwrap());
                        for v in [&a, &b] {
                            let d = max_diff(g1.get(v).unwrap(), g2.get(v).unwrap());
                            assert!(d < 1e-4, "{case}: gradient off by {d}");
                        }
                        assert!(
                            max_diff(&ours_bias, &theirs_bias) < 1e-4,
                            "{case} with bias"
                        );
                        let l_ours = (ours_bias * weights.as_tensor())
                            .unwrap()
                            .sum_all()
                            .unwrap();
                        let l_theirs = (theirs_bias * weights.as_tensor())
                            .unwrap()
                            .sum_all()
                            .unwrap();
                        let (g1, g2) = (l_ours.backward().unwrap(), l_theirs.backward().unwrap());
                        for v in [&a, &b, &bias] {
                            let d = max_diff(g1.get(v).unwrap(), g2.get(v).unwrap());
                            assert!(d < 1e-4, "{case} with bias: gradient off by {d}");
                        }
                    }
                }
            }
        }
    }

    use super::*;
    use candle_core::{Device, Var};

    fn rand(shape: (usize, usize, usize, usize), seed: u64) -> Tensor {
        let mut rng = crate::Rng::new(seed);
        let n = shape.0 * shape.1 * shape.2 * shape.3;
        let v: Vec<f32> = (0..n).map(|_| rng.uniform() as f32 - 0.5).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// The im2col convolution and its gradients agree with candle's conv2d.
    #[test]
    fn im2col_conv_matches_candle_conv2d_forward_and_backward() {
        let (n, h, w, c, o) = (2, 6, 4, 3, 5);
        let x = Var::from_tensor(&rand((n, h, w, c), 1)).unwrap();
        let k = Var::from_tensor(&rand((o, c, 3, 3), 2)).unwrap();
        let ours = x
            .apply_op1(Im2Col3x3)
            .unwrap()
            .matmul(
                &k.permute((2, 3, 1, 0))
                    .unwrap()
                    .reshape((9 * c, o))
                    .unwrap(),
            )
            .unwrap()
            .reshape((n, h, w, o))
            .unwrap();
        let theirs = x
            .permute((0, 3, 1, 2))
            .unwrap()
            .conv2d(&k, 1, 1, 1, 1)
            .unwrap()
            .permute((0, 2, 3, 1))
            .unwrap();
        assert!(max_diff(&ours, &theirs) < 1e-5);
        // A weighted sum makes every output position's gradient distinct.
        let weights = rand((n, h, w, o), 3);
        let g1 = (&ours * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g2 = (&theirs * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for v in [&x, &k] {
            assert!(max_diff(g1.get(v).unwrap(), g2.get(v).unwrap()) < 1e-5);
        }
    }

    /// Against the pool written as two `max` reductions (candle's own `max_pool2d` backward
    /// scales a unique maximum's gradient by 1/4, so it is no reference for the gradient).
    #[test]
    fn maxpool_matches_max_reductions_and_routes_gradients_to_the_maximum() {
        let x = Var::from_tensor(&rand((2, 4, 6, 3), 4)).unwrap();
        let ours = x.apply_op1(MaxPool2).unwrap();
        let theirs = x
            .reshape((2, 2, 2, 3, 2, 3))
            .unwrap()
            .max(4)
            .unwrap()
            .max(2)
            .unwrap();
        assert!(max_diff(&ours, &theirs) < 1e-7);
        let weights = rand((2, 2, 3, 3), 5);
        let g1 = (&ours * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g2 = (&theirs * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert!(max_diff(g1.get(&x).unwrap(), g2.get(&x).unwrap()) < 1e-7);
    }

    /// The fused op and its gradients agree with batch norm + ReLU written with generic ops.
    #[test]
    fn batch_norm_relu_matches_generic_ops() {
        let x = Var::from_tensor(&rand((1, 1, 40, 6), 6).reshape((40, 6)).unwrap()).unwrap();
        let gamma =
            Var::from_tensor(&(rand((1, 1, 1, 6), 7).reshape(6).unwrap() + 1.0).unwrap()).unwrap();
        let beta = Var::from_tensor(&rand((1, 1, 1, 6), 8).reshape(6).unwrap()).unwrap();
        let eps = 1e-5;
        let ours = x
            .apply_op3(gamma.as_tensor(), beta.as_tensor(), BatchNormRelu { eps })
            .unwrap();
        let mean = x.mean_keepdim(0).unwrap();
        let centred = x.broadcast_sub(&mean).unwrap();
        let var = centred.sqr().unwrap().mean_keepdim(0).unwrap();
        let theirs = centred
            .broadcast_div(&(var + eps).unwrap().sqrt().unwrap())
            .unwrap()
            .broadcast_mul(gamma.as_tensor())
            .unwrap()
            .broadcast_add(beta.as_tensor())
            .unwrap()
            .relu()
            .unwrap();
        assert!(max_diff(&ours, &theirs) < 1e-5);
        let weights = rand((1, 1, 40, 6), 9).reshape((40, 6)).unwrap();
        let g1 = (&ours * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g2 = (&theirs * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for v in [&x, &gamma, &beta] {
            let d = max_diff(g1.get(v).unwrap(), g2.get(v).unwrap());
            assert!(d < 1e-5, "{d}");
        }
        let stats = x.apply_op1_no_bwd(&ChannelStats).unwrap();
        let biased_var = centred.sqr().unwrap().mean_keepdim(0).unwrap();
        assert!(max_diff(&stats.narrow(0, 0, 1).unwrap(), &mean) < 1e-6);
        assert!(max_diff(&stats.narrow(0, 1, 1).unwrap(), &biased_var) < 1e-6);
    }

    /// The depthwise op and both its gradients agree with the generic-op layer (whose
    /// gradients candle derives), over kernels, strides and both paddings, odd sizes.
    #[test]
    fn depthwise_conv_matches_the_generic_layer_forward_and_backward() {
        use edgemm_models::layers::{DepthwiseConv2d, Padding};
        let cases = [
            (3, 1, Padding::TfSame, 7, 5),
            (3, 2, Padding::TfSame, 8, 7),
            (5, 1, Padding::TfSame, 6, 6),
            (5, 2, Padding::TfSame, 9, 11),
            (3, 1, Padding::Symmetric(1), 5, 4),
            (3, 2, Padding::Symmetric(0), 7, 6),
        ];
        for (case, &(k, stride, padding, h, w)) in cases.iter().enumerate() {
            let (n, c) = (2, 3);
            let x = Var::from_tensor(&rand((n, c, h, w), 10 + case as u64)).unwrap();
            let wt = Var::from_tensor(&rand((c, 1, k, k), 20 + case as u64)).unwrap();
            let dy = rand((n, c, h.div_ceil(stride), w.div_ceil(stride)), 30);
            let op = DepthwiseConv { stride, padding };
            let ours = depthwise_conv2d(x.as_tensor(), wt.as_tensor(), op).unwrap();
            let layer =
                DepthwiseConv2d::from_tensor(wt.as_tensor().clone(), stride, padding).unwrap();
            let theirs = layer.forward(x.as_tensor()).unwrap();
            assert_eq!(ours.dims(), theirs.dims(), "case {case}");
            let dy = dy
                .narrow(2, 0, ours.dim(2).unwrap())
                .unwrap()
                .narrow(3, 0, ours.dim(3).unwrap())
                .unwrap();
            assert!(max_diff(&ours, &theirs) < 1e-5, "case {case} forward");
            let g1 = (ours * &dy).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (theirs * &dy)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            for var in [&x, &wt] {
                let (a, b) = (g1.get(var).unwrap(), g2.get(var).unwrap());
                assert!(
                    max_diff(a, b) < 1e-5,
                    "case {case} gradient of {:?}",
                    var.dims()
                );
            }
        }
    }
}
