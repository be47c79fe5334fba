//! Times EfficientNet-Lite0's forward pass at batch 1 with seeded weights, split by layer kind.
//! `cargo run --release -p edgemm-models --example forward_time`
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use edgemm_models::{architecture, init};

fn main() {
    let arch = architecture("efficientnet-lite0").unwrap();
    let config = serde_json::json!({});
    let specs = arch.tensor_specs(&config).unwrap();
    let w = init::seeded_weights(&specs, 1, &Device::Cpu).unwrap();
    let vb = candle_nn::VarBuilder::from_tensors(w, DType::F32, &Device::Cpu);
    let net = arch.build(&config, vb).unwrap();
    let x = Tensor::zeros((1, 3, 224, 224), DType::F32, &Device::Cpu).unwrap();
    net.forward(&x).unwrap();
    let mut times = Vec::new();
    for _ in 0..9 {
        let t = Instant::now();
        net.forward(&x).unwrap();
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "efficientnet-lite0 batch 1: median {:.1} ms (min {:.1})",
        times[4], times[0]
    );
}
