//! `manifest.json`: what an artifact holds and how to feed it.
//!
//! ```json
//! {
//!   "format_version": 1,
//!   "architecture": "efficientnet-lite0",
//!   "config": { "classes": 1000 },
//!   "labels": ["tench", "goldfish", "..."],
//!   "input": {
//!     "height": 224, "width": 224, "channels": 3, "layout": "NHWC",
//!     "resize": "center-crop", "scale": 0.003921569,
//!     "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "tensor_values": "unit"
//!   },
//!   "output": "logits",
//!   "weights": { "dtype": "f32", "sha256": "..." }
//! }
//! ```
//!
//! A pixel `p` in `0..=255` reaches the network as `(p * scale - mean[c]) / std[c]`. A tensor
//! request is read according to `tensor_values`.

use serde::{Deserialize, Serialize};

use crate::error::ArtifactError;

/// The manifest format this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format_version: u32,
    /// A name in the `edgemm_models` registry.
    pub architecture: String,
    /// The architecture's config; missing keys take its defaults.
    #[serde(default)]
    pub config: serde_json::Value,
    /// One label per output class, in output order.
    pub labels: Vec<String>,
    pub input: InputSpec,
    #[serde(default)]
    pub output: OutputKind,
    pub weights: WeightsSpec,
    /// Free text: where the model comes from, its accuracy, its licence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Set when edgemm wrote this manifest itself, converting another format at extraction
    /// (a Triton model directory): what it was converted from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
}

/// What a converted artifact was converted from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Origin {
    /// `"triton"`: a Triton model directory (`config.pbtxt`, a version directory with
    /// `model.onnx`).
    pub format: String,
    /// The archive's files the artifact was built from, as paths in the archive.
    pub files: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    pub height: usize,
    pub width: usize,
    #[serde(default = "three")]
    pub channels: usize,
    /// Layout of tensor requests (images are always decoded to RGB).
    #[serde(default)]
    pub layout: Layout,
    /// How an image of another size is brought to `height` x `width`.
    #[serde(default)]
    pub resize: ResizeMode,
    #[serde(default = "one_255th")]
    pub scale: f32,
    #[serde(default)]
    pub mean: [f32; 3],
    #[serde(default = "ones")]
    pub std: [f32; 3],
    /// How the numbers in a tensor request are to be read.
    #[serde(default)]
    pub tensor_values: TensorValues,
    /// Whether the artifact says how to prepare an image. `false` for a Triton model directory
    /// without `edgemm.json`: `resize`, `scale`, `mean` and `std` are then unknown, image
    /// requests are refused and tensor requests hold what the network takes (`normalized`).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub images: bool,
}

fn three() -> usize {
    3
}
fn one_255th() -> f32 {
    1.0 / 255.0
}
fn ones() -> [f32; 3] {
    [1.0; 3]
}
fn yes() -> bool {
    true
}
fn is_true(b: &bool) -> bool {
    *b
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Layout {
    /// `[N, H, W, C]`, as Keras and TF Serving send it.
    #[default]
    #[serde(rename = "NHWC")]
    Nhwc,
    /// `[N, C, H, W]`, as PyTorch does.
    #[serde(rename = "NCHW")]
    Nchw,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResizeMode {
    /// Scale each axis independently to the target size.
    #[default]
    Stretch,
    /// Keep the aspect ratio, cut the largest centred region of the target's shape.
    CenterCrop,
    /// Keep the aspect ratio, fit the whole image, pad the rest with black.
    Letterbox,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TensorValues {
    /// Pixels scaled to `[0, 1]` (`v * 255` is the pixel); then normalised like an image.
    #[default]
    Unit,
    /// Raw pixels in `0..=255`; then normalised like an image.
    Pixels,
    /// Already normalised: fed to the network as they are.
    Normalized,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutputKind {
    /// The network returns logits; the runtime applies softmax.
    #[default]
    Logits,
    /// The network already returns probabilities.
    Probabilities,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightsSpec {
    /// Storage dtype of every tensor in `model.safetensors`: `f32`, `f16` or `bf16`. The network
    /// always computes in f32.
    pub dtype: String,
    /// Lower-case hex sha256 of `model.safetensors`.
    pub sha256: String,
}

/// Just enough of a manifest to check its version before anything else is read: a newer
/// manifest may have fields this build does not know.
#[derive(Deserialize)]
struct VersionProbe {
    format_version: u32,
}

impl Manifest {
    /// Parses and validates `manifest.json`.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ArtifactError> {
        let probe: VersionProbe = serde_json::from_slice(bytes)
            .map_err(|e| ArtifactError::Manifest(format!("no readable format_version: {e}")))?;
        if probe.format_version != FORMAT_VERSION {
            return Err(ArtifactError::UnsupportedFormatVersion {
                found: probe.format_version,
                supported: FORMAT_VERSION,
            });
        }
        let manifest: Manifest =
            serde_json::from_slice(bytes).map_err(|e| ArtifactError::Manifest(e.to_string()))?;
        manifest.validate()?;
        Ok(manifest)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a manifest always serialises")
    }

    /// Checks the manifest against itself and against its architecture.
    pub fn validate(&self) -> Result<(), ArtifactError> {
        let bad = |m: String| Err(ArtifactError::Manifest(m));
        let arch = edgemm_models::architecture(&self.architecture)?;
        let classes = arch.num_classes(&self.config)?;
        if self.labels.len() != classes {
            return bad(format!(
                "{} labels for a network with {classes} outputs",
                self.labels.len()
            ));
        }
        let input = &self.input;
        if input.channels != 3 {
            return bad(format!(
                "input.channels is {}, only 3 (RGB) is supported",
                input.channels
            ));
        }
        if input.height == 0 || input.width == 0 || input.height > 8192 || input.width > 8192 {
            return bad(format!(
                "input size {}x{} is outside 1..=8192",
                input.width, input.height
            ));
        }
        if let Some((h, w)) = arch.input_size(&self.config)? {
            if (h, w) != (input.height, input.width) {
                return bad(format!(
                    "input is {}x{} but the {} config needs {w}x{h}",
                    input.width, input.height, self.architecture
                ));
            }
        }
        if !input.scale.is_finite() || input.scale == 0.0 {
            return bad(format!(
                "input.scale {} must be finite and non-zero",
                input.scale
            ));
        }
        if input.mean.iter().any(|m| !m.is_finite())
            || input.std.iter().any(|s| !s.is_finite() || *s == 0.0)
        {
            return bad("input.mean must be finite and input.std finite and non-zero".into());
        }
        if !input.images && input.tensor_values != TensorValues::Normalized {
            return bad(format!(
                "input.images is false (no preprocessing known), so tensor requests must be \
                 \"normalized\", not {:?}",
                input.tensor_values
            ));
        }
        if !matches!(self.weights.dtype.as_str(), "f32" | "f16" | "bf16") {
            return bad(format!(
                "weights.dtype {:?} is not one of f32, f16, bf16",
                self.weights.dtype
            ));
        }
        let sha = &self.weights.sha256;
        if sha.len() != 64
            || !sha
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            return bad(format!(
                "weights.sha256 {sha:?} is not 64 lower-case hex digits"
            ));
        }
        Ok(())
    }
}
