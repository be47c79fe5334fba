//! alexnet-small with a train mode, its weights in a `VarMap` under the inference names
//! (`conv{k}`, `bn{k}`, `fc{1,2}`), so `checkpoint::save_weights` writes a file that
//! the registered `alexnet-small` graph loads unchanged.
//!
//! The inference network folds batch norm at load; training needs batch statistics and
//! running averages, and dropout before each dense layer. Convolutions run in NHWC as im2col
//! and one matrix product ([`super::kernels`]): the backward pass is matrix products too, where
//! candle's `conv2d` backward goes through `conv_transpose2d`, which is much slower on the CPU.

use candle_core::{DType, Tensor, Var, D};
use candle_nn::{Init, VarBuilder, VarMap};

use super::kernels::{BatchNormRelu, ChannelStats, Im2Col3x3, MatMul, MatMulBias, MaxPool2};
use super::optim::Param;
use super::Rng;
use edgemm_models::alexnet_small::Config;
use edgemm_models::Result;

/// PyTorch's default running-statistics momentum.
const BN_MOMENTUM: f64 = 0.1;

struct BatchNorm {
    gamma: Tensor,
    beta: Tensor,
    running_mean: Var,
    running_var: Var,
    eps: f64,
}

impl BatchNorm {
    /// Batch norm then ReLU; `x` is `[M, C]` (every pixel of the batch a row).
    fn forward_relu(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if train {
            let stats = x.detach().apply_op1_no_bwd(&ChannelStats)?;
            let m = x.dim(0)? as f64;
            // Running statistics use the unbiased variance, as PyTorch does.
            let update = |running: &Var, batch: Tensor| -> Result<()> {
                let next = ((running.as_tensor() * (1.0 - BN_MOMENTUM))? + (batch * BN_MOMENTUM)?)?;
                running.set(&next)?;
                Ok(())
            };
            update(&self.running_mean, stats.get(0)?)?;
            update(
                &self.running_var,
                (stats.get(1)? * (m / (m - 1.0).max(1.0)))?,
            )?;
            return Ok(x.apply_op3(&self.gamma, &self.beta, BatchNormRelu { eps: self.eps })?);
        }
        let rows = Rows::new(x)?;
        let scale = (self.running_var.as_tensor() + self.eps)?
            .sqrt()?
            .recip()?
            .mul(&self.gamma)?
            .unsqueeze(0)?;
        let shift =
            (self.beta.unsqueeze(0)? - self.running_mean.as_tensor().unsqueeze(0)?.mul(&scale)?)?;
        Ok(((x * rows.spread(&scale)?)? + rows.spread(&shift)?)?.relu()?)
    }
}

/// Per-channel broadcasts over the rows of an `[M, C]` tensor, as a product with a column of
/// ones: back-propagating through candle's `broadcast_*` reduces over the leading dimension on
/// a slow strided path, while the product's gradient runs in its GEMM.
struct Rows {
    ones: Tensor,
}

impl Rows {
    fn new(x: &Tensor) -> Result<Self> {
        Ok(Self {
            ones: Tensor::ones((x.dim(0)?, 1), x.dtype(), x.device())?,
        })
    }

    /// `[1, C]` -> `[M, C]`, every row a copy.
    fn spread(&self, v: &Tensor) -> Result<Tensor> {
        Ok(self.ones.matmul(v)?)
    }
}

/// `a · b + bias` (`a · bᵀ + bias` when `transpose_b`) on the packed GEMM ([`MatMulBias`]).
fn linear(a: &Tensor, b: &Tensor, transpose_b: bool, bias: &Tensor) -> Result<Tensor> {
    Ok(a.contiguous()?.apply_op3(
        &b.contiguous()?,
        bias,
        MatMulBias(MatMul::new(false, transpose_b)),
    )?)
}

struct Stage {
    /// OIHW, as stored.
    weight: Tensor,
    bias: Tensor,
    bn: Option<BatchNorm>,
}

impl Stage {
    /// 3x3 convolution, padding 1, on NHWC: `[N, H, W, C]` -> `[N*H*W, O]`.
    fn conv(&self, x: &Tensor) -> Result<Tensor> {
        let c = x.dim(3)?;
        let o = self.weight.dim(0)?;
        let cols = x.apply_op1(Im2Col3x3)?;
        // The weight permuted to [kh, kw, C, O] matches the columns' (dy, dx, c) order.
        let w_mat = self.weight.permute((2, 3, 1, 0))?.reshape((9 * c, o))?;
        linear(&cols, &w_mat, false, &self.bias)
    }

    /// conv, BN, ReLU, 2x2 max pool: `[N, H, W, C]` -> `[N, H/2, W/2, O]`.
    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (n, h, w, _) = x.dims4()?;
        let y = self.conv(x)?;
        let y = match &self.bn {
            Some(bn) => bn.forward_relu(&y, train)?,
            None => y.relu()?,
        };
        let o = y.dim(1)?;
        Ok(y.reshape((n, h, w, o))?.apply_op1(MaxPool2)?)
    }
}

struct Dense {
    weight: Tensor,
    bias: Tensor,
}

impl Dense {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        linear(x, &self.weight, true, &self.bias)
    }
}

pub struct TrainAlexNetSmall {
    stages: Vec<Stage>,
    fc1: Dense,
    fc2: Dense,
    /// Probability of zeroing an input of `fc1` and of `fc2` in train mode.
    pub dropout: f64,
    params: Vec<Param>,
}

fn kaiming_uniform(fan_in: usize) -> Init {
    // PyTorch's default for conv and linear weights: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) scaled
    // for ReLU, i.e. kaiming_uniform with a = sqrt(5).
    let bound = 1.0 / (fan_in as f64).sqrt();
    Init::Uniform {
        lo: -bound,
        up: bound,
    }
}

impl TrainAlexNetSmall {
    /// Creates the variables in `varmap` (initialised as PyTorch would) or, if `varmap`
    /// already holds them, uses those.
    pub fn new(c: &Config, varmap: &VarMap) -> Result<Self> {
        let vb = VarBuilder::from_varmap(varmap, DType::F32, &candle_core::Device::Cpu);
        let var = |name: &str| -> Var {
            varmap
                .data()
                .lock()
                .expect("VarMap lock poisoned")
                .get(name)
                .expect("variable was just created")
                .clone()
        };
        let mut params = Vec::new();
        let mut param = |name: String, decay: bool| {
            let v = var(&name);
            params.push(Param {
                name,
                var: v,
                decay,
            });
        };
        let mut stages = Vec::with_capacity(3);
        let mut c_in = 3;
        for (i, &c_out) in c.channels.iter().enumerate() {
            let k = i + 1;
            let fan_in = c_in * 9;
            let conv = vb.pp(format!("conv{k}"));
            let weight =
                conv.get_with_hints((c_out, c_in, 3, 3), "weight", kaiming_uniform(fan_in))?;
            let bias = conv.get_with_hints(c_out, "bias", kaiming_uniform(fan_in))?;
            param(format!("conv{k}.weight"), true);
            param(format!("conv{k}.bias"), false);
            let bn = if c.batch_norm {
                let b = vb.pp(format!("bn{k}"));
                let gamma = b.get_with_hints(c_out, "weight", Init::Const(1.0))?;
                let beta = b.get_with_hints(c_out, "bias", Init::Const(0.0))?;
                b.get_with_hints(c_out, "running_mean", Init::Const(0.0))?;
                b.get_with_hints(c_out, "running_var", Init::Const(1.0))?;
                param(format!("bn{k}.weight"), false);
                param(format!("bn{k}.bias"), false);
                Some(BatchNorm {
                    gamma,
                    beta,
                    running_mean: var(&format!("bn{k}.running_mean")),
                    running_var: var(&format!("bn{k}.running_var")),
                    eps: c.bn_eps,
                })
            } else {
                None
            };
            stages.push(Stage { weight, bias, bn });
            c_in = c_out;
        }
        let side = c.input_size / 8;
        let flat = c.channels[2] * side * side;
        let mut dense = |name: &str, c_in: usize, c_out: usize| -> Result<Dense> {
            let d = vb.pp(name);
            let dense = Dense {
                weight: d.get_with_hints((c_out, c_in), "weight", kaiming_uniform(c_in))?,
                bias: d.get_with_hints(c_out, "bias", kaiming_uniform(c_in))?,
            };
            param(format!("{name}.weight"), true);
            param(format!("{name}.bias"), false);
            Ok(dense)
        };
        let fc1 = dense("fc1", flat, c.hidden)?;
        let fc2 = dense("fc2", c.hidden, c.classes)?;
        Ok(Self {
            stages,
            fc1,
            fc2,
            dropout: 0.0,
            params,
        })
    }

    /// The trainable parameters (running statistics excluded), with their decay flags.
    pub fn params(&self) -> Vec<Param> {
        self.params.clone()
    }

    /// `[N, 3, H, W]` normalised -> `[N, classes]` logits. In train mode batch norm uses the
    /// batch's statistics (and updates the running ones) and dropout draws its masks from
    /// `rng`; otherwise the network computes what the inference network computes.
    pub fn forward(&self, x: &Tensor, train: bool, rng: &mut Rng) -> Result<Tensor> {
        let mut x = x.permute((0, 2, 3, 1))?.contiguous()?;
        for stage in &self.stages {
            x = stage.forward(&x, train)?;
        }
        // Flatten in (C, H, W) order, as the inference network (and PyTorch) does.
        let x = x.permute((0, 3, 1, 2))?.flatten_from(1)?;
        let x = self.dropout(&x, train, rng)?;
        let x = self.fc1.forward(&x)?.relu()?;
        let x = self.dropout(&x, train, rng)?;
        self.fc2.forward(&x)
    }

    /// Inverted dropout with a seeded mask, so a run is reproducible.
    fn dropout(&self, x: &Tensor, train: bool, rng: &mut Rng) -> Result<Tensor> {
        if !train || self.dropout <= 0.0 {
            return Ok(x.clone());
        }
        let keep = 1.0 - self.dropout;
        let scale = (1.0 / keep) as f32;
        let mask: Vec<f32> = (0..x.elem_count())
            .map(|_| if rng.uniform() < keep { scale } else { 0.0 })
            .collect();
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?;
        Ok(x.mul(&mask)?)
    }
}

/// Softmax cross-entropy averaged over the batch; `targets` are u32 class indices.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::loss::nll(
        &candle_nn::ops::log_softmax(logits, D::Minus1)?,
        targets,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn small() -> Config {
        Config {
            channels: [8, 16, 32],
            hidden: 24,
            ..Config::default()
        }
    }

    fn batch(n: usize, seed: u64) -> Tensor {
        let mut rng = Rng::new(seed);
        let data: Vec<f32> = (0..n * 3 * 32 * 32)
            .map(|_| (rng.uniform() * 2.0 - 1.0) as f32)
            .collect();
        Tensor::from_vec(data, (n, 3, 32, 32), &Device::Cpu).unwrap()
    }

    /// The saved weights, loaded by the inference network, give the eval-mode logits: the names,
    /// layouts and the flatten order agree.
    #[test]
    fn eval_mode_matches_the_inference_network() {
        let varmap = VarMap::new();
        let net = TrainAlexNetSmall::new(&small(), &varmap).unwrap();
        let mut rng = Rng::new(1);
        // A few train-mode passes move the running statistics off their initial values.
        for s in 0..3 {
            net.forward(&batch(4, s), true, &mut rng).unwrap();
        }
        let x = batch(2, 99);
        let ours = net.forward(&x, false, &mut rng).unwrap();
        let tensors = crate::checkpoint::named_tensors(&varmap)
            .into_iter()
            .collect();
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
        let config = serde_json::to_value(small()).unwrap();
        let theirs = edgemm_models::architecture("alexnet-small")
            .unwrap()
            .build_with(&config, vb, edgemm_models::Kernels::Reference)
            .unwrap()
            .forward(&x)
            .unwrap();
        let diff = (ours - theirs)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-4, "max abs diff {diff}");
    }

    /// A few AdamW steps on one fixed batch drive its loss down: gradients reach every layer.
    #[test]
    fn training_steps_fit_a_batch() {
        use crate::optim::{AdamW, Optimiser, ParamsAdamW};
        let varmap = VarMap::new();
        let net = TrainAlexNetSmall::new(&small(), &varmap).unwrap();
        let x = batch(8, 5);
        let y = Tensor::new(&[0u32, 1, 2, 3, 4, 5, 6, 7], &Device::Cpu).unwrap();
        let mut opt = AdamW::new(
            net.params(),
            ParamsAdamW {
                lr: 3e-3,
                ..Default::default()
            },
        )
        .unwrap();
        let mut rng = Rng::new(0);
        let mut losses = Vec::new();
        for _ in 0..30 {
            let loss = cross_entropy(&net.forward(&x, true, &mut rng).unwrap(), &y).unwrap();
            losses.push(loss.to_scalar::<f32>().unwrap());
            opt.step(&loss.backward().unwrap()).unwrap();
        }
        assert!(losses[29] < losses[0] * 0.2, "{losses:?}");
        assert_eq!(net.params().len(), 3 * 4 + 4);
    }
}
