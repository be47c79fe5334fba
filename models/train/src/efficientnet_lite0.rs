//! EfficientNet-Lite0 as candle modules, for training: the network of
//! [`edgemm_models::efficientnet_lite0`] (same weight names, same function; a test holds it to the
//! graph's reference), cut into trunk, blocks and tail for transfer learning, with the
//! training kernels' hand-written gradients ([`EfficientNetLite0::use_training_kernels`]).

use candle_core::Tensor;
use candle_nn::VarBuilder;

use edgemm_models::efficientnet_lite0::{
    blocks, BlockShape, Config, BN_EPS, HEAD_CHANNELS, NAME, STAGES, STEM_CHANNELS,
};
use edgemm_models::layers::{self, BatchNorm, Padding};
use edgemm_models::{Classifier, Result};

use crate::layers::{Conv2d, DepthwiseConv2d};

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
    /// written by hand ([`crate::kernels::DepthwiseConv`]), and every pointwise one to
    /// the packed GEMM ([`crate::kernels::MatMul`]); the function is unchanged.
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A tensor of seeded uniform values in `[lo, hi)`, so the tests are the same every run.
    fn seeded_tensor(name: &str, shape: impl Into<candle_core::Shape>, lo: f64, hi: f64) -> Tensor {
        let shape = shape.into();
        let values: Vec<f32> = edgemm_models::init::uniform(name, shape.elem_count(), 11)
            .map(|u| (lo + (hi - lo) * u) as f32)
            .collect();
        Tensor::from_vec(values, shape, &candle_core::Device::Cpu).unwrap()
    }

    /// Seeded random weights for a 10-class network, on the CPU.
    fn seeded_weights() -> std::collections::HashMap<String, Tensor> {
        let specs = edgemm_models::efficientnet_lite0::graph(&serde_json::json!({ "classes": 10 }))
            .unwrap()
            .tensor_specs()
            .unwrap();
        edgemm_models::init::seeded_weights(&specs, 3, &candle_core::Device::Cpu).unwrap()
    }

    fn seeded_network(weights: &std::collections::HashMap<String, Tensor>) -> EfficientNetLite0 {
        let vb = VarBuilder::from_tensors(
            weights.clone(),
            candle_core::DType::F32,
            &candle_core::Device::Cpu,
        );
        EfficientNetLite0::new(&Config { classes: 10 }, vb).unwrap()
    }

    /// The training network computes the registered architecture's function: its logits
    /// equal the graph reference's (candle ops both, the same order of operations).
    #[test]
    fn computes_what_the_graph_describes() {
        let weights = seeded_weights();
        let net = seeded_network(&weights);
        let vb = VarBuilder::from_tensors(
            weights.clone(),
            candle_core::DType::F32,
            &candle_core::Device::Cpu,
        );
        let graph = edgemm_models::efficientnet_lite0::graph(&serde_json::json!({ "classes": 10 }))
            .unwrap();
        let reference = edgemm_models::graph::reference::GraphNetwork::new(&graph, vb).unwrap();
        let x = seeded_tensor("x", (2, 3, 64, 48), -1.0, 1.0);
        let (a, b) = (net.forward(&x).unwrap(), reference.forward(&x).unwrap());
        let diff = (&a - &b).unwrap().abs().unwrap().max_all().unwrap();
        let scale = a
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() <= 1e-5 * scale.max(1.0));
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
