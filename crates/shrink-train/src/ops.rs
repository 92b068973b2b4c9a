//! Differentiable building blocks, composed only of candle operations that have a backward.
//!
//! candle's fused `softmax_last_dim`, `rms_norm`, `layer_norm` and `rope` have no backward
//! (candle issue #2168): a gradient silently stops at them. The inference forward in
//! `shrink-models` uses them (and its own fused kernels); the trainable forward uses these
//! instead, which compute the same functions from primitive, differentiable operations.

use candle_core::{Tensor, D};

use crate::error::Result;

/// `x · rsqrt(mean(x²) + eps) · w` over the last dimension (transformers' `LlamaRMSNorm`).
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    let inv = (ms + eps)?.sqrt()?.recip()?;
    Ok(x.broadcast_mul(&inv)?.broadcast_mul(w)?)
}

/// `(x − mean) / sqrt(var + eps) · w + b` over the last dimension (biased variance, as
/// `torch.nn.LayerNorm`).
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    let mu = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mu)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let inv = (var + eps)?.sqrt()?.recip()?;
    Ok(xc.broadcast_mul(&inv)?.broadcast_mul(w)?.broadcast_add(b)?)
}

/// `x Wᵀ + b` for an `nn.Linear` weight [out, in]; `x` is [t, in].
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let y = x.matmul(&w.t()?)?;
    Ok(match b {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    })
}

/// `x W + b` for a GPT-2 `Conv1D` weight [in, out].
pub fn conv1d(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    Ok(x.matmul(w)?.broadcast_add(b)?)
}

/// Softmax over the last dimension; the row maximum is subtracted as a constant (softmax is
/// invariant to it, so its gradient is zero).
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    let m = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&m)?.exp()?;
    let s = e.sum_keepdim(D::Minus1)?;
    Ok(e.broadcast_div(&s)?)
}

/// Which keys a query sees in [`attention`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mask {
    /// Every key (encoders).
    None,
    /// Keys at or before the query, within the last `window` when given (decoders).
    Causal {
        /// Sliding window (Mistral), if any.
        window: Option<usize>,
    },
}

/// Softmax of `scale`·scores [h, t, t] over the keys `mask` leaves visible, with its backward.
///
/// Hand-written (a candle custom op): composed of candle's primitives the scale, the additive
/// −∞ mask and the softmax are five single-threaded passes forward and more backward over
/// h·t·t values, the largest tensors of a block at 512 tokens; this is one parallel pass each
/// way over the visible keys only (the 24 blocks' backward of SmolLM2's student at 512 tokens:
/// 4.0 s → 2.9 s per step, BENCHMARKS.md). Forward as
/// transformers (max-subtracted exp in f32); backward `dS = scale · P ⊙ (dP − Σ_k dP ⊙ P)`.
struct MaskedSoftmax {
    scale: f32,
    mask: Mask,
}

impl MaskedSoftmax {
    /// The visible keys [lo, hi) of row `r` of a [h, t, tk] tensor.
    fn span(&self, r: usize, t: usize, tk: usize) -> (usize, usize) {
        match self.mask {
            Mask::None => (0, tk),
            Mask::Causal { window } => {
                let qi = tk - t + r % t;
                (window.map_or(0, |w| (qi + 1).saturating_sub(w)), qi + 1)
            }
        }
    }
}

fn contiguous_f32<'a>(
    s: &'a candle_core::CpuStorage,
    l: &candle_core::Layout,
) -> candle_core::Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (candle_core::CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => candle_core::bail!("masked softmax needs contiguous f32 tensors"),
    }
}

impl candle_core::CustomOp1 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "masked-softmax"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use rayon::prelude::*;
        let src = contiguous_f32(storage, layout)?;
        let (_, t, tk) = layout.shape().dims3()?;
        let mut dst = vec![0f32; src.len()];
        dst.par_chunks_mut(tk)
            .zip(src.par_chunks(tk))
            .enumerate()
            .for_each(|(r, (d, s))| {
                let (lo, hi) = self.span(r, t, tk);
                let (d, s) = (&mut d[lo..hi], &s[lo..hi]);
                let max = shrink_models::kernels::max(s) * self.scale;
                d.copy_from_slice(s);
                let inv = 1.0 / shrink_models::kernels::exp_scaled_sum(d, self.scale, max);
                d.iter_mut().for_each(|o| *o *= inv);
            });
        Ok((candle_core::CpuStorage::F32(dst), layout.shape().clone()))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let g = grad_res.contiguous()?;
        let back = MaskedSoftmaxBwd {
            scale: self.scale,
            span: MaskedSoftmax {
                scale: self.scale,
                mask: self.mask,
            },
        };
        Ok(Some(res.contiguous()?.apply_op2_no_bwd(&g, &back)?))
    }
}

/// The backward of [`MaskedSoftmax`]: (P, dP) → dS.
struct MaskedSoftmaxBwd {
    scale: f32,
    span: MaskedSoftmax,
}

impl candle_core::CustomOp2 for MaskedSoftmaxBwd {
    fn name(&self) -> &'static str {
        "masked-softmax-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use rayon::prelude::*;
        let (p, dp) = (contiguous_f32(s1, l1)?, contiguous_f32(s2, l2)?);
        if l1.shape() != l2.shape() {
            candle_core::bail!("masked softmax backward: shapes differ");
        }
        let (_, t, tk) = l1.shape().dims3()?;
        let mut ds = vec![0f32; p.len()];
        ds.par_chunks_mut(tk)
            .zip(p.par_chunks(tk).zip(dp.par_chunks(tk)))
            .enumerate()
            .for_each(|(r, (o, (p, dp)))| {
                let (lo, hi) = self.span.span(r, t, tk);
                let (o, p, dp) = (&mut o[lo..hi], &p[lo..hi], &dp[lo..hi]);
                let dot: f32 = p.iter().zip(dp).map(|(a, b)| a * b).sum();
                for ((o, &p), &g) in o.iter_mut().zip(p).zip(dp) {
                    *o = self.scale * p * (g - dot);
                }
            });
        Ok((candle_core::CpuStorage::F32(ds), l1.shape().clone()))
    }
}

/// Softmax over the last dimension of `scale`·scores [h, t, tk] under `mask`, differentiable.
pub fn masked_softmax(scores: &Tensor, scale: f64, mask: Mask) -> Result<Tensor> {
    Ok(scores.contiguous()?.apply_op1(MaskedSoftmax {
        scale: scale as f32,
        mask,
    })?)
}

/// Scaled dot-product attention. q: [h, t, d]; k, v: [kv, t, d] with h a multiple of kv
/// (query head i reads kv head i / (h/kv), transformers' `repeat_kv`). Returns [t, h·d].
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: Mask, scale: f64) -> Result<Tensor> {
    let (h, t, d) = q.dims3()?;
    let kv = k.dim(0)?;
    let rep = h / kv;
    // Group the query heads that share a kv head, so keys are never copied.
    let qg = q.reshape((kv, rep * t, d))?;
    let scores = qg.matmul(&k.t()?)?.reshape((h, t, t))?;
    let p = masked_softmax(&scores, scale, mask)?;
    let out = p.reshape((kv, rep * t, t))?.matmul(v)?; // [kv, rep·t, d]
    Ok(out
        .reshape((h, t, d))?
        .transpose(0, 1)?
        .reshape((t, h * d))?)
}

/// cos and sin tables [t, rot] (each half repeated, as transformers' `cat((freqs, freqs))`)
/// for positions 0..t, computed as `shrink_models::layers::rope_tables` does.
pub fn rope_tables(rot: usize, base: f64, t: usize) -> Result<(Tensor, Tensor)> {
    let (cos, sin) = shrink_models::layers::rope_tables(rot, base, 0, t)?;
    Ok((
        Tensor::cat(&[&cos, &cos], 1)?,
        Tensor::cat(&[&sin, &sin], 1)?,
    ))
}

/// Rotary embeddings (rotate_half convention) on the first `rot` dims of every head of
/// x: [heads, t, d]; `cos`, `sin` are [t, rot] from [`rope_tables`].
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, rot: usize) -> Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    let xr = x.narrow(D::Minus1, 0, rot)?;
    let half = rot / 2;
    let x1 = xr.narrow(D::Minus1, 0, half)?;
    let x2 = xr.narrow(D::Minus1, half, half)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    let r = (xr.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?)?;
    if rot == d {
        return Ok(r);
    }
    let pass = x.narrow(D::Minus1, rot, d - rot)?;
    Ok(Tensor::cat(&[&r, &pass], D::Minus1)?)
}

/// Split [t, n·d] into heads [n, t, d].
pub fn heads(x: &Tensor, n: usize, d: usize) -> Result<Tensor> {
    let t = x.dim(0)?;
    Ok(x.reshape((t, n, d))?.transpose(0, 1)?.contiguous()?)
}

/// An activation by its transformers name, differentiable.
pub fn activation(name: &str, x: &Tensor) -> Result<Tensor> {
    Ok(match name {
        "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => x.gelu()?,
        "gelu" => x.gelu_erf()?,
        "relu" => x.relu()?,
        "silu" | "swish" => x.silu()?,
        other => {
            return Err(crate::error::TrainError::Options(format!(
                "activation {other:?} has no trainable implementation"
            )))
        }
    })
}
