//! x86_64 GEMM microkernels: AVX-512 (12 x 32 tile) and AVX2 + FMA (6 x 16 tile).
//!
//! Both keep the whole output tile in registers (24 zmm, or 12 ymm) and, per depth step, load
//! two vectors of `B` and broadcast `MR` values of `A`: two FMAs per load, as the FMA units
//! need.

use std::arch::x86_64::*;

use super::gemm::Microkernel;

pub(super) const AVX512: Microkernel = Microkernel {
    mr: 12,
    nr: 32,
    run: avx512_12x32,
    run_rows: avx512_12x32_rows,
};

pub(super) const AVX2: Microkernel = Microkernel {
    mr: 6,
    nr: 16,
    run: avx2_6x16,
    run_rows: avx2_6x16_rows,
};

/// # Safety
/// See [`Microkernel::run`]; the CPU must have AVX-512F.
#[target_feature(enable = "avx512f")]
unsafe fn avx512_12x32(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    const MR: usize = 12;
    let mut acc = [_mm512_setzero_ps(); 2 * MR];
    for p in 0..kc {
        // SAFETY: p < kc, so both loads and all MR broadcasts are inside the packed operands.
        unsafe {
            let b0 = _mm512_loadu_ps(b.add(p * 32));
            let b1 = _mm512_loadu_ps(b.add(p * 32 + 16));
            let ap = a.add(p * MR);
            for i in 0..MR {
                let ai = _mm512_set1_ps(*ap.add(i));
                acc[2 * i] = _mm512_fmadd_ps(ai, b0, acc[2 * i]);
                acc[2 * i + 1] = _mm512_fmadd_ps(ai, b1, acc[2 * i + 1]);
            }
        }
    }
    for (i, v) in acc.iter().enumerate() {
        // SAFETY: vector i is row i / 2, columns 16 (i % 2) ..+16, inside the tile.
        unsafe {
            let at = c.add((i / 2) * ldc + 16 * (i % 2));
            let v = if accumulate {
                _mm512_add_ps(*v, _mm512_loadu_ps(at))
            } else {
                *v
            };
            _mm512_storeu_ps(at, v);
        }
    }
}

/// # Safety
/// See [`Microkernel::run`]; the CPU must have AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2_6x16(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    const MR: usize = 6;
    let mut acc = [_mm256_setzero_ps(); 2 * MR];
    for p in 0..kc {
        // SAFETY: p < kc, so both loads and all MR broadcasts are inside the packed operands.
        unsafe {
            let b0 = _mm256_loadu_ps(b.add(p * 16));
            let b1 = _mm256_loadu_ps(b.add(p * 16 + 8));
            let ap = a.add(p * MR);
            for i in 0..MR {
                let ai = _mm256_broadcast_ss(&*ap.add(i));
                acc[2 * i] = _mm256_fmadd_ps(ai, b0, acc[2 * i]);
                acc[2 * i + 1] = _mm256_fmadd_ps(ai, b1, acc[2 * i + 1]);
            }
        }
    }
    for (i, v) in acc.iter().enumerate() {
        // SAFETY: vector i is row i / 2, columns 8 (i % 2) ..+8, inside the tile.
        unsafe {
            let at = c.add((i / 2) * ldc + 8 * (i % 2));
            let v = if accumulate {
                _mm256_add_ps(*v, _mm256_loadu_ps(at))
            } else {
                *v
            };
            _mm256_storeu_ps(at, v);
        }
    }
}

/// [`avx512_12x32`] reading `a` in place, rows `lda` apart.
///
/// # Safety
/// See [`Microkernel::run_rows`]; the CPU must have AVX-512F.
#[target_feature(enable = "avx512f")]
unsafe fn avx512_12x32_rows(
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    const MR: usize = 12;
    let mut acc = [_mm512_setzero_ps(); 2 * MR];
    // SAFETY: rows i < MR start inside the operand (the caller's contract).
    let rows: [*const f32; MR] = std::array::from_fn(|i| unsafe { a.add(i * lda) });
    for p in 0..kc {
        // SAFETY: p < kc, so both loads and all MR broadcasts are inside the operands.
        unsafe {
            let b0 = _mm512_loadu_ps(b.add(p * 32));
            let b1 = _mm512_loadu_ps(b.add(p * 32 + 16));
            for i in 0..MR {
                let ai = _mm512_set1_ps(*rows[i].add(p));
                acc[2 * i] = _mm512_fmadd_ps(ai, b0, acc[2 * i]);
                acc[2 * i + 1] = _mm512_fmadd_ps(ai, b1, acc[2 * i + 1]);
            }
        }
    }
    for (i, v) in acc.iter().enumerate() {
        // SAFETY: vector i is row i / 2, columns 16 (i % 2) ..+16, inside the tile.
        unsafe {
            let at = c.add((i / 2) * ldc + 16 * (i % 2));
            let v = if accumulate {
                _mm512_add_ps(*v, _mm512_loadu_ps(at))
            } else {
                *v
            };
            _mm512_storeu_ps(at, v);
        }
    }
}

/// [`avx2_6x16`] reading `a` in place, rows `lda` apart.
///
/// # Safety
/// See [`Microkernel::run_rows`]; the CPU must have AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2_6x16_rows(
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    const MR: usize = 6;
    let mut acc = [_mm256_setzero_ps(); 2 * MR];
    // SAFETY: rows i < MR start inside the operand (the caller's contract).
    let rows: [*const f32; MR] = std::array::from_fn(|i| unsafe { a.add(i * lda) });
    for p in 0..kc {
        // SAFETY: p < kc, so both loads and all MR broadcasts are inside the operands.
        unsafe {
            let b0 = _mm256_loadu_ps(b.add(p * 16));
            let b1 = _mm256_loadu_ps(b.add(p * 16 + 8));
            for i in 0..MR {
                let ai = _mm256_broadcast_ss(&*rows[i].add(p));
                acc[2 * i] = _mm256_fmadd_ps(ai, b0, acc[2 * i]);
                acc[2 * i + 1] = _mm256_fmadd_ps(ai, b1, acc[2 * i + 1]);
            }
        }
    }
    for (i, v) in acc.iter().enumerate() {
        // SAFETY: vector i is row i / 2, columns 8 (i % 2) ..+8, inside the tile.
        unsafe {
            let at = c.add((i / 2) * ldc + 8 * (i % 2));
            let v = if accumulate {
                _mm256_add_ps(*v, _mm256_loadu_ps(at))
            } else {
                *v
            };
            _mm256_storeu_ps(at, v);
        }
    }
}
