//! The shipped trained models, measured with `edgemm eval` from their artifacts alone (issue
//! #3): on the samples in the repository on every run, on the full test sets when
//! `../shared/data` is present. And the seeds' request shapes through the JSON path.

mod common;

use std::path::{Path, PathBuf};

use edgemm::{Runtime, RuntimeOptions};
use serde_json::{json, Value};

fn samples(set: &str) -> PathBuf {
    common::workspace().join("models/samples").join(set)
}

/// `$EDGEMM_DATA`, else `../shared/data` beside the repository, if it is there.
fn shared_data() -> Option<PathBuf> {
    let dir = std::env::var_os("EDGEMM_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| common::workspace().join("../shared/data"));
    dir.is_dir().then_some(dir)
}

/// Runs `edgemm eval --json` with `args` and returns its report.
fn eval(model: &str, args: &[&std::ffi::OsStr]) -> Value {
    let cache = tempfile::tempdir().unwrap();
    let out = common::cli()
        .arg("--cache-dir")
        .arg(cache.path())
        .args(["eval", "--json", "--model", model, "--repo"])
        .arg(common::shipped_repository())
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "edgemm eval failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn accuracy(report: &Value) -> f64 {
    report["accuracy"].as_f64().unwrap()
}

/// The smallest per-class recall, with its label.
fn worst_recall(report: &Value) -> (String, f64) {
    report["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["label"].as_str().unwrap().to_string(),
                c["recall"].as_f64().unwrap(),
            )
        })
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap()
}

fn runtime() -> (tempfile::TempDir, Runtime) {
    let cache = tempfile::tempdir().unwrap();
    let mut options = RuntimeOptions::new(common::shipped_repository());
    options.cache_dir = cache.path().to_path_buf();
    (cache, Runtime::new(options).unwrap())
}

#[test]
fn sign_language_on_the_shipped_samples() {
    let report = eval(
        "sign-language.tar.gz",
        &[samples("sign-digits").as_os_str()],
    );
    assert_eq!(report["images"], 100, "{report}");
    for class in report["classes"].as_array().unwrap() {
        assert_eq!(class["support"], 10, "{class}");
    }
    // Measured: 99/100 (these photos are part of the 300-photo test split; the miss, a 4
    // taken for a 9, is listed in models/repository/MODEL_CARD.md).
    assert!(accuracy(&report) >= 0.99, "{report}");
    let confusion = report["confusion"].as_array().unwrap();
    assert_eq!(confusion.len(), 10);
    assert!(report["throughput"].as_f64().unwrap() > 0.0);
}

/// Acceptance 2 of issue #3, from the artifact alone: at least 98% of the 300 test photos
/// and at least 93% recall for every digit. Measured: 295/300 = 98.3%, worst recall 28/30 =
/// 93.3% (digits 6 and 7).
#[test]
fn sign_language_on_the_full_test_split() {
    let Some(data) = shared_data() else {
        println!("skipped: ../shared/data not found (set EDGEMM_DATA to run it)");
        return;
    };
    let csv = data.join("sign-digits/splits.csv");
    let report = eval(
        "sign-language.tar.gz",
        &[
            "--splits".as_ref(),
            csv.as_os_str(),
            "--split".as_ref(),
            "test".as_ref(),
        ],
    );
    assert_eq!(report["images"], 300, "{report}");
    assert!(accuracy(&report) >= 0.98, "{report}");
    let (label, recall) = worst_recall(&report);
    assert!(recall >= 0.93, "recall of {label} is {recall}: {report}");
}

#[test]
fn eval_refuses_a_folder_that_is_not_a_label() {
    let dir = tempfile::tempdir().unwrap();
    let class = dir.path().join("eleven");
    std::fs::create_dir(&class).unwrap();
    std::fs::copy(
        samples("sign-digits").join("1").join(
            std::fs::read_dir(samples("sign-digits").join("1"))
                .unwrap()
                .next()
                .unwrap()
                .unwrap()
                .file_name(),
        ),
        class.join("photo.jpg"),
    )
    .unwrap();
    let cache = tempfile::tempdir().unwrap();
    let out = common::cli()
        .arg("--cache-dir")
        .arg(cache.path())
        .args(["eval", "--model", "sign-language.tar.gz", "--repo"])
        .arg(common::shipped_repository())
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("label \"eleven\" is not one of the model's labels"),
        "{stderr}"
    );
}

/// An image as the seeds send it: `[H][W][3]` nested lists of numbers.
fn nested(image: &image::RgbImage, scale: f64) -> Value {
    let rows: Vec<Value> = (0..image.height())
        .map(|y| {
            let row: Vec<Value> = (0..image.width())
                .map(|x| {
                    let p = image.get_pixel(x, y);
                    json!([
                        f64::from(p[0]) * scale,
                        f64::from(p[1]) * scale,
                        f64::from(p[2]) * scale
                    ])
                })
                .collect();
            Value::Array(row)
        })
        .collect();
    Value::Array(rows)
}

fn top_label(predictions: &Value) -> usize {
    let rows = predictions.as_array().unwrap();
    assert_eq!(rows.len(), 1);
    let row: Vec<f64> = rows[0]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_f64().unwrap())
        .collect();
    assert_eq!(row.len(), 10);
    let sum: f64 = row.iter().sum();
    assert!((sum - 1.0).abs() < 1e-4, "probabilities sum to {sum}");
    (0..10).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap()
}

/// The first photo of a sample class folder (by name), decoded.
fn first_photo(dir: &Path) -> (PathBuf, image::RgbImage) {
    let mut photos: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    photos.sort();
    let bytes = std::fs::read(&photos[0]).unwrap();
    let image = edgemm::preprocess::decode_image(&bytes, &Default::default()).unwrap();
    (photos.swap_remove(0), image)
}

/// The seeds' sign-language call: `{"instances": [<1x224x224x3 floats in 0..255>]}`, the photo
/// resized to 224x224 by the client and sent as raw pixels.
#[test]
fn seeds_sign_language_request_returns_the_right_digit() {
    let (_cache, runtime) = runtime();
    let model = runtime.model("sign-language.tar.gz").unwrap();
    for digit in ["3", "7"] {
        let (photo, image) = first_photo(&samples("sign-digits").join(digit));
        let image = edgemm::preprocess::resize(&image, &model.manifest.input);
        let body = json!({ "instances": [nested(&image, 1.0)] }).to_string();
        let answer =
            edgemm::json::invoke_json(&runtime, "sign-language.tar.gz", body.as_bytes()).unwrap();
        assert_eq!(answer.as_object().unwrap().len(), 1, "{answer}");
        let top = top_label(&answer["predictions"]);
        assert_eq!(model.manifest.labels[top], digit, "{}", photo.display());
    }
}

#[test]
fn cifar_on_the_shipped_samples() {
    let report = eval("cifar.tar.gz", &[samples("cifar10").as_os_str()]);
    assert_eq!(report["images"], 100, "{report}");
    for class in report["classes"].as_array().unwrap() {
        assert_eq!(class["support"], 10, "{class}");
    }
    // Measured: 89/100 (the samples are the first ten test images of each class; the misses
    // are mostly cats and dogs, as on the full test set).
    assert!(accuracy(&report) >= 0.89, "{report}");
}

/// Acceptance 1 and 3 of issue #3: the 10,000 CIFAR-10 test images, unpacked from the shared
/// archive into a temporary directory, measured from the artifact alone. Measured: 8390/10000
/// = 83.9% (the training run's own last-epoch figure, to the image); held at 83% so that the
/// last digit may move between instruction sets, above the 80%.
#[test]
fn cifar_on_the_full_test_set() {
    let Some(data) = shared_data() else {
        println!("skipped: ../shared/data not found (set EDGEMM_DATA to run it)");
        return;
    };
    let unpacked = tempfile::tempdir().unwrap();
    let archive = std::fs::File::open(data.join("cifar10/cifar10-jpeg.tar.gz")).unwrap();
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive));
    for entry in tar.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.path().unwrap().starts_with("test") {
            entry.unpack_in(unpacked.path()).unwrap();
        }
    }
    let report = eval("cifar.tar.gz", &[unpacked.path().join("test").as_os_str()]);
    assert_eq!(report["images"], 10_000, "{report}");
    assert!(accuracy(&report) >= 0.83, "{report}");
    let (label, recall) = worst_recall(&report);
    // Measured: cat 0.690, the weakest class.
    assert!(recall >= 0.66, "recall of {label} is {recall}");
}

/// The seeds' CIFAR call: `{"instances": [<1x32x32x3 floats in [0, 1]>]}`.
#[test]
fn seeds_cifar_request_returns_the_right_class() {
    let (_cache, runtime) = runtime();
    let model = runtime.model("cifar.tar.gz").unwrap();
    for class in ["ship", "frog"] {
        let (photo, image) = first_photo(&samples("cifar10").join(class));
        let body = json!({ "instances": [nested(&image, 1.0 / 255.0)] }).to_string();
        let answer = edgemm::json::invoke_json(&runtime, "cifar.tar.gz", body.as_bytes()).unwrap();
        let top = top_label(&answer["predictions"]);
        assert_eq!(model.manifest.labels[top], class, "{}", photo.display());
    }
}
