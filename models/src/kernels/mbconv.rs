//! An inverted-residual block (MobileNetV2's, EfficientNet's "MBConv") as one kernel:
//! expand (1x1) -> depthwise -> project (1x1), plus the residual, band by band.
//!
//! Run as three layers, a block writes its expanded tensor (6x its input's channels: 4.8 MB
//! for EfficientNet-Lite0's second block at 224x224) and the depthwise output to memory and
//! reads both back, and the pointwise products are bound by those stores. Here each thread
//! takes a run of output rows and walks it in bands of a few rows: it expands only the input
//! rows the band's depthwise windows read (into a buffer that stays in L2), runs the
//! depthwise rows from that buffer into a second one, and projects that straight into the
//! output. Rows shared by two bands (the windows' overlap) are kept, not recomputed: only
//! the first band of each thread's run expands its overlap again.
//!
//! The three parts are the unfused kernels ([`Conv`]'s GEMM, [`super::depthwise`]'s row
//! kernel), so the fused block computes the same sums in the same order: its output is
//! bit-identical to the three layers run one after another.

use std::cell::RefCell;

use rayon::prelude::*;

use super::conv::Conv;
use super::depthwise::{depthwise_row, Depthwise};
use super::{parallel, Isa, SyncPtr};

/// Bytes of expanded rows a band aims to hold: with the depthwise rows and the weights, a
/// thread's working set stays inside its L2 (2 MiB on the machine this was tuned on).
const BAND_BYTES: usize = 256 * 1024;

/// An inverted-residual block with batch norm folded into its three convolutions.
pub struct MbConv {
    /// 1x1, `c_in -> hidden`; `None` when the block has no expansion (ratio 1).
    expand: Option<Conv>,
    depthwise: Depthwise,
    /// 1x1, `hidden -> c_out`.
    project: Conv,
}

thread_local! {
    /// Each thread's expanded band and depthwise band, reused across calls.
    static BANDS: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

impl MbConv {
    /// Panics when the parts do not chain (channel counts) or a 1x1 part is not pointwise.
    pub fn new(expand: Option<Conv>, depthwise: Depthwise, project: Conv) -> Self {
        if let Some(e) = &expand {
            assert!(
                e.is_pointwise(),
                "the expansion must be a 1x1 stride-1 convolution"
            );
            assert_eq!(
                e.c_out, depthwise.channels,
                "expansion and depthwise channels"
            );
        }
        assert!(
            project.is_pointwise(),
            "the projection must be a 1x1 stride-1 convolution"
        );
        assert_eq!(
            project.c_in, depthwise.channels,
            "depthwise and projection channels"
        );
        Self {
            expand,
            depthwise,
            project,
        }
    }

    pub fn c_in(&self) -> usize {
        self.expand
            .as_ref()
            .map_or(self.depthwise.channels, |e| e.c_in)
    }

    pub fn c_out(&self) -> usize {
        self.project.c_out
    }

    /// Output `(height, width)` for an `(n, h, w)` input.
    pub fn out_size(&self, dims: (usize, usize, usize)) -> (usize, usize) {
        let g = self.depthwise.geometry(dims);
        (g.out_height, g.out_width)
    }

    /// Bytes of packed weights and biases.
    pub fn bytes(&self) -> usize {
        self.expand.as_ref().map_or(0, Conv::bytes) + self.depthwise.bytes() + self.project.bytes()
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
        let g = self.depthwise.geometry((n, h, w));
        let (c_in, hidden, c_out) = (self.c_in(), self.depthwise.channels, self.c_out());
        let (oh, ow) = (g.out_height, g.out_width);
        assert!(input.len() >= n * h * w * c_in, "input too small");
        let output = &mut output[..n * oh * ow * c_out];
        if let Some(r) = residual {
            assert!(r.len() >= output.len(), "residual too small");
        }
        if output.is_empty() {
            return;
        }
        let (k, s) = (g.kernel, g.stride);
        // Output rows per band: as many as keep the band's expanded rows near BAND_BYTES.
        let row_bytes = 4 * w * hidden;
        let band_rows = (BAND_BYTES / row_bytes).max(k);
        let band = ((band_rows - k) / s + 1).clamp(1, oh);
        // Runs of output rows, one per task: whole images when there are enough for every
        // thread, else each image split in as many runs as threads.
        let work = n * (h * w * c_in * hidden + oh * ow * hidden * (k * k * 8 + c_out));
        let threads = if parallel(work) {
            rayon::current_num_threads()
        } else {
            1
        };
        let runs_per_image = threads.div_ceil(n).min(oh.div_ceil(band)).max(1);
        let run_rows = oh.div_ceil(runs_per_image);
        let out = SyncPtr::new(output);
        let task = |t: usize| {
            let (image, r) = (t / runs_per_image, t % runs_per_image);
            let rows = r * run_rows..((r + 1) * run_rows).min(oh);
            // SAFETY: tasks cover disjoint runs of output rows of `output`, which outlives the
            // parallel loop; this task writes rows `rows` of image `image` only.
            let out = unsafe {
                std::slice::from_raw_parts_mut(
                    out.get().add((image * oh + rows.start) * ow * c_out),
                    rows.len() * ow * c_out,
                )
            };
            let residual = residual.map(|r| &r[(image * oh + rows.start) * ow * c_out..]);
            self.run_rows(isa, input, (n, h, w), image, rows, band, out, residual);
        };
        let tasks = n * runs_per_image;
        if threads > 1 && tasks > 1 {
            (0..tasks).into_par_iter().for_each(task);
        } else {
            (0..tasks).for_each(task);
        }
    }

    /// Output rows `rows` of image `image`, `band` rows at a time, into `out` (those rows
    /// only); `residual` starts at the same rows.
    #[allow(clippy::too_many_arguments)]
    fn run_rows(
        &self,
        isa: Isa,
        input: &[f32],
        dims: (usize, usize, usize),
        image: usize,
        rows: std::ops::Range<usize>,
        band: usize,
        out: &mut [f32],
        residual: Option<&[f32]>,
    ) {
        let g = self.depthwise.geometry(dims);
        let (h, w) = (g.height, g.width);
        let (c_in, hidden, c_out) = (self.c_in(), self.depthwise.channels, self.c_out());
        let (k, s, ow) = (g.kernel, g.stride, g.out_width);
        let image_input = &input[image * h * w * c_in..(image + 1) * h * w * c_in];
        BANDS.with_borrow_mut(|(expanded, dw_out)| {
            // Grown, never shrunk (shrinking and growing again would zero-fill every call).
            let rows_held = ((band - 1) * s + k).min(h);
            if self.expand.is_some() && expanded.len() < rows_held * w * hidden {
                expanded.resize(rows_held * w * hidden, 0.0);
            }
            if dw_out.len() < band * ow * hidden {
                dw_out.resize(band * ow * hidden, 0.0);
            }
            // Input rows `held` (of this image) are expanded in `expanded`, from its start.
            let mut held = 0..0;
            for oy0 in rows.clone().step_by(band) {
                let oy1 = (oy0 + band).min(rows.end);
                // The input rows the band's windows read (those inside the image).
                let lo = (oy0 * s).saturating_sub(g.pad_top).min(h);
                let hi = ((oy1 - 1) * s + k).saturating_sub(g.pad_top).clamp(lo, h);
                let (source, source_image, first_row) = match &self.expand {
                    Some(expand) => {
                        // Keep the rows this band shares with the last one; expand the rest.
                        let kept = if held.start <= lo && lo < held.end {
                            expanded.copy_within(
                                (lo - held.start) * w * hidden..held.len() * w * hidden,
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
                            &mut expanded[kept * w * hidden..(hi - lo) * w * hidden],
                            None,
                        );
                        held = lo..hi;
                        (&expanded[..], 0, lo)
                    }
                    None => (input, image, 0),
                };
                let band_rows = oy1 - oy0;
                for oy in oy0..oy1 {
                    let row = &mut dw_out[(oy - oy0) * ow * hidden..(oy - oy0 + 1) * ow * hidden];
                    depthwise_row(
                        isa,
                        &self.depthwise,
                        &g,
                        source,
                        source_image,
                        first_row,
                        oy,
                        row,
                    );
                }
                let at = (oy0 - rows.start) * ow * c_out;
                self.project.pointwise_serial(
                    isa,
                    &dw_out[..band_rows * ow * hidden],
                    band_rows * ow,
                    &mut out[at..at + band_rows * ow * c_out],
                    residual.map(|r| &r[at..at + band_rows * ow * c_out]),
                );
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::Rng;
    use crate::kernels::Activation;
    use crate::layers::Padding;

    fn pointwise(
        isa: Isa,
        rng: &mut Rng,
        c_in: usize,
        c_out: usize,
        activation: Activation,
    ) -> Conv {
        Conv::new(
            isa,
            &rng.vec(c_out * c_in),
            rng.vec(c_out),
            (c_in, c_out, 1),
            1,
            Padding::TfSame,
            activation,
        )
    }

    /// The fused block against its three layers run one after another (each of which the
    /// conv and depthwise tests check against candle): every instruction set, kernels 3 and
    /// 5, strides 1 and 2, with and without expansion and residual, odd sizes, batches of one
    /// and three, one band and many.
    #[test]
    fn fused_block_equals_its_layers_run_in_turn() {
        let mut rng = Rng::new(8);
        for isa in crate::kernels::Isa::supported() {
            for case in 0..16 {
                let kernel = [3, 5][case % 2];
                let stride = 1 + (case / 2) % 2;
                let expand_ratio = [1, 6][(case / 4) % 2];
                let n = [1, 3][(case / 8) % 2];
                let c_in = 8 + rng.below(20);
                let hidden = c_in * expand_ratio;
                let c_out = if stride == 1 && case % 3 == 0 {
                    c_in
                } else {
                    5 + rng.below(30)
                };
                let (h, w) = ([5, 23, 120][rng.below(3)] + rng.below(3), 4 + rng.below(40));
                let expand = (expand_ratio != 1)
                    .then(|| pointwise(isa, &mut rng, c_in, hidden, Activation::Relu6));
                let depthwise = Depthwise::new(
                    &rng.vec(hidden * kernel * kernel),
                    rng.vec(hidden),
                    (hidden, kernel, stride),
                    Padding::TfSame,
                    Activation::Relu6,
                );
                let project = pointwise(isa, &mut rng, hidden, c_out, Activation::None);
                let x = rng.vec(n * h * w * c_in);
                let g = depthwise.geometry((n, h, w));
                let out_len = n * g.out_height * g.out_width * c_out;
                let with_residual = c_out == c_in && stride == 1;
                let residual = with_residual.then(|| rng.vec(out_len));

                // The layers in turn.
                let mut hidden_x = x.clone();
                if let Some(e) = &expand {
                    hidden_x = vec![0.0; n * h * w * hidden];
                    e.run(isa, &x, (n, h, w), &mut hidden_x, None);
                }
                let mut dw_y = vec![0.0; n * g.out_height * g.out_width * hidden];
                depthwise.run(isa, &hidden_x, (n, h, w), &mut dw_y);
                let mut expected = vec![0.0; out_len];
                project.run(
                    isa,
                    &dw_y,
                    (n, g.out_height, g.out_width),
                    &mut expected,
                    residual.as_deref(),
                );

                let block = MbConv::new(expand, depthwise, project);
                let mut out = vec![f32::NAN; out_len + 7];
                block.run(isa, &x, (n, h, w), &mut out, residual.as_deref());
                assert!(
                    out[out_len..].iter().all(|v| v.is_nan()),
                    "wrote past the output"
                );
                assert_eq!(
                    out[..out_len],
                    expected[..],
                    "{} case {case}: k{kernel} s{stride} x{expand_ratio} n{n} {h}x{w}x{c_in}->{c_out}",
                    isa.name()
                );
            }
        }
    }
}
