//! Depthwise convolution time on the shapes of EfficientNet-Lite0's depthwise layers at batch
//! 1 (224x224 input), through the same call the unfused plan made.
//!
//!     cargo bench -p edgemm-models --bench depthwise [-- ISA]
//!
//! Prints the median of 60 calls per shape and their sum. `RAYON_NUM_THREADS=1` for one core.

use std::time::Instant;

use edgemm_models::kernels::depthwise::Depthwise;
use edgemm_models::kernels::{Activation, Isa};
use edgemm_models::Padding;

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
        "{} with {} threads; side x channels, kernel, stride: median of 60",
        isa.name(),
        rayon::current_num_threads()
    );
    // (input side, channels, kernel, stride) of the model's depthwise layers.
    let shapes = [
        (112, 32, 3, 1),
        (112, 96, 3, 2),
        (56, 144, 3, 1),
        (56, 144, 5, 2),
        (28, 240, 5, 1),
        (28, 240, 3, 2),
        (14, 480, 3, 1),
        (14, 672, 5, 1),
        (14, 672, 5, 2),
        (7, 1152, 5, 1),
        (7, 1152, 3, 1),
    ];
    let mut total_us = 0.0;
    for (side, c, k, s) in shapes {
        let x: Vec<f32> = (0..side * side * c)
            .map(|i| (i % 17) as f32 / 17.0)
            .collect();
        let w: Vec<f32> = (0..c * k * k).map(|i| (i % 7) as f32 / 7.0 - 0.5).collect();
        let dw = Depthwise::new(
            &w,
            vec![0.1; c],
            (c, k, s),
            Padding::TfSame,
            Activation::Relu6,
        );
        let g = dw.geometry((1, side, side));
        let mut out = vec![0f32; g.out_height * g.out_width * c];
        let mut times: Vec<f64> = (0..60)
            .map(|_| {
                let started = Instant::now();
                dw.run(isa, &x, (1, side, side), &mut out);
                started.elapsed().as_secs_f64() * 1e6
            })
            .collect();
        times.sort_by(f64::total_cmp);
        total_us += times[30];
        println!("{side:>4} x {c:>4}, {k}x{k} s{s}: {:>7.1} us", times[30]);
    }
    println!(
        "sign-language depthwise shapes, one each: {:.2} ms",
        total_us / 1000.0
    );
}
