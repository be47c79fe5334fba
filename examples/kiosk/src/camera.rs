//! A V4L2 camera (`/dev/video*`), through the pure-Rust `linuxvideo` crate: memory-mapped
//! streaming, no libv4l. Asks for 640x480 YUYV (what nearly every UVC webcam sends
//! uncompressed) and takes what the driver settles on: YUYV, NV12, NV21, GREY, RGB3, BGR3 go
//! to the pipeline as they are (the frame's stride is the driver's `bytesperline`); MJPEG is
//! decoded to RGB24 first.
//!
//! Frames are stamped with the time since the stream started when they were dequeued.

use std::path::{Path, PathBuf};
use std::time::Instant;

use edgemm::pipeline::frame::PixelFormat;

use crate::source::{CapturedFrame, FrameSource, SourceError};

/// The capture devices present, `/dev/video0` first.
pub fn devices() -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/dev")
        .map(|dir| {
            dir.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("video"))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

#[cfg(target_os = "linux")]
mod v4l2 {
    use super::*;
    use linuxvideo::format::{PixFormat, PixelFormat as Fourcc};
    use linuxvideo::stream::ReadStream;
    use linuxvideo::Device;

    pub struct CameraSource {
        path: PathBuf,
        stream: ReadStream,
        format: Option<PixelFormat>,
        fourcc: [u8; 4],
        width: usize,
        height: usize,
        stride: usize,
        fps: f64,
        started: Instant,
    }

    fn camera_error(path: &Path, what: &str, e: impl std::fmt::Display) -> SourceError {
        SourceError::Camera(format!("{}: {what}: {e}", path.display()))
    }

    impl CameraSource {
        pub fn open(path: &Path, width: u32, height: u32) -> Result<Self, SourceError> {
            let device = Device::open(path).map_err(|e| camera_error(path, "open", e))?;
            let caps = device
                .capabilities()
                .map_err(|e| camera_error(path, "query capabilities", e))?;
            let flags = caps.device_capabilities();
            if !flags.contains(linuxvideo::CapabilityFlags::VIDEO_CAPTURE) {
                return Err(camera_error(
                    path,
                    "not a single-planar capture device",
                    format!("{flags:?}"),
                ));
            }
            let capture = device
                .video_capture(PixFormat::new(width, height, Fourcc::YUYV))
                .map_err(|e| camera_error(path, "set format", e))?;
            let f = capture.format();
            let fourcc = f.pixel_format().as_fourcc();
            let (width, height, stride) = (
                f.width() as usize,
                f.height() as usize,
                f.bytes_per_line() as usize,
            );
            let format = match &fourcc {
                b"YUYV" => Some(PixelFormat::Yuyv),
                b"NV12" => Some(PixelFormat::Nv12),
                b"NV21" => Some(PixelFormat::Nv21),
                b"GREY" => Some(PixelFormat::Gray8),
                b"RGB3" => Some(PixelFormat::Rgb24),
                b"BGR3" => Some(PixelFormat::Bgr24),
                b"MJPG" | b"JPEG" => None,
                other => {
                    return Err(camera_error(
                        path,
                        "unsupported pixel format",
                        String::from_utf8_lossy(other),
                    ))
                }
            };
            let stream = capture
                .into_stream()
                .map_err(|e| camera_error(path, "start streaming", e))?;
            Ok(Self {
                path: path.to_path_buf(),
                stream,
                format,
                fourcc,
                width,
                height,
                stride,
                fps: 30.0,
                started: Instant::now(),
            })
        }
    }

    impl FrameSource for CameraSource {
        fn next_frame(&mut self, frame: &mut CapturedFrame) -> Result<bool, SourceError> {
            let (format, w, h, stride) = (self.format, self.width, self.height, self.stride);
            let path = self.path.clone();
            self.stream
                .dequeue(|buf| {
                    match format {
                        Some(format) => {
                            frame.reshape(format, w, h);
                            if stride > 0 && stride != frame.strides[0] {
                                // The driver pads rows: keep its layout (planes follow at its
                                // stride; NV12's chroma rows have the same stride as luma).
                                frame.strides = [stride, stride, 0];
                                frame.offsets = [0, stride * h, 0];
                                frame.data.clear();
                            }
                            if frame.data.is_empty() || buf.len() < frame.data.len() {
                                frame.data.clear();
                                frame.data.extend_from_slice(&buf);
                            } else {
                                let n = frame.data.len();
                                frame.data.copy_from_slice(&buf[..n]);
                            }
                        }
                        None => {
                            let rgb =
                                image::load_from_memory_with_format(&buf, image::ImageFormat::Jpeg)
                                    .map_err(|e| std::io::Error::other(e.to_string()))?
                                    .into_rgb8();
                            frame.reshape(
                                PixelFormat::Rgb24,
                                rgb.width() as usize,
                                rgb.height() as usize,
                            );
                            frame.data.copy_from_slice(rgb.as_raw());
                        }
                    }
                    Ok(())
                })
                .map_err(|e| camera_error(&path, "capture", e))?;
            frame.timestamp_us = self.started.elapsed().as_micros() as u64;
            Ok(true)
        }

        fn describe(&self) -> String {
            format!(
                "camera {}: {}x{} {} (stride {})",
                self.path.display(),
                self.width,
                self.height,
                String::from_utf8_lossy(&self.fourcc),
                self.stride
            )
        }

        fn is_live(&self) -> bool {
            true
        }

        fn fps(&self) -> f64 {
            self.fps
        }
    }
}

#[cfg(target_os = "linux")]
pub use v4l2::CameraSource;

/// Opens `path`, or the first capture device when `None`. With no `/dev/video*` at all the
/// error says so plainly (the usual case in containers and CI).
pub fn open(
    path: Option<&Path>,
    width: u32,
    height: u32,
) -> Result<Box<dyn FrameSource>, SourceError> {
    let candidates = match path {
        Some(p) => vec![p.to_path_buf()],
        None => devices(),
    };
    if candidates.is_empty() {
        return Err(SourceError::Camera(
            "no camera: /dev has no video* device (use --source samples, --y4m FILE or --images DIR)"
                .into(),
        ));
    }
    #[cfg(target_os = "linux")]
    {
        let mut errors = Vec::new();
        for p in &candidates {
            match CameraSource::open(p, width, height) {
                Ok(c) => return Ok(Box::new(c)),
                Err(e) => errors.push(e.to_string()),
            }
        }
        Err(SourceError::Camera(errors.join("; ")))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (width, height);
        Err(SourceError::Camera(
            "V4L2 cameras are read on Linux only".into(),
        ))
    }
}
