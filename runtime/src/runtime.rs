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
    /// Most items one forward pass takes; a request with more runs in chunks of this size.
    /// 0 = sized to the memory budget (see [`Runtime::max_batch`]).
    pub max_batch: usize,
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
            max_batch: 0,
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
    /// Forward passes the request ran in: items are run at most [`Runtime::max_batch`] at a
    /// time.
    pub forward_passes: usize,
}

/// A model in memory, ready to answer.
pub struct LoadedModel {
    pub name: String,
    pub manifest: Manifest,
    network: Box<dyn Classifier>,
    device: Device,
    /// Bytes the model holds, as counted against the memory budget: its weights as it keeps
    /// them (the fast plan's packed and transformed weights, or f32 tensors, whichever is
    /// larger) plus one item's activations ([`LoadedModel::activation_bytes_per_item`]).
    pub resident_bytes: u64,
    /// Bytes of activations one item of a batch needs at most: every value of the network's
    /// graph at the manifest's input size, in f32 (an upper bound: the plans reuse buffers).
    pub activation_bytes_per_item: u64,
}

impl LoadedModel {
    pub(crate) fn new(
        name: &str,
        manifest: Manifest,
        weights: LoadedWeights,
        device: &Device,
    ) -> Self {
        let activation_bytes_per_item = activation_bytes_per_item(&manifest);
        let packed: u64 = weights
            .network
            .steps()
            .map_or(0, |steps| steps.iter().map(|s| s.bytes as u64).sum());
        let resident_bytes = weights.resident_bytes.max(packed) + activation_bytes_per_item;
        Self {
            name: name.to_string(),
            manifest,
            network: weights.network,
            device: device.clone(),
            resident_bytes,
            activation_bytes_per_item,
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
        let rows = out.to_vec2::<f32>()?;
        // A NaN or infinity is refused, never answered as `null` (issue #22, item 5).
        if let Some(item) = rows
            .iter()
            .position(|row| row.iter().any(|p| !p.is_finite()))
        {
            return Err(Error::NonFiniteOutput {
                name: self.name.clone(),
                item,
            });
        }
        Ok(rows)
    }

    /// Preprocesses `inputs` into one normalised NCHW batch.
    pub fn batch(&self, inputs: &[Input<'_>], limits: &ImageLimits) -> Result<(Vec<f32>, usize)> {
        let spec = &self.manifest.input;
        let mut data = Vec::new();
        let mut n = 0;
        for input in inputs {
            if !spec.images && matches!(input, Input::Image(_) | Input::Rgb(_)) {
                return Err(no_preprocessing(spec).into());
            }
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

/// Bytes of every value of the manifest's graph for one item at its input size (f32); where
/// the graph cannot say, 64 copies of the input.
pub(crate) fn activation_bytes_per_item(manifest: &Manifest) -> u64 {
    let (h, w) = (manifest.input.height, manifest.input.width);
    let values = edgemm_models::architecture(&manifest.architecture)
        .and_then(|arch| arch.graph(&manifest.config))
        .and_then(|graph| {
            let resolved = graph.resolve()?;
            graph.shapes(&resolved, (h, w))
        })
        .map(|shapes| shapes.iter().map(|s| s.numel() as u64).sum::<u64>())
        .unwrap_or(64 * 3 * (h * w) as u64);
    4 * values.max(1)
}

/// The most items [`Runtime::max_batch`] sizes a batch to when the options leave it open.
pub const MAX_AUTO_BATCH: usize = 256;

/// Splits the inputs into single items (a tensor of `N` items into `N` tensors), so a request
/// can be run in chunks. A tensor whose shape or length is wrong stays whole, for
/// [`LoadedModel::batch`] to refuse.
fn single_items<'a>(inputs: &[Input<'a>], item: &'a [usize; 3]) -> Vec<Input<'a>> {
    let per_item: usize = item.iter().product();
    let mut out = Vec::with_capacity(inputs.len());
    for input in inputs {
        match *input {
            Input::Tensor { data, shape }
                if shape.len() == 4
                    && shape[1..] == item[..]
                    && shape[0] > 0
                    && shape[0].checked_mul(per_item) == Some(data.len()) =>
            {
                out.extend(data.chunks_exact(per_item).map(|d| Input::Tensor {
                    data: d,
                    shape: item,
                }));
            }
            other => out.push(other),
        }
    }
    out
}

/// The error for an image sent to a model whose artifact has no preprocessing.
pub(crate) fn no_preprocessing(spec: &crate::manifest::InputSpec) -> InputError {
    InputError::NoPreprocessing {
        expected: format!(
            "{} of values as the network takes them",
            preprocess::expected_tensor(spec)
        ),
    }
}

/// Serves models from a repository by name through a shared [`ModelCache`]. `&self`
/// everywhere: share one runtime between threads.
///
/// ```
/// use std::sync::Arc;
/// use edgemm::{Input, Runtime, RuntimeOptions};
///
/// let mut options = RuntimeOptions::new("../models/repository");
/// # let cache = tempfile::tempdir().unwrap();
/// options.cache_dir = cache.path().to_path_buf(); // where artifacts are extracted
/// options.cache.memory_budget = 256 << 20; // bytes of loaded weights
/// options.top_k = 3;
/// let runtime = Arc::new(Runtime::new(options)?);
///
/// // One runtime, several threads: the model is extracted and loaded once.
/// let photo = std::fs::read("../models/samples/cifar10/cat/0000.jpg").unwrap();
/// std::thread::scope(|s| {
///     for _ in 0..2 {
///         s.spawn(|| runtime.invoke("cifar.tar.gz", Input::Image(&photo)).unwrap());
///     }
/// });
/// assert_eq!(runtime.cache().describe("cifar.tar.gz")?.loads, 1);
/// # Ok::<(), edgemm::Error>(())
/// ```
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
    ///
    /// ```
    /// use edgemm::{ErrorKind, Input, Runtime, RuntimeOptions};
    ///
    /// # let cache = tempfile::tempdir().unwrap();
    /// # let mut options = RuntimeOptions::new("../models/repository");
    /// # options.cache_dir = cache.path().to_path_buf();
    /// let runtime = Runtime::new(options)?;
    ///
    /// // An encoded photo, preprocessed as the artifact's manifest says.
    /// let photo = std::fs::read("../models/samples/cifar10/ship/0000.jpg").unwrap();
    /// let response = runtime.invoke("cifar.tar.gz", Input::Image(&photo))?;
    /// let probabilities = &response.predictions[0].probabilities;
    /// assert_eq!(probabilities.len(), 10);
    /// assert!((probabilities.iter().sum::<f32>() - 1.0).abs() < 1e-4);
    /// println!("{:?} in {} us", response.predictions[0].top_k[0], response.timing.total_us);
    ///
    /// // A tensor in the manifest's layout (NHWC, floats in [0, 1] for this model).
    /// let data = vec![0.5f32; 32 * 32 * 3];
    /// runtime.invoke("cifar.tar.gz", Input::Tensor { data: &data, shape: &[1, 32, 32, 3] })?;
    ///
    /// // Errors say what went wrong; nothing panics.
    /// let err = runtime.invoke("no-such-model.tar.gz", Input::Image(&photo)).unwrap_err();
    /// assert_eq!(err.kind(), ErrorKind::NotFound);
    /// let err = runtime.invoke("cifar.tar.gz", Input::Image(b"not an image")).unwrap_err();
    /// assert_eq!(err.kind(), ErrorKind::BadInput);
    /// # Ok::<(), edgemm::Error>(())
    /// ```
    pub fn invoke(&self, name: &str, input: Input<'_>) -> Result<Response> {
        self.invoke_batch(name, &[input])
    }

    /// The most items one forward pass of `model` takes: [`RuntimeOptions::max_batch`], or
    /// when that is 0, as many as a quarter of the memory budget holds activations for
    /// ([`LoadedModel::activation_bytes_per_item`]), between 1 and 256.
    pub fn max_batch(&self, model: &LoadedModel) -> usize {
        if self.options.max_batch > 0 {
            return self.options.max_batch;
        }
        let share = self.options.cache.memory_budget / 4;
        let fits = share / model.activation_bytes_per_item.max(1);
        (fits as usize).clamp(1, MAX_AUTO_BATCH)
    }

    /// Runs model `name` on several inputs, at most [`Runtime::max_batch`] items per forward
    /// pass (each chunk is decoded, preprocessed and run before the next), so the memory a
    /// request takes is bounded whatever its item count.
    pub fn invoke_batch(&self, name: &str, inputs: &[Input<'_>]) -> Result<Response> {
        let start = Instant::now();
        let model = self.cache.lease(name)?;
        let loaded = Instant::now();
        let item = preprocess::item_shape(&model.manifest.input);
        let items = single_items(inputs, &item);
        if items.is_empty() {
            // The same refusal a whole batch would get (an empty batch).
            model.batch(inputs, &self.options.image_limits)?;
        }
        let max = self.max_batch(&model);
        let (mut preprocess, mut inference) = (Duration::ZERO, Duration::ZERO);
        let mut rows = Vec::with_capacity(items.len());
        let mut forward_passes = 0;
        for chunk in items.chunks(max) {
            let t0 = Instant::now();
            let (data, n) = model.batch(chunk, &self.options.image_limits)?;
            let t1 = Instant::now();
            let offset = rows.len();
            rows.extend(model.probabilities(data, n).map_err(|e| match e {
                Error::NonFiniteOutput { name, item } => Error::NonFiniteOutput {
                    name,
                    item: offset + item,
                },
                other => other,
            })?);
            preprocess += t1 - t0;
            inference += t1.elapsed();
            forward_passes += 1;
        }
        let predictions = model.predictions(rows, self.options.top_k);
        let done = Instant::now();
        Ok(Response {
            predictions,
            timing: Timing {
                load_us: micros(loaded - start),
                preprocess_us: micros(preprocess),
                inference_us: micros(inference),
                total_us: micros(done - start),
            },
            forward_passes,
        })
    }
}
