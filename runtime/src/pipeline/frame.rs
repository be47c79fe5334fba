//! Raw camera frames: the [`Frame`] descriptor, its validation, and the steps from a frame to
//! the network's input: conversion to packed RGB (with an optional region of interest), resize
//! as the manifest says, and normalisation to NCHW floats. Every step writes into a buffer the
//! caller keeps ([`FrameBuffers`]), so a steady stream of frames of one size allocates nothing.
//!
//! The conversions and the resize are portable scalar code. On x86_64 CPUs with AVX2 the YUV
//! formats go 16 pixels at a time (`yuv_x86.rs`) and the resize runs an AVX2 build of the same
//! loop; both give exactly the scalar code's bytes (tested below), so every target computes
//! the same frame. They are compared with yuvutils-rs and fast_image_resize in
//! `examples/kiosk/benches/conversions.rs` (issue 6); the conversion tests hold them to within
//! 1 of exact BT.601. YUV rows go two pixels per chroma sample, the resize works out its
//! column taps once per call.
//!
//! YUV to RGB follows ITU-R BT.601 in fixed point with 14 fractional bits, rounded half up and
//! clamped to `0..=255`:
//!
//! ```text
//! limited: c = 19077 (Y - 16);  R = c + 26149 (V-128);  G = c - 6419 (U-128) - 13320 (V-128);
//!          B = c + 33050 (U-128)
//! full:    c = 16384 Y;         R = c + 22970 (V-128);  G = c -  5638 (U-128) - 11700 (V-128);
//!          B = c + 29032 (U-128)
//! out = clamp((x + 8192) >> 14, 0, 255)
//! ```
//!
//! These are the standard's real coefficients times 2^14, so the result is within 1 of the
//! exact value rounded to nearest (`tests/pipeline_conversion.rs` checks every format against
//! an independent numpy reference). Chroma is sited at the top-left pixel of each 2x2 (or 2x1
//! for YUYV) block and not interpolated: pixel `(x, y)` reads chroma `(x / 2, y / 2)`. Odd
//! widths and heights are allowed; the chroma planes then have `ceil(w / 2)` columns and
//! `ceil(h / 2)` rows.

use std::cell::RefCell;

use crate::manifest::{InputSpec, ResizeMode};

/// A resize's per-column taps: (first byte, second byte, weight of the second).
type ColumnTaps = Vec<(usize, usize, f32)>;

thread_local! {
    /// The resize's column taps, and the current output row's two source rows blended
    /// vertically.
    static RESIZE_SCRATCH: RefCell<(ColumnTaps, Vec<f32>)> =
        const { RefCell::new((Vec::new(), Vec::new())) };
}

/// How the bytes of a frame are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PixelFormat {
    /// One plane, 3 bytes per pixel: R, G, B.
    Rgb24,
    /// One plane, 3 bytes per pixel: B, G, R.
    Bgr24,
    /// One plane, 4 bytes per pixel: R, G, B, A (alpha ignored).
    Rgba,
    /// One plane, 4 bytes per pixel: B, G, R, A (alpha ignored).
    Bgra,
    /// One plane, 1 byte per pixel; R = G = B = the byte.
    Gray8,
    /// Y plane, then one plane of interleaved U, V at half resolution both ways.
    Nv12,
    /// Y plane, then one plane of interleaved V, U at half resolution both ways.
    Nv21,
    /// Three planes: Y, then U and V each at half resolution both ways.
    I420,
    /// One plane, 4 bytes per 2 pixels: Y0, U, Y1, V (chroma at half horizontal resolution).
    Yuyv,
}

/// The YUV quantisation range (BT.601 matrix in both cases). Ignored for RGB and grey formats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum YuvRange {
    /// Y in 16..=235, U and V in 16..=240 ("TV" or "video" range), what most cameras send.
    #[default]
    Limited,
    /// Y, U and V in 0..=255 ("PC" or JPEG range).
    Full,
}

/// Why a frame was refused. Each variant names the rule it broke.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    #[error("frame is {width}x{height}: both sides must be at least 1")]
    Empty { width: usize, height: usize },
    #[error("{format:?} needs {needed} plane(s), plane {plane} is missing")]
    MissingPlane {
        format: PixelFormat,
        plane: usize,
        needed: usize,
    },
    #[error("plane {plane} stride is {stride} bytes, a row of it needs at least {row_bytes}")]
    StrideTooSmall {
        plane: usize,
        stride: usize,
        row_bytes: usize,
    },
    #[error("plane {plane} holds {len} bytes, {rows} rows at stride {stride} need {needed}")]
    PlaneTooShort {
        plane: usize,
        len: usize,
        rows: usize,
        stride: usize,
        needed: usize,
    },
    #[error("frame size overflows the address space")]
    Overflow,
    #[error("region of interest {x},{y} {width}x{height} is empty or outside the {frame_width}x{frame_height} frame")]
    BadRoi {
        x: usize,
        y: usize,
        width: usize,
        height: usize,
        frame_width: usize,
        frame_height: usize,
    },
}

/// One plane's shape: how many bytes a row holds and how many rows there are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlaneShape {
    pub row_bytes: usize,
    pub rows: usize,
}

impl PixelFormat {
    /// Every format, in the order of the C ABI's `edgemm_pixel_format` values. (A function,
    /// not an associated constant: cbindgen would export a constant as a C type.)
    pub const fn all() -> [PixelFormat; 9] {
        [
            PixelFormat::Rgb24,
            PixelFormat::Bgr24,
            PixelFormat::Rgba,
            PixelFormat::Bgra,
            PixelFormat::Gray8,
            PixelFormat::Nv12,
            PixelFormat::Nv21,
            PixelFormat::I420,
            PixelFormat::Yuyv,
        ]
    }

    /// The shape of each plane of a `width` x `height` frame (`None` on overflow).
    pub fn plane_shapes(self, width: usize, height: usize) -> Option<Vec<PlaneShape>> {
        let (cw, ch) = (width.div_ceil(2), height.div_ceil(2));
        let p = |row_bytes: Option<usize>, rows: usize| {
            row_bytes.map(|row_bytes| PlaneShape { row_bytes, rows })
        };
        let shapes = match self {
            PixelFormat::Rgb24 | PixelFormat::Bgr24 => vec![p(width.checked_mul(3), height)],
            PixelFormat::Rgba | PixelFormat::Bgra => vec![p(width.checked_mul(4), height)],
            PixelFormat::Gray8 => vec![p(Some(width), height)],
            PixelFormat::Nv12 | PixelFormat::Nv21 => {
                vec![p(Some(width), height), p(cw.checked_mul(2), ch)]
            }
            PixelFormat::I420 => vec![p(Some(width), height), p(Some(cw), ch), p(Some(cw), ch)],
            PixelFormat::Yuyv => vec![p(cw.checked_mul(4), height)],
        };
        shapes.into_iter().collect()
    }

    /// Planes a frame of this format has.
    pub fn plane_count(self) -> usize {
        match self {
            PixelFormat::Nv12 | PixelFormat::Nv21 => 2,
            PixelFormat::I420 => 3,
            _ => 1,
        }
    }
}

/// A region of a frame, in pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Roi {
    pub x: usize,
    pub y: usize,
    pub width: usize,
    pub height: usize,
}

/// A camera frame borrowed from its producer. Planes not used by `format` are empty.
#[derive(Clone, Copy, Debug)]
pub struct Frame<'a> {
    /// Plane bytes, in the order [`PixelFormat`] lists them.
    pub planes: [&'a [u8]; 3],
    /// Bytes from the start of one row of each plane to the next (at least the row's bytes).
    pub strides: [usize; 3],
    /// Pixels.
    pub width: usize,
    pub height: usize,
    pub format: PixelFormat,
    /// Capture time in microseconds, on whatever clock the producer uses; carried into events.
    pub timestamp_us: u64,
}

impl<'a> Frame<'a> {
    /// A single-plane frame (RGB, BGR, RGBA, BGRA, grey, YUYV).
    pub fn packed(
        data: &'a [u8],
        width: usize,
        height: usize,
        stride: usize,
        format: PixelFormat,
        timestamp_us: u64,
    ) -> Self {
        Self {
            planes: [data, &[], &[]],
            strides: [stride, 0, 0],
            width,
            height,
            format,
            timestamp_us,
        }
    }

    /// Checks that every plane the format needs is there and long enough for its rows. The last
    /// row need not be padded to the full stride.
    pub fn validate(&self) -> Result<(), FrameError> {
        if self.width == 0 || self.height == 0 {
            return Err(FrameError::Empty {
                width: self.width,
                height: self.height,
            });
        }
        let shapes = self
            .format
            .plane_shapes(self.width, self.height)
            .ok_or(FrameError::Overflow)?;
        for (plane, shape) in shapes.iter().enumerate() {
            let (data, stride) = (self.planes[plane], self.strides[plane]);
            if data.is_empty() {
                return Err(FrameError::MissingPlane {
                    format: self.format,
                    plane,
                    needed: shapes.len(),
                });
            }
            if stride < shape.row_bytes {
                return Err(FrameError::StrideTooSmall {
                    plane,
                    stride,
                    row_bytes: shape.row_bytes,
                });
            }
            let needed = stride
                .checked_mul(shape.rows - 1)
                .and_then(|n| n.checked_add(shape.row_bytes))
                .ok_or(FrameError::Overflow)?;
            if data.len() < needed {
                return Err(FrameError::PlaneTooShort {
                    plane,
                    len: data.len(),
                    rows: shape.rows,
                    stride,
                    needed,
                });
            }
        }
        Ok(())
    }

    /// The whole frame, or `roi` once checked to lie inside it.
    pub fn region(&self, roi: Option<Roi>) -> Result<Roi, FrameError> {
        let whole = Roi {
            x: 0,
            y: 0,
            width: self.width,
            height: self.height,
        };
        let Some(r) = roi else { return Ok(whole) };
        let inside = r.width > 0
            && r.height > 0
            && r.x.checked_add(r.width).is_some_and(|e| e <= self.width)
            && r.y.checked_add(r.height).is_some_and(|e| e <= self.height);
        if inside {
            Ok(r)
        } else {
            Err(FrameError::BadRoi {
                x: r.x,
                y: r.y,
                width: r.width,
                height: r.height,
                frame_width: self.width,
                frame_height: self.height,
            })
        }
    }
}

/// BT.601 coefficients times 2^14: luma gain and offset, then R from V, G from U and V, B from U.
pub(super) struct Coefficients {
    pub(super) y_gain: i32,
    pub(super) y_offset: i32,
    pub(super) rv: i32,
    pub(super) gu: i32,
    pub(super) gv: i32,
    pub(super) bu: i32,
}

pub(super) const LIMITED: Coefficients = Coefficients {
    y_gain: 19077,
    y_offset: 16,
    rv: 26149,
    gu: 6419,
    gv: 13320,
    bu: 33050,
};

const FULL: Coefficients = Coefficients {
    y_gain: 16384,
    y_offset: 0,
    rv: 22970,
    gu: 5638,
    gv: 11700,
    bu: 29032,
};

#[inline(always)]
fn clamp_shift(x: i32) -> u8 {
    ((x + 8192) >> 14).clamp(0, 255) as u8
}

#[inline(always)]
fn yuv_pixel(k: &Coefficients, y: u8, u: u8, v: u8, out: &mut [u8]) {
    yuv_pair(k, &[y], u, v, out);
}

/// Converts the one or two luma samples of `y` that share the chroma sample (`u`, `v`) into
/// `out` (3 bytes per sample): the chroma terms are computed once per pair.
#[inline(always)]
fn yuv_pair(k: &Coefficients, y: &[u8], u: u8, v: u8, out: &mut [u8]) {
    let (d, e) = (i32::from(u) - 128, i32::from(v) - 128);
    let (r, g, b) = (k.rv * e, -k.gu * d - k.gv * e, k.bu * d);
    for (&y, px) in y.iter().zip(out.chunks_exact_mut(3)) {
        let c = k.y_gain * (i32::from(y) - k.y_offset);
        px[0] = clamp_shift(c + r);
        px[1] = clamp_shift(c + g);
        px[2] = clamp_shift(c + b);
    }
}

/// One row of 4:2:0 or 4:2:2 YUV from column `x` on: `luma[i]` is the sample of column `i`
/// and `chroma(j)` the (U, V) pair of chroma column `j` (columns `2j` and `2j + 1`). An odd
/// `x` starts mid-pair; from the even column after it, `blocks(x, out)` converts what it can
/// with SIMD (returning how many pixels, 0 where there is none) and the rest goes two pixels
/// at a time.
#[inline(always)]
fn yuv_row(
    k: &Coefficients,
    luma: &[u8],
    x: usize,
    out: &mut [u8],
    chroma: impl Fn(usize) -> (u8, u8),
    blocks: impl FnOnce(usize, &mut [u8]) -> usize,
) {
    let width = out.len() / 3;
    let (mut x, mut out) = (x, out);
    if x % 2 == 1 && width > 0 {
        let (u, v) = chroma(x / 2);
        let (px, rest) = out.split_at_mut(3);
        yuv_pixel(k, luma[x], u, v, px);
        (x, out) = (x + 1, rest);
    }
    let done = blocks(x, out);
    let (x, out) = (x + done, &mut out[3 * done..]);
    let n = out.len() / 3;
    for (j, (y, px)) in luma[x..x + n].chunks(2).zip(out.chunks_mut(6)).enumerate() {
        let (u, v) = chroma(x / 2 + j);
        yuv_pair(k, y, u, v, px);
    }
}

/// Which YUV code to run: the SIMD blocks where the CPU has them, or the scalar code alone
/// (the reference the SIMD paths are tested against).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Simd {
    Auto,
    #[cfg_attr(not(test), allow(dead_code))]
    Off,
}

impl Simd {
    fn enabled(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            self == Simd::Auto && super::yuv_x86::available()
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }
}

/// Converts `roi` (the whole frame when `None`) of a validated `frame` to packed RGB in `out`,
/// which is resized to `roi.width * roi.height * 3` (reusing its capacity). Returns the region.
pub fn convert_to_rgb(
    frame: &Frame<'_>,
    range: YuvRange,
    roi: Option<Roi>,
    out: &mut Vec<u8>,
) -> Result<Roi, FrameError> {
    convert_with(frame, range, roi, out, Simd::Auto)
}

fn convert_with(
    frame: &Frame<'_>,
    range: YuvRange,
    roi: Option<Roi>,
    out: &mut Vec<u8>,
    simd: Simd,
) -> Result<Roi, FrameError> {
    let simd = simd.enabled();
    frame.validate()?;
    let r = frame.region(roi)?;
    out.resize(r.width * r.height * 3, 0);
    let k = match range {
        YuvRange::Limited => &LIMITED,
        YuvRange::Full => &FULL,
    };
    let [p0, p1, p2] = frame.planes;
    let [s0, s1, s2] = frame.strides;
    for (row, dst) in out.chunks_exact_mut(r.width * 3).enumerate() {
        let y = r.y + row;
        match frame.format {
            PixelFormat::Rgb24 | PixelFormat::Bgr24 | PixelFormat::Rgba | PixelFormat::Bgra => {
                let (bpp, swap) = match frame.format {
                    PixelFormat::Rgb24 => (3, false),
                    PixelFormat::Bgr24 => (3, true),
                    PixelFormat::Rgba => (4, false),
                    _ => (4, true),
                };
                let src = &p0[y * s0 + r.x * bpp..][..r.width * bpp];
                for (px, s) in dst.chunks_exact_mut(3).zip(src.chunks_exact(bpp)) {
                    if swap {
                        px.copy_from_slice(&[s[2], s[1], s[0]]);
                    } else {
                        px.copy_from_slice(&s[..3]);
                    }
                }
            }
            PixelFormat::Gray8 => {
                let src = &p0[y * s0 + r.x..][..r.width];
                for (px, &g) in dst.chunks_exact_mut(3).zip(src) {
                    px.fill(g);
                }
            }
            PixelFormat::Nv12 | PixelFormat::Nv21 => {
                let luma = &p0[y * s0..];
                let chroma = &p1[(y / 2) * s1..];
                let v_first = frame.format == PixelFormat::Nv21;
                let (ui, vi) = if v_first { (1, 0) } else { (0, 1) };
                // Chroma column j is at byte 2j, so the one of an even column x at byte x.
                let blocks = |x: usize, out: &mut [u8]| {
                    #[cfg(target_arch = "x86_64")]
                    if simd {
                        // SAFETY: `simd` is only true when the CPU has AVX2.
                        return unsafe {
                            super::yuv_x86::nv12(k, &luma[x..], &chroma[x..], v_first, out)
                        };
                    }
                    let _ = (x, out, simd);
                    0
                };
                let chroma_at = |j: usize| (chroma[2 * j + ui], chroma[2 * j + vi]);
                yuv_row(k, luma, r.x, dst, chroma_at, blocks);
            }
            PixelFormat::I420 => {
                let luma = &p0[y * s0..];
                let (u, v) = (&p1[(y / 2) * s1..], &p2[(y / 2) * s2..]);
                let blocks = |x: usize, out: &mut [u8]| {
                    #[cfg(target_arch = "x86_64")]
                    if simd {
                        // SAFETY: `simd` is only true when the CPU has AVX2.
                        return unsafe {
                            super::yuv_x86::i420(k, &luma[x..], &u[x / 2..], &v[x / 2..], out)
                        };
                    }
                    let _ = (x, out, simd);
                    0
                };
                yuv_row(k, luma, r.x, dst, |j| (u[j], v[j]), blocks);
            }
            PixelFormat::Yuyv => {
                // Y0 U Y1 V per pair: column x's luma is byte 2x, its pair starts at 4 (x / 2).
                let line = &p0[y * s0..];
                let luma = |x: usize| line[2 * x];
                let chroma_at = |j: usize| (line[4 * j + 1], line[4 * j + 3]);
                let (mut x, mut dst) = (r.x, &mut *dst);
                if x % 2 == 1 {
                    let (u, v) = chroma_at(x / 2);
                    let (px, rest) = dst.split_at_mut(3);
                    yuv_pixel(k, luma(x), u, v, px);
                    (x, dst) = (x + 1, rest);
                }
                #[cfg(target_arch = "x86_64")]
                if simd {
                    // SAFETY: `simd` is only true when the CPU has AVX2.
                    let done = unsafe { super::yuv_x86::yuyv(k, &line[2 * x..], dst) };
                    (x, dst) = (x + done, &mut dst[3 * done..]);
                }
                for (pair, px) in line[2 * x..].chunks_exact(4).zip(dst.chunks_mut(6)) {
                    yuv_pair(k, &[pair[0], pair[2]], pair[1], pair[3], px);
                }
            }
        }
    }
    Ok(r)
}

/// A rectangle in pixels (source region or destination placement).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Rect {
    x: usize,
    y: usize,
    w: usize,
    h: usize,
}

/// Where the source region lands in the output for each resize mode: (source rectangle,
/// destination rectangle). Matches `preprocess::resize`: centre-crop keeps the largest centred
/// region of the target's aspect ratio, letterbox centres the scaled image on black.
fn placement(sw: usize, sh: usize, tw: usize, th: usize, mode: ResizeMode) -> (Rect, Rect) {
    let full_src = Rect {
        x: 0,
        y: 0,
        w: sw,
        h: sh,
    };
    let full_dst = Rect {
        x: 0,
        y: 0,
        w: tw,
        h: th,
    };
    match mode {
        ResizeMode::Stretch => (full_src, full_dst),
        ResizeMode::CenterCrop => {
            let (cw, ch) = if (sw as u64) * (th as u64) > (sh as u64) * (tw as u64) {
                (((sh as u64) * (tw as u64) / (th as u64)) as usize, sh)
            } else {
                (sw, ((sw as u64) * (th as u64) / (tw as u64)) as usize)
            };
            let (cw, ch) = (cw.max(1), ch.max(1));
            let src = Rect {
                x: (sw - cw) / 2,
                y: (sh - ch) / 2,
                w: cw,
                h: ch,
            };
            (src, full_dst)
        }
        ResizeMode::Letterbox => {
            let scale = (tw as f64 / sw as f64).min(th as f64 / sh as f64);
            let w = ((sw as f64 * scale).round() as usize).clamp(1, tw);
            let h = ((sh as f64 * scale).round() as usize).clamp(1, th);
            let dst = Rect {
                x: (tw - w) / 2,
                y: (th - h) / 2,
                w,
                h,
            };
            (full_src, dst)
        }
    }
}

/// Resizes packed RGB `src` (`sw` x `sh`) to `tw` x `th` in `out` with bilinear sampling
/// (pixel centres aligned), as `mode` says; letterbox bars are black. `out` is resized to
/// `tw * th * 3`, reusing its capacity.
///
/// Bilinear reads 2x2 source pixels per output pixel, so a large downscale (a 640x480 frame to
/// a 64x64 input) samples rather than averages; that is the usual camera-pipeline trade and the
/// one the measured comparison with fast_image_resize (issue 6) will revisit.
pub fn resize_rgb(
    src: &[u8],
    sw: usize,
    sh: usize,
    tw: usize,
    th: usize,
    mode: ResizeMode,
    out: &mut Vec<u8>,
) {
    resize_with(src, (sw, sh), (tw, th), mode, out, Simd::Auto);
}

fn resize_with(
    src: &[u8],
    (sw, sh): (usize, usize),
    (tw, th): (usize, usize),
    mode: ResizeMode,
    out: &mut Vec<u8>,
    simd: Simd,
) {
    assert_eq!(src.len(), sw * sh * 3, "source is not sw x sh RGB");
    out.clear();
    out.resize(tw * th * 3, 0);
    if sw == 0 || sh == 0 || tw == 0 || th == 0 {
        return;
    }
    // Only x86_64 has a SIMD build of the resize.
    #[cfg(not(target_arch = "x86_64"))]
    let _ = simd;
    let (s, d) = placement(sw, sh, tw, th, mode);
    let sx = s.w as f32 / d.w as f32;
    let sy = s.h as f32 / d.h as f32;
    RESIZE_SCRATCH.with_borrow_mut(|(taps, blended)| {
        // Bilinear is separable: each output row blends its two source rows once (a
        // contiguous loop the compiler vectorises), then samples the blend at the columns'
        // taps, worked out once per call.
        taps.clear();
        taps.extend((0..d.w).map(|dx| {
            let fx = ((dx as f32 + 0.5) * sx - 0.5).clamp(0.0, (s.w - 1) as f32);
            let x0 = fx as usize;
            let x1 = (x0 + 1).min(s.w - 1);
            (x0 * 3, x1 * 3, fx - x0 as f32)
        }));
        blended.resize(s.w * 3, 0.0);
        let rows = Rows {
            src,
            sw,
            tw,
            s,
            d,
            sy,
        };
        #[cfg(target_arch = "x86_64")]
        if simd.enabled() {
            // SAFETY: `enabled` checked that the CPU has AVX2.
            return unsafe { rows.resize_avx2(taps, blended, out) };
        }
        rows.resize(taps, blended, out);
    });
}

/// The row loop of [`resize_rgb`]: source, widths, placement and vertical scale.
struct Rows<'a> {
    src: &'a [u8],
    sw: usize,
    tw: usize,
    s: Rect,
    d: Rect,
    sy: f32,
}

impl Rows<'_> {
    /// [`Rows::resize`] compiled for AVX2: the same operations in the same order (no fused
    /// multiply-add), so the same bytes, with the row blend eight lanes wide.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn resize_avx2(
        &self,
        taps: &[(usize, usize, f32)],
        blended: &mut [f32],
        out: &mut [u8],
    ) {
        self.resize(taps, blended, out);
    }

    #[inline(always)]
    fn resize(&self, taps: &[(usize, usize, f32)], blended: &mut [f32], out: &mut [u8]) {
        let Rows {
            src,
            sw,
            tw,
            s,
            d,
            sy,
        } = *self;
        for dy in 0..d.h {
            let fy = ((dy as f32 + 0.5) * sy - 0.5).clamp(0.0, (s.h - 1) as f32);
            let y0 = fy as usize;
            let y1 = (y0 + 1).min(s.h - 1);
            let wy = fy - y0 as f32;
            let row0 = &src[((s.y + y0) * sw + s.x) * 3..][..s.w * 3];
            let row1 = &src[((s.y + y1) * sw + s.x) * 3..][..s.w * 3];
            for ((v, &t), &b) in blended.iter_mut().zip(row0).zip(row1) {
                *v = f32::from(t) * (1.0 - wy) + f32::from(b) * wy;
            }
            let dst = &mut out[((d.y + dy) * tw + d.x) * 3..][..d.w * 3];
            for (px, &(a, b, wx)) in dst.chunks_exact_mut(3).zip(taps.iter()) {
                let (left, right) = (&blended[a..a + 3], &blended[b..b + 3]);
                for c in 0..3 {
                    // Non-negative, so adding a half and truncating rounds (half up) without
                    // the libm call `round` is on targets without SSE4.1.
                    px[c] = (left[c] * (1.0 - wx) + right[c] * wx + 0.5) as u8;
                }
            }
        }
    }
}

/// Writes packed RGB at the input size as normalised CHW floats into `out` (resized to
/// `3 * height * width`): `(p * scale - mean[c]) / std[c]`, as the manifest says.
pub fn normalise_chw(rgb: &[u8], spec: &InputSpec, out: &mut Vec<f32>) {
    let plane = spec.height * spec.width;
    assert_eq!(rgb.len(), plane * 3, "image is not at the input size");
    out.resize(3 * plane, 0.0);
    // 256 values per channel: a table lookup replaces a multiply and a divide per sample.
    let mut table = [[0f32; 256]; 3];
    for (c, t) in table.iter_mut().enumerate() {
        for (p, v) in t.iter_mut().enumerate() {
            *v = (p as f32 * spec.scale - spec.mean[c]) / spec.std[c];
        }
    }
    let (r, rest) = out.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for (i, px) in rgb.chunks_exact(3).enumerate() {
        r[i] = table[0][usize::from(px[0])];
        g[i] = table[1][usize::from(px[1])];
        b[i] = table[2][usize::from(px[2])];
    }
}

/// The buffers one worker reuses from frame to frame: after the first frame of a given size,
/// [`FrameBuffers::convert`] and [`FrameBuffers::preprocess`] allocate nothing.
#[derive(Debug, Default)]
pub struct FrameBuffers {
    /// The frame (or its region of interest) as packed RGB.
    pub rgb: Vec<u8>,
    pub rgb_width: usize,
    pub rgb_height: usize,
    /// `rgb` at the model's input size.
    pub resized: Vec<u8>,
    /// `resized` as normalised CHW floats, ready for the network.
    pub tensor: Vec<f32>,
}

impl FrameBuffers {
    /// Converts `frame` (its `roi`, if given) to RGB in `self.rgb`.
    pub fn convert(
        &mut self,
        frame: &Frame<'_>,
        range: YuvRange,
        roi: Option<Roi>,
    ) -> Result<(), FrameError> {
        let r = convert_to_rgb(frame, range, roi, &mut self.rgb)?;
        self.rgb_width = r.width;
        self.rgb_height = r.height;
        Ok(())
    }

    /// Resizes and normalises `self.rgb` into `self.tensor` as `spec` says.
    pub fn preprocess(&mut self, spec: &InputSpec) {
        resize_rgb(
            &self.rgb,
            self.rgb_width,
            self.rgb_height,
            spec.width,
            spec.height,
            spec.resize,
            &mut self.resized,
        );
        normalise_chw(&self.resized, spec, &mut self.tensor);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(w: usize, h: usize, resize: ResizeMode) -> InputSpec {
        serde_json::from_value(serde_json::json!({
            "height": h, "width": w, "resize": resize,
        }))
        .unwrap()
    }

    #[test]
    fn validation_names_the_broken_rule() {
        let data = [0u8; 7 * 5 + 4 * 3 * 2];
        let mut f = Frame {
            planes: [&data[..35], &data[35..], &[]],
            strides: [7, 8, 0],
            width: 7,
            height: 5,
            format: PixelFormat::Nv12,
            timestamp_us: 0,
        };
        assert_eq!(f.validate(), Ok(()));
        f.strides[1] = 6;
        assert!(matches!(
            f.validate(),
            Err(FrameError::StrideTooSmall { plane: 1, .. })
        ));
        f.strides[1] = 9;
        assert!(matches!(
            f.validate(),
            Err(FrameError::PlaneTooShort {
                plane: 1,
                needed: 26,
                ..
            })
        ));
        f.planes[1] = &[];
        assert!(matches!(
            f.validate(),
            Err(FrameError::MissingPlane { plane: 1, .. })
        ));
        f.width = 0;
        assert!(matches!(f.validate(), Err(FrameError::Empty { .. })));
    }

    #[test]
    fn roi_crops_and_is_checked() {
        // A 4x2 grey ramp; the region 1,1 2x1 holds the values 5 and 6.
        let data: Vec<u8> = (0..8).collect();
        let f = Frame::packed(&data, 4, 2, 4, PixelFormat::Gray8, 0);
        let mut out = Vec::new();
        let roi = Roi {
            x: 1,
            y: 1,
            width: 2,
            height: 1,
        };
        convert_to_rgb(&f, YuvRange::Limited, Some(roi), &mut out).unwrap();
        assert_eq!(out, [5, 5, 5, 6, 6, 6]);
        let outside = Roi { x: 3, ..roi };
        assert!(matches!(
            convert_to_rgb(&f, YuvRange::Limited, Some(outside), &mut out),
            Err(FrameError::BadRoi { .. })
        ));
    }

    #[test]
    fn resize_modes_place_the_image() {
        // 4x2 white image into 4x4: letterbox leaves a black bar of one row above and below.
        let white = vec![255u8; 4 * 2 * 3];
        let mut out = Vec::new();
        resize_rgb(&white, 4, 2, 4, 4, ResizeMode::Letterbox, &mut out);
        let row = |r: usize| &out[r * 12..(r + 1) * 12];
        assert!(row(0).iter().all(|&v| v == 0));
        assert!(row(1).iter().chain(row(2)).all(|&v| v == 255));
        assert!(row(3).iter().all(|&v| v == 0));
        // Centre-crop of a 4x2 image whose middle two columns are white: a 2x2 white output.
        let mut img = vec![0u8; 4 * 2 * 3];
        for y in 0..2 {
            for x in 1..3 {
                img[(y * 4 + x) * 3..][..3].fill(255);
            }
        }
        resize_rgb(&img, 4, 2, 2, 2, ResizeMode::CenterCrop, &mut out);
        assert!(out.iter().all(|&v| v == 255), "{out:?}");
        // Stretch to the same size is the identity.
        resize_rgb(&img, 4, 2, 4, 2, ResizeMode::Stretch, &mut out);
        assert_eq!(out, img);
        // Bilinear halfway between 0 and 255 on a 2x1 -> 3x1 stretch: the middle is 128.
        resize_rgb(
            &[0, 0, 0, 255, 255, 255],
            2,
            1,
            3,
            1,
            ResizeMode::Stretch,
            &mut out,
        );
        assert_eq!(out[3..6], [128, 128, 128]);
    }

    #[test]
    fn normalisation_follows_the_manifest() {
        let mut s = spec(1, 1, ResizeMode::Stretch);
        s.mean = [0.5, 0.5, 0.5];
        s.std = [0.5, 0.25, 1.0];
        let mut out = Vec::new();
        normalise_chw(&[255, 0, 51], &s, &mut out);
        let expect = [1.0, -2.0, 51.0 / 255.0 - 0.5];
        for (a, b) in out.iter().zip(expect) {
            assert!((a - b).abs() < 1e-5, "{out:?}");
        }
    }

    /// The separable resize is bilinear sampling with pixel centres aligned: against the
    /// formula evaluated directly per output pixel in f64, within 1 level (rounding).
    #[test]
    fn resize_matches_direct_bilinear_sampling() {
        let (sw, sh) = (37, 29);
        let src: Vec<u8> = (0..sw * sh * 3).map(|i| ((i * 7919) % 251) as u8).collect();
        for (tw, th) in [(16, 20), (50, 41), (37, 29), (1, 1)] {
            let mut out = Vec::new();
            resize_rgb(&src, sw, sh, tw, th, ResizeMode::Stretch, &mut out);
            let (fx, fy) = (sw as f64 / tw as f64, sh as f64 / th as f64);
            for y in 0..th {
                let py = ((y as f64 + 0.5) * fy - 0.5).clamp(0.0, (sh - 1) as f64);
                let (y0, wy) = (py as usize, py.fract());
                let y1 = (y0 + 1).min(sh - 1);
                for x in 0..tw {
                    let px = ((x as f64 + 0.5) * fx - 0.5).clamp(0.0, (sw - 1) as f64);
                    let (x0, wx) = (px as usize, px.fract());
                    let x1 = (x0 + 1).min(sw - 1);
                    for c in 0..3 {
                        let at = |xx: usize, yy: usize| f64::from(src[(yy * sw + xx) * 3 + c]);
                        let v = (at(x0, y0) * (1.0 - wx) + at(x1, y0) * wx) * (1.0 - wy)
                            + (at(x0, y1) * (1.0 - wx) + at(x1, y1) * wx) * wy;
                        let got = f64::from(out[(y * tw + x) * 3 + c]);
                        assert!(
                            (got - v).abs() <= 1.0,
                            "{tw}x{th} at ({x}, {y}) channel {c}: {got} vs {v}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn steady_state_reuses_buffers() {
        let data = vec![7u8; 640 * 480 * 3 / 2];
        let (y, uv) = data.split_at(640 * 480);
        let f = Frame {
            planes: [y, uv, &[]],
            strides: [640, 640, 0],
            width: 640,
            height: 480,
            format: PixelFormat::Nv12,
            timestamp_us: 0,
        };
        let s = spec(32, 32, ResizeMode::Letterbox);
        let mut b = FrameBuffers::default();
        b.convert(&f, YuvRange::Limited, None).unwrap();
        b.preprocess(&s);
        let ptrs = (b.rgb.as_ptr(), b.resized.as_ptr(), b.tensor.as_ptr());
        for _ in 0..3 {
            b.convert(&f, YuvRange::Limited, None).unwrap();
            b.preprocess(&s);
        }
        assert_eq!(
            ptrs,
            (b.rgb.as_ptr(), b.resized.as_ptr(), b.tensor.as_ptr())
        );
    }

    /// Bytes from a fixed-seed xorshift, so a failure reproduces.
    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    /// The SIMD blocks give exactly the scalar code's bytes: every YUV format, both ranges,
    /// widths from 1 to 70 (zero to four blocks plus tails), padded strides, regions at odd and
    /// even columns, and random bytes, so the clamps at 0 and 255 are exercised. Where the CPU
    /// has no SIMD path both sides run the scalar code and the test still checks that.
    #[test]
    fn simd_conversion_equals_scalar() {
        let formats = [
            PixelFormat::Nv12,
            PixelFormat::Nv21,
            PixelFormat::I420,
            PixelFormat::Yuyv,
        ];
        let mut seed = 1;
        for format in formats {
            for width in 1..=70 {
                let height = 3;
                seed += 1;
                let shapes = format.plane_shapes(width, height).unwrap();
                let strides: Vec<usize> = shapes.iter().map(|s| s.row_bytes + 5).collect();
                let planes: Vec<Vec<u8>> = shapes
                    .iter()
                    .zip(&strides)
                    .enumerate()
                    // The last row is not padded to the stride: an over-read there would
                    // leave the slice.
                    .map(|(i, (s, stride))| {
                        noise(stride * (s.rows - 1) + s.row_bytes, seed * 4 + i as u64)
                    })
                    .collect();
                let plane = |i: usize| planes.get(i).map_or(&[][..], |p| &p[..]);
                let stride = |i: usize| strides.get(i).copied().unwrap_or(0);
                let frame = Frame {
                    planes: [plane(0), plane(1), plane(2)],
                    strides: [stride(0), stride(1), stride(2)],
                    width,
                    height,
                    format,
                    timestamp_us: 0,
                };
                // Regions from odd and even columns, to the right edge and short of it.
                let regions = [0, 1, 2, 3].into_iter().flat_map(|x| {
                    [0, 1, 17]
                        .into_iter()
                        .filter(move |&short| x + short < width)
                        .map(move |short| (x, width - x - short))
                });
                for (x, roi_width) in regions {
                    let roi = Roi {
                        x,
                        y: 1,
                        width: roi_width,
                        height: 2,
                    };
                    for range in [YuvRange::Limited, YuvRange::Full] {
                        let (mut fast, mut slow) = (Vec::new(), Vec::new());
                        convert_with(&frame, range, Some(roi), &mut fast, Simd::Auto).unwrap();
                        convert_with(&frame, range, Some(roi), &mut slow, Simd::Off).unwrap();
                        assert_eq!(fast, slow, "{format:?} {range:?} width {width} roi {roi:?}");
                    }
                }
            }
        }
    }

    /// The AVX2 build of the resize gives exactly the portable build's bytes, over upscales,
    /// downscales, odd sizes and all three modes.
    #[test]
    fn simd_resize_equals_scalar() {
        let sizes = [(1, 1), (5, 3), (37, 29), (64, 48), (480, 480)];
        let modes = [
            ResizeMode::Stretch,
            ResizeMode::CenterCrop,
            ResizeMode::Letterbox,
        ];
        for (i, &(sw, sh)) in sizes.iter().enumerate() {
            let src = noise(sw * sh * 3, 100 + i as u64);
            for (tw, th) in [(1, 1), (7, 9), (32, 32), (224, 224), (100, 61)] {
                for mode in modes {
                    let (mut fast, mut slow) = (Vec::new(), Vec::new());
                    resize_with(&src, (sw, sh), (tw, th), mode, &mut fast, Simd::Auto);
                    resize_with(&src, (sw, sh), (tw, th), mode, &mut slow, Simd::Off);
                    assert_eq!(fast, slow, "{sw}x{sh} -> {tw}x{th} {mode:?}");
                }
            }
        }
    }
}
