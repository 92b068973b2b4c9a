//! GPT-2, following transformers' `models/gpt2/modeling_gpt2.py`.
//!
//! Its projections are `Conv1D` layers whose weights are stored [in, out] (the transpose of
//! `nn.Linear`); they are transposed once at load so every layer is a plain [`Linear`].
//! llama.cpp's converter already stores them [out, in] in GGUF.

use candle_core::{Device, Module, Tensor};

use crate::config::Gpt2Config;
use crate::error::Result;
use crate::layers::{activation, attention, heads, CausalMask, KvCache};
use crate::linear::Linear;
use crate::llama::{check_ids, Tap};
use crate::weights::{GgufName, WeightLoader};

/// One transformer block.
#[derive(Debug, Clone)]
pub struct Gpt2Block {
    /// LayerNorm before attention (weight, bias).
    pub ln_1: (Tensor, Tensor),
    /// Fused q/k/v projection.
    pub c_attn: Linear,
    /// Attention output projection.
    pub attn_c_proj: Linear,
    /// LayerNorm before the MLP.
    pub ln_2: (Tensor, Tensor),
    /// MLP up projection.
    pub c_fc: Linear,
    /// MLP down projection.
    pub mlp_c_proj: Linear,
}

/// A GPT-2 language model with its (tied) head.
#[derive(Debug, Clone)]
pub struct Gpt2 {
    /// Configuration.
    pub cfg: Gpt2Config,
    /// Token embedding [vocab, n_embd].
    pub wte: Tensor,
    /// Position embedding [n_positions, n_embd].
    pub wpe: Tensor,
    /// Blocks.
    pub blocks: Vec<Gpt2Block>,
    /// Final LayerNorm.
    pub ln_f: (Tensor, Tensor),
    /// LM head.
    pub lm_head: Linear,
}

/// Names of the Conv1D weights stored [in, out] in HF checkpoints.
const CONV1D: [&str; 4] = ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"];

/// llama.cpp's name for a GPT-2 HF weight.
pub fn gguf_name(hf: &str) -> Option<GgufName> {
    let hf = hf.strip_prefix("transformer.").unwrap_or(hf);
    let plain = |n: String| {
        Some(GgufName {
            name: n,
            unpermute_heads: None,
            qkv_heads: None,
        })
    };
    match hf {
        "wte.weight" => return plain("token_embd.weight".into()),
        "wpe.weight" => return plain("position_embd.weight".into()),
        "ln_f.weight" => return plain("output_norm.weight".into()),
        "ln_f.bias" => return plain("output_norm.bias".into()),
        "lm_head.weight" => return plain("output.weight".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("h.")?;
    let (idx, name) = rest.split_once('.')?;
    let (module, kind) = name.rsplit_once('.')?;
    let gg = match module {
        "ln_1" => "attn_norm",
        "attn.c_attn" => "attn_qkv",
        "attn.c_proj" => "attn_output",
        "ln_2" => "ffn_norm",
        "mlp.c_fc" => "ffn_up",
        "mlp.c_proj" => "ffn_down",
        _ => return None,
    };
    plain(format!("blk.{idx}.{gg}.{kind}"))
}

/// HF names and shapes (as stored in HF checkpoints: Conv1D [in, out]) of every weight.
pub fn weight_shapes(cfg: &Gpt2Config) -> Vec<(String, Vec<usize>)> {
    let (e, inner) = (cfg.n_embd, cfg.n_inner);
    let mut v = vec![
        (
            "transformer.wte.weight".to_string(),
            vec![cfg.vocab_size, e],
        ),
        (
            "transformer.wpe.weight".to_string(),
            vec![cfg.n_positions, e],
        ),
    ];
    for l in 0..cfg.n_layer {
        let p = format!("transformer.h.{l}");
        for (m, i, o) in [
            ("attn.c_attn", e, 3 * e),
            ("attn.c_proj", e, e),
            ("mlp.c_fc", e, inner),
            ("mlp.c_proj", inner, e),
        ] {
            v.push((format!("{p}.{m}.weight"), vec![i, o]));
            v.push((format!("{p}.{m}.bias"), vec![o]));
        }
        for n in ["ln_1", "ln_2"] {
            v.push((format!("{p}.{n}.weight"), vec![e]));
            v.push((format!("{p}.{n}.bias"), vec![e]));
        }
    }
    v.push(("transformer.ln_f.weight".into(), vec![e]));
    v.push(("transformer.ln_f.bias".into(), vec![e]));
    v
}

/// Whether an HF GPT-2 weight name is a Conv1D weight stored [in, out].
pub fn is_conv1d_weight(hf: &str) -> bool {
    CONV1D.iter().any(|m| hf.ends_with(&format!("{m}.weight")))
}

/// The linears of a GPT-2 block, by their name inside the block, in forward order.
pub const BLOCK_LINEARS: [&str; 4] = CONV1D;

impl Gpt2Block {
    /// Load block `l` through `w` (Conv1D weights transposed to [out, in]; quantized ones are
    /// stored [out, in] already).
    pub fn load(cfg: &Gpt2Config, w: &WeightLoader, l: usize) -> Result<Self> {
        let e = cfg.n_embd;
        let gguf = matches!(w.checkpoint(), shrink_io::Checkpoint::Gguf(_));
        let conv = |name: &str, inp: usize, out: usize| -> Result<Linear> {
            let weight = format!("{name}.weight");
            let bias = Some(w.get(&format!("{name}.bias"), &[out])?);
            if let shrink_io::Checkpoint::Hf(h) = w.checkpoint() {
                if let Some(q) = h.quantized(&weight)? {
                    return w.adapt(&weight, Linear::quantized(q, bias));
                }
            }
            w.adapt(
                &weight,
                if gguf {
                    Linear::new(w.get(&weight, &[out, inp])?, bias)?
                } else {
                    Linear::from_transposed(w.get(&weight, &[inp, out])?, bias)?
                },
            )
        };
        let p = format!("transformer.h.{l}");
        Ok(Gpt2Block {
            ln_1: w.layer_norm(&format!("{p}.ln_1"), e)?,
            c_attn: conv(&format!("{p}.attn.c_attn"), e, 3 * e)?,
            attn_c_proj: conv(&format!("{p}.attn.c_proj"), e, e)?,
            ln_2: w.layer_norm(&format!("{p}.ln_2"), e)?,
            c_fc: conv(&format!("{p}.mlp.c_fc"), e, cfg.n_inner)?,
            mlp_c_proj: conv(&format!("{p}.mlp.c_proj"), cfg.n_inner, e)?,
        })
    }

    /// The linear named `name` inside the block (one of [`BLOCK_LINEARS`]).
    pub fn linear(&self, name: &str) -> Option<&Linear> {
        Some(match name {
            "attn.c_attn" => &self.c_attn,
            "attn.c_proj" => &self.attn_c_proj,
            "mlp.c_fc" => &self.c_fc,
            "mlp.c_proj" => &self.mlp_c_proj,
            _ => return None,
        })
    }

    /// The linear named `name` inside the block, to replace.
    pub fn linear_mut(&mut self, name: &str) -> Option<&mut Linear> {
        Some(match name {
            "attn.c_attn" => &mut self.c_attn,
            "attn.c_proj" => &mut self.attn_c_proj,
            "mlp.c_fc" => &mut self.c_fc,
            "mlp.c_proj" => &mut self.mlp_c_proj,
            _ => return None,
        })
    }

    /// The block's output [t, n_embd] for input `x`, as block `li` (its index scales the
    /// attention with `scale_attn_by_inverse_layer_idx`), extending `cache` when given; `tap`
    /// sees every linear's input.
    pub fn forward(
        &self,
        c: &Gpt2Config,
        li: usize,
        x: &Tensor,
        cache: Option<(&mut KvCache, usize)>,
        mut tap: Option<Tap>,
    ) -> Result<Tensor> {
        let mut see = |name: &str, t: &Tensor| -> Result<()> {
            match tap.as_mut() {
                Some(f) => f(name, t),
                None => Ok(()),
            }
        };
        let eps = c.layer_norm_epsilon as f32;
        let h = candle_nn::ops::layer_norm(x, &self.ln_1.0, &self.ln_1.1, eps)?;
        see(BLOCK_LINEARS[0], &h)?;
        let x = crate::add(x, &self.attention(c, li, &h, cache, &mut see)?)?;
        let h = candle_nn::ops::layer_norm(&x, &self.ln_2.0, &self.ln_2.1, eps)?;
        see(BLOCK_LINEARS[2], &h)?;
        crate::add(&x, &self.mlp(c, &h, &mut see)?)
    }

    /// The attention's output (after `attn.c_proj`) for the normed input `h`; `see` is shown
    /// `attn.c_proj`'s input.
    pub fn attention(
        &self,
        c: &Gpt2Config,
        li: usize,
        h: &Tensor,
        cache: Option<(&mut KvCache, usize)>,
        see: &mut dyn FnMut(&str, &Tensor) -> Result<()>,
    ) -> Result<Tensor> {
        let hd = c.n_embd / c.n_head;
        let qkv = self.c_attn.forward(h)?;
        let q = heads(&qkv.narrow(1, 0, c.n_embd)?, c.n_head, hd)?;
        let k = heads(&qkv.narrow(1, c.n_embd, c.n_embd)?, c.n_head, hd)?;
        let v = heads(&qkv.narrow(1, 2 * c.n_embd, c.n_embd)?, c.n_head, hd)?;
        let (k, v) = match cache {
            Some((kv, i)) => kv.append(i, k, v)?,
            None => (k, v),
        };
        let mut scale = 1.0 / (hd as f64).sqrt();
        if c.scale_attn_by_inverse_layer_idx {
            scale /= (li + 1) as f64;
        }
        let a = attention(&q, &k, &v, &CausalMask { window: None }, scale)?;
        see(BLOCK_LINEARS[1], &a)?;
        Ok(self.attn_c_proj.forward(&a)?)
    }

    /// The MLP's output (after `mlp.c_proj`) for the normed input `h`; `see` is shown
    /// `mlp.c_proj`'s input.
    pub fn mlp(
        &self,
        c: &Gpt2Config,
        h: &Tensor,
        see: &mut dyn FnMut(&str, &Tensor) -> Result<()>,
    ) -> Result<Tensor> {
        let m = activation(&c.activation, &self.c_fc.forward(h)?)?;
        see(BLOCK_LINEARS[3], &m)?;
        Ok(self.mlp_c_proj.forward(&m)?)
    }
}

impl Gpt2 {
    /// Load every weight through `w`.
    pub fn load(cfg: Gpt2Config, w: &WeightLoader) -> Result<Self> {
        let e = cfg.n_embd;
        let wte = w.get("transformer.wte.weight", &[cfg.vocab_size, e])?;
        let wpe = w.get("transformer.wpe.weight", &[cfg.n_positions, e])?;
        let blocks = (0..cfg.n_layer)
            .map(|l| Gpt2Block::load(&cfg, w, l))
            .collect::<Result<Vec<_>>>()?;
        let ln_f = w.layer_norm("transformer.ln_f", e)?;
        let lm_head = w.head(
            w.has("lm_head.weight").then_some("lm_head.weight"),
            "transformer.wte.weight",
            &wte,
        )?;
        Ok(Gpt2 {
            cfg,
            wte,
            wpe,
            blocks,
            ln_f,
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
        if offset + t > c.n_positions {
            return Err(crate::error::ModelError::Input(format!(
                "context of {} tokens exceeds GPT-2's {} positions",
                offset + t,
                c.n_positions
            )));
        }
        let idx = Tensor::new(ids, &Device::Cpu)?;
        let pos: Vec<u32> = (offset as u32..(offset + t) as u32).collect();
        let pos = Tensor::new(pos.as_slice(), &Device::Cpu)?;
        let mut x = (self.wte.index_select(&idx, 0)? + self.wpe.index_select(&pos, 0)?)?;
        for (li, b) in self.blocks.iter().enumerate() {
            let kv = cache.as_deref_mut().map(|kv| (kv, li));
            x = b.forward(c, li, &x, kv, None)?;
        }
        let eps = c.layer_norm_epsilon as f32;
        let x = candle_nn::ops::layer_norm(&x, &self.ln_f.0, &self.ln_f.1, eps)?;
        Ok(x)
    }

    /// Logits [rows, vocab] of hidden states [rows, hidden].
    pub fn head(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.lm_head.forward(x)?)
    }
}
