//! Headless output: one JSON object per line for each event (a `sign_changed` per digit
//! change, optionally a `frame` per processed frame, `error`s, and a closing `summary`),
//! annotated PNG snapshots of the frames where the digit changed, and a progress line per
//! finished hold on stderr.

use std::io::Write;
use std::path::PathBuf;

use edgemm::pipeline::frame::{convert_to_rgb, Roi, YuvRange};
use serde_json::json;

use crate::overlay::{self, Canvas, Status};
use crate::session::{KioskEvent, Observer};
use crate::source::{CapturedFrame, Hold};

/// Writes events as JSON lines and snapshots as PNGs; see the module documentation.
pub struct Recorder {
    pub events: Option<Box<dyn Write>>,
    /// Also write a line per processed frame.
    pub frame_events: bool,
    pub snapshots: Option<PathBuf>,
    /// Print a line per finished hold to stderr.
    pub progress: bool,
    pub roi: Option<Roi>,
    pub yuv_range: YuvRange,
    pub labels: Vec<String>,
    pub holds: Vec<Hold>,
    /// The first error met while writing (reported at the end, not on every frame).
    pub write_error: Option<String>,
    snapshots_written: usize,
    last_hold: Option<usize>,
    /// The digit shown after the latest result, and its confidence.
    last_shown: (Option<usize>, f32),
    rgb: Vec<u8>,
    canvas: Option<Canvas>,
}

impl Recorder {
    pub fn new(
        labels: Vec<String>,
        holds: Vec<Hold>,
        roi: Option<Roi>,
        yuv_range: YuvRange,
    ) -> Self {
        Self {
            events: None,
            frame_events: false,
            snapshots: None,
            progress: false,
            roi,
            yuv_range,
            labels,
            holds,
            write_error: None,
            snapshots_written: 0,
            last_hold: None,
            last_shown: (None, 0.0),
            rgb: Vec::new(),
            canvas: None,
        }
    }

    pub fn snapshots_written(&self) -> usize {
        self.snapshots_written
    }

    pub fn line(&mut self, value: &serde_json::Value) {
        if let Some(out) = self.events.as_mut() {
            if let Err(e) = writeln!(out, "{value}").and_then(|()| out.flush()) {
                self.write_error
                    .get_or_insert(format!("writing events: {e}"));
            }
        }
    }

    fn label(&self, digit: Option<usize>) -> serde_json::Value {
        digit.map_or(serde_json::Value::Null, |d| {
            json!(self.labels.get(d).cloned().unwrap_or_else(|| d.to_string()))
        })
    }

    /// Draws `frame` with the panel into the snapshot canvas.
    pub fn render(&mut self, frame: &CapturedFrame, status: &Status) -> Option<&Canvas> {
        convert_to_rgb(&frame.as_frame(), self.yuv_range, None, &mut self.rgb).ok()?;
        let canvas = self
            .canvas
            .get_or_insert_with(|| Canvas::new(frame.width + overlay::PANEL_WIDTH, frame.height));
        if canvas.width != frame.width + overlay::PANEL_WIDTH || canvas.height != frame.height {
            *canvas = Canvas::new(frame.width + overlay::PANEL_WIDTH, frame.height);
        }
        overlay::draw(
            canvas,
            &self.rgb,
            frame.width,
            frame.height,
            self.roi,
            status,
        );
        Some(canvas)
    }

    fn snapshot(
        &mut self,
        sequence: u64,
        digit: Option<usize>,
        frame: &CapturedFrame,
        status: &Status,
    ) {
        let Some(dir) = self.snapshots.clone() else {
            return;
        };
        let name = match digit {
            Some(d) => format!("{sequence:06}-digit-{d}.png"),
            None => format!("{sequence:06}-no-sign.png"),
        };
        let path = dir.join(name);
        let result = match self.render(frame, status) {
            Some(canvas) => canvas.save_png(&path).map_err(|e| e.to_string()),
            None => Err("frame could not be converted".into()),
        };
        match result {
            Ok(()) => self.snapshots_written += 1,
            Err(e) => {
                self.write_error
                    .get_or_insert(format!("{}: {e}", path.display()));
            }
        }
    }

    fn hold_finished(&mut self, hold: usize, status: &Status) {
        if !self.progress {
            return;
        }
        let h = &self.holds[hold];
        let (digit, confidence) = self.last_shown;
        let shown = digit.map_or("-".to_string(), |d| d.to_string());
        let truth = h.label.map_or("?".to_string(), |d| d.to_string());
        let mark = match h.label {
            Some(l) if digit == Some(l) => "ok",
            Some(_) => "MISS",
            None => "",
        };
        eprintln!(
            "[{:>4}/{}] photo {truth} -> shown {shown} ({:.2})  fps {:.1} drops {}  {mark}  {}",
            hold + 1,
            self.holds.len(),
            confidence,
            status.fps,
            status.dropped,
            h.name
        );
    }
}

impl Observer for Recorder {
    fn event(&mut self, event: &KioskEvent, frame: Option<&CapturedFrame>, status: &Status) {
        let sequence = event.sequence();
        let hold = crate::session::hold_of(&self.holds, sequence);
        let truth = hold.and_then(|h| self.holds[h].label);
        match event {
            KioskEvent::Changed { change, .. } => {
                let line = json!({
                    "event": "sign_changed",
                    "sequence": sequence,
                    "timestamp_us": change.timestamp_us,
                    "digit": change.digit,
                    "label": self.label(change.digit),
                    "confidence": change.confidence,
                    "truth": truth,
                    "hold": hold,
                });
                self.line(&line);
                if let Some(frame) = frame {
                    // The panel describes the snapshot's frame, not the newest pushed one.
                    let mut shown = status.clone();
                    shown.truth = truth;
                    shown.hold = hold.map(|h| (h + 1, self.holds.len()));
                    shown.digit = change.digit;
                    shown.confidence = change.confidence;
                    self.snapshot(sequence, change.digit, frame, &shown);
                }
            }
            KioskEvent::Frame {
                timestamp_us,
                best,
                best_probability,
                digit,
                confidence,
                times,
                ..
            } => {
                if self.frame_events {
                    let line = json!({
                        "event": "frame",
                        "sequence": sequence,
                        "timestamp_us": timestamp_us,
                        "best": best,
                        "best_probability": best_probability,
                        "digit": digit,
                        "confidence": confidence,
                        "truth": truth,
                        "times_us": {
                            "convert": times.convert_us,
                            "preprocess": times.preprocess_us,
                            "infer": times.infer_us,
                            "smooth": times.smooth_us,
                        },
                    });
                    self.line(&line);
                }
                // The hold of the previous result is over once a later hold's result arrives.
                if let Some(h) = hold {
                    if let Some(prev) = self.last_hold.filter(|&p| p < h) {
                        self.hold_finished(prev, status);
                    }
                    self.last_hold = Some(h);
                }
                self.last_shown = (*digit, *confidence);
            }
            KioskEvent::Error { message, .. } => {
                eprintln!("frame {sequence}: {message}");
                self.line(&json!({"event": "error", "sequence": sequence, "message": message}));
            }
        }
    }
}

impl Recorder {
    /// Reports the last hold (no later result closes it).
    pub fn finish(&mut self, status: &Status) {
        if let Some(h) = self.last_hold.take() {
            self.hold_finished(h, status);
        }
    }
}
