//! EfficientNet-Lite0: Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional
//! Neural Networks" (2019), in the "Lite" variant for edge devices (TensorFlow Model Garden,
//! 2020): no squeeze-and-excitation, ReLU6 instead of swish, stem and head not rescaled.
//!
//! Weight names are those of efficientnet_pytorch checkpoints (`_conv_stem`, `_bn0`,
//! `_blocks.N._expand_conv` / `_bn0` / `_depthwise_conv` / `_bn1` / `_project_conv` / `_bn2`,
//! `_conv_head`, `_bn1`, `_fc`), so the ImageNet checkpoint in
//! `../shared/data/efficientnet-lite0/` loads unchanged. Convolutions pad like TensorFlow's
//! "SAME" (the odd zero after), as the checkpoint was trained in TensorFlow.

use serde::{Deserialize, Serialize};

use crate::graph::{Activation, Conv, Dense, Graph, GraphBuilder, Op, Pads};
use crate::{Architecture, Result};

pub const NAME: &str = "efficientnet-lite0";
pub const BN_EPS: f64 = 1e-3;
pub const STEM_CHANNELS: usize = 32;
pub const HEAD_CHANNELS: usize = 1280;

/// One stage of the block table: how many blocks, kernel, stride of the first block,
/// expansion ratio, input and output channels.
pub struct Stage {
    pub repeats: usize,
    pub kernel: usize,
    pub stride: usize,
    pub expand: usize,
    pub c_in: usize,
    pub c_out: usize,
}

#[rustfmt::skip]
pub const STAGES: [Stage; 7] = [
    Stage { repeats: 1, kernel: 3, stride: 1, expand: 1, c_in: 32, c_out: 16 },
    Stage { repeats: 2, kernel: 3, stride: 2, expand: 6, c_in: 16, c_out: 24 },
    Stage { repeats: 2, kernel: 5, stride: 2, expand: 6, c_in: 24, c_out: 40 },
    Stage { repeats: 3, kernel: 3, stride: 2, expand: 6, c_in: 40, c_out: 80 },
    Stage { repeats: 3, kernel: 5, stride: 1, expand: 6, c_in: 80, c_out: 112 },
    Stage { repeats: 4, kernel: 5, stride: 2, expand: 6, c_in: 112, c_out: 192 },
    Stage { repeats: 1, kernel: 3, stride: 1, expand: 6, c_in: 192, c_out: 320 },
];

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Outputs of the final `_fc` layer (1000 for the ImageNet checkpoint).
    pub classes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self::imagenet()
    }
}

impl Config {
    pub fn imagenet() -> Self {
        Self { classes: 1000 }
    }

    pub fn parse(config: &serde_json::Value) -> Result<Self> {
        let c: Self = crate::parse_config(NAME, config)?;
        if c.classes == 0 {
            return Err(crate::Error::Config {
                architecture: NAME,
                reason: "classes must be positive".into(),
            });
        }
        Ok(c)
    }
}

/// The geometry of one mobile inverted-bottleneck block.
#[derive(Clone, Copy)]
pub struct BlockShape {
    pub kernel: usize,
    pub stride: usize,
    pub expand: usize,
    pub c_in: usize,
    pub c_out: usize,
}

impl BlockShape {
    pub fn hidden(&self) -> usize {
        self.c_in * self.expand
    }
}

/// The 16 blocks in checkpoint order: within a stage only the first block strides and changes
/// the channel count.
pub fn blocks() -> Vec<BlockShape> {
    let mut out = Vec::with_capacity(16);
    for s in &STAGES {
        for r in 0..s.repeats {
            out.push(BlockShape {
                kernel: s.kernel,
                stride: if r == 0 { s.stride } else { 1 },
                expand: s.expand,
                c_in: if r == 0 { s.c_in } else { s.c_out },
                c_out: s.c_out,
            });
        }
    }
    out
}

/// The network as a graph: the stem, the 16 blocks (expansion, depthwise and projection, each
/// with its batch norm, ReLU6 after the first two, the residual add where the shape is
/// kept), the head convolution, global pooling and `_fc`.
pub fn graph(config: &serde_json::Value) -> Result<Graph> {
    let c = Config::parse(config)?;
    let mut g = GraphBuilder::new(None);
    let input = g.input();
    let stem = Conv::square(
        (3, STEM_CHANNELS, 3),
        2,
        Pads::SameUpper,
        "_conv_stem.weight",
        None,
    );
    let mut x = g.conv_bn(
        &input,
        ("_conv_stem", stem),
        ("_bn0", BN_EPS),
        Some(Activation::RELU6),
    );
    for (i, b) in blocks().into_iter().enumerate() {
        let p = format!("_blocks.{i}");
        let hidden = b.hidden();
        let mut y = x.clone();
        if b.expand != 1 {
            let expand = pointwise((b.c_in, hidden), &format!("{p}._expand_conv"));
            let names = (&format!("{p}._expand_conv")[..], expand);
            y = g.conv_bn(
                &y,
                names,
                (&format!("{p}._bn0"), BN_EPS),
                Some(Activation::RELU6),
            );
        }
        let depthwise = Conv {
            groups: hidden,
            ..Conv::square(
                (hidden, hidden, b.kernel),
                b.stride,
                Pads::SameUpper,
                format!("{p}._depthwise_conv.weight"),
                None,
            )
        };
        let names = (&format!("{p}._depthwise_conv")[..], depthwise);
        y = g.conv_bn(
            &y,
            names,
            (&format!("{p}._bn1"), BN_EPS),
            Some(Activation::RELU6),
        );
        let project = pointwise((hidden, b.c_out), &format!("{p}._project_conv"));
        let names = (&format!("{p}._project_conv")[..], project);
        y = g.conv_bn(&y, names, (&format!("{p}._bn2"), BN_EPS), None);
        if b.stride == 1 && b.c_in == b.c_out {
            y = g.node(format!("{p}.add"), Op::Add, &[&y, &x]);
        }
        x = y;
    }
    let last = STAGES[STAGES.len() - 1].c_out;
    let head = pointwise((last, HEAD_CHANNELS), "_conv_head");
    x = g.conv_bn(
        &x,
        ("_conv_head", head),
        ("_bn1", BN_EPS),
        Some(Activation::RELU6),
    );
    x = g.node("pool", Op::GlobalAvgPool, &[&x]);
    x = g.node("flatten", Op::Flatten, &[&x]);
    let fc = Dense::torch("_fc", HEAD_CHANNELS, c.classes);
    x = g.node("_fc", Op::Dense(fc), &[&x]);
    g.finish(&x)
}

/// A bias-free 1x1 convolution, weight `{name}.weight`.
fn pointwise((c_in, c_out): (usize, usize), name: &str) -> Conv {
    Conv::square(
        (c_in, c_out, 1),
        1,
        Pads::NONE,
        format!("{name}.weight"),
        None,
    )
}

pub const ARCHITECTURE: Architecture = crate::graph_architecture!(
    NAME,
    "EfficientNet-Lite0: 16 MBConv blocks (ReLU6, no SE), TF-SAME padding, any input size",
    graph
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_table_has_sixteen_blocks_and_247_tensors() {
        assert_eq!(blocks().len(), 16);
        // The count of tensors in the published checkpoint.
        let specs = graph(&serde_json::Value::Null)
            .unwrap()
            .tensor_specs()
            .unwrap();
        assert_eq!(specs.len(), 247);
    }
}
