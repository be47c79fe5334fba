//! edgemm's hand-written frame conversion and resize against the crates made for it
//! (docs/design.md#camera-frame-pipeline):
//! yuvutils-rs (YUV -> RGB with SIMD) and fast_image_resize. Input: a shipped sign photo filmed
//! as a 640x480 NV12 camera frame (the kiosk's replay), and its 480x480 hand square resized to
//! the sign model's 224x224, as the pipeline does per frame.
//!
//!     cargo bench -p edgemm-kiosk --features compare --bench conversions
//!
//! Prints median and p95 per operation (microseconds) and how far each crate's output is from
//! edgemm's (which the numpy reference checks to within 1).

use std::hint::black_box;
use std::time::Instant;

use edgemm::manifest::ResizeMode;
use edgemm::pipeline::frame::{convert_to_rgb, resize_rgb, PixelFormat, YuvRange};
use edgemm_kiosk::replay::{encode_rgb, film, hand_square, load_photo};
use edgemm_kiosk::source::CapturedFrame;
use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use yuvutils_rs::{YuvBiPlanarImage, YuvConversionMode, YuvStandardMatrix};

const RUNS: usize = 400;

fn measure(name: &str, mut f: impl FnMut()) -> (u64, u64) {
    for _ in 0..20 {
        f();
    }
    let mut us: Vec<u64> = (0..RUNS)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_nanos() as u64
        })
        .collect();
    us.sort_unstable();
    let (p50, p95) = (us[RUNS / 2], us[RUNS * 95 / 100]);
    println!(
        "{name:<58} median {:>8.1} us   p95 {:>8.1} us",
        p50 as f64 / 1e3,
        p95 as f64 / 1e3
    );
    (p50, p95)
}

fn diff(a: &[u8], b: &[u8]) -> (u8, f64) {
    let max = a
        .iter()
        .zip(b)
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap_or(0);
    let mean = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(x.abs_diff(*y)))
        .sum::<f64>()
        / a.len() as f64;
    (max, mean)
}

fn main() {
    let (w, h) = (640usize, 480usize);
    let photo =
        load_photo(&edgemm_kiosk::tree_path("models/samples/sign-digits/7").join("IMG_1132.JPG"))
            .or_else(|_| {
                let dir = edgemm_kiosk::tree_path("models/samples/sign-digits");
                let first = edgemm_kiosk::replay::photos_in(&dir).unwrap().remove(0);
                load_photo(&first.path)
            })
            .expect("a shipped sign photo");
    let square = hand_square(w, h);
    let mut rgb = Vec::new();
    film(&photo, square, 0.0, 0.0, 1.0, 1.0, w, h, &mut rgb);
    let mut nv12 = CapturedFrame::default();
    nv12.reshape(PixelFormat::Nv12, w, h);
    encode_rgb(&rgb, &mut nv12);
    let frame = nv12.as_frame();
    let (y_plane, uv_plane) = (frame.planes[0], frame.planes[1]);
    println!(
        "640x480 NV12 camera frame; hand square {}x{} at x={}",
        square.width, square.height, square.x
    );
    println!("{} runs each, after 20 warm-up runs\n", RUNS);

    // YUV -> RGB, whole frame.
    let mut ours = Vec::new();
    let a = measure(
        "NV12->RGB 640x480: edgemm (fixed point, AVX2 where present)",
        || {
            convert_to_rgb(black_box(&frame), YuvRange::Limited, None, &mut ours).unwrap();
        },
    );
    let mut theirs = vec![0u8; w * h * 3];
    let image = YuvBiPlanarImage {
        y_plane,
        y_stride: w as u32,
        uv_plane,
        uv_stride: w as u32,
        width: w as u32,
        height: h as u32,
    };
    let b = measure("NV12->RGB 640x480: yuvutils-rs (SIMD, Balanced)", || {
        yuvutils_rs::yuv_nv12_to_rgb(
            black_box(&image),
            &mut theirs,
            w as u32 * 3,
            yuvutils_rs::YuvRange::Limited,
            YuvStandardMatrix::Bt601,
            YuvConversionMode::Balanced,
        )
        .unwrap();
    });
    let (max, mean) = diff(&ours, &theirs);
    println!("  yuvutils-rs vs edgemm: max |diff| {max}, mean {mean:.3} (edgemm is within 1 of exact BT.601)");

    // YUV -> RGB, the hand square only (what the kiosk's pipeline converts).
    let roi = Some(square);
    let c = measure("NV12->RGB hand square 480x480: edgemm", || {
        convert_to_rgb(black_box(&frame), YuvRange::Limited, roi, &mut ours).unwrap();
    });
    let sq = square;
    // yuvutils-rs checks that each plane slice holds whole rows from its start, so a hand
    // square starting mid-row is refused; the crates' path converts the whole frame and
    // crops in the resize instead.
    let d = b;
    let mut theirs_sq = vec![0u8; w * h * 3];

    // Resize 480x480 -> 224x224.
    convert_to_rgb(&frame, YuvRange::Limited, roi, &mut ours).unwrap();
    let src = ours.clone();
    let mut resized = Vec::new();
    let e = measure(
        "resize 480x480->224x224: edgemm (bilinear, 2x2 taps)",
        || {
            resize_rgb(
                black_box(&src),
                480,
                480,
                224,
                224,
                ResizeMode::Stretch,
                &mut resized,
            );
        },
    );
    let src_image = ImageRef::new(480, 480, &src, PixelType::U8x3).unwrap();
    let mut dst = Image::new(224, 224, PixelType::U8x3);
    let mut resizer = Resizer::new();
    let interp = ResizeOptions::new().resize_alg(ResizeAlg::Interpolation(FilterType::Bilinear));
    let f = measure(
        "resize 480x480->224x224: fast_image_resize Interpolation(Bilinear)",
        || {
            resizer
                .resize(black_box(&src_image), &mut dst, &interp)
                .unwrap();
        },
    );
    let (max_i, mean_i) = diff(&resized, dst.buffer());
    let conv = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
    let g = measure(
        "resize 480x480->224x224: fast_image_resize Convolution(Bilinear)",
        || {
            resizer
                .resize(black_box(&src_image), &mut dst, &conv)
                .unwrap();
        },
    );
    let (max_c, mean_c) = diff(&resized, dst.buffer());
    println!("  fast_image_resize vs edgemm: Interpolation max |diff| {max_i}, mean {mean_i:.2}; Convolution (antialiased) max {max_c}, mean {mean_c:.2}");

    // The whole per-frame preprocessing: convert the square, resize, normalise.
    let spec: edgemm::manifest::InputSpec = serde_json::from_value(serde_json::json!({
        "height": 224, "width": 224, "resize": "stretch",
        "scale": 1.0 / 255.0, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]
    }))
    .unwrap();
    let mut buffers = edgemm::pipeline::frame::FrameBuffers::default();
    let k = measure(
        "edgemm FrameBuffers: convert square + resize + normalise",
        || {
            buffers
                .convert(black_box(&frame), YuvRange::Limited, roi)
                .unwrap();
            buffers.preprocess(&spec);
        },
    );
    let mut tensor = Vec::new();
    let crop_interp = ResizeOptions::new()
        .resize_alg(ResizeAlg::Interpolation(FilterType::Bilinear))
        .crop(sq.x as f64, sq.y as f64, sq.width as f64, sq.height as f64);
    let l = measure(
        "yuvutils-rs (whole frame) + fast_image_resize (crop) + normalise",
        || {
            yuvutils_rs::yuv_nv12_to_rgb(
                black_box(&image),
                &mut theirs_sq,
                w as u32 * 3,
                yuvutils_rs::YuvRange::Limited,
                YuvStandardMatrix::Bt601,
                YuvConversionMode::Balanced,
            )
            .unwrap();
            let s = ImageRef::new(w as u32, h as u32, &theirs_sq, PixelType::U8x3).unwrap();
            resizer.resize(&s, &mut dst, &crop_interp).unwrap();
            edgemm::pipeline::frame::normalise_chw(dst.buffer(), &spec, &mut tensor);
        },
    );
    let ms = |v: (u64, u64)| serde_json::json!({"median_us": v.0 as f64 / 1e3, "p95_us": v.1 as f64 / 1e3});
    println!(
        "\n{}",
        serde_json::json!({
            "nv12_to_rgb_640x480": {"edgemm": ms(a), "yuvutils_rs": ms(b), "max_diff": max},
            "nv12_to_rgb_480x480": {"edgemm": ms(c), "yuvutils_rs": ms(d)},
            "resize_480_to_224": {"edgemm": ms(e), "fir_interpolation": ms(f), "fir_convolution": ms(g)},
            "preprocess_total": {"edgemm": ms(k), "crates": ms(l)},
        })
    );
}
