//! An imported ONNX model ([`edgemm_models::onnx::Imported`]) as an ordinary artifact: its graph
//! becomes the manifest's config (`"architecture": "graph"`), its tensors `model.safetensors`,
//! memory-mapped at load like any other. `edgemm pack --onnx` and Triton model directories
//! converted at extraction ([`crate::triton`]) both go through here, so the two give the same
//! artifact for the same model and preprocessing.

use std::borrow::Cow;
use std::path::Path;

use edgemm_models::onnx::Imported;
use serde_json::{Map, Value};

use crate::error::ArtifactError;
use crate::manifest::FORMAT_VERSION;

/// What the ONNX file does not say, for [`manifest_json`].
#[derive(Clone, Debug)]
pub struct Defaults {
    /// Labels that replace the base's (`pack --labels`, a Triton `label_filename`).
    pub labels: Option<Vec<String>>,
    /// The `input` spec when the base has none.
    pub input: Value,
    /// The `description` when the base has none.
    pub description: String,
}

/// The manifest of `imported`, as JSON with `weights.sha256` left out (whoever writes the
/// weights fills it in).
///
/// `base` is a manifest as `pack --onnx --manifest` takes it: its `labels`, `input`, `output`
/// and `description` are kept; `format_version`, `architecture`, `config` and `weights` come
/// from the import. What it leaves out comes from `defaults`: labels `0`, `1`, ... when there
/// are none, and `output` is `probabilities` for a model that ends in a softmax.
pub fn manifest_json(
    imported: &Imported,
    base: Option<Value>,
    defaults: Defaults,
) -> Result<Value, ArtifactError> {
    let classes = imported.graph.classes()?;
    let mut object = match base {
        None => Map::new(),
        Some(Value::Object(object)) => object,
        Some(_) => {
            return Err(ArtifactError::Manifest(
                "the base manifest is not a JSON object".into(),
            ))
        }
    };
    object.insert("format_version".into(), FORMAT_VERSION.into());
    object.insert(
        "architecture".into(),
        edgemm_models::graph::GRAPH_ARCHITECTURE.into(),
    );
    let config = edgemm_models::graph::GraphConfig {
        graph: imported.graph.clone(),
    };
    object.insert(
        "config".into(),
        serde_json::to_value(config).map_err(|e| ArtifactError::Manifest(e.to_string()))?,
    );
    match defaults.labels {
        Some(labels) => {
            object.insert("labels".into(), labels.into());
        }
        None => {
            object
                .entry("labels")
                .or_insert_with(|| (0..classes).map(|i| i.to_string()).collect());
        }
    }
    object.entry("input").or_insert(defaults.input);
    object
        .entry("description")
        .or_insert(defaults.description.into());
    object.entry("output").or_insert_with(|| {
        if imported.ends_in_softmax {
            "probabilities"
        } else {
            "logits"
        }
        .into()
    });
    object.insert("weights".into(), serde_json::json!({ "dtype": "f32" }));
    Ok(Value::Object(object))
}

/// Labels from a text file's contents: one per line, surrounding blanks trimmed, empty lines
/// skipped.
pub fn labels_from_text(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

/// One imported tensor as safetensors sees it: f32, little-endian (a copy only on big-endian
/// machines).
struct F32View<'a> {
    shape: &'a [usize],
    values: &'a [f32],
}

impl safetensors::View for F32View<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        safetensors::Dtype::F32
    }

    fn shape(&self) -> &[usize] {
        self.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        if cfg!(target_endian = "little") {
            // SAFETY: f32 has no padding and no invalid bit patterns as bytes; the slice
            // covers exactly the values' memory, which outlives the borrow.
            Cow::Borrowed(unsafe {
                std::slice::from_raw_parts(
                    self.values.as_ptr().cast::<u8>(),
                    std::mem::size_of_val(self.values),
                )
            })
        } else {
            Cow::Owned(self.values.iter().flat_map(|v| v.to_le_bytes()).collect())
        }
    }

    fn data_len(&self) -> usize {
        std::mem::size_of_val(self.values)
    }
}

/// Writes every imported tensor to `path` as f32 safetensors, straight from the import's
/// buffers (no second copy of the weights in memory).
pub fn write_weights(imported: &Imported, path: &Path) -> Result<(), ArtifactError> {
    let views = imported.tensors.iter().map(|(name, shape, values)| {
        (
            name.as_str(),
            F32View {
                shape: shape.as_slice(),
                values: values.as_slice(),
            },
        )
    });
    safetensors::serialize_to_file(views, None, path)
        .map_err(|e| ArtifactError::Weights(format!("writing {}: {e}", path.display())))
}
