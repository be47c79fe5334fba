//! Fixtures shared by the integration tests: seeded random-weight artifacts and temporary
//! repositories. Real weights come from the shipped repository (`models/repository`).

#![allow(dead_code)]

pub mod cache_fixture;

use std::path::{Path, PathBuf};

use edgemm::manifest::{
    InputSpec, Layout, Manifest, OutputKind, ResizeMode, TensorValues, WeightsSpec,
};
use edgemm::{Runtime, RuntimeOptions};

/// The workspace root: the nearest directory above the crate being tested that holds
/// `models/repository` (these fixtures serve the runtime's tests and the CLI's).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|dir| dir.join("models/repository").is_dir())
        .expect("the crate lies inside the edgemm workspace")
        .to_path_buf()
}

/// The repository shipped in the source tree.
pub fn shipped_repository() -> PathBuf {
    workspace().join("models/repository")
}

pub fn shipped_sample(name: &str) -> PathBuf {
    workspace().join("models/samples/imagenet").join(name)
}

/// A CIFAR-shaped alexnet-small manifest, as the seeds' CIFAR model takes requests:
/// 32x32 NHWC floats in [0, 1].
pub fn alexnet_manifest() -> Manifest {
    Manifest {
        format_version: edgemm::manifest::FORMAT_VERSION,
        architecture: "alexnet-small".into(),
        config: serde_json::json!({ "classes": 10 }),
        labels: [
            "airplane",
            "automobile",
            "bird",
            "cat",
            "deer",
            "dog",
            "frog",
            "horse",
            "ship",
            "truck",
        ]
        .map(String::from)
        .to_vec(),
        input: InputSpec {
            height: 32,
            width: 32,
            channels: 3,
            layout: Layout::Nhwc,
            resize: ResizeMode::Stretch,
            scale: 1.0 / 255.0,
            mean: [0.5; 3],
            std: [0.25; 3],
            tensor_values: TensorValues::Unit,
            images: true,
        },
        output: OutputKind::Logits,
        weights: WeightsSpec {
            dtype: "f32".into(),
            sha256: "0".repeat(64),
        },
        description: Some("seeded random weights, for tests".into()),
        origin: None,
    }
}

/// Writes seeded weights for `manifest`'s architecture to `path` (safetensors, f32).
pub fn write_seeded_weights(manifest: &Manifest, seed: u64, path: &Path) {
    let arch = edgemm_models::architecture(&manifest.architecture).unwrap();
    let specs = arch.tensor_specs(&manifest.config).unwrap();
    let tensors =
        edgemm_models::init::seeded_weights(&specs, seed, &candle_core::Device::Cpu).unwrap();
    candle_core::safetensors::save(&tensors, path).unwrap();
}

/// Packs `manifest` with seeded weights into `repo/name`.
pub fn pack_seeded(manifest: &Manifest, seed: u64, repo: &Path, name: &str) -> PathBuf {
    std::fs::create_dir_all(repo).unwrap();
    let weights = repo.join(format!(".{name}.weights"));
    write_seeded_weights(manifest, seed, &weights);
    let out = repo.join(name);
    edgemm::artifact::pack(manifest, &weights, &out).unwrap();
    std::fs::remove_file(weights).unwrap();
    out
}

/// A temporary directory holding `repo/` with a random alexnet-small as `cifar.tar.gz`, and a
/// runtime over it whose cache is `cache/`.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub runtime: Runtime,
}

impl Fixture {
    pub fn cifar() -> Self {
        let dir = tempfile::tempdir().unwrap();
        pack_seeded(
            &alexnet_manifest(),
            7,
            &dir.path().join("repo"),
            "cifar.tar.gz",
        );
        let mut options = RuntimeOptions::new(dir.path().join("repo"));
        options.cache_dir = dir.path().join("cache");
        let runtime = Runtime::new(options).unwrap();
        Self { dir, runtime }
    }

    pub fn repo(&self) -> PathBuf {
        self.dir.path().join("repo")
    }

    pub fn cache(&self) -> PathBuf {
        self.dir.path().join("cache")
    }
}

/// A PNG chunk: length, type, data, CRC (for hand-made PNG headers in the tests).
pub fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut crc = flate2::Crc::new();
    crc.update(kind);
    crc.update(data);
    let mut out = (data.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    out.extend_from_slice(&crc.sum().to_be_bytes());
    out
}
