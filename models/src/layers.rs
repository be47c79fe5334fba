//! candle building blocks of the reference path (the graph's candle ops), also used by training.
//!
//! Batch norm is folded into a per-channel scale and shift when it is loaded, and depthwise
//! convolution is computed tap by tap: candle's grouped convolution loops over the groups and
//! is about ten times slower for depthwise layers (docs/design.md#performance-facts).

use candle_core::{DType, IndexOp, Module, Tensor, D};
use candle_nn::VarBuilder;

use crate::Result;

/// How a convolution pads its input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Padding {
    /// The same number of zeros on every side (PyTorch's `padding=p`).
    Symmetric(usize),
    /// TensorFlow's "SAME": output size `ceil(in / stride)`, the odd zero goes after. This is
    /// what EfficientNet checkpoints converted from TensorFlow expect.
    TfSame,
    /// Zeros given per side, as ONNX's `pads` attribute lists them (exporters from TensorFlow
    /// write "SAME" padding out this way, with the odd zero after).
    Explicit {
        top: usize,
        left: usize,
        bottom: usize,
        right: usize,
    },
}

impl Padding {
    /// Zeros above and below a map of `height` rows, and the output height.
    pub fn rows(self, height: usize, kernel: usize, stride: usize) -> (usize, usize, usize) {
        match self {
            Padding::Explicit { top, bottom, .. } => fixed(top, bottom, height, kernel, stride),
            _ => self.either_axis(height, kernel, stride),
        }
    }

    /// Zeros left and right of a map of `width` columns, and the output width.
    pub fn cols(self, width: usize, kernel: usize, stride: usize) -> (usize, usize, usize) {
        match self {
            Padding::Explicit { left, right, .. } => fixed(left, right, width, kernel, stride),
            _ => self.either_axis(width, kernel, stride),
        }
    }

    /// The padding of a rule that treats rows and columns alike.
    fn either_axis(self, len: usize, kernel: usize, stride: usize) -> (usize, usize, usize) {
        match self {
            Padding::Symmetric(p) => fixed(p, p, len, kernel, stride),
            Padding::TfSame => {
                let out = len.div_ceil(stride);
                let total = ((out - 1) * stride + kernel).saturating_sub(len);
                (total / 2, total - total / 2, out)
            }
            Padding::Explicit { .. } => unreachable!("explicit padding is resolved per axis"),
        }
    }

    /// Whether this padding adds no zeros to any map for a 1x1 stride-1 window.
    pub(crate) fn is_none_for_pointwise(self) -> bool {
        self.rows(1, 1, 1) == (0, 0, 1) && self.cols(1, 1, 1) == (0, 0, 1)
    }
}

/// `before` and `after` zeros around `len` values: the output length of a `kernel` window at
/// `stride`. An input smaller than the window gives no output (0), for the caller to refuse.
fn fixed(
    before: usize,
    after: usize,
    len: usize,
    kernel: usize,
    stride: usize,
) -> (usize, usize, usize) {
    let out = (len + before + after)
        .checked_sub(kernel)
        .map_or(0, |span| span / stride + 1);
    (before, after, out)
}

/// A dense (groups = 1) 2-D convolution with an optional bias. Weight is OIHW.
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    stride: usize,
    padding: Padding,
}

impl Conv2d {
    pub fn load(
        vb: VarBuilder,
        (c_in, c_out, kernel): (usize, usize, usize),
        stride: usize,
        padding: Padding,
        with_bias: bool,
    ) -> Result<Self> {
        let weight = vb.get((c_out, c_in, kernel, kernel), "weight")?;
        let bias = if with_bias {
            Some(vb.get(c_out, "bias")?)
        } else {
            None
        };
        Ok(Self::from_tensors(weight, bias, stride, padding))
    }

    /// `weight` OIHW, `bias` `[c_out]`.
    pub fn from_tensors(
        weight: Tensor,
        bias: Option<Tensor>,
        stride: usize,
        padding: Padding,
    ) -> Self {
        let c_out = weight.dims()[0];
        Self {
            bias: bias.map(|b| b.reshape((1, c_out, 1, 1)).expect("bias has c_out values")),
            weight,
            stride,
            padding,
        }
    }

    /// The OIHW weight (the variable itself, when loaded from a `VarMap`).
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias, shaped `[1, out, 1, 1]`.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        let kernel = self.weight.dim(2)?;
        if kernel == 1 && self.stride == 1 {
            // A pointwise convolution is one matrix product over all pixels. candle's conv2d
            // gets there through an im2col copy, and its backward pass (fine-tuning) goes
            // through conv_transpose2d, several times slower than the product's own.
            let o = self.weight.dim(0)?;
            let pixels = x.permute((0, 2, 3, 1))?.reshape((n * h * w, c))?;
            let y = pixels.matmul(&self.weight.reshape((o, c))?.t()?)?;
            let y = y
                .reshape((n, h, w, o))?
                .permute((0, 3, 1, 2))?
                .contiguous()?;
            return Ok(match &self.bias {
                Some(b) => y.broadcast_add(b)?,
                None => y,
            });
        }
        let (top, bottom, _) = self.padding.rows(h, kernel, self.stride);
        let (left, right, _) = self.padding.cols(w, kernel, self.stride);
        let y = if top == bottom && left == right && top == left {
            x.conv2d(&self.weight, top, self.stride, 1, 1)?
        } else {
            x.pad_with_zeros(2, top, bottom)?
                .pad_with_zeros(3, left, right)?
                .conv2d(&self.weight, 0, self.stride, 1, 1)?
        };
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

/// A depthwise convolution (one kxk filter per channel, no bias). Weight is `[C, 1, k, k]`.
pub struct DepthwiseConv2d {
    /// `taps[i * k + j]` is the `[1, C, 1, 1]` column of weights for kernel position (i, j).
    taps: Vec<Tensor>,
    /// The `[C, 1, k, k]` weight the taps were cut from (the variable itself, from a `VarMap`).
    weight: Tensor,
    kernel: usize,
    stride: usize,
    padding: Padding,
}

impl DepthwiseConv2d {
    pub fn load(
        vb: VarBuilder,
        channels: usize,
        kernel: usize,
        stride: usize,
        padding: Padding,
    ) -> Result<Self> {
        Self::from_tensor(
            vb.get((channels, 1, kernel, kernel), "weight")?,
            stride,
            padding,
        )
    }

    /// The `[channels, 1, kernel, kernel]` weight.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The stride and padding.
    pub fn geometry(&self) -> (usize, Padding) {
        (self.stride, self.padding)
    }

    /// `weight` is `[channels, 1, kernel, kernel]`.
    pub fn from_tensor(weight: Tensor, stride: usize, padding: Padding) -> Result<Self> {
        let (channels, _, kernel, _) = weight.dims4()?;
        let mut taps = Vec::with_capacity(kernel * kernel);
        for i in 0..kernel {
            for j in 0..kernel {
                taps.push(weight.i((.., 0, i, j))?.reshape((1, channels, 1, 1))?);
            }
        }
        Ok(Self {
            taps,
            weight,
            kernel,
            stride,
            padding,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        let (k, s) = (self.kernel, self.stride);
        let (top, _, h_out) = self.padding.rows(h, k, s);
        let (left, _, w_out) = self.padding.cols(w, k, s);
        // Pad (or trim) so the padded size is a multiple of the stride; then the input splits
        // into s*s phases and every tap reads one phase at an integer offset.
        let h_phase = h_out + (k - 1) / s;
        let w_phase = w_out + (k - 1) / s;
        let x = fit(x, 2, top, s * h_phase)?;
        let x = fit(&x, 3, left, s * w_phase)?;
        let phases: Vec<Tensor> = if s == 1 {
            vec![x]
        } else {
            let x = x.reshape((n, c, h_phase, s, w_phase, s))?;
            let mut phases = Vec::with_capacity(s * s);
            for a in 0..s {
                for b in 0..s {
                    phases.push(x.i((.., .., .., a, .., b))?.contiguous()?);
                }
            }
            phases
        };
        let mut acc: Option<Tensor> = None;
        for i in 0..k {
            for j in 0..k {
                let phase = &phases[(i % s) * s + (j % s)];
                let window = phase.narrow(2, i / s, h_out)?.narrow(3, j / s, w_out)?;
                let term = window.broadcast_mul(&self.taps[i * k + j])?;
                acc = Some(match acc {
                    Some(acc) => (acc + term)?,
                    None => term,
                });
            }
        }
        Ok(acc.expect("kernel has at least one tap"))
    }
}

/// Pads `before` zeros in front of `dim`, then pads or trims the end so the length is `target`.
fn fit(x: &Tensor, dim: usize, before: usize, target: usize) -> Result<Tensor> {
    let len = x.dim(dim)? + before;
    let x = x.pad_with_zeros(dim, before, target.saturating_sub(len))?;
    Ok(if len > target {
        x.narrow(dim, 0, target)?
    } else {
        x
    })
}

/// Inference batch norm folded to `x * scale + shift`, per channel of an NCHW tensor.
pub struct BatchNorm {
    scale: Tensor,
    shift: Tensor,
}

impl BatchNorm {
    /// Loads `weight`, `bias`, `running_mean`, `running_var` (PyTorch names).
    pub fn load(vb: VarBuilder, channels: usize, eps: f64) -> Result<Self> {
        let gamma = vb.get(channels, "weight")?;
        let beta = vb.get(channels, "bias")?;
        let mean = vb.get(channels, "running_mean")?;
        let var = vb.get(channels, "running_var")?;
        let scale = gamma.broadcast_div(&(var + eps)?.sqrt()?)?;
        let shift = (beta - mean.mul(&scale)?)?;
        Ok(Self {
            scale: scale.reshape((1, channels, 1, 1))?,
            shift: shift.reshape((1, channels, 1, 1))?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.broadcast_mul(&self.scale)?.broadcast_add(&self.shift)?)
    }
}

/// `weight [out, in]` and `bias [out]`, PyTorch layout.
pub fn linear(vb: VarBuilder, c_in: usize, c_out: usize) -> Result<candle_nn::Linear> {
    Ok(candle_nn::linear(c_in, c_out, vb)?)
}

pub fn apply_linear(layer: &candle_nn::Linear, x: &Tensor) -> Result<Tensor> {
    Ok(layer.forward(x)?)
}

pub fn relu6(x: &Tensor) -> Result<Tensor> {
    Ok(x.clamp(0f32, 6f32)?)
}

/// Mean over H and W: `[N, C, H, W]` -> `[N, C]`.
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    Ok(x.mean(D::Minus1)?.mean(D::Minus1)?)
}

/// Ensures the batch is f32 NCHW with three channels, the contract of every classifier.
pub fn check_input(x: &Tensor, architecture: &'static str) -> Result<()> {
    let dims = x.dims();
    if dims.len() != 4 || dims[1] != 3 || x.dtype() != DType::F32 {
        return Err(crate::Error::Input {
            architecture,
            reason: format!(
                "expected an f32 batch [N, 3, H, W], got {:?} {:?}",
                x.dtype(),
                dims
            ),
        });
    }
    Ok(())
}
