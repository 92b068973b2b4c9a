//! AdamW (Loshchilov & Hutter 2019, "Decoupled Weight Decay Regularization", Algorithm 2) with
//! linear warmup and cosine decay, and clipping by the global gradient norm; and the Cayley step
//! that keeps a trained matrix orthogonal ([`cayley_step`]).
//!
//! Hand-written rather than candle-nn's `AdamW`, because training needs the moments saved and
//! restored for `--resume` and the update to run on the summed, clipped gradients of
//! [`crate::grad::Grads`]; it is twenty lines.

use rayon::prelude::*;

use crate::error::Result;
use crate::grad::Grads;
use crate::params::Params;

/// Optimiser settings.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamW {
    /// Peak learning rate.
    pub lr: f64,
    /// β₁.
    pub beta1: f64,
    /// β₂.
    pub beta2: f64,
    /// ε.
    pub eps: f64,
    /// Decoupled weight decay, applied to matrices only (not norms, biases).
    pub weight_decay: f64,
}

impl Default for AdamW {
    fn default() -> Self {
        AdamW {
            lr: 1e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// Learning-rate schedule: linear warmup over `warmup` steps to the peak, then cosine decay
/// to `min_ratio` × peak at `total`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Schedule {
    /// Warmup steps.
    pub warmup: usize,
    /// Total steps.
    pub total: usize,
    /// Final learning rate as a share of the peak.
    pub min_ratio: f64,
}

impl Schedule {
    /// The multiplier of the peak rate at 1-based `step`.
    pub fn factor(&self, step: usize) -> f64 {
        if step <= self.warmup && self.warmup > 0 {
            return step as f64 / self.warmup as f64;
        }
        let span = self.total.saturating_sub(self.warmup).max(1) as f64;
        let progress = ((step - self.warmup) as f64 / span).min(1.0);
        self.min_ratio
            + (1.0 - self.min_ratio) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

/// The optimiser's state: first and second moments per weight, and the steps taken.
#[derive(Debug, Clone)]
pub struct OptimState {
    /// Steps taken.
    pub step: usize,
    /// First moments, flat per weight.
    pub m: Vec<Vec<f32>>,
    /// Second moments, flat per weight.
    pub v: Vec<Vec<f32>>,
}

impl OptimState {
    /// Zero moments for `params`.
    pub fn new(params: &Params) -> Self {
        let sizes: Vec<usize> = params.vars().iter().map(|v| v.elem_count()).collect();
        OptimState {
            step: 0,
            m: sizes.iter().map(|&n| vec![0.0; n]).collect(),
            v: sizes.iter().map(|&n| vec![0.0; n]).collect(),
        }
    }
}

/// Scale `grads` so their global norm is at most `max_norm` (no clipping when `max_norm` ≤ 0);
/// returns the norm before clipping.
pub fn clip(grads: &mut Grads, max_norm: f64) -> f64 {
    let n = grads.norm();
    if max_norm > 0.0 && n > max_norm {
        grads.scale((max_norm / (n + 1e-6)) as f32);
    }
    n
}

/// One AdamW update of `params` with `grads` at learning rate `lr`.
pub fn step(
    params: &mut Params,
    grads: &Grads,
    state: &mut OptimState,
    opt: &AdamW,
    lr: f64,
) -> Result<()> {
    state.step += 1;
    for i in 0..params.len() {
        let Some(g) = &grads.sums[i] else { continue };
        let decay = if params.vars()[i].rank() >= 2 {
            lr * opt.weight_decay
        } else {
            0.0
        };
        let moments = (&mut state.m[i][..], &mut state.v[i][..]);
        let w = params.with_values(i, |w| {
            adamw(w, moments, (g, 1.0), state.step, opt, (lr, decay))
        })?;
        params.replace(i, w)?;
    }
    Ok(())
}

/// The AdamW update of one tensor `w` at 1-based `step`: its moments `(m, v)` updated in place
/// with the gradient `g` × `g_scale`, the new values returned (decay: `lr` × weight decay, or 0).
pub fn adamw(
    w: &[f32],
    (m, v): (&mut [f32], &mut [f32]),
    (g, g_scale): (&[f32], f32),
    step: usize,
    opt: &AdamW,
    (lr, decay): (f64, f64),
) -> Vec<f32> {
    let t = step as i32;
    let (b1, b2) = (opt.beta1, opt.beta2);
    let bc1 = 1.0 - b1.powi(t);
    let bc2 = 1.0 - b2.powi(t);
    let mut out = vec![0f32; w.len()];
    out.par_iter_mut()
        .zip(w.par_iter())
        .zip(m.par_iter_mut())
        .zip(v.par_iter_mut())
        .zip(g.par_iter())
        .for_each(|((((o, &w), m), v), &g)| {
            let g = (g * g_scale) as f64;
            let mn = b1 * *m as f64 + (1.0 - b1) * g;
            let vn = b2 * *v as f64 + (1.0 - b2) * g * g;
            *m = mn as f32;
            *v = vn as f32;
            let upd = (mn / bc1) / ((vn / bc2).sqrt() + opt.eps);
            *o = (w as f64 * (1.0 - decay) - lr * upd) as f32;
        });
    out
}

/// One step of gradient descent on the orthogonal group, by the Cayley transform (Wen & Yin
/// 2013, "A feasible method for optimization with orthogonality constraints", eq. 7; the
/// Cayley SGD of Li, Li & Todorovic 2020 that SpinQuant, Liu et al. 2024 §3.2, trains its
/// rotations with). With `x` an n × n orthogonal matrix and `g` = dL/dX (row-major),
/// `A = G Xᵀ − X Gᵀ` is skew-symmetric and `X ← (I + α/2 A)⁻¹ (I − α/2 A) X` is orthogonal
/// again, moving along −(G − X Gᵀ X), the Riemannian gradient. The step is
/// `α = min(lr, 1/‖A‖₁)`, the bound of SpinQuant's optimiser. The system is solved exactly
/// (Gaussian elimination, partial pivoting) rather than by the reference's fixed-point
/// iteration: at n = 576 that is a fraction of a training step, and orthogonality then holds to
/// rounding however many steps are taken. Returns α.
pub fn cayley_step(x: &mut [f64], g: &[f64], n: usize, lr: f64) -> f64 {
    assert_eq!(x.len(), n * n);
    assert_eq!(g.len(), n * n);
    // A = G Xᵀ − X Gᵀ; with P = G Xᵀ, A = P − Pᵀ.
    let p: Vec<f64> = (0..n * n)
        .into_par_iter()
        .map(|ij| {
            let (i, j) = (ij / n, ij % n);
            let (gi, xj) = (&g[i * n..(i + 1) * n], &x[j * n..(j + 1) * n]);
            gi.iter().zip(xj).map(|(a, b)| a * b).sum()
        })
        .collect();
    let a: Vec<f64> = (0..n * n)
        .map(|ij| {
            let (i, j) = (ij / n, ij % n);
            p[i * n + j] - p[j * n + i]
        })
        .collect();
    let norm1 = (0..n)
        .map(|j| (0..n).map(|i| a[i * n + j].abs()).sum::<f64>())
        .fold(0.0, f64::max);
    let alpha = lr.min(1.0 / (norm1 + 1e-8));
    let h = alpha / 2.0;
    // (I + hA) Y = (I − hA) X, as one augmented system [I + hA | (I − hA) X].
    let w = 2 * n;
    let mut m = vec![0f64; n * w];
    m.par_chunks_mut(w).enumerate().for_each(|(i, row)| {
        for k in 0..n {
            row[k] = if i == k { 1.0 } else { 0.0 } + h * a[i * n + k];
        }
        for c in 0..n {
            let mut s = x[i * n + c];
            for k in 0..n {
                s -= h * a[i * n + k] * x[k * n + c];
            }
            row[n + c] = s;
        }
    });
    for col in 0..n {
        let piv = (col..n)
            .max_by(|&r, &q| m[r * w + col].abs().total_cmp(&m[q * w + col].abs()))
            .expect("rows remain");
        if piv != col {
            for c in 0..w {
                m.swap(piv * w + c, col * w + c);
            }
        }
        let (top, rest) = m.split_at_mut((col + 1) * w);
        let prow = &top[col * w..];
        let d = prow[col];
        rest.par_chunks_mut(w).for_each(|row| {
            let f = row[col] / d;
            if f != 0.0 {
                for c in col..w {
                    row[c] -= f * prow[c];
                }
            }
        });
    }
    for i in (0..n).rev() {
        for c in 0..n {
            let mut s = m[i * w + n + c];
            for k in i + 1..n {
                s -= m[i * w + k] * x[k * n + c];
            }
            x[i * n + c] = s / m[i * w + i];
        }
    }
    alpha
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ‖XᵀX − I‖_max.
    fn off_orthogonal(x: &[f64], n: usize) -> f64 {
        let mut worst = 0f64;
        for i in 0..n {
            for j in 0..n {
                let d: f64 = (0..n).map(|k| x[k * n + i] * x[k * n + j]).sum();
                worst = worst.max((d - if i == j { 1.0 } else { 0.0 }).abs());
            }
        }
        worst
    }

    #[test]
    fn cayley_steps_stay_orthogonal_and_reach_a_target_rotation() {
        // Minimise ½‖X − T‖² over orthogonal X from X = I, T a rotation: G = X − T.
        let n = 6;
        let (c, s) = (0.6f64.cos(), 0.6f64.sin());
        let mut t = vec![0f64; n * n];
        for i in 0..n {
            t[i * n + i] = 1.0;
        }
        for k in [0, 2, 4] {
            t[k * n + k] = c;
            t[k * n + k + 1] = -s;
            t[(k + 1) * n + k] = s;
            t[(k + 1) * n + k + 1] = c;
        }
        let mut x = vec![0f64; n * n];
        (0..n).for_each(|i| x[i * n + i] = 1.0);
        let dist = |x: &[f64]| x.iter().zip(&t).map(|(a, b)| (a - b).powi(2)).sum::<f64>();
        let d0 = dist(&x);
        for _ in 0..200 {
            let g: Vec<f64> = x.iter().zip(&t).map(|(a, b)| a - b).collect();
            cayley_step(&mut x, &g, n, 0.2);
            assert!(off_orthogonal(&x, n) < 1e-12);
        }
        assert!(d0 > 0.5);
        assert!(dist(&x) < 1e-8, "{}", dist(&x));
    }

    #[test]
    fn schedule_warms_up_then_decays() {
        let s = Schedule {
            warmup: 10,
            total: 110,
            min_ratio: 0.1,
        };
        assert!((s.factor(5) - 0.5).abs() < 1e-12);
        assert!((s.factor(10) - 1.0).abs() < 1e-12);
        assert!((s.factor(60) - 0.55).abs() < 1e-12);
        assert!((s.factor(110) - 0.1).abs() < 1e-12);
    }
}
