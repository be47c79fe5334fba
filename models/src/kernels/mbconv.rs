//! An inverted-residual block (MobileNetV2's, EfficientNet's "MBConv") as one kernel:
//! expand (1x1) -> depthwise -> project (1x1), plus the residual.
//!
//! Run as three layers, a block writes its expanded tensor (6x its input's channels: 4.8 MB
//! for EfficientNet-Lite0's second block at 224x224) and the depthwise output to memory and
//! reads both back, and the pointwise products are bound by those stores. Here the block is
//! computed in pieces that stay in cache, in one of two ways:
//!
//! - **By rows** (large maps): each thread takes a run of output rows and walks it in bands
//!   of a few rows. It expands only the input rows the band's depthwise windows read (into a
//!   buffer that stays in L2), runs the depthwise rows from that buffer into a second one,
//!   and projects that straight into the output. Rows shared by two bands (the windows'
//!   overlap) are kept, not recomputed: only the first band of each thread's run expands its
//!   overlap again.
//! - **By channels** (small maps, where two runs of rows would each expand most of the
//!   input: a 7x7 map's 5x5 windows reach 6 of its 7 rows from either half): the hidden
//!   channels are cut into parts, and each thread takes a part through the whole map. The
//!   depthwise convolution never mixes channels, so a part needs only its own rows of the
//!   expansion's weights and columns of the projection's; the parts' projections are partial
//!   sums, added at the end. Each thread then streams only its part of the weights, which at
//!   7x7 (49 pixels per weight) is what the block's time goes into.
//!
//! The hidden channels are cut into parts at load, whichever way a call runs: by rows, the
//! parts are computed one after another and their projections accumulated in the output.
//! The parts are the unfused kernels ([`Conv`]'s GEMM, [`super::depthwise`]'s row kernel).

use std::cell::RefCell;

use rayon::prelude::*;

use super::conv::Conv;
use super::depthwise::{depthwise_band, Depthwise};
use super::gemm::{self, Epilogue, PackedB, RowMajor};
use super::{parallel, Activation, Fused, Isa, SyncPtr};
use crate::layers::Padding;

/// Bytes of expanded rows a band aims to hold: with the depthwise rows and the weights, a
/// thread's working set stays inside its L2 (2 MiB on the machine this was tuned on). The
/// sign model's blocks that run by rows measured slower with 128 KiB and with 512 KiB.
const BAND_BYTES: usize = 256 * 1024;

/// Hidden channels per part at the least, and the multiple parts are cut at: whole column
/// strips of the GEMM (32 wide at most) and whole register blocks of the depthwise kernel.
const PART_UNIT: usize = 32;

/// Maps of at most this many output pixels run by channels when more than one thread works
/// on one image: Lite0's 14x14 and 7x7 stages at 224x224 input. (Choosing by how many rows
/// the runs would expand twice instead, which keeps the 14x14 maps with 3x3 windows on rows,
/// measured those blocks slower: 250 -> 300-400 us.)
const BY_CHANNELS_MAX_PIXELS: usize = 14 * 14;

/// Whether a block whose output map has `pixels` pixels runs by channels (when more than one
/// thread works on one image), and so wants its hidden channels cut into one part per thread.
/// A block that runs by rows computes its parts one after another: one whole part is faster
/// there (MobileNetV3-Large's 72 hidden channels cut for two threads make parts of 64 and 8,
/// and the 8-wide part runs each of its three layers at a fraction of the kernels' speed).
pub fn runs_by_channels(pixels: usize) -> bool {
    pixels <= BY_CHANNELS_MAX_PIXELS
}

/// A block's weights with batch norm folded in, as PyTorch lays them out.
pub struct MbConvWeights {
    /// `[hidden, c_in]` and `[hidden]`, with ReLU6; `None` for a block without expansion.
    pub expand: Option<(Vec<f32>, Vec<f32>)>,
    /// `[hidden, 1, k, k]` and `[hidden]`, with ReLU6.
    pub depthwise: (Vec<f32>, Vec<f32>),
    /// `[c_out, hidden]` and `[c_out]`, no activation.
    pub project: (Vec<f32>, Vec<f32>),
}

/// One part of the hidden channels, through the three layers.
struct Part {
    /// 1x1, `c_in -> width` of the part's hidden channels.
    expand: Option<Conv>,
    depthwise: Depthwise,
    /// `width -> c_out`: the part's rows of the projection, without bias.
    project: PackedB,
}

/// An inverted-residual block.
pub struct MbConv {
    c_in: usize,
    hidden: usize,
    c_out: usize,
    kernel: usize,
    stride: usize,
    parts: Vec<Part>,
    project_bias: Vec<f32>,
}

thread_local! {
    /// Each thread's expanded band and depthwise band, reused across calls.
    static BANDS: RefCell<(Vec<f32>, Vec<f32>, Vec<f32>)> =
        const { RefCell::new((Vec::new(), Vec::new(), Vec::new())) };
}

impl MbConv {
    /// `c_in -> hidden -> c_out` channels, a `kernel x kernel` depthwise window at `stride`,
    /// `activation` after the expansion and after the depthwise layer (ReLU6 in MobileNetV2
    /// and EfficientNet-Lite, ReLU or hard-swish in MobileNetV3), the hidden channels cut
    /// into up to `parts` parts (the threads that will run it).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        isa: Isa,
        weights: &MbConvWeights,
        (c_in, hidden, c_out): (usize, usize, usize),
        (kernel, stride): (usize, usize),
        padding: Padding,
        activation: Activation,
        parts: usize,
    ) -> Self {
        let (dw_weight, dw_bias) = &weights.depthwise;
        let (project_weight, project_bias) = &weights.project;
        assert_eq!(dw_weight.len(), hidden * kernel * kernel);
        assert_eq!(dw_bias.len(), hidden);
        assert_eq!(project_weight.len(), c_out * hidden);
        assert_eq!(project_bias.len(), c_out);
        match &weights.expand {
            Some((w, b)) => assert!(w.len() == hidden * c_in && b.len() == hidden),
            None => assert_eq!(c_in, hidden, "a block without expansion keeps its channels"),
        }
        // Part boundaries on whole units; the last part takes the remainder. Without an
        // expansion the depthwise reads the block's input, all of whose channels a pixel
        // holds: one part.
        let parts = match weights.expand {
            Some(_) => parts.clamp(1, (hidden / PART_UNIT).max(1)),
            None => 1,
        };
        let bounds: Vec<usize> = (0..=parts)
            .map(|t| (t * hidden / parts).div_ceil(PART_UNIT) * PART_UNIT)
            .map(|c| c.min(hidden))
            .collect();
        let kk = kernel * kernel;
        let parts = bounds
            .windows(2)
            .map(|w| {
                let (c0, c1) = (w[0], w[1]);
                let expand = weights.expand.as_ref().map(|(w, b)| {
                    Conv::new(
                        isa,
                        &w[c0 * c_in..c1 * c_in],
                        b[c0..c1].to_vec(),
                        (c_in, c1 - c0, 1),
                        1,
                        Padding::TfSame,
                        activation,
                    )
                });
                let depthwise = Depthwise::new(
                    &dw_weight[c0 * kk..c1 * kk],
                    dw_bias[c0..c1].to_vec(),
                    (c1 - c0, kernel, stride),
                    padding,
                    activation,
                );
                let project = PackedB::new(isa, c1 - c0, c_out, |p, o| {
                    project_weight[o * hidden + c0 + p]
                });
                Part {
                    expand,
                    depthwise,
                    project,
                }
            })
            .collect();
        Self {
            c_in,
            hidden,
            c_out,
            kernel,
            stride,
            parts,
            project_bias: project_bias.clone(),
        }
    }

    pub fn c_in(&self) -> usize {
        self.c_in
    }

    pub fn c_out(&self) -> usize {
        self.c_out
    }

    /// Output `(height, width)` for an `(n, h, w)` input.
    pub fn out_size(&self, dims: (usize, usize, usize)) -> (usize, usize) {
        let g = self.parts[0].depthwise.geometry(dims);
        (g.out_height, g.out_width)
    }

    /// Bytes of packed weights and biases.
    pub fn bytes(&self) -> usize {
        let parts: usize = self
            .parts
            .iter()
            .map(|p| {
                p.expand.as_ref().map_or(0, Conv::bytes) + p.depthwise.bytes() + p.project.bytes()
            })
            .sum();
        parts + 4 * self.project_bias.len()
    }

    /// `output = project(depthwise(expand(input))) + residual`; NHWC `(n, h, w)` with
    /// [`MbConv::c_in`] channels in, NHWC with [`MbConv::c_out`] channels out (and the
    /// residual's shape is the output's).
    pub fn run(
        &self,
        isa: Isa,
        input: &[f32],
        (n, h, w): (usize, usize, usize),
        output: &mut [f32],
        residual: Option<&[f32]>,
    ) {
        let (oh, ow) = self.out_size((n, h, w));
        let (c_in, hidden, c_out) = (self.c_in, self.hidden, self.c_out);
        assert!(input.len() >= n * h * w * c_in, "input too small");
        let output = &mut output[..n * oh * ow * c_out];
        if let Some(r) = residual {
            assert!(r.len() >= output.len(), "residual too small");
        }
        if output.is_empty() {
            return;
        }
        let (k, s) = (self.kernel, self.stride);
        let work = n * (h * w * c_in * hidden + oh * ow * hidden * (k * k * 8 + c_out));
        let threads = if parallel(work) {
            rayon::current_num_threads()
        } else {
            1
        };
        if threads > n && self.parts.len() > 1 && runs_by_channels(oh * ow) {
            return self.run_by_channels(isa, input, (n, h, w), output, residual);
        }
        // Output rows per band: as many as keep the band's expanded rows near BAND_BYTES.
        let widest = self
            .parts
            .iter()
            .map(|p| p.depthwise.channels)
            .max()
            .unwrap_or(0);
        let row_bytes = 4 * w * widest;
        let band_rows = (BAND_BYTES / row_bytes.max(1)).max(k);
        let band = ((band_rows - k) / s + 1).clamp(1, oh);
        // Runs of output rows, one per task: whole images when there are enough for every
        // thread, else each image split in as many runs as threads.
        let runs_per_image = threads.div_ceil(n).min(oh.div_ceil(band)).max(1);
        let run_rows = oh.div_ceil(runs_per_image);
        let out = SyncPtr::new(output);
        let task = |t: usize| {
            let (image, r) = (t / runs_per_image, t % runs_per_image);
            let rows = r * run_rows..((r + 1) * run_rows).min(oh);
            let at = (image * oh + rows.start) * ow * c_out;
            // SAFETY: tasks cover disjoint runs of output rows of `output`, which outlives the
            // parallel loop; this task writes rows `rows` of image `image` only.
            let out = unsafe {
                std::slice::from_raw_parts_mut(out.get().add(at), rows.len() * ow * c_out)
            };
            let residual = residual.map(|r| &r[at..at + out.len()]);
            for (i, part) in self.parts.iter().enumerate() {
                let epilogue = self.part_epilogue(i, residual);
                self.part_rows(
                    isa,
                    part,
                    input,
                    (n, h, w),
                    image,
                    rows.clone(),
                    band,
                    out,
                    &epilogue,
                    i > 0,
                );
            }
        };
        let tasks = n * runs_per_image;
        if threads > 1 && tasks > 1 {
            (0..tasks).into_par_iter().for_each(task);
        } else {
            (0..tasks).for_each(task);
        }
    }

    /// The epilogue of part `i`'s projection: the first part adds the bias and the residual,
    /// the others only their sums.
    fn part_epilogue<'a>(&'a self, i: usize, residual: Option<&'a [f32]>) -> Epilogue<'a> {
        let residual = residual.filter(|_| i == 0);
        Epilogue {
            bias: (i == 0).then_some(&self.project_bias[..]),
            fused: if residual.is_some() {
                Fused::NONE.with_residual()
            } else {
                Fused::NONE
            },
            residual,
        }
    }

    /// Each part on its own thread over whole images; the parts' partial projections are
    /// summed into `output` at the end.
    fn run_by_channels(
        &self,
        isa: Isa,
        input: &[f32],
        (n, h, w): (usize, usize, usize),
        output: &mut [f32],
        residual: Option<&[f32]>,
    ) {
        let (oh, ow) = self.out_size((n, h, w));
        let image_len = oh * ow * self.c_out;
        let parts = self.parts.len();
        // Part 0 writes `output` (with the bias and residual), part i > 0 its own scratch.
        let mut scratch = vec![0f32; (parts - 1) * n * image_len];
        let mut targets: Vec<&mut [f32]> = vec![output];
        targets.extend(scratch.chunks_mut(n * image_len));
        targets.into_par_iter().enumerate().for_each(|(i, target)| {
            let epilogue = self.part_epilogue(i, residual);
            for image in 0..n {
                let out = &mut target[image * image_len..(image + 1) * image_len];
                let epilogue = Epilogue {
                    residual: epilogue
                        .residual
                        .map(|r| &r[image * image_len..(image + 1) * image_len]),
                    ..epilogue
                };
                self.part_rows(
                    isa,
                    &self.parts[i],
                    input,
                    (n, h, w),
                    image,
                    0..oh,
                    oh,
                    out,
                    &epilogue,
                    false,
                );
            }
        });
        for partial in scratch.chunks_exact(n * image_len) {
            output.iter_mut().zip(partial).for_each(|(o, p)| *o += *p);
        }
    }

    /// One part's contribution to output rows `rows` of image `image`, `band` rows at a
    /// time, into `out` (those rows only): the part's projection with `epilogue`, added to
    /// what `out` holds when `accumulate`. The epilogue's residual starts at the same rows.
    #[allow(clippy::too_many_arguments)]
    fn part_rows(
        &self,
        isa: Isa,
        part: &Part,
        input: &[f32],
        dims: (usize, usize, usize),
        image: usize,
        rows: std::ops::Range<usize>,
        band: usize,
        out: &mut [f32],
        epilogue: &Epilogue,
        accumulate: bool,
    ) {
        let g = part.depthwise.geometry(dims);
        let (h, w) = (g.height, g.width);
        let (c_in, width, c_out) = (self.c_in, part.depthwise.channels, self.c_out);
        let (k, s, ow) = (g.kernel, g.stride, g.out_width);
        let image_input = &input[image * h * w * c_in..(image + 1) * h * w * c_in];
        let strips = c_out.div_ceil(part.project.nr());
        BANDS.with_borrow_mut(|(expanded, dw_out, padded)| {
            // Grown, never shrunk (shrinking and growing again would zero-fill every call).
            let rows_held = ((band - 1) * s + k).min(h);
            if part.expand.is_some() && expanded.len() < rows_held * w * width {
                expanded.resize(rows_held * w * width, 0.0);
            }
            if dw_out.len() < band * ow * width {
                dw_out.resize(band * ow * width, 0.0);
            }
            // Input rows `held` (of this image) are expanded in `expanded`, from its start.
            let mut held = 0..0;
            for oy0 in rows.clone().step_by(band) {
                let oy1 = (oy0 + band).min(rows.end);
                // The input rows the band's windows read (those inside the image).
                let lo = (oy0 * s).saturating_sub(g.pad_top).min(h);
                let hi = ((oy1 - 1) * s + k).saturating_sub(g.pad_top).clamp(lo, h);
                let (source, source_image, first_row) = match &part.expand {
                    Some(expand) => {
                        // Keep the rows this band shares with the last one; expand the rest.
                        let kept = if held.start <= lo && lo < held.end {
                            expanded.copy_within(
                                (lo - held.start) * w * width..held.len() * w * width,
                                0,
                            );
                            held.end - lo
                        } else {
                            0
                        };
                        let new = lo + kept..hi;
                        expand.pointwise_serial(
                            isa,
                            &image_input[new.start * w * c_in..new.end * w * c_in],
                            new.len() * w,
                            &mut expanded[kept * w * width..(hi - lo) * w * width],
                            None,
                        );
                        held = lo..hi;
                        (&expanded[..], 0, lo)
                    }
                    None => (input, image, 0),
                };
                let band_rows = oy1 - oy0;
                depthwise_band(
                    isa,
                    &part.depthwise,
                    &g,
                    source,
                    (source_image, first_row),
                    oy0..oy1,
                    &mut dw_out[..band_rows * ow * width],
                    padded,
                );
                let at = (oy0 - rows.start) * ow * c_out;
                let len = band_rows * ow * c_out;
                let a = RowMajor {
                    data: &dw_out[..band_rows * ow * width],
                    rows: band_rows * ow,
                    cols: width,
                };
                let epilogue = Epilogue {
                    residual: epilogue.residual.map(|r| &r[at..at + len]),
                    ..*epilogue
                };
                gemm::gemm_serial(
                    isa,
                    &a,
                    &part.project,
                    &mut out[at..at + len],
                    0..strips,
                    &epilogue,
                    accumulate,
                );
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::{max_relative_error, Rng};

    fn pointwise(
        isa: Isa,
        w: &[f32],
        b: &[f32],
        c_in: usize,
        c_out: usize,
        fused: impl Into<Fused>,
    ) -> Conv {
        Conv::new(
            isa,
            w,
            b.to_vec(),
            (c_in, c_out, 1),
            1,
            Padding::TfSame,
            fused,
        )
    }

    /// The fused block against its three layers run one after another (each of which the
    /// conv and depthwise tests check against candle): every instruction set, kernels 3 and
    /// 5, strides 1 and 2, ReLU6, ReLU and hard-swish, with and without expansion and residual, one part and several,
    /// maps run by rows (one band and many) and by channels, batches of one and three.
    #[test]
    fn fused_block_matches_its_layers_run_in_turn() {
        let mut rng = Rng::new(8);
        for isa in crate::kernels::Isa::supported() {
            for case in 0..24 {
                let kernel = [3, 5][case % 2];
                let stride = 1 + (case / 2) % 2;
                let expand_ratio = [1, 6][(case / 4) % 2];
                let n = [1, 3][(case / 8) % 2];
                let parts = 1 + (case / 16) + rng.below(3);
                let c_in = [8 + rng.below(20), 40 + rng.below(30)][rng.below(2)];
                let hidden = c_in * expand_ratio;
                let c_out = if stride == 1 && case % 3 == 0 {
                    c_in
                } else {
                    5 + rng.below(30)
                };
                let (h, w) = (
                    [5, 14, 23, 120][rng.below(4)] + rng.below(3),
                    4 + rng.below(40),
                );
                let activation = [Activation::Relu6, Activation::Relu, Activation::HardSwish]
                    [(case + case / 3) % 3];
                let weights = MbConvWeights {
                    expand: (expand_ratio != 1).then(|| (rng.vec(hidden * c_in), rng.vec(hidden))),
                    depthwise: (rng.vec(hidden * kernel * kernel), rng.vec(hidden)),
                    project: (rng.vec(c_out * hidden), rng.vec(c_out)),
                };
                let depthwise = Depthwise::new(
                    &weights.depthwise.0,
                    weights.depthwise.1.clone(),
                    (hidden, kernel, stride),
                    Padding::TfSame,
                    activation,
                );
                let x = rng.vec(n * h * w * c_in);
                let g = depthwise.geometry((n, h, w));
                let out_len = n * g.out_height * g.out_width * c_out;
                let with_residual = c_out == c_in && stride == 1;
                let residual = with_residual.then(|| rng.vec(out_len));

                // The layers in turn.
                let mut hidden_x = x.clone();
                if let Some((ew, eb)) = &weights.expand {
                    hidden_x = vec![0.0; n * h * w * hidden];
                    pointwise(isa, ew, eb, c_in, hidden, activation).run(
                        isa,
                        &x,
                        (n, h, w),
                        &mut hidden_x,
                        None,
                    );
                }
                let mut dw_y = vec![0.0; n * g.out_height * g.out_width * hidden];
                depthwise.run(isa, &hidden_x, (n, h, w), &mut dw_y);
                let mut expected = vec![0.0; out_len];
                let (pw, pb) = &weights.project;
                let project = match residual {
                    Some(_) => Fused::NONE.with_residual(),
                    None => Fused::NONE,
                };
                pointwise(isa, pw, pb, hidden, c_out, project).run(
                    isa,
                    &dw_y,
                    (n, g.out_height, g.out_width),
                    &mut expected,
                    residual.as_deref(),
                );

                let block = MbConv::new(
                    isa,
                    &weights,
                    (c_in, hidden, c_out),
                    (kernel, stride),
                    Padding::TfSame,
                    activation,
                    parts,
                );
                let mut out = vec![f32::NAN; out_len + 7];
                block.run(isa, &x, (n, h, w), &mut out, residual.as_deref());
                assert!(
                    out[out_len..].iter().all(|v| v.is_nan()),
                    "wrote past the output"
                );
                let err = max_relative_error(&out[..out_len], &expected);
                let what = format!(
                    "{} case {case}: k{kernel} s{stride} x{expand_ratio} n{n} {h}x{w}x{c_in}->{hidden}->{c_out} in {} parts",
                    isa.name(),
                    block.parts.len()
                );
                assert!(err <= 1e-5, "{what}: {err:e}");
                // One part is the three layers' sums in their order, to the bit.
                if block.parts.len() == 1 {
                    assert_eq!(out[..out_len], expected[..], "{what}");
                }
            }
        }
    }
}
