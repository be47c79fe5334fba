//! The inference crate's candle convolutions ([`edgemm_models::layers`]), switchable to the
//! training kernels, whose gradients are written by hand: the same function, several times
//! cheaper to fine-tune through than candle's generic ops.

use candle_core::Tensor;
use candle_nn::VarBuilder;
use edgemm_models::layers::{self, Padding};
use edgemm_models::Result;

use crate::kernels::{depthwise_conv2d, DepthwiseConv, MatMul};

/// A dense 2-D convolution; once switched, a pointwise one multiplies on the packed GEMM
/// ([`MatMul`]) instead of candle's matmul.
pub struct Conv2d {
    generic: layers::Conv2d,
    stride: usize,
    training_kernel: bool,
}

impl Conv2d {
    /// As [`layers::Conv2d::load`].
    pub fn load(
        vb: VarBuilder,
        shape: (usize, usize, usize),
        stride: usize,
        padding: Padding,
        with_bias: bool,
    ) -> Result<Self> {
        Ok(Self {
            generic: layers::Conv2d::load(vb, shape, stride, padding, with_bias)?,
            stride,
            training_kernel: false,
        })
    }

    /// From now on a pointwise convolution's product and both its gradients run on the
    /// packed GEMM; other convolutions are unchanged.
    pub fn use_training_kernel(&mut self) {
        let kernel = self.generic.weight().dim(2);
        self.training_kernel = kernel.is_ok_and(|k| k == 1) && self.stride == 1;
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if !self.training_kernel {
            return self.generic.forward(x);
        }
        let (n, c, h, w) = x.dims4()?;
        let weight = self.generic.weight();
        let o = weight.dim(0)?;
        let pixels = x
            .permute((0, 2, 3, 1))?
            .reshape((n * h * w, c))?
            .contiguous()?;
        let y = pixels.apply_op2(&weight.reshape((o, c))?, MatMul::new(false, true))?;
        let y = y
            .reshape((n, h, w, o))?
            .permute((0, 3, 1, 2))?
            .contiguous()?;
        Ok(match self.generic.bias() {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

/// A depthwise convolution; once switched, it runs [`DepthwiseConv`].
pub struct DepthwiseConv2d {
    generic: layers::DepthwiseConv2d,
    training_kernel: Option<DepthwiseConv>,
}

impl DepthwiseConv2d {
    /// As [`layers::DepthwiseConv2d::load`].
    pub fn load(
        vb: VarBuilder,
        channels: usize,
        kernel: usize,
        stride: usize,
        padding: Padding,
    ) -> Result<Self> {
        Ok(Self {
            generic: layers::DepthwiseConv2d::load(vb, channels, kernel, stride, padding)?,
            training_kernel: None,
        })
    }

    /// From now on, forward with the training kernel.
    pub fn use_training_kernel(&mut self) {
        let (stride, padding) = self.generic.geometry();
        self.training_kernel = Some(DepthwiseConv { stride, padding });
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self.training_kernel {
            Some(op) => Ok(depthwise_conv2d(x, self.generic.weight(), op)?),
            None => self.generic.forward(x),
        }
    }
}
