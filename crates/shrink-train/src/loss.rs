//! Losses, as their value and their gradient with respect to the student's logits, computed
//! row by row in one fused pass (no autograd graph over the vocabulary-wide tensors).
//!
//! Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network", §2:
//! `L = α · T² · KL(p_T ‖ q_T) + (1 − α) · CE(y, q_1)`, where `p_T = softmax(z_teacher / T)`,
//! `q_T = softmax(z_student / T)`; the T² keeps the soft term's gradient on the scale of the
//! hard one's as T changes. Per row, with `z` the student's logits:
//! - CE: `logsumexp(z) − z_y`, gradient `softmax(z) − onehot(y)`;
//! - forward KL `Σ p (log p − log q)`: gradient `(q − p) / T`;
//! - reverse KL `Σ q (log q − log p)` (mode-seeking, as MiniLLM): gradient
//!   `q ⊙ (log q − log p − KL) / T`.
//!
//! A teacher given as its top-K logits per row ([`Teacher::TopK`]) is the softmax over those K
//! only (the rest of its mass dropped, as sparse-logit distillation does); reverse KL needs the
//! whole distribution and refuses it.

use rayon::prelude::*;

use crate::error::{Result, TrainError};

/// Which divergence the soft term uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Divergence {
    /// KL(teacher ‖ student): Hinton's, mean-seeking.
    Forward,
    /// KL(student ‖ teacher): mode-seeking.
    Reverse,
}

/// The distillation loss's settings.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KdLoss {
    /// Softmax temperature T of the soft term.
    pub temperature: f64,
    /// Weight α of the soft term; 1 − α weighs the hard labels' cross-entropy.
    pub alpha: f64,
    /// KL direction.
    pub divergence: Divergence,
}

impl KdLoss {
    /// Check the settings.
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(TrainError::Options(format!(
                "--temperature must be > 0 (got {})",
                self.temperature
            )));
        }
        if !(0.0..=1.0).contains(&self.alpha) {
            return Err(TrainError::Options(format!(
                "--alpha must be in [0, 1] (got {})",
                self.alpha
            )));
        }
        Ok(())
    }
}

/// The teacher's logits for the rows, if any.
#[derive(Debug, Clone, Copy)]
pub enum Teacher<'a> {
    /// No teacher (α must be 0).
    None,
    /// Every logit, rows × vocab.
    Full(&'a [f32]),
    /// The K largest logits of each row and their token ids, rows × K each.
    TopK {
        /// Token ids.
        ids: &'a [u32],
        /// Their logits.
        logits: &'a [f32],
        /// K.
        k: usize,
    },
}

/// The loss of a batch of rows, summed, and its parts.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LossParts {
    /// Σ rows of the soft term's divergence (before α · T²).
    pub kd: f64,
    /// Σ rows of the cross-entropy with the labels.
    pub ce: f64,
    /// Rows counted.
    pub rows: usize,
}

impl LossParts {
    /// The weighted loss, summed over rows: α T² kd + (1 − α) ce.
    pub fn total(&self, l: &KdLoss) -> f64 {
        l.alpha * l.temperature * l.temperature * self.kd + (1.0 - l.alpha) * self.ce
    }

    /// Add another batch's parts.
    pub fn add(&mut self, o: &LossParts) {
        self.kd += o.kd;
        self.ce += o.ce;
        self.rows += o.rows;
    }
}

/// Loss parts of `logits` (rows × vocab) against `labels` (one per row) and `teacher`, and the
/// gradient of `total / norm` with respect to the logits (rows × vocab).
pub fn kd_loss(
    logits: &[f32],
    vocab: usize,
    labels: &[u32],
    teacher: Teacher,
    l: &KdLoss,
    norm: f64,
) -> Result<(LossParts, Vec<f32>)> {
    let rows = labels.len();
    if logits.len() != rows * vocab {
        return Err(TrainError::Options(format!(
            "loss: {} logits for {rows} rows of {vocab}",
            logits.len()
        )));
    }
    if let Some(&bad) = labels.iter().find(|&&y| y as usize >= vocab) {
        return Err(TrainError::Options(format!(
            "label {bad} is outside the {vocab} outputs"
        )));
    }
    let use_soft = l.alpha > 0.0;
    match teacher {
        Teacher::None if use_soft => {
            return Err(TrainError::Options(
                "the soft-target term (alpha > 0) needs a teacher".into(),
            ))
        }
        Teacher::Full(t) if t.len() != logits.len() => {
            return Err(TrainError::Options(format!(
                "teacher gives {} logits, the student {}",
                t.len(),
                logits.len()
            )))
        }
        Teacher::TopK { ids, logits: tl, k } if ids.len() != rows * k || tl.len() != rows * k => {
            return Err(TrainError::Options(
                "teacher top-K rows do not match".into(),
            ))
        }
        Teacher::TopK { .. } if use_soft && l.divergence == Divergence::Reverse => {
            return Err(TrainError::Options(
                "reverse KL needs the teacher's whole distribution; drop --teacher-topk".into(),
            ))
        }
        _ => {}
    }
    let inv_t = 1.0 / l.temperature;
    let (a, temp) = (l.alpha, l.temperature);
    let scale = 1.0 / norm;
    let mut grad = vec![0f32; logits.len()];
    let parts: Vec<(f64, f64)> = grad
        .par_chunks_mut(vocab)
        .zip(logits.par_chunks(vocab))
        .enumerate()
        .map(|(r, (g, z))| {
            let mut kd = 0.0;
            let mut ce = 0.0;
            let mut gr = vec![0f64; vocab];
            if a < 1.0 {
                let lse = logsumexp(z, 1.0);
                let y = labels[r] as usize;
                ce = lse - z[y] as f64;
                for (j, o) in gr.iter_mut().enumerate() {
                    *o += (1.0 - a) * (z[j] as f64 - lse).exp();
                }
                gr[y] -= 1.0 - a;
            }
            if use_soft {
                let lse_s = logsumexp(z, inv_t);
                let logq = |j: usize| z[j] as f64 * inv_t - lse_s;
                match teacher {
                    Teacher::Full(t) => {
                        let zt = &t[r * vocab..(r + 1) * vocab];
                        let lse_t = logsumexp(zt, inv_t);
                        match l.divergence {
                            Divergence::Forward => {
                                for j in 0..vocab {
                                    let lp = zt[j] as f64 * inv_t - lse_t;
                                    let (p, lq) = (lp.exp(), logq(j));
                                    if p > 0.0 {
                                        kd += p * (lp - lq);
                                    }
                                    gr[j] += a * temp * (lq.exp() - p);
                                }
                            }
                            Divergence::Reverse => {
                                let mut diff = vec![0f64; vocab];
                                for (j, d) in diff.iter_mut().enumerate() {
                                    let lq = logq(j);
                                    *d = lq - (zt[j] as f64 * inv_t - lse_t);
                                    kd += lq.exp() * *d;
                                }
                                for (j, d) in diff.iter().enumerate() {
                                    gr[j] += a * temp * logq(j).exp() * (d - kd);
                                }
                            }
                        }
                    }
                    Teacher::TopK { ids, logits: tl, k } => {
                        let (ti, tz) = (&ids[r * k..(r + 1) * k], &tl[r * k..(r + 1) * k]);
                        let lse_t = logsumexp(tz, inv_t);
                        for (j, g) in gr.iter_mut().enumerate() {
                            *g += a * temp * logq(j).exp();
                        }
                        for (&id, &zt) in ti.iter().zip(tz) {
                            let lp = zt as f64 * inv_t - lse_t;
                            let p = lp.exp();
                            kd += p * (lp - logq(id as usize));
                            gr[id as usize] -= a * temp * p;
                        }
                    }
                    Teacher::None => {}
                }
            }
            for (o, v) in g.iter_mut().zip(&gr) {
                *o = (v * scale) as f32;
            }
            (kd, ce)
        })
        .collect();
    let mut out = LossParts {
        rows,
        ..LossParts::default()
    };
    for (kd, ce) in parts {
        out.kd += kd;
        out.ce += ce;
    }
    Ok((out, grad))
}

/// log Σ exp(s · x), in float64.
pub fn logsumexp(x: &[f32], s: f64) -> f64 {
    let m = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64 * s;
    let sum: f64 = x.iter().map(|&v| (v as f64 * s - m).exp()).sum();
    m + sum.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn total(z: &[f32], v: usize, y: &[u32], t: Teacher, l: &KdLoss) -> f64 {
        kd_loss(z, v, y, t, l, 1.0).unwrap().0.total(l)
    }

    /// The analytic gradient equals central finite differences of the loss, for each term.
    #[test]
    fn gradient_matches_finite_differences() {
        let v = 7;
        let z: Vec<f32> = (0..2 * v)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.4)
            .collect();
        let zt: Vec<f32> = (0..2 * v)
            .map(|i| ((i * 53 % 13) as f32 - 6.0) * 0.3)
            .collect();
        let (ids, tl): (Vec<u32>, Vec<f32>) = [(1u32, 0.5f32), (4, 1.5), (0, -0.2), (6, 2.0)]
            .into_iter()
            .unzip();
        let y = [3u32, 5];
        for (alpha, div, topk) in [
            (0.0, Divergence::Forward, false),
            (0.5, Divergence::Forward, false),
            (1.0, Divergence::Reverse, false),
            (0.7, Divergence::Forward, true),
        ] {
            let l = KdLoss {
                temperature: 2.0,
                alpha,
                divergence: div,
            };
            let teacher = if topk {
                Teacher::TopK {
                    ids: &ids,
                    logits: &tl,
                    k: 2,
                }
            } else {
                Teacher::Full(&zt)
            };
            let (_, g) = kd_loss(&z, v, &y, teacher, &l, 1.0).unwrap();
            for i in 0..z.len() {
                let h = 1e-3f32;
                let (mut zp, mut zm) = (z.clone(), z.clone());
                zp[i] += h;
                zm[i] -= h;
                let fd = (total(&zp, v, &y, teacher, &l) - total(&zm, v, &y, teacher, &l))
                    / (2.0 * h as f64);
                assert!(
                    (fd - g[i] as f64).abs() < 1e-3,
                    "alpha {alpha} {div:?} topk {topk} logit {i}: fd {fd} analytic {}",
                    g[i]
                );
            }
        }
    }

    /// KL of identical distributions is zero; the soft term needs a teacher.
    #[test]
    fn kl_zero_and_teacher_required() {
        let z = [0.1f32, 2.0, -1.0];
        let l = KdLoss {
            temperature: 3.0,
            alpha: 1.0,
            divergence: Divergence::Forward,
        };
        let (p, g) = kd_loss(&z, 3, &[0], Teacher::Full(&z), &l, 1.0).unwrap();
        assert!(p.kd.abs() < 1e-12 && g.iter().all(|x| x.abs() < 1e-7));
        assert!(kd_loss(&z, 3, &[0], Teacher::None, &l, 1.0).is_err());
        assert!(kd_loss(&z, 3, &[9], Teacher::Full(&z), &l, 1.0).is_err());
    }
}
