//! Packed single-precision GEMM, `C[M, N] = A[M, K] · B[K, N]`, with a fused epilogue.
//!
//! The layout follows BLIS (Van Zee & van de Geijn, 2015): `B` (the weights) is packed once,
//! at load, into strips of `NR` columns ([`PackedB`]); `A` (the activations) is packed per
//! call, `MR` rows by `KC` depths at a time, by a [`PackA`] source, which is where a
//! convolution's implicit im2col lives. A source that already is a row-major matrix (a 1x1
//! convolution's NHWC input, Winograd's transformed tiles) is read in place instead. A
//! microkernel multiplies one `MR x KC` panel by one `KC x NR` strip in registers; the store of the last depth block adds the bias, applies the
//! activation and adds the residual, so a layer's output is written once.
//!
//! Work is split over rayon's pool by blocks of rows (and of column strips when there are too
//! few rows to keep every thread busy). Each block writes a disjoint part of `C`.

use std::cell::RefCell;

use rayon::prelude::*;

use super::{multiversion, parallel, Arch, Fused, Isa, SyncPtr};

/// Depth of one packed block: a `KC x NR` strip of `B` stays in L1 while the panels of `A`
/// stream past it.
const KC: usize = 256;
/// Rows of `A` per block of work (rounded to whole panels): keeps the packed `MC x KC` block
/// of `A` in L2.
const MC: usize = 144;

/// The register-tile kernel of one instruction set: `c[MR x NR] (+)= a · b` where `a` is a
/// packed `KC x MR` panel (row `p` holds `MR` values), `b` a packed `KC x NR` strip and `c`
/// an `MR x NR` tile whose rows are `ldc` apart, written as [`Store`] says: only the rows
/// and columns that exist (an edge tile is written in place, with masked stores), added to
/// what is there for a later depth block, and with the epilogue applied on the way out for
/// the last one.
#[derive(Clone, Copy)]
pub(crate) struct Microkernel {
    pub mr: usize,
    pub nr: usize,
    /// # Safety
    /// `a` holds `kc * mr` values, `b` holds `kc * nr`, `c` points to `store.rows` rows of
    /// `store.cols` writable values `ldc` apart, `store`'s pointers are as it documents, and
    /// the CPU supports the kernel's instruction set.
    pub run:
        unsafe fn(kc: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize, store: &Store),
    /// As `run`, for a panel of which only the first `rows` (< `mr`) rows lie inside `C`
    /// (`store.rows == rows`), multiplying those rows only; where it is `None`, `run`
    /// multiplies the whole panel and the store writes the rows that exist.
    ///
    /// # Safety
    /// As `run`.
    #[allow(clippy::type_complexity)]
    pub run_short: Option<
        unsafe fn(
            rows: usize,
            kc: usize,
            a: *const f32,
            b: *const f32,
            c: *mut f32,
            ldc: usize,
            store: &Store,
        ),
    >,
    /// As `run`, with `a` read in place from a row-major matrix: row `i` of the tile starts
    /// at `a + i * lda`, its depth `p` at `+ p`. A 1x1 convolution's NHWC input is such a
    /// matrix, so it multiplies without being packed.
    ///
    /// # Safety
    /// As `run`, with `a + i * lda + p` readable for every `i < mr`, `p < kc`.
    pub run_rows: unsafe fn(
        kc: usize,
        a: *const f32,
        lda: usize,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        store: &Store,
    ),
}

/// How a microkernel writes its tile of `C`.
#[derive(Clone, Copy)]
pub(crate) struct Store {
    /// Rows (at most `MR`) and columns (at most `NR`) of the tile that lie inside `C`; the
    /// others are computed (from zero padding) but never written.
    pub rows: usize,
    pub cols: usize,
    /// Add to what the tile holds (the sums of the earlier depth blocks) instead of
    /// overwriting it.
    pub accumulate: bool,
    /// `cols` values added to the tile's columns, or null.
    pub bias: *const f32,
    /// What follows the bias, in order.
    pub fused: Fused,
    /// The residual's tile, for `fused`'s [`super::PostOp::Residual`]: row `i` at `residual + i * ldr`,
    /// `cols` values each; or null.
    pub residual: *const f32,
    pub ldr: usize,
    /// Depths of the block of `B` the next strip will multiply, from `next_b` on, for the
    /// microkernel to ask into L2 while it works from a block already in L1: the panels after
    /// a strip's first share that block out, so that it arrives before the next strip's
    /// first panel needs it. Null and 0 for none.
    pub next_b: *const f32,
    pub next_depths: usize,
}

impl Store {
    /// A plain store: no bias, activation or residual.
    pub(crate) fn plain(rows: usize, cols: usize, accumulate: bool) -> Self {
        Store {
            rows,
            cols,
            accumulate,
            bias: std::ptr::null(),
            fused: Fused::NONE,
            residual: std::ptr::null(),
            ldr: 0,
            next_b: std::ptr::null(),
            next_depths: 0,
        }
    }

    pub(crate) fn has_epilogue(&self) -> bool {
        !self.bias.is_null() || !self.fused.is_empty()
    }
}

/// Writes an `MR x NR` tile held in `tile` (rows `nr` apart) to `c` as `store` says: the
/// microkernels without masked vector stores spill their registers here for edge tiles and
/// epilogues.
///
/// # Safety
/// As for [`Microkernel::run`]: `c` holds `store.rows` rows of `store.cols` writable values
/// `ldc` apart, and `store`'s bias and residual are readable as it documents.
pub(crate) unsafe fn store_tile(tile: &[f32], nr: usize, c: *mut f32, ldc: usize, store: &Store) {
    if !store.has_epilogue() {
        for i in 0..store.rows {
            // SAFETY: row i of the tile, `cols` values (the contract).
            let dst = unsafe { std::slice::from_raw_parts_mut(c.add(i * ldc), store.cols) };
            let src = &tile[i * nr..i * nr + store.cols];
            if store.accumulate {
                dst.iter_mut().zip(src).for_each(|(d, s)| *d += *s);
            } else {
                dst.copy_from_slice(src);
            }
        }
        return;
    }
    for i in 0..store.rows {
        // SAFETY: row i of the tile, `cols` values (the contract).
        let dst = unsafe { std::slice::from_raw_parts_mut(c.add(i * ldc), store.cols) };
        for (j, (d, &v)) in dst.iter_mut().zip(&tile[i * nr..]).enumerate() {
            let mut v = if store.accumulate { *d + v } else { v };
            if !store.bias.is_null() {
                // SAFETY: j < cols bias values (the contract).
                v += unsafe { *store.bias.add(j) };
            }
            // SAFETY: row i of the residual's tile, j < cols (the contract), read only for a
            // list that adds a residual, which then is not null.
            v = store
                .fused
                .apply_one(v, || unsafe { *store.residual.add(i * store.ldr + j) });
            *d = v;
        }
    }
}

impl Microkernel {
    pub(crate) fn for_isa(isa: Isa) -> Self {
        match isa.arch() {
            #[cfg(target_arch = "x86_64")]
            Arch::Avx512 => super::x86_64::AVX512,
            #[cfg(target_arch = "x86_64")]
            Arch::Avx2 => super::x86_64::AVX2,
            #[cfg(target_arch = "aarch64")]
            Arch::Neon => super::arm64::NEON,
            Arch::Portable => super::generic::PORTABLE,
        }
    }
}

/// The right-hand operand, packed for one instruction set's microkernel: strip `s` holds
/// columns `s*NR .. s*NR+NR` (zero-padded past `N`) as `K` rows of `NR` values.
#[derive(Clone)]
pub struct PackedB {
    isa: Isa,
    k: usize,
    n: usize,
    nr: usize,
    data: Vec<f32>,
}

impl PackedB {
    /// Packs the `k x n` matrix whose element `(row, col)` is `value(row, col)`.
    pub fn new(isa: Isa, k: usize, n: usize, value: impl Fn(usize, usize) -> f32) -> Self {
        let nr = Microkernel::for_isa(isa).nr;
        let strips = n.div_ceil(nr);
        let mut data = vec![0f32; strips * k * nr];
        for (s, strip) in data
            .chunks_exact_mut((k * nr).max(1))
            .enumerate()
            .take(strips)
        {
            for p in 0..k {
                for j in 0..nr.min(n - s * nr) {
                    strip[p * nr + j] = value(p, s * nr + j);
                }
            }
        }
        Self {
            isa,
            k,
            n,
            nr,
            data,
        }
    }

    /// Packs a row-major `k x n` matrix, a row segment at a time, on rayon's pool.
    pub fn from_row_major(isa: Isa, k: usize, n: usize, b: &[f32]) -> Self {
        assert!(b.len() >= k * n, "matrix too small for {k} x {n}");
        let nr = Microkernel::for_isa(isa).nr;
        let strips = n.div_ceil(nr);
        let mut data = vec![0f32; strips * k * nr];
        if k > 0 {
            data.par_chunks_mut(k * nr)
                .enumerate()
                .for_each(|(s, strip)| {
                    let (j0, width) = (s * nr, nr.min(n - s * nr));
                    for (p, dst) in strip.chunks_exact_mut(nr).enumerate() {
                        dst[..width].copy_from_slice(&b[p * n + j0..p * n + j0 + width]);
                    }
                });
        }
        Self {
            isa,
            k,
            n,
            nr,
            data,
        }
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn n(&self) -> usize {
        self.n
    }

    /// Columns per strip.
    pub fn nr(&self) -> usize {
        self.nr
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.data.len() * 4
    }

    fn strip(&self, s: usize) -> &[f32] {
        &self.data[s * self.k * self.nr..(s + 1) * self.k * self.nr]
    }
}

/// A left-hand operand that packs itself: an `M x K` matrix, possibly virtual (im2col).
pub trait PackA: Sync {
    fn rows(&self) -> usize;
    fn depth(&self) -> usize;
    /// Writes rows `m0 .. m0+mr` (zeros past [`PackA::rows`]) at depths `k0 .. k0+kc` into
    /// `out[p * mr + r]`.
    fn pack(&self, m0: usize, k0: usize, kc: usize, mr: usize, out: &mut [f32]);

    /// The whole operand as a row-major matrix with rows `lda` apart, when the source stores
    /// it so: the microkernels then read it in place (`Microkernel::run_rows`).
    fn row_major(&self) -> Option<(&[f32], usize)> {
        None
    }
}

/// A row-major `rows x cols` matrix.
pub struct RowMajor<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
}

impl PackA for RowMajor<'_> {
    fn rows(&self) -> usize {
        self.rows
    }

    fn depth(&self) -> usize {
        self.cols
    }

    fn pack(&self, m0: usize, k0: usize, kc: usize, mr: usize, out: &mut [f32]) {
        for r in 0..mr {
            let m = m0 + r;
            if m < self.rows {
                let row = &self.data[m * self.cols + k0..m * self.cols + k0 + kc];
                for (p, v) in row.iter().enumerate() {
                    out[p * mr + r] = *v;
                }
            } else {
                for p in 0..kc {
                    out[p * mr + r] = 0.0;
                }
            }
        }
    }

    fn row_major(&self) -> Option<(&[f32], usize)> {
        Some((self.data, self.cols))
    }
}

/// What the last store of an output tile does to `C = A·B`:
/// `C = fused(C + bias[col])`, `fused` reading `residual[row, col]` where it adds the residual.
#[derive(Clone, Copy)]
pub struct Epilogue<'a> {
    /// One value per column.
    pub bias: Option<&'a [f32]>,
    pub fused: Fused,
    /// An `M x N` row-major matrix, for `fused`'s residual (a skip connection).
    pub residual: Option<&'a [f32]>,
}

impl Epilogue<'_> {
    pub const NONE: Epilogue<'static> = Epilogue {
        bias: None,
        fused: Fused::NONE,
        residual: None,
    };
}

/// Up to this many rows, a product is a few matrix-vector products: a full `MR`-row tile would
/// mostly multiply zeros, and the time goes into streaming `B` once anyway.
const GEMV_ROWS: usize = 2;

thread_local! {
    /// Each thread's packed block of `A`, reused across calls.
    static PACK_A: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `c[M x N] = epilogue(a · b)`, on rayon's pool. `c` is row-major with `N` columns.
pub fn gemm(isa: Isa, a: &dyn PackA, b: &PackedB, c: &mut [f32], epilogue: &Epilogue) {
    let (m, n) = (a.rows(), b.n);
    assert_eq!(b.isa, isa, "weights packed for another instruction set");
    assert_eq!(a.depth(), b.k, "inner dimensions differ");
    assert!(c.len() >= m * n, "output too small");
    // The microkernels read the bias and residual through pointers: check their sizes here.
    assert!(epilogue.bias.is_none_or(|b| b.len() >= n), "bias too small");
    assert!(
        epilogue.residual.is_none_or(|r| r.len() >= m * n),
        "residual too small"
    );
    epilogue.fused.check_residual(epilogue.residual.is_some());
    if m == 0 || n == 0 {
        return;
    }
    let mk = Microkernel::for_isa(isa);
    let strips = n.div_ceil(mk.nr);
    if m <= GEMV_ROWS {
        return gemv(isa, a, b, c, epilogue);
    }
    let panels = m.div_ceil(mk.mr);
    let par = parallel(m * n * a.depth());
    let threads = if par { rayon::current_num_threads() } else { 1 };
    let (row_blocks, col_blocks) = split(panels, strips, (MC / mk.mr).max(1), threads);
    let panels_per_block = panels.div_ceil(row_blocks);
    let strips_per_block = strips.div_ceil(col_blocks);
    let out = SyncPtr::new(c);
    let run = |block: usize| {
        let (rb, cb) = (block / col_blocks, block % col_blocks);
        let rows = rb * panels_per_block * mk.mr..((rb + 1) * panels_per_block * mk.mr).min(m);
        let cols = cb * strips_per_block..((cb + 1) * strips_per_block).min(strips);
        // SAFETY: blocks cover disjoint (rows, strips) rectangles of `c`, which outlives the
        // parallel loop, so each tile written below is written by one thread only.
        unsafe { gemm_block(mk, a, b, out.get(), rows, cols, epilogue, false) };
    };
    let blocks = row_blocks * col_blocks;
    if blocks == 1 || !par {
        (0..blocks).for_each(run);
    } else {
        (0..blocks).into_par_iter().for_each(run);
    }
}

/// How [`gemm`] cuts `panels` row panels by `strips` column strips into blocks for `threads`
/// threads: `(row blocks, column blocks)`, each row block at most [`MC`] rows (its packed
/// `A` stays in L2). The blocks are as equal as the panels and strips allow and their count
/// fills every thread's rounds: the time is the slowest thread's, so the split with the
/// fewest panel-strips per thread wins (then the one with fewer blocks). Cutting fixed
/// blocks of `MC` rows and sharing them out left ResNet50's 14x14 layers (17 panels: blocks
/// of 144 and 52 rows, cut again by columns) one thread with twice the other's work.
fn split(panels: usize, strips: usize, most_panels: usize, threads: usize) -> (usize, usize) {
    let fewest_rows = panels.div_ceil(most_panels).max(1);
    if threads <= 1 {
        return (fewest_rows, 1);
    }
    let mut best = (usize::MAX, fewest_rows, 1);
    for rows in fewest_rows..=(fewest_rows + 2 * threads).min(panels.max(1)) {
        let per_row = panels.div_ceil(rows);
        let rows = panels.div_ceil(per_row);
        for cols in 1..=(2 * threads).min(strips) {
            let per_col = strips.div_ceil(cols);
            let cols = strips.div_ceil(per_col);
            let blocks = rows * cols;
            // A thread's share: rounds of the largest block; a block costs about a quarter
            // of a panel-strip in overhead (its call, its share of A or B read again).
            let cost = 4 * blocks.div_ceil(threads) * per_row * per_col + blocks;
            if cost < best.0 {
                best = (cost, rows, cols);
            }
        }
    }
    (best.1, best.2)
}

/// `c[M x N] = epilogue(a · b)` (or `epilogue(c + a · b)` when `accumulate`) for the column
/// strips `strips` (of [`PackedB::nr`] columns each) only, on the calling thread alone: for
/// kernels that share out work of their own (Winograd's tiles, the bands of a fused block).
pub(crate) fn gemm_serial(
    isa: Isa,
    a: &dyn PackA,
    b: &PackedB,
    c: &mut [f32],
    strips: std::ops::Range<usize>,
    epilogue: &Epilogue,
    accumulate: bool,
) {
    let (m, n) = (a.rows(), b.n);
    assert_eq!(b.isa, isa, "weights packed for another instruction set");
    assert_eq!(a.depth(), b.k, "inner dimensions differ");
    assert!(c.len() >= m * n, "output too small");
    assert!(strips.end <= n.div_ceil(b.nr), "strips out of range");
    assert!(epilogue.bias.is_none_or(|b| b.len() >= n), "bias too small");
    assert!(
        epilogue.residual.is_none_or(|r| r.len() >= m * n),
        "residual too small"
    );
    epilogue.fused.check_residual(epilogue.residual.is_some());
    if m == 0 {
        return;
    }
    let mk = Microkernel::for_isa(isa);
    // SAFETY: the whole of `c`, borrowed mutably here, is written by this thread only.
    unsafe { gemm_block(mk, a, b, c.as_mut_ptr(), 0..m, strips, epilogue, accumulate) };
}

/// One block of rows and column strips, serially; `accumulate` adds to what `c` holds.
///
/// # Safety
/// `c` points to an `M x N` row-major buffer of which this call alone writes the rectangle
/// `rows x (strips * NR ∩ 0..N)`.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_block(
    mk: Microkernel,
    a: &dyn PackA,
    b: &PackedB,
    c: *mut f32,
    rows: std::ops::Range<usize>,
    strips: std::ops::Range<usize>,
    epilogue: &Epilogue,
    accumulate: bool,
) {
    let (k, n, nr, mr) = (b.k, b.n, mk.nr, mk.mr);
    let k_blocks = k.div_ceil(KC).max(1);
    let kc_max = k.div_ceil(k_blocks);
    let panels = rows.len().div_ceil(mr);
    // Read in place: every full panel straight from the source; only a last partial one is
    // packed (its missing rows as zeros).
    let in_place = a.row_major();
    let full_panels = match in_place {
        Some(_) => rows.len() / mr,
        None => 0,
    };
    PACK_A.with_borrow_mut(|packed| {
        // Grown, never shrunk: shrinking and growing again would zero-fill on every call.
        let needed = (panels - full_panels) * kc_max * mr;
        if packed.len() < needed {
            packed.resize(needed, 0.0);
        }
        for kb in 0..k_blocks {
            let k0 = kb * kc_max;
            let kc = kc_max.min(k - k0);
            for p in full_panels..panels {
                let q = p - full_panels;
                let out = &mut packed[q * kc * mr..(q + 1) * kc * mr];
                a.pack(rows.start + p * mr, k0, kc, mr, out);
            }
            let last = kb + 1 == k_blocks;
            for s in strips.clone() {
                let strip = &b.strip(s)[k0 * nr..];
                // The block after this one: the next strip's, or the first strip's of the
                // next depth block.
                let next_b = if s + 1 < strips.end {
                    b.strip(s + 1)[k0 * nr..].as_ptr()
                } else if !last {
                    b.strip(strips.start)[(k0 + kc) * nr..].as_ptr()
                } else {
                    std::ptr::null()
                };
                // Panels 1.. (or 0 alone) each ask for a share of its depths.
                let sharers = (panels - 1).max(1);
                let share = kc.div_ceil(sharers);
                let col0 = s * nr;
                let cols = nr.min(n - col0);
                for p in 0..panels {
                    let row0 = rows.start + p * mr;
                    let mut store =
                        Store::plain(mr.min(rows.end - row0), cols, kb > 0 || accumulate);
                    if !next_b.is_null() && (p > 0 || panels == 1) {
                        let first = p.saturating_sub(1) * share;
                        store.next_b = next_b.wrapping_add(first * nr);
                        store.next_depths = share;
                    }
                    if last {
                        store.bias = epilogue
                            .bias
                            .map_or(std::ptr::null(), |b| b[col0..col0 + cols].as_ptr());
                        store.fused = epilogue.fused;
                        if let Some(residual) = epilogue.residual {
                            store.residual = residual[row0 * n + col0..].as_ptr();
                            store.ldr = n;
                        }
                    }
                    // SAFETY: the tile at (row0, col0) lies in this call's rectangle.
                    let dst = unsafe { c.add(row0 * n + col0) };
                    match in_place {
                        Some((data, lda)) if p < full_panels => {
                            let rows_at = data[row0 * lda + k0..][..(mr - 1) * lda + kc].as_ptr();
                            // SAFETY: rows row0..row0+mr of the source exist (a full panel)
                            // and hold depths k0..k0+kc; the strip from k0 holds kc*nr values;
                            // `dst` holds the store's rows and columns of this call's
                            // rectangle, the bias its columns and the residual (an M x N
                            // matrix) its rows; the instruction set is the `Isa`'s.
                            unsafe {
                                (mk.run_rows)(kc, rows_at, lda, strip.as_ptr(), dst, n, &store)
                            };
                        }
                        _ => {
                            let panel = packed[(p - full_panels) * kc * mr..][..kc * mr].as_ptr();
                            // SAFETY: the panel holds kc*mr values, the strip from k0 at least
                            // kc*nr; `dst` and the store as above.
                            unsafe {
                                match mk.run_short {
                                    Some(short) if store.rows < mr => {
                                        let rows = store.rows;
                                        short(rows, kc, panel, strip.as_ptr(), dst, n, &store)
                                    }
                                    _ => (mk.run)(kc, panel, strip.as_ptr(), dst, n, &store),
                                }
                            };
                        }
                    }
                }
            }
        }
    });
}

/// `c = epilogue(a · b)` row by row, for products of very few rows: each strip of `B` is
/// streamed once per row, strips shared out over rayon's pool.
fn gemv(isa: Isa, a: &dyn PackA, b: &PackedB, c: &mut [f32], epilogue: &Epilogue) {
    let (m, k, n, nr) = (a.rows(), b.k, b.n, b.nr);
    let mut rows = vec![0f32; m * k];
    for (r, row) in rows.chunks_exact_mut(k.max(1)).enumerate().take(m) {
        a.pack(r, 0, k, 1, row);
    }
    let out = SyncPtr::new(c);
    let run = |s: usize| {
        let col0 = s * nr;
        let cols = nr.min(n - col0);
        let mut acc = vec![0f32; nr];
        for (r, row) in rows.chunks_exact(k.max(1)).enumerate().take(m) {
            gemv_strip(isa, row, b.strip(s), &mut acc);
            // SAFETY: strip s owns columns col0..col0+cols of every row; `c` outlives the loop.
            let dst = unsafe { std::slice::from_raw_parts_mut(out.get().add(r * n + col0), cols) };
            let bias = epilogue.bias.map(|b| &b[col0..col0 + cols]);
            let residual = epilogue
                .residual
                .map(|res| &res[r * n + col0..r * n + col0 + cols]);
            store(isa, &acc[..cols], dst, false);
            finish(isa, dst, bias, &epilogue.fused, residual);
        }
    };
    let strips = n.div_ceil(nr);
    // A matrix-vector product streams its weights once, a load per multiply-add: it is
    // bound by memory, not arithmetic, so it is worth both cores at an eighth of a GEMM's work
    // (alexnet-small's 4096x512 layer at batch 1: 0.43 ms on one thread, 0.17-0.33 on two).
    if parallel(8 * m * n * k) {
        (0..strips).into_par_iter().for_each(run);
    } else {
        (0..strips).for_each(run);
    }
}

/// `acc[j] = sum_p row[p] * strip[p * NR + j]`: on AVX-512 and AVX2 the hand-written kernels
/// (sums in registers, the weights prefetched), elsewhere the portable loop compiled for the
/// `Isa`.
fn gemv_strip(isa: Isa, row: &[f32], strip: &[f32], acc: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        type Kernel = unsafe fn(usize, *const f32, *const f32, *mut f32);
        let kernel: Option<(usize, Kernel)> = match isa.arch() {
            super::Arch::Avx512 => Some((32, super::x86_64::avx512_gemv_strip)),
            super::Arch::Avx2 => Some((16, super::x86_64::avx2_gemv_strip)),
            _ => None,
        };
        if let Some((nr, kernel)) = kernel.filter(|(nr, _)| acc.len() == *nr) {
            assert!(strip.len() >= nr * row.len(), "strip too short");
            // SAFETY: the row holds k values, the strip (checked) nr * k, acc nr; the Isa
            // is the kernel's, which it can only be when the CPU has it.
            unsafe { kernel(row.len(), row.as_ptr(), strip.as_ptr(), acc.as_mut_ptr()) };
            return;
        }
    }
    gemv_strip_loop(isa, row, strip, acc);
}

multiversion! {
    /// [`gemv_strip`]'s portable loop: four depths per step so that the multiply-adds of a
    /// step are independent and only one add per step waits on the last.
    fn gemv_strip_loop(row: &[f32], strip: &[f32], acc: &mut [f32]) {
        let nr = acc.len();
        acc.fill(0.0);
        let mut rows = row.chunks_exact(4);
        let mut strips = strip.chunks_exact(4 * nr);
        for (x, w) in (&mut rows).zip(&mut strips) {
            let (w0, rest) = w.split_at(nr);
            let (w1, rest) = rest.split_at(nr);
            let (w2, w3) = rest.split_at(nr);
            for j in 0..nr {
                acc[j] += (x[0] * w0[j] + x[1] * w1[j]) + (x[2] * w2[j] + x[3] * w3[j]);
            }
        }
        for (x, w) in rows.remainder().iter().zip(strips.remainder().chunks_exact(nr)) {
            for (a, w) in acc.iter_mut().zip(w) {
                *a += *x * *w;
            }
        }
    }
}

multiversion! {
    /// An edge tile's row: `dst = src` or `dst += src`.
    pub(crate) fn store(src: &[f32], dst: &mut [f32], accumulate: bool) {
        if accumulate {
            for (d, s) in dst.iter_mut().zip(src) {
                *d += *s;
            }
        } else {
            dst.copy_from_slice(src);
        }
    }
}

multiversion! {
    /// The epilogue, in place on one finished row of a tile.
    pub(crate) fn finish(
        dst: &mut [f32],
        bias: Option<&[f32]>,
        fused: &Fused,
        residual: Option<&[f32]>,
    ) {
        if let Some(bias) = bias {
            dst.iter_mut().zip(bias).for_each(|(d, b)| *d += *b);
        }
        fused.apply(dst, residual);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::kernels::testing::{max_relative_error, Rng};
    use crate::kernels::{Activation, PostOp};

    fn naive(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut c = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0f64;
                for p in 0..k {
                    acc += f64::from(a[i * k + p]) * f64::from(b[p * n + j]);
                }
                c[i * n + j] = acc as f32;
            }
        }
        c
    }

    /// Every count of rows in the last panel (the short-panel kernels), on every instruction
    /// set, for a packed operand and one read in place.
    #[test]
    fn every_short_panel_matches_naive_product() {
        let mut rng = Rng::new(2);
        for isa in Isa::supported() {
            for m in 3..=27 {
                // Two depth blocks, so the second accumulates; then the whole epilogue.
                let (k, n) = (300, 40);
                let a = rng.vec(m * k);
                let b = rng.vec(k * n);
                let bias = rng.vec(n);
                let residual = rng.vec(m * n);
                let packed = PackedB::new(isa, k, n, |p, j| b[p * n + j]);
                let epilogue = Epilogue {
                    bias: Some(&bias),
                    fused: Fused::from(Activation::Relu6).with_residual(),
                    residual: Some(&residual),
                };
                let expected: Vec<f32> = naive(&a, &b, m, k, n)
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (v + bias[i % n]).clamp(0.0, 6.0) + residual[i])
                    .collect();
                let in_place = RowMajor {
                    data: &a,
                    rows: m,
                    cols: k,
                };
                let packed_a = Packed(&in_place);
                for (lhs, how) in [(&in_place as &dyn PackA, "in place"), (&packed_a, "packed")] {
                    let mut c = vec![f32::NAN; m * n + 40];
                    // NaN before the product: the first depth block must overwrite it.
                    gemm(isa, lhs, &packed, &mut c, &epilogue);
                    assert!(c[m * n..].iter().all(|v| v.is_nan()), "wrote past C");
                    let err = max_relative_error(&c[..m * n], &expected);
                    assert!(err <= 1e-5, "{} m={m} {how}: {err:e}", isa.name());
                }
            }
        }
    }

    /// A row-major matrix that does not offer itself in place, so every panel is packed.
    struct Packed<'a>(&'a RowMajor<'a>);

    impl PackA for Packed<'_> {
        fn rows(&self) -> usize {
            self.0.rows()
        }

        fn depth(&self) -> usize {
            self.0.depth()
        }

        fn pack(&self, m0: usize, k0: usize, kc: usize, mr: usize, out: &mut [f32]) {
            self.0.pack(m0, k0, kc, mr, out)
        }
    }

    /// Every instruction set, odd sizes around the tile and block edges, with and without
    /// each part of the epilogue.
    #[test]
    fn gemm_matches_naive_product_on_every_isa() {
        let mut rng = Rng::new(1);
        for isa in Isa::supported() {
            for &(m, k, n) in &[
                (1, 1, 1),
                (3, 7, 5),
                (13, 33, 31),
                (50, 300, 70),
                (145, 513, 33),
                (8, 1000, 10),
                (2, 700, 100),
                // Matrix-vector: a depth that is no multiple of 4, a last strip part filled.
                (1, 4099, 40),
                (200, 27, 64),
                (49, 600, 24),
                (13, 16, 80),
                // A last strip of exactly 16 columns (AVX-512's whole half tile) over two
                // depth blocks, so that it accumulates.
                (30, 300, 48),
            ] {
                let a = rng.vec(m * k);
                let b = rng.vec(k * n);
                let bias = rng.vec(n);
                let residual = rng.vec(m * n);
                let packed = PackedB::new(isa, k, n, |p, j| b[p * n + j]);
                let lhs = RowMajor {
                    data: &a,
                    rows: m,
                    cols: k,
                };
                let expected = naive(&a, &b, m, k, n);
                // A tail past the matrix that no store may touch.
                let mut c = vec![f32::NAN; m * n + 64];
                gemm(isa, &lhs, &packed, &mut c, &Epilogue::NONE);
                assert!(c[m * n..].iter().all(|v| v.is_nan()), "wrote past C");
                let c = &mut c[..m * n];
                let err = max_relative_error(c, &expected);
                assert!(err <= 1e-5, "{} {m}x{k}x{n}: {err:e}", isa.name());

                // Each part of the epilogue alone and together, every activation, the
                // residual before and after it.
                for (with_bias, ops) in epilogues() {
                    let fused = ops
                        .iter()
                        .try_fold(Fused::NONE, |f, op| f.then(*op))
                        .unwrap();
                    let epilogue = Epilogue {
                        bias: with_bias.then_some(&bias[..]),
                        fused,
                        residual: fused.has_residual().then_some(&residual[..]),
                    };
                    gemm(isa, &lhs, &packed, c, &epilogue);
                    let want: Vec<f32> = expected
                        .iter()
                        .enumerate()
                        .map(|(i, &v)| {
                            let v = if with_bias { v + bias[i % n] } else { v };
                            ops.iter().fold(v, |v, op| naive_op(*op, v, residual[i]))
                        })
                        .collect();
                    let err = max_relative_error(c, &want);
                    assert!(
                        err <= 1e-5,
                        "{} {m}x{k}x{n} {ops:?} bias {with_bias}: {err:e}",
                        isa.name()
                    );
                }
            }
        }
    }

    /// Epilogues to test: every activation, each with and without a bias, the residual
    /// alone, before and after an activation, and between two.
    pub(crate) fn epilogues() -> Vec<(bool, Vec<PostOp>)> {
        use Activation::*;
        let act = PostOp::Activation;
        let mut all = vec![
            (false, vec![]),
            (true, vec![]),
            (false, vec![PostOp::Residual]),
        ];
        for a in [Relu, Relu6, HardSwish] {
            all.push((true, vec![act(a)]));
            all.push((false, vec![act(a)]));
            all.push((true, vec![act(a), PostOp::Residual]));
            all.push((true, vec![PostOp::Residual, act(a)]));
        }
        all.push((true, vec![act(Relu6), PostOp::Residual, act(HardSwish)]));
        all
    }

    /// One epilogue operation, written out from its definition.
    pub(crate) fn naive_op(op: PostOp, v: f32, residual: f32) -> f32 {
        match op {
            PostOp::Activation(Activation::None) => v,
            PostOp::Activation(Activation::Relu) => v.max(0.0),
            PostOp::Activation(Activation::Relu6) => v.clamp(0.0, 6.0),
            PostOp::Activation(Activation::HardSwish) => v * (v + 3.0).clamp(0.0, 6.0) / 6.0,
            PostOp::Residual => v + residual,
        }
    }
}
