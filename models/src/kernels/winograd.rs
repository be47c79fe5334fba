//! 3x3 stride-1 convolution by Winograd's minimal filtering F(2x2, 3x3) and F(4x4, 3x3)
//! (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016).
//!
//! Each `m x m` block of output pixels (a tile) is computed from the `(m+2) x (m+2)` input
//! patch around it: `Y = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A`. Summed over input channels, the
//! element-wise product becomes `(m+2)²` independent GEMMs (`tiles x c_in` times
//! `c_in x c_out`), one per position of the transformed patch. Per output pixel and channel
//! pair that is 16/4 = 4 multiplies for F(2x2) and 36/16 = 2.25 for F(4x4), where direct
//! convolution needs 9. The filter transform `G g Gᵀ` is done once, at load (in f64); input
//! and output transforms run per block of tiles, vectorised over channels, with the bias and
//! activation fused into the output transform. Blocks of tiles are shared out over rayon's
//! pool, and each block's buffers stay in the thread's cache.
//!
//! F(2x2)'s transforms only add, subtract and halve, so its rounding error stays at the level
//! of direct convolution. F(4x4)'s use the points 0, ±1, ±2 and multiply by up to 8 (Bᵀ, Aᵀ)
//! and 1/24 (G): in f32 its error is a few times larger, still well inside 1e-4 relative
//! (tested here and across whole networks in `models/tests/kernels.rs`), and it stores 36
//! transformed values per filter where F(2x2) stores 16 and direct convolution 9.

use std::cell::RefCell;

use rayon::prelude::*;

use super::conv::Geometry;
use super::gemm::{self, Epilogue, PackedB, RowMajor};
use super::{multiversion, multiversion_unsafe, parallel, Fused, Isa, SyncPtr};

/// Output pixels per block of work (rounded to whole tiles): enough rows for each GEMM to
/// reuse every strip of the transformed filters many times once it is in cache.
const MAX_PIXELS: usize = 768;
/// Fewer output pixels than this per thread, and the threads split the output channels
/// instead.
const MIN_PIXELS: usize = 192;
/// Lanes the transforms process at once (the compiler maps them to vector registers).
const LANES: usize = 16;

/// The output tile side `m` of F(m x m, 3x3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tile {
    /// F(2x2, 3x3): 4x4 input patches, 16 GEMMs.
    F2,
    /// F(4x4, 3x3): 6x6 input patches, 36 GEMMs.
    F4,
}

impl Tile {
    /// Output pixels per tile side.
    pub fn m(self) -> usize {
        match self {
            Tile::F2 => 2,
            Tile::F4 => 4,
        }
    }

    /// Input (and transformed) patch side, `m + 2`.
    fn alpha(self) -> usize {
        self.m() + 2
    }

    /// Positions of the transformed patch: GEMMs per block.
    fn positions(self) -> usize {
        self.alpha() * self.alpha()
    }
}

/// Transformed filters: `u[t]` is the `c_in x c_out` matrix of position `t` of `G g Gᵀ`.
pub struct Winograd {
    tile: Tile,
    c_in: usize,
    c_out: usize,
    u: Vec<PackedB>,
}

impl Winograd {
    /// `weight` is OIHW `[c_out, c_in, 3, 3]`.
    pub fn new(isa: Isa, tile: Tile, weight: &[f32], c_in: usize, c_out: usize) -> Self {
        assert_eq!(weight.len(), c_out * c_in * 9);
        let positions = tile.positions();
        // G g Gᵀ for every (o, i), as [o][i][positions].
        let mut transformed = vec![0f32; c_out * c_in * positions];
        for (g, u) in weight
            .chunks_exact(9)
            .zip(transformed.chunks_exact_mut(positions))
        {
            filter_transform(tile, g, u);
        }
        let u = (0..positions)
            .map(|t| {
                PackedB::new(isa, c_in, c_out, |i, o| {
                    transformed[(o * c_in + i) * positions + t]
                })
            })
            .collect();
        Self {
            tile,
            c_in,
            c_out,
            u,
        }
    }

    pub fn tile(&self) -> Tile {
        self.tile
    }

    pub fn bytes(&self) -> usize {
        self.u.iter().map(PackedB::bytes).sum()
    }

    /// `output = fused(conv3x3(input) + bias)`, `fused` reading `residual` where it adds it;
    /// NHWC, stride 1, padding from `g`.
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        isa: Isa,
        input: &[f32],
        g: &Geometry,
        bias: &[f32],
        fused: Fused,
        residual: Option<&[f32]>,
        output: &mut [f32],
    ) {
        fused.check_residual(residual.is_some());
        assert_eq!((g.kernel, g.stride, g.c_in), (3, 1, self.c_in));
        let (m, positions) = (self.tile.m(), self.tile.positions());
        let (th, tw) = (g.out_height.div_ceil(m), g.out_width.div_ceil(m));
        let tiles = g.batch * th * tw;
        assert!(
            output.len() >= g.out_pixels() * self.c_out,
            "output too small"
        );
        // Blocks of tiles, a multiple of the thread count; or, with few tiles, one block whose
        // output channels are split between the threads.
        let (max_tiles, min_tiles) = (MAX_PIXELS / (m * m), MIN_PIXELS / (m * m));
        let par = parallel(tiles * positions * self.c_in * self.c_out);
        let threads = if par { rayon::current_num_threads() } else { 1 };
        let nr = self.u[0].nr();
        let strips = self.c_out.div_ceil(nr);
        let (blocks, groups) = if !par {
            (tiles.div_ceil(max_tiles), 1)
        } else if tiles < threads * min_tiles {
            (1, threads.min(strips))
        } else {
            (tiles.div_ceil(max_tiles).div_ceil(threads) * threads, 1)
        };
        let per_block = tiles.div_ceil(blocks);
        let per_group = strips.div_ceil(groups);
        let out = SyncPtr::new(output);
        let run = |item: usize| {
            let (block, group) = (item / groups, item % groups);
            let first = block * per_block;
            if first >= tiles {
                return;
            }
            let count = per_block.min(tiles - first);
            let strips = group * per_group..((group + 1) * per_group).min(strips);
            let channels = strips.start * nr..(strips.end * nr).min(self.c_out);
            SCRATCH.with_borrow_mut(|scratch| {
                // The transformed inputs of position t form a row-major [tiles, c_in] matrix,
                // which the GEMM reads in place.
                let per_t = count * self.c_in;
                // Grown, never shrunk: shrinking and growing again would zero-fill each call.
                let (v_len, m_len) = (positions * per_t, positions * count * self.c_out);
                if scratch.v.len() < v_len {
                    scratch.v.resize(v_len, 0.0);
                }
                if scratch.m.len() < m_len {
                    scratch.m.resize(m_len, 0.0);
                }
                let v = &mut scratch.v[..positions * per_t];
                let mm = &mut scratch.m[..positions * count * self.c_out];
                for tile in 0..count {
                    let origin = tile_origin(first + tile, m, th, tw);
                    let layout = (tile, per_t);
                    match self.tile {
                        Tile::F2 => input_transform_f2(isa, input, g, origin, layout, v),
                        Tile::F4 => input_transform_f4(isa, input, g, origin, layout, v),
                    }
                }
                for (t, u) in self.u.iter().enumerate() {
                    let a = RowMajor {
                        data: &v[t * per_t..(t + 1) * per_t],
                        rows: count,
                        cols: self.c_in,
                    };
                    let c = &mut mm[t * count * self.c_out..(t + 1) * count * self.c_out];
                    gemm::gemm_serial(isa, &a, u, c, strips.clone(), &Epilogue::NONE, false);
                }
                let epilogue = Epilogue {
                    bias: Some(bias),
                    fused,
                    residual,
                };
                for tile in 0..count {
                    let origin = tile_origin(first + tile, m, th, tw);
                    let at = (tile, count, self.c_out);
                    let channels = channels.clone();
                    // SAFETY: `out` holds the whole output (checked above), which outlives the
                    // loop, and each item writes its own tiles' pixels in its own channels.
                    unsafe {
                        match self.tile {
                            Tile::F2 => output_transform_f2(
                                isa, mm, g, origin, at, channels, &epilogue, out,
                            ),
                            Tile::F4 => output_transform_f4(
                                isa, mm, g, origin, at, channels, &epilogue, out,
                            ),
                        }
                    };
                }
            });
        };
        if par {
            (0..blocks * groups).into_par_iter().for_each(run);
        } else {
            (0..blocks * groups).for_each(run);
        }
    }
}

/// Per-thread buffers of one block: transformed inputs `v[positions][tiles][c_in]` and GEMM
/// outputs `m[positions][tiles][c_out]`.
#[derive(Default)]
struct Scratch {
    v: Vec<f32>,
    m: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// `(image, top output row, left output column)` of tile number `tile` (tiles of `m x m`
/// pixels, `th x tw` per image).
fn tile_origin(tile: usize, m: usize, th: usize, tw: usize) -> (usize, usize, usize) {
    let (image, rest) = (tile / (th * tw), tile % (th * tw));
    (image, m * (rest / tw), m * (rest % tw))
}

/// `G g Gᵀ` for one 3x3 filter `g` (row-major), as a row-major `alpha x alpha` into `out`.
fn filter_transform(tile: Tile, g: &[f32], out: &mut [f32]) {
    // G, row by row: F(2x2) interpolates at 0, ±1, ∞; F(4x4) at 0, ±1, ±2, ∞.
    const G2: [[f64; 3]; 4] = [
        [1.0, 0.0, 0.0],
        [0.5, 0.5, 0.5],
        [0.5, -0.5, 0.5],
        [0.0, 0.0, 1.0],
    ];
    const G4: [[f64; 3]; 6] = [
        [1.0 / 4.0, 0.0, 0.0],
        [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
        [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
        [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
        [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
        [0.0, 0.0, 1.0],
    ];
    let gm: &[[f64; 3]] = match tile {
        Tile::F2 => &G2,
        Tile::F4 => &G4,
    };
    let alpha = gm.len();
    // (G g)[r][c] = sum_k G[r][k] g[k][c]; out[r][s] = sum_c (G g)[r][c] G[s][c].
    for r in 0..alpha {
        let gg: [f64; 3] =
            std::array::from_fn(|c| (0..3).map(|k| gm[r][k] * f64::from(g[k * 3 + c])).sum());
        for s in 0..alpha {
            out[r * alpha + s] = (0..3).map(|c| gg[c] * gm[s][c]).sum::<f64>() as f32;
        }
    }
}

/// Input offsets of the `alpha x alpha` patch of the tile at `origin`, `None` in the padding.
#[inline(always)]
fn patch_rows<const P: usize>(
    g: &Geometry,
    alpha: usize,
    (image, oy, ox): (usize, usize, usize),
) -> [Option<usize>; P] {
    std::array::from_fn(|i| {
        g.source(oy, ox, i / alpha, i % alpha)
            .map(|(iy, ix)| ((image * g.height + iy) * g.width + ix) * g.c_in)
    })
}

/// Gathers channels `c0 .. c0+len` of the patch into `d[i][lane]` (zeros in the padding).
#[inline(always)]
fn gather<const P: usize>(
    input: &[f32],
    rows: &[Option<usize>; P],
    c0: usize,
    len: usize,
    d: &mut [[f32; LANES]; P],
) {
    for (i, src) in rows.iter().enumerate() {
        match src {
            Some(at) => d[i][..len].copy_from_slice(&input[at + c0..at + c0 + len]),
            None => d[i] = [0.0; LANES],
        }
    }
}

/// Writes the transformed patch `d` (channels `c0 .. c0+len`) into row `tile` of `v[t]`
/// (`per_t` values apart), a row-major `[tiles, c_in]` matrix.
#[inline(always)]
fn scatter<const P: usize>(
    d: &[[f32; LANES]; P],
    (tile, per_t): (usize, usize),
    c_in: usize,
    c0: usize,
    len: usize,
    v: &mut [f32],
) {
    for (t, dt) in d.iter().enumerate() {
        let at = t * per_t + tile * c_in + c0;
        v[at..at + len].copy_from_slice(&dt[..len]);
    }
}

multiversion! {
    /// F(2x2)'s `Bᵀ d B` of the 4x4 patch of a tile (origin `(image, oy, ox)`), for all
    /// channels, into `v` (see [`scatter`]). Pixels outside the input are zeros.
    fn input_transform_f2(
        input: &[f32],
        g: &Geometry,
        origin: (usize, usize, usize),
        layout: (usize, usize),
        v: &mut [f32],
    ) {
        let rows = patch_rows::<16>(g, 4, origin);
        let c = g.c_in;
        let mut c0 = 0;
        // Zeroed once per call, not per block of channels (see `input_transform_f4`).
        let (mut d, mut r) = ([[0f32; LANES]; 16], [[0f32; LANES]; 16]);
        while c0 < c {
            let len = LANES.min(c - c0);
            gather(input, &rows, c0, len, &mut d);
            // Bᵀ = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]] on rows, then
            // on columns.
            for x in 0..4 {
                for l in 0..LANES {
                    let (d0, d1, d2, d3) = (d[x][l], d[4 + x][l], d[8 + x][l], d[12 + x][l]);
                    r[x][l] = d0 - d2;
                    r[4 + x][l] = d1 + d2;
                    r[8 + x][l] = d2 - d1;
                    r[12 + x][l] = d1 - d3;
                }
            }
            for y in 0..4 {
                for l in 0..LANES {
                    let [d0, d1, d2, d3] = [0, 1, 2, 3].map(|x| r[4 * y + x][l]);
                    d[4 * y][l] = d0 - d2;
                    d[4 * y + 1][l] = d1 + d2;
                    d[4 * y + 2][l] = d2 - d1;
                    d[4 * y + 3][l] = d1 - d3;
                }
            }
            scatter(&d, layout, c, c0, len, v);
            c0 += len;
        }
    }
}

/// F(4x4)'s `Bᵀ` applied to six values.
#[inline(always)]
fn b4([d0, d1, d2, d3, d4, d5]: [f32; 6]) -> [f32; 6] {
    [
        4.0 * d0 - 5.0 * d2 + d4,
        -4.0 * (d1 + d2) + d3 + d4,
        4.0 * (d1 - d2) - d3 + d4,
        2.0 * (d3 - d1) - d2 + d4,
        2.0 * (d1 - d3) - d2 + d4,
        4.0 * d1 - 5.0 * d3 + d5,
    ]
}

/// F(4x4)'s `Aᵀ` applied to six values.
#[inline(always)]
fn a4([m0, m1, m2, m3, m4, m5]: [f32; 6]) -> [f32; 4] {
    let (s12, d12, s34, d34) = (m1 + m2, m1 - m2, m3 + m4, m3 - m4);
    [
        m0 + s12 + s34,
        d12 + 2.0 * d34,
        s12 + 4.0 * s34,
        d12 + 8.0 * d34 + m5,
    ]
}

multiversion! {
    /// F(4x4)'s `Bᵀ d B` of the 6x6 patch of a tile, as [`input_transform_f2`].
    fn input_transform_f4(
        input: &[f32],
        g: &Geometry,
        origin: (usize, usize, usize),
        layout: (usize, usize),
        v: &mut [f32],
    ) {
        let rows = patch_rows::<36>(g, 6, origin);
        let c = g.c_in;
        let mut c0 = 0;
        // Zeroed once per call, not per block of channels: the compiler does not see that
        // each block overwrites them, and the `memset`s of a block cost as many instructions
        // as its arithmetic (callgrind, alexnet-small's second convolution: 44 M of 238 M,
        // mostly here and in `output_transform_f4`). What a block leaves in lanes past `len`
        // (the last block of a channel count that is no multiple of LANES) is never written
        // out.
        let (mut d, mut r) = ([[0f32; LANES]; 36], [[0f32; LANES]; 36]);
        while c0 < c {
            let len = LANES.min(c - c0);
            gather(input, &rows, c0, len, &mut d);
            // Bᵀ on the columns of the patch, then on its rows.
            for x in 0..6 {
                for l in 0..LANES {
                    let col = b4([0, 1, 2, 3, 4, 5].map(|y| d[6 * y + x][l]));
                    for (y, value) in col.into_iter().enumerate() {
                        r[6 * y + x][l] = value;
                    }
                }
            }
            for y in 0..6 {
                for l in 0..LANES {
                    let row = b4([0, 1, 2, 3, 4, 5].map(|x| r[6 * y + x][l]));
                    for (x, value) in row.into_iter().enumerate() {
                        d[6 * y + x][l] = value;
                    }
                }
            }
            scatter(&d, layout, c, c0, len, v);
            c0 += len;
        }
    }
}

/// Writes output row `values` of channels `c0 .. c0+len` to pixel `(py, px)` of `image`
/// through the epilogue, if the pixel exists.
///
/// # Safety
/// As [`output_transform_f2`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn emit(
    values: &[f32],
    g: &Geometry,
    (image, py, px): (usize, usize, usize),
    c: usize,
    c0: usize,
    epilogue: &Epilogue,
    output: SyncPtr,
) {
    if py >= g.out_height || px >= g.out_width {
        return;
    }
    let len = values.len();
    let at = ((image * g.out_height + py) * g.out_width + px) * c + c0;
    // SAFETY: pixel (py, px) lies inside the output; see the caller's contract.
    let dst = unsafe { std::slice::from_raw_parts_mut(output.get().add(at), len) };
    dst.copy_from_slice(values);
    if let Some(bias) = epilogue.bias {
        dst.iter_mut()
            .zip(&bias[c0..c0 + len])
            .for_each(|(d, b)| *d += *b);
    }
    let residual = epilogue.residual.map(|r| &r[at..at + len]);
    epilogue.fused.apply(dst, residual);
}

multiversion_unsafe! {
    /// F(2x2)'s `Aᵀ m A` of tile `tile` from `m[t][tile][c]` (`at = (tile, tiles, c)`),
    /// through the epilogue, written to the output pixels of the tile that exist, for the
    /// output channels `channels`.
    ///
    /// # Safety
    /// `output` points to the whole NHWC output of `g` with `c` channels, and no other thread
    /// writes these pixels and channels meanwhile.
    #[allow(clippy::too_many_arguments)]
    unsafe fn output_transform_f2(
        m: &[f32],
        g: &Geometry,
        origin: (usize, usize, usize),
        at: (usize, usize, usize),
        channels: std::ops::Range<usize>,
        epilogue: &Epilogue,
        output: SyncPtr,
    ) {
        let (image, oy, ox) = origin;
        let (tile, tiles, c) = at;
        let mut c0 = channels.start;
        // Zeroed once per call (see `input_transform_f4`).
        let (mut s, mut r, mut y) = ([[0f32; LANES]; 16], [[0f32; LANES]; 8], [[0f32; LANES]; 4]);
        while c0 < channels.end {
            let len = LANES.min(channels.end - c0);
            for (t, st) in s.iter_mut().enumerate() {
                let at = (t * tiles + tile) * c + c0;
                st[..len].copy_from_slice(&m[at..at + len]);
            }
            // Aᵀ = [[1, 1, 1, 0], [0, 1, -1, -1]] on rows, then on columns.
            for x in 0..4 {
                for l in 0..LANES {
                    let (m0, m1, m2, m3) = (s[x][l], s[4 + x][l], s[8 + x][l], s[12 + x][l]);
                    r[x][l] = m0 + m1 + m2;
                    r[4 + x][l] = m1 - m2 - m3;
                }
            }
            for row in 0..2 {
                for l in 0..LANES {
                    let [m0, m1, m2, m3] = [0, 1, 2, 3].map(|x| r[4 * row + x][l]);
                    y[2 * row][l] = m0 + m1 + m2;
                    y[2 * row + 1][l] = m1 - m2 - m3;
                }
            }
            for (i, yi) in y.iter().enumerate() {
                let pixel = (image, oy + i / 2, ox + i % 2);
                // SAFETY: the function's contract.
                unsafe { emit(&yi[..len], g, pixel, c, c0, epilogue, output) };
            }
            c0 += len;
        }
    }
}

multiversion_unsafe! {
    /// F(4x4)'s `Aᵀ m A`, as [`output_transform_f2`].
    ///
    /// # Safety
    /// As [`output_transform_f2`].
    #[allow(clippy::too_many_arguments)]
    unsafe fn output_transform_f4(
        m: &[f32],
        g: &Geometry,
        origin: (usize, usize, usize),
        at: (usize, usize, usize),
        channels: std::ops::Range<usize>,
        epilogue: &Epilogue,
        output: SyncPtr,
    ) {
        let (image, oy, ox) = origin;
        let (tile, tiles, c) = at;
        let mut c0 = channels.start;
        // Zeroed once per call (see `input_transform_f4`).
        let (mut s, mut r, mut y) = ([[0f32; LANES]; 36], [[0f32; LANES]; 24], [[0f32; LANES]; 16]);
        while c0 < channels.end {
            let len = LANES.min(channels.end - c0);
            for (t, st) in s.iter_mut().enumerate() {
                let at = (t * tiles + tile) * c + c0;
                st[..len].copy_from_slice(&m[at..at + len]);
            }
            // Aᵀ on the columns (6 -> 4 rows), then on the rows (6 -> 4 columns).
            for x in 0..6 {
                for l in 0..LANES {
                    let col = a4([0, 1, 2, 3, 4, 5].map(|y| s[6 * y + x][l]));
                    for (y, value) in col.into_iter().enumerate() {
                        r[6 * y + x][l] = value;
                    }
                }
            }
            for row in 0..4 {
                for l in 0..LANES {
                    let out = a4([0, 1, 2, 3, 4, 5].map(|x| r[6 * row + x][l]));
                    for (x, value) in out.into_iter().enumerate() {
                        y[4 * row + x][l] = value;
                    }
                }
            }
            for (i, yi) in y.iter().enumerate() {
                let pixel = (image, oy + i / 4, ox + i % 4);
                // SAFETY: the function's contract.
                unsafe { emit(&yi[..len], g, pixel, c, c0, epilogue, output) };
            }
            c0 += len;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::conv::Conv;
    use crate::kernels::testing::{fused_case, max_relative_error, Rng};
    use crate::layers::Padding;

    /// Both tile sizes against the im2col convolution (itself tested against candle) on odd
    /// sizes, paddings 0..2 and every instruction set.
    #[test]
    fn winograd_matches_direct_convolution() {
        let mut rng = Rng::new(6);
        for isa in Isa::supported() {
            for case in 0..24 {
                let tile = [Tile::F2, Tile::F4][case % 2];
                let (n, h, w) = (1 + rng.below(2), 3 + rng.below(13), 3 + rng.below(13));
                let (c_in, c_out) = (1 + rng.below(40), 1 + rng.below(40));
                // Some large enough to be shared out over threads.
                let (h, w, c_in, c_out) = if case % 4 == 3 {
                    (h + 24, w + 24, c_in + 24, c_out + 40)
                } else {
                    (h, w, c_in, c_out)
                };
                let padding = Padding::Symmetric([1, 0, 2][(case / 2) % 3]);
                let x = rng.vec(n * h * w * c_in);
                let weight = rng.vec(c_out * c_in * 9);
                let bias = rng.vec(c_out);
                // Every epilogue of the GEMM's tests in turn, as in the direct kernel's test.
                let fused = fused_case(case);
                let shape = (c_in, c_out, 3);
                let direct = Conv::new(isa, &weight, bias.clone(), shape, 1, padding, fused)
                    .into_im2col(isa, &weight);
                let g = direct.geometry((n, h, w));
                let residual = rng.vec(g.out_pixels() * c_out);
                let residual = fused.has_residual().then_some(&residual[..]);
                let mut expected = vec![0f32; g.out_pixels() * c_out];
                direct.run(isa, &x, (n, h, w), &mut expected, residual);
                let wino = Winograd::new(isa, tile, &weight, c_in, c_out);
                let mut out = vec![f32::NAN; expected.len()];
                wino.run(isa, &x, &g, &bias, fused, residual, &mut out);
                let err = max_relative_error(&out, &expected);
                // F(4x4)'s larger transform constants cost some rounding (module docs).
                let bound = if tile == Tile::F2 { 1e-5 } else { 5e-5 };
                assert!(
                    err <= bound,
                    "{} {tile:?} {n}x{h}x{w} {c_in}->{c_out} {padding:?}: {err:e}",
                    isa.name()
                );
            }
        }
    }
}
