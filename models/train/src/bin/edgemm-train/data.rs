//! Reading manifests, splits and images the way the runtime reads them, metrics, progress.

use std::io::IsTerminal;
use std::path::Path;

use edgemm::manifest::{InputSpec, Manifest, WeightsSpec};
use edgemm::preprocess;
use image::RgbImage;
use indicatif::{ProgressBar, ProgressStyle};

use crate::AnyResult;

/// A manifest source file (`models/manifests/*.json`): a manifest whose `weights.sha256` is
/// filled in when it is packed.
/// Packs the trained weights into the artifact at `out` and reports it with the total time.
pub fn pack(
    manifest: &Manifest,
    weights: &Path,
    out: &Path,
    started: std::time::Instant,
) -> AnyResult<()> {
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let packed = edgemm::artifact::pack(manifest, weights, out)?;
    println!(
        "packed {} (weights sha256 {}) [total {:.0} s]",
        out.display(),
        packed.weights.sha256,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

pub fn read_manifest_source(path: &Path) -> AnyResult<Manifest> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let mut value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    // A placeholder checksum lets the source pass validation; `artifact::pack` computes the
    // real one.
    value["weights"] = serde_json::to_value(WeightsSpec {
        dtype: "f32".into(),
        sha256: "0".repeat(64),
    })?;
    Ok(Manifest::from_json(value.to_string().as_bytes())
        .map_err(|e| format!("{}: {e}", path.display()))?)
}

/// The runtime's resize and normalisation for an already decoded (e.g. augmented) image.
pub fn push_rgb(image: &RgbImage, spec: &InputSpec, out: &mut Vec<f32>) {
    preprocess::push_normalised_chw(&preprocess::resize(image, spec), spec, out);
}

/// One row of `splits.csv`.
pub struct SplitRow {
    pub path: String,
    pub label: String,
    pub split: String,
}

/// Reads `path,label,split` rows (with a header line).
pub fn read_splits(csv: &Path) -> AnyResult<Vec<SplitRow>> {
    let text =
        std::fs::read_to_string(csv).map_err(|e| format!("reading {}: {e}", csv.display()))?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').collect();
        let [path, label, split] = fields[..] else {
            return Err(format!("{}:{}: expected path,label,split", csv.display(), i + 1).into());
        };
        rows.push(SplitRow {
            path: path.into(),
            label: label.into(),
            split: split.into(),
        });
    }
    Ok(rows)
}

/// Index of `label` in the manifest's labels.
pub fn label_index(labels: &[String], label: &str) -> AnyResult<u32> {
    labels
        .iter()
        .position(|l| l == label)
        .map(|i| i as u32)
        .ok_or_else(|| format!("label {label:?} is not one of the manifest's labels").into())
}

/// A progress bar on a terminal; in a log file, nothing (the loops print a line per epoch).
pub fn progress(len: usize, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{what} [{{elapsed_precise}}] {{wide_bar}} {{pos}}/{{len}} {{msg}} (eta {{eta}})"
        ))
        .expect("a valid template"),
    );
    bar
}

/// Accuracy and per-class recall of `predicted` against `actual`.
pub fn recall_report(predicted: &[u32], actual: &[u32], labels: &[String]) -> (f64, Vec<f64>) {
    let k = labels.len();
    let mut hits = vec![0usize; k];
    let mut totals = vec![0usize; k];
    for (&p, &a) in predicted.iter().zip(actual) {
        totals[a as usize] += 1;
        if p == a {
            hits[a as usize] += 1;
        }
    }
    let accuracy = hits.iter().sum::<usize>() as f64 / actual.len().max(1) as f64;
    let recall = hits
        .iter()
        .zip(&totals)
        .map(|(&h, &t)| h as f64 / t.max(1) as f64)
        .collect();
    (accuracy, recall)
}
