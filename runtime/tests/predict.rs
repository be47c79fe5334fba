//! The shipped EfficientNet-Lite0 artifact classifies the five reference photos as the
//! reference implementation does, through the Rust API and through `edgemm predict`.

mod common;

use edgemm::{Input, Runtime, RuntimeOptions};

/// Photo and its reference top-1 (the first name of the ImageNet label).
const REFERENCE: [(&str, &str); 5] = [
    ("grace_hopper.png", "military uniform"),
    ("cat.png", "Egyptian cat"),
    ("hot_dog.jpg", "hotdog"),
    ("bird.png", "chickadee"),
    ("dragonfly.png", "dragonfly"),
];

fn first_name(label: &str) -> &str {
    label.split(',').next().unwrap().trim()
}

#[test]
fn api_gives_reference_top1_for_all_five_photos() {
    let cache = tempfile::tempdir().unwrap();
    let mut options = RuntimeOptions::new(common::shipped_repository());
    options.cache_dir = cache.path().to_path_buf();
    let runtime = Runtime::new(options).unwrap();
    for (photo, expected) in REFERENCE {
        let bytes = std::fs::read(common::shipped_sample(photo)).unwrap();
        let response = runtime
            .invoke("efficientnet-lite0.tar.gz", Input::Image(&bytes))
            .unwrap();
        let prediction = &response.predictions[0];
        assert_eq!(first_name(&prediction.top_k[0].label), expected, "{photo}");
        let sum: f32 = prediction.probabilities.iter().sum();
        assert!(
            (sum - 1.0).abs() < 1e-4,
            "{photo}: probabilities sum to {sum}"
        );
        assert_eq!(prediction.probabilities.len(), 1000);
    }
}

#[test]
fn cli_predict_gives_reference_top1_for_all_five_photos() {
    let cache = tempfile::tempdir().unwrap();
    let mut cmd = common::cli();
    cmd.arg("--cache-dir")
        .arg(cache.path())
        .args([
            "predict",
            "--json",
            "--model",
            "efficientnet-lite0.tar.gz",
            "--repo",
        ])
        .arg(common::shipped_repository());
    for (photo, _) in REFERENCE {
        cmd.arg(common::shipped_sample(photo));
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "edgemm predict failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), REFERENCE.len());
    for (line, (photo, expected)) in lines.iter().zip(REFERENCE) {
        assert!(line["image"].as_str().unwrap().ends_with(photo));
        assert_eq!(
            first_name(line["top_k"][0]["label"].as_str().unwrap()),
            expected,
            "{photo}"
        );
    }
}

#[test]
fn cli_reports_a_missing_model_clearly() {
    let cache = tempfile::tempdir().unwrap();
    let out = common::cli()
        .arg("--cache-dir")
        .arg(cache.path())
        .args(["predict", "--model", "nope.tar.gz", "--repo"])
        .arg(common::shipped_repository())
        .arg(common::shipped_sample("cat.png"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("model \"nope.tar.gz\" not found"),
        "{stderr}"
    );
}

#[test]
fn cli_output_into_a_closed_pipe_ends_quietly() {
    // `edgemm inspect ARTIFACT | head -1`: the reader is gone before the first line is written.
    let mut child = common::cli()
        .arg("inspect")
        .arg(common::shipped_repository().join("efficientnet-lite0.tar.gz"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
}
