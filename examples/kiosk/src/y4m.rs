//! YUV4MPEG2 (`.y4m`) video files, the uncompressed format `ffmpeg -i in.mp4 out.y4m` writes.
//! 4:2:0 streams become I420 frames, 4:2:2 becomes YUYV, mono becomes GRAY8; the colour range
//! comes from the `XCOLORRANGE` tag (limited unless it says `FULL`).

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use edgemm::pipeline::frame::{PixelFormat, YuvRange};

use crate::source::{CapturedFrame, FrameSource, SourceError};

/// The chroma layouts this reader handles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chroma {
    C420,
    C422,
    Mono,
}

pub struct Y4mSource {
    path: PathBuf,
    reader: BufReader<File>,
    width: usize,
    height: usize,
    chroma: Chroma,
    fps: f64,
    range: YuvRange,
    frame_index: u64,
    /// Planar 4:2:2 frame, repacked into YUYV.
    planar: Vec<u8>,
    line: Vec<u8>,
}

impl Y4mSource {
    pub fn open(path: &Path) -> Result<Self, SourceError> {
        let bad = |message: String| SourceError::Y4m {
            path: path.to_path_buf(),
            message,
        };
        let file = File::open(path).map_err(|source| SourceError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut reader = BufReader::new(file);
        let mut header = Vec::new();
        reader
            .read_until(b'\n', &mut header)
            .map_err(|e| bad(e.to_string()))?;
        let header = String::from_utf8_lossy(&header);
        let mut tokens = header.split_ascii_whitespace();
        if tokens.next() != Some("YUV4MPEG2") {
            return Err(bad("it does not start with YUV4MPEG2".into()));
        }
        let (mut width, mut height, mut fps) = (0, 0, 30.0);
        let (mut chroma, mut range) = (Chroma::C420, YuvRange::Limited);
        for t in tokens {
            let (tag, value) = t.split_at(1);
            match tag {
                "W" => width = value.parse().map_err(|_| bad(format!("width {value}")))?,
                "H" => height = value.parse().map_err(|_| bad(format!("height {value}")))?,
                "F" => {
                    let (n, d) = value.split_once(':').unwrap_or((value, "1"));
                    let (n, d): (f64, f64) = (n.parse().unwrap_or(0.0), d.parse().unwrap_or(0.0));
                    if n > 0.0 && d > 0.0 {
                        fps = n / d;
                    }
                }
                "C" => {
                    chroma = match value {
                        v if v.starts_with("420") => Chroma::C420,
                        "422" => Chroma::C422,
                        "mono" => Chroma::Mono,
                        other => {
                            return Err(bad(format!(
                                "colour space C{other} (420, 422 and mono are read)"
                            )))
                        }
                    }
                }
                "X" if value.eq_ignore_ascii_case("COLORRANGE=FULL") => range = YuvRange::Full,
                _ => {}
            }
        }
        if width == 0 || height == 0 {
            return Err(bad("the header gives no frame size".into()));
        }
        Ok(Self {
            path: path.to_path_buf(),
            reader,
            width,
            height,
            chroma,
            fps,
            range,
            frame_index: 0,
            planar: Vec::new(),
            line: Vec::new(),
        })
    }
}

impl FrameSource for Y4mSource {
    fn next_frame(&mut self, frame: &mut CapturedFrame) -> Result<bool, SourceError> {
        let path = self.path.clone();
        let io = |source| SourceError::Io {
            path: path.clone(),
            source,
        };
        self.line.clear();
        if self.reader.read_until(b'\n', &mut self.line).map_err(io)? == 0 {
            return Ok(false);
        }
        if !self.line.starts_with(b"FRAME") {
            return Err(SourceError::Y4m {
                path: self.path.clone(),
                message: format!("frame {} does not start with FRAME", self.frame_index),
            });
        }
        let (w, h) = (self.width, self.height);
        match self.chroma {
            Chroma::C420 => {
                frame.reshape(PixelFormat::I420, w, h);
                self.reader.read_exact(&mut frame.data).map_err(io)?;
            }
            Chroma::Mono => {
                frame.reshape(PixelFormat::Gray8, w, h);
                self.reader.read_exact(&mut frame.data).map_err(io)?;
            }
            Chroma::C422 => {
                let cw = w.div_ceil(2);
                self.planar.resize(w * h + 2 * cw * h, 0);
                self.reader.read_exact(&mut self.planar).map_err(io)?;
                frame.reshape(PixelFormat::Yuyv, w, h);
                let (luma, chroma) = self.planar.split_at(w * h);
                let (u, v) = chroma.split_at(cw * h);
                for y in 0..h {
                    let out = &mut frame.data[y * cw * 4..][..cw * 4];
                    for (cx, d) in out.chunks_exact_mut(4).enumerate() {
                        let x = cx * 2;
                        let y1 = luma[y * w + (x + 1).min(w - 1)];
                        d.copy_from_slice(&[luma[y * w + x], u[y * cw + cx], y1, v[y * cw + cx]]);
                    }
                }
            }
        }
        frame.timestamp_us = (self.frame_index as f64 * 1e6 / self.fps) as u64;
        self.frame_index += 1;
        Ok(true)
    }

    fn describe(&self) -> String {
        format!(
            "{}: {}x{} {:?} at {} fps, {:?} range",
            self.path.display(),
            self.width,
            self.height,
            self.chroma,
            self.fps,
            self.range
        )
    }

    fn fps(&self) -> f64 {
        self.fps
    }

    fn yuv_range(&self) -> YuvRange {
        self.range
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn reads_420_and_422_frames() {
        let dir = std::env::temp_dir().join(format!("edgemm-kiosk-y4m-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("clip.y4m");
        let mut f = File::create(&path).unwrap();
        writeln!(f, "YUV4MPEG2 W4 H2 F25:1 Ip A1:1 C420jpeg XCOLORRANGE=FULL").unwrap();
        for k in 0..2u8 {
            f.write_all(b"FRAME\n").unwrap();
            f.write_all(&[k; 8]).unwrap(); // Y
            f.write_all(&[100, 101, 200, 201]).unwrap(); // U, V
        }
        drop(f);
        let mut src = Y4mSource::open(&path).unwrap();
        assert_eq!(src.yuv_range(), YuvRange::Full);
        let mut frame = CapturedFrame::default();
        assert!(src.next_frame(&mut frame).unwrap());
        assert!(src.next_frame(&mut frame).unwrap());
        assert_eq!(frame.format, PixelFormat::I420);
        assert_eq!(frame.timestamp_us, 40_000);
        assert_eq!(frame.as_frame().planes[2], &[200, 201]);
        assert!(!src.next_frame(&mut frame).unwrap());

        let path = dir.join("clip422.y4m");
        let mut f = File::create(&path).unwrap();
        writeln!(f, "YUV4MPEG2 W2 H1 F30:1 C422").unwrap();
        f.write_all(b"FRAME\n").unwrap();
        f.write_all(&[10, 20, 30, 40]).unwrap(); // Y0 Y1 U V
        drop(f);
        let mut src = Y4mSource::open(&path).unwrap();
        assert!(src.next_frame(&mut frame).unwrap());
        assert_eq!(frame.format, PixelFormat::Yuyv);
        assert_eq!(frame.data, [10, 30, 20, 40]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
