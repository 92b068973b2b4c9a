//! GPT-NeoX / Pythia, trainable: transformers' `models/gpt_neox/modeling_gpt_neox.py` —
//! LayerNorm pre-norm layers, fused `query_key_value` whose output rows are per head
//! `[q_h | k_h | v_h]`, rotary embeddings on the first `rotary_pct` of each head
//! (rotate_half), parallel (`x + attn(ln₁ x) + mlp(ln₂ x)`) or sequential residual, untied
//! `embed_out` head (or tied to `embed_in`).

use candle_core::{Device, Tensor};
use shrink_models::config::NeoxConfig;

use crate::error::Result;
use crate::ops;
use crate::params::Params;

/// Rotary dimensions of a head: `rotary_pct` of it, even (as `shrink_models::gpt_neox`).
fn rotary_dims(c: &NeoxConfig) -> usize {
    let hd = c.hidden_size / c.num_heads;
    ((hd as f64 * c.rotary_pct) as usize) & !1
}

/// Token embeddings `embed_in` [t, hidden].
pub fn embed(p: &Params, c: &NeoxConfig, ids: &[u32]) -> Result<Tensor> {
    crate::forward::check_ids(ids, c.vocab_size)?;
    let idx = Tensor::new(ids, &Device::Cpu)?;
    Ok(p.get("gpt_neox.embed_in.weight")?.embedding(&idx)?)
}

/// Layer `l` (`GPTNeoXLayer`).
pub fn layer(p: &Params, c: &NeoxConfig, l: usize, x: &Tensor) -> Result<Tensor> {
    let pre = format!("gpt_neox.layers.{l}");
    let w = |n: &str| p.get(&format!("{pre}.{n}.weight"));
    let b = |n: &str| p.get_opt(&format!("{pre}.{n}.bias"));
    let eps = c.layer_norm_eps;
    let t = x.dim(0)?;
    let nh = c.num_heads;
    let hd = c.hidden_size / nh;
    let rot = rotary_dims(c);
    let ln = |n: &str, x: &Tensor| -> Result<Tensor> {
        ops::layer_norm(x, w(n)?, p.get(&format!("{pre}.{n}.bias"))?, eps)
    };

    // Attention (`GPTNeoXAttention`): [t, 3h] viewed as [t, heads, 3·hd], chunked into q, k, v.
    let h1 = ln("input_layernorm", x)?;
    let qkv = ops::linear(
        &h1,
        w("attention.query_key_value")?,
        b("attention.query_key_value"),
    )?;
    let qkv = qkv.reshape((t, nh, 3 * hd))?.transpose(0, 1)?; // [heads, t, 3·hd]
    let q = qkv.narrow(2, 0, hd)?.contiguous()?;
    let k = qkv.narrow(2, hd, hd)?.contiguous()?;
    let v = qkv.narrow(2, 2 * hd, hd)?.contiguous()?;
    let (q, k) = if rot > 0 {
        let (cos, sin) = ops::rope_tables(rot, c.rope_theta, t)?;
        (
            ops::rope(&q, &cos, &sin, rot)?,
            ops::rope(&k, &cos, &sin, rot)?,
        )
    } else {
        (q, k)
    };
    let a = ops::attention(
        &q,
        &k,
        &v,
        ops::Mask::Causal { window: None },
        1.0 / (hd as f64).sqrt(),
    )?;
    let a = ops::linear(&a, w("attention.dense")?, b("attention.dense"))?;

    // MLP (`GPTNeoXMLP`), on the layer's input (parallel) or after the attention residual.
    let mlp = |h: &Tensor| -> Result<Tensor> {
        let m = ops::linear(h, w("mlp.dense_h_to_4h")?, b("mlp.dense_h_to_4h"))?;
        let m = ops::activation(&c.hidden_act, &m)?;
        ops::linear(&m, w("mlp.dense_4h_to_h")?, b("mlp.dense_4h_to_h"))
    };
    if c.use_parallel_residual {
        let m = mlp(&ln("post_attention_layernorm", x)?)?;
        Ok(((x + a)? + m)?)
    } else {
        let x = (x + a)?;
        let m = mlp(&ln("post_attention_layernorm", &x)?)?;
        Ok((x + m)?)
    }
}

/// `final_layer_norm` and the head `embed_out` (`embed_in` when tied): logits [t, vocab].
pub fn head(p: &Params, c: &NeoxConfig, x: &Tensor) -> Result<Tensor> {
    let x = ops::layer_norm(
        x,
        p.get("gpt_neox.final_layer_norm.weight")?,
        p.get("gpt_neox.final_layer_norm.bias")?,
        c.layer_norm_eps,
    )?;
    let w = match p.get_opt("embed_out.weight") {
        Some(w) if !c.tie_word_embeddings => w,
        _ => p.get("gpt_neox.embed_in.weight")?,
    };
    ops::linear(&x, w, None)
}
