//! YUV to RGB sixteen pixels at a time with AVX2, bit-exact with the scalar fixed-point
//! formula in [`super::frame`]: the same 14-bit products in 32-bit lanes, the same rounding
//! (add 8192, arithmetic shift) and the same clamp (the saturating packs to 16 and 8 bits).
//!
//! Each function converts the leading whole blocks of 16 pixels of one row, starting at an
//! even column so that pixel pairs share a chroma sample, and returns how many pixels it
//! wrote; the caller finishes the row with the scalar code. Every read and write stays inside
//! the slices it is given, so the functions are safe to call once AVX2 is known to be there.

use std::arch::x86_64::*;

use super::frame::Coefficients;

/// Whether this CPU can run the AVX2 paths (the standard library caches the answer).
pub(super) fn available() -> bool {
    is_x86_feature_detected!("avx2")
}

/// Shuffle masks that interleave three 16-byte channel vectors into 48 bytes of RGB:
/// `MASKS[chunk][channel]` picks, for each byte of output chunk `chunk`, the pixel whose
/// `channel` lands there (and zero, 0x80, elsewhere).
const MASKS: [[[i8; 16]; 3]; 3] = {
    let mut masks = [[[-128i8; 16]; 3]; 3];
    let mut o = 0;
    while o < 48 {
        masks[o / 16][o % 3][o % 16] = (o / 3) as i8;
        o += 1;
    }
    masks
};

/// The coefficients broadcast to eight 32-bit lanes.
struct Lanes {
    y_offset: __m256i,
    y_gain: __m256i,
    rv: __m256i,
    neg_gu: __m256i,
    neg_gv: __m256i,
    bu: __m256i,
    half: __m256i,
    chroma_zero: __m256i,
}

impl Lanes {
    #[target_feature(enable = "avx2")]
    fn new(k: &Coefficients) -> Self {
        Self {
            y_offset: _mm256_set1_epi32(k.y_offset),
            y_gain: _mm256_set1_epi32(k.y_gain),
            rv: _mm256_set1_epi32(k.rv),
            neg_gu: _mm256_set1_epi32(-k.gu),
            neg_gv: _mm256_set1_epi32(-k.gv),
            bu: _mm256_set1_epi32(k.bu),
            half: _mm256_set1_epi32(8192),
            chroma_zero: _mm256_set1_epi32(128),
        }
    }
}

/// One channel of 16 pixels: luma terms `c_lo` (pixels 0-7) and `c_hi` (8-15), chroma term
/// `t` per chroma sample 0-7, each used by two neighbouring pixels. Returns 16 clamped bytes.
#[target_feature(enable = "avx2")]
fn channel(c_lo: __m256i, c_hi: __m256i, t: __m256i) -> __m128i {
    let lo = _mm256_permutevar8x32_epi32(t, _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3));
    let hi = _mm256_permutevar8x32_epi32(t, _mm256_setr_epi32(4, 4, 5, 5, 6, 6, 7, 7));
    let a = _mm256_srai_epi32::<14>(_mm256_add_epi32(c_lo, lo));
    let b = _mm256_srai_epi32::<14>(_mm256_add_epi32(c_hi, hi));
    // packs works per 128-bit half: [a0-3 b0-3 | a4-7 b4-7]; put the quarters back in order.
    let packed = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(a, b));
    _mm_packus_epi16(
        _mm256_castsi256_si128(packed),
        _mm256_extracti128_si256::<1>(packed),
    )
}

/// Converts 16 pixels: luma `y` (16 bytes), chroma `u` and `v` (their low 8 bytes) into 48
/// bytes of RGB at the start of `out`.
#[target_feature(enable = "avx2")]
fn block(k: &Lanes, y: __m128i, u: __m128i, v: __m128i, out: &mut [u8; 48]) {
    let luma = |y| {
        let y = _mm256_sub_epi32(_mm256_cvtepu8_epi32(y), k.y_offset);
        _mm256_add_epi32(_mm256_mullo_epi32(y, k.y_gain), k.half)
    };
    let (c_lo, c_hi) = (luma(y), luma(_mm_srli_si128::<8>(y)));
    let d = _mm256_sub_epi32(_mm256_cvtepu8_epi32(u), k.chroma_zero);
    let e = _mm256_sub_epi32(_mm256_cvtepu8_epi32(v), k.chroma_zero);
    let r = channel(c_lo, c_hi, _mm256_mullo_epi32(e, k.rv));
    let g_term = _mm256_add_epi32(
        _mm256_mullo_epi32(d, k.neg_gu),
        _mm256_mullo_epi32(e, k.neg_gv),
    );
    let g = channel(c_lo, c_hi, g_term);
    let b = channel(c_lo, c_hi, _mm256_mullo_epi32(d, k.bu));
    for (chunk, masks) in out.chunks_exact_mut(16).zip(&MASKS) {
        let pick = |v, m: &[i8; 16]| {
            // SAFETY: `m` is 16 bytes; unaligned loads are allowed.
            let m = unsafe { _mm_loadu_si128(m.as_ptr().cast()) };
            _mm_shuffle_epi8(v, m)
        };
        let rgb = _mm_or_si128(
            _mm_or_si128(pick(r, &masks[0]), pick(g, &masks[1])),
            pick(b, &masks[2]),
        );
        // SAFETY: `chunk` is 16 bytes.
        unsafe { _mm_storeu_si128(chunk.as_mut_ptr().cast(), rgb) };
    }
}

/// 16 bytes from the start of `bytes` (at least 16 long).
#[target_feature(enable = "avx2")]
fn load16(bytes: &[u8]) -> __m128i {
    assert!(bytes.len() >= 16);
    // SAFETY: checked just above; unaligned loads are allowed.
    unsafe { _mm_loadu_si128(bytes.as_ptr().cast()) }
}

/// 8 bytes from the start of `bytes` (at least 8 long) into the low half.
#[target_feature(enable = "avx2")]
fn load8(bytes: &[u8]) -> __m128i {
    assert!(bytes.len() >= 8);
    // SAFETY: checked just above.
    unsafe { _mm_loadl_epi64(bytes.as_ptr().cast()) }
}

/// Whole 16-pixel blocks that fit in `out` (3 bytes a pixel) and in each source slice, given
/// how many source bytes a block reads from it.
fn whole_blocks(out: &[u8], sources: &[(&[u8], usize)]) -> usize {
    sources
        .iter()
        .map(|(s, per_block)| s.len() / per_block)
        .fold(out.len() / 48, usize::min)
}

/// NV12 (`v_first` false) or NV21 row: `luma` and `chroma` start at the same even column.
///
/// # Safety
/// The CPU must support AVX2 ([`available`]).
#[target_feature(enable = "avx2")]
pub(super) unsafe fn nv12(
    k: &Coefficients,
    luma: &[u8],
    chroma: &[u8],
    v_first: bool,
    out: &mut [u8],
) -> usize {
    let lanes = Lanes::new(k);
    let n = whole_blocks(out, &[(luma, 16), (chroma, 16)]);
    // Even bytes (the first of each pair) to the low half, odd bytes to the high half.
    let split = _mm_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
    for i in 0..n {
        let pairs = _mm_shuffle_epi8(load16(&chroma[16 * i..]), split);
        let (first, second) = (pairs, _mm_srli_si128::<8>(pairs));
        let (u, v) = if v_first {
            (second, first)
        } else {
            (first, second)
        };
        let out: &mut [u8; 48] = (&mut out[48 * i..48 * i + 48]).try_into().unwrap();
        block(&lanes, load16(&luma[16 * i..]), u, v, out);
    }
    16 * n
}

/// I420 row: `luma` starts at an even column `x`, `u` and `v` at chroma column `x / 2`.
///
/// # Safety
/// The CPU must support AVX2 ([`available`]).
#[target_feature(enable = "avx2")]
pub(super) unsafe fn i420(
    k: &Coefficients,
    luma: &[u8],
    u: &[u8],
    v: &[u8],
    out: &mut [u8],
) -> usize {
    let lanes = Lanes::new(k);
    let n = whole_blocks(out, &[(luma, 16), (u, 8), (v, 8)]);
    for i in 0..n {
        let out: &mut [u8; 48] = (&mut out[48 * i..48 * i + 48]).try_into().unwrap();
        let (u, v) = (load8(&u[8 * i..]), load8(&v[8 * i..]));
        block(&lanes, load16(&luma[16 * i..]), u, v, out);
    }
    16 * n
}

/// YUYV row: `line` starts at the macropixel (Y0 U Y1 V) of an even column.
///
/// # Safety
/// The CPU must support AVX2 ([`available`]).
#[target_feature(enable = "avx2")]
pub(super) unsafe fn yuyv(k: &Coefficients, line: &[u8], out: &mut [u8]) -> usize {
    let lanes = Lanes::new(k);
    let n = whole_blocks(out, &[(line, 32)]);
    // Per 8 pixels: luma to bytes 0-7, U to 8-11, V to 12-15.
    let split = _mm_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 5, 9, 13, 3, 7, 11, 15);
    for i in 0..n {
        let a = _mm_shuffle_epi8(load16(&line[32 * i..]), split);
        let b = _mm_shuffle_epi8(load16(&line[32 * i + 16..]), split);
        let y = _mm_unpacklo_epi64(a, b);
        // [U0-3 U4-7 V0-3 V4-7]
        let uv = _mm_unpackhi_epi32(a, b);
        let out: &mut [u8; 48] = (&mut out[48 * i..48 * i + 48]).try_into().unwrap();
        block(&lanes, y, uv, _mm_srli_si128::<8>(uv), out);
    }
    16 * n
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::frame::LIMITED;

    /// Each function converts every whole block of 16 pixels the output holds (so the
    /// equality tests in `frame.rs` do exercise it), and none past the sources' ends.
    #[test]
    fn blocks_cover_the_whole_sixteens() {
        if !available() {
            eprintln!("no AVX2 on this CPU: the SIMD paths are not used, nothing to check");
            return;
        }
        for width in [0, 15, 16, 17, 47, 48, 64] {
            let mut out = vec![0u8; 3 * width];
            let luma = vec![128u8; width];
            let (uv, u, v) = (
                vec![128u8; width],
                vec![128u8; width / 2],
                vec![128u8; width / 2],
            );
            let line = vec![128u8; 2 * width];
            let whole = width / 16 * 16;
            // SAFETY: `available` said the CPU has AVX2.
            unsafe {
                assert_eq!(nv12(&LIMITED, &luma, &uv, false, &mut out), whole);
                assert_eq!(i420(&LIMITED, &luma, &u, &v, &mut out), whole);
                assert_eq!(yuyv(&LIMITED, &line, &mut out), whole);
                // Sources shorter than the output bound the blocks too.
                assert_eq!(
                    nv12(&LIMITED, &luma[..whole / 2], &uv, false, &mut out),
                    whole / 2 / 16 * 16
                );
            }
        }
    }
}
