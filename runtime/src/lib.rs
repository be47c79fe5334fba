//! edgemm: answer a SageMaker multi-model endpoint's image requests on the device.
//!
//! A [`Runtime`] serves the models of a [`ModelRepository`] (a directory of `NAME.tar.gz`
//! artifacts) by name. The first request for a name extracts the artifact into a cache
//! directory ([`artifact`]), memory-maps its `model.safetensors` ([`weights`]), checks every
//! tensor against the architecture named in its [`Manifest`] and builds the network with
//! candle. Requests come as encoded images, decoded RGB images or float tensors ([`Input`]), or
//! as TF Serving JSON ([`json`]).
//!
//! ```
//! use edgemm::{Input, Runtime, RuntimeOptions};
//!
//! // The shipped repository and photos (paths from the crate's directory, runtime/).
//! let mut options = RuntimeOptions::new("../models/repository");
//! # let cache = tempfile::tempdir().unwrap();
//! # options.cache_dir = cache.path().to_path_buf(); // default: ~/.cache/edgemm
//! let runtime = Runtime::new(options)?;
//! let photo = std::fs::read("../models/samples/imagenet/cat.png").unwrap();
//! let response = runtime.invoke("efficientnet-lite0.tar.gz", Input::Image(&photo))?;
//! let best = &response.predictions[0].top_k[0];
//! println!("{} ({:.2})", best.label, best.probability);
//! assert_eq!(best.label, "Egyptian cat");
//! # Ok::<(), edgemm::Error>(())
//! ```

pub mod artifact;
pub mod cache;
pub mod cache_dir;
pub mod device;
pub mod error;
pub mod ffi;
pub mod json;
pub mod manifest;
pub mod onnx;
pub mod pipeline;
pub mod preprocess;
pub mod repository;
mod runtime;
pub mod triton;
pub mod weights;

pub use artifact::{ArtifactLimits, ExtractedArtifact};
pub use cache::{
    CacheEvent, CacheMetrics, CacheOptions, Lease, ModelCache, ModelDescription, ModelState,
};
pub use device::DeviceChoice;
pub use error::{ArtifactError, Error, ErrorKind, InputError, Result};
pub use manifest::Manifest;
pub use preprocess::ImageLimits;
pub use repository::ModelRepository;
pub use runtime::{
    default_cache_dir, Input, LoadedModel, Prediction, Response, Runtime, RuntimeOptions, Scored,
    Timing,
};

/// The crate version, as in Cargo.toml.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
