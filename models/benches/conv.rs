//! Convolution time on the shapes of alexnet-small's and VGG16's 3x3 layers and
//! EfficientNet-Lite0's stem at batch 1, through the call a plan makes (`Conv::for_map`, so
//! each layer takes the algorithm the plan gives it: direct, Winograd F(2x2) or F(4x4), or
//! im2col).
//!
//!     cargo bench -p edgemm-models --bench conv [-- ISA [NAME]]
//!
//! NAME keeps only the layers whose name contains it (e.g. `alexnet`).
//!
//! Prints the median of 60 calls per shape (after 10 untimed ones) with its effective
//! GFLOP/s (direct-convolution multiply-adds x 2 over the time), and the 10th percentile: on a
//! shared VM the slow calls are other tenants' time, so A/B comparisons read better there. `RAYON_NUM_THREADS=1` for
//! one core.

use std::time::Instant;

use edgemm_models::kernels::conv::Conv;
use edgemm_models::kernels::{Activation, Isa};
use edgemm_models::Padding;

fn main() {
    // On a pool thread with the others polling for work, as a plan runs its steps.
    edgemm_models::kernels::with_pool_awake(run);
}

fn run() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let only = args.get(1).cloned().unwrap_or_default();
    let isa = args
        .first()
        .map(|name| Isa::by_name(name).unwrap_or_else(|| panic!("no instruction set {name}")))
        .unwrap_or_else(Isa::best);
    println!(
        "{} with {} threads; side x in -> out channels, kernel/stride: median of 60",
        isa.name(),
        rayon::current_num_threads()
    );
    // (name, input side, in channels, out channels, kernel, stride, padding).
    let shapes = [
        (
            "alexnet-small conv1",
            32,
            3,
            64,
            3,
            1,
            Padding::Symmetric(1),
        ),
        (
            "alexnet-small conv2",
            16,
            64,
            128,
            3,
            1,
            Padding::Symmetric(1),
        ),
        (
            "alexnet-small conv3",
            8,
            128,
            256,
            3,
            1,
            Padding::Symmetric(1),
        ),
        ("efficientnet stem", 224, 3, 32, 3, 2, Padding::TfSame),
        ("vgg16 conv1_2", 224, 64, 64, 3, 1, Padding::Symmetric(1)),
        ("vgg16 conv3_2", 56, 256, 256, 3, 1, Padding::Symmetric(1)),
        ("vgg16 conv5_2", 14, 512, 512, 3, 1, Padding::Symmetric(1)),
    ];
    for (name, side, c_in, c_out, k, s, padding) in shapes {
        if !name.contains(&only) {
            continue;
        }
        let x: Vec<f32> = (0..side * side * c_in)
            .map(|i| (i % 17) as f32 / 17.0 - 0.3)
            .collect();
        let w: Vec<f32> = (0..c_out * c_in * k * k)
            .map(|i| (i % 7) as f32 / 70.0 - 0.05)
            .collect();
        let conv = Conv::for_map(
            isa,
            &w,
            vec![0.1; c_out],
            (c_in, c_out, k),
            s,
            padding,
            Activation::Relu,
            side,
        );
        let g = conv.geometry((1, side, side));
        let mut out = vec![0f32; g.out_pixels() * c_out];
        for _ in 0..10 {
            conv.run(isa, &x, (1, side, side), &mut out, None);
        }
        let mut times: Vec<f64> = (0..60)
            .map(|_| {
                let t = Instant::now();
                conv.run(isa, &x, (1, side, side), &mut out, None);
                t.elapsed().as_secs_f64()
            })
            .collect();
        times.sort_by(f64::total_cmp);
        let (median, tenth) = (times[times.len() / 2], times[times.len() / 10]);
        let flops = 2.0 * (g.out_pixels() * c_out * c_in * k * k) as f64;
        println!(
            "{name:<20} {side:>3} x {c_in:>3} -> {c_out:>3} {k}/{s}: {:>8.1} us {:>7.1} GFLOP/s  (fastest tenth {:.1} us)",
            median * 1e6,
            flops / median / 1e9,
            tenth * 1e6
        );
    }
}
