//! The fuzz targets' committed corpus and past crashes, run through the same harnesses in the
//! ordinary test suite (issue #22): every file of `runtime/fuzz/corpus/TARGET/` and
//! `runtime/fuzz/regressions/TARGET/` must leave its harness without a panic, and the valid
//! seeds (`seed-*` files not named as a fault) must be accepted, so a harness that stopped
//! reaching its parser's accepting path fails here.

#[path = "../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod harness;

mod common;

use std::path::{Path, PathBuf};

/// Seeds that are near-misses of a valid input: the harness must refuse them.
const REFUSED_SEEDS: &[&str] = &[
    "seed-checksum.tar.gz",
    "seed-traversal.tar.gz",
    "seed-labels-short.json",
    "seed-version-2.json",
    "seed-wrong-shape.safetensors",
    "seed-truncated.safetensors",
    "seed-truncated.onnx",
    "seed-both-keys.json",
];

fn files(target: &str) -> Vec<PathBuf> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut files: Vec<PathBuf> = ["corpus", "regressions"]
        .iter()
        .map(|kind| fuzz.join(kind).join(target))
        .filter(|dir| dir.is_dir())
        .flat_map(|dir| std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()))
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

/// Runs every file of `target` through `harness`; returns how many it accepted.
fn run(target: &str, harness: impl Fn(&[u8]) -> bool) -> usize {
    let files = files(target);
    let seeds = files
        .iter()
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("seed-")
        })
        .count();
    assert!(
        seeds > 0,
        "no seeds for {target}: run runtime/fuzz/seeds.py"
    );
    let mut accepted = 0;
    for path in &files {
        let name = path.file_name().unwrap().to_str().unwrap();
        let ok = harness(&std::fs::read(path).unwrap());
        if name.starts_with("seed-") {
            let expected = !REFUSED_SEEDS.contains(&name);
            assert_eq!(
                ok, expected,
                "{target}/{name}: accepted {ok}, expected {expected}"
            );
        }
        accepted += usize::from(ok);
    }
    println!("{target}: {} files, {accepted} accepted", files.len());
    accepted
}

#[test]
fn artifact_corpus() {
    run("artifact", harness::artifact);
}

#[test]
fn manifest_corpus() {
    run("manifest", harness::manifest);
}

#[test]
fn safetensors_corpus() {
    run("safetensors", harness::safetensors);
}

#[test]
fn tf_serving_json_corpus() {
    let runtime = harness::runtime(&common::shipped_repository());
    run("tf_serving_json", |data| {
        harness::tf_serving_json(runtime, data)
    });
}

#[test]
fn image_corpus() {
    run("image", harness::image);
}

#[test]
fn frame_corpus() {
    run("frame", harness::frame);
}

#[test]
fn onnx_corpus() {
    run("onnx", harness::onnx);
}
