//! GPTQ (Frantar et al. 2022): quantize a linear layer's weight column by column, spreading
//! each column's rounding error over the columns not yet quantized through the inverse layer
//! Hessian: dampening, the upper Cholesky factor of `H⁻¹`, lazy block updates, act-order with
//! `g_idx` or static groups, per-group min/max parameters (symmetric or asymmetric) on the grid
//! the HF `gptq` layout stores.
//!
//! What matches the reference `fasterquant` (IST-DASLab/gptq `gptq.py`, and AutoGPTQ's, which
//! has the same loop): given the same prepared `H⁻¹` factor, the codes, scales, zero points and
//! `g_idx` are equal to the reference's with its scale rounded to f16 before the zero point is
//! computed (the layout stores f16 scales; shrink quantizes on that grid) —
//! `tests/gptq_reference.rs` checks this against codes made by the reference's own code
//! (`scripts/make-gptq-reference.py`), for:
//! - dynamic groups (act-order off, or act-order with `g_idx`): a group's parameters come from
//!   the weight as it stood when the block holding the group's first column began — the
//!   reference's `find_params(W[:, j:j + g])` reads `W`, which does not yet hold the updates
//!   made inside the current block (those go to its copy `W1`) — with the reference's block
//!   boundaries (`block_size` as given);
//! - static groups (AutoGPTQ's and gptq.py's `static_groups`): every group's parameters from the
//!   original weight (dead columns zeroed) before any update, in the original column order.
//!
//! `prepare` follows the reference's steps but dampens and inverts in f64 (the reference in
//! f32), so its factor differs from the reference's in the last bits. Where shrink's grid
//! deliberately differs: an all-zero group gets scale 0 and zero point 0 (the reference widens
//! it to [−1, 1]); a symmetric group with no negative value still gets the range `[−max, max]`
//! (the reference then uses `[0, max]`); in a pruned weight ([`crate::sparsity::is_pruned`]) an
//! exact 0 gets its group's zero point, so it stays 0 and a sparse checkpoint keeps its sparsity
//! (as llm-compressor's GPTQ with its sparsity mask preserved).
//!
//! Rows are independent given `H⁻¹`, so they are processed in parallel chunks; within a
//! chunk a block of columns is quantized one column at a time and the rest of the row is
//! updated once per block with a GEMM (the reference's lazy batch update).

use rayon::prelude::*;
use shrink_formats::gptq_layout::GptqParts;

use crate::error::{MethodError, Result};
use crate::hessian;
pub use crate::hessian::PreparedHessian;

/// GPTQ's parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GptqSpec {
    /// Bits per weight: 2, 3, 4 or 8.
    pub bits: u8,
    /// Columns per group of scales.
    pub group_size: usize,
    /// Symmetric grid (zero point fixed at 2^(bits−1)) if true.
    pub sym: bool,
    /// Process columns in order of decreasing Hessian diagonal (desc_act).
    pub act_order: bool,
    /// Compute every group's scale and zero from the weight before any update, so groups stay
    /// contiguous in the original column order even with act-order (no `g_idx` permutation).
    pub static_groups: bool,
    /// Dampening as a fraction of the mean Hessian diagonal (default 0.01).
    pub damp: f64,
    /// Columns per lazy update block (default 128).
    pub block_size: usize,
    /// Search each group's clipping range (QuaRot's and GPTAQ's `--w_clip`): the grid of the
    /// range shrunk by `1 − i/100`, i < 80, that minimises `Σ |q − w|^2.4` over the group,
    /// instead of the group's full min/max.
    pub clip_search: bool,
    /// GPTAQ (asymmetric calibration): fit each layer to the float model's output, its inputs
    /// from the compressed model, with this α (the reference's 0.25); `None`: GPTQ.
    pub gptaq_alpha: Option<f64>,
}

impl Default for GptqSpec {
    fn default() -> Self {
        GptqSpec {
            bits: 4,
            group_size: 64,
            sym: false,
            act_order: false,
            static_groups: false,
            damp: 0.01,
            block_size: 128,
            clip_search: false,
            gptaq_alpha: None,
        }
    }
}

/// The bit widths the HF `gptq` layout packs.
pub const GPTQ_BITS: [u8; 4] = [2, 3, 4, 8];

impl GptqSpec {
    /// Check the parameters against a weight of `rows × cols` before any work.
    pub fn validate(&self, name: &str, rows: usize, cols: usize) -> Result<()> {
        let bad = |what: String| Err(MethodError::Options(format!("{name}: {what}")));
        if !GPTQ_BITS.contains(&self.bits) {
            return bad(format!(
                "GPTQ stores 2, 3, 4 or 8 bits, not --bits {}",
                self.bits
            ));
        }
        if self.group_size == 0 || !cols.is_multiple_of(self.group_size) {
            return bad(format!(
                "--group-size {} does not divide the {cols} input features",
                self.group_size
            ));
        }
        if !(self.damp > 0.0 && self.damp < 1.0) {
            return bad(format!("--damp {} must lie in (0, 1)", self.damp));
        }
        if self.block_size == 0 {
            return bad("--block-size must be at least 1".into());
        }
        if let Some(a) = self.gptaq_alpha {
            if !(a > 0.0 && a <= 1.0) {
                return bad(format!("--gptaq-alpha {a} must lie in (0, 1]"));
            }
        }
        // qweight packs 32 input features' codes into `bits` int32 words, qzeros 32 output
        // features' zero points likewise.
        let per_word = if self.bits == 3 {
            32
        } else {
            32 / self.bits as usize
        };
        if !cols.is_multiple_of(per_word) || !rows.is_multiple_of(per_word) {
            return bad(format!(
                "the gptq layout packs {per_word} {}-bit values per word; a {rows}x{cols} weight \
                 does not divide",
                self.bits
            ));
        }
        Ok(())
    }

    /// Largest code, 2^bits − 1.
    pub(crate) fn maxq(&self) -> i32 {
        (1 << self.bits) - 1
    }

    /// Scale (rounded to f16, as stored) and zero point of a group holding `v`: from its range,
    /// or with `clip_search` from the shrunk range of least `Σ |q − w|^2.4`.
    pub(crate) fn params(&self, v: &[f32]) -> (f32, u8) {
        let (mut lo, mut hi) = (0f32, 0f32);
        for &x in v {
            lo = lo.min(x);
            hi = hi.max(x);
        }
        if !self.clip_search {
            return self.range_params(lo, hi);
        }
        let maxq = self.maxq();
        let mut best = (f64::INFINITY, self.range_params(lo, hi));
        for i in 0..80 {
            let f = 1.0 - i as f32 / 100.0;
            let (s, z) = self.range_params(f * lo, f * hi);
            let err: f64 = v
                .iter()
                .map(|&x| {
                    let q = (code(x, s, z, maxq) as i32 - z as i32) as f32 * s;
                    ((q - x).abs() as f64).powf(2.4)
                })
                .sum();
            if err < best.0 {
                best = (err, (s, z));
            }
        }
        best.1
    }

    /// Scale (rounded to f16) and zero point of the range [lo, hi] (lo ≤ 0 ≤ hi).
    fn range_params(&self, lo: f32, hi: f32) -> (f32, u8) {
        let maxq = self.maxq();
        if self.sym {
            let a = hi.max(-lo);
            let s = half::f16::from_f32(2.0 * a / maxq as f32).to_f32();
            (s, ((maxq + 1) / 2) as u8)
        } else {
            let s = half::f16::from_f32((hi - lo) / maxq as f32).to_f32();
            let z = if s == 0.0 {
                0
            } else {
                (-lo / s).round_ties_even().clamp(0.0, maxq as f32) as u8
            };
            (s, z)
        }
    }
}

/// Code of `w` on the grid (`scale`, `zero`): `clamp(rne(w/s) + z, 0, maxq)`.
#[inline(always)]
pub(crate) fn code(w: f32, s: f32, z: u8, maxq: i32) -> u8 {
    if s == 0.0 {
        return z;
    }
    ((w / s).round_ties_even() as i32 + z as i32).clamp(0, maxq) as u8
}

/// What GPTQ did to one weight: the stored parts and the reference's loss
/// `Σ (w − q)² / [H⁻¹]_jj² / 2`.
#[derive(Debug, Clone)]
pub struct GptqResult {
    /// Codes, scales, zero points and `g_idx`.
    pub parts: GptqParts,
    /// The reference's error measure.
    pub loss: f64,
    /// The dampening finally used (as a fraction of the mean diagonal).
    pub damp: f64,
}

/// Prepare `h` (`[n, n]`, consumed) for GPTQ with `spec`'s dampening and act-order
/// ([`hessian::prepare`]); `layer` names the weight(s) in the error.
pub fn prepare(h: Vec<f64>, n: usize, spec: &GptqSpec, layer: &str) -> Result<PreparedHessian> {
    hessian::prepare(h, n, spec.damp, spec.act_order, layer)
}

/// Rows per parallel work item.
const ROW_CHUNK: usize = 32;

/// Quantize the row-major `[rows, cols]` weight `w` with GPTQ, given its layer input's
/// prepared Hessian.
pub fn quantize(
    w: &[f32],
    rows: usize,
    cols: usize,
    hp: &PreparedHessian,
    spec: &GptqSpec,
) -> GptqResult {
    assert_eq!(w.len(), rows * cols);
    assert_eq!(hp.n, cols);
    let g = spec.group_size;
    let ngroups = cols / g;
    // Group of each processing position, and g_idx (group of each original column).
    let group_at: Vec<usize> = (0..cols)
        .map(|j| {
            if spec.static_groups {
                hp.perm[j] / g
            } else {
                j / g
            }
        })
        .collect();
    let mut g_idx = vec![0u32; cols];
    for j in 0..cols {
        g_idx[hp.perm[j]] = group_at[j] as u32;
    }
    let job = Job {
        w,
        cols,
        hp,
        spec,
        group_at: &group_at,
        keep_zeros: crate::sparsity::is_pruned(w),
    };
    let mut codes = vec![0u8; rows * cols];
    let mut scales = vec![0f32; rows * ngroups];
    let mut zeros = vec![0u8; rows * ngroups];
    let loss: f64 = codes
        .par_chunks_mut(ROW_CHUNK * cols)
        .zip(scales.par_chunks_mut(ROW_CHUNK * ngroups))
        .zip(zeros.par_chunks_mut(ROW_CHUNK * ngroups))
        .enumerate()
        .map(|(ci, ((codes, scales), zeros))| {
            let mut out = Grid {
                codes,
                scales,
                zeros,
            };
            job.rows(ci * ROW_CHUNK, &mut out)
        })
        .sum();
    GptqResult {
        parts: GptqParts {
            bits: spec.bits,
            group_size: g,
            rows,
            cols,
            codes,
            scales,
            zeros,
            g_idx,
        },
        loss,
        damp: hp.damp,
    }
}

/// One weight's GPTQ: the inputs every chunk of rows shares.
struct Job<'a> {
    w: &'a [f32],
    cols: usize,
    hp: &'a PreparedHessian,
    spec: &'a GptqSpec,
    /// Group of each processing position.
    group_at: &'a [usize],
    /// The weight is pruned: its exact zeros stay zero.
    keep_zeros: bool,
}

/// A chunk of rows' outputs: codes `[nr, cols]`, scales and zeros `[nr, ngroups]`.
struct Grid<'a> {
    codes: &'a mut [u8],
    scales: &'a mut [f32],
    zeros: &'a mut [u8],
}

impl Job<'_> {
    /// Quantize the rows `r0..` that `out` holds (Algorithm 1 over blocks of columns); returns
    /// their share of the loss.
    fn rows(&self, r0: usize, out: &mut Grid) -> f64 {
        let (cols, hp, spec) = (self.cols, self.hp, self.spec);
        let (g, perm) = (spec.group_size, &hp.perm);
        let ngroups = cols / g;
        let nr = out.codes.len() / cols;
        // This chunk's rows, permuted, dead columns zeroed.
        let mut wp = vec![0f32; nr * cols];
        for r in 0..nr {
            let src = &self.w[(r0 + r) * cols..(r0 + r + 1) * cols];
            for j in 0..cols {
                wp[r * cols + j] = if hp.dead[perm[j]] { 0.0 } else { src[perm[j]] };
            }
        }
        if spec.static_groups {
            for r in 0..nr {
                let src = &self.w[(r0 + r) * cols..(r0 + r + 1) * cols];
                for k in 0..ngroups {
                    let v: Vec<f32> = (k * g..(k + 1) * g)
                        .map(|c| if hp.dead[c] { 0.0 } else { src[c] })
                        .collect();
                    let (s, z) = spec.params(&v);
                    out.scales[r * ngroups + k] = s;
                    out.zeros[r * ngroups + k] = z;
                }
            }
        }
        // Dynamic groups take the reference's blocks as they are: a group's parameters depend
        // on where the blocks start. Static groups' parameters do not, and their blocks stay
        // rounded up to whole groups (only the float summation order of the lazy update
        // depends on it).
        let bs = if spec.static_groups {
            spec.block_size.div_ceil(g).max(1) * g
        } else {
            spec.block_size
        };
        let mut loss = 0f64;
        let mut err = vec![0f32; nr * bs];
        // GPTAQ: the block's rounded values, negated, for the lazy update through P.
        let mut neg_q = vec![0f32; if hp.p.is_some() { nr * bs } else { 0 }];
        let mut b0 = 0;
        while b0 < cols {
            let b1 = (b0 + bs).min(cols);
            for r in 0..nr {
                let row = &mut wp[r * cols..(r + 1) * cols];
                let e_row = &mut err[r * bs..r * bs + (b1 - b0)];
                let q_row = neg_q.get_mut(r * bs..r * bs + (b1 - b0));
                let orig = &self.w[(r0 + r) * cols..(r0 + r + 1) * cols];
                loss += self.block_row(row, (r, orig), (b0, b1), (e_row, q_row), out);
            }
            if b1 < cols {
                hessian::compensate(&mut wp, &err, nr, cols, bs, (b0, b1), &hp.u);
                if let Some(p) = &hp.p {
                    // The reference's `W[:, i2:] −= … − W1 · P[i1:i2, i2:]`, W1 now the block's
                    // rounded values.
                    hessian::compensate(&mut wp, &neg_q, nr, cols, bs, (b0, b1), p);
                }
            }
            b0 = b1;
        }
        loss
    }

    /// Quantize columns `b0..b1` of the permuted row `r` (`row`; `orig` as the input holds it,
    /// unpermuted), one column at a time, each rounding error (scaled by the factor's diagonal,
    /// kept in `e_row`) spread over the rest of the block; returns the row's loss on the block.
    fn block_row(
        &self,
        row: &mut [f32],
        (r, orig): (usize, &[f32]),
        (b0, b1): (usize, usize),
        (e_row, mut q_row): (&mut [f32], Option<&mut [f32]>),
        out: &mut Grid,
    ) -> f64 {
        let (cols, spec, u) = (self.cols, self.spec, &self.hp.u);
        let g = spec.group_size;
        let ngroups = cols / g;
        let maxq = spec.maxq();
        if !spec.static_groups {
            // gptq.py's `find_params(W[:, j:j + g])` for every group starting in the block
            // reads W, which holds the block as it was when the block began (the in-block
            // updates go to its copy W1) and the columns past the block before this block's
            // lazy update: the row as it is now.
            for j in (b0.next_multiple_of(g)..b1).step_by(g) {
                let (s, z) = spec.params(&row[j..j + g]);
                out.scales[r * ngroups + j / g] = s;
                out.zeros[r * ngroups + j / g] = z;
            }
        }
        let mut loss = 0f64;
        for j in b0..b1 {
            let k = self.group_at[j];
            let (s, z) = (out.scales[r * ngroups + k], out.zeros[r * ngroups + k]);
            let x = row[j];
            // In a pruned weight a 0 stays 0: code z, error compensated like any other
            // (llm-compressor's preserved sparsity mask).
            let c = if self.keep_zeros && orig[self.hp.perm[j]] == 0.0 {
                z
            } else {
                code(x, s, z, maxq)
            };
            out.codes[r * cols + self.hp.perm[j]] = c;
            let q = (c as i32 - z as i32) as f32 * s;
            // The rest of the block, now; the rest of the row after the block.
            let (e, l) = match (&self.hp.p, q_row.as_deref_mut()) {
                (Some(p), Some(qr)) => {
                    qr[j - b0] = -q;
                    hessian::compensate_column_asym(row, (u, p), cols, (j, b1), x, q)
                }
                _ => hessian::compensate_column(row, u, cols, (j, b1), x, q),
            };
            loss += l;
            e_row[j - b0] = e;
        }
        loss
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hessian::Hessian;

    fn lcg(seed: u64) -> impl FnMut() -> f32 {
        let mut s = seed;
        move || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        }
    }

    /// Output error ‖(W − Q) Xᵀ‖² of a quantized weight on inputs `x` [t, cols].
    fn out_err(w: &[f32], q: &[f32], x: &[f32], rows: usize, cols: usize) -> f64 {
        let t = x.len() / cols;
        let mut e = 0f64;
        for r in 0..rows {
            for i in 0..t {
                let d: f64 = (0..cols)
                    .map(|c| (w[r * cols + c] - q[r * cols + c]) as f64 * x[i * cols + c] as f64)
                    .sum();
                e += d * d;
            }
        }
        e
    }

    fn rtn(w: &[f32], rows: usize, cols: usize, spec: &GptqSpec) -> Vec<f32> {
        let g = spec.group_size;
        let mut out = vec![0f32; w.len()];
        for r in 0..rows {
            for k in 0..cols / g {
                let v = &w[r * cols + k * g..r * cols + (k + 1) * g];
                let (s, z) = spec.params(v);
                for (o, &x) in out[r * cols + k * g..].iter_mut().zip(v) {
                    *o = (code(x, s, z, spec.maxq()) as i32 - z as i32) as f32 * s;
                }
            }
        }
        out
    }

    /// `t` rows of `cols` inputs mixing 8 latent features, a few strong, plus noise.
    fn correlated(rnd: &mut impl FnMut() -> f32, t: usize, cols: usize) -> Vec<f32> {
        let base: Vec<f32> = (0..t * 8).map(|_| rnd()).collect();
        (0..t * cols)
            .map(|i| {
                let (ti, c) = (i / cols, i % cols);
                base[ti * 8 + c % 8] * (1.0 + (c % 5) as f32) + 0.1 * rnd()
            })
            .collect()
    }

    #[test]
    fn gptq_beats_round_to_nearest_on_correlated_inputs() {
        let (rows, cols, t) = (48, 128, 512);
        let mut rnd = lcg(1);
        let w: Vec<f32> = (0..rows * cols).map(|_| rnd()).collect();
        let x = correlated(&mut rnd, t, cols);
        let mut h = Hessian::new(cols, false);
        h.add(&x);
        for (sym, act_order, static_groups) in [
            (false, false, false),
            (true, false, false),
            (false, true, false),
            (false, true, true),
        ] {
            let spec = GptqSpec {
                bits: 3,
                group_size: 32,
                sym,
                act_order,
                static_groups,
                block_size: 64,
                ..Default::default()
            };
            let hp = prepare(h.matrix(), cols, &spec, "test").unwrap();
            let r = quantize(&w, rows, cols, &hp, &spec);
            let q = r.parts.dequantize();
            let e_gptq = out_err(&w, &q, &x, rows, cols);
            let e_rtn = out_err(&w, &rtn(&w, rows, cols, &spec), &x, rows, cols);
            assert!(
                e_gptq < 0.8 * e_rtn,
                "{spec:?}: GPTQ {e_gptq} vs RTN {e_rtn}"
            );
            // Codes and parameters agree with the grid: re-quantizing the output is stable.
            assert!(r.parts.codes.iter().all(|&c| (c as i32) <= spec.maxq()));
            if !act_order || static_groups {
                assert!(r
                    .parts
                    .g_idx
                    .iter()
                    .enumerate()
                    .all(|(c, &g)| g as usize == c / 32));
            }
        }
    }

    #[test]
    fn gptaq_fits_the_float_output_better_than_gptq_and_clip_search_lowers_the_error() {
        use crate::hessian::asym_testing::{asym_err, drifted};
        use crate::hessian::Cross;
        let (rows, cols, t) = (32, 128, 512);
        let mut rnd = lcg(3);
        let w: Vec<f32> = (0..rows * cols).map(|_| rnd()).collect();
        let x = correlated(&mut rnd, t, cols);
        // The compressed model's inputs: the float ones plus a drift correlated with them.
        let xq = drifted(&x, cols, &mut rnd);
        let mut h = Hessian::new(cols, true);
        h.add(&xq);
        let mut d = Cross::new(cols);
        d.add(&x, &xq);
        // The quantized layer on its own inputs against the float layer.
        let asym_err = |q: &[f32]| asym_err(&w, q, &x, &xq, cols);
        let spec = GptqSpec {
            bits: 3,
            group_size: 32,
            ..Default::default()
        };
        let hp = prepare(h.matrix(), cols, &spec, "t").unwrap();
        let e_gptq = asym_err(&quantize(&w, rows, cols, &hp, &spec).parts.dequantize());
        let hpa = hp.clone().with_asymmetry(&d.matrix(), 0.25);
        let e_gptaq = asym_err(&quantize(&w, rows, cols, &hpa, &spec).parts.dequantize());
        assert!(e_gptaq < 0.9 * e_gptq, "GPTAQ {e_gptaq} vs GPTQ {e_gptq}");
        // P = 0 without drift: GPTAQ is GPTQ.
        let zero = hp.clone().with_asymmetry(&vec![0.0; cols * cols], 0.25);
        assert!(zero.p.as_ref().unwrap().iter().all(|&v| v == 0.0));
        let (a, b) = (
            quantize(&w, rows, cols, &hp, &spec),
            quantize(&w, rows, cols, &zero, &spec),
        );
        assert_eq!(a.parts.codes, b.parts.codes);
        // The clipping search never increases a group's Σ|q − w|^2.4.
        let clip = GptqSpec {
            clip_search: true,
            ..spec
        };
        let pow_err = |sp: &GptqSpec, v: &[f32]| -> f64 {
            let (s, z) = sp.params(v);
            v.iter()
                .map(|&x| {
                    let q = (code(x, s, z, sp.maxq()) as i32 - z as i32) as f32 * s;
                    ((q - x).abs() as f64).powf(2.4)
                })
                .sum()
        };
        let mut better = 0;
        for g in w.chunks(32) {
            let (e0, e1) = (pow_err(&spec, g), pow_err(&clip, g));
            assert!(e1 <= e0 * (1.0 + 1e-9), "{e1} > {e0}");
            better += usize::from(e1 < e0);
        }
        assert!(better > 0, "the search never found a better range");
    }

    #[test]
    fn singular_hessian_is_dampened_and_dead_columns_zeroed() {
        let (rows, cols) = (4, 64);
        // Inputs that only ever use the first 8 features: rank 8, dead columns 8..64.
        let mut rnd = lcg(2);
        let x: Vec<f32> = (0..100 * cols)
            .map(|i| if i % cols < 8 { rnd() } else { 0.0 })
            .collect();
        let mut h = Hessian::new(cols, true);
        h.add(&x);
        let spec = GptqSpec::default();
        let hp = prepare(h.matrix(), cols, &spec, "t").unwrap();
        assert!(hp.dead[8..].iter().all(|&d| d) && !hp.dead[0]);
        let w: Vec<f32> = (0..rows * cols).map(|_| rnd()).collect();
        let r = quantize(&w, rows, cols, &hp, &spec);
        let q = r.parts.dequantize();
        for row in q.chunks(cols) {
            assert!(row[8..].iter().all(|&v| v == 0.0));
        }
    }

    #[test]
    fn a_matrix_that_is_not_positive_definite_names_the_layer() {
        let n = 4;
        let mut h = vec![0f64; n * n];
        for i in 0..n {
            for j in 0..n {
                h[i * n + j] = if i == j { 1.0 } else { -5.0 };
            }
        }
        let e = prepare(h, n, &GptqSpec::default(), "model.layers.3.mlp.down_proj").unwrap_err();
        let m = e.to_string();
        assert!(
            m.contains("model.layers.3.mlp.down_proj") && m.contains("positive definite"),
            "{m}"
        );
    }
}
