//! The model cache across processes: several `edgemm` processes share one cache directory.

mod common;

use common::cache_fixture::*;

/// Several processes sharing one cache directory, all extracting the same models at once,
/// each get correct answers and leave one intact copy per model (the file lock at work).
#[test]
fn processes_sharing_a_cache_directory_do_not_collide() {
    use std::io::Write;
    use std::process::Stdio;
    let repo = Repo::new(3);
    let expected = reference_answers(&repo, 3);
    let values: Vec<f32> = input();
    let rows: Vec<Vec<[f32; 3]>> = values
        .chunks(24)
        .map(|row| row.chunks(3).map(|p| [p[0], p[1], p[2]]).collect())
        .collect();
    let body = serde_json::json!({ "instances": [rows] }).to_string();
    let children: Vec<_> = (0..6)
        .map(|i| {
            let mut child = common::cli()
                .arg("--cache-dir")
                .arg(repo.cache_dir())
                .args(["invoke", "--model", &name(i % 3), "--repo"])
                .arg(repo.repo())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(body.as_bytes())
                .unwrap();
            (i % 3, child)
        })
        .collect();
    for (model, child) in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let got: Vec<f32> = answer["predictions"][0]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        for (a, b) in got.iter().zip(&expected[model]) {
            assert!(
                (a - b).abs() < 1e-6,
                "model {model}: {got:?} vs {:?}",
                expected[model]
            );
        }
    }
    let mut dirs: Vec<String> = std::fs::read_dir(repo.cache_dir().join("models"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    assert_eq!(dirs, strings(&["m00.tar.gz", "m01.tar.gz", "m02.tar.gz"]));
    // And the copies are intact: a new cache adopts and loads them without extracting.
    let cache = repo.cache(repo.options(3));
    for (i, expected) in expected.iter().enumerate() {
        assert_eq!(&answer(&cache, &name(i)), expected);
    }
    assert!(!script(&cache.take_events())
        .iter()
        .any(|e| e.starts_with("extract")));
}
