//! Where frames come from: the [`FrameSource`] trait and the frame buffer it fills
//! ([`CapturedFrame`]). The sources themselves live in [`crate::replay`] (photos with jitter),
//! [`crate::y4m`] (a video file) and [`crate::camera`] (V4L2).

use std::path::PathBuf;

use edgemm::pipeline::frame::{Frame, PixelFormat, YuvRange};

/// Why a source could not give a frame.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Image { path: PathBuf, message: String },
    #[error("{path}: not a Y4M stream this reader handles: {message}")]
    Y4m { path: PathBuf, message: String },
    #[error("camera: {0}")]
    Camera(String),
    #[error("{0}")]
    Empty(String),
}

/// One frame as a source produced it: every plane back to back in `data`. Sources refill the
/// same value frame after frame, so a steady stream allocates nothing.
#[derive(Clone, Debug)]
pub struct CapturedFrame {
    pub format: PixelFormat,
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
    /// Where each plane starts in `data`, and its stride (bytes per row).
    pub offsets: [usize; 3],
    pub strides: [usize; 3],
    /// Capture time on the source's clock (for files and replays: frame index / fps).
    pub timestamp_us: u64,
}

impl Default for CapturedFrame {
    fn default() -> Self {
        Self {
            format: PixelFormat::Rgb24,
            width: 0,
            height: 0,
            data: Vec::new(),
            offsets: [0; 3],
            strides: [0; 3],
            timestamp_us: 0,
        }
    }
}

impl CapturedFrame {
    /// Sets the shape for a tightly packed `width` x `height` frame of `format` and sizes
    /// `data` for it (reusing its capacity).
    pub fn reshape(&mut self, format: PixelFormat, width: usize, height: usize) {
        let (cw, ch) = (width.div_ceil(2), height.div_ceil(2));
        let (strides, rows): ([usize; 3], [usize; 3]) = match format {
            PixelFormat::Rgb24 | PixelFormat::Bgr24 => ([width * 3, 0, 0], [height, 0, 0]),
            PixelFormat::Rgba | PixelFormat::Bgra => ([width * 4, 0, 0], [height, 0, 0]),
            PixelFormat::Gray8 => ([width, 0, 0], [height, 0, 0]),
            PixelFormat::Nv12 | PixelFormat::Nv21 => ([width, cw * 2, 0], [height, ch, 0]),
            PixelFormat::I420 => ([width, cw, cw], [height, ch, ch]),
            _ => ([cw * 4, 0, 0], [height, 0, 0]), // YUYV
        };
        let mut offset = 0;
        for p in 0..3 {
            self.offsets[p] = offset;
            offset += strides[p] * rows[p];
        }
        self.strides = strides;
        self.format = format;
        self.width = width;
        self.height = height;
        self.data.resize(offset, 0);
    }

    /// The frame as the pipeline takes it.
    pub fn as_frame(&self) -> Frame<'_> {
        let count = self.format.plane_count();
        let mut planes: [&[u8]; 3] = [&[], &[], &[]];
        for (p, plane) in planes.iter_mut().enumerate().take(count) {
            let end = if p + 1 < count {
                self.offsets[p + 1]
            } else {
                self.data.len()
            };
            *plane = &self.data[self.offsets[p]..end];
        }
        Frame {
            planes,
            strides: self.strides,
            width: self.width,
            height: self.height,
            format: self.format,
            timestamp_us: self.timestamp_us,
        }
    }
}

/// One stretch of frames showing the same photo (a replay's ground truth).
#[derive(Clone, Debug, PartialEq)]
pub struct Hold {
    /// The digit the photo shows, when known (from its folder or the splits file).
    pub label: Option<usize>,
    pub name: String,
    /// Index of its first frame among the frames the source produced, from 0.
    pub first_frame: u64,
    pub frames: u64,
}

impl Hold {
    /// Whether frame `index` belongs to this hold.
    pub fn contains(&self, index: u64) -> bool {
        (self.first_frame..self.first_frame + self.frames).contains(&index)
    }
}

/// A stream of frames.
pub trait FrameSource {
    /// Fills `frame` with the next frame; `Ok(false)` at the end of the stream.
    fn next_frame(&mut self, frame: &mut CapturedFrame) -> Result<bool, SourceError>;

    /// One line for the log: what this source reads and how.
    fn describe(&self) -> String;

    /// `true` when the source paces itself (a camera delivers frames at its own rate);
    /// `false` when frames are available at once and the caller decides the pace.
    fn is_live(&self) -> bool {
        false
    }

    /// Nominal frame rate, frames per second.
    fn fps(&self) -> f64;

    /// The quantisation range of its YUV frames.
    fn yuv_range(&self) -> YuvRange {
        YuvRange::Limited
    }

    /// The ground truth, for sources that know it (replays), in frame order.
    fn holds(&self) -> &[Hold] {
        &[]
    }

    /// Frames in all, when known in advance.
    fn frame_count(&self) -> Option<u64> {
        None
    }
}
