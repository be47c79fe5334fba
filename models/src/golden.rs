//! Reading the golden files written by `models/reference/golden.py` (an independent numpy
//! implementation) and the tolerance the Rust networks are held to.
//!
//! A golden file is a safetensors file with `input` (`[N, H, W, 3]`, NHWC) and `logits`
//! (`[N, classes]`), plus string metadata: `architecture`, `config` (JSON), and for
//! random-weight models `seed` and cross-check values of the weight generator.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use crate::{Error, Result};

pub struct GoldenFile {
    /// NHWC input batch.
    pub input: Tensor,
    /// Reference logits, computed in f64 and rounded to f32.
    pub logits: Tensor,
    pub metadata: HashMap<String, String>,
}

impl GoldenFile {
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(candle_core::Error::wrap)?;
        let (_, meta) =
            safetensors::SafeTensors::read_metadata(&bytes).map_err(candle_core::Error::wrap)?;
        let metadata = meta.metadata().clone().unwrap_or_default();
        let mut tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)?;
        let mut take = |name: &str| {
            tensors.remove(name).ok_or_else(|| Error::Input {
                architecture: "golden",
                reason: format!("{} has no tensor {name:?}", path.display()),
            })
        };
        Ok(Self {
            input: take("input")?,
            logits: take("logits")?,
            metadata,
        })
    }

    /// The input as the networks take it: NCHW.
    pub fn input_nchw(&self) -> Result<Tensor> {
        Ok(self.input.permute((0, 3, 1, 2))?.contiguous()?)
    }

    pub fn config(&self) -> Result<serde_json::Value> {
        let text = self
            .metadata
            .get("config")
            .map(String::as_str)
            .unwrap_or("{}");
        serde_json::from_str(text).map_err(|e| Error::Input {
            architecture: "golden",
            reason: format!("config metadata is not JSON: {e}"),
        })
    }
}

/// Per sample, `max |actual - expected| / max(1, max |expected|)`; the largest over the batch
/// (infinite when a value on either side is not finite).
/// Scaling by the sample's largest logit keeps tiny logits from dominating, the `1` keeps a
/// near-zero row from turning rounding noise into a large ratio.
pub fn max_relative_error(actual: &Tensor, expected: &Tensor) -> Result<f64> {
    let a = actual.to_dtype(candle_core::DType::F64)?.to_vec2::<f64>()?;
    let e = expected
        .to_dtype(candle_core::DType::F64)?
        .to_vec2::<f64>()?;
    if a.len() != e.len() || a.iter().zip(&e).any(|(x, y)| x.len() != y.len()) {
        return Err(Error::Input {
            architecture: "golden",
            reason: format!("shape {:?} vs golden {:?}", actual.dims(), expected.dims()),
        });
    }
    Ok(a.iter()
        .zip(&e)
        .map(|(row_a, row_e)| {
            let scale = row_e.iter().fold(1.0f64, |m, v| m.max(v.abs()));
            // `f64::max` skips a NaN: a logit that is not finite, on either side, counts as
            // an infinite error (golden logits are always finite).
            if row_a
                .iter()
                .zip(row_e)
                .any(|(x, y)| !x.is_finite() || !y.is_finite())
            {
                return f64::INFINITY;
            }
            let diff = row_a
                .iter()
                .zip(row_e)
                .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
            diff / scale
        })
        .fold(0.0, f64::max))
}

/// The tolerance of the golden tests (f32 against an f64 reference).
pub const TOLERANCE: f64 = 1e-4;
