//! The camera-frame pipeline end to end (issue 6): push never waits on inference (acceptance
//! 2), the latest frame is the one processed next, drops are counted, events come in order,
//! close joins, and the real model path gives what `Runtime::invoke` gives.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver, Sender};
use edgemm::manifest::InputSpec;
use edgemm::pipeline::frame::{Frame, FrameError, PixelFormat, Roi};
use edgemm::pipeline::{
    FrameModel, Pipeline, PipelineEvent, PipelineOptions, RuntimeModel, SmoothingOptions,
};
use edgemm::{Error, Input, InputError, Runtime, RuntimeOptions};

fn spec(side: usize) -> InputSpec {
    serde_json::from_value(serde_json::json!({ "height": side, "width": side })).unwrap()
}

/// A fake model: optionally waits for a token on `gate` (announcing on `started` first), then
/// sleeps `delay`, then answers "digit = brightness / 25.6" with probability 0.95.
struct FakeModel {
    spec: InputSpec,
    delay: Duration,
    started: Sender<()>,
    gate: Option<Receiver<()>>,
    fail: bool,
}

impl FrameModel for FakeModel {
    fn input_spec(&self) -> &InputSpec {
        &self.spec
    }

    fn classify(&self, chw: &[f32]) -> edgemm::Result<Vec<f32>> {
        let _ = self.started.send(());
        if let Some(gate) = &self.gate {
            gate.recv().expect("test ended with the model blocked");
        }
        std::thread::sleep(self.delay);
        if self.fail {
            return Err(Error::Inference("the fake model fails".into()));
        }
        if chw.iter().all(|&v| v == 0.0) {
            panic!("an all-black frame");
        }
        // Default spec: scale 1/255, mean 0, std 1, so chw holds brightness in [0, 1].
        let mean = chw.iter().sum::<f32>() / chw.len() as f32;
        let digit = ((mean * 10.0) as usize).min(9);
        let mut p = vec![0.05 / 9.0; 10];
        p[digit] = 0.95;
        Ok(p)
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Seen {
    Frame { sequence: u64, digit: Option<usize> },
    Changed(Option<usize>),
    Error(String),
}

struct Harness {
    pipeline: Pipeline,
    events: Receiver<Seen>,
    started: Receiver<()>,
    gate: Sender<()>,
}

fn harness(delay: Duration, gated: bool, fail: bool, options: PipelineOptions) -> Harness {
    let (started_tx, started) = unbounded();
    let (gate, gate_rx) = unbounded();
    let model = Arc::new(FakeModel {
        spec: spec(8),
        delay,
        started: started_tx,
        gate: gated.then_some(gate_rx),
        fail,
    });
    let (tx, events) = unbounded();
    let pipeline = Pipeline::new(model, options, move |e: &PipelineEvent<'_>| {
        let seen = match e {
            PipelineEvent::Frame(r) => Seen::Frame {
                sequence: r.sequence,
                digit: r.digit,
            },
            PipelineEvent::SignChanged { change, .. } => Seen::Changed(change.digit),
            PipelineEvent::Error { error, .. } => Seen::Error(error.to_string()),
        };
        let _ = tx.send(seen);
    })
    .unwrap();
    Harness {
        pipeline,
        events,
        started,
        gate,
    }
}

/// A 640x480 NV12 frame of one brightness (limited range Y).
struct Nv12 {
    data: Vec<u8>,
}

impl Nv12 {
    fn new(y: u8) -> Self {
        let mut data = vec![y; 640 * 480];
        data.resize(640 * 480 * 3 / 2, 128);
        Self { data }
    }

    fn frame(&self, timestamp_us: u64) -> Frame<'_> {
        let (y, uv) = self.data.split_at(640 * 480);
        Frame {
            planes: [y, uv, &[]],
            strides: [640, 640, 0],
            width: 640,
            height: 480,
            format: PixelFormat::Nv12,
            timestamp_us,
        }
    }
}

fn next_frame(events: &Receiver<Seen>) -> u64 {
    loop {
        match events.recv_timeout(Duration::from_secs(10)).unwrap() {
            Seen::Frame { sequence, .. } => return sequence,
            Seen::Changed(_) => continue,
            other => panic!("{other:?}"),
        }
    }
}

/// Acceptance 2. The worker is provably blocked inside the model (waiting on a gate only this
/// test opens) for the whole time 300 frames are pushed at 120 fps, so no push can have waited
/// on inference; each returns promptly, every frame but the last is counted as dropped, and
/// the last is the one processed next. Repeated for several bursts with a 50 ms model.
#[test]
fn push_never_waits_on_a_blocked_slow_model() {
    let h = harness(Duration::from_millis(50), true, false, Default::default());
    let frame = Nv12::new(100);
    let mut slowest = Duration::ZERO;
    let mut expected_dropped = 0;
    let mut last_pushed = h.pipeline.push(&frame.frame(0)).unwrap();
    for burst in [300u64, 7, 1, 40] {
        // The worker has taken the previous frame and is blocked in the model.
        h.started.recv_timeout(Duration::from_secs(10)).unwrap();
        let period = Duration::from_secs_f64(1.0 / 120.0);
        let t0 = Instant::now();
        for i in 0..burst {
            let due = t0 + period * i as u32;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let t = Instant::now();
            last_pushed = h.pipeline.push(&frame.frame(i * 8_333)).unwrap();
            slowest = slowest.max(t.elapsed());
        }
        // Still blocked: nothing was processed during the burst.
        assert!(
            h.events.try_recv().is_err(),
            "a frame finished during the burst"
        );
        assert!(h.started.try_recv().is_err());
        expected_dropped += burst - 1;
        let stats = h.pipeline.stats();
        assert_eq!(stats.frames_dropped, expected_dropped);
        assert_eq!(stats.frames_pushed, last_pushed + 1);
        // Release the blocked frame; the one processed next is the last pushed.
        h.gate.send(()).unwrap();
        let done = next_frame(&h.events);
        h.started.recv_timeout(Duration::from_secs(10)).unwrap();
        h.gate.send(()).unwrap();
        assert_eq!(
            next_frame(&h.events),
            last_pushed,
            "after burst of {burst} ({done} done)"
        );
        // Leave the worker blocked on a fresh frame for the next burst.
        last_pushed = h.pipeline.push(&frame.frame(0)).unwrap();
    }
    // Every push returned while the worker was blocked in the model: that is the proof that
    // pushing never waits on inference. How long a push takes (a copy of a 460 KB frame) is
    // printed, not asserted: a wall-clock limit fails on a loaded machine (the kiosk's
    // `--bench` measures it).
    println!("slowest push while the worker was blocked: {slowest:?}");
    h.gate.send(()).unwrap();
}

/// The same 50 ms model running freely: 300 pushes at 120 fps all return promptly, the counts
/// add up, processed frames come in increasing order.
#[test]
fn a_slow_model_costs_frames_not_push_time() {
    let mut h = harness(Duration::from_millis(50), false, false, Default::default());
    let frame = Nv12::new(100);
    let period = Duration::from_secs_f64(1.0 / 120.0);
    let t0 = Instant::now();
    let mut slowest = Duration::ZERO;
    for i in 0..300u64 {
        let due = t0 + period * i as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let t = Instant::now();
        h.pipeline.push(&frame.frame(i * 8_333)).unwrap();
        slowest = slowest.max(t.elapsed());
    }
    println!("slowest of 300 pushes: {slowest:?}");
    h.pipeline.close();
    let stats = h.pipeline.stats();
    assert_eq!(stats.frames_pushed, 300);
    // 2.5 s at 50 ms a frame is about 50 frames; the rest were dropped or left in the slot.
    let accounted = stats.frames_processed + stats.frames_dropped;
    assert!(accounted == 300 || accounted == 299, "{stats:?}");
    assert!(
        stats.frames_processed >= 10 && stats.frames_dropped >= 200,
        "{stats:?}"
    );
    assert!(stats.infer.p50_us >= 50_000 && stats.infer.max_us >= stats.infer.p95_us);
    // At most the model's 20 frames a second; the floor only shows the worker kept running (a
    // machine busy with other tests starves it for whole seconds, so it is set low).
    assert!(stats.fps > 2.0 && stats.fps <= 21.0, "{}", stats.fps);
    let sequences: Vec<u64> = h
        .events
        .try_iter()
        .filter_map(|e| match e {
            Seen::Frame { sequence, .. } => Some(sequence),
            _ => None,
        })
        .collect();
    assert_eq!(sequences.len() as u64, stats.frames_processed);
    assert!(sequences.windows(2).all(|w| w[0] < w[1]), "{sequences:?}");
}

/// Frames through conversion, preprocessing, the model and smoothing: a held sign is reported
/// once, a change once, and each result carries the smoothed digit.
#[test]
fn held_signs_become_sign_changed_events() {
    let options = PipelineOptions {
        workers: 2,
        smoothing: SmoothingOptions {
            hold_frames: 3,
            ..Default::default()
        },
        ..Default::default()
    };
    let h = harness(Duration::ZERO, false, false, options);
    // Limited-range Y: 16 + 219 * b gives brightness b; the fake model says digit = b * 10.
    let digit_frame = |d: u8| Nv12::new(16 + ((f32::from(d) + 0.5) / 10.0 * 219.0) as u8);
    let mut seen = Vec::new();
    let mut ts = 0;
    for d in [3u8, 7] {
        let f = digit_frame(d);
        for _ in 0..8 {
            // One frame at a time, so none is dropped and the smoother sees all of them.
            let sequence = h.pipeline.push(&f.frame(ts)).unwrap();
            ts += 33_000;
            loop {
                let e = h.events.recv_timeout(Duration::from_secs(10)).unwrap();
                let done = matches!(e, Seen::Frame { sequence: s, .. } if s == sequence);
                seen.push(e);
                if done {
                    break;
                }
            }
        }
    }
    seen.extend(h.events.recv_timeout(Duration::from_millis(100)));
    let changes: Vec<_> = seen
        .iter()
        .filter_map(|e| match e {
            Seen::Changed(d) => Some(*d),
            _ => None,
        })
        .collect();
    assert_eq!(changes, [Some(3), Some(7)]);
    let digits: Vec<_> = seen
        .iter()
        .filter_map(|e| match e {
            Seen::Frame { digit, .. } => Some(*digit),
            _ => None,
        })
        .collect();
    // Shown from the third frame of each hold (the EMA reaches the threshold at once from
    // nothing, and after one frame when switching from 3).
    assert_eq!(&digits[..3], [None, None, Some(3)]);
    assert_eq!(digits[7], Some(3));
    assert_eq!(digits[15], Some(7));
    let stats = h.pipeline.stats();
    assert_eq!((stats.frames_processed, stats.frames_dropped), (16, 0));
    assert!(stats.convert.count == 16 && stats.convert.max_us > 0);
}

#[test]
fn bad_frames_are_refused_at_push_and_model_errors_are_events() {
    let options = PipelineOptions {
        roi: Some(Roi {
            x: 600,
            y: 0,
            width: 100,
            height: 100,
        }),
        ..Default::default()
    };
    let h = harness(Duration::ZERO, false, true, options);
    let f = Nv12::new(50);
    let refused = h.pipeline.push(&f.frame(0)).unwrap_err();
    assert!(matches!(
        refused,
        Error::BadInput(InputError::Frame(FrameError::BadRoi { .. }))
    ));
    let short = Frame::packed(&f.data[..10], 640, 480, 640, PixelFormat::Gray8, 0);
    assert!(matches!(
        h.pipeline.push(&short),
        Err(Error::BadInput(InputError::Frame(
            FrameError::PlaneTooShort { .. }
        )))
    ));
    assert_eq!(h.pipeline.stats().frames_pushed, 0);

    let h = harness(Duration::ZERO, false, true, Default::default());
    h.pipeline.push(&f.frame(0)).unwrap();
    let e = h.events.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(
        e,
        Seen::Error("inference failed: the fake model fails".into())
    );
    // Counters are updated just after the event; give the worker a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    while h.pipeline.stats().frames_failed == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(h.pipeline.stats().frames_failed, 1);

    // A model that panics: the frame is an error event and the worker lives on.
    let h = harness(Duration::ZERO, false, false, Default::default());
    let black = vec![0u8; 4 * 4 * 3];
    let black = Frame::packed(&black, 4, 4, 12, PixelFormat::Rgb24, 0);
    let sequence = h.pipeline.push(&black).unwrap();
    let e = h.events.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(
        e,
        Seen::Error("inference failed: the model panicked: an all-black frame".into())
    );
    let sequence = h.pipeline.push(&f.frame(1)).unwrap().max(sequence);
    assert_eq!(next_frame(&h.events), sequence);
}

/// Close waits for the frame in progress (its events are delivered before close returns) and
/// no callback runs afterwards.
#[test]
fn close_joins_and_no_callback_runs_after_it() {
    let calls = Arc::new(AtomicUsize::new(0));
    let model = Arc::new(FakeModel {
        spec: spec(8),
        delay: Duration::from_millis(100),
        started: unbounded().0,
        gate: None,
        fail: false,
    });
    let counter = Arc::clone(&calls);
    let mut pipeline = Pipeline::new(model, Default::default(), move |_: &PipelineEvent<'_>| {
        std::thread::sleep(Duration::from_millis(20));
        counter.fetch_add(1, Ordering::SeqCst);
    })
    .unwrap();
    let f = Nv12::new(100);
    pipeline.push(&f.frame(0)).unwrap();
    std::thread::sleep(Duration::from_millis(30)); // the worker is inside the model now
    pipeline.push(&f.frame(1)).unwrap(); // waits in the slot; never processed
    pipeline.close();
    let at_close = calls.load(Ordering::SeqCst);
    assert_eq!(
        at_close, 1,
        "the frame in progress delivers its result before close returns"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(calls.load(Ordering::SeqCst), at_close);
    drop(pipeline); // close again through Drop: a no-op
}

/// The real model path: a frame at the model's input size gives exactly what
/// `Runtime::invoke` gives for the same RGB image.
#[test]
fn runtime_model_matches_invoke() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = common::alexnet_manifest();
    common::pack_seeded(&manifest, 7, &dir.path().join("repo"), "cifar.tar.gz");
    let mut options = RuntimeOptions::new(dir.path().join("repo"));
    options.cache_dir = dir.path().join("cache");
    let runtime = Arc::new(Runtime::new(options).unwrap());
    assert!(matches!(
        RuntimeModel::new(Arc::clone(&runtime), "missing.tar.gz"),
        Err(Error::ModelNotFound { .. })
    ));
    let model = Arc::new(RuntimeModel::new(Arc::clone(&runtime), "cifar.tar.gz").unwrap());
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&got);
    let mut pipeline = Pipeline::new(model, Default::default(), move |e: &PipelineEvent<'_>| {
        if let PipelineEvent::Frame(r) = e {
            sink.lock().unwrap().push(r.probabilities.to_vec());
        }
    })
    .unwrap();
    let rgb: Vec<u8> = (0..32 * 32 * 3).map(|i| (i * 37 % 251) as u8).collect();
    pipeline
        .push(&Frame::packed(&rgb, 32, 32, 96, PixelFormat::Rgb24, 0))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.lock().unwrap().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    pipeline.close();
    let image = image::RgbImage::from_raw(32, 32, rgb).unwrap();
    let expected = runtime.invoke("cifar.tar.gz", Input::Rgb(&image)).unwrap();
    let got = got.lock().unwrap();
    assert_eq!(got.len(), 1);
    for (a, b) in got[0].iter().zip(&expected.predictions[0].probabilities) {
        assert!(
            (a - b).abs() < 1e-6,
            "{:?} vs {:?}",
            got[0],
            expected.predictions[0]
        );
    }
}
