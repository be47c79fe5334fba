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

/// `edgemm serve`'s flags: each sets the `edgemm_server::ServerOptions` field of its name.
#[cfg(feature = "serve")]
#[derive(clap::Args)]
struct ServeArgs {
    #[arg(long, default_value = "models/repository")]
    repo: PathBuf,
    /// Address to listen on; any but a loopback one needs --auth-token
    #[arg(long, default_value = "127.0.0.1:8080")]
    bind: std::net::SocketAddr,
    /// Shared secret every request but GET /ping carries (Authorization: Bearer T, or boto3's
    /// aws_session_token)
    #[arg(long)]
    auth_token: Option<String>,
    /// Threads running inference at once [default: one per CPU]
    #[arg(long)]
    workers: Option<usize>,
    /// Requests waiting for a worker before the server answers 503 + Retry-After [default: 64]
    #[arg(long)]
    queue: Option<usize>,
    /// Largest request body, MiB (SageMaker real-time's limit)
    #[arg(long, default_value_t = 6)]
    max_payload_mb: usize,
    /// Deadline of one request, seconds
    #[arg(long, default_value_t = 60)]
    timeout_s: u64,
    /// Refuse InvokeEndpoint for other endpoint names, as the cloud does
    #[arg(long)]
    endpoint_name: Option<String>,
    /// The model for requests without X-Amzn-SageMaker-Target-Model (a single-model endpoint)
    #[arg(long)]
    default_model: Option<String>,
    /// No JSON access-log line per request on stderr
    #[arg(long)]
    no_access_log: bool,
    /// Inside a SageMaker container: listen on 0.0.0.0:$SAGEMAKER_BIND_TO_PORT and read the
    /// other SAGEMAKER_* variables
    #[arg(long)]
    sagemaker_container: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Pack a manifest and a safetensors file, or an ONNX model, into NAME.tar.gz (sha256
    /// and dtype filled in)
    #[command(after_help = "Examples:\n  \
        edgemm pack --manifest my-model.json --weights my-model.safetensors -o models/repository/my-model.tar.gz\n  \
        edgemm pack --onnx resnet50.onnx --labels labels.txt -o models/repository/resnet50.tar.gz\n  \
        edgemm pack --onnx model.onnx --manifest preprocessing.json -o models/repository/model.tar.gz")]
    Pack {
        /// manifest.json (weights.sha256 may be left out; it is computed). With --onnx it
        /// gives the labels, input spec and description; the network comes from the ONNX file
        #[arg(long, required_unless_present = "onnx")]
        manifest: Option<PathBuf>,
        /// model.safetensors to pack
        #[arg(
            long,
            conflicts_with_all = ["random_seed", "onnx"],
            required_unless_present_any = ["random_seed", "onnx"]
        )]
        weights: Option<PathBuf>,
        /// An ONNX image classifier (opset 11+, input [N, 3, H, W]) to import: its graph goes
        /// into the manifest, its tensors into model.safetensors
        #[arg(long, conflicts_with = "random_seed")]
        onnx: Option<PathBuf>,
        /// With --onnx: a text file of class labels, one per line [default: 0, 1, 2, ...]
        #[arg(long, requires = "onnx")]
        labels: Option<PathBuf>,
        /// With --onnx: the input size, HxW [default: the ONNX input's, else 224x224]
        #[arg(long, requires = "onnx")]
        input_size: Option<String>,
        /// With --onnx: how images are brought to the input size
        #[arg(long, requires = "onnx", value_parser = ["stretch", "center-crop", "letterbox"], default_value = "stretch")]
        resize: String,
        /// With --onnx: per-channel mean subtracted from pixels scaled to [0, 1] [default:
        /// ImageNet's, as torchvision's models expect]
        #[arg(long, requires = "onnx", value_delimiter = ',', num_args = 3, default_values_t = [0.485, 0.456, 0.406])]
        mean: Vec<f32>,
        /// With --onnx: per-channel standard deviation the pixels are divided by
        #[arg(long, requires = "onnx", value_delimiter = ',', num_args = 3, default_values_t = [0.229, 0.224, 0.225])]
        std: Vec<f32>,
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
    /// Serve the repository over HTTP: SageMaker InvokeEndpoint, the SageMaker multi-model
    /// container contract and TF Serving REST (runtime/server/README.md); stops on SIGTERM or
    /// SIGINT after the requests in flight
    #[cfg(feature = "serve")]
    #[command(after_help = "Examples:\n  \
        edgemm serve --repo models/repository --bind 127.0.0.1:8080\n  \
        edgemm --memory-budget-mb 512 serve --bind 0.0.0.0:8080 --auth-token \"$TOKEN\"\n  \
        edgemm serve --sagemaker-container --repo /opt/ml/models")]
    Serve(ServeArgs),
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
        Runtime::new(self.runtime_options(repo, top_k))
    }

    /// The global flags as runtime options over `repo`.
    fn runtime_options(&self, repo: &Path, top_k: usize) -> RuntimeOptions {
        let mut options = RuntimeOptions::new(repo);
        if let Some(dir) = &self.cache_dir {
            options.cache_dir = dir.clone();
        }
        options.top_k = top_k;
        options.cache.memory_budget = self.memory_budget_mb.saturating_mul(1 << 20);
        options.cache.disk_budget = self.disk_budget_mb.saturating_mul(1 << 20);
        options.cache.caching = !self.no_model_cache;
        options
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
            onnx,
            labels,
            input_size,
            resize,
            mean,
            std,
            random_seed,
            output,
            dtype,
        } => match onnx {
            Some(onnx) => {
                let spec = OnnxSpec {
                    labels: labels.as_deref(),
                    input_size: input_size.as_deref(),
                    resize: &resize,
                    mean: &mean,
                    std: &std,
                };
                pack_onnx(&onnx, manifest.as_deref(), &spec, &output, dtype.as_deref())
            }
            None => pack(
                manifest
                    .as_deref()
                    .expect("clap requires --manifest without --onnx"),
                weights.as_deref(),
                random_seed,
                &output,
                dtype.as_deref(),
            ),
        },
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
        #[cfg(feature = "serve")]
        Command::Serve(args) => serve(&settings, args),
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

/// At most `limit + 1` bytes of `path`: enough for the runtime to refuse an input over its
/// limit with the error that names the rule, without reading a huge (or endless, as
/// /dev/zero) file whole first.
fn read_bounded(path: &Path, limit: usize) -> AnyResult<Vec<u8>> {
    let file = std::fs::File::open(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(limit as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("reading {}: {e}", path.display()))?;
    Ok(bytes)
}

/// The preprocessing flags of `pack --onnx`.
struct OnnxSpec<'a> {
    labels: Option<&'a Path>,
    input_size: Option<&'a str>,
    resize: &'a str,
    mean: &'a [f32],
    std: &'a [f32],
}

/// `pack --onnx`: the imported graph and tensors as an ordinary artifact.
fn pack_onnx(
    onnx: &Path,
    base: Option<&Path>,
    spec: &OnnxSpec,
    output: &Path,
    dtype: Option<&str>,
) -> AnyResult<ExitCode> {
    let imported =
        edgemm_models::onnx::import_file(onnx).map_err(|e| format!("{}: {e}", onnx.display()))?;
    let classes = imported.graph.classes()?;
    let base: Option<serde_json::Value> = match base {
        Some(path) => Some(
            serde_json::from_slice(&read(path)?).map_err(|e| format!("{}: {e}", path.display()))?,
        ),
        None => None,
    };
    let (height, width) = match spec.input_size {
        Some(size) => {
            let (h, w) = size
                .split_once('x')
                .ok_or_else(|| format!("--input-size {size:?} is not HxW"))?;
            (h.parse::<usize>()?, w.parse::<usize>()?)
        }
        None => imported.graph.input.size.unwrap_or((224, 224)),
    };
    let labels = match spec.labels {
        Some(path) => Some(edgemm::onnx::labels_from_text(&String::from_utf8(read(
            path,
        )?)?)),
        None => None,
    };
    let defaults = edgemm::onnx::Defaults {
        labels,
        input: serde_json::json!({
            "height": height, "width": width, "channels": 3, "layout": "NCHW",
            "resize": spec.resize, "scale": 1.0 / 255.0,
            "mean": spec.mean, "std": spec.std, "tensor_values": "normalized",
        }),
        description: format!(
            "imported from {} ({}, opset {})",
            onnx.file_name().unwrap_or_default().to_string_lossy(),
            imported.producer,
            imported.opset
        ),
    };
    let value = edgemm::onnx::manifest_json(&imported, base, defaults)
        .map_err(|e| format!("{}: {e}", onnx.display()))?;
    let weights = ScratchFile::new(output, "onnx.safetensors");
    edgemm::onnx::write_weights(&imported, &weights.0)?;
    let manifest = ScratchFile::new(output, "onnx.manifest.json");
    std::fs::write(&manifest.0, serde_json::to_vec(&value)?)?;
    out!(
        "imported {}: {} nodes, {} tensors, {} classes, input {}x{}",
        onnx.display(),
        imported.graph.nodes.len(),
        imported.tensors.len(),
        classes,
        height,
        width
    );
    pack(&manifest.0, Some(&weights.0), None, output, dtype)
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
    // The artifact is extracted into the cache directory's scratch space and removed after.
    let cache_dir = cache_dir.unwrap_or_else(edgemm::default_cache_dir);
    let info = artifact::inspect(path, &cache_dir, edgemm::ArtifactLimits::default())?;
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
    let nodes = &info.graph;
    if m.architecture == edgemm_models::graph::GRAPH_ARCHITECTURE {
        out!("architecture  {} ({} nodes)", m.architecture, nodes.len());
    } else {
        out!(
            "architecture  {} {} ({} nodes)",
            m.architecture,
            m.config,
            nodes.len()
        );
    }
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
    if !m.input.images {
        out!(
            "input         {}x{}x{} {:?}, tensor requests only (no preprocessing manifest: images are refused), values as the network takes them",
            m.input.height,
            m.input.width,
            m.input.channels,
            m.input.layout
        );
    } else {
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
    }
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
    if let Some(origin) = &m.origin {
        out!(
            "origin        {}, converted at extraction from {}",
            origin.format,
            origin.files.join(", ")
        );
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
    let flops: u64 = nodes.iter().map(|n| n.flops).sum();
    out!(
        "graph         {} nodes, {:.3} GFLOP per image at {}x{}",
        nodes.len(),
        flops as f64 / 1e9,
        m.input.height,
        m.input.width
    );
    // Which step (and so which path) computes each node.
    let steps = info.plan.as_deref().unwrap_or_default();
    let step_of = |name: &str| steps.iter().position(|s| s.nodes.iter().any(|n| n == name));
    out!(
        "  {:<32} {:<18} {:<12} {:>10} {:>9}  step",
        "node",
        "op",
        "shape",
        "parameters",
        "MFLOP"
    );
    for n in nodes {
        let step = match step_of(&n.name) {
            Some(i) => format!("{i:>3} {} ({})", steps[i].kernel, steps[i].path),
            None if steps.is_empty() => "candle ops".to_string(),
            None => "-".to_string(),
        };
        out!(
            "  {:<32} {:<18} {:<12} {:>10} {:>9.2}  {step}",
            n.name,
            n.op,
            n.shape,
            n.parameters,
            n.flops as f64 / 1e6
        );
    }
    if let Some(steps) = &info.plan {
        let count = |path: &str| steps.iter().filter(|s| s.path == path).count();
        let bytes: usize = steps.iter().map(|s| s.bytes).sum();
        out!(
            "plan          {} steps on the CPU kernels: {} fused, {} plain, {} candle fallback; {} B of packed weights",
            steps.len(),
            count("fused kernel"),
            count("kernel"),
            count("candle fallback"),
            bytes
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
    let limit = runtime.options().image_limits.max_bytes;
    for path in images {
        let result = read_bounded(path, limit).and_then(|bytes| {
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

#[cfg(feature = "serve")]
fn serve(settings: &Settings, args: ServeArgs) -> AnyResult<ExitCode> {
    let mut options = edgemm_server::ServerOptions::new(&args.repo);
    options.runtime = settings.runtime_options(&args.repo, options.runtime.top_k);
    options.bind = args.bind;
    options.auth_token = args.auth_token;
    options.workers = args.workers.unwrap_or(options.workers);
    options.queue_depth = args.queue.unwrap_or(options.queue_depth);
    options.max_payload_bytes = args.max_payload_mb.saturating_mul(1 << 20);
    options.request_timeout = std::time::Duration::from_secs(args.timeout_s);
    options.endpoint_name = args.endpoint_name;
    options.default_model = args.default_model;
    options.access_log = !args.no_access_log;
    if args.sagemaker_container {
        options.apply_sagemaker_env()?;
    }
    edgemm_server::run(options)?;
    Ok(ExitCode::SUCCESS)
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
        read_bounded(body, json::MAX_REQUEST_BYTES)?
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
