//! GPT-NeoX / Pythia, following transformers' `models/gpt_neox/modeling_gpt_neox.py`:
//! fused q/k/v laid out per head, partial rotary embeddings, parallel residual.

use candle_core::{Device, Module, Tensor};

use crate::config::NeoxConfig;
use crate::error::Result;
use crate::layers::{activation, apply_rope, attention, rope_tables, CausalMask, KvCache};
use crate::linear::Linear;
use crate::llama::{check_ids, Tap};
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

/// Rotary dimensions of a head: `rotary_pct` of it, even.
fn rotary_dims(c: &NeoxConfig) -> usize {
    let hd = c.hidden_size / c.num_heads;
    ((hd as f64 * c.rotary_pct) as usize) & !1
}

/// The rotary (cos, sin) tables of positions `offset..offset + t`.
pub fn rope(c: &NeoxConfig, offset: usize, t: usize) -> Result<(Tensor, Tensor)> {
    rope_tables(rotary_dims(c).max(2), c.rope_theta, offset, t)
}

/// The linears of a GPT-NeoX layer, by their name inside the layer, in forward order.
pub const LAYER_LINEARS: [&str; 4] = [
    "attention.query_key_value",
    "attention.dense",
    "mlp.dense_h_to_4h",
    "mlp.dense_4h_to_h",
];

impl NeoxLayer {
    /// Load layer `l` through `w`.
    pub fn load(cfg: &NeoxConfig, w: &WeightLoader, l: usize) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let lin = |name: &str, out: usize, inp: usize| -> Result<Linear> {
            let b = format!("{name}.bias");
            w.linear(&format!("{name}.weight"), out, inp, Some(b.as_str()))
        };
        let p = format!("gpt_neox.layers.{l}");
        Ok(NeoxLayer {
            input_layernorm: w.layer_norm(&format!("{p}.input_layernorm"), h)?,
            post_attention_layernorm: w.layer_norm(&format!("{p}.post_attention_layernorm"), h)?,
            query_key_value: lin(&format!("{p}.attention.query_key_value"), 3 * h, h)?,
            dense: lin(&format!("{p}.attention.dense"), h, h)?,
            dense_h_to_4h: lin(&format!("{p}.mlp.dense_h_to_4h"), i, h)?,
            dense_4h_to_h: lin(&format!("{p}.mlp.dense_4h_to_h"), h, i)?,
        })
    }

    /// The linear named `name` inside the layer (one of [`LAYER_LINEARS`]).
    pub fn linear(&self, name: &str) -> Option<&Linear> {
        Some(match name {
            "attention.query_key_value" => &self.query_key_value,
            "attention.dense" => &self.dense,
            "mlp.dense_h_to_4h" => &self.dense_h_to_4h,
            "mlp.dense_4h_to_h" => &self.dense_4h_to_h,
            _ => return None,
        })
    }

    /// The linear named `name` inside the layer, to replace.
    pub fn linear_mut(&mut self, name: &str) -> Option<&mut Linear> {
        Some(match name {
            "attention.query_key_value" => &mut self.query_key_value,
            "attention.dense" => &mut self.dense,
            "mlp.dense_h_to_4h" => &mut self.dense_h_to_4h,
            "mlp.dense_4h_to_h" => &mut self.dense_4h_to_h,
            _ => return None,
        })
    }

    /// The layer's output for input `x` [t, hidden] at the positions of `rope`, extending
    /// `cache` when given; `tap` sees every linear's input.
    pub fn forward(
        &self,
        c: &NeoxConfig,
        x: &Tensor,
        rope: (&Tensor, &Tensor),
        cache: Option<(&mut KvCache, usize)>,
        mut tap: Option<Tap>,
    ) -> Result<Tensor> {
        let mut see = |name: &str, t: &Tensor| -> Result<()> {
            match tap.as_mut() {
                Some(f) => f(name, t),
                None => Ok(()),
            }
        };
        let eps = c.layer_norm_eps as f32;
        let (w1, b1) = &self.input_layernorm;
        let h1 = candle_nn::ops::layer_norm(x, w1, b1, eps)?;
        see(LAYER_LINEARS[0], &h1)?;
        let a = self.attention(c, &h1, rope, cache, &mut see)?;
        let (w2, b2) = &self.post_attention_layernorm;
        if c.use_parallel_residual {
            let h2 = candle_nn::ops::layer_norm(x, w2, b2, eps)?;
            see(LAYER_LINEARS[2], &h2)?;
            let m = self.mlp(c, &h2, &mut see)?;
            crate::add(&crate::add(x, &a)?, &m)
        } else {
            let hres = crate::add(x, &a)?;
            let h2 = candle_nn::ops::layer_norm(&hres, w2, b2, eps)?;
            see(LAYER_LINEARS[2], &h2)?;
            let m = self.mlp(c, &h2, &mut see)?;
            crate::add(&hres, &m)
        }
    }

    /// The attention's output (after `attention.dense`) for the normed input `h1`; `see` is
    /// shown `attention.dense`'s input.
    pub fn attention(
        &self,
        c: &NeoxConfig,
        h1: &Tensor,
        rope: (&Tensor, &Tensor),
        cache: Option<(&mut KvCache, usize)>,
        see: &mut dyn FnMut(&str, &Tensor) -> Result<()>,
    ) -> Result<Tensor> {
        let t = h1.dim(0)?;
        let hd = c.hidden_size / c.num_heads;
        let rot = rotary_dims(c);
        let (cos, sin) = rope;
        // [t, 3h] viewed as [t, heads, 3·hd]; per head q, k, v are consecutive.
        let qkv = self
            .query_key_value
            .forward(h1)?
            .reshape((t, c.num_heads, 3 * hd))?
            .transpose(0, 1)?;
        let q = qkv.narrow(2, 0, hd)?.contiguous()?;
        let k = qkv.narrow(2, hd, hd)?.contiguous()?;
        let v = qkv.narrow(2, 2 * hd, hd)?.contiguous()?;
        let (q, k) = if rot > 0 {
            (
                apply_rope(&q, cos, sin, rot)?,
                apply_rope(&k, cos, sin, rot)?,
            )
        } else {
            (q, k)
        };
        let (k, v) = match cache {
            Some((kv, li)) => kv.append(li, k, v)?,
            None => (k, v),
        };
        let scale = 1.0 / (hd as f64).sqrt();
        let a = attention(&q, &k, &v, &CausalMask { window: None }, scale)?;
        see(LAYER_LINEARS[1], &a)?;
        Ok(self.dense.forward(&a)?)
    }

    /// The MLP's output (after `mlp.dense_4h_to_h`) for the normed input `h2`; `see` is shown
    /// `mlp.dense_4h_to_h`'s input.
    pub fn mlp(
        &self,
        c: &NeoxConfig,
        h2: &Tensor,
        see: &mut dyn FnMut(&str, &Tensor) -> Result<()>,
    ) -> Result<Tensor> {
        let m = activation(&c.hidden_act, &self.dense_h_to_4h.forward(h2)?)?;
        see(LAYER_LINEARS[3], &m)?;
        Ok(self.dense_4h_to_h.forward(&m)?)
    }
}

impl Neox {
    /// Load every weight through `w`.
    pub fn load(cfg: NeoxConfig, w: &WeightLoader) -> Result<Self> {
        let h = cfg.hidden_size;
        let ln = |name: &str| w.layer_norm(name, h);
        let embed_in = w.get("gpt_neox.embed_in.weight", &[cfg.vocab_size, h])?;
        let layers = (0..cfg.num_layers)
            .map(|l| NeoxLayer::load(&cfg, w, l))
            .collect::<Result<Vec<_>>>()?;
        let final_layer_norm = ln("gpt_neox.final_layer_norm")?;
        let embed_out = w.head(
            w.has("embed_out.weight").then_some("embed_out.weight"),
            "gpt_neox.embed_in.weight",
            &embed_in,
        )?;
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
        let idx = Tensor::new(ids, &Device::Cpu)?;
        let mut x = self.embed_in.index_select(&idx, 0)?;
        let (cos, sin) = rope(c, offset, t)?;
        for (li, l) in self.layers.iter().enumerate() {
            let kv = cache.as_deref_mut().map(|kv| (kv, li));
            x = l.forward(c, &x, (&cos, &sin), kv, None)?;
        }
        let eps = c.layer_norm_eps as f32;
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
