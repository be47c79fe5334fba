//! Issue 6, acceptance 1: every pixel format converts to the RGB an independent numpy
//! reference computes (`pipeline_reference/make_reference.py`, BT.601 in floating point),
//! within 1, for odd and even sizes and padded strides, limited and full range.

use edgemm::pipeline::frame::{convert_to_rgb, Frame, PixelFormat, Roi, YuvRange};
use serde_json::Value;

fn format(name: &str) -> PixelFormat {
    match name {
        "RGB24" => PixelFormat::Rgb24,
        "BGR24" => PixelFormat::Bgr24,
        "RGBA" => PixelFormat::Rgba,
        "BGRA" => PixelFormat::Bgra,
        "GRAY8" => PixelFormat::Gray8,
        "NV12" => PixelFormat::Nv12,
        "NV21" => PixelFormat::Nv21,
        "I420" => PixelFormat::I420,
        "YUYV" => PixelFormat::Yuyv,
        other => panic!("unknown format {other}"),
    }
}

fn bytes(v: &Value) -> Vec<u8> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_u64().unwrap() as u8)
        .collect()
}

#[test]
fn every_format_matches_the_numpy_reference() {
    let text = include_str!("pipeline_reference/frames.json");
    let doc: Value = serde_json::from_str(text).unwrap();
    let cases = doc["cases"].as_array().unwrap();
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for case in cases {
        let fmt = format(case["format"].as_str().unwrap());
        let range = match case["range"].as_str().unwrap() {
            "full" => YuvRange::Full,
            _ => YuvRange::Limited,
        };
        let planes: Vec<Vec<u8>> = case["planes"]
            .as_array()
            .unwrap()
            .iter()
            .map(bytes)
            .collect();
        let strides: Vec<usize> = case["strides"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_u64().unwrap() as usize)
            .collect();
        let (w, h) = (
            case["width"].as_u64().unwrap() as usize,
            case["height"].as_u64().unwrap() as usize,
        );
        let mut frame = Frame {
            planes: [&[], &[], &[]],
            strides: [0; 3],
            width: w,
            height: h,
            format: fmt,
            timestamp_us: 0,
        };
        for (i, p) in planes.iter().enumerate() {
            frame.planes[i] = p;
            frame.strides[i] = strides[i];
        }
        let expected = bytes(&case["expected_rgb"]);
        convert_to_rgb(&frame, range, None, &mut out).unwrap();
        assert_eq!(out.len(), expected.len());
        let worst = out
            .iter()
            .zip(&expected)
            .map(|(&a, &b)| (i32::from(a) - i32::from(b)).abs())
            .max()
            .unwrap();
        assert!(
            worst <= 1,
            "{fmt:?} {range:?} {w}x{h} strides {strides:?}: max error {worst}"
        );
        seen.insert((format!("{fmt:?}"), w % 2 == 1, strides[0] > w));
        // Every region of interest, at odd and even offsets and sizes, is the same pixels cut
        // from the whole frame's conversion (the row loops go two pixels per chroma sample,
        // so a region may start or end mid-pair).
        let mut part = Vec::new();
        for x in 0..w.min(4) {
            for width in (1..=(w - x).min(5)).chain((w - x > 5).then_some(w - x)) {
                let y = h / 3;
                let roi = Roi {
                    x,
                    y,
                    width,
                    height: h - y,
                };
                convert_to_rgb(&frame, range, Some(roi), &mut part).unwrap();
                let cut: Vec<u8> = (y..h)
                    .flat_map(|row| &out[(row * w + x) * 3..(row * w + x + width) * 3])
                    .copied()
                    .collect();
                assert_eq!(part, cut, "{fmt:?} {w}x{h}, region {roi:?}");
            }
        }
    }
    // Every format was seen with an odd width and with a padded stride.
    for f in [
        "Rgb24", "Bgr24", "Rgba", "Bgra", "Gray8", "Nv12", "Nv21", "I420", "Yuyv",
    ] {
        assert!(
            seen.contains(&(f.to_string(), true, true)),
            "{f} odd+padded"
        );
    }
}

#[test]
fn limited_range_black_and_white_are_exact() {
    // Y=16 is black and Y=235 white in limited range, with neutral chroma.
    let mut out = Vec::new();
    for (y, rgb) in [(16u8, 0u8), (235, 255)] {
        let yuyv = [y, 128, y, 128];
        let f = Frame::packed(&yuyv, 2, 1, 4, PixelFormat::Yuyv, 0);
        convert_to_rgb(&f, YuvRange::Limited, None, &mut out).unwrap();
        assert_eq!(out, [rgb; 6]);
    }
}
