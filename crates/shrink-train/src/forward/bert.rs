//! BERT and DistilBERT sequence classifiers, trainable: transformers'
//! `models/bert/modeling_bert.py` (`BertForSequenceClassification`) and
//! `models/distilbert/modeling_distilbert.py` (`DistilBertForSequenceClassification`), in eval
//! mode (dropout is the identity).
//!
//! Post-norm encoders: embeddings word + position (+ token type 0 for BERT), then LayerNorm;
//! each layer `x = LN(x + O·attn(Q x, K x, V x))`, `x = LN(x + W₂ act(W₁ x))`; the head reads
//! the first token: BERT `classifier(tanh(pooler.dense(h₀)))`, DistilBERT
//! `classifier(relu(pre_classifier(h₀)))`. One unpadded sequence: no attention mask,
//! positions 0..t.

use candle_core::{Device, Tensor};
use shrink_models::bert::layer_prefix;
use shrink_models::{BertConfig, BertKind};

use crate::error::{Result, TrainError};
use crate::ops;
use crate::params::Params;

/// HF names, inside a layer, of q, k, v, attention output, attention LayerNorm, FFN up, FFN
/// down and output LayerNorm.
fn layer_modules(kind: BertKind) -> [&'static str; 8] {
    match kind {
        BertKind::Bert => [
            "attention.self.query",
            "attention.self.key",
            "attention.self.value",
            "attention.output.dense",
            "attention.output.LayerNorm",
            "intermediate.dense",
            "output.dense",
            "output.LayerNorm",
        ],
        BertKind::DistilBert => [
            "attention.q_lin",
            "attention.k_lin",
            "attention.v_lin",
            "attention.out_lin",
            "sa_layer_norm",
            "ffn.lin1",
            "ffn.lin2",
            "output_layer_norm",
        ],
    }
}

/// Word + position (+ token type 0) embeddings, then the embeddings LayerNorm: [t, hidden].
pub fn embed(p: &Params, c: &BertConfig, ids: &[u32]) -> Result<Tensor> {
    crate::forward::check_ids(ids, c.vocab_size)?;
    let t = ids.len();
    if t > c.max_position_embeddings {
        return Err(TrainError::Options(format!(
            "sequence of {t} tokens exceeds the model's {} positions",
            c.max_position_embeddings
        )));
    }
    let pre = format!("{}.embeddings", c.kind.model_type());
    let idx = Tensor::new(ids, &Device::Cpu)?;
    let word = p
        .get(&format!("{pre}.word_embeddings.weight"))?
        .embedding(&idx)?;
    let pos = p
        .get(&format!("{pre}.position_embeddings.weight"))?
        .narrow(0, 0, t)?;
    let mut x = (word + pos)?;
    if c.kind == BertKind::Bert {
        let tt = p
            .get(&format!("{pre}.token_type_embeddings.weight"))?
            .narrow(0, 0, 1)?; // [1, hidden]: token type 0
        x = x.broadcast_add(&tt)?;
    }
    ops::layer_norm(
        &x,
        p.get(&format!("{pre}.LayerNorm.weight"))?,
        p.get(&format!("{pre}.LayerNorm.bias"))?,
        c.layer_norm_eps,
    )
}

/// Encoder layer `l` (`BertLayer` / DistilBERT's `TransformerBlock`), post-norm.
pub fn layer(p: &Params, c: &BertConfig, l: usize, x: &Tensor) -> Result<Tensor> {
    let pre = layer_prefix(c.kind, l);
    let [q, k, v, o, ln1, up, down, ln2] = layer_modules(c.kind);
    let w = |n: &str| p.get(&format!("{pre}.{n}.weight"));
    let b = |n: &str| p.get(&format!("{pre}.{n}.bias"));
    let lin = |n: &str, x: &Tensor| ops::linear(x, w(n)?, Some(b(n)?));
    let ln = |n: &str, x: &Tensor| ops::layer_norm(x, w(n)?, b(n)?, c.layer_norm_eps);
    let (nh, hd) = (c.num_heads, c.head_dim());

    let qh = ops::heads(&lin(q, x)?, nh, hd)?;
    let kh = ops::heads(&lin(k, x)?, nh, hd)?;
    let vh = ops::heads(&lin(v, x)?, nh, hd)?;
    let a = ops::attention(&qh, &kh, &vh, ops::Mask::None, 1.0 / (hd as f64).sqrt())?;
    let x = ln(ln1, &(x + lin(o, &a)?)?)?;

    let m = ops::activation(&c.hidden_act, &lin(up, &x)?)?;
    ln(ln2, &(&x + lin(down, &m)?)?)
}

/// Class logits [1, num_labels] from the first token: BERT's pooler (dense, tanh) or
/// DistilBERT's pre_classifier (dense, ReLU), then the classifier.
pub fn head(p: &Params, c: &BertConfig, x: &Tensor) -> Result<Tensor> {
    let first = x.narrow(0, 0, 1)?; // [1, hidden]
    let lin = |n: &str, x: &Tensor| {
        ops::linear(
            x,
            p.get(&format!("{n}.weight"))?,
            Some(p.get(&format!("{n}.bias"))?),
        )
    };
    let h = match c.kind {
        BertKind::Bert => lin("bert.pooler.dense", &first)?.tanh()?,
        BertKind::DistilBert => lin("pre_classifier", &first)?.relu()?,
    };
    lin("classifier", &h)
}
