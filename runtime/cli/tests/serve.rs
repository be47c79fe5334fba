//! `edgemm serve`: the CLI starts the server with its flags and the global cache flags; an
//! InvokeEndpoint request answers what the library answers; SIGTERM stops it cleanly. The
//! contracts themselves are tested in runtime/server/tests.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};

use edgemm::{Input, Runtime, RuntimeOptions};

/// One HTTP/1.1 request on a fresh connection: the status code and the body.
fn request(addr: &str, head: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "{head}\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    stream.write_all(body).unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    let split = answer.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let status = String::from_utf8_lossy(&answer[9..12]).parse().unwrap();
    (status, answer[split + 4..].to_vec())
}

#[test]
fn serve_answers_invoke_endpoint_as_the_library_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = common::cli()
        .arg("--cache-dir")
        .arg(dir.path().join("cache"))
        .args([
            "--memory-budget-mb",
            "256",
            "serve",
            "--bind",
            "127.0.0.1:0",
        ])
        .arg("--repo")
        .arg(common::shipped_repository())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The first line on stderr says where it listens (port 0: a free one).
    let mut log = BufReader::new(server.stderr.take().unwrap());
    let mut line = String::new();
    log.read_line(&mut line).unwrap();
    let event: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(event["event"], "listening", "{line}");
    let addr = event["address"].as_str().unwrap().to_string();

    let (status, _) = request(&addr, "GET /ping HTTP/1.1", b"");
    assert_eq!(status, 200);
    let photo = std::fs::read(common::shipped_sample("hot_dog.jpg")).unwrap();
    let (status, body) = request(
        &addr,
        "POST /endpoints/kiosk/invocations HTTP/1.1\r\nContent-Type: image/jpeg\r\n\
         X-Amzn-SageMaker-Target-Model: efficientnet-lite0.tar.gz",
        &photo,
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let served: Vec<f64> = answer["predictions"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_f64().unwrap())
        .collect();
    let mut options = RuntimeOptions::new(common::shipped_repository());
    options.cache_dir = dir.path().join("library-cache");
    let library = Runtime::new(options)
        .unwrap()
        .invoke("efficientnet-lite0.tar.gz", Input::Image(&photo))
        .unwrap();
    let expected = &library.predictions[0].probabilities;
    assert_eq!(served.len(), expected.len());
    for (s, e) in served.iter().zip(expected) {
        assert!((s - f64::from(*e)).abs() < 1e-6, "{s} vs {e}");
    }

    let (status, body) = request(
        &addr,
        "POST /endpoints/kiosk/invocations HTTP/1.1\r\nContent-Type: application/json\r\n\
         X-Amzn-SageMaker-Target-Model: nope.tar.gz",
        b"{}",
    );
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));

    let killed = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let exit = server.wait().unwrap();
    assert!(exit.success(), "after SIGTERM: {exit:?}");
    let mut rest = String::new();
    log.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("\"event\":\"shutdown\""), "{rest}");
}
