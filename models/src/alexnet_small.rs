//! alexnet-small: the simplified AlexNet that the CIFAR-10 seed model uses.
//!
//! After Krizhevsky, Sutskever & Hinton, "ImageNet Classification with Deep Convolutional
//! Neural Networks" (2012), cut down for 32x32 inputs: three 3x3 convolutions, each followed
//! by (optional) batch norm, ReLU and 2x2 max pooling, then two dense layers.
//!
//! Weights: `conv{1,2,3}.{weight,bias}` (OIHW), `bn{1,2,3}.{weight,bias,running_mean,
//! running_var}` when `batch_norm` is set, `fc{1,2}.{weight,bias}` ([out, in]). The flatten
//! before `fc1` is in (C, H, W) order, as PyTorch's `flatten(1)` on NCHW.

use serde::{Deserialize, Serialize};

use crate::graph::Activation::Relu;
use crate::graph::{BatchNorm, Conv, Dense, Graph, GraphBuilder, Op, Pads, Pool};
use crate::{Architecture, Result};

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
    pub(crate) fn parse(config: &serde_json::Value) -> Result<Self> {
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

    pub(crate) fn flat_features(&self) -> usize {
        let side = self.input_size / 8;
        self.channels[2] * side * side
    }
}

/// The network as a graph: each stage `conv{k}` (+ `bn{k}`) + ReLU + 2x2 max pool, then
/// `fc1` + ReLU and `fc2` over the (C, H, W)-order flatten.
pub fn graph(config: &serde_json::Value) -> Result<Graph> {
    let c = Config::parse(config)?;
    let mut b = GraphBuilder::new(Some((c.input_size, c.input_size)));
    let mut x = b.input();
    let mut c_in = 3;
    for (i, &c_out) in c.channels.iter().enumerate() {
        let k = i + 1;
        let conv = Conv::square(
            (c_in, c_out, 3),
            1,
            Pads::same(1),
            format!("conv{k}.weight"),
            Some(format!("conv{k}.bias")),
        );
        x = b.node(format!("conv{k}"), Op::Conv(conv), &[&x]);
        if c.batch_norm {
            let bn = BatchNorm::torch(&format!("bn{k}"), c_out, c.bn_eps);
            x = b.node(format!("bn{k}"), Op::BatchNorm(bn), &[&x]);
        }
        x = b.node(format!("relu{k}"), Op::Activation { function: Relu }, &[&x]);
        x = b.node(format!("pool{k}"), Op::MaxPool(Pool::square(2)), &[&x]);
        c_in = c_out;
    }
    x = b.node("flatten", Op::Flatten, &[&x]);
    x = b.node(
        "fc1",
        Op::Dense(Dense::torch("fc1", c.flat_features(), c.hidden)),
        &[&x],
    );
    x = b.node("relu_fc1", Op::Activation { function: Relu }, &[&x]);
    x = b.node(
        "fc2",
        Op::Dense(Dense::torch("fc2", c.hidden, c.classes)),
        &[&x],
    );
    b.finish(&x)
}

pub(crate) const ARCHITECTURE: Architecture = crate::graph_architecture!(
    NAME,
    "simplified AlexNet: 3x(conv3x3, BN, ReLU, maxpool) + 2 dense, square input",
    graph
);
