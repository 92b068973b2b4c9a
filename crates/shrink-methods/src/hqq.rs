//! HQQ — Half-Quadratic Quantization (H. Badri and A. Shaji, 2023,
//! <https://mobiusml.github.io/hqq_blog/>): calibration-free asymmetric quantization whose
//! float zero points are fitted by a proximal (half-quadratic) solver of
//! `min_z ‖W − dequant(quant(W; s, z))‖_p^p` with p < 1, robust to outliers.
//!
//! This is a port of mobiusml/hqq 0.2.x as its `Quantizer.quantize(W, nbits, group_size,
//! optimize=True, round_zero=False, axis)` runs in float32 on the CPU:
//!
//! 1. per group, min/max → inverse scale `s = (1/(max − min))·(2^b − 1)` (1 where
//!    `|max − min| ≤ 1e-4`, clamped to ≤ 2e4) and zero `z = −min·s` (hqq works with the
//!    inverse scale so that quantizing is `W·s + z`);
//! 2. `optimize_weights_proximal_legacy`: repeat `iters` times [`step`]:
//!    `W_q = clamp(round(W·s + z), 0, 2^b − 1)`, `W_r = (W_q − z)/s`,
//!    `W_e = shrink_lp(W − W_r, β, p)`, `z ← mean_group(W_q − (W − W_e)·s)`, and stop at the
//!    first step whose `mean(|W − W_r|)` over the **whole tensor** is not below the best so
//!    far. As in the library, that last step's zero update is kept (the legacy solver does not
//!    roll back), and β stays constant (it reads `kappa` but never applies it; see
//!    [`HqqOptions::kappa`]);
//! 3. codes `clamp(round(W·s + z))` with the final zero, and the stored scale `1/s`. Where shrink
//!    departs: in a pruned weight ([`crate::sparsity::is_pruned`]) a group holding an exact 0
//!    has its final zero rounded to an integer in `[0, 2^bits − 1]`, so the 0 stays exactly 0.
//!
//! [`optimize`] returns that float32 result (codes, scale, zero), which agrees with the
//! library's (tests/hqq.rs checks it on committed hqq outputs). [`quantize`] then stores the
//! scale and zero as **f16** — as hqq does when it casts its meta data to the compute dtype —
//! and keeps hqq's codes (computed with the solver's float32 scale and zero, as the library's
//! `W_q`); the stored tensor decodes, bit for bit, to what the quantizer reports
//! ([`HqqQuantized::dequantized`]). (Recomputing the codes on the f16 grid instead scored
//! 31.96 against 31.85 at 4 bits on SmolLM2 — BENCHMARKS.md.)
//!
//! Groups are laid out as `shrink_formats::hqq_layout` describes (axis 1: runs of a row; axis 0:
//! hqq's strided `reshape([G, -1])` groups, copied into a group-contiguous buffer first).

use std::borrow::Cow;

use half::f16;
use rayon::prelude::*;
use shrink_formats::hqq_layout::{HqqSpec, HqqTensor};
use shrink_formats::FormatError;

use crate::error::{MethodError, Result};

/// Name used in errors of the single-tensor functions, which are not told the tensor's name.
const UNNAMED: &str = "weight";

/// Elements per parallel job, at least (rounded up to whole groups).
const PAR_JOB_ELEMENTS: usize = 1 << 14;

/// SIMD lanes the hot loops are written for (one AVX-512 register of f32).
const LANES: usize = 16;

/// hqq's clamp of the inverse scale ("to avoid half-precision problems").
const MAX_INV_SCALE: f32 = 2e4;

/// hqq's threshold on `max − min` below which the inverse scale is 1.
const MIN_RANGE: f32 = 1e-4;

/// Parameters of the proximal solver, with hqq 0.2.x's defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HqqOptions {
    /// Proximal steps at most (hqq's `iters`, default 20).
    pub iters: usize,
    /// p of the ℓp error the shrinkage targets, in (0, 1] (hqq's `lp_norm`, default 0.7).
    pub lp_norm: f64,
    /// β, the half-quadratic penalty weight (hqq's `beta`, default 10).
    pub beta: f64,
    /// κ, β's growth factor per step. hqq's options say 1.01, but its default solver
    /// (`optimize_weights_proximal_legacy`) never applies it, so the faithful default is 1.
    pub kappa: f64,
    /// Stop at the first step that does not lower the tensor's mean |W − W_r| (hqq: always).
    pub early_stop: bool,
    /// Run the solver at all; false gives hqq's `optimize=False` (plain min/max rounding).
    pub optimize: bool,
    /// Round the initial zero points to integers (hqq's `round_zero`, which its
    /// `BaseQuantizeConfig` turns on for 4 bits only).
    pub round_zero: bool,
}

impl Default for HqqOptions {
    fn default() -> Self {
        HqqOptions {
            iters: 20,
            lp_norm: 0.7,
            beta: 10.0,
            kappa: 1.0,
            early_stop: true,
            optimize: true,
            round_zero: false,
        }
    }
}

impl HqqOptions {
    /// Check the parameters (as hqq's `optimize_weights_proximal_v2` asserts them).
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(MethodError::Options(format!("hqq: {what}")));
        if self.iters == 0 {
            return bad("iters must be at least 1".into());
        }
        if !(self.lp_norm > 0.0 && self.lp_norm <= 1.0) {
            return bad(format!("lp_norm must be in (0, 1], got {}", self.lp_norm));
        }
        if !(self.beta.is_finite() && self.beta > 0.0) {
            return bad(format!("beta must be positive, got {}", self.beta));
        }
        if !(self.kappa.is_finite() && self.kappa >= 1.0) {
            return bad(format!("kappa must be at least 1, got {}", self.kappa));
        }
        Ok(())
    }
}

/// The solver's float32 result, as hqq returns it (before any f16 rounding).
#[derive(Debug, Clone, PartialEq)]
pub struct HqqSolution {
    /// Codes in row-major element order.
    pub codes: Vec<u8>,
    /// Dequantization scale per group (hqq's stored `scale`, the inverse of the solver's).
    pub scale: Vec<f32>,
    /// Float zero point per group.
    pub zero: Vec<f32>,
    /// Proximal steps run (including the one that triggered the early stop).
    pub steps: usize,
    /// Mean |W − (codes − zero)·scale| over the tensor.
    pub error: f64,
}

/// A quantized weight and what the quantizer computed for it.
#[derive(Debug, Clone, PartialEq)]
pub struct HqqQuantized {
    /// The stored tensor (f16 scales and zeros, packed codes).
    pub tensor: HqqTensor,
    /// The dequantized weight, row-major; `tensor.dequantize()` gives exactly these values.
    pub dequantized: Vec<f32>,
    /// Mean |W − dequantized|.
    pub error: f64,
    /// Proximal steps run.
    pub steps: usize,
}

/// One named weight of a batch for [`quantize_all`].
#[derive(Debug, Clone, Copy)]
pub struct HqqWeight<'a> {
    /// Tensor name (for errors).
    pub name: &'a str,
    /// Row-major `[rows, cols]` values.
    pub data: &'a [f32],
    /// Rows (output features).
    pub rows: usize,
    /// Columns (input features).
    pub cols: usize,
}

/// hqq's shrinkage operator `shrink_lp_op(x, β, p) = sign(x)·relu(|x| − |x|^(p−1)/β)`, as
/// float32 arithmetic on `c = 1/β` (the library multiplies by the scalar `1.0 / beta`).
#[derive(Debug, Clone, Copy)]
pub struct Shrink {
    /// 1/β in float32.
    c: f32,
    /// p − 1 in float32.
    expo: f32,
    /// p == 1: the soft threshold `relu(|x| − 1/β)` without the power.
    l1: bool,
    /// |x| at or below this gives exactly 0 (a margin below the root of |x| = |x|^(p−1)/β).
    zero_below: f32,
}

impl Shrink {
    /// The operator for `beta` and `lp_norm` (p ∈ (0, 1]).
    pub fn new(beta: f64, lp_norm: f64) -> Self {
        let c = (1.0 / beta) as f32;
        // |x| − c·|x|^(p−1) increases with |x| (p ≤ 1) and crosses 0 at c^(1/(2−p)). 1e-4
        // below the root the exact value is negative by ≥ 1e-4·|x|, far beyond float32
        // rounding, so the library's clamp gives exactly 0 there: no power is needed.
        let root = (c as f64).powf(1.0 / (2.0 - lp_norm));
        Shrink {
            c,
            expo: (lp_norm - 1.0) as f32,
            l1: lp_norm == 1.0,
            zero_below: (root * (1.0 - 1e-4)) as f32,
        }
    }

    /// `shrink_lp_op` of one value.
    #[inline]
    pub fn apply(&self, x: f32) -> f32 {
        let a = x.abs();
        if a <= self.zero_below {
            return 0.0;
        }
        let t = if self.l1 {
            self.c
        } else {
            self.c * a.powf(self.expo)
        };
        let v = a - t;
        let v = if v > 0.0 { v } else { 0.0 };
        if x > 0.0 {
            v
        } else {
            -v
        }
    }
}

/// `clamp(round(x·s + z), 0, qmax)` as torch computes it (two roundings, ties to even).
#[inline(always)]
fn quant(x: f32, s: f32, z: f32, qmax: f32) -> f32 {
    let q = (x * s + z).round_ties_even();
    let q = if q < 0.0 { 0.0 } else { q };
    if q > qmax {
        qmax
    } else {
        q
    }
}

/// Sum of 16 lanes, pairwise.
#[inline(always)]
fn hsum(mut v: [f32; LANES]) -> f32 {
    let mut n = LANES;
    while n > 1 {
        n /= 2;
        for i in 0..n {
            v[i] += v[i + n];
        }
    }
    v[0]
}

/// Initial inverse scale and zero of one group, as hqq's `Quantizer.quantize` computes them.
#[inline(always)]
pub fn init_group(w: &[f32], qmax: f32) -> (f32, f32) {
    let mut lo = [f32::INFINITY; LANES];
    let mut hi = [f32::NEG_INFINITY; LANES];
    let mut chunks = w.chunks_exact(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            lo[l] = if c[l] < lo[l] { c[l] } else { lo[l] };
            hi[l] = if c[l] > hi[l] { c[l] } else { hi[l] };
        }
    }
    for &x in chunks.remainder() {
        lo[0] = lo[0].min(x);
        hi[0] = hi[0].max(x);
    }
    let min = lo.iter().copied().fold(f32::INFINITY, f32::min);
    let max = hi.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let denom = max - min;
    // `max_v / denom` is torch's `denom.reciprocal() * max_v` (Tensor.__rtruediv__).
    let mut s = (1.0 / denom) * qmax;
    if denom.abs() <= MIN_RANGE {
        s = 1.0;
    }
    let s = if s > MAX_INV_SCALE { MAX_INV_SCALE } else { s };
    (s, -min * s)
}

/// One proximal step on one group (hqq's `optimize_weights_proximal_legacy_step`): returns
/// Σ|W − W_r| over the group, with `W_r` from the current zero `z`, and the updated zero.
///
/// Hand-written rather than composed from tensor ops: hqq makes six passes over the whole
/// weight per step (each op materialises a tensor, and `pow` runs on every element); fused
/// per group the data stays in registers, and the power is skipped wherever the shrinkage is
/// exactly 0 (for LLM weights, almost everywhere; see [`Shrink::new`]).
#[inline(always)]
pub fn step(w: &[f32], s: f32, z: f32, qmax: f32, shrink: &Shrink) -> (f32, f32) {
    let mut err = [0f32; LANES];
    let mut acc = [0f32; LANES];
    let mut big = [0f32; LANES];
    let mut chunks = w.chunks_exact(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            let x = c[l];
            let q = quant(x, s, z, qmax);
            let a = (x - (q - z) / s).abs();
            err[l] += a;
            big[l] = if a > big[l] { a } else { big[l] };
            // W_e = 0 here: W_q − (W − 0)·s.
            acc[l] += q - x * s;
        }
    }
    for &x in chunks.remainder() {
        let q = quant(x, s, z, qmax);
        let a = (x - (q - z) / s).abs();
        err[0] += a;
        big[0] = big[0].max(a);
        acc[0] += q - x * s;
    }
    let mut sum = hsum(acc);
    if big.iter().any(|&b| b > shrink.zero_below) {
        // Some |W − W_r| is large enough for the shrinkage to be non-zero: redo the zero's
        // sum with W_e (rare for real weights, so this path is left scalar).
        let mut acc = [0f32; LANES];
        for (i, &x) in w.iter().enumerate() {
            let q = quant(x, s, z, qmax);
            let e = shrink.apply(x - (q - z) / s);
            acc[i % LANES] += q - (x - e) * s;
        }
        sum = hsum(acc);
    }
    (hsum(err), sum / w.len() as f32)
}

/// Runs `$body` compiled for AVX-512 or AVX2+FMA when the CPU has them (plain float
/// arithmetic only, so every variant gives the same bits), else for the baseline.
macro_rules! dispatch {
    ($(#[$m:meta])* fn $name:ident($($arg:ident : $ty:ty),*) $(-> $ret:ty)? $body:block) => {
        $(#[$m])*
        fn $name($($arg: $ty),*) $(-> $ret)? {
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
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: as above, for v3.
                    return unsafe { v3($($arg),*) };
                }
            }
            imp($($arg),*)
        }
    };
}

dispatch! {
    /// [`init_group`] over consecutive groups of `g` elements.
    fn init_groups(w: &[f32], g: usize, qmax: f32, s: &mut [f32], z: &mut [f32]) {
        for ((w, s), z) in w.chunks_exact(g).zip(s.iter_mut()).zip(z.iter_mut()) {
            (*s, *z) = init_group(w, qmax);
        }
    }
}

dispatch! {
    /// [`step`] over consecutive groups; updates `z` and returns Σ|W − W_r|.
    fn step_groups(w: &[f32], g: usize, qmax: f32, shrink: &Shrink, s: &[f32], z: &mut [f32]) -> f64 {
        let mut total = 0f64;
        for ((w, &s), z) in w.chunks_exact(g).zip(s).zip(z.iter_mut()) {
            let (e, nz) = step(w, s, *z, qmax, shrink);
            total += e as f64;
            *z = nz;
        }
        total
    }
}

dispatch! {
    /// hqq's final codes `clamp(round(W·s + z))` over consecutive groups; returns
    /// Σ|W − (q − z)·(1/s)|, the error with hqq's stored (inverted) scale.
    fn final_groups(w: &[f32], g: usize, qmax: f32, s: &[f32], z: &[f32], q: &mut [u8]) -> f64 {
        let mut total = 0f64;
        for (((w, &s), &z), q) in w.chunks_exact(g).zip(s).zip(z).zip(q.chunks_exact_mut(g)) {
            let scale = 1.0 / s;
            let mut err = 0f32;
            for (&x, q) in w.iter().zip(q.iter_mut()) {
                let c = quant(x, s, z, qmax);
                err += (x - (c - z) * scale).abs();
                *q = c as u8;
            }
            total += err as f64;
        }
        total
    }
}

dispatch! {
    /// Codes as hqq computes them, `clamp(round(W·inv + z))` with the solver's float32 inverse
    /// scale `inv` and zero `z`, and their values `(q − z₁₆)·s₁₆` on the stored f16 grid
    /// (`s16`, `z16`), over consecutive groups; returns Σ|W − value|.
    #[allow(clippy::too_many_arguments)]
    fn store_groups(
        w: &[f32], g: usize, qmax: f32, inv: &[f32], z: &[f32], s16: &[f32], z16: &[f32],
        q: &mut [u8], v: &mut [f32]
    ) -> f64 {
        let mut total = 0f64;
        let groups = w.chunks_exact(g).zip(q.chunks_exact_mut(g)).zip(v.chunks_exact_mut(g));
        let params = inv.iter().zip(z).zip(s16.iter().zip(z16));
        for (((w, q), v), ((&inv, &z), (&s, &zs))) in groups.zip(params) {
            let mut err = 0f32;
            for ((&x, q), v) in w.iter().zip(q.iter_mut()).zip(v.iter_mut()) {
                let c = (x * inv + z).round_ties_even();
                let c = if c < 0.0 { 0.0 } else if c > qmax { qmax } else { c };
                *v = (c - zs) * s;
                err += (x - *v).abs();
                *q = c as u8;
            }
            total += err as f64;
        }
        total
    }
}

/// The weight as group-contiguous runs of `G` (a copy only for axis 0).
fn grouped(w: &[f32], rows: usize, cols: usize, spec: HqqSpec) -> Cow<'_, [f32]> {
    if spec.axis == 1 {
        return Cow::Borrowed(w);
    }
    // hqq's W.reshape([G, M]) reduced along dim 0: group j = column j of that matrix.
    let g = spec.group_size;
    let m = rows * cols / g;
    let mut out = vec![0f32; w.len()];
    out.par_chunks_mut(g * 64).enumerate().for_each(|(b, o)| {
        for (jj, og) in o.chunks_exact_mut(g).enumerate() {
            let j = b * 64 + jj;
            for (k, v) in og.iter_mut().enumerate() {
                *v = w[k * m + j];
            }
        }
    });
    Cow::Owned(out)
}

/// Group-contiguous values back to row-major element order (the inverse of [`grouped`]).
fn ungrouped<T: Copy + Default + Send + Sync>(v: Vec<T>, spec: HqqSpec) -> Vec<T> {
    if spec.axis == 1 {
        return v;
    }
    let g = spec.group_size;
    let m = v.len() / g;
    let mut out = vec![T::default(); v.len()];
    out.par_chunks_mut(m).enumerate().for_each(|(k, o)| {
        for (j, x) in o.iter_mut().enumerate() {
            *x = v[j * g + k];
        }
    });
    out
}

/// Float32 solver state: group-contiguous weight, inverse scales and zeros.
struct Solved<'a> {
    /// The weight, groups contiguous.
    wg: Cow<'a, [f32]>,
    /// Inverse scale per group (what hqq optimises with).
    inv: Vec<f32>,
    /// Zero per group.
    zero: Vec<f32>,
    /// Steps run.
    steps: usize,
    /// Groups per parallel job.
    per_job: usize,
}

/// Steps 1 and 2 of the module doc: initial parameters and the proximal loop.
fn solve<'a>(
    w: &'a [f32],
    rows: usize,
    cols: usize,
    spec: HqqSpec,
    opts: &HqqOptions,
) -> Result<Solved<'a>> {
    let fmt = |source| MethodError::Format {
        name: UNNAMED.to_string(),
        source,
    };
    opts.validate()?;
    spec.check_input(w, rows, cols).map_err(fmt)?;
    let g = spec.group_size;
    let qmax = spec.qmax() as f32;
    let wg = grouped(w, rows, cols, spec);
    let n = spec.num_groups(rows, cols);
    let per_job = PAR_JOB_ELEMENTS.div_ceil(g);
    let (mut inv, mut zero) = (vec![0f32; n], vec![0f32; n]);
    wg.par_chunks(per_job * g)
        .zip(inv.par_chunks_mut(per_job))
        .zip(zero.par_chunks_mut(per_job))
        .for_each(|((w, s), z)| init_groups(w, g, qmax, s, z));
    if opts.round_zero {
        // hqq's `round_zero` (its BaseQuantizeConfig sets it for 4 bits): torch.round, ties to even.
        zero.iter_mut().for_each(|z| *z = z.round_ties_even());
    }

    let mut steps = 0;
    if opts.optimize {
        let mut beta = opts.beta;
        let mut best = f32::INFINITY;
        for _ in 0..opts.iters {
            let shrink = Shrink::new(beta, opts.lp_norm);
            // Per-job sums in job order: the total does not depend on the thread count.
            let sums: Vec<f64> = wg
                .par_chunks(per_job * g)
                .zip(inv.par_chunks(per_job))
                .zip(zero.par_chunks_mut(per_job))
                .map(|((w, s), z)| step_groups(w, g, qmax, &shrink, s, z))
                .collect();
            let error = (sums.iter().sum::<f64>() / w.len() as f64) as f32;
            steps += 1;
            beta *= opts.kappa;
            if opts.early_stop {
                if error < best {
                    best = error;
                } else {
                    break;
                }
            }
        }
    }
    // In a pruned weight, a group holding exact zeros gets an integer zero point inside the
    // code range: its zeros then take the code equal to it and dequantize to exactly 0, so a
    // sparse checkpoint stays sparse (hqq's float zero would move them).
    let keep_zeros = crate::sparsity::is_pruned(w);
    for (z, wk) in zero.iter_mut().zip(wg.chunks(g)) {
        if keep_zeros && wk.contains(&0.0) {
            *z = z.round_ties_even().clamp(0.0, qmax);
        }
    }
    Ok(Solved {
        wg,
        inv,
        zero,
        steps,
        per_job,
    })
}

/// Run hqq's optimiser and return its float32 result (codes, scale, zero), before the f16
/// rounding [`quantize`] applies; for comparisons with the hqq library.
pub fn optimize(
    w: &[f32],
    rows: usize,
    cols: usize,
    spec: HqqSpec,
    opts: HqqOptions,
) -> Result<HqqSolution> {
    let st = solve(w, rows, cols, spec, &opts)?;
    let (g, qmax, pj) = (spec.group_size, spec.qmax() as f32, st.per_job);
    let mut codes = vec![0u8; w.len()];
    let sums: Vec<f64> = st
        .wg
        .par_chunks(pj * g)
        .zip(st.inv.par_chunks(pj))
        .zip(st.zero.par_chunks(pj))
        .zip(codes.par_chunks_mut(pj * g))
        .map(|(((w, s), z), q)| final_groups(w, g, qmax, s, z, q))
        .collect();
    Ok(HqqSolution {
        codes: ungrouped(codes, spec),
        // hqq's `scale = 1.0 / scale` (torch: reciprocal, then × 1.0).
        scale: st.inv.iter().map(|s| 1.0 / s).collect(),
        zero: st.zero,
        steps: st.steps,
        error: sums.iter().sum::<f64>() / w.len() as f64,
    })
}

/// Quantize a row-major `[rows, cols]` weight with HQQ and report what the quantizer computed:
/// the stored tensor, its dequantized values (which `tensor.dequantize()` reproduces exactly),
/// the mean absolute error and the steps run.
///
/// Errors: bad options ([`MethodError::Options`]), a spec that does not fit the shape or
/// non-finite weights ([`MethodError::Format`] naming the first bad element), or a scale or
/// zero that overflows f16.
pub fn quantize_report(
    w: &[f32],
    rows: usize,
    cols: usize,
    spec: HqqSpec,
    opts: HqqOptions,
) -> Result<HqqQuantized> {
    let st = solve(w, rows, cols, spec, &opts)?;
    let fmt = |source| MethodError::Format {
        name: UNNAMED.to_string(),
        source,
    };
    let (g, qmax, pj) = (spec.group_size, spec.qmax() as f32, st.per_job);
    // Stored scale: hqq's 1/s, then f16 (hqq's cast of its meta data to float16).
    let s16: Vec<f16> = st.inv.iter().map(|s| f16::from_f32(1.0 / s)).collect();
    let z16: Vec<f16> = st.zero.iter().map(|&z| f16::from_f32(z)).collect();
    if let Some(j) = s16.iter().position(|s| !s.is_finite()) {
        return Err(fmt(FormatError::ScaleOverflow {
            format: "hqq",
            scale: 1.0 / st.inv[j],
            scale_type: "f16",
        }));
    }
    if let Some(j) = z16.iter().position(|z| !z.is_finite()) {
        return Err(fmt(FormatError::ZeroOverflow {
            format: "hqq",
            zero: st.zero[j],
            group: j,
            zero_type: "f16",
        }));
    }
    let sf: Vec<f32> = s16.iter().map(|s| s.to_f32()).collect();
    let zf: Vec<f32> = z16.iter().map(|z| z.to_f32()).collect();
    let mut codes = vec![0u8; w.len()];
    let mut values = vec![0f32; w.len()];
    let sums: Vec<f64> = st
        .wg
        .par_chunks(pj * g)
        .zip(st.inv.par_chunks(pj))
        .zip(st.zero.par_chunks(pj))
        .zip(sf.par_chunks(pj))
        .zip(zf.par_chunks(pj))
        .zip(codes.par_chunks_mut(pj * g))
        .zip(values.par_chunks_mut(pj * g))
        .map(|((((((w, inv), z), s), zs), q), v)| store_groups(w, g, qmax, inv, z, s, zs, q, v))
        .collect();
    let codes = ungrouped(codes, spec);
    let tensor = HqqTensor::from_parts(spec, rows, cols, &codes, &s16, &z16).map_err(fmt)?;
    Ok(HqqQuantized {
        tensor,
        dequantized: ungrouped(values, spec),
        error: sums.iter().sum::<f64>() / w.len() as f64,
        steps: st.steps,
    })
}

/// Quantize a row-major `[rows, cols]` weight with HQQ into its stored form (f16 scales and
/// zeros; see the module doc). Errors as [`quantize_report`].
pub fn quantize(
    w: &[f32],
    rows: usize,
    cols: usize,
    spec: HqqSpec,
    opts: HqqOptions,
) -> Result<HqqTensor> {
    Ok(quantize_report(w, rows, cols, spec, opts)?.tensor)
}

/// Quantize many weights (e.g. every decoder linear of a model) on all cores, in order;
/// errors name the tensor.
pub fn quantize_all(
    weights: &[HqqWeight<'_>],
    spec: HqqSpec,
    opts: HqqOptions,
) -> Result<Vec<HqqTensor>> {
    weights
        .par_iter()
        .map(|w| {
            quantize(w.data, w.rows, w.cols, spec, opts).map_err(|e| match e {
                MethodError::Format { source, .. } => MethodError::Format {
                    name: w.name.to_string(),
                    source,
                },
                e => e,
            })
        })
        .collect()
}
