//! GPT-2, trainable: transformers' `models/gpt2/modeling_gpt2.py` — learned positions,
//! LayerNorm pre-norm blocks, fused `c_attn` q/k/v, causal attention (optionally scaled by the
//! inverse layer index), MLP, tied head.
//!
//! The projections are `Conv1D`s whose weights [`Params`] holds as HF stores them, [in, out]:
//! `x W + b` ([`ops::conv1d`]), no transpose.

use candle_core::{Device, Tensor};
use shrink_models::config::Gpt2Config;

use crate::error::{Result, TrainError};
use crate::ops;
use crate::params::Params;

/// Token plus position embeddings [t, n_embd] (positions 0..t).
pub fn embed(p: &Params, c: &Gpt2Config, ids: &[u32]) -> Result<Tensor> {
    crate::forward::check_ids(ids, c.vocab_size)?;
    let t = ids.len();
    if t > c.n_positions {
        return Err(TrainError::Options(format!(
            "sequence of {t} tokens exceeds GPT-2's {} positions",
            c.n_positions
        )));
    }
    let idx = Tensor::new(ids, &Device::Cpu)?;
    let tok = p.get("transformer.wte.weight")?.embedding(&idx)?;
    let pos = p.get("transformer.wpe.weight")?.narrow(0, 0, t)?;
    Ok((tok + pos)?)
}

/// Block `l` (`GPT2Block`): `x + attn(ln_1 x)`, then `x + mlp(ln_2 x)`.
pub fn layer(p: &Params, c: &Gpt2Config, l: usize, x: &Tensor) -> Result<Tensor> {
    let pre = format!("transformer.h.{l}");
    let w = |n: &str| p.get(&format!("{pre}.{n}.weight"));
    let b = |n: &str| p.get(&format!("{pre}.{n}.bias"));
    let eps = c.layer_norm_epsilon;
    let (e, nh) = (c.n_embd, c.n_head);
    let hd = e / nh;

    let h = ops::layer_norm(x, w("ln_1")?, b("ln_1")?, eps)?;
    let qkv = ops::conv1d(&h, w("attn.c_attn")?, b("attn.c_attn")?)?; // [t, 3e]: q | k | v
    let q = ops::heads(&qkv.narrow(1, 0, e)?, nh, hd)?;
    let k = ops::heads(&qkv.narrow(1, e, e)?, nh, hd)?;
    let v = ops::heads(&qkv.narrow(1, 2 * e, e)?, nh, hd)?;
    let mut scale = 1.0 / (hd as f64).sqrt();
    if c.scale_attn_by_inverse_layer_idx {
        scale /= (l + 1) as f64;
    }
    let a = ops::attention(&q, &k, &v, ops::Mask::Causal { window: None }, scale)?;
    let a = ops::conv1d(&a, w("attn.c_proj")?, b("attn.c_proj")?)?;
    let x = (x + a)?;

    let h = ops::layer_norm(&x, w("ln_2")?, b("ln_2")?, eps)?;
    let m = ops::activation(
        &c.activation,
        &ops::conv1d(&h, w("mlp.c_fc")?, b("mlp.c_fc")?)?,
    )?;
    let m = ops::conv1d(&m, w("mlp.c_proj")?, b("mlp.c_proj")?)?;
    Ok((x + m)?)
}

/// Final LayerNorm `ln_f` and the LM head (`lm_head.weight` when the checkpoint has its own,
/// else the tied `wte`): logits [t, vocab].
pub fn head(p: &Params, c: &Gpt2Config, x: &Tensor) -> Result<Tensor> {
    let x = ops::layer_norm(
        x,
        p.get("transformer.ln_f.weight")?,
        p.get("transformer.ln_f.bias")?,
        c.layer_norm_epsilon,
    )?;
    let w = match p.get_opt("lm_head.weight") {
        Some(w) => w,
        None => p.get("transformer.wte.weight")?,
    };
    ops::linear(&x, w, None)
}
