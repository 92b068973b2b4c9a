//! Architecture configurations, read from config.json or from GGUF metadata.

use std::path::Path;

use serde_json::Value;
use shrink_io::{Checkpoint, GgufFile};

use crate::error::{ModelError, Result};
use crate::json::Json;
use crate::weights::elements;

/// Architectures shrink can run, as config.json's `model_type` names them.
pub const SUPPORTED: &str =
    "llama, mistral, qwen2 (Llama family), gpt2, gpt_neox; GGUF: llama, qwen2, gpt2, gptneox";

/// Configuration of the Llama family (Llama, Mistral, Qwen2, SmolLM).
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// `model_type` (llama, mistral, qwen2).
    pub model_type: String,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than query heads).
    pub num_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base frequency.
    pub rope_theta: f64,
    /// Longest context the model was trained for.
    pub max_position_embeddings: usize,
    /// Whether the LM head shares the token embedding.
    pub tie_word_embeddings: bool,
    /// Biases on q/k/v projections (Qwen2).
    pub qkv_bias: bool,
    /// Bias on the output projection.
    pub o_bias: bool,
    /// Biases on the MLP projections.
    pub mlp_bias: bool,
    /// Sliding attention window (Mistral), if any.
    pub sliding_window: Option<usize>,
}

/// Configuration of GPT-2.
#[derive(Debug, Clone, PartialEq)]
pub struct Gpt2Config {
    /// Width of the residual stream.
    pub n_embd: usize,
    /// Number of blocks.
    pub n_layer: usize,
    /// Attention heads.
    pub n_head: usize,
    /// MLP width (4 × n_embd when unset).
    pub n_inner: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Learned positions.
    pub n_positions: usize,
    /// LayerNorm epsilon.
    pub layer_norm_epsilon: f64,
    /// Activation (`gelu_new`, `gelu`, `relu`, ...).
    pub activation: String,
    /// Divide attention scores by (layer index + 1) as well.
    pub scale_attn_by_inverse_layer_idx: bool,
}

/// Configuration of GPT-NeoX / Pythia.
#[derive(Debug, Clone, PartialEq)]
pub struct NeoxConfig {
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Number of layers.
    pub num_layers: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Share of each head's dimensions that get rotary embeddings.
    pub rotary_pct: f64,
    /// RoPE base frequency.
    pub rope_theta: f64,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// x + attn(ln1 x) + mlp(ln2 x) rather than sequential residuals.
    pub use_parallel_residual: bool,
    /// Activation (`gelu`, `gelu_new`, ...).
    pub hidden_act: String,
    /// Longest context.
    pub max_position_embeddings: usize,
    /// Whether the output head shares the input embedding.
    pub tie_word_embeddings: bool,
    /// Biases on attention projections.
    pub attention_bias: bool,
}

/// The configuration of any supported architecture.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelConfig {
    /// Llama family.
    Llama(LlamaConfig),
    /// GPT-2.
    Gpt2(Gpt2Config),
    /// GPT-NeoX.
    Neox(NeoxConfig),
}

impl ModelConfig {
    /// Read the configuration of a checkpoint.
    ///
    /// The sizes it states are checked against the tensors the checkpoint holds before anything
    /// is built from them ([`check_sizes`]): a lying config.json or GGUF header is refused here
    /// instead of making a command allocate or loop over layers the file does not have.
    pub fn from_checkpoint(ckpt: &Checkpoint) -> Result<Self> {
        let cfg = match ckpt {
            Checkpoint::Hf(h) => Self::from_hf_json(&h.config, &h.dir.join("config.json"))?,
            Checkpoint::Gguf(g) => Self::from_gguf(g)?,
        };
        let w = crate::weight_loader(ckpt, &cfg);
        check_sizes(
            ckpt,
            cfg.num_layers(),
            || crate::weight_shapes(&cfg),
            |n| w.locate(n).map(|l| l.name),
        )?;
        Ok(cfg)
    }

    /// Short family name (`llama`, `gpt2`, `gpt_neox`).
    pub fn family(&self) -> &'static str {
        match self {
            ModelConfig::Llama(_) => "llama",
            ModelConfig::Gpt2(_) => "gpt2",
            ModelConfig::Neox(_) => "gpt_neox",
        }
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        match self {
            ModelConfig::Llama(c) => c.vocab_size,
            ModelConfig::Gpt2(c) => c.vocab_size,
            ModelConfig::Neox(c) => c.vocab_size,
        }
    }

    /// Number of blocks.
    pub fn num_layers(&self) -> usize {
        match self {
            ModelConfig::Llama(c) => c.num_layers,
            ModelConfig::Gpt2(c) => c.n_layer,
            ModelConfig::Neox(c) => c.num_layers,
        }
    }

    /// Longest context the model supports.
    pub fn max_context(&self) -> usize {
        match self {
            ModelConfig::Llama(c) => c.max_position_embeddings,
            ModelConfig::Gpt2(c) => c.n_positions,
            ModelConfig::Neox(c) => c.max_position_embeddings,
        }
    }

    /// Parse a Hugging Face config.json value (`path` names it in errors).
    pub fn from_hf_json(v: &Value, path: &Path) -> Result<Self> {
        let j = Json { v, path };
        let model_type = j.str("model_type")?;
        match model_type.as_str() {
            "llama" | "mistral" | "qwen2" => llama_from_hf(&j, model_type).map(ModelConfig::Llama),
            "gpt2" => gpt2_from_hf(&j).map(ModelConfig::Gpt2),
            "gpt_neox" => neox_from_hf(&j).map(ModelConfig::Neox),
            other => Err(ModelError::UnknownArchitecture {
                path: path.to_path_buf(),
                name: other.to_string(),
                supported: SUPPORTED,
            }),
        }
    }

    /// Read the hyperparameters llama.cpp stores as `<arch>.*` metadata.
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let arch = g.architecture()?.to_string();
        let k = |s: &str| format!("{arch}.{s}");
        let u = |s: &str| -> Result<usize> { Ok(g.require_u64(&k(s))? as usize) };
        let vocab_size = match g.get(&k("vocab_size")).and_then(|v| v.as_u64()) {
            Some(v) => v as usize,
            None => g
                .get("tokenizer.ggml.tokens")
                .and_then(|t| t.as_array())
                .map(|a| a.len())
                .or_else(|| g.tensor("token_embd.weight").map(|t| t.ne[1] as usize))
                .ok_or_else(|| config_err(g.path(), "cannot tell the vocabulary size"))?,
        };
        match arch.as_str() {
            "llama" | "qwen2" => {
                let hidden_size = u("embedding_length")?;
                let num_heads = u("attention.head_count")?;
                let num_kv_heads = g
                    .get(&k("attention.head_count_kv"))
                    .and_then(|v| v.as_u64())
                    .map(|v| v as usize)
                    .unwrap_or(num_heads);
                let head_dim = g
                    .get(&k("attention.key_length"))
                    .and_then(|v| v.as_u64())
                    .map(|v| v as usize)
                    .unwrap_or(hidden_size / num_heads.max(1));
                let tie = g.tensor("output.weight").is_none();
                let has_bias = g.tensor("blk.0.attn_q.bias").is_some();
                let c = LlamaConfig {
                    model_type: arch.clone(),
                    hidden_size,
                    intermediate_size: u("feed_forward_length")?,
                    num_layers: u("block_count")?,
                    num_heads,
                    num_kv_heads,
                    head_dim,
                    vocab_size,
                    rms_norm_eps: g
                        .get_f64(&k("attention.layer_norm_rms_epsilon"))
                        .unwrap_or(1e-5),
                    rope_theta: g.get_f64(&k("rope.freq_base")).unwrap_or(10000.0),
                    max_position_embeddings: g
                        .get(&k("context_length"))
                        .and_then(|v| v.as_u64())
                        .unwrap_or(2048) as usize,
                    tie_word_embeddings: tie,
                    qkv_bias: has_bias,
                    o_bias: g.tensor("blk.0.attn_output.bias").is_some(),
                    mlp_bias: false,
                    sliding_window: None,
                };
                check_heads(&c, g.path())?;
                Ok(ModelConfig::Llama(c))
            }
            "gpt2" => {
                let n_embd = u("embedding_length")?;
                let n_head = u("attention.head_count")?;
                check_divides(n_embd, n_head, g.path())?;
                Ok(ModelConfig::Gpt2(Gpt2Config {
                    n_embd,
                    n_layer: u("block_count")?,
                    n_head,
                    n_inner: g
                        .get(&k("feed_forward_length"))
                        .and_then(|v| v.as_u64())
                        .map(|v| v as usize)
                        .unwrap_or(4 * n_embd),
                    vocab_size,
                    n_positions: g
                        .get(&k("context_length"))
                        .and_then(|v| v.as_u64())
                        .unwrap_or(1024) as usize,
                    layer_norm_epsilon: g
                        .get_f64(&k("attention.layer_norm_epsilon"))
                        .unwrap_or(1e-5),
                    activation: "gelu_new".into(),
                    scale_attn_by_inverse_layer_idx: false,
                }))
            }
            "gptneox" => {
                let hidden_size = u("embedding_length")?;
                let num_heads = u("attention.head_count")?;
                check_divides(hidden_size, num_heads, g.path())?;
                let rot = g
                    .get(&k("rope.dimension_count"))
                    .and_then(|v| v.as_u64())
                    .unwrap_or((hidden_size / num_heads / 4) as u64);
                let rotary_pct = rot as f64 / (hidden_size / num_heads) as f64;
                check_rotary(rotary_pct, g.path())?;
                Ok(ModelConfig::Neox(NeoxConfig {
                    hidden_size,
                    intermediate_size: u("feed_forward_length")?,
                    num_layers: u("block_count")?,
                    num_heads,
                    vocab_size,
                    rotary_pct,
                    rope_theta: g.get_f64(&k("rope.freq_base")).unwrap_or(10000.0),
                    layer_norm_eps: g
                        .get_f64(&k("attention.layer_norm_epsilon"))
                        .unwrap_or(1e-5),
                    use_parallel_residual: g
                        .get(&k("use_parallel_residual"))
                        .and_then(|v| v.as_bool())
                        .unwrap_or(true),
                    hidden_act: "gelu".into(),
                    max_position_embeddings: g
                        .get(&k("context_length"))
                        .and_then(|v| v.as_u64())
                        .unwrap_or(2048) as usize,
                    tie_word_embeddings: g.tensor("output.weight").is_none(),
                    attention_bias: true,
                }))
            }
            other => Err(ModelError::UnknownArchitecture {
                path: g.path().to_path_buf(),
                name: other.to_string(),
                supported: SUPPORTED,
            }),
        }
    }
}

/// Where a checkpoint's configuration lives, for errors about it.
pub(crate) fn config_path(ckpt: &Checkpoint) -> std::path::PathBuf {
    match ckpt {
        Checkpoint::Hf(h) => h.dir.join("config.json"),
        Checkpoint::Gguf(g) => g.path().to_path_buf(),
    }
}

/// Check a configuration's sizes against the tensors `ckpt` holds, before any are used: the
/// layer count against the layers the tensor names hold, then every implied weight's element
/// count (multiplied with overflow checks) against the stored tensor it names, where stored as
/// floats or GGML blocks (the exact shape is checked as each weight is read). `shapes` lists the
/// implied weights and is only built once the layer count is known to be bounded by the file;
/// `stored` maps an HF name to its stored name, if present.
pub(crate) fn check_sizes(
    ckpt: &Checkpoint,
    num_layers: usize,
    shapes: impl FnOnce() -> Vec<(String, Vec<usize>)>,
    stored: impl Fn(&str) -> Option<String>,
) -> Result<()> {
    let tensors = ckpt.tensors();
    let held = layers_held(tensors.iter().map(|t| t.name.as_str()));
    let path = config_path(ckpt);
    if num_layers > held {
        return Err(config_err(
            &path,
            format!(
                "the config says {num_layers} layers, but the checkpoint's tensors hold {held}"
            ),
        ));
    }
    // Tensors whose stored shape is their logical one: floats and GGML blocks (a packed layout
    // such as bitsandbytes' stores a quantized weight under its own name as bytes).
    let by_name: std::collections::HashMap<&str, &[usize]> = tensors
        .iter()
        .filter(|t| !matches!(t.dtype, shrink_io::StoredDtype::Other(_)))
        .map(|t| (t.name.as_str(), t.shape.as_slice()))
        .collect();
    for (name, shape) in shapes() {
        let Some(want) = elements(&shape) else {
            return Err(config_err(
                &path,
                format!("the config's sizes overflow: {name} would have shape {shape:?}"),
            ));
        };
        let Some(stored_name) = stored(&name) else {
            continue;
        };
        if let Some(got) = by_name.get(stored_name.as_str()) {
            // Element counts: a GGUF may store a weight transposed (GPT-2's Conv1D).
            if elements(got) != Some(want) {
                return Err(ModelError::Shape {
                    path: ckpt.path().to_path_buf(),
                    name: stored_name,
                    expected: shape,
                    got: got.to_vec(),
                });
            }
        }
    }
    Ok(())
}

/// The layer index in a tensor name (`model.layers.3.…`, `transformer.h.3.…`, `blk.3.…`,
/// `bert.encoder.layer.3.…`).
/// The number of layers tensor names imply: one past the largest layer index any names.
fn layers_held<'a>(names: impl Iterator<Item = &'a str>) -> usize {
    names
        .filter_map(layer_index)
        // A name may say layer usize::MAX (found by fuzzing): saturate.
        .map(|i| i.saturating_add(1))
        .max()
        .unwrap_or(0)
}

fn layer_index(name: &str) -> Option<usize> {
    let mut parts = name.split('.');
    while let Some(p) = parts.next() {
        if matches!(p, "layers" | "h" | "blk" | "layer") {
            return parts.next()?.parse().ok();
        }
    }
    None
}

fn config_err(path: &Path, what: impl Into<String>) -> ModelError {
    ModelError::Config {
        path: path.to_path_buf(),
        what: what.into(),
    }
}

/// The Llama-family configuration (llama, mistral, qwen2) of a config.json.
fn llama_from_hf(j: &Json<'_>, model_type: String) -> Result<LlamaConfig> {
    let hidden_size = j.usize("hidden_size")?;
    let num_heads = j.usize("num_attention_heads")?;
    let num_kv_heads = j.opt_usize("num_key_value_heads")?.unwrap_or(num_heads);
    let head_dim = j
        .opt_usize("head_dim")?
        .unwrap_or(hidden_size / num_heads.max(1));
    let rope_theta = llama_rope_theta(j)?;
    let attention_bias = j.opt_bool("attention_bias")?;
    let qkv_bias = attention_bias.unwrap_or(model_type == "qwen2");
    let sliding_window = llama_sliding_window(j, &model_type)?;
    let c = LlamaConfig {
        hidden_size,
        intermediate_size: j.usize("intermediate_size")?,
        num_layers: j.usize("num_hidden_layers")?,
        num_heads,
        num_kv_heads,
        head_dim,
        vocab_size: j.usize("vocab_size")?,
        rms_norm_eps: j.opt_f64("rms_norm_eps")?.unwrap_or(1e-6),
        rope_theta,
        max_position_embeddings: j.opt_usize("max_position_embeddings")?.unwrap_or(2048),
        tie_word_embeddings: j.opt_bool("tie_word_embeddings")?.unwrap_or(false),
        qkv_bias,
        o_bias: model_type != "qwen2" && attention_bias.unwrap_or(false),
        mlp_bias: j.opt_bool("mlp_bias")?.unwrap_or(false),
        sliding_window,
        model_type,
    };
    check_heads(&c, j.path)?;
    Ok(c)
}

/// The Llama family's RoPE base, rejecting RoPE scaling types other than the default.
fn llama_rope_theta(j: &Json<'_>) -> Result<f64> {
    let rope =
        j.v.get("rope_parameters")
            .or_else(|| j.v.get("rope_scaling"));
    if let Some(r) = rope.filter(|r| !r.is_null()) {
        let ty = r
            .get("rope_type")
            .or_else(|| r.get("type"))
            .and_then(Value::as_str);
        if !matches!(ty, None | Some("default")) {
            return Err(j.err(format!(
                "rope type {ty:?} is not supported yet (only default RoPE)"
            )));
        }
    }
    Ok(rope
        .and_then(|r| r.get("rope_theta"))
        .and_then(Value::as_f64)
        .or(j.v.get("rope_theta").and_then(Value::as_f64))
        .unwrap_or(10000.0))
}

/// The Llama family's sliding attention window, if the model uses one.
fn llama_sliding_window(j: &Json<'_>, model_type: &str) -> Result<Option<usize>> {
    if model_type == "qwen2" {
        // Qwen2 applies its window only when use_sliding_window is set.
        if j.opt_bool("use_sliding_window")?.unwrap_or(false) {
            j.opt_usize("sliding_window")
        } else {
            Ok(None)
        }
    } else {
        j.opt_usize("sliding_window")
    }
}

/// The GPT-2 configuration of a config.json.
fn gpt2_from_hf(j: &Json<'_>) -> Result<Gpt2Config> {
    let n_embd = j.usize("n_embd")?;
    let n_head = j.usize("n_head")?;
    if n_head == 0 || n_embd % n_head != 0 {
        return Err(j.err(format!(
            "n_embd {n_embd} is not divisible by n_head {n_head}"
        )));
    }
    if j.opt_bool("reorder_and_upcast_attn")?.unwrap_or(false) {
        // Only changes numerics in half precision; shrink computes in f32 anyway.
    }
    Ok(Gpt2Config {
        n_embd,
        n_layer: j.usize("n_layer")?,
        n_head,
        n_inner: j.opt_usize("n_inner")?.unwrap_or(4 * n_embd),
        vocab_size: j.usize("vocab_size")?,
        n_positions: j.opt_usize("n_positions")?.unwrap_or(1024),
        layer_norm_epsilon: j.opt_f64("layer_norm_epsilon")?.unwrap_or(1e-5),
        activation: j
            .opt_str("activation_function")?
            .unwrap_or_else(|| "gelu_new".into()),
        scale_attn_by_inverse_layer_idx: j
            .opt_bool("scale_attn_by_inverse_layer_idx")?
            .unwrap_or(false),
    })
}

/// The GPT-NeoX / Pythia configuration of a config.json.
fn neox_from_hf(j: &Json<'_>) -> Result<NeoxConfig> {
    let hidden_size = j.usize("hidden_size")?;
    let num_heads = j.usize("num_attention_heads")?;
    if num_heads == 0 || hidden_size % num_heads != 0 {
        return Err(j.err(format!(
            "hidden_size {hidden_size} is not divisible by {num_heads} heads"
        )));
    }
    let rope = j.v.get("rope_parameters").filter(|r| !r.is_null());
    let rotary_pct = rope
        .and_then(|r| r.get("partial_rotary_factor"))
        .and_then(Value::as_f64)
        .or(j.v.get("rotary_pct").and_then(Value::as_f64))
        .or(j.v.get("partial_rotary_factor").and_then(Value::as_f64))
        .unwrap_or(0.25);
    check_rotary(rotary_pct, j.path)?;
    let rope_theta = rope
        .and_then(|r| r.get("rope_theta"))
        .and_then(Value::as_f64)
        .or(j.v.get("rotary_emb_base").and_then(Value::as_f64))
        .or(j.v.get("rope_theta").and_then(Value::as_f64))
        .unwrap_or(10000.0);
    Ok(NeoxConfig {
        hidden_size,
        intermediate_size: j.usize("intermediate_size")?,
        num_layers: j.usize("num_hidden_layers")?,
        num_heads,
        vocab_size: j.usize("vocab_size")?,
        rotary_pct,
        rope_theta,
        layer_norm_eps: j.opt_f64("layer_norm_eps")?.unwrap_or(1e-5),
        use_parallel_residual: j.opt_bool("use_parallel_residual")?.unwrap_or(true),
        hidden_act: j.opt_str("hidden_act")?.unwrap_or_else(|| "gelu".into()),
        max_position_embeddings: j.opt_usize("max_position_embeddings")?.unwrap_or(2048),
        tie_word_embeddings: j.opt_bool("tie_word_embeddings")?.unwrap_or(false),
        attention_bias: j.opt_bool("attention_bias")?.unwrap_or(true),
    })
}

/// A GGUF's embedding length must split evenly over its heads.
fn check_divides(width: usize, heads: usize, path: &Path) -> Result<()> {
    if heads == 0 || !width.is_multiple_of(heads) {
        return Err(config_err(
            path,
            format!("embedding length {width} is not divisible by {heads} heads"),
        ));
    }
    Ok(())
}

/// GPT-NeoX's rotary share of a head must lie in [0, 1].
fn check_rotary(rotary_pct: f64, path: &Path) -> Result<()> {
    if !(0.0..=1.0).contains(&rotary_pct) {
        return Err(config_err(
            path,
            format!("the rotary share of a head is {rotary_pct}; it must lie between 0 and 1"),
        ));
    }
    Ok(())
}

fn check_heads(c: &LlamaConfig, path: &Path) -> Result<()> {
    if c.num_heads == 0 || c.num_kv_heads == 0 || !c.num_heads.is_multiple_of(c.num_kv_heads) {
        return Err(config_err(
            path,
            format!(
                "{} attention heads cannot be grouped over {} key/value heads",
                c.num_heads, c.num_kv_heads
            ),
        ));
    }
    if !c.head_dim.is_multiple_of(2) {
        return Err(config_err(
            path,
            format!("head_dim {} is odd; RoPE needs it even", c.head_dim),
        ));
    }
    Ok(())
}

impl ModelConfig {
    /// A transformers config.json for this configuration (used when a GGUF becomes an HF
    /// directory); `dtype` is the storage dtype name (`float32`, `bfloat16`, `float16`).
    pub fn to_hf_json(&self, dtype: &str, bos: Option<u32>, eos: Option<u32>) -> Value {
        let mut v = match self {
            ModelConfig::Llama(c) => {
                let arch = match c.model_type.as_str() {
                    "qwen2" => "Qwen2ForCausalLM",
                    "mistral" => "MistralForCausalLM",
                    _ => "LlamaForCausalLM",
                };
                serde_json::json!({
                    "architectures": [arch],
                    "model_type": if c.model_type == "qwen2" || c.model_type == "mistral" { c.model_type.as_str() } else { "llama" },
                    "hidden_size": c.hidden_size,
                    "intermediate_size": c.intermediate_size,
                    "num_hidden_layers": c.num_layers,
                    "num_attention_heads": c.num_heads,
                    "num_key_value_heads": c.num_kv_heads,
                    "head_dim": c.head_dim,
                    "vocab_size": c.vocab_size,
                    "rms_norm_eps": c.rms_norm_eps,
                    "rope_theta": c.rope_theta,
                    "max_position_embeddings": c.max_position_embeddings,
                    "tie_word_embeddings": c.tie_word_embeddings,
                    "attention_bias": c.qkv_bias,
                    "mlp_bias": c.mlp_bias,
                    "hidden_act": "silu",
                })
            }
            ModelConfig::Gpt2(c) => serde_json::json!({
                "architectures": ["GPT2LMHeadModel"],
                "model_type": "gpt2",
                "n_embd": c.n_embd,
                "n_layer": c.n_layer,
                "n_head": c.n_head,
                "n_inner": c.n_inner,
                "vocab_size": c.vocab_size,
                "n_positions": c.n_positions,
                "layer_norm_epsilon": c.layer_norm_epsilon,
                "activation_function": c.activation,
                "tie_word_embeddings": true,
            }),
            ModelConfig::Neox(c) => serde_json::json!({
                "architectures": ["GPTNeoXForCausalLM"],
                "model_type": "gpt_neox",
                "hidden_size": c.hidden_size,
                "intermediate_size": c.intermediate_size,
                "num_hidden_layers": c.num_layers,
                "num_attention_heads": c.num_heads,
                "vocab_size": c.vocab_size,
                "rotary_pct": c.rotary_pct,
                "rotary_emb_base": c.rope_theta,
                "layer_norm_eps": c.layer_norm_eps,
                "use_parallel_residual": c.use_parallel_residual,
                "hidden_act": c.hidden_act,
                "max_position_embeddings": c.max_position_embeddings,
                "tie_word_embeddings": c.tie_word_embeddings,
                "attention_bias": c.attention_bias,
            }),
        };
        v["dtype"] = dtype.into();
        v["torch_dtype"] = dtype.into();
        if let Some(b) = bos {
            v["bos_token_id"] = b.into();
        }
        if let Some(e) = eos {
            v["eos_token_id"] = e.into();
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_counts_from_names_saturate() {
        let names = [
            "model.layers.0.mlp.up_proj.weight",
            "model.layers.7.self_attn.q_proj.weight",
            "model.norm.weight",
        ];
        assert_eq!(layers_held(names.into_iter()), 8);
        // The name a fuzzed safetensors header held: no overflow (a panic with overflow checks,
        // a count of 0 without them), the largest count there is.
        let hostile = "model.layers.18446744073709551615.mlp.up_proj.weight";
        assert_eq!(layers_held(names.into_iter().chain([hostile])), usize::MAX);
        assert_eq!(layers_held(std::iter::empty()), 0);
    }
}
