//! A runtime is shared across threads: simultaneous first requests for one model must all
//! succeed (one extraction, not several racing into the same directory) and agree.

mod common;

use std::sync::Arc;

use common::Fixture;

#[test]
fn simultaneous_first_requests_all_succeed() {
    let fx = Arc::new(Fixture::cifar());
    let data: Arc<Vec<f32>> =
        Arc::new((0..32 * 32 * 3).map(|i| (i % 255) as f32 / 255.0).collect());
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (fx, data) = (fx.clone(), data.clone());
            std::thread::spawn(move || {
                fx.runtime
                    .invoke(
                        "cifar.tar.gz",
                        edgemm::Input::Tensor {
                            data: &data,
                            shape: &[32, 32, 3],
                        },
                    )
                    .unwrap()
                    .predictions[0]
                    .probabilities
                    .clone()
            })
        })
        .collect();
    let answers: Vec<Vec<f32>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    for answer in &answers[1..] {
        assert_eq!(answer, &answers[0]);
    }
    // Exactly one extracted copy, and no partial directory left behind.
    let entries: Vec<String> = std::fs::read_dir(fx.cache().join("models"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(entries, ["cifar.tar.gz"]);
}
