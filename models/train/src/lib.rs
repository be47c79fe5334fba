//! Training for edgemm's models: a crate of its own, so that neither the firmware library
//! (`edgemm`) nor the inference crate (`edgemm-models`) carries it. The `edgemm-train` binary
//! (`src/bin/edgemm-train`) trains the shipped artifacts with it.
//!
//! The pieces a training loop needs and candle-nn lacks or keeps private:
//!
//! - [`Rng`]: a seeded splitmix64 generator for shuffling, augmentation and dropout masks, so a
//!   run is reproducible bit for bit and resumes into the same sequence;
//! - [`LrSchedule`]: learning rate per step (constant, or linear warm-up then cosine decay);
//! - [`optim`]: AdamW and SGD with momentum whose state can be saved and restored;
//! - [`checkpoint`]: one safetensors file per epoch (weights and optimiser state) plus a JSON
//!   record, written atomically, and the latest one found again on resume;
//! - [`alexnet_small`]: alexnet-small with a train mode (batch statistics, dropout), holding its
//!   weights in a `VarMap` under exactly the inference names, so a trained `VarMap` saves
//!   straight into an artifact;
//! - [`efficientnet_lite0`]: EfficientNet-Lite0 as candle modules, cut for transfer learning;
//! - [`kernels`]: train-mode kernels with hand-written gradients, and [`layers`], the
//!   inference crate's convolutions switchable to them.

pub mod alexnet_small;
pub mod checkpoint;
pub mod efficientnet_lite0;
pub mod kernels;
pub mod layers;
pub mod optim;

use candle_core::{Tensor, D};

use edgemm_models::Result;

/// splitmix64, the generator [`edgemm_models::init`] also uses; seeded per purpose so that, e.g., the
/// shuffle of epoch 7 does not depend on how many dropout masks epochs 0..7 drew.
#[derive(Clone, Debug)]
pub struct Rng {
    state: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// A generator for one purpose (`stream`) of one run (`seed`), e.g. `(seed, epoch)`.
    pub fn derive(seed: u64, stream: u64) -> Self {
        Self::new(edgemm_models::init::mix(
            seed ^ edgemm_models::init::mix(stream.wrapping_add(1)),
        ))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        edgemm_models::init::mix(self.state)
    }

    /// Uniform in `[0, 1)`.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `0..n` (n > 0). The modulo bias is below 2^-40 for any n used here.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Fisher-Yates.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
}

/// The order of `n` examples in epoch `epoch` of run `seed`: a function of the three alone, so
/// a resumed run visits the examples in the order an uninterrupted one would.
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    Rng::derive(seed, epoch as u64).shuffle(&mut order);
    order
}

/// Learning rate as a function of the optimisation step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LrSchedule {
    Constant(f64),
    /// Linear warm-up from `peak / 10` over `warmup` steps, then half a cosine from `peak` down
    /// to `floor` at step `total`.
    WarmupCosine {
        peak: f64,
        floor: f64,
        warmup: usize,
        total: usize,
    },
}

impl LrSchedule {
    pub fn at(&self, step: usize) -> f64 {
        match *self {
            LrSchedule::Constant(lr) => lr,
            LrSchedule::WarmupCosine {
                peak,
                floor,
                warmup,
                total,
            } => {
                if step < warmup {
                    let t = (step + 1) as f64 / warmup as f64;
                    peak * (0.1 + 0.9 * t)
                } else {
                    let span = total.saturating_sub(warmup).max(1);
                    let t = ((step - warmup) as f64 / span as f64).min(1.0);
                    floor + 0.5 * (peak - floor) * (1.0 + (std::f64::consts::PI * t).cos())
                }
            }
        }
    }
}

/// How many of `logits`' rows have their arg-max at `targets` (u32).
pub fn correct(logits: &Tensor, targets: &Tensor) -> Result<usize> {
    let hits = logits
        .argmax(D::Minus1)?
        .eq(targets)?
        .to_dtype(candle_core::DType::U32)?
        .sum_all()?
        .to_scalar::<u32>()?;
    Ok(hits as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_order_is_a_seeded_permutation() {
        let a = epoch_order(1000, 3, 5);
        assert_eq!(a, epoch_order(1000, 3, 5));
        assert_ne!(a, epoch_order(1000, 3, 6));
        assert_ne!(a, epoch_order(1000, 4, 5));
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn warmup_cosine_rises_then_falls_to_the_floor() {
        let s = LrSchedule::WarmupCosine {
            peak: 1.0,
            floor: 0.01,
            warmup: 10,
            total: 110,
        };
        assert!((s.at(0) - 0.19).abs() < 1e-9);
        assert!((s.at(9) - 1.0).abs() < 1e-9);
        assert!((s.at(10) - 1.0).abs() < 1e-9);
        assert!((s.at(60) - 0.505).abs() < 1e-9);
        assert!((s.at(110) - 0.01).abs() < 1e-9);
        assert!((s.at(500) - 0.01).abs() < 1e-9);
    }
}
