//! The K-quants: 256-element super-blocks with quantized sub-block scales (Q2_K … Q6_K, Q8_K).
//!
//! Layouts follow `block_q2_K` … `block_q8_K` in llama.cpp's `ggml/src/ggml-common.h`; the
//! dequantizers port `dequantize_row_q2_K` … `dequantize_row_q8_K` of `ggml/src/ggml-quants.c`,
//! including the exact scale unpacking (`get_scale_min_k4`, Q3_K's `kmask1`/`kmask2` shuffle)
//! and the same float32 operation order (e.g. `d1 = d * sc; m1 = min * m; x = d1 * q - m1`).
//! The quantizers port `quantize_row_q2_K_ref` … `quantize_row_q8_K_ref` (what `llama-quantize`
//! runs without an importance matrix) and `quantize_row_q2_K_impl` … `quantize_row_q6_K_impl`
//! (with one), with their helpers `make_qx_quants`, `make_q3_quants`, `make_qkx2_quants`,
//! `make_qkx3_quants` and `make_qp_quants`.
//! All multi-byte fields are little-endian; `ggml_half` is IEEE f16.

// The quantizers keep ggml's index loops so they read side by side with the C they port.
#![allow(clippy::needless_range_loop)]

use super::{
    f16_le, fp16_bytes, write_blocks, Block, FieldReader, FieldWriter, Quantize, K_SCALE_SIZE, QK_K,
};

// ---------------------------------------------------------------------------------------------
// Quantization helpers: ports of the static functions at the top of ggml-quants.c's K-quant
// section. Each is transcribed operation for operation in f32 (C's `float`), in C's evaluation
// order (`w*x[i]*l` is `(w*x[i])*(float)l`), without fused multiply-adds, because the bytes
// must equal llama.cpp's: a single ulp moves a rounding decision. No maintained crate ports
// these bit-exactly, hence the hand-written loops.
// ---------------------------------------------------------------------------------------------

/// `GROUP_MAX_EPS`: a group whose largest |x| is below this is treated as all zero.
pub(super) const GROUP_MAX_EPS: f32 = 1e-15;

/// ggml's `nearest_int`: round to nearest (ties to even) by adding 1.5·2^23 and reading the
/// mantissa. Exact for |fval| ≤ 4194303; outside that it returns what ggml's returns (garbage,
/// but no panic), which can only happen for inputs that overflow an f16 scale anyway.
#[inline(always)]
pub(super) fn nearest_int(fval: f32) -> i32 {
    let val = fval + 12_582_912.0;
    (val.to_bits() as i32 & 0x007f_ffff) - 0x0040_0000
}

/// Port of `make_qx_quants`: symmetric quants `L[i] = l + nmax` (l in -nmax..nmax) of `x`
/// and the scale minimising the weighted error over 19 candidate scales.
///
/// Weights: `qw[i]` if given, else by `rmse_type` (1: x², 2: 1, 3: |x|, other: sqrt|x|);
/// `rmse_type == 0` returns the plain max-based scale, a negative one returns early.
pub(super) fn make_qx_quants(
    nmax: i32,
    x: &[f32],
    l_out: &mut [i8],
    rmse_type: i32,
    qw: Option<&[f32]>,
) -> f32 {
    let n = x.len();
    let qw = qw.map(|w| &w[..n]);
    let l_out = &mut l_out[..n];
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l_out.fill(0);
        return 0.0;
    }
    let mut iscale = (-nmax) as f32 / max;
    if rmse_type == 0 {
        for i in 0..n {
            let l = nearest_int(iscale * x[i]);
            l_out[i] = (nmax + l.clamp(-nmax, nmax - 1)) as i8;
        }
        return 1.0 / iscale;
    }
    let (rmse_type, return_early) = if rmse_type < 0 {
        (-rmse_type, true)
    } else {
        (rmse_type, false)
    };
    let weight = |i: usize| match qw {
        Some(qw) => qw[i],
        None => match rmse_type {
            1 => x[i] * x[i],
            2 => 1.0,
            3 => x[i].abs(),
            _ => x[i].abs().sqrt(),
        },
    };
    let mut sumlx = 0f32;
    let mut suml2 = 0f32;
    for i in 0..n {
        let l = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
        l_out[i] = (l + nmax) as i8;
        let w = weight(i);
        let lf = l as f32;
        sumlx += w * x[i] * lf;
        suml2 += w * lf * lf;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    if return_early {
        return if suml2 > 0.0 {
            0.5 * (scale + 1.0 / iscale)
        } else {
            1.0 / iscale
        };
    }
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for i in 0..n {
            let l = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
            let w = weight(i);
            let lf = l as f32;
            sumlx += w * x[i] * lf;
            suml2 += w * lf * lf;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for i in 0..n {
                let l = nearest_int(iscale * x[i]);
                l_out[i] = (nmax + l.clamp(-nmax, nmax - 1)) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// Port of `make_q3_quants`: symmetric quants (`L[i]` in 0..2·nmax) with, for `do_rmse`,
/// up to five passes of coordinate descent on the x²-weighted error; returns the scale.
pub(super) fn make_q3_quants(nmax: i32, x: &[f32], l_out: &mut [i8], do_rmse: bool) -> f32 {
    let n = x.len();
    let l_out = &mut l_out[..n];
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l_out.fill(0);
        return 0.0;
    }
    let iscale = (-nmax) as f32 / max;
    if do_rmse {
        let mut sumlx = 0f32;
        let mut suml2 = 0f32;
        for i in 0..n {
            let l = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
            l_out[i] = l as i8;
            let w = x[i] * x[i];
            let lf = l as f32;
            sumlx += w * x[i] * lf;
            suml2 += w * lf * lf;
        }
        for _itry in 0..5 {
            let mut n_changed = 0;
            for i in 0..n {
                let w = x[i] * x[i];
                let li = l_out[i] as f32;
                let mut slx = sumlx - w * x[i] * li;
                if slx > 0.0 {
                    let mut sl2 = suml2 - w * li * li;
                    let new_l = nearest_int(x[i] * sl2 / slx).clamp(-nmax, nmax - 1);
                    if new_l != l_out[i] as i32 {
                        let nf = new_l as f32;
                        slx += w * x[i] * nf;
                        sl2 += w * nf * nf;
                        if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                            l_out[i] = new_l as i8;
                            sumlx = slx;
                            suml2 = sl2;
                            n_changed += 1;
                        }
                    }
                }
            }
            if n_changed == 0 {
                break;
            }
        }
        for v in l_out.iter_mut() {
            *v += nmax as i8;
        }
        return if suml2 > 0.0 { sumlx / suml2 } else { 0.0 };
    }
    for i in 0..n {
        let l = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
        l_out[i] = (l + nmax) as i8;
    }
    1.0 / iscale
}

/// Port of `make_qkx2_quants`: asymmetric quants `L[i]` in 0..=nmax with `x ≈ scale*L - min`,
/// searching `nstep + 1` scales `(rmin + rdelta*is + nmax)/(max - min)` and refitting scale and
/// min by weighted least squares. Returns `(scale, the_min)` (`the_min` ≥ 0 is subtracted).
#[allow(clippy::too_many_arguments)] // ggml's signature
pub(super) fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    l_out: &mut [u8],
    laux: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> (f32, f32) {
    let n = x.len();
    // Same-length views so the loops run without bounds checks.
    let (weights, l_out, laux) = (&weights[..n], &mut l_out[..n], &mut laux[..n]);
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l_out.fill(0);
        return (0.0, -min);
    }
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min));
        l_out[i] = l.clamp(0, nmax) as u8;
        let mut diff = scale * l_out[i] as f32 + min - x[i];
        diff = if use_mad { diff.abs() } else { diff * diff };
        best_error += weights[i] * diff;
    }
    if nstep < 1 {
        return (scale, -min);
    }
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..n {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            laux[i] = l as u8;
            let w = weights[i];
            let lf = l as f32;
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0f32;
            for i in 0..n {
                let mut diff = this_scale * laux[i] as f32 + this_min - x[i];
                diff = if use_mad { diff.abs() } else { diff * diff };
                cur_error += weights[i] * diff;
            }
            if cur_error < best_error {
                l_out.copy_from_slice(laux);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// Port of `make_qkx3_quants` (the weighted searches' variant of [`make_qkx2_quants`]; weights
/// default to x²). Returns `(scale, the_min)`.
#[allow(clippy::too_many_arguments)] // ggml's signature
pub(super) fn make_qkx3_quants(
    nmax: i32,
    x: &[f32],
    weights: Option<&[f32]>,
    l_out: &mut [u8],
    laux: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> (f32, f32) {
    let n = x.len();
    let weights = weights.map(|w| &w[..n]);
    let (l_out, laux) = (&mut l_out[..n], &mut laux[..n]);
    let weight = |i: usize| match weights {
        Some(w) => w[i],
        None => x[i] * x[i],
    };
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weight(0);
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weight(i);
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max <= min {
        l_out.fill(0);
        return (0.0, -min);
    }
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_mad = 0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min));
        l_out[i] = l.clamp(0, nmax) as u8;
        let mut diff = scale * l_out[i] as f32 + min - x[i];
        diff = if use_mad { diff.abs() } else { diff * diff };
        best_mad += weight(i) * diff;
    }
    if nstep < 1 {
        return (scale, -min);
    }
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..n {
            // ggml: min is the best fit so far and can be at or near max, so v can be inf,
            // NaN or out of range for nearest_int.
            let v = iscale * (x[i] - min);
            let l = if v > 0.0 {
                nearest_int(v.min(nmax as f32))
            } else {
                0
            };
            laux[i] = l as u8;
            let w = weight(i);
            let lf = l as f32;
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut mad = 0f32;
            for i in 0..n {
                let mut diff = this_scale * laux[i] as f32 + this_min - x[i];
                diff = if use_mad { diff.abs() } else { diff * diff };
                mad += weight(i) * diff;
            }
            if mad < best_mad {
                l_out.copy_from_slice(laux);
                best_mad = mad;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// Port of `make_qp_quants`: non-negative quants `L[i]` in 0..=nmax of the non-negative `x`
/// (sub-block scales or mins) with weights `quant_weights`; returns the scale.
pub(super) fn make_qp_quants(nmax: i32, x: &[f32], l_out: &mut [u8], quant_weights: &[f32]) -> f32 {
    let n = x.len();
    let (l_out, quant_weights) = (&mut l_out[..n], &quant_weights[..n]);
    let mut max = 0f32;
    for &v in x {
        max = if max > v { max } else { v };
    }
    if max < GROUP_MAX_EPS {
        l_out.fill(0);
        return 0.0;
    }
    let mut iscale = nmax as f32 / max;
    for i in 0..n {
        l_out[i] = nearest_int(iscale * x[i]) as u8;
    }
    let scale = 1.0 / iscale;
    let mut best_mse = 0f32;
    for i in 0..n {
        let diff = x[i] - scale * l_out[i] as f32;
        let w = quant_weights[i];
        best_mse += w * diff * diff;
    }
    for is in -4..=4 {
        if is == 0 {
            continue;
        }
        let iscale_is = (0.1 * is as f32 + nmax as f32) / max;
        let scale_is = 1.0 / iscale_is;
        let mut mse = 0f32;
        for i in 0..n {
            let l = nearest_int(iscale_is * x[i]).min(nmax);
            let diff = x[i] - scale_is * l as f32;
            let w = quant_weights[i];
            mse += w * diff * diff;
        }
        if mse < best_mse {
            best_mse = mse;
            iscale = iscale_is;
        }
    }
    let mut sumlx = 0f32;
    let mut suml2 = 0f32;
    for i in 0..n {
        let l = nearest_int(iscale * x[i]).min(nmax);
        l_out[i] = l as u8;
        let w = quant_weights[i];
        let lf = l as f32;
        sumlx += w * x[i] * lf;
        suml2 += w * lf * lf;
    }
    for _itry in 0..5 {
        let mut n_changed = 0;
        for i in 0..n {
            let w = quant_weights[i];
            let li = l_out[i] as f32;
            let mut slx = sumlx - w * x[i] * li;
            let mut sl2 = suml2 - w * li * li;
            if slx > 0.0 && sl2 > 0.0 {
                let new_l = nearest_int(x[i] * sl2 / slx).min(nmax);
                if new_l != l_out[i] as i32 {
                    let nf = new_l as f32;
                    slx += w * x[i] * nf;
                    sl2 += w * nf * nf;
                    if slx * slx * suml2 > sumlx * sumlx * sl2 {
                        l_out[i] = new_l as u8;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed += 1;
                    }
                }
            }
        }
        if n_changed == 0 {
            break;
        }
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// Pack 256 quants of 2 bits (Q2_K / the low bits of Q3_K): byte `l` of each 32-byte group
/// holds elements `l`, `l+32`, `l+64`, `l+96` of its 128-element half.
fn pack_2bit(l: &[u8; QK_K]) -> [u8; QK_K / 4] {
    let mut qs = [0u8; QK_K / 4];
    for j in (0..QK_K).step_by(128) {
        for k in 0..32 {
            qs[j / 4 + k] =
                l[j + k] | (l[j + k + 32] << 2) | (l[j + k + 64] << 4) | (l[j + k + 96] << 6);
        }
    }
    qs
}

/// Pack the 6-bit scales `ls` and mins `lm` of Q4_K / Q5_K (inverse of [`get_scale_min_k4`]).
fn pack_scale_min_k4(ls: &[u8; 8], lm: &[u8; 8]) -> [u8; K_SCALE_SIZE] {
    let mut s = [0u8; K_SCALE_SIZE];
    for j in 0..QK_K / 32 {
        if j < 4 {
            s[j] = ls[j];
            s[j + 4] = lm[j];
        } else {
            s[j + 4] = (ls[j] & 0xF) | ((lm[j] & 0xF) << 4);
            s[j - 4] |= (ls[j] >> 4) << 6;
            s[j] |= (lm[j] >> 4) << 6;
        }
    }
    s
}

/// The requantization pass shared by Q4_K and Q5_K: with the stored (f16) super-block scales
/// and the 6-bit sub-block scales and mins, `L = nearest_int((x + dm)/d)` clamped to 0..=nmax;
/// sub-blocks whose scale is 0 keep the quants of the search.
fn requantize_k4(
    x: &[f32],
    d: [u8; 2],
    dmin: [u8; 2],
    scales: &[u8; 12],
    nmax: i32,
    l: &mut [u8; QK_K],
) {
    for j in 0..QK_K / 32 {
        let (sc, m) = get_scale_min_k4(j, scales);
        let d = f16_le(d) * sc as f32;
        if d == 0.0 {
            continue;
        }
        let dm = f16_le(dmin) * m as f32;
        for ii in 0..32 {
            let q = nearest_int((x[32 * j + ii] + dm) / d);
            l[32 * j + ii] = q.clamp(0, nmax) as u8;
        }
    }
}

/// Q3_K's sixteen 6-bit scales (biased by 32) packed into 12 bytes, as
/// `quantize_row_q3_K_ref` writes them.
fn pack_q3_scales(l: &[u8; 16]) -> [u8; 12] {
    let mut s = [0u8; 12];
    for j in 0..16 {
        let lj = l[j];
        if j < 8 {
            s[j] = lj & 0xF;
        } else {
            s[j - 8] |= (lj & 0xF) << 4;
        }
        s[j % 4 + 8] |= (lj >> 4) << (2 * (j / 4));
    }
    s
}

/// Q3_K's second pass: requantize with the stored scales (`L` in 0..8), then split into the
/// high-bit mask and the 2-bit low parts.
fn q3_finish(x: &[f32], d: [u8; 2], scales: &[u8; 12], l: &mut [i8; QK_K]) -> ([u8; 32], [u8; 64]) {
    for j in 0..16 {
        let lo = if j < 8 {
            scales[j] & 0xF
        } else {
            scales[j - 8] >> 4
        };
        let sc = (lo | (((scales[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) as i8 - 32;
        let d = f16_le(d) * sc as f32;
        if d == 0.0 {
            continue;
        }
        for ii in 0..16 {
            let q = nearest_int(x[16 * j + ii] / d).clamp(-4, 3);
            l[16 * j + ii] = (q + 4) as i8;
        }
    }
    // ggml: "We put the high-bit for the 1st 8 quants into bit 0, the next 8 into bit 1, etc."
    // (its running byte index m and bit hm are element j's j % 32 and j / 32).
    let mut hmask = [0u8; QK_K / 8];
    let mut lu = [0u8; QK_K];
    for j in 0..QK_K {
        let high = l[j] > 3;
        hmask[j % 32] |= (high as u8) << (j / 32);
        lu[j] = (l[j] - 4 * high as i8) as u8;
    }
    (hmask, pack_2bit(&lu))
}

/// `block_q2_K` (84 bytes): 16 sub-blocks of 16, `x = (d * sc) * q - (dmin * m)`, q in 0..=3.
#[repr(C)]
pub(crate) struct BlockQ2K {
    /// Offset 0: `uint8_t scales[16]`, per sub-block: low nibble = scale, high nibble = min.
    scales: [u8; QK_K / 16],
    /// Offset 16: `uint8_t qs[64]`, 2-bit quants; byte `l` of each 32-byte group holds
    /// elements `l`, `l+32`, `l+64`, `l+96` of that 128-element half at bit shifts 0, 2, 4, 6.
    qs: [u8; QK_K / 4],
    /// Offset 80: `ggml_half d`, super-block scale for the quantized scales.
    d: [u8; 2],
    /// Offset 82: `ggml_half dmin`, super-block scale for the quantized mins.
    dmin: [u8; 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ2K>() == 2 * 2 + QK_K / 16 + QK_K / 4);

impl Block for BlockQ2K {
    const SIZE: usize = std::mem::size_of::<Self>();
    const QK: usize = QK_K;

    fn read(bytes: &[u8]) -> Self {
        let mut r = FieldReader::new(bytes);
        let b = BlockQ2K {
            scales: r.take(),
            qs: r.take(),
            d: r.take(),
            dmin: r.take(),
        };
        r.finish();
        b
    }

    /// Port of `dequantize_row_q2_K` (one super-block).
    fn dequantize(&self, y: &mut [f32]) {
        let y: &mut [f32; QK_K] = y.try_into().expect("one Q2_K block");
        let d = f16_le(self.d);
        let min = f16_le(self.dmin);
        let mut out = 0;
        let mut is = 0;
        for n in (0..QK_K).step_by(128) {
            let q = &self.qs[n / 4..n / 4 + 32];
            let mut shift = 0;
            for _ in 0..4 {
                for half in [0, 16] {
                    let sc = self.scales[is];
                    is += 1;
                    let dl = d * (sc & 0xF) as f32;
                    let ml = min * (sc >> 4) as f32;
                    for l in 0..16 {
                        y[out] = dl * ((q[l + half] >> shift) & 3) as f32 - ml;
                        out += 1;
                    }
                }
                shift += 2;
            }
        }
    }
}

impl Quantize for BlockQ2K {
    const F16_FIELDS: &'static [usize] = &[80, 82];

    /// Port of `quantize_row_q2_K_ref` (one super-block).
    fn quantize(x: &[f32]) -> Self {
        let x: &[f32; QK_K] = x.try_into().expect("one Q2_K block");
        const Q4SCALE: f32 = 15.0;
        let mut l = [0u8; QK_K];
        let mut laux = [0u8; 16];
        let mut weights = [0f32; 16];
        let mut mins = [0f32; QK_K / 16];
        let mut scales = [0f32; QK_K / 16];
        let (mut max_scale, mut max_min) = (0f32, 0f32);
        for j in 0..QK_K / 16 {
            let xb = &x[16 * j..16 * j + 16];
            for (w, &v) in weights.iter_mut().zip(xb) {
                *w = v.abs();
            }
            let lb = &mut l[16 * j..16 * j + 16];
            let (scale, min) =
                make_qkx2_quants(3, xb, &weights, lb, &mut laux, -0.5, 0.1, 15, true);
            scales[j] = scale;
            mins[j] = min;
            if scale > max_scale {
                max_scale = scale;
            }
            if min > max_min {
                max_min = min;
            }
        }
        let mut sc = [0u8; QK_K / 16];
        let d = if max_scale > 0.0 {
            let iscale = Q4SCALE / max_scale;
            for j in 0..QK_K / 16 {
                sc[j] = nearest_int(iscale * scales[j]) as u8;
            }
            fp16_bytes(max_scale / Q4SCALE)
        } else {
            fp16_bytes(0.0)
        };
        let dmin = if max_min > 0.0 {
            let iscale = Q4SCALE / max_min;
            for j in 0..QK_K / 16 {
                sc[j] |= (nearest_int(iscale * mins[j]) << 4) as u8;
            }
            fp16_bytes(max_min / Q4SCALE)
        } else {
            fp16_bytes(0.0)
        };
        q2_requantize(x, f16_le(d), f16_le(dmin), &sc, &mut l);
        BlockQ2K {
            scales: sc,
            qs: pack_2bit(&l),
            d,
            dmin,
        }
    }

    /// Port of `quantize_row_q2_K_impl` (with `quant_weights`).
    fn quantize_row_weighted(x: &[f32], qw: &[f32], y: &mut [u8]) {
        write_blocks(x, y, |x, i| {
            let qw = &qw[QK_K * i..QK_K * (i + 1)];
            let mut l = [0u8; QK_K];
            let mut laux = [0u8; 16];
            let mut mins = [0f32; QK_K / 16];
            let mut scales = [0f32; QK_K / 16];
            let mut sw = [0f32; QK_K / 16];
            let mut weight = [0f32; 16];
            let (mut ls, mut lm) = ([0u8; QK_K / 16], [0u8; QK_K / 16]);
            let mut sumx2 = 0f32;
            for &v in x {
                sumx2 += v * v;
            }
            let sigma2 = sumx2 / QK_K as f32;
            for j in 0..QK_K / 16 {
                let xb = &x[16 * j..16 * j + 16];
                for k in 0..16 {
                    weight[k] = qw[16 * j + k] * (sigma2 + xb[k] * xb[k]).sqrt();
                }
                for &w in &weight {
                    sw[j] += w;
                }
                let lb = &mut l[16 * j..16 * j + 16];
                (scales[j], mins[j]) =
                    make_qkx3_quants(3, xb, Some(&weight), lb, &mut laux, -0.9, 0.05, 36, false);
            }
            let dm = make_qp_quants(15, &scales, &mut ls, &sw);
            let mm = make_qp_quants(15, &mins, &mut lm, &sw);
            let (d, dmin) = (fp16_bytes(dm), fp16_bytes(mm));
            let mut sc = [0u8; QK_K / 16];
            for j in 0..QK_K / 16 {
                sc[j] = ls[j] | (lm[j] << 4);
            }
            q2_requantize(x, f16_le(d), f16_le(dmin), &sc, &mut l);
            BlockQ2K {
                scales: sc,
                qs: pack_2bit(&l),
                d,
                dmin,
            }
        });
    }

    fn write(&self, bytes: &mut [u8]) {
        let mut w = FieldWriter::new(bytes);
        w.put(&self.scales);
        w.put(&self.qs);
        w.put(&self.d);
        w.put(&self.dmin);
        w.finish();
    }
}

/// Q2_K's second pass: `L = nearest_int((x + dm)/d)` in 0..=3 with the stored scales and mins
/// (`dm_all`, `d_all` already through f16); sub-blocks with a zero scale keep their quants.
fn q2_requantize(x: &[f32], d_all: f32, dm_all: f32, sc: &[u8; 16], l: &mut [u8; QK_K]) {
    for j in 0..QK_K / 16 {
        let d = d_all * (sc[j] & 0xF) as f32;
        if d == 0.0 {
            continue;
        }
        let dm = dm_all * (sc[j] >> 4) as f32;
        for ii in 0..16 {
            l[16 * j + ii] = nearest_int((x[16 * j + ii] + dm) / d).clamp(0, 3) as u8;
        }
    }
}

/// `block_q3_K` (110 bytes): 16 sub-blocks of 16, `x = (d * (sc - 32)) * q`, q in -4..=3.
#[repr(C)]
pub(crate) struct BlockQ3K {
    /// Offset 0: `uint8_t hmask[32]`, the quants' high bit, *cleared* when 4 is to be
    /// subtracted; bit `k` of byte `l` belongs to element `32*k + l`.
    hmask: [u8; QK_K / 8],
    /// Offset 32: `uint8_t qs[64]`, low 2 bits of the quants, packed as in Q2_K.
    qs: [u8; QK_K / 4],
    /// Offset 96: `uint8_t scales[12]`, sixteen 6-bit scales (biased by 32): bytes 0..8 hold
    /// the low nibbles (scales 0..8 in the low halves, 8..16 in the high halves), bytes 8..12
    /// the high 2-bit pairs (scale `j` at byte `8 + j%4`, bit shift `2*(j/4)`).
    scales: [u8; 12],
    /// Offset 108: `ggml_half d`, the super-block scale.
    d: [u8; 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ3K>() == 2 + QK_K / 4 + QK_K / 8 + 12);

impl BlockQ3K {
    /// The 16 unpacked 6-bit scales (still biased by 32), via ggml's `kmask1`/`kmask2` shuffle.
    #[allow(clippy::identity_op)] // `tmp >> 0` kept to mirror ggml's code
    fn unpacked_scales(&self) -> [i8; 16] {
        const KMASK1: u32 = 0x0303_0303;
        const KMASK2: u32 = 0x0f0f_0f0f;
        let word = |k: usize| {
            u32::from_le_bytes(self.scales[4 * k..4 * k + 4].try_into().expect("4 bytes"))
        };
        let (a0, a1, tmp) = (word(0), word(1), word(2));
        let aux = [
            (a0 & KMASK2) | (((tmp >> 0) & KMASK1) << 4),
            (a1 & KMASK2) | (((tmp >> 2) & KMASK1) << 4),
            ((a0 >> 4) & KMASK2) | (((tmp >> 4) & KMASK1) << 4),
            ((a1 >> 4) & KMASK2) | (((tmp >> 6) & KMASK1) << 4),
        ];
        let mut out = [0i8; 16];
        for (k, w) in aux.iter().enumerate() {
            for (o, b) in out[4 * k..4 * k + 4].iter_mut().zip(w.to_le_bytes()) {
                *o = b as i8;
            }
        }
        out
    }
}

impl Block for BlockQ3K {
    const SIZE: usize = std::mem::size_of::<Self>();
    const QK: usize = QK_K;

    fn read(bytes: &[u8]) -> Self {
        let mut r = FieldReader::new(bytes);
        let b = BlockQ3K {
            hmask: r.take(),
            qs: r.take(),
            scales: r.take(),
            d: r.take(),
        };
        r.finish();
        b
    }

    /// Port of `dequantize_row_q3_K` (one super-block).
    fn dequantize(&self, y: &mut [f32]) {
        let y: &mut [f32; QK_K] = y.try_into().expect("one Q3_K block");
        let d_all = f16_le(self.d);
        let scales = self.unpacked_scales();
        let hm = &self.hmask;
        let mut m: u8 = 1;
        let mut out = 0;
        let mut is = 0;
        for n in (0..QK_K).step_by(128) {
            let q = &self.qs[n / 4..n / 4 + 32];
            let mut shift = 0;
            for _ in 0..4 {
                for half in [0, 16] {
                    let dl = d_all * (scales[is] as i32 - 32) as f32;
                    is += 1;
                    for l in 0..16 {
                        let low = ((q[l + half] >> shift) & 3) as i32;
                        let sub = if hm[l + half] & m != 0 { 0 } else { 4 };
                        y[out] = dl * (low - sub) as f32;
                        out += 1;
                    }
                }
                shift += 2;
                m = m.wrapping_shl(1);
            }
        }
    }
}

impl Quantize for BlockQ3K {
    const F16_FIELDS: &'static [usize] = &[108];

    /// Port of `quantize_row_q3_K_ref` (one super-block).
    fn quantize(x: &[f32]) -> Self {
        let x: &[f32; QK_K] = x.try_into().expect("one Q3_K block");
        let mut l = [0i8; QK_K];
        let mut scales = [0f32; QK_K / 16];
        let (mut max_scale, mut amax) = (0f32, 0f32);
        for j in 0..QK_K / 16 {
            scales[j] = make_q3_quants(
                4,
                &x[16 * j..16 * j + 16],
                &mut l[16 * j..16 * j + 16],
                true,
            );
            let scale = scales[j].abs();
            if scale > amax {
                amax = scale;
                max_scale = scales[j];
            }
        }
        let (packed, d) = if max_scale != 0.0 {
            let iscale = -32.0 / max_scale;
            let mut ls = [0u8; 16];
            for j in 0..QK_K / 16 {
                // `int8_t l = nearest_int(...)`: truncated to 8 bits first, then clamped.
                let v = nearest_int(iscale * scales[j]) as i8 as i32;
                ls[j] = (v.clamp(-32, 31) + 32) as u8;
            }
            (pack_q3_scales(&ls), fp16_bytes(1.0 / iscale))
        } else {
            ([0u8; 12], fp16_bytes(0.0))
        };
        let (hmask, qs) = q3_finish(x, d, &packed, &mut l);
        BlockQ3K {
            hmask,
            qs,
            scales: packed,
            d,
        }
    }

    /// Port of `quantize_row_q3_K_impl` (with `quant_weights`).
    fn quantize_row_weighted(x: &[f32], qw: &[f32], y: &mut [u8]) {
        write_blocks(x, y, |x, i| {
            let qw = &qw[QK_K * i..QK_K * (i + 1)];
            let mut l = [0i8; QK_K];
            let mut scales = [0f32; QK_K / 16];
            let mut weight = [0f32; 16];
            let mut sw = [0f32; QK_K / 16];
            let mut ls = [0i8; QK_K / 16];
            let mut sumx2 = 0f32;
            for &v in x {
                sumx2 += v * v;
            }
            let sigma2 = 2.0 * sumx2 / QK_K as f32;
            for j in 0..QK_K / 16 {
                let xb = &x[16 * j..16 * j + 16];
                for k in 0..16 {
                    weight[k] = qw[16 * j + k] * (sigma2 + xb[k] * xb[k]).sqrt();
                }
                let mut sumw = 0f32;
                for &w in &weight {
                    sumw += w;
                }
                sw[j] = sumw;
                scales[j] = make_qx_quants(4, xb, &mut l[16 * j..16 * j + 16], 1, Some(&weight));
            }
            let d_block = make_qx_quants(32, &scales, &mut ls, 1, Some(&sw));
            let packed = pack_q3_scales(&ls.map(|v| v as u8));
            let d = fp16_bytes(d_block);
            let (hmask, qs) = q3_finish(x, d, &packed, &mut l);
            BlockQ3K {
                hmask,
                qs,
                scales: packed,
                d,
            }
        });
    }

    fn write(&self, bytes: &mut [u8]) {
        let mut w = FieldWriter::new(bytes);
        w.put(&self.hmask);
        w.put(&self.qs);
        w.put(&self.scales);
        w.put(&self.d);
        w.finish();
    }
}

/// ggml's `get_scale_min_k4`: the 6-bit scale and min of sub-block `j` (0..8) of Q4_K / Q5_K.
///
/// Sub-blocks 0..4 keep scale and min in the low 6 bits of bytes `j` and `j+4`; sub-blocks 4..8
/// keep their low nibbles in byte `j+4` and their top 2 bits in the top bits of bytes `j-4`
/// (scale) and `j` (min).
#[inline(always)]
fn get_scale_min_k4(j: usize, q: &[u8; K_SCALE_SIZE]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// `block_q4_K` (144 bytes): 8 sub-blocks of 32, `x = (d * sc) * q - (dmin * m)`, q in 0..=15.
#[repr(C)]
pub(crate) struct BlockQ4K {
    /// Offset 0: `ggml_half d`, super-block scale for the quantized scales.
    d: [u8; 2],
    /// Offset 2: `ggml_half dmin`, super-block scale for the quantized mins.
    dmin: [u8; 2],
    /// Offset 4: `uint8_t scales[12]`, eight 6-bit scales and eight 6-bit mins (see
    /// [`get_scale_min_k4`]).
    scales: [u8; K_SCALE_SIZE],
    /// Offset 16: `uint8_t qs[128]`, 4-bit quants; each 32-byte group covers 64 elements:
    /// low nibbles are the first 32, high nibbles the next 32.
    qs: [u8; QK_K / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ4K>() == 2 * 2 + K_SCALE_SIZE + QK_K / 2);

impl Block for BlockQ4K {
    const SIZE: usize = std::mem::size_of::<Self>();
    const QK: usize = QK_K;

    fn read(bytes: &[u8]) -> Self {
        let mut r = FieldReader::new(bytes);
        let b = BlockQ4K {
            d: r.take(),
            dmin: r.take(),
            scales: r.take(),
            qs: r.take(),
        };
        r.finish();
        b
    }

    /// Port of `dequantize_row_q4_K` (one super-block).
    fn dequantize(&self, y: &mut [f32]) {
        let y: &mut [f32; QK_K] = y.try_into().expect("one Q4_K block");
        let d = f16_le(self.d);
        let min = f16_le(self.dmin);
        let mut is = 0;
        for (g, j) in (0..QK_K).step_by(64).enumerate() {
            let q = &self.qs[32 * g..32 * g + 32];
            let (sc, m) = get_scale_min_k4(is, &self.scales);
            let d1 = d * sc as f32;
            let m1 = min * m as f32;
            let (sc, m) = get_scale_min_k4(is + 1, &self.scales);
            let d2 = d * sc as f32;
            let m2 = min * m as f32;
            for l in 0..32 {
                y[j + l] = d1 * (q[l] & 0xF) as f32 - m1;
            }
            for l in 0..32 {
                y[j + 32 + l] = d2 * (q[l] >> 4) as f32 - m2;
            }
            is += 2;
        }
    }
}

/// `quantize_row_q4_K_ref`'s and `quantize_row_q5_K_ref`'s shared part: per 32-element
/// sub-block, `make_qkx2_quants` with weights `av_x + |x|` (`nmax`, `rmin`, `nstep` as given),
/// then 6-bit scales and mins relative to their maxima, then requantization. Returns
/// `(d, dmin, scales, L)`.
fn quantize_k4_ref(
    x: &[f32; QK_K],
    nmax: i32,
    rmin: f32,
    nstep: i32,
) -> ([u8; 2], [u8; 2], [u8; K_SCALE_SIZE], [u8; QK_K]) {
    let mut l = [0u8; QK_K];
    let mut laux = [0u8; 32];
    let mut weights = [0f32; 32];
    let mut mins = [0f32; QK_K / 32];
    let mut scales = [0f32; QK_K / 32];
    let (mut max_scale, mut max_min) = (0f32, 0f32);
    for j in 0..QK_K / 32 {
        let xb = &x[32 * j..32 * j + 32];
        let mut sum_x2 = 0f32;
        for &v in xb {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        for (w, &v) in weights.iter_mut().zip(xb) {
            *w = av_x + v.abs();
        }
        let lb = &mut l[32 * j..32 * j + 32];
        let (scale, min) =
            make_qkx2_quants(nmax, xb, &weights, lb, &mut laux, rmin, 0.1, nstep, false);
        scales[j] = scale;
        mins[j] = min;
        if scale > max_scale {
            max_scale = scale;
        }
        if min > max_min {
            max_min = min;
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let (mut ls, mut lm) = ([0u8; 8], [0u8; 8]);
    for j in 0..QK_K / 32 {
        // `uint8_t ls = nearest_int(...)`: truncated to 8 bits, then `MIN(63, ls)`.
        ls[j] = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        lm[j] = (nearest_int(inv_min * mins[j]) as u8).min(63);
    }
    let packed = pack_scale_min_k4(&ls, &lm);
    let d = fp16_bytes(max_scale / 63.0);
    let dmin = fp16_bytes(max_min / 63.0);
    requantize_k4(x, d, dmin, &packed, nmax, &mut l);
    (d, dmin, packed, l)
}

/// `quantize_row_q4_K_impl`'s and `quantize_row_q5_K_impl`'s shared part (with
/// `quant_weights`): `make_qkx3_quants` per sub-block, super-block scales by `make_qp_quants`.
/// `clamp63` applies Q5_K's extra `MIN(63, …)` on the 6-bit values.
fn quantize_k4_weighted(
    x: &[f32],
    qw: &[f32],
    nmax: i32,
    clamp63: bool,
) -> ([u8; 2], [u8; 2], [u8; K_SCALE_SIZE], [u8; QK_K]) {
    let mut l = [0u8; QK_K];
    let mut laux = [0u8; 32];
    let (mut ls, mut lm) = ([0u8; 8], [0u8; 8]);
    let mut weights = [0f32; 32];
    let mut sw = [0f32; QK_K / 32];
    let mut mins = [0f32; QK_K / 32];
    let mut scales = [0f32; QK_K / 32];
    let mut sum_x2 = 0f32;
    for &v in x {
        sum_x2 += v * v;
    }
    let sigma2 = 2.0 * sum_x2 / QK_K as f32;
    for j in 0..QK_K / 32 {
        let xb = &x[32 * j..32 * j + 32];
        for k in 0..32 {
            weights[k] = qw[32 * j + k] * (sigma2 + xb[k] * xb[k]).sqrt();
        }
        let mut sumw = 0f32;
        for &w in &weights {
            sumw += w;
        }
        sw[j] = sumw;
        let lb = &mut l[32 * j..32 * j + 32];
        (scales[j], mins[j]) = make_qkx3_quants(
            nmax,
            xb,
            Some(&weights),
            lb,
            &mut laux,
            -0.9,
            0.05,
            36,
            false,
        );
    }
    let d_block = make_qp_quants(63, &scales, &mut ls, &sw);
    let m_block = make_qp_quants(63, &mins, &mut lm, &sw);
    if clamp63 {
        for j in 0..8 {
            ls[j] = ls[j].min(63);
            lm[j] = lm[j].min(63);
        }
    }
    let packed = pack_scale_min_k4(&ls, &lm);
    let d = fp16_bytes(d_block);
    let dmin = fp16_bytes(m_block);
    requantize_k4(x, d, dmin, &packed, nmax, &mut l);
    (d, dmin, packed, l)
}

/// Q4_K's nibble packing: each 32-byte group holds 64 elements, the first 32 in the low
/// nibbles, the next 32 in the high nibbles.
fn pack_q4_k(l: &[u8; QK_K]) -> [u8; QK_K / 2] {
    let mut qs = [0u8; QK_K / 2];
    for (g, j) in (0..QK_K).step_by(64).enumerate() {
        for k in 0..32 {
            qs[32 * g + k] = l[j + k] | (l[j + k + 32] << 4);
        }
    }
    qs
}

impl Quantize for BlockQ4K {
    const F16_FIELDS: &'static [usize] = &[0, 2];

    /// Port of `quantize_row_q4_K_ref` (one super-block).
    fn quantize(x: &[f32]) -> Self {
        let x: &[f32; QK_K] = x.try_into().expect("one Q4_K block");
        let (d, dmin, scales, l) = quantize_k4_ref(x, 15, -1.0, 20);
        BlockQ4K {
            d,
            dmin,
            scales,
            qs: pack_q4_k(&l),
        }
    }

    /// Port of `quantize_row_q4_K_impl` (with `quant_weights`).
    fn quantize_row_weighted(x: &[f32], qw: &[f32], y: &mut [u8]) {
        write_blocks(x, y, |x, i| {
            let (d, dmin, scales, l) =
                quantize_k4_weighted(x, &qw[QK_K * i..QK_K * (i + 1)], 15, false);
            BlockQ4K {
                d,
                dmin,
                scales,
                qs: pack_q4_k(&l),
            }
        });
    }

    fn write(&self, bytes: &mut [u8]) {
        let mut w = FieldWriter::new(bytes);
        w.put(&self.d);
        w.put(&self.dmin);
        w.put(&self.scales);
        w.put(&self.qs);
        w.finish();
    }
}

/// `block_q5_K` (176 bytes): 8 sub-blocks of 32, `x = (d * sc) * q - (dmin * m)`, q in 0..=31.
#[repr(C)]
pub(crate) struct BlockQ5K {
    /// Offset 0: `ggml_half d`, super-block scale for the quantized scales.
    d: [u8; 2],
    /// Offset 2: `ggml_half dmin`, super-block scale for the quantized mins.
    dmin: [u8; 2],
    /// Offset 4: `uint8_t scales[12]`, packed as in Q4_K (see [`get_scale_min_k4`]).
    scales: [u8; K_SCALE_SIZE],
    /// Offset 16: `uint8_t qh[32]`, the quants' 5th bit: bit `k` of byte `l` belongs to
    /// element `32*k + l`.
    qh: [u8; QK_K / 8],
    /// Offset 48: `uint8_t qs[128]`, low 4 bits of the quants, packed as in Q4_K.
    qs: [u8; QK_K / 2],
}
const _: () =
    assert!(std::mem::size_of::<BlockQ5K>() == 2 * 2 + K_SCALE_SIZE + QK_K / 2 + QK_K / 8);

impl Block for BlockQ5K {
    const SIZE: usize = std::mem::size_of::<Self>();
    const QK: usize = QK_K;

    fn read(bytes: &[u8]) -> Self {
        let mut r = FieldReader::new(bytes);
        let b = BlockQ5K {
            d: r.take(),
            dmin: r.take(),
            scales: r.take(),
            qh: r.take(),
            qs: r.take(),
        };
        r.finish();
        b
    }

    /// Port of `dequantize_row_q5_K` (one super-block).
    fn dequantize(&self, y: &mut [f32]) {
        let y: &mut [f32; QK_K] = y.try_into().expect("one Q5_K block");
        let d = f16_le(self.d);
        let min = f16_le(self.dmin);
        let qh = &self.qh;
        let mut is = 0;
        let (mut u1, mut u2): (u8, u8) = (1, 2);
        for (g, j) in (0..QK_K).step_by(64).enumerate() {
            let ql = &self.qs[32 * g..32 * g + 32];
            let (sc, m) = get_scale_min_k4(is, &self.scales);
            let d1 = d * sc as f32;
            let m1 = min * m as f32;
            let (sc, m) = get_scale_min_k4(is + 1, &self.scales);
            let d2 = d * sc as f32;
            let m2 = min * m as f32;
            for l in 0..32 {
                let hi = if qh[l] & u1 != 0 { 16 } else { 0 };
                y[j + l] = d1 * ((ql[l] & 0xF) as i32 + hi) as f32 - m1;
            }
            for l in 0..32 {
                let hi = if qh[l] & u2 != 0 { 16 } else { 0 };
                y[j + 32 + l] = d2 * ((ql[l] >> 4) as i32 + hi) as f32 - m2;
            }
            is += 2;
            u1 = u1.wrapping_shl(2);
            u2 = u2.wrapping_shl(2);
        }
    }
}

/// Q5_K's packing: low 4 bits as in Q4_K, the 5th bit of element `64*g + k` (`+ 32`) in bit
/// `2*g` (`2*g + 1`) of `qh[k]`.
fn pack_q5_k(l: &[u8; QK_K]) -> ([u8; QK_K / 8], [u8; QK_K / 2]) {
    let mut qh = [0u8; QK_K / 8];
    let mut ql = [0u8; QK_K / 2];
    let (mut m1, mut m2): (u8, u8) = (1, 2);
    for (g, n) in (0..QK_K).step_by(64).enumerate() {
        for j in 0..32 {
            let mut l1 = l[n + j];
            if l1 > 15 {
                l1 -= 16;
                qh[j] |= m1;
            }
            let mut l2 = l[n + j + 32];
            if l2 > 15 {
                l2 -= 16;
                qh[j] |= m2;
            }
            ql[32 * g + j] = l1 | (l2 << 4);
        }
        m1 = m1.wrapping_shl(2);
        m2 = m2.wrapping_shl(2);
    }
    (qh, ql)
}

impl Quantize for BlockQ5K {
    const F16_FIELDS: &'static [usize] = &[0, 2];

    /// Port of `quantize_row_q5_K_ref` (one super-block).
    fn quantize(x: &[f32]) -> Self {
        let x: &[f32; QK_K] = x.try_into().expect("one Q5_K block");
        let (d, dmin, scales, l) = quantize_k4_ref(x, 31, -0.5, 15);
        let (qh, qs) = pack_q5_k(&l);
        BlockQ5K {
            d,
            dmin,
            scales,
            qh,
            qs,
        }
    }

    /// Port of `quantize_row_q5_K_impl` (with `quant_weights`).
    fn quantize_row_weighted(x: &[f32], qw: &[f32], y: &mut [u8]) {
        write_blocks(x, y, |x, i| {
            let (d, dmin, scales, l) =
                quantize_k4_weighted(x, &qw[QK_K * i..QK_K * (i + 1)], 31, true);
            let (qh, qs) = pack_q5_k(&l);
            BlockQ5K {
                d,
                dmin,
                scales,
                qh,
                qs,
            }
        });
    }

    fn write(&self, bytes: &mut [u8]) {
        let mut w = FieldWriter::new(bytes);
        w.put(&self.d);
        w.put(&self.dmin);
        w.put(&self.scales);
        w.put(&self.qh);
        w.put(&self.qs);
        w.finish();
    }
}

/// `block_q6_K` (210 bytes): 16 sub-blocks of 16, `x = (d * sc) * q`, q in -32..=31.
#[repr(C)]
pub(crate) struct BlockQ6K {
    /// Offset 0: `uint8_t ql[128]`, low 4 bits of the quants; per 128-element half, byte `l`
    /// holds elements `l` (low) and `l+64` (high), byte `l+32` elements `l+32` and `l+96`.
    ql: [u8; QK_K / 2],
    /// Offset 128: `uint8_t qh[64]`, high 2 bits; per half, byte `l` holds elements `l`, `l+32`,
    /// `l+64`, `l+96` at bit shifts 0, 2, 4, 6.
    qh: [u8; QK_K / 4],
    /// Offset 192: `int8_t scales[16]`, signed 8-bit sub-block scales.
    scales: [u8; QK_K / 16],
    /// Offset 208: `ggml_half d`, the super-block scale.
    d: [u8; 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ6K>() == 2 + QK_K / 16 + 3 * QK_K / 4);

impl Block for BlockQ6K {
    const SIZE: usize = std::mem::size_of::<Self>();
    const QK: usize = QK_K;

    fn read(bytes: &[u8]) -> Self {
        let mut r = FieldReader::new(bytes);
        let b = BlockQ6K {
            ql: r.take(),
            qh: r.take(),
            scales: r.take(),
            d: r.take(),
        };
        r.finish();
        b
    }

    /// Port of `dequantize_row_q6_K` (one super-block).
    fn dequantize(&self, y: &mut [f32]) {
        let y: &mut [f32; QK_K] = y.try_into().expect("one Q6_K block");
        let d = f16_le(self.d);
        for (h, n) in (0..QK_K).step_by(128).enumerate() {
            let ql = &self.ql[64 * h..64 * h + 64];
            let qh = &self.qh[32 * h..32 * h + 32];
            let sc = &self.scales[8 * h..8 * h + 8];
            let sc = |k: usize| sc[k] as i8 as f32;
            for l in 0..32 {
                let is = l / 16;
                let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i8 - 32;
                let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
                y[n + l] = d * sc(is) * q1 as f32;
                y[n + l + 32] = d * sc(is + 2) * q2 as f32;
                y[n + l + 64] = d * sc(is + 4) * q3 as f32;
                y[n + l + 96] = d * sc(is + 6) * q4 as f32;
            }
        }
    }
}

/// `quantize_row_q6_K_ref` / `_impl` for one super-block: `make_qx_quants(16, 32, …)` per
/// sub-block (weights x², or `qw` when given), signed 8-bit sub-block scales relative to the
/// largest, then requantization with the stored scales.
fn quantize_q6_k(x: &[f32], qw: Option<&[f32]>) -> BlockQ6K {
    let mut l = [0i8; QK_K];
    let mut scales = [0f32; QK_K / 16];
    let (mut max_scale, mut max_abs_scale) = (0f32, 0f32);
    for ib in 0..QK_K / 16 {
        let qwb = qw.map(|q| &q[16 * ib..16 * ib + 16]);
        let scale = make_qx_quants(
            32,
            &x[16 * ib..16 * ib + 16],
            &mut l[16 * ib..16 * ib + 16],
            1,
            qwb,
        );
        scales[ib] = scale;
        let abs_scale = scale.abs();
        if abs_scale > max_abs_scale {
            max_abs_scale = abs_scale;
            max_scale = scale;
        }
    }
    if max_abs_scale < GROUP_MAX_EPS {
        return BlockQ6K {
            ql: [0; QK_K / 2],
            qh: [0; QK_K / 4],
            scales: [0; QK_K / 16],
            d: fp16_bytes(0.0),
        };
    }
    let iscale = -128.0 / max_scale;
    let d = fp16_bytes(1.0 / iscale);
    let mut sc = [0i8; QK_K / 16];
    for ib in 0..QK_K / 16 {
        sc[ib] = nearest_int(iscale * scales[ib]).min(127) as i8;
    }
    for j in 0..QK_K / 16 {
        let dd = f16_le(d) * sc[j] as f32;
        if dd == 0.0 {
            continue;
        }
        for ii in 0..16 {
            let q = nearest_int(x[16 * j + ii] / dd).clamp(-32, 31);
            l[16 * j + ii] = (q + 32) as i8;
        }
    }
    let mut ql = [0u8; QK_K / 2];
    let mut qh = [0u8; QK_K / 4];
    for (h, j) in (0..QK_K).step_by(128).enumerate() {
        let (ql, qh) = (&mut ql[64 * h..64 * h + 64], &mut qh[32 * h..32 * h + 32]);
        for k in 0..32 {
            let q = |o: usize| l[j + k + o] as u8;
            ql[k] = (q(0) & 0xF) | ((q(64) & 0xF) << 4);
            ql[k + 32] = (q(32) & 0xF) | ((q(96) & 0xF) << 4);
            qh[k] = (q(0) >> 4) | ((q(32) >> 4) << 2) | ((q(64) >> 4) << 4) | ((q(96) >> 4) << 6);
        }
    }
    BlockQ6K {
        ql,
        qh,
        scales: sc.map(|v| v as u8),
        d,
    }
}

impl Quantize for BlockQ6K {
    const F16_FIELDS: &'static [usize] = &[208];

    /// Port of `quantize_row_q6_K_ref` (one super-block).
    fn quantize(x: &[f32]) -> Self {
        quantize_q6_k(x, None)
    }

    /// Port of `quantize_row_q6_K_impl` (with `quant_weights`, used as the weights directly).
    fn quantize_row_weighted(x: &[f32], qw: &[f32], y: &mut [u8]) {
        write_blocks(x, y, |x, i| {
            quantize_q6_k(x, Some(&qw[QK_K * i..QK_K * (i + 1)]))
        });
    }

    fn write(&self, bytes: &mut [u8]) {
        let mut w = FieldWriter::new(bytes);
        w.put(&self.ql);
        w.put(&self.qh);
        w.put(&self.scales);
        w.put(&self.d);
        w.finish();
    }
}

/// `block_q8_K` (292 bytes): `x = d * q` with an f32 scale; ggml's activation format.
#[repr(C)]
pub(crate) struct BlockQ8K {
    /// Offset 0: `float d`, the scale.
    d: [u8; 4],
    /// Offset 4: `int8_t qs[256]`, the quants in element order.
    qs: [u8; QK_K],
    /// Offset 260: `int16_t bsums[16]`, sums of each 16 quants (for dot products only).
    bsums: [u8; QK_K / 16 * 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ8K>() == 4 + QK_K + QK_K / 16 * 2);

impl Block for BlockQ8K {
    const SIZE: usize = std::mem::size_of::<Self>();
    const QK: usize = QK_K;

    fn read(bytes: &[u8]) -> Self {
        let mut r = FieldReader::new(bytes);
        let b = BlockQ8K {
            d: r.take(),
            qs: r.take(),
            bsums: r.take(),
        };
        r.finish();
        b
    }

    /// Port of `dequantize_row_q8_K` (one block).
    fn dequantize(&self, y: &mut [f32]) {
        let y: &mut [f32; QK_K] = y.try_into().expect("one Q8_K block");
        let d = f32::from_le_bytes(self.d);
        for (o, &q) in y.iter_mut().zip(&self.qs) {
            *o = d * (q as i8) as f32;
        }
    }
}

impl Quantize for BlockQ8K {
    /// The scale is an f32 (`d = max/-127` cannot overflow).
    const F16_FIELDS: &'static [usize] = &[];

    /// Port of `quantize_row_q8_K_ref` (one block). An all-zero block gets zero `bsums` too
    /// (ggml leaves them unwritten).
    fn quantize(x: &[f32]) -> Self {
        let x: &[f32; QK_K] = x.try_into().expect("one Q8_K block");
        let (mut max, mut amax) = (0f32, 0f32);
        for &v in x {
            let ax = v.abs();
            if ax > amax {
                amax = ax;
                max = v;
            }
        }
        if amax == 0.0 {
            return BlockQ8K {
                d: 0f32.to_le_bytes(),
                qs: [0; QK_K],
                bsums: [0; QK_K / 16 * 2],
            };
        }
        // ggml: "We need this change for IQ2_XXS, else the AVX implementation becomes very
        // awkward" (-127 rather than -128).
        let iscale = -127.0 / max;
        let mut qs = [0i8; QK_K];
        for j in 0..QK_K {
            qs[j] = nearest_int(iscale * x[j]).min(127) as i8;
        }
        let mut bsums = [0u8; QK_K / 16 * 2];
        for j in 0..QK_K / 16 {
            let sum: i32 = qs[16 * j..16 * j + 16].iter().map(|&q| q as i32).sum();
            bsums[2 * j..2 * j + 2].copy_from_slice(&(sum as i16).to_le_bytes());
        }
        BlockQ8K {
            d: (1.0 / iscale).to_le_bytes(),
            qs: qs.map(|q| q as u8),
            bsums,
        }
    }

    /// ggml has no weighted Q8_K quantizer; the weights are ignored.
    fn quantize_row_weighted(x: &[f32], _qw: &[f32], y: &mut [u8]) {
        write_blocks(x, y, |xb, _| Self::quantize(xb));
    }

    fn write(&self, bytes: &mut [u8]) {
        let mut w = FieldWriter::new(bytes);
        w.put(&self.d);
        w.put(&self.qs);
        w.put(&self.bsums);
        w.finish();
    }
}

/// Q4_K's and Q5_K's scales and mins: sub-block `j` scale `d·sc_j`, min `−(dmin·m_j)`.
fn k4_scales_mins(
    d: [u8; 2],
    dmin: [u8; 2],
    packed: &[u8; K_SCALE_SIZE],
    s: &mut [f32],
    m: &mut [f32],
) {
    let (d, dmin) = (f16_le(d), f16_le(dmin));
    for j in 0..QK_K / 32 {
        let (sc, mn) = get_scale_min_k4(j, packed);
        s[j] = d * sc as f32;
        m[j] = -(dmin * mn as f32);
    }
}

impl super::Affine for BlockQ4K {
    const BITS: u8 = 4;
    const GRANULE: usize = 32;
    const OFFSET: u8 = 0;
    const MINS: bool = true;
    fn affine(&self, codes: &mut [u8], scales: &mut [f32], mins: &mut [f32]) {
        for (e, c) in codes.iter_mut().enumerate() {
            // Element 64g + l (+ 32): byte 32g + l, low (high) nibble.
            let b = self.qs[e / 64 * 32 + e % 32];
            *c = if e % 64 < 32 { b & 15 } else { b >> 4 };
        }
        k4_scales_mins(self.d, self.dmin, &self.scales, scales, mins);
    }
}

impl super::Affine for BlockQ5K {
    const BITS: u8 = 5;
    const GRANULE: usize = 32;
    const OFFSET: u8 = 0;
    const MINS: bool = true;
    fn affine(&self, codes: &mut [u8], scales: &mut [f32], mins: &mut [f32]) {
        for (e, c) in codes.iter_mut().enumerate() {
            let (g, l) = (e / 64, e % 32);
            let upper = e % 64 >= 32;
            let b = self.qs[g * 32 + l];
            let low = if upper { b >> 4 } else { b & 15 };
            // The 5th bit: bit 2g (2g + 1 for the upper 32) of qh[l].
            let bit = (self.qh[l] >> (2 * g + upper as usize)) & 1;
            *c = low | (bit << 4);
        }
        k4_scales_mins(self.d, self.dmin, &self.scales, scales, mins);
    }
}

impl super::Affine for BlockQ6K {
    const BITS: u8 = 6;
    const GRANULE: usize = 16;
    const OFFSET: u8 = 32;
    const MINS: bool = false;
    fn affine(&self, codes: &mut [u8], scales: &mut [f32], _: &mut [f32]) {
        for (e, c) in codes.iter_mut().enumerate() {
            // Element 128h + 32q + l: low nibble of ql[64h + l + 32(q % 2)] (high nibble for
            // q ≥ 2), top bits at shift 2q of qh[32h + l].
            let (h, q, l) = (e / 128, e % 128 / 32, e % 32);
            let b = self.ql[64 * h + l + 32 * (q % 2)];
            let low = if q < 2 { b & 15 } else { b >> 4 };
            let high = (self.qh[32 * h + l] >> (2 * q)) & 3;
            *c = low | (high << 4);
        }
        let d = f16_le(self.d);
        for (s, &sc) in scales.iter_mut().zip(&self.scales) {
            *s = d * sc as i8 as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{dequantize, GgmlType};
    use super::*;
    use half::f16;

    fn h(v: f32) -> [u8; 2] {
        f16::from_f32(v).to_le_bytes()
    }

    /// The straightforward per-scale formula from `quantize_row_q3_K_ref`.
    fn q3_scale_ref(s: &[u8; 12], j: usize) -> i8 {
        let lo = if j < 8 { s[j] & 0xF } else { s[j - 8] >> 4 };
        (lo | (((s[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) as i8
    }

    #[test]
    fn q3_k_kmask_shuffle_matches_per_scale_formula() {
        let mut seed = 12345u32;
        for _ in 0..200 {
            let mut b = BlockQ3K {
                hmask: [0; 32],
                qs: [0; 64],
                scales: [0; 12],
                d: [0; 2],
            };
            for s in b.scales.iter_mut() {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                *s = (seed >> 24) as u8;
            }
            let un = b.unpacked_scales();
            for (j, &u) in un.iter().enumerate() {
                assert_eq!(u, q3_scale_ref(&b.scales, j), "scale {j}");
            }
        }
    }

    #[test]
    fn get_scale_min_k4_layout() {
        // Sub-block 5: scale = 0b10_0111 (39), min = 0b01_1010 (26).
        let mut q = [0u8; 12];
        q[9] = 0x7 | (0xA << 4); // low nibbles of scale and min
        q[1] = 0b10 << 6; // top bits of the scale (byte j-4)
        q[5] = 0b01 << 6; // top bits of the min (byte j)
        assert_eq!(get_scale_min_k4(5, &q), (39, 26));
        // Sub-block 1 reads the low 6 bits of bytes 1 and 5, ignoring the borrowed top bits.
        q[1] |= 17;
        q[5] |= 33;
        assert_eq!(get_scale_min_k4(1, &q), (17, 33));
    }

    #[test]
    fn q4_k_single_value() {
        let mut b = vec![0u8; 144];
        b[0..2].copy_from_slice(&h(0.5)); // d
        b[2..4].copy_from_slice(&h(0.25)); // dmin
        b[4 + 1] = 3; // scale of sub-block 1
        b[4 + 5] = 4; // min of sub-block 1
        b[16] = 0x70; // element 32 (high nibble of byte 0): q = 7
        let mut y = vec![0f32; 256];
        dequantize(GgmlType::Q4_K, &b, &mut y).unwrap();
        assert_eq!(y[32], 0.5 * 3.0 * 7.0 - 0.25 * 4.0);
        assert_eq!(y[33], -1.0);
        assert_eq!(y[0], 0.0);
    }

    #[test]
    fn q6_k_element_order() {
        let mut b = vec![0u8; 210];
        b[208..210].copy_from_slice(&h(1.0));
        for s in &mut b[192..208] {
            *s = 1;
        }
        b[192 + 14] = (-2i8) as u8; // scale of elements 224..240
                                    // Element 128 + 96 + 1 = 225: ql byte 64 + 32 + 1 high nibble, qh byte 32 + 1 bits 6..8.
        b[64 + 33] = 0xF0;
        b[128 + 33] = 0b11 << 6;
        let mut y = vec![0f32; 256];
        dequantize(GgmlType::Q6_K, &b, &mut y).unwrap();
        assert_eq!(y[225], -2.0 * 31.0);
        assert_eq!(y[0], -32.0);
    }

    #[test]
    fn nearest_int_rounds_half_to_even() {
        for (x, want) in [
            (0.5f32, 0),
            (1.5, 2),
            (2.5, 2),
            (-0.5, 0),
            (-1.5, -2),
            (-2.5, -2),
            (0.49999997, 0),
            (3.7, 4),
            (-3.7, -4),
            (4194303.0, 4194303),
            (-4194303.0, -4194303),
        ] {
            assert_eq!(nearest_int(x), want, "{x}");
            assert_eq!(nearest_int(x), x.round_ties_even() as i32, "{x}");
        }
    }

    #[test]
    fn q3_k_hmask_split_matches_ggml_loop() {
        // ggml's loop: byte m runs 0..32 and the bit hm doubles each time m wraps.
        let mut l = [0i8; QK_K];
        for (j, v) in l.iter_mut().enumerate() {
            *v = ((j * 37 + j / 7) % 8) as i8;
        }
        let scales = [0u8; 12]; // all sub-block scales -32: d = 0 keeps `l` as it is.
        let (hmask, _) = q3_finish(&[0f32; QK_K], [0, 0], &scales, &mut l.clone());
        let mut want = [0u8; 32];
        let (mut m, mut hm) = (0, 1u8);
        for &v in &l {
            if v > 3 {
                want[m] |= hm;
            }
            m += 1;
            if m == 32 {
                m = 0;
                hm = hm.wrapping_shl(1);
            }
        }
        assert_eq!(hmask, want);
    }

    #[test]
    fn q8_k_f32_scale() {
        let mut b = vec![0u8; 292];
        b[0..4].copy_from_slice(&0.1f32.to_le_bytes());
        b[4] = (-3i8) as u8;
        b[259] = 100;
        let mut y = vec![0f32; 256];
        dequantize(GgmlType::Q8_K, &b, &mut y).unwrap();
        assert_eq!((y[0], y[255]), (0.1f32 * -3.0, 0.1f32 * 100.0));
    }
}
