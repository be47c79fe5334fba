//! TF Serving JSON in and out, shaped like the seeds' requests to the cloud endpoint.

mod common;

use base64::Engine;
use common::Fixture;
use serde_json::{json, Value};

/// A 32x32x3 image as nested lists of floats in [0, 1], like `x.tolist()` in the seeds.
fn cifar_instance(seed: u32) -> Value {
    let rows: Vec<Value> = (0..32)
        .map(|y| {
            let row: Vec<Value> = (0..32)
                .map(|x| {
                    let v = |c: u32| ((x * 7 + y * 3 + c * 11 + seed) % 256) as f64 / 255.0;
                    json!([v(0), v(1), v(2)])
                })
                .collect();
            Value::Array(row)
        })
        .collect();
    Value::Array(rows)
}

fn assert_probability_rows(rows: &Value, n: usize) {
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), n);
    for row in rows {
        let row = row.as_array().unwrap();
        assert_eq!(row.len(), 10);
        let sum: f64 = row.iter().map(|p| p.as_f64().unwrap()).sum();
        assert!((sum - 1.0).abs() < 1e-5, "sum {sum}");
        assert!(row
            .iter()
            .all(|p| (0.0..=1.0).contains(&p.as_f64().unwrap())));
    }
}

/// The seeds' CIFAR call: `{"instances": <1x32x32x3 floats in [0,1]>}`.
#[test]
fn seeds_cifar_request_returns_ten_probabilities() {
    let fx = Fixture::cifar();
    let body = json!({ "instances": [cifar_instance(0)] }).to_string();
    let answer = edgemm::json::invoke_json(&fx.runtime, "cifar.tar.gz", body.as_bytes()).unwrap();
    assert_eq!(answer.as_object().unwrap().len(), 1, "{answer}");
    assert_probability_rows(&answer["predictions"], 1);
}

/// Row and columnar forms of the same batch give the same numbers under their own keys, and
/// agree with the Rust API on the same tensor.
#[test]
fn instances_and_inputs_forms_agree() {
    let fx = Fixture::cifar();
    let batch = json!([cifar_instance(1), cifar_instance(2)]);
    let rows = edgemm::json::invoke_json(
        &fx.runtime,
        "cifar.tar.gz",
        json!({ "instances": batch }).to_string().as_bytes(),
    )
    .unwrap();
    let columns = edgemm::json::invoke_json(
        &fx.runtime,
        "cifar.tar.gz",
        json!({ "inputs": batch }).to_string().as_bytes(),
    )
    .unwrap();
    assert_probability_rows(&rows["predictions"], 2);
    assert_eq!(rows["predictions"], columns["outputs"]);

    let flat: Vec<f32> = batch
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|img| img.as_array().unwrap().iter())
        .flat_map(|row| row.as_array().unwrap().iter())
        .flat_map(|px| px.as_array().unwrap().iter())
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let api = fx
        .runtime
        .invoke(
            "cifar.tar.gz",
            edgemm::Input::Tensor {
                data: &flat,
                shape: &[2, 32, 32, 3],
            },
        )
        .unwrap();
    for (i, p) in api.predictions.iter().enumerate() {
        for (a, b) in p
            .probabilities
            .iter()
            .zip(rows["predictions"][i].as_array().unwrap())
        {
            assert!((f64::from(*a) - b.as_f64().unwrap()).abs() < 1e-6);
        }
    }
}

/// `{"b64": ...}` images, alone or as a named input, through the real EfficientNet-Lite0.
#[test]
fn b64_images_are_classified() {
    let cache = tempfile::tempdir().unwrap();
    let mut options = edgemm::RuntimeOptions::new(common::shipped_repository());
    options.cache_dir = cache.path().to_path_buf();
    let runtime = edgemm::Runtime::new(options).unwrap();
    let photo = std::fs::read(common::shipped_sample("hot_dog.jpg")).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(photo);
    let body = json!({ "instances": [{ "b64": b64 }, { "image": { "b64": b64 } }] });
    let answer = edgemm::json::invoke_json(
        &runtime,
        "efficientnet-lite0.tar.gz",
        body.to_string().as_bytes(),
    )
    .unwrap();
    let rows = answer["predictions"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    let hotdog = runtime
        .model("efficientnet-lite0.tar.gz")
        .unwrap()
        .manifest
        .labels
        .iter()
        .position(|l| l.starts_with("hotdog"))
        .unwrap();
    for row in rows {
        assert!(row[hotdog].as_f64().unwrap() > 0.9, "{}", row[hotdog]);
    }
}

/// `edgemm invoke` reads the body from stdin and answers JSON; a bad body answers
/// `{"error": ...}` and a non-zero exit.
#[test]
fn cli_invoke_answers_json() {
    use std::io::Write;
    use std::process::Stdio;
    let fx = Fixture::cifar();
    let run = |body: String| {
        let mut child = common::cli()
            .arg("--cache-dir")
            .arg(fx.cache())
            .args(["invoke", "--model", "cifar.tar.gz", "--repo"])
            .arg(fx.repo())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(body.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let value: Value = serde_json::from_slice(&out.stdout).unwrap();
        (out.status.success(), value)
    };
    let (ok, answer) = run(json!({ "instances": [cifar_instance(3)] }).to_string());
    assert!(ok);
    assert_probability_rows(&answer["predictions"], 1);
    let (ok, answer) = run(json!({ "instances": [], "inputs": [] }).to_string());
    assert!(!ok);
    assert!(
        answer["error"].as_str().unwrap().contains("both"),
        "{answer}"
    );
}
