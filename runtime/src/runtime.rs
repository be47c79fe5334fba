//! [`Runtime`]: a model repository, a cache directory and the models loaded so far; the
//! entry point for invoking a model by name.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

use candle_core::{Device, Tensor};
use edgemm_models::Classifier;
use image::RgbImage;

use crate::artifact::{self, ArtifactLimits, ExtractedArtifact};
use crate::device::DeviceChoice;
use crate::error::{Error, InputError, Result};
use crate::manifest::{Manifest, OutputKind};
use crate::preprocess::{self, ImageLimits};
use crate::repository::{cache_dir_name, ModelRepository};
use crate::weights;

/// How a [`Runtime`] is set up. `RuntimeOptions::new(repo)` gives the defaults.
#[derive(Clone, Debug)]
pub struct RuntimeOptions {
    /// Directory of `NAME.tar.gz` artifacts (read-only).
    pub repository: PathBuf,
    /// Where artifacts are extracted. Defaults to [`default_cache_dir`].
    pub cache_dir: PathBuf,
    pub device: DeviceChoice,
    pub image_limits: ImageLimits,
    pub artifact_limits: ArtifactLimits,
    /// Labels returned per prediction.
    pub top_k: usize,
}

impl RuntimeOptions {
    pub fn new(repository: impl Into<PathBuf>) -> Self {
        Self {
            repository: repository.into(),
            cache_dir: default_cache_dir(),
            device: DeviceChoice::default(),
            image_limits: ImageLimits::default(),
            artifact_limits: ArtifactLimits::default(),
            top_k: 5,
        }
    }
}

/// `$EDGEMM_CACHE_DIR`, else `$XDG_CACHE_HOME/edgemm`, else `$HOME/.cache/edgemm`, else
/// `edgemm-cache` in the system temporary directory.
pub fn default_cache_dir() -> PathBuf {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("EDGEMM_CACHE_DIR")
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("edgemm")))
        .or_else(|| var("HOME").map(|d| d.join(".cache").join("edgemm")))
        .unwrap_or_else(|| std::env::temp_dir().join("edgemm-cache"))
}

/// One request's input.
#[derive(Clone, Copy, Debug)]
pub enum Input<'a> {
    /// Encoded PNG or JPEG bytes, checked against the image limits.
    Image(&'a [u8]),
    /// A decoded, upright RGB image of any size.
    Rgb(&'a RgbImage),
    /// Floats in the manifest's tensor layout (`[N, H, W, 3]` or `[H, W, 3]` for NHWC), read
    /// as the manifest's `tensor_values` says.
    Tensor { data: &'a [f32], shape: &'a [usize] },
}

/// A label and its probability.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Scored {
    pub index: usize,
    pub label: String,
    pub probability: f32,
}

/// The answer for one image of a batch.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Prediction {
    /// One probability per class, in label order; they sum to 1.
    pub probabilities: Vec<f32>,
    /// The `top_k` most probable classes, most probable first.
    pub top_k: Vec<Scored>,
}

/// Where a request's time went.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Timing {
    /// Loading the model if this request was the first (extraction included).
    pub load_us: u64,
    /// Decoding, resizing, normalising.
    pub preprocess_us: u64,
    /// The network and the softmax.
    pub inference_us: u64,
    pub total_us: u64,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Response {
    pub predictions: Vec<Prediction>,
    pub timing: Timing,
}

/// A model in memory, ready to answer.
pub struct LoadedModel {
    pub name: String,
    pub manifest: Manifest,
    network: Box<dyn Classifier>,
    device: Device,
    /// Bytes of weights held in memory (f32).
    pub resident_bytes: u64,
}

impl LoadedModel {
    /// The network's raw output (`[N, classes]`, logits or probabilities as the manifest's
    /// `output` says) for a normalised `[N, 3, H, W]` batch.
    pub fn forward(&self, nchw: &Tensor) -> Result<Tensor> {
        self.network
            .forward(nchw)
            .map_err(|e| Error::Inference(e.to_string()))
    }

    /// Runs a normalised NCHW batch and returns one probability row per item.
    pub fn probabilities(&self, nchw: Vec<f32>, batch: usize) -> Result<Vec<Vec<f32>>> {
        let (h, w) = (self.manifest.input.height, self.manifest.input.width);
        let x = Tensor::from_vec(nchw, (batch, 3, h, w), &self.device)?;
        let out = self.forward(&x)?;
        let out = match self.manifest.output {
            OutputKind::Logits => candle_nn::ops::softmax_last_dim(&out)?,
            OutputKind::Probabilities => out,
        };
        Ok(out.to_vec2::<f32>()?)
    }

    /// Preprocesses `inputs` into one normalised NCHW batch.
    pub fn batch(&self, inputs: &[Input<'_>], limits: &ImageLimits) -> Result<(Vec<f32>, usize)> {
        let spec = &self.manifest.input;
        let mut data = Vec::new();
        let mut n = 0;
        for input in inputs {
            match *input {
                Input::Image(bytes) => {
                    let image = preprocess::decode_image(bytes, limits)?;
                    preprocess::push_normalised_chw(
                        &preprocess::resize(&image, spec),
                        spec,
                        &mut data,
                    );
                    n += 1;
                }
                Input::Rgb(image) => {
                    let (w, h) = image.dimensions();
                    preprocess::check_dimensions(w, h, limits)?;
                    preprocess::push_normalised_chw(
                        &preprocess::resize(image, spec),
                        spec,
                        &mut data,
                    );
                    n += 1;
                }
                Input::Tensor {
                    data: values,
                    shape,
                } => {
                    n += preprocess::tensor_to_nchw(values, shape, spec, &mut data)?;
                }
            }
        }
        if n == 0 {
            return Err(InputError::EmptyBatch.into());
        }
        Ok((data, n))
    }

    fn predictions(&self, rows: Vec<Vec<f32>>, top_k: usize) -> Vec<Prediction> {
        rows.into_iter()
            .map(|probabilities| {
                let mut order: Vec<usize> = (0..probabilities.len()).collect();
                order.sort_by(|&a, &b| probabilities[b].total_cmp(&probabilities[a]));
                let top_k = order
                    .into_iter()
                    .take(top_k)
                    .map(|index| Scored {
                        index,
                        label: self.manifest.labels[index].clone(),
                        probability: probabilities[index],
                    })
                    .collect();
                Prediction {
                    probabilities,
                    top_k,
                }
            })
            .collect()
    }
}

/// Serves models from a repository by name. Shareable across threads (`&self` everywhere).
///
/// A model is extracted and loaded on its first request and stays loaded. The shared cache
/// with memory and disk budgets (issue #4) replaces this simple map.
pub struct Runtime {
    options: RuntimeOptions,
    repository: ModelRepository,
    device: Device,
    models: Mutex<HashMap<String, Arc<LoadedModel>>>,
    loading: Mutex<()>,
}

/// Written next to an extracted artifact: the source file's size and mtime when it was
/// extracted. A mismatch means the repository's artifact changed and must be extracted again.
const SOURCE_STAMP: &str = "source.stamp";

fn source_stamp(path: &Path) -> Result<String> {
    let meta = fs::metadata(path).map_err(|e| Error::io("reading", path, e))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .unwrap_or_default();
    Ok(format!("{} {}", meta.len(), mtime.as_nanos()))
}

fn micros(d: Duration) -> u64 {
    d.as_micros().try_into().unwrap_or(u64::MAX)
}

impl Runtime {
    pub fn new(options: RuntimeOptions) -> Result<Self> {
        let device = options.device.open()?;
        fs::create_dir_all(&options.cache_dir)
            .map_err(|e| Error::io("creating cache directory", &options.cache_dir, e))?;
        Ok(Self {
            repository: ModelRepository::new(&options.repository),
            options,
            device,
            models: Mutex::new(HashMap::new()),
            loading: Mutex::new(()),
        })
    }

    pub fn options(&self) -> &RuntimeOptions {
        &self.options
    }

    pub fn repository(&self) -> &ModelRepository {
        &self.repository
    }

    /// The loaded model called `name`, extracting and loading it on first use.
    pub fn model(&self, name: &str) -> Result<Arc<LoadedModel>> {
        if let Some(model) = self.lock_models().get(name) {
            return Ok(model.clone());
        }
        // One load at a time: two first requests for a model must not both extract it into
        // the same directory. Loaded models keep answering meanwhile.
        let _loading = self.loading.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(model) = self.lock_models().get(name) {
            return Ok(model.clone());
        }
        let model = Arc::new(self.load_model(name)?);
        self.lock_models().insert(name.to_string(), model.clone());
        Ok(model)
    }

    fn lock_models(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<LoadedModel>>> {
        // A panic while holding the lock leaves the map itself consistent.
        self.models.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn load_model(&self, name: &str) -> Result<LoadedModel> {
        let source = self.repository.resolve(name)?;
        let dest = self
            .options
            .cache_dir
            .join("models")
            .join(cache_dir_name(name));
        let stamp = source_stamp(&source)?;
        let extracted = match fs::read_to_string(dest.join(SOURCE_STAMP)) {
            Ok(s) if s == stamp => ExtractedArtifact::open(name, &dest)?,
            _ => {
                let extracted =
                    artifact::extract(name, &source, &dest, self.options.artifact_limits)?;
                fs::write(dest.join(SOURCE_STAMP), &stamp)
                    .map_err(|e| Error::io("writing", dest.join(SOURCE_STAMP), e))?;
                extracted
            }
        };
        let loaded = weights::load(
            name,
            &extracted.weights_path(),
            &extracted.manifest,
            &self.device,
        )?;
        Ok(LoadedModel {
            name: name.to_string(),
            manifest: extracted.manifest,
            network: loaded.network,
            device: self.device.clone(),
            resident_bytes: loaded.resident_bytes,
        })
    }

    /// Runs model `name` on one input (which may itself be a batch of tensors).
    pub fn invoke(&self, name: &str, input: Input<'_>) -> Result<Response> {
        self.invoke_batch(name, &[input])
    }

    /// Runs model `name` on several inputs as one batch.
    pub fn invoke_batch(&self, name: &str, inputs: &[Input<'_>]) -> Result<Response> {
        let start = Instant::now();
        let model = self.model(name)?;
        let loaded = Instant::now();
        let (data, n) = model.batch(inputs, &self.options.image_limits)?;
        let prepared = Instant::now();
        let rows = model.probabilities(data, n)?;
        let predictions = model.predictions(rows, self.options.top_k);
        let done = Instant::now();
        Ok(Response {
            predictions,
            timing: Timing {
                load_us: micros(loaded - start),
                preprocess_us: micros(prepared - loaded),
                inference_us: micros(done - prepared),
                total_us: micros(done - start),
            },
        })
    }
}
