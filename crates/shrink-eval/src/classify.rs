//! Sequence classifiers judged on labelled sentences: the data (fastText's `__label__X text`
//! lines), the scores (accuracy; precision, recall and F1 per class and macro-averaged; the
//! confusion counts, as scikit-learn's `precision_recall_fscore_support` and
//! `confusion_matrix` compute them), and classifiers compared side by side (`shrink compare
//! --data`).
//!
//! A sentence is tokenized with the model's tokenizer and its special tokens (BERT's `[CLS] …
//! [SEP]`), truncated to the model's positions keeping the closing special token, and run
//! unpadded, one at a time.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use shrink_io::tokenizer::Tokenizer;
use shrink_io::Checkpoint;
use shrink_methods::pipeline::Progress;
use shrink_models::{Architecture, BertClassifier, BertConfig, WeightLoader};

use crate::error::{EvalError, Result};

/// The prefix of a label in a labelled line (fastText's format).
pub const LABEL_PREFIX: &str = "__label__";

/// One labelled sentence as read from its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Labelled {
    /// 1-based line number in the file.
    pub line: usize,
    /// The label (without `__label__`).
    pub label: String,
    /// The sentence.
    pub text: String,
}

/// The labelled sentences of `path`: one `__label__X text` per line; blank lines are skipped.
///
/// An unreadable file, a file with no sentence, a line without a label or without text is an
/// error naming the file (and the line).
pub fn read_labelled(path: &Path) -> Result<Vec<Labelled>> {
    let raw = std::fs::read(path).map_err(|source| EvalError::Read {
        path: path.into(),
        source,
    })?;
    let text = String::from_utf8(raw)
        .map_err(|e| EvalError::Input(format!("{}: not UTF-8 text ({e})", path.display())))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let at = |what: String| EvalError::Input(format!("{}:{}: {what}", path.display(), i + 1));
        let Some(rest) = line.strip_prefix(LABEL_PREFIX) else {
            return Err(at(format!(
                "expected `{LABEL_PREFIX}LABEL text`, found {:?}",
                truncate(line, 40)
            )));
        };
        let (label, sentence) = rest
            .split_once(char::is_whitespace)
            .map(|(l, s)| (l, s.trim()))
            .unwrap_or((rest, ""));
        if label.is_empty() {
            return Err(at("empty label".into()));
        }
        if sentence.is_empty() {
            return Err(at(format!("label {label:?} has no text")));
        }
        out.push(Labelled {
            line: i + 1,
            label: label.to_string(),
            text: sentence.to_string(),
        });
    }
    if out.is_empty() {
        return Err(EvalError::Input(format!(
            "{}: no labelled sentence (expected `{LABEL_PREFIX}LABEL text` lines)",
            path.display()
        )));
    }
    Ok(out)
}

fn truncate(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// The distinct labels of `rows`, sorted.
pub fn distinct_labels(rows: &[Labelled]) -> Vec<String> {
    let mut l: Vec<String> = rows.iter().map(|r| r.label.clone()).collect();
    l.sort();
    l.dedup();
    l
}

/// The class id of every row's label in `labels` (a model's `id2label`); a label the model does
/// not know is an error naming `path` and the line.
pub fn label_ids(rows: &[Labelled], labels: &[String], path: &Path) -> Result<Vec<u32>> {
    rows.iter()
        .map(|r| {
            labels
                .iter()
                .position(|l| *l == r.label)
                .map(|i| i as u32)
                .ok_or_else(|| {
                    EvalError::Input(format!(
                        "{}:{}: label {:?} is not one of the model's labels ({})",
                        path.display(),
                        r.line,
                        r.label,
                        labels.join(", ")
                    ))
                })
        })
        .collect()
}

/// Token ids of `text` with the tokenizer's special tokens, at most `max_len` of them: a longer
/// sentence keeps its first `max_len − 1` tokens and its last (BERT's `[SEP]`).
pub fn encode(tok: &Tokenizer, text: &str, max_len: usize) -> Result<Vec<u32>> {
    let mut ids = tok.encode(text, true)?;
    if ids.len() > max_len && max_len > 0 {
        let last = *ids.last().expect("longer than max_len ≥ 1");
        ids.truncate(max_len - 1);
        ids.push(last);
    }
    if ids.is_empty() {
        return Err(EvalError::Input(format!(
            "{:?} gives no tokens",
            truncate(text, 40)
        )));
    }
    Ok(ids)
}

/// One class's scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassScores {
    /// The label.
    pub label: String,
    /// TP / (TP + FP); 0 when the class is never predicted.
    pub precision: f64,
    /// TP / (TP + FN); 0 when the class never occurs.
    pub recall: f64,
    /// Harmonic mean of precision and recall; 0 when both are 0.
    pub f1: f64,
    /// Sentences of this class.
    pub support: usize,
}

/// Scores of predictions against the truth.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Sentences scored.
    pub n: usize,
    /// Share predicted right.
    pub accuracy: f64,
    /// Mean precision over the classes.
    pub macro_precision: f64,
    /// Mean recall over the classes.
    pub macro_recall: f64,
    /// Mean F1 over the classes.
    pub macro_f1: f64,
    /// Per class, in label order.
    pub per_class: Vec<ClassScores>,
    /// `confusion[truth][predicted]` counts, in label order.
    pub confusion: Vec<Vec<usize>>,
}

impl Metrics {
    /// Score `pred` against `truth` (class ids into `labels`).
    pub fn new(labels: &[String], truth: &[u32], pred: &[u32]) -> Self {
        assert_eq!(truth.len(), pred.len(), "one prediction per sentence");
        let k = labels.len();
        let mut confusion = vec![vec![0usize; k]; k];
        for (&t, &p) in truth.iter().zip(pred) {
            confusion[t as usize][p as usize] += 1;
        }
        let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let per_class: Vec<ClassScores> = (0..k)
            .map(|c| {
                let tp = confusion[c][c];
                let support: usize = confusion[c].iter().sum();
                let predicted: usize = confusion.iter().map(|row| row[c]).sum();
                let (precision, recall) = (ratio(tp, predicted), ratio(tp, support));
                let f1 = if precision + recall > 0.0 {
                    2.0 * precision * recall / (precision + recall)
                } else {
                    0.0
                };
                ClassScores {
                    label: labels[c].clone(),
                    precision,
                    recall,
                    f1,
                    support,
                }
            })
            .collect();
        let mean = |f: fn(&ClassScores) -> f64| {
            if k == 0 {
                0.0
            } else {
                per_class.iter().map(f).sum::<f64>() / k as f64
            }
        };
        let right: usize = (0..k).map(|c| confusion[c][c]).sum();
        Metrics {
            n: truth.len(),
            accuracy: ratio(right, truth.len()),
            macro_precision: mean(|c| c.precision),
            macro_recall: mean(|c| c.recall),
            macro_f1: mean(|c| c.f1),
            per_class,
            confusion,
        }
    }

    /// One line: accuracy, macro precision, recall and F1, in percent.
    pub fn summary(&self) -> String {
        format!(
            "accuracy {:.2} %, precision {:.2} %, recall {:.2} %, F1 {:.2} % (macro, {} sentences)",
            100.0 * self.accuracy,
            100.0 * self.macro_precision,
            100.0 * self.macro_recall,
            100.0 * self.macro_f1,
            self.n
        )
    }
}

/// The index of the largest value (the first on ties).
pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// A classifier loaded for scoring: its configuration, weights (quantized ones stay quantized)
/// and tokenizer.
pub struct Classifier {
    /// The model.
    pub model: BertClassifier,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
}

impl Classifier {
    /// Load the BERT/DistilBERT classifier in `path` (an HF directory with tokenizer.json).
    pub fn load(path: &Path) -> Result<Self> {
        let ckpt = Checkpoint::open(path)?;
        let cfg = encoder_config(&ckpt, path)?;
        let model = BertClassifier::load(cfg, &WeightLoader::new(&ckpt, None, &[]))?;
        let tokenizer = Tokenizer::for_checkpoint(&ckpt)?;
        Ok(Classifier { model, tokenizer })
    }

    /// Class names by id.
    pub fn labels(&self) -> &[String] {
        &self.model.cfg.labels
    }

    /// Class logits of every sentence of `rows`; `progress` is advanced once per sentence.
    pub fn logits(&self, rows: &[Labelled], progress: &dyn Progress) -> Result<Vec<Vec<f32>>> {
        let max = self.model.cfg.max_position_embeddings;
        rows.iter()
            .map(|r| {
                let ids = encode(&self.tokenizer, &r.text, max)?;
                let l = self.model.forward(&ids)?.to_vec1::<f32>()?;
                progress.inc(1);
                Ok(l)
            })
            .collect()
    }
}

/// The encoder configuration of `ckpt`, or an error saying it is no BERT/DistilBERT classifier.
pub fn encoder_config(ckpt: &Checkpoint, path: &Path) -> Result<BertConfig> {
    match Architecture::from_checkpoint(ckpt)? {
        Architecture::Encoder(c) => Ok(c),
        Architecture::Decoder(_) => Err(EvalError::Input(format!(
            "{}: a language model, not a BERT/DistilBERT sequence classifier",
            path.display()
        ))),
    }
}

/// One classifier's row of a comparison.
#[derive(Debug, Clone, Serialize)]
pub struct ClassifierRow {
    /// The model's path as given.
    pub model: String,
    /// Its method (from the report a compression run left), else its storage dtype or
    /// `quant_method`.
    pub method: String,
    /// Encoder layers.
    pub layers: usize,
    /// Attention heads per layer.
    pub heads: usize,
    /// Parameters (quantized weights counted as the values they stand for).
    pub parameters: u64,
    /// Bytes of every tensor as stored.
    pub model_bytes: u64,
    /// The base's bytes over this model's.
    pub times_smaller: f64,
    /// Scores on the labelled sentences.
    pub metrics: Metrics,
    /// Share of sentences whose predicted class equals the base's.
    pub agreement: f64,
}

/// Classifiers compared on labelled sentences.
#[derive(Debug, Clone, Serialize)]
pub struct ClassifierComparison {
    /// The labelled file.
    pub data: PathBuf,
    /// The base (first row) and every other model.
    pub rows: Vec<ClassifierRow>,
}

/// The method of an HF directory: a compression report's, else its `quant_method` or dtype.
fn method_of(ckpt: &Checkpoint, path: &Path) -> String {
    if let Some(m) =
        crate::compare::quantize_report(path).and_then(|v| v["method"].as_str().map(String::from))
    {
        return m;
    }
    let Checkpoint::Hf(h) = ckpt else {
        return "gguf".into();
    };
    if let Some(q) = h.quantization_config() {
        return q
            .get("quant_method")
            .and_then(|v| v.as_str())
            .unwrap_or("quantized")
            .to_string();
    }
    h.config
        .get("dtype")
        .or_else(|| h.config.get("torch_dtype"))
        .and_then(|v| v.as_str())
        .unwrap_or("float")
        .to_string()
}

/// Score `base` and `models` (BERT/DistilBERT classifiers) on the labelled sentences of
/// `data`; `progress` sees one task per model.
pub fn compare_classifiers(
    base: &Path,
    models: &[PathBuf],
    data: &Path,
    progress: &dyn Progress,
) -> Result<ClassifierComparison> {
    let rows_in = read_labelled(data)?;
    let mut rows: Vec<ClassifierRow> = Vec::new();
    let mut base_pred: Vec<String> = Vec::new();
    for path in std::iter::once(base).chain(models.iter().map(PathBuf::as_path)) {
        let ckpt = Checkpoint::open(path)?;
        let c = Classifier::load(path)?;
        let labels = c.labels().to_vec();
        let truth = label_ids(&rows_in, &labels, data)?;
        progress.start(&path.display().to_string(), rows_in.len() as u64);
        let logits = c.logits(&rows_in, progress)?;
        progress.finish();
        let pred: Vec<u32> = logits.iter().map(|l| argmax(l)).collect();
        let names: Vec<String> = pred.iter().map(|&p| labels[p as usize].clone()).collect();
        if base_pred.is_empty() {
            base_pred = names.clone();
        }
        let agree = names.iter().zip(&base_pred).filter(|(a, b)| a == b).count();
        let cfg = &c.model.cfg;
        let parameters = Architecture::Encoder(cfg.clone())
            .weight_shapes()
            .iter()
            .map(|(_, s)| s.iter().product::<usize>() as u64)
            .sum();
        let model_bytes: u64 = ckpt.tensors().iter().map(|t| t.bytes).sum();
        let base_bytes = rows.first().map_or(model_bytes, |b| b.model_bytes);
        rows.push(ClassifierRow {
            model: path.display().to_string(),
            method: method_of(&ckpt, path),
            layers: cfg.num_layers,
            heads: cfg.num_heads,
            parameters,
            model_bytes,
            times_smaller: base_bytes as f64 / model_bytes.max(1) as f64,
            metrics: Metrics::new(&labels, &truth, &pred),
            agreement: agree as f64 / rows_in.len() as f64,
        });
    }
    Ok(ClassifierComparison {
        data: data.to_path_buf(),
        rows,
    })
}

impl ClassifierComparison {
    /// The comparison as one JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("a comparison serializes")
    }

    /// The comparison as a Markdown table (also what the terminal shows).
    pub fn markdown(&self) -> String {
        let n = self.rows.first().map_or(0, |r| r.metrics.n);
        let mut s = format!(
            "# shrink compare (classifiers)\n\n{} labelled sentences of {}; the first row is the \
             base; precision, recall and F1 are macro averages over the classes\n\n",
            n,
            self.data.display()
        );
        s += "| model | method | layers | heads | parameters | model bytes | ×smaller | accuracy | precision | recall | F1 | agreement with base |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n";
        for r in &self.rows {
            let m = &r.metrics;
            s += &format!(
                "| {} | {} | {} | {} | {} | {} | {:.2} | {:.2} % | {:.2} % | {:.2} % | {:.2} % | {:.2} % |\n",
                r.model,
                r.method,
                r.layers,
                r.heads,
                r.parameters,
                r.model_bytes,
                r.times_smaller,
                100.0 * m.accuracy,
                100.0 * m.macro_precision,
                100.0 * m.macro_recall,
                100.0 * m.macro_f1,
                100.0 * r.agreement
            );
        }
        s += "\n## Per class\n\n| model | class | precision | recall | F1 | support |\n|---|---|---|---|---|---|\n";
        for r in &self.rows {
            for c in &r.metrics.per_class {
                s += &format!(
                    "| {} | {} | {:.2} % | {:.2} % | {:.2} % | {} |\n",
                    r.model,
                    c.label,
                    100.0 * c.precision,
                    100.0 * c.recall,
                    100.0 * c.f1,
                    c.support
                );
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Vec<String> {
        vec!["neg".into(), "pos".into()]
    }

    /// Against values worked by hand (and scikit-learn's `classification_report`).
    #[test]
    fn metrics_by_hand() {
        // truth: 4 neg, 6 pos; predicted: neg→neg 3, neg→pos 1, pos→neg 2, pos→pos 4.
        let truth = [0, 0, 0, 0, 1, 1, 1, 1, 1, 1];
        let pred = [0, 0, 0, 1, 0, 0, 1, 1, 1, 1];
        let m = Metrics::new(&labels(), &truth, &pred);
        assert_eq!(m.confusion, vec![vec![3, 1], vec![2, 4]]);
        assert_eq!(m.n, 10);
        assert!((m.accuracy - 0.7).abs() < 1e-12);
        let (neg, pos) = (&m.per_class[0], &m.per_class[1]);
        // neg: P = 3/5, R = 3/4, F1 = 2·0.6·0.75/1.35 = 2/3.
        assert!((neg.precision - 0.6).abs() < 1e-12);
        assert!((neg.recall - 0.75).abs() < 1e-12);
        assert!((neg.f1 - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(neg.support, 4);
        // pos: P = 4/5, R = 4/6, F1 = 2·0.8·(2/3)/(0.8 + 2/3) = 8/11.
        assert!((pos.precision - 0.8).abs() < 1e-12);
        assert!((pos.recall - 2.0 / 3.0).abs() < 1e-12);
        assert!((pos.f1 - 8.0 / 11.0).abs() < 1e-12);
        assert!((m.macro_precision - 0.7).abs() < 1e-12);
        assert!((m.macro_recall - (0.75 + 2.0 / 3.0) / 2.0).abs() < 1e-12);
        assert!((m.macro_f1 - (2.0 / 3.0 + 8.0 / 11.0) / 2.0).abs() < 1e-12);
    }

    /// A class never predicted has precision 0 and F1 0 (scikit-learn's zero_division=0).
    #[test]
    fn never_predicted_class_scores_zero() {
        let m = Metrics::new(&labels(), &[0, 1, 1], &[1, 1, 1]);
        assert_eq!(m.per_class[0].precision, 0.0);
        assert_eq!(m.per_class[0].f1, 0.0);
        assert!((m.per_class[1].precision - 2.0 / 3.0).abs() < 1e-12);
        assert!((m.accuracy - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(argmax(&[0.1, 0.3, 0.3]), 1);
    }

    #[test]
    fn labelled_lines_and_their_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.txt");
        std::fs::write(&p, "__label__pos a good film\n\n__label__neg  bad \n").unwrap();
        let rows = read_labelled(&p).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[1].line, rows[1].label.as_str()), (3, "neg"));
        assert_eq!(rows[1].text, "bad");
        assert_eq!(distinct_labels(&rows), vec!["neg", "pos"]);
        let e = label_ids(&rows, &["pos".into()], &p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("d.txt:3") && e.contains("\"neg\""), "{e}");
        for (bad, want) in [
            ("", "no labelled sentence"),
            ("\n  \n", "no labelled sentence"),
            ("pos a film\n", ":1: expected"),
            (
                "__label__pos ok\n__label__neg\n",
                ":2: label \"neg\" has no text",
            ),
            ("__label__ x\n", ":1: empty label"),
        ] {
            std::fs::write(&p, bad).unwrap();
            let e = read_labelled(&p).unwrap_err().to_string();
            assert!(e.contains("d.txt") && e.contains(want), "{bad:?}: {e}");
        }
    }
}
