//! The shipped EfficientNet-Lite0 artifact classifies the five reference photos as the
//! reference implementation does, through the Rust API and through `edgemm predict`; so does
//! its f16 copy made by `edgemm pack --dtype f16`.

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

/// `edgemm pack --dtype f16` on the shipped artifact's weights: an artifact about half the
/// size whose manifest says f16, which gives the same top-1 for the five photos and
/// probabilities within 1e-2 of the f32 artifact's.
#[test]
fn f16_copy_of_the_artifact_gives_the_same_answers() {
    let dir = tempfile::tempdir().unwrap();
    let name = "efficientnet-lite0.tar.gz";
    let shipped = common::shipped_repository().join(name);
    let extracted = edgemm::artifact::extract(
        name,
        &shipped,
        &dir.path().join("extracted"),
        Default::default(),
    )
    .unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir(&repo).unwrap();
    let out = common::cli()
        .args(["pack", "--dtype", "f16", "--manifest"])
        .arg(extracted.dir.join("manifest.json"))
        .arg("--weights")
        .arg(extracted.weights_path())
        .arg("-o")
        .arg(repo.join(name))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "edgemm pack failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (f32_size, f16_size) = (
        std::fs::metadata(&shipped).unwrap().len(),
        std::fs::metadata(repo.join(name)).unwrap().len(),
    );
    assert!(
        f16_size * 10 < f32_size * 6,
        "f16 artifact {f16_size} bytes, f32 {f32_size}"
    );
    let runtime = |repository| {
        let mut options = RuntimeOptions::new(repository);
        options.cache_dir = dir.path().join("cache");
        Runtime::new(options).unwrap()
    };
    let (full, half) = (runtime(common::shipped_repository()), runtime(repo));
    assert_eq!(half.model(name).unwrap().manifest.weights.dtype, "f16");
    for (photo, expected) in REFERENCE {
        let bytes = std::fs::read(common::shipped_sample(photo)).unwrap();
        let a = full.invoke(name, Input::Image(&bytes)).unwrap();
        let b = half.invoke(name, Input::Image(&bytes)).unwrap();
        let (a, b) = (&a.predictions[0], &b.predictions[0]);
        assert_eq!(first_name(&b.top_k[0].label), expected, "{photo}");
        let worst = a
            .probabilities
            .iter()
            .zip(&b.probabilities)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        println!("{photo}: largest probability change {worst:.1e}");
        assert!(worst < 1e-2, "{photo}: probabilities moved by {worst}");
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
    // Its scratch copy goes to a cache directory of the test's own, not the user's.
    let cache = tempfile::tempdir().unwrap();
    let mut child = common::cli()
        .env("EDGEMM_CACHE_DIR", cache.path())
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

/// An endless file (/dev/zero) as an image or a request body: the CLI reads no more than the
/// limit allows (one byte past it), and the runtime refuses it naming the rule. Before, the
/// CLI read the whole file first, which for /dev/zero never ends.
#[test]
fn cli_reads_no_more_of_a_file_than_the_limits_allow() {
    let dev_zero = std::path::Path::new("/dev/zero");
    if !dev_zero.exists() {
        eprintln!("skipped: /dev/zero not found");
        return;
    }
    let cache = tempfile::tempdir().unwrap();
    let run = |args: &[&str], file_flag: Option<&str>| {
        let mut cmd = common::cli();
        cmd.arg("--cache-dir").arg(cache.path()).args(args);
        cmd.arg("--repo").arg(common::shipped_repository());
        if let Some(flag) = file_flag {
            cmd.arg(flag);
        }
        cmd.arg(dev_zero).output().unwrap()
    };
    let out = run(&["predict", "--model", "cifar.tar.gz"], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("over the limit of 4194304"), "{stderr}");

    let out = run(&["invoke", "--model", "cifar.tar.gz"], Some("--body"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(stdout.contains("-byte limit"), "{stdout}");
}
