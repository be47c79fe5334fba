//! aarch64 GEMM microkernel: NEON, an 8 x 8 tile in 16 q registers.

use std::arch::aarch64::*;

use super::gemm::{store_tile, Microkernel, Store};

pub(super) const NEON: Microkernel = Microkernel {
    mr: 8,
    nr: 8,
    run: neon_8x8,
    run_short: None,
    run_rows: neon_8x8_rows,
};

/// # Safety
/// See [`Microkernel::run`]; NEON is part of the aarch64 baseline.
#[target_feature(enable = "neon")]
unsafe fn neon_8x8(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    store: &Store,
) {
    const MR: usize = 8;
    let mut acc = [vdupq_n_f32(0.0); 2 * MR];
    for p in 0..kc {
        // SAFETY: p < kc, so the loads are inside the packed operands.
        unsafe {
            let b0 = vld1q_f32(b.add(p * 8));
            let b1 = vld1q_f32(b.add(p * 8 + 4));
            let a0 = vld1q_f32(a.add(p * MR));
            let a1 = vld1q_f32(a.add(p * MR + 4));
            macro_rules! row {
                ($i:expr, $a:expr, $lane:expr) => {
                    acc[2 * $i] = vfmaq_laneq_f32::<$lane>(acc[2 * $i], b0, $a);
                    acc[2 * $i + 1] = vfmaq_laneq_f32::<$lane>(acc[2 * $i + 1], b1, $a);
                };
            }
            row!(0, a0, 0);
            row!(1, a0, 1);
            row!(2, a0, 2);
            row!(3, a0, 3);
            row!(4, a1, 0);
            row!(5, a1, 1);
            row!(6, a1, 2);
            row!(7, a1, 3);
        }
    }
    // SAFETY: the caller's contract is `store_neon`'s.
    unsafe { store_neon(&acc, c, ldc, store) };
}

/// [`neon_8x8`] reading `a` in place, rows `lda` apart.
///
/// # Safety
/// See [`Microkernel::run_rows`]; NEON is part of the aarch64 baseline.
#[target_feature(enable = "neon")]
unsafe fn neon_8x8_rows(
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    store: &Store,
) {
    const MR: usize = 8;
    let mut acc = [vdupq_n_f32(0.0); 2 * MR];
    // SAFETY: rows i < MR start inside the operand (the caller's contract).
    let rows: [*const f32; MR] = std::array::from_fn(|i| unsafe { a.add(i * lda) });
    for p in 0..kc {
        // SAFETY: p < kc, so the loads are inside the operands.
        unsafe {
            let b0 = vld1q_f32(b.add(p * 8));
            let b1 = vld1q_f32(b.add(p * 8 + 4));
            for i in 0..MR {
                let ai = *rows[i].add(p);
                acc[2 * i] = vfmaq_n_f32(acc[2 * i], b0, ai);
                acc[2 * i + 1] = vfmaq_n_f32(acc[2 * i + 1], b1, ai);
            }
        }
    }
    // SAFETY: the caller's contract is `store_neon`'s.
    unsafe { store_neon(&acc, c, ldc, store) };
}

/// Writes the 8 x 8 tile held in `acc` (vector `i` is row `i / 2`, columns `4 (i % 2)..+4`):
/// a whole tile without epilogue straight from the registers, anything else through
/// [`store_tile`].
///
/// # Safety
/// See [`Microkernel::run`].
#[target_feature(enable = "neon")]
unsafe fn store_neon(acc: &[float32x4_t; 16], c: *mut f32, ldc: usize, store: &Store) {
    if store.rows == 8 && store.cols == 8 && !store.has_epilogue() {
        for (i, v) in acc.iter().enumerate() {
            // SAFETY: vector i is row i / 2, columns 4 (i % 2) ..+4, inside the tile.
            unsafe {
                let at = c.add((i / 2) * ldc + 4 * (i % 2));
                let v = if store.accumulate {
                    vaddq_f32(*v, vld1q_f32(at))
                } else {
                    *v
                };
                vst1q_f32(at, v);
            }
        }
        return;
    }
    let mut tile = [0f32; 64];
    for (i, v) in acc.iter().enumerate() {
        // SAFETY: four values at 4 i, inside the 64.
        unsafe { vst1q_f32(tile.as_mut_ptr().add(4 * i), *v) };
    }
    // SAFETY: the caller's contract.
    unsafe { store_tile(&tile, 8, c, ldc, store) };
}
