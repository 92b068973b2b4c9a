//! SparseGPT (Frantar & Alistarh 2023, "SparseGPT: Massive Language Models Can Be Accurately
//! Pruned in One-Shot"): prune a linear layer's weight column by column, each pruned weight's
//! error spread over the columns not yet visited through the inverse layer Hessian — GPTQ's
//! machinery ([`crate::hessian`]: the Hessian `2XXᵀ`, dampening, the upper Cholesky factor of
//! `H⁻¹`, the lazy block update) with a mask in place of rounding.
//!
//! As the reference `fasterprune` (IST-DASLab/sparsegpt `sparsegpt.py`, and llm-compressor's
//! `sparsify_weight`, which has the same loop):
//! - columns in blocks of `block_size` (128); for an unstructured sparsity `p` the mask of a
//!   block is chosen over the whole block (all rows) at its start: the weights whose
//!   `w² / [H⁻¹]_jj²` is at most the ⌊p·rows·cols⌋-th smallest (so ties and one more weight than
//!   the fraction, as the reference's `tmp <= thresh`);
//! - for N:M, at every M-th column of a block the N lowest `w² / [H⁻¹]_jj²` of the next M
//!   columns of each row, from the weights as updated so far;
//! - each column `j`: `q = 0` where masked, `w` elsewhere; `err = (w − q) / U_jj`; the rest of
//!   the block `−= err · U[j, j+1..]`; after the block, the rest of the row `−= Err · U[block,
//!   rest]`; loss `Σ (w − q)² / U_jj² / 2`.
//!
//! Joint sparsification and quantization (the paper's §3.5, the reference's `quantizer`): the
//! kept weights are rounded on GPTQ's grid (groups of `group_size` columns, each group's scale
//! and zero point from the row as it stands when its first column is reached, the weights known
//! to be pruned counted as 0), the pruned ones get the zero point's code, exactly 0.
//!
//! With GPTAQ's asymmetric term in the prepared Hessian ([`PreparedHessian::with_asymmetry`],
//! Li et al. 2025, "GPTAQ: Efficient Finetuning-Free Quantization for Asymmetric Calibration")
//! the pruning fits the float model's output rather than the layer's own (already pruned)
//! input: each column's step also moves the rest of its row by `+w_j·P[j, j+1..]` and the lazy
//! update adds `Q·P[block, rest]`, Q the block's pruned values — GPTAQ's `fasterquant` loop
//! with the mask in place of rounding. The mask's saliency stays SparseGPT's.
//!
//! Rows are independent given the mask, so they go in parallel chunks; the unstructured mask
//! of each block needs every row's scores first, one synchronisation per block.

use rayon::prelude::*;
use shrink_formats::gptq_layout::GptqParts;

use crate::gptq::{self, GptqSpec};
use crate::hessian::{self, PreparedHessian};
use crate::sparsity::{self, Pattern};

/// SparseGPT's parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SparseGptSpec {
    /// What to prune.
    pub pattern: Pattern,
    /// Columns per block: the unstructured mask's selection group and the lazy update's width
    /// (default 128; rounded up to a multiple of M for N:M).
    pub block_size: usize,
    /// Dampening as a fraction of the mean Hessian diagonal (default 0.01).
    pub damp: f64,
    /// Quantize the kept weights jointly on this GPTQ grid (bits, group size, symmetry; its
    /// act-order is not used).
    pub quant: Option<GptqSpec>,
}

impl SparseGptSpec {
    /// SparseGPT with `pattern` and the reference's defaults.
    pub fn new(pattern: Pattern) -> Self {
        SparseGptSpec {
            pattern,
            block_size: 128,
            damp: 0.01,
            quant: None,
        }
    }
}

/// What SparseGPT did to one weight.
#[derive(Debug, Clone)]
pub struct SparseGptResult {
    /// The pruned (and, jointly, dequantized) weight, row-major `[rows, cols]`.
    pub weight: Vec<f32>,
    /// The mask, `true` where pruned.
    pub mask: Vec<bool>,
    /// With joint quantization, the codes and grids (GPTQ layout, `g_idx` in column order).
    pub parts: Option<GptqParts>,
    /// The reference's loss `Σ (w − q)² / U_jj² / 2`.
    pub loss: f64,
}

/// Rows per parallel work item.
const ROW_CHUNK: usize = 32;

/// Prune the row-major `[rows, cols]` weight `w` with SparseGPT given its layer input's
/// prepared Hessian (prepared without act-order).
pub fn prune(
    w: &[f32],
    rows: usize,
    cols: usize,
    hp: &PreparedHessian,
    spec: &SparseGptSpec,
) -> SparseGptResult {
    assert_eq!(w.len(), rows * cols);
    assert_eq!(hp.n, cols);
    assert!(
        hp.perm.iter().enumerate().all(|(i, &p)| i == p),
        "SparseGPT visits the columns in order"
    );
    let bs = match spec.pattern {
        Pattern::NofM { m, .. } => spec.block_size.div_ceil(m).max(1) * m,
        Pattern::Unstructured(_) => spec.block_size.max(1),
    };
    let ng = spec.quant.map_or(0, |q| cols / q.group_size);
    let mut weight: Vec<f32> = w
        .chunks(cols)
        .flat_map(|r| {
            r.iter()
                .zip(&hp.dead)
                .map(|(&v, &d)| if d { 0.0 } else { v })
        })
        .collect();
    let mut mask = vec![false; rows * cols];
    let (mut codes, mut scales, mut zeros) = match spec.quant {
        Some(_) => (
            vec![0u8; rows * cols],
            vec![0f32; rows * ng],
            vec![0u8; rows * ng],
        ),
        None => (Vec::new(), Vec::new(), Vec::new()),
    };
    let job = Job {
        cols,
        bs,
        u: &hp.u,
        p: hp.p.as_deref(),
        spec,
    };
    let mut chunks = job.split(&mut weight, &mut mask, &mut codes, &mut scales, &mut zeros);
    let mut b0 = 0;
    while b0 < cols {
        let b1 = (b0 + bs).min(cols);
        let thresh = match spec.pattern {
            Pattern::Unstructured(p) => job.threshold(&chunks, (b0, b1), p),
            Pattern::NofM { .. } => None,
        };
        chunks
            .par_iter_mut()
            .for_each(|c| job.block(c, (b0, b1), thresh));
        b0 = b1;
    }
    let loss = chunks.iter().map(|c| c.loss).sum();
    drop(chunks);
    let parts = spec.quant.map(|q| GptqParts {
        bits: q.bits,
        group_size: q.group_size,
        rows,
        cols,
        codes,
        scales,
        zeros,
        g_idx: (0..cols).map(|c| (c / q.group_size) as u32).collect(),
    });
    SparseGptResult {
        weight,
        mask,
        parts,
        loss,
    }
}

/// One weight's SparseGPT: what every chunk of rows shares.
struct Job<'a> {
    cols: usize,
    bs: usize,
    u: &'a [f32],
    /// GPTAQ's asymmetric term, if any.
    p: Option<&'a [f32]>,
    spec: &'a SparseGptSpec,
}

/// A chunk of rows: weights and mask `[nr, cols]`, with joint quantization codes `[nr, cols]`
/// and scales/zeros `[nr, groups]`; the block's scaled errors `[nr, bs]` (and, with GPTAQ, its
/// pruned values negated); the loss so far.
struct Rows<'a> {
    w: &'a mut [f32],
    mask: &'a mut [bool],
    codes: &'a mut [u8],
    scales: &'a mut [f32],
    zeros: &'a mut [u8],
    err: Vec<f32>,
    neg_q: Vec<f32>,
    loss: f64,
}

impl Job<'_> {
    /// The buffers cut into chunks of [`ROW_CHUNK`] rows.
    fn split<'b>(
        &self,
        w: &'b mut [f32],
        mask: &'b mut [bool],
        codes: &'b mut [u8],
        scales: &'b mut [f32],
        zeros: &'b mut [u8],
    ) -> Vec<Rows<'b>> {
        let cols = self.cols;
        let ng = self.spec.quant.map_or(0, |q| cols / q.group_size);
        let rows = w.len() / cols;
        let (mut w, mut mask, mut codes, mut scales, mut zeros) = (w, mask, codes, scales, zeros);
        let mut out = Vec::new();
        for r0 in (0..rows).step_by(ROW_CHUNK) {
            let nr = ROW_CHUNK.min(rows - r0);
            let q = if self.spec.quant.is_some() { nr } else { 0 };
            let (a, rest) = std::mem::take(&mut w).split_at_mut(nr * cols);
            w = rest;
            let (b, rest) = std::mem::take(&mut mask).split_at_mut(nr * cols);
            mask = rest;
            let (c, rest) = std::mem::take(&mut codes).split_at_mut(q * cols);
            codes = rest;
            let (d, rest) = std::mem::take(&mut scales).split_at_mut(q * ng);
            scales = rest;
            let (e, rest) = std::mem::take(&mut zeros).split_at_mut(q * ng);
            zeros = rest;
            out.push(Rows {
                w: a,
                mask: b,
                codes: c,
                scales: d,
                zeros: e,
                err: vec![0f32; nr * self.bs],
                neg_q: vec![0f32; if self.p.is_some() { nr * self.bs } else { 0 }],
                loss: 0.0,
            });
        }
        out
    }

    /// SparseGPT's saliency `w² / U_jj²` of weight `x` in column `j`.
    #[inline]
    fn score(&self, x: f32, j: usize) -> f32 {
        let d = self.u[j * self.cols + j];
        x * x / (d * d)
    }

    /// The unstructured mask's threshold for columns `b0..b1`: the ⌊p·n⌋-th smallest score of
    /// the block's `n` weights, over every row (`None`: nothing to prune).
    fn threshold(&self, chunks: &[Rows], (b0, b1): (usize, usize), p: f64) -> Option<f32> {
        let cols = self.cols;
        let mut s: Vec<f32> = chunks
            .par_iter()
            .flat_map_iter(|c| {
                c.w.chunks(cols)
                    .flat_map(move |row| (b0..b1).map(move |j| self.score(row[j], j)))
            })
            .collect();
        let k = (s.len() as f64 * p) as usize;
        if k >= s.len() {
            return None;
        }
        let (_, t, _) = s.select_nth_unstable_by(k, f32::total_cmp);
        Some(*t)
    }

    /// Prune (and quantize) columns `b0..b1` of the chunk's rows, then update the columns after
    /// the block.
    fn block(&self, c: &mut Rows, (b0, b1): (usize, usize), thresh: Option<f32>) {
        let cols = self.cols;
        let nr = c.w.len() / cols;
        for r in 0..nr {
            let row = &mut c.w[r * cols..(r + 1) * cols];
            let mrow = &mut c.mask[r * cols..(r + 1) * cols];
            if let Some(t) = thresh {
                for j in b0..b1 {
                    mrow[j] = self.score(row[j], j) <= t;
                }
            }
            let e_row = &mut c.err[r * self.bs..r * self.bs + (b1 - b0)];
            let q_row = c.neg_q.get_mut(r * self.bs..r * self.bs + (b1 - b0));
            let (codes, grid) = match self.spec.quant {
                Some(q) => {
                    let ng = cols / q.group_size;
                    (
                        Some(&mut c.codes[r * cols..(r + 1) * cols]),
                        Some((
                            q,
                            &mut c.scales[r * ng..(r + 1) * ng],
                            &mut c.zeros[r * ng..(r + 1) * ng],
                        )),
                    )
                }
                None => (None, None),
            };
            c.loss += self.block_row(row, mrow, (e_row, q_row), (b0, b1), codes, grid);
        }
        if b1 < cols {
            hessian::compensate(c.w, &c.err, nr, cols, self.bs, (b0, b1), self.u);
            if let Some(p) = self.p {
                // GPTAQ's `W[:, i2:] −= … − W1 · P[i1:i2, i2:]`, W1 the block's pruned values.
                hessian::compensate(c.w, &c.neg_q, nr, cols, self.bs, (b0, b1), p);
            }
        }
    }

    /// Columns `b0..b1` of one row: choose its N:M mask as the columns are reached, zero (or
    /// round) each, spread the error over the rest of the block. Returns the row's loss.
    fn block_row(
        &self,
        row: &mut [f32],
        mrow: &mut [bool],
        (e_row, mut q_row): (&mut [f32], Option<&mut [f32]>),
        (b0, b1): (usize, usize),
        mut codes: Option<&mut [u8]>,
        mut grid: Option<(GptqSpec, &mut [f32], &mut [u8])>,
    ) -> f64 {
        let cols = self.cols;
        let mut loss = 0f64;
        for j in b0..b1 {
            if let Pattern::NofM { n, m } = self.spec.pattern {
                if (j - b0).is_multiple_of(m) {
                    let s: Vec<f32> = (j..j + m).map(|i| self.score(row[i], i)).collect();
                    sparsity::lowest_n_of_m(&s, n, m, &mut mrow[j..j + m]);
                }
            }
            let x = row[j];
            let mut q = if mrow[j] { 0.0 } else { x };
            if let (Some(codes), Some((spec, scales, zeros))) = (codes.as_deref_mut(), &mut grid) {
                let g = spec.group_size;
                if j.is_multiple_of(g) {
                    let v: Vec<f32> = (j..j + g)
                        .map(|i| if mrow[i] { 0.0 } else { row[i] })
                        .collect();
                    (scales[j / g], zeros[j / g]) = spec.params(&v);
                }
                let (s, z) = (scales[j / g], zeros[j / g]);
                let c = if mrow[j] {
                    z
                } else {
                    gptq::code(x, s, z, spec.maxq())
                };
                codes[j] = c;
                q = (c as i32 - z as i32) as f32 * s;
            }
            let (e, l) = match (self.p, q_row.as_deref_mut()) {
                (Some(p), Some(qr)) => {
                    qr[j - b0] = -q;
                    hessian::compensate_column_asym(row, (self.u, p), cols, (j, b1), x, q)
                }
                _ => hessian::compensate_column(row, self.u, cols, (j, b1), x, q),
            };
            loss += l;
            e_row[j - b0] = e;
            row[j] = q;
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

    /// ‖(W − Q) Xᵀ‖² on inputs `x` [t, cols].
    fn out_err(w: &[f32], q: &[f32], x: &[f32], cols: usize) -> f64 {
        let t = x.len() / cols;
        let mut e = 0f64;
        for (wr, qr) in w.chunks(cols).zip(q.chunks(cols)) {
            for i in 0..t {
                let d: f64 = (0..cols)
                    .map(|c| (wr[c] - qr[c]) as f64 * x[i * cols + c] as f64)
                    .sum();
                e += d * d;
            }
        }
        e
    }

    fn problem(rows: usize, cols: usize) -> (Vec<f32>, Vec<f32>, PreparedHessian) {
        let t = 512;
        let mut rnd = lcg(7);
        let w: Vec<f32> = (0..rows * cols).map(|_| rnd()).collect();
        let base: Vec<f32> = (0..t * 8).map(|_| rnd()).collect();
        let x: Vec<f32> = (0..t * cols)
            .map(|i| {
                let (ti, c) = (i / cols, i % cols);
                base[ti * 8 + c % 8] * (1.0 + (c % 5) as f32) + 0.1 * rnd()
            })
            .collect();
        let mut h = Hessian::new(cols, true);
        h.add(&x);
        let hp = hessian::prepare(h.matrix(), cols, 0.01, false, "t").unwrap();
        (w, x, hp)
    }

    #[test]
    fn sparsegpt_beats_wanda_and_magnitude_at_the_same_pattern() {
        let (rows, cols) = (40, 96);
        let (w, x, hp) = problem(rows, cols);
        let mut x_sq = vec![0f64; cols];
        for (i, v) in x.iter().enumerate() {
            x_sq[i % cols] += (*v as f64).powi(2);
        }
        for pattern in [Pattern::Unstructured(0.5), Pattern::NofM { n: 2, m: 4 }] {
            let spec = SparseGptSpec {
                block_size: 32,
                ..SparseGptSpec::new(pattern)
            };
            let r = prune(&w, rows, cols, &hp, &spec);
            for (v, &m) in r.weight.iter().zip(&r.mask) {
                assert!(!m || *v == 0.0);
            }
            let pruned = r.mask.iter().filter(|&&m| m).count();
            match pattern {
                // ⌊0.5·40·32⌋ + 1 per block of 32 columns (the reference's `<=`), 3 blocks.
                Pattern::Unstructured(_) => assert_eq!(pruned, 3 * 641),
                Pattern::NofM { n, m } => {
                    assert_eq!(pruned, rows * cols / 2);
                    assert!(sparsity::is_n_of_m(&r.weight, cols, n, m));
                }
            }
            let mut wa = w.clone();
            sparsity::apply(&mut wa, &sparsity::wanda(&w, cols, &x_sq, pattern));
            let mut mg = w.clone();
            sparsity::apply(&mut mg, &sparsity::magnitude(&w, cols, pattern));
            let (e_s, e_w, e_m) = (
                out_err(&w, &r.weight, &x, cols),
                out_err(&w, &wa, &x, cols),
                out_err(&w, &mg, &x, cols),
            );
            assert!(
                e_s < 0.8 * e_w && e_w < e_m,
                "{pattern:?}: {e_s} {e_w} {e_m}"
            );
        }
    }

    #[test]
    fn the_asymmetric_term_fits_the_float_output_and_vanishes_without_drift() {
        use crate::hessian::asym_testing::{asym_err, drifted};
        use crate::hessian::Cross;
        let (rows, cols) = (32, 96);
        let (w, x, _) = problem(rows, cols);
        let mut rnd = lcg(11);
        // The pruned model's inputs: the float ones plus a drift correlated with them.
        let xq = drifted(&x, cols, &mut rnd);
        let mut h = Hessian::new(cols, true);
        h.add(&xq);
        let mut d = Cross::new(cols);
        d.add(&x, &xq);
        let hp = hessian::prepare(h.matrix(), cols, 0.01, false, "t").unwrap();
        // The pruned layer on its own inputs against the float layer.
        let asym_err = |q: &[f32]| asym_err(&w, q, &x, &xq, cols);
        for pattern in [Pattern::Unstructured(0.5), Pattern::NofM { n: 2, m: 4 }] {
            let spec = SparseGptSpec {
                block_size: 32,
                ..SparseGptSpec::new(pattern)
            };
            let plain = prune(&w, rows, cols, &hp, &spec);
            let hpa = hp.clone().with_asymmetry(&d.matrix(), 0.25);
            let asym = prune(&w, rows, cols, &hpa, &spec);
            let (e_p, e_a) = (asym_err(&plain.weight), asym_err(&asym.weight));
            assert!(
                e_a < 0.9 * e_p,
                "{pattern:?}: asymmetric {e_a} vs plain {e_p}"
            );
            for (v, &m) in asym.weight.iter().zip(&asym.mask) {
                assert!(!m || *v == 0.0);
            }
            // With D = 0 the term is 0 and the result is plain SparseGPT's, bit for bit.
            let zero = hp.clone().with_asymmetry(&vec![0.0; cols * cols], 0.25);
            let z = prune(&w, rows, cols, &zero, &spec);
            assert_eq!(z.mask, plain.mask);
            assert_eq!(z.weight, plain.weight);
        }
    }

    #[test]
    fn joint_quantization_keeps_the_mask_on_the_grid() {
        let (rows, cols) = (32, 64);
        let (w, _, hp) = problem(rows, cols);
        let q = GptqSpec {
            bits: 4,
            group_size: 32,
            ..Default::default()
        };
        let spec = SparseGptSpec {
            quant: Some(q),
            ..SparseGptSpec::new(Pattern::NofM { n: 2, m: 4 })
        };
        let r = prune(&w, rows, cols, &hp, &spec);
        let parts = r.parts.unwrap();
        assert_eq!(parts.dequantize(), r.weight);
        assert!(sparsity::is_n_of_m(&r.weight, cols, 2, 4));
    }
}
