//! Latency of imported ONNX graphs on the fast kernels (issue #20): each file is imported
//! (`edgemm_models::onnx::import_file`), planned for the best instruction set of this CPU
//! (`graph::planner::plan`, `--isa` to choose another) and timed at batch 1 and 8.
//!
//!     cargo bench -p edgemm-models --bench onnx [-- [FILE.onnx ...] [OPTIONS]]
//!     EDGEMM_ONNX=a.onnx:b.onnx cargo bench -p edgemm-models --bench onnx
//!
//! Files come from the command line, else from `$EDGEMM_ONNX` (colon-separated), else the
//! small committed models in `models/tests/onnx`, so that the bench runs on a fresh clone.
//! The full-size torchvision exports (`models/reference/onnx/export.py`) are the interesting
//! ones, e.g. `target/onnx-models/{mobilenet_v3_large,mobilenet_v3_small,resnet50}.onnx`.
//!
//! Per (model, batch): untimed runs for `--warmup-ms` (default 500, at least one; a freshly
//! planned network runs its first milliseconds slower on a VM), then `--runs` timed forwards
//! (default 50 at batch 1, 20 at batch 8). Prints the median, the fastest tenth (10th
//! percentile: on a shared VM the slow calls are other tenants' time) and the throughput at
//! the median. The input is a seeded standard-normal `[N, 3, H, W]` batch, H x W the graph's
//! declared input size or 224 x 224. Threads: rayon's pool (`RAYON_NUM_THREADS`, default one
//! per core); the CPU model and thread count are printed first.
//!
//! Options:
//!   --warmup-ms MS     untimed runs for this long per (model, batch) (default 500)
//!   --runs N           timed runs at every batch size (default 50 at batch 1, 20 at batch 8)
//!   --batches 1,8      batch sizes (default 1,8)
//!   --isa NAME         instruction set (default the best this CPU has)
//!   --json             one JSON line per (model, batch), with every run's time, instead of
//!                      the text lines (for `models/reference/onnx/bench_side_by_side.py`)
//!   --steps            also each plan step's time: the bench reruns itself with
//!                      `EDGEMM_PROFILE_STEPS` set (the plan then times each step of every
//!                      forward, see `Plan`), takes each step's median over --profile-runs
//!                      warm forwards and prints the --top slowest steps with their kernels
//!                      and the time per kernel name
//!   --profile-runs N   forwards the step medians are over (default 21 at batch 1, 7 at 8)
//!   --top K            steps listed by --steps (default 15; 0 for all, in plan order)

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use edgemm_models::graph::planner;
use edgemm_models::{onnx, Classifier, Isa, Plan};

struct Options {
    files: Vec<PathBuf>,
    warmup_ms: f64,
    runs: Option<usize>,
    batches: Vec<usize>,
    isa: Isa,
    json: bool,
    steps: bool,
    profile_runs: Option<usize>,
    top: usize,
    /// Internal: this process is the `--steps` child; time only, the plan prints the steps.
    profile_child: bool,
}

fn options() -> Options {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let mut o = Options {
        files: Vec::new(),
        warmup_ms: 500.0,
        runs: None,
        batches: vec![1, 8],
        isa: Isa::best(),
        json: false,
        steps: false,
        profile_runs: None,
        top: 15,
        profile_child: false,
    };
    let value = |flag: &str, args: &mut dyn Iterator<Item = String>| {
        args.next()
            .unwrap_or_else(|| panic!("{flag} needs a value"))
    };
    while let Some(a) = args.next() {
        match a.as_str() {
            "--warmup-ms" => o.warmup_ms = value(&a, &mut args).parse().expect("--warmup-ms"),
            "--runs" => o.runs = Some(value(&a, &mut args).parse().expect("--runs")),
            "--batches" => {
                o.batches = value(&a, &mut args)
                    .split(',')
                    .map(|b| b.parse().expect("--batches"))
                    .collect()
            }
            "--isa" => {
                let name = value(&a, &mut args);
                o.isa = Isa::by_name(&name).unwrap_or_else(|| {
                    let names: Vec<_> = Isa::supported().iter().map(|i| i.name()).collect();
                    panic!("no instruction set {name} on this CPU (it has {names:?})")
                })
            }
            "--json" => o.json = true,
            "--steps" => o.steps = true,
            "--profile-runs" => {
                o.profile_runs = Some(value(&a, &mut args).parse().expect("--profile-runs"))
            }
            "--top" => o.top = value(&a, &mut args).parse().expect("--top"),
            "--profile-child" => o.profile_child = true,
            flag if flag.starts_with("--") => panic!("unknown option {flag}"),
            _ => o.files.push(PathBuf::from(a)),
        }
    }
    if o.files.is_empty() {
        if let Some(list) = std::env::var_os("EDGEMM_ONNX").filter(|v| !v.is_empty()) {
            o.files = std::env::split_paths(&list).collect();
        }
    }
    if o.files.is_empty() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/onnx");
        let mut committed: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "onnx"))
            .collect();
        committed.sort();
        o.files = committed;
    }
    o
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// A seeded standard-normal `[n, 3, h, w]` batch (Box-Muller over the seeded uniforms).
fn input(n: usize, (h, w): (usize, usize)) -> Tensor {
    let len = n * 3 * h * w;
    let u: Vec<f64> = edgemm_models::init::uniform("onnx-bench-input", len + 1, 20).collect();
    let values: Vec<f32> = (0..len)
        .map(|i| {
            let (u1, u2) = (1.0 - u[i], u[i + 1]);
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
        })
        .collect();
    Tensor::from_vec(values, (n, 3, h, w), &Device::Cpu).unwrap()
}

/// The file imported and planned, with its input size and its name for the output.
fn load(path: &Path, isa: Isa) -> Result<(Plan, (usize, usize), String), String> {
    let name = path.file_stem().map_or_else(
        || path.display().to_string(),
        |s| s.to_string_lossy().into(),
    );
    let started = Instant::now();
    let imported =
        onnx::import_file(path).map_err(|e| format!("{}: import: {e}", path.display()))?;
    let import_ms = started.elapsed().as_secs_f64() * 1e3;
    let size = imported.graph.input.size.unwrap_or((224, 224));
    let tensors: HashMap<String, Tensor> = imported
        .tensors
        .iter()
        .map(|(name, shape, values)| {
            let t = Tensor::from_slice(values, shape.as_slice(), &Device::Cpu).unwrap();
            (name.clone(), t)
        })
        .collect();
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    let started = Instant::now();
    let plan = planner::plan(&imported.graph, &vb, isa, "graph")
        .map_err(|e| format!("{}: plan: {e}", path.display()))?;
    let plan_ms = started.elapsed().as_secs_f64() * 1e3;
    if std::env::var_os("EDGEMM_PROFILE_STEPS").is_none() {
        eprintln!(
            "{name}: {} graph nodes -> {} plan steps, {:.1} MB packed weights; \
             import {import_ms:.0} ms, plan {plan_ms:.0} ms",
            imported.graph.nodes.len(),
            plan.steps().len(),
            plan.weight_bytes() as f64 / 1e6
        );
    }
    Ok((plan, size, name))
}

/// Untimed forwards for `warmup_ms` (at least one), then `runs` timed ones, in ms.
fn time(plan: &Plan, x: &Tensor, warmup_ms: f64, runs: usize) -> Vec<f64> {
    let warm = Instant::now();
    plan.forward(x).unwrap();
    while warm.elapsed().as_secs_f64() * 1e3 < warmup_ms {
        plan.forward(x).unwrap();
    }
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            plan.forward(x).unwrap();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect()
}

fn sorted(v: &[f64]) -> Vec<f64> {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v
}

/// One forward's step times (us), from a line the plan prints with `EDGEMM_PROFILE_STEPS`:
/// `edgemm plan graph n=1: input:12us conv3x3s2->112x112x16:345us ...`. The input copy
/// comes first, then one `kernel->HxWxC:TIMEus` per step.
fn parse_profile(line: &str) -> Option<Vec<(String, String, f64)>> {
    let rest = line.strip_prefix("edgemm plan ")?;
    let (_, profile) = rest.split_once(": ")?;
    profile
        .split_whitespace()
        .map(|token| {
            let (left, us) = token.rsplit_once(':')?;
            let us: f64 = us.strip_suffix("us")?.parse().ok()?;
            let (kernel, shape) = left.rsplit_once("->").unwrap_or((left, ""));
            Some((kernel.to_string(), shape.to_string(), us))
        })
        .collect()
}

/// The `--steps` breakdown: reruns this bench on `path` at `batch` with the plan's step
/// profiling on, and reports each step's median time next to what `Plan::steps` says of it.
fn profile_steps(
    o: &Options,
    path: &Path,
    plan: &Plan,
    name: &str,
    batch: usize,
    whole_ms: f64,
) -> serde_json::Value {
    let runs = o.profile_runs.unwrap_or(if batch == 1 { 21 } else { 7 });
    let exe = std::env::current_exe().unwrap();
    let out = Command::new(exe)
        .arg(path)
        .args(["--profile-child", "--isa", o.isa.name(), "--batches"])
        .arg(batch.to_string())
        .args(["--runs", &runs.to_string(), "--warmup-ms"])
        .arg(o.warmup_ms.to_string())
        .env("EDGEMM_PROFILE_STEPS", "1")
        .output()
        .expect("rerunning the bench for --steps");
    assert!(
        out.status.success(),
        "the --steps run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let prefix = format!("n={batch}:");
    let forwards: Vec<Vec<(String, String, f64)>> = stderr
        .lines()
        .filter(|l| l.starts_with("edgemm plan ") && l.contains(&prefix))
        .filter_map(parse_profile)
        .collect();
    // The last `runs` forwards are the timed (warm) ones.
    let forwards = &forwards[forwards.len().saturating_sub(runs)..];
    let info = plan.steps();
    assert!(
        !forwards.is_empty() && forwards.iter().all(|f| f.len() == info.len() + 1),
        "{name}: the profile lines do not match the plan's {} steps",
        info.len()
    );
    // Per entry (input copy, then each step): the median over the forwards.
    let medians: Vec<f64> = (0..=info.len())
        .map(|i| {
            let v = sorted(&forwards.iter().map(|f| f[i].2).collect::<Vec<_>>());
            v[v.len() / 2]
        })
        .collect();
    let total_us: f64 = medians.iter().sum();
    let mut rows: Vec<serde_json::Value> = Vec::new();
    for (i, step) in info.iter().enumerate() {
        let (kernel, shape, _) = &forwards[0][i + 1];
        assert_eq!(kernel, &step.kernel, "{name}: step {i}");
        rows.push(serde_json::json!({
            "index": i,
            "kernel": step.kernel,
            "path": step.path,
            "out_hwc": shape,
            "median_us": medians[i + 1],
            "nodes": step.nodes,
            "weight_bytes": step.bytes,
        }));
    }
    let mut by_kernel: Vec<(String, f64, usize)> = Vec::new();
    for (step, &us) in info.iter().zip(&medians[1..]) {
        match by_kernel.iter_mut().find(|(k, _, _)| *k == step.kernel) {
            Some(entry) => {
                entry.1 += us;
                entry.2 += 1;
            }
            None => by_kernel.push((step.kernel.clone(), us, 1)),
        }
    }
    by_kernel.sort_by(|a, b| b.1.total_cmp(&a.1));
    if !o.json {
        println!(
            "  steps of {name} at batch {batch} ({} steps; median of {} profiled forwards; \
             sum of step medians {:.2} ms incl. input copy {:.0} us, whole forward {:.2} ms):",
            info.len(),
            forwards.len(),
            total_us / 1e3,
            medians[0],
            whole_ms
        );
        let mut order: Vec<usize> = (0..info.len()).collect();
        if o.top > 0 {
            order.sort_by(|&a, &b| medians[b + 1].total_cmp(&medians[a + 1]));
            order.truncate(o.top);
        }
        println!(
            "  {:>4} {:<12} {:<14} {:>12} {:>9} {:>6}  nodes",
            "step", "kernel", "path", "out HxWxC", "us", "%"
        );
        for i in order {
            let step = &info[i];
            let nodes = match step.nodes.as_slice() {
                [] => String::new(),
                [one] => one.clone(),
                [first, .., last] => format!("{first} .. {last} ({})", step.nodes.len()),
            };
            println!(
                "  {:>4} {:<12} {:<14} {:>12} {:>9.0} {:>5.1}%  {nodes}",
                i,
                step.kernel,
                step.path,
                forwards[0][i + 1].1,
                medians[i + 1],
                100.0 * medians[i + 1] / total_us
            );
        }
        let kernels: Vec<String> = by_kernel
            .iter()
            .map(|(k, us, n)| {
                format!(
                    "{k} x{n} {:.2} ms ({:.0}%)",
                    us / 1e3,
                    100.0 * us / total_us
                )
            })
            .collect();
        println!("  by kernel: {}", kernels.join(", "));
    }
    serde_json::json!({
        "input_copy_us": medians[0],
        "sum_us": total_us,
        "profiled_forwards": forwards.len(),
        "steps": rows,
        "by_kernel": by_kernel
            .iter()
            .map(|(k, us, n)| serde_json::json!({"kernel": k, "steps": n, "us": us}))
            .collect::<Vec<_>>(),
    })
}

fn main() {
    let o = options();
    let cpu = cpu_model();
    let threads = rayon::current_num_threads();
    if !o.json && !o.profile_child {
        println!(
            "edgemm ONNX bench: {cpu}, {} kernels, {threads} threads; warm-up {} ms; \
             median and fastest tenth",
            o.isa.name(),
            o.warmup_ms
        );
    }
    let mut failures = 0;
    for path in &o.files {
        let (plan, size, name) = match load(path, o.isa) {
            Ok(loaded) => loaded,
            Err(e) => {
                failures += 1;
                if o.json {
                    println!(
                        "{}",
                        serde_json::json!({"runtime": "edgemm", "file": path, "error": e})
                    );
                }
                eprintln!("error: {e}");
                continue;
            }
        };
        for &batch in &o.batches {
            let runs = o.runs.unwrap_or(if batch == 1 { 50 } else { 20 });
            let x = input(batch, size);
            let times = time(&plan, &x, o.warmup_ms, runs);
            if o.profile_child {
                continue;
            }
            let s = sorted(&times);
            let (median, tenth) = (s[s.len() / 2], s[s.len() / 10]);
            if o.json {
                let steps = o
                    .steps
                    .then(|| profile_steps(&o, path, &plan, &name, batch, median));
                println!(
                    "{}",
                    serde_json::json!({
                        "runtime": "edgemm",
                        "model": name,
                        "file": path,
                        "batch": batch,
                        "input": [batch, 3, size.0, size.1],
                        "isa": o.isa.name(),
                        "threads": threads,
                        "cpu": cpu,
                        "warmup_ms": o.warmup_ms,
                        "runs": runs,
                        "median_ms": median,
                        "tenth_ms": tenth,
                        "images_per_s": batch as f64 / median * 1e3,
                        "times_ms": times,
                        "steps": steps,
                    })
                );
            } else {
                println!(
                    "{name:<40} batch {batch}: median {median:>8.2} ms, fastest tenth {tenth:>8.2} ms, \
                     {:>7.1} images/s  ({runs} runs, {}x{})",
                    batch as f64 / median * 1e3,
                    size.0,
                    size.1
                );
                if o.steps {
                    profile_steps(&o, path, &plan, &name, batch, median);
                }
            }
        }
    }
    if failures > 0 {
        std::process::exit(1);
    }
}
