//! An unmodified boto3 `sagemaker-runtime` client (tests/boto3_client.py, pinned in
//! tests/requirements-boto3.txt) against the server: the same predictions as the runtime's
//! JSON path (`edgemm invoke`), and the cloud's botocore exception classes.
//!
//! Needs target/boto3-venv (made by .ci/run). Without python3 the test says SKIPPED and
//! passes; with python3 but no venv it says SKIPPED too, except under CI (`CI` set), where
//! .ci/run should have made the venv and the test fails.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine;
use common::*;
use serde_json::{json, Value};

/// The venv's python; else whether to skip (no python3 at all) or fail (python3 is there, so
/// CI should have made the venv) and why.
fn venv_python() -> Result<PathBuf, (bool, String)> {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/boto3-venv/bin/python");
    if python.is_file() {
        return Ok(python);
    }
    if Command::new("python3").arg("--version").output().is_err() {
        return Err((true, "python3 is not installed".into()));
    }
    let reason = "target/boto3-venv is missing (python3 -m venv target/boto3-venv && \
                  target/boto3-venv/bin/pip install -r runtime/server/tests/requirements-boto3.txt)";
    Err((std::env::var_os("CI").is_none(), reason.into()))
}

#[test]
fn boto3_client_gets_the_runtime_answers_and_the_cloud_exceptions() {
    let python = match venv_python() {
        Ok(p) => p,
        Err((true, reason)) => {
            // Past the harness's capture, so the skip shows in a passing run's output.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED boto3_client_gets_the_runtime_answers_and_the_cloud_exceptions: {reason}"
            );
            return;
        }
        Err((false, reason)) => panic!("boto3 test cannot run under CI: {reason}"),
    };
    let dirs = Dirs::new(&MODELS);
    let mut options = dirs.options();
    options.max_payload_bytes = 6 << 20;
    let server = Running::start(options);
    let work = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let path = work.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path.to_string_lossy().into_owned()
    };

    let photo_b64 = base64::engine::general_purpose::STANDARD.encode(jpeg_photo());
    let requests = [
        ("cifar.tar.gz", json!({ "instances": [cifar_instance()] })),
        (
            "sign-language.tar.gz",
            json!({ "instances": [sign_instance()] }),
        ),
        (
            "efficientnet-lite0.tar.gz",
            json!({ "instances": [{ "b64": photo_b64 }] }),
        ),
    ];
    let mut cases = Vec::new();
    let mut want = Vec::new();
    for (i, (model, request)) in requests.iter().enumerate() {
        let body = request.to_string();
        want.push(expected(&dirs.repo(), model, body.as_bytes()));
        cases.push(json!({
            "target_model": model, "content_type": "application/json", "accept": "application/json",
            "custom_attributes": format!("case={i}"), "body_file": write(&format!("{i}.json"), body.as_bytes()),
        }));
    }
    // A raw JPEG, as SageMaker's image classifiers take it: the b64 request's answer.
    want.push(want[2].clone());
    cases.push(json!({
        "target_model": "efficientnet-lite0.tar.gz", "content_type": "image/jpeg",
        "body_file": write("photo.jpg", &jpeg_photo()),
    }));
    // The failures: a bad model name, a bad body, an oversized body (7 MB > 6 MB).
    let ok_body = write("ok.json", requests[0].1.to_string().as_bytes());
    cases.push(json!({ "target_model": "no-such-model.tar.gz", "content_type": "application/json", "body_file": ok_body }));
    cases.push(
        json!({ "target_model": "cifar.tar.gz", "content_type": "application/json",
        "body_file": write("bad.json", br#"{"instances": "not a list"}"#) }),
    );
    let mut big = br#"{"instances": [], "pad": ""#.to_vec();
    big.resize(7 << 20, b' ');
    cases.push(json!({ "target_model": "cifar.tar.gz", "content_type": "application/json", "body_file": write("big.json", &big) }));

    let cases_path = write("cases.json", json!(cases).to_string().as_bytes());
    let out_path = work.path().join("out.json");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/boto3_client.py");
    let status = Command::new(&python)
        .arg(&script)
        .arg(format!("http://{}", server.addr))
        .arg(&cases_path)
        .arg(&out_path)
        .status()
        .unwrap();
    assert!(status.success(), "boto3_client.py failed");
    let results: Vec<Value> = serde_json::from_slice(&std::fs::read(&out_path).unwrap()).unwrap();
    for (i, expected) in want.iter().enumerate() {
        let r = &results[i];
        assert_eq!(r["ok"], true, "case {i}: {r}");
        assert_same_predictions(&r["body"], expected);
        assert_eq!(r["content_type"], "application/json");
        assert_eq!(r["variant"], "AllTraffic");
        if i < 3 {
            assert_eq!(r["custom_attributes"], format!("case={i}"));
        }
    }
    let failure = |i: usize| &results[want.len() + i];
    // Unknown model: the cloud's ValidationError.
    assert_eq!(
        (
            &failure(0)["exception"],
            &failure(0)["code"],
            &failure(0)["status"]
        ),
        (
            &json!("ValidationError"),
            &json!("ValidationError"),
            &json!(400)
        ),
        "{}",
        failure(0)
    );
    // A body the model refuses: ModelError carrying the container's 400.
    assert_eq!(
        (
            &failure(1)["exception"],
            &failure(1)["status"],
            &failure(1)["original_status"]
        ),
        (&json!("ModelError"), &json!(424), &json!(400)),
        "{}",
        failure(1)
    );
    // Over 6 MB: the cloud's bare 413, which botocore raises as ClientError with code "413".
    assert_eq!(
        (
            &failure(2)["exception"],
            &failure(2)["code"],
            &failure(2)["status"]
        ),
        (&json!("ClientError"), &json!("413"), &json!(413)),
        "{}",
        failure(2)
    );
    server.stop();
}
