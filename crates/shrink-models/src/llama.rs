//! The Llama family: Llama, Mistral, Qwen2, SmolLM.
//!
//! Follows transformers' `models/llama/modeling_llama.py` (and `mistral`, `qwen2`):
//! pre-norm decoder layers with RMSNorm, rotary position embeddings (rotate_half),
//! grouped-query attention, SwiGLU MLP, optionally tied LM head.

use candle_core::{Device, Module, Tensor};

use crate::config::LlamaConfig;
use crate::error::{ModelError, Result};
use crate::layers::{apply_rope, attention, heads, rope_tables, silu_mul, CausalMask, KvCache};
use crate::linear::Linear;
use crate::weights::{GgufName, WeightLoader};

/// One decoder layer.
#[derive(Debug, Clone)]
pub struct LlamaLayer {
    /// RMSNorm before attention.
    pub input_layernorm: Tensor,
    /// Query projection.
    pub q_proj: Linear,
    /// Key projection.
    pub k_proj: Linear,
    /// Value projection.
    pub v_proj: Linear,
    /// Output projection.
    pub o_proj: Linear,
    /// RMSNorm before the MLP.
    pub post_attention_layernorm: Tensor,
    /// MLP gate projection.
    pub gate_proj: Linear,
    /// MLP up projection.
    pub up_proj: Linear,
    /// MLP down projection.
    pub down_proj: Linear,
}

/// A Llama-family causal language model.
#[derive(Debug, Clone)]
pub struct Llama {
    /// Configuration.
    pub cfg: LlamaConfig,
    /// Token embedding [vocab, hidden].
    pub embed_tokens: Tensor,
    /// Decoder layers.
    pub layers: Vec<LlamaLayer>,
    /// Final RMSNorm.
    pub norm: Tensor,
    /// LM head (shares the embedding when tied).
    pub lm_head: Linear,
}

/// llama.cpp's name for a Llama-family HF weight (see llama.cpp's `tensor_mapping.py`).
pub fn gguf_name(cfg: &LlamaConfig, hf: &str) -> Option<GgufName> {
    let plain = |n: String| {
        Some(GgufName {
            name: n,
            unpermute_heads: None,
        })
    };
    match hf {
        "model.embed_tokens.weight" => return plain("token_embd.weight".into()),
        "model.norm.weight" => return plain("output_norm.weight".into()),
        "lm_head.weight" => return plain("output.weight".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (idx, name) = rest.split_once('.')?;
    let (module, kind) = name.rsplit_once('.')?;
    let gg = match module {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    // llama.cpp's converter permutes Q/K rows for the llama architecture (not for qwen2).
    let unpermute_heads = match (cfg.model_type.as_str(), module) {
        ("qwen2", _) => None,
        (_, "self_attn.q_proj") => Some(cfg.num_heads),
        (_, "self_attn.k_proj") => Some(cfg.num_kv_heads),
        _ => None,
    };
    Some(GgufName {
        name: format!("blk.{idx}.{gg}.{kind}"),
        unpermute_heads,
    })
}

/// HF names and shapes of every weight the configuration implies, in load order.
pub fn weight_shapes(cfg: &LlamaConfig) -> Vec<(String, Vec<usize>)> {
    let (h, i, hd) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim);
    let (qd, kvd) = (cfg.num_heads * hd, cfg.num_kv_heads * hd);
    let mut v = vec![(
        "model.embed_tokens.weight".to_string(),
        vec![cfg.vocab_size, h],
    )];
    for l in 0..cfg.num_layers {
        let p = format!("model.layers.{l}");
        let mut lin = |name: &str, out: usize, inp: usize, bias: bool| {
            v.push((format!("{p}.{name}.weight"), vec![out, inp]));
            if bias {
                v.push((format!("{p}.{name}.bias"), vec![out]));
            }
        };
        lin("self_attn.q_proj", qd, h, cfg.qkv_bias);
        lin("self_attn.k_proj", kvd, h, cfg.qkv_bias);
        lin("self_attn.v_proj", kvd, h, cfg.qkv_bias);
        lin("self_attn.o_proj", h, qd, cfg.o_bias);
        lin("mlp.gate_proj", i, h, cfg.mlp_bias);
        lin("mlp.up_proj", i, h, cfg.mlp_bias);
        lin("mlp.down_proj", h, i, cfg.mlp_bias);
        v.push((format!("{p}.input_layernorm.weight"), vec![h]));
        v.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
    }
    v.push(("model.norm.weight".into(), vec![h]));
    if !cfg.tie_word_embeddings {
        v.push(("lm_head.weight".into(), vec![cfg.vocab_size, h]));
    }
    v
}

impl Llama {
    /// Load every weight through `w`, checking shapes against `cfg`.
    pub fn load(cfg: LlamaConfig, w: &WeightLoader) -> Result<Self> {
        let (h, i, hd) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim);
        let (qd, kvd) = (cfg.num_heads * hd, cfg.num_kv_heads * hd);
        let lin = |name: &str, out: usize, inp: usize, bias: bool| -> Result<Linear> {
            let b = format!("{name}.bias");
            w.linear(
                &format!("{name}.weight"),
                out,
                inp,
                bias.then_some(b.as_str()),
            )
        };
        let embed_tokens = w.get("model.embed_tokens.weight", &[cfg.vocab_size, h])?;
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for l in 0..cfg.num_layers {
            let p = format!("model.layers.{l}");
            layers.push(LlamaLayer {
                input_layernorm: w.get(&format!("{p}.input_layernorm.weight"), &[h])?,
                q_proj: lin(&format!("{p}.self_attn.q_proj"), qd, h, cfg.qkv_bias)?,
                k_proj: lin(&format!("{p}.self_attn.k_proj"), kvd, h, cfg.qkv_bias)?,
                v_proj: lin(&format!("{p}.self_attn.v_proj"), kvd, h, cfg.qkv_bias)?,
                o_proj: lin(&format!("{p}.self_attn.o_proj"), h, qd, cfg.o_bias)?,
                post_attention_layernorm: w
                    .get(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
                gate_proj: lin(&format!("{p}.mlp.gate_proj"), i, h, cfg.mlp_bias)?,
                up_proj: lin(&format!("{p}.mlp.up_proj"), i, h, cfg.mlp_bias)?,
                down_proj: lin(&format!("{p}.mlp.down_proj"), h, i, cfg.mlp_bias)?,
            });
        }
        let norm = w.get("model.norm.weight", &[h])?;
        let lm_head = if !cfg.tie_word_embeddings && w.has("lm_head.weight") {
            Linear::new(w.get("lm_head.weight", &[cfg.vocab_size, h])?, None)?
        } else {
            Linear::tied(embed_tokens.clone())?
        };
        Ok(Llama {
            cfg,
            embed_tokens,
            layers,
            norm,
            lm_head,
        })
    }

    /// Logits [t, vocab] for `ids`, continuing from `cache` when given.
    pub fn forward(&self, ids: &[u32], cache: Option<&mut KvCache>) -> Result<Tensor> {
        self.head(&self.hidden(ids, cache)?)
    }

    /// The final hidden states [t, hidden] of `ids` (after the last norm), extending `cache`.
    pub fn hidden(&self, ids: &[u32], mut cache: Option<&mut KvCache>) -> Result<Tensor> {
        let c = &self.cfg;
        let t = ids.len();
        let offset = cache.as_ref().map(|c| c.len()).unwrap_or(0);
        check_ids(ids, c.vocab_size)?;
        let idx = Tensor::new(ids, &Device::Cpu)?;
        let mut x = self.embed_tokens.index_select(&idx, 0)?; // [t, h]
        let (cos, sin) = rope_tables(c.head_dim, c.rope_theta, offset, t)?;
        let mask = CausalMask {
            window: c.sliding_window,
        };
        let eps = c.rms_norm_eps as f32;
        let scale = 1.0 / (c.head_dim as f64).sqrt();
        for (li, l) in self.layers.iter().enumerate() {
            let hn = candle_nn::ops::rms_norm(&x, &l.input_layernorm, eps)?;
            let q = heads(&l.q_proj.forward(&hn)?, c.num_heads, c.head_dim)?;
            let k = heads(&l.k_proj.forward(&hn)?, c.num_kv_heads, c.head_dim)?;
            let v = heads(&l.v_proj.forward(&hn)?, c.num_kv_heads, c.head_dim)?;
            let q = apply_rope(&q, &cos, &sin, c.head_dim)?;
            let k = apply_rope(&k, &cos, &sin, c.head_dim)?;
            let (k, v) = match cache.as_deref_mut() {
                Some(kv) => kv.append(li, k, v)?,
                None => (k, v),
            };
            let a = attention(&q, &k, &v, &mask, scale)?;
            x = (x + l.o_proj.forward(&a)?)?;
            let hn = candle_nn::ops::rms_norm(&x, &l.post_attention_layernorm, eps)?;
            let g = l.gate_proj.forward(&hn)?;
            let u = l.up_proj.forward(&hn)?;
            x = (x + l.down_proj.forward(&silu_mul(&g, &u)?)?)?;
        }
        let x = candle_nn::ops::rms_norm(&x, &self.norm, eps)?;
        Ok(x)
    }

    /// Logits [rows, vocab] of hidden states [rows, hidden].
    pub fn head(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.lm_head.forward(x)?)
    }
}

/// Refuse token ids outside the vocabulary with a clear message.
pub(crate) fn check_ids(ids: &[u32], vocab: usize) -> Result<()> {
    if ids.is_empty() {
        return Err(ModelError::Input("no tokens to run".into()));
    }
    if let Some(&bad) = ids.iter().find(|&&i| i as usize >= vocab) {
        return Err(ModelError::Input(format!(
            "token id {bad} is outside the vocabulary of {vocab}"
        )));
    }
    Ok(())
}
