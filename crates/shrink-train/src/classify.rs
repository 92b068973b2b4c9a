//! Sequence classifiers (BERT, DistilBERT) trained on labelled sentences: fine-tuning with the
//! labels' cross-entropy, and distillation of a fine-tuned teacher into a smaller student with
//! Hinton's loss over the classes (`α·T²·KL(p_T ‖ q_T) + (1 − α)·CE`, [`crate::loss`] with the
//! classes as the vocabulary), as the seed article's classifier example does.
//!
//! - [`classifier_for`] turns an encoder without a classification head (a sentence-transformers
//!   `BertModel`, weights without the `bert.` prefix) into a `BertForSequenceClassification` for
//!   the data's labels: names prefixed, a new `classifier` drawn N(0, 0.02) from the seed with a
//!   zero bias, config.json's `architectures`, `id2label` and `label2id` set;
//! - [`student_from`] keeps K of the teacher's layers (evenly spaced, the first and the last
//!   included, or the first K) and regroups the attention into H heads: q, k and v keep their
//!   shapes (hidden × hidden), so every kept weight is copied and only the head count changes;
//! - [`train`] is one loop for both: epochs over a per-epoch permutation drawn from the seed
//!   alone, a step of `batch` sentences summed by gradient accumulation over single unpadded
//!   sentences ([`crate::grad::backward`] per sentence), AdamW with warmup and cosine decay,
//!   clipping; the validation split is scored after every epoch.
//!
//! The labelled-data format, the scores and the side-by-side comparison are
//! [`shrink_eval::classify`]'s, so the training report and `shrink compare` agree.

use std::path::Path;
use std::time::Instant;

use candle_core::Tensor;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use shrink_eval::classify::{self as cls, Labelled, Metrics};
use shrink_io::tokenizer::Tokenizer;
use shrink_io::{Checkpoint, OutputDir};
use shrink_models::{Architecture, BertConfig, BertKind, WeightLoader};

use crate::distill::{epoch_order, logits_no_graph};
use crate::error::{Result, TrainError};
use crate::forward::Trainable;
use crate::grad::{self, Grads};
use crate::loss::{KdLoss, LossParts, Teacher};
use crate::optim::{self, AdamW, OptimState, Schedule};
use crate::params::Params;

impl From<shrink_eval::EvalError> for TrainError {
    fn from(e: shrink_eval::EvalError) -> Self {
        TrainError::Options(e.to_string())
    }
}

/// A tokenized labelled sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    /// Token ids, special tokens included, at most the model's positions.
    pub ids: Vec<u32>,
    /// Class id.
    pub label: u32,
}

/// The sentences of `rows` (read from `path`) tokenized with `tok` for a model with `labels`
/// and `max_len` positions; a label the model does not know is an error naming the line.
pub fn examples(
    path: &Path,
    rows: &[Labelled],
    tok: &Tokenizer,
    labels: &[String],
    max_len: usize,
) -> Result<Vec<Example>> {
    let ids = cls::label_ids(rows, labels, path)?;
    rows.iter()
        .zip(ids)
        .map(|(r, label)| {
            let ids = cls::encode(tok, &r.text, max_len)
                .map_err(|e| TrainError::input(path, format!("line {}: {e}", r.line)))?;
            Ok(Example { ids, label })
        })
        .collect()
}

/// A classifier being trained: its weights and the config.json it is written with.
#[derive(Debug, Clone)]
pub struct Classifier {
    /// The weights and forward.
    pub model: Trainable,
    /// config.json.
    pub config: serde_json::Value,
    /// Weights that were not in the checkpoint and were initialised (N(0, 0.02), zero bias).
    pub initialised: Vec<String>,
}

impl Classifier {
    /// The encoder configuration.
    pub fn bert(&self) -> &BertConfig {
        match self.model.arch() {
            Architecture::Encoder(c) => c,
            Architecture::Decoder(_) => unreachable!("classifiers are encoders"),
        }
    }

    /// Class names by id.
    pub fn labels(&self) -> &[String] {
        &self.bert().labels
    }

    /// Write the classifier as a Hugging Face directory into `out`: config.json,
    /// model.safetensors (float32) and the tokenizer files of `tokenizer_dir`.
    pub fn write(&self, out: &OutputDir, tokenizer_dir: &Path) -> Result<()> {
        let mut c = self.config.clone();
        c["dtype"] = "float32".into();
        c["torch_dtype"] = "float32".into();
        out.write(
            "config.json",
            serde_json::to_string_pretty(&c).expect("JSON").as_bytes(),
        )?;
        self.model
            .params
            .write_safetensors(&out.file("model.safetensors"))?;
        for name in [
            "tokenizer.json",
            "tokenizer_config.json",
            "special_tokens_map.json",
            "vocab.txt",
        ] {
            let src = tokenizer_dir.join(name);
            if src.is_file() {
                std::fs::copy(&src, out.file(name)).map_err(|source| TrainError::File {
                    path: src.clone(),
                    source,
                })?;
            }
        }
        Ok(())
    }
}

/// `id2label` / `label2id` and the task's `architectures` written into `config`.
fn set_labels(config: &mut serde_json::Value, kind: BertKind, labels: &[String]) {
    let id2label: serde_json::Map<String, serde_json::Value> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (i.to_string(), l.as_str().into()))
        .collect();
    let label2id: serde_json::Map<String, serde_json::Value> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (l.clone(), i.into()))
        .collect();
    config["id2label"] = id2label.into();
    config["label2id"] = label2id.into();
    if let Some(o) = config.as_object_mut() {
        o.remove("num_labels");
    }
    config["architectures"] = serde_json::json!([match kind {
        BertKind::Bert => "BertForSequenceClassification",
        BertKind::DistilBert => "DistilBertForSequenceClassification",
    }]);
}

/// N(0, σ²) values from `rng` (Box–Muller).
fn normal(rng: &mut rand::rngs::StdRng, n: usize, sigma: f64) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let u1: f64 = 1.0 - rng.random::<f64>();
            let u2: f64 = rng.random();
            (sigma * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
        })
        .collect()
}

/// The classifier to fine-tune from `ckpt` (read from `path`) for the labels of the data
/// (`data_labels`, sorted):
///
/// - a classifier with a head and `id2label` keeps its labels (the data's must be among them);
/// - a classifier with a head and no `id2label` (transformers' `LABEL_i`) takes the data's
///   labels when their number matches its classes;
/// - an encoder without a head (`BertModel`, with or without the `bert.` prefix) gets one for
///   the data's labels: the missing classifier (and pooler / pre-classifier) drawn
///   N(0, `initializer_range`) from `seed`, biases zero.
pub fn classifier_for(
    ckpt: &Checkpoint,
    path: &Path,
    data_labels: &[String],
    seed: u64,
) -> Result<Classifier> {
    let Checkpoint::Hf(h) = ckpt else {
        return Err(TrainError::input(
            path,
            "classifiers are trained from Hugging Face directories, not GGUF",
        ));
    };
    let Architecture::Encoder(mut cfg) = Architecture::from_checkpoint(ckpt)? else {
        return Err(TrainError::input(
            path,
            "a language model, not a BERT/DistilBERT encoder",
        ));
    };
    let w = WeightLoader::new(ckpt, None, &[]);
    let has_head = w.has("classifier.weight");
    let explicit = h.config.get("id2label").is_some();
    let labels = if has_head && explicit {
        cfg.labels.clone()
    } else if has_head {
        if data_labels.len() != cfg.num_labels {
            return Err(TrainError::input(
                path,
                format!(
                    "its classifier has {} classes and no id2label; the data has {} labels ({})",
                    cfg.num_labels,
                    data_labels.len(),
                    data_labels.join(", ")
                ),
            ));
        }
        data_labels.to_vec()
    } else {
        data_labels.to_vec()
    };
    if labels.len() < 2 {
        return Err(TrainError::input(
            path,
            format!(
                "a classifier needs at least two labels; the data has {}",
                labels.join(", ")
            ),
        ));
    }
    cfg.num_labels = labels.len();
    cfg.labels = labels.clone();
    let arch = Architecture::Encoder(cfg.clone());
    let sigma = h
        .config
        .get("initializer_range")
        .and_then(|v| v.as_f64())
        .unwrap_or(0.02);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let prefix = format!("{}.", cfg.kind.model_type());
    let (mut tensors, mut initialised) = (Vec::new(), Vec::new());
    for (name, shape) in arch.weight_shapes() {
        let bare = name.strip_prefix(&prefix).unwrap_or(&name).to_string();
        let head = name.starts_with("classifier.")
            || name.starts_with(&format!("{prefix}pooler."))
            || name.starts_with("pre_classifier.");
        let t = match [&name, &bare].into_iter().find(|n| w.has(n)) {
            Some(n) => w.get(n, &shape)?,
            None if head => {
                let n: usize = shape.iter().product();
                let v = if name.ends_with(".weight") {
                    normal(&mut rng, n, sigma)
                } else {
                    vec![0f32; n]
                };
                initialised.push(name.clone());
                Tensor::from_vec(v, shape.as_slice(), &candle_core::Device::Cpu)?
            }
            None => {
                return Err(TrainError::input(
                    path,
                    format!("has no weight {name} (nor {bare})"),
                ))
            }
        };
        tensors.push((name, t));
    }
    let mut config = h.config.clone();
    set_labels(&mut config, cfg.kind, &labels);
    Ok(Classifier {
        model: Trainable::new(Params::from_tensors(arch, tensors)?),
        config,
        initialised,
    })
}

/// A trained classifier read back (teacher of a distillation): it must have a head.
pub fn load_classifier(ckpt: &Checkpoint, path: &Path) -> Result<Classifier> {
    let Checkpoint::Hf(h) = ckpt else {
        return Err(TrainError::input(
            path,
            "classifiers are read from Hugging Face directories, not GGUF",
        ));
    };
    if !WeightLoader::new(ckpt, None, &[]).has("classifier.weight") {
        return Err(TrainError::input(
            path,
            "has no classification head (classifier.weight); fine-tune it first with \
             `shrink train-classifier`",
        ));
    }
    let model = Trainable::load(ckpt)?;
    if !matches!(model.arch(), Architecture::Encoder(_)) {
        return Err(TrainError::input(
            path,
            "a language model, not a BERT/DistilBERT classifier",
        ));
    }
    Ok(Classifier {
        model,
        config: h.config.clone(),
        initialised: Vec::new(),
    })
}

/// Which of the teacher's layers a student keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LayerPick {
    /// Evenly spaced, the first and the last included (6 → 4 keeps 0, 2, 3, 5).
    Even,
    /// The first K.
    First,
}

impl LayerPick {
    /// The indices of the `k` layers kept out of `n`.
    pub fn pick(self, n: usize, k: usize) -> Vec<usize> {
        match self {
            LayerPick::First => (0..k).collect(),
            LayerPick::Even if k == 1 => vec![n - 1],
            LayerPick::Even => (0..k)
                .map(|i| ((i * (n - 1)) as f64 / (k - 1) as f64).round() as usize)
                .collect(),
        }
    }
}

/// The student the seed article's example uses by default: two thirds of the teacher's layers
/// (6 → 4) and of its heads (12 → 8), rounded, the heads lowered until they divide the width.
pub fn default_student_shape(c: &BertConfig) -> (usize, usize) {
    let layers = ((c.num_layers as f64 * 2.0 / 3.0).round() as usize).max(1);
    let mut heads = ((c.num_heads as f64 * 2.0 / 3.0).round() as usize).max(1);
    while !c.hidden_size.is_multiple_of(heads) {
        heads -= 1;
    }
    (layers, heads)
}

/// A student made from `teacher`: `layers` of its layers (chosen by `pick`), renumbered from 0,
/// and the attention regrouped into `heads` heads; every other weight copied. Returns the
/// student and the teacher's indices of the kept layers.
pub fn student_from(
    teacher: &Classifier,
    layers: usize,
    heads: usize,
    pick: LayerPick,
) -> Result<(Classifier, Vec<usize>)> {
    let tc = teacher.bert();
    if layers == 0 || layers > tc.num_layers {
        return Err(TrainError::Options(format!(
            "--student-layers {layers}: the teacher has {} layers (keep 1..={})",
            tc.num_layers, tc.num_layers
        )));
    }
    if heads == 0 || !tc.hidden_size.is_multiple_of(heads) {
        return Err(TrainError::Options(format!(
            "--student-heads {heads} does not divide the width {} (heads of equal size)",
            tc.hidden_size
        )));
    }
    let kept = pick.pick(tc.num_layers, layers);
    let mut sc = tc.clone();
    sc.num_layers = layers;
    sc.num_heads = heads;
    let arch = Architecture::Encoder(sc.clone());
    let mut tensors = Vec::new();
    for (name, _) in arch.weight_shapes() {
        let mut src = name.clone();
        for (l, &t) in kept.iter().enumerate() {
            let p = format!("{}.", shrink_models::bert::layer_prefix(sc.kind, l));
            if let Some(rest) = name.strip_prefix(&p) {
                src = format!("{}.{rest}", shrink_models::bert::layer_prefix(sc.kind, t));
            }
        }
        tensors.push((name, teacher.model.params.get(&src)?.copy()?));
    }
    let mut config = teacher.config.clone();
    let (kl, kh) = match sc.kind {
        BertKind::Bert => ("num_hidden_layers", "num_attention_heads"),
        BertKind::DistilBert => ("n_layers", "n_heads"),
    };
    config[kl] = layers.into();
    config[kh] = heads.into();
    Ok((
        Classifier {
            model: Trainable::new(Params::from_tensors(arch, tensors)?),
            config,
            initialised: Vec::new(),
        },
        kept,
    ))
}

/// Settings of a training run (fine-tuning: `loss.alpha` 0 and no teacher).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassifyConfig {
    /// Passes over the training sentences.
    pub epochs: usize,
    /// Sentences per optimiser step (summed one at a time).
    pub batch: usize,
    /// The loss over the classes.
    pub loss: KdLoss,
    /// AdamW.
    pub optim: AdamW,
    /// Warmup as a share of all steps.
    pub warmup_ratio: f64,
    /// Final learning rate as a share of the peak (cosine decay).
    pub min_lr_ratio: f64,
    /// Clip the global gradient norm to this (0: no clipping).
    pub clip: f64,
    /// Seed of the sentence order.
    pub seed: u64,
}

impl ClassifyConfig {
    /// Check the settings.
    pub fn validate(&self) -> Result<()> {
        self.loss.validate()?;
        let bad = |w: &str| Err(TrainError::Options(w.into()));
        if self.epochs == 0 {
            return bad("--epochs must be at least 1");
        }
        if self.batch == 0 {
            return bad("--batch must be at least 1");
        }
        if !(self.optim.lr.is_finite() && self.optim.lr > 0.0) {
            return bad("--lr must be > 0");
        }
        if !(0.0..1.0).contains(&self.warmup_ratio) {
            return bad("--warmup-ratio must be in [0, 1)");
        }
        Ok(())
    }

    /// Optimiser steps of `n` training sentences.
    pub fn steps(&self, n: usize) -> usize {
        self.epochs * n.div_ceil(self.batch)
    }
}

/// One optimiser step's record.
#[derive(Debug, Clone, Serialize)]
pub struct StepLog {
    /// 1-based step.
    pub step: usize,
    /// 1-based epoch.
    pub epoch: usize,
    /// The weighted loss per sentence.
    pub loss: f64,
    /// Soft term (KL at T) per sentence.
    pub kd: f64,
    /// Cross-entropy with the labels per sentence.
    pub ce: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Sentences per second of this step.
    pub sentences_per_s: f64,
}

/// One epoch's record.
#[derive(Debug, Clone, Serialize)]
pub struct EpochLog {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean loss per sentence over the epoch.
    pub loss: f64,
    /// Mean cross-entropy per sentence over the epoch.
    pub ce: f64,
    /// Seconds of the epoch's training (validation excluded).
    pub seconds: f64,
    /// Scores on the validation split, if one was given.
    pub valid: Option<Metrics>,
}

/// What a run reports as it goes.
pub trait Progress {
    /// A step finished.
    fn step(&self, log: &StepLog, total: usize);
    /// An epoch finished (validation scored).
    fn epoch(&self, log: &EpochLog);
    /// Something worth a line.
    fn note(&self, msg: &str);
}

/// Reports nothing.
pub struct Silent;

impl Progress for Silent {
    fn step(&self, _: &StepLog, _: usize) {}
    fn epoch(&self, _: &EpochLog) {}
    fn note(&self, _: &str) {}
}

/// The end of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Optimiser steps.
    pub steps: usize,
    /// Seconds of training (validation excluded).
    pub train_seconds: f64,
    /// Sentences trained on per second.
    pub sentences_per_s: f64,
    /// Every epoch.
    pub epochs: Vec<EpochLog>,
    /// Every step.
    #[serde(skip)]
    pub log: Vec<StepLog>,
}

/// Class logits of every example, without the autograd graph.
pub fn logits(model: &Trainable, examples: &[Example]) -> Result<Vec<Vec<f32>>> {
    examples
        .iter()
        .map(|e| Ok(logits_no_graph(model, &e.ids)?.flatten_all()?.to_vec1()?))
        .collect()
}

/// Scores of `model` on `examples`.
pub fn evaluate(model: &Trainable, examples: &[Example], labels: &[String]) -> Result<Metrics> {
    let pred: Vec<u32> = logits(model, examples)?
        .iter()
        .map(|l| cls::argmax(l))
        .collect();
    let truth: Vec<u32> = examples.iter().map(|e| e.label).collect();
    Ok(Metrics::new(labels, &truth, &pred))
}

/// Train `student` on `train` for `cfg.epochs` epochs, scoring `valid` (if not empty) after
/// each. `teacher` holds the teacher's class logits of every training sentence (distillation;
/// needed when `cfg.loss.alpha` > 0).
pub fn train(
    student: &mut Trainable,
    train: &[Example],
    teacher: Option<&[Vec<f32>]>,
    valid: &[Example],
    cfg: &ClassifyConfig,
    progress: &dyn Progress,
) -> Result<Summary> {
    cfg.validate()?;
    let labels = match student.arch() {
        Architecture::Encoder(c) => c.labels.clone(),
        Architecture::Decoder(_) => {
            return Err(TrainError::Options(
                "classifier training needs a BERT/DistilBERT classifier".into(),
            ))
        }
    };
    let k = labels.len();
    if train.is_empty() {
        return Err(TrainError::Options("no training sentences".into()));
    }
    match teacher {
        None if cfg.loss.alpha > 0.0 => {
            return Err(TrainError::Options(
                "alpha > 0 needs the teacher's logits".into(),
            ))
        }
        Some(t) if t.len() != train.len() || t.iter().any(|l| l.len() != k) => {
            return Err(TrainError::Options(format!(
                "the teacher's logits do not match the {} training sentences of {k} classes",
                train.len()
            )))
        }
        _ => {}
    }
    let per_epoch = train.len().div_ceil(cfg.batch);
    let total = cfg.steps(train.len());
    let sched = Schedule {
        warmup: (cfg.warmup_ratio * total as f64).round() as usize,
        total,
        min_ratio: cfg.min_lr_ratio,
    };
    let mut opt = OptimState::new(&student.params);
    let (mut epochs, mut log) = (Vec::new(), Vec::new());
    let mut train_seconds = 0.0;
    let mut step = 0;
    for epoch in 1..=cfg.epochs {
        let t_epoch = Instant::now();
        let order = epoch_order(cfg.seed, epoch, train.len());
        let mut epoch_parts = LossParts::default();
        for chunk in order.chunks(cfg.batch) {
            step += 1;
            let ts = Instant::now();
            let norm = chunk.len() as f64;
            let mut grads = Grads::new(student.params.len());
            let mut parts = LossParts::default();
            for &i in chunk {
                let ex = &train[i];
                let t = teacher.map_or(Teacher::None, |t| Teacher::Full(&t[i]));
                let p = grad::backward_kd(
                    student,
                    &ex.ids,
                    &[ex.label],
                    t,
                    &cfg.loss,
                    norm,
                    &mut grads,
                )?;
                parts.add(&p);
            }
            let loss_value = parts.total(&cfg.loss) / norm;
            let grad_norm = optim::clip(&mut grads, cfg.clip);
            if !loss_value.is_finite() || !grad_norm.is_finite() {
                return Err(TrainError::NonFinite {
                    step,
                    value: if loss_value.is_finite() {
                        grad_norm
                    } else {
                        loss_value
                    },
                    last_good: None,
                });
            }
            let lr = cfg.optim.lr * sched.factor(step);
            optim::step(&mut student.params, &grads, &mut opt, &cfg.optim, lr)?;
            epoch_parts.add(&parts);
            let entry = StepLog {
                step,
                epoch,
                loss: loss_value,
                kd: parts.kd / norm,
                ce: parts.ce / norm,
                lr,
                grad_norm,
                sentences_per_s: norm / ts.elapsed().as_secs_f64().max(1e-9),
            };
            progress.step(&entry, total);
            log.push(entry);
        }
        let seconds = t_epoch.elapsed().as_secs_f64();
        train_seconds += seconds;
        let valid = if valid.is_empty() {
            None
        } else {
            progress.note(&format!("epoch {epoch}: scoring the validation split"));
            Some(evaluate(student, valid, &labels)?)
        };
        let n = epoch_parts.rows.max(1) as f64;
        let e = EpochLog {
            epoch,
            loss: epoch_parts.total(&cfg.loss) / n,
            ce: epoch_parts.ce / n,
            seconds,
            valid,
        };
        progress.epoch(&e);
        epochs.push(e);
    }
    debug_assert_eq!(step, per_epoch * cfg.epochs);
    Ok(Summary {
        steps: step,
        train_seconds,
        sentences_per_s: (cfg.epochs * train.len()) as f64 / train_seconds.max(1e-9),
        epochs,
        log,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_kept() {
        assert_eq!(LayerPick::Even.pick(6, 4), vec![0, 2, 3, 5]);
        assert_eq!(LayerPick::Even.pick(12, 6), vec![0, 2, 4, 7, 9, 11]);
        assert_eq!(LayerPick::Even.pick(6, 6), vec![0, 1, 2, 3, 4, 5]);
        assert_eq!(LayerPick::Even.pick(2, 1), vec![1]);
        assert_eq!(LayerPick::First.pick(6, 4), vec![0, 1, 2, 3]);
    }

    #[test]
    fn epoch_orders_are_permutations_from_the_seed() {
        let a = epoch_order(7, 1, 50);
        let mut s = a.clone();
        s.sort();
        assert_eq!(s, (0..50).collect::<Vec<_>>());
        assert_eq!(a, epoch_order(7, 1, 50));
        assert_ne!(a, epoch_order(7, 2, 50));
        assert_ne!(a, epoch_order(8, 1, 50));
    }

    #[test]
    fn normal_init_has_the_asked_spread() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let v = normal(&mut rng, 20000, 0.02);
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / v.len() as f64;
        assert!(
            mean.abs() < 1e-3 && (var.sqrt() - 0.02).abs() < 1e-3,
            "{mean} {var}"
        );
    }
}
