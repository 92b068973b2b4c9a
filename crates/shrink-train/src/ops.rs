//! Differentiable building blocks, composed only of candle operations that have a backward.
//!
//! candle's fused `softmax_last_dim`, `rms_norm`, `layer_norm` and `rope` have no backward
//! (candle issue #2168): a gradient silently stops at them. The inference forward in
//! `shrink-models` uses them (and its own fused kernels); the trainable forward uses these
//! instead, which compute the same functions from primitive, differentiable operations.

use candle_core::{Device, Tensor, D};

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

/// An additive mask [t, t]: 0 where query i may see key j (j ≤ i, and within `window` when
/// given), −∞ elsewhere.
pub fn causal_mask(t: usize, window: Option<usize>) -> Result<Tensor> {
    let mut m = vec![0f32; t * t];
    for i in 0..t {
        for j in 0..t {
            let visible = j <= i && window.is_none_or(|w| i - j < w);
            if !visible {
                m[i * t + j] = f32::NEG_INFINITY;
            }
        }
    }
    Ok(Tensor::from_vec(m, (t, t), &Device::Cpu)?)
}

/// Scaled dot-product attention. q: [h, t, d]; k, v: [kv, t, d] with h a multiple of kv
/// (query head i reads kv head i / (h/kv), transformers' `repeat_kv`); `mask` [t, t] is added
/// to the scores (none: every key visible). Returns [t, h·d].
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
) -> Result<Tensor> {
    let (h, t, d) = q.dims3()?;
    let kv = k.dim(0)?;
    let rep = h / kv;
    // Group the query heads that share a kv head, so keys are never copied.
    let qg = q.reshape((kv, rep * t, d))?;
    let scores = (qg.matmul(&k.t()?)? * scale)?.reshape((h, t, t))?;
    let scores = match mask {
        Some(m) => scores.broadcast_add(m)?,
        None => scores,
    };
    let p = softmax(&scores)?;
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
