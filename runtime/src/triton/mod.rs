//! Triton model directories: the `NAME.tar.gz` SageMaker serves through Triton Inference
//! Server, loaded as it is in the model repository.
//!
//! ```text
//! resnet/config.pbtxt        input and output names, data types and dims
//! resnet/1/model.onnx        the model (the highest version directory is served)
//! resnet/labels.txt          optional: an output's label_filename, one label per line
//! resnet/edgemm.json         optional: labels and image preprocessing, as a manifest gives them
//! ```
//!
//! `Collector` keeps these files while [`crate::artifact`] extracts the archive (with all of
//! its hardening), and `Collector::convert` turns them, once, into the ordinary layout in the
//! extracted copy: `model.safetensors` and a `manifest.json` whose `origin` names the files it
//! came from. Loading, cache accounting and the reuse of extracted copies then stay the one
//! mechanism every artifact goes through.
//!
//! `config.pbtxt` is protobuf text format. `config::ModelConfig::parse` reads it into a tree of
//! fields (any well-formed block parses, so `instance_group`, `dynamic_batching`,
//! `parameters` and the rest are tolerated and ignored) and then reads the fields Triton's
//! ONNX models use: `name`, `platform`/`backend`, `max_batch_size`, `default_model_filename`,
//! and each `input`/`output`'s `name`, `data_type`, `format`, `dims` and `label_filename`.
//! Errors name the file, the line and what was expected. The config is then checked against
//! the imported ONNX model: names, dims (with the batch dimension left out when
//! `max_batch_size` > 0, as Triton does) and `TYPE_FP32` only.

mod config;
mod pbtxt;

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::ArtifactError;
use crate::manifest::{InputSpec, Manifest, Origin, ResizeMode, TensorValues};
use config::{Checked, ModelConfig};

/// The model directory's configuration file.
pub const CONFIG_FILE: &str = "config.pbtxt";
/// The optional edgemm manifest beside it: labels, `input`, `output`, `description`.
pub const MANIFEST_FILE: &str = "edgemm.json";
/// The model file Triton's ONNX Runtime backend reads when `default_model_filename` is unset.
pub const DEFAULT_MODEL_FILE: &str = "model.onnx";
/// Where version directories' files are kept in the extracted copy until converted.
pub(crate) const SOURCE_DIR: &str = ".triton-source";
/// Files directly in a model directory (config, labels, manifest) are kept in memory, at most
/// this many bytes of them in all; a larger one is noted and refused if it is needed.
const MAX_SIDE_BYTES: u64 = 4 << 20;

fn triton(model: &str, reason: impl Into<String>) -> ArtifactError {
    ArtifactError::Triton {
        model: model.to_string(),
        reason: reason.into(),
    }
}

/// The files of the archive that may make a Triton model directory, kept during extraction.
/// Removes what it wrote to disk when dropped.
pub(crate) struct Collector {
    source_dir: PathBuf,
    /// (model directory, file name) -> contents, for files directly in a model directory.
    side: BTreeMap<(String, String), Vec<u8>>,
    side_bytes: u64,
    /// Files directly in a model directory left out for the size cap: (model, name) -> bytes.
    skipped: BTreeMap<(String, String), u64>,
    /// model directory -> version -> file name -> where it was written.
    versions: BTreeMap<String, BTreeMap<u64, BTreeMap<String, PathBuf>>>,
    written: usize,
}

impl Drop for Collector {
    fn drop(&mut self) {
        if self.written > 0 {
            let _ = fs::remove_dir_all(&self.source_dir);
        }
    }
}

/// `"12"` -> 12: a Triton version directory's name (digits only).
fn version(name: &str) -> Option<u64> {
    (!name.is_empty() && name.len() <= 18 && name.bytes().all(|b| b.is_ascii_digit()))
        .then(|| name.parse().ok())
        .flatten()
}

impl Collector {
    /// Files in version directories will be written under `source_dir` (created when needed).
    pub(crate) fn new(source_dir: PathBuf) -> Self {
        Self {
            source_dir,
            side: BTreeMap::new(),
            side_bytes: 0,
            skipped: BTreeMap::new(),
            versions: BTreeMap::new(),
            written: 0,
        }
    }

    /// Offers one regular file of the archive (its checked path and declared size); keeps it
    /// if it lies where a Triton model directory's files do (`<model>/<file>`,
    /// `<model>/<version>/<file>`).
    pub(crate) fn offer(
        &mut self,
        path: &str,
        size: u64,
        reader: &mut impl Read,
        read_error: &dyn Fn(io::Error) -> ArtifactError,
    ) -> Result<(), ArtifactError> {
        let parts: Vec<&str> = path.split('/').collect();
        match parts.as_slice() {
            [model, file] => {
                let key = (model.to_string(), file.to_string());
                if self.side.contains_key(&key) || self.skipped.contains_key(&key) {
                    return Err(ArtifactError::DuplicateFile { file: path.into() });
                }
                if self.side_bytes.saturating_add(size) > MAX_SIDE_BYTES {
                    self.skipped.insert(key, size);
                    return Ok(());
                }
                self.side_bytes += size;
                let mut bytes = Vec::with_capacity(size as usize);
                reader
                    .take(size)
                    .read_to_end(&mut bytes)
                    .map_err(read_error)?;
                self.side.insert(key, bytes);
            }
            [model, dir, file] => {
                let Some(v) = version(dir) else {
                    return Ok(());
                };
                let files = self
                    .versions
                    .entry(model.to_string())
                    .or_default()
                    .entry(v)
                    .or_default();
                if files.contains_key(*file) {
                    return Err(ArtifactError::DuplicateFile { file: path.into() });
                }
                if self.written == 0 {
                    fs::create_dir_all(&self.source_dir).map_err(ArtifactError::Corrupt)?;
                }
                // Named by a counter, not by the archive: no name from the archive reaches
                // the file system.
                let dest = self.source_dir.join(self.written.to_string());
                self.written += 1;
                crate::artifact::copy_hashed(reader, &dest, read_error)?;
                files.insert(file.to_string(), dest);
            }
            _ => {}
        }
        Ok(())
    }

    /// Whether the archive holds a model directory's `config.pbtxt`.
    pub(crate) fn found(&self) -> bool {
        self.side.keys().any(|(_, file)| file == CONFIG_FILE)
            || self.skipped.keys().any(|(_, file)| file == CONFIG_FILE)
    }

    /// A file directly in `model`'s directory, if the archive holds it.
    fn side_file(&self, model: &str, name: &str) -> Result<Option<&[u8]>, ArtifactError> {
        let key = (model.to_string(), name.to_string());
        if let Some(bytes) = self.skipped.get(&key) {
            return Err(triton(
                model,
                format!(
                    "{model}/{name} is {bytes} bytes: the files beside config.pbtxt may hold \
                     {MAX_SIDE_BYTES} bytes in all"
                ),
            ));
        }
        Ok(self.side.get(&key).map(Vec::as_slice))
    }

    /// Converts the model directory into `model.safetensors` and `manifest.json` in `out`.
    pub(crate) fn convert(self, out: &Path) -> Result<Manifest, ArtifactError> {
        let mut models: Vec<&str> = self
            .side
            .keys()
            .chain(self.skipped.keys())
            .filter(|(_, file)| file == CONFIG_FILE)
            .map(|(model, _)| model.as_str())
            .collect();
        models.sort_unstable();
        let model = match models.as_slice() {
            [model] => model.to_string(),
            _ => {
                return Err(triton(
                    &models.join(", "),
                    format!(
                        "the archive holds {} model directories with a config.pbtxt; an artifact \
                         is one model",
                        models.len()
                    ),
                ))
            }
        };
        let model = model.as_str();
        let config_path = format!("{model}/{CONFIG_FILE}");
        let text = self
            .side_file(model, CONFIG_FILE)?
            .ok_or_else(|| triton(model, "no config.pbtxt"))?;
        let config = ModelConfig::parse(&config_path, text)?;
        config.check_platform()?;
        if let Some((name, line)) = &config.name {
            if name != model {
                return Err(config.error(
                    *line,
                    format!(
                        "name {name:?} is not the model directory's name {model:?} (Triton \
                         requires them to match)"
                    ),
                ));
            }
        }

        let file_name = config
            .default_model_filename
            .as_deref()
            .unwrap_or(DEFAULT_MODEL_FILE);
        let (version, files) = self
            .versions
            .get(model)
            .and_then(|v| v.last_key_value())
            .ok_or_else(|| {
                triton(
                    model,
                    format!(
                        "no version directory: the model file goes in {model}/<version>/\
                         {file_name} (e.g. {model}/1/{file_name})"
                    ),
                )
            })?;
        let onnx_path = format!("{model}/{version}/{file_name}");
        let onnx_file = files.get(file_name).ok_or_else(|| {
            triton(
                model,
                format!(
                    "{onnx_path} is missing: version {version} is the highest, the one Triton \
                     serves, and it holds {}",
                    files.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            )
        })?;
        let imported = edgemm_models::onnx::import_file(onnx_file)
            .map_err(|e| triton(model, format!("{onnx_path}: {e}")))?;
        let checked = config.check(&imported)?;

        let mut origin = vec![config_path.clone(), onnx_path.clone()];
        let manifest_path = format!("{model}/{MANIFEST_FILE}");
        let base: Option<Value> = match self.side_file(model, MANIFEST_FILE)? {
            Some(bytes) => {
                origin.push(manifest_path.clone());
                let value = serde_json::from_slice(bytes)
                    .map_err(|e| triton(model, format!("{manifest_path}: {e}")))?;
                Some(value)
            }
            None => None,
        };
        let base = base
            .map(|b| fill_input(b, &checked, model, &manifest_path))
            .transpose()?;
        let classes = imported.graph.classes()?;
        let labels = match (&base, &checked.label_file) {
            (Some(b), _) if b.get("labels").is_some() => None,
            (_, Some(name)) => {
                let path = format!("{model}/{name}");
                let bytes = self.side_file(model, name)?.ok_or_else(|| {
                    triton(
                        model,
                        format!("{path}, the output's label_filename, is not in the archive"),
                    )
                })?;
                let text = std::str::from_utf8(bytes)
                    .map_err(|_| triton(model, format!("{path} is not UTF-8 text")))?;
                let labels = crate::onnx::labels_from_text(text);
                if labels.len() != classes {
                    return Err(triton(
                        model,
                        format!(
                            "{path} holds {} labels for a model with {classes} outputs",
                            labels.len()
                        ),
                    ));
                }
                origin.push(path);
                Some(labels)
            }
            _ => None,
        };
        // Without edgemm.json's input, tensor requests only, shaped as config.pbtxt says.
        let input = match &base {
            Some(b) if b.get("input").is_some() => Value::Null,
            _ => {
                let (height, width) = checked.size.ok_or_else(|| {
                    config.error(
                        checked.input_line,
                        "the input's height and width are variable (-1) in config.pbtxt and \
                         in the ONNX model: give them in dims, or in edgemm.json's input",
                    )
                })?;
                let tensors_only = InputSpec {
                    height,
                    width,
                    channels: 3,
                    layout: checked.layout,
                    resize: ResizeMode::Stretch,
                    scale: 1.0 / 255.0,
                    mean: [0.0; 3],
                    std: [1.0; 3],
                    tensor_values: TensorValues::Normalized,
                    images: false,
                };
                serde_json::to_value(tensors_only)
                    .map_err(|e| ArtifactError::Manifest(e.to_string()))?
            }
        };
        let defaults = crate::onnx::Defaults {
            labels,
            input,
            description: format!(
                "converted from the Triton model directory {model}/ (version {version}, \
                 {file_name}: {}, opset {})",
                imported.producer, imported.opset
            ),
        };
        let had_base = base.is_some();
        let mut value = crate::onnx::manifest_json(&imported, base, defaults)?;
        let weights = out.join(crate::artifact::WEIGHTS_FILE);
        crate::onnx::write_weights(&imported, &weights)?;
        drop(imported);
        let sha256 = crate::artifact::sha256_file(&weights)
            .map_err(|e| ArtifactError::Weights(e.to_string()))?;
        value["weights"]["sha256"] = sha256.into();
        value["origin"] = serde_json::to_value(Origin {
            format: "triton".into(),
            files: origin,
        })
        .map_err(|e| ArtifactError::Manifest(e.to_string()))?;
        let bytes =
            serde_json::to_vec(&value).map_err(|e| ArtifactError::Manifest(e.to_string()))?;
        let manifest = Manifest::from_json(&bytes).map_err(|e| {
            let source = if had_base {
                &manifest_path
            } else {
                &config_path
            };
            triton(model, format!("{source}: {e}"))
        })?;
        let path = out.join(crate::artifact::MANIFEST_FILE);
        fs::write(&path, manifest.to_json()).map_err(ArtifactError::Corrupt)?;
        Ok(manifest)
    }
}

/// Completes edgemm.json's `input` with what config.pbtxt and the ONNX model say (height,
/// width, layout), refusing a disagreement; tensor requests hold what the network takes
/// (`normalized`) unless it says otherwise, as Triton's clients send them.
fn fill_input(
    mut base: Value,
    checked: &Checked,
    model: &str,
    file: &str,
) -> Result<Value, ArtifactError> {
    let object = base
        .as_object_mut()
        .ok_or_else(|| triton(model, format!("{file} is not a JSON object")))?;
    for key in [
        "format_version",
        "architecture",
        "config",
        "weights",
        "origin",
    ] {
        if object.contains_key(key) {
            return Err(triton(
                model,
                format!(
                    "{file} gives {key:?}, which comes from config.pbtxt and the ONNX model; \
                     it holds labels, input, output and description"
                ),
            ));
        }
    }
    let Some(input) = object.get_mut("input") else {
        return Ok(base);
    };
    let input = input
        .as_object_mut()
        .ok_or_else(|| triton(model, format!("{file}: input is not a JSON object")))?;
    let layout = serde_json::to_value(checked.layout).unwrap_or_default();
    let mut wanted = vec![("layout", layout)];
    if let Some((h, w)) = checked.size {
        wanted.push(("height", h.into()));
        wanted.push(("width", w.into()));
    }
    for (key, value) in wanted {
        match input.get(key) {
            Some(given) if *given != value => {
                return Err(triton(
                    model,
                    format!(
                        "{file}: input.{key} is {given} but config.pbtxt and the ONNX model \
                         say {value}"
                    ),
                ))
            }
            Some(_) => {}
            None => {
                input.insert(key.into(), value);
            }
        }
    }
    input
        .entry("tensor_values")
        .or_insert_with(|| "normalized".into());
    Ok(base)
}
