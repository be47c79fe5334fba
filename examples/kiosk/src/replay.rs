//! Photos played back as a camera would film them: each photo is *held* for several frames
//! inside the kiosk's hand square, with camera-like jitter (a per-hold placement, scale and
//! exposure, plus a small shake and flicker on every frame), and each frame is encoded in a
//! camera pixel format (NV12 or YUYV at 640x480 by default), so the pipeline's conversions run
//! as they would on a device.
//!
//! The ground truth (which digit each hold shows) comes from the photo's folder (`<dir>/3/`)
//! or from the data set's `splits.csv`, and is reported as [`Hold`]s.

use std::path::{Path, PathBuf};

use edgemm::pipeline::frame::{PixelFormat, Roi};
use edgemm::preprocess::decode_image;
use edgemm::ImageLimits;
use image::RgbImage;

use crate::source::{CapturedFrame, FrameSource, Hold, SourceError};

/// A photo to replay and the digit it shows, when known.
#[derive(Clone, Debug, PartialEq)]
pub struct Photo {
    pub path: PathBuf,
    pub label: Option<usize>,
}

const IMAGE_EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> SourceError + '_ {
    move |source| SourceError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The JPEG and PNG files in `dir` and in its subfolders one level down, sorted by path. A
/// subfolder named `0`..`9` labels its photos with that digit (the layout of
/// `models/samples/sign-digits`).
pub fn photos_in(dir: &Path) -> Result<Vec<Photo>, SourceError> {
    let mut photos = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_error(dir))? {
        let path = entry.map_err(io_error(dir))?.path();
        if path.is_dir() {
            let label = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|&d| d < 10);
            for inner in std::fs::read_dir(&path).map_err(io_error(&path))? {
                let inner = inner.map_err(io_error(&path))?.path();
                if inner.is_file() && is_image(&inner) {
                    photos.push(Photo { path: inner, label });
                }
            }
        } else if is_image(&path) {
            photos.push(Photo { path, label: None });
        }
    }
    photos.sort_by(|a, b| a.path.cmp(&b.path));
    if photos.is_empty() {
        return Err(SourceError::Empty(format!(
            "{}: no JPEG or PNG photos in it or in its subfolders",
            dir.display()
        )));
    }
    Ok(photos)
}

/// The photos of one split (`test`, `val`, `train`) of the sign-digits data set, from its
/// `splits.csv` (`path,label,split`, paths relative to the file's folder).
pub fn split_photos(splits_csv: &Path, split: &str) -> Result<Vec<Photo>, SourceError> {
    let text = std::fs::read_to_string(splits_csv).map_err(io_error(splits_csv))?;
    let root = splits_csv.parent().unwrap_or(Path::new("."));
    let mut photos = Vec::new();
    for line in text.lines().skip(1) {
        let fields: Vec<&str> = line.trim().split(',').collect();
        if let [path, label, s] = fields[..] {
            if s == split {
                let label = label.parse().map_err(|_| SourceError::Image {
                    path: splits_csv.to_path_buf(),
                    message: format!("label {label:?} is not a digit"),
                })?;
                photos.push(Photo {
                    path: root.join(path),
                    label: Some(label),
                });
            }
        }
    }
    if photos.is_empty() {
        return Err(SourceError::Empty(format!(
            "{}: no rows with split {split:?}",
            splits_csv.display()
        )));
    }
    Ok(photos)
}

/// A small deterministic generator (SplitMix64), so a replay is the same on every run and needs
/// no crate.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32)
    }

    /// Fisher-Yates.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = (self.next_u64() % (i as u64 + 1)) as usize;
            items.swap(i, j);
        }
    }
}

/// How strongly the replay shakes. Per hold: placement, scale and exposure; per frame: a small
/// shake and exposure flicker around them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Jitter {
    /// Per-hold shift, as a fraction of the hand square's side (uniform in +-shift).
    pub shift: f32,
    /// Per-hold scale, uniform in `1 +- scale`.
    pub scale: f32,
    /// Per-hold brightness gain, uniform in `1 +- brightness`.
    pub brightness: f32,
    /// Per-frame shake in pixels (uniform in +-shake) and brightness flicker (`1 +- flicker`).
    pub shake_px: f32,
    pub flicker: f32,
}

impl Jitter {
    /// No jitter: each photo fills the hand square exactly, frame after frame.
    pub const NONE: Jitter = Jitter {
        shift: 0.0,
        scale: 0.0,
        brightness: 0.0,
        shake_px: 0.0,
        flicker: 0.0,
    };
}

impl Default for Jitter {
    /// A hand held in front of a fixed camera: a few percent of movement and exposure change.
    fn default() -> Self {
        Self {
            shift: 0.04,
            scale: 0.05,
            brightness: 0.12,
            shake_px: 3.0,
            flicker: 0.03,
        }
    }
}

/// How a replay films its photos.
#[derive(Clone, Debug)]
pub struct ReplayOptions {
    pub width: usize,
    pub height: usize,
    /// The encoding of each frame (NV12, YUYV, I420, RGB24, ...).
    pub format: PixelFormat,
    /// Frames each photo is held for.
    pub frames_per_hold: u64,
    /// Nominal camera rate: frame `n` is stamped `n / fps` seconds.
    pub fps: f64,
    pub jitter: Jitter,
    /// Seed of the jitter and of the order; `None` keeps the photos in the order given.
    pub shuffle_seed: Option<u64>,
    pub jitter_seed: u64,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        Self {
            width: 640,
            height: 480,
            format: PixelFormat::Nv12,
            frames_per_hold: 30,
            fps: 30.0,
            jitter: Jitter::default(),
            shuffle_seed: Some(6),
            jitter_seed: 6,
        }
    }
}

/// The square in the middle of a `width` x `height` frame where the kiosk asks for the hand
/// (the pipeline's region of interest; the sign photos are square).
pub fn hand_square(width: usize, height: usize) -> Roi {
    let side = width.min(height);
    Roi {
        x: (width - side) / 2,
        y: (height - side) / 2,
        width: side,
        height: side,
    }
}

/// Per-hold placement of the photo.
#[derive(Clone, Copy, Debug)]
struct Pose {
    dx: f32,
    dy: f32,
    scale: f32,
    gain: f32,
}

/// Photos filmed as camera frames; see the module documentation.
pub struct ReplaySource {
    name: String,
    photos: Vec<Photo>,
    holds: Vec<Hold>,
    options: ReplayOptions,
    rng: Rng,
    /// The photo being held, decoded, and its pose.
    current: Option<(usize, RgbImage, Pose)>,
    frame_index: u64,
    rgb: Vec<u8>,
}

/// Largest side kept after decoding: the model sees the photo at 224x224, so the odd 3024x3024
/// photo in the data set is shrunk once instead of being sampled from on every frame.
const MAX_PHOTO_SIDE: u32 = 512;

/// Decodes a photo upright (EXIF orientation applied) and shrinks it to `MAX_PHOTO_SIDE`.
pub fn load_photo(path: &Path) -> Result<RgbImage, SourceError> {
    let bytes = std::fs::read(path).map_err(io_error(path))?;
    let limits = ImageLimits {
        max_bytes: 64 << 20,
        ..ImageLimits::default()
    };
    let image = decode_image(&bytes, &limits).map_err(|e| SourceError::Image {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let (w, h) = image.dimensions();
    if w.max(h) <= MAX_PHOTO_SIDE {
        return Ok(image);
    }
    let k = MAX_PHOTO_SIDE as f32 / w.max(h) as f32;
    let (nw, nh) = (
        ((w as f32 * k) as u32).max(1),
        ((h as f32 * k) as u32).max(1),
    );
    Ok(image::imageops::resize(
        &image,
        nw,
        nh,
        image::imageops::FilterType::Triangle,
    ))
}

impl ReplaySource {
    /// `name` says what is replayed (for the log). Photos are decoded one at a time as their
    /// hold starts; a photo that cannot be read ends the replay with its error.
    pub fn new(
        name: impl Into<String>,
        mut photos: Vec<Photo>,
        options: ReplayOptions,
    ) -> Result<Self, SourceError> {
        if photos.is_empty() {
            return Err(SourceError::Empty("no photos to replay".into()));
        }
        if options.frames_per_hold == 0 || options.width < 2 || options.height < 2 {
            return Err(SourceError::Empty(
                "a replay needs at least one frame per hold and a 2x2 frame".into(),
            ));
        }
        if let Some(seed) = options.shuffle_seed {
            Rng::new(seed).shuffle(&mut photos);
        }
        let holds = photos
            .iter()
            .enumerate()
            .map(|(i, p)| Hold {
                label: p.label,
                name: p.path.display().to_string(),
                first_frame: i as u64 * options.frames_per_hold,
                frames: options.frames_per_hold,
            })
            .collect();
        Ok(Self {
            name: name.into(),
            photos,
            holds,
            rng: Rng::new(options.jitter_seed),
            options,
            current: None,
            frame_index: 0,
            rgb: Vec::new(),
        })
    }

    pub fn photos(&self) -> &[Photo] {
        &self.photos
    }

    fn pose(&mut self) -> Pose {
        let j = self.options.jitter;
        Pose {
            dx: self.rng.uniform(-j.shift, j.shift),
            dy: self.rng.uniform(-j.shift, j.shift),
            scale: 1.0 + self.rng.uniform(-j.scale, j.scale),
            gain: 1.0 + self.rng.uniform(-j.brightness, j.brightness),
        }
    }
}

/// Draws `photo` into packed RGB `out` (`width` x `height`) so that it fills `square`, moved by
/// `(dx, dy)` pixels, scaled by `scale` about the square's centre, brightness times `gain`;
/// bilinear sampling, edges extended beyond the photo.
#[allow(clippy::too_many_arguments)]
pub fn film(
    photo: &RgbImage,
    square: Roi,
    dx: f32,
    dy: f32,
    scale: f32,
    gain: f32,
    width: usize,
    height: usize,
    out: &mut Vec<u8>,
) {
    out.resize(width * height * 3, 0);
    let (pw, ph) = (photo.width() as usize, photo.height() as usize);
    let src = photo.as_raw();
    // Output pixel -> photo coordinate: undo the shift, the scale about the centre, and the
    // square's size.
    let cx = square.x as f32 + square.width as f32 / 2.0 + dx;
    let cy = square.y as f32 + square.height as f32 / 2.0 + dy;
    let kx = pw as f32 / (square.width as f32 * scale);
    let ky = ph as f32 / (square.height as f32 * scale);
    let gain = (gain * 256.0) as u32;
    let xs: Vec<(usize, usize, u32)> = (0..width)
        .map(|x| {
            let fx =
                ((x as f32 + 0.5 - cx) * kx + pw as f32 / 2.0 - 0.5).clamp(0.0, (pw - 1) as f32);
            let x0 = fx as usize;
            (x0, (x0 + 1).min(pw - 1), ((fx - x0 as f32) * 256.0) as u32)
        })
        .collect();
    for (y, row) in out.chunks_exact_mut(width * 3).enumerate() {
        let fy = ((y as f32 + 0.5 - cy) * ky + ph as f32 / 2.0 - 0.5).clamp(0.0, (ph - 1) as f32);
        let y0 = fy as usize;
        let y1 = (y0 + 1).min(ph - 1);
        let wy = ((fy - y0 as f32) * 256.0) as u32;
        let (r0, r1) = (&src[y0 * pw * 3..][..pw * 3], &src[y1 * pw * 3..][..pw * 3]);
        for (px, &(x0, x1, wx)) in row.chunks_exact_mut(3).zip(&xs) {
            for c in 0..3 {
                let top = u32::from(r0[x0 * 3 + c]) * (256 - wx) + u32::from(r0[x1 * 3 + c]) * wx;
                let bottom =
                    u32::from(r1[x0 * 3 + c]) * (256 - wx) + u32::from(r1[x1 * 3 + c]) * wx;
                let v = (top * (256 - wy) + bottom * wy) >> 16;
                px[c] = ((v * gain) >> 8).min(255) as u8;
            }
        }
    }
}

/// BT.601 limited range, the encoder side of what the pipeline decodes: RGB to (Y, U, V).
#[inline]
fn yuv(r: i32, g: i32, b: i32) -> (u8, i32, i32) {
    let y = (66 * r + 129 * g + 25 * b + 128) >> 8;
    let u = (-38 * r - 74 * g + 112 * b + 128) >> 8;
    let v = (112 * r - 94 * g - 18 * b + 128) >> 8;
    ((y + 16) as u8, u + 128, v + 128)
}

/// Encodes packed RGB (`frame.width` x `frame.height`, already sized by
/// [`CapturedFrame::reshape`]) into `frame` in its format. Chroma is the average of each 2x2
/// (4:2:0) or 2x1 (YUYV) block. RGB-family and grey formats are written directly.
pub fn encode_rgb(rgb: &[u8], frame: &mut CapturedFrame) {
    let (w, h) = (frame.width, frame.height);
    let [o0, o1, o2] = frame.offsets;
    let [s0, s1, s2] = frame.strides;
    let px = |x: usize, y: usize| {
        let p = &rgb[(y * w + x) * 3..][..3];
        (i32::from(p[0]), i32::from(p[1]), i32::from(p[2]))
    };
    let data = &mut frame.data;
    match frame.format {
        PixelFormat::Nv12 | PixelFormat::Nv21 | PixelFormat::I420 => {
            for y in 0..h {
                for x in 0..w {
                    let (r, g, b) = px(x, y);
                    data[o0 + y * s0 + x] = yuv(r, g, b).0;
                }
            }
            for cy in 0..h.div_ceil(2) {
                for cx in 0..w.div_ceil(2) {
                    let (mut u, mut v, mut n) = (0, 0, 0);
                    for y in cy * 2..(cy * 2 + 2).min(h) {
                        for x in cx * 2..(cx * 2 + 2).min(w) {
                            let (r, g, b) = px(x, y);
                            let (_, pu, pv) = yuv(r, g, b);
                            (u, v, n) = (u + pu, v + pv, n + 1);
                        }
                    }
                    let (u, v) = (((u + n / 2) / n) as u8, ((v + n / 2) / n) as u8);
                    match frame.format {
                        PixelFormat::Nv12 => {
                            data[o1 + cy * s1 + cx * 2] = u;
                            data[o1 + cy * s1 + cx * 2 + 1] = v;
                        }
                        PixelFormat::Nv21 => {
                            data[o1 + cy * s1 + cx * 2] = v;
                            data[o1 + cy * s1 + cx * 2 + 1] = u;
                        }
                        _ => {
                            data[o1 + cy * s1 + cx] = u;
                            data[o2 + cy * s2 + cx] = v;
                        }
                    }
                }
            }
        }
        PixelFormat::Yuyv => {
            for y in 0..h {
                for cx in 0..w.div_ceil(2) {
                    let (r, g, b) = px(cx * 2, y);
                    let (y0, u0, v0) = yuv(r, g, b);
                    let (y1, u1, v1) = if cx * 2 + 1 < w {
                        let (r, g, b) = px(cx * 2 + 1, y);
                        yuv(r, g, b)
                    } else {
                        (y0, u0, v0)
                    };
                    let d = &mut data[o0 + y * s0 + cx * 4..][..4];
                    d.copy_from_slice(&[
                        y0,
                        ((u0 + u1 + 1) / 2) as u8,
                        y1,
                        ((v0 + v1 + 1) / 2) as u8,
                    ]);
                }
            }
        }
        PixelFormat::Gray8 => {
            for y in 0..h {
                for x in 0..w {
                    let (r, g, b) = px(x, y);
                    data[o0 + y * s0 + x] = ((77 * r + 150 * g + 29 * b + 128) >> 8) as u8;
                }
            }
        }
        format => {
            let (bpp, swap) = match format {
                PixelFormat::Rgb24 => (3, false),
                PixelFormat::Bgr24 => (3, true),
                PixelFormat::Rgba => (4, false),
                _ => (4, true),
            };
            for y in 0..h {
                for x in 0..w {
                    let (r, g, b) = px(x, y);
                    let d = &mut data[o0 + y * s0 + x * bpp..][..bpp];
                    let (r, b) = if swap { (b, r) } else { (r, b) };
                    d[..3].copy_from_slice(&[r as u8, g as u8, b as u8]);
                    if bpp == 4 {
                        d[3] = 255;
                    }
                }
            }
        }
    }
}

impl FrameSource for ReplaySource {
    fn next_frame(&mut self, frame: &mut CapturedFrame) -> Result<bool, SourceError> {
        let o = &self.options;
        let hold = (self.frame_index / o.frames_per_hold) as usize;
        if hold >= self.photos.len() {
            return Ok(false);
        }
        if self.current.as_ref().is_none_or(|(h, _, _)| *h != hold) {
            let photo = load_photo(&self.photos[hold].path)?;
            let pose = self.pose();
            self.current = Some((hold, photo, pose));
        }
        let o = self.options.clone();
        let j = o.jitter;
        let shake = (
            self.rng.uniform(-j.shake_px, j.shake_px),
            self.rng.uniform(-j.shake_px, j.shake_px),
        );
        let flicker = 1.0 + self.rng.uniform(-j.flicker, j.flicker);
        let square = hand_square(o.width, o.height);
        let Some((_, photo, pose)) = &self.current else {
            unreachable!("set above")
        };
        film(
            photo,
            square,
            pose.dx * square.width as f32 + shake.0,
            pose.dy * square.height as f32 + shake.1,
            pose.scale,
            pose.gain * flicker,
            o.width,
            o.height,
            &mut self.rgb,
        );
        frame.reshape(o.format, o.width, o.height);
        encode_rgb(&self.rgb, frame);
        frame.timestamp_us = (self.frame_index as f64 * 1e6 / o.fps) as u64;
        self.frame_index += 1;
        Ok(true)
    }

    fn describe(&self) -> String {
        let o = &self.options;
        format!(
            "{}: {} photos, each held {} frames at {} fps, {}x{} {:?}{}",
            self.name,
            self.photos.len(),
            o.frames_per_hold,
            o.fps,
            o.width,
            o.height,
            o.format,
            if o.jitter == Jitter::NONE {
                ", no jitter"
            } else {
                ", with jitter"
            }
        )
    }

    fn fps(&self) -> f64 {
        self.options.fps
    }

    fn holds(&self) -> &[Hold] {
        &self.holds
    }

    fn frame_count(&self) -> Option<u64> {
        Some(self.photos.len() as u64 * self.options.frames_per_hold)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgemm::pipeline::frame::{convert_to_rgb, YuvRange};

    /// The encoder is the inverse of the pipeline's decoder to within the rounding of 4:2:0 on
    /// flat colour: a replayed frame shows the colours of its photo.
    #[test]
    fn encoded_frames_decode_to_their_colours() {
        let colours = [
            [200u8, 30, 90],
            [12, 240, 128],
            [128, 128, 128],
            [250, 250, 5],
        ];
        for format in [
            PixelFormat::Nv12,
            PixelFormat::Nv21,
            PixelFormat::I420,
            PixelFormat::Yuyv,
            PixelFormat::Bgra,
        ] {
            for c in colours {
                let rgb: Vec<u8> = c.iter().copied().cycle().take(6 * 4 * 3).collect();
                let mut frame = CapturedFrame::default();
                frame.reshape(format, 6, 4);
                encode_rgb(&rgb, &mut frame);
                let mut back = Vec::new();
                convert_to_rgb(&frame.as_frame(), YuvRange::Limited, None, &mut back).unwrap();
                for (a, b) in back.iter().zip(&rgb) {
                    assert!(a.abs_diff(*b) <= 3, "{format:?} {c:?} -> {back:?}");
                }
            }
        }
    }

    #[test]
    fn holds_cover_the_frames_in_order() {
        let photos = photos_in(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../models/samples/sign-digits"
        )))
        .unwrap();
        assert_eq!(photos.len(), 100);
        assert!(photos.iter().all(|p| p.label.is_some()));
        let options = ReplayOptions {
            frames_per_hold: 3,
            width: 64,
            height: 48,
            ..ReplayOptions::default()
        };
        let mut replay = ReplaySource::new("samples", photos[..4].to_vec(), options).unwrap();
        let holds = replay.holds().to_vec();
        assert_eq!(holds.len(), 4);
        assert_eq!(holds[3].first_frame, 9);
        let mut frame = CapturedFrame::default();
        let mut n = 0;
        while replay.next_frame(&mut frame).unwrap() {
            assert_eq!(frame.as_frame().validate(), Ok(()));
            assert_eq!(frame.timestamp_us, (n as f64 * 1e6 / 30.0) as u64);
            n += 1;
        }
        assert_eq!(n, 12);
    }
}
