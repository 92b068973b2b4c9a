//! AVX-512 dequantization of 16 × 16 weight blocks straight into the transposed scratch.
//!
//! Why hand-written: per weight, the portable path looks a code up, scales it and then
//! scatters it transposed, about ten instructions per weight, which cost ~5 % of a 512-token
//! forward. Here one `vpermps` decodes 16 codes through the granule's 16-entry table (or an
//! integer convert decodes 16 bytes), and a 16 × 16 register transpose writes whole cache
//! lines: under one instruction per weight. Every value is computed with the same float
//! operations as the portable path, so the results are bit-identical (tested).

#![allow(unsafe_op_in_unsafe_fn)]

use std::arch::x86_64::*;

use super::IntRows;

/// How one weight row's 16 values starting at a column are decoded.
pub(super) enum Rows<'a> {
    /// 4- or 8-bit integer codes (4-bit: two per byte, low nibble first), or 5-/6-bit ones as
    /// nibbles and high-bit planes; `(code − zero) · scale + min` per granule.
    Int(&'a IntRows),
    /// NF4/FP4 codes of the flattened weight, high nibble first; `code[i] · absmax` per block.
    Nf4 {
        packed: &'a [u8],
        k: usize,
        absmax: &'a [f32],
        block: usize,
        code: &'a [f32; 16],
    },
}

/// Whether this CPU runs the kernels here.
pub(super) fn available() -> bool {
    is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw")
}

impl Rows<'_> {
    /// Whether blocks of 16 columns never straddle a granule / block here.
    pub(super) fn fits(&self, k: usize) -> bool {
        k.is_multiple_of(16)
            && match self {
                Rows::Int(t) => t.glen.is_multiple_of(16),
                Rows::Nf4 { block, .. } => block.is_multiple_of(16),
            }
    }

    /// Row `r`, columns `c..c + 16`, as 16 floats.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn row16(&self, r: usize, c: usize) -> __m512 {
        let iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        match *self {
            Rows::Int(t) if t.bits == 4 => {
                let (s, z) = t.granule(r, c);
                // table[i] = (i − z) · s (+ min), or values[i] · s for a code table, as the
                // portable path computes each value.
                let table = match &t.table {
                    Some(tab) => {
                        _mm512_mul_ps(_mm512_loadu_ps(tab.values.as_ptr()), _mm512_set1_ps(s))
                    }
                    None => with_min(
                        t,
                        r,
                        c,
                        _mm512_mul_ps(
                            _mm512_sub_ps(_mm512_cvtepi32_ps(iota), _mm512_set1_ps(z)),
                            _mm512_set1_ps(s),
                        ),
                    ),
                };
                let at = r * t.row_bytes + c / 2;
                let shifts = _mm512_setr_epi32(0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4);
                _mm512_permutexvar_ps(nibbles(&t.packed[at..at + 8], shifts), table)
            }
            Rows::Int(t) => {
                let (s, z) = t.granule(r, c);
                let codes = if t.bits == 8 {
                    let at = r * t.row_bytes + c;
                    let b = _mm_loadu_si128(t.packed[at..at + 16].as_ptr() as *const __m128i);
                    _mm512_cvtepu8_epi32(b)
                } else {
                    // 5-/6-bit planes: the low nibbles, plus 16 (32) where the high bits are set.
                    let at = r * t.row_bytes + c / 2;
                    let shifts = _mm512_setr_epi32(0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4);
                    let low = nibbles(&t.packed[at..at + 8], shifts);
                    let mut v = _mm512_and_si512(low, _mm512_set1_epi32(15));
                    let per = t.bits as usize - 4;
                    let k = t.row_bytes * 2;
                    let masks = &t.high[r * t.high_per_row(k) + c / 64 * per..][..per];
                    // Values c..c+16 of the step: evens at positions o/2.., odds at 32 + o/2...
                    let o = c % 64;
                    for (i, &m) in masks.iter().enumerate() {
                        let even = ((m >> (o / 2)) & 0xFF) as usize;
                        let odd = ((m >> (32 + o / 2)) & 0xFF) as usize;
                        let bits = SPREAD[even] | (SPREAD[odd] << 1);
                        v = _mm512_mask_add_epi32(v, bits, v, _mm512_set1_epi32(16 << i));
                    }
                    v
                };
                let q = _mm512_sub_ps(_mm512_cvtepi32_ps(codes), _mm512_set1_ps(z));
                with_min(t, r, c, _mm512_mul_ps(q, _mm512_set1_ps(s)))
            }
            Rows::Nf4 {
                packed,
                k,
                absmax,
                block,
                code,
            } => {
                let e = r * k + c;
                let table = _mm512_mul_ps(
                    _mm512_loadu_ps(code.as_ptr()),
                    _mm512_set1_ps(absmax[e / block]),
                );
                let shifts = _mm512_setr_epi32(4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0);
                _mm512_permutexvar_ps(nibbles(&packed[e / 2..e / 2 + 8], shifts), table)
            }
        }
    }
}

/// `v` plus the min of the granule holding column `c` of row `r`, when the codes have mins.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn with_min(t: &IntRows, r: usize, c: usize, v: __m512) -> __m512 {
    if t.mins.is_empty() {
        v
    } else {
        _mm512_add_ps(v, _mm512_set1_ps(t.mins.get(t.granule_index(r, c))))
    }
}

/// `SPREAD[b]` has bit `i` of `b` at bit `2i` (interleaving the even and odd values' bits).
const SPREAD: [u16; 256] = {
    let mut t = [0u16; 256];
    let mut b = 0;
    while b < 256 {
        let mut i = 0;
        while i < 8 {
            t[b] |= (((b >> i) & 1) as u16) << (2 * i);
            i += 1;
        }
        b += 1;
    }
    t
};

/// 16 indices from 8 bytes: each byte twice, shifted right by `shifts` (only the low 4 bits
/// of an index are used by `vpermps`).
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn nibbles(bytes: &[u8], shifts: __m512i) -> __m512i {
    let x = _mm_loadl_epi64(bytes.as_ptr() as *const __m128i);
    let twice = _mm_unpacklo_epi8(x, x);
    _mm512_srlv_epi32(_mm512_cvtepu8_epi32(twice), shifts)
}

/// Rows `r0..r0 + 16` (all of `0..k`) dequantized into `out[c · ld + (r0 − base)..]`.
///
/// # Safety
/// The CPU supports AVX-512F/BW ([`available`]); `rows.fits(k)`; `out` points to a buffer
/// where every `out + c · ld + off .. + 16` for `c < k` is valid and owned by the caller.
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) unsafe fn block16(rows: &Rows, k: usize, r0: usize, out: *mut f32, ld: usize) {
    let mut v = [_mm512_setzero_ps(); 16];
    for c in (0..k).step_by(16) {
        for (i, vi) in v.iter_mut().enumerate() {
            *vi = rows.row16(r0 + i, c);
        }
        transpose16(&mut v);
        for (j, vj) in v.iter().enumerate() {
            _mm512_storeu_ps(out.add((c + j) * ld), *vj);
        }
    }
}

/// Row `r` (all of `0..k`) dotted with each of the tokens `x` (`[m, k]`), decoded 16 values at a
/// time in registers and multiplied in float32: the product of a few tokens without writing the
/// row out first (the float path of generation: NF4/FP4, or integers with float activations).
/// Equal to the dequantized row's float dot product up to summation order.
///
/// # Safety
/// The CPU supports AVX-512F/BW ([`available`]); `rows.fits(k)`; `x.len()` is a multiple of `k`
/// and `y` holds one value per token.
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) unsafe fn dot_rows(rows: &Rows, r: usize, k: usize, x: &[f32], y: &mut [f32]) {
    let m = x.len() / k;
    // Up to 8 tokens (FEW_TOKENS) share each decoded run of 16 weights.
    let mut acc = [_mm512_setzero_ps(); 8];
    for base in (0..m).step_by(8) {
        let n = (m - base).min(8);
        acc[..n].fill(_mm512_setzero_ps());
        for c in (0..k).step_by(16) {
            let w = rows.row16(r, c);
            for (i, a) in acc[..n].iter_mut().enumerate() {
                let xi = _mm512_loadu_ps(x.as_ptr().add((base + i) * k + c));
                *a = _mm512_fmadd_ps(w, xi, *a);
            }
        }
        for (i, a) in acc[..n].iter().enumerate() {
            y[base + i] = _mm512_reduce_add_ps(*a);
        }
    }
}

/// Transpose a 16 × 16 float matrix held in 16 registers (row i → register i).
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn transpose16(r: &mut [__m512; 16]) {
    // Stage 1: interleave pairs of rows at 32-bit granularity.
    let mut t = [_mm512_setzero_ps(); 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    // Stage 2: 64-bit granularity between rows 4 apart in each group of four.
    for g in 0..4 {
        let b = 4 * g;
        r[b] = _mm512_castpd_ps(_mm512_unpacklo_pd(
            _mm512_castps_pd(t[b]),
            _mm512_castps_pd(t[b + 2]),
        ));
        r[b + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(
            _mm512_castps_pd(t[b]),
            _mm512_castps_pd(t[b + 2]),
        ));
        r[b + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(
            _mm512_castps_pd(t[b + 1]),
            _mm512_castps_pd(t[b + 3]),
        ));
        r[b + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(
            _mm512_castps_pd(t[b + 1]),
            _mm512_castps_pd(t[b + 3]),
        ));
    }
    // Now r[4g + j] holds, in each 128-bit lane L, column 4L + j of rows 4g..4g+4.
    // Stage 3 and 4: exchange 128-bit lanes across the four groups.
    for j in 0..4 {
        let (a, b, c, d) = (r[j], r[4 + j], r[8 + j], r[12 + j]);
        // Lanes (0,2) and (1,3) of a|b and c|d.
        let ab_lo = _mm512_shuffle_f32x4(a, b, 0b10_00_10_00); // a0 a2 b0 b2
        let ab_hi = _mm512_shuffle_f32x4(a, b, 0b11_01_11_01); // a1 a3 b1 b3
        let cd_lo = _mm512_shuffle_f32x4(c, d, 0b10_00_10_00); // c0 c2 d0 d2
        let cd_hi = _mm512_shuffle_f32x4(c, d, 0b11_01_11_01); // c1 c3 d1 d3
        t[j] = _mm512_shuffle_f32x4(ab_lo, cd_lo, 0b10_00_10_00); // a0 b0 c0 d0
        t[8 + j] = _mm512_shuffle_f32x4(ab_lo, cd_lo, 0b11_01_11_01); // a2 b2 c2 d2
        t[4 + j] = _mm512_shuffle_f32x4(ab_hi, cd_hi, 0b10_00_10_00); // a1 b1 c1 d1
        t[12 + j] = _mm512_shuffle_f32x4(ab_hi, cd_hi, 0b11_01_11_01); // a3 b3 c3 d3
    }
    *r = t;
}
