//! BERT and DistilBERT sequence classifiers (encoder-only, bidirectional attention).
//!
//! Follows transformers' `BertForSequenceClassification` (`models/bert/modeling_bert.py`) and
//! `DistilBertForSequenceClassification` (`models/distilbert/modeling_distilbert.py`) in eval
//! mode (dropout is the identity). Both are post-norm encoders of the same shape:
//!
//! - embeddings: word + absolute position (+ token type 0 for BERT), then LayerNorm;
//! - each layer: `x = LN(x + O·attn(Q x, K x, V x))`, `x = LN(x + W₂ act(W₁ x))`;
//! - head on the first token: BERT `classifier(tanh(pooler(h₀)))`, DistilBERT
//!   `classifier(relu(pre_classifier(h₀)))`.
//!
//! One unpadded sequence at a time: every token attends to every token, token types are all 0
//! and positions run 0..t.

use std::path::Path;

use candle_core::{Device, Module, Tensor};
use serde_json::Value;
use shrink_io::Checkpoint;

use crate::error::{ModelError, Result};
use crate::json::Json;
use crate::layers::{activation, heads};
use crate::linear::Linear;
use crate::llama::{check_ids, Tap};
use crate::weights::WeightLoader;

/// The `model_type`s this module reads.
pub const SUPPORTED: &str = "bert, distilbert";

/// Which of the two encoder families a [`BertConfig`] describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BertKind {
    /// BERT (`model_type: "bert"`), weights under `bert.`.
    Bert,
    /// DistilBERT (`model_type: "distilbert"`), weights under `distilbert.`.
    DistilBert,
}

impl BertKind {
    /// config.json's `model_type` for this kind.
    pub fn model_type(self) -> &'static str {
        match self {
            BertKind::Bert => "bert",
            BertKind::DistilBert => "distilbert",
        }
    }
}

/// Hyperparameters of a BERT or DistilBERT sequence classifier, under BERT's names.
#[derive(Debug, Clone, PartialEq)]
pub struct BertConfig {
    /// BERT or DistilBERT.
    pub kind: BertKind,
    /// Width of the residual stream (DistilBERT: `dim`).
    pub hidden_size: usize,
    /// Encoder layers (DistilBERT: `n_layers`).
    pub num_layers: usize,
    /// Attention heads (DistilBERT: `n_heads`).
    pub num_heads: usize,
    /// Feed-forward width (DistilBERT: `hidden_dim`).
    pub intermediate_size: usize,
    /// Feed-forward activation by its transformers name (DistilBERT: `activation`).
    pub hidden_act: String,
    /// Learned positions.
    pub max_position_embeddings: usize,
    /// Token types (BERT only; 0 for DistilBERT, which has no token-type embedding).
    pub type_vocab_size: usize,
    /// LayerNorm epsilon (DistilBERT: fixed 1e-12).
    pub layer_norm_eps: f64,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Number of classes: the length of `id2label` (2 when absent).
    pub num_labels: usize,
    /// Class names by id (`id2label`, or `LABEL_i` when absent).
    pub labels: Vec<String>,
}

impl BertConfig {
    /// Read the configuration of an HF checkpoint directory (GGUF files are not supported).
    pub fn from_checkpoint(ckpt: &Checkpoint) -> Result<Self> {
        match ckpt {
            Checkpoint::Hf(h) => {
                let cfg = Self::from_hf_json(&h.config, &h.dir.join("config.json"))?;
                crate::config::check_sizes(
                    ckpt,
                    cfg.num_layers,
                    || weight_shapes(&cfg),
                    |n| ckpt.has(n).then(|| n.to_string()),
                )?;
                Ok(cfg)
            }
            Checkpoint::Gguf(g) => Err(ModelError::Config {
                path: g.path().to_path_buf(),
                what: "BERT classifiers are read from Hugging Face directories, not GGUF".into(),
            }),
        }
    }

    /// Parse a Hugging Face config.json value (`path` names it in errors).
    pub fn from_hf_json(v: &Value, path: &Path) -> Result<Self> {
        let j = Json { v, path };
        let model_type = j.str("model_type")?;
        let cfg = match model_type.as_str() {
            "bert" => {
                if let Some(p) = j.opt_str("position_embedding_type")? {
                    if p != "absolute" {
                        return Err(j.err(format!(
                            "position_embedding_type {p:?} is not supported (only \"absolute\")"
                        )));
                    }
                }
                BertConfig {
                    kind: BertKind::Bert,
                    hidden_size: j.usize("hidden_size")?,
                    num_layers: j.usize("num_hidden_layers")?,
                    num_heads: j.usize("num_attention_heads")?,
                    intermediate_size: j.usize("intermediate_size")?,
                    hidden_act: j.opt_str("hidden_act")?.unwrap_or_else(|| "gelu".into()),
                    max_position_embeddings: j.usize("max_position_embeddings")?,
                    type_vocab_size: j.usize("type_vocab_size")?,
                    layer_norm_eps: j.opt_f64("layer_norm_eps")?.unwrap_or(1e-12),
                    vocab_size: j.usize("vocab_size")?,
                    num_labels: 0,
                    labels: Vec::new(),
                }
            }
            "distilbert" => {
                if j.opt_bool("sinusoidal_pos_embds")?.unwrap_or(false) {
                    return Err(j.err(
                        "sinusoidal_pos_embds = true is not supported (only learned positions)",
                    ));
                }
                BertConfig {
                    kind: BertKind::DistilBert,
                    hidden_size: j.usize("dim")?,
                    num_layers: j.usize("n_layers")?,
                    num_heads: j.usize("n_heads")?,
                    intermediate_size: j.usize("hidden_dim")?,
                    hidden_act: j.opt_str("activation")?.unwrap_or_else(|| "gelu".into()),
                    max_position_embeddings: j.usize("max_position_embeddings")?,
                    type_vocab_size: 0,
                    // DistilBERT hard-codes its LayerNorms' eps.
                    layer_norm_eps: 1e-12,
                    vocab_size: j.usize("vocab_size")?,
                    num_labels: 0,
                    labels: Vec::new(),
                }
            }
            other => {
                return Err(ModelError::UnknownArchitecture {
                    path: path.to_path_buf(),
                    name: other.to_string(),
                    supported: SUPPORTED,
                })
            }
        };
        let labels = labels(&j)?;
        let cfg = BertConfig {
            num_labels: labels.len(),
            labels,
            ..cfg
        };
        if !cfg.hidden_size.is_multiple_of(cfg.num_heads) {
            return Err(j.err(format!(
                "hidden size {} is not divisible by {} attention heads",
                cfg.hidden_size, cfg.num_heads
            )));
        }
        // Fail here rather than at the first forward on an unknown activation.
        let probe = Tensor::zeros(1, candle_core::DType::F32, &Device::Cpu)?;
        activation(&cfg.hidden_act, &probe)
            .map_err(|_| j.err(format!("unsupported activation {:?}", cfg.hidden_act)))?;
        Ok(cfg)
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }

    /// A transformers config.json for this configuration (float32 storage).
    pub fn to_hf_json(&self) -> Value {
        let id2label: serde_json::Map<String, Value> = self
            .labels
            .iter()
            .enumerate()
            .map(|(i, l)| (i.to_string(), Value::from(l.as_str())))
            .collect();
        let label2id: serde_json::Map<String, Value> = self
            .labels
            .iter()
            .enumerate()
            .map(|(i, l)| (l.clone(), Value::from(i)))
            .collect();
        let mut v = match self.kind {
            BertKind::Bert => serde_json::json!({
                "architectures": ["BertForSequenceClassification"],
                "model_type": "bert",
                "hidden_size": self.hidden_size,
                "num_hidden_layers": self.num_layers,
                "num_attention_heads": self.num_heads,
                "intermediate_size": self.intermediate_size,
                "hidden_act": self.hidden_act,
                "max_position_embeddings": self.max_position_embeddings,
                "type_vocab_size": self.type_vocab_size,
                "layer_norm_eps": self.layer_norm_eps,
                "vocab_size": self.vocab_size,
                "position_embedding_type": "absolute",
            }),
            BertKind::DistilBert => serde_json::json!({
                "architectures": ["DistilBertForSequenceClassification"],
                "model_type": "distilbert",
                "dim": self.hidden_size,
                "n_layers": self.num_layers,
                "n_heads": self.num_heads,
                "hidden_dim": self.intermediate_size,
                "activation": self.hidden_act,
                "max_position_embeddings": self.max_position_embeddings,
                "vocab_size": self.vocab_size,
                "sinusoidal_pos_embds": false,
            }),
        };
        v["id2label"] = Value::Object(id2label);
        v["label2id"] = Value::Object(label2id);
        v["dtype"] = "float32".into();
        v["torch_dtype"] = "float32".into();
        v
    }
}

/// HF names of one encoder layer's modules, in the order
/// q, k, v, attention output, attention LayerNorm, FFN up, FFN down, output LayerNorm.
fn layer_names(kind: BertKind, l: usize) -> [String; 8] {
    match kind {
        BertKind::Bert => {
            let p = format!("bert.encoder.layer.{l}");
            [
                format!("{p}.attention.self.query"),
                format!("{p}.attention.self.key"),
                format!("{p}.attention.self.value"),
                format!("{p}.attention.output.dense"),
                format!("{p}.attention.output.LayerNorm"),
                format!("{p}.intermediate.dense"),
                format!("{p}.output.dense"),
                format!("{p}.output.LayerNorm"),
            ]
        }
        BertKind::DistilBert => {
            let p = format!("distilbert.transformer.layer.{l}");
            [
                format!("{p}.attention.q_lin"),
                format!("{p}.attention.k_lin"),
                format!("{p}.attention.v_lin"),
                format!("{p}.attention.out_lin"),
                format!("{p}.sa_layer_norm"),
                format!("{p}.ffn.lin1"),
                format!("{p}.ffn.lin2"),
                format!("{p}.output_layer_norm"),
            ]
        }
    }
}

/// `bert` or `distilbert`: the prefix of the encoder's weights.
fn prefix(kind: BertKind) -> &'static str {
    kind.model_type()
}

/// Name of the dense layer between the first token and the classifier.
fn pre_classifier_name(kind: BertKind) -> &'static str {
    match kind {
        BertKind::Bert => "bert.pooler.dense",
        BertKind::DistilBert => "pre_classifier",
    }
}

/// HF names and shapes of every weight the configuration implies, in load order.
pub fn weight_shapes(cfg: &BertConfig) -> Vec<(String, Vec<usize>)> {
    let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
    let p = prefix(cfg.kind);
    let mut v = vec![
        (
            format!("{p}.embeddings.word_embeddings.weight"),
            vec![cfg.vocab_size, h],
        ),
        (
            format!("{p}.embeddings.position_embeddings.weight"),
            vec![cfg.max_position_embeddings, h],
        ),
    ];
    if cfg.kind == BertKind::Bert {
        v.push((
            format!("{p}.embeddings.token_type_embeddings.weight"),
            vec![cfg.type_vocab_size, h],
        ));
    }
    v.push((format!("{p}.embeddings.LayerNorm.weight"), vec![h]));
    v.push((format!("{p}.embeddings.LayerNorm.bias"), vec![h]));
    let lin = |v: &mut Vec<_>, name: &str, out: usize, inp: usize| {
        v.push((format!("{name}.weight"), vec![out, inp]));
        v.push((format!("{name}.bias"), vec![out]));
    };
    for l in 0..cfg.num_layers {
        let [q, k, val, o, ln1, up, down, ln2] = layer_names(cfg.kind, l);
        lin(&mut v, &q, h, h);
        lin(&mut v, &k, h, h);
        lin(&mut v, &val, h, h);
        lin(&mut v, &o, h, h);
        v.push((format!("{ln1}.weight"), vec![h]));
        v.push((format!("{ln1}.bias"), vec![h]));
        lin(&mut v, &up, i, h);
        lin(&mut v, &down, h, i);
        v.push((format!("{ln2}.weight"), vec![h]));
        v.push((format!("{ln2}.bias"), vec![h]));
    }
    lin(&mut v, pre_classifier_name(cfg.kind), h, h);
    lin(&mut v, "classifier", cfg.num_labels, h);
    v
}

/// A LayerNorm's (weight, bias).
pub type LayerNorm = (Tensor, Tensor);

/// One post-norm encoder layer.
#[derive(Debug, Clone)]
pub struct BertLayer {
    /// Query projection (BERT `attention.self.query`, DistilBERT `attention.q_lin`).
    pub query: Linear,
    /// Key projection.
    pub key: Linear,
    /// Value projection.
    pub value: Linear,
    /// Attention output projection (`attention.output.dense` / `attention.out_lin`).
    pub attn_out: Linear,
    /// LayerNorm after attention (`attention.output.LayerNorm` / `sa_layer_norm`).
    pub attn_ln: LayerNorm,
    /// Feed-forward up projection (`intermediate.dense` / `ffn.lin1`).
    pub ffn_up: Linear,
    /// Feed-forward down projection (`output.dense` / `ffn.lin2`).
    pub ffn_down: Linear,
    /// LayerNorm after the feed-forward (`output.LayerNorm` / `output_layer_norm`).
    pub out_ln: LayerNorm,
}

/// A BERT or DistilBERT sequence classifier.
#[derive(Debug, Clone)]
pub struct BertClassifier {
    /// Configuration.
    pub cfg: BertConfig,
    /// The embeddings (word + position + token type 0, then LayerNorm).
    pub embeddings: BertEmbeddings,
    /// Encoder layers.
    pub layers: Vec<BertLayer>,
    /// BERT's pooler (then tanh) or DistilBERT's pre_classifier (then ReLU).
    pub pre_classifier: Linear,
    /// Classifier [num_labels, hidden].
    pub classifier: Linear,
}

/// The linears of an encoder layer of `kind`, by their name inside the layer, in forward order:
/// query, key, value, attention output, feed-forward up, feed-forward down.
pub fn layer_linears(kind: BertKind) -> &'static [&'static str; 6] {
    match kind {
        BertKind::Bert => &[
            "attention.self.query",
            "attention.self.key",
            "attention.self.value",
            "attention.output.dense",
            "intermediate.dense",
            "output.dense",
        ],
        BertKind::DistilBert => &[
            "attention.q_lin",
            "attention.k_lin",
            "attention.v_lin",
            "attention.out_lin",
            "ffn.lin1",
            "ffn.lin2",
        ],
    }
}

/// HF name prefix of encoder layer `l` (`bert.encoder.layer.3`).
pub fn layer_prefix(kind: BertKind, l: usize) -> String {
    match kind {
        BertKind::Bert => format!("bert.encoder.layer.{l}"),
        BertKind::DistilBert => format!("distilbert.transformer.layer.{l}"),
    }
}

/// The embeddings of an encoder: word + position + token type 0, then LayerNorm.
#[derive(Debug, Clone)]
pub struct BertEmbeddings {
    /// Token embedding [vocab, hidden].
    pub word: Tensor,
    /// Position embedding [max_positions, hidden].
    pub position: Tensor,
    /// Token-type 0's embedding `[hidden]` (BERT only).
    pub token_type_0: Option<Tensor>,
    /// Their LayerNorm.
    pub ln: LayerNorm,
}

impl BertEmbeddings {
    /// Load the embeddings through `w`.
    pub fn load(cfg: &BertConfig, w: &WeightLoader) -> Result<Self> {
        let h = cfg.hidden_size;
        let p = prefix(cfg.kind);
        let word = w.get(
            &format!("{p}.embeddings.word_embeddings.weight"),
            &[cfg.vocab_size, h],
        )?;
        let position = w.get(
            &format!("{p}.embeddings.position_embeddings.weight"),
            &[cfg.max_position_embeddings, h],
        )?;
        let token_type_0 = match cfg.kind {
            BertKind::Bert => Some(
                w.get(
                    &format!("{p}.embeddings.token_type_embeddings.weight"),
                    &[cfg.type_vocab_size, h],
                )?
                .get(0)?,
            ),
            BertKind::DistilBert => None,
        };
        let ln = w.layer_norm(&format!("{p}.embeddings.LayerNorm"), h)?;
        Ok(BertEmbeddings {
            word,
            position,
            token_type_0,
            ln,
        })
    }

    /// The embedded sequence [t, hidden] of `ids` (token types 0, positions 0..t).
    pub fn forward(&self, c: &BertConfig, ids: &[u32]) -> Result<Tensor> {
        let t = ids.len();
        check_ids(ids, c.vocab_size)?;
        if t > c.max_position_embeddings {
            return Err(ModelError::Input(format!(
                "sequence of {t} tokens exceeds the model's {} positions",
                c.max_position_embeddings
            )));
        }
        let idx = Tensor::new(ids, &Device::Cpu)?;
        let mut x = (self.word.index_select(&idx, 0)? + self.position.narrow(0, 0, t)?)?;
        if let Some(tt) = &self.token_type_0 {
            x = x.broadcast_add(tt)?;
        }
        let (ln_w, ln_b) = &self.ln;
        Ok(candle_nn::ops::layer_norm(
            &x,
            ln_w,
            ln_b,
            c.layer_norm_eps as f32,
        )?)
    }
}

/// Linear `name` (weight and bias; kept quantized when the checkpoint stores it quantized).
fn linear(w: &WeightLoader, name: &str, out: usize, inp: usize) -> Result<Linear> {
    let bias = format!("{name}.bias");
    let l = w.linear(&format!("{name}.weight"), out, inp, Some(&bias))?;
    if l.bias.is_none() {
        // Every BERT linear has a bias: a missing one is a broken checkpoint.
        w.get(&bias, &[out])?;
    }
    Ok(l)
}

impl BertLayer {
    /// Load encoder layer `l` through `w`.
    pub fn load(cfg: &BertConfig, w: &WeightLoader, l: usize) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let [q, k, v, o, ln1, up, down, ln2] = layer_names(cfg.kind, l);
        Ok(BertLayer {
            query: linear(w, &q, h, h)?,
            key: linear(w, &k, h, h)?,
            value: linear(w, &v, h, h)?,
            attn_out: linear(w, &o, h, h)?,
            attn_ln: w.layer_norm(&ln1, h)?,
            ffn_up: linear(w, &up, i, h)?,
            ffn_down: linear(w, &down, h, i)?,
            out_ln: w.layer_norm(&ln2, h)?,
        })
    }

    /// The linear named `name` inside the layer (one of [`layer_linears`] of `kind`).
    pub fn linear(&self, kind: BertKind, name: &str) -> Option<&Linear> {
        let i = layer_linears(kind).iter().position(|n| *n == name)?;
        Some(
            [
                &self.query,
                &self.key,
                &self.value,
                &self.attn_out,
                &self.ffn_up,
                &self.ffn_down,
            ][i],
        )
    }

    /// The linear named `name` inside the layer, to replace.
    pub fn linear_mut(&mut self, kind: BertKind, name: &str) -> Option<&mut Linear> {
        let i = layer_linears(kind).iter().position(|n| *n == name)?;
        Some(match i {
            0 => &mut self.query,
            1 => &mut self.key,
            2 => &mut self.value,
            3 => &mut self.attn_out,
            4 => &mut self.ffn_up,
            _ => &mut self.ffn_down,
        })
    }

    /// The layer's output for input `x` [t, hidden] (one unpadded sequence); `tap` sees every
    /// linear's input, by its name inside the layer.
    pub fn forward(&self, c: &BertConfig, x: &Tensor, mut tap: Option<Tap>) -> Result<Tensor> {
        let mut see = |name: &str, t: &Tensor| -> Result<()> {
            match tap.as_mut() {
                Some(f) => f(name, t),
                None => Ok(()),
            }
        };
        let names = layer_linears(c.kind);
        let eps = c.layer_norm_eps as f32;
        for n in &names[..3] {
            see(n, x)?;
        }
        let a = self.attention(c, x, &mut see)?;
        let x =
            candle_nn::ops::layer_norm(&crate::add(x, &a)?, &self.attn_ln.0, &self.attn_ln.1, eps)?;
        see(names[4], &x)?;
        let m = self.mlp(c, &x, &mut see)?;
        Ok(candle_nn::ops::layer_norm(
            &crate::add(&x, &m)?,
            &self.out_ln.0,
            &self.out_ln.1,
            eps,
        )?)
    }

    /// The self-attention's output (after the output projection, before the residual) for
    /// `x`; `see` is shown the output projection's input.
    pub fn attention(
        &self,
        c: &BertConfig,
        x: &Tensor,
        see: &mut dyn FnMut(&str, &Tensor) -> Result<()>,
    ) -> Result<Tensor> {
        let (nh, hd) = (c.num_heads, c.head_dim());
        let scale = 1.0 / (hd as f64).sqrt();
        let q = heads(&self.query.forward(x)?, nh, hd)?;
        let k = heads(&self.key.forward(x)?, nh, hd)?;
        let v = heads(&self.value.forward(x)?, nh, hd)?;
        let a = bidirectional_attention(&q, &k, &v, scale)?;
        see(layer_linears(c.kind)[3], &a)?;
        Ok(self.attn_out.forward(&a)?)
    }

    /// The feed-forward's output (before the residual) for `x`; `see` is shown the down
    /// projection's input.
    pub fn mlp(
        &self,
        c: &BertConfig,
        x: &Tensor,
        see: &mut dyn FnMut(&str, &Tensor) -> Result<()>,
    ) -> Result<Tensor> {
        let m = activation(&c.hidden_act, &self.ffn_up.forward(x)?)?;
        see(layer_linears(c.kind)[5], &m)?;
        Ok(self.ffn_down.forward(&m)?)
    }
}

impl BertClassifier {
    /// Load every weight through `w` (HF names, checked against the configuration's shapes).
    pub fn load(cfg: BertConfig, w: &WeightLoader) -> Result<Self> {
        let h = cfg.hidden_size;
        let lin = |name: &str, out: usize, inp: usize| linear(w, name, out, inp);
        let embeddings = BertEmbeddings::load(&cfg, w)?;
        let layers = (0..cfg.num_layers)
            .map(|l| BertLayer::load(&cfg, w, l))
            .collect::<Result<Vec<_>>>()?;
        let pre_classifier = lin(pre_classifier_name(cfg.kind), h, h)?;
        let classifier = lin("classifier", cfg.num_labels, h)?;
        Ok(BertClassifier {
            cfg,
            embeddings,
            layers,
            pre_classifier,
            classifier,
        })
    }

    /// Final hidden states [t, hidden] of one unpadded sequence (token types 0, positions 0..t).
    pub fn encode(&self, ids: &[u32]) -> Result<Tensor> {
        let c = &self.cfg;
        let mut x = self.embeddings.forward(c, ids)?;
        for l in &self.layers {
            x = l.forward(c, &x, None)?;
        }
        Ok(x)
    }

    /// Class logits `[num_labels]` of one unpadded sequence, from its first token's state.
    pub fn forward(&self, ids: &[u32]) -> Result<Tensor> {
        let x = self.encode(ids)?;
        let first = x.narrow(0, 0, 1)?; // [1, hidden]
        let p = self.pre_classifier.forward(&first)?;
        let p = match self.cfg.kind {
            BertKind::Bert => p.tanh()?,
            BertKind::DistilBert => p.relu()?,
        };
        Ok(self.classifier.forward(&p)?.squeeze(0)?)
    }
}

/// Unmasked scaled dot-product attention: q, k, v [h, t, d] → [t, h·d].
pub fn bidirectional_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    let (h, t, d) = q.dims3()?;
    let scores = (q.matmul(&k.t()?)? * scale)?; // [h, t, tk]
    let probs = candle_nn::ops::softmax_last_dim(&scores)?;
    let out = probs.matmul(v)?; // [h, t, d]
    Ok(out.transpose(0, 1)?.reshape((t, h * d))?)
}

/// Class names by id from `id2label` (keys "0".."n-1"); without it, `num_labels` (default
/// 2) names `LABEL_0`, `LABEL_1`, ... as transformers does.
fn labels(j: &Json) -> Result<Vec<String>> {
    let Some(m) = j.field("id2label") else {
        let n = match j.field("num_labels") {
            None => 2,
            Some(_) => j.usize("num_labels")?,
        };
        return Ok((0..n).map(|i| format!("LABEL_{i}")).collect());
    };
    let Value::Object(m) = m else {
        return Err(j.err(format!(
            "field \"id2label\" should be an object of id → label, found {m}"
        )));
    };
    if m.is_empty() {
        return Err(j.err("field \"id2label\" is empty: a classifier needs labels"));
    }
    let mut labels = vec![None; m.len()];
    for (k, v) in m {
        let id = k
            .parse::<usize>()
            .ok()
            .filter(|&i| i < m.len())
            .ok_or_else(|| j.err(format!("id2label key {k:?} is not an id in 0..{}", m.len())))?;
        let Value::String(s) = v else {
            return Err(j.err(format!("id2label[{k:?}] should be a string, found {v}")));
        };
        labels[id] = Some(s.clone());
    }
    labels
        .into_iter()
        .enumerate()
        .map(|(i, l)| l.ok_or_else(|| j.err(format!("id2label lacks id {i}"))))
        .collect()
}
