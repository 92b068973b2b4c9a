//! Sparsity patterns and the masks of one-shot pruning: which weights a method may zero, and the
//! two methods that only rank weights and zero the lowest without updating the rest —
//! magnitude pruning (|W| within each tensor) and Wanda (Sun et al. 2023, "A Simple and
//! Effective Pruning Approach for Large Language Models": |W_ij| · ‖X_j‖₂ within each output
//! row). SparseGPT, which also updates the weights it keeps, is [`crate::sparsegpt`].
//!
//! Ties are broken by position (the earlier weight is pruned first), as a stable sort does;
//! masks are `true` where a weight is pruned.

use crate::error::{MethodError, Result};

/// Which weights of a linear layer a pruning method may zero.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pattern {
    /// This fraction of the weights, anywhere: of the whole tensor for magnitude pruning, of
    /// each output row for Wanda, of each block of columns for SparseGPT (as their references).
    Unstructured(f64),
    /// `n` of every `m` consecutive weights along each row are zero (2:4, 4:8): SparseGPT's and
    /// llm-compressor's `prunen:prunem`, NVIDIA's sparse tensor cores' pattern at 2:4.
    NofM {
        /// Weights zeroed in each group.
        n: usize,
        /// Weights per group, along the input dimension.
        m: usize,
    },
}

impl Pattern {
    /// Parse `N:M` (`2:4`, `4:8`); `sparsity` is the unstructured fraction when `nm` is `None`.
    pub fn new(sparsity: f64, nm: Option<&str>) -> Result<Self> {
        let Some(s) = nm else {
            if !(sparsity > 0.0 && sparsity < 1.0) {
                return Err(MethodError::Options(format!(
                    "--sparsity {sparsity} must lie strictly between 0 and 1"
                )));
            }
            return Ok(Pattern::Unstructured(sparsity));
        };
        let bad = || {
            MethodError::Options(format!(
                "--pattern {s:?} is not N:M with 0 < N < M (2:4, 4:8: N of every M consecutive \
                 weights of a row are zero)"
            ))
        };
        let (n, m) = s.split_once(':').ok_or_else(bad)?;
        let (n, m): (usize, usize) = (
            n.trim().parse().map_err(|_| bad())?,
            m.trim().parse().map_err(|_| bad())?,
        );
        if n == 0 || n >= m {
            return Err(bad());
        }
        Ok(Pattern::NofM { n, m })
    }

    /// The fraction of weights zeroed.
    pub fn sparsity(&self) -> f64 {
        match *self {
            Pattern::Unstructured(s) => s,
            Pattern::NofM { n, m } => n as f64 / m as f64,
        }
    }

    /// The same kind of pattern at another sparsity (a layer's share under a non-uniform
    /// profile); an N:M pattern has only its own.
    pub fn with_sparsity(&self, s: f64) -> Self {
        match *self {
            Pattern::Unstructured(_) => Pattern::Unstructured(s),
            nm => nm,
        }
    }

    /// Short name for reports: `50%`, `2:4`.
    pub fn label(&self) -> String {
        match *self {
            Pattern::Unstructured(s) => format!("{}%", (s * 1000.0).round() / 10.0),
            Pattern::NofM { n, m } => format!("{n}:{m}"),
        }
    }

    /// Refuse weight `name` of `rows × cols` if the pattern cannot apply to it.
    pub fn validate(&self, name: &str, cols: usize) -> Result<()> {
        if let Pattern::NofM { n, m } = *self {
            if !cols.is_multiple_of(m) {
                return Err(MethodError::Options(format!(
                    "{name}: --pattern {n}:{m} needs rows whose length is a multiple of {m}; \
                     it has {cols} input features"
                )));
            }
        }
        Ok(())
    }
}

/// The mask zeroing the `k` lowest of `scores` (ties: the earlier first). O(len).
pub fn lowest(scores: &[f32], k: usize) -> Vec<bool> {
    let mut mask = vec![false; scores.len()];
    if k == 0 {
        return mask;
    }
    if k >= scores.len() {
        mask.fill(true);
        return mask;
    }
    let mut idx: Vec<u32> = (0..scores.len() as u32).collect();
    let key = |&i: &u32| (scores[i as usize], i);
    idx.select_nth_unstable_by(k - 1, |a, b| {
        let (sa, ia) = key(a);
        let (sb, ib) = key(b);
        sa.total_cmp(&sb).then(ia.cmp(&ib))
    });
    for &i in &idx[..k] {
        mask[i as usize] = true;
    }
    mask
}

/// Mark in `mask` the `n` lowest of each `m` consecutive `scores` (ties: the earlier first).
pub fn lowest_n_of_m(scores: &[f32], n: usize, m: usize, mask: &mut [bool]) {
    assert!(scores.len() == mask.len() && scores.len().is_multiple_of(m) && n < m);
    let mut order: Vec<usize> = Vec::with_capacity(m);
    for (s, k) in scores.chunks(m).zip(mask.chunks_mut(m)) {
        order.clear();
        order.extend(0..m);
        order.sort_by(|&a, &b| s[a].total_cmp(&s[b]).then(a.cmp(&b)));
        for &i in &order[..n] {
            k[i] = true;
        }
    }
}

/// Zero `w`'s masked entries; returns how many were masked.
pub fn apply(w: &mut [f32], mask: &[bool]) -> usize {
    let mut n = 0;
    for (v, &m) in w.iter_mut().zip(mask) {
        if m {
            *v = 0.0;
            n += 1;
        }
    }
    n
}

/// Magnitude pruning of the row-major `[rows, cols]` weight `w`: the lowest |W| of the whole
/// tensor (unstructured: ⌊rows·cols·s⌋ of them) or of each N:M group. Returns the mask.
pub fn magnitude(w: &[f32], cols: usize, pattern: Pattern) -> Vec<bool> {
    let scores: Vec<f32> = w.iter().map(|v| v.abs()).collect();
    match pattern {
        Pattern::Unstructured(s) => lowest(&scores, (w.len() as f64 * s) as usize),
        Pattern::NofM { n, m } => {
            let mut mask = vec![false; w.len()];
            for (sr, mr) in scores.chunks(cols).zip(mask.chunks_mut(cols)) {
                lowest_n_of_m(sr, n, m, mr);
            }
            mask
        }
    }
}

/// Wanda's mask of the row-major `[rows, cols]` weight `w`: scores `S_ij = |W_ij| · ‖X_j‖₂`
/// from `x_sq[j] = Σ_t x_tj²` over the calibration tokens, compared within each output row —
/// ⌊cols·s⌋ of every row (the paper's per-output comparison group) or N of every M.
pub fn wanda(w: &[f32], cols: usize, x_sq: &[f64], pattern: Pattern) -> Vec<bool> {
    assert_eq!(x_sq.len(), cols);
    let scores = wanda_scores(w, x_sq);
    let mut mask = vec![false; w.len()];
    for (sr, mr) in scores.chunks(cols).zip(mask.chunks_mut(cols)) {
        match pattern {
            Pattern::Unstructured(s) => mr.copy_from_slice(&lowest(sr, (cols as f64 * s) as usize)),
            Pattern::NofM { n, m } => lowest_n_of_m(sr, n, m, mr),
        }
    }
    mask
}

/// Wanda's scores `|W_ij| · ‖X_j‖₂` of the row-major weight `w` (rows of `x_sq.len()`), from
/// `x_sq[j] = Σ_t x_tj²` (also OWL's outlier statistic).
pub fn wanda_scores(w: &[f32], x_sq: &[f64]) -> Vec<f32> {
    let norm: Vec<f32> = x_sq.iter().map(|&v| v.sqrt() as f32).collect();
    w.chunks(norm.len())
        .flat_map(|r| r.iter().zip(&norm).map(|(v, n)| v.abs() * n))
        .collect()
}

/// The share of exact zeros from which a weight counts as pruned, so quantizers keep its zeros
/// (GPTQ, HQQ): far above what a dense float weight holds (SmolLM2's Q4_1 grid: 0.03 %).
pub const PRUNED_MIN: f64 = 0.1;

/// Whether `w` is a pruned weight ([`PRUNED_MIN`] or more of it exactly zero).
pub fn is_pruned(w: &[f32]) -> bool {
    !w.is_empty() && zeros(w) as f64 >= PRUNED_MIN * w.len() as f64
}

/// The number of exact zeros in `w`.
pub fn zeros(w: &[f32]) -> usize {
    w.iter().filter(|&&v| v == 0.0).count()
}

/// Whether every group of `m` consecutive weights of each row holds at least `n` zeros.
pub fn is_n_of_m(w: &[f32], cols: usize, n: usize, m: usize) -> bool {
    cols.is_multiple_of(m)
        && w.chunks(cols)
            .flat_map(|r| r.chunks(m))
            .all(|g| zeros(g) >= n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_parse_and_refuse() {
        assert_eq!(
            Pattern::new(0.5, Some("2:4")).unwrap(),
            Pattern::NofM { n: 2, m: 4 }
        );
        assert_eq!(Pattern::new(0.3, None).unwrap(), Pattern::Unstructured(0.3));
        for (s, nm) in [
            (0.0, None),
            (1.0, None),
            (-0.1, None),
            (f64::NAN, None),
            (0.5, Some("4:4")),
            (0.5, Some("5:4")),
            (0.5, Some("0:4")),
            (0.5, Some("2-4")),
            (0.5, Some("a:b")),
        ] {
            assert!(Pattern::new(s, nm).is_err(), "{s} {nm:?}");
        }
        let e = Pattern::NofM { n: 2, m: 4 }
            .validate("l.w", 10)
            .unwrap_err();
        assert!(e.to_string().contains("l.w") && e.to_string().contains("multiple of 4"));
    }

    #[test]
    fn lowest_breaks_ties_by_position_and_counts_exactly() {
        let s = [3.0, 1.0, 1.0, 0.5, 2.0, 1.0];
        let m = lowest(&s, 3);
        assert_eq!(m, [false, true, true, true, false, false]);
        assert_eq!(lowest(&s, 0), [false; 6]);
        assert_eq!(lowest(&s, 6), [true; 6]);
    }

    #[test]
    fn magnitude_and_wanda_masks() {
        // 2 × 4; magnitude compares the whole tensor, Wanda each row.
        let w = [0.1, -0.9, 0.2, 0.3, 5.0, 4.0, -3.0, 2.0];
        let m = magnitude(&w, 4, Pattern::Unstructured(0.5));
        assert_eq!(m, [true, true, true, true, false, false, false, false]);
        let m = magnitude(&w, 4, Pattern::NofM { n: 2, m: 4 });
        assert_eq!(m, [true, false, true, false, false, false, true, true]);
        // A column with a large input norm protects its small weights.
        let x_sq = [10000.0, 1.0, 1.0, 1.0];
        let m = wanda(&w, 4, &x_sq, Pattern::Unstructured(0.5));
        assert_eq!(m, [false, false, true, true, false, false, true, true]);
        let mut v = w;
        assert_eq!(apply(&mut v, &m), 4);
        assert!(is_n_of_m(&v, 4, 2, 4));
        assert!(!is_n_of_m(&w, 4, 2, 4));
    }
}
