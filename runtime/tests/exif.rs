//! EXIF orientation is honoured: a photo whose EXIF says "rotate 90 degrees clockwise"
//! (orientation 6, as phone cameras write portrait shots, like three of the sign-digit photos)
//! is decoded upright before resizing.

mod common;

use edgemm::preprocess::{decode_image, ImageLimits};

/// The shipped hot_dog.jpg (EXIF orientation 1) with its orientation tag set to `value`.
fn with_orientation(value: u16) -> Vec<u8> {
    let mut bytes = std::fs::read(common::shipped_sample("hot_dog.jpg")).unwrap();
    let exif = bytes.windows(6).position(|w| w == b"Exif\0\0").unwrap() + 6;
    assert_eq!(
        &bytes[exif..exif + 2],
        b"II",
        "the sample's EXIF is little-endian"
    );
    let u16_at = |b: &[u8], i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
    let ifd = exif + u32::from_le_bytes(bytes[exif + 4..exif + 8].try_into().unwrap()) as usize;
    let entries = u16_at(&bytes, ifd) as usize;
    let entry = (0..entries)
        .map(|k| ifd + 2 + 12 * k)
        .find(|&e| u16_at(&bytes, e) == 0x0112)
        .expect("the sample has an orientation tag");
    bytes[entry + 8..entry + 10].copy_from_slice(&value.to_le_bytes());
    bytes
}

#[test]
fn exif_rotation_is_applied_before_anything_else() {
    let limits = ImageLimits::default();
    let upright = decode_image(&with_orientation(1), &limits).unwrap();
    let rotated = decode_image(&with_orientation(6), &limits).unwrap();
    assert_eq!(upright.dimensions(), (512, 384));
    // Orientation 6: the stored image must be turned 90 degrees clockwise to be upright.
    assert_eq!(rotated.dimensions(), (384, 512));
    let expected = image::imageops::rotate90(&upright);
    assert_eq!(rotated.as_raw(), expected.as_raw());
}
