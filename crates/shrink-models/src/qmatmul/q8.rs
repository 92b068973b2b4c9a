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
//! Granules of 16 or 32 values (GGUF's Q6_K, the 32-value types) have several scales per
//! 64-value step, spread over the accumulator's lanes; mins (Q4_1, Q4_K, ...) and zero points
//! both enter once per granule as `(min − s_g·z_g)·A_g` (the bias held per granule,
//! [`IntRows::bias`]), added to the row's accumulator before its horizontal sum.
//!
//! Layouts: 4-bit codes two per byte, the low nibble first (shrink's int4, HQQ, GGUF's 4-bit
//! types re-packed); 5- and 6-bit codes as those nibbles plus one or two 64-bit masks per step
//! of the high bits (added as 16 and 32 under the mask: one masked add each with AVX-512);
//! 8-bit one per byte. The nibble kernels split each 32-byte run (two blocks) into its low and
//! high nibbles, so the activations are stored in that order: per 64 values, the even positions
//! of both blocks, then the odd ones ([`super::kernel_position`]).

#![allow(unsafe_op_in_unsafe_fn)]

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::{kernel_position, Floats, IntRows};
/// The kernels are chosen as the int8 GEMM's are (VNNI, AVX2, portable; one detection).
pub use crate::int8_gemm::Int8Kernel;

/// Activation values per int8 block (one scale each), as ggml's Q8_0.
pub const QK: usize = 32;
/// Values a kernel step covers: two blocks.
const STEP: usize = 2 * QK;
/// Bytes ahead of the codes being read that the kernels ask the cache for.
#[cfg(target_arch = "x86_64")]
const PREFETCH: usize = 2048;

/// Whether `t` (a `[n, k]` weight) has a layout the kernels here read: 4- or 8-bit codes, or
/// 5-/6-bit planes, rows a whole multiple of 64 values, granules of 16 or 32 or a multiple of 64.
pub(super) fn fits(t: &IntRows, k: usize) -> bool {
    (t.bits == 4 || t.bits == 8 || t.planes())
        && k.is_multiple_of(STEP)
        && (t.glen == 16 || t.glen == QK || t.glen.is_multiple_of(STEP))
}

/// One token's activations quantized to int8 blocks, in the order the kernels for `bits` read.
pub struct Q8Act {
    /// The int8 values (for codes below 8 bits: per 64, even positions of both blocks, then
    /// the odd ones).
    q: Vec<i8>,
    /// Per step of 64 values, the 16 lane scales of an AVX-512 accumulator: for nibbles
    /// `[d₀ ×4, d₁ ×4, d₀ ×4, d₁ ×4]` (each 32-bit lane sums 4 bytes of one block), for
    /// 8-bit `[d₀ ×8, d₁ ×8]`.
    lanes: Vec<f32>,
    /// Per block, its scale `d_b`.
    d: Vec<f32>,
    /// Per granule, `A_g = Σ_{c∈g} d_b(c) · q_c`.
    sums: Vec<f32>,
    /// Symmetric codes' zero folded into the integer sums (AVX-512 VNNI): per step, for each
    /// of the 16 lanes, `−offset · Σ q` over the 4 activations it covers, the value its
    /// `vpdpbusd` starts from; empty when not folded.
    init: Vec<i32>,
}

impl Q8Act {
    /// `x` quantized for rows of `bits`-bit codes in granules of `glen` values.
    pub fn new(x: &[f32], bits: u8, glen: usize) -> Self {
        let k = x.len();
        debug_assert!(
            k.is_multiple_of(STEP) && (glen == 16 || glen == QK || glen.is_multiple_of(STEP))
        );
        let nibbles = bits != 8;
        let mut q = vec![0i8; k];
        let mut d = vec![0f32; k / QK];
        // Σ q per 16 values (the smallest granule).
        let mut sum16 = vec![0i32; k / 16];
        quantize_steps(x, nibbles, &mut q, &mut d, &mut sum16);
        // Lanes of block 0 of a step, then of block 1: nibble order [4, 4, 4, 4], natural [8, 8].
        let first: [bool; 16] = std::array::from_fn(|l| if nibbles { l % 8 < 4 } else { l < 8 });
        let mut lanes = vec![0f32; k / STEP * 16];
        for (l, d) in lanes.chunks_exact_mut(16).zip(d.chunks_exact(2)) {
            for (o, &f) in l.iter_mut().zip(&first) {
                *o = if f { d[0] } else { d[1] };
            }
        }
        let per = glen / 16;
        let sums = (0..k / glen)
            .map(|g| {
                (g * per..(g + 1) * per)
                    .map(|i| d[i / 2] * sum16[i] as f32)
                    .sum()
            })
            .collect();
        Q8Act {
            q,
            lanes,
            d,
            sums,
            init: Vec::new(),
        }
    }

    /// `x` quantized for the rows `t`, with a symmetric code offset folded into the integer
    /// sums ([`Self::init`]), so the VNNI kernel needs no correction per granule.
    pub(super) fn for_rows(x: &[f32], t: &IntRows) -> Self {
        let mut a = Q8Act::new(x, t.bits, t.glen);
        let lane_sums =
            a.q.chunks_exact(4)
                .map(|l| l.iter().map(|&q| q as i32).sum::<i32>());
        if t.zeros.is_empty() && t.offset != 0.0 {
            let off = t.offset as i32;
            a.init = lane_sums.map(|s| -off * s).collect();
        }
        a
    }

    /// The tokens of `x` (`[m, k]`) quantized for each of `rows`, once per distinct way of
    /// reading them (code width, granule, folded offset): the activation sets and, per entry
    /// of `rows`, the index of its set.
    ///
    /// Each thread of a product calls this for itself rather than reading one thread's result:
    /// the other core fetching those ~2 KB line by line measured 8 % slower Q4_0 generation
    /// (2 threads, side by side) than quantizing twice.
    pub(super) fn for_each(
        x: &[f32],
        k: usize,
        rows: &[&IntRows],
    ) -> (Vec<Vec<Q8Act>>, Vec<usize>) {
        let key = |t: &IntRows| {
            let folded = t.zeros.is_empty() && t.offset != 0.0;
            let offset = if folded { t.offset.to_bits() } else { 0 };
            (t.bits != 8, t.glen, offset)
        };
        let mut keys = Vec::new();
        let mut sets: Vec<Vec<Q8Act>> = Vec::new();
        let which = rows
            .iter()
            .map(|t| {
                let kk = key(t);
                keys.iter().position(|&e| e == kk).unwrap_or_else(|| {
                    keys.push(kk);
                    sets.push(x.chunks_exact(k).map(|xi| Q8Act::for_rows(xi, t)).collect());
                    keys.len() - 1
                })
            })
            .collect();
        (sets, which)
    }

    /// The activation at natural position `c` as the kernels see it: `d_b · q`.
    pub fn value(&self, c: usize, bits: u8) -> f32 {
        let at = if bits != 8 { order4(c) } else { c };
        self.d[c / QK] * self.q[at] as f32
    }
}

crate::kernels::dispatch! {
    /// `x` (a multiple of 64 values) rounded to int8 blocks of 32 into `q` (per 64 values the
    /// even positions, then the odd ones, when `nibbles`), each block's scale into `d` and
    /// the sum of every 16 codes into `sum16`. Written per 64-value step with fixed-length
    /// loops so that it vectorises: one value at a time was 2.7 % of the samples of a 2-thread Q4_0
    /// generation profile (`perf`).
    fn quantize_steps(x: &[f32], nibbles: bool, q: &mut [i8], d: &mut [f32], sum16: &mut [i32]) {
        let steps = x
            .chunks_exact(STEP)
            .zip(q.chunks_exact_mut(STEP))
            .zip(d.chunks_exact_mut(2).zip(sum16.chunks_exact_mut(4)));
        for ((xs, qs), (ds, s16)) in steps {
            let mut r = [0i8; STEP];
            for b in 0..2 {
                let xb = &xs[b * QK..(b + 1) * QK];
                // |x| as bits: for finite values the integer max is the float max, and it
                // vectorises (a float `max` fold does not, for its NaN rules).
                let amax = f32::from_bits(xb.iter().map(|v| v.abs().to_bits()).max().unwrap_or(0));
                let db = amax / 127.0;
                let id = if db > 0.0 { 1.0 / db } else { 0.0 };
                ds[b] = db;
                // Rounded to nearest, ties to even (ggml's roundf takes ties away from zero;
                // a tie is a measure-zero event): the magic-number rounding vectorises, the
                // libm call measured ~1 % of a generation's time.
                for (o, &v) in r[b * QK..(b + 1) * QK].iter_mut().zip(xb) {
                    *o = crate::kernels::round_ties_even_small(v * id) as i8;
                }
            }
            for (s, c) in s16.iter_mut().zip(r.chunks_exact(16)) {
                *s = c.iter().map(|&v| v as i32).sum();
            }
            if nibbles {
                for i in 0..QK {
                    qs[i] = r[2 * i];
                    qs[QK + i] = r[2 * i + 1];
                }
            } else {
                qs.copy_from_slice(&r);
            }
        }
    }
}

/// Where natural position `c` is stored for the 4-bit kernels.
fn order4(c: usize) -> usize {
    c / STEP * STEP + kernel_position(c % STEP)
}

/// Row `r` of `t` (`k` values) times the activations `a`.
#[cfg(test)]
pub(super) fn dot_row(kernel: Int8Kernel, t: &IntRows, r: usize, k: usize, a: &Q8Act) -> f32 {
    let mut out = [0f32];
    dot_rows_tokens(kernel, t, r..r + 1, k, std::slice::from_ref(a), &mut out);
    out[0]
}

/// Rows `rows` of `t` (`k` values each) times each token's activations `acts` into `out`
/// (`[rows, tokens]`: a row's value for every token, then the next row's); the VNNI kernel
/// unpacks each step of codes once for up to 8 tokens. The loop over rows runs inside the
/// kernels' compiled features: rows of SmolLM2 are 9–24 steps long, so a call per row cost
/// ~4 % of a token.
pub(super) fn dot_rows_tokens(
    kernel: Int8Kernel,
    t: &IntRows,
    rows: std::ops::Range<usize>,
    k: usize,
    acts: &[Q8Act],
    out: &mut [f32],
) {
    let m = acts.len();
    assert_eq!(rows.len() * m, out.len(), "one output per row and token");
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Int8Kernel::Vnni => {
            // SAFETY: the kernel was detected on this CPU (callers check `is_available`), and
            // `fits` holds, so every 64-value step lies inside the row and the activations.
            unsafe {
                match m {
                    1 => vnni_rows::<1>(t, rows, k, acts, out),
                    2 => vnni_rows::<2>(t, rows, k, acts, out),
                    3 => vnni_rows::<3>(t, rows, k, acts, out),
                    4 => vnni_rows::<4>(t, rows, k, acts, out),
                    _ => vnni_rows::<8>(t, rows, k, acts, out),
                }
            }
        }
        // One row and token at a time.
        _ => {
            for (r, o) in rows.zip(out.chunks_exact_mut(m)) {
                let row = &t.packed[r * t.row_bytes..(r + 1) * t.row_bytes];
                for (a, o) in acts.iter().zip(o) {
                    *o = match kernel {
                        // SAFETY: as above.
                        #[cfg(target_arch = "x86_64")]
                        Int8Kernel::Avx2 => unsafe { avx2(t, row, r, k, a) },
                        _ => portable(t, row, r, k, a),
                    };
                }
            }
        }
    }
}

/// [`vnni`] over `rows`, for tokens in chunks of up to `N` (a remainder chunk takes the
/// instance of its own length); one token four rows at a time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn vnni_rows<const N: usize>(
    t: &IntRows,
    rows: std::ops::Range<usize>,
    k: usize,
    acts: &[Q8Act],
    out: &mut [f32],
) {
    let m = acts.len();
    if m == 1 {
        let (mut r, mut o) = (rows.start, 0);
        while r + 4 <= rows.end {
            vnni::<1, 4>(t, r, k, acts, &mut out[o..o + 4]);
            (r, o) = (r + 4, o + 4);
        }
        for r in r..rows.end {
            vnni::<1, 1>(t, r, k, acts, &mut out[r - rows.start..][..1]);
        }
        return;
    }
    for (r, o) in rows.zip(out.chunks_exact_mut(m)) {
        for (a, o) in acts.chunks(N).zip(o.chunks_mut(N)) {
            match a.len() {
                8 => vnni::<8, 1>(t, r, k, a, o),
                7 => vnni::<7, 1>(t, r, k, a, o),
                6 => vnni::<6, 1>(t, r, k, a, o),
                5 => vnni::<5, 1>(t, r, k, a, o),
                4 => vnni::<4, 1>(t, r, k, a, o),
                3 => vnni::<3, 1>(t, r, k, a, o),
                2 => vnni::<2, 1>(t, r, k, a, o),
                _ => vnni::<1, 1>(t, r, k, a, o),
            }
        }
    }
}

/// The zero-point and min terms of row `r`: `Σ_g bias_g·A_g` ([`IntRows::bias`], the
/// VNNI kernel's too), plus the symmetric offset's part unless `folded` (already in the integer
/// sums, [`Q8Act::init`]).
#[inline(always)]
fn correction(t: &IntRows, r: usize, a: &Q8Act, folded: bool) -> f32 {
    let g0 = t.granule_index(r, 0);
    let mut c = t.bias().map_or(0.0, |b| b.dot(g0, None, &a.sums));
    if t.zeros.is_empty() && !folded && t.offset != 0.0 {
        c -= t.offset * t.scales.dot(g0, None, &a.sums);
    }
    c
}

fn portable(t: &IntRows, _row: &[u8], r: usize, k: usize, a: &Q8Act) -> f32 {
    let mut acc = 0f32;
    // Runs of 16 values: one granule (all granules are multiples of 16) and one block.
    for c0 in (0..k).step_by(16) {
        let mut dot = 0i32;
        for c in c0..c0 + 16 {
            let q = a.q[if t.bits == 8 { c } else { order4(c) }];
            let code = t.code(r, c, k);
            let code = t.table.as_ref().map_or(code, |tab| tab.ints[code as usize]);
            dot += code as i32 * q as i32;
        }
        acc += t.granule(r, c0).0 * a.d[c0 / QK] * dot as f32;
    }
    (acc + correction(t, r, a, false)) * table_scale(t)
}

/// What a row's sum is multiplied by: a code table's integer scale, else 1.
#[inline(always)]
fn table_scale(t: &IntRows) -> f32 {
    t.table.as_ref().map_or(1.0, |tab| tab.int_scale)
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

/// For granules of 16 or 32 values, the granule (0..4 within a step) of each of an AVX-512
/// accumulator's 16 lanes (each sums 4 consecutive bytes of the step's code vector), for
/// nibble order (`nibbles`) or natural order; built once (the kernels run per row).
fn lane_granules(glen: usize, nibbles: bool) -> &'static [i32; 16] {
    const fn table(glen: usize, nibbles: bool) -> [i32; 16] {
        let mut t = [0i32; 16];
        let mut l = 0;
        while l < 16 {
            // The first value the lane covers: nibble order puts value 2p at byte p < 32.
            let v = if nibbles { 8 * (l % 8) } else { 4 * l };
            t[l] = (v / glen) as i32;
            l += 1;
        }
        t
    }
    const TABLES: [[i32; 16]; 4] = [
        table(16, true),
        table(16, false),
        table(32, true),
        table(32, false),
    ];
    &TABLES[usize::from(glen != 16) * 2 + usize::from(!nibbles)]
}

/// The high-bit masks of row `r`, step `st` (planes only).
#[inline(always)]
fn high_masks(t: &IntRows, r: usize, k: usize, st: usize) -> &[u64] {
    let per = t.bits as usize - 4;
    &t.high[r * t.high_per_row(k) + st * per..][..per]
}

/// Rows `r0..r0 + R` times the `N` tokens' activations `acts` into `out` (`[R, N]`): each
/// 64-value step of codes is unpacked once and multiplied with every token (prompt processing
/// reads a row once per `N` tokens instead of once per token), and each step of activations
/// loaded once for the `R` rows. Several rows at once (one token) share the setup and the
/// activation loads and keep independent accumulator chains in flight: rows of SmolLM2 are
/// only 9–24 steps long.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn vnni<const N: usize, const R: usize>(
    t: &IntRows,
    r0: usize,
    k: usize,
    acts: &[Q8Act],
    out: &mut [f32],
) {
    debug_assert!(acts.len() == N && out.len() == N * R);
    debug_assert!((r0 + R) * t.row_bytes <= t.packed.len());
    let mut acc = [[_mm512_setzero_ps(); N]; R];
    let nibbles = t.bits != 8;
    let step_bytes = if nibbles { STEP / 2 } else { STEP };
    let nib = _mm256_set1_epi8(15);
    let g0: [usize; R] = std::array::from_fn(|i| t.granule_index(r0 + i, 0));
    let rows: [&[u8]; R] =
        std::array::from_fn(|i| &t.packed[(r0 + i) * t.row_bytes..(r0 + i + 1) * t.row_bytes]);
    // Granules of 64k values: steps per granule, a power of two in practice (a shift).
    let steps_per_granule = (t.glen / STEP).max(1);
    let spread = Spread {
        // Granules of 16/32: their scales per step, loaded together and spread over the lanes.
        per_step: if t.glen < STEP { STEP / t.glen } else { 0 },
        idx: _mm512_loadu_si512(lane_granules(t.glen.min(QK), nibbles).as_ptr() as *const _),
        steps_per_granule,
        shift: steps_per_granule
            .is_power_of_two()
            .then(|| steps_per_granule.trailing_zeros()),
        per_row: t.per_row,
    };
    // Every token's activations were made for these rows ([`Q8Act::for_rows`]): all folded
    // or none.
    let folded = !acts[0].init.is_empty();
    // A code table's integer values, in each 128-bit lane for `vpshufb`.
    let lut = t
        .table
        .as_ref()
        .map(|tab| _mm512_broadcast_i32x4(_mm_loadu_si128(tab.ints.as_ptr() as *const __m128i)));
    for st in 0..k / STEP {
        let x: [__m512i; N] = std::array::from_fn(|j| {
            _mm512_loadu_si512(acts[j].q.as_ptr().add(st * STEP) as *const _)
        });
        let init: [__m512i; N] = std::array::from_fn(|j| {
            if folded {
                _mm512_loadu_si512(acts[j].init.as_ptr().add(st * 16) as *const _)
            } else {
                _mm512_setzero_si512()
            }
        });
        let lanes: [__m512; N] =
            std::array::from_fn(|j| _mm512_loadu_ps(acts[j].lanes.as_ptr().add(st * 16)));
        for i in 0..R {
            let row = rows[i];
            prefetch(row, st * step_bytes);
            let mut w = if nibbles {
                let p = _mm256_loadu_si256(row.as_ptr().add(st * 32) as *const __m256i);
                let lo = _mm256_and_si256(p, nib);
                let hi = _mm256_and_si256(_mm256_srli_epi16(p, 4), nib);
                _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1)
            } else {
                _mm512_loadu_si512(row.as_ptr().add(st * STEP) as *const _)
            };
            if t.planes() {
                for (b, &m) in high_masks(t, r0 + i, k, st).iter().enumerate() {
                    w = _mm512_mask_add_epi8(w, m, w, _mm512_set1_epi8(16 << b));
                }
            }
            if let Some(lut) = lut {
                w = _mm512_shuffle_epi8(lut, w);
            }
            let sv = granule_floats(&t.scales, g0[i], st, &spread);
            for j in 0..N {
                let dot = _mm512_dpbusd_epi32(init[j], w, x[j]);
                let d = _mm512_mul_ps(lanes[j], sv);
                acc[i][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), d, acc[i][j]);
            }
        }
    }
    if let Some(bias) = t.bias() {
        // Zero points and mins, `Σ_g bias_g · A_g`, into the same accumulator 16 granules at
        // a time, before its one horizontal sum (as a separate call with its own sum, this
        // measured 13 % of int4 g64 generation; per step, with `bias_g · d_b · Σ q` per lane,
        // slower still: 9 broadcasts and FMAs a row of 576 instead of one).
        let n = acts[0].sums.len();
        for g in (0..n).step_by(16) {
            let mask: __mmask16 = if n - g >= 16 {
                0xFFFF
            } else {
                (1 << (n - g)) - 1
            };
            let sums: [__m512; N] =
                std::array::from_fn(|j| _mm512_maskz_loadu_ps(mask, acts[j].sums.as_ptr().add(g)));
            for i in 0..R {
                let b = match bias {
                    Floats::F16(h) => _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(
                        mask,
                        h.as_ptr().add(g0[i] + g) as *const i16,
                    )),
                    Floats::F32(f) => _mm512_maskz_loadu_ps(mask, f.as_ptr().add(g0[i] + g)),
                };
                for j in 0..N {
                    acc[i][j] = _mm512_fmadd_ps(b, sums[j], acc[i][j]);
                }
            }
        }
    }
    let scale = table_scale(t);
    for i in 0..R {
        for j in 0..N {
            out[i * N + j] = _mm512_reduce_add_ps(acc[i][j]) * scale;
        }
    }
}

/// How a row's per-granule values (scales, biases) reach the lanes of a step.
#[cfg(target_arch = "x86_64")]
struct Spread {
    /// Granules of 16/32: how many per step (0 for granules of 64k values).
    per_step: usize,
    /// Their lane of each accumulator lane.
    idx: __m512i,
    /// Granules of 64k values: steps per granule, and its log2 when a power of two.
    steps_per_granule: usize,
    shift: Option<u32>,
    /// Granules per row (0: one for the whole tensor).
    per_row: usize,
}

/// The values of `v` for the granules of step `st` of the row whose first granule is `g0`,
/// one per lane: granules of 16/32 loaded together and spread over the lanes; one granule of
/// 64k values broadcast, found by a shift, not a division, per step (float16 widened in
/// hardware: with `half`'s conversion, a library call, int4 g64 + int4 embedding ran tg128
/// 118.8 in a bench-speed.sh run, 132.1 tg64 after).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn granule_floats(v: &Floats, g0: usize, st: usize, sp: &Spread) -> __m512 {
    if sp.per_step > 0 {
        // The step's (at most 4) values; the padding after the last row keeps the loads
        // inside the buffer, and the lanes past them are never picked.
        let at = g0 + st * sp.per_step;
        let s = match v {
            Floats::F16(h) => _mm512_cvtph_ps(_mm256_castsi128_si256(_mm_loadl_epi64(
                h.as_ptr().add(at) as *const __m128i,
            ))),
            Floats::F32(f) => _mm512_castps128_ps512(_mm_loadu_ps(f.as_ptr().add(at))),
        };
        return _mm512_permutexvar_ps(sp.idx, s);
    }
    let g = g0
        + match (sp.per_row, sp.shift) {
            (0, _) => 0,
            (_, Some(sh)) => st >> sh,
            _ => st / sp.steps_per_granule,
        };
    match v {
        Floats::F16(h) => _mm512_cvtph_ps(_mm256_set1_epi16(h[g].to_bits() as i16)),
        Floats::F32(f) => _mm512_set1_ps(f[g]),
    }
}

/// 32 bytes, 0xFF where bit `i` of `bits` is set (ggml's `bytes_from_bits_32`).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn bytes_from_bits(bits: u32) -> __m256i {
    let shuffle = _mm256_set_epi64x(
        0x0303030303030303,
        0x0202020202020202,
        0x0101010101010101,
        0,
    );
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(bits as i32), shuffle);
    let bytes = _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
    _mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn avx2(t: &IntRows, row: &[u8], r: usize, k: usize, a: &Q8Act) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let nibbles = t.bits != 8;
    let step_bytes = if nibbles { STEP / 2 } else { STEP };
    let nib = _mm256_set1_epi8(15);
    let ones = _mm256_set1_epi16(1);
    let g0 = t.granule_index(r, 0);
    let per_step = if t.glen < STEP { STEP / t.glen } else { 0 };
    // A code table's values as signed bytes (the offset 128 taken off), in both lanes.
    let lut = t.table.as_ref().map(|tab| {
        let signed: [u8; 16] = std::array::from_fn(|i| tab.ints[i] ^ 0x80);
        let l = _mm_loadu_si128(signed.as_ptr() as *const __m128i);
        _mm256_set_m128i(l, l)
    });
    // Lane l of a nibble product sums values 8l..8l+8: the first 8 of the AVX-512 table.
    let idx = _mm256_loadu_si256(lane_granules(t.glen.min(QK), true).as_ptr() as *const __m256i);
    for st in 0..k / STEP {
        prefetch(row, st * step_bytes);
        let xp = a.q.as_ptr().add(st * STEP);
        let scale = |c: usize| t.scales.get(t.granule_index(r, st * STEP + c));
        if nibbles {
            let p = _mm256_loadu_si256(row.as_ptr().add(st * 32) as *const __m256i);
            let mut lo = _mm256_and_si256(p, nib);
            let mut hi = _mm256_and_si256(_mm256_srli_epi16(p, 4), nib);
            if t.planes() {
                for (i, &m) in high_masks(t, r, k, st).iter().enumerate() {
                    let add = _mm256_set1_epi8(16 << i);
                    lo = _mm256_or_si256(lo, _mm256_and_si256(bytes_from_bits(m as u32), add));
                    let upper = bytes_from_bits((m >> 32) as u32);
                    hi = _mm256_or_si256(hi, _mm256_and_si256(upper, add));
                }
            }
            let mut xl = _mm256_loadu_si256(xp as *const __m256i);
            let mut xh = _mm256_loadu_si256(xp.add(32) as *const __m256i);
            if let Some(lut) = lut {
                // A code table's signed values: |w| times x with w's sign (ggml's IQ4_NL
                // trick), so pairs stay within i16 (2 · 127 · 128).
                let (wl, wh) = (_mm256_shuffle_epi8(lut, lo), _mm256_shuffle_epi8(lut, hi));
                xl = _mm256_sign_epi8(xl, wl);
                xh = _mm256_sign_epi8(xh, wh);
                lo = _mm256_abs_epi8(wl);
                hi = _mm256_abs_epi8(wh);
            }
            // u8 ≤ 127 times i8: pairs sum to at most 32,512, no i16 saturation.
            let dl = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, xl), ones);
            let dh = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, xh), ones);
            let dot = _mm256_add_epi32(dl, dh);
            let sv = if per_step > 0 {
                let at = g0 + st * per_step;
                let s: [f32; 8] = std::array::from_fn(|i| {
                    if i < per_step {
                        t.scales.get(at + i)
                    } else {
                        0.0
                    }
                });
                _mm256_permutevar8x32_ps(_mm256_loadu_ps(s.as_ptr()), idx)
            } else {
                _mm256_set1_ps(scale(0))
            };
            // The first 8 lane scales of the step: [d₀ ×4, d₁ ×4].
            let d = _mm256_mul_ps(_mm256_loadu_ps(a.lanes.as_ptr().add(st * 16)), sv);
            acc = _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(dot), d), acc);
        } else {
            // 8-bit codes up to 255 would saturate vpmaddubsw's i16 pairs: widen to i16, 16
            // values (one granule at most) at a time.
            for q in 0..4 {
                let o = q * 16;
                let w = _mm256_cvtepu8_epi16(_mm_loadu_si128(
                    row.as_ptr().add(st * STEP + o) as *const __m128i
                ));
                let x = _mm256_cvtepi8_epi16(_mm_loadu_si128(xp.add(o) as *const __m128i));
                let dot = _mm256_madd_epi16(w, x);
                let d = _mm256_set1_ps(a.d[2 * st + q / 2] * scale(o));
                acc = _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(dot), d), acc);
            }
        }
    }
    let h = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    let h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
    // A table's offset never entered the sums (signed values), as if folded.
    (_mm_cvtss_f32(h) + correction(t, r, a, t.table.is_some())) * table_scale(t)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A linear congruential generator's next 31 bits (the kernels' tests' random codes).
    pub(in crate::qmatmul) fn lcg(seed: &mut u64) -> u32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (*seed >> 33) as u32
    }

    /// How a test weight's granules are offset.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Offset {
        /// Symmetric: the code offset.
        Symmetric,
        /// One integer zero point per granule.
        Zeros,
        /// One float min per granule (GGUF's Q4_1, Q4_K, ...).
        Mins,
        /// 4-bit codes indexing NF4's table.
        Nf4,
        /// 4-bit codes indexing IQ4_NL's integer table (exact).
        Iq4,
    }

    /// Random rows of `bits`-bit codes, `n × k`, in granules of `glen` (0: one for the tensor).
    /// Scales rounded to float16 (held as such) when `seed` is even, else float32.
    fn rows(bits: u8, n: usize, k: usize, glen: usize, off: Offset, seed: u64) -> IntRows {
        let mut s = seed;
        let codes: Vec<u8> = (0..n * k)
            .map(|_| (lcg(&mut s) % (1 << bits)) as u8)
            .collect();
        let (glen, per_row) = if glen == 0 { (k, 0) } else { (glen, k / glen) };
        let count = if per_row == 0 { 1 } else { n * per_row };
        let scales: Vec<f32> = (0..count)
            .map(|_| 0.001 + (lcg(&mut s) % 1000) as f32 * 1e-5)
            .map(|v| {
                if seed.is_multiple_of(2) {
                    half::f16::from_f32(v).to_f32()
                } else {
                    v
                }
            })
            .collect();
        let mut per_granule = |f: &dyn Fn(u32) -> f32| (0..count).map(|_| f(lcg(&mut s))).collect();
        let zeros = match off {
            Offset::Zeros => per_granule(&|v| (v % (1 << bits)) as f32),
            _ => Vec::new(),
        };
        let mins = match off {
            Offset::Mins => per_granule(&|v| (v % 2001) as f32 * 1e-5 - 0.01),
            _ => Vec::new(),
        };
        let offset = if off == Offset::Mins {
            0.0
        } else {
            (1u32 << (bits - 1)) as f32
        };
        IntRows::from_codes(
            bits, &codes, n, k, glen, per_row, scales, zeros, mins, offset,
        )
    }

    /// The weights as the kernels multiply them (a code table's values through its integers).
    fn dequantized(t: &IntRows, r: usize, k: usize) -> Vec<f64> {
        (0..k)
            .map(|c| {
                if let Some(tab) = &t.table {
                    let int = tab.ints[t.code(r, c, k) as usize] as f64 - 128.0;
                    return int * tab.int_scale as f64 * t.granule(r, c).0 as f64;
                }
                let (s, z) = t.granule(r, c);
                let m = t.min(t.granule_index(r, c));
                (t.code(r, c, k) as f64 - z as f64) * s as f64 + m as f64
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
        use Offset::*;
        for (bits, k, glen, off) in [
            (4, 64, 64, Zeros),
            (4, 576, 64, Zeros),
            (4, 1536, 128, Symmetric),
            (4, 640, 640, Zeros),
            (4, 576, 32, Zeros),
            (4, 128, 32, Symmetric),
            (4, 576, 32, Mins),
            (4, 256, 16, Symmetric),
            (4, 192, 0, Symmetric),
            (5, 576, 32, Symmetric),
            (5, 576, 32, Mins),
            (5, 512, 64, Zeros),
            (6, 1536, 16, Symmetric),
            (6, 576, 32, Mins),
            (6, 128, 128, Zeros),
            (8, 576, 64, Zeros),
            (8, 192, 32, Zeros),
            (8, 128, 128, Symmetric),
            (8, 256, 16, Symmetric),
            (8, 576, 32, Mins),
            (4, 576, 64, Nf4),
            (4, 256, 16, Nf4),
            (4, 1536, 128, Nf4),
            (4, 576, 32, Iq4),
        ] {
            for seed in [11 + k as u64, 12 + k as u64] {
                let n = 7;
                let t = rows(bits, n, k, glen, off, seed);
                assert_eq!(matches!(t.scales, Floats::F16(_)), seed % 2 == 0);
                assert!(fits(&t, k), "{bits}-bit k {k} g {glen}");
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
                let a = Q8Act::for_rows(&x, &t);
                // Runs of rows (one token: four rows at a time, then one by one) give each
                // row's single result, bit for bit.
                for &kern in &kernels {
                    for run in [0..n, 1..n, 2..6] {
                        let mut all = vec![0f32; run.len()];
                        dot_rows_tokens(
                            kern,
                            &t,
                            run.clone(),
                            k,
                            std::slice::from_ref(&a),
                            &mut all,
                        );
                        for (r, v) in run.zip(&all) {
                            assert_eq!(
                                v.to_bits(),
                                dot_row(kern, &t, r, k, &a).to_bits(),
                                "{kern:?} row {r}"
                            );
                        }
                    }
                }
                for r in 0..n {
                    let w = dequantized(&t, r, k);
                    let exact: f64 = (0..k).map(|c| w[c] * a.value(c, bits) as f64).sum();
                    let scale: f64 = (0..k).map(|c| (w[c] * a.value(c, bits) as f64).abs()).sum();
                    let float: f64 = (0..k).map(|c| w[c] * x[c] as f64).sum();
                    for &kern in &kernels {
                        // Several tokens at once give each token's single result, bit for bit.
                        let others: Vec<Q8Act> = (1..=9)
                            .map(|j| {
                                let xj: Vec<f32> = x.iter().map(|v| v * j as f32 - 0.01).collect();
                                Q8Act::for_rows(&xj, &t)
                            })
                            .collect();
                        let mut many = vec![0f32; others.len()];
                        dot_rows_tokens(kern, &t, r..r + 1, k, &others, &mut many);
                        for (o, v) in others.iter().zip(&many) {
                            assert_eq!(v.to_bits(), dot_row(kern, &t, r, k, o).to_bits());
                        }
                        let y = dot_row(kern, &t, r, k, &a) as f64;
                        assert!(
                            (y - exact).abs() <= 2e-6 * scale,
                            "{kern:?} {bits}-bit k {k} g {glen} {off:?} row {r}: {y} vs {exact}"
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
    }

    #[test]
    fn layouts_that_do_not_fit_are_refused() {
        use Offset::*;
        assert!(fits(&rows(4, 1, 128, 64, Zeros, 1), 128));
        assert!(fits(&rows(4, 1, 128, 32, Zeros, 1), 128));
        assert!(fits(&rows(6, 1, 128, 16, Symmetric, 1), 128));
        assert!(!fits(&rows(4, 1, 96, 32, Zeros, 1), 96));
        assert!(!fits(&rows(4, 1, 192, 96, Zeros, 1), 192));
        assert!(!fits(&rows(4, 1, 128, 8, Zeros, 1), 128));
        // 5-bit rows not a multiple of 64 values stay bit-packed, which no kernel reads.
        assert!(!fits(&rows(5, 1, 96, 32, Zeros, 1), 96));
        assert!(!fits(&rows(3, 1, 128, 64, Zeros, 1), 128));
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
