//! [`Runtime`]: a model repository, a cache directory and the models loaded so far; the
//! entry point for invoking a model by name.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use edgemm_models::Classifier;
use image::RgbImage;

use crate::artifact::ArtifactLimits;
use crate::cache::{CacheOptions, Lease, ModelCache};
use crate::device::DeviceChoice;
use crate::error::{Error, InputError, Result};
use crate::manifest::{Manifest, OutputKind};
use crate::preprocess::{self, ImageLimits};
use crate::repository::ModelRepository;
use crate::weights::LoadedWeights;

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
    /// Memory and disk budgets, cache-disabled mode, warm-up.
    pub cache: CacheOptions,
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
            cache: CacheOptions::default(),
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
    pub(crate) fn new(
        name: &str,
        manifest: Manifest,
        weights: LoadedWeights,
        device: &Device,
    ) -> Self {
        Self {
            name: name.to_string(),
            manifest,
            network: weights.network,
            device: device.clone(),
            resident_bytes: weights.resident_bytes,
        }
    }

    /// Runs one all-zero input, so lazily allocated buffers exist before the first request.
    pub(crate) fn warm_up(&self) -> Result<()> {
        let (h, w) = (self.manifest.input.height, self.manifest.input.width);
        self.probabilities(vec![0.0; 3 * h * w], 1).map(drop)
    }

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

/// Serves models from a repository by name through a shared [`ModelCache`]. `&self`
/// everywhere: share one runtime between threads.
pub struct Runtime {
    options: RuntimeOptions,
    cache: ModelCache,
}

fn micros(d: Duration) -> u64 {
    d.as_micros().try_into().unwrap_or(u64::MAX)
}

impl Runtime {
    pub fn new(options: RuntimeOptions) -> Result<Self> {
        let device = options.device.open()?;
        let cache = ModelCache::new(
            ModelRepository::new(&options.repository),
            &options.cache_dir,
            device,
            options.artifact_limits,
            options.cache.clone(),
        )?;
        Ok(Self { options, cache })
    }

    pub fn options(&self) -> &RuntimeOptions {
        &self.options
    }

    pub fn repository(&self) -> &ModelRepository {
        self.cache.repository()
    }

    /// The model cache: load, unload, pin, list, describe, metrics.
    pub fn cache(&self) -> &ModelCache {
        &self.cache
    }

    /// The model called `name`, loaded on first use and kept in memory while the lease lives.
    pub fn model(&self, name: &str) -> Result<Lease<'_>> {
        self.cache.lease(name)
    }

    /// Runs model `name` on one input (which may itself be a batch of tensors).
    pub fn invoke(&self, name: &str, input: Input<'_>) -> Result<Response> {
        self.invoke_batch(name, &[input])
    }

    /// Runs model `name` on several inputs as one batch.
    pub fn invoke_batch(&self, name: &str, inputs: &[Input<'_>]) -> Result<Response> {
        let start = Instant::now();
        let model = self.cache.lease(name)?;
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
