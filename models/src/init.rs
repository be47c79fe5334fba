//! Seeded, platform-independent weights for tests, golden references and demos.
//!
//! The generator is splitmix64, keyed per tensor by its name, and is specified so that a numpy
//! script produces the same bits (`models/reference/golden.py`):
//!
//! - `seed_t = seed ^ fnv1a64(name)`; element `i` (row-major) gets
//!   `v = mix(seed_t + (i + 1) * 0x9E3779B97F4A7C15)` and `u = (v >> 11) * 2^-53` in `[0, 1)`;
//! - the value, computed in f64 and rounded to f32, depends on the tensor's [`Role`]:
//!   He-uniform `(2u - 1) * sqrt(6 / fan_in)` for weights, `(2u - 1) * 0.1` for biases, batch-norm
//!   shifts and means, `1 + (2u - 1) * 0.1` for batch-norm scales, `0.5 + u` for variances.

use std::collections::HashMap;

use candle_core::{Device, Tensor};

use crate::{Result, Role, TensorSpec};

const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `n` uniform numbers in `[0, 1)` for the tensor called `name`.
pub fn uniform(name: &str, n: usize, seed: u64) -> impl Iterator<Item = f64> {
    let seed_t = seed ^ fnv1a64(name.as_bytes());
    (0..n as u64).map(move |i| {
        let v = mix(seed_t.wrapping_add((i + 1).wrapping_mul(GOLDEN_GAMMA)));
        (v >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    })
}

/// The values of one tensor, as the spec in the module documentation defines them.
pub fn seeded_values(spec: &TensorSpec, seed: u64) -> Vec<f32> {
    let fan_in: usize = spec.shape.iter().skip(1).product();
    let he = (6.0 / fan_in.max(1) as f64).sqrt();
    uniform(&spec.name, spec.numel(), seed)
        .map(|u| {
            let v = match spec.role {
                Role::Weight => (2.0 * u - 1.0) * he,
                Role::Bias | Role::BnBias | Role::BnMean => (2.0 * u - 1.0) * 0.1,
                Role::BnWeight => 1.0 + (2.0 * u - 1.0) * 0.1,
                Role::BnVar => 0.5 + u,
            };
            v as f32
        })
        .collect()
}

/// Seeded weights for every tensor in `specs`, ready for `VarBuilder::from_tensors`.
pub fn seeded_weights(
    specs: &[TensorSpec],
    seed: u64,
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    specs
        .iter()
        .map(|spec| {
            let t = Tensor::from_vec(seeded_values(spec, seed), spec.shape.as_slice(), device)?;
            Ok((spec.name.clone(), t))
        })
        .collect()
}
