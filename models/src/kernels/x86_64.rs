//! x86_64 GEMM microkernels: AVX-512 (12 x 32 tile) and AVX2 + FMA (6 x 16 tile).
//!
//! Both keep the whole output tile in registers (24 zmm, or 12 ymm) and, per depth step, load
//! two vectors of `B` and broadcast `MR` values of `A`: two FMAs per load, as the FMA units
//! need. Both prefetch their strip of `B` ahead and the next block into L2, and multiply only
//! the rows of a last, short panel.

use std::arch::x86_64::*;

use super::gemm::{Microkernel, Store};
use super::{Activation, PostOp};

/// Calls `$panel::<R>` for a short panel's `R = $rows` rows (one of the listed counts), or
/// for the whole panel's `$full`: the short-panel kernels' dispatch.
macro_rules! short_panel {
    ($panel:ident, $rows:expr, $args:tt, $($r:literal)*; $full:literal) => {
        match $rows {
            $($r => $panel::<$r> $args,)*
            _ => $panel::<$full> $args,
        }
    };
}

/// Calls `$whole::<..., ACC, EPI>(args)` with `store`'s choices as constants: the
/// whole-tile stores' dispatch, made once per tile. `ACC` adds what `C` holds, `EPI` applies
/// the epilogue (bias, then `store.fused`'s operations, each over the whole tile).
macro_rules! whole_tile {
    ($whole:ident::<$($g:ident),*>$args:tt, $store:expr) => {{
        let store: &Store = $store;
        match (store.accumulate, store.has_epilogue()) {
            (false, false) => $whole::<$($g,)* false, false>$args,
            (true, false) => $whole::<$($g,)* true, false>$args,
            (false, true) => $whole::<$($g,)* false, true>$args,
            (true, true) => $whole::<$($g,)* true, true>$args,
        }
    }};
}

/// Runs `$body` on every vector `$v` (`&mut`) of the tile `$tile` (`[[_; 2]; R]`, the first
/// `$halves` of each pair), `$i` its row and `$h` its half; rows by constant index, so that
/// the tile stays in registers.
macro_rules! each_vector {
    ($tile:ident, $halves:expr, |$v:ident, $i:ident, $h:ident| $body:block) => {
        each_vector!(@rows [0 1 2 3 4 5 6 7 8 9 10 11] $tile, $halves, $v, $i, $h, $body)
    };
    (@rows [$($row:literal)*] $tile:ident, $halves:expr, $v:ident, $i:ident, $h:ident, $body:block) => {{$(
        if let Some(pair) = $tile.get_mut($row) {
            let $i: usize = $row;
            for ($h, $v) in pair.iter_mut().enumerate().take($halves) $body
        }
    )*}};
}

/// The AVX-512 and AVX2 forms of the epilogue's activations, as macros so that they expand
/// inside the stores' `target_feature` code. `max`/`min` return their second operand when
/// one is NaN: NaN stays NaN through ReLU6 and hard-swish, as `f32::clamp` keeps it, and
/// ReLU maps it to 0, as `f32::max` does. Hard-swish is `x * (relu6(x + 3) * 1/6)`, the
/// order of [`super::hard_swish`].
macro_rules! relu {
    (512, $v:expr) => {
        _mm512_max_ps($v, _mm512_setzero_ps())
    };
    (256, $v:expr) => {
        _mm256_max_ps($v, _mm256_setzero_ps())
    };
}

macro_rules! relu6 {
    (512, $v:expr) => {
        _mm512_min_ps(_mm512_set1_ps(6.0), _mm512_max_ps(_mm512_setzero_ps(), $v))
    };
    (256, $v:expr) => {
        _mm256_min_ps(_mm256_set1_ps(6.0), _mm256_max_ps(_mm256_setzero_ps(), $v))
    };
}

macro_rules! hard_swish {
    (512, $v:expr) => {{
        let v = $v;
        let gate = relu6!(512, _mm512_add_ps(v, _mm512_set1_ps(3.0)));
        _mm512_mul_ps(v, _mm512_mul_ps(gate, _mm512_set1_ps(1.0 / 6.0)))
    }};
    (256, $v:expr) => {{
        let v = $v;
        let gate = relu6!(256, _mm256_add_ps(v, _mm256_set1_ps(3.0)));
        _mm256_mul_ps(v, _mm256_mul_ps(gate, _mm256_set1_ps(1.0 / 6.0)))
    }};
}

pub(super) const AVX512: Microkernel = Microkernel {
    mr: 12,
    nr: 32,
    run: avx512_12x32,
    run_short: Some(avx512_short),
    run_rows: avx512_12x32_rows,
};

pub(super) const AVX2: Microkernel = Microkernel {
    mr: 6,
    nr: 16,
    run: avx2_6x16,
    run_short: Some(avx2_short),
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
    store: &Store,
) {
    // SAFETY: the caller's contract, with all 12 rows.
    unsafe { avx512_panel::<12>(kc, a, b, c, ldc, store) }
}

/// How far ahead of depth `p` the microkernels ask for their strip of `B`, in depths (of
/// 32 values, two cache lines, on AVX-512; of 16, one line, on AVX2). A strip's block is read from L3 by the first panel
/// that multiplies it (the weights of a whole network do not stay in L2 from one forward to
/// the next), and on few-row products, such as the 49 rows of a 7x7 map, that first pass
/// is much of the work.
const B_PREFETCH_DEPTHS: usize = 16;

/// Prefetches the first `LINES` cache lines of depth `p + B_PREFETCH_DEPTHS` of a strip `NR`
/// columns wide (32 on AVX-512, two lines; 16 on AVX2, one): a half tile asks for the half it
/// reads. A prefetch never faults, so it may run past the strip's end (into the next block).
#[inline(always)]
unsafe fn prefetch_strip<const NR: usize, const LINES: usize>(b: *const f32, p: usize) {
    let at = b.wrapping_add((p + B_PREFETCH_DEPTHS) * NR).cast::<i8>();
    // SAFETY: prefetches have no architectural effect beyond the cache; the address is
    // formed with wrapping arithmetic and never dereferenced.
    unsafe {
        for line in 0..LINES {
            _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(64 * line));
        }
    }
}

/// Asks depth `p` of this panel's share of the next block of `B` (`next`, `depths` deep,
/// strips `NR` wide; see [`Store::next_b`]) into L2: the next strip's block arrives while
/// this one is multiplied from L1, instead of stalling the next strip's first panel.
#[inline(always)]
unsafe fn prefetch_next<const NR: usize>(next: *const f32, depths: usize, p: usize) {
    if p < depths {
        let at = next.wrapping_add(p * NR).cast::<i8>();
        // SAFETY: as in `prefetch_strip`.
        unsafe {
            for line in 0..NR / 16 {
                _mm_prefetch::<_MM_HINT_T1>(at.wrapping_add(64 * line));
            }
        }
    }
}

/// [`avx512_12x32`] for a panel with only `rows` rows inside `C` (the last panel of a
/// product whose rows are not a multiple of 12): multiplies those rows only. A 7x7 map has
/// 49 rows, 4 whole panels and 1 row, so this saves most of a fifth of those products.
///
/// # Safety
/// See [`Microkernel::run`]; the CPU must have AVX-512F.
#[target_feature(enable = "avx512f")]
unsafe fn avx512_short(
    rows: usize,
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    store: &Store,
) {
    // SAFETY: every arm: the caller's contract; each kernel reads the first R rows of the
    // 12-row panel.
    unsafe {
        short_panel!(avx512_panel, rows, (kc, a, b, c, ldc, store), 1 2 3 4 5 6 7 8 9 10 11; 12)
    }
}

/// The first `R` rows of a packed 12-row panel times a 32-column strip. A strip with at most
/// 16 columns inside `C` (the last of 16, 40, 80, 112, 144 or 240 output channels)
/// multiplies its left half only, as on AVX2.
///
/// # Safety
/// See [`Microkernel::run`] (`a` is a 12-row panel); `R <= 12`; the CPU must have AVX-512F.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn avx512_panel<const R: usize>(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    store: &Store,
) {
    // SAFETY: the caller's contract; with `cols <= 16` the right half is never stored.
    unsafe {
        if store.cols <= 16 {
            avx512_strided::<R, 1>(kc, a, 12, 1, b, c, ldc, store)
        } else {
            avx512_strided::<R, 2>(kc, a, 12, 1, b, c, ldc, store)
        }
    }
}

/// `R` rows times the left `H` halves (of 16 columns; `H` is 1 or 2) of a 32-column strip,
/// row `i`'s depth `p` read at `a + p * step + i * row_step`: a packed 12-row panel has
/// `step` 12 and `row_step` 1, a row-major source read in place `step` 1 and `row_step` its
/// row length.
///
/// # Safety
/// As [`Microkernel::run`], with every such address readable for `i < R`, `p < kc`,
/// `store.rows <= R` and `store.cols <= 16 * H`; the CPU must have AVX-512F, and the caller
/// is compiled for it.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn avx512_strided<const R: usize, const H: usize>(
    kc: usize,
    a: *const f32,
    step: usize,
    row_step: usize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    store: &Store,
) {
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    // SAFETY: rows i < R start inside the operand (the caller's contract).
    let rows: [*const f32; R] = std::array::from_fn(|i| unsafe { a.add(i * row_step) });
    let (next, next_depths) = (store.next_b, store.next_depths);
    for p in 0..kc {
        // SAFETY: p < kc, so the loads and all R broadcasts are inside the operands.
        unsafe {
            prefetch_strip::<32, H>(b, p);
            prefetch_next::<32>(next, next_depths, p);
            let b0 = _mm512_loadu_ps(b.add(p * 32));
            let b1 = if H > 1 {
                _mm512_loadu_ps(b.add(p * 32 + 16))
            } else {
                b0
            };
            for (acc, row) in acc.iter_mut().zip(rows) {
                let ai = _mm512_set1_ps(*row.add(p * step));
                acc[0] = _mm512_fmadd_ps(ai, b0, acc[0]);
                if H > 1 {
                    acc[1] = _mm512_fmadd_ps(ai, b1, acc[1]);
                }
            }
        }
    }
    // SAFETY: the caller's contract is `store_avx512`'s, and `store.rows <= R`,
    // `store.cols <= 16 * H`.
    unsafe { store_avx512::<R, H>(&acc, c, ldc, store) };
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
    store: &Store,
) {
    // SAFETY: the caller's contract, with all 6 rows.
    unsafe { avx2_panel::<6>(kc, a, b, c, ldc, store) }
}

/// [`avx2_6x16`] for a panel with only `rows` rows inside `C`, as [`avx512_short`]: a 7x7
/// map's 49 rows are 8 whole panels and 1 row.
///
/// # Safety
/// See [`Microkernel::run`]; the CPU must have AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2_short(
    rows: usize,
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    store: &Store,
) {
    // SAFETY: every arm: the caller's contract; each kernel reads the first R rows of the
    // 6-row panel.
    unsafe { short_panel!(avx2_panel, rows, (kc, a, b, c, ldc, store), 1 2 3 4 5; 6) }
}

/// The first `R` rows of a packed 6-row panel times a 16-column strip, the strip asked for
/// [`B_PREFETCH_DEPTHS`] ahead and the next block into L2, as on AVX-512. A strip with at
/// most 8 columns inside `C` (the last of 24 or 40 output channels) multiplies its left half
/// only.
///
/// # Safety
/// See [`Microkernel::run`] (`a` is a 6-row panel); `R <= 6`; the CPU must have AVX2 and
/// FMA.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2_panel<const R: usize>(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    store: &Store,
) {
    // SAFETY: the caller's contract; with `cols <= 8` the right half is never stored.
    unsafe {
        if store.cols <= 8 {
            avx2_strided::<R, 1>(kc, a, 6, 1, b, c, ldc, store)
        } else {
            avx2_strided::<R, 2>(kc, a, 6, 1, b, c, ldc, store)
        }
    }
}

/// `R` rows times the left `H` halves (of 8 columns; `H` is 1 or 2) of a 16-column strip,
/// row `i`'s depth `p` read at `a + p * step + i * row_step`: a packed 6-row panel has
/// `step` 6 and `row_step` 1, a row-major source read in place `step` 1 and `row_step` its
/// row length.
///
/// # Safety
/// As [`Microkernel::run`], with every such address readable for `i < R`, `p < kc`,
/// `store.rows <= R` and `store.cols <= 8 * H`; the CPU must have AVX2 and FMA, and the
/// caller is compiled for it.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn avx2_strided<const R: usize, const H: usize>(
    kc: usize,
    a: *const f32,
    step: usize,
    row_step: usize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    store: &Store,
) {
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    // SAFETY: rows i < R start inside the operand (the caller's contract).
    let rows: [*const f32; R] = std::array::from_fn(|i| unsafe { a.add(i * row_step) });
    let (next, next_depths) = (store.next_b, store.next_depths);
    for p in 0..kc {
        // SAFETY: p < kc, so the loads and all R broadcasts are inside the operands.
        unsafe {
            prefetch_strip::<16, 1>(b, p);
            prefetch_next::<16>(next, next_depths, p);
            let b0 = _mm256_loadu_ps(b.add(p * 16));
            let b1 = if H > 1 {
                _mm256_loadu_ps(b.add(p * 16 + 8))
            } else {
                b0
            };
            for (acc, row) in acc.iter_mut().zip(rows) {
                let ai = _mm256_broadcast_ss(&*row.add(p * step));
                acc[0] = _mm256_fmadd_ps(ai, b0, acc[0]);
                if H > 1 {
                    acc[1] = _mm256_fmadd_ps(ai, b1, acc[1]);
                }
            }
        }
    }
    // SAFETY: the caller's contract is `store_avx2`'s, and `store.rows <= R`; with H = 1
    // the right half, left at zero, lies outside `C` and is not stored.
    unsafe { store_avx2(&acc, c, ldc, store) };
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
    store: &Store,
) {
    // SAFETY: the caller's contract: rows i < 12 at `a + i * lda`, depths 1 apart; with
    // `cols <= 16` the right half is never stored.
    unsafe {
        if store.cols <= 16 {
            avx512_strided::<12, 1>(kc, a, 1, lda, b, c, ldc, store)
        } else {
            avx512_strided::<12, 2>(kc, a, 1, lda, b, c, ldc, store)
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
    store: &Store,
) {
    // SAFETY: the caller's contract: rows i < 6 at `a + i * lda`, depths 1 apart; with
    // `cols <= 8` the right half is never stored.
    unsafe {
        if store.cols <= 8 {
            avx2_strided::<6, 1>(kc, a, 1, lda, b, c, ldc, store)
        } else {
            avx2_strided::<6, 2>(kc, a, 1, lda, b, c, ldc, store)
        }
    }
}

/// Writes the `R` x `16 H` tile held in `acc` (`acc[i][h]` is row `i`, columns `16 h..+16`;
/// `H` is 1 for a half tile) as `store` says, in registers, the epilogue (bias, activation,
/// residual) applied on the way out. A whole tile (every tile but a product's edges) goes
/// through [`store_avx512_whole`], its choices made at compile time; an edge tile uses
/// masked loads and stores for the columns that exist (a masked-off lane is neither read nor
/// written, so it needs no scratch copy). Unlike AVX2's masked stores, AVX-512's are not
/// microcoded on Zen 4; what the whole-tile store saves is the per-vector tests.
///
/// Always inlined into the microkernel that calls it, and without a `target_feature` of its
/// own (which would forbid that): called out of line, it made the kernel keep its
/// accumulators in memory, zeroed with a `memset` on every call.
///
/// # Safety
/// See [`Microkernel::run`], with `store.cols <= 16 H`; the CPU must have AVX-512F, and the
/// caller is compiled for it.
#[inline(always)]
unsafe fn store_avx512<const R: usize, const H: usize>(
    acc: &[[__m512; 2]; R],
    c: *mut f32,
    ldc: usize,
    store: &Store,
) {
    if store.rows >= R && store.cols >= 16 * H {
        // SAFETY: the caller's contract; the tile's R rows and 16 H columns all exist.
        unsafe { whole_tile!(store_avx512_whole::<R, H>(acc, c, ldc, store), store) };
        return;
    }
    let lanes: u32 = if store.cols >= 32 {
        u32::MAX
    } else {
        (1 << store.cols) - 1
    };
    let mask = [lanes as u16, (lanes >> 16) as u16];
    let zero = _mm512_setzero_ps();
    // SAFETY (all loads and stores below): a lane is touched only when its mask bit is set,
    // that is for columns < cols of rows < rows, which the contract makes valid. Addresses
    // are formed with `wrapping_add`, as a wholly masked-off half may start past the end.
    let bias = if store.bias.is_null() {
        [zero; 2]
    } else {
        // SAFETY: a bias lane is read only where its mask bit is set (see above).
        std::array::from_fn(|h| unsafe {
            _mm512_maskz_loadu_ps(mask[h], store.bias.wrapping_add(16 * h))
        })
    };
    let epilogue = store.has_epilogue();
    // One row of the tile; a macro rather than a closure, which was not inlined and kept the
    // accumulators in memory.
    macro_rules! row {
        ($i:expr, $pair:expr) => {{
            let i: usize = $i;
            let pair: &[__m512; 2] = $pair;
            for (h, &v) in pair.iter().enumerate().take(H) {
                // SAFETY: only masked-in lanes of rows < rows are read and written (see above).
                unsafe {
                    let at = c.wrapping_add(i * ldc + 16 * h);
                    let mut v = v;
                    if store.accumulate {
                        v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask[h], at));
                    }
                    if epilogue {
                        v = _mm512_add_ps(v, bias[h]);
                        for op in store.fused.ops() {
                            v = match *op {
                                PostOp::Activation(Activation::None) => v,
                                PostOp::Activation(Activation::Relu) => relu!(512, v),
                                PostOp::Activation(Activation::Relu6) => relu6!(512, v),
                                PostOp::Activation(Activation::HardSwish) => {
                                    hard_swish!(512, v)
                                }
                                PostOp::Residual => {
                                    let r = store.residual.wrapping_add(i * store.ldr + 16 * h);
                                    _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask[h], r))
                                }
                            };
                        }
                    }
                    _mm512_mask_storeu_ps(at, mask[h], v);
                }
            }
        }};
    }
    // The rows by constant index, unrolled by hand: a loop over the rows indexes the
    // accumulators at run time, which keeps them in memory (zeroed with a `memset` and
    // spilled on every call).
    macro_rules! rows {
        ($($i:literal)*) => {$(
            if let Some(pair) = acc.get($i) {
                if $i < store.rows {
                    row!($i, pair);
                }
            }
        )*};
    }
    rows!(0 1 2 3 4 5 6 7 8 9 10 11);
}

/// [`store_avx512`] for a tile whose `R` rows and `16 H` columns all lie inside `C`, every
/// choice a constant (see [`whole_tile`]) or made once for the tile: plain loads and stores,
/// and each epilogue operation one branch for the tile, then straight-line code over its
/// vectors.
///
/// # Safety
/// As [`Microkernel::run`], with `store.rows >= R` and `store.cols >= 16 H`; the CPU must
/// have AVX-512F, and the caller is compiled for it.
#[inline(always)]
unsafe fn store_avx512_whole<const R: usize, const H: usize, const ACC: bool, const EPI: bool>(
    acc: &[[__m512; 2]; R],
    c: *mut f32,
    ldc: usize,
    store: &Store,
) {
    let mut tile = *acc;
    // SAFETY (all loads and stores below): rows < R <= store.rows and columns < 16 H <=
    // store.cols of the tile, the bias's 16 H values and the residual's tile (read for a
    // list that adds it, which then is not null), which the contract makes valid.
    if ACC {
        each_vector!(tile, H, |v, i, h| {
            // SAFETY: row i < R and columns 16 h..+16 lie inside the tile the contract makes valid.
            *v = _mm512_add_ps(*v, unsafe { _mm512_loadu_ps(c.add(i * ldc + 16 * h)) });
        });
    }
    if EPI {
        if !store.bias.is_null() {
            each_vector!(tile, H, |v, _i, h| {
                // SAFETY: the bias holds the tile's 16 H columns (the contract), and it is not null here.
                *v = _mm512_add_ps(*v, unsafe { _mm512_loadu_ps(store.bias.add(16 * h)) });
            });
        }
        for op in store.fused.ops() {
            match *op {
                PostOp::Activation(Activation::None) => {}
                PostOp::Activation(Activation::Relu) => {
                    each_vector!(tile, H, |v, _i, _h| { *v = relu!(512, *v) });
                }
                PostOp::Activation(Activation::Relu6) => {
                    each_vector!(tile, H, |v, _i, _h| { *v = relu6!(512, *v) });
                }
                PostOp::Activation(Activation::HardSwish) => {
                    each_vector!(tile, H, |v, _i, _h| { *v = hard_swish!(512, *v) });
                }
                PostOp::Residual => each_vector!(tile, H, |v, i, h| {
                    // SAFETY: a list that adds a residual has a non-null residual of the tile's shape (the contract).
                    let r = unsafe { _mm512_loadu_ps(store.residual.add(i * store.ldr + 16 * h)) };
                    *v = _mm512_add_ps(*v, r);
                }),
            }
        }
    }
    each_vector!(tile, H, |v, i, h| {
        // SAFETY: row i < R and columns 16 h..+16 lie inside the tile the contract makes valid.
        unsafe { _mm512_storeu_ps(c.add(i * ldc + 16 * h), *v) };
    });
}

/// [`store_avx512`] for an `R` x 16 AVX2 tile (`acc[i][h]` is row `i`, columns `8 h..+8`). A tile as wide as the strip is written with plain loads and stores;
/// only an edge tile uses AVX2's masked ones, because AMD's Zen cores run a masked store
/// (`vmaskmovps` to memory) as a microcoded sequence of tens of micro-ops: with masks on
/// every tile, the stores of a shallow product (the 1x1 expansions' 16-32 depths) took
/// longer than its multiply-adds.
///
/// # Safety
/// See [`Microkernel::run`]; the CPU must have AVX2, and the caller is compiled for it.
#[inline(always)]
unsafe fn store_avx2<const R: usize>(
    acc: &[[__m256; 2]; R],
    c: *mut f32,
    ldc: usize,
    store: &Store,
) {
    if store.rows >= R && store.cols >= 16 {
        // A whole tile: the case of every tile but a product's edges, with each choice of
        // the store made once per tile, at compile time, rather than per vector.
        // SAFETY: the caller's contract; the tile's R rows and 16 columns all exist.
        unsafe { whole_tile!(store_avx2_whole::<R>(acc, c, ldc, store), store) };
        return;
    }
    let first = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    // Lane j of half h is written when 8 h + j < cols.
    let mask: [__m256i; 2] = std::array::from_fn(|h| {
        let left = store.cols as i32 - 8 * h as i32;
        _mm256_cmpgt_epi32(_mm256_set1_epi32(left), first)
    });
    let zero = _mm256_setzero_ps();
    // SAFETY (all loads and stores below): a lane is touched only when its mask is set, that
    // is for columns < cols of rows < rows, which the contract makes valid. Addresses are
    // formed with `wrapping_add`, as a wholly masked-off half may start past the end.
    // A half whose eight lanes all exist is read and written with plain loads and stores
    // (see above), a half with none is skipped; only the half the edge cuts is masked.
    let full = [store.cols >= 8, store.cols >= 16];
    let used = [store.cols > 0, store.cols > 8];
    // Used inside `unsafe` blocks only, for a half `h` that is `used`.
    macro_rules! load {
        ($at:expr, $h:expr) => {
            if full[$h] {
                _mm256_loadu_ps($at)
            } else {
                _mm256_maskload_ps($at, mask[$h])
            }
        };
    }
    let bias = if store.bias.is_null() {
        [zero; 2]
    } else {
        let bias = store.bias;
        // SAFETY: as above.
        std::array::from_fn(|h| unsafe {
            if used[h] {
                load!(bias.wrapping_add(8 * h), h)
            } else {
                zero
            }
        })
    };
    let epilogue = store.has_epilogue();
    macro_rules! row {
        ($i:expr, $pair:expr) => {{
            let i: usize = $i;
            let pair: &[__m256; 2] = $pair;
            for (h, &v) in pair.iter().enumerate() {
                if !used[h] {
                    continue;
                }
                // SAFETY: only the halves marked used, inside the tile, are read and written (see above).
                unsafe {
                    let at = c.wrapping_add(i * ldc + 8 * h);
                    let mut v = v;
                    if store.accumulate {
                        v = _mm256_add_ps(v, load!(at, h));
                    }
                    if epilogue {
                        v = _mm256_add_ps(v, bias[h]);
                        for op in store.fused.ops() {
                            v = match *op {
                                PostOp::Activation(Activation::None) => v,
                                PostOp::Activation(Activation::Relu) => relu!(256, v),
                                PostOp::Activation(Activation::Relu6) => relu6!(256, v),
                                PostOp::Activation(Activation::HardSwish) => hard_swish!(256, v),
                                PostOp::Residual => {
                                    let r = store.residual.wrapping_add(i * store.ldr + 8 * h);
                                    _mm256_add_ps(v, load!(r, h))
                                }
                            };
                        }
                    }
                    if full[h] {
                        _mm256_storeu_ps(at, v);
                    } else {
                        _mm256_maskstore_ps(at, mask[h], v);
                    }
                }
            }
        }};
    }
    // By constant index, as in `store_avx512`.
    macro_rules! rows {
        ($($i:literal)*) => {$(
            if let Some(pair) = acc.get($i) {
                if $i < store.rows {
                    row!($i, pair);
                }
            }
        )*};
    }
    rows!(0 1 2 3 4 5);
}

/// [`store_avx2`] for a tile whose `R` rows and 16 columns all lie inside `C`, as
/// [`store_avx512_whole`] does it: `ACC` and `EPI` constants, each epilogue operation one
/// branch for the tile. Plain loads and stores, no test per vector: the general store,
/// testing each choice for each vector, ran about thirty instructions a vector where this
/// runs a dozen (callgrind: ~600 instructions a call for an 8-deep tile, most of them the
/// store), which on the 1x1 expansions' 16-24 depths cost more than the multiply-adds.
///
/// # Safety
/// As [`Microkernel::run`], with `store.rows >= R` and `store.cols >= 16`; the CPU must have
/// AVX2, and the caller is compiled for it.
#[inline(always)]
unsafe fn store_avx2_whole<const R: usize, const ACC: bool, const EPI: bool>(
    acc: &[[__m256; 2]; R],
    c: *mut f32,
    ldc: usize,
    store: &Store,
) {
    let mut tile = *acc;
    // SAFETY (all loads and stores below): as in `store_avx512_whole`, for 16 columns.
    if ACC {
        each_vector!(tile, 2, |v, i, h| {
            // SAFETY: row i < R and columns 8 h..+8 lie inside the tile the contract makes valid.
            *v = _mm256_add_ps(*v, unsafe { _mm256_loadu_ps(c.add(i * ldc + 8 * h)) });
        });
    }
    if EPI {
        if !store.bias.is_null() {
            each_vector!(tile, 2, |v, _i, h| {
                // SAFETY: the bias holds the tile's 16 columns (the contract), and it is not null here.
                *v = _mm256_add_ps(*v, unsafe { _mm256_loadu_ps(store.bias.add(8 * h)) });
            });
        }
        for op in store.fused.ops() {
            match *op {
                PostOp::Activation(Activation::None) => {}
                PostOp::Activation(Activation::Relu) => {
                    each_vector!(tile, 2, |v, _i, _h| { *v = relu!(256, *v) });
                }
                PostOp::Activation(Activation::Relu6) => {
                    each_vector!(tile, 2, |v, _i, _h| { *v = relu6!(256, *v) });
                }
                PostOp::Activation(Activation::HardSwish) => {
                    each_vector!(tile, 2, |v, _i, _h| { *v = hard_swish!(256, *v) });
                }
                PostOp::Residual => each_vector!(tile, 2, |v, i, h| {
                    // SAFETY: a list that adds a residual has a non-null residual of the tile's shape (the contract).
                    let r = unsafe { _mm256_loadu_ps(store.residual.add(i * store.ldr + 8 * h)) };
                    *v = _mm256_add_ps(*v, r);
                }),
            }
        }
    }
    each_vector!(tile, 2, |v, i, h| {
        // SAFETY: row i < R and columns 8 h..+8 lie inside the tile the contract makes valid.
        unsafe { _mm256_storeu_ps(c.add(i * ldc + 8 * h), *v) };
    });
}

/// How far ahead of its loads [`avx512_gemv_strip`] asks for the weights, in bytes: a
/// matrix-vector product is bound by the stream of weights from memory, and the hardware
/// prefetcher alone leaves it at about two thirds of what the machine streams.
const GEMV_PREFETCH: usize = 2048;

/// `acc[0..32] = sum_p x[p] * strip[p * 32 ..][..32]` for `p < k`: one 32-column strip of
/// packed weights times one row, four depths per step in independent accumulators.
///
/// # Safety
/// `x` holds `k` values, `strip` `32 * k` and `acc` 32; the CPU must have AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn avx512_gemv_strip(k: usize, x: *const f32, strip: *const f32, acc: *mut f32) {
    let mut sum = [_mm512_setzero_ps(); 8];
    let steps = k / 4;
    for step in 0..steps {
        let p = step * 4;
        // SAFETY: depths p..p+4 are below k; prefetches never fault.
        unsafe {
            let w = strip.add(p * 32);
            for line in 0..8 {
                _mm_prefetch::<_MM_HINT_T0>(w.cast::<i8>().add(GEMV_PREFETCH + 64 * line));
            }
            for d in 0..4 {
                let xd = _mm512_set1_ps(*x.add(p + d));
                sum[2 * d] = _mm512_fmadd_ps(xd, _mm512_loadu_ps(w.add(32 * d)), sum[2 * d]);
                sum[2 * d + 1] =
                    _mm512_fmadd_ps(xd, _mm512_loadu_ps(w.add(32 * d + 16)), sum[2 * d + 1]);
            }
        }
    }
    for p in steps * 4..k {
        // SAFETY: p < k.
        unsafe {
            let xp = _mm512_set1_ps(*x.add(p));
            sum[0] = _mm512_fmadd_ps(xp, _mm512_loadu_ps(strip.add(p * 32)), sum[0]);
            sum[1] = _mm512_fmadd_ps(xp, _mm512_loadu_ps(strip.add(p * 32 + 16)), sum[1]);
        }
    }
    let lo = _mm512_add_ps(_mm512_add_ps(sum[0], sum[2]), _mm512_add_ps(sum[4], sum[6]));
    let hi = _mm512_add_ps(_mm512_add_ps(sum[1], sum[3]), _mm512_add_ps(sum[5], sum[7]));
    // SAFETY: acc holds 32 values.
    unsafe {
        _mm512_storeu_ps(acc, lo);
        _mm512_storeu_ps(acc.add(16), hi);
    }
}

/// [`avx512_gemv_strip`] for AVX2's 16-column strips: `acc[0..16] = sum_p x[p] *
/// strip[p * 16 ..][..16]`, four depths per step in independent accumulators, the weights
/// asked for [`GEMV_PREFETCH`] bytes ahead. The portable loop it replaces kept its sums in
/// memory (a load and a store per multiply-add).
///
/// # Safety
/// `x` holds `k` values, `strip` `16 * k` and `acc` 16; the CPU must have AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn avx2_gemv_strip(k: usize, x: *const f32, strip: *const f32, acc: *mut f32) {
    let mut sum = [_mm256_setzero_ps(); 8];
    let steps = k / 4;
    for step in 0..steps {
        let p = step * 4;
        // SAFETY: depths p..p+4 are below k; prefetches never fault (the address is formed
        // with wrapping arithmetic and never dereferenced).
        unsafe {
            let w = strip.add(p * 16);
            for line in 0..4 {
                let ahead = w.cast::<i8>().wrapping_add(GEMV_PREFETCH + 64 * line);
                _mm_prefetch::<_MM_HINT_T0>(ahead);
            }
            for d in 0..4 {
                let xd = _mm256_broadcast_ss(&*x.add(p + d));
                sum[2 * d] = _mm256_fmadd_ps(xd, _mm256_loadu_ps(w.add(16 * d)), sum[2 * d]);
                sum[2 * d + 1] =
                    _mm256_fmadd_ps(xd, _mm256_loadu_ps(w.add(16 * d + 8)), sum[2 * d + 1]);
            }
        }
    }
    for p in steps * 4..k {
        // SAFETY: p < k.
        unsafe {
            let xp = _mm256_broadcast_ss(&*x.add(p));
            sum[0] = _mm256_fmadd_ps(xp, _mm256_loadu_ps(strip.add(p * 16)), sum[0]);
            sum[1] = _mm256_fmadd_ps(xp, _mm256_loadu_ps(strip.add(p * 16 + 8)), sum[1]);
        }
    }
    let lo = _mm256_add_ps(_mm256_add_ps(sum[0], sum[2]), _mm256_add_ps(sum[4], sum[6]));
    let hi = _mm256_add_ps(_mm256_add_ps(sum[1], sum[3]), _mm256_add_ps(sum[5], sum[7]));
    // SAFETY: acc holds 16 values.
    unsafe {
        _mm256_storeu_ps(acc, lo);
        _mm256_storeu_ps(acc.add(8), hi);
    }
}

/// [`avx512_gemv_strip`] on f16 weights (IEEE half, as an artifact stores them), `R` rows at
/// a time: `acc[i * 32 + j] = sum_p x[i][p] * f32(strip[p * 32 + j])`. Each depth's 32 weights
/// are converted as they are loaded (`vcvtph2ps`), so a matrix-vector product streams half the
/// bytes of f32 weights. `U` depths per step in independent accumulators (4 for one row, whose
/// chain of multiply-adds would otherwise wait on its latency; 1 for four rows).
///
/// # Safety
/// Each `x[i]` holds `k` values, `strip` `32 * k` and `acc` `32 * R`; the CPU must have
/// AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn avx512_gemv16_strip<const R: usize, const U: usize>(
    k: usize,
    x: [*const f32; R],
    strip: *const u16,
    acc: *mut f32,
) {
    let mut sum = [[[_mm512_setzero_ps(); 2]; R]; U];
    for step in 0..k / U {
        // SAFETY: depths step * U .. + U are below k; prefetches never fault (the address is
        // formed with wrapping arithmetic and never dereferenced).
        unsafe {
            let w = strip.add(step * U * 32);
            for line in 0..U {
                let ahead = w.cast::<i8>().wrapping_add(GEMV_PREFETCH + 64 * line);
                _mm_prefetch::<_MM_HINT_T0>(ahead);
            }
            for (u, sum) in sum.iter_mut().enumerate() {
                let wu = w.add(32 * u);
                let lo = _mm512_cvtph_ps(_mm256_loadu_si256(wu.cast()));
                let hi = _mm512_cvtph_ps(_mm256_loadu_si256(wu.add(16).cast()));
                for (row, sum) in x.iter().zip(sum.iter_mut()) {
                    let xp = _mm512_set1_ps(*row.add(step * U + u));
                    sum[0] = _mm512_fmadd_ps(xp, lo, sum[0]);
                    sum[1] = _mm512_fmadd_ps(xp, hi, sum[1]);
                }
            }
        }
    }
    for p in k / U * U..k {
        // SAFETY: p < k.
        unsafe {
            let w = strip.add(p * 32);
            let lo = _mm512_cvtph_ps(_mm256_loadu_si256(w.cast()));
            let hi = _mm512_cvtph_ps(_mm256_loadu_si256(w.add(16).cast()));
            for (row, sum) in x.iter().zip(sum[0].iter_mut()) {
                let xp = _mm512_set1_ps(*row.add(p));
                sum[0] = _mm512_fmadd_ps(xp, lo, sum[0]);
                sum[1] = _mm512_fmadd_ps(xp, hi, sum[1]);
            }
        }
    }
    for i in 0..R {
        let (mut lo, mut hi) = (sum[0][i][0], sum[0][i][1]);
        for s in &sum[1..] {
            lo = _mm512_add_ps(lo, s[i][0]);
            hi = _mm512_add_ps(hi, s[i][1]);
        }
        // SAFETY: acc holds 32 R values.
        unsafe {
            _mm512_storeu_ps(acc.add(32 * i), lo);
            _mm512_storeu_ps(acc.add(32 * i + 16), hi);
        }
    }
}

/// [`avx512_gemv16_strip`] for AVX2's 16-column strips, converting with F16C.
///
/// # Safety
/// Each `x[i]` holds `k` values, `strip` `16 * k` and `acc` `16 * R`; the CPU must have
/// AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn avx2_gemv16_strip<const R: usize, const U: usize>(
    k: usize,
    x: [*const f32; R],
    strip: *const u16,
    acc: *mut f32,
) {
    let mut sum = [[[_mm256_setzero_ps(); 2]; R]; U];
    for step in 0..k / U {
        // SAFETY: as in `avx512_gemv16_strip`.
        unsafe {
            let w = strip.add(step * U * 16);
            for line in 0..U.div_ceil(2) {
                let ahead = w.cast::<i8>().wrapping_add(GEMV_PREFETCH + 64 * line);
                _mm_prefetch::<_MM_HINT_T0>(ahead);
            }
            for (u, sum) in sum.iter_mut().enumerate() {
                let wu = w.add(16 * u);
                let lo = _mm256_cvtph_ps(_mm_loadu_si128(wu.cast()));
                let hi = _mm256_cvtph_ps(_mm_loadu_si128(wu.add(8).cast()));
                for (row, sum) in x.iter().zip(sum.iter_mut()) {
                    let xp = _mm256_broadcast_ss(&*row.add(step * U + u));
                    sum[0] = _mm256_fmadd_ps(xp, lo, sum[0]);
                    sum[1] = _mm256_fmadd_ps(xp, hi, sum[1]);
                }
            }
        }
    }
    for p in k / U * U..k {
        // SAFETY: p < k.
        unsafe {
            let w = strip.add(p * 16);
            let lo = _mm256_cvtph_ps(_mm_loadu_si128(w.cast()));
            let hi = _mm256_cvtph_ps(_mm_loadu_si128(w.add(8).cast()));
            for (row, sum) in x.iter().zip(sum[0].iter_mut()) {
                let xp = _mm256_broadcast_ss(&*row.add(p));
                sum[0] = _mm256_fmadd_ps(xp, lo, sum[0]);
                sum[1] = _mm256_fmadd_ps(xp, hi, sum[1]);
            }
        }
    }
    for i in 0..R {
        let (mut lo, mut hi) = (sum[0][i][0], sum[0][i][1]);
        for s in &sum[1..] {
            lo = _mm256_add_ps(lo, s[i][0]);
            hi = _mm256_add_ps(hi, s[i][1]);
        }
        // SAFETY: acc holds 16 R values.
        unsafe {
            _mm256_storeu_ps(acc.add(16 * i), lo);
            _mm256_storeu_ps(acc.add(16 * i + 8), hi);
        }
    }
}
