//! The `edgemm` command: pack, inspect, predict, invoke, eval.

/// `println!` that returns the write error instead of panicking, so `edgemm inspect | head`
/// ends quietly when the reader goes away (see `main`).
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)?
    }};
}

mod eval;

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use edgemm::{artifact, json, Input, Runtime, RuntimeOptions};

#[derive(Parser)]
#[command(
    name = "edgemm",
    version,
    about = "On-device inference for SageMaker-style model artifacts"
)]
struct Cli {
    /// Where artifacts are extracted [default: $EDGEMM_CACHE_DIR, else ~/.cache/edgemm]
    #[arg(long, global = true)]
    cache_dir: Option<PathBuf>,
    /// Memory budget for loaded models, MiB
    #[arg(long, global = true, default_value_t = 1024)]
    memory_budget_mb: u64,
    /// Disk budget for extracted copies, MiB
    #[arg(long, global = true, default_value_t = 4096)]
    disk_budget_mb: u64,
    /// Unload each model after its request (SageMaker's ModelCacheSetting=Disabled)
    #[arg(long, global = true)]
    no_model_cache: bool,
    /// Print the cache metrics (JSON, SageMaker MME names) to stderr at the end
    #[arg(long, global = true)]
    stats: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Pack a manifest and a safetensors file into NAME.tar.gz (sha256 and dtype filled in)
    Pack {
        /// manifest.json (weights.sha256 may be left out; it is computed)
        #[arg(long)]
        manifest: PathBuf,
        /// model.safetensors to pack
        #[arg(
            long,
            conflicts_with = "random_seed",
            required_unless_present = "random_seed"
        )]
        weights: Option<PathBuf>,
        /// Instead of --weights, pack seeded random weights (for trying the plumbing)
        #[arg(long)]
        random_seed: Option<u64>,
        /// Output artifact, e.g. models/repository/my-model.tar.gz
        #[arg(short, long)]
        output: PathBuf,
        /// Store every tensor in this dtype (f16 halves the artifact and the dense layers'
        /// memory; the network still computes in f32) [default: as the weights file stores]
        #[arg(long, value_parser = ["f32", "f16", "bf16"])]
        dtype: Option<String>,
    },
    /// Verify an artifact and show its manifest, tensors, sizes and checksum
    Inspect {
        artifact: PathBuf,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Classify image files (PNG, JPEG) with a model of the repository
    Predict {
        /// Model repository directory
        #[arg(long, default_value = "models/repository")]
        repo: PathBuf,
        /// Model name (the artifact's path in the repository, e.g. efficientnet-lite0.tar.gz)
        #[arg(long, short)]
        model: String,
        #[arg(long, default_value_t = 3)]
        top_k: usize,
        /// Print the full response as JSON lines
        #[arg(long)]
        json: bool,
        #[arg(required = true)]
        images: Vec<PathBuf>,
    },
    /// Show the model cache as JSON: every model of the repository, what is on disk, metrics
    Stats {
        #[arg(long, default_value = "models/repository")]
        repo: PathBuf,
        /// Load these models first (e.g. to see their memory size)
        #[arg(long)]
        load: Vec<String>,
    },
    /// Answer a TF Serving JSON request ({"instances": ...} or {"inputs": ...})
    Invoke {
        #[arg(long, default_value = "models/repository")]
        repo: PathBuf,
        #[arg(long, short)]
        model: String,
        /// Request body file; `-` reads standard input
        #[arg(long, default_value = "-")]
        body: PathBuf,
    },
    /// Measure a model on labelled images: accuracy, per-class precision and recall, confusion
    /// matrix, throughput
    #[command(after_help = "Examples:\n  \
        edgemm eval --model sign-language.tar.gz models/samples/sign-digits\n  \
        edgemm eval --model sign-language.tar.gz --splits ../shared/data/sign-digits/splits.csv --split test")]
    Eval {
        #[arg(long, default_value = "models/repository")]
        repo: PathBuf,
        #[arg(long, short)]
        model: String,
        /// A directory of class folders, each named as one of the model's labels
        #[arg(conflicts_with = "splits", required_unless_present = "splits")]
        dir: Option<PathBuf>,
        /// A CSV of `path,label,split` rows (with a header line)
        #[arg(long, requires = "split")]
        splits: Option<PathBuf>,
        /// Which split of --splits to measure, e.g. test
        #[arg(long, requires = "splits")]
        split: Option<String>,
        /// What the CSV's paths are relative to [default: the CSV's directory]
        #[arg(long, requires = "splits")]
        root: Option<PathBuf>,
        /// Images per invocation
        #[arg(long, default_value_t = 16)]
        batch: usize,
        /// Print the report as JSON
        #[arg(long)]
        json: bool,
    },
}

/// The runtime options the global flags describe.
struct Settings {
    cache_dir: Option<PathBuf>,
    memory_budget_mb: u64,
    disk_budget_mb: u64,
    no_model_cache: bool,
    stats: bool,
}

impl Settings {
    fn runtime(&self, repo: &Path, top_k: usize) -> edgemm::Result<Runtime> {
        let mut options = RuntimeOptions::new(repo);
        if let Some(dir) = &self.cache_dir {
            options.cache_dir = dir.clone();
        }
        options.top_k = top_k;
        options.cache.memory_budget = self.memory_budget_mb.saturating_mul(1 << 20);
        options.cache.disk_budget = self.disk_budget_mb.saturating_mul(1 << 20);
        options.cache.caching = !self.no_model_cache;
        Runtime::new(options)
    }

    fn report(&self, runtime: &Runtime) {
        if self.stats {
            let metrics = runtime.cache().metrics();
            eprintln!(
                "{}",
                serde_json::to_string_pretty(&metrics).unwrap_or_default()
            );
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        // The reader of our standard output went away (`edgemm inspect | head`): not an error.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            let mut source = std::error::Error::source(e.as_ref());
            while let Some(s) = source {
                eprintln!("  caused by: {s}");
                source = s.source();
            }
            ExitCode::FAILURE
        }
    }
}

type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

fn run(cli: Cli) -> AnyResult<ExitCode> {
    let settings = Settings {
        cache_dir: cli.cache_dir,
        memory_budget_mb: cli.memory_budget_mb,
        disk_budget_mb: cli.disk_budget_mb,
        no_model_cache: cli.no_model_cache,
        stats: cli.stats,
    };
    match cli.command {
        Command::Pack {
            manifest,
            weights,
            random_seed,
            output,
            dtype,
        } => pack(
            &manifest,
            weights.as_deref(),
            random_seed,
            &output,
            dtype.as_deref(),
        ),
        Command::Inspect { artifact, json } => inspect(&artifact, settings.cache_dir, json),
        Command::Predict {
            repo,
            model,
            top_k,
            json,
            images,
        } => predict(&settings, &repo, &model, top_k, json, &images),
        Command::Invoke { repo, model, body } => invoke(&settings, &repo, &model, &body),
        Command::Stats { repo, load } => stats(&settings, &repo, &load),
        Command::Eval {
            repo,
            model,
            dir,
            splits,
            split,
            root,
            batch,
            json,
        } => {
            let runtime = settings.runtime(&repo, 1)?;
            let source = match (&dir, &splits) {
                (Some(dir), _) => eval::Source::Folders(dir),
                (None, Some(csv)) => eval::Source::Splits {
                    csv,
                    split: split
                        .as_deref()
                        .expect("clap requires --split with --splits"),
                    root: root
                        .as_deref()
                        .or_else(|| csv.parent())
                        .unwrap_or(Path::new(".")),
                },
                (None, None) => unreachable!("clap requires a directory or --splits"),
            };
            eval::run(&runtime, &model, &source, batch, json)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn read(path: &Path) -> AnyResult<Vec<u8>> {
    std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()).into())
}

fn pack(
    manifest_path: &Path,
    weights: Option<&Path>,
    seed: Option<u64>,
    output: &Path,
    dtype: Option<&str>,
) -> AnyResult<ExitCode> {
    let mut value: serde_json::Value = serde_json::from_slice(&read(manifest_path)?)
        .map_err(|e| format!("{}: {e}", manifest_path.display()))?;
    let scratch;
    let weights = match (weights, seed) {
        (Some(w), _) => w.to_path_buf(),
        (None, Some(seed)) => {
            let arch_name = value["architecture"]
                .as_str()
                .ok_or("manifest has no architecture")?;
            let arch = edgemm_models::architecture(arch_name)?;
            let specs = arch.tensor_specs(&value["config"])?;
            let tensors =
                edgemm_models::init::seeded_weights(&specs, seed, &candle_core::Device::Cpu)?;
            scratch = ScratchFile::new(output, "random.safetensors");
            candle_core::safetensors::save(&tensors, &scratch.0)?;
            scratch.0.clone()
        }
        (None, None) => unreachable!("clap requires --weights or --random-seed"),
    };
    // `--dtype`: every tensor converted (rounded to nearest) and written beside the output;
    // the manifest then says the new dtype.
    let converted;
    let weights = match dtype {
        None => weights,
        Some(name) => {
            let target = match name {
                "f16" => candle_core::DType::F16,
                "bf16" => candle_core::DType::BF16,
                _ => candle_core::DType::F32,
            };
            let tensors = candle_core::safetensors::load(&weights, &candle_core::Device::Cpu)
                .map_err(|e| format!("{}: {e}", weights.display()))?;
            let tensors = tensors
                .into_iter()
                .map(|(name, t)| Ok((name, t.to_dtype(target)?)))
                .collect::<candle_core::Result<HashMap<_, _>>>()?;
            converted = ScratchFile::new(output, "converted.safetensors");
            candle_core::safetensors::save(&tensors, &converted.0)?;
            let spec = value
                .as_object_mut()
                .ok_or("manifest is not a JSON object")?
                .entry("weights")
                .or_insert_with(|| serde_json::json!({}));
            spec["dtype"] = name.into();
            converted.0.clone()
        }
    };
    // The checksum (and the dtype, when left out) come from the weights themselves.
    let weights_spec = value
        .as_object_mut()
        .ok_or("manifest is not a JSON object")?
        .entry("weights")
        .or_insert_with(|| serde_json::json!({}));
    if weights_spec.get("dtype").is_none() {
        weights_spec["dtype"] = stored_dtype(&weights)?.into();
    }
    weights_spec["sha256"] = artifact::sha256_file(&weights)?.into();
    let manifest = edgemm::Manifest::from_json(value.to_string().as_bytes())
        .map_err(|e| format!("{}: {e}", manifest_path.display()))?;
    let packed = artifact::pack(&manifest, &weights, output)?;
    out!(
        "packed {} ({} bytes): {} with {} labels, weights sha256 {}",
        output.display(),
        std::fs::metadata(output)?.len(),
        packed.architecture,
        packed.labels.len(),
        packed.weights.sha256
    );
    Ok(ExitCode::SUCCESS)
}

/// A file next to `near` that is removed when dropped.
struct ScratchFile(PathBuf);

impl ScratchFile {
    fn new(near: &Path, suffix: &str) -> Self {
        let name = format!(
            ".{}-{}-{suffix}",
            near.file_name().unwrap_or_default().to_string_lossy(),
            std::process::id()
        );
        Self(near.with_file_name(name))
    }
}

impl Drop for ScratchFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn stored_dtype(weights: &Path) -> AnyResult<String> {
    let bytes = read(weights)?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| format!("{}: {e}", weights.display()))?;
    let dtype = meta
        .tensors()
        .values()
        .next()
        .map(|info| format!("{:?}", info.dtype).to_lowercase())
        .ok_or("weights file holds no tensor")?;
    Ok(dtype)
}

fn inspect(path: &Path, cache_dir: Option<PathBuf>, as_json: bool) -> AnyResult<ExitCode> {
    let scratch = cache_dir
        .unwrap_or_else(edgemm::default_cache_dir)
        .join("inspect");
    let info = artifact::inspect(path, &scratch, edgemm::ArtifactLimits::default())?;
    if as_json {
        out!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(ExitCode::SUCCESS);
    }
    let m = &info.manifest;
    out!(
        "artifact      {} ({} bytes, verified)",
        path.display(),
        info.archive_bytes
    );
    out!("format        {}", m.format_version);
    out!("architecture  {} {}", m.architecture, m.config);
    out!(
        "labels        {} ({} ...)",
        m.labels.len(),
        m.labels
            .iter()
            .take(3)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    );
    out!(
        "input         {}x{}x{} {:?}, resize {:?}, scale {}, mean {:?}, std {:?}, tensors read as {:?}",
        m.input.height,
        m.input.width,
        m.input.channels,
        m.input.layout,
        m.input.resize,
        m.input.scale,
        m.input.mean,
        m.input.std,
        m.input.tensor_values
    );
    out!("output        {:?}", m.output);
    out!(
        "weights       {} bytes, {}, sha256 {}",
        info.weights_bytes,
        m.weights.dtype,
        info.sha256
    );
    if let Some(d) = &m.description {
        out!("description   {d}");
    }
    let params: usize = info
        .tensors
        .iter()
        .map(|t| t.shape.iter().product::<usize>())
        .sum();
    out!(
        "tensors       {} ({} parameters)",
        info.tensors.len(),
        params
    );
    for t in &info.tensors {
        out!(
            "  {:<40} {:<5} {:?} {} B",
            t.name,
            t.dtype,
            t.shape,
            t.bytes
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn predict(
    settings: &Settings,
    repo: &Path,
    model: &str,
    top_k: usize,
    as_json: bool,
    images: &[PathBuf],
) -> AnyResult<ExitCode> {
    let runtime = settings.runtime(repo, top_k)?;
    let mut failures = 0;
    for path in images {
        let result = read(path).and_then(|bytes| {
            runtime
                .invoke(model, Input::Image(&bytes))
                .map_err(|e| e.into())
        });
        match result {
            Ok(response) if as_json => {
                let line = serde_json::json!({
                    "image": path.display().to_string(),
                    "top_k": response.predictions[0].top_k,
                    "timing": response.timing,
                });
                out!("{line}");
            }
            Ok(response) => {
                let top: Vec<String> = response.predictions[0]
                    .top_k
                    .iter()
                    .map(|s| format!("{} {:.3}", s.label, s.probability))
                    .collect();
                out!(
                    "{}: {}  [{:.1} ms]",
                    path.display(),
                    top.join(", "),
                    (response.timing.preprocess_us + response.timing.inference_us) as f64 / 1e3
                );
            }
            Err(e) => {
                // Model-level failures stop at once; a bad image only fails itself.
                if !matches!(
                    e.downcast_ref::<edgemm::Error>(),
                    None | Some(edgemm::Error::BadInput(_))
                ) {
                    return Err(e);
                }
                failures += 1;
                eprintln!("{}: error: {e}", path.display());
            }
        }
    }
    settings.report(&runtime);
    Ok(if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn stats(settings: &Settings, repo: &Path, load: &[String]) -> AnyResult<ExitCode> {
    let runtime = settings.runtime(repo, 5)?;
    for name in load {
        runtime.cache().load(name)?;
    }
    let cache = runtime.cache();
    let report = serde_json::json!({
        "repository": repo.display().to_string(),
        "cache_dir": runtime.options().cache_dir.display().to_string(),
        "models": cache.list()?,
        "metrics": cache.metrics(),
    });
    out!("{}", serde_json::to_string_pretty(&report)?);
    Ok(ExitCode::SUCCESS)
}

fn invoke(settings: &Settings, repo: &Path, model: &str, body: &Path) -> AnyResult<ExitCode> {
    let body = if body == Path::new("-") {
        let mut buf = Vec::new();
        std::io::stdin()
            .take(json::MAX_REQUEST_BYTES as u64 + 1)
            .read_to_end(&mut buf)?;
        buf
    } else {
        read(body)?
    };
    let result = settings.runtime(repo, 5).and_then(|rt| {
        let answer = json::invoke_json(&rt, model, &body);
        settings.report(&rt);
        answer
    });
    match result {
        Ok(value) => {
            out!("{value}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            out!("{}", json::error_body(&e));
            Ok(ExitCode::FAILURE)
        }
    }
}
