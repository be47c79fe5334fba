//! Model-cache benchmark (issue #4): cold / warm-from-disk / hot latency of the shipped
//! models, the cost of a cache hit over calling the model directly, a Zipf(s = 1) workload over
//! 50 models with memory for 5, and the process RSS against the memory budget.
//!
//! Run: `cargo bench -p edgemm --bench cache` (add `-- --quick` for fewer repetitions).
//! Prints medians; these machines are noisy, so compare figures from one run only.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod common;

use candle_core::Device;
use edgemm::manifest::{
    InputSpec, Layout, Manifest, OutputKind, ResizeMode, TensorValues, WeightsSpec,
};
use edgemm::{
    ArtifactLimits, CacheOptions, Input, ModelCache, ModelRepository, Runtime, RuntimeOptions,
};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn percentile(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    v[((p / 100.0) * (v.len() - 1) as f64).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn shipped_repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/repository")
}

fn runtime(repo: &Path, cache_dir: &Path, cache: CacheOptions) -> Runtime {
    let mut options = RuntimeOptions::new(repo);
    options.cache_dir = cache_dir.to_path_buf();
    options.cache = cache;
    Runtime::new(options).unwrap()
}

/// A zero image of the model's input size, as a tensor request.
fn zero_input(runtime: &Runtime, name: &str) -> (Vec<f32>, Vec<usize>) {
    let lease = runtime.model(name).unwrap();
    let (h, w) = (lease.manifest.input.height, lease.manifest.input.width);
    (vec![0.0; h * w * 3], vec![h, w, 3])
}

/// Cold (extract + load + answer), warm-from-disk (load + answer) and hot (cache hit)
/// latency, each split into the cache's part (`timing.load_us`) and the whole request.
fn tiers(name: &str, runs: usize) {
    let repo = shipped_repository();
    let (data, shape) = {
        let probe_dir = tempfile::tempdir().unwrap();
        zero_input(
            &runtime(&repo, probe_dir.path(), CacheOptions::default()),
            name,
        )
    };
    let input = Input::Tensor {
        data: &data,
        shape: &shape,
    };
    let mut tiers: [(Vec<Duration>, Vec<Duration>); 3] = Default::default();
    for _ in 0..runs {
        let dir = tempfile::tempdir().unwrap();
        let mut record = |tier: usize, rt: &Runtime| {
            let t = Instant::now();
            let response = rt.invoke(name, input).unwrap();
            tiers[tier]
                .0
                .push(Duration::from_micros(response.timing.load_us));
            tiers[tier].1.push(t.elapsed());
        };
        let rt = runtime(&repo, dir.path(), CacheOptions::default());
        record(0, &rt);
        drop(rt);
        // A new process over the same cache directory: the copy is on disk.
        let rt = runtime(&repo, dir.path(), CacheOptions::default());
        record(1, &rt);
        for _ in 0..3 {
            record(2, &rt);
        }
    }
    let [cold, warm, hot] = tiers;
    println!("{name} (medians of {runs} runs; cache part = extraction + load, or the hit)");
    for (label, (cache, total)) in [("cold", cold), ("warm-from-disk", warm), ("hot", hot)] {
        println!(
            "  {label:<15} cache part {:>10}   whole request {:>10}",
            ms(median(cache)),
            ms(median(total))
        );
    }
}

/// Median cost of a cache hit (lease + release, no inference), against the model call alone.
fn hit_overhead(iterations: usize) {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(&shipped_repository(), dir.path(), CacheOptions::default());
    let name = "efficientnet-lite0.tar.gz";
    rt.cache().load(name).unwrap();
    let mut samples = Vec::with_capacity(101);
    for _ in 0..101 {
        let t = Instant::now();
        for _ in 0..iterations / 100 {
            drop(rt.cache().lease(name).unwrap());
        }
        samples.push(t.elapsed() / (iterations / 100) as u32);
    }
    let lease = median(samples);
    let (data, shape) = zero_input(&rt, name);
    let model = rt.model(name).unwrap();
    let mut direct = Vec::new();
    for _ in 0..11 {
        let (x, n) = model
            .batch(
                &[Input::Tensor {
                    data: &data,
                    shape: &shape,
                }],
                &Default::default(),
            )
            .unwrap();
        let t = Instant::now();
        model.probabilities(x, n).unwrap();
        direct.push(t.elapsed());
    }
    let direct = median(direct);
    println!(
        "cache hit overhead: {:.2} us per request (lease + release), {:.4}% of a direct \
         EfficientNet-Lite0 call ({})",
        lease.as_secs_f64() * 1e6,
        100.0 * lease.as_secs_f64() / direct.as_secs_f64(),
        ms(direct)
    );
}

fn tiny_manifest() -> Manifest {
    Manifest {
        format_version: edgemm::manifest::FORMAT_VERSION,
        architecture: "alexnet-small".into(),
        config: serde_json::json!({ "input_size": 8, "channels": [4, 4, 4], "hidden": 8 }),
        labels: (0..10).map(|i| i.to_string()).collect(),
        input: InputSpec {
            height: 8,
            width: 8,
            channels: 3,
            layout: Layout::Nhwc,
            resize: ResizeMode::Stretch,
            scale: 1.0 / 255.0,
            mean: [0.0; 3],
            std: [1.0; 3],
            tensor_values: TensorValues::Unit,
            images: true,
        },
        output: OutputKind::Logits,
        weights: WeightsSpec {
            dtype: "f32".into(),
            sha256: "0".repeat(64),
        },
        description: None,
        origin: None,
    }
}

/// Zipf(s = 1) requests over 50 small models, memory for 5.
fn zipf(requests: usize) {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    let manifest = tiny_manifest();
    let arch = edgemm_models::architecture("alexnet-small").unwrap();
    let specs = arch.tensor_specs(&manifest.config).unwrap();
    let model_bytes: u64 = specs.iter().map(|s| 4 * s.numel() as u64).sum();
    for i in 0..50 {
        let weights = repo.join("w.safetensors");
        let tensors = edgemm_models::init::seeded_weights(&specs, i, &Device::Cpu).unwrap();
        candle_core::safetensors::save(&tensors, &weights).unwrap();
        edgemm::artifact::pack(&manifest, &weights, &repo.join(format!("m{i:02}.tar.gz"))).unwrap();
        std::fs::remove_file(weights).unwrap();
    }
    let cache = ModelCache::new(
        ModelRepository::new(&repo),
        &dir.path().join("cache"),
        Device::Cpu,
        ArtifactLimits::default(),
        CacheOptions {
            memory_budget: 5 * model_bytes,
            ..CacheOptions::default()
        },
    )
    .unwrap();
    // Zipf(1): P(k) proportional to 1/k, by inverse CDF on a seeded LCG.
    let weights: Vec<f64> = (1..=50).map(|k| 1.0 / k as f64).collect();
    let total: f64 = weights.iter().sum();
    let mut cdf = Vec::with_capacity(50);
    let mut acc = 0.0;
    for w in &weights {
        acc += w / total;
        cdf.push(acc);
    }
    let mut x: u64 = 12345;
    let input: Vec<f32> = vec![0.5; 8 * 8 * 3];
    let mut latencies = Vec::with_capacity(requests);
    let start = Instant::now();
    for _ in 0..requests {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let u = (x >> 11) as f64 / (1u64 << 53) as f64;
        let k = cdf.iter().position(|&c| u < c).unwrap_or(49);
        let t = Instant::now();
        let lease = cache.lease(&format!("m{k:02}.tar.gz")).unwrap();
        let (data, n) = lease
            .batch(
                &[Input::Tensor {
                    data: &input,
                    shape: &[8, 8, 3],
                }],
                &Default::default(),
            )
            .unwrap();
        lease.probabilities(data, n).unwrap();
        drop(lease);
        latencies.push(t.elapsed());
    }
    let elapsed = start.elapsed();
    let m = cache.metrics();
    println!(
        "zipf(s=1) 50 models, memory for 5, {requests} requests: hit rate {:.1}%, {:.0} req/s, \
         p50 {:.0} us, p95 {:.0} us, loads {}",
        100.0 * m.model_cache_hit as f64 / m.requests as f64,
        requests as f64 / elapsed.as_secs_f64(),
        percentile(latencies.clone(), 50.0).as_secs_f64() * 1e6,
        percentile(latencies, 95.0).as_secs_f64() * 1e6,
        m.model_loading_time.count
    );
}

/// Loads `n` copies of EfficientNet-Lite0 (distinct names) under a budget for `budget_models`
/// and reports the process RSS against the budget.
fn rss(n: usize, budget_models: u64) {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    for i in 0..n {
        std::fs::copy(
            shipped_repository().join("efficientnet-lite0.tar.gz"),
            repo.join(format!("e{i}.tar.gz")),
        )
        .unwrap();
    }
    let model_bytes = 18_776_096;
    let before = common::rss_bytes();
    let rt = runtime(
        &repo,
        &dir.path().join("cache"),
        CacheOptions {
            memory_budget: budget_models * model_bytes,
            ..CacheOptions::default()
        },
    );
    for i in 0..n {
        rt.cache().load(&format!("e{i}.tar.gz")).unwrap();
    }
    let after = common::rss_bytes();
    let m = rt.cache().metrics();
    println!(
        "RSS after loading {n} EfficientNet-Lite0 copies with memory for {budget_models}: \
         +{:.1} MiB over the process baseline; budget {:.1} MiB, accounted {:.1} MiB, {} loaded",
        (after.saturating_sub(before)) as f64 / (1 << 20) as f64,
        m.memory_budget_bytes as f64 / (1 << 20) as f64,
        m.memory_used_bytes as f64 / (1 << 20) as f64,
        m.loaded_model_count
    );
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let runs = if quick { 3 } else { 11 };
    println!(
        "edgemm cache benchmark ({} threads for candle)",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    for name in ModelRepository::new(shipped_repository()).list().unwrap() {
        tiers(&name, runs);
    }
    hit_overhead(if quick { 10_000 } else { 100_000 });
    zipf(if quick { 2_000 } else { 20_000 });
    rss(8, 3);
}
