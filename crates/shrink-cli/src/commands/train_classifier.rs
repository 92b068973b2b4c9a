//! `shrink train-classifier`: fine-tune a BERT/DistilBERT encoder into a sequence classifier on
//! labelled sentences ([`shrink_train::classify`]); the head is added when the model has none.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Parser;
use indicatif::ProgressBar;
use shrink_eval::classify::{self as cls, Labelled, Metrics};
use shrink_io::tokenizer::Tokenizer;
use shrink_io::{Checkpoint, OutputDir};
use shrink_train::classify::{self, ClassifyConfig, EpochLog, Example, StepLog, Summary};
use shrink_train::loss::{Divergence, KdLoss};
use shrink_train::optim::AdamW;

use crate::common;

/// Fine-tune an encoder (BERT, DistilBERT) into a sequence classifier on labelled sentences.
#[derive(Parser, Debug)]
#[command(
    after_help = "The data are `__label__X text` lines (fastText's format; blank lines skipped). BASE is a Hugging Face directory with tokenizer.json: a classifier (BertForSequenceClassification, DistilBertForSequenceClassification), or an encoder without a head (a sentence-transformers BertModel, whose weights have no `bert.` prefix): then a classifier for the labels of --data is added, drawn N(0, 0.02) from --seed with a zero bias, and config.json gets id2label / label2id.\n\nEach step sums the cross-entropy gradients of --batch sentences, run one at a time unpadded (truncated to --max-len tokens, the closing [SEP] kept); the order is a permutation per epoch drawn from --seed. AdamW, linear warmup over --warmup-ratio of the steps, cosine decay to --min-lr-ratio. --valid is scored after every epoch, --test once at the end; the output is the last epoch's weights.\n\nExamples:\n  shrink train-classifier assets/all-MiniLM-L6-v2 --data assets/rotten_tomatoes.train.txt --valid assets/rotten_tomatoes.valid.txt --test assets/rotten_tomatoes.test.txt --epochs 2 -o minilm-rt\n  shrink distill --task classify --teacher minilm-rt --data assets/rotten_tomatoes.train.txt --valid assets/rotten_tomatoes.valid.txt --test assets/rotten_tomatoes.test.txt -o minilm-rt-student"
)]
pub struct Args {
    /// The model to fine-tune: a Hugging Face directory (BERT or DistilBERT, with tokenizer.json).
    pub base: PathBuf,
    /// Training sentences, `__label__X text` per line.
    #[arg(long)]
    pub data: PathBuf,
    /// Validation sentences, scored after every epoch.
    #[arg(long)]
    pub valid: Option<PathBuf>,
    /// Test sentences, scored once at the end.
    #[arg(long)]
    pub test: Option<PathBuf>,
    /// Passes over the training sentences.
    #[arg(long, default_value_t = 3)]
    pub epochs: usize,
    /// Sentences per optimiser step.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Peak learning rate (AdamW).
    #[arg(long, default_value_t = 5e-5)]
    pub lr: f64,
    /// Warmup as a share of all steps.
    #[arg(long, default_value_t = 0.1)]
    pub warmup_ratio: f64,
    /// Final learning rate as a share of the peak (cosine decay).
    #[arg(long, default_value_t = 0.0)]
    pub min_lr_ratio: f64,
    /// AdamW's decoupled weight decay (matrices only).
    #[arg(long, default_value_t = 0.01)]
    pub weight_decay: f64,
    /// Clip the global gradient norm (0: off).
    #[arg(long, default_value_t = 1.0)]
    pub clip: f64,
    /// Longest sentence in tokens (default: the model's positions).
    #[arg(long)]
    pub max_len: Option<usize>,
    /// Seed of the new head and of the sentence order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output directory (must not exist).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The three splits, read and checked before anything is trained or written.
pub(crate) struct Splits {
    /// Training rows.
    pub train: Vec<Labelled>,
    /// Validation rows (empty when not given).
    pub valid: Vec<Labelled>,
    /// Test rows (empty when not given).
    pub test: Vec<Labelled>,
}

impl Splits {
    /// Read --data, --valid and --test.
    pub fn read(data: &Path, valid: Option<&Path>, test: Option<&Path>) -> Result<Self> {
        let opt = |p: Option<&Path>| -> Result<Vec<Labelled>> {
            Ok(match p {
                Some(p) => cls::read_labelled(p)?,
                None => Vec::new(),
            })
        };
        Ok(Splits {
            train: cls::read_labelled(data)?,
            valid: opt(valid)?,
            test: opt(test)?,
        })
    }
}

/// Tokenized splits.
pub(crate) struct Encoded {
    pub train: Vec<Example>,
    pub valid: Vec<Example>,
    pub test: Vec<Example>,
}

/// Tokenize the splits for a model with `labels` (unknown labels are errors naming the line).
pub(crate) fn encode_splits(
    s: &Splits,
    files: (&Path, Option<&Path>, Option<&Path>),
    tok: &Tokenizer,
    labels: &[String],
    max_len: usize,
) -> Result<Encoded> {
    let enc = |p: Option<&Path>, rows: &[Labelled]| -> Result<Vec<Example>> {
        Ok(match p {
            Some(p) => classify::examples(p, rows, tok, labels, max_len)?,
            None => Vec::new(),
        })
    };
    Ok(Encoded {
        train: enc(Some(files.0), &s.train)?,
        valid: enc(files.1, &s.valid)?,
        test: enc(files.2, &s.test)?,
    })
}

/// --max-len checked against the model's positions.
pub(crate) fn max_len(asked: Option<usize>, positions: usize) -> Result<usize> {
    match asked {
        Some(0) => bail!("--max-len must be at least 1"),
        Some(n) if n > positions => {
            bail!("--max-len {n} exceeds the model's {positions} positions")
        }
        Some(n) => Ok(n),
        None => Ok(positions),
    }
}

/// Fail before any work when the output exists.
pub(crate) fn check_output(out: &Path) -> Result<()> {
    if out.exists() {
        bail!(
            "{}: output already exists; shrink never overwrites (remove it or choose another -o)",
            out.display()
        );
    }
    Ok(())
}

/// A progress bar over the steps, with a line per epoch.
pub(crate) struct Bar {
    pub bar: ProgressBar,
}

impl Bar {
    /// A bar titled `what`.
    pub fn new(what: &str) -> Self {
        Bar {
            bar: crate::common::styled(0, what, " {msg}"),
        }
    }
}

impl classify::Progress for Bar {
    fn step(&self, l: &StepLog, total: usize) {
        self.bar.set_length(total as u64);
        self.bar.set_position(l.step as u64);
        self.bar.set_message(format!(
            "epoch {} loss {:.4} {:.1} sentences/s",
            l.epoch, l.loss, l.sentences_per_s
        ));
    }
    fn epoch(&self, e: &EpochLog) {
        let v = e
            .valid
            .as_ref()
            .map(|m| format!("; validation {}", m.summary()))
            .unwrap_or_default();
        let line = format!(
            "epoch {}: loss {:.4} in {:.0} s{v}",
            e.epoch, e.loss, e.seconds
        );
        // A log (stderr not a terminal) gets the epoch lines too.
        if self.bar.is_hidden() {
            eprintln!("{line}");
        } else {
            self.bar.println(line);
        }
    }
    fn note(&self, msg: &str) {
        self.bar.set_message(msg.to_string());
    }
}

/// Train with the bar shown, the bar cleared whatever the result.
pub(crate) fn run_training(
    model: &mut shrink_train::Trainable,
    enc: &Encoded,
    teacher: Option<&[Vec<f32>]>,
    cfg: &ClassifyConfig,
    what: &str,
) -> Result<Summary> {
    let bar = Bar::new(what);
    match classify::train(model, &enc.train, teacher, &enc.valid, cfg, &bar) {
        Ok(s) => {
            bar.bar.finish_and_clear();
            Ok(s)
        }
        Err(e) => {
            bar.bar.abandon();
            Err(e.into())
        }
    }
}

/// The step log as JSON lines.
pub(crate) fn log_lines(s: &Summary) -> String {
    s.log
        .iter()
        .map(|l| serde_json::to_string(l).expect("JSON") + "\n")
        .collect()
}

/// Print the report: JSON, or the lines a person reads.
pub(crate) fn print_report(r: &serde_json::Value, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(r)?);
        return Ok(());
    }
    println!("wrote {}", r["output"].as_str().unwrap_or("?"));
    let s = &r["summary"];
    println!(
        "  {} parameters, {} epochs, {} steps in {:.1} s ({:.1} sentences/s)",
        r["parameters"],
        s["epochs"].as_array().map_or(0, |e| e.len()),
        s["steps"],
        s["train_seconds"].as_f64().unwrap_or(0.0),
        s["sentences_per_s"].as_f64().unwrap_or(0.0)
    );
    let line = |m: &serde_json::Value| -> Option<String> {
        let m: Metrics = serde_json::from_value(m.clone()).ok()?;
        Some(m.summary())
    };
    if let Some(v) = s["epochs"]
        .as_array()
        .and_then(|e| e.last())
        .and_then(|e| line(&e["valid"]))
    {
        println!("  validation: {v}");
    }
    for (key, what) in [("teacher_test", "teacher test"), ("test", "test")] {
        if let Some(t) = line(&r[key]) {
            println!("  {what}: {t}");
        }
    }
    if let Some(rss) = r["peak_rss_mib"].as_f64() {
        println!("  peak RSS {rss:.0} MiB");
    }
    Ok(())
}

/// Run `shrink train-classifier`.
pub fn run(a: Args) -> Result<()> {
    check_output(&a.output)?;
    let splits = Splits::read(&a.data, a.valid.as_deref(), a.test.as_deref())?;
    let ckpt = common::open(&a.base)?;
    let Checkpoint::Hf(h) = &ckpt else {
        bail!(
            "{}: classifiers are trained from Hugging Face directories, not GGUF",
            a.base.display()
        );
    };
    let base_dir = h.dir.clone();
    let data_labels = cls::distinct_labels(&splits.train);
    let mut clf = classify::classifier_for(&ckpt, &a.base, &data_labels, a.seed)?;
    let tok = common::tokenizer(&ckpt)?;
    let labels = clf.labels().to_vec();
    let max_len = max_len(a.max_len, clf.bert().max_position_embeddings)?;
    let files = (a.data.as_path(), a.valid.as_deref(), a.test.as_deref());
    let enc = encode_splits(&splits, files, &tok, &labels, max_len)?;
    let cfg = ClassifyConfig {
        epochs: a.epochs,
        batch: a.batch,
        loss: KdLoss {
            temperature: 1.0,
            alpha: 0.0,
            divergence: Divergence::Forward,
        },
        optim: AdamW {
            lr: a.lr,
            weight_decay: a.weight_decay,
            ..AdamW::default()
        },
        warmup_ratio: a.warmup_ratio,
        min_lr_ratio: a.min_lr_ratio,
        clip: a.clip,
        seed: a.seed,
    };
    cfg.validate()?;
    if !clf.initialised.is_empty() {
        eprintln!(
            "{} has no classification head: initialised {} for labels {}",
            a.base.display(),
            clf.initialised.join(", "),
            labels.join(", ")
        );
    }
    let summary = run_training(&mut clf.model, &enc, None, &cfg, "train")?;
    let test = if enc.test.is_empty() {
        None
    } else {
        Some(classify::evaluate(&clf.model, &enc.test, &labels)?)
    };

    let o = OutputDir::create(&a.output, &[&a.base])?;
    clf.write(&o, &base_dir)?;
    o.write("train.jsonl", log_lines(&summary).as_bytes())?;
    let report = serde_json::json!({
        "command": "train-classifier",
        "base": a.base,
        "output": a.output,
        "data": { "train": a.data, "valid": a.valid, "test": a.test,
                  "sentences": [enc.train.len(), enc.valid.len(), enc.test.len()] },
        "labels": labels,
        "initialised": clf.initialised,
        "parameters": clf.model.params.count(),
        "max_len": max_len,
        "config": cfg,
        "summary": summary,
        "test": test,
        "peak_rss_mib": common::peak_rss().map(|b| b as f64 / (1u64 << 20) as f64),
    });
    o.write(
        "train-classifier.json",
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    o.commit()
        .with_context(|| format!("writing {}", a.output.display()))?;
    print_report(&report, a.json)
}
