//! Any checkpoint shrink can compress: a causal LM ([`ModelConfig`]) or an encoder classifier
//! ([`BertConfig`]), seen as the list of weights and linear layers a method works on.

use candle_core::Tensor;
use shrink_io::Checkpoint;

use crate::bert::{self, BertConfig};
use crate::error::{ModelError, Result};
use crate::{LinearInfo, ModelConfig, WeightLoader};

/// The architecture of a checkpoint, decoder or encoder.
#[derive(Debug, Clone, PartialEq)]
pub enum Architecture {
    /// A causal language model (Llama family, GPT-2, GPT-NeoX).
    Decoder(ModelConfig),
    /// A BERT or DistilBERT sequence classifier.
    Encoder(BertConfig),
}

impl Architecture {
    /// Read the configuration: a causal LM, else a BERT/DistilBERT classifier.
    pub fn from_checkpoint(ckpt: &Checkpoint) -> Result<Self> {
        match ModelConfig::from_checkpoint(ckpt) {
            Ok(c) => Ok(Architecture::Decoder(c)),
            Err(e) => {
                let is_encoder = matches!(ckpt, Checkpoint::Hf(h) if matches!(
                    h.config.get("model_type").and_then(|v| v.as_str()),
                    Some("bert" | "distilbert")
                ));
                if is_encoder {
                    Ok(Architecture::Encoder(BertConfig::from_checkpoint(ckpt)?))
                } else {
                    Err(e)
                }
            }
        }
    }

    /// The causal LM configuration, if this is one.
    pub fn decoder(&self) -> Option<&ModelConfig> {
        match self {
            Architecture::Decoder(c) => Some(c),
            Architecture::Encoder(_) => None,
        }
    }

    /// HF names and HF-layout shapes of every weight.
    pub fn weight_shapes(&self) -> Vec<(String, Vec<usize>)> {
        match self {
            Architecture::Decoder(c) => crate::weight_shapes(c),
            Architecture::Encoder(c) => bert::weight_shapes(c),
        }
    }

    /// The linear layers methods compress by default: those inside the decoder or encoder
    /// blocks (embeddings, norms, LM and classifier heads excluded).
    pub fn block_linears(&self) -> Vec<LinearInfo> {
        match self {
            Architecture::Decoder(c) => crate::decoder_linears(c),
            Architecture::Encoder(c) => bert::weight_shapes(c)
                .into_iter()
                .filter(|(n, s)| s.len() == 2 && n.contains(".layer.") && n.ends_with(".weight"))
                .map(|(weight, s)| LinearInfo {
                    weight,
                    out_features: s[0],
                    in_features: s[1],
                    conv1d: false,
                })
                .collect(),
        }
    }

    /// A loader of this architecture's weights by HF name.
    pub fn weight_loader<'a>(&self, ckpt: &'a Checkpoint) -> WeightLoader<'a> {
        match self {
            Architecture::Decoder(c) => crate::weight_loader(ckpt, c),
            Architecture::Encoder(_) => WeightLoader::new(ckpt, None, &[]),
        }
    }

    /// Weight `name` in its HF layout `shape` as float32.
    pub fn read_weight(&self, w: &WeightLoader, name: &str, shape: &[usize]) -> Result<Tensor> {
        match self {
            Architecture::Decoder(c) => crate::read_hf_weight(w, c, name, shape),
            Architecture::Encoder(_) => w.get(name, shape),
        }
    }

    /// Short family name (`llama`, `gpt2`, `gpt_neox`, `bert`, `distilbert`).
    pub fn family(&self) -> &'static str {
        match self {
            Architecture::Decoder(c) => c.family(),
            Architecture::Encoder(c) => c.kind.model_type(),
        }
    }
}

impl From<ModelConfig> for Architecture {
    fn from(c: ModelConfig) -> Self {
        Architecture::Decoder(c)
    }
}

/// Refuse an encoder where a causal LM is needed, naming the checkpoint.
pub fn require_decoder<'a>(arch: &'a Architecture, ckpt: &Checkpoint) -> Result<&'a ModelConfig> {
    arch.decoder().ok_or_else(|| ModelError::Config {
        path: ckpt.path().to_path_buf(),
        what: format!(
            "{} is a classifier, not a causal language model",
            arch.family()
        ),
    })
}
