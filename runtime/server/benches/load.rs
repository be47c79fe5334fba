//! Load test: 64 keep-alive connections for 60 s over three models with memory for two, from
//! this process against the server in a second process on loopback.
//!
//! ```text
//! cargo bench -p edgemm-server --bench load                # release build
//! cargo bench --profile dev -p edgemm-server --bench load  # dependencies optimised, edgemm not
//! EDGEMM_LOAD_SECONDS=10 EDGEMM_LOAD_CONNECTIONS=16 cargo bench ...   # shorter, fewer
//! ```
//!
//! Reports p50/p99 latency, throughput, answers by status (only 200, and the documented 503 and
//! 507, are allowed; anything else fails the bench), the server's RSS against the memory
//! budget, and beside them the single-request latency of the runtime's JSON path in-process
//! (what `edgemm invoke` runs) and of one request at a time over HTTP.
//!
//! The server is this same binary, started again with `EDGEMM_LOAD_BENCH_SERVE` set.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::json;

const SERVE_ENV: &str = "EDGEMM_LOAD_BENCH_SERVE";
/// Safety bound on the requests one connection sends, whatever the duration.
const MAX_REQUESTS_PER_CONNECTION: usize = 100_000;

fn env_number(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Server role: `EDGEMM_LOAD_BENCH_SERVE=<addr file>`, args: repo, cache dir, budget bytes.
fn serve(addr_file: &str) {
    let args: Vec<String> = std::env::args().collect();
    let n = args.len();
    let mut options = edgemm_server::ServerOptions::new(&args[n - 3]);
    options.runtime.cache_dir = PathBuf::from(&args[n - 2]);
    options.runtime.cache.memory_budget = args[n - 1].parse().unwrap();
    options.bind = "127.0.0.1:0".parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let server = edgemm_server::Server::bind(options).await.unwrap();
        std::fs::write(addr_file, server.local_addr().to_string()).unwrap();
        server
            .serve(edgemm_server::shutdown_signal())
            .await
            .unwrap();
    });
}

/// A keep-alive HTTP/1.1 connection.
struct Connection {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Connection {
    fn open(addr: SocketAddr) -> std::io::Result<Self> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(120)))?;
        Ok(Self {
            writer: stream.try_clone()?,
            reader: BufReader::new(stream),
        })
    }

    /// Sends a POST and returns (status, body length).
    fn post(&mut self, path: &str, content_type: &str, body: &[u8]) -> std::io::Result<u16> {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        self.writer.write_all(head.as_bytes())?;
        self.writer.write_all(body)?;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let status = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let mut length = 0usize;
        let mut close = false;
        loop {
            line.clear();
            self.reader.read_line(&mut line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().map_err(std::io::Error::other)?;
                } else if k.eq_ignore_ascii_case("connection") && v.trim() == "close" {
                    close = true;
                }
            }
        }
        let mut sink = vec![0u8; length.min(16 << 20)];
        self.reader.read_exact(&mut sink)?;
        if close {
            return Err(std::io::Error::other("server closed the connection"));
        }
        Ok(status)
    }
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix(field)?
                    .trim()
                    .strip_suffix("kB")?
                    .trim()
                    .parse()
                    .ok()
            })
        })
        .unwrap_or(0)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((p / 100.0) * (sorted.len() - 1) as f64).round() as usize]
}

fn ms(us: u64) -> String {
    format!("{:.1} ms", us as f64 / 1000.0)
}

struct Request {
    model: &'static str,
    content_type: &'static str,
    body: Vec<u8>,
}

fn requests() -> Vec<Request> {
    let b64 = base64::engine::general_purpose::STANDARD.encode(common::jpeg_photo());
    vec![
        Request {
            model: "cifar.tar.gz",
            content_type: "application/json",
            body: json!({ "instances": [common::cifar_instance()] })
                .to_string()
                .into_bytes(),
        },
        Request {
            model: "sign-language.tar.gz",
            content_type: "application/json",
            body: json!({ "instances": [common::sign_instance()] })
                .to_string()
                .into_bytes(),
        },
        Request {
            model: "efficientnet-lite0.tar.gz",
            content_type: "application/json",
            body: json!({ "instances": [{ "b64": b64 }] })
                .to_string()
                .into_bytes(),
        },
    ]
}

fn spawn_server(repo: &Path, cache: &Path, budget: u64, work: &Path) -> (Child, SocketAddr) {
    let addr_file = work.join("addr");
    let log = std::fs::File::create(work.join("server.log")).unwrap();
    let child = Command::new(std::env::current_exe().unwrap())
        .env(SERVE_ENV, &addr_file)
        .arg(repo)
        .arg(cache)
        .arg(budget.to_string())
        .stderr(log)
        .spawn()
        .unwrap();
    let ok = common::eventually(120, || {
        addr_file.is_file() && std::fs::metadata(&addr_file).is_ok_and(|m| m.len() > 0)
    });
    assert!(
        ok,
        "the server did not start; see {}",
        work.join("server.log").display()
    );
    let addr = std::fs::read_to_string(&addr_file)
        .unwrap()
        .parse()
        .unwrap();
    (child, addr)
}

fn main() {
    if let Ok(addr_file) = std::env::var(SERVE_ENV) {
        return serve(&addr_file);
    }
    if std::env::args().any(|a| a == "--list") {
        return; // cargo test --benches asks benches to list their tests
    }
    let seconds = env_number("EDGEMM_LOAD_SECONDS", 60);
    let connections = env_number("EDGEMM_LOAD_CONNECTIONS", 64) as usize;
    let dirs = common::Dirs::new(&common::MODELS);
    let requests = Arc::new(requests());

    // In-process, one request at a time: the runtime's JSON path, as `edgemm invoke` runs it.
    let mut options = edgemm::RuntimeOptions::new(dirs.repo());
    options.cache_dir = dirs.root.path().join("in-process-cache");
    let runtime = edgemm::Runtime::new(options).unwrap();
    let mut single = BTreeMap::new();
    let mut sizes = Vec::new();
    for r in requests.iter() {
        edgemm::json::invoke_json(&runtime, r.model, &r.body).unwrap();
        let mut times: Vec<u64> = (0..15)
            .map(|_| {
                let t = Instant::now();
                edgemm::json::invoke_json(&runtime, r.model, &r.body).unwrap();
                t.elapsed().as_micros() as u64
            })
            .collect();
        times.sort_unstable();
        single.insert(r.model, percentile(&times, 50.0));
        sizes.push(runtime.cache().describe(r.model).unwrap().memory_bytes);
    }
    drop(runtime);
    // Memory for the two largest models, not for three.
    let mut sorted = sizes.clone();
    sorted.sort_unstable();
    let budget = sorted[1] + sorted[2];
    assert!(budget < sizes.iter().sum::<u64>());

    let (mut child, addr) = spawn_server(&dirs.repo(), &dirs.cache(), budget, dirs.root.path());
    let pid = child.id();
    let rss_idle = rss_kib(pid, "VmRSS:");

    // One request at a time over HTTP (models loaded, so hot unless evicted).
    let mut http_single = BTreeMap::new();
    {
        let mut c = Connection::open(addr).unwrap();
        for r in requests.iter() {
            let path = format!("/models/{}/invoke", r.model);
            let mut times: Vec<u64> = (0..6)
                .map(|_| {
                    let t = Instant::now();
                    assert_eq!(c.post(&path, r.content_type, &r.body).unwrap(), 200);
                    t.elapsed().as_micros() as u64
                })
                .collect();
            times.sort_unstable();
            // The first call loads the model (and may evict one); report the hot median.
            http_single.insert(r.model, percentile(&times[1..], 50.0));
        }
    }

    let stop = Arc::new(AtomicBool::new(false));
    let peak_rss = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (stop, peak) = (stop.clone(), peak_rss.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid, "VmRSS:"), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let results = Arc::new(Mutex::new((
        Vec::<u64>::new(),
        BTreeMap::<u16, u64>::new(),
        0u64,
    )));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let clients: Vec<_> = (0..connections)
        .map(|i| {
            let (requests, results) = (requests.clone(), results.clone());
            std::thread::spawn(move || {
                let mut latencies = Vec::new();
                let mut statuses = BTreeMap::new();
                let mut io_errors = 0u64;
                let mut conn = Connection::open(addr).ok();
                for n in 0..MAX_REQUESTS_PER_CONNECTION {
                    if Instant::now() >= deadline {
                        break;
                    }
                    let r = &requests[(i + n) % requests.len()];
                    let path = format!("/models/{}/invoke", r.model);
                    let Some(c) = conn.as_mut() else {
                        io_errors += 1;
                        conn = Connection::open(addr).ok();
                        continue;
                    };
                    let t = Instant::now();
                    match c.post(&path, r.content_type, &r.body) {
                        Ok(status) => {
                            latencies.push(t.elapsed().as_micros() as u64);
                            *statuses.entry(status).or_insert(0u64) += 1;
                            if status == 503 {
                                std::thread::sleep(Duration::from_millis(100));
                            }
                        }
                        Err(_) => {
                            io_errors += 1;
                            conn = Connection::open(addr).ok();
                        }
                    }
                }
                let mut all = results.lock().unwrap();
                all.0.extend(latencies);
                for (s, n) in statuses {
                    *all.1.entry(s).or_insert(0) += n;
                }
                all.2 += io_errors;
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let hwm = rss_kib(pid, "VmHWM:");
    let metrics = common::request(addr, "GET", "/metrics", &[], b"").text();
    let _ = Command::new("kill").arg(pid.to_string()).status();
    let exit = child.wait().unwrap();

    let (mut latencies, statuses, io_errors) = std::mem::take(&mut *results.lock().unwrap());
    latencies.sort_unstable();
    let total: u64 = statuses.values().sum();
    let ok = statuses.get(&200).copied().unwrap_or(0);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("model name")?
                    .split_once(':')
                    .map(|x| x.1.trim().to_string())
            })
        })
        .unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!("load test: {connections} connections, {seconds} s, 3 models, memory budget {:.1} MiB (the two largest of {:?} MiB)",
        mib(budget), sizes.iter().map(|&s| (mib(s) * 10.0).round() / 10.0).collect::<Vec<_>>());
    println!(
        "machine: {cpu}, {} CPUs, load average before/after {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load.trim()
    );
    println!(
        "requests: {total} answered in {elapsed:.1} s = {:.1} req/s ({:.1} req/s answered 200)",
        total as f64 / elapsed,
        ok as f64 / elapsed
    );
    println!(
        "latency (all answers): p50 {}, p99 {}, max {}",
        ms(percentile(&latencies, 50.0)),
        ms(percentile(&latencies, 99.0)),
        ms(latencies.last().copied().unwrap_or(0))
    );
    println!("answers by status: {statuses:?}; connection errors: {io_errors}");
    println!("server RSS: idle {:.1} MiB, peak sampled {:.1} MiB, VmHWM {:.1} MiB; budget {:.1} MiB of weights",
        rss_idle as f64 / 1024.0, peak_rss.load(Ordering::Relaxed) as f64 / 1024.0, hwm as f64 / 1024.0, mib(budget));
    for r in requests.iter() {
        println!(
            "single request, {}: in-process JSON path (edgemm invoke) {}, over HTTP {}",
            r.model,
            ms(single[r.model]),
            ms(http_single[r.model])
        );
    }
    for line in metrics.lines().filter(|l| {
        l.starts_with("ModelLoads_total{")
            || l.starts_with("ModelEvictions_total{")
            || l.starts_with("ModelLoadingWaitTime_microseconds_count")
    }) {
        println!("server metric: {line}");
    }
    println!("server exit after SIGTERM: {exit}");
    let unexpected: Vec<_> = statuses
        .keys()
        .filter(|s| !matches!(s, 200 | 503 | 507))
        .collect();
    assert!(
        unexpected.is_empty(),
        "statuses other than 200/503/507: {unexpected:?}"
    );
    assert_eq!(io_errors, 0, "connection errors under load");
    assert!(exit.success(), "the server did not exit cleanly on SIGTERM");
}
