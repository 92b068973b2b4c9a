//! AdamW (Loshchilov & Hutter 2019, "Decoupled Weight Decay Regularization", Algorithm 2) with
//! linear warmup and cosine decay, and clipping by the global gradient norm.
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

#[cfg(test)]
mod tests {
    use super::*;

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
