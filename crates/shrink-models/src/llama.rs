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
            qkv_heads: None,
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
        qkv_heads: None,
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

/// Sees the input of each linear layer of a decoder layer during a forward pass: called with
/// the linear's name inside the layer (`self_attn.q_proj`, ..., `mlp.down_proj`) and its input
/// [t, in]. Linears that share an input (q/k/v, gate/up) get the same tensor (same `id()`).
pub type Tap<'a> = &'a mut dyn FnMut(&str, &Tensor) -> Result<()>;

/// The linears of a Llama decoder layer, by their name inside the layer, in forward order.
pub const LAYER_LINEARS: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

impl LlamaLayer {
    /// Load decoder layer `l` through `w`.
    pub fn load(cfg: &LlamaConfig, w: &WeightLoader, l: usize) -> Result<Self> {
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
        let p = format!("model.layers.{l}");
        Ok(LlamaLayer {
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
        })
    }

    /// The linear named `name` inside the layer (one of [`LAYER_LINEARS`]).
    pub fn linear_mut(&mut self, name: &str) -> Option<&mut Linear> {
        Some(match name {
            "self_attn.q_proj" => &mut self.q_proj,
            "self_attn.k_proj" => &mut self.k_proj,
            "self_attn.v_proj" => &mut self.v_proj,
            "self_attn.o_proj" => &mut self.o_proj,
            "mlp.gate_proj" => &mut self.gate_proj,
            "mlp.up_proj" => &mut self.up_proj,
            "mlp.down_proj" => &mut self.down_proj,
            _ => return None,
        })
    }

    /// The layer's output [t, hidden] for input `x` [t, hidden] at the positions of `rope`
    /// (cos, sin tables), extending `cache` (the cache and this layer's index) when given;
    /// `tap` sees every linear's input.
    pub fn forward(
        &self,
        c: &LlamaConfig,
        x: &Tensor,
        rope: (&Tensor, &Tensor),
        cache: Option<(&mut KvCache, usize)>,
        mut tap: Option<Tap>,
    ) -> Result<Tensor> {
        let eps = c.rms_norm_eps as f32;
        let mut see = |name: &str, t: &Tensor| -> Result<()> {
            match tap.as_mut() {
                Some(f) => f(name, t),
                None => Ok(()),
            }
        };
        let hn = candle_nn::ops::rms_norm(x, &self.input_layernorm, eps)?;
        for n in &LAYER_LINEARS[..3] {
            see(n, &hn)?;
        }
        let a = self.attention(c, &hn, rope, cache, &mut see)?;
        let x = crate::add(x, &a)?;
        let hn = candle_nn::ops::rms_norm(&x, &self.post_attention_layernorm, eps)?;
        see(LAYER_LINEARS[4], &hn)?;
        see(LAYER_LINEARS[5], &hn)?;
        let m = self.mlp(&hn, &mut see)?;
        crate::add(&x, &m)
    }

    /// The attention block's output (after o_proj) for the normed input `hn` [t, hidden];
    /// `see` is shown o_proj's input.
    pub fn attention(
        &self,
        c: &LlamaConfig,
        hn: &Tensor,
        rope: (&Tensor, &Tensor),
        cache: Option<(&mut KvCache, usize)>,
        see: &mut dyn FnMut(&str, &Tensor) -> Result<()>,
    ) -> Result<Tensor> {
        let mask = CausalMask {
            window: c.sliding_window,
        };
        let scale = 1.0 / (c.head_dim as f64).sqrt();
        let (cos, sin) = rope;
        let q = heads(&self.q_proj.forward(hn)?, c.num_heads, c.head_dim)?;
        let k = heads(&self.k_proj.forward(hn)?, c.num_kv_heads, c.head_dim)?;
        let v = heads(&self.v_proj.forward(hn)?, c.num_kv_heads, c.head_dim)?;
        let q = apply_rope(&q, cos, sin, c.head_dim)?;
        let k = apply_rope(&k, cos, sin, c.head_dim)?;
        let (k, v) = match cache {
            Some((kv, li)) => kv.append(li, k, v)?,
            None => (k, v),
        };
        let a = attention(&q, &k, &v, &mask, scale)?;
        see(LAYER_LINEARS[3], &a)?;
        Ok(self.o_proj.forward(&a)?)
    }

    /// One token through the layer on plain slices ([`crate::decode`]): `x` (`[hidden]`, at
    /// the position of `rope`'s cos and sin rows) is updated in place, and its keys and values
    /// are appended to layer `li` of `cache`. The same arithmetic as [`Self::forward`].
    pub fn step(
        &self,
        c: &LlamaConfig,
        x: &mut [f32],
        rope: (&[f32], &[f32]),
        cache: &mut KvCache,
        li: usize,
    ) -> Result<()> {
        use crate::decode::{add_into, attend, rms_norm};
        use crate::with_f32;
        let eps = c.rms_norm_eps as f32;
        let hn = with_f32(&self.input_layernorm, |w| rms_norm(x, w, eps))?;
        let [mut q, mut k, v]: [Vec<f32>; 3] =
            Linear::forward_group(&[&self.q_proj, &self.k_proj, &self.v_proj], &hn, 1)?
                .try_into()
                .expect("three products");
        crate::decode::rope(&mut q, c.num_heads, rope.0, rope.1);
        crate::decode::rope(&mut k, c.num_kv_heads, rope.0, rope.1);
        let scale = (1.0 / (c.head_dim as f64).sqrt()) as f32;
        let a = cache.append_one(li, &k, &v, c.num_kv_heads, |kv| {
            let lo = c.sliding_window.map_or(0, |w| kv.len.saturating_sub(w));
            attend(&q, c.num_heads, &kv, lo, scale)
        })?;
        add_into(x, &self.o_proj.forward_slice(&a, 1)?);
        let hn = with_f32(&self.post_attention_layernorm, |w| rms_norm(x, w, eps))?;
        let [g, u]: [Vec<f32>; 2] =
            Linear::forward_group(&[&self.gate_proj, &self.up_proj], &hn, 1)?
                .try_into()
                .expect("two products");
        let mut m = vec![0f32; g.len()];
        crate::kernels::silu_mul(&g, &u, &mut m);
        add_into(x, &self.down_proj.forward_slice(&m, 1)?);
        Ok(())
    }

    /// The MLP's output (after down_proj) for the normed input `hn` [t, hidden]; `see` is
    /// shown down_proj's input.
    pub fn mlp(
        &self,
        hn: &Tensor,
        see: &mut dyn FnMut(&str, &Tensor) -> Result<()>,
    ) -> Result<Tensor> {
        let g = self.gate_proj.forward(hn)?;
        let u = self.up_proj.forward(hn)?;
        let m = silu_mul(&g, &u)?;
        see(LAYER_LINEARS[6], &m)?;
        Ok(self.down_proj.forward(&m)?)
    }
}

impl Llama {
    /// Load every weight through `w`, checking shapes against `cfg`.
    pub fn load(cfg: LlamaConfig, w: &WeightLoader) -> Result<Self> {
        let h = cfg.hidden_size;
        let embed_tokens = w.get("model.embed_tokens.weight", &[cfg.vocab_size, h])?;
        let layers = (0..cfg.num_layers)
            .map(|l| LlamaLayer::load(&cfg, w, l))
            .collect::<Result<Vec<_>>>()?;
        let norm = w.get("model.norm.weight", &[h])?;
        let untied = !cfg.tie_word_embeddings && w.has("lm_head.weight");
        let lm_head = w.head(
            untied.then_some("lm_head.weight"),
            "model.embed_tokens.weight",
            &embed_tokens,
        )?;
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

    /// The final hidden state [1, hidden] of token `id` at the position after `cache`,
    /// extending it: the tensor path's arithmetic on plain slices, without its per-op cost
    /// ([`crate::decode`]).
    pub fn step(&self, id: u32, cache: &mut KvCache) -> Result<Tensor> {
        use crate::decode::rms_norm;
        use crate::with_f32;
        let c = &self.cfg;
        check_ids(&[id], c.vocab_size)?;
        let h = c.hidden_size;
        let at = id as usize * h;
        let mut x = with_f32(&self.embed_tokens, |e| e[at..at + h].to_vec())?;
        let (cos, sin) = crate::layers::rope_row(c.head_dim, c.rope_theta, cache.len());
        for (li, l) in self.layers.iter().enumerate() {
            l.step(c, &mut x, (&cos, &sin), cache, li)?;
        }
        let xn = with_f32(&self.norm, |w| rms_norm(&x, w, c.rms_norm_eps as f32))?;
        Ok(Tensor::from_vec(xn, (1, h), &Device::Cpu)?)
    }

    /// The final hidden states [t, hidden] of `ids` (after the last norm), extending `cache`.
    /// One token with a cache (generation) goes through [`Self::step`].
    pub fn hidden(&self, ids: &[u32], mut cache: Option<&mut KvCache>) -> Result<Tensor> {
        if let (&[id], Some(kv)) = (ids, cache.as_deref_mut()) {
            return self.step(id, kv);
        }
        let c = &self.cfg;
        let t = ids.len();
        let offset = cache.as_ref().map(|c| c.len()).unwrap_or(0);
        check_ids(ids, c.vocab_size)?;
        let idx = Tensor::new(ids, &Device::Cpu)?;
        let mut x = self.embed_tokens.index_select(&idx, 0)?; // [t, h]
        let (cos, sin) = rope_tables(c.head_dim, c.rope_theta, offset, t)?;
        let eps = c.rms_norm_eps as f32;
        for (li, l) in self.layers.iter().enumerate() {
            let kv = cache.as_deref_mut().map(|kv| (kv, li));
            x = l.forward(c, &x, (&cos, &sin), kv, None)?;
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
