//! Kill -9 under load, restart on the same cache directory: complete extracted copies are
//! reused (no re-extraction), half-written ones are gone, every model answers as before.
//! Runs the example server binary (examples/serve.rs) as a child process.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// target/<profile>/examples/serve, built if `cargo test` did not build the examples.
fn serve_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let binary = profile_dir.join("examples/serve");
    if !binary.is_file() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "edgemm-server", "--example", "serve"])
            .status()
            .unwrap();
        assert!(status.success(), "building the serve example failed");
    }
    binary
}

/// Starts the server and waits for its `listening` line; stderr is drained by a thread.
fn spawn(repo: &Path, cache: &Path) -> (Child, SocketAddr) {
    let mut child = Command::new(serve_binary())
        .args([
            "--repo",
            repo.to_str().unwrap(),
            "--cache-dir",
            cache.to_str().unwrap(),
        ])
        .args(["--bind", "127.0.0.1:0", "--no-access-log", "--workers", "2"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("the server says where it listens")
            .unwrap();
        if let Ok(v) = serde_json::from_str::<Value>(&line) {
            if v["event"] == "listening" {
                break v["address"].as_str().unwrap().parse().unwrap();
            }
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    (child, addr)
}

fn metric(addr: SocketAddr, name: &str) -> u64 {
    let text = request(addr, "GET", "/metrics", &[], b"").text();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

/// (complete copies, partial directories) in the cache.
fn copies(cache: &Path) -> (usize, usize) {
    let mut complete = 0;
    let mut partial = 0;
    for entry in std::fs::read_dir(cache.join("models")).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(edgemm::artifact::PARTIAL_PREFIX) {
            partial += 1;
        } else if entry.path().join("edgemm-copy.json").is_file() {
            complete += 1;
        }
    }
    (complete, partial)
}

fn bodies() -> Vec<(&'static str, String)> {
    let photo = std::fs::read(samples().join("imagenet/cat.png")).unwrap();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(photo);
    vec![
        (
            "cifar.tar.gz",
            json!({ "instances": [cifar_instance()] }).to_string(),
        ),
        (
            "sign-language.tar.gz",
            json!({ "instances": [sign_instance()] }).to_string(),
        ),
        (
            "efficientnet-lite0.tar.gz",
            json!({ "instances": [{ "b64": b64 }] }).to_string(),
        ),
    ]
}

#[test]
fn kill_9_under_load_then_restart_reuses_the_cache() {
    let dirs = Dirs::new(&MODELS);
    let (mut child, addr) = spawn(&dirs.repo(), &dirs.cache());
    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = bodies()
        .into_iter()
        .flat_map(|(model, body)| [(model, body.clone()), (model, body)])
        .map(|(model, body)| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let path = format!("/models/{model}/invoke");
                while !stop.load(Ordering::Relaxed) {
                    if try_request(addr, "POST", &path, &[], body.as_bytes()).is_none() {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            })
        })
        .collect();
    // Kill once one model is extracted and another is half-way (a `.partial-` directory);
    // if no extraction is caught half-way, once one is extracted.
    let caught = eventually(60, || {
        let (complete, partial) = copies(&dirs.cache());
        complete >= 1 && partial >= 1
    });
    if !caught {
        assert!(eventually(60, || copies(&dirs.cache()).0 >= 1));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.join().unwrap();
    }
    let (complete, partial) = copies(&dirs.cache());
    eprintln!(
        "after SIGKILL: {complete} complete copies, {partial} partial extraction directories"
    );
    assert!(complete >= 1);

    let (mut child, addr) = spawn(&dirs.repo(), &dirs.cache());
    assert_eq!(
        copies(&dirs.cache()).1,
        0,
        "partial extractions survive a restart"
    );
    for (model, body) in bodies() {
        let reply = request(
            addr,
            "POST",
            &format!("/models/{model}/invoke"),
            &[],
            body.as_bytes(),
        );
        assert_eq!(reply.status, 200, "{model}: {}", reply.text());
        assert_same_predictions(
            &reply.json(),
            &expected(&dirs.repo(), model, body.as_bytes()),
        );
    }
    // Only the models without a complete copy were extracted again.
    assert_eq!(
        metric(addr, "ModelDownloadingTime_microseconds_count"),
        (MODELS.len() - complete) as u64
    );
    assert_eq!(copies(&dirs.cache()), (MODELS.len(), 0));
    // SIGTERM: a clean, drained exit.
    let status = Command::new("kill")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    assert!(child.wait().unwrap().success());
}
