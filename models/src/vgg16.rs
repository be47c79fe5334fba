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

use candle_core::Tensor;
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::kernels::conv::Conv;
use crate::kernels::dense::nchw_column;
use crate::kernels::{Activation, Isa};
use crate::layers::{self, Conv2d, Padding};
use crate::plan::{self, Plan, PlanBuilder};
use crate::{Architecture, Classifier, Result, Role, TensorSpec};

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

fn tensor_specs(config: &serde_json::Value) -> Result<Vec<TensorSpec>> {
    let c = Config::parse(config)?;
    let mut specs = Vec::new();
    for (i, c_in, c_out) in convolutions() {
        specs.push(TensorSpec::new(
            format!("features.{i}.weight"),
            &[c_out, c_in, 3, 3],
            Role::Weight,
        ));
        specs.push(TensorSpec::new(
            format!("features.{i}.bias"),
            &[c_out],
            Role::Bias,
        ));
    }
    for (i, c_in, c_out) in [
        (0, c.flat_features(), c.hidden),
        (3, c.hidden, c.hidden),
        (6, c.hidden, c.classes),
    ] {
        specs.push(TensorSpec::new(
            format!("classifier.{i}.weight"),
            &[c_out, c_in],
            Role::Weight,
        ));
        specs.push(TensorSpec::new(
            format!("classifier.{i}.bias"),
            &[c_out],
            Role::Bias,
        ));
    }
    Ok(specs)
}

pub struct Vgg16 {
    /// `None` is a max pool.
    features: Vec<Option<Conv2d>>,
    classifier: [candle_nn::Linear; 3],
    classes: usize,
}

impl Vgg16 {
    pub fn new(c: &Config, vb: VarBuilder) -> Result<Self> {
        let mut convs = convolutions().into_iter();
        let mut features = Vec::with_capacity(LAYOUT.len());
        for layer in LAYOUT {
            features.push(match layer {
                Some(_) => {
                    let (i, c_in, c_out) = convs.next().expect("13 convolutions");
                    Some(Conv2d::load(
                        vb.pp(format!("features.{i}")),
                        (c_in, c_out, 3),
                        1,
                        Padding::Symmetric(1),
                        true,
                    )?)
                }
                None => None,
            });
        }
        let vb = vb.pp("classifier");
        Ok(Self {
            features,
            classifier: [
                layers::linear(vb.pp("0"), c.flat_features(), c.hidden)?,
                layers::linear(vb.pp("3"), c.hidden, c.hidden)?,
                layers::linear(vb.pp("6"), c.hidden, c.classes)?,
            ],
            classes: c.classes,
        })
    }
}

impl Classifier for Vgg16 {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        layers::check_input(x, NAME)?;
        let mut x = x.clone();
        for layer in &self.features {
            x = match layer {
                Some(conv) => conv.forward(&x)?.relu()?,
                None => x.max_pool2d(2)?,
            };
        }
        let [fc6, fc7, fc8] = &self.classifier;
        let x = layers::apply_linear(fc6, &x.flatten_from(1)?)?.relu()?;
        let x = layers::apply_linear(fc7, &x)?.relu()?;
        layers::apply_linear(fc8, &x)
    }

    fn num_classes(&self) -> usize {
        self.classes
    }
}

/// The same network for the fast CPU kernels: ReLU fused into the convolutions, fc6's columns
/// reordered for the NHWC flatten.
fn plan(c: &Config, vb: VarBuilder, isa: Isa) -> Result<Plan> {
    let mut b = PlanBuilder::new(isa);
    let mut x = b.input();
    let mut convs = convolutions().into_iter();
    // The side of the (square) map the next convolution sees.
    let mut side = c.input_height.min(c.input_width);
    for layer in LAYOUT {
        x = match layer {
            Some(_) => {
                let (i, c_in, c_out) = convs.next().expect("13 convolutions");
                let vb = vb.pp(format!("features.{i}"));
                let bias = plan::load(&vb, &[c_out], "bias")?;
                let conv = plan::with_weights(&vb, &[c_out, c_in, 3, 3], "weight", |weight| {
                    Conv::for_map(
                        isa,
                        weight,
                        bias,
                        (c_in, c_out, 3),
                        1,
                        Padding::Symmetric(1),
                        Activation::Relu,
                        side,
                    )
                })?;
                b.conv(x, conv, None)
            }
            None => {
                side /= 2;
                b.max_pool_2x2(x)
            }
        };
    }
    let vb = vb.pp("classifier");
    let (h, w) = (c.input_height / 32, c.input_width / 32);
    for (i, c_in, c_out) in [
        (0, c.flat_features(), c.hidden),
        (3, c.hidden, c.hidden),
        (6, c.hidden, c.classes),
    ] {
        let layer = vb.pp(i.to_string());
        let activation = if i < 6 {
            Activation::Relu
        } else {
            Activation::None
        };
        let column = nchw_column(h, w, 512);
        let dense = plan::dense(isa, &layer, (c_out, c_in), activation, |j| match i {
            0 => column(j),
            _ => j,
        })?;
        x = b.dense(x, dense);
    }
    Ok(b.finish(x, NAME, c.classes))
}

pub(crate) const ARCHITECTURE: Architecture = Architecture {
    name: NAME,
    summary: "VGG16: 13 conv3x3 (5 pooled groups) + 3 dense, torchvision weight names",
    tensor_specs,
    input_size: |config| {
        let c = Config::parse(config)?;
        Ok(Some((c.input_height, c.input_width)))
    },
    num_classes: |config| Ok(Config::parse(config)?.classes),
    build: |config, vb| Ok(Box::new(Vgg16::new(&Config::parse(config)?, vb)?)),
    plan: |config, vb, isa| plan(&Config::parse(config)?, vb, isa),
    graph: None,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn convolution_indices_follow_torchvision() {
        let indices: Vec<usize> = convolutions().iter().map(|c| c.0).collect();
        assert_eq!(indices, [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]);
    }
}
