//! alexnet-small: the simplified AlexNet that the CIFAR-10 seed model uses.
//!
//! After Krizhevsky, Sutskever & Hinton, "ImageNet Classification with Deep Convolutional
//! Neural Networks" (2012), cut down for 32x32 inputs: three 3x3 convolutions, each followed
//! by (optional) batch norm, ReLU and 2x2 max pooling, then two dense layers.
//!
//! Weights: `conv{1,2,3}.{weight,bias}` (OIHW), `bn{1,2,3}.{weight,bias,running_mean,
//! running_var}` when `batch_norm` is set, `fc{1,2}.{weight,bias}` ([out, in]). The flatten
//! before `fc1` is in (C, H, W) order, as PyTorch's `flatten(1)` on NCHW.

use candle_core::Tensor;
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::kernels::conv::Conv;
use crate::kernels::dense::nchw_column;
use crate::kernels::{Activation, Isa};
use crate::layers::{self, BatchNorm, Conv2d, Padding};
use crate::plan::{self, Plan, PlanBuilder};
use crate::{Architecture, Classifier, Result, Role, TensorSpec};

const NAME: &str = "alexnet-small";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Height and width of the square input; a multiple of 8 (three 2x2 pools).
    pub input_size: usize,
    /// Output channels of the three convolutions.
    pub channels: [usize; 3],
    /// Width of the hidden dense layer.
    pub hidden: usize,
    pub classes: usize,
    pub batch_norm: bool,
    pub bn_eps: f64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            input_size: 32,
            channels: [64, 128, 256],
            hidden: 512,
            classes: 10,
            batch_norm: true,
            bn_eps: 1e-5,
        }
    }
}

impl Config {
    fn parse(config: &serde_json::Value) -> Result<Self> {
        let c: Self = crate::parse_config(NAME, config)?;
        let bad = |reason: String| crate::Error::Config {
            architecture: NAME,
            reason,
        };
        if c.input_size == 0 || !c.input_size.is_multiple_of(8) {
            return Err(bad(format!(
                "input_size must be a positive multiple of 8, got {}",
                c.input_size
            )));
        }
        if c.channels.contains(&0) || c.hidden == 0 || c.classes == 0 {
            return Err(bad("channels, hidden and classes must be positive".into()));
        }
        Ok(c)
    }

    fn flat_features(&self) -> usize {
        let side = self.input_size / 8;
        self.channels[2] * side * side
    }
}

fn tensor_specs(config: &serde_json::Value) -> Result<Vec<TensorSpec>> {
    let c = Config::parse(config)?;
    let mut specs = Vec::new();
    let mut c_in = 3;
    for (i, &c_out) in c.channels.iter().enumerate() {
        let k = i + 1;
        specs.push(TensorSpec::new(
            format!("conv{k}.weight"),
            &[c_out, c_in, 3, 3],
            Role::Weight,
        ));
        specs.push(TensorSpec::new(
            format!("conv{k}.bias"),
            &[c_out],
            Role::Bias,
        ));
        if c.batch_norm {
            for (suffix, role) in [
                ("weight", Role::BnWeight),
                ("bias", Role::BnBias),
                ("running_mean", Role::BnMean),
                ("running_var", Role::BnVar),
            ] {
                specs.push(TensorSpec::new(format!("bn{k}.{suffix}"), &[c_out], role));
            }
        }
        c_in = c_out;
    }
    specs.push(TensorSpec::new(
        "fc1.weight",
        &[c.hidden, c.flat_features()],
        Role::Weight,
    ));
    specs.push(TensorSpec::new("fc1.bias", &[c.hidden], Role::Bias));
    specs.push(TensorSpec::new(
        "fc2.weight",
        &[c.classes, c.hidden],
        Role::Weight,
    ));
    specs.push(TensorSpec::new("fc2.bias", &[c.classes], Role::Bias));
    Ok(specs)
}

struct Stage {
    conv: Conv2d,
    bn: Option<BatchNorm>,
}

pub struct AlexNetSmall {
    stages: Vec<Stage>,
    fc1: candle_nn::Linear,
    fc2: candle_nn::Linear,
    classes: usize,
}

impl AlexNetSmall {
    pub fn new(c: &Config, vb: VarBuilder) -> Result<Self> {
        let mut stages = Vec::with_capacity(3);
        let mut c_in = 3;
        for (i, &c_out) in c.channels.iter().enumerate() {
            let k = i + 1;
            let conv = Conv2d::load(
                vb.pp(format!("conv{k}")),
                (c_in, c_out, 3),
                1,
                Padding::Symmetric(1),
                true,
            )?;
            let bn = if c.batch_norm {
                Some(BatchNorm::load(vb.pp(format!("bn{k}")), c_out, c.bn_eps)?)
            } else {
                None
            };
            stages.push(Stage { conv, bn });
            c_in = c_out;
        }
        Ok(Self {
            stages,
            fc1: layers::linear(vb.pp("fc1"), c.flat_features(), c.hidden)?,
            fc2: layers::linear(vb.pp("fc2"), c.hidden, c.classes)?,
            classes: c.classes,
        })
    }
}

impl Classifier for AlexNetSmall {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        layers::check_input(x, NAME)?;
        let mut x = x.clone();
        for stage in &self.stages {
            x = stage.conv.forward(&x)?;
            if let Some(bn) = &stage.bn {
                x = bn.forward(&x)?;
            }
            x = x.relu()?.max_pool2d(2)?;
        }
        let x = layers::apply_linear(&self.fc1, &x.flatten_from(1)?)?.relu()?;
        layers::apply_linear(&self.fc2, &x)
    }

    fn num_classes(&self) -> usize {
        self.classes
    }
}

/// The same network for the fast CPU kernels: batch norm folded into the convolutions, ReLU
/// fused into them, fc1's columns reordered for the NHWC flatten.
fn plan(c: &Config, vb: VarBuilder, isa: Isa) -> Result<Plan> {
    let mut b = PlanBuilder::new(isa);
    let mut x = b.input();
    let mut c_in = 3;
    for (i, &c_out) in c.channels.iter().enumerate() {
        let k = i + 1;
        let conv = vb.pp(format!("conv{k}"));
        let mut weight = plan::load(&conv, &[c_out, c_in, 3, 3], "weight")?;
        let mut bias = plan::load(&conv, &[c_out], "bias")?;
        if c.batch_norm {
            plan::fold_batch_norm(&vb.pp(format!("bn{k}")), c.bn_eps, &mut weight, &mut bias)?;
        }
        let conv = Conv::for_map(
            isa,
            &weight,
            bias,
            (c_in, c_out, 3),
            1,
            Padding::Symmetric(1),
            Activation::Relu,
            c.input_size >> i,
        );
        x = b.conv(x, conv, None);
        x = b.max_pool_2x2(x);
        c_in = c_out;
    }
    let side = c.input_size / 8;
    let (flat, hidden) = (c.flat_features(), c.hidden);
    let column = nchw_column(side, side, c_in);
    let fc1 = plan::dense(isa, &vb.pp("fc1"), (hidden, flat), Activation::Relu, column)?;
    x = b.dense(x, fc1);
    let fc2 = plan::dense(
        isa,
        &vb.pp("fc2"),
        (c.classes, hidden),
        Activation::None,
        |i| i,
    )?;
    x = b.dense(x, fc2);
    Ok(b.finish(x, NAME, c.classes))
}

pub(crate) const ARCHITECTURE: Architecture = Architecture {
    name: NAME,
    summary: "simplified AlexNet: 3x(conv3x3, BN, ReLU, maxpool) + 2 dense, square input",
    tensor_specs,
    input_size: |config| {
        let c = Config::parse(config)?;
        Ok(Some((c.input_size, c.input_size)))
    },
    num_classes: |config| Ok(Config::parse(config)?.classes),
    build: |config, vb| Ok(Box::new(AlexNetSmall::new(&Config::parse(config)?, vb)?)),
    plan: |config, vb, isa| plan(&Config::parse(config)?, vb, isa),
    graph: None,
};
