//! Offline rotations: the same model with its outliers spread over every channel, so that each
//! weight quantizes with less error (QuaRot, Ashkboos et al. 2024, §4.1, its R1 and R2 without
//! the online Hadamards; SpinQuant, Liu et al. 2024, §3, the same rotations, random rather than
//! learned here). The output is an ordinary checkpoint of the same architecture whose float
//! outputs equal the input's to rounding.
//!
//! - **Residual stream (R1).** Every block reads the residual stream through a norm and writes
//!   back into it through a linear; with x' = xQ for an orthogonal Q (row vectors):
//!   - each norm's weight γ is folded into the linears that read it, `W ← W diag(γ)`, and γ
//!     becomes 1 (RMSNorm(xQ) = RMSNorm(x)Q, so the readers become `W' = W diag(γ) Q`);
//!   - the linears that write into the stream become `W' = Qᵀ W`, their bias `b' = Qᵀ b`;
//!   - the embeddings `E' = E Q`; the LM head reads the final norm like any reader, so a tied
//!     head becomes a separate tensor unless the final norm's weight is all ones.
//!
//!   LayerNorm (GPT-2, GPT-NeoX) also subtracts the mean, which does not commute with a general
//!   rotation. As in SliceGPT (Ashkboos et al. 2024, §3.3), everything that writes into the
//!   stream (embeddings, output projections) is first centered — LayerNorm discards the mean,
//!   so no output changes — and Q is chosen to map the all-ones vector to itself (`Bᵀ diag(s)
//!   B`, B a Hadamard matrix with a constant first row), so the stream stays zero-mean and
//!   LayerNorm(xQ) = LayerNorm(x)Q. Each LayerNorm's β is folded into its readers' biases
//!   (`b' = b + W β`) where they have one, else kept as `β' = (β ⊘ γ) Q` (the final norm: the
//!   LM head has no bias).
//! - **Values and outputs per head (R2).** Within a head, `v' = v R` and the output projection's
//!   columns of that head `W_o,h' = W_o,h R` (R of the head width, one per block): exact for any
//!   attention, so it applies to BERT and DistilBERT too. Their residual stream is normalized
//!   after the addition (post-LN, γ and β stay in the stream), which no rotation can pass
//!   through: there only R2 is possible, and asking for R1 is refused.
//!
//! Q is QuaRot's randomized Hadamard matrix `diag(s) H/√n` (s random signs; the
//! mean-preserving form above for LayerNorm) where a Hadamard matrix of the width exists
//! ([`crate::hadamard`]; 576 = 36 · 16), else a random orthogonal matrix. Channels that most
//! norms suppress — where the stream's massive activations live — are kept out of Q (the
//! identity there) with their γ left in the norms ([`suppressed_channels`]): folding a tiny γ
//! into the readers and rotating would spread those activations over every channel (on SmolLM2,
//! channels 247 and 507; the other 574 are rotated by a random orthogonal matrix, as 574 has
//! no Hadamard order). Every tensor is read, rotated and written before the next (streaming, one
//! tensor resident), and the logits of input and output are compared on a prompt before the
//! directory is committed.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use candle_core::{Device, Tensor};
use serde_json::json;
use shrink_formats::float::{self, FloatType};
use shrink_io::{Checkpoint, OutputDir, TensorHeader};
use shrink_models::bert::BertKind;
use shrink_models::layerwise::Sequential;
use shrink_models::{Architecture, ModelConfig, ModelError, WeightLoader};

use crate::error::{MethodError, Result};
use crate::hadamard::{self, Basis};
use crate::pipeline::Progress;
use crate::report::{peak_rss, Report, Sizes};

/// Which rotations to apply.
#[derive(Debug, Clone, PartialEq)]
pub struct RotateSpec {
    /// Rotate the residual stream (R1).
    pub residual: bool,
    /// Rotate each head's values and output columns (R2).
    pub heads: bool,
    /// Seed of the random signs (and of the random orthogonal matrix without a Hadamard one).
    pub seed: u64,
    /// Residual channels left out of the rotation, their norm weights kept in the norms:
    /// `None` finds them ([`suppressed_channels`]), `Some(list)` names them (empty: none).
    pub keep: Option<Vec<usize>>,
    /// Matrices given rather than drawn (a learned rotation: `shrink_train::rotation`).
    pub given: Given,
}

/// Rotation matrices given by the caller, row-major: the residual one over the channels not
/// kept (order hidden − kept; RMSNorm families only), and one head rotation per block.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Given {
    /// R1 over the rotated channels.
    pub residual: Option<Vec<f64>>,
    /// R2 per block (head width squared).
    pub heads: Option<Vec<Vec<f64>>>,
    /// Where the matrices came from, for the report.
    pub provenance: Option<Provenance>,
}

/// What made given matrices: the report names `input` as the rotation's input, keeps `record`
/// under `learned`, and `files` (a training log, a chart) are written beside the weights.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Provenance {
    /// The model the whole run started from.
    pub input: std::path::PathBuf,
    /// What produced the matrices.
    pub record: serde_json::Value,
    /// Files to write beside the weights (name, bytes).
    pub files: Vec<(String, Vec<u8>)>,
}

impl Default for RotateSpec {
    fn default() -> Self {
        RotateSpec {
            residual: true,
            heads: true,
            seed: 0,
            keep: None,
            given: Given::default(),
        }
    }
}

impl RotateSpec {
    /// The method's name in reports: `rotate-r1r2`, `rotate-r1`, `rotate-r2`; `rotate-learned-…`
    /// with given matrices.
    pub fn name(&self) -> String {
        let mut s = "rotate-".to_string();
        if self.given.residual.is_some() || self.given.heads.is_some() {
            s.push_str("learned-");
        }
        if self.residual {
            s.push_str("r1");
        }
        if self.heads {
            s.push_str("r2");
        }
        s
    }
}

/// How a family normalizes the residual stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NormKind {
    /// RMSNorm before each sub-block (Llama family).
    Rms,
    /// LayerNorm before each sub-block (GPT-2, GPT-NeoX).
    Layer,
    /// LayerNorm after each residual addition (BERT, DistilBERT): no residual rotation.
    Post,
}

/// Where a family's value rows of key/value head g start, in the [out, in] view of the linear
/// that computes the values.
#[derive(Debug, Clone, Copy)]
enum ValueRows {
    /// A separate value projection: g · head width.
    Separate,
    /// GPT-2's fused c_attn [q; k; v]: 2 · hidden + g · head width.
    AfterQk,
    /// GPT-NeoX's fused query_key_value, per head [q, k, v]: g · 3 · head width + 2 · head width.
    Interleaved,
}

/// The tensors a family's rotation touches, by name inside a block unless said otherwise.
#[derive(Debug, Clone)]
struct Layout {
    norm: NormKind,
    /// Linears reading the stream and the norm they read it through.
    readers: &'static [(&'static str, &'static str)],
    /// Linears writing into the stream.
    writers: &'static [&'static str],
    /// GPT-2's Conv1D: weights stored [in, out].
    conv1d: bool,
    /// The linear computing the values, and its layout.
    value: (&'static str, ValueRows),
    /// The attention's output projection.
    out: &'static str,
    /// Embeddings added into the stream (full names).
    embeds: Vec<String>,
    /// The final norm (full name without `.weight`) and the LM head (full name).
    final_norm: String,
    head: String,
    hidden: usize,
    /// Query heads, key/value heads, head width.
    heads: (usize, usize, usize),
}

impl Layout {
    fn of(arch: &Architecture) -> Self {
        match arch {
            Architecture::Decoder(ModelConfig::Llama(c)) => Layout {
                norm: NormKind::Rms,
                readers: &[
                    ("self_attn.q_proj", "input_layernorm"),
                    ("self_attn.k_proj", "input_layernorm"),
                    ("self_attn.v_proj", "input_layernorm"),
                    ("mlp.gate_proj", "post_attention_layernorm"),
                    ("mlp.up_proj", "post_attention_layernorm"),
                ],
                writers: &["self_attn.o_proj", "mlp.down_proj"],
                conv1d: false,
                value: ("self_attn.v_proj", ValueRows::Separate),
                out: "self_attn.o_proj",
                embeds: vec!["model.embed_tokens.weight".into()],
                final_norm: "model.norm".into(),
                head: "lm_head.weight".into(),
                hidden: c.hidden_size,
                heads: (c.num_heads, c.num_kv_heads, c.head_dim),
            },
            Architecture::Decoder(ModelConfig::Gpt2(c)) => Layout {
                norm: NormKind::Layer,
                readers: &[("attn.c_attn", "ln_1"), ("mlp.c_fc", "ln_2")],
                writers: &["attn.c_proj", "mlp.c_proj"],
                conv1d: true,
                value: ("attn.c_attn", ValueRows::AfterQk),
                out: "attn.c_proj",
                embeds: vec![
                    "transformer.wte.weight".into(),
                    "transformer.wpe.weight".into(),
                ],
                final_norm: "transformer.ln_f".into(),
                head: "lm_head.weight".into(),
                hidden: c.n_embd,
                heads: (c.n_head, c.n_head, c.n_embd / c.n_head),
            },
            Architecture::Decoder(ModelConfig::Neox(c)) => Layout {
                norm: NormKind::Layer,
                readers: &[
                    ("attention.query_key_value", "input_layernorm"),
                    ("mlp.dense_h_to_4h", "post_attention_layernorm"),
                ],
                writers: &["attention.dense", "mlp.dense_4h_to_h"],
                conv1d: false,
                value: ("attention.query_key_value", ValueRows::Interleaved),
                out: "attention.dense",
                embeds: vec!["gpt_neox.embed_in.weight".into()],
                final_norm: "gpt_neox.final_layer_norm".into(),
                head: "embed_out.weight".into(),
                hidden: c.hidden_size,
                heads: (c.num_heads, c.num_heads, c.hidden_size / c.num_heads),
            },
            Architecture::Encoder(c) => {
                let (value, out) = match c.kind {
                    BertKind::Bert => ("attention.self.value", "attention.output.dense"),
                    BertKind::DistilBert => ("attention.v_lin", "attention.out_lin"),
                };
                Layout {
                    norm: NormKind::Post,
                    readers: &[],
                    writers: &[],
                    conv1d: false,
                    value: (value, ValueRows::Separate),
                    out,
                    embeds: vec![],
                    final_norm: String::new(),
                    head: String::new(),
                    hidden: c.hidden_size,
                    heads: (c.num_heads, c.num_heads, c.head_dim()),
                }
            }
        }
    }

    /// First row of key/value head g's values.
    fn value_row(&self, g: usize) -> usize {
        let hd = self.heads.2;
        match self.value.1 {
            ValueRows::Separate => g * hd,
            ValueRows::AfterQk => 2 * self.hidden + g * hd,
            ValueRows::Interleaved => g * 3 * hd + 2 * hd,
        }
    }

    /// The norm a reader reads through.
    fn reader_norm(&self, base: &str) -> Option<&'static str> {
        self.readers.iter().find(|r| r.0 == base).map(|r| r.1)
    }

    fn is_norm(&self, base: &str) -> bool {
        self.readers.iter().any(|r| r.1 == base)
    }
}

/// A row-major matrix.
struct Mat {
    v: Vec<f32>,
    rows: usize,
    cols: usize,
}

impl Mat {
    fn t(&self) -> Mat {
        let mut v = vec![0f32; self.v.len()];
        for r in 0..self.rows {
            for c in 0..self.cols {
                v[c * self.rows + r] = self.v[r * self.cols + c];
            }
        }
        Mat {
            v,
            rows: self.cols,
            cols: self.rows,
        }
    }

    fn tensor(&self) -> Result<Tensor> {
        Ok(
            Tensor::from_slice(&self.v, (self.rows, self.cols), &Device::Cpu)
                .map_err(ModelError::from)?,
        )
    }

    /// `self · b` (b a tensor [cols, k]).
    fn matmul(&self, b: &Tensor) -> Result<Mat> {
        let y = self.tensor()?.matmul(b).map_err(ModelError::from)?;
        let cols = y.dim(1).map_err(ModelError::from)?;
        Ok(Mat {
            v: crate::pipeline::values(&y)?,
            rows: self.rows,
            cols,
        })
    }

    /// `a · self` (a a tensor [k, rows]).
    fn left(&self, a: &Tensor) -> Result<Mat> {
        let y = a.matmul(&self.tensor()?).map_err(ModelError::from)?;
        let rows = y.dim(0).map_err(ModelError::from)?;
        Ok(Mat {
            v: crate::pipeline::values(&y)?,
            rows,
            cols: self.cols,
        })
    }

    /// Subtract each column's mean (over the rows).
    fn center_columns(&mut self) {
        let mut mean = vec![0f64; self.cols];
        for row in self.v.chunks_exact(self.cols) {
            mean.iter_mut().zip(row).for_each(|(m, &x)| *m += x as f64);
        }
        let n = self.rows as f64;
        for row in self.v.chunks_exact_mut(self.cols) {
            row.iter_mut()
                .zip(&mean)
                .for_each(|(x, m)| *x = (*x as f64 - m / n) as f32);
        }
    }

    /// Subtract each row's mean.
    fn center_rows(&mut self) {
        for row in self.v.chunks_exact_mut(self.cols) {
            let m = row.iter().map(|&x| x as f64).sum::<f64>() / row.len() as f64;
            row.iter_mut().for_each(|x| *x = (*x as f64 - m) as f32);
        }
    }
}

/// `Rᵀ B` for the `hd` rows of `m` starting at `row` (R is hd × hd, row major).
fn rotate_rows(m: &mut Mat, row: usize, r: &[f64], hd: usize) {
    let cols = m.cols;
    let block: Vec<f64> = m.v[row * cols..(row + hd) * cols]
        .iter()
        .map(|&x| x as f64)
        .collect();
    for i in 0..hd {
        for c in 0..cols {
            let s: f64 = (0..hd).map(|k| r[k * hd + i] * block[k * cols + c]).sum();
            m.v[(row + i) * cols + c] = s as f32;
        }
    }
}

/// `B R` for the `hd` columns of `m` starting at `col`.
fn rotate_cols(m: &mut Mat, col: usize, r: &[f64], hd: usize) {
    let cols = m.cols;
    for row in m.v.chunks_exact_mut(cols) {
        let block: Vec<f64> = row[col..col + hd].iter().map(|&x| x as f64).collect();
        for j in 0..hd {
            row[col + j] = (0..hd).map(|k| block[k] * r[k * hd + j]).sum::<f64>() as f32;
        }
    }
}

/// A tensor of the output and where it comes from.
struct Planned {
    header: TensorHeader,
    /// Read from this input tensor (the embedding, for a head untied by the rotation).
    source: String,
    shape: Vec<usize>,
}

/// The rotation being applied: matrices, and how to read the input.
struct Rotator<'a> {
    arch: Architecture,
    loader: WeightLoader<'a>,
    layout: Layout,
    seq: Sequential<'a>,
    spec: RotateSpec,
    shapes: HashMap<String, Vec<usize>>,
    /// Q and Qᵀ (hidden × hidden), with R1.
    q: Option<(Tensor, Tensor)>,
    /// R per block (head width squared, row major), with R2.
    r: Vec<Vec<f64>>,
    /// Norms (full prefix) whose β goes into their readers' biases.
    fold_beta: HashMap<String, bool>,
    /// Residual channels outside the rotation (their γ stays in the norms).
    kept: Vec<bool>,
}

impl Rotator<'_> {
    fn read(&self, name: &str) -> Result<Vec<f32>> {
        let shape = self.shapes.get(name).ok_or_else(|| {
            MethodError::Model(ModelError::Input(format!(
                "weight {name} is not in the model"
            )))
        })?;
        crate::pipeline::values(&self.arch.read_weight(&self.loader, name, shape)?)
    }

    /// Weight `name` as [out, in] (GPT-2's Conv1D transposed).
    fn linear(&self, name: &str, conv1d: bool) -> Result<Mat> {
        let s = &self.shapes[name];
        let m = Mat {
            v: self.read(name)?,
            rows: s[0],
            cols: s[1],
        };
        Ok(if conv1d { m.t() } else { m })
    }

    fn norm_weight(&self, prefix: &str) -> Result<Vec<f32>> {
        self.read(&format!("{prefix}.weight"))
    }

    /// The part of a norm's weight folded into its readers: γ, with 1 on the kept channels.
    fn folded_weight(&self, prefix: &str) -> Result<Vec<f32>> {
        let mut g = self.norm_weight(prefix)?;
        g.iter_mut()
            .zip(&self.kept)
            .filter(|(_, &k)| k)
            .for_each(|(v, _)| *v = 1.0);
        Ok(g)
    }

    /// β of a LayerNorm, if it has one.
    fn norm_bias(&self, prefix: &str) -> Result<Option<Vec<f32>>> {
        let name = format!("{prefix}.bias");
        if self.shapes.contains_key(&name) {
            Ok(Some(self.read(&name)?))
        } else {
            Ok(None)
        }
    }

    /// The values of output tensor `p`.
    fn tensor(&self, p: &Planned) -> Result<Vec<f32>> {
        let name = p.header.name.as_str();
        let lay = &self.layout;
        if let Some(l) = self.seq.layer_of(name) {
            let prefix = self.seq.tensor_name(l, "");
            let local = &name[prefix.len()..];
            let (base, is_bias) = match local.strip_suffix(".bias") {
                Some(b) => (b, true),
                None => (local.strip_suffix(".weight").unwrap_or(local), false),
            };
            let full = |b: &str| format!("{prefix}{b}");
            let r1 = self.spec.residual && lay.norm != NormKind::Post;
            let r2 = self.spec.heads;
            if let Some(norm) = lay.reader_norm(base).filter(|_| r1) {
                return self.reader(
                    &full(base),
                    &full(norm),
                    is_bias,
                    (r2 && base == lay.value.0).then_some(l),
                );
            }
            if r2 && base == lay.value.0 {
                let mut m = if is_bias {
                    column(self.read(name)?)
                } else {
                    self.linear(name, lay.conv1d)?
                };
                self.values(&mut m, l);
                return Ok(self.back(m, is_bias));
            }
            let is_writer = lay.writers.contains(&base);
            if (r1 && is_writer) || (r2 && base == lay.out) {
                return self.writer(name, is_bias, r1, (r2 && base == lay.out).then_some(l));
            }
            if r1 && lay.is_norm(base) {
                return self.norm(&full(base), is_bias, self.fold_beta[&full(base)]);
            }
            return self.read(name);
        }
        let r1 = self.spec.residual && lay.norm != NormKind::Post;
        if !r1 {
            return self.read(name);
        }
        if lay.embeds.iter().any(|e| e == name) {
            let s = &self.shapes[name];
            let mut m = Mat {
                v: self.read(name)?,
                rows: s[0],
                cols: s[1],
            };
            if lay.norm == NormKind::Layer {
                m.center_rows();
            }
            return Ok(m.matmul(&self.q()?.0)?.v);
        }
        if name == lay.head {
            let mut m = Mat {
                v: self.read(&p.source)?,
                rows: p.shape[0],
                cols: p.shape[1],
            };
            scale_columns(&mut m, &self.folded_weight(&lay.final_norm)?);
            return Ok(m.matmul(&self.q()?.0)?.v);
        }
        if let Some(is_bias) = [".weight", ".bias"]
            .iter()
            .position(|s| name == format!("{}{s}", lay.final_norm))
        {
            return self.norm(&lay.final_norm, is_bias == 1, false);
        }
        self.read(name)
    }

    fn q(&self) -> Result<&(Tensor, Tensor)> {
        self.q.as_ref().ok_or_else(|| {
            MethodError::Options("internal: residual rotation without its matrix".into())
        })
    }

    /// A reader's weight `W diag(γ) Q` or bias `b + W β`, then its value rows rotated (R2).
    fn reader(
        &self,
        linear: &str,
        norm: &str,
        is_bias: bool,
        value_layer: Option<usize>,
    ) -> Result<Vec<f32>> {
        let conv1d = self.layout.conv1d;
        let w = self.linear(&format!("{linear}.weight"), conv1d)?;
        let mut m = if is_bias {
            let mut b = self.read(&format!("{linear}.bias"))?;
            if self.fold_beta[norm] {
                if let Some(beta) = self.norm_bias(norm)? {
                    for (r, row) in w.v.chunks_exact(w.cols).enumerate() {
                        let d: f64 = row
                            .iter()
                            .zip(&beta)
                            .map(|(&a, &c)| a as f64 * c as f64)
                            .sum();
                        b[r] = (b[r] as f64 + d) as f32;
                    }
                }
            }
            column(b)
        } else {
            let mut w = w;
            scale_columns(&mut w, &self.folded_weight(norm)?);
            w.matmul(&self.q()?.0)?
        };
        if let Some(l) = value_layer {
            self.values(&mut m, l);
        }
        Ok(self.back(m, is_bias))
    }

    /// A writer's weight `Qᵀ W` (centered first under LayerNorm; R2's columns first for the
    /// attention's output projection) or bias `Qᵀ b`.
    fn writer(
        &self,
        name: &str,
        is_bias: bool,
        r1: bool,
        out_layer: Option<usize>,
    ) -> Result<Vec<f32>> {
        let mut m = if is_bias {
            column(self.read(name)?)
        } else {
            self.linear(name, self.layout.conv1d)?
        };
        if let (Some(l), false) = (out_layer, is_bias) {
            let (nh, _, hd) = self.layout.heads;
            for h in 0..nh {
                rotate_cols(&mut m, h * hd, &self.r[l], hd);
            }
        }
        if r1 {
            if self.layout.norm == NormKind::Layer {
                m.center_columns();
            }
            m = m.left(&self.q()?.1)?;
        }
        Ok(self.back(m, is_bias))
    }

    /// A norm's weight (1 after folding; γ on the kept channels) or bias (0 when folded into
    /// the readers, else `(β ⊘ γ̃) Q`, γ̃ the folded part of γ).
    fn norm(&self, prefix: &str, is_bias: bool, folded: bool) -> Result<Vec<f32>> {
        let gamma = self.norm_weight(prefix)?;
        if !is_bias {
            return Ok(gamma
                .iter()
                .zip(&self.kept)
                .map(|(&g, &k)| if k { g } else { 1.0 })
                .collect());
        }
        let gamma: Vec<f32> = gamma
            .iter()
            .zip(&self.kept)
            .map(|(&g, &k)| if k { 1.0 } else { g })
            .collect();
        let beta = self.norm_bias(prefix)?.unwrap_or_default();
        if folded || beta.iter().all(|&b| b == 0.0) {
            return Ok(vec![0.0; gamma.len()]);
        }
        let mut v = Vec::with_capacity(beta.len());
        for (i, (&b, &g)) in beta.iter().zip(&gamma).enumerate() {
            if b != 0.0 && g == 0.0 {
                return Err(MethodError::Numerical {
                    layer: prefix.into(),
                    what: format!(
                        "channel {i} has weight 0 and bias {b}: the bias cannot be carried \
                         through the rotation (its readers have no bias to take it)"
                    ),
                });
            }
            v.push(if b == 0.0 { 0.0 } else { b / g });
        }
        Ok(Mat {
            v,
            rows: 1,
            cols: beta.len(),
        }
        .matmul(&self.q()?.0)?
        .v)
    }

    /// R2 on the value rows of every key/value head of block `l`.
    fn values(&self, m: &mut Mat, l: usize) {
        let (_, kv, hd) = self.layout.heads;
        for g in 0..kv {
            rotate_rows(m, self.layout.value_row(g), &self.r[l], hd);
        }
    }

    /// Back to the stored layout: a bias as a vector, a Conv1D weight transposed back.
    fn back(&self, m: Mat, is_bias: bool) -> Vec<f32> {
        if !is_bias && self.layout.conv1d {
            m.t().v
        } else {
            m.v
        }
    }
}

/// The n × n rotation that is `m` on the channels not kept and the identity on the kept ones.
fn embed_rotation(m: &[f64], kept: &[bool]) -> Vec<f64> {
    let n = kept.len();
    let idx: Vec<usize> = (0..n).filter(|&i| !kept[i]).collect();
    let k = idx.len();
    let mut q = vec![0f64; n * n];
    for (i, &c) in kept.iter().enumerate() {
        if c {
            q[i * n + i] = 1.0;
        }
    }
    for (a, &i) in idx.iter().enumerate() {
        for (b, &j) in idx.iter().enumerate() {
            q[i * n + j] = m[a * k + b];
        }
    }
    q
}

/// Every pre-norm's weight (the norms the blocks read the stream through, and the final one).
fn norm_weights(
    arch: &Architecture,
    loader: &WeightLoader,
    seq: &Sequential,
    layout: &Layout,
) -> Result<Vec<Vec<f32>>> {
    let mut names: Vec<String> = Vec::new();
    for l in 0..seq.num_layers() {
        for (_, norm) in layout.readers {
            let n = seq.tensor_name(l, &format!("{norm}.weight"));
            if !names.contains(&n) {
                names.push(n);
            }
        }
    }
    names.push(format!("{}.weight", layout.final_norm));
    names
        .iter()
        .map(|n| crate::pipeline::values(&arch.read_weight(loader, n, &[layout.hidden])?))
        .collect()
}

/// The residual channels the model's norms suppress: where at least a tenth of the norms (and
/// at least two) scale the channel by less than a tenth of their median |γ|. Such channels
/// carry the stream's massive activations (Sun et al. 2024, "Massive activations in large
/// language models"), which the norms damp; folding their tiny γ into the next linear and
/// rotating would spread those activations over every channel and multiply every rounding
/// error by them (on SmolLM2, channels 247 and 507: with them rotated, RTN int4 scored PPL 51
/// on the first 24 windows, with them kept out 38; 35 unrotated).
pub fn suppressed_channels(gammas: &[Vec<f32>]) -> Vec<usize> {
    let Some(n) = gammas.first().map(Vec::len) else {
        return vec![];
    };
    let mut count = vec![0usize; n];
    for g in gammas {
        let mut a: Vec<f32> = g.iter().map(|v| v.abs()).collect();
        a.sort_by(f32::total_cmp);
        let median = a[a.len() / 2];
        for (c, v) in g.iter().enumerate() {
            if v.abs() < 0.1 * median {
                count[c] += 1;
            }
        }
    }
    let need = (gammas.len() / 10).max(2);
    (0..n).filter(|&c| count[c] >= need).collect()
}

/// Refuse given matrices of the wrong size, not orthogonal, or where they cannot apply.
fn check_given(
    spec: &RotateSpec,
    norm: NormKind,
    rotated: usize,
    hd: usize,
    layers: usize,
) -> Result<()> {
    let bad = |s: String| Err(MethodError::Options(s));
    if let Some(m) = &spec.given.residual {
        if !spec.residual {
            return bad("a residual rotation was given with the residual stream turned off".into());
        }
        if norm != NormKind::Rms {
            return bad(
                "a given residual rotation applies to RMSNorm families only (LayerNorm needs a \
                 rotation that maps the all-ones vector to itself)"
                    .into(),
            );
        }
        if m.len() != rotated * rotated {
            return bad(format!(
                "the given residual rotation has {} entries; {rotated} rotated channels need \
                 {rotated}²",
                m.len()
            ));
        }
        check_orthogonal(m, rotated, "the given residual rotation")?;
    }
    if let Some(r) = &spec.given.heads {
        if !spec.heads || r.len() != layers {
            return bad(format!(
                "{} head rotations given for {layers} blocks (heads rotated: {})",
                r.len(),
                spec.heads
            ));
        }
        for (l, m) in r.iter().enumerate() {
            if m.len() != hd * hd {
                return bad(format!("head rotation {l} is not {hd} × {hd}"));
            }
            check_orthogonal(m, hd, &format!("head rotation {l}"))?;
        }
    }
    Ok(())
}

/// Refuse a matrix whose columns are not orthonormal to 1e-6.
fn check_orthogonal(m: &[f64], n: usize, what: &str) -> Result<()> {
    for i in 0..n {
        for j in i..n {
            let d: f64 = (0..n).map(|k| m[k * n + i] * m[k * n + j]).sum();
            let want = if i == j { 1.0 } else { 0.0 };
            if !(d - want).abs().lt(&1e-6) {
                return Err(MethodError::Options(format!(
                    "{what} is not orthogonal (column {i} · column {j} = {d})"
                )));
            }
        }
    }
    Ok(())
}

/// A vector as a one-column matrix.
fn column(v: Vec<f32>) -> Mat {
    let rows = v.len();
    Mat { v, rows, cols: 1 }
}

/// `W diag(γ)`.
fn scale_columns(m: &mut Mat, gamma: &[f32]) {
    for row in m.v.chunks_exact_mut(m.cols) {
        row.iter_mut().zip(gamma).for_each(|(x, &g)| *x *= g);
    }
}

/// An f64 matrix as an f32 tensor [n, n], and its transpose.
fn tensors(q: &[f64], n: usize) -> Result<(Tensor, Tensor)> {
    let v: Vec<f32> = q.iter().map(|&x| x as f32).collect();
    let t = Tensor::from_vec(v, (n, n), &Device::Cpu).map_err(ModelError::from)?;
    let tt = t
        .t()
        .and_then(|t| t.contiguous())
        .map_err(ModelError::from)?;
    Ok((t, tt))
}

/// Rotate `ckpt` as `spec` says into the HF directory `output` (float tensors stored as
/// `dtype`). The report's extra fields: what was rotated and with which kind of matrix,
/// whether the LM head had to be untied (and what that cost), and the logits' differences
/// between input and output on a prompt (decoders).
pub fn rotate(
    ckpt: &Checkpoint,
    output: &Path,
    spec: RotateSpec,
    dtype: FloatType,
    progress: &dyn Progress,
) -> Result<Report> {
    let t0 = Instant::now();
    let path = ckpt.path();
    if !spec.residual && !spec.heads {
        return Err(MethodError::Options(
            "nothing to rotate: both the residual stream and the heads were turned off".into(),
        ));
    }
    if let Checkpoint::Hf(h) = ckpt {
        if h.quantization_config().is_some() {
            return Err(MethodError::Input {
                path: path.to_path_buf(),
                what: "the checkpoint is quantized; rotate the float model, then quantize \
                       (shrink quantize --rotate does both)"
                    .into(),
            });
        }
    }
    let arch = Architecture::from_checkpoint(ckpt)?;
    let layout = Layout::of(&arch);
    if spec.residual && layout.norm == NormKind::Post {
        return Err(MethodError::Options(format!(
            "{} normalizes its residual stream after each addition (post-LN: the norm's weight \
             and bias stay in the stream), so no rotation of the stream can be absorbed into its \
             weights; rotate the heads only (shrink rotate --no-residual)",
            arch.family()
        )));
    }
    let (nh, kv, hd) = layout.heads;
    if hd == 0 || nh % kv.max(1) != 0 {
        return Err(MethodError::Options(format!(
            "{} heads of width {hd} ({kv} key/value heads) cannot be rotated",
            nh
        )));
    }
    let seq = Sequential::new(ckpt)?;
    let shapes: Vec<(String, Vec<usize>)> = arch.weight_shapes();
    let by_name: HashMap<String, Vec<usize>> = shapes.iter().cloned().collect();
    let loader = arch.weight_loader(ckpt);
    for (name, _) in &shapes {
        if !loader.has(name) {
            return Err(MethodError::Input {
                path: path.to_path_buf(),
                what: format!(
                    "weight {name} (required by the {} config) is not in the file",
                    arch.family()
                ),
            });
        }
    }

    // Channels kept out of the rotation.
    let kept_list = match &spec.keep {
        Some(list) => {
            if let Some(&c) = list.iter().find(|&&c| c >= layout.hidden) {
                return Err(MethodError::Options(format!(
                    "channel {c} to keep out of the rotation is outside the {} residual channels",
                    layout.hidden
                )));
            }
            let mut l = list.clone();
            l.sort_unstable();
            l.dedup();
            l
        }
        None if spec.residual => suppressed_channels(&norm_weights(&arch, &loader, &seq, &layout)?),
        None => vec![],
    };
    let mut kept = vec![false; layout.hidden];
    kept_list.iter().for_each(|&c| kept[c] = true);
    let rotated = layout.hidden - kept_list.len();
    if spec.residual && rotated < 2 {
        return Err(MethodError::Options(format!(
            "keeping {} of {} channels out of the rotation leaves nothing to rotate",
            kept_list.len(),
            layout.hidden
        )));
    }

    // The matrices: given, or drawn from one stream of random numbers per purpose.
    check_given(&spec, layout.norm, rotated, hd, seq.num_layers())?;
    let mut rng = hadamard::rng(spec.seed, 1);
    let basis = Basis::new(rotated, &mut rng);
    let q = if spec.residual {
        let m = match (&spec.given.residual, layout.norm) {
            (Some(m), _) => m.clone(),
            (None, NormKind::Layer) => basis.mean_preserving(&mut rng),
            (None, _) => basis.signed(&mut rng),
        };
        Some(tensors(&embed_rotation(&m, &kept), layout.hidden)?)
    } else {
        None
    };
    let mut rng_h = hadamard::rng(spec.seed, 2);
    let head_basis = Basis::new(hd, &mut rng_h);
    let r: Vec<Vec<f64>> = match (&spec.given.heads, spec.heads) {
        (Some(r), true) => r.clone(),
        (None, true) => (0..seq.num_layers())
            .map(|_| head_basis.signed(&mut rng_h))
            .collect(),
        (_, false) => vec![],
    };

    // LayerNorm β goes into the readers' biases where every reader has one.
    let mut fold_beta = HashMap::new();
    for l in 0..seq.num_layers() {
        for (_, norm) in layout.readers {
            let all = layout
                .readers
                .iter()
                .filter(|r| r.1 == *norm)
                .all(|r| by_name.contains_key(&seq.tensor_name(l, &format!("{}.bias", r.0))));
            fold_beta.insert(seq.tensor_name(l, norm), all);
        }
    }

    // The output's tensors: the model's weights, plus the LM head if the rotation unties it.
    let mut planned: Vec<Planned> = shapes
        .iter()
        .map(|(name, shape)| Planned {
            header: TensorHeader {
                name: name.clone(),
                dtype: shrink_io::safetensors_dtype(dtype),
                shape: shape.clone(),
                len: shape.iter().product::<usize>() * dtype.size(),
            },
            source: name.clone(),
            shape: shape.clone(),
        })
        .collect();
    let spec_name = spec.name();
    let rotator = Rotator {
        arch,
        loader,
        layout,
        seq,
        spec: spec.clone(),
        shapes: by_name,
        q,
        r,
        fold_beta,
        kept,
    };
    let lay = &rotator.layout;
    let mut untied = None;
    if spec.residual && !rotator.shapes.contains_key(&lay.head) {
        let gamma = rotator.folded_weight(&lay.final_norm)?;
        let beta = rotator.norm_bias(&lay.final_norm)?.unwrap_or_default();
        let stays = gamma.iter().all(|&g| g == 1.0) && beta.iter().all(|&b| b == 0.0);
        if !stays {
            let embed = &lay.embeds[0];
            let shape = rotator.shapes[embed].clone();
            untied = Some(shape.iter().product::<usize>());
            planned.push(Planned {
                header: TensorHeader {
                    name: lay.head.clone(),
                    dtype: shrink_io::safetensors_dtype(dtype),
                    shape: shape.clone(),
                    len: shape.iter().product::<usize>() * dtype.size(),
                },
                source: embed.clone(),
                shape,
            });
        }
    }

    let out = OutputDir::create(output, &[path])?;
    let headers: Vec<TensorHeader> = planned.iter().map(|p| p.header.clone()).collect();
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    progress.start("rotate", planned.len() as u64);
    shrink_io::write_safetensors_ordered(
        &out.file("model.safetensors"),
        &headers,
        Some(meta),
        |i| -> Result<Vec<u8>> {
            let p = &planned[i];
            progress.inc(1);
            let v = rotator
                .tensor(p)
                .map_err(|e| crate::convert::with_tensor(e, &p.header.name))?;
            if let Some(j) = v.iter().position(|x| !x.is_finite()) {
                return Err(MethodError::Input {
                    path: path.to_path_buf(),
                    what: format!(
                        "tensor {}: element {j} is {} after rotation (the input holds \
                         non-finite values)",
                        p.header.name, v[j]
                    ),
                });
            }
            Ok(float::encode(dtype, &v))
        },
    )?;
    progress.finish();
    let rss = peak_rss();

    let model_cfg = rotator.arch.decoder();
    crate::output::write_config_and_tokenizer(ckpt, model_cfg, &out, dtype.torch_name(), None)?;
    if untied.is_some() {
        let cfg_path = out.file("config.json");
        let text = std::fs::read_to_string(&cfg_path)
            .map_err(|e| MethodError::Io(shrink_io::IoError::os(&cfg_path, e)))?;
        let mut cfg: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            MethodError::Options(format!("internal: config.json just written: {e}"))
        })?;
        cfg["tie_word_embeddings"] = false.into();
        let text = serde_json::to_string_pretty(&cfg).expect("JSON values serialize");
        out.write("config.json", text.as_bytes())?;
    }
    let diff = match model_cfg {
        Some(_) => Some(crate::convert::compare_logits(
            ckpt,
            out.dir(),
            "The rotation must leave every output as it was.",
        )?),
        None => None,
    };

    let total_params: u64 = planned
        .iter()
        .map(|p| p.shape.iter().product::<usize>() as u64)
        .sum();
    let dense_bytes: u64 = planned.iter().map(|p| p.header.len as u64).sum();
    let sizes = Sizes {
        dense_bytes,
        total_params,
        ..Sizes::default()
    };
    let mut r = Report::new(path.into(), out.target().into(), spec_name, sizes);
    let kind = |b: &Basis, given: bool| {
        if given {
            "given (learned)"
        } else if b.hadamard {
            "randomized Hadamard"
        } else {
            "random orthogonal"
        }
    };
    let (given_r1, given_r2) = (spec.given.residual.is_some(), spec.given.heads.is_some());
    if spec.residual {
        r.set(
            "residual",
            json!({"order": rotated, "matrix": kind(&basis, given_r1), "kept_channels": kept_list,
                   "mean_preserving": lay.norm == NormKind::Layer}),
        );
        if !kept_list.is_empty() {
            r.notes.push(format!(
                "kept           channels {kept_list:?} out of the rotation (their norm weights \
                 stay in the norms)"
            ));
        }
        r.notes.push(format!(
            "residual       {} × {} {} (R1){}",
            rotated,
            rotated,
            kind(&basis, given_r1),
            if lay.norm == NormKind::Layer {
                ", mapping the all-ones vector to itself (LayerNorm); writers centered"
            } else {
                ""
            }
        ));
    }
    if spec.heads {
        r.set(
            "heads",
            json!({"order": hd, "matrix": kind(&head_basis, given_r2), "blocks": rotator.r.len()}),
        );
        r.notes.push(format!(
            "heads          {hd} × {hd} {} per block on values and output columns (R2)",
            kind(&head_basis, given_r2)
        ));
    }
    r.set("seed", spec.seed);
    r.set("untied_head_params", untied);
    if let Some(n) = untied {
        r.notes.push(format!(
            "LM head        untied: the final norm's weight is folded into it, so it can no \
             longer share the embedding (+{n} parameters, +{} bytes)",
            n * dtype.size()
        ));
    }
    r.set("logits_mean_abs_diff", diff.map(|c| c.0));
    r.set("logits_max_abs_diff", diff.map(|c| c.1));
    r.set("peak_rss_streaming_bytes", rss);
    if let Some((mean, max, n)) = diff {
        r.notes.push(format!(
            "logits         mean |Δ| {mean:.3e}, max |Δ| {max:.3e} against the input over {n} \
             positions"
        ));
    }
    if let Some(p) = &spec.given.provenance {
        r.input = p.input.clone();
        r.set("rotated_input", path.display().to_string());
        r.set("learned", &p.record);
        for (name, bytes) in &p.files {
            out.write(name, bytes)?;
        }
    }
    r.seconds = t0.elapsed().as_secs_f64();
    r.quantize_seconds = r.seconds;
    let target = crate::output::commit(out, &r)?;
    r.output = target;
    Ok(r)
}
