//! 3x3 stride-1 convolution as Winograd's minimal filtering F(2x2, 3x3) (Lavin & Gray, "Fast
//! Algorithms for Convolutional Neural Networks", 2016).
//!
//! Each 2x2 block of output pixels (a tile) is computed from the 4x4 input patch around it:
//! `Y = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A`. Summed over input channels, the element-wise product
//! becomes 16 independent GEMMs (`tiles x c_in` times `c_in x c_out`), one per position of
//! the 4x4 transformed patch: 16 multiplies per tile and channel pair where direct convolution
//! needs 36, so 2.25x fewer FLOPs in the part that dominates. The filter transform `G g Gᵀ` is
//! done once, at load; input and output transforms run per block of tiles, vectorised over
//! channels, with the bias and activation fused into the output transform. Blocks of tiles
//! are shared out over rayon's pool, and each block's buffers stay in the thread's cache.
//!
//! F(2x2, 3x3)'s transforms only add, subtract and halve, so its rounding error stays at the
//! level of direct convolution (larger tiles, F(4x4, 3x3), trade accuracy for fewer FLOPs).

use std::cell::RefCell;

use rayon::prelude::*;

use super::conv::Geometry;
use super::gemm::{self, Epilogue, Microkernel, PackedB, Panels};
use super::{multiversion, multiversion_unsafe, parallel, Activation, Isa, SyncPtr};

/// Most tiles per block of work: enough rows for each GEMM to reuse every strip of the
/// transformed filters many times once it is in cache.
const MAX_TILES: usize = 192;
/// Fewer tiles than this per thread, and the threads split the output channels instead.
const MIN_TILES: usize = 48;
/// Lanes the transforms process at once (the compiler maps them to vector registers).
const LANES: usize = 16;

/// Transformed filters: `u[t]` is the `c_in x c_out` matrix of position `t` of `G g Gᵀ`.
pub struct Winograd {
    c_in: usize,
    c_out: usize,
    u: Vec<PackedB>,
}

impl Winograd {
    /// `weight` is OIHW `[c_out, c_in, 3, 3]`.
    pub fn new(isa: Isa, weight: &[f32], c_in: usize, c_out: usize) -> Self {
        assert_eq!(weight.len(), c_out * c_in * 9);
        // G g Gᵀ for every (o, i), as [o][i][16].
        let mut transformed = vec![0f32; c_out * c_in * 16];
        for (g, u) in weight.chunks_exact(9).zip(transformed.chunks_exact_mut(16)) {
            u.copy_from_slice(&filter_transform(g));
        }
        let u = (0..16)
            .map(|t| {
                PackedB::new(isa, c_in, c_out, |i, o| {
                    transformed[(o * c_in + i) * 16 + t]
                })
            })
            .collect();
        Self { c_in, c_out, u }
    }

    pub fn bytes(&self) -> usize {
        self.u.iter().map(PackedB::bytes).sum()
    }

    /// `output = activation(conv3x3(input) + bias) + residual`, NHWC, stride 1, padding
    /// from `g`.
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        isa: Isa,
        input: &[f32],
        g: &Geometry,
        bias: &[f32],
        activation: Activation,
        residual: Option<&[f32]>,
        output: &mut [f32],
    ) {
        assert_eq!((g.kernel, g.stride, g.c_in), (3, 1, self.c_in));
        let (th, tw) = (g.out_height.div_ceil(2), g.out_width.div_ceil(2));
        let tiles = g.batch * th * tw;
        assert!(
            output.len() >= g.out_pixels() * self.c_out,
            "output too small"
        );
        // Blocks of tiles, a multiple of the thread count; or, with few tiles, one block whose
        // output channels are split between the threads.
        let par = parallel(tiles * 16 * self.c_in * self.c_out);
        let threads = if par { rayon::current_num_threads() } else { 1 };
        let nr = self.u[0].nr();
        let strips = self.c_out.div_ceil(nr);
        let (blocks, groups) = if !par {
            (tiles.div_ceil(MAX_TILES), 1)
        } else if tiles < threads * MIN_TILES {
            (1, threads.min(strips))
        } else {
            (tiles.div_ceil(MAX_TILES).div_ceil(threads) * threads, 1)
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
                // The transformed inputs go straight into the GEMM's packed layout.
                let mr = Microkernel::for_isa(isa).mr;
                let per_t = count.div_ceil(mr) * mr * self.c_in;
                scratch.v.resize(16 * per_t, 0.0);
                scratch.m.resize(16 * count * self.c_out, 0.0);
                let v = &mut scratch.v[..16 * per_t];
                let m = &mut scratch.m[..16 * count * self.c_out];
                for tile in 0..count {
                    let origin = tile_origin(first + tile, th, tw);
                    input_transform(isa, input, g, origin, (tile, mr, per_t), v);
                }
                for (t, u) in self.u.iter().enumerate() {
                    let a = Panels {
                        data: &v[t * per_t..(t + 1) * per_t],
                        rows: count,
                        cols: self.c_in,
                        mr,
                    };
                    let c = &mut m[t * count * self.c_out..(t + 1) * count * self.c_out];
                    gemm::gemm_serial(isa, &a, u, c, strips.clone());
                }
                let epilogue = Epilogue {
                    bias: Some(bias),
                    activation,
                    residual,
                };
                for tile in 0..count {
                    let origin = tile_origin(first + tile, th, tw);
                    let channels = channels.clone();
                    // SAFETY: `out` holds the whole output (checked above), which outlives the
                    // loop, and each item writes its own tiles' pixels in its own channels.
                    unsafe {
                        output_transform(
                            isa, m, g, origin, tile, count, self.c_out, channels, &epilogue, out,
                        )
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

/// Per-thread buffers of one block: transformed inputs `v[16][tiles][c_in]` and GEMM outputs
/// `m[16][tiles][c_out]`.
#[derive(Default)]
struct Scratch {
    v: Vec<f32>,
    m: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// `(image, top output row, left output column)` of tile number `tile`.
fn tile_origin(tile: usize, th: usize, tw: usize) -> (usize, usize, usize) {
    let (image, rest) = (tile / (th * tw), tile % (th * tw));
    (image, 2 * (rest / tw), 2 * (rest % tw))
}

/// `G g Gᵀ` for one 3x3 filter `g` (row-major), as a row-major 4x4.
fn filter_transform(g: &[f32]) -> [f32; 16] {
    // G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]] applied to a column.
    let apply = |v: [f64; 3]| {
        [
            v[0],
            (v[0] + v[1] + v[2]) / 2.0,
            (v[0] - v[1] + v[2]) / 2.0,
            v[2],
        ]
    };
    let g = |r: usize, c: usize| f64::from(g[r * 3 + c]);
    // G g, by columns of g.
    let columns = [0, 1, 2].map(|c| apply([g(0, c), g(1, c), g(2, c)]));
    let mut out = [0f32; 16];
    for r in 0..4 {
        // (G g) Gᵀ: G applied to each row of G g.
        let row = apply([columns[0][r], columns[1][r], columns[2][r]]);
        for (c, v) in row.into_iter().enumerate() {
            out[r * 4 + c] = v as f32;
        }
    }
    out
}

multiversion! {
    /// `Bᵀ d B` of the 4x4 patch of a tile (origin `(image, oy, ox)`), for all channels, into
    /// `v[t]` (layout `(tile, mr, per_t)`: `per_t` values apart) packed in panels of `mr` tiles: `[panel][c][tile %
    /// mr]`, the GEMM's layout ([`Panels`]). Pixels outside the input are zeros.
    fn input_transform(
        input: &[f32],
        g: &Geometry,
        origin: (usize, usize, usize),
        layout: (usize, usize, usize),
        v: &mut [f32],
    ) {
        let (image, oy, ox) = origin;
        let (tile, mr, per_t) = layout;
        let panel = tile / mr * g.c_in * mr + tile % mr;
        let c = g.c_in;
        let zeros = [0f32; LANES];
        let mut rows: [Option<usize>; 16] = [None; 16];
        for (i, row) in rows.iter_mut().enumerate() {
            let (y, x) = (i / 4, i % 4);
            *row = g
                .source(oy, ox, y, x)
                .map(|(iy, ix)| ((image * g.height + iy) * g.width + ix) * c);
        }
        let mut c0 = 0;
        while c0 < c {
            let len = LANES.min(c - c0);
            let mut d = [[0f32; LANES]; 16];
            for (i, src) in rows.iter().enumerate() {
                let s = match src {
                    Some(at) => &input[at + c0..at + c0 + len],
                    None => &zeros[..len],
                };
                d[i][..len].copy_from_slice(s);
            }
            // Bᵀ = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]] on rows, then
            // on columns.
            let mut r = [[0f32; LANES]; 16];
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
                    let (d0, d1, d2, d3) = (r[4 * y][l], r[4 * y + 1][l], r[4 * y + 2][l], r[4 * y + 3][l]);
                    d[4 * y][l] = d0 - d2;
                    d[4 * y + 1][l] = d1 + d2;
                    d[4 * y + 2][l] = d2 - d1;
                    d[4 * y + 3][l] = d1 - d3;
                }
            }
            for (t, dt) in d.iter().enumerate() {
                let at = t * per_t + panel + c0 * mr;
                for (l, x) in dt[..len].iter().enumerate() {
                    v[at + l * mr] = *x;
                }
            }
            c0 += len;
        }
    }
}

multiversion_unsafe! {
    /// `Aᵀ m A` of tile `tile` from `m[t][tile][c]`, through the epilogue, written to the
    /// output pixels of the tile that exist, for the output channels `channels`.
    ///
    /// # Safety
    /// `output` points to the whole NHWC output of `g` with `c` channels, and no other thread
    /// writes these pixels and channels meanwhile.
    #[allow(clippy::too_many_arguments)]
    unsafe fn output_transform(
        m: &[f32],
        g: &Geometry,
        origin: (usize, usize, usize),
        tile: usize,
        tiles: usize,
        c: usize,
        channels: std::ops::Range<usize>,
        epilogue: &Epilogue,
        output: SyncPtr,
    ) {
        let (image, oy, ox) = origin;
        let mut c0 = channels.start;
        while c0 < channels.end {
            let len = LANES.min(channels.end - c0);
            let mut s = [[0f32; LANES]; 16];
            for (t, st) in s.iter_mut().enumerate() {
                let at = (t * tiles + tile) * c + c0;
                st[..len].copy_from_slice(&m[at..at + len]);
            }
            // Aᵀ = [[1, 1, 1, 0], [0, 1, -1, -1]] on rows, then on columns.
            let mut r = [[0f32; LANES]; 8];
            for x in 0..4 {
                for l in 0..LANES {
                    let (m0, m1, m2, m3) = (s[x][l], s[4 + x][l], s[8 + x][l], s[12 + x][l]);
                    r[x][l] = m0 + m1 + m2;
                    r[4 + x][l] = m1 - m2 - m3;
                }
            }
            let mut y = [[0f32; LANES]; 4];
            for row in 0..2 {
                for l in 0..LANES {
                    let (m0, m1, m2, m3) = (r[4 * row][l], r[4 * row + 1][l], r[4 * row + 2][l], r[4 * row + 3][l]);
                    y[2 * row][l] = m0 + m1 + m2;
                    y[2 * row + 1][l] = m1 - m2 - m3;
                }
            }
            for (i, yi) in y.iter_mut().enumerate() {
                let (py, px) = (oy + i / 2, ox + i % 2);
                if py >= g.out_height || px >= g.out_width {
                    continue;
                }
                let at = ((image * g.out_height + py) * g.out_width + px) * c + c0;
                // SAFETY: pixel (py, px) lies inside the output; see the function's contract.
                let dst = unsafe { std::slice::from_raw_parts_mut(output.get().add(at), len) };
                dst.copy_from_slice(&yi[..len]);
                if let Some(bias) = epilogue.bias {
                    dst.iter_mut().zip(&bias[c0..c0 + len]).for_each(|(d, b)| *d += *b);
                }
                epilogue.activation.apply(dst);
                if let Some(residual) = epilogue.residual {
                    dst.iter_mut().zip(&residual[at..at + len]).for_each(|(d, r)| *d += *r);
                }
            }
            c0 += len;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::conv::Conv;
    use crate::kernels::testing::{max_relative_error, Rng};
    use crate::layers::Padding;

    /// Against the im2col convolution (itself tested against candle) on odd sizes, paddings
    /// 0..2 and every instruction set.
    #[test]
    fn winograd_matches_direct_convolution() {
        let mut rng = Rng::new(6);
        for isa in Isa::supported() {
            for case in 0..12 {
                let (n, h, w) = (1 + rng.below(2), 3 + rng.below(13), 3 + rng.below(13));
                let (c_in, c_out) = (1 + rng.below(40), 1 + rng.below(40));
                let padding = Padding::Symmetric([1, 0, 2][case % 3]);
                let x = rng.vec(n * h * w * c_in);
                let weight = rng.vec(c_out * c_in * 9);
                let bias = rng.vec(c_out);
                let direct = Conv::direct(
                    isa,
                    &weight,
                    bias.clone(),
                    (c_in, c_out, 3),
                    1,
                    padding,
                    Activation::Relu,
                );
                let g = direct.geometry((n, h, w));
                let residual = rng.vec(g.out_pixels() * c_out);
                let mut expected = vec![0f32; g.out_pixels() * c_out];
                direct.run(isa, &x, (n, h, w), &mut expected, Some(&residual));
                let wino = Winograd::new(isa, &weight, c_in, c_out);
                let mut out = vec![f32::NAN; expected.len()];
                wino.run(
                    isa,
                    &x,
                    &g,
                    &bias,
                    Activation::Relu,
                    Some(&residual),
                    &mut out,
                );
                let err = max_relative_error(&out, &expected);
                assert!(
                    err <= 1e-5,
                    "{} {n}x{h}x{w} {c_in}->{c_out} {padding:?}: {err:e}",
                    isa.name()
                );
            }
        }
    }
}
