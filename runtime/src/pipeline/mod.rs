//! The camera-frame pipeline (issue 6): raw frames in, stable hand-sign digits out.
//!
//! ```text
//! camera thread --push--> Slot (latest frame) --> worker(s): convert -> preprocess -> model
//!                                                   -> Smoother -> callback (FrameResult,
//!                                                                  SignChanged, Error)
//! ```
//!
//! - [`frame`]: the [`Frame`] descriptor, pixel formats, conversion to RGB, resize, normalise;
//! - [`slot`]: the one-frame slot; [`Pipeline::push`] never blocks on inference, a frame not
//!   yet taken is replaced by the newer one and counted as dropped;
//! - [`smoothing`]: EMA, thresholds with hysteresis, hold; [`SignChanged`] events;
//! - this module: the workers, the model seam ([`FrameModel`]), [`Stats`].
//!
//! ```
//! use std::sync::{mpsc, Arc};
//! use std::time::Duration;
//! use edgemm::pipeline::{Pipeline, PipelineEvent, PipelineOptions, RuntimeModel};
//! use edgemm::pipeline::frame::{Frame, PixelFormat};
//! use edgemm::{Runtime, RuntimeOptions};
//!
//! let mut options = RuntimeOptions::new("../models/repository");
//! # let cache = tempfile::tempdir().unwrap();
//! # options.cache_dir = cache.path().to_path_buf();
//! let runtime = Arc::new(Runtime::new(options)?);
//! let model = Arc::new(RuntimeModel::new(runtime, "sign-language.tar.gz")?);
//! let (tx, rx) = mpsc::channel();
//! let mut pipeline = Pipeline::new(model, PipelineOptions::default(), move |event: &PipelineEvent<'_>| {
//!     match event {
//!         PipelineEvent::Frame(result) => tx.send(result.sequence).unwrap(),
//!         PipelineEvent::SignChanged { change, .. } => {
//!             println!("digit {:?} ({:.2})", change.digit, change.confidence)
//!         }
//!         PipelineEvent::Error { error, .. } => eprintln!("{error}"),
//!     }
//! })?;
//!
//! // On the camera thread: push returns at once (the frame is copied into the slot).
//! let gray = vec![128u8; 640 * 480];
//! pipeline.push(&Frame::packed(&gray, 640, 480, 640, PixelFormat::Gray8, 0))?;
//! assert_eq!(rx.recv_timeout(Duration::from_secs(120)).unwrap(), 0);
//! pipeline.close(); // joins the workers: no callback runs after this
//! let stats = pipeline.stats();
//! assert_eq!((stats.frames_pushed, stats.frames_processed), (1, 1));
//! # Ok::<(), edgemm::Error>(())
//! ```

pub mod frame;
pub mod slot;
pub mod smoothing;
#[cfg(target_arch = "x86_64")]
mod yuv_x86;

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, Sender, TryRecvError};

use crate::error::{Error, InputError, Result};
use crate::manifest::InputSpec;
use crate::Runtime;
use frame::{Frame, FrameBuffers, Roi, YuvRange};
use slot::Slot;
pub use smoothing::{SignChanged, Smoother, SmoothingOptions};

/// What the workers run: a normalised `[1, 3, H, W]` input in, one probability per class out.
/// [`RuntimeModel`] is the real one; tests put in fakes (slow ones, blocked ones).
pub trait FrameModel: Send + Sync {
    /// The input the model takes (size, resize mode, normalisation).
    fn input_spec(&self) -> &InputSpec;
    /// Class probabilities for one normalised CHW image at the input size.
    fn classify(&self, chw: &[f32]) -> Result<Vec<f32>>;
}

/// A model served by a [`Runtime`], leased from its cache for each frame (so cache metrics and
/// eviction rules apply as for any request).
pub struct RuntimeModel {
    runtime: Arc<Runtime>,
    name: String,
    spec: InputSpec,
}

impl RuntimeModel {
    /// Loads `name` (so a bad name or artifact fails here, not on the first frame).
    pub fn new(runtime: Arc<Runtime>, name: &str) -> Result<Self> {
        let spec = runtime.model(name)?.manifest.input.clone();
        if !spec.images {
            return Err(crate::runtime::no_preprocessing(&spec).into());
        }
        Ok(Self {
            runtime,
            name: name.to_string(),
            spec,
        })
    }
}

impl FrameModel for RuntimeModel {
    fn input_spec(&self) -> &InputSpec {
        &self.spec
    }

    fn classify(&self, chw: &[f32]) -> Result<Vec<f32>> {
        let model = self.runtime.model(&self.name)?;
        // candle takes ownership of its input, so this copy is the one allocation per frame
        // outside candle's own (which allocates every intermediate tensor anyway).
        let mut rows = model.probabilities(chw.to_vec(), 1)?;
        rows.pop()
            .ok_or_else(|| Error::Inference("the model returned no row".into()))
    }
}

/// The most workers a pipeline runs: each is a thread with its own buffers, and a board has
/// a handful of cores.
pub const MAX_WORKERS: usize = 64;

/// How a [`Pipeline`] runs.
#[derive(Clone, Copy, Debug)]
pub struct PipelineOptions {
    /// Inference workers (threads). Each takes the latest frame when it is free.
    pub workers: usize,
    /// Quantisation range of YUV frames.
    pub yuv_range: YuvRange,
    /// Region of each frame to classify; `None` = the whole frame.
    pub roi: Option<Roi>,
    pub smoothing: SmoothingOptions,
    /// Deliver a [`PipelineEvent::Frame`] for every processed frame (changes are always
    /// delivered).
    pub frame_results: bool,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        Self {
            workers: 1,
            yuv_range: YuvRange::Limited,
            roi: None,
            smoothing: SmoothingOptions::default(),
            frame_results: true,
        }
    }
}

/// Time one frame spent in each stage, microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StageTimes {
    pub convert_us: u64,
    pub preprocess_us: u64,
    pub infer_us: u64,
    pub smooth_us: u64,
}

/// One processed frame.
#[derive(Clone, Copy, Debug)]
pub struct FrameResult<'a> {
    /// The frame's position among all frames pushed, from 0.
    pub sequence: u64,
    pub timestamp_us: u64,
    /// The model's probabilities for this frame, one per class.
    pub probabilities: &'a [f32],
    /// This frame's most probable class and its probability (unsmoothed).
    pub best: usize,
    pub best_probability: f32,
    /// The digit shown after this frame (smoothed), `None` for "no sign".
    pub digit: Option<usize>,
    /// Smoothed probability of `digit`.
    pub confidence: f32,
    pub times: StageTimes,
}

/// What the pipeline tells its callback.
#[derive(Debug)]
pub enum PipelineEvent<'a> {
    Frame(FrameResult<'a>),
    /// The shown digit changed on frame `sequence`.
    SignChanged {
        change: SignChanged,
        sequence: u64,
    },
    /// A frame could not be classified; the pipeline goes on with the next.
    Error {
        sequence: u64,
        timestamp_us: u64,
        error: &'a Error,
    },
}

/// Latency of one stage over the recent frames (up to [`LATENCY_WINDOW`]), microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StageLatency {
    /// Frames measured in all (not only in the window).
    pub count: u64,
    pub p50_us: u64,
    pub p95_us: u64,
    /// Largest since the pipeline started.
    pub max_us: u64,
}

/// Counters and latencies. `frames_pushed = processed + dropped + failed + (0 or 1 waiting or
/// in progress per worker)`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Stats {
    pub frames_pushed: u64,
    pub frames_processed: u64,
    /// Frames replaced in the slot before a worker took them.
    pub frames_dropped: u64,
    /// Frames whose classification failed (each was an [`PipelineEvent::Error`]).
    pub frames_failed: u64,
    pub convert: StageLatency,
    pub preprocess: StageLatency,
    pub infer: StageLatency,
    pub smooth: StageLatency,
    /// Frames processed per second over the recent window; 0 until two frames are done.
    pub fps: f64,
}

/// Samples kept per stage for the percentiles.
pub const LATENCY_WINDOW: usize = 512;

/// A fixed ring of recent samples: recording never allocates.
struct Ring {
    samples: Box<[u64; LATENCY_WINDOW]>,
    count: u64,
    max: u64,
}

impl Ring {
    fn new() -> Self {
        Self {
            samples: Box::new([0; LATENCY_WINDOW]),
            count: 0,
            max: 0,
        }
    }

    fn record(&mut self, v: u64) {
        self.samples[(self.count % LATENCY_WINDOW as u64) as usize] = v;
        self.count += 1;
        self.max = self.max.max(v);
    }

    fn recent(&self) -> Vec<u64> {
        let n = (self.count as usize).min(LATENCY_WINDOW);
        self.samples[..n].to_vec()
    }

    fn latency(&self) -> StageLatency {
        let mut v = self.recent();
        v.sort_unstable();
        let pick = |q: f64| {
            if v.is_empty() {
                0
            } else {
                v[((v.len() - 1) as f64 * q).round() as usize]
            }
        };
        StageLatency {
            count: self.count,
            p50_us: pick(0.5),
            p95_us: pick(0.95),
            max_us: self.max,
        }
    }
}

struct Recorder {
    started: Instant,
    convert: Ring,
    preprocess: Ring,
    infer: Ring,
    smooth: Ring,
    /// Completion times (microseconds since `started`) of recent frames, for fps.
    done: Ring,
    failed: u64,
}

/// State the workers share: the smoother and the callback sit under one lock, so events reach
/// the callback one at a time and in the order the smoother produced them.
struct Delivery {
    smoother: Smoother,
    /// The newest frame smoothed so far: a result that arrives later for an older frame (from
    /// another worker) is reported but not smoothed, so the digit follows frame order.
    last_sequence: Option<u64>,
    callback: Box<dyn FnMut(&PipelineEvent<'_>) + Send>,
}

struct Shared {
    slot: Slot,
    model: Arc<dyn FrameModel>,
    options: PipelineOptions,
    delivery: Mutex<Delivery>,
    recorder: Mutex<Recorder>,
}

/// Frames in, events out. Dropping it (or [`Pipeline::close`]) stops and joins the workers;
/// after that no callback runs. `push` and `stats` take `&self`: call them from any thread.
pub struct Pipeline {
    shared: Arc<Shared>,
    /// Dropped to tell the workers to stop: their `select!` sees it disconnect.
    shutdown: Option<Sender<()>>,
    workers: Vec<JoinHandle<()>>,
}

fn micros(d: Duration) -> u64 {
    d.as_micros().try_into().unwrap_or(u64::MAX)
}

impl Pipeline {
    /// Starts `options.workers` workers running `model`; events go to `callback`, called on a
    /// worker thread, never two at once.
    pub fn new(
        model: Arc<dyn FrameModel>,
        options: PipelineOptions,
        callback: impl FnMut(&PipelineEvent<'_>) + Send + 'static,
    ) -> Result<Self> {
        if options.workers == 0 {
            return Err(Error::InvalidOption("workers must be at least 1".into()));
        }
        if options.workers > MAX_WORKERS {
            return Err(Error::InvalidOption(format!(
                "workers {} is over the limit of {MAX_WORKERS}",
                options.workers
            )));
        }
        let spec = model.input_spec();
        if spec.width == 0 || spec.height == 0 {
            return Err(Error::InvalidOption(format!(
                "model input is {}x{}",
                spec.width, spec.height
            )));
        }
        let smoother = Smoother::new(options.smoothing)?;
        let shared = Arc::new(Shared {
            slot: Slot::new(options.workers + 2),
            model,
            options,
            delivery: Mutex::new(Delivery {
                smoother,
                last_sequence: None,
                callback: Box::new(callback),
            }),
            recorder: Mutex::new(Recorder {
                started: Instant::now(),
                convert: Ring::new(),
                preprocess: Ring::new(),
                infer: Ring::new(),
                smooth: Ring::new(),
                done: Ring::new(),
                failed: 0,
            }),
        });
        let (shutdown, stop) = crossbeam_channel::bounded::<()>(0);
        let mut workers = Vec::with_capacity(options.workers);
        for i in 0..options.workers {
            let (shared, stop) = (Arc::clone(&shared), stop.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("edgemm-pipeline-{i}"))
                .spawn(move || worker(&shared, &stop));
            match spawned {
                Ok(handle) => workers.push(handle),
                Err(e) => {
                    // Stop the ones already started before reporting.
                    drop(shutdown);
                    for w in workers {
                        let _ = w.join();
                    }
                    return Err(Error::io("spawning", "pipeline worker", e));
                }
            }
        }
        Ok(Self {
            shared,
            shutdown: Some(shutdown),
            workers,
        })
    }

    /// Hands a frame to the workers; returns its sequence number. Never waits for inference:
    /// the frame is copied into a pooled buffer and replaces any frame not yet taken (counted
    /// as dropped). A frame that breaks a rule (plane too short, region of interest outside it)
    /// is refused here with [`InputError::Frame`].
    pub fn push(&self, frame: &Frame<'_>) -> Result<u64> {
        // Planes first (the more basic fault), then the region; the slot's own validation
        // repeats a few comparisons, nothing more.
        frame
            .validate()
            .and_then(|()| frame.region(self.shared.options.roi))
            .and_then(|_| self.shared.slot.push(frame))
            .map_err(|e| Error::BadInput(InputError::Frame(e)))
    }

    /// Counters and per-stage latency so far.
    pub fn stats(&self) -> Stats {
        let r = self
            .shared
            .recorder
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut done = r.done.recent();
        done.sort_unstable();
        let fps = match (done.first(), done.last()) {
            (Some(&a), Some(&b)) if b > a => (done.len() - 1) as f64 * 1e6 / (b - a) as f64,
            _ => 0.0,
        };
        Stats {
            frames_pushed: self.shared.slot.pushed(),
            frames_processed: r.done.count,
            frames_dropped: self.shared.slot.dropped(),
            frames_failed: r.failed,
            convert: r.convert.latency(),
            preprocess: r.preprocess.latency(),
            infer: r.infer.latency(),
            smooth: r.smooth.latency(),
            fps,
        }
    }

    /// Stops the workers and waits for them. A frame being processed is finished (its events
    /// delivered); a frame still waiting in the slot is not processed. No callback runs after
    /// this returns.
    pub fn close(&mut self) {
        self.shutdown.take();
        for w in self.workers.drain(..) {
            // A worker that panicked has already stopped; its panic is not re-raised here
            // because close runs from Drop.
            let _ = w.join();
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.close();
    }
}

/// Runs the model, turning a panic into an error event: one bad frame must not silently take
/// a worker (and with one worker, the whole pipeline) down.
fn classify(model: &dyn FrameModel, chw: &[f32]) -> Result<Vec<f32>> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| model.classify(chw))).unwrap_or_else(
        |payload| {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(Error::Inference(format!("the model panicked: {what}")))
        },
    )
}

fn worker(shared: &Shared, stop: &Receiver<()>) {
    let spec = shared.model.input_spec();
    let options = &shared.options;
    let mut buffers = FrameBuffers::default();
    loop {
        let owned = select! {
            recv(shared.slot.receiver()) -> msg => match msg {
                Ok(f) => f,
                Err(_) => return,
            },
            recv(stop) -> _ => return,
        };
        // `select!` picks at random among ready channels: a frame taken after close began is
        // left unprocessed, as `close` promises.
        if stop.try_recv() == Err(TryRecvError::Disconnected) {
            return;
        }
        let (sequence, timestamp_us) = (owned.sequence, owned.timestamp_us);
        let t0 = Instant::now();
        let converted = buffers.convert(&owned.as_frame(), options.yuv_range, options.roi);
        shared.slot.recycle(owned);
        let t1 = Instant::now();
        let result = converted
            .map_err(|e| Error::BadInput(InputError::Frame(e)))
            .map(|()| buffers.preprocess(spec))
            .map(|()| Instant::now())
            .and_then(|t2| classify(shared.model.as_ref(), &buffers.tensor).map(|p| (t2, p)));
        let mut delivery = shared.delivery.lock().unwrap_or_else(|e| e.into_inner());
        let (t2, probabilities) = match result {
            Ok(ok) => ok,
            Err(error) => {
                (delivery.callback)(&PipelineEvent::Error {
                    sequence,
                    timestamp_us,
                    error: &error,
                });
                drop(delivery);
                shared
                    .recorder
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .failed += 1;
                continue;
            }
        };
        let t3 = Instant::now();
        let in_order = delivery.last_sequence.is_none_or(|last| sequence > last);
        let smoothed = if in_order {
            delivery.last_sequence = Some(sequence);
            Some(delivery.smoother.update(&probabilities, timestamp_us))
        } else {
            None
        };
        let t4 = Instant::now();
        let times = StageTimes {
            convert_us: micros(t1 - t0),
            preprocess_us: micros(t2 - t1),
            infer_us: micros(t3 - t2),
            smooth_us: micros(t4 - t3),
        };
        let (best, best_probability) = probabilities
            .iter()
            .copied()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap_or((0, 0.0));
        let shown = delivery.smoother.digit();
        if options.frame_results {
            let result = FrameResult {
                sequence,
                timestamp_us,
                probabilities: &probabilities,
                best,
                best_probability,
                digit: smoothed.map_or(shown, |s| s.digit),
                confidence: smoothed.map_or(0.0, |s| s.confidence),
                times,
            };
            (delivery.callback)(&PipelineEvent::Frame(result));
        }
        if let Some(change) = smoothed.and_then(|s| s.changed) {
            (delivery.callback)(&PipelineEvent::SignChanged { change, sequence });
        }
        drop(delivery);
        let mut r = shared.recorder.lock().unwrap_or_else(|e| e.into_inner());
        r.convert.record(times.convert_us);
        r.preprocess.record(times.preprocess_us);
        r.infer.record(times.infer_us);
        r.smooth.record(times.smooth_us);
        let now = micros(r.started.elapsed());
        r.done.record(now);
    }
}
