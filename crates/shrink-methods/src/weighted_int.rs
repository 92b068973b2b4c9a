//! Integer grids (compressed-tensors' `int`, [`shrink_formats::int`]) whose every granule's
//! scale is *searched* for the least importance-weighted error `Σ_j a_j (w_j − ŵ_j)²` instead
//! of taken from the granule's range: what llama.cpp's importance-matrix quantizers do for its
//! block types (`make_qx_quants` / `make_qkx2_quants` in ggml-quants.c), done here for any bit
//! width and group size so `shrink auto --to compressed-tensors` can choose among them.
//!
//! For each granule and each shrink factor `p` of [`SHRINKS`] the range `[p·min, p·max]` (or
//! `p·absmax` when symmetric) gives a scale and zero point exactly as the round-to-nearest
//! quantizer would derive them (the scale rounded to its storage type), the codes are rounded,
//! and the scale is then refitted to those codes by weighted least squares,
//! `s = Σ a w d / Σ a d²` with `d = c − z`, rounded to storage and the codes rounded again. The
//! candidate with the least weighted error is kept; `p = 1` without refitting — plain
//! round-to-nearest — is among them, so the result is never worse than it on that error.
//!
//! `a_j` is the importance of input column `j` (the mean square of the activation it
//! multiplies: the diagonal of the layer's Hessian, an imatrix entry); none means all ones.
//! Hand-written: no crate offers an importance-weighted scale search for these grids.

use rayon::prelude::*;
use shrink_formats::float::{self, FloatType};
use shrink_formats::int::{pack, Granularity, IntSpec, IntTensor};

use crate::error::{MethodError, Result};

/// The shrink factors of the range tried for each granule, `1` (round-to-nearest) first.
pub const SHRINKS: [f32; 10] = [1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55];

/// `v` as `ty` stores it.
fn stored(ty: FloatType, v: f32) -> f32 {
    match ty {
        FloatType::F32 => v,
        FloatType::F16 => half::f16::from_f32(v).to_f32(),
        FloatType::BF16 => half::bf16::from_f32(v).to_f32(),
    }
}

/// `x` rounded half to even for |x| ≤ 4096 (adding 1.5·2²³ rounds in the FPU's default mode);
/// vectorises where `round_ties_even` is a library call.
#[inline(always)]
fn rne(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (x.clamp(-4096.0, 4096.0) + MAGIC) - MAGIC
}

/// One granule's codes for `scale` and `zero` (stored-code convention of [`IntSpec`]) and
/// the weighted error; `codes` receives them.
#[inline(always)]
fn round_granule(
    spec: &IntSpec,
    w: &[f32],
    a: &[f32],
    scale: f32,
    zero: u8,
    codes: &mut [u8],
) -> f64 {
    let (add, lo, hi) = if spec.symmetric {
        let off = spec.code_offset() as f32;
        let q = spec.qmax() as f32;
        (off, off - q, off + q)
    } else {
        (f32::from(zero), 0.0, spec.qmax() as f32)
    };
    if scale == 0.0 {
        codes.fill(add as u8);
        return w.iter().zip(a).map(|(&x, &i)| f64::from(i * x * x)).sum();
    }
    let inv = 1.0 / scale;
    let mut err = 0f32;
    for ((c, &x), &i) in codes.iter_mut().zip(w).zip(a) {
        let q = (rne(x * inv) + add).clamp(lo, hi);
        *c = q as u8;
        let d = x - (q - add) * scale;
        err += i * d * d;
    }
    f64::from(err)
}

/// The weighted least-squares scale of `codes` around `add`, as stored; `None` if degenerate.
fn refit(ty: FloatType, w: &[f32], a: &[f32], codes: &[u8], add: f32) -> Option<f32> {
    let (mut num, mut den) = (0f64, 0f64);
    for ((&x, &i), &c) in w.iter().zip(a).zip(codes) {
        let d = f64::from(f32::from(c) - add);
        num += f64::from(i * x) * d;
        den += f64::from(i) * d * d;
    }
    let s = stored(ty, (num / den) as f32);
    (den > 0.0 && s.is_finite() && s > 0.0).then_some(s)
}

/// The best scale, zero point and codes of one granule (see the module doc); the error.
fn search(spec: &IntSpec, w: &[f32], a: &[f32], codes: &mut [u8]) -> Result<(f32, u8, f64)> {
    let (mut lo, mut hi) = (0f32, 0f32);
    for &x in w {
        lo = lo.min(x);
        hi = hi.max(x);
    }
    let mut trial = vec![0u8; w.len()];
    let mut best: Option<(f32, u8, f64)> = None;
    for &p in &SHRINKS {
        let range: &[f32] = if spec.symmetric {
            &[hi.max(-lo) * p]
        } else {
            &[lo * p, hi * p]
        };
        let (scale, zero) = spec
            .granule_params(range)
            .map_err(|e| MethodError::Options(e.to_string()))?;
        let add = if spec.symmetric {
            spec.code_offset() as f32
        } else {
            f32::from(zero)
        };
        let mut consider = |scale: f32, trial: &mut [u8]| {
            let e = round_granule(spec, w, a, scale, zero, trial);
            if best.is_none_or(|b| e < b.2) {
                best = Some((scale, zero, e));
                codes.copy_from_slice(trial);
            }
        };
        consider(scale, &mut trial);
        if scale > 0.0 {
            if let Some(s) = refit(spec.scale_type, w, a, &trial, add) {
                consider(s, &mut trial);
            }
        }
    }
    Ok(best.expect("one shrink at least"))
}

/// Quantize the row-major `[rows, cols]` weight `w` to `spec` with each granule's scale
/// searched for the least error weighted by `importance` (`cols` values); the tensor and that
/// error, `Σ_ij a_j (w_ij − ŵ_ij)²`. `Tensor` granularity is refused (one scale for the
/// whole weight has nothing to search per granule that round-to-nearest does not already do).
pub fn quantize(
    name: &str,
    w: &[f32],
    rows: usize,
    cols: usize,
    spec: IntSpec,
    importance: Option<&[f32]>,
) -> Result<(IntTensor, f64)> {
    let fmt = |source| MethodError::Format {
        name: name.to_string(),
        source,
    };
    spec.validate(rows, cols).map_err(fmt)?;
    if w.len() != rows * cols || importance.is_some_and(|a| a.len() != cols) {
        return Err(MethodError::Options(format!(
            "{name}: {} values for {rows} × {cols}, or an importance vector of another width",
            w.len()
        )));
    }
    if let Some(i) = w.iter().position(|x| !x.is_finite()) {
        return Err(MethodError::Options(format!(
            "{name}: {} at [{}, {}]; shrink refuses weights that are not finite",
            w[i],
            i / cols,
            i % cols
        )));
    }
    let g = match spec.granularity {
        Granularity::Group(g) => g,
        Granularity::Channel => cols,
        Granularity::Tensor => {
            return Err(MethodError::Options(format!(
                "{name}: the importance-weighted search works per channel or per group, not per \
                 tensor"
            )))
        }
    };
    let ones = vec![1f32; cols];
    let a: Vec<f32> = importance
        .unwrap_or(&ones)
        .iter()
        .map(|&v| if v.is_finite() && v > 0.0 { v } else { 0.0 })
        .collect();
    let per = cols / g;
    let row_bytes = spec.row_bytes(cols);
    // Each row: packed codes, scales, zero points, error.
    type Row = (Vec<u8>, Vec<f32>, Vec<u8>, f64);
    let done: Vec<Row> = w
        .par_chunks(cols)
        .map(|row| -> Result<Row> {
            let mut codes = vec![0u8; cols];
            let (mut scales, mut zeros) = (Vec::with_capacity(per), Vec::with_capacity(per));
            let mut err = 0f64;
            for ((wg, ag), cg) in row.chunks(g).zip(a.chunks(g)).zip(codes.chunks_mut(g)) {
                let (s, z, e) = search(&spec, wg, ag, cg)?;
                scales.push(s);
                zeros.push(z);
                err += e;
            }
            let packed = pack(&codes, spec.bits);
            debug_assert_eq!(packed.len(), row_bytes);
            Ok((packed, scales, zeros, err))
        })
        .collect::<Result<_>>()?;
    let mut t = IntTensor {
        spec,
        rows,
        cols,
        packed: Vec::with_capacity(rows * row_bytes),
        scales: Vec::new(),
        zeros: None,
    };
    let (mut scales, mut zeros, mut err) = (Vec::with_capacity(rows * per), Vec::new(), 0f64);
    for (p, s, z, e) in done {
        t.packed.extend(p);
        scales.extend(s);
        zeros.extend(z);
        err += e;
    }
    t.scales = float::encode(spec.scale_type, &scales);
    t.zeros = (!spec.symmetric).then_some(zeros);
    t.check().map_err(fmt)?;
    Ok((t, err))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weights(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..rows * cols)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let u = (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                // Heavy tails: a few large values, as in real weights.
                u * u * u * 8.0 + u * 0.3
            })
            .collect()
    }

    fn weighted_error(w: &[f32], back: &[f32], a: &[f32]) -> f64 {
        w.iter()
            .zip(back)
            .enumerate()
            .map(|(k, (&x, &y))| f64::from(a[k % a.len()]) * f64::from(x - y).powi(2))
            .sum()
    }

    #[test]
    fn the_search_never_loses_to_round_to_nearest_and_its_codes_reproduce_its_error() {
        let (rows, cols) = (24, 192);
        let w = weights(rows, cols, 7);
        let a: Vec<f32> = (0..cols).map(|j| 0.1 + (j % 17) as f32).collect();
        for bits in [2u8, 3, 4, 8] {
            for sym in [false, true] {
                for gran in [
                    Granularity::Group(32),
                    Granularity::Group(64),
                    Granularity::Channel,
                ] {
                    let spec = IntSpec {
                        bits,
                        symmetric: sym,
                        granularity: gran,
                        scale_type: FloatType::F16,
                    };
                    let (t, err) = quantize("w", &w, rows, cols, spec, Some(&a)).unwrap();
                    let back = t.dequantize();
                    let measured = weighted_error(&w, &back, &a);
                    assert!(
                        (measured - err).abs() <= 1e-4 * measured.max(1e-9),
                        "{spec:?}: {measured} vs reported {err}"
                    );
                    let rtn = shrink_formats::int::quantize(&w, rows, cols, spec).unwrap();
                    let rtn_err = weighted_error(&w, &rtn.dequantize(), &a);
                    assert!(
                        measured <= rtn_err * (1.0 + 1e-6),
                        "{spec:?}: {measured} > {rtn_err}"
                    );
                    if bits <= 3 {
                        // Low widths gain clearly from a searched clip.
                        assert!(
                            measured < 0.9 * rtn_err,
                            "{spec:?}: {measured} vs {rtn_err}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn importance_moves_the_error_to_the_columns_that_matter_less() {
        let (rows, cols) = (16, 64);
        let w = weights(rows, cols, 3);
        let spec = IntSpec::asymmetric(3, Granularity::Group(64), FloatType::F16);
        let flat = vec![1f32; cols];
        let mut tilted = vec![1f32; cols];
        tilted[..8].iter_mut().for_each(|v| *v = 100.0);
        let (plain, _) = quantize("w", &w, rows, cols, spec, Some(&flat)).unwrap();
        let (weighted, _) = quantize("w", &w, rows, cols, spec, Some(&tilted)).unwrap();
        let cols_err = |t: &IntTensor| weighted_error(&w, &t.dequantize(), &tilted);
        assert!(cols_err(&weighted) < cols_err(&plain));
    }

    #[test]
    fn bad_input_is_refused() {
        let spec = IntSpec::asymmetric(4, Granularity::Group(32), FloatType::F16);
        let mut w = vec![0.5f32; 64];
        assert!(quantize("w", &w, 2, 30, spec, None).is_err());
        assert!(quantize("w", &w, 1, 64, spec, Some(&[1.0; 3])).is_err());
        w[40] = f32::NAN;
        let e = quantize("w", &w, 1, 64, spec, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("[0, 40]"), "{e}");
        let t = IntSpec::asymmetric(4, Granularity::Tensor, FloatType::F16);
        assert!(quantize("w", &[0.5; 64], 1, 64, t, None).is_err());
        // A weight of zeros quantizes to zeros.
        let (z, e) = quantize("w", &[0.0; 64], 1, 64, spec, None).unwrap();
        assert_eq!(e, 0.0);
        assert!(z.dequantize().iter().all(|&v| v == 0.0));
    }
}
