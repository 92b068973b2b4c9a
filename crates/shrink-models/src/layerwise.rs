//! Every architecture seen one block at a time, for the layer-by-layer methods (GPTQ, AWQ,
//! imatrix; pruning and block-wise reconstruction next): embed the calibration samples once,
//! then load, observe, replace and run each block in turn, so that only one block's weights and
//! the samples' activations are resident.
//!
//! Each family implements [`Layerwise`] (the stack: embeddings, block count, names, which
//! linears share an input, where AWQ may fold scales) and its blocks implement [`Block`] (run
//! with input hooks, linears and norms by name). [`Sequential`] opens any checkpoint as one and
//! runs a block over many samples.

use std::sync::Arc;

use candle_core::{Device, Tensor};
use shrink_io::Checkpoint;

use crate::architecture::Architecture;
use crate::bert::{self, BertConfig, BertEmbeddings, BertLayer};
use crate::config::{Gpt2Config, LlamaConfig, ModelConfig, NeoxConfig};
use crate::error::{ModelError, Result};
use crate::gpt2::{self, Gpt2Block};
use crate::gpt_neox::{self, NeoxLayer};
use crate::layers::rope_tables;
use crate::linear::Linear;
use crate::llama::{self, LlamaLayer, Tap};
use crate::weights::WeightLoader;

/// Sees every linear's input while [`Sequential::run`] runs a block: called with the sample's
/// index, the linear's name inside the block and its input [t, in].
pub type SampleTap<'a> = &'a mut dyn FnMut(usize, &str, &Tensor) -> Result<()>;

/// A linear of a block: its name inside the block, and the name of the block's first linear
/// reading the same input (q/k/v share one, as do gate/up): statistics of an input — a Hessian,
/// a mean activation — are collected once and shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinearSlot {
    /// Name inside the block (`self_attn.q_proj`, `attn.c_attn`, ...).
    pub name: &'static str,
    /// The first linear reading the same input.
    pub input: &'static str,
}

/// The part of a block whose output AWQ's scale search compares (AutoAWQ's `module2inspect`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inspect {
    /// The attention (after its output projection) on the normed input.
    Attention,
    /// The MLP (after its down projection) on the normed input.
    Mlp,
    /// The group's single linear.
    Linear,
}

/// What an AWQ scaling group's scales are divided out of (AutoAWQ's `prev_op`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prev {
    /// A norm (weight, and bias if any) named inside the block.
    Norm(&'static str),
    /// A linear's output rows (weight rows and bias) named inside the block.
    Linear(&'static str),
}

impl Prev {
    /// The name inside the block.
    pub fn name(self) -> &'static str {
        match self {
            Prev::Norm(n) | Prev::Linear(n) => n,
        }
    }
}

/// One of a block's AWQ scaling groups (AutoAWQ's `get_layers_for_scaling`): an op whose output
/// is divided by the scales and the linears reading it, whose input columns are multiplied by
/// them — the block computes the same function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScaleGroup {
    /// The op the scales are divided out of.
    pub prev: Prev,
    /// The linears scaled, by name inside the block; the first names their shared input.
    pub linears: &'static [&'static str],
    /// What the search's loss is measured on.
    pub inspect: Inspect,
}

/// The positions of a sequence of some length, as a block needs them (rotary tables or none).
#[derive(Debug, Clone)]
pub struct Positions(Option<(Tensor, Tensor)>);

impl Positions {
    fn rope(&self) -> Result<(&Tensor, &Tensor)> {
        self.0
            .as_ref()
            .map(|(c, s)| (c, s))
            .ok_or_else(|| ModelError::Input("rotary tables missing".into()))
    }
}

/// A norm's weight and, for LayerNorm, bias.
pub type NormMut<'a> = (&'a mut Tensor, Option<&'a mut Tensor>);

/// The top of a decoder: the final norm and the LM head, with the names of the weights it
/// reads, so a probe can replace the head (or the token table a tied head shares).
#[derive(Debug, Clone)]
pub struct Head {
    /// HF name of the token table.
    pub table: &'static str,
    /// HF name of the LM head's weight (the token table's when they are tied).
    pub weight: &'static str,
    norm: HeadNorm,
    lm_head: Tensor,
}

/// The final norm of a [`Head`].
#[derive(Debug, Clone)]
enum HeadNorm {
    Rms(Tensor, f32),
    Layer((Tensor, Tensor), f32),
}

impl Head {
    /// The LM head's weight [vocab, hidden] as stored (float32).
    pub fn weight(&self) -> &Tensor {
        &self.lm_head
    }

    /// Whether the LM head is the token table.
    pub fn tied(&self) -> bool {
        self.table == self.weight
    }

    /// The final norm of a last block's output `x` [t, hidden]: the LM head's input.
    pub fn normed(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match &self.norm {
            HeadNorm::Rms(w, eps) => candle_nn::ops::rms_norm(x, w, *eps)?,
            HeadNorm::Layer((w, b), eps) => candle_nn::ops::layer_norm(x, w, b, *eps)?,
        })
    }

    /// Logits [t, vocab] of a last block's output `x` [t, hidden], with `lm_head` in place of
    /// the stored head weight when given.
    pub fn logits(&self, x: &Tensor, lm_head: Option<&Tensor>) -> Result<Tensor> {
        let xn = self.normed(x)?;
        let w = lm_head.unwrap_or(&self.lm_head);
        Ok(xn.matmul(&w.t()?)?)
    }
}

/// A copy of a block behind the trait object (implemented for every cloneable [`Block`]).
pub trait BoxedBlock {
    /// A copy of the block.
    fn boxed(&self) -> Box<dyn Block>;
}

impl<T: Block + Clone + 'static> BoxedBlock for T {
    fn boxed(&self) -> Box<dyn Block> {
        Box::new(self.clone())
    }
}

/// One decoder or encoder block, as layer-by-layer methods see it.
pub trait Block: BoxedBlock + Send + Sync + std::fmt::Debug {
    /// The block's output for one sample `x` [t, hidden]; `tap` sees every linear's input.
    fn forward(&self, x: &Tensor, pos: &Positions, tap: Option<Tap>) -> Result<Tensor>;
    /// The output of the attention or the MLP for their (normed) input `x`.
    fn inspect(&self, what: Inspect, x: &Tensor, pos: &Positions) -> Result<Tensor>;
    /// The linear named `name` inside the block.
    fn linear(&self, name: &str) -> Option<&Linear>;
    /// The linear named `name` inside the block, to replace.
    fn linear_mut(&mut self, name: &str) -> Option<&mut Linear>;
    /// The norm named `name` inside the block, to rescale.
    fn norm_mut(&mut self, name: &str) -> Option<NormMut<'_>>;
}

/// A model family seen as a stack of blocks.
pub trait Layerwise {
    /// Short family name (`llama`, `gpt2`, `gpt_neox`, `bert`, `distilbert`).
    fn family(&self) -> &'static str;
    /// Number of blocks.
    fn num_layers(&self) -> usize;
    /// HF name prefix of block `l` (`model.layers.3`).
    fn prefix(&self, l: usize) -> String;
    /// The block's linears in forward order.
    fn linears(&self) -> &'static [LinearSlot];
    /// Where AWQ may fold scales, in AutoAWQ's order.
    fn scale_groups(&self) -> Vec<ScaleGroup>;
    /// Each sample's input to the first block [t, hidden] (the embedding tables are read once),
    /// with `table` in place of the stored token table when given.
    fn embed(&self, samples: &[Vec<u32>], table: Option<&Tensor>) -> Result<Vec<Tensor>>;
    /// A decoder's top (final norm and LM head); `None` for an encoder.
    fn head(&self) -> Result<Option<Head>>;
    /// HF names of a decoder's token table and LM head weight (the same when tied), read
    /// without loading them; `None` for an encoder.
    fn head_names(&self) -> Option<(&'static str, &'static str)>;
    /// The stored weight of HF name `hf`, float32, checked to be of `shape`.
    fn read(&self, hf: &str, shape: &[usize]) -> Result<Tensor>;
    /// The positions of a sequence of `t` tokens.
    fn positions(&self, t: usize) -> Result<Positions>;
    /// Load block `l` (float32, or as its checkpoint stores it).
    fn block(&self, l: usize) -> Result<Box<dyn Block>>;
    /// llama.cpp's name of HF weight `hf`, if it has one.
    fn gguf_name(&self, hf: &str) -> Option<String>;
}

/// A checkpoint opened for layer-by-layer work: any family, one block at a time.
pub struct Sequential<'a> {
    stack: Box<dyn Layerwise + 'a>,
    /// The longest sequence the model takes.
    max_context: usize,
    /// Width of the activations between blocks.
    width: usize,
}

impl<'a> Sequential<'a> {
    /// Open `ckpt` (a causal LM of any family, or a BERT/DistilBERT encoder).
    pub fn new(ckpt: &'a Checkpoint) -> Result<Self> {
        let arch = Architecture::from_checkpoint(ckpt)?;
        let (max_context, width) = match &arch {
            Architecture::Decoder(ModelConfig::Llama(c)) => {
                (c.max_position_embeddings, c.hidden_size)
            }
            Architecture::Decoder(ModelConfig::Gpt2(c)) => (c.n_positions, c.n_embd),
            Architecture::Decoder(ModelConfig::Neox(c)) => {
                (c.max_position_embeddings, c.hidden_size)
            }
            Architecture::Encoder(c) => (c.max_position_embeddings, c.hidden_size),
        };
        let w = arch.weight_loader(ckpt);
        let stack: Box<dyn Layerwise + 'a> = match arch {
            Architecture::Decoder(ModelConfig::Llama(c)) => Box::new(LlamaStack {
                cfg: Arc::new(c),
                w,
            }),
            Architecture::Decoder(ModelConfig::Gpt2(c)) => Box::new(Gpt2Stack {
                cfg: Arc::new(c),
                w,
            }),
            Architecture::Decoder(ModelConfig::Neox(c)) => Box::new(NeoxStack {
                cfg: Arc::new(c),
                w,
            }),
            Architecture::Encoder(c) => Box::new(BertStack {
                cfg: Arc::new(c),
                w,
            }),
        };
        Ok(Sequential {
            stack,
            max_context,
            width,
        })
    }

    /// The family's view.
    pub fn stack(&self) -> &dyn Layerwise {
        self.stack.as_ref()
    }

    /// Number of blocks.
    pub fn num_layers(&self) -> usize {
        self.stack.num_layers()
    }

    /// Width of the activations between blocks.
    pub fn width(&self) -> usize {
        self.width
    }

    /// The block's linears in forward order.
    pub fn linears(&self) -> &'static [LinearSlot] {
        self.stack.linears()
    }

    /// HF name of the weight of linear `local` in block `l`.
    pub fn weight_name(&self, l: usize, local: &str) -> String {
        format!("{}.{local}.weight", self.stack.prefix(l))
    }

    /// HF name of tensor `local` (e.g. `input_layernorm.weight`) of block `l`.
    pub fn tensor_name(&self, l: usize, local: &str) -> String {
        format!("{}.{local}", self.stack.prefix(l))
    }

    /// The block an HF tensor name belongs to, if any.
    pub fn layer_of(&self, name: &str) -> Option<usize> {
        let base = self.stack.prefix(0);
        let base = base.strip_suffix('0')?;
        name.strip_prefix(base)?.split('.').next()?.parse().ok()
    }

    /// Each sample's input to the first block. Refuses samples longer than the model's context,
    /// and samples whose activations (held twice, a block's inputs and outputs) would not fit
    /// in the memory the system has free.
    pub fn embed(&self, samples: &[Vec<u32>]) -> Result<Vec<Tensor>> {
        if let Some(long) = samples.iter().map(Vec::len).find(|&t| t > self.max_context) {
            return Err(ModelError::Input(format!(
                "calibration samples of {long} tokens are longer than the model's context of {} \
                 positions (--calib-seqlen)",
                self.max_context
            )));
        }
        let tokens: usize = samples.iter().map(Vec::len).sum();
        let bytes = (tokens as u128) * (self.width as u128) * 4 * 2;
        if let Some(free) = shrink_io::available_memory() {
            if bytes > free as u128 {
                return Err(ModelError::Input(format!(
                    "{} calibration samples of {} tokens would hold {:.1} GiB of activations \
                     (inputs and outputs of a block, {} wide), more than the {:.1} GiB of \
                     memory free: use fewer --calib-samples or a shorter --calib-seqlen",
                    samples.len(),
                    samples.iter().map(Vec::len).max().unwrap_or(0),
                    bytes as f64 / (1u64 << 30) as f64,
                    self.width,
                    free as f64 / (1u64 << 30) as f64
                )));
            }
        }
        self.stack.embed(samples, None)
    }

    /// [`Self::embed`] with `table` in place of the stored token table (the checks done by
    /// `embed` hold for the same samples).
    pub fn embed_with(&self, samples: &[Vec<u32>], table: &Tensor) -> Result<Vec<Tensor>> {
        self.stack.embed(samples, Some(table))
    }

    /// The stored weight of HF name `hf` (float32), checked to be of `shape`.
    pub fn read(&self, hf: &str, shape: &[usize]) -> Result<Tensor> {
        self.stack.read(hf, shape)
    }

    /// HF names of the token table and the LM head weight (the same when tied), without
    /// reading them; an encoder has none.
    pub fn head_names(&self) -> Result<(&'static str, &'static str)> {
        self.stack.head_names().ok_or_else(|| {
            ModelError::Input(format!(
                "a {} encoder has no language-model head",
                self.stack.family()
            ))
        })
    }

    /// The decoder's final norm and LM head; an encoder has none.
    pub fn head(&self) -> Result<Head> {
        self.stack.head()?.ok_or_else(|| {
            ModelError::Input(format!(
                "a {} encoder has no language-model head to measure next-token divergences on",
                self.stack.family()
            ))
        })
    }

    /// The positions of a sequence of `t` tokens.
    pub fn positions(&self, t: usize) -> Result<Positions> {
        self.stack.positions(t)
    }

    /// Load block `l`.
    pub fn layer(&self, l: usize) -> Result<Box<dyn Block>> {
        self.stack.block(l)
    }

    /// Run `block` on every sample's input; `tap` (called with the sample index) sees every
    /// linear's input.
    pub fn run(
        &self,
        block: &dyn Block,
        xs: &[Tensor],
        mut tap: Option<SampleTap>,
    ) -> Result<Vec<Tensor>> {
        let mut pos: Option<(usize, Positions)> = None;
        let mut out = Vec::with_capacity(xs.len());
        for (i, x) in xs.iter().enumerate() {
            let t = x.dim(0)?;
            if pos.as_ref().is_none_or(|(n, _)| *n != t) {
                pos = Some((t, self.stack.positions(t)?));
            }
            let (_, p) = pos.as_ref().expect("set above");
            let y = match tap.as_mut() {
                Some(f) => {
                    let mut g = |name: &str, t: &Tensor| f(i, name, t);
                    block.forward(x, p, Some(&mut g))?
                }
                None => block.forward(x, p, None)?,
            };
            out.push(y);
        }
        Ok(out)
    }
}

/// `(name, input)` slots, each linear reading the input of `input`.
macro_rules! slots {
    ($(($name:expr, $input:expr)),* $(,)?) => {
        &[$(LinearSlot { name: $name, input: $input }),*]
    };
}

// ---------------------------------------------------------------------------------------
// Llama family
// ---------------------------------------------------------------------------------------

struct LlamaStack<'a> {
    cfg: Arc<LlamaConfig>,
    w: WeightLoader<'a>,
}

#[derive(Debug, Clone)]
struct LlamaBlock {
    cfg: Arc<LlamaConfig>,
    layer: LlamaLayer,
}

const LLAMA_SLOTS: &[LinearSlot] = slots![
    ("self_attn.q_proj", "self_attn.q_proj"),
    ("self_attn.k_proj", "self_attn.q_proj"),
    ("self_attn.v_proj", "self_attn.q_proj"),
    ("self_attn.o_proj", "self_attn.o_proj"),
    ("mlp.gate_proj", "mlp.gate_proj"),
    ("mlp.up_proj", "mlp.gate_proj"),
    ("mlp.down_proj", "mlp.down_proj"),
];

impl Layerwise for LlamaStack<'_> {
    fn family(&self) -> &'static str {
        "llama"
    }
    fn num_layers(&self) -> usize {
        self.cfg.num_layers
    }
    fn prefix(&self, l: usize) -> String {
        format!("model.layers.{l}")
    }
    fn linears(&self) -> &'static [LinearSlot] {
        LLAMA_SLOTS
    }
    fn scale_groups(&self) -> Vec<ScaleGroup> {
        let c = &self.cfg;
        let (qd, kvd) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
        let mut g = vec![ScaleGroup {
            prev: Prev::Norm("input_layernorm"),
            linears: &["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
            inspect: Inspect::Attention,
        }];
        // v_proj → o_proj only when the two weights have the same shape (never under GQA).
        if kvd == c.hidden_size && qd == c.hidden_size {
            g.push(ScaleGroup {
                prev: Prev::Linear("self_attn.v_proj"),
                linears: &["self_attn.o_proj"],
                inspect: Inspect::Linear,
            });
        }
        g.push(ScaleGroup {
            prev: Prev::Norm("post_attention_layernorm"),
            linears: &["mlp.gate_proj", "mlp.up_proj"],
            inspect: Inspect::Mlp,
        });
        g.push(ScaleGroup {
            prev: Prev::Linear("mlp.up_proj"),
            linears: &["mlp.down_proj"],
            inspect: Inspect::Linear,
        });
        g
    }
    fn embed(&self, samples: &[Vec<u32>], table: Option<&Tensor>) -> Result<Vec<Tensor>> {
        let c = &self.cfg;
        let shape = [c.vocab_size, c.hidden_size];
        embed_from(&self.w, "model.embed_tokens.weight", shape, table, samples)
    }
    fn head_names(&self) -> Option<(&'static str, &'static str)> {
        let table = "model.embed_tokens.weight";
        let untied = !self.cfg.tie_word_embeddings && self.w.has("lm_head.weight");
        Some((table, if untied { "lm_head.weight" } else { table }))
    }
    fn head(&self) -> Result<Option<Head>> {
        let c = &self.cfg;
        let norm = HeadNorm::Rms(
            self.w.get("model.norm.weight", &[c.hidden_size])?,
            c.rms_norm_eps as f32,
        );
        head_of(
            &self.w,
            self.head_names(),
            norm,
            [c.vocab_size, c.hidden_size],
        )
    }
    fn positions(&self, t: usize) -> Result<Positions> {
        let (cos, sin) = rope_tables(self.cfg.head_dim, self.cfg.rope_theta, 0, t)?;
        Ok(Positions(Some((cos, sin))))
    }
    fn block(&self, l: usize) -> Result<Box<dyn Block>> {
        Ok(Box::new(LlamaBlock {
            cfg: self.cfg.clone(),
            layer: LlamaLayer::load(&self.cfg, &self.w, l)?,
        }))
    }
    fn read(&self, hf: &str, shape: &[usize]) -> Result<Tensor> {
        self.w.get(hf, shape)
    }
    fn gguf_name(&self, hf: &str) -> Option<String> {
        llama::gguf_name(&self.cfg, hf).map(|g| g.name)
    }
}

/// Does nothing with a linear's input.
fn ignore(_: &str, _: &Tensor) -> Result<()> {
    Ok(())
}

impl Block for LlamaBlock {
    fn forward(&self, x: &Tensor, pos: &Positions, tap: Option<Tap>) -> Result<Tensor> {
        self.layer.forward(&self.cfg, x, pos.rope()?, None, tap)
    }
    fn inspect(&self, what: Inspect, x: &Tensor, pos: &Positions) -> Result<Tensor> {
        match what {
            Inspect::Attention => {
                self.layer
                    .attention(&self.cfg, x, pos.rope()?, None, &mut ignore)
            }
            Inspect::Mlp => self.layer.mlp(x, &mut ignore),
            Inspect::Linear => Err(not_a_module()),
        }
    }
    fn linear(&self, name: &str) -> Option<&Linear> {
        let l = &self.layer;
        Some(match name {
            "self_attn.q_proj" => &l.q_proj,
            "self_attn.k_proj" => &l.k_proj,
            "self_attn.v_proj" => &l.v_proj,
            "self_attn.o_proj" => &l.o_proj,
            "mlp.gate_proj" => &l.gate_proj,
            "mlp.up_proj" => &l.up_proj,
            "mlp.down_proj" => &l.down_proj,
            _ => return None,
        })
    }
    fn linear_mut(&mut self, name: &str) -> Option<&mut Linear> {
        self.layer.linear_mut(name)
    }
    fn norm_mut(&mut self, name: &str) -> Option<NormMut<'_>> {
        match name {
            "input_layernorm" => Some((&mut self.layer.input_layernorm, None)),
            "post_attention_layernorm" => Some((&mut self.layer.post_attention_layernorm, None)),
            _ => None,
        }
    }
}

fn not_a_module() -> ModelError {
    ModelError::Input("a single linear is inspected through Block::linear".into())
}

/// Rows of the embedding `table` for each sample.
fn embed_rows(table: &Tensor, samples: &[Vec<u32>], vocab: usize) -> Result<Vec<Tensor>> {
    samples
        .iter()
        .map(|ids| {
            llama::check_ids(ids, vocab)?;
            let idx = Tensor::new(ids.as_slice(), &Device::Cpu)?;
            Ok(table.index_select(&idx, 0)?)
        })
        .collect()
}

/// Each sample's rows of `table`, or of the stored token table `name` of `shape`.
fn embed_from(
    w: &WeightLoader,
    name: &str,
    shape: [usize; 2],
    table: Option<&Tensor>,
    samples: &[Vec<u32>],
) -> Result<Vec<Tensor>> {
    match table {
        Some(t) => embed_rows(t, samples, shape[0]),
        None => embed_rows(&w.get(name, &shape)?, samples, shape[0]),
    }
}

/// The [`Head`] of a decoder whose token table and LM head weight are `names` (of `shape`),
/// after `norm`; `None` without names (an encoder).
fn head_of(
    w: &WeightLoader,
    names: Option<(&'static str, &'static str)>,
    norm: HeadNorm,
    shape: [usize; 2],
) -> Result<Option<Head>> {
    let Some((table, weight)) = names else {
        return Ok(None);
    };
    Ok(Some(Head {
        table,
        weight,
        norm,
        lm_head: w.get(weight, &shape)?,
    }))
}

/// A LayerNorm as a mutable (weight, bias) pair.
fn ln_mut(ln: &mut (Tensor, Tensor)) -> NormMut<'_> {
    let (w, b) = ln;
    (w, Some(b))
}

// ---------------------------------------------------------------------------------------
// GPT-2
// ---------------------------------------------------------------------------------------

struct Gpt2Stack<'a> {
    cfg: Arc<Gpt2Config>,
    w: WeightLoader<'a>,
}

#[derive(Debug, Clone)]
struct Gpt2Unit {
    cfg: Arc<Gpt2Config>,
    index: usize,
    block: Gpt2Block,
}

const GPT2_SLOTS: &[LinearSlot] = slots![
    ("attn.c_attn", "attn.c_attn"),
    ("attn.c_proj", "attn.c_proj"),
    ("mlp.c_fc", "mlp.c_fc"),
    ("mlp.c_proj", "mlp.c_proj"),
];

impl Layerwise for Gpt2Stack<'_> {
    fn family(&self) -> &'static str {
        "gpt2"
    }
    fn num_layers(&self) -> usize {
        self.cfg.n_layer
    }
    fn prefix(&self, l: usize) -> String {
        format!("transformer.h.{l}")
    }
    fn linears(&self) -> &'static [LinearSlot] {
        GPT2_SLOTS
    }
    fn scale_groups(&self) -> Vec<ScaleGroup> {
        // The MLP's activation sits between c_fc and c_proj, and c_attn's value rows are
        // interleaved with q/k in one weight: only the norms fold scales.
        vec![
            ScaleGroup {
                prev: Prev::Norm("ln_1"),
                linears: &["attn.c_attn"],
                inspect: Inspect::Attention,
            },
            ScaleGroup {
                prev: Prev::Norm("ln_2"),
                linears: &["mlp.c_fc"],
                inspect: Inspect::Mlp,
            },
        ]
    }
    fn embed(&self, samples: &[Vec<u32>], table: Option<&Tensor>) -> Result<Vec<Tensor>> {
        let c = &self.cfg;
        let wte = match table {
            Some(t) => t.clone(),
            None => self
                .w
                .get("transformer.wte.weight", &[c.vocab_size, c.n_embd])?,
        };
        let wpe = self
            .w
            .get("transformer.wpe.weight", &[c.n_positions, c.n_embd])?;
        samples
            .iter()
            .map(|ids| {
                if ids.len() > c.n_positions {
                    return Err(ModelError::Input(format!(
                        "samples of {} tokens exceed GPT-2's {} positions",
                        ids.len(),
                        c.n_positions
                    )));
                }
                let x = embed_rows(&wte, std::slice::from_ref(ids), c.vocab_size)?;
                Ok((&x[0] + wpe.narrow(0, 0, ids.len())?)?)
            })
            .collect()
    }
    fn head_names(&self) -> Option<(&'static str, &'static str)> {
        let table = "transformer.wte.weight";
        let untied = self.w.has("lm_head.weight");
        Some((table, if untied { "lm_head.weight" } else { table }))
    }
    fn head(&self) -> Result<Option<Head>> {
        let c = &self.cfg;
        let norm = HeadNorm::Layer(
            self.w.layer_norm("transformer.ln_f", c.n_embd)?,
            c.layer_norm_epsilon as f32,
        );
        head_of(&self.w, self.head_names(), norm, [c.vocab_size, c.n_embd])
    }
    fn positions(&self, _t: usize) -> Result<Positions> {
        Ok(Positions(None))
    }
    fn block(&self, l: usize) -> Result<Box<dyn Block>> {
        Ok(Box::new(Gpt2Unit {
            cfg: self.cfg.clone(),
            index: l,
            block: Gpt2Block::load(&self.cfg, &self.w, l)?,
        }))
    }
    fn read(&self, hf: &str, shape: &[usize]) -> Result<Tensor> {
        self.w.get(hf, shape)
    }
    fn gguf_name(&self, hf: &str) -> Option<String> {
        gpt2::gguf_name(hf).map(|g| g.name)
    }
}

impl Block for Gpt2Unit {
    fn forward(&self, x: &Tensor, _pos: &Positions, tap: Option<Tap>) -> Result<Tensor> {
        self.block.forward(&self.cfg, self.index, x, None, tap)
    }
    fn inspect(&self, what: Inspect, x: &Tensor, _pos: &Positions) -> Result<Tensor> {
        match what {
            Inspect::Attention => self
                .block
                .attention(&self.cfg, self.index, x, None, &mut ignore),
            Inspect::Mlp => self.block.mlp(&self.cfg, x, &mut ignore),
            Inspect::Linear => Err(not_a_module()),
        }
    }
    fn linear(&self, name: &str) -> Option<&Linear> {
        self.block.linear(name)
    }
    fn linear_mut(&mut self, name: &str) -> Option<&mut Linear> {
        self.block.linear_mut(name)
    }
    fn norm_mut(&mut self, name: &str) -> Option<NormMut<'_>> {
        match name {
            "ln_1" => Some(ln_mut(&mut self.block.ln_1)),
            "ln_2" => Some(ln_mut(&mut self.block.ln_2)),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------
// GPT-NeoX
// ---------------------------------------------------------------------------------------

struct NeoxStack<'a> {
    cfg: Arc<NeoxConfig>,
    w: WeightLoader<'a>,
}

#[derive(Debug, Clone)]
struct NeoxUnit {
    cfg: Arc<NeoxConfig>,
    layer: NeoxLayer,
}

const NEOX_SLOTS: &[LinearSlot] = slots![
    ("attention.query_key_value", "attention.query_key_value"),
    ("attention.dense", "attention.dense"),
    ("mlp.dense_h_to_4h", "mlp.dense_h_to_4h"),
    ("mlp.dense_4h_to_h", "mlp.dense_4h_to_h"),
];

impl Layerwise for NeoxStack<'_> {
    fn family(&self) -> &'static str {
        "gpt_neox"
    }
    fn num_layers(&self) -> usize {
        self.cfg.num_layers
    }
    fn prefix(&self, l: usize) -> String {
        format!("gpt_neox.layers.{l}")
    }
    fn linears(&self) -> &'static [LinearSlot] {
        NEOX_SLOTS
    }
    fn scale_groups(&self) -> Vec<ScaleGroup> {
        // As AutoAWQ's GPT-NeoX (without its scaled activation for dense_4h_to_h).
        vec![
            ScaleGroup {
                prev: Prev::Norm("input_layernorm"),
                linears: &["attention.query_key_value"],
                inspect: Inspect::Attention,
            },
            ScaleGroup {
                prev: Prev::Norm("post_attention_layernorm"),
                linears: &["mlp.dense_h_to_4h"],
                inspect: Inspect::Mlp,
            },
        ]
    }
    fn embed(&self, samples: &[Vec<u32>], table: Option<&Tensor>) -> Result<Vec<Tensor>> {
        let c = &self.cfg;
        let shape = [c.vocab_size, c.hidden_size];
        embed_from(&self.w, "gpt_neox.embed_in.weight", shape, table, samples)
    }
    fn head_names(&self) -> Option<(&'static str, &'static str)> {
        let table = "gpt_neox.embed_in.weight";
        let untied = self.w.has("embed_out.weight");
        Some((table, if untied { "embed_out.weight" } else { table }))
    }
    fn head(&self) -> Result<Option<Head>> {
        let c = &self.cfg;
        let norm = HeadNorm::Layer(
            self.w
                .layer_norm("gpt_neox.final_layer_norm", c.hidden_size)?,
            c.layer_norm_eps as f32,
        );
        head_of(
            &self.w,
            self.head_names(),
            norm,
            [c.vocab_size, c.hidden_size],
        )
    }
    fn positions(&self, t: usize) -> Result<Positions> {
        Ok(Positions(Some(gpt_neox::rope(&self.cfg, 0, t)?)))
    }
    fn block(&self, l: usize) -> Result<Box<dyn Block>> {
        Ok(Box::new(NeoxUnit {
            cfg: self.cfg.clone(),
            layer: NeoxLayer::load(&self.cfg, &self.w, l)?,
        }))
    }
    fn read(&self, hf: &str, shape: &[usize]) -> Result<Tensor> {
        self.w.get(hf, shape)
    }
    fn gguf_name(&self, hf: &str) -> Option<String> {
        gpt_neox::gguf_name(&self.cfg, hf).map(|g| g.name)
    }
}

impl Block for NeoxUnit {
    fn forward(&self, x: &Tensor, pos: &Positions, tap: Option<Tap>) -> Result<Tensor> {
        self.layer.forward(&self.cfg, x, pos.rope()?, None, tap)
    }
    fn inspect(&self, what: Inspect, x: &Tensor, pos: &Positions) -> Result<Tensor> {
        match what {
            Inspect::Attention => {
                self.layer
                    .attention(&self.cfg, x, pos.rope()?, None, &mut ignore)
            }
            Inspect::Mlp => self.layer.mlp(&self.cfg, x, &mut ignore),
            Inspect::Linear => Err(not_a_module()),
        }
    }
    fn linear(&self, name: &str) -> Option<&Linear> {
        self.layer.linear(name)
    }
    fn linear_mut(&mut self, name: &str) -> Option<&mut Linear> {
        self.layer.linear_mut(name)
    }
    fn norm_mut(&mut self, name: &str) -> Option<NormMut<'_>> {
        match name {
            "input_layernorm" => Some(ln_mut(&mut self.layer.input_layernorm)),
            "post_attention_layernorm" => Some(ln_mut(&mut self.layer.post_attention_layernorm)),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------
// BERT and DistilBERT encoders
// ---------------------------------------------------------------------------------------

struct BertStack<'a> {
    cfg: Arc<BertConfig>,
    w: WeightLoader<'a>,
}

#[derive(Debug, Clone)]
struct BertUnit {
    cfg: Arc<BertConfig>,
    layer: BertLayer,
}

const BERT_SLOTS: &[LinearSlot] = slots![
    ("attention.self.query", "attention.self.query"),
    ("attention.self.key", "attention.self.query"),
    ("attention.self.value", "attention.self.query"),
    ("attention.output.dense", "attention.output.dense"),
    ("intermediate.dense", "intermediate.dense"),
    ("output.dense", "output.dense"),
];

const DISTILBERT_SLOTS: &[LinearSlot] = slots![
    ("attention.q_lin", "attention.q_lin"),
    ("attention.k_lin", "attention.q_lin"),
    ("attention.v_lin", "attention.q_lin"),
    ("attention.out_lin", "attention.out_lin"),
    ("ffn.lin1", "ffn.lin1"),
    ("ffn.lin2", "ffn.lin2"),
];

impl Layerwise for BertStack<'_> {
    fn family(&self) -> &'static str {
        self.cfg.kind.model_type()
    }
    fn num_layers(&self) -> usize {
        self.cfg.num_layers
    }
    fn prefix(&self, l: usize) -> String {
        bert::layer_prefix(self.cfg.kind, l)
    }
    fn linears(&self) -> &'static [LinearSlot] {
        match self.cfg.kind {
            bert::BertKind::Bert => BERT_SLOTS,
            bert::BertKind::DistilBert => DISTILBERT_SLOTS,
        }
    }
    fn scale_groups(&self) -> Vec<ScaleGroup> {
        // Post-norm: a layer's input feeds its residual too, so no norm can fold scales; the
        // value projection's rows can (into the attention output projection's columns).
        let names = bert::layer_linears(self.cfg.kind);
        vec![ScaleGroup {
            prev: Prev::Linear(names[2]),
            linears: std::slice::from_ref(&names[3]),
            inspect: Inspect::Linear,
        }]
    }
    fn embed(&self, samples: &[Vec<u32>], table: Option<&Tensor>) -> Result<Vec<Tensor>> {
        if table.is_some() {
            return Err(ModelError::Input(
                "an encoder's token table cannot be replaced here".into(),
            ));
        }
        let e = BertEmbeddings::load(&self.cfg, &self.w)?;
        samples
            .iter()
            .map(|ids| e.forward(&self.cfg, ids))
            .collect()
    }
    fn positions(&self, _t: usize) -> Result<Positions> {
        Ok(Positions(None))
    }
    fn block(&self, l: usize) -> Result<Box<dyn Block>> {
        Ok(Box::new(BertUnit {
            cfg: self.cfg.clone(),
            layer: BertLayer::load(&self.cfg, &self.w, l)?,
        }))
    }
    fn head(&self) -> Result<Option<Head>> {
        Ok(None)
    }
    fn head_names(&self) -> Option<(&'static str, &'static str)> {
        None
    }
    fn read(&self, hf: &str, shape: &[usize]) -> Result<Tensor> {
        self.w.get(hf, shape)
    }
    fn gguf_name(&self, _hf: &str) -> Option<String> {
        None
    }
}

impl Block for BertUnit {
    fn forward(&self, x: &Tensor, _pos: &Positions, tap: Option<Tap>) -> Result<Tensor> {
        self.layer.forward(&self.cfg, x, tap)
    }
    fn inspect(&self, what: Inspect, x: &Tensor, _pos: &Positions) -> Result<Tensor> {
        match what {
            Inspect::Attention => self.layer.attention(&self.cfg, x, &mut ignore),
            Inspect::Mlp => self.layer.mlp(&self.cfg, x, &mut ignore),
            Inspect::Linear => Err(not_a_module()),
        }
    }
    fn linear(&self, name: &str) -> Option<&Linear> {
        self.layer.linear(self.cfg.kind, name)
    }
    fn linear_mut(&mut self, name: &str) -> Option<&mut Linear> {
        self.layer.linear_mut(self.cfg.kind, name)
    }
    fn norm_mut(&mut self, name: &str) -> Option<NormMut<'_>> {
        let (attn, out) = match self.cfg.kind {
            bert::BertKind::Bert => ("attention.output.LayerNorm", "output.LayerNorm"),
            bert::BertKind::DistilBert => ("sa_layer_norm", "output_layer_norm"),
        };
        if name == attn {
            Some(ln_mut(&mut self.layer.attn_ln))
        } else if name == out {
            Some(ln_mut(&mut self.layer.out_ln))
        } else {
            None
        }
    }
}
