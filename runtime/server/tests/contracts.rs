//! The three contracts over HTTP, against a server started in-process on an ephemeral
//! loopback port over a temporary copy of the shipped models.

mod common;

use std::time::{Duration, Instant};

use base64::Engine;
use common::*;
use serde_json::json;

fn endpoint(target: &str) -> Vec<(&'static str, String)> {
    vec![
        ("Content-Type", "application/json".into()),
        ("X-Amzn-SageMaker-Target-Model", target.into()),
    ]
}

fn as_refs<'a>(h: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    h.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// InvokeEndpoint with the seeds' request shapes gives the in-process runtime's numbers, for
/// both shipped classifiers, a b64 photo and a raw JPEG; the SageMaker headers come back.
#[test]
fn invoke_endpoint_answers_as_the_runtime_does() {
    let dirs = Dirs::new(&MODELS);
    let server = Running::start(dirs.options());
    let cases = [
        ("cifar.tar.gz", json!({ "instances": [cifar_instance()] })),
        (
            "sign-language.tar.gz",
            json!({ "instances": [sign_instance()] }),
        ),
        (
            "efficientnet-lite0.tar.gz",
            json!({ "instances": [{ "b64": base64::engine::general_purpose::STANDARD.encode(jpeg_photo()) }] }),
        ),
    ];
    for (model, request) in cases {
        let body = request.to_string();
        let mut headers = endpoint(model);
        headers.push(("X-Amzn-SageMaker-Custom-Attributes", "trace=42".into()));
        headers.push(("Accept", "application/json".into()));
        let reply = server.request(
            "POST",
            "/endpoints/device/invocations",
            &as_refs(&headers),
            body.as_bytes(),
        );
        assert_eq!(reply.status, 200, "{model}: {}", reply.text());
        assert_eq!(
            reply.header("x-amzn-invoked-production-variant"),
            Some("AllTraffic")
        );
        assert_eq!(
            reply.header("x-amzn-sagemaker-custom-attributes"),
            Some("trace=42")
        );
        assert!(reply.header("x-amzn-requestid").is_some());
        assert_eq!(reply.header("content-type"), Some("application/json"));
        assert_same_predictions(
            &reply.json(),
            &expected(&dirs.repo(), model, body.as_bytes()),
        );
    }
    // A raw JPEG body, as SageMaker's image classifiers take it, is the b64 request's answer.
    let b64 = json!({ "instances": [{ "b64": base64::engine::general_purpose::STANDARD.encode(jpeg_photo()) }] });
    for content_type in ["image/jpeg", "application/x-image"] {
        let reply = server.request(
            "POST",
            "/endpoints/device/invocations",
            &[
                ("Content-Type", content_type),
                ("X-Amzn-SageMaker-Target-Model", "efficientnet-lite0.tar.gz"),
            ],
            &jpeg_photo(),
        );
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_same_predictions(
            &reply.json(),
            &expected(
                &dirs.repo(),
                "efficientnet-lite0.tar.gz",
                b64.to_string().as_bytes(),
            ),
        );
    }
    server.stop();
}

/// Errors come in the service's shapes, so botocore picks the cloud's exception classes.
#[test]
fn invoke_endpoint_errors_use_the_service_shapes() {
    let dirs = Dirs::new(&["cifar.tar.gz"]);
    let mut options = dirs.options();
    options.max_payload_bytes = 1 << 20;
    options.endpoint_name = Some("device".into());
    let server = Running::start(options);
    let path = "/endpoints/device/invocations";
    let kind = |r: &Reply| {
        r.header("x-amzn-errortype")
            .map(|t| t.split(':').next().unwrap().to_string())
    };

    let unknown = server.request("POST", path, &as_refs(&endpoint("nope.tar.gz")), b"{}");
    assert_eq!(
        (unknown.status, kind(&unknown).as_deref()),
        (400, Some("ValidationError")),
        "{}",
        unknown.text()
    );
    assert!(unknown.json()["message"]
        .as_str()
        .unwrap()
        .contains("not found"));

    let traversal = server.request("POST", path, &as_refs(&endpoint("../etc/passwd")), b"{}");
    assert_eq!(
        (traversal.status, kind(&traversal).as_deref()),
        (400, Some("ValidationError"))
    );

    let no_target = server.request("POST", path, &[("Content-Type", "application/json")], b"{}");
    assert_eq!(
        (no_target.status, kind(&no_target).as_deref()),
        (400, Some("ValidationError"))
    );

    let other = server.request(
        "POST",
        "/endpoints/other/invocations",
        &as_refs(&endpoint("cifar.tar.gz")),
        b"{}",
    );
    assert_eq!(
        (other.status, kind(&other).as_deref()),
        (400, Some("ValidationError"))
    );

    let bad = server.request(
        "POST",
        path,
        &as_refs(&endpoint("cifar.tar.gz")),
        br#"{"instances": [[[1, 2], [3]]]}"#,
    );
    assert_eq!(
        (bad.status, kind(&bad).as_deref()),
        (424, Some("ModelError")),
        "{}",
        bad.text()
    );
    assert_eq!(bad.json()["OriginalStatusCode"], 400);
    assert!(bad.json()["OriginalMessage"]
        .as_str()
        .unwrap()
        .contains("ragged"));

    let csv = server.request(
        "POST",
        path,
        &[
            ("Content-Type", "text/csv"),
            ("X-Amzn-SageMaker-Target-Model", "cifar.tar.gz"),
        ],
        b"1,2,3",
    );
    assert_eq!(
        (csv.status, kind(&csv).as_deref()),
        (424, Some("ModelError"))
    );
    assert_eq!(csv.json()["OriginalStatusCode"], 415);

    // Over the limit: refused while reading, before the rest of the body is kept.
    let big = vec![b' '; (1 << 20) + 1];
    let too_big = server.request("POST", path, &as_refs(&endpoint("cifar.tar.gz")), &big);
    assert_eq!(
        (too_big.status, kind(&too_big)),
        (413, None),
        "{}",
        too_big.text()
    );
    server.stop();
}

/// The container routes: TF Serving predict and status, `/invocations`, `/models/{name}/invoke`.
#[test]
fn tf_serving_and_container_routes() {
    let dirs = Dirs::new(&["cifar.tar.gz"]);
    let server = Running::start(dirs.options());
    let body =
        json!({ "instances": [cifar_instance()], "signature_name": "serving_default" }).to_string();
    let want = expected(&dirs.repo(), "cifar.tar.gz", body.as_bytes());
    for path in [
        "/v1/models/cifar:predict",
        "/v1/models/cifar.tar.gz/versions/1:predict",
        "/models/cifar.tar.gz/invoke",
    ] {
        let reply = server.request(
            "POST",
            path,
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        );
        assert_eq!(reply.status, 200, "{path}: {}", reply.text());
        assert_same_predictions(&reply.json(), &want);
    }
    let reply = server.request(
        "POST",
        "/invocations",
        &as_refs(&endpoint("cifar.tar.gz")),
        body.as_bytes(),
    );
    assert_same_predictions(&reply.json(), &want);

    let columnar = json!({ "inputs": [cifar_instance()] }).to_string();
    let reply = server.request("POST", "/v1/models/cifar:predict", &[], columnar.as_bytes());
    assert_same_predictions(&json!({ "predictions": reply.json()["outputs"] }), &want);

    let status = server.request("GET", "/v1/models/cifar", &[], b"");
    assert_eq!(
        status.json()["model_version_status"][0]["state"],
        "AVAILABLE"
    );
    let missing = server.request("GET", "/v1/models/nope", &[], b"");
    assert_eq!(missing.status, 404);
    assert!(missing.json()["error"].is_string());
    let bad = server.request(
        "POST",
        "/v1/models/cifar:predict",
        &[],
        b"{\"instances\": 3}",
    );
    assert_eq!(bad.status, 400);
    assert!(bad.json()["error"].as_str().unwrap().contains("list"));
    let missing = server.request("POST", "/models/nope.tar.gz/invoke", &[], body.as_bytes());
    assert_eq!(missing.status, 404);
    server.stop();
}

/// The MME container contract as the platform drives it: load from a local url (an archive,
/// an extracted directory), 409 on a second load, invoke, list, describe, unload, 404s.
#[test]
fn mme_contract_load_invoke_list_unload() {
    let dirs = Dirs::new(&[]);
    let server = Running::start(dirs.options());
    // The platform's layout: /opt/ml/models/<hash>/model holds the extracted archive.
    let extracted = dirs.root.path().join("opt/ml/models/0123/model");
    std::fs::create_dir_all(&extracted).unwrap();
    let archive = std::fs::File::open(shipped_repository().join("cifar.tar.gz")).unwrap();
    tar::Archive::new(flate2::read::GzDecoder::new(archive))
        .unpack(&extracted)
        .unwrap();
    let tarball = shipped_repository().join("sign-language.tar.gz");

    let load = |name: &str, url: &str| {
        let body = json!({ "model_name": name, "url": url }).to_string();
        server.request(
            "POST",
            "/models",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
    };
    let loaded = load("cifar", extracted.to_str().unwrap());
    assert_eq!(loaded.status, 200, "{}", loaded.text());
    assert_eq!(load("sign", tarball.to_str().unwrap()).status, 200);
    assert_eq!(load("cifar", extracted.to_str().unwrap()).status, 409);
    assert_eq!(load("ghost", "/no/such/dir").status, 404);
    assert_eq!(load("../x", "/tmp").status, 400);
    assert_eq!(
        server
            .request("POST", "/models", &[], b"{\"url\": 1}")
            .status,
        400
    );

    let body = json!({ "instances": [cifar_instance()] }).to_string();
    let reply = server.request("POST", "/models/cifar/invoke", &[], body.as_bytes());
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_same_predictions(
        &reply.json(),
        &expected(&shipped_repository(), "cifar.tar.gz", body.as_bytes()),
    );
    let reply = server.request(
        "POST",
        "/invocations",
        &as_refs(&endpoint("cifar")),
        body.as_bytes(),
    );
    assert_eq!(reply.status, 200);

    let list = server.request("GET", "/models", &[], b"").json();
    let names: Vec<&str> = list["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["modelName"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["cifar", "sign"]);
    assert_eq!(list["models"][0]["modelUrl"], extracted.to_str().unwrap());
    let page = server
        .request("GET", "/models?page_size=1", &[], b"")
        .json();
    assert_eq!(page["models"].as_array().unwrap().len(), 1);
    assert_eq!(page["nextPageToken"], "1");
    let described = server.request("GET", "/models/sign", &[], b"").json();
    assert_eq!(
        (described["modelName"].as_str(), described["state"].as_str()),
        (Some("sign"), Some("loaded"))
    );

    assert_eq!(
        server.request("DELETE", "/models/cifar", &[], b"").status,
        200
    );
    assert_eq!(
        server.request("DELETE", "/models/cifar", &[], b"").status,
        404
    );
    assert_eq!(server.request("GET", "/models/cifar", &[], b"").status, 404);
    assert_eq!(
        server
            .request("POST", "/models/cifar/invoke", &[], body.as_bytes())
            .status,
        404
    );
    assert_eq!(
        server.request("DELETE", "/models/never", &[], b"").status,
        404
    );
    // Unloaded, it may be loaded again (its extracted copy is reused).
    assert_eq!(load("cifar", extracted.to_str().unwrap()).status, 200);
    server.stop();
}

/// 507 when the model cannot fit the memory budget; nothing stays registered.
#[test]
fn mme_insufficient_memory_is_507() {
    let dirs = Dirs::new(&["cifar.tar.gz"]);
    let mut options = dirs.options();
    options.runtime.cache.memory_budget = 1 << 20;
    let server = Running::start(options);
    let url = shipped_repository().join("cifar.tar.gz");
    let body = json!({ "model_name": "cifar", "url": url }).to_string();
    let reply = server.request("POST", "/models", &[], body.as_bytes());
    assert_eq!(reply.status, 507, "{}", reply.text());
    assert!(reply.json()["error"].as_str().unwrap().contains("budget"));
    assert_eq!(server.request("GET", "/models/cifar", &[], b"").status, 404);
    // Through InvokeEndpoint the container's 507 comes back as the platform relays it.
    let body = json!({ "instances": [cifar_instance()] }).to_string();
    let reply = server.request(
        "POST",
        "/endpoints/e/invocations",
        &as_refs(&endpoint("cifar.tar.gz")),
        body.as_bytes(),
    );
    assert_eq!(reply.status, 424, "{}", reply.text());
    assert_eq!(reply.json()["OriginalStatusCode"], 507);
    assert_eq!(
        server
            .request("POST", "/models/cifar.tar.gz/invoke", &[], body.as_bytes())
            .status,
        507
    );
    server.stop();
}

/// `/ping` answers at once while a model is loading (held mid-extraction by the cache lock).
#[test]
fn ping_answers_while_a_model_is_loading() {
    let dirs = Dirs::new(&[]);
    let server = Running::start(dirs.options());
    let lock = ExtractionLock::hold(&dirs.cache());
    let addr = server.addr;
    let url = shipped_repository().join("efficientnet-lite0.tar.gz");
    let loader = std::thread::spawn(move || {
        let body = json!({ "model_name": "lite0", "url": url }).to_string();
        request(addr, "POST", "/models", &[], body.as_bytes())
    });
    assert!(eventually(30, || {
        server.request("GET", "/models/lite0", &[], b"").status == 200
            && server.request("GET", "/models/lite0", &[], b"").json()["state"] == "loading"
    }));
    for _ in 0..5 {
        let started = Instant::now();
        assert_eq!(server.request("GET", "/ping", &[], b"").status, 200);
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    drop(lock);
    assert_eq!(loader.join().unwrap().status, 200);
    assert_eq!(
        server.request("GET", "/models/lite0", &[], b"").json()["state"],
        "loaded"
    );
    server.stop();
}

/// A full queue answers 503 with Retry-After (ServiceUnavailable on InvokeEndpoint); a
/// request over its deadline answers 504 (ModelError on InvokeEndpoint).
#[test]
fn queue_full_and_deadline() {
    let dirs = Dirs::new(&["cifar.tar.gz", "sign-language.tar.gz"]);
    let mut options = dirs.options();
    options.workers = 1;
    options.queue_depth = 1;
    options.request_timeout = Duration::from_secs(2);
    let server = Running::start(options);
    let lock = ExtractionLock::hold(&dirs.cache());
    let addr = server.addr;
    let body = json!({ "instances": [cifar_instance()] }).to_string();
    // Two requests fill the pool and the queue: the first waits on the extraction lock, the
    // second for the worker.
    let held: Vec<_> = (0..2)
        .map(|_| {
            let body = body.clone();
            std::thread::spawn(move || {
                request(
                    addr,
                    "POST",
                    "/models/cifar.tar.gz/invoke",
                    &[],
                    body.as_bytes(),
                )
            })
        })
        .collect();
    assert!(eventually(10, || {
        let m = server.request("GET", "/metrics", &[], b"").text();
        m.contains("edgemm_requests_in_flight 2")
    }));
    let full = server.request("POST", "/models/cifar.tar.gz/invoke", &[], body.as_bytes());
    assert_eq!(full.status, 503);
    assert_eq!(full.header("retry-after"), Some("1"));
    let full = server.request(
        "POST",
        "/endpoints/e/invocations",
        &as_refs(&endpoint("cifar.tar.gz")),
        body.as_bytes(),
    );
    assert_eq!(
        (
            full.status,
            full.header("x-amzn-errortype")
                .map(|t| t.split(':').next().unwrap())
        ),
        (503, Some("ServiceUnavailable"))
    );
    for h in held {
        assert_eq!(h.join().unwrap().status, 504);
    }
    // The deadline on InvokeEndpoint: the worker is still held by the abandoned extraction.
    let late = server.request(
        "POST",
        "/endpoints/e/invocations",
        &as_refs(&endpoint("sign-language.tar.gz")),
        b"{}",
    );
    assert_eq!(
        (
            late.status,
            late.header("x-amzn-errortype")
                .map(|t| t.split(':').next().unwrap())
        ),
        (424, Some("ModelError"))
    );
    assert!(late.json()["message"]
        .as_str()
        .unwrap()
        .contains("timed out"));
    drop(lock);
    let metrics = server.request("GET", "/metrics", &[], b"").text();
    assert!(
        metrics.contains("edgemm_requests_rejected_queue_full_total 2"),
        "{metrics}"
    );
    server.stop();
}

/// With a token every route but `/ping` needs it, as a Bearer token or as the session token
/// boto3 sends; a non-loopback bind without one is refused.
#[test]
fn auth_token() {
    let dirs = Dirs::new(&["cifar.tar.gz"]);
    let token = "s3cret-token-0123456789";
    let mut options = dirs.options();
    options.auth_token = Some(token.into());
    let server = Running::start(options);
    assert_eq!(server.request("GET", "/ping", &[], b"").status, 200);
    let denied = server.request("GET", "/models", &[], b"");
    assert_eq!(
        (denied.status, denied.header("www-authenticate")),
        (401, Some("Bearer"))
    );
    let denied = server.request(
        "POST",
        "/endpoints/e/invocations",
        &as_refs(&endpoint("cifar.tar.gz")),
        b"{}",
    );
    assert_eq!(denied.status, 403);
    assert!(denied
        .header("x-amzn-errortype")
        .unwrap()
        .starts_with("UnrecognizedClientException"));
    let bearer = format!("Bearer {token}");
    assert_eq!(
        server
            .request("GET", "/models", &[("Authorization", &bearer)], b"")
            .status,
        200
    );
    assert_eq!(
        server
            .request("GET", "/models", &[("X-Amz-Security-Token", token)], b"")
            .status,
        200
    );
    assert_eq!(
        server
            .request("GET", "/models", &[("Authorization", "Bearer wrong")], b"")
            .status,
        401
    );
    server.stop();

    let mut open = dirs.options();
    open.bind = "0.0.0.0:0".parse().unwrap();
    let refused = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(edgemm_server::Server::bind(open));
    assert!(matches!(
        refused,
        Err(edgemm_server::ServeError::Unauthenticated { .. })
    ));
}

/// `/metrics` is Prometheus text with the MME names and per-model series.
#[test]
fn metrics_use_the_mme_names() {
    let dirs = Dirs::new(&["cifar.tar.gz"]);
    let server = Running::start(dirs.options());
    let body = json!({ "instances": [cifar_instance()] }).to_string();
    for _ in 0..2 {
        assert_eq!(
            server
                .request("POST", "/models/cifar.tar.gz/invoke", &[], body.as_bytes())
                .status,
            200
        );
    }
    server.request("POST", "/models/cifar.tar.gz/invoke", &[], b"{}");
    let reply = server.request("GET", "/metrics", &[], b"");
    assert!(reply
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = reply.text();
    for line in [
        "ModelDownloadingTime_microseconds_count 1",
        "ModelLoadingTime_microseconds_count 1",
        "ModelLoadingWaitTime_microseconds_count 1",
        // The first request loads, the second hits, the third is refused before the cache.
        "ModelCacheHit_total 1",
        "LoadedModelCount 1",
        "Invocations_total{model=\"cifar.tar.gz\"} 3",
        "Invocation4XXErrors_total{model=\"cifar.tar.gz\"} 1",
        "ModelLoaded{model=\"cifar.tar.gz\"} 1",
        "edgemm_http_requests_total{route=\"/models/{name}/invoke\",status=\"200\"} 2",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    server.stop();
}

/// Shutdown drains: a request in flight when the signal comes is still answered.
#[test]
fn shutdown_drains_requests_in_flight() {
    let dirs = Dirs::new(&["cifar.tar.gz"]);
    let mut server = Running::start(dirs.options());
    let lock = ExtractionLock::hold(&dirs.cache());
    let addr = server.addr;
    let body = json!({ "instances": [cifar_instance()] }).to_string();
    let in_flight = std::thread::spawn(move || {
        request(
            addr,
            "POST",
            "/models/cifar.tar.gz/invoke",
            &[],
            body.as_bytes(),
        )
    });
    assert!(eventually(10, || server
        .request("GET", "/metrics", &[], b"")
        .text()
        .contains("edgemm_requests_in_flight 1")));
    server.signal_shutdown();
    std::thread::sleep(Duration::from_millis(300));
    drop(lock);
    assert_eq!(in_flight.join().unwrap().status, 200);
    server.stop();
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "still listening after shutdown"
    );
}
