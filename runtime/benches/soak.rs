//! Soak (issue #22): the camera pipeline at camera rate beside cache churn, for as long as
//! `--minutes` says (default 30), sampling the process's resident memory, open file
//! descriptors and threads every `--every-s` seconds (default 60).
//!
//! - The pipeline runs the shipped sign-language model on 640x480 RGB frames made from the
//!   shipped sign-digit photos (each held for a second, as a hand would be), pushed at
//!   `--fps` (default 30), one worker.
//! - A second thread asks, every `--churn-ms` (default 250), four more models in turn for a
//!   photo: the shipped CIFAR and EfficientNet-Lite0 models, each also under a second name.
//!   The memory budget holds the sign-language model and one of the four, the disk budget
//!   the extracted copies of the sign-language model and two of the four (the cache keeps
//!   the copies of loaded models), so every churn request unloads a model, deletes an
//!   extracted copy and extracts one again.
//!
//! At the end it compares the first third of the samples after the first (warm-up) with the
//! last third: resident memory may grow by at most 16 MiB plus 5% between their medians;
//! descriptors and threads may not grow at all between their maxima (a leak of either grows
//! without bound). It exits with status 1 if any grows more, or if a request failed.
//!
//! Run: `cargo bench -p edgemm --bench soak` (`-- --minutes 2` for a short check).

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgemm::manifest::InputSpec;
use edgemm::pipeline::frame::{Frame, PixelFormat};
use edgemm::pipeline::{Pipeline, PipelineEvent, PipelineOptions, RuntimeModel};
use edgemm::{preprocess, CacheOptions, ImageLimits, Input, Runtime, RuntimeOptions};

const PIPELINE_MODEL: &str = "sign-language.tar.gz";
/// The churn models, each with the shipped artifact it links to.
const CHURN_MODELS: [(&str, &str); 4] = [
    ("cifar.tar.gz", "cifar.tar.gz"),
    ("efficientnet-lite0.tar.gz", "efficientnet-lite0.tar.gz"),
    ("cifar-2.tar.gz", "cifar.tar.gz"),
    ("efficientnet-lite0-2.tar.gz", "efficientnet-lite0.tar.gz"),
];

#[derive(Clone, Copy, Debug)]
struct Sample {
    seconds: f64,
    rss: u64,
    fds: u64,
    threads: u64,
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

/// The sign-digit photos as 640x480 RGB camera frames.
fn frames(samples: &Path) -> Vec<Vec<u8>> {
    let spec: InputSpec =
        serde_json::from_value(serde_json::json!({ "height": 480, "width": 640 })).unwrap();
    let mut frames = Vec::new();
    for digit in 0..10 {
        let dir = samples.join(digit.to_string());
        let mut photos: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("jpg")))
            .collect();
        photos.sort();
        for photo in photos.iter().take(2) {
            let bytes = std::fs::read(photo).unwrap();
            let image = preprocess::decode_image(&bytes, &ImageLimits::default()).unwrap();
            frames.push(preprocess::resize(&image, &spec).into_raw());
        }
    }
    frames
}

fn main() {
    let value =
        |flag: &str, default: f64| common::flag(flag).map_or(default, |v| v.parse().unwrap());
    let minutes = value("--minutes", 30.0);
    let every = Duration::from_secs_f64(value("--every-s", 60.0));
    let fps = value("--fps", 30.0);
    let churn_every = Duration::from_secs_f64(value("--churn-ms", 250.0) / 1e3);

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let shipped = root.join("models/repository");
    let work = tempfile::tempdir().unwrap();
    let repository = work.path().join("repo");
    std::fs::create_dir(&repository).unwrap();
    let links = CHURN_MODELS
        .iter()
        .chain([&(PIPELINE_MODEL, PIPELINE_MODEL)]);
    for (name, artifact) in links.clone() {
        std::fs::hard_link(shipped.join(artifact), repository.join(name))
            .or_else(|_| std::fs::copy(shipped.join(artifact), repository.join(name)).map(drop))
            .unwrap();
    }

    // What each model holds in memory and on disk, from a runtime that loads them all.
    let mut options = RuntimeOptions::new(&repository);
    options.cache_dir = work.path().join("probe");
    let probe = Runtime::new(options.clone()).unwrap();
    for (name, _) in links {
        probe.model(name).unwrap();
    }
    let sizes: std::collections::HashMap<String, (u64, u64)> = probe
        .cache()
        .metrics()
        .models
        .into_iter()
        .map(|m| (m.name, (m.memory_bytes, m.disk_bytes)))
        .collect();
    drop(probe);
    std::fs::remove_dir_all(work.path().join("probe")).unwrap();
    // Room for the pipeline's model and the largest churn model, but not for a second churn
    // model beside it (half the smallest as slack); on disk, for one churn copy more.
    let churn = |f: fn(&(u64, u64)) -> u64| CHURN_MODELS.map(|(n, _)| f(&sizes[n]));
    let (memory, disk) = (churn(|s| s.0), churn(|s| s.1));
    let (min, max) = (
        |v: [u64; 4]| *v.iter().min().unwrap(),
        |v: [u64; 4]| *v.iter().max().unwrap(),
    );
    let memory_budget = sizes[PIPELINE_MODEL].0 + max(memory) + min(memory) / 2;
    let disk_budget = sizes[PIPELINE_MODEL].1 + 2 * max(disk) + min(disk) / 2;

    options.cache_dir = work.path().join("cache");
    options.cache = CacheOptions {
        memory_budget,
        disk_budget,
        ..CacheOptions::default()
    };
    let runtime = Arc::new(Runtime::new(options).unwrap());
    println!(
        "soak: {minutes} min, {fps} fps into {PIPELINE_MODEL}, a churn request every {} ms; \
         memory budget {:.1} MiB, disk budget {:.1} MiB",
        churn_every.as_millis(),
        common::mib(memory_budget),
        common::mib(disk_budget)
    );

    let frames = frames(&root.join("models/samples/sign-digits"));
    let changes = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let model = Arc::new(RuntimeModel::new(Arc::clone(&runtime), PIPELINE_MODEL).unwrap());
    let mut pipeline = {
        let (changes, errors) = (Arc::clone(&changes), Arc::clone(&errors));
        Pipeline::new(
            model,
            PipelineOptions::default(),
            move |event: &PipelineEvent<'_>| match event {
                PipelineEvent::SignChanged { .. } => {
                    changes.fetch_add(1, Ordering::Relaxed);
                }
                PipelineEvent::Error { error, .. } => {
                    eprintln!("pipeline: {error}");
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                PipelineEvent::Frame(_) => {}
            },
        )
        .unwrap()
    };

    let stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let (runtime, stop, errors) =
            (Arc::clone(&runtime), Arc::clone(&stop), Arc::clone(&errors));
        let photos = [
            std::fs::read(root.join("models/samples/cifar10/cat/0000.jpg")).unwrap(),
            std::fs::read(root.join("models/samples/imagenet/cat.png")).unwrap(),
        ];
        std::thread::spawn(move || {
            let mut requests = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let (name, artifact) = CHURN_MODELS[(requests % 4) as usize];
                let photo = &photos[usize::from(artifact.starts_with("efficientnet"))];
                if let Err(e) = runtime.invoke(name, Input::Image(photo)) {
                    eprintln!("churn: {e}");
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                requests += 1;
                std::thread::sleep(churn_every);
            }
            requests
        })
    };

    let start = Instant::now();
    let end = start + Duration::from_secs_f64(minutes * 60.0);
    let frame_every = Duration::from_secs_f64(1.0 / fps);
    let mut next_frame = start;
    let mut next_sample = start + every;
    let mut samples = Vec::new();
    println!(
        "{:>7} {:>9} {:>5} {:>8} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8} {:>7}",
        "minutes",
        "RSS MiB",
        "fds",
        "threads",
        "pushed",
        "processed",
        "dropped",
        "extracts",
        "loads",
        "unloads",
        "errors"
    );
    let mut sequence = 0usize;
    while Instant::now() < end {
        let pixels = &frames[(sequence / fps as usize) % frames.len()];
        let frame = Frame::packed(pixels, 640, 480, 640 * 3, PixelFormat::Rgb24, 0);
        pipeline.push(&frame).unwrap();
        sequence += 1;
        next_frame += frame_every;
        let now = Instant::now();
        if now >= next_sample {
            let sample = Sample {
                seconds: (now - start).as_secs_f64(),
                rss: common::rss_bytes(),
                fds: common::open_fds(),
                threads: common::threads(),
            };
            let stats = pipeline.stats();
            let m = runtime.cache().metrics();
            println!(
                "{:>7.1} {:>9.1} {:>5} {:>8} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8} {:>7}",
                sample.seconds / 60.0,
                common::mib(sample.rss),
                sample.fds,
                sample.threads,
                stats.frames_pushed,
                stats.frames_processed,
                stats.frames_dropped,
                m.model_downloading_time.count,
                m.model_loading_time.count,
                m.model_unloading_time.count,
                errors.load(Ordering::Relaxed),
            );
            samples.push(sample);
            next_sample += every;
        }
        if let Some(wait) = next_frame.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let churn_requests = churn.join().unwrap();
    pipeline.close();
    let stats = pipeline.stats();
    let m = runtime.cache().metrics();
    let errors = errors.load(Ordering::Relaxed);
    println!(
        "frames: {} pushed, {} processed ({:.1}/s), {} dropped; sign changes {}; churn requests \
         {churn_requests}; extracts {}, loads {}, unloads {}; errors {errors}",
        stats.frames_pushed,
        stats.frames_processed,
        stats.frames_processed as f64 / (minutes * 60.0),
        stats.frames_dropped,
        changes.load(Ordering::Relaxed),
        m.model_downloading_time.count,
        m.model_loading_time.count,
        m.model_unloading_time.count,
    );

    // The first sample is the warm-up; compare the first and last thirds of the rest.
    let steady = samples.get(1..).unwrap_or_default();
    if steady.len() < 3 {
        println!("too few samples to judge ({}); run longer", steady.len());
        std::process::exit(i32::from(errors > 0));
    }
    let third = steady.len() / 3;
    let (first, last) = (&steady[..third], &steady[steady.len() - third..]);
    let rss = |s: &[Sample]| median(s.iter().map(|s| s.rss).collect());
    let max = |s: &[Sample], f: fn(&Sample) -> u64| s.iter().map(f).max().unwrap();
    let (rss_a, rss_b) = (rss(first), rss(last));
    let rss_allowed = rss_a + (16 << 20) + rss_a / 20;
    let (fds_a, fds_b) = (max(first, |s| s.fds), max(last, |s| s.fds));
    let (thr_a, thr_b) = (max(first, |s| s.threads), max(last, |s| s.threads));
    println!(
        "RSS median {:.1} -> {:.1} MiB (allowed {:.1}); fds max {fds_a} -> {fds_b}; threads max \
         {thr_a} -> {thr_b}",
        common::mib(rss_a),
        common::mib(rss_b),
        common::mib(rss_allowed)
    );
    let flat = rss_b <= rss_allowed && fds_b <= fds_a && thr_b <= thr_a;
    println!(
        "{}",
        if flat && errors == 0 {
            "flat: yes"
        } else {
            "flat: NO"
        }
    );
    if !flat || errors > 0 {
        std::process::exit(1);
    }
}
