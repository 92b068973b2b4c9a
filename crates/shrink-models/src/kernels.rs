//! Hand-written hot loops that candle has no fast CPU path for: a vectorised `exp`, and the
//! element-wise pieces of attention and the MLP built on it.
//!
//! Why hand-written: candle's CPU softmax and SiLU call libm's scalar `expf` per element, which
//! measured as the largest cost after the matrix products in a SmolLM2 window (about 10% of the
//! time). The polynomial below is Cephes' `expf` (as ggml and most SIMD libraries use), written
//! so that LLVM vectorises it; functions are compiled for AVX-512 / AVX2 and picked at run time.

/// log2(e).
const LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln(2) split in a high part exact in f32 and a low correction (Cephes).
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;

/// e^x for one value, within 2 ulp of the exact result on [-87.3, 88.7]; inputs below are
/// clamped (e^-87.3 ≈ 1e-38, negligible next to any softmax sum), above saturate at f32::MAX.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.336_55, 88.722_83);
    let n = (x * LOG2E + 0.5).floor();
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // 2^n from its exponent bits; n ∈ [-126, 128] after the clamp, so the exponent field
    // stays valid except at the very top, where y·2^127·2 is computed in two steps.
    let n = n as i32;
    let half = n >> 1;
    let s1 = f32::from_bits(((half + 127) as u32) << 23);
    let s2 = f32::from_bits(((n - half + 127) as u32) << 23);
    y * s1 * s2
}

macro_rules! dispatch {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),*) $(-> $ret:ty)? $body:block) => {
        $(#[$m])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn imp($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                unsafe fn v4($($arg: $ty),*) $(-> $ret)? { imp($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn v3($($arg: $ty),*) $(-> $ret)? { imp($($arg),*) }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU supports the features v4 is compiled for.
                    return unsafe { v4($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: as above, for v3.
                    return unsafe { v3($($arg),*) };
                }
            }
            imp($($arg),*)
        }
    };
}
/// A function compiled for AVX-512 / AVX2+FMA and the baseline, picked at run time.
pub(crate) use dispatch;

dispatch! {
    /// xs[i] ← e^(xs[i]·scale − shift) for every i; returns the sum of the results.
    pub fn exp_scaled_sum(xs: &mut [f32], scale: f32, shift: f32) -> f32 {
        let mut acc = [0f32; 16];
        let mut chunks = xs.chunks_exact_mut(16);
        for c in &mut chunks {
            for (v, a) in c.iter_mut().zip(acc.iter_mut()) {
                *v = exp(*v * scale - shift);
                *a += *v;
            }
        }
        let mut sum: f32 = acc.iter().sum();
        for v in chunks.into_remainder() {
            *v = exp(*v * scale - shift);
            sum += *v;
        }
        sum
    }
}

dispatch! {
    /// Σ e^(x − shift) over xs, accumulated in f64 per block of 16 (xs is not modified).
    pub fn sum_exp(xs: &[f32], shift: f32) -> f64 {
        let mut total = 0f64;
        let mut chunks = xs.chunks_exact(256);
        for c in &mut chunks {
            let mut acc = [0f32; 16];
            for block in c.chunks_exact(16) {
                for (v, a) in block.iter().zip(acc.iter_mut()) {
                    *a += exp(*v - shift);
                }
            }
            total += acc.iter().map(|&a| a as f64).sum::<f64>();
        }
        for v in chunks.remainder() {
            total += exp(*v - shift) as f64;
        }
        total
    }
}

dispatch! {
    /// out[i] ← silu(g[i]) · u[i] = g / (1 + e^−g) · u (the SwiGLU gate).
    pub fn silu_mul(g: &[f32], u: &[f32], out: &mut [f32]) {
        for ((o, &a), &b) in out.iter_mut().zip(g).zip(u) {
            *o = a / (1.0 + exp(-a)) * b;
        }
    }
}

dispatch! {
    /// The largest value of xs (−∞ when empty).
    pub fn max(xs: &[f32]) -> f32 {
        let mut acc = [f32::NEG_INFINITY; 16];
        let mut chunks = xs.chunks_exact(16);
        for c in &mut chunks {
            for (v, a) in c.iter().zip(acc.iter_mut()) {
                *a = a.max(*v);
            }
        }
        let m = acc.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        chunks.remainder().iter().fold(m, |m, &v| m.max(v))
    }
}

/// `x` rounded to the nearest integer, ties to even, for |x| ≤ 2²² (quantizer codes).
///
/// Hand-written because the baseline x86-64 target has no rounding instruction, so
/// `f32::round_ties_even` is a library call per element; adding and subtracting 1.5·2²³
/// rounds in the FPU's default mode (ties to even) and vectorises.
#[inline(always)]
pub fn round_ties_even_small(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 · 2^23
    (x + MAGIC) - MAGIC
}

/// Dot product of two float32 slices of equal length, in 16 independent lanes (so LLVM
/// vectorises it; a single running sum cannot be reordered), summed pairwise at the end.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (xa, xb) in ca.zip(cb) {
        for l in 0..16 {
            acc[l] += xa[l] * xb[l];
        }
    }
    let mut w = 8;
    while w > 0 {
        for l in 0..w {
            acc[l] += acc[l + w];
        }
        w /= 2;
    }
    acc[0] + tail
}

/// A key/value element of the KV cache: float32, or float16 widened as it is read.
pub trait KvElem: Copy + Send + Sync {
    /// The values as float32 (for the portable kernel).
    fn widen(v: &[Self]) -> std::borrow::Cow<'_, [f32]>;
    /// 16 values from `p`, as float32.
    ///
    /// # Safety
    /// AVX-512F is available and `p` points to 16 readable values.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512;
}

impl KvElem for f32 {
    fn widen(v: &[f32]) -> std::borrow::Cow<'_, [f32]> {
        std::borrow::Cow::Borrowed(v)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const f32) -> std::arch::x86_64::__m512 {
        std::arch::x86_64::_mm512_loadu_ps(p)
    }
}

impl KvElem for half::f16 {
    fn widen(v: &[half::f16]) -> std::borrow::Cow<'_, [f32]> {
        std::borrow::Cow::Owned(v.iter().map(|h| h.to_f32()).collect())
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const half::f16) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
    }
}

/// One query head attending to `d`-value keys and values (`p.len()` of each, in order):
/// `out += softmax(q·kᵀ·scale)·v`, with `p` as scratch for the scores.
pub fn attend_head<T: KvElem>(
    q: &[f32],
    keys: &[T],
    values: &[T],
    scale: f32,
    p: &mut [f32],
    out: &mut [f32],
) {
    let d = q.len();
    debug_assert!(keys.len() == p.len() * d && values.len() == keys.len() && out.len() == d);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F was detected; the lengths are as asserted above and `d` is 16·C.
        unsafe {
            match d {
                64 => return attend_head_avx512::<T, 4>(q, keys, values, scale, p, out),
                128 => return attend_head_avx512::<T, 8>(q, keys, values, scale, p, out),
                32 => return attend_head_avx512::<T, 2>(q, keys, values, scale, p, out),
                96 => return attend_head_avx512::<T, 6>(q, keys, values, scale, p, out),
                _ => {}
            }
        }
    }
    attend_head_portable(q, &T::widen(keys), &T::widen(values), scale, p, out)
}

dispatch! {
    /// [`attend_head`] in portable code (vectorised by the compiler).
    fn attend_head_portable(q: &[f32], keys: &[f32], values: &[f32], scale: f32, p: &mut [f32], out: &mut [f32]) {
        let d = q.len();
        for (s, key) in p.iter_mut().zip(keys.chunks_exact(d)) {
            *s = dot(q, key);
        }
        let shift = max(p) * scale;
        let inv = 1.0 / exp_scaled_sum(p, scale, shift);
        for (&s, value) in p.iter().zip(values.chunks_exact(d)) {
            let s = s * inv;
            out.iter_mut().zip(value).for_each(|(o, v)| *o += s * v);
        }
    }
}

/// [`attend_head`] for heads of `16·C` values with AVX-512: each score one fused multiply-add
/// per 16 values and one horizontal sum, the output in registers over the positions (two
/// positions at a time, as two independent chains). Hand-written because the portable loop
/// compiled to 128-bit multiplies and adds, no FMA: 23 % of the samples of `shrink bench
/// q4_0.gguf -p 0 -n 128 -d 1024` (`perf`); a head width known at compile time keeps the
/// accumulators out of memory.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn attend_head_avx512<T: KvElem, const C: usize>(
    q: &[f32],
    keys: &[T],
    values: &[T],
    scale: f32,
    p: &mut [f32],
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    const W: usize = 16;
    let d = W * C;
    debug_assert_eq!(q.len(), d);
    let qv: [__m512; C] = std::array::from_fn(|c| _mm512_loadu_ps(q.as_ptr().add(W * c)));
    for (s, key) in p.iter_mut().zip(keys.chunks_exact(d)) {
        let mut acc = _mm512_mul_ps(qv[0], T::load16(key.as_ptr()));
        for (c, qc) in qv.iter().enumerate().skip(1) {
            acc = _mm512_fmadd_ps(*qc, T::load16(key.as_ptr().add(W * c)), acc);
        }
        *s = _mm512_reduce_add_ps(acc);
    }
    let shift = max(p) * scale;
    let inv = 1.0 / exp_scaled_sum(p, scale, shift);
    let mut o = [[_mm512_setzero_ps(); C]; 2];
    let mut pairs = p.chunks_exact(2).zip(values.chunks_exact(2 * d));
    for (s, v) in &mut pairs {
        for (i, oi) in o.iter_mut().enumerate() {
            let si = _mm512_set1_ps(s[i] * inv);
            for (c, oc) in oi.iter_mut().enumerate() {
                *oc = _mm512_fmadd_ps(si, T::load16(v.as_ptr().add(i * d + W * c)), *oc);
            }
        }
    }
    if p.len() % 2 == 1 {
        let si = _mm512_set1_ps(p[p.len() - 1] * inv);
        let v = &values[(p.len() - 1) * d..];
        for (c, oc) in o[0].iter_mut().enumerate() {
            *oc = _mm512_fmadd_ps(si, T::load16(v.as_ptr().add(W * c)), *oc);
        }
    }
    for (c, (a, b)) in o[0].iter().zip(&o[1]).enumerate() {
        let at = out.as_mut_ptr().add(W * c);
        _mm512_storeu_ps(
            at,
            _mm512_add_ps(_mm512_loadu_ps(at), _mm512_add_ps(*a, *b)),
        );
    }
}

dispatch! {
    /// `y` (`[m, n]`) += `x[:, c0..c1]` · `wt[c0..c1, :]` (`x` `[m, k]`, `wt` `[k, n]`), four
    /// rows of `wt` per pass over `y`.
    fn gemv_t_part(x: &[f32], k: usize, wt: &[f32], n: usize, c0: usize, c1: usize, y: &mut [f32]) {
        let mut c = c0;
        while c < c1 {
            let take = (c1 - c).min(4);
            let w: Vec<&[f32]> = (c..c + take).map(|r| &wt[r * n..(r + 1) * n]).collect();
            for (i, yi) in y.chunks_exact_mut(n).enumerate() {
                let a = &x[i * k + c..i * k + c + take];
                if take == 4 {
                    let (a0, a1, a2, a3) = (a[0], a[1], a[2], a[3]);
                    for ((((v, &p), &q), &r), &s) in
                        yi.iter_mut().zip(w[0]).zip(w[1]).zip(w[2]).zip(w[3])
                    {
                        *v += a0 * p + a1 * q + a2 * r + a3 * s;
                    }
                } else {
                    for (&aj, wj) in a.iter().zip(&w) {
                        for (v, &p) in yi.iter_mut().zip(*wj) {
                            *v += aj * p;
                        }
                    }
                }
            }
            c += take;
        }
    }
}

dispatch! {
    /// `out[r − r0]` = row `r` of `w` (`k` values each) · `x`, for `r` in `r0..r0 + out.len()`.
    fn dot_rows(x: &[f32], w: &[f32], k: usize, r0: usize, out: &mut [f32]) {
        for (j, o) in out.iter_mut().enumerate() {
            let r = r0 + j;
            *o = dot(x, &w[r * k..(r + 1) * k]);
        }
    }
}

/// [`gemv_t_part`] in AVX-512 with fused multiply-adds, eight rows of `wt` per pass over each
/// token's `y` (LLVM's vectorisation of the portable loop keeps separate multiplies and adds,
/// which made one thread compute-bound at 0.8× llama.cpp's F32 generation).
///
/// # Safety
/// AVX-512F; `n` a multiple of 16; `x` holds `[m, k]`, `wt` rows `c0..c1` of `n`, `y` `[m, n]`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gemv_t_avx512(
    x: &[f32],
    k: usize,
    wt: &[f32],
    n: usize,
    c0: usize,
    c1: usize,
    y: &mut [f32],
) {
    use std::arch::x86_64::*;
    let m = y.len() / n;
    let w = wt.as_ptr();
    let mut c = c0;
    while c < c1 {
        let take = (c1 - c).min(8);
        for i in 0..m {
            let a: [__m512; 8] = std::array::from_fn(|j| {
                _mm512_set1_ps(if j < take { x[i * k + c + j] } else { 0.0 })
            });
            let yi = y.as_mut_ptr().add(i * n);
            for j in (0..n).step_by(16) {
                let mut v = _mm512_loadu_ps(yi.add(j));
                for (r, ar) in a.iter().enumerate().take(take) {
                    let row = w.add((c + r) * n + j);
                    // The same columns 4 KiB of this row ahead: each row streams once.
                    _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(1024) as *const i8);
                    v = _mm512_fmadd_ps(*ar, _mm512_loadu_ps(row), v);
                }
                _mm512_storeu_ps(yi.add(j), v);
            }
        }
        c += take;
    }
}

/// Tokens up to which [`gemv_t`] and [`gemv_rows`] serve a float product (generation).
pub const FEW_TOKENS: usize = 8;

/// `y = x · wt` for a few tokens (`x` `[m, k]`, `wt` `[k, n]` row-major): generation's float
/// product. Each thread of the [`crate::team`] streams its own run of `wt`'s rows into a
/// partial `y`, and the partials are summed: every thread reads memory in order (a split by
/// output columns would stride through all of `wt`). Equal to the GEMM up to summation order.
pub fn gemv_t(x: &[f32], m: usize, k: usize, wt: &[f32], n: usize) -> Vec<f32> {
    assert!(
        x.len() >= m * k && wt.len() >= k * n,
        "gemv_t: buffers shorter than the shapes"
    );
    let parts = crate::team::threads().min(k.div_ceil(64)).max(1);
    let per = k.div_ceil(parts).div_ceil(4) * 4;
    let parts = k.div_ceil(per);
    let mut partial = vec![0f32; parts * m * n];
    let base = crate::qmatmul::SendPtr(partial.as_mut_ptr());
    crate::team::run(parts, |p| {
        // SAFETY: part p alone writes its own [m, n] slice of `partial`.
        let y = unsafe { std::slice::from_raw_parts_mut(base.get().add(p * m * n), m * n) };
        let (c0, c1) = (p * per, ((p + 1) * per).min(k));
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") && n.is_multiple_of(16) {
            // SAFETY: AVX-512F detected; rows c0..c1 of wt and columns of x lie inside the
            // buffers (asserted above), y holds m·n values, n is a multiple of 16.
            unsafe { gemv_t_avx512(x, k, wt, n, c0, c1, y) };
            return;
        }
        gemv_t_part(x, k, wt, n, c0, c1, y);
    });
    let (first, rest) = partial.split_at_mut(m * n);
    for other in rest.chunks_exact(m * n) {
        for (a, b) in first.iter_mut().zip(other) {
            *a += b;
        }
    }
    partial.truncate(m * n);
    partial
}

/// `y = x · wᵀ` for a few tokens (`x` `[m, k]`, `w` `[n, k]` row-major, a tied LM head): rows
/// split over the [`crate::team`], one dot product per row and token.
pub fn gemv_rows(x: &[f32], m: usize, k: usize, w: &[f32], n: usize) -> Vec<f32> {
    assert!(
        x.len() >= m * k && w.len() >= n * k,
        "gemv_rows: buffers shorter than the shapes"
    );
    rows_on_team(m, n, |i, r0, out| {
        let xi = &x[i * k..(i + 1) * k];
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") && k.is_multiple_of(16) {
            // SAFETY: AVX-512F detected; rows r0.. of w lie inside it (asserted above).
            unsafe { half16::dot_rows_f32(xi, w.as_ptr(), k, r0, out) };
            return;
        }
        dot_rows(xi, w, k, r0, out);
    })
}

/// `y` (`[m, n]`) with its columns split into one run per thread of the [`crate::team`]:
/// `f(i, r0, out)` fills token `i`'s values for rows `r0..r0 + out.len()`.
fn rows_on_team(m: usize, n: usize, f: impl Fn(usize, usize, &mut [f32]) + Sync) -> Vec<f32> {
    let mut y = vec![0f32; m * n];
    let per = n.div_ceil(crate::team::threads()).max(1);
    let base = crate::qmatmul::SendPtr(y.as_mut_ptr());
    crate::team::run(n.div_ceil(per), |p| {
        let (r0, r1) = (p * per, ((p + 1) * per).min(n));
        for i in 0..m {
            // SAFETY: part p alone writes columns r0..r1 of y ([m, n]).
            let out =
                unsafe { std::slice::from_raw_parts_mut(base.get().add(i * n + r0), r1 - r0) };
            f(i, r0, out);
        }
    });
    y
}

/// 16-bit floats a few-token product reads rows of ([`gemv_rows_half`]).
pub trait Half: Copy + Send + Sync {
    /// Whether the type is bfloat16 (else float16).
    const BF16: bool;
    /// `src` converted to float32 into `dst` (exact).
    fn widen(src: &[Self], dst: &mut [f32]);
    /// Rows `r0..r0 + out.len()` of `w` (`k` each) dotted with `x`, widened 16 values at a
    /// time in AVX-512 registers; `false` (nothing written) where the CPU lacks AVX-512.
    fn dot_rows_avx512(x: &[f32], w: &[Self], k: usize, r0: usize, out: &mut [f32]) -> bool {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") && k.is_multiple_of(16) {
            assert!(x.len() >= k && w.len() >= (r0 + out.len()) * k);
            // SAFETY: AVX-512F detected; every row read lies inside `w` (asserted), whose
            // elements are 16-bit floats of the kind `BF16` names.
            unsafe { half16::dot_rows(x, w.as_ptr() as *const u16, k, r0, out, Self::BF16) };
            return true;
        }
        let _ = (x, w, k, r0, out);
        false
    }
}

impl Half for half::f16 {
    const BF16: bool = false;
    fn widen(src: &[Self], dst: &mut [f32]) {
        use half::slice::HalfFloatSliceExt;
        src.convert_to_f32_slice(dst);
    }
}

impl Half for half::bf16 {
    const BF16: bool = true;
    fn widen(src: &[Self], dst: &mut [f32]) {
        use half::slice::HalfFloatSliceExt;
        src.convert_to_f32_slice(dst);
    }
}

#[cfg(target_arch = "x86_64")]
mod half16 {
    use std::arch::x86_64::*;

    /// `out[j]` = row `r0 + j` of the float32 rows `w` (`k` each) · `x`, with fused
    /// multiply-adds (the portable [`super::dot_rows`] keeps separate multiplies and adds).
    ///
    /// # Safety
    /// AVX-512F; `k` a multiple of 16; `x` holds `k` values and `w` the rows read.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn dot_rows_f32(
        x: &[f32],
        w: *const f32,
        k: usize,
        r0: usize,
        out: &mut [f32],
    ) {
        let xp = x.as_ptr();
        for (j, o) in out.iter_mut().enumerate() {
            let row = w.add((r0 + j) * k);
            let (mut a, mut b) = (_mm512_setzero_ps(), _mm512_setzero_ps());
            let mut c = 0;
            while c + 32 <= k {
                _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(c + 512) as *const i8);
                a = _mm512_fmadd_ps(_mm512_loadu_ps(row.add(c)), _mm512_loadu_ps(xp.add(c)), a);
                b = _mm512_fmadd_ps(
                    _mm512_loadu_ps(row.add(c + 16)),
                    _mm512_loadu_ps(xp.add(c + 16)),
                    b,
                );
                c += 32;
            }
            if c < k {
                a = _mm512_fmadd_ps(_mm512_loadu_ps(row.add(c)), _mm512_loadu_ps(xp.add(c)), a);
            }
            *o = _mm512_reduce_add_ps(_mm512_add_ps(a, b));
        }
    }

    /// `out[j]` = row `r0 + j` of the 16-bit rows `w` (`k` each, float16 or bfloat16) · `x`.
    ///
    /// # Safety
    /// AVX-512F; `k` a multiple of 16; `x` holds `k` values and `w` the rows read.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn dot_rows(
        x: &[f32],
        w: *const u16,
        k: usize,
        r0: usize,
        out: &mut [f32],
        bf16: bool,
    ) {
        for (j, o) in out.iter_mut().enumerate() {
            let row = w.add((r0 + j) * k);
            let (mut a, mut b) = (_mm512_setzero_ps(), _mm512_setzero_ps());
            let mut c = 0;
            while c < k {
                // Codes 1 KiB ahead: the rows are read once, in order.
                _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(c + 512) as *const i8);
                let h = _mm256_loadu_si256(row.add(c) as *const __m256i);
                let v = if bf16 {
                    _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
                } else {
                    _mm512_cvtph_ps(h)
                };
                let xv = _mm512_loadu_ps(x.as_ptr().add(c));
                if (c / 16) % 2 == 0 {
                    a = _mm512_fmadd_ps(v, xv, a);
                } else {
                    b = _mm512_fmadd_ps(v, xv, b);
                }
                c += 16;
            }
            *o = _mm512_reduce_add_ps(_mm512_add_ps(a, b));
        }
    }
}

/// [`gemv_rows`] with the rows stored as 16-bit floats (`w` `[n, k]`): half the bytes of
/// float32 rows read from memory.
pub fn gemv_rows_half<H: Half>(x: &[f32], m: usize, k: usize, w: &[H], n: usize) -> Vec<f32> {
    assert!(
        x.len() >= m * k && w.len() >= n * k,
        "gemv_rows_half: buffers shorter than the shapes"
    );
    rows_on_team(m, n, |i, r0, out| {
        let xi = &x[i * k..(i + 1) * k];
        if !H::dot_rows_avx512(xi, w, k, r0, out) {
            let mut row = vec![0f32; k];
            for (j, o) in out.iter_mut().enumerate() {
                H::widen(&w[(r0 + j) * k..(r0 + j + 1) * k], &mut row);
                *o = dot(xi, &row);
            }
        }
    })
}

/// `y = a · b` in float32: `a` row-major `[m, k]`, `b` row-major `[k, n]`, `y` `[m, n]`
/// (overwritten), on all of rayon's threads — the same call candle's CPU matmul makes, so
/// results equal candle's bit for bit.
pub fn gemm_f32(a: &[f32], m: usize, k: usize, b: &[f32], n: usize, y: &mut [f32]) {
    gemm_f32_into(a, m, k, b, n, y, n)
}

/// `y = a · wᵀ` in float32 with `w` row-major `[n, k]` read in place (gemm packs it, so no
/// transposed copy is needed): `a` `[m, k]`, `y` `[m, n]` overwritten.
pub fn gemm_f32_bt(a: &[f32], m: usize, k: usize, w: &[f32], n: usize, y: &mut [f32]) {
    assert!(
        a.len() >= m * k && w.len() >= k * n && y.len() >= m * n,
        "gemm_f32_bt: buffers shorter than [{m}, {k}] x [{n}, {k}]ᵀ"
    );
    // SAFETY: the assert above bounds every index gemm reads or writes through these strides.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            y.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            parallelism(),
        )
    }
}

/// All of candle's threads, as its CPU matmul uses them.
fn parallelism() -> gemm::Parallelism {
    let threads = candle_core::utils::get_num_threads();
    if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    }
}

/// [`gemm_f32`] writing row `i` of the product at `y[i · ldy..]` (a column block of a wider
/// matrix when `ldy > n`).
pub fn gemm_f32_into(
    a: &[f32],
    m: usize,
    k: usize,
    b: &[f32],
    n: usize,
    y: &mut [f32],
    ldy: usize,
) {
    assert!(
        ldy >= n && (m == 0 || y.len() >= (m - 1) * ldy + n),
        "gemm_f32: output shorter than [{m}, {n}]"
    );
    // SAFETY: the assert bounds every element written through `y`.
    unsafe { gemm_f32_raw(a, m, k, b, n, y.as_mut_ptr(), ldy, parallelism()) }
}

/// [`gemm_f32_into`] on the calling thread only, writing through a raw pointer (callers run
/// one per thread on disjoint column blocks of one output).
///
/// # Safety
/// `y + i · ldy + j` for `i < m`, `j < n` must be valid for writes and written by no one else
/// during the call.
pub unsafe fn gemm_f32_serial(
    a: &[f32],
    m: usize,
    k: usize,
    b: &[f32],
    n: usize,
    y: *mut f32,
    ldy: usize,
) {
    gemm_f32_raw(a, m, k, b, n, y, ldy, gemm::Parallelism::None)
}

/// The one call into gemm for `y = a · b` (`a` `[m, k]`, `b` `[k, n]`, both row-major).
///
/// # Safety
/// As [`gemm_f32_serial`]; the input lengths are checked here.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_f32_raw(
    a: &[f32],
    m: usize,
    k: usize,
    b: &[f32],
    n: usize,
    y: *mut f32,
    ldy: usize,
    par: gemm::Parallelism,
) {
    assert!(
        a.len() >= m * k && b.len() >= k * n && ldy >= n,
        "gemm_f32: inputs shorter than [{m}, {k}] x [{k}, {n}]"
    );
    gemm::gemm(
        m,
        n,
        k,
        y,
        1,
        ldy as isize,
        false,
        a.as_ptr(),
        1,
        k as isize,
        b.as_ptr(),
        1,
        n as isize,
        0.0f32,
        1.0f32,
        false,
        false,
        false,
        par,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_of_libm_over_the_range() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            worst = worst.max(((got - want) / want).abs());
            x += 0.001_3;
        }
        assert!(worst < 2.5e-7, "worst relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-1000.0) < 1e-37);
        assert!(exp(f32::NEG_INFINITY) < 1e-37);
    }

    #[test]
    fn vector_kernels_match_scalar_definitions() {
        let xs: Vec<f32> = (0..1000)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let mut ys = xs.clone();
        let s = exp_scaled_sum(&mut ys, 0.5, 1.0);
        let want: f64 = xs.iter().map(|&x| ((x * 0.5 - 1.0) as f64).exp()).sum();
        assert!(((s as f64 - want) / want).abs() < 1e-5);
        for (y, x) in ys.iter().zip(&xs) {
            let w = ((x * 0.5 - 1.0) as f64).exp();
            assert!(((*y as f64 - w) / w).abs() < 3e-7);
        }
        let se = sum_exp(&xs, 2.0);
        let want: f64 = xs.iter().map(|&x| ((x - 2.0) as f64).exp()).sum();
        assert!(((se - want) / want).abs() < 1e-6);
        assert_eq!(
            max(&xs),
            xs.iter().cloned().fold(f32::NEG_INFINITY, f32::max)
        );
        let mut out = vec![0f32; xs.len()];
        silu_mul(&xs, &xs, &mut out);
        for (o, &x) in out.iter().zip(&xs) {
            let w = x as f64 / (1.0 + (-x as f64).exp()) * x as f64;
            assert!((*o as f64 - w).abs() <= 1e-5 * w.abs().max(1.0));
        }
    }
}
