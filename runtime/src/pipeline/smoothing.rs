//! Temporal smoothing: from noisy per-frame class probabilities to a digit that does not
//! flicker.
//!
//! Each frame updates an exponential moving average (EMA) of the probabilities. The EMA's best
//! class becomes the *candidate* when its smoothed probability reaches `enter_threshold`; the
//! digit shown stays while its smoothed probability is at least `exit_threshold` (hysteresis:
//! `exit < enter`, so a probability hovering near one threshold does not toggle); otherwise the
//! candidate is "no sign". The shown digit changes to the candidate only after the candidate
//! has been the same for `hold_frames` consecutive frames and for `hold_ms` of frame time, and
//! each change is one [`SignChanged`] event. A shown digit whose support has gone (it is not
//! the candidate) for `hold_frames` frames and `hold_ms` is given up for "no sign" on a frame
//! where the candidate is "no sign", even if the candidate alternated in between.

use crate::error::{Error, Result};

/// The smoothing knobs. `Default` suits a 15-30 fps camera.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SmoothingOptions {
    /// Weight of the newest frame in the EMA, in `(0, 1]`; 1 disables averaging.
    pub alpha: f32,
    /// Smoothed probability at which a class may become the shown digit.
    pub enter_threshold: f32,
    /// Smoothed probability below which the shown digit is given up (at most `enter_threshold`).
    pub exit_threshold: f32,
    /// Consecutive frames a new candidate must last before it is shown (at least 1).
    pub hold_frames: u32,
    /// Frame time (from the frames' timestamps) a new candidate must last, milliseconds.
    pub hold_ms: u64,
}

impl Default for SmoothingOptions {
    fn default() -> Self {
        Self {
            alpha: 0.5,
            enter_threshold: 0.6,
            exit_threshold: 0.4,
            hold_frames: 3,
            hold_ms: 0,
        }
    }
}

/// The longest hold, frames: over nine hours at 30 fps.
pub const MAX_HOLD_FRAMES: u32 = 1_000_000;

impl SmoothingOptions {
    /// Checks the ranges documented on each field.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::InvalidOption(what));
        if !(self.alpha > 0.0 && self.alpha <= 1.0) {
            return bad(format!("smoothing alpha {} is not in (0, 1]", self.alpha));
        }
        if !(0.0..=1.0).contains(&self.enter_threshold)
            || !(0.0..=self.enter_threshold).contains(&self.exit_threshold)
        {
            return bad(format!(
                "thresholds must satisfy 0 <= exit ({}) <= enter ({}) <= 1",
                self.exit_threshold, self.enter_threshold
            ));
        }
        if self.hold_frames == 0 {
            return bad("hold_frames must be at least 1".into());
        }
        if self.hold_frames > MAX_HOLD_FRAMES {
            return bad(format!(
                "hold_frames {} is over the limit of {MAX_HOLD_FRAMES}",
                self.hold_frames
            ));
        }
        Ok(())
    }

    /// The frame (counting the first frame of the new sign as 1) by which a change to a sign
    /// the model gives probability at least `p` on every frame is reported, when `hold_ms` is
    /// met: frames for the EMA to reach `enter_threshold`, plus the hold. `None` if `p` never
    /// reaches the threshold.
    pub fn frames_to_report(&self, p: f32) -> Option<u32> {
        if p < self.enter_threshold || p <= 0.0 {
            return None;
        }
        let mut ema = 0.0f32;
        for k in 1..=10_000u32 {
            ema = self.alpha * p + (1.0 - self.alpha) * ema;
            if ema >= self.enter_threshold {
                return Some(k + self.hold_frames - 1);
            }
        }
        None
    }
}

/// The shown digit changed. `digit` is a class index (for the sign model, the digit itself);
/// `None` means "no sign".
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SignChanged {
    pub digit: Option<usize>,
    /// Smoothed probability of `digit`; for "no sign", of the most probable class.
    pub confidence: f32,
    /// The timestamp of the frame that completed the change, microseconds.
    pub timestamp_us: u64,
}

/// The smoother's state after one frame.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Smoothed {
    /// The digit shown after this frame.
    pub digit: Option<usize>,
    /// Smoothed probability of `digit` (of the best class for "no sign").
    pub confidence: f32,
    /// Set on the frame where the shown digit changed.
    pub changed: Option<SignChanged>,
}

/// EMA, thresholds with hysteresis, and hold. One per stream; feed frames in order.
#[derive(Clone, Debug)]
pub struct Smoother {
    options: SmoothingOptions,
    ema: Vec<f32>,
    shown: Option<usize>,
    pending: Option<Option<usize>>,
    pending_frames: u32,
    pending_since_us: u64,
    /// Consecutive frames (and since when) the candidate has not been the shown digit.
    away_frames: u32,
    away_since_us: u64,
}

impl Smoother {
    pub fn new(options: SmoothingOptions) -> Result<Self> {
        options.validate()?;
        Ok(Self {
            options,
            ema: Vec::new(),
            shown: None,
            pending: None,
            pending_frames: 0,
            pending_since_us: 0,
            away_frames: 0,
            away_since_us: 0,
        })
    }

    /// The digit shown now.
    pub fn digit(&self) -> Option<usize> {
        self.shown
    }

    /// Adds one frame's probabilities.
    pub fn update(&mut self, probabilities: &[f32], timestamp_us: u64) -> Smoothed {
        let o = &self.options;
        if self.ema.len() != probabilities.len() {
            // The first frame (or a model with another class count) starts the average afresh.
            self.ema.clear();
            self.ema.extend_from_slice(probabilities);
            self.shown = self.shown.filter(|&d| d < probabilities.len());
        } else {
            for (e, &p) in self.ema.iter_mut().zip(probabilities) {
                *e += o.alpha * (p - *e);
            }
        }
        let (best, best_p) = self
            .ema
            .iter()
            .copied()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap_or((0, 0.0));
        let candidate = if best_p >= o.enter_threshold && !self.ema.is_empty() {
            Some(best)
        } else {
            self.shown.filter(|&d| self.ema[d] >= o.exit_threshold)
        };
        let confidence_of = |d: Option<usize>, ema: &[f32]| d.map_or(best_p, |d| ema[d]);
        let mut changed = None;
        if candidate == self.shown {
            self.pending = None;
            self.away_frames = 0;
        } else {
            if self.pending != Some(candidate) {
                self.pending = Some(candidate);
                self.pending_frames = 0;
                self.pending_since_us = timestamp_us;
            }
            if self.away_frames == 0 {
                self.away_since_us = timestamp_us;
            }
            self.pending_frames += 1;
            self.away_frames += 1;
            let held_ms = timestamp_us.saturating_sub(self.pending_since_us) / 1000;
            let away_ms = timestamp_us.saturating_sub(self.away_since_us) / 1000;
            // A digit that has lost its support (below `exit_threshold`) for the whole hold is
            // given up even when what replaces it is not yet steady (a new sign the model is
            // unsure of, alternating with "no sign"): otherwise the stale digit would stay on
            // screen at a few percent, and the next sign would reach it through a "no sign"
            // step, a change the user never made (issue 6, replay of the test photos).
            let next = if self.pending_frames >= o.hold_frames && held_ms >= o.hold_ms {
                Some(candidate)
            } else if self.shown.is_some()
                && candidate.is_none()
                && self.away_frames >= o.hold_frames
                && away_ms >= o.hold_ms
            {
                Some(None)
            } else {
                None
            };
            if let Some(next) = next {
                self.shown = next;
                self.pending = None;
                self.away_frames = 0;
                changed = Some(SignChanged {
                    digit: next,
                    confidence: confidence_of(next, &self.ema),
                    timestamp_us,
                });
            }
        }
        Smoothed {
            digit: self.shown,
            confidence: confidence_of(self.shown, &self.ema),
            changed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A probability row: `p` on `digit`, the rest spread evenly.
    fn row(digit: usize, p: f32) -> Vec<f32> {
        let mut v = vec![(1.0 - p) / 9.0; 10];
        v[digit] = p;
        v
    }

    /// A deterministic pseudo-random number in [0, 1) (xorshift), so the tests need no crate.
    fn rand(state: &mut u64) -> f32 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        (*state >> 40) as f32 / (1u64 << 24) as f32
    }

    fn feed(s: &mut Smoother, rows: impl IntoIterator<Item = Vec<f32>>) -> Vec<SignChanged> {
        let mut events = Vec::new();
        for (i, r) in rows.into_iter().enumerate() {
            events.extend(s.update(&r, i as u64 * 33_000).changed);
        }
        events
    }

    #[test]
    fn alternating_noise_never_flips_the_digit() {
        let mut s = Smoother::new(SmoothingOptions::default()).unwrap();
        let settle = feed(&mut s, (0..10).map(|_| row(4, 0.95)));
        assert_eq!(settle.len(), 1);
        assert_eq!(s.digit(), Some(4));
        // Every other frame the model is confidently wrong, each time about another digit.
        let mut seed = 0x9E37_79B9_7F4A_7C15;
        let noisy = (0..500).map(|i| {
            if i % 2 == 0 {
                row(4, 0.9)
            } else {
                let wrong = (4 + 1 + (rand(&mut seed) * 9.0) as usize) % 10;
                row(wrong, 0.95)
            }
        });
        assert_eq!(feed(&mut s, noisy), vec![], "noise changed the digit");
        assert_eq!(s.digit(), Some(4));
        // Two digits alternating from the start: neither is ever shown.
        let mut fresh = Smoother::new(SmoothingOptions::default()).unwrap();
        let events = feed(
            &mut fresh,
            (0..300).map(|i| row(if i % 2 == 0 { 2 } else { 7 }, 0.9)),
        );
        assert!(events.iter().all(|e| e.digit.is_none()), "{events:?}");
    }

    #[test]
    fn a_true_change_is_reported_within_the_bound() {
        for options in [
            SmoothingOptions::default(),
            SmoothingOptions {
                alpha: 0.3,
                hold_frames: 5,
                ..Default::default()
            },
            SmoothingOptions {
                alpha: 1.0,
                hold_frames: 1,
                ..Default::default()
            },
        ] {
            let mut s = Smoother::new(options).unwrap();
            feed(&mut s, (0..30).map(|_| row(1, 0.97)));
            assert_eq!(s.digit(), Some(1));
            // The new sign, with the model's confidence wandering between 0.9 and 1.
            let mut seed = 42;
            let bound = options.frames_to_report(0.9).unwrap();
            let mut reported = None;
            for k in 1..=40u32 {
                let p = 0.9 + 0.1 * rand(&mut seed);
                if let Some(e) = s.update(&row(6, p), 1_000_000 + u64::from(k)).changed {
                    assert_eq!(e.digit, Some(6), "{options:?}: went through {e:?}");
                    reported = Some(k);
                    break;
                }
            }
            let k = reported.expect("the change was never reported");
            assert!(
                k <= bound,
                "{options:?}: reported at frame {k}, bound {bound}"
            );
            assert!(k >= options.hold_frames, "reported before the hold");
        }
    }

    #[test]
    fn low_confidence_gives_no_sign() {
        let mut s = Smoother::new(SmoothingOptions::default()).unwrap();
        feed(&mut s, (0..10).map(|_| row(8, 0.9)));
        assert_eq!(s.digit(), Some(8));
        // The hand leaves: the model spreads its probability (best 0.3 < exit 0.4).
        let events = feed(&mut s, (0..10).map(|i| row(i % 10, 0.3)));
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].digit, None);
        assert!(events[0].confidence < 0.4);
        assert_eq!(s.digit(), None);
        // Never confident from the start: nothing is shown, no event.
        let mut fresh = Smoother::new(SmoothingOptions::default()).unwrap();
        assert_eq!(feed(&mut fresh, (0..50).map(|_| row(3, 0.5))), vec![]);
        assert_eq!(fresh.digit(), None);
    }

    #[test]
    fn hysteresis_keeps_a_digit_between_the_thresholds() {
        let mut s = Smoother::new(SmoothingOptions::default()).unwrap();
        feed(&mut s, (0..10).map(|_| row(5, 0.9)));
        // 0.5 is below enter (0.6) but above exit (0.4): the digit stays.
        assert_eq!(feed(&mut s, (0..50).map(|_| row(5, 0.5))), vec![]);
        assert_eq!(s.digit(), Some(5));
    }

    #[test]
    fn hold_ms_waits_for_frame_time() {
        let options = SmoothingOptions {
            hold_frames: 1,
            hold_ms: 100,
            alpha: 1.0,
            ..Default::default()
        };
        let mut s = Smoother::new(options).unwrap();
        // 10 ms apart: the change is due once 100 ms of frames have shown the sign.
        let when = (0..20u64)
            .find(|&i| s.update(&row(3, 0.9), i * 10_000).changed.is_some())
            .unwrap();
        assert_eq!(when, 10);
    }

    /// Issue 6 (replay of the test photos): a photo the model is unsure of, its probability
    /// hovering around `enter_threshold`, used to leave the previous digit on screen at a few
    /// percent, and the next sign then came through a "no sign" step. The stale digit is given
    /// up once it has had no support for the hold.
    #[test]
    fn a_stale_digit_is_given_up_when_the_next_sign_is_unsure() {
        let o = SmoothingOptions {
            alpha: 1.0,
            ..SmoothingOptions::default()
        };
        let mut s = Smoother::new(o).unwrap();
        let shown = feed(&mut s, (0..3).map(|_| row(6, 0.95)));
        assert_eq!(shown.last().unwrap().digit, Some(6));
        // 2 at 0.7 (a candidate) and 0.5 (not enough) in turn: never steady for 3 frames.
        let unsure = (0..8).map(|i| row(2, if i % 2 == 0 { 0.7 } else { 0.5 }));
        let events = feed(&mut s, unsure);
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].digit, None);
        assert_eq!(s.digit(), None);
    }

    #[test]
    fn bad_options_are_refused() {
        for o in [
            SmoothingOptions {
                alpha: 0.0,
                ..Default::default()
            },
            SmoothingOptions {
                exit_threshold: 0.7,
                ..Default::default()
            },
            SmoothingOptions {
                hold_frames: 0,
                ..Default::default()
            },
        ] {
            assert!(matches!(Smoother::new(o), Err(Error::InvalidOption(_))));
        }
    }
}
