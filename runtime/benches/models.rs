//! edgemm's side of the ONNX Runtime comparison (issue #8): batch-1 and batch-8 latency of each
//! model, warm (after untimed runs for `--warmup-ms`, default 500, at least one), median of
//! `--runs`, with the kernels `--kernels` names (default `fast`; see
//! `edgemm_models::Kernels`), each model's peak resident memory (load and runs, read from
//! `VmHWM` after resetting it; the weights are loaded from a mapped file, as the runtime
//! loads an artifact), and VGG16's effective GFLOP/s (direct-convolution FLOPs over
//! the whole forward time). Also writes, for `models/reference/bench_ort.py`, each
//! model's exact weights (safetensors), its architecture and config (JSON), and a check sample
//! (input and edgemm's logits) so the ONNX graph is verified to compute the same function.
//!
//! `--dtype f16` stores the weights in f16, as an artifact may (convolutions are repacked to
//! f32 at load, dense layers stay f16 and are converted as they are multiplied); ORT's graph
//! then holds the same values in f32.
//!
//! Run both sides at once with `bash runtime/benches/vs-onnxruntime.sh`.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use edgemm_models::Kernels;

struct Model {
    name: &'static str,
    /// The architecture and config, or, for an artifact, what its manifest says.
    architecture: String,
    config: serde_json::Value,
    size: (usize, usize),
    /// `None`: seeded random weights; `Some(artifact)`: the shipped artifact's weights.
    artifact: Option<&'static str>,
}

fn models() -> Vec<Model> {
    vec![
        Model {
            name: "alexnet-small",
            architecture: "alexnet-small".into(),
            config: serde_json::json!({}),
            size: (32, 32),
            artifact: None,
        },
        // The sign-language model: an EfficientNet-Lite0 backbone with a 10-class head.
        Model {
            name: "sign-language",
            architecture: String::new(),
            config: serde_json::Value::Null,
            size: (224, 224),
            artifact: Some("sign-language.tar.gz"),
        },
        Model {
            name: "vgg16",
            architecture: "vgg16".into(),
            config: serde_json::json!({ "classes": 10 }),
            size: (224, 224),
            artifact: None,
        },
    ]
}

/// The model's weights; for an artifact, also fills in its architecture and config.
fn weights(model: &mut Model, work: &Path) -> HashMap<String, Tensor> {
    match model.artifact {
        None => {
            let arch = edgemm_models::architecture(&model.architecture).unwrap();
            let specs = arch.tensor_specs(&model.config).unwrap();
            edgemm_models::init::seeded_weights(&specs, 7, &Device::Cpu).unwrap()
        }
        Some(artifact) => {
            let source = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../models/repository")
                .join(artifact);
            let extracted = edgemm::artifact::extract(
                artifact,
                &source,
                &work.join(format!("{}.extracted", model.name)),
                Default::default(),
            )
            .unwrap();
            model.architecture = extracted.manifest.architecture.clone();
            model.config = extracted.manifest.config.clone();
            candle_core::safetensors::load(extracted.weights_path(), &Device::Cpu).unwrap()
        }
    }
}

/// VGG16's thirteen convolutions at `h x w`, in FLOPs (two per multiply-add), as computed
/// directly: the yardstick for "effective" GFLOP/s, whatever algorithm runs.
fn vgg16_conv_flops((h, w): (usize, usize)) -> f64 {
    let groups = [(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)];
    let (mut c_in, mut flops) = (3usize, 0f64);
    for (g, (c_out, convs)) in groups.into_iter().enumerate() {
        let pixels = (h >> g) * (w >> g);
        for _ in 0..convs {
            flops += 2.0 * (pixels * c_in * c_out * 9) as f64;
            c_in = c_out;
        }
    }
    flops
}

/// Writes the check sample for `bench_ort.py`: a fixed input and edgemm's logits for it.
fn write_check_sample(
    net: &dyn edgemm_models::Classifier,
    name: &str,
    (h, w): (usize, usize),
    work: &Path,
) {
    let n = 2 * 3 * h * w;
    let input: Vec<f32> = edgemm_models::init::uniform("bench-input", n, 1)
        .map(|u| (2.0 * u - 1.0) as f32)
        .collect();
    let x = Tensor::from_vec(input, (2, 3, h, w), &Device::Cpu).unwrap();
    let logits = net.forward(&x).unwrap();
    let check: HashMap<String, Tensor> =
        [("input".to_string(), x), ("logits".to_string(), logits)].into();
    candle_core::safetensors::save(&check, work.join(format!("{name}.check.safetensors"))).unwrap();
}

fn median_ms(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = common::flag;
    let work = PathBuf::from(value("--work").unwrap_or_else(|| "target/bench-ort".into()));
    let runs: usize = value("--runs").map_or(20, |r| r.parse().unwrap());
    let warmup_ms: f64 = value("--warmup-ms").map_or(500.0, |r| r.parse().unwrap());
    let only = value("--models");
    let batches: Vec<usize> = value("--batches").map_or(vec![1, 8], |b| {
        b.split(',').map(|n| n.parse().unwrap()).collect()
    });
    // `--reuse`: time only, with the weights an earlier invocation wrote to `--work`.
    let reuse = args.iter().any(|a| a == "--reuse");
    let kernels = value("--kernels").map_or(Kernels::default(), |k| Kernels::parse(&k).unwrap());
    let dtype = match value("--dtype").as_deref() {
        None | Some("f32") => DType::F32,
        Some("f16") => DType::F16,
        Some(other) => panic!("--dtype {other}: f32 or f16"),
    };
    std::fs::create_dir_all(&work).unwrap();
    for mut model in models() {
        if only
            .as_ref()
            .is_some_and(|o| !o.split(',').any(|m| m == model.name))
        {
            continue;
        }
        let weights_file = work.join(format!("{}.safetensors", model.name));
        let meta_file = work.join(format!("{}.json", model.name));
        if reuse {
            // A later round: the weights and their description are the first round's.
            let meta: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&meta_file).unwrap()).unwrap();
            model.architecture = meta["architecture"].as_str().unwrap().to_string();
            model.config = meta["config"].clone();
            assert_eq!(
                meta["dtype"].as_str().unwrap_or("f32"),
                format!("{dtype:?}").to_lowercase(),
                "--dtype differs from the first round's"
            );
        } else {
            let tensors: HashMap<String, Tensor> = weights(&mut model, &work)
                .into_iter()
                .map(|(name, t)| (name, t.to_dtype(dtype).unwrap()))
                .collect();
            candle_core::safetensors::save(&tensors, &weights_file).unwrap();
            drop(tensors);
            let meta = serde_json::json!({
                "architecture": model.architecture,
                "config": model.config,
                "height": model.size.0,
                "width": model.size.1,
                "dtype": format!("{dtype:?}").to_lowercase(),
            });
            std::fs::write(&meta_file, meta.to_string()).unwrap();
        }

        let arch = edgemm_models::architecture(&model.architecture).unwrap();
        // Loaded as the runtime loads an artifact: from the mapped file, tensor by tensor,
        // by a builder of the stored dtype.
        common::reset_peak_rss();
        // SAFETY: the file was written above and nothing modifies it while it is mapped.
        let vb =
            unsafe { VarBuilder::from_mmaped_safetensors(&[&weights_file], dtype, &Device::Cpu) }
                .unwrap();
        let net = arch.build_with(&model.config, vb, kernels).unwrap();
        let (h, w) = model.size;
        if !reuse {
            write_check_sample(net.as_ref(), model.name, (h, w), &work);
        }

        for &batch in &batches {
            let x = Tensor::zeros((batch, 3, h, w), DType::F32, &Device::Cpu).unwrap();
            // Warm for a time, not a count: after loading, the first milliseconds of runs are
            // slower on a VM (alexnet-small's first timed runs were 1.3-2.5x its steady time,
            // ORT's too), however few runs fit in them.
            let warm = Instant::now();
            net.forward(&x).unwrap();
            while warm.elapsed().as_secs_f64() * 1e3 < warmup_ms {
                net.forward(&x).unwrap();
            }
            let times: Vec<f64> = (0..runs)
                .map(|_| {
                    let t = Instant::now();
                    net.forward(&x).unwrap();
                    t.elapsed().as_secs_f64() * 1e3
                })
                .collect();
            let median = median_ms(times.clone());
            let gflops = (model.architecture == "vgg16")
                .then(|| vgg16_conv_flops(model.size) * batch as f64 / median / 1e6);
            println!(
                "{}",
                serde_json::json!({
                    "runtime": "edgemm",
                    "kernels": format!("{kernels:?}"),
                    "dtype": format!("{dtype:?}").to_lowercase(),
                    "model": model.name,
                    "batch": batch,
                    "median_ms": median,
                    "runs": runs,
                    "warmup_ms": warmup_ms,
                    "times_ms": times,
                    "conv_gflops": gflops,
                    "peak_rss_mib": common::mib(common::peak_rss_bytes()),
                })
            );
        }
    }
}
