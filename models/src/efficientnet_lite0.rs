//! EfficientNet-Lite0: Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional
//! Neural Networks" (2019), in the "Lite" variant for edge devices (TensorFlow Model Garden,
//! 2020): no squeeze-and-excitation, ReLU6 instead of swish, stem and head not rescaled.
//!
//! Weight names are those of efficientnet_pytorch checkpoints (`_conv_stem`, `_bn0`,
//! `_blocks.N._expand_conv` / `_bn0` / `_depthwise_conv` / `_bn1` / `_project_conv` / `_bn2`,
//! `_conv_head`, `_bn1`, `_fc`), so the ImageNet checkpoint in
//! `../shared/data/efficientnet-lite0/` loads unchanged. Convolutions pad like TensorFlow's
//! "SAME" (the odd zero after), as the checkpoint was trained in TensorFlow.

use candle_core::Tensor;
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::kernels::conv::Conv;
use crate::kernels::mbconv::{MbConv, MbConvWeights};
use crate::kernels::{Activation, Isa};
use crate::layers::{self, BatchNorm, Conv2d, DepthwiseConv2d, Padding};
use crate::plan::{self, Plan, PlanBuilder, Value};
use crate::{Architecture, Classifier, Result, Role, TensorSpec};

const NAME: &str = "efficientnet-lite0";
const BN_EPS: f64 = 1e-3;
const STEM_CHANNELS: usize = 32;
const HEAD_CHANNELS: usize = 1280;

/// One stage of the block table: how many blocks, kernel, stride of the first block,
/// expansion ratio, input and output channels.
struct Stage {
    repeats: usize,
    kernel: usize,
    stride: usize,
    expand: usize,
    c_in: usize,
    c_out: usize,
}

#[rustfmt::skip]
const STAGES: [Stage; 7] = [
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

    fn parse(config: &serde_json::Value) -> Result<Self> {
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
struct BlockShape {
    kernel: usize,
    stride: usize,
    expand: usize,
    c_in: usize,
    c_out: usize,
}

impl BlockShape {
    fn hidden(&self) -> usize {
        self.c_in * self.expand
    }
}

/// The 16 blocks in checkpoint order: within a stage only the first block strides and changes
/// the channel count.
fn blocks() -> Vec<BlockShape> {
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

fn bn_specs(specs: &mut Vec<TensorSpec>, prefix: &str, channels: usize) {
    for (suffix, role) in [
        ("weight", Role::BnWeight),
        ("bias", Role::BnBias),
        ("running_mean", Role::BnMean),
        ("running_var", Role::BnVar),
    ] {
        specs.push(TensorSpec::new(
            format!("{prefix}.{suffix}"),
            &[channels],
            role,
        ));
    }
}

fn tensor_specs(config: &serde_json::Value) -> Result<Vec<TensorSpec>> {
    let c = Config::parse(config)?;
    let mut specs = vec![TensorSpec::new(
        "_conv_stem.weight",
        &[STEM_CHANNELS, 3, 3, 3],
        Role::Weight,
    )];
    bn_specs(&mut specs, "_bn0", STEM_CHANNELS);
    for (i, b) in blocks().iter().enumerate() {
        let p = format!("_blocks.{i}");
        let hidden = b.hidden();
        if b.expand != 1 {
            specs.push(TensorSpec::new(
                format!("{p}._expand_conv.weight"),
                &[hidden, b.c_in, 1, 1],
                Role::Weight,
            ));
            bn_specs(&mut specs, &format!("{p}._bn0"), hidden);
        }
        specs.push(TensorSpec::new(
            format!("{p}._depthwise_conv.weight"),
            &[hidden, 1, b.kernel, b.kernel],
            Role::Weight,
        ));
        bn_specs(&mut specs, &format!("{p}._bn1"), hidden);
        specs.push(TensorSpec::new(
            format!("{p}._project_conv.weight"),
            &[b.c_out, hidden, 1, 1],
            Role::Weight,
        ));
        bn_specs(&mut specs, &format!("{p}._bn2"), b.c_out);
    }
    let last = STAGES[STAGES.len() - 1].c_out;
    specs.push(TensorSpec::new(
        "_conv_head.weight",
        &[HEAD_CHANNELS, last, 1, 1],
        Role::Weight,
    ));
    bn_specs(&mut specs, "_bn1", HEAD_CHANNELS);
    specs.push(TensorSpec::new(
        "_fc.weight",
        &[c.classes, HEAD_CHANNELS],
        Role::Weight,
    ));
    specs.push(TensorSpec::new("_fc.bias", &[c.classes], Role::Bias));
    Ok(specs)
}

/// Mobile inverted bottleneck without squeeze-excitation: expand (1x1), depthwise, project
/// (1x1), with a residual connection when the shape is kept.
struct Block {
    expand: Option<(Conv2d, BatchNorm)>,
    depthwise: DepthwiseConv2d,
    bn1: BatchNorm,
    project: Conv2d,
    bn2: BatchNorm,
    residual: bool,
}

impl Block {
    fn new(b: BlockShape, vb: VarBuilder) -> Result<Self> {
        let hidden = b.hidden();
        let expand = if b.expand != 1 {
            Some((
                Conv2d::load(
                    vb.pp("_expand_conv"),
                    (b.c_in, hidden, 1),
                    1,
                    Padding::TfSame,
                    false,
                )?,
                BatchNorm::load(vb.pp("_bn0"), hidden, BN_EPS)?,
            ))
        } else {
            None
        };
        Ok(Self {
            expand,
            depthwise: DepthwiseConv2d::load(
                vb.pp("_depthwise_conv"),
                hidden,
                b.kernel,
                b.stride,
                Padding::TfSame,
            )?,
            bn1: BatchNorm::load(vb.pp("_bn1"), hidden, BN_EPS)?,
            project: Conv2d::load(
                vb.pp("_project_conv"),
                (hidden, b.c_out, 1),
                1,
                Padding::TfSame,
                false,
            )?,
            bn2: BatchNorm::load(vb.pp("_bn2"), b.c_out, BN_EPS)?,
            residual: b.stride == 1 && b.c_in == b.c_out,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut y = x.clone();
        if let Some((conv, bn)) = &self.expand {
            y = layers::relu6(&bn.forward(&conv.forward(&y)?)?)?;
        }
        y = layers::relu6(&self.bn1.forward(&self.depthwise.forward(&y)?)?)?;
        y = self.bn2.forward(&self.project.forward(&y)?)?;
        if self.residual {
            y = (y + x)?;
        }
        Ok(y)
    }
}

pub struct EfficientNetLite0 {
    stem: Conv2d,
    bn0: BatchNorm,
    blocks: Vec<Block>,
    head: Conv2d,
    bn1: BatchNorm,
    fc: candle_nn::Linear,
    classes: usize,
}

impl EfficientNetLite0 {
    pub fn new(c: &Config, vb: VarBuilder) -> Result<Self> {
        let blocks = blocks()
            .into_iter()
            .enumerate()
            .map(|(i, b)| Block::new(b, vb.pp(format!("_blocks.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        let last = STAGES[STAGES.len() - 1].c_out;
        Ok(Self {
            stem: Conv2d::load(
                vb.pp("_conv_stem"),
                (3, STEM_CHANNELS, 3),
                2,
                Padding::TfSame,
                false,
            )?,
            bn0: BatchNorm::load(vb.pp("_bn0"), STEM_CHANNELS, BN_EPS)?,
            blocks,
            head: Conv2d::load(
                vb.pp("_conv_head"),
                (last, HEAD_CHANNELS, 1),
                1,
                Padding::TfSame,
                false,
            )?,
            bn1: BatchNorm::load(vb.pp("_bn1"), HEAD_CHANNELS, BN_EPS)?,
            fc: layers::linear(vb.pp("_fc"), HEAD_CHANNELS, c.classes)?,
            classes: c.classes,
        })
    }

    /// Switches every depthwise convolution to the training kernel, whose gradients are
    /// written by hand ([`crate::train::kernels::DepthwiseConv`]), and every pointwise one to
    /// the packed GEMM ([`crate::train::kernels::MatMul`]); the function is unchanged.
    #[cfg(feature = "train")]
    pub fn use_training_kernels(&mut self) {
        for block in &mut self.blocks {
            block.depthwise.use_training_kernel();
            if let Some((expand, _)) = &mut block.expand {
                expand.use_training_kernel();
            }
            block.project.use_training_kernel();
        }
        self.head.use_training_kernel();
    }

    /// The 1280-wide pooled features before `_fc`: what a transfer-learning head consumes.
    pub fn features(&self, x: &Tensor) -> Result<Tensor> {
        self.tail(&self.trunk(x, 0)?, 0)
    }

    /// The stem and the first `blocks` of the 16 blocks: the frozen part when the last
    /// `16 - blocks` are fine-tuned, whose output can then be computed once and cached.
    pub fn trunk(&self, x: &Tensor, blocks: usize) -> Result<Tensor> {
        layers::check_input(x, NAME)?;
        let mut x = layers::relu6(&self.bn0.forward(&self.stem.forward(x)?)?)?;
        for block in &self.blocks[..blocks.min(self.blocks.len())] {
            x = block.forward(&x)?;
        }
        Ok(x)
    }

    /// Blocks `from..to` alone: carries a cached trunk output from one cut to a later one.
    pub fn blocks(&self, x: &Tensor, from: usize, to: usize) -> Result<Tensor> {
        let mut x = x.clone();
        for block in &self.blocks[from.min(to)..to.min(self.blocks.len())] {
            x = block.forward(&x)?;
        }
        Ok(x)
    }

    /// Blocks `from..16`, the head convolution and the pooling: [`Self::trunk`]'s complement,
    /// so `tail(trunk(x, k), k)` is `features(x)` for every `k`.
    pub fn tail(&self, x: &Tensor, from: usize) -> Result<Tensor> {
        let mut x = x.clone();
        for block in &self.blocks[from.min(self.blocks.len())..] {
            x = block.forward(&x)?;
        }
        let x = layers::relu6(&self.bn1.forward(&self.head.forward(&x)?)?)?;
        layers::global_avg_pool(&x)
    }
}

impl Classifier for EfficientNetLite0 {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        layers::apply_linear(&self.fc, &self.features(x)?)
    }

    fn num_classes(&self) -> usize {
        self.classes
    }
}

/// The OIHW weight of a bias-free convolution (`vb.pp(conv)`) and the bias of its batch norm
/// (`vb.pp(bn)`), folded together.
fn folded(
    vb: &VarBuilder,
    (conv, bn): (&str, &str),
    shape: [usize; 4],
) -> Result<(Vec<f32>, Vec<f32>)> {
    let mut weight = plan::load(&vb.pp(conv), &shape, "weight")?;
    let mut bias = vec![0f32; shape[0]];
    plan::fold_batch_norm(&vb.pp(bn), BN_EPS, &mut weight, &mut bias)?;
    Ok((weight, bias))
}

/// A bias-free convolution (`vb.pp(conv)`) with its batch norm (`vb.pp(bn)`) folded in.
fn conv_bn(
    vb: &VarBuilder,
    names: (&str, &str),
    (c_in, c_out, kernel, stride): (usize, usize, usize, usize),
    activation: Activation,
    isa: Isa,
) -> Result<Conv> {
    let (weight, bias) = folded(vb, names, [c_out, c_in, kernel, kernel])?;
    Ok(Conv::new(
        isa,
        &weight,
        bias,
        (c_in, c_out, kernel),
        stride,
        Padding::TfSame,
        activation,
    ))
}

/// One block for the fast CPU kernels: expand (1x1), depthwise and project (1x1), with the
/// residual add, as one fused step ([`MbConv`]), its hidden channels cut into a part per
/// thread of the pool.
fn plan_block(b: &mut PlanBuilder, x: Value, shape: BlockShape, vb: &VarBuilder) -> Result<Value> {
    let (c_in, hidden, c_out) = (shape.c_in, shape.hidden(), shape.c_out);
    let (k, s) = (shape.kernel, shape.stride);
    let expand = if shape.expand != 1 {
        Some(folded(vb, ("_expand_conv", "_bn0"), [hidden, c_in, 1, 1])?)
    } else {
        None
    };
    let weights = MbConvWeights {
        expand,
        depthwise: folded(vb, ("_depthwise_conv", "_bn1"), [hidden, 1, k, k])?,
        project: folded(vb, ("_project_conv", "_bn2"), [c_out, hidden, 1, 1])?,
    };
    let block = MbConv::new(
        b.isa(),
        &weights,
        (c_in, hidden, c_out),
        (k, s),
        Padding::TfSame,
        Activation::Relu6,
        rayon::current_num_threads(),
    );
    let residual = (s == 1 && c_in == c_out).then_some(x);
    Ok(b.mbconv(x, block, residual))
}

/// The network for the fast CPU kernels.
fn plan(c: &Config, vb: VarBuilder, isa: Isa) -> Result<Plan> {
    let mut b = PlanBuilder::new(isa);
    let stem = conv_bn(
        &vb,
        ("_conv_stem", "_bn0"),
        (3, STEM_CHANNELS, 3, 2),
        Activation::Relu6,
        isa,
    )?;
    let mut x = b.conv(b.input(), stem, None);
    for (i, shape) in blocks().into_iter().enumerate() {
        x = plan_block(&mut b, x, shape, &vb.pp(format!("_blocks.{i}")))?;
    }
    let last = STAGES[STAGES.len() - 1].c_out;
    let head = conv_bn(
        &vb,
        ("_conv_head", "_bn1"),
        (last, HEAD_CHANNELS, 1, 1),
        Activation::Relu6,
        isa,
    )?;
    x = b.conv(x, head, None);
    x = b.global_avg_pool(x);
    let fc = vb.pp("_fc");
    let fc = plan::dense(
        isa,
        &fc,
        (c.classes, HEAD_CHANNELS),
        Activation::None,
        |i| i,
    )?;
    x = b.dense(x, fc);
    Ok(b.finish(x, NAME, c.classes))
}

pub(crate) const ARCHITECTURE: Architecture = Architecture {
    name: NAME,
    summary: "EfficientNet-Lite0: 16 MBConv blocks (ReLU6, no SE), TF-SAME padding, any input size",
    tensor_specs,
    input_size: |_| Ok(None),
    num_classes: |config| Ok(Config::parse(config)?.classes),
    build: |config, vb| {
        Ok(Box::new(EfficientNetLite0::new(
            &Config::parse(config)?,
            vb,
        )?))
    },
    plan: |config, vb, isa| plan(&Config::parse(config)?, vb, isa),
    graph: None,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_table_has_sixteen_blocks_and_247_tensors() {
        assert_eq!(blocks().len(), 16);
        // The count of tensors in the published checkpoint.
        assert_eq!(tensor_specs(&serde_json::Value::Null).unwrap().len(), 247);
    }

    /// A tensor of seeded uniform values in `[lo, hi)`, so the tests are the same every run.
    fn seeded_tensor(name: &str, shape: impl Into<candle_core::Shape>, lo: f64, hi: f64) -> Tensor {
        let shape = shape.into();
        let values: Vec<f32> = crate::init::uniform(name, shape.elem_count(), 11)
            .map(|u| (lo + (hi - lo) * u) as f32)
            .collect();
        Tensor::from_vec(values, shape, &candle_core::Device::Cpu).unwrap()
    }

    /// Seeded random weights for a 10-class network, on the CPU.
    fn seeded_weights() -> std::collections::HashMap<String, Tensor> {
        let specs = tensor_specs(&serde_json::json!({ "classes": 10 })).unwrap();
        crate::init::seeded_weights(&specs, 3, &candle_core::Device::Cpu).unwrap()
    }

    fn seeded_network(weights: &std::collections::HashMap<String, Tensor>) -> EfficientNetLite0 {
        let vb = VarBuilder::from_tensors(
            weights.clone(),
            candle_core::DType::F32,
            &candle_core::Device::Cpu,
        );
        EfficientNetLite0::new(&Config { classes: 10 }, vb).unwrap()
    }

    /// Splitting the network for fine-tuning changes nothing: `tail(trunk(x, k), k)` is
    /// `features(x)` wherever it is cut.
    #[test]
    fn trunk_and_tail_compose_to_the_features() {
        let net = seeded_network(&seeded_weights());
        let x = seeded_tensor("x", (2, 3, 64, 64), -1.0, 1.0);
        let whole = net.features(&x).unwrap();
        for k in [0, 5, 11, 16] {
            let split = net.tail(&net.trunk(&x, k).unwrap(), k).unwrap();
            let diff = (&whole - split)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert_eq!(diff, 0.0, "cut at {k}");
        }
    }

    /// The training kernels compute the same function with the same gradients: the input's
    /// gradient through the whole network, with and without them.
    #[cfg(feature = "train")]
    #[test]
    fn training_kernels_keep_the_function_and_its_gradients() {
        let weights = seeded_weights();
        let generic = seeded_network(&weights);
        let mut fast = seeded_network(&weights);
        fast.use_training_kernels();
        let x =
            candle_core::Var::from_tensor(&seeded_tensor("x", (2, 3, 48, 40), -1.0, 1.0)).unwrap();
        let max_abs = |t: &Tensor| {
            t.abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        let (a, b) = (generic.forward(&x).unwrap(), fast.forward(&x).unwrap());
        let scale = max_abs(&a);
        assert!(
            max_abs(&(&a - &b).unwrap()) <= 1e-4 * scale.max(1.0),
            "logits differ"
        );
        let weights = seeded_tensor("loss weights", a.dims2().unwrap(), 0.0, 1.0);
        let ga = (a * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gb = (b * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let (ga, gb) = (ga.get(&x).unwrap(), gb.get(&x).unwrap());
        let scale = max_abs(ga);
        assert!(scale > 0.0, "no gradient reached the input");
        // Relative L2 distance: an activation sitting on a ReLU6 corner may switch sides
        // between the two summation orders and move a few entries of the gradient by a step,
        // which a max-abs bound would call a failure.
        let norm = |t: &Tensor| {
            t.sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                .sqrt()
        };
        let relative = norm(&(ga - gb).unwrap()) / norm(ga);
        assert!(
            relative <= 1e-3,
            "input gradients differ: relative L2 {relative}"
        );
    }
}
