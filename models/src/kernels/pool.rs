//! Pooling over NHWC activations.

use rayon::prelude::*;

use super::{multiversion, parallel, Isa};

/// 2x2 max pooling with stride 2 (odd trailing rows and columns dropped, as PyTorch does).
pub fn max_pool_2x2(
    isa: Isa,
    input: &[f32],
    (n, h, w, c): (usize, usize, usize, usize),
    output: &mut [f32],
) {
    let (oh, ow) = (h / 2, w / 2);
    let output = &mut output[..n * oh * ow * c];
    let run = |(r, out): (usize, &mut [f32])| {
        let (image, oy) = (r / oh, r % oh);
        let top = &input[(image * h + 2 * oy) * w * c..][..w * c];
        let bottom = &input[(image * h + 2 * oy + 1) * w * c..][..w * c];
        max_pool_row(isa, top, bottom, c, out);
    };
    if output.is_empty() {
        return;
    }
    if parallel(4 * output.len()) {
        output.par_chunks_mut(ow * c).enumerate().for_each(run);
    } else {
        output.chunks_mut(ow * c).enumerate().for_each(run);
    }
}

multiversion! {
    fn max_pool_row(top: &[f32], bottom: &[f32], c: usize, out: &mut [f32]) {
        for (ox, o) in out.chunks_exact_mut(c).enumerate() {
            let at = 2 * ox * c;
            let (t0, t1) = (&top[at..at + c], &top[at + c..at + 2 * c]);
            let (b0, b1) = (&bottom[at..at + c], &bottom[at + c..at + 2 * c]);
            for i in 0..c {
                o[i] = t0[i].max(t1[i]).max(b0[i].max(b1[i]));
            }
        }
    }
}

/// Mean over H and W: NHWC `(n, h, w, c)` to `[n, c]`.
pub fn global_avg_pool(
    isa: Isa,
    input: &[f32],
    (n, h, w, c): (usize, usize, usize, usize),
    output: &mut [f32],
) {
    for (image, out) in output[..n * c].chunks_exact_mut(c).enumerate() {
        let pixels = &input[image * h * w * c..(image + 1) * h * w * c];
        sum_pixels(isa, pixels, c, out);
        let scale = 1.0 / (h * w) as f32;
        out.iter_mut().for_each(|v| *v *= scale);
    }
}

multiversion! {
    fn sum_pixels(pixels: &[f32], c: usize, out: &mut [f32]) {
        out.fill(0.0);
        for px in pixels.chunks_exact(c) {
            for (o, v) in out.iter_mut().zip(px) {
                *o += *v;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, D};

    use super::*;
    use crate::kernels::conv::tests::to_nhwc;
    use crate::kernels::testing::{max_relative_error, Rng};

    #[test]
    fn pooling_matches_candle_reference() {
        let mut rng = Rng::new(4);
        for isa in Isa::supported() {
            for _ in 0..8 {
                let (n, c, h, w) = (
                    1 + rng.below(3),
                    1 + rng.below(33),
                    2 + rng.below(11),
                    2 + rng.below(11),
                );
                let x = rng.vec(n * c * h * w);
                let t = Tensor::from_slice(&x, (n, c, h, w), &Device::Cpu).unwrap();
                let nhwc = to_nhwc(&x, (n, c, h, w));

                let y = t.max_pool2d(2).unwrap();
                let expected = to_nhwc(
                    &y.flatten_all().unwrap().to_vec1().unwrap(),
                    (n, c, h / 2, w / 2),
                );
                let mut out = vec![f32::NAN; expected.len()];
                max_pool_2x2(isa, &nhwc, (n, h, w, c), &mut out);
                assert_eq!(out, expected, "{} max pool {n}x{c}x{h}x{w}", isa.name());

                let y = t.mean(D::Minus1).unwrap().mean(D::Minus1).unwrap();
                let expected: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
                let mut out = vec![f32::NAN; n * c];
                global_avg_pool(isa, &nhwc, (n, h, w, c), &mut out);
                assert!(
                    max_relative_error(&out, &expected) <= 1e-5,
                    "{} avg pool",
                    isa.name()
                );
            }
        }
    }
}
