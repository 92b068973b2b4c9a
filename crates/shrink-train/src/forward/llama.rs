//! The Llama family (Llama, Mistral, Qwen2, SmolLM), trainable: transformers'
//! `modeling_llama.py` — RMSNorm pre-norm blocks, rotary positions (rotate_half), grouped-query
//! attention (Mistral's sliding window), SwiGLU MLP, optionally tied head.

use candle_core::{Device, Tensor};
use shrink_models::config::LlamaConfig;

use crate::error::Result;
use crate::ops;
use crate::params::Params;

/// Token embeddings [t, hidden].
pub fn embed(p: &Params, c: &LlamaConfig, ids: &[u32]) -> Result<Tensor> {
    crate::forward::check_ids(ids, c.vocab_size)?;
    let idx = Tensor::new(ids, &Device::Cpu)?;
    Ok(p.get("model.embed_tokens.weight")?.embedding(&idx)?)
}

/// Decoder block `l`.
pub fn layer(p: &Params, c: &LlamaConfig, l: usize, x: &Tensor) -> Result<Tensor> {
    let pre = format!("model.layers.{l}");
    let w = |n: &str| p.get(&format!("{pre}.{n}.weight"));
    let b = |n: &str| p.get_opt(&format!("{pre}.{n}.bias"));
    let eps = c.rms_norm_eps;
    let t = x.dim(0)?;
    let hd = c.head_dim;

    let hn = ops::rms_norm(x, w("input_layernorm")?, eps)?;
    let q = ops::linear(&hn, w("self_attn.q_proj")?, b("self_attn.q_proj"))?;
    let k = ops::linear(&hn, w("self_attn.k_proj")?, b("self_attn.k_proj"))?;
    let v = ops::linear(&hn, w("self_attn.v_proj")?, b("self_attn.v_proj"))?;
    let (cos, sin) = ops::rope_tables(hd, c.rope_theta, t)?;
    let q = ops::rope(&ops::heads(&q, c.num_heads, hd)?, &cos, &sin, hd)?;
    let k = ops::rope(&ops::heads(&k, c.num_kv_heads, hd)?, &cos, &sin, hd)?;
    let v = ops::heads(&v, c.num_kv_heads, hd)?;
    let mask = ops::Mask::Causal {
        window: c.sliding_window,
    };
    let a = ops::attention(&q, &k, &v, mask, 1.0 / (hd as f64).sqrt())?;
    let a = ops::linear(&a, w("self_attn.o_proj")?, b("self_attn.o_proj"))?;
    let x = (x + a)?;

    let hn = ops::rms_norm(&x, w("post_attention_layernorm")?, eps)?;
    let g = ops::linear(&hn, w("mlp.gate_proj")?, b("mlp.gate_proj"))?;
    let u = ops::linear(&hn, w("mlp.up_proj")?, b("mlp.up_proj"))?;
    let m = (g.silu()? * u)?;
    let m = ops::linear(&m, w("mlp.down_proj")?, b("mlp.down_proj"))?;
    Ok((x + m)?)
}

/// Final RMSNorm and LM head (the embedding when tied): logits [t, vocab].
pub fn head(p: &Params, c: &LlamaConfig, x: &Tensor) -> Result<Tensor> {
    let x = ops::rms_norm(x, p.get("model.norm.weight")?, c.rms_norm_eps)?;
    let w = match p.get_opt("lm_head.weight") {
        Some(w) if !c.tie_word_embeddings => w,
        _ => p.get("model.embed_tokens.weight")?,
    };
    ops::linear(&x, w, None)
}
