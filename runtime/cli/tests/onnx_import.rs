//! `edgemm pack --onnx`, then the runtime, end to end (issue #20): a torchvision export packed
//! by the CLI answers the reference photos through the ordinary image path (decode, resize,
//! normalise, plan) with ONNX Runtime's answer (its logits, written by
//! `models/reference/onnx/reference.py`, through a softmax), and `inspect` lists the graph
//! with the path each node runs on.

mod common;

use std::path::{Path, PathBuf};

use edgemm::{Input, Runtime, RuntimeOptions};

fn onnx_dir() -> PathBuf {
    common::workspace().join("models/tests/onnx")
}

#[derive(serde::Deserialize)]
struct Expected {
    photos: Vec<String>,
    logits: Vec<Vec<f64>>,
}

fn softmax(logits: &[f64]) -> Vec<f64> {
    let max = logits.iter().cloned().fold(f64::MIN, f64::max);
    let exp: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
    let sum: f64 = exp.iter().sum();
    exp.iter().map(|e| e / sum).collect()
}

fn pack(model: &str, repo: &Path) {
    std::fs::create_dir_all(repo).unwrap();
    let out = common::cli()
        .arg("pack")
        .arg("--onnx")
        .arg(onnx_dir().join(format!("{model}.onnx")))
        .arg("-o")
        .arg(repo.join(format!("{model}.tar.gz")))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn packed_onnx_models_answer_as_onnx_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let models = ["mobilenet_v3_large_w035_c10", "resnet_bottleneck_tiny_c10"];
    for model in models {
        pack(model, &repo);
    }
    let mut options = RuntimeOptions::new(&repo);
    options.cache_dir = dir.path().join("cache");
    let runtime = Runtime::new(options).unwrap();
    for model in models {
        let expected: Expected = serde_json::from_slice(
            &std::fs::read(onnx_dir().join(format!("{model}.expected.json"))).unwrap(),
        )
        .unwrap();
        for (photo, logits) in expected.photos.iter().zip(&expected.logits) {
            let bytes = std::fs::read(onnx_dir().join(photo)).unwrap();
            let response = runtime
                .invoke(&format!("{model}.tar.gz"), Input::Image(&bytes))
                .unwrap();
            let want = softmax(logits);
            let got = &response.predictions[0].probabilities;
            let err = got
                .iter()
                .zip(&want)
                .map(|(g, w)| (f64::from(*g) - w).abs())
                .fold(0.0, f64::max);
            println!("{model} {photo}: max |p - p_ort| {err:.1e}");
            assert!(err <= 1e-5, "{model} {photo}: {err:e}");
        }
    }
}

#[test]
fn inspect_lists_the_graph_and_its_paths() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    pack("resnet_basic_tiny_c10", &repo);
    let text = common::inspect(
        &dir.path().join("cache"),
        &repo.join("resnet_basic_tiny_c10.tar.gz"),
    );
    assert!(text.contains("architecture  graph ("), "{text}");
    assert!(text.contains("GFLOP per image at 224x224"), "{text}");
    assert!(text.contains("(fused kernel)"), "{text}");
    assert!(text.contains("0 candle fallback"), "{text}");
    // Every node has a line with its shape: the stem's 7x7 stride-2 convolution.
    assert!(text.contains("112x112"), "{text}");
}

#[test]
fn an_unsupported_onnx_file_is_a_clear_cli_error() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.onnx");
    std::fs::write(&bad, b"\x08\x07not a model").unwrap();
    let out = common::cli()
        .args(["pack", "--onnx"])
        .arg(&bad)
        .arg("-o")
        .arg(dir.path().join("bad.tar.gz"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.onnx: ONNX import:"), "{err}");
    assert!(!dir.path().join("bad.tar.gz").exists());
}

/// The EfficientNet-Lite0 ONNX file `models/reference/onnx/efficientnet_lite0.py` builds from
/// the pretrained weights in `../shared/data` (CI builds it; `$EDGEMM_ONNX_MODELS` or
/// `target/onnx-models` holds it), if it is there.
fn lite0_onnx() -> Option<PathBuf> {
    let dir = std::env::var_os("EDGEMM_ONNX_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| common::workspace().join("target/onnx-models"));
    let path = dir.join("efficientnet_lite0.onnx");
    path.exists().then_some(path)
}

/// Acceptance 2 of issue #20: the pretrained EfficientNet-Lite0, imported from ONNX with the
/// shipped manifest's preprocessing, answers the five reference photos as the shipped
/// artifact does: the same top-5 labels, probabilities within 1e-4.
#[test]
fn pretrained_efficientnet_lite0_from_onnx_answers_as_the_shipped_artifact() {
    let Some(onnx) = lite0_onnx() else {
        println!(
            "skipped: target/onnx-models/efficientnet_lite0.onnx not found (make it with \
             models/reference/onnx/efficientnet_lite0.py, as .ci/run does)"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::copy(
        common::shipped_repository().join("efficientnet-lite0.tar.gz"),
        repo.join("efficientnet-lite0.tar.gz"),
    )
    .unwrap();
    let base = common::workspace().join("models/manifests/efficientnet-lite0.json");
    let out = common::cli()
        .args(["pack", "--onnx"])
        .arg(&onnx)
        .arg("--manifest")
        .arg(&base)
        .arg("-o")
        .arg(repo.join("lite0-onnx.tar.gz"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut options = RuntimeOptions::new(&repo);
    options.cache_dir = dir.path().join("cache");
    options.top_k = 5;
    let runtime = Runtime::new(options).unwrap();
    let samples = common::workspace().join("models/samples/imagenet");
    for photo in [
        "bird.png",
        "cat.png",
        "dragonfly.png",
        "grace_hopper.png",
        "hot_dog.jpg",
    ] {
        let bytes = std::fs::read(samples.join(photo)).unwrap();
        let shipped = runtime
            .invoke("efficientnet-lite0.tar.gz", Input::Image(&bytes))
            .unwrap();
        let imported = runtime
            .invoke("lite0-onnx.tar.gz", Input::Image(&bytes))
            .unwrap();
        let (a, b) = (&shipped.predictions[0], &imported.predictions[0]);
        let labels =
            |p: &edgemm::Prediction| p.top_k.iter().map(|s| s.label.clone()).collect::<Vec<_>>();
        assert_eq!(labels(a), labels(b), "{photo}");
        let err = a
            .probabilities
            .iter()
            .zip(&b.probabilities)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        println!(
            "{photo}: {} {:.3}, max |p - p_shipped| {err:.1e}",
            b.top_k[0].label, b.top_k[0].probability
        );
        assert!(err <= 1e-4, "{photo}: {err:e}");
    }
}
