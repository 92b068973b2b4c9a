//! The backward pass, one block at a time (activation recomputation).
//!
//! The forward keeps only each block's input (t × hidden floats per block) and drops the
//! autograd graph as it goes. The backward then walks the blocks from the last to the first:
//! it reruns block i from its saved input with the graph kept, seeds it with the gradient of
//! the block's output (`Σ y ⊙ g`, whose gradient with respect to y is g), and takes the
//! gradients of the block's weights and of its input. Only one block's graph is ever
//! resident, so memory does not grow with depth; the price is a second forward of every block
//! (Chen et al. 2016, "Training deep nets with sublinear memory cost", one segment per block).
//!
//! The loss is given as its gradient with respect to the logits (see [`crate::loss`]): the
//! head's backward is seeded the same way, so no loss has to be an autograd graph.

use candle_core::{Tensor, Var};
use rayon::prelude::*;

use crate::error::{Result, TrainError};
use crate::forward::Trainable;

/// Gradients summed over micro-batches, one flat buffer per weight (in [`crate::Params`]
/// order; `None` until a gradient arrives).
#[derive(Debug, Clone, Default)]
pub struct Grads {
    /// Flat gradient of each weight.
    pub sums: Vec<Option<Vec<f32>>>,
}

impl Grads {
    /// Empty sums for `n` weights.
    pub fn new(n: usize) -> Self {
        Grads {
            sums: vec![None; n],
        }
    }

    /// Add the gradients `store` holds for the model's weights.
    fn add(&mut self, model: &Trainable, store: &candle_core::backprop::GradStore) -> Result<()> {
        for (i, var) in model.params.vars().iter().enumerate() {
            let Some(g) = store.get(var.as_tensor()) else {
                continue;
            };
            let slot = &mut self.sums[i];
            crate::params::with_f32(g, |g| match slot {
                Some(s) => s
                    .par_iter_mut()
                    .zip(g.par_iter())
                    .for_each(|(a, b)| *a += b),
                None => *slot = Some(g.to_vec()),
            })?;
        }
        Ok(())
    }

    /// The global ℓ2 norm of the gradient.
    pub fn norm(&self) -> f64 {
        // Fixed chunks summed in order: the same value whatever the thread count.
        self.sums
            .iter()
            .flatten()
            .map(|g| {
                g.par_chunks(1 << 16)
                    .map(|c| c.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>())
                    .collect::<Vec<f64>>()
                    .iter()
                    .sum::<f64>()
            })
            .sum::<f64>()
            .sqrt()
    }

    /// Multiply every gradient by `s`.
    pub fn scale(&mut self, s: f32) {
        for g in self.sums.iter_mut().flatten() {
            g.par_iter_mut().for_each(|x| *x *= s);
        }
    }
}

/// Seed the backward of `y` with `dy` (dL/dy): the scalar Σ y ⊙ dy.
fn seeded(y: &Tensor, dy: &Tensor) -> Result<Tensor> {
    Ok((y * dy)?.sum_all()?)
}

/// The gradient of a loss of `model`'s logits on `ids`, added into `grads`.
///
/// `loss_grad` receives the logits (detached) and returns the loss and its gradient dL/dlogits
/// (same shape); the loss is returned.
pub fn backward(
    model: &Trainable,
    ids: &[u32],
    grads: &mut Grads,
    loss_grad: impl FnOnce(&Tensor) -> Result<(f64, Tensor)>,
) -> Result<f64> {
    let n = model.num_layers();
    // Forward, keeping each block's input only.
    let mut inputs = Vec::with_capacity(n + 1);
    let mut x = model.embed(ids)?.detach();
    for i in 0..n {
        let y = model.layer(i, &x)?.detach();
        inputs.push(x);
        x = y;
    }
    // Head and loss.
    let xv = Var::from_tensor(&x)?;
    let logits = model.head(xv.as_tensor())?;
    let (loss, dlogits) = loss_grad(&logits.detach())?;
    if !loss.is_finite() {
        return Ok(loss);
    }
    let store = seeded(&logits, &dlogits)?.backward()?;
    drop(logits);
    grads.add(model, &store)?;
    let mut g = take(&store, &xv, "the head")?;
    drop(store);
    // Blocks, last to first, each recomputed from its saved input.
    for i in (0..n).rev() {
        let xv = Var::from_tensor(&inputs[i])?;
        let y = model.layer(i, xv.as_tensor())?;
        let store = seeded(&y, &g)?.backward()?;
        grads.add(model, &store)?;
        g = take(&store, &xv, "a block")?;
    }
    // Embeddings.
    let e = model.embed(ids)?;
    let store = seeded(&e, &g)?.backward()?;
    grads.add(model, &store)?;
    Ok(loss)
}

/// The gradient of the distillation loss `l` (see [`crate::loss::kd_loss`]) of `model` on
/// `ids` against `labels` (one per logit row) and `teacher`, divided by `norm`, added into
/// `grads`; returns the loss parts (sums, not divided).
pub fn backward_kd(
    model: &Trainable,
    ids: &[u32],
    labels: &[u32],
    teacher: crate::loss::Teacher,
    l: &crate::loss::KdLoss,
    norm: f64,
    grads: &mut Grads,
) -> Result<crate::loss::LossParts> {
    let mut parts = crate::loss::LossParts::default();
    backward(model, ids, grads, |logits| {
        let width = logits.dim(candle_core::D::Minus1)?;
        let (p, g) = crate::params::with_f32(logits, |z| {
            crate::loss::kd_loss(z, width, labels, teacher, l, norm)
        })??;
        parts = p;
        let g = Tensor::from_vec(g, logits.shape(), logits.device())?;
        Ok((p.total(l) / norm, g))
    })?;
    Ok(parts)
}

fn take(store: &candle_core::backprop::GradStore, x: &Var, what: &str) -> Result<Tensor> {
    // Detached: candle leaves a leaf variable's gradient attached to the graph that made it
    // (the block's weights, when the input feeds a matmul directly, as in BERT), and the next
    // block's backward would walk into it and count those weights' gradients twice.
    store
        .get(x.as_tensor())
        .map(|g| g.detach())
        .ok_or_else(|| TrainError::Options(format!("no gradient reached the input of {what}")))
}
