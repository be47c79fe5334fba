//! The portable GEMM microkernel: plain Rust, a 4 x 8 tile, for any target.

use super::gemm::{store_tile, Microkernel, Store};

pub(super) const PORTABLE: Microkernel = Microkernel {
    mr: MR,
    nr: NR,
    run: portable_4x8,
    run_short: None,
    run_rows: portable_4x8_rows,
};

const MR: usize = 4;
const NR: usize = 8;

/// # Safety
/// See [`Microkernel::run`].
unsafe fn portable_4x8(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    store: &Store,
) {
    // SAFETY: the caller guarantees the sizes of the two operands.
    let (a, b) = unsafe {
        (
            std::slice::from_raw_parts(a, kc * MR),
            std::slice::from_raw_parts(b, kc * NR),
        )
    };
    let mut acc = [[0f32; NR]; MR];
    for (ap, bp) in a.chunks_exact(MR).zip(b.chunks_exact(NR)) {
        for (row, &ai) in acc.iter_mut().zip(ap) {
            for (v, &bj) in row.iter_mut().zip(bp) {
                *v += ai * bj;
            }
        }
    }
    // SAFETY: the caller's contract is `store_tile`'s.
    unsafe { store_tile(acc.as_flattened(), NR, c, ldc, store) };
}

/// [`portable_4x8`] reading `a` in place, rows `lda` apart.
///
/// # Safety
/// See [`Microkernel::run_rows`].
unsafe fn portable_4x8_rows(
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    store: &Store,
) {
    // SAFETY: the caller guarantees rows i < MR hold kc values from `a + i * lda`, and kc*NR
    // values of `b`.
    let (rows, b): ([&[f32]; MR], _) = unsafe {
        (
            std::array::from_fn(|i| std::slice::from_raw_parts(a.add(i * lda), kc)),
            std::slice::from_raw_parts(b, kc * NR),
        )
    };
    let mut acc = [[0f32; NR]; MR];
    for (p, bp) in b.chunks_exact(NR).enumerate() {
        for (row, a) in acc.iter_mut().zip(&rows) {
            let ai = a[p];
            for (v, &bj) in row.iter_mut().zip(bp) {
                *v += ai * bj;
            }
        }
    }
    // SAFETY: the caller's contract is `store_tile`'s.
    unsafe { store_tile(acc.as_flattened(), NR, c, ldc, store) };
}
