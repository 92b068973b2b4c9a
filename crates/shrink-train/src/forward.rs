//! The trainable forward of every architecture, cut into the pieces the layer-by-layer
//! backward ([`crate::grad`]) recomputes one at a time: embed → block i → head.
//!
//! Each family's module follows transformers' modelling code with the differentiable ops of
//! [`crate::ops`]; its logits equal the inference forward's (and the fixtures' PyTorch logits)
//! and its gradients PyTorch's (`tests/gradients.rs`).

use candle_core::Tensor;
use shrink_models::{Architecture, ModelConfig};

use crate::error::Result;
use crate::params::Params;

pub mod bert;
pub mod gpt2;
pub mod llama;
pub mod neox;

/// A model that can be trained: its weights and how to run them.
#[derive(Debug, Clone)]
pub struct Trainable {
    /// The weights, by HF name.
    pub params: Params,
}

/// What the model outputs: next-token logits, or a classifier's class logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// Causal language model: logits [t, vocab].
    CausalLm,
    /// Sequence classifier: logits [1, labels].
    Classify,
}

impl Trainable {
    /// Wrap loaded weights.
    pub fn new(params: Params) -> Self {
        Trainable { params }
    }

    /// Load a checkpoint's weights for training.
    pub fn load(ckpt: &shrink_io::Checkpoint) -> Result<Self> {
        Ok(Trainable::new(Params::load(ckpt)?))
    }

    /// The architecture.
    pub fn arch(&self) -> &Architecture {
        &self.params.arch
    }

    /// What the head computes.
    pub fn task(&self) -> Task {
        match self.arch() {
            Architecture::Decoder(_) => Task::CausalLm,
            Architecture::Encoder(_) => Task::Classify,
        }
    }

    /// Number of blocks.
    pub fn num_layers(&self) -> usize {
        match self.arch() {
            Architecture::Decoder(ModelConfig::Llama(c)) => c.num_layers,
            Architecture::Decoder(ModelConfig::Gpt2(c)) => c.n_layer,
            Architecture::Decoder(ModelConfig::Neox(c)) => c.num_layers,
            Architecture::Encoder(c) => c.num_layers,
        }
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        match self.arch() {
            Architecture::Decoder(c) => c.vocab_size(),
            Architecture::Encoder(c) => c.vocab_size,
        }
    }

    /// Longest sequence the positions allow (learned positions), if bounded.
    pub fn max_positions(&self) -> Option<usize> {
        match self.arch() {
            Architecture::Decoder(ModelConfig::Gpt2(c)) => Some(c.n_positions),
            Architecture::Encoder(c) => Some(c.max_position_embeddings),
            _ => None,
        }
    }

    /// The residual stream entering block 0, [t, hidden].
    pub fn embed(&self, ids: &[u32]) -> Result<Tensor> {
        let p = &self.params;
        match self.arch() {
            Architecture::Decoder(ModelConfig::Llama(c)) => llama::embed(p, c, ids),
            Architecture::Decoder(ModelConfig::Gpt2(c)) => gpt2::embed(p, c, ids),
            Architecture::Decoder(ModelConfig::Neox(c)) => neox::embed(p, c, ids),
            Architecture::Encoder(c) => bert::embed(p, c, ids),
        }
    }

    /// Block `i`'s output for its input `x` [t, hidden].
    pub fn layer(&self, i: usize, x: &Tensor) -> Result<Tensor> {
        let p = &self.params;
        match self.arch() {
            Architecture::Decoder(ModelConfig::Llama(c)) => llama::layer(p, c, i, x),
            Architecture::Decoder(ModelConfig::Gpt2(c)) => gpt2::layer(p, c, i, x),
            Architecture::Decoder(ModelConfig::Neox(c)) => neox::layer(p, c, i, x),
            Architecture::Encoder(c) => bert::layer(p, c, i, x),
        }
    }

    /// The output of the last block turned into logits: [t, vocab] for a causal LM (final norm
    /// and LM head), [1, labels] for a classifier (pooler and classifier on the first token).
    pub fn head(&self, x: &Tensor) -> Result<Tensor> {
        let p = &self.params;
        match self.arch() {
            Architecture::Decoder(ModelConfig::Llama(c)) => llama::head(p, c, x),
            Architecture::Decoder(ModelConfig::Gpt2(c)) => gpt2::head(p, c, x),
            Architecture::Decoder(ModelConfig::Neox(c)) => neox::head(p, c, x),
            Architecture::Encoder(c) => bert::head(p, c, x),
        }
    }

    /// The whole forward with the autograd graph kept: logits of `ids`.
    pub fn forward(&self, ids: &[u32]) -> Result<Tensor> {
        let mut x = self.embed(ids)?;
        for i in 0..self.num_layers() {
            x = self.layer(i, &x)?;
        }
        self.head(&x)
    }
}

/// Refuse an empty sequence or a token id outside the vocabulary.
pub(crate) fn check_ids(ids: &[u32], vocab: usize) -> Result<()> {
    if ids.is_empty() {
        return Err(crate::error::TrainError::Options("no tokens to run".into()));
    }
    if let Some(&bad) = ids.iter().find(|&&i| i as usize >= vocab) {
        return Err(crate::error::TrainError::Options(format!(
            "token id {bad} is outside the vocabulary of {vocab}"
        )));
    }
    Ok(())
}
