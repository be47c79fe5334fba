//! `edgemm-train sign`: a 10-class head on frozen EfficientNet-Lite0 features.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use edgemm_models::efficientnet_lite0::Config;
use edgemm_train::checkpoint::{self, Record};
use edgemm_train::efficientnet_lite0::EfficientNetLite0;
use edgemm_train::optim::{AdamW, Optimiser, Param, ParamsAdamW};
use edgemm_train::{alexnet_small::cross_entropy, LrSchedule, Rng};
use image::RgbImage;

use crate::data::{self, SplitRow};
use crate::AnyResult;

#[derive(clap::Args)]
pub struct Args {
    /// Data directory holding sign-digits/ and efficientnet-lite0/ [default: $EDGEMM_DATA, else ../shared/data]
    #[arg(long)]
    data: Option<PathBuf>,
    /// Manifest source: labels and the input spec that preprocessing follows
    #[arg(long, default_value = "models/manifests/sign-language.json")]
    manifest: PathBuf,
    /// Working directory: cached features, checkpoints, the packed weights
    #[arg(long, default_value = "target/edgemm-train/sign")]
    work: PathBuf,
    /// Artifact to write
    #[arg(long, default_value = "models/repository/sign-language.tar.gz")]
    out: PathBuf,
    #[arg(long, default_value_t = 120)]
    epochs: usize,
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Peak learning rate (AdamW), reached after one epoch of warm-up, then cosine decay
    #[arg(long, default_value_t = 2e-3)]
    lr: f64,
    /// AdamW's decoupled weight decay (on the head's weight matrix, not its bias)
    #[arg(long, default_value_t = 1e-2)]
    weight_decay: f64,
    /// Extra randomly cropped and brightness-jittered views of each training photo
    #[arg(long, default_value_t = 0)]
    augment: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// After the head, fine-tune blocks N..16, the head convolution and `_fc` (16: head only)
    #[arg(long, default_value_t = 8)]
    fine_tune_from: usize,
    #[arg(long, default_value_t = 6)]
    fine_tune_epochs: usize,
    #[arg(long, default_value_t = 32)]
    fine_tune_batch: usize,
    /// Peak learning rate (AdamW) of the fine-tuning phase
    #[arg(long, default_value_t = 2e-4)]
    fine_tune_lr: f64,
    /// While fine-tuning, shift each trunk output by up to this many cells (one cell of the
    /// 14x14 map is 16 input pixels, 7 pixels of a 100x100 photo), edges repeated
    #[arg(long, default_value_t = 1)]
    shift: usize,
    /// Dropout on the pooled features while fine-tuning
    #[arg(long, default_value_t = 0.2)]
    dropout: f64,
    /// Cross-validation run `I/K`: hold out fold I (1-based) of K folds of the training
    /// photos (stratified by digit, fixed by the seed), train on the others with the same
    /// recipe, and score the result on the held-out fold. The test split is not scored (its
    /// photos still pass through the cached backbone) and no artifact is written. Summed over I = 1..K, every training photo is scored once, which
    /// compares recipes on 1562 photos instead of val's 200.
    #[arg(long, value_parser = parse_fold)]
    cv_fold: Option<(usize, usize)>,
}

fn parse_fold(s: &str) -> Result<(usize, usize), String> {
    let err = || format!("expected I/K with 1 <= I <= K and K >= 2, got {s:?}");
    let (i, k) = s.split_once('/').ok_or_else(err)?;
    let (i, k) = (
        i.parse::<usize>().map_err(|_| err())?,
        k.parse::<usize>().map_err(|_| err())?,
    );
    if k < 2 || i == 0 || i > k {
        return Err(err());
    }
    Ok((i, k))
}

const FEATURES: usize = 1280;
const BLOCKS: usize = 16;

/// Everything the head trains on: one feature row per photo (plus augmented views of the
/// training photos) and its label.
struct Features {
    /// `[rows, 1280]`.
    x: Tensor,
    y: Vec<u32>,
    train: Vec<usize>,
    val: Vec<usize>,
    test: Vec<usize>,
    /// The held-out fold of a cross-validation run (`--cv-fold`); empty otherwise.
    heldout: Vec<usize>,
}

pub fn run(args: Args) -> AnyResult<()> {
    let started = Instant::now();
    let data = args.data.clone().unwrap_or_else(crate::default_data_dir);
    let manifest = data::read_manifest_source(&args.manifest)?;
    let backbone_path = data.join("efficientnet-lite0/efficientnet_lite0.safetensors");
    let backbone = candle_core::safetensors::load(&backbone_path, &Device::Cpu)
        .map_err(|e| format!("{}: {e}", backbone_path.display()))?;
    std::fs::create_dir_all(&args.work)?;

    let features = features(&args, &data, &manifest, &backbone)?;
    println!(
        "features: {} rows ({} train incl. augmented views, {} val, {} test) [{:.0} s]",
        features.y.len(),
        features.train.len(),
        features.val.len(),
        features.test.len(),
        started.elapsed().as_secs_f64()
    );

    let trained = Instant::now();
    let (varmap, best) = train_head(&args, &features)?;
    println!(
        "head: best val epoch {} (val accuracy {:.4}) [{:.1} s]",
        best.0,
        best.1,
        trained.elapsed().as_secs_f64()
    );

    let head = head_tensors(&varmap);
    // Phase 1's network: every backbone tensor unchanged, the new head in place of ImageNet's.
    let mut tensors: HashMap<String, Tensor> = backbone
        .into_iter()
        .filter(|(name, _)| !name.starts_with("_fc."))
        .collect();
    tensors.extend(head);
    let predict = |tensors: &HashMap<String, Tensor>, rows: &[usize]| -> AnyResult<Vec<u32>> {
        let x = features.x.index_select(&index(rows)?, 0)?;
        let logits = x
            .matmul(&tensors["_fc.weight"].t()?)?
            .broadcast_add(&tensors["_fc.bias"])?;
        Ok(logits.argmax(1)?.to_vec1::<u32>()?)
    };
    report("head only", &features, &manifest.labels, |rows| {
        predict(&tensors, rows)
    })?;

    if args.fine_tune_from < BLOCKS {
        let tuned = Instant::now();
        let trunk = trunk_outputs(&args, &data, &manifest, &tensors)?;
        let (tuned_tensors, best) = fine_tune(&args, &features, &trunk, &tensors)?;
        println!(
            "fine-tuned blocks {}..{BLOCKS}: best val epoch {} (val accuracy {:.4}) [{:.0} s]",
            args.fine_tune_from,
            best.0,
            best.1,
            tuned.elapsed().as_secs_f64()
        );
        let net = network(&tuned_tensors)?;
        report("fine-tuned", &features, &manifest.labels, |rows| {
            let x = trunk.index_select(&index(rows)?, 0)?;
            Ok(net
                .forward_tail(&x, args.fine_tune_from)?
                .argmax(1)?
                .to_vec1::<u32>()?)
        })?;
        if let Some(fold) = args.cv_fold {
            let logits = |x: &Tensor| Ok(net.forward_tail(x, args.fine_tune_from)?);
            return cv_score(fold, &features, &trunk, logits);
        }
        tensors = tuned_tensors;
    }
    if let Some(fold) = args.cv_fold {
        let logits = |x: &Tensor| -> AnyResult<Tensor> {
            Ok(x.matmul(&tensors["_fc.weight"].t()?)?
                .broadcast_add(&tensors["_fc.bias"])?)
        };
        return cv_score(fold, &features, &features.x, logits);
    }

    let weights = args.work.join("model.safetensors");
    candle_core::safetensors::save(&tensors, &weights)?;
    data::pack(&manifest, &weights, &args.out, started)
}

/// Prints the line a recipe comparison sums over folds: photos right on the held-out fold
/// and their mean cross-entropy. `inputs` holds a row per photo that `logits` maps to scores.
fn cv_score(
    (i, k): (usize, usize),
    f: &Features,
    inputs: &Tensor,
    logits: impl Fn(&Tensor) -> AnyResult<Tensor>,
) -> AnyResult<()> {
    let (mut right, mut loss_sum) = (0, 0.0);
    for rows in f.heldout.chunks(64) {
        let out = logits(&inputs.index_select(&index(rows)?, 0)?)?;
        let y: Vec<u32> = rows.iter().map(|&r| f.y[r]).collect();
        let y = Tensor::from_vec(y, rows.len(), &Device::Cpu)?;
        right += edgemm_train::correct(&out, &y)?;
        loss_sum += f64::from(cross_entropy(&out, &y)?.to_scalar::<f32>()?) * rows.len() as f64;
    }
    let n = f.heldout.len();
    println!(
        "cv fold {i}/{k}: held-out {right}/{n} right (accuracy {:.4}), mean loss {:.4}",
        right as f64 / n as f64,
        loss_sum / n as f64
    );
    Ok(())
}

fn index(rows: &[usize]) -> candle_core::Result<Tensor> {
    let rows: Vec<u32> = rows.iter().map(|&i| i as u32).collect();
    Tensor::from_vec(rows.clone(), rows.len(), &Device::Cpu)
}

fn head_tensors(varmap: &VarMap) -> HashMap<String, Tensor> {
    checkpoint::named_tensors(varmap).into_iter().collect()
}

/// A random crop of 80-100% of each side at a random place, and brightness and contrast
/// changed by up to 15%: the camera framing and lighting vary in these ways. Flips are left
/// out on purpose: a mirrored hand sign can be another sign.
fn augment(image: &RgbImage, rng: &mut Rng) -> RgbImage {
    let (w, h) = image.dimensions();
    let frac = |rng: &mut Rng| 0.8 + 0.2 * rng.uniform();
    let (cw, ch) = (
        ((w as f64 * frac(rng)) as u32).max(1),
        ((h as f64 * frac(rng)) as u32).max(1),
    );
    let x = rng.below((w - cw + 1) as usize) as u32;
    let y = rng.below((h - ch + 1) as usize) as u32;
    let mut crop = image::imageops::crop_imm(image, x, y, cw, ch).to_image();
    let brightness = (rng.uniform() * 2.0 - 1.0) * 0.15 * 255.0;
    let contrast = 1.0 + (rng.uniform() * 2.0 - 1.0) * 0.15;
    for p in crop.pixels_mut() {
        for c in p.0.iter_mut() {
            let v = (f64::from(*c) - 128.0) * contrast + 128.0 + brightness;
            *c = v.round().clamp(0.0, 255.0) as u8;
        }
    }
    crop
}

/// Computes the backbone's features of every photo once, or reads them back from the cache in
/// `work` when they were computed with the same photos, input spec and settings.
fn features(
    args: &Args,
    data: &Path,
    manifest: &edgemm::Manifest,
    backbone: &HashMap<String, Tensor>,
) -> AnyResult<Features> {
    let root = data.join("sign-digits");
    let rows = data::read_splits(&root.join("splits.csv"))?;
    let mut key = cache_key(data, &rows, manifest)?;
    key["augment"] = args.augment.into();
    key["seed"] = args.seed.into();
    let cache = Cached::new(&args.work, "features", "features", &key);

    // Row order: every photo in splits.csv order, then the augmented views of the training
    // photos, view by view.
    let mut y = Vec::new();
    let (mut train, mut val, mut test) = (Vec::new(), Vec::new(), Vec::new());
    for (i, row) in rows.iter().enumerate() {
        y.push(data::label_index(&manifest.labels, &row.label)?);
        match row.split.as_str() {
            "train" => train.push(i),
            "val" => val.push(i),
            "test" => test.push(i),
            other => return Err(format!("unknown split {other:?} for {}", row.path).into()),
        }
    }
    let originals = train.clone();
    let heldout = match args.cv_fold {
        Some(fold) => heldout_fold(&originals, &y, fold, args.seed),
        None => Vec::new(),
    };
    if args.cv_fold.is_some() && heldout.is_empty() {
        return Err("--cv-fold: the fold is empty (more folds than photos of a digit)".into());
    }
    train.retain(|i| !heldout.contains(i));
    for _ in 0..args.augment {
        for &i in &originals {
            // Views of held-out photos keep their rows (the cache is the same for every
            // fold) but are not trained on.
            if !heldout.contains(&i) {
                train.push(y.len());
            }
            y.push(y[i]);
        }
    }

    let x = match cache.load()? {
        Some(x) => x,
        None => {
            let x = extract(args, &root, &rows, &originals, manifest, backbone)?;
            cache.store(&x)?;
            x
        }
    };
    if x.dims() != [y.len(), FEATURES] {
        return Err(format!(
            "feature cache holds {:?}, expected [{}, {FEATURES}]",
            x.dims(),
            y.len()
        )
        .into());
    }
    Ok(Features {
        x,
        y,
        train,
        val,
        test,
        heldout,
    })
}

/// Fold `i` of `k` of the training photos: each digit's photos in an order shuffled by the
/// seed, dealt round-robin to the folds, so every fold holds the same share of every digit and
/// the folds do not depend on the recipe being compared.
fn heldout_fold(train: &[usize], y: &[u32], (i, k): (usize, usize), seed: u64) -> Vec<usize> {
    let mut fold = Vec::new();
    for digit in 0..10u32 {
        let photos: Vec<usize> = train.iter().copied().filter(|&r| y[r] == digit).collect();
        let order = edgemm_train::epoch_order(photos.len(), seed, 3000 + digit as usize);
        fold.extend(
            order
                .iter()
                .enumerate()
                .filter(|(n, _)| n % k == i - 1)
                .map(|(_, &o)| photos[o]),
        );
    }
    fold.sort_unstable();
    fold
}

fn extract(
    args: &Args,
    root: &Path,
    rows: &[SplitRow],
    originals: &[usize],
    manifest: &edgemm::Manifest,
    backbone: &HashMap<String, Tensor>,
) -> AnyResult<Tensor> {
    let vb = VarBuilder::from_tensors(backbone.clone(), DType::F32, &Device::Cpu);
    let net = EfficientNetLite0::new(&Config::imagenet(), vb)?;
    let spec = &manifest.input;
    let decode = |path: &str| -> AnyResult<RgbImage> {
        let file = root.join(path);
        let bytes = std::fs::read(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        Ok(edgemm::preprocess::decode_image(
            &bytes,
            &Default::default(),
        )?)
    };
    // Jobs: (row, view); view 0 is the photo itself.
    let mut jobs: Vec<(usize, usize)> = (0..rows.len()).map(|i| (i, 0)).collect();
    for view in 1..=args.augment {
        jobs.extend(originals.iter().map(|&i| (i, view)));
    }
    let bar = data::progress(jobs.len(), "features");
    let started = Instant::now();
    let mut out = Vec::with_capacity(jobs.len());
    for chunk in jobs.chunks(16) {
        let mut batch = Vec::new();
        for &(i, view) in chunk {
            let image = decode(&rows[i].path)?;
            if view == 0 {
                data::push_rgb(&image, spec, &mut batch);
            } else {
                let mut rng = Rng::derive(args.seed, (view * rows.len() + i) as u64);
                data::push_rgb(&augment(&image, &mut rng), spec, &mut batch);
            }
        }
        let x = Tensor::from_vec(
            batch,
            (chunk.len(), 3, spec.height, spec.width),
            &Device::Cpu,
        )?;
        out.push(net.features(&x)?);
        bar.inc(chunk.len() as u64);
        let done = out.len() * 16;
        if bar.is_hidden() && done % 320 == 0 {
            println!(
                "features: {done}/{} [{:.0} s]",
                jobs.len(),
                started.elapsed().as_secs_f64()
            );
        }
    }
    bar.finish_and_clear();
    Ok(Tensor::cat(&out, 0)?)
}

/// Trains `_fc` on the cached features; returns the weights of the best validation epoch.
fn train_head(args: &Args, f: &Features) -> AnyResult<(VarMap, (usize, f64))> {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let classes = 10;
    candle_nn::linear(FEATURES, classes, vb.pp("_fc"))?;
    let params: Vec<Param> = checkpoint::named_tensors(&varmap)
        .into_iter()
        .map(|(name, _)| {
            let var = varmap.data().lock().expect("VarMap lock")[&name].clone();
            Param {
                decay: name.ends_with("weight"),
                name,
                var,
            }
        })
        .collect();
    let mut opt = AdamW::new(
        params,
        ParamsAdamW {
            lr: args.lr,
            weight_decay: args.weight_decay,
            ..Default::default()
        },
    )?;
    let steps_per_epoch = f.train.len().div_ceil(args.batch);
    let schedule = LrSchedule::WarmupCosine {
        peak: args.lr,
        floor: args.lr * 0.01,
        warmup: steps_per_epoch,
        total: steps_per_epoch * args.epochs,
    };
    let ckpt_dir = args.work.join(format!("checkpoints{}", fold_suffix(args)));
    let mut best: (usize, f64, f64) = (0, -1.0, f64::INFINITY);
    let mut best_weights = head_tensors(&varmap);
    let mut first = 0;
    if let Some(record) = checkpoint::latest(&ckpt_dir)? {
        if record.log["settings"] == settings(args) {
            checkpoint::restore(&ckpt_dir, &record, &varmap, &mut opt)?;
            first = record.epoch;
            best = serde_json::from_value(record.log["best"].clone())?;
            let best_file = ckpt_dir.join("best.safetensors");
            best_weights = candle_core::safetensors::load(best_file, &Device::Cpu)?;
            println!("resumed from epoch {first}");
        }
    }
    let weight = varmap.data().lock().expect("VarMap lock")["_fc.weight"]
        .as_tensor()
        .clone();
    let bias = varmap.data().lock().expect("VarMap lock")["_fc.bias"]
        .as_tensor()
        .clone();
    let logits = |x: &Tensor| -> candle_core::Result<Tensor> {
        x.matmul(&weight.t()?)?.broadcast_add(&bias)
    };
    let labels = |rows: &[usize]| -> candle_core::Result<Tensor> {
        let y: Vec<u32> = rows.iter().map(|&i| f.y[i]).collect();
        Tensor::from_vec(y, rows.len(), &Device::Cpu)
    };
    std::fs::create_dir_all(&ckpt_dir)?;
    let val_x = f.x.index_select(&index(&f.val)?, 0)?;
    let val_y = labels(&f.val)?;
    for epoch in first..args.epochs {
        let order: Vec<usize> = edgemm_train::epoch_order(f.train.len(), args.seed, epoch)
            .into_iter()
            .map(|i| f.train[i])
            .collect();
        let (mut loss_sum, mut hits) = (0.0, 0);
        for rows in order.chunks(args.batch) {
            opt.set_learning_rate(schedule.at(opt.steps()));
            let x = f.x.index_select(&index(rows)?, 0)?;
            let y = labels(rows)?;
            let out = logits(&x)?;
            let loss = cross_entropy(&out, &y)?;
            loss_sum += loss.to_scalar::<f32>()? as f64 * rows.len() as f64;
            hits += edgemm_train::correct(&out, &y)?;
            opt.step(&loss.backward()?)?;
        }
        let val_out = logits(&val_x)?;
        let val_loss = cross_entropy(&val_out, &val_y)?.to_scalar::<f32>()? as f64;
        let val_acc = edgemm_train::correct(&val_out, &val_y)? as f64 / f.val.len() as f64;
        let train_acc = hits as f64 / order.len() as f64;
        let epoch_no = epoch + 1;
        if val_acc > best.1 || (val_acc == best.1 && val_loss < best.2) {
            best = (epoch_no, val_acc, val_loss);
            best_weights = head_tensors(&varmap)
                .into_iter()
                .map(|(k, t)| Ok((k, t.copy()?)))
                .collect::<candle_core::Result<_>>()?;
            candle_core::safetensors::save(&best_weights, ckpt_dir.join("best.safetensors"))?;
        }
        if epoch_no % 10 == 0 || epoch_no == args.epochs || epoch_no == 1 {
            println!(
                "epoch {epoch_no:>3}/{}: loss {:.4} train acc {train_acc:.4} | val loss {val_loss:.4} acc {val_acc:.4} | lr {:.2e}",
                args.epochs,
                loss_sum / order.len() as f64,
                schedule.at(opt.steps())
            );
        }
        checkpoint::save(
            &ckpt_dir,
            &varmap,
            &opt,
            &Record {
                epoch: epoch_no,
                steps: opt.steps(),
                log: serde_json::json!({
                    "settings": settings(args),
                    "best": best,
                    "train_loss": loss_sum / order.len() as f64,
                    "train_accuracy": train_acc,
                    "val_loss": val_loss,
                    "val_accuracy": val_acc,
                }),
            },
        )?;
    }
    let data = varmap.data().lock().expect("VarMap lock");
    for (name, t) in &best_weights {
        data[name].set(t)?;
    }
    drop(data);
    Ok((varmap, (best.0, best.1)))
}

/// A cross-validation run's checkpoints live apart from the others' (`-cv1of2`): a run
/// resumes from the latest checkpoint in its directory and keeps its best weights there, so
/// a fold must never find another fold's.
fn fold_suffix(args: &Args) -> String {
    args.cv_fold
        .map_or(String::new(), |(i, k)| format!("-cv{i}of{k}"))
}

/// What a checkpoint must agree with to be resumed.
fn settings(args: &Args) -> serde_json::Value {
    serde_json::json!({
        "epochs": args.epochs, "batch": args.batch, "lr": args.lr,
        "weight_decay": args.weight_decay, "augment": args.augment, "seed": args.seed,
        "cv_fold": args.cv_fold,
    })
}

/// Prints accuracy and per-class recall on val and test.
fn report(
    what: &str,
    f: &Features,
    labels: &[String],
    predict: impl Fn(&[usize]) -> AnyResult<Vec<u32>>,
) -> AnyResult<()> {
    // A cross-validation run scores its held-out fold, never the test split.
    let scored = if f.heldout.is_empty() {
        ("test", &f.test)
    } else {
        ("held-out", &f.heldout)
    };
    for (name, rows) in [("val", &f.val), scored] {
        let actual: Vec<u32> = rows.iter().map(|&i| f.y[i]).collect();
        // 64 photos at a time: the fine-tuned tail on hundreds of trunk outputs at once took
        // more memory than the machine had (a cross-validation run was killed).
        let mut predicted = Vec::with_capacity(rows.len());
        for chunk in rows.chunks(64) {
            predicted.extend(predict(chunk)?);
        }
        let (accuracy, recall) = data::recall_report(&predicted, &actual, labels);
        let recall: Vec<String> = recall.iter().map(|r| format!("{r:.3}")).collect();
        println!(
            "{what}: {name} accuracy {accuracy:.4} on {} photos; recall per class {}",
            rows.len(),
            recall.join(" ")
        );
    }
    Ok(())
}

/// The 10-class network over `tensors` (a VarMap's tensors while fine-tuning, so gradients
/// reach them). Built again after every optimiser step: the network folds batch norm and
/// slices depthwise kernels when it is built, so a network built once would not see updates.
struct Network {
    net: EfficientNetLite0,
    fc_weight: Tensor,
    fc_bias: Tensor,
}

impl Network {
    /// Logits from the trunk's output.
    fn forward_tail(&self, x: &Tensor, from: usize) -> edgemm_models::Result<Tensor> {
        let f = self.net.tail(x, from)?;
        Ok(f.matmul(&self.fc_weight.t()?)?
            .broadcast_add(&self.fc_bias)?)
    }
}

fn network(tensors: &HashMap<String, Tensor>) -> AnyResult<Network> {
    let vb = VarBuilder::from_tensors(tensors.clone(), DType::F32, &Device::Cpu);
    let mut net = EfficientNetLite0::new(&Config { classes: 10 }, vb)?;
    net.use_training_kernels();
    Ok(Network {
        net,
        fc_weight: tensors["_fc.weight"].clone(),
        fc_bias: tensors["_fc.bias"].clone(),
    })
}

/// The trunk's output (the input of block `--fine-tune-from`) for every photo, computed once
/// and cached like the features.
fn trunk_outputs(
    args: &Args,
    data: &Path,
    manifest: &edgemm::Manifest,
    tensors: &HashMap<String, Tensor>,
) -> AnyResult<Tensor> {
    let root = data.join("sign-digits");
    let rows = data::read_splits(&root.join("splits.csv"))?;
    let key = cache_key(data, &rows, manifest)?;
    let trunk_cache = |blocks: usize| {
        let mut key = key.clone();
        key["blocks"] = blocks.into();
        Cached::new(&args.work, &format!("trunk-{blocks}"), "trunk", &key)
    };
    let cache = trunk_cache(args.fine_tune_from);
    if let Some(trunk) = cache.load()? {
        return Ok(trunk);
    }
    let net = network(tensors)?;
    // A cached trunk that stops earlier is carried forward through the blocks in between,
    // which costs a small part of computing the trunk from the photos.
    for earlier in (1..args.fine_tune_from).rev() {
        let Some(cached) = trunk_cache(earlier).load()? else {
            continue;
        };
        let mut out = Vec::new();
        for start in (0..cached.dim(0)?).step_by(64) {
            let len = 64.min(cached.dim(0)? - start);
            out.push(net.net.blocks(
                &cached.narrow(0, start, len)?,
                earlier,
                args.fine_tune_from,
            )?);
        }
        let trunk = Tensor::cat(&out, 0)?;
        cache.store(&trunk)?;
        return Ok(trunk);
    }
    let spec = &manifest.input;
    let bar = data::progress(rows.len(), "trunk");
    let started = Instant::now();
    let mut out = Vec::with_capacity(rows.len());
    for (n, chunk) in rows.chunks(8).enumerate() {
        let mut batch = Vec::new();
        for row in chunk {
            let file = root.join(&row.path);
            let bytes = std::fs::read(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            let image = edgemm::preprocess::decode_image(&bytes, &Default::default())?;
            data::push_rgb(&image, spec, &mut batch);
        }
        let x = Tensor::from_vec(
            batch,
            (chunk.len(), 3, spec.height, spec.width),
            &Device::Cpu,
        )?;
        out.push(net.net.trunk(&x, args.fine_tune_from)?);
        bar.inc(chunk.len() as u64);
        if bar.is_hidden() && (n + 1) % 40 == 0 {
            println!(
                "trunk: {}/{} [{:.0} s]",
                (n + 1) * 8,
                rows.len(),
                started.elapsed().as_secs_f64()
            );
        }
    }
    bar.finish_and_clear();
    let trunk = Tensor::cat(&out, 0)?;
    cache.store(&trunk)?;
    Ok(trunk)
}

/// What every cached tensor depends on: the photos, the input spec and the backbone.
fn cache_key(
    data: &Path,
    rows: &[SplitRow],
    manifest: &edgemm::Manifest,
) -> AnyResult<serde_json::Value> {
    let backbone = data.join("efficientnet-lite0/efficientnet_lite0.safetensors");
    Ok(serde_json::json!({
        "photos": rows.iter().map(|r| &r.path).collect::<Vec<_>>(),
        "input": manifest.input,
        "backbone": edgemm::artifact::sha256_file(&backbone)?,
    }))
}

/// A tensor computed once and kept in the work directory as `NAME.safetensors`, beside
/// `NAME.json` holding the key (photos, input spec, backbone checksum, settings) it was
/// computed for; under another key it is computed again.
struct Cached {
    file: PathBuf,
    key: String,
    tensor: &'static str,
}

impl Cached {
    fn new(work: &Path, name: &str, tensor: &'static str, key: &serde_json::Value) -> Self {
        Self {
            file: work.join(format!("{name}.safetensors")),
            key: key.to_string(),
            tensor,
        }
    }

    fn load(&self) -> AnyResult<Option<Tensor>> {
        if std::fs::read_to_string(self.file.with_extension("json")).ok() != Some(self.key.clone())
        {
            return Ok(None);
        }
        let tensor = candle_core::safetensors::load(&self.file, &Device::Cpu)?
            .remove(self.tensor)
            .ok_or_else(|| format!("{} has no tensor {:?}", self.file.display(), self.tensor))?;
        Ok(Some(tensor))
    }

    fn store(&self, tensor: &Tensor) -> AnyResult<()> {
        candle_core::safetensors::save(
            &HashMap::from([(self.tensor.to_string(), tensor.clone())]),
            &self.file,
        )?;
        std::fs::write(self.file.with_extension("json"), &self.key)?;
        Ok(())
    }
}

/// Whether the fine-tuning phase trains tensor `name`: the last blocks, the head convolution
/// and its batch norm, `_fc`. Running statistics stay as ImageNet left them: with 1562 photos,
/// batch statistics would be noisy, and frozen statistics make the trained network exactly
/// the one the runtime builds (it folds batch norm with them).
fn fine_tuned(name: &str, from: usize) -> bool {
    if name.ends_with("running_mean") || name.ends_with("running_var") {
        return false;
    }
    if name.starts_with("_conv_head.") || name.starts_with("_bn1.") || name.starts_with("_fc.") {
        return true;
    }
    name.strip_prefix("_blocks.")
        .and_then(|rest| rest.split('.').next())
        .and_then(|i| i.parse::<usize>().ok())
        .is_some_and(|i| i >= from)
}

/// Phase 2: fine-tunes the tail on the cached trunk outputs, starting from phase 1's head;
/// returns the tensors of the best validation epoch.
fn fine_tune(
    args: &Args,
    f: &Features,
    trunk: &Tensor,
    start: &HashMap<String, Tensor>,
) -> AnyResult<(HashMap<String, Tensor>, (usize, f64))> {
    let from = args.fine_tune_from;
    let varmap = VarMap::new();
    let mut params = Vec::new();
    {
        let mut data = varmap.data().lock().expect("VarMap lock");
        for (name, t) in start {
            let var = candle_core::Var::from_tensor(t)?;
            if fine_tuned(name, from) {
                params.push(Param {
                    name: name.clone(),
                    // Decay the convolution and dense weights, not batch-norm scales or biases.
                    decay: name.ends_with(".weight") && !name.contains("_bn"),
                    var: var.clone(),
                });
            }
            data.insert(name.clone(), var);
        }
    }
    params.sort_by(|a, b| a.name.cmp(&b.name));
    let mut opt = AdamW::new(
        params,
        ParamsAdamW {
            lr: args.fine_tune_lr,
            weight_decay: 1e-2,
            ..Default::default()
        },
    )?;
    // The photos that fine-tuning sees: the originals of the training split (augmented
    // views exist only as pooled features).
    let train_rows: Vec<usize> = f
        .train
        .iter()
        .copied()
        .filter(|&i| i < trunk.dim(0).unwrap_or(0))
        .collect();
    let steps_per_epoch = train_rows.len().div_ceil(args.fine_tune_batch);
    let schedule = LrSchedule::WarmupCosine {
        peak: args.fine_tune_lr,
        floor: args.fine_tune_lr * 0.01,
        warmup: steps_per_epoch / 2,
        total: steps_per_epoch * args.fine_tune_epochs,
    };
    let ckpt_dir = args
        .work
        .join(format!("fine-tune-{from}{}", fold_suffix(args)));
    std::fs::create_dir_all(&ckpt_dir)?;
    let settings = serde_json::json!({
        "head": settings(args), "from": from, "epochs": args.fine_tune_epochs,
        "batch": args.fine_tune_batch, "lr": args.fine_tune_lr, "dropout": args.dropout,
        "shift": args.shift,
    });
    let mut first = 0;
    let mut best: (usize, f64, f64) = (0, -1.0, f64::INFINITY);
    let mut best_tensors = start.clone();
    if let Some(record) = checkpoint::latest(&ckpt_dir)? {
        if record.log["settings"] == settings {
            checkpoint::restore(&ckpt_dir, &record, &varmap, &mut opt)?;
            first = record.epoch;
            best = serde_json::from_value(record.log["best"].clone())?;
            best_tensors =
                candle_core::safetensors::load(ckpt_dir.join("best.safetensors"), &Device::Cpu)?;
            println!("fine-tuning resumed from epoch {first}");
        }
    }
    let labels = |rows: &[usize]| -> candle_core::Result<Tensor> {
        let y: Vec<u32> = rows.iter().map(|&i| f.y[i]).collect();
        Tensor::from_vec(y, rows.len(), &Device::Cpu)
    };
    let current = || -> HashMap<String, Tensor> { head_tensors(&varmap) };
    let val_x = trunk.index_select(&index(&f.val)?, 0)?;
    let val_y = labels(&f.val)?;
    for epoch in first..args.fine_tune_epochs {
        let epoch_started = Instant::now();
        let order: Vec<usize> =
            edgemm_train::epoch_order(train_rows.len(), args.seed, 1000 + epoch)
                .into_iter()
                .map(|i| train_rows[i])
                .collect();
        let mut rng = Rng::derive(args.seed, 2000 + epoch as u64);
        let (mut loss_sum, mut hits) = (0.0, 0);
        let bar = data::progress(steps_per_epoch, &format!("fine-tune epoch {}", epoch + 1));
        for rows in order.chunks(args.fine_tune_batch) {
            opt.set_learning_rate(schedule.at(opt.steps()));
            let net = network(&current())?;
            let x = shift(&trunk.index_select(&index(rows)?, 0)?, args.shift, &mut rng)?;
            let y = labels(rows)?;
            let pooled = net.net.tail(&x, from)?;
            let keep = 1.0 - args.dropout;
            let mask: Vec<f32> = (0..pooled.elem_count())
                .map(|_| {
                    if rng.uniform() < keep {
                        (1.0 / keep) as f32
                    } else {
                        0.0
                    }
                })
                .collect();
            let pooled = pooled.mul(&Tensor::from_vec(mask, pooled.shape(), &Device::Cpu)?)?;
            let out = pooled
                .matmul(&net.fc_weight.t()?)?
                .broadcast_add(&net.fc_bias)?;
            let loss = cross_entropy(&out, &y)?;
            loss_sum += f64::from(loss.to_scalar::<f32>()?) * rows.len() as f64;
            hits += edgemm_train::correct(&out, &y)?;
            opt.step(&loss.backward()?)?;
            bar.inc(1);
            if bar.is_hidden() && opt.steps() % 10 == 0 {
                println!(
                    "  step {}: loss {:.4} [{:.1} s/step]",
                    opt.steps(),
                    loss.to_scalar::<f32>()?,
                    epoch_started.elapsed().as_secs_f64() / bar.position() as f64
                );
            }
        }
        bar.finish_and_clear();
        let net = network(&current())?;
        let val_out = net.forward_tail(&val_x, from)?;
        let val_loss = f64::from(cross_entropy(&val_out, &val_y)?.to_scalar::<f32>()?);
        let val_acc = edgemm_train::correct(&val_out, &val_y)? as f64 / f.val.len() as f64;
        let epoch_no = epoch + 1;
        if val_acc > best.1 || (val_acc == best.1 && val_loss < best.2) {
            best = (epoch_no, val_acc, val_loss);
            best_tensors = current()
                .into_iter()
                .map(|(k, t)| Ok((k, t.copy()?)))
                .collect::<candle_core::Result<_>>()?;
            candle_core::safetensors::save(&best_tensors, ckpt_dir.join("best.safetensors"))?;
        }
        println!(
            "fine-tune epoch {epoch_no}/{}: loss {:.4} train acc {:.4} | val loss {val_loss:.4} acc {val_acc:.4} | {:.0} s",
            args.fine_tune_epochs,
            loss_sum / order.len() as f64,
            hits as f64 / order.len() as f64,
            epoch_started.elapsed().as_secs_f64()
        );
        checkpoint::save(
            &ckpt_dir,
            &varmap,
            &opt,
            &Record {
                epoch: epoch_no,
                steps: opt.steps(),
                log: serde_json::json!({ "settings": settings, "best": best, "val_accuracy": val_acc }),
            },
        )?;
    }
    Ok((best_tensors, (best.0, best.1)))
}

/// Translates every map of `[N, C, H, W]` by its own random offset in `-max..=max` cells along
/// each axis, repeating the edge: the framing of the photos varies by that much. The trunk is
/// translation-equivariant up to its padding, so this stands in for shifting the photo.
fn shift(x: &Tensor, max: usize, rng: &mut Rng) -> candle_core::Result<Tensor> {
    if max == 0 {
        return Ok(x.clone());
    }
    let (n, _, h, w) = x.dims4()?;
    let padded = x.pad_with_same(2, max, max)?.pad_with_same(3, max, max)?;
    let items = (0..n)
        .map(|i| {
            let dy = rng.below(2 * max + 1);
            let dx = rng.below(2 * max + 1);
            padded.narrow(0, i, 1)?.narrow(2, dy, h)?.narrow(3, dx, w)
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    Tensor::cat(&items, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Over I = 1..K the folds are disjoint, cover every training photo once, and hold every
    /// digit's photos in shares that differ by at most one.
    #[test]
    fn folds_partition_the_training_photos_by_digit() {
        // 80 photos of 10 digits, the training rows not contiguous (as in splits.csv).
        let y: Vec<u32> = (0..80).map(|i| (i * 7 % 10) as u32).collect();
        let train: Vec<usize> = (0..80).filter(|i| i % 3 != 0).collect();
        for k in [2, 3, 5] {
            let folds: Vec<Vec<usize>> = (1..=k)
                .map(|i| heldout_fold(&train, &y, (i, k), 1))
                .collect();
            let mut all: Vec<usize> = folds.concat();
            all.sort_unstable();
            assert_eq!(all, train, "K = {k}: folds must cover the photos once");
            for digit in 0..10 {
                let counts: Vec<usize> = folds
                    .iter()
                    .map(|f| f.iter().filter(|&&r| y[r] == digit).count())
                    .collect();
                let (lo, hi) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
                assert!(hi - lo <= 1, "K = {k}, digit {digit}: {counts:?}");
            }
            // Another seed deals other photos to fold 1.
            assert_ne!(heldout_fold(&train, &y, (1, k), 2), folds[0]);
        }
    }

    #[test]
    fn fold_argument_is_checked() {
        assert_eq!(parse_fold("2/3"), Ok((2, 3)));
        for bad in ["0/2", "3/2", "1/1", "1", "a/b", "1/2/3"] {
            assert!(parse_fold(bad).is_err(), "{bad}");
        }
    }
}
