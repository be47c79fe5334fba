//! `edgemm-train cifar`: alexnet-small from scratch on CIFAR-10, checkpointed every epoch.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use edgemm_models::alexnet_small::Config;
use edgemm_train::alexnet_small::{cross_entropy, TrainAlexNetSmall};
use edgemm_train::checkpoint::{self, Record};
use edgemm_train::optim::{AdamW, Optimiser, ParamsAdamW, Sgd};
use edgemm_train::{LrSchedule, Rng};
use image::{Rgb, RgbImage};

use crate::data;
use crate::AnyResult;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum OptimiserKind {
    /// SGD, Nesterov momentum 0.9, coupled weight decay
    Sgd,
    /// AdamW (decoupled weight decay)
    Adamw,
}

#[derive(clap::Args)]
pub struct Args {
    /// Data directory holding cifar10/cifar10-jpeg.tar.gz [default: $EDGEMM_DATA, else ../shared/data]
    #[arg(long)]
    data: Option<PathBuf>,
    /// Manifest source: architecture config, labels, the input spec that preprocessing follows
    #[arg(long, default_value = "models/manifests/cifar.json")]
    manifest: PathBuf,
    /// Working directory: checkpoints (one per epoch) and the final weights. Starting again
    /// with the same directory resumes from its latest checkpoint.
    #[arg(long, default_value = "target/edgemm-train/cifar")]
    work: PathBuf,
    /// Artifact written when the last epoch is done
    #[arg(long, default_value = "models/repository/cifar.tar.gz")]
    out: PathBuf,
    #[arg(long, default_value_t = 20)]
    epochs: usize,
    #[arg(long, default_value_t = 128)]
    batch: usize,
    #[arg(long, value_enum, default_value_t = OptimiserKind::Sgd)]
    optimiser: OptimiserKind,
    /// Peak learning rate, after one epoch of linear warm-up; cosine decay to 1% at the end
    #[arg(long, default_value_t = 0.05)]
    lr: f64,
    #[arg(long, default_value_t = 5e-4)]
    weight_decay: f64,
    /// Dropout before each dense layer
    #[arg(long, default_value_t = 0.25)]
    dropout: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Stop each epoch after this many batches, write no checkpoint and no artifact: for
    /// measuring the time per batch
    #[arg(long)]
    time_batches: Option<usize>,
}

/// CIFAR-10 decoded into memory: 32x32 RGB images and label indices.
struct Split {
    images: Vec<RgbImage>,
    labels: Vec<u32>,
}

pub fn run(args: Args) -> AnyResult<()> {
    let started = Instant::now();
    let data = args.data.clone().unwrap_or_else(crate::default_data_dir);
    let manifest = data::read_manifest_source(&args.manifest)?;
    let config: Config = serde_json::from_value(manifest.config.clone())?;
    let archive = data.join("cifar10/cifar10-jpeg.tar.gz");
    let (train_set, test_set) = load(&archive, &manifest.labels)?;
    println!(
        "data: {} train, {} test images from {} [{:.0} s]",
        train_set.images.len(),
        test_set.images.len(),
        archive.display(),
        started.elapsed().as_secs_f64()
    );

    let varmap = VarMap::new();
    let mut net = TrainAlexNetSmall::new(&config, &varmap)?;
    net.dropout = args.dropout;
    let mut opt: Box<dyn Optimiser> = match args.optimiser {
        OptimiserKind::Sgd => Box::new(Sgd::new(
            net.params(),
            args.lr,
            0.9,
            args.weight_decay,
            true,
        )?),
        OptimiserKind::Adamw => Box::new(AdamW::new(
            net.params(),
            ParamsAdamW {
                lr: args.lr,
                weight_decay: args.weight_decay,
                ..Default::default()
            },
        )?),
    };
    let steps_per_epoch = train_set.images.len().div_ceil(args.batch);
    let schedule = LrSchedule::WarmupCosine {
        peak: args.lr,
        floor: args.lr * 0.01,
        warmup: steps_per_epoch,
        total: steps_per_epoch * args.epochs,
    };
    let settings = serde_json::json!({
        "config": manifest.config, "input": manifest.input, "epochs": args.epochs,
        "batch": args.batch, "optimiser": args.optimiser, "lr": args.lr,
        "weight_decay": args.weight_decay, "dropout": args.dropout, "seed": args.seed,
    });
    let ckpt_dir = args.work.join("checkpoints");
    let mut first = 0;
    let mut history = Vec::new();
    if args.time_batches.is_none() {
        if let Some(record) = checkpoint::latest(&ckpt_dir)? {
            if record.log["settings"] != settings {
                return Err(format!(
                    "{} holds a run with other settings ({}); use another --work directory",
                    ckpt_dir.display(),
                    record.log["settings"]
                )
                .into());
            }
            checkpoint::restore(&ckpt_dir, &record, &varmap, opt.as_mut())?;
            first = record.epoch;
            history = serde_json::from_value(record.log["history"].clone())?;
            println!("resumed from {} after epoch {first}", ckpt_dir.display());
        }
    }

    let spec = &manifest.input;
    for epoch in first..args.epochs {
        let epoch_started = Instant::now();
        let order = edgemm_train::epoch_order(train_set.images.len(), args.seed, epoch);
        // Augmentation and dropout draw from a stream of their own per epoch, so a resumed
        // run repeats what an uninterrupted one would have drawn.
        let mut rng = Rng::derive(args.seed, 1 << 32 | epoch as u64);
        let batches: Vec<&[usize]> = order
            .chunks(args.batch)
            .take(args.time_batches.unwrap_or(usize::MAX))
            .collect();
        let bar = data::progress(batches.len(), &format!("epoch {}", epoch + 1));
        let (mut loss_sum, mut hits, mut seen) = (0.0, 0, 0);
        for (b, rows) in batches.iter().enumerate() {
            let mut x = Vec::with_capacity(rows.len() * 3 * 32 * 32);
            for &i in rows.iter() {
                data::push_rgb(&crop_and_flip(&train_set.images[i], &mut rng), spec, &mut x);
            }
            let x = Tensor::from_vec(x, (rows.len(), 3, spec.height, spec.width), &Device::Cpu)?;
            let y: Vec<u32> = rows.iter().map(|&i| train_set.labels[i]).collect();
            let y = Tensor::from_vec(y, rows.len(), &Device::Cpu)?;
            opt.set_learning_rate(schedule.at(opt.steps()));
            let logits = net.forward(&x, true, &mut rng)?;
            let loss = cross_entropy(&logits, &y)?;
            opt.step(&loss.backward()?)?;
            loss_sum += f64::from(loss.to_scalar::<f32>()?) * rows.len() as f64;
            hits += edgemm_train::correct(&logits, &y)?;
            seen += rows.len();
            bar.inc(1);
            bar.set_message(format!(
                "loss {:.3} acc {:.3}",
                loss_sum / seen as f64,
                hits as f64 / seen as f64
            ));
            if bar.is_hidden() && (b + 1) % 50 == 0 {
                println!(
                    "  epoch {} batch {}/{}: loss {:.3} acc {:.3} [{:.1} ms/batch]",
                    epoch + 1,
                    b + 1,
                    batches.len(),
                    loss_sum / seen as f64,
                    hits as f64 / seen as f64,
                    epoch_started.elapsed().as_secs_f64() * 1e3 / (b + 1) as f64
                );
            }
        }
        bar.finish_and_clear();
        let train_seconds = epoch_started.elapsed().as_secs_f64();
        if let Some(n) = args.time_batches {
            println!(
                "timing: {n} batches of {} in {train_seconds:.1} s = {:.0} ms/batch; a full epoch ({steps_per_epoch} batches) takes about {:.0} s",
                args.batch,
                train_seconds * 1e3 / n as f64,
                train_seconds / n as f64 * steps_per_epoch as f64
            );
            return Ok(());
        }
        // The test set is watched, never selected on: the shipped model is the last epoch's.
        let test_accuracy = accuracy(&net, &test_set, spec)?;
        let line = serde_json::json!({
            "epoch": epoch + 1, "train_loss": loss_sum / seen as f64,
            "train_accuracy": hits as f64 / seen as f64, "test_accuracy": test_accuracy,
            "lr": schedule.at(opt.steps()), "seconds": epoch_started.elapsed().as_secs_f64(),
        });
        println!(
            "epoch {}/{}: loss {:.4} train acc {:.4} | test acc {test_accuracy:.4} | {train_seconds:.0} s training, {:.0} s in all",
            epoch + 1,
            args.epochs,
            loss_sum / seen as f64,
            hits as f64 / seen as f64,
            epoch_started.elapsed().as_secs_f64()
        );
        history.push(line);
        let saved = checkpoint::save(
            &ckpt_dir,
            &varmap,
            opt.as_ref(),
            &Record {
                epoch: epoch + 1,
                steps: opt.steps(),
                log: serde_json::json!({ "settings": settings, "history": history }),
            },
        )?;
        println!("  checkpoint {}", saved.display());
    }

    let weights = args.work.join("model.safetensors");
    checkpoint::save_weights(&varmap, &weights)?;
    data::pack(&manifest, &weights, &args.out, started)
}

/// Zero-pad 4 pixels on every side, cut a random 32x32 window, mirror it half the time.
fn crop_and_flip(image: &RgbImage, rng: &mut Rng) -> RgbImage {
    const PAD: i64 = 4;
    let (w, h) = image.dimensions();
    let dx = rng.below(2 * PAD as usize + 1) as i64 - PAD;
    let dy = rng.below(2 * PAD as usize + 1) as i64 - PAD;
    let flip = rng.below(2) == 1;
    RgbImage::from_fn(w, h, |x, y| {
        let sx = if flip {
            i64::from(w - 1 - x)
        } else {
            i64::from(x)
        } + dx;
        let sy = i64::from(y) + dy;
        if (0..i64::from(w)).contains(&sx) && (0..i64::from(h)).contains(&sy) {
            *image.get_pixel(sx as u32, sy as u32)
        } else {
            Rgb([0, 0, 0])
        }
    })
}

/// Eval-mode accuracy (running batch-norm statistics, no dropout).
fn accuracy(
    net: &TrainAlexNetSmall,
    set: &Split,
    spec: &edgemm::manifest::InputSpec,
) -> AnyResult<f64> {
    let mut hits = 0;
    let mut rng = Rng::new(0);
    let order: Vec<usize> = (0..set.images.len()).collect();
    for rows in order.chunks(500) {
        let mut x = Vec::with_capacity(rows.len() * 3 * 32 * 32);
        for &i in rows {
            data::push_rgb(&set.images[i], spec, &mut x);
        }
        let x = Tensor::from_vec(x, (rows.len(), 3, spec.height, spec.width), &Device::Cpu)?;
        let y: Vec<u32> = rows.iter().map(|&i| set.labels[i]).collect();
        let y = Tensor::from_vec(y, rows.len(), &Device::Cpu)?;
        hits += edgemm_train::correct(&net.forward(&x, false, &mut rng)?, &y)?;
    }
    Ok(hits as f64 / set.images.len() as f64)
}

/// Decodes every `train/<class>/*.jpg` and `test/<class>/*.jpg` of the archive with the
/// runtime's decoder, in the archive's order sorted by path (so the order does not depend on
/// how the archive was written).
fn load(archive: &Path, labels: &[String]) -> AnyResult<(Split, Split)> {
    let file = std::fs::File::open(archive).map_err(|e| format!("{}: {e}", archive.display()))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)));
    let mut train_items = Vec::new();
    let mut test_items = Vec::new();
    let bar = data::progress(60_000, "decoding CIFAR-10");
    for entry in tar.entries()? {
        let mut entry = entry?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry.path()?.into_owned();
        let parts: Vec<String> = path
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        let Some(at) = parts.iter().position(|p| p == "train" || p == "test") else {
            continue;
        };
        if parts.len() != at + 3 || !parts[at + 2].ends_with(".jpg") {
            continue;
        }
        let label = data::label_index(labels, &parts[at + 1])?;
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes)?;
        let image = edgemm::preprocess::decode_image(&bytes, &Default::default())
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let item = (path.clone(), image, label);
        if parts[at] == "train" {
            train_items.push(item);
        } else {
            test_items.push(item);
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let split = |mut items: Vec<(PathBuf, RgbImage, u32)>| {
        items.sort_by(|a, b| a.0.cmp(&b.0));
        let labels = items.iter().map(|i| i.2).collect();
        Split {
            images: items.into_iter().map(|i| i.1).collect(),
            labels,
        }
    };
    Ok((split(train_items), split(test_items)))
}
