//! The camera-frame pipeline: push raw frames from a camera thread, get stable digits back
//! through a callback.

use std::ffi::{c_char, c_void, CString};
use std::sync::Arc;

use super::boundary::{arg, boundary, check_range, guard, out, slice_arg, str_arg, FfiError};
use super::runtime::edgemm_runtime;
use super::status::edgemm_status;
use crate::pipeline::frame::{Frame, PixelFormat, Roi, YuvRange};
use crate::pipeline::smoothing::MAX_HOLD_FRAMES;
use crate::pipeline::{
    Pipeline, PipelineEvent, PipelineOptions, RuntimeModel, SmoothingOptions, StageLatency,
    MAX_WORKERS,
};

/// Pixel layouts `edgemm_frame` may hold. Planes are listed in order; "half" means
/// ceil(width / 2) or ceil(height / 2), so odd sizes are allowed.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum edgemm_pixel_format {
    /// 1 plane, 3 bytes per pixel: R, G, B.
    EDGEMM_PIXEL_RGB24 = 0,
    /// 1 plane, 3 bytes per pixel: B, G, R.
    EDGEMM_PIXEL_BGR24 = 1,
    /// 1 plane, 4 bytes per pixel: R, G, B, A (alpha ignored).
    EDGEMM_PIXEL_RGBA = 2,
    /// 1 plane, 4 bytes per pixel: B, G, R, A (alpha ignored).
    EDGEMM_PIXEL_BGRA = 3,
    /// 1 plane, 1 byte per pixel (grey).
    EDGEMM_PIXEL_GRAY8 = 4,
    /// 2 planes: Y (width x height), interleaved U,V (half width pairs x half height).
    EDGEMM_PIXEL_NV12 = 5,
    /// 2 planes: Y, interleaved V,U.
    EDGEMM_PIXEL_NV21 = 6,
    /// 3 planes: Y, U (half x half), V (half x half).
    EDGEMM_PIXEL_I420 = 7,
    /// 1 plane, 4 bytes per 2 pixels: Y0, U, Y1, V (half-width chroma).
    EDGEMM_PIXEL_YUYV = 8,
}

/// Quantisation range of YUV frames (BT.601 matrix in both).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum edgemm_yuv_range {
    /// Y in 16..235, chroma in 16..240: what most cameras send. The default.
    EDGEMM_YUV_LIMITED = 0,
    /// Y and chroma in 0..255 (JPEG range).
    EDGEMM_YUV_FULL = 1,
}

/// One camera frame, described by the caller; edgemm copies what it needs during
/// `edgemm_pipeline_push_frame` and keeps no pointer afterwards.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct edgemm_frame {
    /// Start of each plane, in the order `format` lists them. Planes the format does not use
    /// are ignored (may be NULL).
    pub planes: [*const u8; 3],
    /// Bytes from one row of each plane to the next. 0 = rows packed with no padding.
    pub strides: [u32; 3],
    /// Bytes readable at each plane pointer, checked against stride x rows. 0 = exactly what
    /// the format needs (stride x (rows - 1) + one row), trusted without a check.
    pub plane_bytes: [usize; 3],
    /// Pixels, at least 1 each.
    pub width: u32,
    pub height: u32,
    /// An `edgemm_pixel_format` value; anything else is EDGEMM_ERR_BAD_INPUT. (edgemm reads
    /// this field as a plain uint32_t, so any value is safe to pass.)
    pub format: edgemm_pixel_format,
    /// Capture time, microseconds, on any clock the caller likes; copied into events.
    pub timestamp_us: u64,
}

/// Options for `edgemm_pipeline_new`. Start from `edgemm_pipeline_default_options()`, which
/// fills in the defaults below; every value is then used as given.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct edgemm_pipeline_options {
    /// Inference worker threads, 1..=64. Default 1.
    pub workers: u32,
    /// An `edgemm_yuv_range` value (read as a plain uint32_t; anything else is
    /// EDGEMM_ERR_INVALID_ARGUMENT). Default EDGEMM_YUV_LIMITED.
    pub yuv_range: edgemm_yuv_range,
    /// Region of each frame to classify, pixels. `roi_width` or `roi_height` 0 = the whole
    /// frame (the default); otherwise frames the region does not fit are EDGEMM_ERR_BAD_INPUT.
    pub roi_x: u32,
    pub roi_y: u32,
    pub roi_width: u32,
    pub roi_height: u32,
    /// Weight of the newest frame in the moving average of class probabilities, in (0, 1];
    /// 1 = no averaging. Default 0.5.
    pub ema_alpha: f32,
    /// Smoothed probability at which a class becomes the shown digit, 0..1. Default 0.6.
    pub enter_threshold: f32,
    /// Smoothed probability below which the shown digit gives way to "no sign", at most
    /// `enter_threshold`. Default 0.4.
    pub exit_threshold: f32,
    /// Consecutive frames a new digit (or "no sign") must last before it is reported,
    /// 1..=1000000. Default 3.
    pub hold_frames: u32,
    /// Frame time (by `timestamp_us`) a new digit must last, milliseconds; 0 = no time rule.
    /// Default 0.
    pub hold_ms: u32,
    /// 1 = an EDGEMM_PIPELINE_EVENT_FRAME event for every processed frame; 0 = only digit
    /// changes and errors. Default 1.
    pub frame_results: u8,
}

/// What an `edgemm_pipeline_event` reports.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum edgemm_pipeline_event_kind {
    /// One frame was classified.
    EDGEMM_PIPELINE_EVENT_FRAME = 0,
    /// The shown digit changed (to a digit, or to "no sign").
    EDGEMM_PIPELINE_EVENT_SIGN_CHANGED = 1,
    /// One frame could not be classified; the pipeline goes on.
    EDGEMM_PIPELINE_EVENT_ERROR = 2,
}

/// An event passed to the callback. It and every pointer in it are valid only during the
/// callback: copy what you keep.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct edgemm_pipeline_event {
    pub kind: edgemm_pipeline_event_kind,
    /// The frame's position among all frames pushed to this pipeline, from 0 (for
    /// SIGN_CHANGED, the frame that completed the change).
    pub sequence: u64,
    /// The frame's `timestamp_us`, as pushed.
    pub timestamp_us: u64,
    /// The shown digit (class index) after this frame; for SIGN_CHANGED, the new one. -1 = no
    /// sign. -1 for ERROR.
    pub digit: i32,
    /// Smoothed probability of `digit` (for no sign, of the most probable class), 0..1.
    /// 0 for ERROR.
    pub confidence: f32,
    /// FRAME: this frame's most probable class (unsmoothed). -1 otherwise.
    pub best_class: i32,
    /// FRAME: its probability. 0 otherwise.
    pub best_probability: f32,
    /// FRAME: `num_classes` probabilities in label order. NULL otherwise.
    pub probabilities: *const f32,
    pub num_classes: u32,
    /// FRAME: microseconds spent converting to RGB, resizing and normalising, in the model,
    /// and smoothing. 0 otherwise.
    pub convert_us: u64,
    pub preprocess_us: u64,
    pub infer_us: u64,
    pub smooth_us: u64,
    /// ERROR: what went wrong, NUL-terminated UTF-8. NULL otherwise.
    pub message: *const c_char,
}

/// Receives every event, on a pipeline worker thread, never two calls at once. It must not
/// call `edgemm_pipeline_free` on its own pipeline; it may push frames and read stats.
pub type edgemm_pipeline_callback =
    Option<unsafe extern "C" fn(event: *const edgemm_pipeline_event, user_data: *mut c_void)>;

/// Latency of one pipeline stage over the most recent frames (up to 512), microseconds.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct edgemm_stage_latency {
    /// Frames measured since the pipeline started.
    pub count: u64,
    pub p50_us: u64,
    pub p95_us: u64,
    /// Largest since the pipeline started.
    pub max_us: u64,
}

/// A snapshot of a pipeline's counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct edgemm_pipeline_metrics {
    /// Frames accepted by `edgemm_pipeline_push_frame`.
    pub frames_pushed: u64,
    /// Frames classified (each gave a FRAME event when `frame_results` is 1).
    pub frames_processed: u64,
    /// Frames replaced by a newer one before a worker took them.
    pub frames_dropped: u64,
    /// Frames whose classification failed (each gave an ERROR event).
    pub frames_failed: u64,
    pub convert: edgemm_stage_latency,
    pub preprocess: edgemm_stage_latency,
    pub infer: edgemm_stage_latency,
    pub smooth: edgemm_stage_latency,
    /// Frames processed per second over the recent frames; 0 until two are done.
    pub fps: f64,
}

/// A running pipeline. Opaque.
/// Thread-safety: `edgemm_pipeline_push_frame` and `edgemm_pipeline_stats` may be called from
/// any number of threads at once; `edgemm_pipeline_free` must not race with them.
pub struct edgemm_pipeline {
    inner: Pipeline,
}

/// The C callback and its `user_data`, moved to the worker threads.
struct CCallback {
    f: unsafe extern "C" fn(*const edgemm_pipeline_event, *mut c_void),
    user_data: *mut c_void,
}

// SAFETY: `edgemm_pipeline_new` documents that the callback is called on worker threads with
// `user_data`, never concurrently; the caller promises both may be used that way.
unsafe impl Send for CCallback {}

impl CCallback {
    fn call(&self, e: &PipelineEvent<'_>) {
        let empty = edgemm_pipeline_event {
            kind: edgemm_pipeline_event_kind::EDGEMM_PIPELINE_EVENT_FRAME,
            sequence: 0,
            timestamp_us: 0,
            digit: -1,
            confidence: 0.0,
            best_class: -1,
            best_probability: 0.0,
            probabilities: std::ptr::null(),
            num_classes: 0,
            convert_us: 0,
            preprocess_us: 0,
            infer_us: 0,
            smooth_us: 0,
            message: std::ptr::null(),
        };
        let digit = |d: Option<usize>| d.map_or(-1, |d| d as i32);
        let message;
        let event = match e {
            PipelineEvent::Frame(r) => edgemm_pipeline_event {
                sequence: r.sequence,
                timestamp_us: r.timestamp_us,
                digit: digit(r.digit),
                confidence: r.confidence,
                best_class: r.best as i32,
                best_probability: r.best_probability,
                probabilities: r.probabilities.as_ptr(),
                num_classes: r.probabilities.len() as u32,
                convert_us: r.times.convert_us,
                preprocess_us: r.times.preprocess_us,
                infer_us: r.times.infer_us,
                smooth_us: r.times.smooth_us,
                ..empty
            },
            PipelineEvent::SignChanged { change, sequence } => edgemm_pipeline_event {
                kind: edgemm_pipeline_event_kind::EDGEMM_PIPELINE_EVENT_SIGN_CHANGED,
                sequence: *sequence,
                timestamp_us: change.timestamp_us,
                digit: digit(change.digit),
                confidence: change.confidence,
                ..empty
            },
            PipelineEvent::Error {
                sequence,
                timestamp_us,
                error,
            } => {
                message =
                    CString::new(error.to_string().replace('\0', "\\0")).expect("NULs replaced");
                edgemm_pipeline_event {
                    kind: edgemm_pipeline_event_kind::EDGEMM_PIPELINE_EVENT_ERROR,
                    sequence: *sequence,
                    timestamp_us: *timestamp_us,
                    message: message.as_ptr(),
                    ..empty
                }
            }
        };
        // SAFETY: `f` is the caller's callback; `event` (and `message`, the probabilities)
        // outlive the call, as the event's documentation promises.
        unsafe { (self.f)(&event, self.user_data) };
    }
}

/// ==================== Pipeline ====================
///
/// The default options (see each field of `edgemm_pipeline_options`).
/// Thread-safety: any thread.
#[no_mangle]
pub extern "C" fn edgemm_pipeline_default_options() -> edgemm_pipeline_options {
    let s = SmoothingOptions::default();
    edgemm_pipeline_options {
        workers: 1,
        yuv_range: edgemm_yuv_range::EDGEMM_YUV_LIMITED,
        roi_x: 0,
        roi_y: 0,
        roi_width: 0,
        roi_height: 0,
        ema_alpha: s.alpha,
        enter_threshold: s.enter_threshold,
        exit_threshold: s.exit_threshold,
        hold_frames: s.hold_frames,
        hold_ms: s.hold_ms as u32,
        frame_results: 1,
    }
}

/// Starts a pipeline classifying frames with `model` of `runtime` (loaded now, so a missing or
/// bad model fails here). Events go to `callback` with `user_data`, on a worker thread. On
/// success writes the pipeline to `*out`; free it with `edgemm_pipeline_free`. The pipeline
/// keeps the runtime alive: `edgemm_runtime_free` may come first.
///
/// Returns EDGEMM_OK; EDGEMM_ERR_INVALID_ARGUMENT (a NULL argument, an option out of range);
/// EDGEMM_ERR_NOT_FOUND, EDGEMM_ERR_BAD_ARTIFACT, EDGEMM_ERR_INSUFFICIENT_MEMORY (loading the
/// model); EDGEMM_ERR_INTERNAL (no thread could be started). On failure no callback is ever
/// made. Thread-safety: any thread.
///
/// # Safety
/// `runtime` is live; `model` is NUL-terminated; `options` points to valid options; `out` is
/// writable; `callback` may be called with `user_data` from other threads until
/// `edgemm_pipeline_free` returns.
#[no_mangle]
pub unsafe extern "C" fn edgemm_pipeline_new(
    runtime: *const edgemm_runtime,
    model: *const c_char,
    options: *const edgemm_pipeline_options,
    callback: edgemm_pipeline_callback,
    user_data: *mut c_void,
    out_pipeline: *mut *mut edgemm_pipeline,
) -> edgemm_status {
    boundary!({
        // SAFETY: the caller's contract.
        let rt = unsafe { arg(runtime, "runtime") }?;
        // SAFETY: the caller's contract.
        let model = unsafe { str_arg(model, "model") }?;
        // SAFETY: the caller's contract. Read before the struct is copied: its enum fields
        // come from C and may hold any value.
        let range = unsafe { read_u32(options.cast(), OFFSET_YUV_RANGE, "options") }?;
        // SAFETY: the caller's contract.
        let o = unsafe { arg(options, "options") }?;
        let f = callback.ok_or(FfiError::Null("callback"))?;
        let out_pipeline = out(out_pipeline, "out")?;
        // Every count is bounded before anything is sized by it (issue #22, item 4).
        check_range("options->workers", o.workers, 1, MAX_WORKERS as u32)?;
        check_range("options->hold_frames", o.hold_frames, 1, MAX_HOLD_FRAMES)?;
        let yuv_range = match range {
            0 => YuvRange::Limited,
            1 => YuvRange::Full,
            other => {
                return Err(FfiError::Invalid(format!(
                    "options->yuv_range {other} is not an edgemm_yuv_range"
                )))
            }
        };
        let roi = (o.roi_width != 0 && o.roi_height != 0).then_some(Roi {
            x: o.roi_x as usize,
            y: o.roi_y as usize,
            width: o.roi_width as usize,
            height: o.roi_height as usize,
        });
        let options = PipelineOptions {
            workers: o.workers as usize,
            yuv_range,
            roi,
            smoothing: SmoothingOptions {
                alpha: o.ema_alpha,
                enter_threshold: o.enter_threshold,
                exit_threshold: o.exit_threshold,
                hold_frames: o.hold_frames,
                hold_ms: u64::from(o.hold_ms),
            },
            frame_results: o.frame_results != 0,
        };
        // Check the options before loading the model: a typo should not cost a load.
        options.smoothing.validate()?;
        let model = Arc::new(RuntimeModel::new(Arc::clone(&rt.inner), model)?);
        let callback = CCallback { f, user_data };
        let pipeline = Pipeline::new(model, options, move |e: &PipelineEvent<'_>| {
            callback.call(e)
        })?;
        let boxed = Box::new(edgemm_pipeline { inner: pipeline });
        // SAFETY: checked non-NULL; written only on success.
        unsafe { *out_pipeline = Box::into_raw(boxed) };
        Ok(())
    })
}

const OFFSET_YUV_RANGE: usize = std::mem::offset_of!(edgemm_pipeline_options, yuv_range);
const OFFSET_FORMAT: usize = std::mem::offset_of!(edgemm_frame, format);

/// Reads a `u32` field (a C enum) at `offset` bytes into the struct at `base`, without
/// claiming it holds a valid Rust enum value.
///
/// # Safety
/// `base` is NULL or points to a live struct with a `u32` at `offset`.
unsafe fn read_u32(base: *const u8, offset: usize, what: &'static str) -> Result<u32, FfiError> {
    if base.is_null() {
        return Err(FfiError::Null(what));
    }
    // SAFETY: in bounds of the caller's struct; both structs are repr(C) with the field
    // aligned for u32.
    Ok(unsafe { base.add(offset).cast::<u32>().read() })
}

/// Hands a frame to the pipeline. Returns at once: the frame is copied (so the caller may reuse
/// its buffers as soon as this returns) and replaces any frame the workers have not taken yet,
/// which is counted as dropped. Never waits for inference.
///
/// Returns EDGEMM_OK; EDGEMM_ERR_INVALID_ARGUMENT (NULL `pipeline` or `frame`, a NULL plane the
/// format needs); EDGEMM_ERR_BAD_INPUT (unknown format, zero size, stride shorter than a row,
/// `plane_bytes` too small, a region of interest outside the frame). A refused frame is not
/// counted. Thread-safety: any thread, concurrently with other pushes and stats.
///
/// # Safety
/// `pipeline` is live; `frame` points to a valid frame whose planes hold `plane_bytes` bytes
/// (or what the format needs, when 0).
#[no_mangle]
pub unsafe extern "C" fn edgemm_pipeline_push_frame(
    pipeline: *const edgemm_pipeline,
    frame: *const edgemm_frame,
) -> edgemm_status {
    boundary!({
        // SAFETY: the caller's contract.
        let p = unsafe { arg(pipeline, "pipeline") }?;
        // SAFETY: the caller's contract.
        let format = unsafe { read_u32(frame.cast(), OFFSET_FORMAT, "frame") }?;
        // SAFETY: the caller's contract.
        let f = unsafe { arg(frame, "frame") }?;
        let bad = |message: String| {
            FfiError::Edgemm(crate::Error::BadInput(crate::InputError::Request(message)))
        };
        let format = *PixelFormat::all().get(format as usize).ok_or_else(|| {
            bad(format!(
                "frame->format {format} is not an edgemm_pixel_format"
            ))
        })?;
        let (width, height) = (f.width as usize, f.height as usize);
        let shapes = format
            .plane_shapes(width, height)
            .ok_or_else(|| bad("frame size overflows".into()))?;
        let mut planes: [&[u8]; 3] = [&[], &[], &[]];
        let mut strides = [0usize; 3];
        const NAMES: [&str; 3] = ["frame->planes[0]", "frame->planes[1]", "frame->planes[2]"];
        for (i, shape) in shapes.iter().enumerate() {
            let stride = match f.strides[i] {
                0 => shape.row_bytes,
                s => s as usize,
            };
            let len = match f.plane_bytes[i] {
                // Exactly what the format needs; too short a stride is caught by validation.
                0 => stride
                    .checked_mul(shape.rows.saturating_sub(1))
                    .and_then(|n| n.checked_add(shape.row_bytes))
                    .ok_or_else(|| bad("frame size overflows".into()))?,
                n => n,
            };
            if f.planes[i].is_null() {
                return Err(FfiError::Null(NAMES[i]));
            }
            // SAFETY: the caller promises `len` readable bytes at the plane pointer.
            planes[i] = unsafe { slice_arg(f.planes[i], len, NAMES[i]) }?;
            strides[i] = stride;
        }
        let frame = Frame {
            planes,
            strides,
            width,
            height,
            format,
            timestamp_us: f.timestamp_us,
        };
        p.inner.push(&frame)?;
        Ok(())
    })
}

fn stage(s: StageLatency) -> edgemm_stage_latency {
    edgemm_stage_latency {
        count: s.count,
        p50_us: s.p50_us,
        p95_us: s.p95_us,
        max_us: s.max_us,
    }
}

/// Writes a snapshot of the pipeline's counters and latencies to `*out`.
/// Returns EDGEMM_OK or EDGEMM_ERR_INVALID_ARGUMENT (NULL argument). Thread-safety: any thread.
///
/// # Safety
/// `pipeline` is live; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn edgemm_pipeline_stats(
    pipeline: *const edgemm_pipeline,
    out_stats: *mut edgemm_pipeline_metrics,
) -> edgemm_status {
    boundary!({
        // SAFETY: the caller's contract.
        let p = unsafe { arg(pipeline, "pipeline") }?;
        let out_stats = out(out_stats, "out")?;
        let s = p.inner.stats();
        let snapshot = edgemm_pipeline_metrics {
            frames_pushed: s.frames_pushed,
            frames_processed: s.frames_processed,
            frames_dropped: s.frames_dropped,
            frames_failed: s.frames_failed,
            convert: stage(s.convert),
            preprocess: stage(s.preprocess),
            infer: stage(s.infer),
            smooth: stage(s.smooth),
            fps: s.fps,
        };
        // SAFETY: checked non-NULL.
        unsafe { *out_stats = snapshot };
        Ok(())
    })
}

/// Stops the pipeline: waits for the frame in progress (its events are delivered), drops a
/// frame still waiting, joins the workers and frees everything. No callback runs after this
/// returns. NULL is a no-op. Must not be called from the pipeline's own callback, nor while
/// another thread pushes to it.
///
/// # Safety
/// `pipeline` is NULL or was returned by `edgemm_pipeline_new` and not yet freed.
#[no_mangle]
pub unsafe extern "C" fn edgemm_pipeline_free(pipeline: *mut edgemm_pipeline) {
    let _ = guard(|| {
        if !pipeline.is_null() {
            // SAFETY: created by Box::into_raw in edgemm_pipeline_new, freed once.
            drop(unsafe { Box::from_raw(pipeline) });
        }
        Ok(())
    });
}
