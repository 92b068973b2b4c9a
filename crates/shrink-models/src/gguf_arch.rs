//! How a Hugging Face architecture maps onto llama.cpp's GGUF, as `convert_hf_to_gguf.py`
//! writes it (the writing side of [`crate::weights`], which reads GGUF names back): the architecture name, its `<arch>.*` hyperparameters in the converter's order,
//! tensor names, and the row transforms it applies (Llama's Q/K permutation, GPT-2's Conv1D
//! transpose, GPT-NeoX's QKV regrouping).
//!
//! | HF `model_type` | GGUF architecture | converter class |
//! |---|---|---|
//! | llama, mistral | `llama` | `LlamaModel` (Q/K rows permuted) |
//! | qwen2 | `qwen2` | `Qwen2Model` (biases, no permutation) |
//! | gpt2 | `gpt2` | `GPT2Model` (Conv1D weights transposed to [out, in]) |
//! | gpt_neox | `gptneox` | `GPTNeoXModel` (fused QKV rows regrouped q/k/v) |

use std::path::Path;

use shrink_io::GgufValue;

use crate::weights::{permute_rows, qkv_to_gguf};
use crate::{ModelConfig, ModelError, Result};

/// A row transform of `convert_hf_to_gguf.py`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transform {
    /// Stored as is.
    None,
    /// Llama's Q/K row permutation over this many heads.
    PermuteQk(usize),
    /// GPT-NeoX's fused QKV rows regrouped [q; k; v] over this many heads.
    NeoxQkv(usize),
    /// A GPT-2 Conv1D weight [in, out] transposed to [out, in].
    Transpose,
}

impl Transform {
    /// The shape after the transform.
    pub fn shape(self, shape: &[usize]) -> Vec<usize> {
        match (self, shape) {
            (Transform::Transpose, [r, c]) => vec![*c, *r],
            _ => shape.to_vec(),
        }
    }

    /// Apply to `v` of `shape` (outermost first); errors name `name` when the rows do not split.
    pub fn apply(self, name: &str, v: Vec<f32>, shape: &[usize]) -> Result<Vec<f32>> {
        let rows = shape.first().copied().unwrap_or(1);
        let cols = v.len() / rows.max(1);
        Ok(match self {
            Transform::None => v,
            Transform::PermuteQk(heads) => {
                if rows % heads != 0 || (rows / heads) % 2 != 0 {
                    return Err(ModelError::Input(format!(
                        "tensor {name}: {rows} rows do not split into {heads} heads of even size"
                    )));
                }
                permute_rows(&v, rows, cols, heads)
            }
            Transform::NeoxQkv(heads) => {
                if rows % (3 * heads) != 0 {
                    return Err(ModelError::Input(format!(
                        "tensor {name}: {rows} rows are not q, k and v of {heads} heads"
                    )));
                }
                qkv_to_gguf(&v, rows, cols, heads)
            }
            Transform::Transpose => {
                let mut out = vec![0f32; v.len()];
                for r in 0..rows {
                    for c in 0..cols {
                        out[c * rows + r] = v[r * cols + c];
                    }
                }
                out
            }
        })
    }
}

/// An HF model's GGUF mapping.
pub struct GgufArch<'a> {
    cfg: &'a ModelConfig,
    /// llama.cpp's architecture name.
    pub name: &'static str,
}

impl<'a> GgufArch<'a> {
    /// The mapping of `cfg` (read from `dir`), or an error for an architecture llama.cpp has no
    /// mapping for here.
    pub fn of(cfg: &'a ModelConfig, dir: &Path) -> Result<GgufArch<'a>> {
        let name = match cfg {
            ModelConfig::Llama(c) => match c.model_type.as_str() {
                "llama" | "mistral" => "llama",
                "qwen2" => "qwen2",
                other => {
                    return Err(ModelError::Config {
                        path: dir.to_path_buf(),
                        what: format!(
                            "no GGUF mapping for model_type {other:?} (shrink exports llama, \
                             mistral, qwen2, gpt2 and gpt_neox)"
                        ),
                    })
                }
            },
            ModelConfig::Gpt2(_) => "gpt2",
            ModelConfig::Neox(_) => "gptneox",
        };
        Ok(GgufArch { cfg, name })
    }

    /// HF tensors the converter drops (buffers, not weights).
    pub fn skipped(hf: &str) -> bool {
        hf.ends_with("rotary_emb.inv_freq")
            || hf.ends_with(".attn.bias")
            || hf.ends_with(".attn.masked_bias")
            || hf.ends_with(".attention.bias")
            || hf.ends_with(".attention.masked_bias")
    }

    /// llama.cpp's name of HF tensor `hf` and the transform its values take.
    pub fn tensor(&self, hf: &str) -> Option<(String, Transform)> {
        match self.cfg {
            ModelConfig::Llama(c) => {
                let g = crate::llama::gguf_name(c, hf)?;
                let t = g
                    .unpermute_heads
                    .map_or(Transform::None, Transform::PermuteQk);
                Some((g.name, t))
            }
            ModelConfig::Gpt2(_) => {
                let g = crate::gpt2::gguf_name(hf)?;
                let t = if crate::gpt2::is_conv1d_weight(hf) {
                    Transform::Transpose
                } else {
                    Transform::None
                };
                Some((g.name, t))
            }
            ModelConfig::Neox(c) => {
                let g = crate::gpt_neox::gguf_name(c, hf)?;
                let t = g.qkv_heads.map_or(Transform::None, Transform::NeoxQkv);
                Some((g.name, t))
            }
        }
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        match self.cfg {
            ModelConfig::Llama(c) => c.vocab_size,
            ModelConfig::Gpt2(c) => c.vocab_size,
            ModelConfig::Neox(c) => c.vocab_size,
        }
    }

    /// (layers, attention heads, key/value heads): what llama-quantize's type rules read.
    pub fn heads(&self) -> (usize, usize, usize) {
        match self.cfg {
            ModelConfig::Llama(c) => (c.num_layers, c.num_heads, c.num_kv_heads),
            ModelConfig::Gpt2(c) => (c.n_layer, c.n_head, c.n_head),
            ModelConfig::Neox(c) => (c.num_layers, c.num_heads, c.num_heads),
        }
    }

    /// The `<arch>.*` keys, with `general.file_type` where the converter writes it, in the
    /// converter's order (`set_gguf_parameters` of the classes in the module table).
    pub fn hparams(&self, file_type: u32) -> Vec<(String, GgufValue)> {
        let a = self.name;
        let u = |k: &str, v: usize| (format!("{a}.{k}"), GgufValue::U32(v as u32));
        let f = |k: &str, v: f64| (format!("{a}.{k}"), GgufValue::F32(v as f32));
        let ft = ("general.file_type".to_string(), GgufValue::U32(file_type));
        match self.cfg {
            ModelConfig::Llama(c) => {
                let mut m = vec![
                    u("block_count", c.num_layers),
                    u("context_length", c.max_position_embeddings),
                    u("embedding_length", c.hidden_size),
                    u("feed_forward_length", c.intermediate_size),
                    u("attention.head_count", c.num_heads),
                    u("attention.head_count_kv", c.num_kv_heads),
                    f("rope.freq_base", c.rope_theta),
                    f("attention.layer_norm_rms_epsilon", c.rms_norm_eps),
                    ft,
                ];
                if a == "llama" {
                    m.push(u("vocab_size", c.vocab_size));
                    m.push(u("rope.dimension_count", c.head_dim));
                }
                // llama.cpp assumes head_dim = hidden / heads unless told otherwise.
                if c.head_dim * c.num_heads != c.hidden_size {
                    m.push(u("attention.key_length", c.head_dim));
                    m.push(u("attention.value_length", c.head_dim));
                }
                m
            }
            ModelConfig::Gpt2(c) => vec![
                u("block_count", c.n_layer),
                u("context_length", c.n_positions),
                u("embedding_length", c.n_embd),
                u("feed_forward_length", c.n_inner),
                u("attention.head_count", c.n_head),
                f("attention.layer_norm_epsilon", c.layer_norm_epsilon),
                ft,
            ],
            ModelConfig::Neox(c) => {
                let head_dim = c.hidden_size / c.num_heads.max(1);
                let mut m = vec![
                    u("context_length", c.max_position_embeddings),
                    u("embedding_length", c.hidden_size),
                    u("block_count", c.num_layers),
                    u("feed_forward_length", c.intermediate_size),
                    u(
                        "rope.dimension_count",
                        (c.rotary_pct * head_dim as f64) as usize,
                    ),
                    u("attention.head_count", c.num_heads),
                    (
                        format!("{a}.use_parallel_residual"),
                        GgufValue::Bool(c.use_parallel_residual),
                    ),
                    f("attention.layer_norm_epsilon", c.layer_norm_eps),
                ];
                // The converter leaves the base at llama.cpp's default, 10000.
                if c.rope_theta != 10000.0 {
                    m.push(f("rope.freq_base", c.rope_theta));
                }
                m.push(ft);
                m
            }
        }
    }
}
