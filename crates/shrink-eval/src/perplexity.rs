//! Perplexity over fixed windows, with KLD and top-1 agreement against a base model.

use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;
use shrink_models::Model;

use crate::error::{EvalError, Result};

/// How to cut and score the token stream.
#[derive(Debug, Clone)]
pub struct PplOptions {
    /// Tokens per window (512 in lee-ppl-v1).
    pub window: usize,
    /// Evaluate only the first N windows.
    pub max_windows: Option<usize>,
}

impl Default for PplOptions {
    fn default() -> Self {
        PplOptions {
            window: crate::protocol::WINDOW,
            max_windows: None,
        }
    }
}

/// The score of one window.
#[derive(Debug, Clone, Serialize)]
pub struct WindowScore {
    /// Sum of negative log-likelihoods of the scored tokens (nats).
    pub nll: f64,
    /// Scored tokens (window − 1).
    pub tokens: usize,
    /// Sum over tokens of KL(p_base ‖ p_model), when a base model is given.
    pub kld: Option<f64>,
    /// Tokens where both models' arg-max agree, when a base model is given.
    pub top1_agree: Option<usize>,
}

/// The result of a perplexity run.
#[derive(Debug, Clone, Serialize)]
pub struct PplReport {
    /// exp(mean NLL).
    pub ppl: f64,
    /// Mean NLL per scored token.
    pub nll_mean: f64,
    /// Windows evaluated.
    pub windows: usize,
    /// Tokens scored.
    pub scored_tokens: usize,
    /// Mean KL(base ‖ model) per token, with a base model.
    pub kld: Option<f64>,
    /// Share of tokens whose arg-max agrees with the base model's.
    pub top1_agreement: Option<f64>,
    /// Wall seconds of the evaluation (model forward and scoring).
    pub seconds: f64,
    /// Every window's score.
    pub per_window: Vec<WindowScore>,
}

/// Cut `ids` into the windows the protocol scores.
pub fn windows<'a>(ids: &'a [u32], opts: &PplOptions) -> Vec<&'a [u32]> {
    let mut w: Vec<&[u32]> = ids.chunks_exact(opts.window).collect();
    if let Some(n) = opts.max_windows {
        w.truncate(n);
    }
    w
}

/// Per-row statistics of a logit row against the next token.
struct RowStats {
    /// −log p(target).
    nll: f64,
    /// log-sum-exp of the row.
    lse: f64,
    /// arg-max index.
    argmax: usize,
}

/// Log-sum-exp (accumulated in f64), NLL of `target` and arg-max of one row of logits.
fn row_stats(row: &[f32], target: usize) -> RowStats {
    let max = shrink_models::kernels::max(row);
    let argmax = row.iter().position(|&v| v == max).unwrap_or(0);
    // exp in f32 (as PyTorch's float32 log_softmax does), accumulated in f64.
    let lse = max as f64 + shrink_models::kernels::sum_exp(row, max).ln();
    RowStats {
        nll: lse - row[target] as f64,
        lse,
        argmax,
    }
}

/// KL(p ‖ q) for one position from raw logits and their log-sum-exps.
fn kl_row(p_logits: &[f32], p_lse: f64, q_logits: &[f32], q_lse: f64) -> f64 {
    p_logits
        .iter()
        .zip(q_logits)
        .map(|(&a, &b)| {
            let lp = a as f64 - p_lse;
            let lq = b as f64 - q_lse;
            lp.exp() * (lp - lq)
        })
        .sum::<f64>()
        .max(0.0)
}

/// Positions whose logits are computed and scored together: a window's logits are never
/// resident all at once (512 × 49152 float32 would be 100 MiB per model).
const HEAD_ROWS: usize = 128;

/// Score one window: every token after the first given its prefix.
pub fn score_window(model: &Model, base: Option<&Model>, ids: &[u32]) -> Result<WindowScore> {
    let t = ids.len();
    let hidden = model.hidden(ids, None)?;
    let base_hidden = base.map(|b| b.hidden(ids, None)).transpose()?;
    let mut per_pos: Vec<(f64, Option<(f64, bool)>)> = Vec::with_capacity(t.saturating_sub(1));
    // Positions 0..t-1 predict the token after them; the last position predicts nothing.
    for r0 in (0..t - 1).step_by(HEAD_ROWS) {
        let rows = HEAD_ROWS.min(t - 1 - r0);
        let logits = model.head(&hidden.narrow(0, r0, rows)?)?;
        let v = logits.dim(1)?;
        let base_logits = match (&base_hidden, base) {
            (Some(h), Some(b)) => {
                let bl = b.head(&h.narrow(0, r0, rows)?)?;
                if bl.dim(1)? != v {
                    return Err(EvalError::Input(format!(
                        "vocabularies differ: model has {v} logits, base has {}",
                        bl.dim(1)?
                    )));
                }
                Some(bl)
            }
            _ => None,
        };
        let score = |flat: &[f32], base_flat: Option<&[f32]>| {
            (0..rows)
                .into_par_iter()
                .map(|i| {
                    let target = ids[r0 + i + 1] as usize;
                    let row = &flat[i * v..(i + 1) * v];
                    let s = row_stats(row, target);
                    let cmp = base_flat.map(|bf| {
                        let brow = &bf[i * v..(i + 1) * v];
                        let bs = row_stats(brow, target);
                        (kl_row(brow, bs.lse, row, s.lse), bs.argmax == s.argmax)
                    });
                    (s.nll, cmp)
                })
                .collect::<Vec<_>>()
        };
        let chunk = shrink_models::with_f32(&logits, |flat| match &base_logits {
            Some(b) => shrink_models::with_f32(b, |bf| score(flat, Some(bf))),
            None => Ok(score(flat, None)),
        })??;
        // A NaN or infinity in the logits (weights are checked finite when read, so an
        // overflow in the forward) is an error naming where, not a perplexity of NaN.
        if let Some(i) = chunk.iter().position(|p| !p.0.is_finite()) {
            return Err(EvalError::Input(format!(
                "the model's logits at position {} of a window are not finite (its loss is {}): \
                 the forward pass overflowed",
                r0 + i,
                chunk[i].0
            )));
        }
        per_pos.extend(chunk);
    }
    let nll = per_pos.iter().map(|p| p.0).sum();
    let (kld, top1_agree) = if base.is_some() {
        (
            Some(per_pos.iter().filter_map(|p| p.1.map(|c| c.0)).sum()),
            Some(per_pos.iter().filter(|p| p.1.is_some_and(|c| c.1)).count()),
        )
    } else {
        (None, None)
    };
    Ok(WindowScore {
        nll,
        tokens: t - 1,
        kld,
        top1_agree,
    })
}

/// Perplexity of `model` on `ids` (and KLD / top-1 against `base`), calling `progress(done, total)`
/// after each window.
pub fn perplexity(
    model: &Model,
    base: Option<&Model>,
    ids: &[u32],
    opts: &PplOptions,
    mut progress: impl FnMut(usize, usize),
) -> Result<PplReport> {
    if opts.window < 2 {
        return Err(EvalError::Input(
            "window must hold at least 2 tokens".into(),
        ));
    }
    let max_ctx = model.config().max_context();
    if opts.window > max_ctx {
        return Err(EvalError::Input(format!(
            "windows of {} tokens are longer than the model's context of {max_ctx} positions",
            opts.window
        )));
    }
    let ws = windows(ids, opts);
    if ws.is_empty() {
        return Err(EvalError::Input(format!(
            "the text has {} tokens, fewer than one window of {}",
            ids.len(),
            opts.window
        )));
    }
    let start = Instant::now();
    let mut per_window = Vec::with_capacity(ws.len());
    for (i, w) in ws.iter().enumerate() {
        per_window.push(score_window(model, base, w)?);
        progress(i + 1, ws.len());
    }
    let seconds = start.elapsed().as_secs_f64();
    let scored: usize = per_window.iter().map(|w| w.tokens).sum();
    let nll: f64 = per_window.iter().map(|w| w.nll).sum();
    let nll_mean = nll / scored as f64;
    let (kld, top1_agreement) = if base.is_some() {
        let k: f64 = per_window.iter().filter_map(|w| w.kld).sum();
        let a: usize = per_window.iter().filter_map(|w| w.top1_agree).sum();
        (Some(k / scored as f64), Some(a as f64 / scored as f64))
    } else {
        (None, None)
    };
    Ok(PplReport {
        ppl: nll_mean.exp(),
        nll_mean,
        windows: per_window.len(),
        scored_tokens: scored,
        kld,
        top1_agreement,
        seconds,
        per_window,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_stats_matches_direct_softmax() {
        let row = [1.0f32, 2.0, 3.0, 0.5];
        let s = row_stats(&row, 1);
        let z: f64 = row.iter().map(|&v| (v as f64).exp()).sum();
        assert!((s.nll - (z.ln() - 2.0)).abs() < 1e-6);
        assert_eq!(s.argmax, 2);
    }

    #[test]
    fn kl_of_identical_rows_is_zero_and_positive_otherwise() {
        let a = [1.0f32, 2.0, 3.0];
        let b = [3.0f32, 2.0, 1.0];
        let la = row_stats(&a, 0).lse;
        let lb = row_stats(&b, 0).lse;
        assert!(kl_row(&a, la, &a, la).abs() < 1e-12);
        assert!(kl_row(&a, la, &b, lb) > 0.1);
    }

    #[test]
    fn windows_drop_the_partial_tail() {
        let ids: Vec<u32> = (0..1100).collect();
        let w = windows(&ids, &PplOptions::default());
        assert_eq!(w.len(), 2);
        let w = windows(
            &ids,
            &PplOptions {
                window: 512,
                max_windows: Some(1),
            },
        );
        assert_eq!(w.len(), 1);
    }
}
