//! One error type for the runtime, with a coarse [`ErrorKind`] that maps onto the C ABI's
//! status codes and onto the HTTP codes a SageMaker client knows.

use std::path::PathBuf;

/// Why an artifact (a `NAME.tar.gz` and what it holds) was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArtifactError {
    #[error("archive entry {path:?} is not allowed: {reason}")]
    UnsafeEntry { path: String, reason: &'static str },
    #[error("archive has more than {limit} entries")]
    TooManyEntries { limit: usize },
    #[error(
        "archive expands to more than {limit} bytes (a gzip bomb or a model too large for the cap)"
    )]
    TooLarge { limit: u64 },
    #[error("archive is not a readable gzip'd tar: {0}")]
    Corrupt(#[source] std::io::Error),
    #[error("archive has no {file}")]
    MissingFile { file: &'static str },
    #[error("archive holds {file} twice")]
    DuplicateFile { file: String },
    #[error("manifest.json is invalid: {0}")]
    Manifest(String),
    #[error(
        "manifest format_version {found} is not supported (this edgemm reads version {supported})"
    )]
    UnsupportedFormatVersion { found: u32, supported: u32 },
    #[error("model.safetensors sha256 is {actual}, the manifest says {expected}")]
    ChecksumMismatch { expected: String, actual: String },
    #[error("model.safetensors is not a valid safetensors file: {0}")]
    Weights(String),
    #[error("weights lack tensor {name:?} (shape {shape:?}) required by {architecture}")]
    MissingTensor {
        name: String,
        shape: Vec<usize>,
        architecture: &'static str,
    },
    #[error("tensor {name:?} has shape {actual:?}, {architecture} needs {expected:?}")]
    TensorShape {
        name: String,
        expected: Box<[usize]>,
        actual: Box<[usize]>,
        architecture: &'static str,
    },
    #[error("tensor {name:?} is {actual}, the manifest declares weights as {expected}")]
    TensorDtype {
        name: String,
        expected: String,
        actual: String,
    },
    /// A weight that is NaN or infinite: the network would answer NaN for every input.
    #[error("tensor {name:?} holds a non-finite value (NaN or infinity) at index {index}")]
    NonFiniteWeight { name: String, index: usize },
    /// A batch-norm running variance below zero: its square root is NaN.
    #[error("tensor {name:?} is a batch-norm running variance and holds {value} at index {index}; a variance is never negative")]
    NegativeVariance {
        name: String,
        index: usize,
        value: f32,
    },
    #[error("weights hold tensor {name:?}, which {architecture} does not use")]
    UnexpectedTensor {
        name: String,
        architecture: &'static str,
    },
    #[error(transparent)]
    Architecture(#[from] edgemm_models::Error),
    /// `config.pbtxt` of a Triton model directory could not be read: `line` is 1-based.
    #[error("{file}, line {line}: {reason}")]
    TritonConfig {
        file: String,
        line: usize,
        reason: String,
    },
    /// A Triton model directory for another backend (TensorRT, PyTorch, TensorFlow, ...).
    #[error("{file}: {field} {found:?} is not supported: edgemm serves ONNX models (platform: \"onnxruntime_onnx\" or backend: \"onnxruntime\")")]
    TritonPlatform {
        file: String,
        /// `platform` or `backend`.
        field: &'static str,
        found: String,
    },
    /// A Triton model directory that is incomplete, or whose `config.pbtxt` disagrees with its
    /// ONNX model.
    #[error("Triton model directory {model:?}: {reason}")]
    Triton { model: String, reason: String },
}

/// Why a request's input was refused. Each variant names the rule it broke.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InputError {
    #[error("image format {detected} is not supported: only PNG and JPEG are accepted")]
    UnsupportedFormat { detected: &'static str },
    #[error("image is {len} bytes, over the limit of {limit} bytes")]
    TooManyBytes { len: usize, limit: usize },
    #[error("image is {width}x{height} pixels, over the limit of {limit}x{limit}")]
    TooManyPixels { width: u32, height: u32, limit: u32 },
    #[error("image is {width}x{height}, an aspect ratio over the limit of {limit}:1")]
    AspectRatio { width: u32, height: u32, limit: u32 },
    #[error("image could not be decoded: {0}")]
    Decode(String),
    #[error("tensor has shape {actual:?}, the model takes {expected}")]
    TensorShape {
        expected: String,
        actual: Vec<usize>,
    },
    #[error("tensor holds {values} values, its shape {shape:?} needs {needed}")]
    TensorData {
        shape: Vec<usize>,
        values: usize,
        needed: usize,
    },
    #[error("tensor holds a non-finite value (NaN or infinity)")]
    NonFinite,
    /// An image sent to a model whose artifact does not say how to prepare one (a Triton
    /// model directory without `edgemm.json`).
    #[error("this model takes tensor requests only: its artifact has no preprocessing manifest (a Triton model directory without edgemm.json beside config.pbtxt), so edgemm does not know how to resize and normalise an image for it; send a tensor {expected}")]
    NoPreprocessing { expected: String },
    #[error("request body is invalid: {0}")]
    Request(String),
    #[error("batch is empty")]
    EmptyBatch,
    #[error("camera frame refused: {0}")]
    Frame(#[from] crate::pipeline::frame::FrameError),
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("invalid model name {name:?}: {reason}")]
    InvalidModelName { name: String, reason: &'static str },
    #[error("model {name:?} not found in the repository")]
    ModelNotFound { name: String },
    /// The source's text comes from the archive (entry names, file contents): its control
    /// characters are escaped as `{:?}` escapes them, so a hostile header cannot drive a
    /// terminal.
    #[error("artifact {name:?}: {}", escape_controls(&source.to_string()))]
    BadArtifact {
        name: String,
        #[source]
        source: ArtifactError,
    },
    #[error(transparent)]
    BadInput(#[from] InputError),
    #[error("{what} {path:?}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// SageMaker MME's 507: the model does not fit the memory (or disk) budget, even after
    /// unloading every model that may be unloaded.
    #[error("model {name:?} needs {needed} bytes of {resource} but only {available} of the {budget}-byte budget can be made free ({reason})")]
    InsufficientMemory {
        name: String,
        resource: &'static str,
        needed: u64,
        available: u64,
        budget: u64,
        reason: &'static str,
    },
    /// A load this request waited for failed; the loading request got the original error.
    #[error("loading model {name:?} failed: {message}")]
    LoadFailed {
        name: String,
        kind: ErrorKind,
        message: String,
    },
    #[error("this build of edgemm has no {0} support (enable the cargo feature)")]
    Unsupported(&'static str),
    #[error("inference failed: {0}")]
    Inference(String),
    /// The network answered NaN or infinity (weights that overflow on this input); the answer
    /// is refused rather than returned as `null` probabilities.
    #[error(
        "model {name:?} answered a non-finite value (NaN or infinity) for item {item} of the batch"
    )]
    NonFiniteOutput { name: String, item: usize },
    #[error("invalid option: {0}")]
    InvalidOption(String),
    /// The cache directory holds something edgemm did not create: edgemm will not use it (it
    /// would delete or overwrite what is there). Nothing in it was touched.
    #[error("cache directory {dir:?} holds {entry:?}, which edgemm did not create; edgemm keeps its cache in a directory of its own (marked by CACHEDIR.TAG) and touches nothing else: choose a new or empty directory")]
    ForeignCacheDir { dir: PathBuf, entry: PathBuf },
}

/// Coarse classes of [`Error`]: one per C status code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    InvalidArgument,
    NotFound,
    BadArtifact,
    BadInput,
    InsufficientMemory,
    Internal,
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidModelName { .. }
            | Error::InvalidOption(_)
            | Error::ForeignCacheDir { .. } => ErrorKind::InvalidArgument,
            Error::ModelNotFound { .. } => ErrorKind::NotFound,
            Error::BadArtifact { .. } => ErrorKind::BadArtifact,
            Error::BadInput(_) => ErrorKind::BadInput,
            Error::InsufficientMemory { .. } => ErrorKind::InsufficientMemory,
            Error::LoadFailed { kind, .. } => *kind,
            Error::Io { .. }
            | Error::Unsupported(_)
            | Error::Inference(_)
            | Error::NonFiniteOutput { .. } => ErrorKind::Internal,
        }
    }

    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            what,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn artifact(name: &str, source: impl Into<ArtifactError>) -> Self {
        Error::BadArtifact {
            name: name.to_string(),
            source: source.into(),
        }
    }
}

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        Error::Inference(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// `text` with every control character escaped as Rust's `{:?}` writes it (`\n`, `\u{1b}`),
/// and everything else as it is.
pub fn escape_controls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}
