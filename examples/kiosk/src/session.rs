//! Drives a [`FrameSource`] through an edgemm [`Pipeline`]: pushes frames at the source's
//! pace, collects the pipeline's events on the calling thread, keeps the screen status, and
//! scores the result against the source's ground truth.
//!
//! # Pacing
//! A camera paces itself. A file or a replay can be read at any speed, so the session decides:
//! - [`Pacing::RealTime`]: frame `n` is pushed at `n / fps` seconds of wall time, as a camera
//!   would deliver it. How many frames the model sees then depends on how fast it runs on this
//!   machine, and on what else the machine is doing.
//! - [`Pacing::Lockstep`]: the camera's clock is slaved to the pipeline: after every
//!   `frames_per_result` pushed frames the session waits until the pipeline has finished the
//!   last of them. Pushes still never wait on inference (the waiting is the session's, between
//!   pushes), the slot still replaces frames the worker has not taken (they are counted as
//!   dropped). The worker, idle after that wait, takes the next group's first frame at once
//!   and its last one after the wait, so each hold of `H` frames (a multiple of the group)
//!   gets between `H / frames_per_result` and twice as many processed frames however slow the
//!   model or busy the machine is (waiting for "one more result" instead let a hold get as few
//!   as 3 of 6 when the worker took a group's first frame). Replay tests use it so that their
//!   verdict does not depend on the load of the machine.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use edgemm::pipeline::frame::Roi;
use edgemm::pipeline::{
    FrameModel, Pipeline, PipelineEvent, PipelineOptions, SignChanged, StageTimes, Stats,
};

use crate::overlay::Status;
use crate::source::{CapturedFrame, FrameSource, Hold, SourceError};

/// How frames are fed to the pipeline; see the module documentation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pacing {
    RealTime,
    Lockstep { frames_per_result: u64 },
}

#[derive(Clone, Copy, Debug)]
pub struct SessionOptions {
    pub pacing: Pacing,
    /// Passed to the pipeline; `pipeline.roi` is the hand square.
    pub pipeline: PipelineOptions,
    /// Recent frames kept for snapshots and the screen.
    pub keep_frames: usize,
    /// The longest wait for one result before the session gives up.
    pub result_timeout: Duration,
}

impl Default for SessionOptions {
    fn default() -> Self {
        Self {
            pacing: Pacing::RealTime,
            pipeline: PipelineOptions::default(),
            keep_frames: 64,
            result_timeout: Duration::from_secs(120),
        }
    }
}

/// An event from the pipeline, owned, with the time it reached the callback.
#[derive(Clone, Debug)]
pub enum KioskEvent {
    Frame {
        sequence: u64,
        timestamp_us: u64,
        best: usize,
        best_probability: f32,
        digit: Option<usize>,
        confidence: f32,
        times: StageTimes,
        at: Instant,
    },
    Changed {
        sequence: u64,
        change: SignChanged,
        at: Instant,
    },
    Error {
        sequence: u64,
        message: String,
        at: Instant,
    },
}

impl KioskEvent {
    pub fn sequence(&self) -> u64 {
        match self {
            KioskEvent::Frame { sequence, .. }
            | KioskEvent::Changed { sequence, .. }
            | KioskEvent::Error { sequence, .. } => *sequence,
        }
    }

    /// A frame finished (classified or failed): what lockstep pacing counts.
    fn is_result(&self) -> bool {
        !matches!(self, KioskEvent::Changed { .. })
    }
}

/// What the session tells its caller as it goes (the window, the JSON writer, a test).
pub trait Observer {
    /// After frame `sequence` was pushed. Return `false` to stop the session.
    fn pushed(&mut self, _sequence: u64, _frame: &CapturedFrame, _status: &Status) -> bool {
        true
    }

    /// For each pipeline event, with the frame it concerns if it is still kept.
    fn event(&mut self, _event: &KioskEvent, _frame: Option<&CapturedFrame>, _status: &Status) {}
}

/// An observer that does nothing (benchmarks, tests that read the report).
pub struct Quiet;

impl Observer for Quiet {}

/// p50 / p95 / max of a set of samples, microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Percentiles {
    pub count: usize,
    pub p50_us: u64,
    pub p95_us: u64,
    pub max_us: u64,
}

impl Percentiles {
    pub fn of(samples: &[u64]) -> Self {
        let mut v = samples.to_vec();
        v.sort_unstable();
        let pick = |q: f64| {
            v.get(((v.len().max(1) - 1) as f64 * q).round() as usize)
                .copied()
                .unwrap_or(0)
        };
        Self {
            count: v.len(),
            p50_us: pick(0.5),
            p95_us: pick(0.95),
            max_us: v.last().copied().unwrap_or(0),
        }
    }

    pub fn to_json(self) -> serde_json::Value {
        serde_json::json!({
            "count": self.count,
            "p50_ms": self.p50_us as f64 / 1000.0,
            "p95_ms": self.p95_us as f64 / 1000.0,
            "max_ms": self.max_us as f64 / 1000.0,
        })
    }
}

/// The replay against its ground truth.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HoldScore {
    pub holds: usize,
    /// Holds whose shown digit, after their last processed frame, was their label.
    pub correct: usize,
    /// Holds none of whose frames was processed (counted as wrong).
    pub unprocessed: usize,
    /// `SignChanged` events in all.
    pub changes: usize,
    /// Changes within one hold that go back to a value shown earlier in the hold (including
    /// the one it started with), or to a second digit: the display flickered while the photo
    /// stayed. Going from the previous photo's digit to the new one through "no sign" (the
    /// model unsure for a moment) is a transition, not flicker.
    pub flicker: usize,
    /// Processed frames per hold, fewest and mean.
    pub processed_min: u64,
    pub processed_mean: f64,
    /// `(hold, label, shown)` for each wrong hold.
    pub misses: Vec<(usize, usize, Option<usize>)>,
}

impl HoldScore {
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.holds.max(1) as f64
    }

    /// Scores labelled `holds` from the processed frames (`(sequence, shown digit after it)`)
    /// and the change events (`sequence`s).
    pub fn score(holds: &[Hold], frames: &[(u64, Option<usize>)], changes: &[u64]) -> Self {
        let mut frames = frames.to_vec();
        frames.sort_by_key(|f| f.0);
        let mut s = HoldScore {
            changes: changes.len(),
            processed_min: u64::MAX,
            ..Self::default()
        };
        let mut processed_total = 0;
        let mut shown_before = None;
        for (i, h) in holds.iter().enumerate() {
            let Some(label) = h.label else { continue };
            s.holds += 1;
            let in_hold: Vec<_> = frames.iter().filter(|f| h.contains(f.0)).collect();
            processed_total += in_hold.len() as u64;
            s.processed_min = s.processed_min.min(in_hold.len() as u64);
            let shown = match in_hold.last() {
                Some(f) => f.1,
                None => {
                    s.unprocessed += 1;
                    None
                }
            };
            if shown == Some(label) {
                s.correct += 1;
            } else {
                s.misses.push((i, label, shown));
            }
            s.flicker += flicker(shown_before, in_hold.iter().map(|f| f.1));
            shown_before = in_hold.last().map_or(shown_before, |f| f.1);
        }
        if s.holds == 0 {
            s.processed_min = 0;
        }
        s.processed_mean = processed_total as f64 / s.holds.max(1) as f64;
        s
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "holds": self.holds,
            "correct": self.correct,
            "accuracy": self.accuracy(),
            "unprocessed": self.unprocessed,
            "changes": self.changes,
            "flicker": self.flicker,
            "processed_per_hold_min": self.processed_min,
            "processed_per_hold_mean": self.processed_mean,
            "misses": self.misses.iter().map(|(h, l, s)| serde_json::json!({
                "hold": h, "label": l, "shown": s
            })).collect::<Vec<_>>(),
        })
    }
}

/// Flicker within one hold (see [`HoldScore::flicker`]): `start` is the digit shown when the
/// hold began, `shown` the digit after each of its processed frames.
fn flicker(start: Option<usize>, shown: impl Iterator<Item = Option<usize>>) -> usize {
    let (mut seen, mut current, mut digit_changes, mut flicker) = (vec![start], start, 0, 0);
    for d in shown {
        if d == current {
            continue;
        }
        if seen.contains(&d) || (d.is_some() && digit_changes > 0) {
            flicker += 1;
        }
        digit_changes += usize::from(d.is_some());
        seen.push(d);
        current = d;
    }
    flicker
}

/// What a session measured.
#[derive(Clone, Debug)]
pub struct Report {
    pub stats: Stats,
    pub elapsed: Duration,
    /// Processed frames per second of wall time over the whole session.
    pub fps: f64,
    /// Push of a frame to its result reaching the callback.
    pub frame_latency: Percentiles,
    /// First frame of a hold to the `SignChanged` event that shows its digit (replays).
    pub change_latency: Percentiles,
    /// Convert + preprocess + smooth of each processed frame: what the pipeline adds.
    pub overhead: Percentiles,
    /// The model alone, per processed frame.
    pub infer: Percentiles,
    pub score: Option<HoldScore>,
    /// Whether the observer stopped the session before the source ended.
    pub stopped: bool,
}

impl Report {
    pub fn to_json(&self) -> serde_json::Value {
        let s = &self.stats;
        serde_json::json!({
            "event": "summary",
            "frames_pushed": s.frames_pushed,
            "frames_processed": s.frames_processed,
            "frames_dropped": s.frames_dropped,
            "frames_failed": s.frames_failed,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "fps": self.fps,
            "frame_latency": self.frame_latency.to_json(),
            "change_latency": self.change_latency.to_json(),
            "pipeline_overhead": self.overhead.to_json(),
            "infer": self.infer.to_json(),
            "stages_p95_ms": {
                "convert": s.convert.p95_us as f64 / 1000.0,
                "preprocess": s.preprocess.p95_us as f64 / 1000.0,
                "infer": s.infer.p95_us as f64 / 1000.0,
                "smooth": s.smooth.p95_us as f64 / 1000.0,
            },
            "replay": self.score.as_ref().map(HoldScore::to_json),
            "stopped": self.stopped,
        })
    }
}

/// Why a session ended early.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("pipeline: {0}")]
    Pipeline(#[from] edgemm::Error),
    #[error("no result from the pipeline for {0:?}: is the model stuck?")]
    Timeout(Duration),
}

/// Everything the session collects from events.
struct Collector {
    status: Status,
    push_times: Vec<Instant>,
    frames: Vec<(u64, Option<usize>)>,
    changes: Vec<u64>,
    frame_latency: Vec<u64>,
    change_latency: Vec<u64>,
    overhead: Vec<u64>,
    infer: Vec<u64>,
    results: u64,
    last_result: Option<u64>,
}

fn micros(d: Duration) -> u64 {
    d.as_micros().try_into().unwrap_or(u64::MAX)
}

/// The hold that frame `sequence` belongs to.
pub fn hold_of(holds: &[Hold], sequence: u64) -> Option<usize> {
    let i = holds.partition_point(|h| h.first_frame <= sequence);
    (i > 0 && holds[i - 1].contains(sequence)).then(|| i - 1)
}

impl Collector {
    fn take(
        &mut self,
        event: &KioskEvent,
        holds: &[Hold],
        ring: &VecDeque<(u64, CapturedFrame)>,
        observer: &mut dyn Observer,
    ) {
        let since_push = |seq: u64, at: Instant| {
            self.push_times
                .get(seq as usize)
                .map(|&t| micros(at.saturating_duration_since(t)))
        };
        match *event {
            KioskEvent::Frame {
                sequence,
                best,
                best_probability,
                digit,
                confidence,
                times,
                at,
                ..
            } => {
                self.frame_latency.extend(since_push(sequence, at));
                self.overhead
                    .push(times.convert_us + times.preprocess_us + times.smooth_us);
                self.infer.push(times.infer_us);
                self.frames.push((sequence, digit));
                self.status.digit = digit;
                self.status.confidence = confidence;
                self.status.frame_best = Some((best, best_probability));
            }
            KioskEvent::Changed {
                sequence,
                at,
                change,
            } => {
                self.changes.push(sequence);
                if let Some(h) = hold_of(holds, sequence) {
                    if holds[h].label.is_some() && holds[h].label == change.digit {
                        self.change_latency
                            .extend(since_push(holds[h].first_frame, at));
                    }
                }
            }
            KioskEvent::Error { .. } => {}
        }
        if event.is_result() {
            self.results += 1;
            // With several workers results can arrive out of order: keep the newest.
            self.last_result = self.last_result.max(Some(event.sequence()));
            self.status.processed = self.results;
        }
        let frame = ring
            .iter()
            .find(|(s, _)| *s == event.sequence())
            .map(|(_, f)| f);
        observer.event(event, frame, &self.status);
    }
}

/// Runs `source` through a new pipeline on `model` until the source ends (and its last frame's
/// result is in) or the observer stops it.
pub fn run(
    source: &mut dyn FrameSource,
    model: Arc<dyn FrameModel>,
    options: SessionOptions,
    observer: &mut dyn Observer,
) -> Result<Report, SessionError> {
    let (tx, rx) = crossbeam_channel::unbounded::<KioskEvent>();
    let mut pipeline_options = options.pipeline;
    pipeline_options.yuv_range = source.yuv_range();
    pipeline_options.frame_results = true;
    let mut pipeline = Pipeline::new(model, pipeline_options, move |e: &PipelineEvent<'_>| {
        let at = Instant::now();
        let event = match *e {
            PipelineEvent::Frame(r) => KioskEvent::Frame {
                sequence: r.sequence,
                timestamp_us: r.timestamp_us,
                best: r.best,
                best_probability: r.best_probability,
                digit: r.digit,
                confidence: r.confidence,
                times: r.times,
                at,
            },
            PipelineEvent::SignChanged { change, sequence } => KioskEvent::Changed {
                sequence,
                change,
                at,
            },
            PipelineEvent::Error {
                sequence, error, ..
            } => KioskEvent::Error {
                sequence,
                message: error.to_string(),
                at,
            },
        };
        // The session may have returned (receiver gone) while the last frame finishes.
        let _ = tx.send(event);
    })?;

    let holds = source.holds().to_vec();
    let total_holds = holds.len();
    let mut c = Collector {
        status: Status {
            source: source.describe(),
            ..Status::default()
        },
        push_times: Vec::new(),
        frames: Vec::new(),
        changes: Vec::new(),
        frame_latency: Vec::new(),
        change_latency: Vec::new(),
        overhead: Vec::new(),
        infer: Vec::new(),
        results: 0,
        last_result: None,
    };
    let mut ring: VecDeque<(u64, CapturedFrame)> = VecDeque::new();
    let keep = options.keep_frames.max(1);
    let started = Instant::now();
    let mut last_stats = started;
    let live = source.is_live();
    let mut last_pushed = None;
    let mut stopped = false;

    let drain = |c: &mut Collector,
                 ring: &VecDeque<(u64, CapturedFrame)>,
                 observer: &mut dyn Observer,
                 rx: &Receiver<KioskEvent>| {
        while let Ok(e) = rx.try_recv() {
            c.take(&e, &holds, ring, observer);
        }
    };
    // Blocks until `done(c)` holds, taking events as they come.
    let wait_until = |c: &mut Collector,
                      ring: &VecDeque<(u64, CapturedFrame)>,
                      observer: &mut dyn Observer,
                      done: &dyn Fn(&Collector) -> bool|
     -> Result<(), SessionError> {
        while !done(c) {
            match rx.recv_timeout(options.result_timeout) {
                Ok(e) => c.take(&e, &holds, ring, observer),
                Err(RecvTimeoutError::Timeout) => {
                    return Err(SessionError::Timeout(options.result_timeout))
                }
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            }
        }
        Ok(())
    };

    loop {
        let mut frame = if ring.len() >= keep {
            ring.pop_front().map(|(_, f)| f).unwrap_or_default()
        } else {
            CapturedFrame::default()
        };
        if !source.next_frame(&mut frame)? {
            break;
        }
        if !live && options.pacing == Pacing::RealTime {
            let due = started + Duration::from_micros(frame.timestamp_us);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        let sequence = pipeline.push(&frame.as_frame())?;
        c.push_times.push(Instant::now());
        last_pushed = Some(sequence);
        if last_stats.elapsed() >= Duration::from_millis(200) {
            let s = pipeline.stats();
            c.status.fps = s.fps;
            c.status.dropped = s.frames_dropped;
            last_stats = Instant::now();
        }
        c.status.pushed = sequence + 1;
        if let Some(h) = hold_of(&holds, sequence) {
            c.status.truth = holds[h].label;
            c.status.hold = Some((h + 1, total_holds));
        }
        ring.push_back((sequence, frame));
        drain(&mut c, &ring, observer, &rx);
        let (_, frame) = ring.back().expect("just pushed");
        if !observer.pushed(sequence, frame, &c.status) {
            stopped = true;
            break;
        }
        if let Pacing::Lockstep { frames_per_result } = options.pacing {
            if (sequence + 1).is_multiple_of(frames_per_result.max(1)) {
                wait_until(&mut c, &ring, observer, &|c| {
                    c.last_result.is_some_and(|r| r >= sequence)
                })?;
            }
        }
    }
    if let (Some(last), false) = (last_pushed, stopped) {
        wait_until(&mut c, &ring, observer, &|c| {
            c.last_result.is_some_and(|r| r >= last)
        })?;
    }
    let elapsed = started.elapsed();
    pipeline.close();
    drain(&mut c, &ring, observer, &rx);
    let stats = pipeline.stats();
    let labelled = holds.iter().any(|h| h.label.is_some());
    Ok(Report {
        stats,
        elapsed,
        fps: stats.frames_processed as f64 / elapsed.as_secs_f64().max(1e-9),
        frame_latency: Percentiles::of(&c.frame_latency),
        change_latency: Percentiles::of(&c.change_latency),
        overhead: Percentiles::of(&c.overhead),
        infer: Percentiles::of(&c.infer),
        score: labelled.then(|| HoldScore::score(&holds, &c.frames, &c.changes)),
        stopped,
    })
}

/// The hand square for a session's frames, when the source's size is known up front.
pub fn roi_for(width: usize, height: usize) -> Roi {
    crate::replay::hand_square(width, height)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hold(label: usize, first: u64, frames: u64) -> Hold {
        Hold {
            label: Some(label),
            name: String::new(),
            first_frame: first,
            frames,
        }
    }

    #[test]
    fn scoring_counts_holds_and_flicker() {
        let holds = [hold(1, 0, 10), hold(2, 10, 10), hold(3, 20, 10)];
        // Hold 0 ends on 1; hold 1 flips 2 -> 5 -> 2 (two extra changes); hold 2 is never
        // processed.
        let frames = [
            (3, Some(1)),
            (9, Some(1)),
            (12, Some(2)),
            (15, Some(5)),
            (18, Some(2)),
        ];
        let changes = [3, 12, 15, 18];
        let s = HoldScore::score(&holds, &frames, &changes);
        assert_eq!((s.holds, s.correct, s.unprocessed, s.flicker), (3, 2, 1, 2));
        assert_eq!(s.misses, vec![(2, 3, None)]);
        assert_eq!(s.processed_min, 0);
        assert_eq!(hold_of(&holds, 19), Some(1));
        assert_eq!(hold_of(&holds, 30), None);
    }

    #[test]
    fn a_transition_through_no_sign_is_not_flicker() {
        // 1 -> none -> 2: the new photo's digit after a moment of doubt.
        assert_eq!(
            flicker(Some(1), [Some(1), None, None, Some(2)].into_iter()),
            0
        );
        // 2 -> none -> 2 and none -> 2 -> none: the display toggled back.
        assert_eq!(flicker(Some(2), [None, Some(2)].into_iter()), 1);
        assert_eq!(flicker(None, [Some(2), None].into_iter()), 1);
        // 1 -> 7 -> 2: a wrong digit on the way.
        assert_eq!(flicker(Some(1), [Some(7), Some(2)].into_iter()), 1);
    }
}
