//! GPT-NeoX / Pythia, following transformers' `models/gpt_neox/modeling_gpt_neox.py`:
//! fused q/k/v laid out per head, partial rotary embeddings, parallel residual.

use candle_core::{Device, Module, Tensor};

use crate::config::NeoxConfig;
use crate::error::Result;
use crate::layers::{activation, apply_rope, attention, rope_tables, CausalMask, KvCache};
use crate::linear::Linear;
use crate::llama::check_ids;
use crate::weights::{GgufName, WeightLoader};

/// One layer.
#[derive(Debug, Clone)]
pub struct NeoxLayer {
    /// LayerNorm before attention.
    pub input_layernorm: (Tensor, Tensor),
    /// LayerNorm before the MLP.
    pub post_attention_layernorm: (Tensor, Tensor),
    /// Fused projection: per head, [q | k | v].
    pub query_key_value: Linear,
    /// Attention output projection.
    pub dense: Linear,
    /// MLP up projection.
    pub dense_h_to_4h: Linear,
    /// MLP down projection.
    pub dense_4h_to_h: Linear,
}

/// A GPT-NeoX causal language model.
#[derive(Debug, Clone)]
pub struct Neox {
    /// Configuration.
    pub cfg: NeoxConfig,
    /// Token embedding.
    pub embed_in: Tensor,
    /// Layers.
    pub layers: Vec<NeoxLayer>,
    /// Final LayerNorm.
    pub final_layer_norm: (Tensor, Tensor),
    /// Output head.
    pub embed_out: Linear,
}

/// llama.cpp's name for a GPT-NeoX HF weight (the fused QKV rows regrouped as its converter
/// does).
pub fn gguf_name(cfg: &NeoxConfig, hf: &str) -> Option<GgufName> {
    let plain = |n: String| {
        Some(GgufName {
            name: n,
            unpermute_heads: None,
            qkv_heads: None,
        })
    };
    match hf {
        "gpt_neox.embed_in.weight" => return plain("token_embd.weight".into()),
        "gpt_neox.final_layer_norm.weight" => return plain("output_norm.weight".into()),
        "gpt_neox.final_layer_norm.bias" => return plain("output_norm.bias".into()),
        "embed_out.weight" => return plain("output.weight".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("gpt_neox.layers.")?;
    let (idx, name) = rest.split_once('.')?;
    let (module, kind) = name.rsplit_once('.')?;
    let gg = match module {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "attention.query_key_value" => "attn_qkv",
        "attention.dense" => "attn_output",
        "mlp.dense_h_to_4h" => "ffn_up",
        "mlp.dense_4h_to_h" => "ffn_down",
        _ => return None,
    };
    Some(GgufName {
        name: format!("blk.{idx}.{gg}.{kind}"),
        unpermute_heads: None,
        qkv_heads: (gg == "attn_qkv").then_some(cfg.num_heads),
    })
}

/// HF names and shapes of every weight the configuration implies.
pub fn weight_shapes(cfg: &NeoxConfig) -> Vec<(String, Vec<usize>)> {
    let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
    let mut v = vec![(
        "gpt_neox.embed_in.weight".to_string(),
        vec![cfg.vocab_size, h],
    )];
    for l in 0..cfg.num_layers {
        let p = format!("gpt_neox.layers.{l}");
        for n in ["input_layernorm", "post_attention_layernorm"] {
            v.push((format!("{p}.{n}.weight"), vec![h]));
            v.push((format!("{p}.{n}.bias"), vec![h]));
        }
        for (m, o, inp, bias) in [
            ("attention.query_key_value", 3 * h, h, cfg.attention_bias),
            ("attention.dense", h, h, cfg.attention_bias),
            ("mlp.dense_h_to_4h", i, h, true),
            ("mlp.dense_4h_to_h", h, i, true),
        ] {
            v.push((format!("{p}.{m}.weight"), vec![o, inp]));
            if bias {
                v.push((format!("{p}.{m}.bias"), vec![o]));
            }
        }
    }
    v.push(("gpt_neox.final_layer_norm.weight".into(), vec![h]));
    v.push(("gpt_neox.final_layer_norm.bias".into(), vec![h]));
    if !cfg.tie_word_embeddings {
        v.push(("embed_out.weight".into(), vec![cfg.vocab_size, h]));
    }
    v
}

impl Neox {
    /// Load every weight through `w`.
    pub fn load(cfg: NeoxConfig, w: &WeightLoader) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let lin = |name: &str, out: usize, inp: usize| -> Result<Linear> {
            let b = format!("{name}.bias");
            w.linear(&format!("{name}.weight"), out, inp, Some(b.as_str()))
        };
        let ln = |name: &str| -> Result<(Tensor, Tensor)> {
            Ok((
                w.get(&format!("{name}.weight"), &[h])?,
                w.get(&format!("{name}.bias"), &[h])?,
            ))
        };
        let embed_in = w.get("gpt_neox.embed_in.weight", &[cfg.vocab_size, h])?;
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for l in 0..cfg.num_layers {
            let p = format!("gpt_neox.layers.{l}");
            layers.push(NeoxLayer {
                input_layernorm: ln(&format!("{p}.input_layernorm"))?,
                post_attention_layernorm: ln(&format!("{p}.post_attention_layernorm"))?,
                query_key_value: lin(&format!("{p}.attention.query_key_value"), 3 * h, h)?,
                dense: lin(&format!("{p}.attention.dense"), h, h)?,
                dense_h_to_4h: lin(&format!("{p}.mlp.dense_h_to_4h"), i, h)?,
                dense_4h_to_h: lin(&format!("{p}.mlp.dense_4h_to_h"), h, i)?,
            });
        }
        let final_layer_norm = ln("gpt_neox.final_layer_norm")?;
        let embed_out = match w.get_opt("embed_out.weight", &[cfg.vocab_size, h])? {
            Some(o) => Linear::new(o, None)?,
            None => Linear::tied(embed_in.clone())?,
        };
        Ok(Neox {
            cfg,
            embed_in,
            layers,
            final_layer_norm,
            embed_out,
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
        let hd = c.hidden_size / c.num_heads;
        let rot = ((hd as f64 * c.rotary_pct) as usize) & !1;
        let idx = Tensor::new(ids, &Device::Cpu)?;
        let mut x = self.embed_in.index_select(&idx, 0)?;
        let (cos, sin) = rope_tables(rot.max(2), c.rope_theta, offset, t)?;
        let mask = CausalMask { window: None };
        let eps = c.layer_norm_eps as f32;
        let scale = 1.0 / (hd as f64).sqrt();
        for (li, l) in self.layers.iter().enumerate() {
            let h1 =
                candle_nn::ops::layer_norm(&x, &l.input_layernorm.0, &l.input_layernorm.1, eps)?;
            // [t, 3h] viewed as [t, heads, 3·hd]; per head q, k, v are consecutive.
            let qkv = l
                .query_key_value
                .forward(&h1)?
                .reshape((t, c.num_heads, 3 * hd))?
                .transpose(0, 1)?;
            let q = qkv.narrow(2, 0, hd)?.contiguous()?;
            let k = qkv.narrow(2, hd, hd)?.contiguous()?;
            let v = qkv.narrow(2, 2 * hd, hd)?.contiguous()?;
            let (q, k) = if rot > 0 {
                (
                    apply_rope(&q, &cos, &sin, rot)?,
                    apply_rope(&k, &cos, &sin, rot)?,
                )
            } else {
                (q, k)
            };
            let (k, v) = match cache.as_deref_mut() {
                Some(kv) => kv.append(li, k, v)?,
                None => (k, v),
            };
            let a = l.dense.forward(&attention(&q, &k, &v, &mask, scale)?)?;
            let mlp = |inp: &Tensor| -> Result<Tensor> {
                let h2 = candle_nn::ops::layer_norm(
                    inp,
                    &l.post_attention_layernorm.0,
                    &l.post_attention_layernorm.1,
                    eps,
                )?;
                Ok(l.dense_4h_to_h
                    .forward(&activation(&c.hidden_act, &l.dense_h_to_4h.forward(&h2)?)?)?)
            };
            if c.use_parallel_residual {
                let m = mlp(&x)?;
                x = ((x + a)? + m)?;
            } else {
                let hres = (x + a)?;
                x = (&hres + mlp(&hres)?)?;
            }
        }
        let x = candle_nn::ops::layer_norm(
            &x,
            &self.final_layer_norm.0,
            &self.final_layer_norm.1,
            eps,
        )?;
        Ok(x)
    }

    /// Logits [rows, vocab] of hidden states [rows, hidden].
    pub fn head(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.embed_out.forward(x)?)
    }
}
