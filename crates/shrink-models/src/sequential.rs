//! A decoder run one layer at a time, for calibrated methods (GPTQ, AWQ, imatrix): embed the
//! calibration samples once, then load, observe, replace and run each layer in turn, so that
//! only one layer's weights and the samples' activations are resident.

use candle_core::{Device, Tensor};
use shrink_io::Checkpoint;

use crate::config::{LlamaConfig, ModelConfig};
use crate::error::{ModelError, Result};
use crate::layers::rope_tables;
use crate::llama::{self, LlamaLayer, Tap};
use crate::weights::WeightLoader;

pub use crate::llama::LAYER_LINEARS;

/// Sees every linear's input while [`Sequential::run`] runs a layer: called with the sample's
/// index, the linear's name inside the layer and its input [t, in].
pub type SampleTap<'a> = &'a mut dyn FnMut(usize, &str, &Tensor) -> Result<()>;

/// A Llama-family decoder opened for layer-by-layer work.
pub struct Sequential<'a> {
    cfg: LlamaConfig,
    w: WeightLoader<'a>,
}

impl<'a> Sequential<'a> {
    /// Open `ckpt`'s decoder; calibrated methods support the Llama family (Llama, Mistral,
    /// Qwen2, SmolLM).
    pub fn new(ckpt: &'a Checkpoint) -> Result<Self> {
        let cfg = ModelConfig::from_checkpoint(ckpt)?;
        let w = crate::weight_loader(ckpt, &cfg);
        match cfg {
            ModelConfig::Llama(cfg) => Ok(Sequential { cfg, w }),
            other => Err(ModelError::Input(format!(
                "{}: calibrated methods run on the Llama family (Llama, Mistral, Qwen2, SmolLM); \
                 this is {}",
                ckpt.path().display(),
                other.family()
            ))),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// The weight loader.
    pub fn loader(&self) -> &WeightLoader<'a> {
        &self.w
    }

    /// Number of decoder layers.
    pub fn num_layers(&self) -> usize {
        self.cfg.num_layers
    }

    /// HF name of the weight of linear `local` (e.g. `mlp.down_proj`) in layer `l`.
    pub fn weight_name(l: usize, local: &str) -> String {
        format!("model.layers.{l}.{local}.weight")
    }

    /// The embeddings [t, hidden] of each sample (the embedding table is read once, then
    /// dropped).
    pub fn embed(&self, samples: &[Vec<u32>]) -> Result<Vec<Tensor>> {
        let c = &self.cfg;
        let table = self
            .w
            .get("model.embed_tokens.weight", &[c.vocab_size, c.hidden_size])?;
        samples
            .iter()
            .map(|ids| {
                llama::check_ids(ids, c.vocab_size)?;
                let idx = Tensor::new(ids.as_slice(), &Device::Cpu)?;
                Ok(table.index_select(&idx, 0)?)
            })
            .collect()
    }

    /// The rotary (cos, sin) tables for positions 0..t.
    pub fn rope(&self, t: usize) -> Result<(Tensor, Tensor)> {
        rope_tables(self.cfg.head_dim, self.cfg.rope_theta, 0, t)
    }

    /// Load decoder layer `l` (float32, or as its checkpoint stores it).
    pub fn layer(&self, l: usize) -> Result<LlamaLayer> {
        LlamaLayer::load(&self.cfg, &self.w, l)
    }

    /// Run `layer` on every sample's input; `tap` (called with the sample index) sees every
    /// linear's input.
    pub fn run(
        &self,
        layer: &LlamaLayer,
        xs: &[Tensor],
        mut tap: Option<SampleTap>,
    ) -> Result<Vec<Tensor>> {
        let c = &self.cfg;
        let mut tables: Option<(usize, Tensor, Tensor)> = None;
        let mut out = Vec::with_capacity(xs.len());
        for (i, x) in xs.iter().enumerate() {
            let t = x.dim(0)?;
            if tables.as_ref().is_none_or(|(n, _, _)| *n != t) {
                let (cos, sin) = rope_tables(c.head_dim, c.rope_theta, 0, t)?;
                tables = Some((t, cos, sin));
            }
            let (_, cos, sin) = tables.as_ref().expect("set above");
            let y = match tap.as_mut() {
                Some(f) => {
                    let mut g = |name: &str, t: &Tensor| f(i, name, t);
                    let g: Tap = &mut g;
                    layer.forward(c, x, (cos, sin), None, Some(g))?
                }
                None => layer.forward(c, x, (cos, sin), None, None)?,
            };
            out.push(y);
        }
        Ok(out)
    }
}
