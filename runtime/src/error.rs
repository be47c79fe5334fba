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
    #[error("weights hold tensor {name:?}, which {architecture} does not use")]
    UnexpectedTensor {
        name: String,
        architecture: &'static str,
    },
    #[error(transparent)]
    Architecture(#[from] edgemm_models::Error),
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
    #[error("artifact {name:?}: {source}")]
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
    #[error("invalid option: {0}")]
    InvalidOption(String),
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
            Error::InvalidModelName { .. } | Error::InvalidOption(_) => ErrorKind::InvalidArgument,
            Error::ModelNotFound { .. } => ErrorKind::NotFound,
            Error::BadArtifact { .. } => ErrorKind::BadArtifact,
            Error::BadInput(_) => ErrorKind::BadInput,
            Error::InsufficientMemory { .. } => ErrorKind::InsufficientMemory,
            Error::LoadFailed { kind, .. } => *kind,
            Error::Io { .. } | Error::Unsupported(_) | Error::Inference(_) => ErrorKind::Internal,
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
