//! Image-classification architectures for edgemm, written with candle-nn and registered by name.
//!
//! An artifact's manifest names its architecture (`"architecture": "efficientnet-lite0"`) and
//! carries that architecture's config as JSON. This crate turns the pair into a network:
//!
//! - [`architecture`] looks a name up in the registry ([`ARCHITECTURES`]);
//! - [`Architecture::tensor_specs`] lists every tensor the weights file must hold, with its
//!   shape, so a runtime can refuse a wrong file before it touches a single weight;
//! - [`Architecture::build`] builds the network from a candle `VarBuilder`, either as candle
//!   ops (the reference, and what runs on CUDA) or as a [`Plan`] over this crate's CPU
//!   [`kernels`] (the default on the CPU); [`Kernels`] chooses, `EDGEMM_KERNELS` overrides.
//!
//! Every network takes an `[N, 3, H, W]` f32 batch (NCHW, already normalised) and returns
//! `[N, classes]` logits. Weight names mirror the checkpoints the architectures come from
//! (torchvision for VGG16, MobileNetV3 and ResNet, efficientnet_pytorch for
//! EfficientNet-Lite0), so those load without a renaming table.
//!
//! ```
//! use edgemm_models::{architecture, init};
//! use candle_core::{Device, Tensor};
//!
//! let arch = architecture("alexnet-small")?;
//! let config = serde_json::json!({ "classes": 10 });
//! let specs = arch.tensor_specs(&config)?;
//! // Seeded random weights: enough to run the network end to end.
//! let weights = init::seeded_weights(&specs, 7, &Device::Cpu)?;
//! let vb = candle_nn::VarBuilder::from_tensors(weights, candle_core::DType::F32, &Device::Cpu);
//! let net = arch.build(&config, vb)?;
//! let logits = net.forward(&Tensor::zeros((1, 3, 32, 32), candle_core::DType::F32, &Device::Cpu)?)?;
//! assert_eq!(logits.dims(), &[1, 10]);
//! # Ok::<(), edgemm_models::Error>(())
//! ```

pub mod alexnet_small;
pub mod efficientnet_lite0;
pub mod golden;
pub mod graph;
pub mod init;
pub mod kernels;
pub mod layers;
pub mod mobilenet_v3;
pub mod onnx;
mod plan;
pub mod resnet;
mod torch;
pub mod vgg16;

use candle_core::Tensor;
use candle_nn::VarBuilder;

pub use graph::Graph;
pub use kernels::{Isa, Kernels};
pub use layers::Padding;
pub use plan::{Plan, StepInfo};

/// Errors raised while validating a config or building a network.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("unknown architecture {name:?} (known: {known})")]
    UnknownArchitecture { name: String, known: String },
    #[error("invalid config for {architecture}: {reason}")]
    Config {
        architecture: &'static str,
        reason: String,
    },
    #[error("bad input for {architecture}: {reason}")]
    Input {
        architecture: &'static str,
        reason: String,
    },
    #[error("unknown kernels {value:?} in EDGEMM_KERNELS (known here: {known})")]
    Kernels { value: String, known: String },
    /// An ONNX file edgemm cannot import: what and where (node, op, attribute).
    #[error("ONNX import: {0}")]
    Onnx(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

/// What a tensor is for. Used to check nothing, only to initialise seeded test weights with
/// sensible scales (see [`init`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Convolution or linear weight (fan-in is `shape[1..]`).
    Weight,
    Bias,
    BnWeight,
    BnBias,
    BnMean,
    BnVar,
}

/// One tensor the weights file must hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub role: Role,
}

impl TensorSpec {
    pub(crate) fn new(name: impl Into<String>, shape: &[usize], role: Role) -> Self {
        Self {
            name: name.into(),
            shape: shape.to_vec(),
            role,
        }
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A built network: `[N, 3, H, W]` normalised f32 in, `[N, classes]` logits out.
pub trait Classifier: Send + Sync {
    fn forward(&self, x: &Tensor) -> Result<Tensor>;
    fn num_classes(&self) -> usize;

    /// The steps of a plan over the fast kernels (which kernel runs which graph nodes), or
    /// `None` for candle's ops.
    fn steps(&self) -> Option<Vec<StepInfo>> {
        None
    }
}

/// `(height, width)` in pixels.
pub type InputSize = (usize, usize);

/// A registry entry: a network described once, as a [`Graph`] built from the manifest's
/// config (missing keys take the architecture's defaults, unknown keys are refused), and read
/// from it three ways: the tensors a weights file must hold, the candle reference, and the
/// plan over the fast kernels.
pub struct Architecture {
    pub name: &'static str,
    /// One line for `edgemm inspect` and error messages.
    pub summary: &'static str,
    graph: fn(&serde_json::Value) -> Result<Graph>,
}

/// The registry entry of an architecture whose graph `$graph` builds from the config.
macro_rules! graph_architecture {
    ($name:expr, $summary:expr, $graph:path) => {
        $crate::Architecture {
            name: $name,
            summary: $summary,
            graph: $graph,
        }
    };
}
pub(crate) use graph_architecture;

impl Architecture {
    /// The graph describing the network for this config.
    pub fn graph(&self, config: &serde_json::Value) -> Result<Graph> {
        (self.graph)(config)
    }

    /// Every tensor the weights must hold, in a stable order.
    pub fn tensor_specs(&self, config: &serde_json::Value) -> Result<Vec<TensorSpec>> {
        self.graph(config)?.tensor_specs()
    }

    /// The `(height, width)` the network requires, or `None` when any size works (fully
    /// convolutional networks with global pooling).
    pub fn input_size(&self, config: &serde_json::Value) -> Result<Option<InputSize>> {
        Ok(self.graph(config)?.input.size)
    }

    pub fn num_classes(&self, config: &serde_json::Value) -> Result<usize> {
        self.graph(config)?.classes()
    }

    /// Builds the network with the kernels `EDGEMM_KERNELS` names (fast by default); see
    /// [`Architecture::build_with`]. Shapes are checked by the `VarBuilder` as tensors are
    /// fetched.
    pub fn build(&self, config: &serde_json::Value, vb: VarBuilder) -> Result<Box<dyn Classifier>> {
        self.build_with(config, vb, Kernels::from_env()?)
    }

    /// Builds the network on the given kernels: the one dispatch point between candle's ops
    /// and this crate's. The fast kernels run on the CPU only; on a CUDA device the network is
    /// always built from candle's ops.
    pub fn build_with(
        &self,
        config: &serde_json::Value,
        vb: VarBuilder,
        kernels: Kernels,
    ) -> Result<Box<dyn Classifier>> {
        let graph = self.graph(config)?;
        match kernels {
            Kernels::Fast(isa) if vb.device().is_cpu() => {
                Ok(Box::new(graph::planner::plan(&graph, &vb, isa, self.name)?))
            }
            // candle's layers compute in the builder's dtype: always f32, whatever the
            // artifact stores.
            _ => Ok(Box::new(graph::reference::GraphNetwork::new(
                &graph,
                vb.set_dtype(candle_core::DType::F32),
            )?)),
        }
    }
}

/// All registered architectures.
pub static ARCHITECTURES: &[Architecture] = &[
    alexnet_small::ARCHITECTURE,
    vgg16::ARCHITECTURE,
    efficientnet_lite0::ARCHITECTURE,
    mobilenet_v3::LARGE,
    mobilenet_v3::SMALL,
    resnet::RESNET18,
    resnet::RESNET34,
    resnet::RESNET50,
    graph::ARCHITECTURE,
];

/// Looks an architecture up by its registry name.
///
/// ```
/// use edgemm_models::architecture;
///
/// let vgg = architecture("vgg16")?;
/// let config = serde_json::json!({ "classes": 10, "input_height": 64, "input_width": 64 });
/// assert_eq!(vgg.num_classes(&config)?, 10);
/// // What a weights file for this config must hold: torchvision's names and shapes.
/// let specs = vgg.tensor_specs(&config)?;
/// assert_eq!(specs[0].name, "features.0.weight");
/// assert_eq!(specs[0].shape, vec![64, 3, 3, 3]);
///
/// assert!(architecture("alexnet").is_err()); // the error lists the known names
/// # Ok::<(), edgemm_models::Error>(())
/// ```
pub fn architecture(name: &str) -> Result<&'static Architecture> {
    ARCHITECTURES
        .iter()
        .find(|a| a.name == name)
        .ok_or_else(|| Error::UnknownArchitecture {
            name: name.to_string(),
            known: ARCHITECTURES
                .iter()
                .map(|a| a.name)
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// Parses an architecture config, filling defaults and refusing unknown keys.
pub(crate) fn parse_config<C: serde::de::DeserializeOwned>(
    architecture: &'static str,
    config: &serde_json::Value,
) -> Result<C> {
    let value = if config.is_null() {
        serde_json::Value::Object(Default::default())
    } else {
        config.clone()
    };
    serde_json::from_value(value).map_err(|e| Error::Config {
        architecture,
        reason: e.to_string(),
    })
}
