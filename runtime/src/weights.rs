//! `model.safetensors`: memory-mapped, checked against the architecture, loaded into candle.
//!
//! The header is read through the map and every tensor's name, shape and dtype is compared
//! with what the architecture needs before any tensor is used. candle then copies each tensor
//! out of the map as the network is built (DESIGN.md, weights), so a loaded model costs about
//! its f32 weight bytes of heap while the map itself stays lazy.

use std::collections::HashMap;
use std::path::Path;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use edgemm_models::Classifier;

use crate::error::{ArtifactError, Error, Result};
use crate::manifest::Manifest;

/// One tensor as stored.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
    pub bytes: usize,
}

fn dtype_name(dtype: safetensors::Dtype) -> String {
    format!("{dtype:?}").to_lowercase()
}

fn map(label: &str, path: &Path) -> Result<MmapedSafetensors> {
    // SAFETY: the map is only read. The file sits in the cache directory, written once by
    // `artifact::extract` and never modified in place (a changed artifact is extracted to a new
    // directory), so no one truncates it under the map.
    unsafe { MmapedSafetensors::new(path) }
        .map_err(|e| Error::artifact(label, ArtifactError::Weights(e.to_string())))
}

/// Checks every tensor in the weights file against the manifest's architecture and dtype.
/// Returns the tensors in the architecture's order.
pub fn check_file(label: &str, path: &Path, manifest: &Manifest) -> Result<Vec<TensorInfo>> {
    let st = map(label, path)?;
    check(label, &st, manifest)
}

fn check(label: &str, st: &MmapedSafetensors, manifest: &Manifest) -> Result<Vec<TensorInfo>> {
    let fail = |e: ArtifactError| Error::artifact(label, e);
    let arch = edgemm_models::architecture(&manifest.architecture)
        .map_err(|e| fail(ArtifactError::from(e)))?;
    let specs = arch
        .tensor_specs(&manifest.config)
        .map_err(|e| fail(ArtifactError::from(e)))?;
    let stored: HashMap<String, safetensors::tensor::TensorView<'_>> =
        st.tensors().into_iter().collect();
    let mut infos = Vec::with_capacity(specs.len());
    for spec in &specs {
        let view = stored.get(&spec.name).ok_or_else(|| {
            fail(ArtifactError::MissingTensor {
                name: spec.name.clone(),
                shape: spec.shape.clone(),
                architecture: arch.name,
            })
        })?;
        if view.shape() != spec.shape.as_slice() {
            return Err(fail(ArtifactError::TensorShape {
                name: spec.name.clone(),
                expected: spec.shape.clone().into(),
                actual: view.shape().into(),
                architecture: arch.name,
            }));
        }
        let dtype = dtype_name(view.dtype());
        if dtype != manifest.weights.dtype {
            return Err(fail(ArtifactError::TensorDtype {
                name: spec.name.clone(),
                expected: manifest.weights.dtype.clone(),
                actual: dtype,
            }));
        }
        infos.push(TensorInfo {
            name: spec.name.clone(),
            dtype,
            shape: spec.shape.clone(),
            bytes: view.data().len(),
        });
    }
    if stored.len() != specs.len() {
        let mut extra: Vec<&String> = stored
            .keys()
            .filter(|k| !specs.iter().any(|s| &s.name == *k))
            .collect();
        extra.sort();
        return Err(fail(ArtifactError::UnexpectedTensor {
            name: extra[0].clone(),
            architecture: arch.name,
        }));
    }
    Ok(infos)
}

/// The bytes a model will hold once loaded (its tensors in f32), read from the header alone.
pub fn estimate_resident_bytes(label: &str, path: &Path, manifest: &Manifest) -> Result<u64> {
    Ok(resident_bytes(&check_file(label, path, manifest)?))
}

fn resident_bytes(infos: &[TensorInfo]) -> u64 {
    infos
        .iter()
        .map(|t| 4 * t.shape.iter().product::<usize>() as u64)
        .sum()
}

/// A network ready to run and the bytes its weights hold once loaded.
pub struct LoadedWeights {
    pub network: Box<dyn Classifier>,
    /// f32 bytes copied out of the map (what the model costs in memory).
    pub resident_bytes: u64,
}

/// Maps, checks and loads the weights at `path` onto `device`.
pub fn load(
    label: &str,
    path: &Path,
    manifest: &Manifest,
    device: &Device,
) -> Result<LoadedWeights> {
    let st = map(label, path)?;
    let infos = check(label, &st, manifest)?;
    let arch = edgemm_models::architecture(&manifest.architecture)
        .map_err(|e| Error::artifact(label, ArtifactError::from(e)))?;
    // The builder's dtype is the stored one: the networks compute in f32 (they convert what
    // they fetch), and the fast kernels keep dense layers stored in f16 as f16.
    let stored = match manifest.weights.dtype.as_str() {
        "f16" => DType::F16,
        "bf16" => DType::BF16,
        _ => DType::F32,
    };
    let vb = VarBuilder::from_backend(Box::new(st), stored, device.clone());
    let network = arch
        .build(&manifest.config, vb)
        .map_err(|e| Error::artifact(label, ArtifactError::from(e)))?;
    Ok(LoadedWeights {
        network,
        resident_bytes: resident_bytes(&infos),
    })
}
