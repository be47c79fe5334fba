//! Issue #22, item 8: a PNG's ICC profile was inflated into memory without bound (a 261 KB
//! file held 280 MB). This file holds one test, so the process's peak resident memory
//! (VmHWM) is this test's alone.

mod common;

use edgemm::preprocess::{decode_image, ImageLimits};
use std::io::Write;

fn peak_rss_mb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        / 1024
}

#[cfg(target_os = "linux")]
#[test]
fn issue22_8_png_icc_profile_is_not_inflated() {
    // A 2x2 PNG (made by the image crate) with a 256 MiB all-zero ICC profile spliced in
    // before its image data: about 250 KB of file.
    let mut plain = Vec::new();
    image::RgbImage::from_pixel(2, 2, image::Rgb([10, 20, 30]))
        .write_to(
            &mut std::io::Cursor::new(&mut plain),
            image::ImageFormat::Png,
        )
        .unwrap();
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..256 {
        z.write_all(&zeros).unwrap();
    }
    let mut iccp = b"evil\0\0".to_vec();
    iccp.extend(z.finish().unwrap());
    let ihdr_end = 8 + 25;
    let mut png = plain[..ihdr_end].to_vec();
    png.extend(common::png_chunk(b"iCCP", &iccp));
    png.extend_from_slice(&plain[ihdr_end..]);
    assert!(png.len() < 512 << 10, "{}", png.len());

    let before = peak_rss_mb();
    let image = decode_image(&png, &ImageLimits::default()).unwrap();
    assert_eq!(image.get_pixel(1, 1).0, [10, 20, 30]);
    let grown = peak_rss_mb().saturating_sub(before);
    assert!(grown < 64, "decoding grew the peak RSS by {grown} MB");
}
