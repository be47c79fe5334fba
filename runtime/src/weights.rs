//! `model.safetensors`: memory-mapped, checked against the architecture, loaded into candle.
//!
//! The header is read through the map and every tensor's name, shape and dtype is compared
//! with what the architecture needs before any tensor is used. candle then copies each tensor
//! out of the map as the network is built (docs/design.md#weights), so a loaded model costs about
//! its f32 weight bytes of heap while the map itself stays lazy: the pages a tensor occupies are
//! handed back as soon as it has been read (checked, or copied out), so the map adds about one
//! tensor to the resident set at a time, not the whole file (VGG16's 528 MB used to sit
//! resident beside its packed weights until the load ended).

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use candle_core::safetensors::Load;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use edgemm_models::Classifier;
use memmap2::{Mmap, UncheckedAdvice};
use safetensors::tensor::{Metadata, TensorView};

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

/// `model.safetensors`, mapped read-only, with its header parsed.
struct Mapped {
    map: Mmap,
    /// Where the tensor data starts in the map (after the length and the JSON header).
    data_start: usize,
    metadata: Metadata,
}

/// The bytes of the length that opens a safetensors file.
const LENGTH_BYTES: usize = 8;

fn map(label: &str, path: &Path) -> Result<Mapped> {
    // Errors name the file as the archive does: it may sit in a `.partial-*` directory that is
    // gone by the time anyone reads the message.
    let fail = |message: String| {
        let message = message.replace(&path.display().to_string(), crate::artifact::WEIGHTS_FILE);
        Error::artifact(label, ArtifactError::Weights(message))
    };
    let file = File::open(path).map_err(|e| fail(format!("opening {}: {e}", path.display())))?;
    // SAFETY: the map is only read. The file sits in the cache directory, written once by
    // `artifact::extract` and never modified in place (a changed artifact is extracted to a new
    // directory), so no one truncates it under the map.
    let map = unsafe { Mmap::map(&file) }
        .map_err(|e| fail(format!("mapping {}: {e}", path.display())))?;
    let (header, metadata) =
        safetensors::SafeTensors::read_metadata(&map).map_err(|e| fail(e.to_string()))?;
    Ok(Mapped {
        data_start: LENGTH_BYTES + header,
        map,
        metadata,
    })
}

impl Mapped {
    /// The stored tensors by name (the header's offsets were checked against the file by
    /// `read_metadata`).
    fn tensors(&self) -> HashMap<String, TensorView<'_>> {
        self.metadata
            .tensors()
            .into_iter()
            .filter_map(|(name, info)| {
                let (start, end) = info.data_offsets;
                let data = &self.map[self.data_start + start..self.data_start + end];
                let view = TensorView::new(info.dtype, info.shape.clone(), data).ok()?;
                Some((name, view))
            })
            .collect()
    }

    /// Hands the pages wholly inside `name`'s bytes back to the kernel: they leave this
    /// process's resident set, and a later read faults them in again from the file.
    fn release(&self, name: &str) {
        let Some(info) = self.metadata.info(name) else {
            return;
        };
        // The largest page size of the targets edgemm runs on (aarch64 kernels may use 16 or
        // 64 KiB pages); a range aligned to it is aligned to any smaller page.
        const PAGE: usize = 64 << 10;
        let start = (self.data_start + info.data_offsets.0).next_multiple_of(PAGE);
        let end = (self.data_start + info.data_offsets.1) / PAGE * PAGE;
        if start < end {
            // SAFETY: the map is a shared, read-only mapping of a file no one modifies (see
            // `map`). MADV_DONTNEED on such a mapping only drops this process's page table
            // entries; the next access reads the same bytes back from the page cache or the
            // file, so a slice borrowed from the map never sees its contents change.
            let _ = unsafe {
                self.map
                    .unchecked_advise_range(UncheckedAdvice::DontNeed, start, end - start)
            };
        }
    }
}

/// candle reads the network's tensors from the map through this backend, which releases each
/// tensor's pages once it has copied them out.
impl SimpleBackend for Mapped {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let tensor = self.get_unchecked(name, dtype, device)?;
        if tensor.shape() != &shape {
            return Err(candle_core::Error::UnexpectedShape {
                msg: format!("shape mismatch for {name}"),
                expected: shape,
                got: tensor.shape().clone(),
            });
        }
        Ok(tensor)
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let info =
            self.metadata
                .info(name)
                .ok_or_else(|| candle_core::Error::CannotFindTensor {
                    path: name.to_string(),
                })?;
        let (start, end) = info.data_offsets;
        let data = &self.map[self.data_start + start..self.data_start + end];
        let view = TensorView::new(info.dtype, info.shape.clone(), data)
            .map_err(|e| candle_core::Error::Msg(format!("{name}: {e:?}")))?;
        let tensor = view.load(device)?.to_dtype(dtype)?;
        self.release(name);
        Ok(tensor)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.metadata.info(name).is_some()
    }
}

/// Checks every tensor in the weights file against the manifest's architecture and dtype.
/// Returns the tensors in the architecture's order.
pub fn check_file(label: &str, path: &Path, manifest: &Manifest) -> Result<Vec<TensorInfo>> {
    let st = map(label, path)?;
    check(label, &st, manifest)
}

fn check(label: &str, st: &Mapped, manifest: &Manifest) -> Result<Vec<TensorInfo>> {
    let fail = |e: ArtifactError| Error::artifact(label, e);
    let arch = edgemm_models::architecture(&manifest.architecture)
        .map_err(|e| fail(ArtifactError::from(e)))?;
    let specs = arch
        .tensor_specs(&manifest.config)
        .map_err(|e| fail(ArtifactError::from(e)))?;
    let stored = st.tensors();
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
        check_values(&spec.name, spec.role, view.dtype(), view.data()).map_err(fail)?;
        st.release(&spec.name);
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

/// Refuses a tensor holding NaN or infinity, and a batch-norm variance below zero (issue #22,
/// item 5): either makes the network answer NaN. One pass over the mapped bytes.
fn check_values(
    name: &str,
    role: edgemm_models::Role,
    dtype: safetensors::Dtype,
    data: &[u8],
) -> std::result::Result<(), ArtifactError> {
    let non_finite = |index| ArtifactError::NonFiniteWeight {
        name: name.to_string(),
        index,
    };
    let negative = |index, value| ArtifactError::NegativeVariance {
        name: name.to_string(),
        index,
        value,
    };
    let variance = role == edgemm_models::Role::BnVar;
    match dtype {
        safetensors::Dtype::F32 => {
            for (i, b) in data.chunks_exact(4).enumerate() {
                let v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                if !v.is_finite() {
                    return Err(non_finite(i));
                }
                if variance && v < 0.0 {
                    return Err(negative(i, v));
                }
            }
        }
        safetensors::Dtype::F16 | safetensors::Dtype::BF16 => {
            // Exponent all ones is NaN or infinity; the sign bit set on a non-zero value is
            // negative.
            let (exponent, sign) = if dtype == safetensors::Dtype::F16 {
                (0x7c00u16, 0x8000u16)
            } else {
                (0x7f80u16, 0x8000u16)
            };
            for (i, b) in data.chunks_exact(2).enumerate() {
                let bits = u16::from_le_bytes([b[0], b[1]]);
                if bits & exponent == exponent {
                    return Err(non_finite(i));
                }
                if variance && bits & sign != 0 && bits & !sign != 0 {
                    let value = if dtype == safetensors::Dtype::F16 {
                        f16_to_f32(bits)
                    } else {
                        f32::from_bits(u32::from(bits) << 16)
                    };
                    return Err(negative(i, value));
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// An IEEE half (finite) as f32, for messages.
fn f16_to_f32(bits: u16) -> f32 {
    let sign = if bits & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exponent = i32::from((bits >> 10) & 0x1f);
    let mantissa = f32::from(bits & 0x3ff);
    let magnitude = if exponent == 0 {
        mantissa * 2f32.powi(-24)
    } else {
        (1.0 + mantissa / 1024.0) * 2f32.powi(exponent - 15)
    };
    sign * magnitude
}

/// The bytes a model needs while it loads, read from the header alone: its tensors in f32,
/// plus its largest tensor once more, because candle copies a tensor out of the map and the
/// plan holds its packed form before the copy is freed (VGG16's fc6 is 411 MB of its 553).
/// The cache reserves this before loading and corrects it to what the loaded model holds.
pub fn estimate_resident_bytes(label: &str, path: &Path, manifest: &Manifest) -> Result<u64> {
    let infos = check_file(label, path, manifest)?;
    let largest = infos.iter().map(f32_bytes).max().unwrap_or(0);
    Ok(resident_bytes(&infos) + largest)
}

fn f32_bytes(t: &TensorInfo) -> u64 {
    4 * t.shape.iter().product::<usize>() as u64
}

fn resident_bytes(infos: &[TensorInfo]) -> u64 {
    infos.iter().map(f32_bytes).sum()
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
