//! `edgemm eval`: a model of the repository against labelled images, through the runtime alone
//! (the same path a request takes), so the figures are the shipped artifact's.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use edgemm::{Input, Runtime};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::AnyResult;

/// Where the labelled images come from.
pub enum Source<'a> {
    /// `DIR/<label>/<image>`: one folder per class, named as the manifest's label.
    Folders(&'a Path),
    /// Rows `path,label,split` of a CSV with a header, `path` relative to `root`.
    Splits {
        csv: &'a Path,
        split: &'a str,
        root: &'a Path,
    },
}

#[derive(Serialize)]
struct ClassReport {
    label: String,
    precision: f64,
    recall: f64,
    support: usize,
}

#[derive(Serialize)]
struct Report {
    model: String,
    images: usize,
    correct: usize,
    accuracy: f64,
    classes: Vec<ClassReport>,
    /// `confusion[actual][predicted]`, in label order.
    confusion: Vec<Vec<usize>>,
    /// Images per second through decode, preprocessing and the network (loading excluded).
    throughput: f64,
    seconds: f64,
    batch: usize,
    /// The images predicted wrongly: path, actual and predicted label.
    mistakes: Vec<(String, String, String)>,
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .map(|e| matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png"))
        .unwrap_or(false)
}

/// `(image path, label)` pairs, sorted by path.
fn list(source: &Source<'_>) -> AnyResult<Vec<(PathBuf, String)>> {
    let mut items = Vec::new();
    match *source {
        Source::Folders(dir) => {
            let read = |d: &Path| {
                std::fs::read_dir(d).map_err(|e| format!("reading {}: {e}", d.display()))
            };
            for class in read(dir)? {
                let class = class?.path();
                if !class.is_dir() {
                    continue;
                }
                let label = class
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                for file in read(&class)? {
                    let file = file?.path();
                    if file.is_file() && is_image(&file) {
                        items.push((file, label.clone()));
                    }
                }
            }
        }
        Source::Splits { csv, split, root } => {
            let text = std::fs::read_to_string(csv)
                .map_err(|e| format!("reading {}: {e}", csv.display()))?;
            for (i, line) in text.lines().enumerate().skip(1) {
                let fields: Vec<&str> = line.trim().split(',').collect();
                match fields[..] {
                    [path, label, s] if s == split => items.push((root.join(path), label.into())),
                    [_, _, _] => {}
                    [""] => {}
                    _ => {
                        return Err(format!(
                            "{}:{}: expected path,label,split",
                            csv.display(),
                            i + 1
                        )
                        .into())
                    }
                }
            }
        }
    }
    if items.is_empty() {
        return Err("no labelled images found".into());
    }
    items.sort();
    Ok(items)
}

pub fn run(
    runtime: &Runtime,
    model: &str,
    source: &Source<'_>,
    batch: usize,
    as_json: bool,
) -> AnyResult<()> {
    let items = list(source)?;
    let loaded = runtime.model(model)?;
    let labels = &loaded.manifest.labels;
    let actual: Vec<usize> = items
        .iter()
        .map(|(path, label)| {
            labels.iter().position(|l| l == label).ok_or_else(|| {
                format!(
                    "{}: label {label:?} is not one of the model's labels ({})",
                    path.display(),
                    labels.join(", ")
                )
            })
        })
        .collect::<Result<_, _>>()?;

    let bar = if std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(items.len() as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "eval [{elapsed_precise}] {wide_bar} {pos}/{len} {per_sec} (eta {eta})",
            )
            .expect("a valid template"),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    let batch = batch.max(1);
    let started = Instant::now();
    let mut predicted = Vec::with_capacity(items.len());
    let limit = runtime.options().image_limits.max_bytes;
    for chunk in items.chunks(batch) {
        let bytes = chunk
            .iter()
            .map(|(path, _)| crate::read_bounded(path, limit))
            .collect::<Result<Vec<_>, _>>()?;
        let inputs: Vec<Input<'_>> = bytes.iter().map(|b| Input::Image(b)).collect();
        let response = runtime
            .invoke_batch(model, &inputs)
            .map_err(|e| format!("{} (first of the batch): {e}", chunk[0].0.display()))?;
        predicted.extend(response.predictions.iter().map(|p| p.top_k[0].index));
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();

    let k = labels.len();
    let mut confusion = vec![vec![0usize; k]; k];
    for (&a, &p) in actual.iter().zip(&predicted) {
        confusion[a][p] += 1;
    }
    let ratio = |n: usize, d: usize| if d == 0 { 0.0 } else { n as f64 / d as f64 };
    let classes: Vec<ClassReport> = (0..k)
        .map(|c| {
            let support = confusion[c].iter().sum();
            let predicted_c: usize = confusion.iter().map(|row| row[c]).sum();
            ClassReport {
                label: labels[c].clone(),
                precision: ratio(confusion[c][c], predicted_c),
                recall: ratio(confusion[c][c], support),
                support,
            }
        })
        .collect();
    let correct = (0..k).map(|c| confusion[c][c]).sum();
    let mistakes = items
        .iter()
        .zip(actual.iter().zip(&predicted))
        .filter(|(_, (a, p))| a != p)
        .map(|((path, _), (&a, &p))| {
            (
                path.display().to_string(),
                labels[a].clone(),
                labels[p].clone(),
            )
        })
        .collect();
    let report = Report {
        model: model.to_string(),
        images: items.len(),
        correct,
        accuracy: ratio(correct, items.len()),
        classes,
        confusion,
        throughput: ratio(items.len(), 1) / seconds.max(1e-9),
        seconds,
        batch,
        mistakes,
    };
    if as_json {
        out!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_text(&report, labels)?;
    }
    Ok(())
}

fn print_text(r: &Report, labels: &[String]) -> AnyResult<()> {
    out!("model       {}", r.model);
    out!(
        "accuracy    {:.4} ({}/{} images)",
        r.accuracy,
        r.correct,
        r.images
    );
    out!(
        "throughput  {:.1} images/s (batch {}, {:.1} s; decode, preprocess and inference)",
        r.throughput,
        r.batch,
        r.seconds
    );
    let width = labels.iter().map(|l| l.len()).max().unwrap_or(5).max(5);
    out!();
    out!(
        "{:<width$}  precision  recall  support",
        "class",
        width = width
    );
    for c in &r.classes {
        out!(
            "{:<width$}  {:>9.4}  {:>6.4}  {:>7}",
            c.label,
            c.precision,
            c.recall,
            c.support,
            width = width
        );
    }
    out!();
    out!("confusion matrix (rows: actual, columns: predicted, in the order above)");
    let cell = r
        .confusion
        .iter()
        .flatten()
        .max()
        .map(|m| m.to_string().len())
        .unwrap_or(1)
        .max(3);
    for (label, row) in labels.iter().zip(&r.confusion) {
        let cells: Vec<String> = row.iter().map(|n| format!("{n:>cell$}")).collect();
        out!("{label:<width$}  {}", cells.join(" "), width = width);
    }
    if !r.mistakes.is_empty() && r.mistakes.len() <= 50 {
        out!();
        out!("mistakes (image: actual -> predicted)");
        for (path, a, p) in &r.mistakes {
            out!("  {path}: {a} -> {p}");
        }
    }
    Ok(())
}
