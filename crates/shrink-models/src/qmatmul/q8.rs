//! Integer weight codes times int8 activations, for a few tokens at a time (generation).
//!
//! Generation reads every weight once per token, so its speed is the speed of reading packed
//! codes. Dequantizing a row to float32 first and then taking a float dot product (the general
//! path) costs about ten instructions per weight; here, as in ggml's `vec_dot` kernels, each
//! token's activations are quantized once to int8 in blocks of 32 (`x ≈ d_b · q_b`, `d_b` =
//! the block's absmax / 127) and multiplied against the codes in integers: AVX-512 VNNI's
//! `vpdpbusd` takes 64 unsigned codes × 64 signed activations per instruction, AVX2 `vpmaddubsw`
//! 32. For the granule `g` of a row with scale `s_g` and zero `z_g`,
//!
//! `Σ_{c∈g} (w_c − z_g)·s_g·x_c ≈ s_g · (Σ_{b∈g} d_b · Σ_{c∈b} w_c·q_c − z_g · A_g)`,
//! `A_g = Σ_{b∈g} d_b · Σ_{c∈b} q_c` (computed once per token),
//!
//! so the result equals the float product of the dequantized weights with the int8-rounded
//! activations up to float32 summation order (tested against that, in f64, for every kernel),
//! and differs from the unrounded product by the activations' rounding (≤ 1/254 of each block's
//! absmax per value), as llama.cpp's does. Hand-written: no crate multiplies these layouts.
//!
//! Layouts: 4-bit codes two per byte, the low nibble first (shrink's int4, HQQ); 8-bit one per
//! byte. The 4-bit kernels split each 32-byte run (two blocks) into its low and high nibbles, so
//! the activations are stored in that order: per 64 values, the even positions of both blocks,
//! then the odd ones.

#![allow(unsafe_op_in_unsafe_fn)]

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::IntRows;
/// The kernels are chosen as the int8 GEMM's are (VNNI, AVX2, portable; one detection).
pub use crate::int8_gemm::Int8Kernel;

/// Activation values per int8 block (one scale each), as ggml's Q8_0.
pub const QK: usize = 32;
/// Values a kernel step covers: two blocks.
const STEP: usize = 2 * QK;
/// Bytes ahead of the codes being read that the kernels ask the cache for.
#[cfg(target_arch = "x86_64")]
const PREFETCH: usize = 2048;

/// Whether `t` (a `[n, k]` weight) has a layout the kernels here read: 4- or 8-bit codes,
/// rows a whole multiple of 64 values, granules of 32 (ggml's blocks) or a multiple of 64.
pub(super) fn fits(t: &IntRows, k: usize) -> bool {
    (t.bits == 4 || t.bits == 8)
        && k.is_multiple_of(STEP)
        && (t.glen == QK || t.glen.is_multiple_of(STEP))
}

/// One token's activations quantized to int8 blocks, in the order the kernels for `bits` read.
pub struct Q8Act {
    /// The int8 values (4-bit order: per 64, even positions of both blocks, then the odd ones).
    q: Vec<i8>,
    /// Per step of 64 values, the 16 lane scales of an AVX-512 accumulator: for 4-bit
    /// `[d₀ ×4, d₁ ×4, d₀ ×4, d₁ ×4]` (each 32-bit lane sums 4 bytes of one block), for
    /// 8-bit `[d₀ ×8, d₁ ×8]`.
    lanes: Vec<f32>,
    /// Per block, its scale `d_b`.
    d: Vec<f32>,
    /// Per granule, `A_g = Σ_b d_b · Σ q`.
    sums: Vec<f32>,
}

impl Q8Act {
    /// `x` quantized for rows of `bits`-bit codes in granules of `glen` values.
    pub fn new(x: &[f32], bits: u8, glen: usize) -> Self {
        let k = x.len();
        debug_assert!(k.is_multiple_of(STEP) && (glen == QK || glen.is_multiple_of(STEP)));
        let mut q = vec![0i8; k];
        let mut d = vec![0f32; k / QK];
        let mut bsum = vec![0i32; k / QK];
        for (b, xs) in x.chunks_exact(QK).enumerate() {
            let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
            let db = amax / 127.0;
            let id = if db > 0.0 { 1.0 / db } else { 0.0 };
            d[b] = db;
            for (i, &v) in xs.iter().enumerate() {
                let qi = (v * id).round() as i8;
                bsum[b] += qi as i32;
                let c = b * QK + i;
                q[if bits == 4 { order4(c) } else { c }] = qi;
            }
        }
        let lanes = (0..k / STEP)
            .flat_map(|s| {
                let (d0, d1) = (d[2 * s], d[2 * s + 1]);
                (0..16).map(move |l| {
                    let first = if bits == 4 { l % 8 < 4 } else { l < 8 };
                    if first {
                        d0
                    } else {
                        d1
                    }
                })
            })
            .collect();
        let per = glen / QK;
        let sums = (0..k / glen)
            .map(|g| {
                (g * per..(g + 1) * per)
                    .map(|b| d[b] * bsum[b] as f32)
                    .sum()
            })
            .collect();
        Q8Act { q, lanes, d, sums }
    }

    /// The activation at natural position `c` as the kernels see it: `d_b · q`.
    pub fn value(&self, c: usize, bits: u8) -> f32 {
        let at = if bits == 4 { order4(c) } else { c };
        self.d[c / QK] * self.q[at] as f32
    }
}

/// Where natural position `c` is stored for the 4-bit kernels.
fn order4(c: usize) -> usize {
    let (base, i) = (c / STEP * STEP, c % STEP);
    let (block, j) = (i / QK, i % QK);
    base + (j % 2) * QK + block * (QK / 2) + j / 2
}

/// Row `r` of `t` (`k` values) times the activations `a`.
pub(super) fn dot_row(kernel: Int8Kernel, t: &IntRows, r: usize, k: usize, a: &Q8Act) -> f32 {
    let row = &t.packed[r * t.row_bytes..(r + 1) * t.row_bytes];
    match kernel {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the kernel was detected on this CPU (callers check `is_available`), and
        // `fits` holds, so every 64-value step lies inside the row and the activations.
        Int8Kernel::Vnni => unsafe { vnni(t, row, r, k, a) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Int8Kernel::Avx2 => unsafe { avx2(t, row, r, k, a) },
        _ => portable(t, row, r, k, a),
    }
}

fn portable(t: &IntRows, row: &[u8], r: usize, k: usize, a: &Q8Act) -> f32 {
    let (mut acc, mut corr) = (0f32, 0f32);
    for g in 0..k / t.glen {
        let (s, z) = t.granule(r, g * t.glen);
        corr += s * z * a.sums[g];
        let mut p = 0f32;
        for b in g * t.glen / QK..(g + 1) * t.glen / QK {
            let mut dot = 0i32;
            if t.bits == 4 {
                // Block b's codes are bytes 16b..16b+16, positions 2j (low) and 2j+1 (high).
                let (s0, half) = (b / 2 * STEP, (b % 2) * (QK / 2));
                for (j, &byte) in row[b * QK / 2..(b + 1) * QK / 2].iter().enumerate() {
                    dot += (byte & 15) as i32 * a.q[s0 + half + j] as i32;
                    dot += (byte >> 4) as i32 * a.q[s0 + QK + half + j] as i32;
                }
            } else {
                for (&w, &x) in row[b * QK..(b + 1) * QK].iter().zip(&a.q[b * QK..]) {
                    dot += w as i32 * x as i32;
                }
            }
            p += a.d[b] * dot as f32;
        }
        acc += s * p;
    }
    acc - corr
}

/// Ask the cache for the codes [`PREFETCH`] bytes past `at` in `row`: the rows of a weight lie
/// one after another, and the hardware prefetchers alone left the kernel at about a third of
/// the bandwidth a plain sum reaches (first measured 3.0 GB/s without, 8.4 GB/s at 2 KiB
/// ahead, one thread; `examples/q8_stream.rs` now gives 8.2 GB/s out of cache, 8.4 in cache).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn prefetch(row: &[u8], at: usize) {
    // SAFETY: a prefetch never faults, whatever the address; the pointer is never read.
    unsafe { _mm_prefetch::<_MM_HINT_T0>(row.as_ptr().wrapping_add(at + PREFETCH) as *const i8) };
}

/// The scales of the two blocks of step `st` (one granule, or two of 32), adding the zero-point
/// term `s_g · z_g · A_g` of each granule that starts in the step to `corr`.
#[inline(always)]
fn step_scales(t: &IntRows, r: usize, st: usize, a: &Q8Act, corr: &mut f32) -> (f32, f32) {
    let c0 = st * STEP;
    let (s0, z0) = t.granule(r, c0);
    if t.glen == QK {
        let (s1, z1) = t.granule(r, c0 + QK);
        *corr += s0 * z0 * a.sums[c0 / QK] + s1 * z1 * a.sums[c0 / QK + 1];
        return (s0, s1);
    }
    if c0.is_multiple_of(t.glen) {
        *corr += s0 * z0 * a.sums[c0 / t.glen];
    }
    (s0, s0)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn vnni(t: &IntRows, row: &[u8], r: usize, k: usize, a: &Q8Act) -> f32 {
    let (mut acc, mut corr) = (_mm512_setzero_ps(), 0f32);
    let step_bytes = STEP * t.bits as usize / 8;
    let nib = _mm256_set1_epi8(15);
    // The lanes holding block 1 of a step (see `Q8Act::lanes`).
    let second: __mmask16 = if t.bits == 4 { 0xF0F0 } else { 0xFF00 };
    for st in 0..k / STEP {
        prefetch(row, st * step_bytes);
        let (s0, s1) = step_scales(t, r, st, a, &mut corr);
        let sv = _mm512_mask_blend_ps(second, _mm512_set1_ps(s0), _mm512_set1_ps(s1));
        let w = if t.bits == 4 {
            let p = _mm256_loadu_si256(row.as_ptr().add(st * 32) as *const __m256i);
            let lo = _mm256_and_si256(p, nib);
            let hi = _mm256_and_si256(_mm256_srli_epi16(p, 4), nib);
            _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1)
        } else {
            _mm512_loadu_si512(row.as_ptr().add(st * STEP) as *const _)
        };
        let x = _mm512_loadu_si512(a.q.as_ptr().add(st * STEP) as *const _);
        let dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, x);
        let d = _mm512_mul_ps(_mm512_loadu_ps(a.lanes.as_ptr().add(st * 16)), sv);
        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), d, acc);
    }
    _mm512_reduce_add_ps(acc) - corr
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn avx2(t: &IntRows, row: &[u8], r: usize, k: usize, a: &Q8Act) -> f32 {
    let (mut acc, mut corr) = (_mm256_setzero_ps(), 0f32);
    let step_bytes = STEP * t.bits as usize / 8;
    let nib = _mm256_set1_epi8(15);
    let ones = _mm256_set1_epi16(1);
    for st in 0..k / STEP {
        prefetch(row, st * step_bytes);
        let (s0, s1) = step_scales(t, r, st, a, &mut corr);
        let xp = a.q.as_ptr().add(st * STEP);
        if t.bits == 4 {
            // Lanes 0–3 of each product belong to block 0, 4–7 to block 1 (the first 8
            // lane scales of the step).
            let p = _mm256_loadu_si256(row.as_ptr().add(st * 32) as *const __m256i);
            let lo = _mm256_and_si256(p, nib);
            let hi = _mm256_and_si256(_mm256_srli_epi16(p, 4), nib);
            // u8 ≤ 15 times i8: pairs sum to at most 3,810, no i16 saturation.
            let xl = _mm256_loadu_si256(xp as *const __m256i);
            let xh = _mm256_loadu_si256(xp.add(32) as *const __m256i);
            let dl = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, xl), ones);
            let dh = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, xh), ones);
            let dot = _mm256_add_epi32(dl, dh);
            let sv = _mm256_blend_ps::<0b1111_0000>(_mm256_set1_ps(s0), _mm256_set1_ps(s1));
            let d = _mm256_mul_ps(_mm256_loadu_ps(a.lanes.as_ptr().add(st * 16)), sv);
            acc = _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(dot), d), acc);
        } else {
            // 8-bit codes up to 255 would saturate vpmaddubsw's i16 pairs: widen to i16.
            for (b, s) in [s0, s1].into_iter().enumerate() {
                let mut dot = _mm256_setzero_si256();
                for h in 0..2 {
                    let o = b * QK + h * 16;
                    let w = _mm256_cvtepu8_epi16(_mm_loadu_si128(
                        row.as_ptr().add(st * STEP + o) as *const __m128i
                    ));
                    let x = _mm256_cvtepi8_epi16(_mm_loadu_si128(xp.add(o) as *const __m128i));
                    dot = _mm256_add_epi32(dot, _mm256_madd_epi16(w, x));
                }
                let d = _mm256_set1_ps(a.d[2 * st + b] * s);
                acc = _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(dot), d), acc);
            }
        }
    }
    let h = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    let h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
    _mm_cvtss_f32(h) - corr
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> u32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (*seed >> 33) as u32
    }

    /// Random rows of `bits`-bit codes, `n × k`, in granules of `glen` (asymmetric when `zeros`).
    fn rows(bits: u8, n: usize, k: usize, glen: usize, zeros: bool, seed: u64) -> IntRows {
        let mut s = seed;
        let codes: Vec<u8> = (0..n * k)
            .map(|_| (lcg(&mut s) % (1 << bits)) as u8)
            .collect();
        let packed = if bits == 4 {
            codes.chunks(2).map(|p| p[0] | (p[1] << 4)).collect()
        } else {
            codes
        };
        let per_row = k / glen;
        let scales = (0..n * per_row)
            .map(|_| 0.001 + (lcg(&mut s) % 1000) as f32 * 1e-5)
            .collect();
        let zeros = if zeros {
            (0..n * per_row)
                .map(|_| (lcg(&mut s) % (1 << bits)) as f32)
                .collect()
        } else {
            Vec::new()
        };
        IntRows {
            bits,
            row_bytes: k * bits as usize / 8,
            packed,
            glen,
            per_row,
            scales,
            zeros,
            offset: if bits == 4 { 8.0 } else { 128.0 },
        }
    }

    fn dequantized(t: &IntRows, r: usize, k: usize) -> Vec<f64> {
        (0..k)
            .map(|c| {
                let code = if t.bits == 4 {
                    let b = t.packed[r * t.row_bytes + c / 2];
                    if c % 2 == 0 {
                        b & 15
                    } else {
                        b >> 4
                    }
                } else {
                    t.packed[r * t.row_bytes + c]
                };
                let (s, z) = t.granule(r, c);
                (code as f64 - z as f64) * s as f64
            })
            .collect()
    }

    #[test]
    fn every_kernel_equals_the_dequantized_product_with_rounded_activations() {
        let kernels: Vec<Int8Kernel> = [Int8Kernel::Vnni, Int8Kernel::Avx2, Int8Kernel::Portable]
            .into_iter()
            .filter(|k| k.is_available())
            .collect();
        eprintln!("kernels run here: {kernels:?}");
        for (bits, k, glen, zeros) in [
            (4, 64, 64, true),
            (4, 576, 64, true),
            (4, 1536, 128, false),
            (4, 640, 640, true),
            (4, 576, 32, true),
            (4, 128, 32, false),
            (8, 576, 64, true),
            (8, 192, 32, true),
            (8, 128, 128, false),
        ] {
            let n = 7;
            let t = rows(bits, n, k, glen, zeros, 11 + k as u64);
            let mut s = 5u64;
            // Activations with an outlier, as real ones have.
            let x: Vec<f32> = (0..k)
                .map(|i| {
                    let v = (lcg(&mut s) % 20001) as f32 / 10000.0 - 1.0;
                    if i == 37 {
                        v * 40.0
                    } else {
                        v
                    }
                })
                .collect();
            let a = Q8Act::new(&x, bits, glen);
            for r in 0..n {
                let w = dequantized(&t, r, k);
                let exact: f64 = (0..k).map(|c| w[c] * a.value(c, bits) as f64).sum();
                let scale: f64 = (0..k).map(|c| (w[c] * a.value(c, bits) as f64).abs()).sum();
                let float: f64 = (0..k).map(|c| w[c] * x[c] as f64).sum();
                for &kern in &kernels {
                    let y = dot_row(kern, &t, r, k, &a) as f64;
                    assert!(
                        (y - exact).abs() <= 2e-6 * scale,
                        "{kern:?} {bits}-bit k {k} g {glen} row {r}: {y} vs {exact}"
                    );
                }
                // Against the unrounded product, at most half a step of each block's grid
                // per value.
                let bound: f64 = (0..k).map(|c| w[c].abs() * a.d[c / QK] as f64 / 2.0).sum();
                assert!(
                    (exact - float).abs() <= bound * 1.0001,
                    "{exact} vs {float}"
                );
            }
        }
    }

    #[test]
    fn layouts_that_do_not_fit_are_refused() {
        assert!(fits(&rows(4, 1, 128, 64, true, 1), 128));
        assert!(fits(&rows(4, 1, 128, 32, true, 1), 128));
        assert!(!fits(&rows(4, 1, 96, 32, true, 1), 96));
        assert!(!fits(&rows(4, 1, 192, 96, true, 1), 192));
        assert!(!fits(&rows(4, 1, 128, 16, true, 1), 128));
        let mut t = rows(4, 1, 128, 64, true, 1);
        t.bits = 3;
        assert!(!fits(&t, 128));
    }

    #[test]
    fn the_four_bit_order_is_a_permutation() {
        let mut seen = [false; 128];
        for c in 0..128 {
            let p = order4(c);
            assert!(!seen[p]);
            seen[p] = true;
        }
        // Byte j of a 64-value step holds positions 2j and 2j+1 (block j / 16).
        assert_eq!(order4(0), 0);
        assert_eq!(order4(1), 32);
        assert_eq!(order4(2), 1);
        assert_eq!(order4(32), 16);
        assert_eq!(order4(33), 48);
    }
}
