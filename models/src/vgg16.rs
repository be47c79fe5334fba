//! VGG16 (configuration "D"): Simonyan & Zisserman, "Very Deep Convolutional Networks for
//! Large-Scale Image Recognition" (2014). Thirteen 3x3 convolutions in five groups, each group
//! closed by 2x2 max pooling, then three dense layers.
//!
//! # Weight names
//!
//! They are torchvision's `vgg16` state-dict names, so a torchvision checkpoint converted to
//! safetensors loads unchanged:
//!
//! | layer | tensors | shape |
//! |---|---|---|
//! | conv 1..13 | `features.{0,2,5,7,10,12,14,17,19,21,24,26,28}.{weight,bias}` | `[out, in, 3, 3]`, `[out]` |
//! | fc6 | `classifier.0.{weight,bias}` | `[hidden, 512*(H/32)*(W/32)]`, `[hidden]` |
//! | fc7 | `classifier.3.{weight,bias}` | `[hidden, hidden]` |
//! | fc8 | `classifier.6.{weight,bias}` | `[classes, hidden]` |
//!
//! The flatten before fc6 is in (C, H, W) order. Unlike torchvision there is no adaptive
//! average pool before the classifier: at 224x224 torchvision's pool is the identity, and at
//! other sizes this model behaves like Keras' `VGG16(include_top=False)` + `Flatten` + dense
//! layers, which is how the seed fine-tunes it.
//!
//! # From a Keras checkpoint
//!
//! Keras names the layers `block{b}_conv{i}` and `fc1`, `fc2`, `predictions` (or the names of
//! the head the user added). Map them in order to the names above and:
//! - transpose conv kernels from HWIO `[3, 3, in, out]` to OIHW (`kernel.transpose(3, 2, 0, 1)`);
//! - transpose dense kernels from `[in, out]` to `[out, in]`;
//! - for fc6 only, also reorder the input rows: Keras flattens NHWC in (H, W, C) order, this
//!   model in (C, H, W) order, so `w.reshape(H/32, W/32, 512, hidden).transpose(2, 0, 1, 3)
//!   .reshape(-1, hidden).T`.

use serde::{Deserialize, Serialize};

use crate::graph::Activation::Relu;
use crate::graph::{Conv, Dense, Graph, GraphBuilder, Op, Pads, Pool};
use crate::{Architecture, Result};

const NAME: &str = "vgg16";

/// Output channels of the thirteen convolutions; `None` marks a 2x2 max pool.
const LAYOUT: [Option<usize>; 18] = [
    Some(64),
    Some(64),
    None,
    Some(128),
    Some(128),
    None,
    Some(256),
    Some(256),
    Some(256),
    None,
    Some(512),
    Some(512),
    Some(512),
    None,
    Some(512),
    Some(512),
    Some(512),
    None,
];

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Input height; a multiple of 32 (five 2x2 pools).
    pub input_height: usize,
    /// Input width; a multiple of 32.
    pub input_width: usize,
    /// Width of fc6 and fc7.
    pub hidden: usize,
    pub classes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self::imagenet()
    }
}

impl Config {
    /// The original ImageNet classifier.
    pub fn imagenet() -> Self {
        Self {
            input_height: 224,
            input_width: 224,
            hidden: 4096,
            classes: 1000,
        }
    }

    fn parse(config: &serde_json::Value) -> Result<Self> {
        let c: Self = crate::parse_config(NAME, config)?;
        let bad = |reason: String| crate::Error::Config {
            architecture: NAME,
            reason,
        };
        for (what, v) in [
            ("input_height", c.input_height),
            ("input_width", c.input_width),
        ] {
            if v == 0 || !v.is_multiple_of(32) {
                return Err(bad(format!(
                    "{what} must be a positive multiple of 32, got {v}"
                )));
            }
        }
        if c.hidden == 0 || c.classes == 0 {
            return Err(bad("hidden and classes must be positive".into()));
        }
        Ok(c)
    }

    fn flat_features(&self) -> usize {
        512 * (self.input_height / 32) * (self.input_width / 32)
    }
}

/// `(torchvision index, in channels, out channels)` of each convolution.
fn convolutions() -> Vec<(usize, usize, usize)> {
    let mut out = Vec::with_capacity(13);
    let mut c_in = 3;
    for (index, layer) in LAYOUT.iter().enumerate() {
        if let Some(c_out) = *layer {
            // torchvision interleaves a ReLU after each conv and counts the pools, so module
            // indices advance by 2 per conv and 1 per pool.
            let torch_index = index * 2 - LAYOUT[..index].iter().filter(|l| l.is_none()).count();
            out.push((torch_index, c_in, c_out));
            c_in = c_out;
        }
    }
    out
}

/// The network as a graph, nodes named after torchvision's modules (`features.0` the first
/// convolution, `features.1` its ReLU, `features.4` the first pool, `classifier.0` fc6...).
pub fn graph(config: &serde_json::Value) -> Result<Graph> {
    let c = Config::parse(config)?;
    let mut b = GraphBuilder::new(Some((c.input_height, c.input_width)));
    let mut x = b.input();
    let mut convs = convolutions().into_iter();
    let mut index = 0;
    for layer in LAYOUT {
        if layer.is_some() {
            let (i, c_in, c_out) = convs.next().expect("13 convolutions");
            let (w, bias) = (format!("features.{i}.weight"), format!("features.{i}.bias"));
            let conv = Conv::square((c_in, c_out, 3), 1, Pads::same(1), w, Some(bias));
            x = b.node(format!("features.{i}"), Op::Conv(conv), &[&x]);
            x = b.node(
                format!("features.{}", i + 1),
                Op::Activation { function: Relu },
                &[&x],
            );
            index = i + 2;
        } else {
            x = b.node(
                format!("features.{index}"),
                Op::MaxPool(Pool::square(2)),
                &[&x],
            );
            index += 1;
        }
    }
    x = b.node("flatten", Op::Flatten, &[&x]);
    let dense = [
        (0, c.flat_features(), c.hidden),
        (3, c.hidden, c.hidden),
        (6, c.hidden, c.classes),
    ];
    for (i, c_in, c_out) in dense {
        let name = format!("classifier.{i}");
        x = b.node(&name, Op::Dense(Dense::torch(&name, c_in, c_out)), &[&x]);
        if i < 6 {
            x = b.node(
                format!("classifier.{}", i + 1),
                Op::Activation { function: Relu },
                &[&x],
            );
        }
    }
    b.finish(&x)
}

pub(crate) const ARCHITECTURE: Architecture = crate::graph_architecture!(
    NAME,
    "VGG16: 13 conv3x3 (5 pooled groups) + 3 dense, torchvision weight names",
    graph
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn convolution_indices_follow_torchvision() {
        let indices: Vec<usize> = convolutions().iter().map(|c| c.0).collect();
        assert_eq!(indices, [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]);
        let g = graph(&serde_json::Value::Null).unwrap();
        let pools: Vec<&str> = g
            .nodes
            .iter()
            .filter(|n| matches!(n.op, Op::MaxPool(_)))
            .map(|n| n.name.as_str())
            .collect();
        assert_eq!(
            pools,
            [
                "features.4",
                "features.9",
                "features.16",
                "features.23",
                "features.30"
            ]
        );
    }
}
