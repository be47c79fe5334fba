//! `edgemm-kiosk`: the offline hand-sign kiosk demo. See the crate documentation and
//! examples/kiosk/README.md.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use edgemm::pipeline::frame::{convert_to_rgb, PixelFormat, Roi, YuvRange};
use edgemm::pipeline::{FrameModel, PipelineOptions, RuntimeModel, SmoothingOptions};
use edgemm::{Runtime, RuntimeOptions};
use edgemm_kiosk::output::Recorder;
use edgemm_kiosk::overlay::{self, Canvas, Status};
use edgemm_kiosk::replay::{self, Jitter, Photo, ReplayOptions, ReplaySource};
use edgemm_kiosk::session::{self, KioskEvent, Observer, Pacing, Report, SessionOptions};
use edgemm_kiosk::source::{CapturedFrame, FrameSource};
use edgemm_kiosk::{camera, tree_path, y4m};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Format {
    Nv12,
    Nv21,
    I420,
    Yuyv,
    Rgb24,
    Bgr24,
    Rgba,
    Bgra,
    Gray8,
}

impl From<Format> for PixelFormat {
    fn from(f: Format) -> Self {
        match f {
            Format::Nv12 => PixelFormat::Nv12,
            Format::Nv21 => PixelFormat::Nv21,
            Format::I420 => PixelFormat::I420,
            Format::Yuyv => PixelFormat::Yuyv,
            Format::Rgb24 => PixelFormat::Rgb24,
            Format::Bgr24 => PixelFormat::Bgr24,
            Format::Rgba => PixelFormat::Rgba,
            Format::Bgra => PixelFormat::Bgra,
            Format::Gray8 => PixelFormat::Gray8,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, ValueEnum)]
enum Pace {
    /// Push frame n at n / fps seconds, as a camera would.
    Realtime,
    /// Push --frames-per-result frames per processed frame (the replay tests' clock).
    Lockstep,
}

/// The offline hand-sign kiosk: frames through edgemm's camera-frame pipeline, the recognised
/// digit in a window or, with --headless, as JSON lines and PNG snapshots.
///
/// Without a source option it replays the shipped sign photos (models/samples/sign-digits)
/// as a 640x480 NV12 camera with jitter.
#[derive(Parser, Debug)]
#[command(name = "edgemm-kiosk", version)]
struct Args {
    /// Read a V4L2 camera (the first /dev/video* when no device is given).
    #[arg(long, num_args = 0..=1, default_missing_value = "", value_name = "DEVICE", group = "source")]
    camera: Option<PathBuf>,
    /// Read a YUV4MPEG2 video file (e.g. from `ffmpeg -i clip.mp4 -pix_fmt yuv420p clip.y4m`).
    #[arg(long, value_name = "FILE", group = "source")]
    y4m: Option<PathBuf>,
    /// Replay the JPEG/PNG photos in DIR (subfolders named 0-9 give the ground truth).
    #[arg(long, value_name = "DIR", group = "source")]
    images: Option<PathBuf>,
    /// Replay one split (test, val, train) of the sign-digits data set in --data.
    #[arg(long, value_name = "SPLIT", group = "source")]
    data_split: Option<String>,
    /// Data directory holding sign-digits/ [default: $EDGEMM_DATA, else ../shared/data].
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,

    /// Photos to replay, spread over the digits (0 = all). Default: all, except 10 for the
    /// shipped samples (one per digit).
    #[arg(long)]
    photos: Option<usize>,
    /// Frames each photo is held for.
    #[arg(long, default_value_t = 30)]
    frames_per_hold: u64,
    /// Replay camera rate, frames per second.
    #[arg(long, default_value_t = 30.0)]
    fps: f64,
    /// Replay frame width and height.
    #[arg(long, default_value_t = 640)]
    width: usize,
    #[arg(long, default_value_t = 480)]
    height: usize,
    /// Pixel format of replayed frames.
    #[arg(long, value_enum, default_value = "nv12")]
    format: Format,
    /// Replay without jitter (each photo exactly fills the hand square).
    #[arg(long)]
    no_jitter: bool,
    /// Seed of the replay's order and jitter.
    #[arg(long, default_value_t = 6)]
    seed: u64,
    /// Keep the photos in path order instead of shuffling them.
    #[arg(long)]
    in_order: bool,

    /// How replays and files are fed [default: lockstep with --headless, else realtime].
    #[arg(long, value_enum)]
    pace: Option<Pace>,
    /// With --pace lockstep: frames pushed per processed frame.
    #[arg(long, default_value_t = 6)]
    frames_per_result: u64,
    /// Classify the whole frame instead of the centre square where the hand is shown.
    #[arg(long)]
    whole_frame: bool,
    /// Inference workers.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Smoothing: EMA weight of the newest frame.
    #[arg(long, default_value_t = SmoothingOptions::default().alpha)]
    alpha: f32,
    /// Smoothing: probability to show a digit, and below which it is given up.
    #[arg(long, default_value_t = SmoothingOptions::default().enter_threshold)]
    enter: f32,
    #[arg(long, default_value_t = SmoothingOptions::default().exit_threshold)]
    exit: f32,
    /// Smoothing: frames (and milliseconds) a new digit must last before it is shown.
    #[arg(long, default_value_t = SmoothingOptions::default().hold_frames)]
    hold_frames: u32,
    #[arg(long, default_value_t = SmoothingOptions::default().hold_ms)]
    hold_ms: u64,

    /// No window: JSON lines on stdout (or --events), PNG snapshots to --snapshots.
    #[arg(long)]
    headless: bool,
    /// Write the JSON lines to FILE instead of stdout.
    #[arg(long, value_name = "FILE")]
    events: Option<PathBuf>,
    /// Also write a JSON line per processed frame.
    #[arg(long)]
    frame_events: bool,
    /// Write an annotated PNG of each frame where the digit changed into DIR.
    #[arg(long, value_name = "DIR")]
    snapshots: Option<PathBuf>,
    /// Window: borderless, scaled to fit the screen.
    #[arg(long)]
    fullscreen: bool,
    /// Close the window when the source ends (else it stays until Esc or closed).
    #[arg(long)]
    exit_at_end: bool,
    /// Window: also save the screen as a PNG every this many frames into --snapshots.
    #[arg(long, value_name = "N")]
    screen_every: Option<u64>,

    /// Benchmark: a 640x480 NV12 replay at --fps in real time for --seconds; prints fps,
    /// frame-to-event latency and the pipeline's own overhead as JSON.
    #[arg(long)]
    bench: bool,
    #[arg(long, default_value_t = 30)]
    seconds: u64,

    /// Model repository.
    #[arg(long, value_name = "DIR")]
    repo: Option<PathBuf>,
    /// Model name in the repository.
    #[arg(long, default_value = "sign-language.tar.gz")]
    model: String,
    /// Where extracted artifacts are cached [default: the runtime's].
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
}

/// `n` photos taken round-robin over the digits (one of each before a second of any).
fn spread(photos: Vec<Photo>, n: usize) -> Vec<Photo> {
    if n == 0 || n >= photos.len() {
        return photos;
    }
    let mut by_label: Vec<Vec<Photo>> = Vec::new();
    for p in photos {
        let key = p.label.unwrap_or(usize::MAX);
        match by_label
            .iter_mut()
            .find(|g| g[0].label.unwrap_or(usize::MAX) == key)
        {
            Some(g) => g.push(p),
            None => by_label.push(vec![p]),
        }
    }
    let mut picked = Vec::with_capacity(n);
    let mut round = 0;
    while picked.len() < n {
        let before = picked.len();
        for g in &by_label {
            if let Some(p) = g.get(round) {
                if picked.len() < n {
                    picked.push(p.clone());
                }
            }
        }
        if picked.len() == before {
            break;
        }
        round += 1;
    }
    picked
}

fn open_source(args: &Args) -> Result<Box<dyn FrameSource>, String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    if let Some(dev) = &args.camera {
        let dev = (!dev.as_os_str().is_empty()).then_some(dev.as_path());
        return camera::open(dev, args.width as u32, args.height as u32).map_err(|e| err(&e));
    }
    if let Some(path) = &args.y4m {
        return Ok(Box::new(y4m::Y4mSource::open(path).map_err(|e| err(&e))?));
    }
    let (name, photos, default_count) = if let Some(dir) = &args.images {
        let photos = replay::photos_in(dir).map_err(|e| err(&e))?;
        (dir.display().to_string(), photos, 0)
    } else if let Some(split) = &args.data_split {
        let data = args
            .data
            .clone()
            .or_else(edgemm_kiosk::shared_data)
            .ok_or("--data-split needs the data set: pass --data DIR or set EDGEMM_DATA")?;
        let csv = data.join("sign-digits/splits.csv");
        let photos = replay::split_photos(&csv, split).map_err(|e| err(&e))?;
        (format!("sign-digits {split} split"), photos, 0)
    } else {
        let dir = tree_path("models/samples/sign-digits");
        let photos = replay::photos_in(&dir).map_err(|e| err(&e))?;
        ("shipped sign samples".to_string(), photos, 10)
    };
    let photos = spread(photos, args.photos.unwrap_or(default_count));
    let options = ReplayOptions {
        width: args.width,
        height: args.height,
        format: args.format.into(),
        frames_per_hold: args.frames_per_hold,
        fps: args.fps,
        jitter: if args.no_jitter {
            Jitter::NONE
        } else {
            Jitter::default()
        },
        shuffle_seed: (!args.in_order).then_some(args.seed),
        jitter_seed: args.seed,
    };
    Ok(Box::new(
        ReplaySource::new(name, photos, options).map_err(|e| err(&e))?,
    ))
}

/// The window: the screen redrawn after every pushed frame.
struct WindowView {
    window: minifb::Window,
    canvas: Canvas,
    rgb: Vec<u8>,
    roi: Option<Roi>,
    range: YuvRange,
    screen_every: Option<(u64, PathBuf)>,
}

impl WindowView {
    fn open(width: usize, height: usize, fullscreen: bool) -> Result<Self, String> {
        let canvas = Canvas::new(width + overlay::PANEL_WIDTH, height);
        let options = minifb::WindowOptions {
            borderless: fullscreen,
            scale_mode: minifb::ScaleMode::AspectRatioStretch,
            resize: true,
            scale: if fullscreen {
                minifb::Scale::FitScreen
            } else {
                minifb::Scale::X1
            },
            ..minifb::WindowOptions::default()
        };
        let window = minifb::Window::new(
            "edgemm kiosk - hand sign digits (Esc to quit)",
            canvas.width,
            canvas.height,
            options,
        )
        .map_err(|e| {
            format!("cannot open a window ({e}); is there an X display (DISPLAY)? Use --headless without one")
        })?;
        Ok(Self {
            window,
            canvas,
            rgb: Vec::new(),
            roi: None,
            range: YuvRange::Limited,
            screen_every: None,
        })
    }

    fn show(&mut self, frame: Option<&CapturedFrame>, status: &Status) -> bool {
        if let Some(f) = frame {
            if convert_to_rgb(&f.as_frame(), self.range, None, &mut self.rgb).is_ok() {
                if self.canvas.width != f.width + overlay::PANEL_WIDTH
                    || self.canvas.height != f.height
                {
                    self.canvas = Canvas::new(f.width + overlay::PANEL_WIDTH, f.height);
                }
                overlay::draw(
                    &mut self.canvas,
                    &self.rgb,
                    f.width,
                    f.height,
                    self.roi,
                    status,
                );
            }
        }
        let ok = self
            .window
            .update_with_buffer(&self.canvas.pixels, self.canvas.width, self.canvas.height)
            .is_ok();
        ok && self.window.is_open() && !self.window.is_key_down(minifb::Key::Escape)
    }
}

/// The window (if any) and the headless recorder, as one observer.
struct Kiosk {
    window: Option<WindowView>,
    recorder: Recorder,
}

impl Observer for Kiosk {
    fn pushed(&mut self, sequence: u64, frame: &CapturedFrame, status: &Status) -> bool {
        let Some(w) = self.window.as_mut() else {
            return true;
        };
        let open = w.show(Some(frame), status);
        if let Some((every, dir)) = &w.screen_every {
            if sequence.is_multiple_of(*every.max(&1)) {
                let path = dir.join(format!("screen-{sequence:06}.png"));
                if let Err(e) = w.canvas.save_png(&path) {
                    eprintln!("{}: {e}", path.display());
                }
            }
        }
        open
    }

    fn event(&mut self, event: &KioskEvent, frame: Option<&CapturedFrame>, status: &Status) {
        self.recorder.event(event, frame, status);
    }
}

fn print_summary(report: &Report, wall: Duration) {
    let s = &report.stats;
    eprintln!(
        "\n{} frames pushed, {} processed, {} dropped, {} failed in {:.1} s ({:.2} results/s)",
        s.frames_pushed,
        s.frames_processed,
        s.frames_dropped,
        s.frames_failed,
        wall.as_secs_f64(),
        report.fps
    );
    let ms = |us: u64| us as f64 / 1000.0;
    eprintln!(
        "latency p50/p95: frame-to-result {:.1}/{:.1} ms, model {:.1}/{:.1} ms, pipeline overhead (convert+preprocess+smooth) {:.2}/{:.2} ms",
        ms(report.frame_latency.p50_us),
        ms(report.frame_latency.p95_us),
        ms(report.infer.p50_us),
        ms(report.infer.p95_us),
        ms(report.overhead.p50_us),
        ms(report.overhead.p95_us),
    );
    if let Some(score) = &report.score {
        eprintln!(
            "replay: {}/{} holds correct ({:.1}%), {} sign changes, {} flicker, {:.1} processed frames per hold (min {})",
            score.correct,
            score.holds,
            100.0 * score.accuracy(),
            score.changes,
            score.flicker,
            score.processed_mean,
            score.processed_min
        );
    }
}

fn run(args: Args) -> Result<(), String> {
    let wall = Instant::now();
    let repo = args
        .repo
        .clone()
        .unwrap_or_else(|| tree_path("models/repository"));
    let mut options = RuntimeOptions::new(&repo);
    if let Some(dir) = &args.cache_dir {
        options.cache_dir = dir.clone();
    }
    let runtime = Arc::new(Runtime::new(options).map_err(|e| format!("{}: {e}", repo.display()))?);
    eprintln!("loading {} from {}", args.model, repo.display());
    let model =
        Arc::new(RuntimeModel::new(Arc::clone(&runtime), &args.model).map_err(|e| e.to_string())?);
    let labels = runtime
        .model(&args.model)
        .map(|m| m.manifest.labels.clone())
        .map_err(|e| e.to_string())?;

    let mut args = args;
    if args.bench {
        args.headless = true;
        args.format = Format::Nv12;
        args.photos.get_or_insert(0);
    }
    let mut source = open_source(&args)?;
    eprintln!("source: {}", source.describe());
    // The hand square, when the frame size is known before the first frame (replays); for
    // cameras and files it is set from the first frame below.
    let mut first = CapturedFrame::default();
    let first_ok = source.next_frame(&mut first).map_err(|e| e.to_string())?;
    if !first_ok {
        return Err("the source has no frames".into());
    }
    let roi = (!args.whole_frame).then(|| replay::hand_square(first.width, first.height));
    let mut source: Box<dyn FrameSource> = Box::new(Prepend {
        first: Some(first),
        inner: source,
    });

    let pace = args.pace.unwrap_or(if args.headless && !args.bench {
        Pace::Lockstep
    } else {
        Pace::Realtime
    });
    let session_options = SessionOptions {
        pacing: match pace {
            Pace::Realtime => Pacing::RealTime,
            Pace::Lockstep => Pacing::Lockstep {
                frames_per_result: args.frames_per_result.max(1),
            },
        },
        pipeline: PipelineOptions {
            workers: args.workers,
            roi,
            smoothing: SmoothingOptions {
                alpha: args.alpha,
                enter_threshold: args.enter,
                exit_threshold: args.exit,
                hold_frames: args.hold_frames,
                hold_ms: args.hold_ms,
            },
            ..PipelineOptions::default()
        },
        ..SessionOptions::default()
    };
    eprintln!(
        "pacing: {}",
        match session_options.pacing {
            Pacing::RealTime if source.is_live() => "live camera".to_string(),
            Pacing::RealTime => format!("real time at {} fps", source.fps()),
            Pacing::Lockstep { frames_per_result } =>
                format!("lockstep, {frames_per_result} frames pushed per processed frame"),
        }
    );

    let mut recorder = Recorder::new(labels, source.holds().to_vec(), roi, source.yuv_range());
    if let Some(dir) = &args.snapshots {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        recorder.snapshots = Some(dir.clone());
    }
    if !args.bench {
        recorder.events = Some(match &args.events {
            Some(path) => Box::new(std::io::BufWriter::new(
                std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?,
            )),
            None => Box::new(std::io::stdout()),
        });
    }
    recorder.frame_events = args.frame_events;
    recorder.progress = !args.bench;
    let window = if args.headless {
        None
    } else {
        let mut w = WindowView::open(args.width, args.height, args.fullscreen)?;
        w.roi = roi;
        w.range = source.yuv_range();
        w.screen_every = args.screen_every.zip(args.snapshots.clone());
        Some(w)
    };
    let mut kiosk = Kiosk { window, recorder };

    let report = if args.bench {
        let deadline = Instant::now() + Duration::from_secs(args.seconds);
        let mut timed = Deadline {
            inner: &mut kiosk,
            deadline,
        };
        session::run(
            source.as_mut(),
            model as Arc<dyn FrameModel>,
            session_options,
            &mut timed,
        )
    } else {
        session::run(
            source.as_mut(),
            model as Arc<dyn FrameModel>,
            session_options,
            &mut kiosk,
        )
    }
    .map_err(|e| e.to_string())?;

    let status = Status::default();
    kiosk.recorder.finish(&status);
    let summary = report.to_json();
    if args.bench {
        println!(
            "{}",
            serde_json::to_string_pretty(&bench_json(&report, &args)).unwrap_or_default()
        );
    } else {
        kiosk.recorder.line(&summary);
    }
    print_summary(&report, wall.elapsed());
    if let Some(dir) = &args.snapshots {
        eprintln!(
            "{} snapshots in {}",
            kiosk.recorder.snapshots_written(),
            dir.display()
        );
    }
    if let Some(e) = kiosk.recorder.write_error.take() {
        return Err(e);
    }
    if let Some(w) = kiosk.window.as_mut() {
        if !args.exit_at_end && !report.stopped {
            eprintln!("source ended; Esc or close the window to quit");
            while w.show(None, &status) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    std::io::stdout().flush().ok();
    Ok(())
}

fn bench_json(report: &Report, args: &Args) -> serde_json::Value {
    let mut v = report.to_json();
    v["event"] = serde_json::json!("bench");
    v["input"] = serde_json::json!(format!(
        "{}x{} NV12 at {} fps, hand square {}x{} to the model",
        args.width,
        args.height,
        args.fps,
        args.width.min(args.height),
        args.width.min(args.height)
    ));
    v["overhead_over_model_p95_ms"] = serde_json::json!(report.overhead.p95_us as f64 / 1000.0);
    v
}

/// Gives back a frame already read (to learn the frame size) before the rest of a source.
struct Prepend {
    first: Option<CapturedFrame>,
    inner: Box<dyn FrameSource>,
}

impl FrameSource for Prepend {
    fn next_frame(
        &mut self,
        frame: &mut CapturedFrame,
    ) -> Result<bool, edgemm_kiosk::source::SourceError> {
        if let Some(first) = self.first.take() {
            *frame = first;
            return Ok(true);
        }
        self.inner.next_frame(frame)
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn is_live(&self) -> bool {
        self.inner.is_live()
    }
    fn fps(&self) -> f64 {
        self.inner.fps()
    }
    fn yuv_range(&self) -> YuvRange {
        self.inner.yuv_range()
    }
    fn holds(&self) -> &[edgemm_kiosk::source::Hold] {
        self.inner.holds()
    }
    fn frame_count(&self) -> Option<u64> {
        self.inner.frame_count()
    }
}

/// Stops the session at a deadline (the benchmark's duration).
struct Deadline<'a> {
    inner: &'a mut Kiosk,
    deadline: Instant,
}

impl Observer for Deadline<'_> {
    fn pushed(&mut self, sequence: u64, frame: &CapturedFrame, status: &Status) -> bool {
        self.inner.pushed(sequence, frame, status) && Instant::now() < self.deadline
    }
    fn event(&mut self, event: &KioskEvent, frame: Option<&CapturedFrame>, status: &Status) {
        self.inner.event(event, frame, status);
    }
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edgemm-kiosk: {e}");
            ExitCode::FAILURE
        }
    }
}
