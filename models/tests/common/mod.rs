//! What the tests holding networks to ONNX Runtime share (`onnx.rs`, `builtin.rs`): the five
//! reference photos as a batch, the expected logits `models/reference/onnx/reference.py`
//! wrote beside each ONNX file, and the comparison.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use edgemm_models::golden::max_relative_error;
use edgemm_models::Classifier;

/// The committed ONNX files, photos and expected logits.
pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/onnx")
}

/// Where CI writes the large ONNX files (`$EDGEMM_ONNX_MODELS` points elsewhere).
pub fn large_models() -> PathBuf {
    std::env::var_os("EDGEMM_ONNX_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/onnx-models"))
}

/// `MODEL.expected.json`: ONNX Runtime's logits on the photos.
#[derive(serde::Deserialize)]
pub struct Expected {
    pub photos: Vec<String>,
    /// The layout ONNX Runtime was fed ("NCHW", or "NHWC" for a Keras export).
    pub layout: String,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub logits: Vec<Vec<f32>>,
}

impl Expected {
    /// `model.expected.json` in `files`.
    pub fn load(files: &Path, model: &str) -> Expected {
        let path = files.join(format!("{model}.expected.json"));
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    }

    /// The photos as an NCHW batch, normalised as the reference did.
    pub fn batch(&self) -> Tensor {
        let mut data = Vec::new();
        for photo in &self.photos {
            let img = image::open(dir().join(photo)).unwrap().to_rgb8();
            let (w, h) = img.dimensions();
            assert_eq!((w, h), (224, 224), "{photo}");
            for c in 0..3 {
                for y in 0..h {
                    for x in 0..w {
                        let p = f32::from(img.get_pixel(x, y)[c]) / 255.0;
                        data.push((p - self.mean[c]) / self.std[c]);
                    }
                }
            }
        }
        Tensor::from_vec(data, (self.photos.len(), 3, 224, 224), &Device::Cpu).unwrap()
    }

    /// The logits as an `[N, classes]` tensor.
    pub fn logits(&self) -> Tensor {
        let classes = self.logits[0].len();
        let flat: Vec<f32> = self.logits.concat();
        Tensor::from_vec(flat, (self.logits.len(), classes), &Device::Cpu).unwrap()
    }
}

/// Runs each named network on the photos, as a batch and on one photo alone, and holds it
/// to ONNX Runtime's logits: a relative 1e-4 (largest difference over largest logit). A
/// plan over the fast kernels may have no candle fallback step.
pub fn assert_matches(
    model: &str,
    networks: &[(String, Box<dyn Classifier>)],
    expected: &Expected,
) {
    let (x, want) = (expected.batch(), expected.logits());
    for (name, net) in networks {
        let got = net.forward(&x).unwrap();
        let err = max_relative_error(&got, &want).unwrap();
        println!("{model} {name}: max relative error {err:.2e}");
        assert!(err <= 1e-4, "{model} on {name}: {err:e}");
        let one = net.forward(&x.narrow(0, 1, 1).unwrap()).unwrap();
        let err_one = max_relative_error(&one, &want.narrow(0, 1, 1).unwrap()).unwrap();
        assert!(err_one <= 1e-4, "{model} on {name}, batch 1: {err_one:e}");
        if let Some(steps) = net.steps() {
            let fallbacks: Vec<_> = steps
                .iter()
                .filter(|s| s.path == "candle fallback")
                .collect();
            assert!(
                fallbacks.is_empty(),
                "{model} on {name}: {fallbacks:?} fall back to candle"
            );
        }
    }
}
