//! Triton model directories (issue #20, item 5): the `NAME.tar.gz` SageMaker serves through
//! Triton (`<model>/config.pbtxt`, `<model>/<version>/model.onnx`) loads as it is in the model
//! repository. The tarballs are built here from the committed ONNX exports in
//! `models/tests/onnx/`; the expected answers are ONNX Runtime's logits on the five photos
//! there (`*.expected.json`, written by `models/reference/onnx/reference.py`).

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};

use edgemm::cache::CacheEvent;
use edgemm::{ArtifactError, Error, Input, InputError, Runtime, RuntimeOptions};

const MODEL: &str = "mobilenet_v3_small_w050_c10";

fn onnx_dir() -> PathBuf {
    common::workspace().join("models/tests/onnx")
}

fn onnx_bytes(model: &str) -> Vec<u8> {
    std::fs::read(onnx_dir().join(format!("{model}.onnx"))).unwrap()
}

#[derive(serde::Deserialize)]
struct Expected {
    photos: Vec<String>,
    mean: [f32; 3],
    std: [f32; 3],
    logits: Vec<Vec<f64>>,
}

fn expected(model: &str) -> Expected {
    serde_json::from_slice(
        &std::fs::read(onnx_dir().join(format!("{model}.expected.json"))).unwrap(),
    )
    .unwrap()
}

fn softmax(logits: &[f64]) -> Vec<f64> {
    let max = logits.iter().cloned().fold(f64::MIN, f64::max);
    let exp: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
    let sum: f64 = exp.iter().sum();
    exp.iter().map(|e| e / sum).collect()
}

/// Largest difference over largest reference value, as `models/tests/onnx.rs` measures.
fn relative_error(got: &[f32], want: &[f64]) -> f64 {
    let scale = want.iter().map(|w| w.abs()).fold(0.0, f64::max);
    let diff = got
        .iter()
        .zip(want)
        .map(|(g, w)| (f64::from(*g) - w).abs())
        .fold(0.0, f64::max);
    diff / scale
}

/// The photos as the NCHW batch ONNX Runtime was fed: pixels / 255, then (p - mean) / std.
fn nchw_batch(expected: &Expected) -> Vec<f32> {
    let mut data = Vec::new();
    for photo in &expected.photos {
        let img = image::open(onnx_dir().join(photo)).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (224, 224), "{photo}");
        for c in 0..3 {
            for y in 0..224 {
                for x in 0..224 {
                    let p = f32::from(img.get_pixel(x, y)[c]) / 255.0;
                    data.push((p - expected.mean[c]) / expected.std[c]);
                }
            }
        }
    }
    data
}

/// A config.pbtxt as Triton's ONNX examples write it, with the scheduling blocks edgemm
/// ignores.
fn config(model_dir: &str) -> String {
    format!(
        r#"# SageMaker + Triton, ONNX Runtime backend
name: "{model_dir}"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  {{
    name: "input"
    data_type: TYPE_FP32
    format: FORMAT_NCHW
    dims: [ 3, 224, 224 ]
  }}
]
output [
  {{
    name: "logits"
    data_type: TYPE_FP32
    dims: [ 10 ]
  }}
]
instance_group [ {{ count: 1, kind: KIND_CPU }} ]
dynamic_batching {{
  preferred_batch_size: [ 4, 8 ]
  max_queue_delay_microseconds: 100
}}
version_policy: {{ latest: {{ num_versions: 1 }} }}
parameters {{ key: "intra_op_thread_count" value: {{ string_value: "2" }} }}
"#
    )
}

/// A gzip'd tar of `files` (path, contents), as `tar czf` writes a Triton model directory.
fn tarball(path: &Path, files: &[(String, Vec<u8>)]) {
    let file = std::fs::File::create(path).unwrap();
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    for (name, data) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, name, data.as_slice()).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap().flush().unwrap();
}

/// `mobilenet/config.pbtxt` and `mobilenet/1/model.onnx`, plus `extra` files.
fn triton_files(config: &str, extra: &[(&str, &[u8])]) -> Files {
    let mut files = vec![
        (
            "mobilenet/config.pbtxt".to_string(),
            config.as_bytes().to_vec(),
        ),
        ("mobilenet/1/model.onnx".to_string(), onnx_bytes(MODEL)),
    ];
    files.extend(extra.iter().map(|(n, d)| (n.to_string(), d.to_vec())));
    files
}

fn runtime(dir: &Path) -> Runtime {
    let mut options = RuntimeOptions::new(dir.join("repo"));
    options.cache_dir = dir.join("cache");
    options.cache.event_log = 64;
    Runtime::new(options).unwrap()
}

fn repo(dir: &Path) -> PathBuf {
    let repo = dir.join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    repo
}

/// (1) Without an edgemm manifest: a tensor request shaped as config.pbtxt says answers
/// ONNX Runtime's logits (through a softmax) on the five photos, batched and one by one; the
/// logits themselves agree to a relative 1e-4. A version 2 beside version 1 is the one
/// served, and labels come from the output's label_filename.
#[test]
fn tensor_requests_answer_as_onnx_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let labels: Vec<String> = (0..10).map(|i| format!("class-{i}")).collect();
    let config = config("mobilenet").replace(
        "dims: [ 10 ]",
        "dims: [ 10 ]\n    label_filename: \"labels.txt\"",
    );
    let mut files = triton_files(
        &config,
        &[("mobilenet/labels.txt", labels.join("\n").as_bytes())],
    );
    // Version 1 is a model that would answer otherwise: Triton serves the highest version.
    files[1].1 = onnx_bytes("resnet_basic_tiny_c10");
    files.push(("mobilenet/2/model.onnx".into(), onnx_bytes(MODEL)));
    tarball(&repo(dir.path()).join("mobilenet.tar.gz"), &files);

    let runtime = runtime(dir.path());
    let expected = expected(MODEL);
    let batch = nchw_batch(&expected);
    let n = expected.photos.len();
    let response = runtime
        .invoke(
            "mobilenet.tar.gz",
            Input::Tensor {
                data: &batch,
                shape: &[n, 3, 224, 224],
            },
        )
        .unwrap();
    assert_eq!(response.predictions.len(), n);
    let model = runtime.model("mobilenet.tar.gz").unwrap();
    let origin = model.manifest.origin.as_ref().unwrap();
    assert_eq!(origin.format, "triton");
    assert!(
        origin.files.contains(&"mobilenet/2/model.onnx".to_string()),
        "{origin:?}"
    );
    assert!(!model.manifest.input.images);
    let per_item = 3 * 224 * 224;
    for (i, (photo, logits)) in expected.photos.iter().zip(&expected.logits).enumerate() {
        let want = softmax(logits);
        let p = &response.predictions[i];
        let err = relative_error(&p.probabilities, &want);
        let ort_best = (0..want.len())
            .max_by(|&a, &b| want[a].total_cmp(&want[b]))
            .unwrap();
        assert_eq!(p.top_k[0].index, ort_best, "{photo}");
        assert_eq!(p.top_k[0].label, labels[ort_best], "{photo}");

        let one = candle_core::Tensor::from_slice(
            &batch[i * per_item..(i + 1) * per_item],
            (1, 3, 224, 224),
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let got = model.forward(&one).unwrap().flatten_all().unwrap();
        let logit_err = relative_error(&got.to_vec1::<f32>().unwrap(), logits);
        println!(
            "{photo}: relative error probabilities {err:.2e} (batch {n}), logits {logit_err:.2e} (batch 1)"
        );
        assert!(err <= 1e-4, "{photo}: {err:e}");
        assert!(logit_err <= 1e-4, "{photo}: {logit_err:e}");
    }

    // A single item without the batch dimension is accepted too.
    let single = runtime
        .invoke(
            "mobilenet.tar.gz",
            Input::Tensor {
                data: &batch[..per_item],
                shape: &[3, 224, 224],
            },
        )
        .unwrap();
    assert_eq!(
        single.predictions[0].top_k[0].index,
        response.predictions[0].top_k[0].index
    );
}

/// A Keras model converted by tf2onnx takes NHWC: with `format: FORMAT_NHWC` and
/// `max_batch_size: 0` (dims give the whole shape), tensor requests are `[N, 224, 224, 3]` and
/// answer ONNX Runtime's probabilities (the model ends in a softmax), which was fed the same
/// NHWC batch.
#[test]
fn an_nhwc_model_takes_nhwc_tensors_as_its_config_says() {
    let model = "keras_vgg_tiny_c10";
    let dir = tempfile::tempdir().unwrap();
    let config = r#"
name: "vgg"
backend: "onnxruntime"
max_batch_size: 0
input [ { name: "input", data_type: TYPE_FP32, format: FORMAT_NHWC, dims: [ -1, 224, 224, 3 ] } ]
output [ { name: "logits", data_type: TYPE_FP32, dims: [ -1, 10 ] } ]
"#;
    tarball(
        &repo(dir.path()).join("vgg.tar.gz"),
        &[
            ("vgg/config.pbtxt".into(), config.as_bytes().to_vec()),
            ("vgg/1/model.onnx".into(), onnx_bytes(model)),
        ],
    );
    let runtime = runtime(dir.path());
    let expected = expected(model);
    let mut nhwc = Vec::new();
    for photo in &expected.photos {
        let img = image::open(onnx_dir().join(photo)).unwrap().to_rgb8();
        for (_, _, p) in img.enumerate_pixels() {
            for c in 0..3 {
                let v = f32::from(p[c]) / 255.0;
                nhwc.push((v - expected.mean[c]) / expected.std[c]);
            }
        }
    }
    let n = expected.photos.len();
    let response = runtime
        .invoke(
            "vgg.tar.gz",
            Input::Tensor {
                data: &nhwc,
                shape: &[n, 224, 224, 3],
            },
        )
        .unwrap();
    let manifest = &runtime.model("vgg.tar.gz").unwrap().manifest;
    assert_eq!(manifest.input.layout, edgemm::manifest::Layout::Nhwc);
    assert_eq!(manifest.output, edgemm::manifest::OutputKind::Probabilities);
    for (i, (photo, probabilities)) in expected.photos.iter().zip(&expected.logits).enumerate() {
        let err = relative_error(&response.predictions[i].probabilities, probabilities);
        println!("{model} {photo}: relative error {err:.2e}");
        assert!(err <= 1e-4, "{photo}: {err:e}");
    }
}

/// A config.pbtxt that only names the backend (Triton fills in the rest from the model, its
/// auto-complete): input and output come from the ONNX file.
#[test]
fn a_minimal_config_takes_input_and_output_from_the_model() {
    let dir = tempfile::tempdir().unwrap();
    tarball(
        &repo(dir.path()).join("minimal.tar.gz"),
        &triton_files("backend: \"onnxruntime\"\n", &[]),
    );
    let runtime = runtime(dir.path());
    let expected = expected(MODEL);
    let batch = nchw_batch(&expected);
    let response = runtime
        .invoke(
            "minimal.tar.gz",
            Input::Tensor {
                data: &batch[..3 * 224 * 224],
                shape: &[1, 3, 224, 224],
            },
        )
        .unwrap();
    let err = relative_error(
        &response.predictions[0].probabilities,
        &softmax(&expected.logits[0]),
    );
    assert!(err <= 1e-4, "{err:e}");
}

/// (2) With `edgemm.json` beside config.pbtxt (the same file `pack --onnx --manifest`
/// takes), an image request answers exactly as the `pack --onnx` artifact does: the same
/// weights file, bit for bit, and the same probabilities; both within 1e-5 of ONNX Runtime.
#[test]
fn an_edgemm_manifest_beside_it_gives_the_image_path_of_pack_onnx() {
    let dir = tempfile::tempdir().unwrap();
    let repo = repo(dir.path());
    let expected = expected(MODEL);
    let preprocessing = serde_json::json!({
        "labels": ["tench", "goldfish", "shark", "ray", "cock", "hen", "ostrich", "finch",
                   "robin", "jay"],
        "input": {
            "height": 224, "width": 224, "layout": "NCHW", "resize": "center-crop",
            "scale": 1.0 / 255.0, "mean": expected.mean, "std": expected.std,
            "tensor_values": "normalized"
        },
        "description": "seeded MobileNetV3-Small, for tests"
    });
    let json = serde_json::to_vec_pretty(&preprocessing).unwrap();
    tarball(
        &repo.join("triton.tar.gz"),
        &triton_files(
            &config("mobilenet"),
            &[("mobilenet/edgemm.json", json.as_slice())],
        ),
    );
    let base = dir.path().join("preprocessing.json");
    std::fs::write(&base, &json).unwrap();
    let out = common::cli()
        .args(["pack", "--onnx"])
        .arg(onnx_dir().join(format!("{MODEL}.onnx")))
        .arg("--manifest")
        .arg(&base)
        .arg("-o")
        .arg(repo.join("packed.tar.gz"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let runtime = runtime(dir.path());
    let triton = runtime.model("triton.tar.gz").unwrap();
    let packed = runtime.model("packed.tar.gz").unwrap();
    assert_eq!(
        triton.manifest.weights.sha256,
        packed.manifest.weights.sha256
    );
    assert_eq!(triton.manifest.labels, packed.manifest.labels);
    assert_eq!(triton.manifest.input, packed.manifest.input);
    assert_eq!(
        triton.manifest.origin.as_ref().unwrap().files,
        [
            "mobilenet/config.pbtxt",
            "mobilenet/1/model.onnx",
            "mobilenet/edgemm.json"
        ]
    );
    drop((triton, packed));
    for (photo, logits) in expected.photos.iter().zip(&expected.logits) {
        let bytes = std::fs::read(onnx_dir().join(photo)).unwrap();
        let a = runtime
            .invoke("triton.tar.gz", Input::Image(&bytes))
            .unwrap();
        let b = runtime
            .invoke("packed.tar.gz", Input::Image(&bytes))
            .unwrap();
        let (a, b) = (&a.predictions[0], &b.predictions[0]);
        assert_eq!(a.top_k, b.top_k, "{photo}");
        assert_eq!(a.probabilities, b.probabilities, "{photo}");
        let err = relative_error(&a.probabilities, &softmax(logits));
        println!(
            "{photo}: {} {:.3}, relative error to ONNX Runtime {err:.2e}",
            a.top_k[0].label, a.top_k[0].probability
        );
        assert!(err <= 1e-5, "{photo}: {err:e}");
    }
}

/// (3) Without an edgemm manifest an image request is a typed error that says why, and the
/// camera pipeline refuses the model up front; a later tensor request still answers.
#[test]
fn an_image_without_a_preprocessing_manifest_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    tarball(
        &repo(dir.path()).join("bare.tar.gz"),
        &triton_files(&config("mobilenet"), &[]),
    );
    let runtime = std::sync::Arc::new(runtime(dir.path()));
    let photo = std::fs::read(onnx_dir().join("cat_224.png")).unwrap();
    let err = runtime
        .invoke("bare.tar.gz", Input::Image(&photo))
        .unwrap_err();
    assert!(
        matches!(
            &err,
            Error::BadInput(InputError::NoPreprocessing { expected }) if expected.contains("[N, 3, 224, 224]")
        ),
        "{err:?}"
    );
    assert_eq!(edgemm::json::http_status(&err), 400);
    let message = err.to_string();
    assert!(message.contains("no preprocessing manifest"), "{message}");
    assert!(message.contains("edgemm.json"), "{message}");
    let Err(err) = edgemm::pipeline::RuntimeModel::new(runtime.clone(), "bare.tar.gz") else {
        panic!("the pipeline took a model without preprocessing");
    };
    assert!(matches!(
        err,
        Error::BadInput(InputError::NoPreprocessing { .. })
    ));
    let zeros = vec![0f32; 3 * 224 * 224];
    runtime
        .invoke(
            "bare.tar.gz",
            Input::Tensor {
                data: &zeros,
                shape: &[1, 3, 224, 224],
            },
        )
        .unwrap();
}

/// The conversion happens once: a second runtime over the same cache directory reuses the
/// extracted copy (no extraction event), and its copy is an ordinary artifact directory.
#[test]
fn the_converted_copy_is_reused_like_any_extracted_artifact() {
    let dir = tempfile::tempdir().unwrap();
    tarball(
        &repo(dir.path()).join("bare.tar.gz"),
        &triton_files(&config("mobilenet"), &[]),
    );
    let first = runtime(dir.path());
    first.cache().load("bare.tar.gz").unwrap();
    let events = first.cache().take_events();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, CacheEvent::Extract { .. })),
        "{events:?}"
    );
    drop(first);
    let copy = dir
        .path()
        .join("cache/models")
        .join(edgemm::repository::cache_dir_name("bare.tar.gz"));
    let mut names: Vec<String> = std::fs::read_dir(&copy)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    // `.edgemm-owner`: the proof that edgemm created the directory (issue #22, item 1).
    assert_eq!(
        names,
        [
            ".edgemm-owner",
            "edgemm-copy.json",
            "manifest.json",
            "model.safetensors"
        ]
    );
    let second = runtime(dir.path());
    second.cache().load("bare.tar.gz").unwrap();
    let events = second.cache().take_events();
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, CacheEvent::Extract { .. })),
        "{events:?}"
    );
}

/// An archive's files: path and contents.
type Files = Vec<(String, Vec<u8>)>;

/// Loads `files` as an artifact and returns the error.
fn load_error(files: &Files) -> ArtifactError {
    let dir = tempfile::tempdir().unwrap();
    tarball(&repo(dir.path()).join("bad.tar.gz"), files);
    let runtime = runtime(dir.path());
    match runtime.cache().load("bad.tar.gz") {
        Err(Error::BadArtifact { source, .. }) => {
            // Nothing half-converted is left under the final name.
            let copy = dir
                .path()
                .join("cache/models")
                .join(edgemm::repository::cache_dir_name("bad.tar.gz"));
            assert!(!copy.exists());
            source
        }
        Err(other) => panic!("not a bad-artifact error: {other:?}"),
        Ok(()) => panic!("a bad Triton directory loaded"),
    }
}

/// (4) A config.pbtxt that does not fit its ONNX model, or names another backend, or is not
/// text format, and a directory without a version: each a clear error naming the file (and
/// the line where there is one), never a panic.
#[test]
fn bad_triton_directories_are_clear_errors() {
    let good = config("mobilenet");
    let cases: Vec<(&str, Files, &[&str])> = vec![
        (
            "wrong input name",
            triton_files(&good.replace("name: \"input\"", "name: \"data\""), &[]),
            &[
                "mobilenet/config.pbtxt, line 7",
                "input \"data\" is not in the ONNX model: its input is named \"input\"",
            ],
        ),
        (
            "wrong input dims",
            triton_files(&good.replace("[ 3, 224, 224 ]", "[ 3, 256, 256 ]"), &[]),
            &[
                "line 7",
                "dims [3, 256, 256] do not match the ONNX model's input [3, 224, 224]",
                "max_batch_size 8 leaves the batch dimension out",
            ],
        ),
        (
            "batch dimension given with max_batch_size > 0",
            triton_files(&good.replace("[ 3, 224, 224 ]", "[ -1, 3, 224, 224 ]"), &[]),
            &["do not match"],
        ),
        (
            "wrong output dims",
            triton_files(&good.replace("dims: [ 10 ]", "dims: [ 1000 ]"), &[]),
            &["line 15", "output \"logits\" dims [1000]", "output [10]"],
        ),
        (
            "unsupported platform",
            triton_files(&good.replace("onnxruntime_onnx", "tensorrt_plan"), &[]),
            &[
                "mobilenet/config.pbtxt: platform \"tensorrt_plan\" is not supported",
                "onnxruntime_onnx",
            ],
        ),
        (
            "unsupported backend",
            triton_files(
                &good.replace("platform: \"onnxruntime_onnx\"", "backend: \"pytorch\""),
                &[],
            ),
            &["backend \"pytorch\" is not supported"],
        ),
        (
            "TYPE_FP16",
            triton_files(&good.replacen("TYPE_FP32", "TYPE_FP16", 1), &[]),
            &["data_type TYPE_FP16", "TYPE_FP32 inputs and outputs only"],
        ),
        (
            "garbage text",
            triton_files("this is not { a config", &[]),
            &[
                "mobilenet/config.pbtxt, line 1",
                "expected ':' after the field name this",
            ],
        ),
        (
            "unclosed block",
            triton_files(&good.replace("  }\n]\noutput", "]\noutput"), &[]),
            &[
                "mobilenet/config.pbtxt, line 11",
                "expected a field name or '}' to close the block opened on line 6, found ']'",
            ],
        ),
        (
            "binary config",
            triton_files("name: \"mobilenet\"\n\u{0}\u{1}", &[]),
            &["line 2", "unexpected character"],
        ),
        (
            "missing version directory",
            vec![(
                "mobilenet/config.pbtxt".to_string(),
                good.as_bytes().to_vec(),
            )],
            &["no version directory", "mobilenet/1/model.onnx"],
        ),
        (
            "model file not in the highest version",
            {
                let mut files = triton_files(&good, &[]);
                files.push(("mobilenet/3/model.plan".into(), b"TensorRT".to_vec()));
                files
            },
            &["mobilenet/3/model.onnx is missing", "model.plan"],
        ),
        (
            "name differs from the directory",
            triton_files(
                &good.replace("name: \"mobilenet\"", "name: \"resnet\""),
                &[],
            ),
            &[
                "line 2",
                "\"resnet\" is not the model directory's name \"mobilenet\"",
            ],
        ),
        (
            "not an ONNX file",
            {
                let mut files = triton_files(&good, &[]);
                files[1].1 = b"\x08\x07not a model".to_vec();
                files
            },
            &["mobilenet/1/model.onnx: ONNX import:"],
        ),
        (
            "label file with the wrong count",
            triton_files(
                &good.replace(
                    "dims: [ 10 ]",
                    "dims: [ 10 ]\n label_filename: \"labels.txt\"",
                ),
                &[("mobilenet/labels.txt", b"a\nb\nc\n")],
            ),
            &["mobilenet/labels.txt holds 3 labels for a model with 10 outputs"],
        ),
        (
            "label file missing",
            triton_files(
                &good.replace(
                    "dims: [ 10 ]",
                    "dims: [ 10 ]\n label_filename: \"labels.txt\"",
                ),
                &[],
            ),
            &["mobilenet/labels.txt, the output's label_filename, is not in the archive"],
        ),
        (
            "edgemm.json disagrees with config.pbtxt",
            triton_files(
                &good,
                &[(
                    "mobilenet/edgemm.json",
                    br#"{"input": {"height": 192, "width": 192}}"#,
                )],
            ),
            &["mobilenet/edgemm.json: input.height is 192", "say 224"],
        ),
        (
            "two model directories",
            {
                let mut files = triton_files(&good, &[]);
                files.push(("other/config.pbtxt".into(), good.as_bytes().to_vec()));
                files
            },
            &[
                "Triton model directory \"mobilenet, other\"",
                "2 model directories with a config.pbtxt",
            ],
        ),
    ];
    for (what, files, needles) in cases {
        let err = load_error(&files);
        let message = err.to_string();
        println!("{what}: {message}");
        for needle in needles {
            assert!(
                message.contains(needle),
                "{what}: {message:?} lacks {needle:?}"
            );
        }
    }
}

/// The extraction rules hold for Triton directories as for any artifact: a symbolic link
/// where the model file goes is refused before anything is converted.
#[test]
fn extraction_hardening_applies_to_triton_directories() {
    let dir = tempfile::tempdir().unwrap();
    let path = repo(dir.path()).join("link.tar.gz");
    let file = std::fs::File::create(&path).unwrap();
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let config = config("mobilenet");
    let mut header = tar::Header::new_gnu();
    header.set_size(config.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "mobilenet/config.pbtxt", config.as_bytes())
        .unwrap();
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Symlink);
    header.set_size(0);
    header.set_mode(0o777);
    tar.append_link(&mut header, "mobilenet/1/model.onnx", "/etc/passwd")
        .unwrap();
    tar.into_inner().unwrap().finish().unwrap();
    let runtime = runtime(dir.path());
    let err = runtime.cache().load("link.tar.gz").unwrap_err();
    assert!(
        matches!(
            &err,
            Error::BadArtifact {
                source: ArtifactError::UnsafeEntry { .. },
                ..
            }
        ),
        "{err:?}"
    );
}

/// (5) `edgemm inspect` on a Triton tarball lists the graph and says where it came from.
#[test]
fn inspect_lists_the_graph_of_a_triton_tarball() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mobilenet.tar.gz");
    tarball(&path, &triton_files(&config("mobilenet"), &[]));
    let text = common::inspect(&dir.path().join("cache"), &path);
    assert!(text.contains("architecture  graph ("), "{text}");
    assert!(text.contains("GFLOP per image at 224x224"), "{text}");
    assert!(text.contains("tensor requests only"), "{text}");
    assert!(
        text.contains("origin        triton, converted at extraction from mobilenet/config.pbtxt, mobilenet/1/model.onnx"),
        "{text}"
    );
    assert!(text.contains("(fused kernel)"), "{text}");
}

/// The command line against a repository holding Triton tarballs: `predict` with an edgemm
/// manifest answers ONNX Runtime's top class; `invoke` answers a TF Serving tensor request
/// without one, and refuses an image request with the typed error's message.
#[test]
fn predict_and_invoke_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let repo = repo(dir.path());
    let expected = expected(MODEL);
    let manifest = serde_json::json!({
        "input": { "mean": expected.mean, "std": expected.std }
    });
    tarball(
        &repo.join("with-manifest.tar.gz"),
        &triton_files(
            &config("mobilenet"),
            &[(
                "mobilenet/edgemm.json",
                serde_json::to_vec(&manifest).unwrap().as_slice(),
            )],
        ),
    );
    tarball(
        &repo.join("bare.tar.gz"),
        &triton_files(&config("mobilenet"), &[]),
    );
    let cache = dir.path().join("cache");

    let photo = &expected.photos[0];
    let out = common::cli()
        .arg("--cache-dir")
        .arg(&cache)
        .args(["predict", "--json", "--top-k", "1", "--repo"])
        .arg(&repo)
        .args(["--model", "with-manifest.tar.gz"])
        .arg(onnx_dir().join(photo))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let want = softmax(&expected.logits[0]);
    let best = (0..want.len())
        .max_by(|&a, &b| want[a].total_cmp(&want[b]))
        .unwrap();
    assert_eq!(line["top_k"][0]["label"], best.to_string(), "{line}");
    let p = line["top_k"][0]["probability"].as_f64().unwrap();
    assert!((p - want[best]).abs() <= 1e-5, "{p} vs {}", want[best]);

    // A TF Serving tensor request: one [3, 224, 224] instance.
    let batch = nchw_batch(&expected);
    let instance: Vec<Vec<Vec<f32>>> = (0..3)
        .map(|c| {
            (0..224)
                .map(|y| {
                    let row = c * 224 * 224 + y * 224;
                    batch[row..row + 224].to_vec()
                })
                .collect()
        })
        .collect();
    let body = dir.path().join("request.json");
    std::fs::write(
        &body,
        serde_json::to_vec(&serde_json::json!({ "instances": [instance] })).unwrap(),
    )
    .unwrap();
    let invoke = |model: &str, body: &Path| {
        common::cli()
            .arg("--cache-dir")
            .arg(&cache)
            .args(["invoke", "--repo"])
            .arg(&repo)
            .args(["--model", model, "--body"])
            .arg(body)
            .output()
            .unwrap()
    };
    let out = invoke("bare.tar.gz", &body);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let row: Vec<f32> = answer["predictions"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let err = relative_error(&row, &want);
    println!("invoke, tensor request: relative error to ONNX Runtime {err:.2e}");
    assert!(err <= 1e-4, "{err:e}");

    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD
        .encode(std::fs::read(onnx_dir().join(photo)).unwrap());
    let image_body = dir.path().join("image.json");
    std::fs::write(
        &image_body,
        serde_json::to_vec(&serde_json::json!({ "instances": [{ "b64": b64 }] })).unwrap(),
    )
    .unwrap();
    let out = invoke("bare.tar.gz", &image_body);
    assert!(!out.status.success());
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let message = answer["error"].as_str().unwrap();
    assert!(message.contains("no preprocessing manifest"), "{message}");
}
