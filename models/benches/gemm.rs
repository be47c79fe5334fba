//! GEMM throughput on the shapes of EfficientNet-Lite0's 1x1 convolutions at batch 1 (plus
//! alexnet-small's and VGG16's dense layers and a large square product for the machine's attainable peak), through the same call the plan makes:
//! the NHWC input read in place, bias and ReLU6 fused.
//!
//!     cargo bench -p edgemm-models --bench gemm [-- ISA]
//!
//! Prints the median of 50 calls and GFLOP/s per shape, and the median with the weights out
//! of cache ("cold"). `RAYON_NUM_THREADS=1` for one core.

use std::time::Instant;

use edgemm_models::kernels::gemm::{gemm, Epilogue, PackedB, RowMajor};
use edgemm_models::kernels::{Activation, Isa};

fn main() {
    // On a pool thread with the others polling for work, as a plan runs its steps.
    edgemm_models::kernels::with_pool_awake(run);
}

fn run() {
    let isa = std::env::args()
        .nth(1)
        .filter(|a| a != "--bench")
        .map(|name| Isa::by_name(&name).unwrap_or_else(|| panic!("no instruction set {name}")))
        .unwrap_or_else(Isa::best);
    println!(
        "{} with {} threads; M x K x N, median of 50",
        isa.name(),
        rayon::current_num_threads()
    );
    // (H*W, in channels, out channels) of the model's pointwise layers, then a square product.
    let shapes = [
        (12544, 32, 16),
        (12544, 16, 96),
        (3136, 96, 24),
        (3136, 24, 144),
        (3136, 144, 24),
        (784, 240, 40),
        (784, 40, 240),
        (196, 240, 80),
        (196, 80, 480),
        (196, 480, 112),
        (196, 112, 672),
        (196, 672, 112),
        (49, 672, 192),
        (49, 192, 1152),
        (49, 1152, 192),
        (49, 320, 1280),
        // alexnet-small's hidden dense layer at batch 1 (a matrix-vector product).
        (1, 4096, 512),
        // VGG16's first dense layer at batch 1: 411 MB of weights streamed once.
        (1, 25088, 4096),
        (1024, 1024, 1024),
    ];
    let mut total_ms = 0.0;
    for (m, k, n) in shapes {
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) / 7.0)
            .collect();
        let bias: Vec<f32> = (0..n).map(|j| (j % 5) as f32 / 10.0).collect();
        let b = PackedB::new(isa, k, n, |p, j| ((p * 3 + j) % 11) as f32 / 11.0 - 0.5);
        let mut c = vec![0f32; m * n];
        let lhs = RowMajor {
            data: &a,
            rows: m,
            cols: k,
        };
        let epilogue = Epilogue {
            bias: Some(&bias),
            fused: Activation::Relu6.into(),
            residual: None,
        };
        let mut times: Vec<f64> = (0..50)
            .map(|_| {
                let t = Instant::now();
                gemm(isa, &lhs, &b, &mut c, &epilogue);
                t.elapsed().as_secs_f64()
            })
            .collect();
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        // The same product with its weights out of cache, as in a forward, where a network's
        // weights do not stay in L2 (or in a shared L3) from one use to the next: calls
        // rotate through copies of `B` filling 64 MiB.
        let cold = (b.bytes() < 8 << 20).then(|| {
            let copies: Vec<PackedB> = (0..(64 << 20) / b.bytes()).map(|_| b.clone()).collect();
            let mut times: Vec<f64> = (0..50)
                .map(|i| {
                    let t = Instant::now();
                    gemm(isa, &lhs, &copies[i % copies.len()], &mut c, &epilogue);
                    t.elapsed().as_secs_f64()
                })
                .collect();
            times.sort_by(f64::total_cmp);
            times[times.len() / 2]
        });
        let cold = cold.map_or(String::new(), |t| format!("  cold {:>7.1} us", t * 1e6));
        if k * n < 1 << 20 {
            total_ms += median * 1e3;
        }
        // A matrix-vector product is bound by the weights it streams: say how fast.
        let streamed = if m <= 2 {
            format!("  {:>5.1} GB/s of weights", b.bytes() as f64 / median / 1e9)
        } else {
            String::new()
        };
        println!(
            "{m:>6} x {k:>5} x {n:>5}: {:>8.1} us  {:>6.1} GFLOP/s{streamed}{cold}",
            median * 1e6,
            2.0 * (m * k * n) as f64 / median / 1e9
        );
    }
    println!("sign-language shapes, one each: {total_ms:.2} ms");
}
