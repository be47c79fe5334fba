//! Shared by the server's tests: a server started in-process on an ephemeral loopback port
//! over a temporary copy of the shipped repository, a minimal HTTP/1.1 client, and the seeds'
//! request shapes.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use edgemm_server::{Server, ServerOptions};
use serde_json::{json, Value};

pub const MODELS: [&str; 3] = [
    "cifar.tar.gz",
    "sign-language.tar.gz",
    "efficientnet-lite0.tar.gz",
];

pub fn shipped_repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/repository")
}

pub fn samples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/samples")
}

/// A temporary repository holding copies of `models`, and a temporary cache directory.
pub struct Dirs {
    pub root: tempfile::TempDir,
}

impl Dirs {
    pub fn new(models: &[&str]) -> Self {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("repo")).unwrap();
        for m in models {
            std::fs::copy(
                shipped_repository().join(m),
                root.path().join("repo").join(m),
            )
            .unwrap();
        }
        Self { root }
    }
    pub fn repo(&self) -> PathBuf {
        self.root.path().join("repo")
    }
    pub fn cache(&self) -> PathBuf {
        self.root.path().join("cache")
    }
    pub fn options(&self) -> ServerOptions {
        let mut o = ServerOptions::new(self.repo());
        o.runtime.cache_dir = self.cache();
        o.bind = "127.0.0.1:0".parse().unwrap();
        o.workers = 2;
        o.access_log = false;
        o
    }
}

/// A server running on its own tokio runtime in a background thread.
pub struct Running {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), edgemm_server::ServeError>>>,
}

impl Running {
    pub fn start(options: ServerOptions) -> Self {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let server = Server::bind(options).await?;
                addr_tx.send(server.local_addr()).unwrap();
                server
                    .serve(async move {
                        let _ = stopped.await;
                    })
                    .await
            })
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the server binds");
        Self {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Signals shutdown (as SIGTERM does) and returns without waiting.
    pub fn signal_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Signals shutdown and waits for the server to return.
    pub fn stop(mut self) {
        self.signal_shutdown();
        if let Some(t) = self.thread.take() {
            t.join().unwrap().unwrap();
        }
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Reply {
        request(self.addr, method, path, headers, body)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.signal_shutdown();
    }
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One request on a fresh connection (`Connection: close`), read to the end.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    try_request(addr, method, path, headers, body).expect("the server answers")
}

/// [`request`], or `None` when there is no answer (a server that is gone).
pub fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Option<Reply> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .ok()?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).ok()?;
    // A server may answer (413) and stop reading before the body is all sent.
    let _ = stream.write_all(body);
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    parse_reply(&raw)
}

fn parse_reply(raw: &[u8]) -> Option<Reply> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Some(Reply {
        status,
        headers,
        body: raw[end + 4..].to_vec(),
    })
}

/// The seeds' CIFAR instance: 32x32x3 floats in [0, 1] (`x.tolist()`), from a real sample.
pub fn cifar_instance() -> Value {
    let dir = samples().join("cifar10/cat");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    let img = image::open(&files[0]).unwrap().to_rgb8();
    let img = image::imageops::resize(&img, 32, 32, image::imageops::FilterType::Triangle);
    nested(&img, |v| json!(f64::from(v) / 255.0))
}

/// The seeds' sign-language instance: 224x224x3 raw pixels 0..255, from a real sample.
pub fn sign_instance() -> Value {
    let dir = samples().join("sign-digits/0");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    let img = image::open(&files[0]).unwrap().to_rgb8();
    let img = image::imageops::resize(&img, 224, 224, image::imageops::FilterType::Triangle);
    nested(&img, |v| json!(v))
}

fn nested(img: &image::RgbImage, value: impl Fn(u8) -> Value) -> Value {
    let (w, h) = img.dimensions();
    Value::Array(
        (0..h)
            .map(|y| {
                Value::Array(
                    (0..w)
                        .map(|x| {
                            Value::Array(img.get_pixel(x, y).0.iter().map(|&c| value(c)).collect())
                        })
                        .collect(),
                )
            })
            .collect(),
    )
}

pub fn jpeg_photo() -> Vec<u8> {
    std::fs::read(samples().join("imagenet/hot_dog.jpg")).unwrap()
}

/// What the runtime answers in-process (the `edgemm invoke` path) for a JSON body.
pub fn expected(repo: &Path, model: &str, body: &[u8]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let mut options = edgemm::RuntimeOptions::new(repo);
    options.cache_dir = dir.path().to_path_buf();
    let runtime = edgemm::Runtime::new(options).unwrap();
    edgemm::json::invoke_json(&runtime, model, body).unwrap()
}

/// Asserts two `{"predictions": [[...]]}` answers agree to 1e-6.
pub fn assert_same_predictions(a: &Value, b: &Value) {
    let rows = |v: &Value| -> Vec<Vec<f64>> {
        v["predictions"]
            .as_array()
            .unwrap_or_else(|| panic!("no predictions in {v}"))
            .iter()
            .map(|r| {
                r.as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p.as_f64().unwrap())
                    .collect()
            })
            .collect()
    };
    let (a, b) = (rows(a), rows(b));
    assert_eq!(a.len(), b.len());
    for (ra, rb) in a.iter().zip(&b) {
        assert_eq!(ra.len(), rb.len());
        for (x, y) in ra.iter().zip(rb) {
            assert!((x - y).abs() <= 1e-6, "{x} vs {y}");
        }
    }
}

/// Holds the model cache's extraction lock, as another process sharing the cache directory
/// would: extractions wait while it is held. Lets a test keep a load in progress.
pub struct ExtractionLock(std::fs::File);

impl ExtractionLock {
    pub fn hold(cache_dir: &Path) -> Self {
        std::fs::create_dir_all(cache_dir).unwrap();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(cache_dir.join("lock"))
            .unwrap();
        file.lock().unwrap();
        Self(file)
    }
}

impl Drop for ExtractionLock {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

/// Polls `f` every 10 ms for up to `secs` seconds.
pub fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + Duration::from_secs(secs);
    while std::time::Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}
