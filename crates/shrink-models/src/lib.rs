//! Model architectures of shrink: configuration, weight names and an exact float32 forward.
//!
//! Principal types:
//! - [`ModelConfig`]: the hyperparameters of a checkpoint (config.json or GGUF metadata);
//! - [`Model`]: a loaded causal LM ([`llama::Llama`], [`gpt2::Gpt2`], [`gpt_neox::Neox`])
//!   whose [`Model::forward`] returns logits matching transformers';
//! - [`WeightLoader`]: weights by Hugging Face name from any checkpoint, undoing llama.cpp's
//!   renaming and Q/K permutation for GGUF files;
//! - [`footprint::Footprint`]: what a checkpoint stores, by dtype and module, in exact bytes.
//! - [`gguf_arch::GgufArch`]: the other way, an HF model's GGUF names, hyperparameter keys and
//!   row transforms as llama.cpp's converter writes them.
//!
//! Neighbours: `shrink-io` opens checkpoints; `shrink-eval` scores models.
//!
//! ```no_run
//! let ckpt = shrink_io::Checkpoint::open("assets/SmolLM2-135M-Instruct.Q4_1.gguf")?;
//! let model = shrink_models::Model::load(&ckpt)?;
//! let logits = model.forward(&[504, 3575, 282], None)?; // [3, 49152]
//! # Ok::<(), shrink_models::ModelError>(())
//! ```

pub mod architecture;
pub mod bert;
pub mod config;
pub mod decode;
pub mod error;
pub mod footprint;
pub mod gguf_arch;
pub mod gpt2;
pub mod gpt_neox;
pub mod int8_gemm;
mod json;
pub mod kernels;
pub mod layers;
pub mod layerwise;
pub mod linear;
pub mod llama;
pub mod qmatmul;
pub mod runtime;
pub mod sparsity;
pub mod team;
pub mod weights;

use candle_core::Tensor;
use shrink_io::Checkpoint;

pub use architecture::Architecture;
pub use bert::{BertClassifier, BertConfig, BertKind};
pub use config::ModelConfig;
pub use error::{ModelError, Result};
pub use layers::KvCache;
pub use weights::{GgufName, WeightLoader};

/// A loaded causal language model.
#[derive(Debug, Clone)]
pub enum Model {
    /// Llama family.
    Llama(llama::Llama),
    /// GPT-2.
    Gpt2(gpt2::Gpt2),
    /// GPT-NeoX.
    Neox(gpt_neox::Neox),
}

/// Run `f` on the float32 values of the CPU tensor `t` without copying them (a contiguous copy
/// is made first only when `t` is a strided view).
pub fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match (&*storage, layout.contiguous_offsets()) {
        (candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)), Some((a, b))) => {
            Ok(f(&v[a..b]))
        }
        _ => Err(ModelError::Input(format!(
            "a tensor of shape {:?} is not float32 on the CPU",
            t.dims()
        ))),
    }
}

/// `a + b` (a residual add) on one thread for float32 CPU tensors of one shape (else candle's
/// add): candle splits even 295 K values (512 tokens of SmolLM2) over its own thread pool, and
/// its barrier spun 8 % of a 2-thread evaluation's time beside rayon's threads (`perf`).
/// Bit-identical to candle's.
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let plain = |t: &Tensor| t.dtype() == candle_core::DType::F32 && t.device().is_cpu();
    if a.dims() != b.dims() || !plain(a) || !plain(b) {
        return Ok((a + b)?);
    }
    let v = with_f32(a, |a| {
        with_f32(b, |b| {
            a.iter().zip(b).map(|(x, y)| x + y).collect::<Vec<f32>>()
        })
    })??;
    Ok(Tensor::from_vec(v, a.dims(), a.device())?)
}

/// A loader for `cfg`'s weights in `ckpt`.
pub fn weight_loader<'a>(ckpt: &'a Checkpoint, cfg: &ModelConfig) -> WeightLoader<'a> {
    match cfg {
        ModelConfig::Llama(c) => {
            let c = c.clone();
            WeightLoader::new(ckpt, Some(Box::new(move |n| llama::gguf_name(&c, n))), &[])
        }
        ModelConfig::Gpt2(_) => {
            WeightLoader::new(ckpt, Some(Box::new(gpt2::gguf_name)), &["transformer."])
        }
        ModelConfig::Neox(c) => {
            let c = c.clone();
            WeightLoader::new(
                ckpt,
                Some(Box::new(move |n| gpt_neox::gguf_name(&c, n))),
                &[],
            )
        }
    }
}

/// HF names and HF-layout shapes of every weight `cfg` implies.
pub fn weight_shapes(cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    match cfg {
        ModelConfig::Llama(c) => llama::weight_shapes(c),
        ModelConfig::Gpt2(c) => gpt2::weight_shapes(c),
        ModelConfig::Neox(c) => gpt_neox::weight_shapes(c),
    }
}

impl Model {
    /// Read the configuration and every weight of `ckpt` as float32.
    pub fn load(ckpt: &Checkpoint) -> Result<Self> {
        Model::load_with(ckpt, None)
    }

    /// [`Model::load`], with `adapter`'s LoRA pairs running beside the layers they name (every
    /// pair must match a layer).
    pub fn load_with(
        ckpt: &Checkpoint,
        adapter: Option<&shrink_io::peft::Adapter>,
    ) -> Result<Self> {
        let cfg = ModelConfig::from_checkpoint(ckpt)?;
        let mut w = weight_loader(ckpt, &cfg);
        if let Some(a) = adapter {
            w = w.with_adapter(a);
        }
        let m = match cfg {
            ModelConfig::Llama(c) => Model::Llama(llama::Llama::load(c, &w)?),
            ModelConfig::Gpt2(c) => Model::Gpt2(gpt2::Gpt2::load(c, &w)?),
            ModelConfig::Neox(c) => Model::Neox(gpt_neox::Neox::load(c, &w)?),
        };
        w.check_adapted()?;
        Ok(m)
    }

    /// Logits [t, vocab] of `ids`, continuing from `cache` when given (and extending it).
    pub fn forward(&self, ids: &[u32], cache: Option<&mut KvCache>) -> Result<Tensor> {
        match self {
            Model::Llama(m) => m.forward(ids, cache),
            Model::Gpt2(m) => m.forward(ids, cache),
            Model::Neox(m) => m.forward(ids, cache),
        }
    }

    /// Final hidden states [t, hidden] of `ids` (what [`Model::head`] turns into logits).
    pub fn hidden(&self, ids: &[u32], cache: Option<&mut KvCache>) -> Result<Tensor> {
        match self {
            Model::Llama(m) => m.hidden(ids, cache),
            Model::Gpt2(m) => m.hidden(ids, cache),
            Model::Neox(m) => m.hidden(ids, cache),
        }
    }

    /// Logits [rows, vocab] of hidden states [rows, hidden] (a few rows at a time keeps a
    /// window's logits from being resident all at once).
    pub fn head(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Model::Llama(m) => m.head(x),
            Model::Gpt2(m) => m.head(x),
            Model::Neox(m) => m.head(x),
        }
    }

    /// Logits of the last of `ids` only, continuing from `cache` when given (and extending
    /// it): what generation needs, without the head's product for every other position.
    ///
    /// The pass runs on one of rayon's worker threads (the caller waits), so its many parallel
    /// products (about 200 a token on SmolLM2) share out their work among the workers without
    /// each being handed over from an outside thread and back.
    pub fn last_logits(&self, ids: &[u32], cache: Option<&mut KvCache>) -> Result<Vec<f32>> {
        rayon::scope(|_| {
            let h = self.hidden(ids, cache)?;
            let t = h.dim(0)?;
            Ok(self
                .head(&h.narrow(0, t - 1, 1)?)?
                .flatten_all()?
                .to_vec1()?)
        })
    }

    /// Bytes of weights one generated token reads from memory: every linear layer as held
    /// (the head included), the norms, and one row of each embedding table.
    pub fn bytes_per_token(&self) -> u64 {
        // Every linear, every norm tensor, and the embedding tables (one row of each read).
        let (linears, norms, embeddings): (Vec<&linear::Linear>, Vec<&Tensor>, Vec<&Tensor>) =
            match self {
                Model::Llama(m) => (
                    m.layers
                        .iter()
                        .flat_map(|l| {
                            [
                                &l.q_proj,
                                &l.k_proj,
                                &l.v_proj,
                                &l.o_proj,
                                &l.gate_proj,
                                &l.up_proj,
                                &l.down_proj,
                            ]
                        })
                        .chain([&m.lm_head])
                        .collect(),
                    m.layers
                        .iter()
                        .flat_map(|l| [&l.input_layernorm, &l.post_attention_layernorm])
                        .chain([&m.norm])
                        .collect(),
                    vec![&m.embed_tokens],
                ),
                Model::Gpt2(m) => (
                    m.blocks
                        .iter()
                        .flat_map(|b| [&b.c_attn, &b.attn_c_proj, &b.c_fc, &b.mlp_c_proj])
                        .chain([&m.lm_head])
                        .collect(),
                    m.blocks
                        .iter()
                        .flat_map(|b| [&b.ln_1.0, &b.ln_1.1, &b.ln_2.0, &b.ln_2.1])
                        .chain([&m.ln_f.0, &m.ln_f.1])
                        .collect(),
                    vec![&m.wte, &m.wpe],
                ),
                Model::Neox(m) => (
                    m.layers
                        .iter()
                        .flat_map(|l| {
                            [
                                &l.query_key_value,
                                &l.dense,
                                &l.dense_h_to_4h,
                                &l.dense_4h_to_h,
                            ]
                        })
                        .chain([&m.embed_out])
                        .collect(),
                    m.layers
                        .iter()
                        .flat_map(|l| {
                            [
                                &l.input_layernorm.0,
                                &l.input_layernorm.1,
                                &l.post_attention_layernorm.0,
                                &l.post_attention_layernorm.1,
                            ]
                        })
                        .chain([&m.final_layer_norm.0, &m.final_layer_norm.1])
                        .collect(),
                    vec![&m.embed_in],
                ),
            };
        let lin: u64 = linears.iter().map(|l| l.bytes_read() as u64).sum();
        let norm: u64 = norms.iter().map(|t| t.elem_count() as u64 * 4).sum();
        let rows: u64 = embeddings
            .iter()
            .map(|t| t.dims().last().copied().unwrap_or(0) as u64 * 4)
            .sum();
        lin + norm + rows
    }

    /// The configuration.
    pub fn config(&self) -> ModelConfig {
        match self {
            Model::Llama(m) => ModelConfig::Llama(m.cfg.clone()),
            Model::Gpt2(m) => ModelConfig::Gpt2(m.cfg.clone()),
            Model::Neox(m) => ModelConfig::Neox(m.cfg.clone()),
        }
    }
}

/// Read an HF-named weight in its Hugging Face layout as float32 (GPT-2's Conv1D weights come
/// back [in, out] even from a GGUF file, which stores them transposed).
pub fn read_hf_weight(
    w: &WeightLoader,
    cfg: &ModelConfig,
    name: &str,
    hf_shape: &[usize],
) -> Result<Tensor> {
    if matches!(cfg, ModelConfig::Gpt2(_))
        && matches!(w.checkpoint(), Checkpoint::Gguf(_))
        && gpt2::is_conv1d_weight(name)
    {
        let t = w.get(name, &[hf_shape[1], hf_shape[0]])?;
        return Ok(t.t()?.contiguous()?);
    }
    w.get(name, hf_shape)
}

/// A linear layer of a model: the HF name of its weight and its shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinearInfo {
    /// HF name of the weight tensor (e.g. `model.layers.0.self_attn.q_proj.weight`).
    pub weight: String,
    /// Output features.
    pub out_features: usize,
    /// Input features.
    pub in_features: usize,
    /// Stored [in, out] (GPT-2's Conv1D) rather than nn.Linear's [out, in].
    pub conv1d: bool,
}

/// Every linear layer inside the decoder blocks (what quantizers touch by default): embeddings,
/// norms and the LM head are not listed.
pub fn decoder_linears(cfg: &ModelConfig) -> Vec<LinearInfo> {
    weight_shapes(cfg)
        .into_iter()
        .filter(|(name, shape)| {
            shape.len() == 2
                && name.ends_with(".weight")
                && (name.contains(".layers.") || name.contains(".h."))
        })
        .map(|(name, shape)| {
            let conv1d = matches!(cfg, ModelConfig::Gpt2(_)) && gpt2::is_conv1d_weight(&name);
            let (out_features, in_features) = if conv1d {
                (shape[1], shape[0])
            } else {
                (shape[0], shape[1])
            };
            LinearInfo {
                weight: name,
                out_features,
                in_features,
                conv1d,
            }
        })
        .collect()
}
