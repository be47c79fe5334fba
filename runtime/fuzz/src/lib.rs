//! The fuzz harnesses: one function per parser edgemm exposes to untrusted bytes (issue #22).
//!
//! Each takes the bytes a fuzzer (or a corpus file) gives it, runs them through the runtime's
//! own entry point and asserts what must hold whatever the bytes are: no panic, no allocation
//! the input does not justify (libFuzzer's `-rss_limit_mb` catches those), and for an accepted
//! input, a result that keeps the parser's promises (an extracted copy is complete, a decoded
//! image is within the limits, a response has one finite probability row per item). A refusal
//! is a typed error and is fine. Each returns whether it accepted the input, so the corpus
//! test can check that the valid seeds still take the accepting path.
//!
//! The `cargo fuzz` targets in `fuzz_targets/` call these; `runtime/tests/fuzz_corpus.rs`
//! runs the committed corpus and every past crash through them in the ordinary test suite.
//! `README.md` beside this file says how to run them.

use std::path::Path;
use std::sync::OnceLock;

use edgemm::artifact::{self, WEIGHTS_FILE};
use edgemm::manifest::{InputSpec, ResizeMode};
use edgemm::pipeline::frame::{self, Frame, PixelFormat, Roi, YuvRange};
use edgemm::{preprocess, ArtifactLimits, ImageLimits, Manifest, Runtime, RuntimeOptions};

/// A tiny alexnet-small (8x8 input, 2 channels per stage; seeds.py writes its weights): the
/// architecture the safetensors harness checks headers against, small enough that the fuzzer
/// spends its time in the header rather than copying weights.
const TINY_MANIFEST: &str = r#"{
  "format_version": 1,
  "architecture": "alexnet-small",
  "config": {"batch_norm": false, "channels": [2, 2, 2], "classes": 2, "hidden": 4,
             "input_size": 8},
  "labels": ["a", "b"],
  "input": {"height": 8, "width": 8, "channels": 3, "layout": "NHWC"},
  "output": "logits",
  "weights": {"dtype": "f32", "sha256": "0000000000000000000000000000000000000000000000000000000000000000"}
}"#;

/// A runtime over the shipped repository with its own cache directory, made once per process.
/// `repository` is `models/repository` as seen from the caller's working directory.
pub fn runtime(repository: &Path) -> &'static Runtime {
    static RUNTIME: OnceLock<(Runtime, tempfile::TempDir)> = OnceLock::new();
    &RUNTIME
        .get_or_init(|| {
            let cache = tempfile::tempdir().expect("a temporary cache directory");
            let mut options = RuntimeOptions::new(repository);
            options.cache_dir = cache.path().to_path_buf();
            let runtime = Runtime::new(options).expect("a runtime over the shipped repository");
            (runtime, cache)
        })
        .0
}

/// `artifact::extract` of `data` as a `NAME.tar.gz`: an accepted archive leaves a complete
/// copy (manifest and weights), a refused one leaves nothing beside the archive.
pub fn artifact(data: &[u8]) -> bool {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let archive = dir.path().join("fuzz.tar.gz");
    std::fs::write(&archive, data).expect("writing the archive");
    let dest = dir.path().join("copy");
    let limits = ArtifactLimits {
        max_entries: 16,
        max_unpacked_bytes: 64 << 20,
    };
    match artifact::extract("fuzz.tar.gz", &archive, &dest, limits) {
        Ok(extracted) => {
            assert!(
                dest.join(WEIGHTS_FILE).is_file(),
                "accepted without weights"
            );
            extracted
                .manifest
                .validate()
                .expect("an accepted manifest is valid");
            true
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
            let left: Vec<_> = std::fs::read_dir(dir.path())
                .expect("listing the directory")
                .map(|entry| entry.expect("an entry").file_name())
                .collect();
            assert_eq!(
                left,
                ["fuzz.tar.gz"],
                "a refused archive left files behind: {e}"
            );
            false
        }
    }
}

/// `Manifest::from_json` (which validates): what an accepted manifest writes back reads as the
/// same manifest.
pub fn manifest(data: &[u8]) -> bool {
    let Ok(manifest) = Manifest::from_json(data) else {
        return false;
    };
    let again = Manifest::from_json(manifest.to_json().as_bytes())
        .expect("a manifest edgemm wrote reads back");
    assert_eq!(again, manifest);
    true
}

/// `weights::check_file` of `data` as a tiny alexnet-small's `model.safetensors`: every tensor it
/// accepts is one the architecture asks for, with its shape.
pub fn safetensors(data: &[u8]) -> bool {
    let manifest = Manifest::from_json(TINY_MANIFEST.as_bytes()).expect("the tiny manifest");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join(WEIGHTS_FILE);
    std::fs::write(&path, data).expect("writing the weights");
    let Ok(tensors) = edgemm::weights::check_file("fuzz", &path, &manifest) else {
        return false;
    };
    {
        let specs = edgemm_models::architecture(&manifest.architecture)
            .and_then(|arch| arch.tensor_specs(&manifest.config))
            .expect("the tiny architecture");
        assert_eq!(tensors.len(), specs.len());
        let estimate = edgemm::weights::estimate_resident_bytes("fuzz", &path, &manifest)
            .expect("an accepted file has an estimate");
        assert!(estimate > 0);
    }
    true
}

/// `json::invoke_json` on the shipped CIFAR model: an answer has one row of 10 finite
/// probabilities summing to 1 per item; a refusal is an error with an HTTP status.
pub fn tf_serving_json(runtime: &Runtime, data: &[u8]) -> bool {
    match edgemm::json::invoke_json(runtime, "cifar.tar.gz", data) {
        Ok(answer) => {
            let rows = answer
                .get("predictions")
                .or_else(|| answer.get("outputs"))
                .and_then(|rows| rows.as_array())
                .expect("an answer holds predictions or outputs");
            assert!(!rows.is_empty());
            for row in rows {
                let p: Vec<f64> = row
                    .as_array()
                    .expect("a row is an array")
                    .iter()
                    .map(|v| v.as_f64().expect("a probability is a finite number"))
                    .collect();
                assert_eq!(p.len(), 10);
                let sum: f64 = p.iter().sum();
                assert!((sum - 1.0).abs() < 1e-3, "probabilities sum to {sum}");
            }
            true
        }
        Err(e) => {
            let status = edgemm::json::http_status(&e);
            assert!((400..600).contains(&status), "status {status} for {e}");
            false
        }
    }
}

/// `preprocess::decode_image` under the default limits (4 MB, 4096 px a side, 20:1), then the
/// resize to a 32x32 input: a decoded image is within the limits.
pub fn image(data: &[u8]) -> bool {
    let limits = ImageLimits::default();
    let Ok(image) = preprocess::decode_image(data, &limits) else {
        return false;
    };
    let (w, h) = image.dimensions();
    assert!(
        w > 0 && h > 0 && w.max(h) <= limits.max_side,
        "{w}x{h} passed the limits"
    );
    let spec = spec(32, 32, ResizeMode::CenterCrop);
    let resized = preprocess::resize(&image, &spec);
    assert_eq!(resized.dimensions(), (32, 32));
    true
}

fn spec(width: usize, height: usize, resize: ResizeMode) -> InputSpec {
    serde_json::from_value(serde_json::json!({
        "height": height, "width": width, "resize": resize,
    }))
    .expect("an input spec")
}

/// Reads the harness's parameters off the front of the fuzz input.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn byte(&mut self) -> u8 {
        let (&b, rest) = self.0.split_first().unwrap_or((&0, &[]));
        self.0 = rest;
        b
    }
    fn small(&mut self) -> usize {
        usize::from(u16::from_le_bytes([self.byte(), self.byte()]))
    }
}

/// A camera frame through `FrameBuffers::convert` and `preprocess`, as a pipeline worker
/// runs it. The input's first 16 bytes choose the format, size, strides, range, region and
/// resize mode (sizes up to 65535, so the frame's own checks meet every overflow); the rest
/// is the planes' bytes, split as a 4:2:0 frame's planes are.
pub fn frame(data: &[u8]) -> bool {
    let mut r = Reader(data);
    let formats = PixelFormat::all();
    let format = formats[usize::from(r.byte()) % formats.len()];
    let flags = r.byte();
    let (width, height) = (r.small(), r.small());
    let strides = [r.small(), r.small(), r.small()];
    let roi = (flags & 1 != 0).then(|| Roi {
        x: usize::from(r.byte()),
        y: usize::from(r.byte()),
        width: usize::from(r.byte()),
        height: usize::from(r.byte()),
    });
    let range = if flags & 2 != 0 {
        YuvRange::Full
    } else {
        YuvRange::Limited
    };
    let resize = [
        ResizeMode::Stretch,
        ResizeMode::CenterCrop,
        ResizeMode::Letterbox,
    ][usize::from(flags >> 2) % 3];
    let bytes = r.0;
    // Split as a frame of these planes is laid out: Y is 2/3 of a 4:2:0 frame, U and V 1/6.
    let cut = |sixths: usize| bytes.len() * sixths / 6;
    let planes = match format.plane_count() {
        1 => [bytes, &[][..], &[][..]],
        2 => [&bytes[..cut(4)], &bytes[cut(4)..], &[][..]],
        _ => [&bytes[..cut(4)], &bytes[cut(4)..cut(5)], &bytes[cut(5)..]],
    };
    let frame = Frame {
        planes,
        strides,
        width,
        height,
        format,
        timestamp_us: 0,
    };
    let mut buffers = frame::FrameBuffers::default();
    if buffers.convert(&frame, range, roi).is_err() {
        return false;
    }
    let region = frame.region(roi).expect("a converted region is valid");
    assert_eq!(buffers.rgb.len(), region.width * region.height * 3);
    let spec = spec(24, 16, resize);
    buffers.preprocess(&spec);
    assert_eq!(buffers.tensor.len(), 3 * 24 * 16);
    assert!(buffers.tensor.iter().all(|v| v.is_finite()));
    true
}

/// `edgemm_models::onnx::import`, then the planner over the imported graph and initializers:
/// a model that imports also plans, or says why not. Accepted: it imports and plans.
pub fn onnx(data: &[u8]) -> bool {
    use candle_core::{DType, Device, Tensor};
    let Ok(imported) = edgemm_models::onnx::import(data) else {
        return false;
    };
    let tensors = imported
        .tensors
        .iter()
        .map(|(name, shape, values)| {
            Ok((
                name.clone(),
                Tensor::from_slice(values, shape.as_slice(), &Device::Cpu)?,
            ))
        })
        .collect::<candle_core::Result<std::collections::HashMap<_, _>>>()
        .expect("imported initializers hold as many values as their shapes say");
    let vb = candle_nn::VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    edgemm_models::graph::planner::plan(&imported.graph, &vb, edgemm_models::Isa::best(), "graph")
        .is_ok()
}
