//! From request input to the network's `[N, 3, H, W]` batch: image decoding under the input
//! limits, EXIF orientation, resizing as the manifest says, normalisation.

use std::io::Cursor;

use image::imageops::{self, FilterType};
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, RgbImage};

use crate::error::InputError;
use crate::manifest::{InputSpec, Layout, ResizeMode, TensorValues};

/// Limits on encoded images, as managed image services state them. All configurable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageLimits {
    /// Encoded bytes.
    pub max_bytes: usize,
    /// Pixels along either side.
    pub max_side: u32,
    /// Longer side over shorter side.
    pub max_aspect_ratio: u32,
}

impl Default for ImageLimits {
    fn default() -> Self {
        Self {
            max_bytes: 4 * 1024 * 1024,
            max_side: 4096,
            max_aspect_ratio: 20,
        }
    }
}

/// Names the container format from its magic bytes, so a refusal can say what it saw.
fn sniff(bytes: &[u8]) -> Result<ImageFormat, InputError> {
    let starts = |magic: &[u8]| bytes.starts_with(magic);
    if starts(b"\x89PNG\r\n\x1a\n") {
        return Ok(ImageFormat::Png);
    }
    if starts(&[0xFF, 0xD8, 0xFF]) {
        return Ok(ImageFormat::Jpeg);
    }
    let detected = if starts(b"GIF87a") || starts(b"GIF89a") {
        "GIF"
    } else if starts(b"BM") {
        "BMP"
    } else if bytes.len() >= 12 && starts(b"RIFF") && &bytes[8..12] == b"WEBP" {
        "WebP"
    } else if starts(b"II*\0") || starts(b"MM\0*") {
        "TIFF"
    } else if bytes.len() >= 12 && &bytes[4..8] == b"ftyp" {
        "HEIF/AVIF"
    } else {
        "unknown (not an image this runtime recognises)"
    };
    Err(InputError::UnsupportedFormat { detected })
}

/// Checks the size rules on the encoded dimensions, before any pixel is decoded.
pub fn check_dimensions(width: u32, height: u32, limits: &ImageLimits) -> Result<(), InputError> {
    if width > limits.max_side || height > limits.max_side {
        return Err(InputError::TooManyPixels {
            width,
            height,
            limit: limits.max_side,
        });
    }
    let (long, short) = (width.max(height), width.min(height));
    if short == 0 || long > short.saturating_mul(limits.max_aspect_ratio) {
        return Err(InputError::AspectRatio {
            width,
            height,
            limit: limits.max_aspect_ratio,
        });
    }
    Ok(())
}

/// A PNG's size from its IHDR chunk (which must come first), read before any decoder runs.
fn png_dimensions(bytes: &[u8]) -> Option<(u32, u32)> {
    let header = bytes.get(8..24)?;
    if &header[4..8] != b"IHDR" {
        return None;
    }
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    Some((be(&header[8..12]), be(&header[12..16])))
}

/// The PNG without its iCCP chunks. edgemm does no colour management, and the decoder would
/// inflate a profile into memory (a 261 KB file held 280 MB); a malformed chunk list is left
/// for the decoder to refuse.
fn without_icc_profile(bytes: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let mut chunks = Vec::new();
    let mut at = 8;
    let mut found = false;
    while at + 12 <= bytes.len() {
        let len = u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        let Some(end) = (len as usize)
            .checked_add(at + 12)
            .filter(|&e| e <= bytes.len())
        else {
            return bytes.into();
        };
        let kind = &bytes[at + 4..at + 8];
        found |= kind == b"iCCP";
        if kind != b"iCCP" {
            chunks.push(at..end);
        }
        at = end;
        if kind == b"IEND" {
            break;
        }
    }
    if !found {
        return bytes.into();
    }
    let mut out = bytes[..8].to_vec();
    for range in chunks {
        out.extend_from_slice(&bytes[range]);
    }
    out.into()
}

/// Room for allocations beside the pixels (text chunks, JPEG segments), bytes.
const DECODE_SLACK: u64 = 16 << 20;

/// Decodes PNG or JPEG bytes to upright RGB, enforcing `limits` and honouring EXIF orientation.
/// The decoder may allocate no more than the largest pixel buffer `limits` allows (16-bit
/// RGBA) plus 16 MiB; a PNG's size is checked against the rules before it is decoded at all.
pub fn decode_image(bytes: &[u8], limits: &ImageLimits) -> Result<RgbImage, InputError> {
    if bytes.len() > limits.max_bytes {
        return Err(InputError::TooManyBytes {
            len: bytes.len(),
            limit: limits.max_bytes,
        });
    }
    let format = sniff(bytes)?;
    let bytes = if format == ImageFormat::Png {
        if let Some((width, height)) = png_dimensions(bytes) {
            check_dimensions(width, height, limits)?;
        }
        without_icc_profile(bytes)
    } else {
        bytes.into()
    };
    let side = u64::from(limits.max_side);
    let mut decode_limits = image::Limits::default();
    decode_limits.max_alloc = Some(side.saturating_mul(side * 8).saturating_add(DECODE_SLACK));
    let decode_err = |e: image::ImageError| InputError::Decode(e.to_string());
    let mut reader = ImageReader::with_format(Cursor::new(&bytes[..]), format);
    reader.limits(decode_limits);
    let mut decoder = reader.into_decoder().map_err(decode_err)?;
    let (width, height) = decoder.dimensions();
    check_dimensions(width, height, limits)?;
    let orientation = decoder.orientation().map_err(decode_err)?;
    let mut image = DynamicImage::from_decoder(decoder).map_err(decode_err)?;
    image.apply_orientation(orientation);
    Ok(image.into_rgb8())
}

/// Resizes `image` to the manifest's input size as its resize mode says.
pub fn resize(image: &RgbImage, spec: &InputSpec) -> RgbImage {
    let (tw, th) = (spec.width as u32, spec.height as u32);
    let (w, h) = image.dimensions();
    if (w, h) == (tw, th) {
        return image.clone();
    }
    match spec.resize {
        ResizeMode::Stretch => imageops::resize(image, tw, th, FilterType::Triangle),
        ResizeMode::CenterCrop => {
            // The largest centred region with the target's aspect ratio.
            let (cw, ch) = if u64::from(w) * u64::from(th) > u64::from(h) * u64::from(tw) {
                ((u64::from(h) * u64::from(tw) / u64::from(th)) as u32, h)
            } else {
                (w, (u64::from(w) * u64::from(th) / u64::from(tw)) as u32)
            };
            let (cw, ch) = (cw.max(1), ch.max(1));
            let crop = imageops::crop_imm(image, (w - cw) / 2, (h - ch) / 2, cw, ch).to_image();
            imageops::resize(&crop, tw, th, FilterType::Triangle)
        }
        ResizeMode::Letterbox => {
            let scale = (tw as f64 / w as f64).min(th as f64 / h as f64);
            let sw = ((w as f64 * scale).round() as u32).clamp(1, tw);
            let sh = ((h as f64 * scale).round() as u32).clamp(1, th);
            let scaled = imageops::resize(image, sw, sh, FilterType::Triangle);
            let mut canvas = RgbImage::new(tw, th);
            imageops::replace(
                &mut canvas,
                &scaled,
                i64::from((tw - sw) / 2),
                i64::from((th - sh) / 2),
            );
            canvas
        }
    }
}

/// Appends `image` (already at the input size) to `out` as normalised CHW floats.
pub fn push_normalised_chw(image: &RgbImage, spec: &InputSpec, out: &mut Vec<f32>) {
    let plane = spec.height * spec.width;
    let start = out.len();
    out.resize(start + 3 * plane, 0.0);
    let dst = &mut out[start..];
    for (i, pixel) in image.pixels().enumerate() {
        for c in 0..3 {
            dst[c * plane + i] = normalise(f32::from(pixel[c]), c, spec);
        }
    }
}

fn normalise(pixel: f32, channel: usize, spec: &InputSpec) -> f32 {
    (pixel * spec.scale - spec.mean[channel]) / spec.std[channel]
}

/// Turns a tensor request (`[N, H, W, 3]` or `[H, W, 3]` for NHWC, channel-first for NCHW) into
/// normalised NCHW floats. Returns the batch size.
/// One item's shape in a tensor request, in the manifest's layout.
pub(crate) fn item_shape(spec: &InputSpec) -> [usize; 3] {
    let (h, w) = (spec.height, spec.width);
    match spec.layout {
        Layout::Nhwc => [h, w, 3],
        Layout::Nchw => [3, h, w],
    }
}

/// The tensor requests a model takes, in words: `[N, 3, 224, 224] or [3, 224, 224] (Nchw)`.
pub fn expected_tensor(spec: &InputSpec) -> String {
    let [a, b, c] = item_shape(spec);
    format!("[N, {a}, {b}, {c}] or [{a}, {b}, {c}] ({:?})", spec.layout)
}

pub fn tensor_to_nchw(
    data: &[f32],
    shape: &[usize],
    spec: &InputSpec,
    out: &mut Vec<f32>,
) -> Result<usize, InputError> {
    let per_item = item_shape(spec);
    let n = match shape {
        [n, a, b, c] if [*a, *b, *c] == per_item => *n,
        [a, b, c] if [*a, *b, *c] == per_item => 1,
        _ => {
            return Err(InputError::TensorShape {
                expected: expected_tensor(spec),
                actual: shape.to_vec(),
            })
        }
    };
    if n == 0 {
        return Err(InputError::EmptyBatch);
    }
    let (h, w) = (spec.height, spec.width);
    let needed = n.checked_mul(3 * h * w);
    if needed != Some(data.len()) {
        let needed = needed.unwrap_or(usize::MAX);
        return Err(InputError::TensorData {
            shape: shape.to_vec(),
            values: data.len(),
            needed,
        });
    }
    let needed = data.len();
    if data.iter().any(|v| !v.is_finite()) {
        return Err(InputError::NonFinite);
    }
    let value = |v: f32, c: usize| match spec.tensor_values {
        TensorValues::Unit => normalise(v * 255.0, c, spec),
        TensorValues::Pixels => normalise(v, c, spec),
        TensorValues::Normalized => v,
    };
    let plane = h * w;
    out.reserve(needed);
    for item in data.chunks_exact(3 * plane) {
        match spec.layout {
            Layout::Nchw => out.extend(item.iter().enumerate().map(|(i, &v)| value(v, i / plane))),
            Layout::Nhwc => {
                for c in 0..3 {
                    out.extend((0..plane).map(|p| value(item[p * 3 + c], c)));
                }
            }
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffing_names_refused_formats() {
        let named = |b: &[u8]| match sniff(b) {
            Err(InputError::UnsupportedFormat { detected }) => detected,
            other => panic!("{other:?}"),
        };
        assert_eq!(named(b"GIF89a...."), "GIF");
        assert_eq!(named(b"BM\0\0\0\0"), "BMP");
        assert_eq!(named(b"RIFF\0\0\0\0WEBPVP8 "), "WebP");
        assert!(named(b"hello").starts_with("unknown"));
    }

    #[test]
    fn aspect_and_side_limits() {
        let l = ImageLimits::default();
        assert!(check_dimensions(4096, 4096, &l).is_ok());
        assert!(check_dimensions(2000, 100, &l).is_ok());
        assert!(matches!(
            check_dimensions(2100, 100, &l),
            Err(InputError::AspectRatio { .. })
        ));
        assert!(matches!(
            check_dimensions(5000, 10, &l),
            Err(InputError::TooManyPixels { .. })
        ));
    }
}
