//! The offline hand-sign kiosk (issue 6): frames from a camera, a video file, a folder of
//! photos or a replay of the shipped sign photos go through edgemm's camera-frame pipeline,
//! and the recognised digit is shown in a window or written as JSON lines and PNG snapshots.
//!
//! - [`source`]: the [`FrameSource`](source::FrameSource) trait and the frame buffer;
//! - [`replay`]: photos filmed as a camera would (held for several frames, with jitter,
//!   encoded as NV12 or YUYV), with their ground truth;
//! - [`y4m`]: YUV4MPEG2 files; [`camera`]: V4L2 devices;
//! - [`session`]: pushes a source through a [`Pipeline`](edgemm::pipeline::Pipeline), collects
//!   its events, measures latency and scores a replay against its ground truth;
//! - [`overlay`]: the screen (frame, hand square, digit, confidence, fps, drops);
//! - [`output`]: JSON lines, snapshots and progress for `--headless`.
//!
//! ```no_run
//! use std::sync::Arc;
//! use edgemm::pipeline::{PipelineOptions, RuntimeModel};
//! use edgemm::{Runtime, RuntimeOptions};
//! use edgemm_kiosk::replay::{hand_square, photos_in, ReplayOptions, ReplaySource};
//! use edgemm_kiosk::session::{self, Pacing, Quiet, SessionOptions};
//!
//! let runtime = Arc::new(Runtime::new(RuntimeOptions::new("models/repository"))?);
//! let model = Arc::new(RuntimeModel::new(runtime, "sign-language.tar.gz")?);
//! let photos = photos_in("models/samples/sign-digits".as_ref())?;
//! let mut replay = ReplaySource::new("samples", photos, ReplayOptions::default())?;
//! let options = SessionOptions {
//!     pacing: Pacing::Lockstep { frames_per_result: 6 },
//!     pipeline: PipelineOptions { roi: Some(hand_square(640, 480)), ..Default::default() },
//!     ..Default::default()
//! };
//! let report = session::run(&mut replay, model, options, &mut Quiet)?;
//! println!("{:.1}% of holds correct", 100.0 * report.score.unwrap().accuracy());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod camera;
pub mod output;
pub mod overlay;
pub mod replay;
pub mod session;
pub mod source;
pub mod y4m;

use std::path::{Path, PathBuf};

/// `relative` (a path inside the source tree, such as `models/repository`) as seen from the
/// working directory if it is there, else from this crate's source folder, so the demo runs
/// from the repository root and from anywhere else in a checkout.
pub fn tree_path(relative: &str) -> PathBuf {
    let here = Path::new(relative);
    if here.exists() {
        return here.to_path_buf();
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(relative)
}

/// The data directory: `$EDGEMM_DATA`, else `../shared/data` beside the repository, if it is
/// there (see README.md#data-sets).
pub fn shared_data() -> Option<PathBuf> {
    let dir = std::env::var_os("EDGEMM_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"));
    dir.is_dir().then_some(dir)
}
