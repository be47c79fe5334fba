//! Resident memory against the cache's memory budget (issue #22): for each shipped model and
//! for VGG16 (seeded weights, 528 MB of f32), N copies under distinct names are requested one
//! after another under a budget that holds K of them, so every request past the K-th evicts
//! one. Each scenario runs in a child process of its own (this binary with `--child`), so its
//! baseline is a fresh process and no scenario's freed heap counts against the next.
//!
//! The budget is K times what the cache accounts for one copy (a first child loads one and
//! reads `memory_used_bytes`: packed weights and the activation workspace of the input size),
//! plus half a copy. The figure of merit is the peak RSS over the process's baseline
//! (`VmHWM` after the runtime is made) beside that budget; it must stay within the budget
//! plus the margin below, or the bench exits with status 1.
//!
//! Run: `cargo bench -p edgemm --bench memory` (`-- --models cifar,vgg16` for some). VGG16's
//! artifact is written once into `target/bench-memory` (about 40 s and 0.5 GB of disk).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use edgemm::manifest::Manifest;
use edgemm::{CacheOptions, Input, Runtime, RuntimeOptions};

/// Allowed RSS over the budget: 32 MiB for what is not a model's (the request's input and
/// output, candle's and rayon's thread stacks, the allocator's free lists and the pages of
/// a `tar.gz` being read) plus 5% of the budget for the allocator keeping freed blocks of an
/// evicted model until the next load reuses them.
fn margin(budget: u64) -> u64 {
    (32 << 20) + budget / 20
}

struct Scenario {
    name: &'static str,
    copies: usize,
    budget_for: u64,
}

const SCENARIOS: [Scenario; 4] = [
    Scenario {
        name: "cifar",
        copies: 6,
        budget_for: 2,
    },
    Scenario {
        name: "sign-language",
        copies: 6,
        budget_for: 2,
    },
    Scenario {
        name: "efficientnet-lite0",
        copies: 6,
        budget_for: 2,
    },
    Scenario {
        name: "vgg16",
        copies: 3,
        budget_for: 1,
    },
];

/// What a child reports, one `key=value` per field on its last line.
#[derive(Debug, Default)]
struct Report {
    baseline: u64,
    peak: u64,
    end: u64,
    accounted: u64,
    loaded: u64,
    unloads: u64,
}

impl Report {
    fn parse(text: &str) -> Report {
        let mut r = Report::default();
        let line = text.lines().last().unwrap_or_default();
        for field in line.split_whitespace() {
            let (key, value) = field.split_once('=').expect("key=value");
            let value: u64 = value.parse().expect("a number");
            match key {
                "baseline" => r.baseline = value,
                "peak" => r.peak = value,
                "end" => r.end = value,
                "accounted" => r.accounted = value,
                "loaded" => r.loaded = value,
                "unloads" => r.unloads = value,
                other => panic!("unknown field {other}"),
            }
        }
        r
    }
}

/// The child: requests `copies` copies of `artifact` (hard links in a new repository) in
/// turn under `budget`, each with one zero image, and prints its report.
fn child(artifact: &Path, copies: usize, budget: u64) {
    let work = tempfile::tempdir().unwrap();
    let repo = work.path().join("repo");
    std::fs::create_dir(&repo).unwrap();
    for i in 0..copies {
        std::fs::hard_link(artifact, repo.join(format!("m{i}.tar.gz")))
            .or_else(|_| std::fs::copy(artifact, repo.join(format!("m{i}.tar.gz"))).map(drop))
            .unwrap();
    }
    let mut options = RuntimeOptions::new(&repo);
    options.cache_dir = work.path().join("cache");
    options.cache = CacheOptions {
        memory_budget: budget,
        ..CacheOptions::default()
    };
    let runtime = Runtime::new(options).unwrap();
    let baseline = common::rss_bytes();
    common::reset_peak_rss();
    for i in 0..copies {
        let name = format!("m{i}.tar.gz");
        let spec = runtime.model(&name).unwrap().manifest.input.clone();
        let data = vec![0.5f32; spec.height * spec.width * spec.channels];
        let shape = [spec.height, spec.width, spec.channels];
        runtime
            .invoke(
                &name,
                Input::Tensor {
                    data: &data,
                    shape: &shape,
                },
            )
            .unwrap();
    }
    let m = runtime.cache().metrics();
    println!(
        "baseline={baseline} peak={} end={} accounted={} loaded={} unloads={}",
        common::peak_rss_bytes().saturating_sub(baseline),
        common::rss_bytes().saturating_sub(baseline),
        m.memory_used_bytes,
        m.loaded_model_count,
        m.model_unloading_time.count,
    );
}

fn run_child(artifact: &Path, copies: usize, budget: u64) -> Report {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--child", &artifact.display().to_string()])
        .args([
            "--copies",
            &copies.to_string(),
            "--budget",
            &budget.to_string(),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child for {} failed: {}\n{stdout}",
        artifact.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Report::parse(&stdout)
}

/// VGG16 with seeded weights, packed once into `work`.
fn vgg16_artifact(work: &Path) -> PathBuf {
    let out = work.join("vgg16.tar.gz");
    if out.exists() {
        return out;
    }
    eprintln!(
        "writing a seeded VGG16 artifact to {} (once; ~40 s)",
        out.display()
    );
    std::fs::create_dir_all(work).unwrap();
    let manifest = Manifest::from_json(
        serde_json::json!({
            "format_version": 1,
            "architecture": "vgg16",
            "config": { "classes": 10 },
            "labels": (0..10).map(|i| format!("class {i}")).collect::<Vec<_>>(),
            "input": { "height": 224, "width": 224, "channels": 3, "layout": "NHWC" },
            "output": "logits",
            "weights": { "dtype": "f32", "sha256": "0".repeat(64) },
        })
        .to_string()
        .as_bytes(),
    )
    .unwrap();
    let arch = edgemm_models::architecture("vgg16").unwrap();
    let specs = arch.tensor_specs(&manifest.config).unwrap();
    let tensors =
        edgemm_models::init::seeded_weights(&specs, 7, &candle_core::Device::Cpu).unwrap();
    let weights = work.join("vgg16.safetensors");
    candle_core::safetensors::save(&tensors, &weights).unwrap();
    drop(tensors);
    let partial = work.join("vgg16.tar.gz.partial");
    edgemm::artifact::pack(&manifest, &weights, &partial).unwrap();
    std::fs::rename(&partial, &out).unwrap();
    std::fs::remove_file(weights).unwrap();
    out
}

fn main() {
    let value = common::flag;
    if let Some(artifact) = value("--child") {
        let copies = value("--copies").unwrap().parse().unwrap();
        let budget = value("--budget").unwrap().parse().unwrap();
        child(Path::new(&artifact), copies, budget);
        return;
    }
    let only = value("--models");
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let work = manifest_dir.join("../target/bench-memory");
    println!(
        "{:<20} {:>6} {:>5} {:>11} {:>11} {:>13} {:>13} {:>11} {:>7}",
        "model",
        "copies",
        "fit",
        "copy MiB",
        "budget MiB",
        "peak RSS MiB",
        "end RSS MiB",
        "margin MiB",
        "within"
    );
    let mut all_within = true;
    for s in &SCENARIOS {
        if only
            .as_ref()
            .is_some_and(|o| !o.split(',').any(|m| m == s.name))
        {
            continue;
        }
        let artifact = match s.name {
            "vgg16" => vgg16_artifact(&work),
            name => manifest_dir
                .join("../models/repository")
                .join(format!("{name}.tar.gz")),
        };
        let one = run_child(&artifact, 1, u64::MAX / 4).accounted;
        let budget = s.budget_for * one + one / 2;
        let r = run_child(&artifact, s.copies, budget);
        assert_eq!(r.loaded, s.budget_for, "{}: {r:?}", s.name);
        let within = r.peak <= budget + margin(budget);
        all_within &= within;
        println!(
            "{:<20} {:>6} {:>5} {:>11.1} {:>11.1} {:>13.1} {:>13.1} {:>11.1} {:>7}",
            s.name,
            s.copies,
            s.budget_for,
            common::mib(one),
            common::mib(budget),
            common::mib(r.peak),
            common::mib(r.end),
            common::mib(margin(budget)),
            if within { "yes" } else { "NO" },
        );
    }
    println!(
        "peak RSS: VmHWM over the baseline of a process that has made its runtime; budget: what \
         holds `fit` copies as the cache accounts them, plus half a copy; margin: 32 MiB + 5% \
         of the budget"
    );
    if !all_within {
        std::process::exit(1);
    }
}
