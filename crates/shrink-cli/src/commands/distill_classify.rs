//! `shrink distill --task classify`: distil a fine-tuned BERT/DistilBERT classifier into a student
//! with fewer layers and heads made from it ([`shrink_train::classify`]), as the seed article's
//! example: soft targets at T = 2 and the labels, α = 0.5, batch 32, 5 epochs; the learning rate
//! is 1e-4, not the article's 1e-3 (its student started from random weights; one made from the
//! teacher lost 5 points of test accuracy at 1e-3 on the Rotten Tomatoes split, BENCHMARKS.md).
//!
//! Its flags are its own: `main` routes `shrink distill --task classify ...` here before
//! `shrink distill`'s language-model flags are parsed ([`requested`]).

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use shrink_io::{Checkpoint, OutputDir};
use shrink_train::classify::{self, ClassifyConfig, LayerPick};
use shrink_train::loss::{Divergence, KdLoss};
use shrink_train::optim::AdamW;

use super::train_classifier::{
    check_output, encode_splits, log_lines, max_len, print_report, run_training, Splits,
};
use crate::common;

/// What `shrink distill` distils.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Task {
    /// A causal language model, on --text.
    Lm,
    /// A sequence classifier, on labelled sentences (flags: shrink distill --task classify --help).
    Classify,
}

/// Which teacher layers the student keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Pick {
    /// Evenly spaced, the first and the last included (6 → 4 keeps 0, 2, 3, 5).
    Even,
    /// The first K.
    First,
}

/// Distil a classifier into a student with fewer layers and heads.
#[derive(Parser, Debug)]
#[command(
    name = "shrink distill --task classify",
    after_help = "The loss per sentence is alpha·T²·KL(teacher_T ‖ student_T) + (1 − alpha)·CE(label) over the classes (Hinton et al. 2015). The teacher's class logits are computed once, with its forward and no graph. The student is --student (a classifier with the teacher's labels and tokenizer), or made from the teacher: --student-layers K of its layers (--layer-pick even: evenly spaced, first and last kept; first: the first K) with the attention regrouped into --student-heads H heads (q, k, v keep their shapes, so the weights copy; H must divide the width). The defaults are the seed article's: two thirds of the teacher's layers and heads (6 → 4, 12 → 8), T 2, alpha 0.5, batch 32, 5 epochs, no weight decay; but learning rate 1e-4 (the article's 1e-3 trained a student from random weights; a student made from the teacher does better at 1e-4: BENCHMARKS.md).\n\nData, batching, schedule and output are as shrink train-classifier's: --valid is scored after every epoch, --test (teacher and student) at the end; OUT is a Hugging Face directory (quantize it with shrink quantize --method nf4 --double-quant, which takes the encoder's linears; add --include '*word_embeddings*' for the embedding table, most of a small encoder's bytes; compare with shrink compare TEACHER OUT OUT-NF4 --data TEST).\n\nExample:\n  shrink distill --task classify --teacher minilm-rt --data assets/rotten_tomatoes.train.txt --valid assets/rotten_tomatoes.valid.txt --test assets/rotten_tomatoes.test.txt -o minilm-rt-student"
)]
pub struct Args {
    /// The teacher: a fine-tuned classifier (Hugging Face directory with tokenizer.json).
    #[arg(long)]
    pub teacher: PathBuf,
    /// The student: a classifier with the teacher's labels and tokenizer (default: made from
    /// the teacher).
    #[arg(long, conflicts_with_all = ["student_layers", "student_heads"])]
    pub student: Option<PathBuf>,
    /// Layers the student keeps (default: two thirds of the teacher's).
    #[arg(long)]
    pub student_layers: Option<usize>,
    /// Attention heads of the student (default: two thirds of the teacher's, dividing the width).
    #[arg(long)]
    pub student_heads: Option<usize>,
    /// Which teacher layers are kept.
    #[arg(long, value_enum, default_value = "even")]
    pub layer_pick: Pick,
    /// Training sentences, `__label__X text` per line.
    #[arg(long)]
    pub data: PathBuf,
    /// Validation sentences, scored after every epoch.
    #[arg(long)]
    pub valid: Option<PathBuf>,
    /// Test sentences, scored once at the end (teacher and student).
    #[arg(long)]
    pub test: Option<PathBuf>,
    /// Passes over the training sentences.
    #[arg(long, default_value_t = 5)]
    pub epochs: usize,
    /// Sentences per optimiser step.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Peak learning rate (AdamW; the seed article's 1e-3 suits a student from random weights).
    #[arg(long, default_value_t = 1e-4)]
    pub lr: f64,
    /// Softmax temperature of the soft targets.
    #[arg(long, default_value_t = 2.0)]
    pub temperature: f64,
    /// Weight of the soft term (1 − alpha weighs the labels' cross-entropy).
    #[arg(long, default_value_t = 0.5)]
    pub alpha: f64,
    /// Warmup as a share of all steps.
    #[arg(long, default_value_t = 0.1)]
    pub warmup_ratio: f64,
    /// Final learning rate as a share of the peak (cosine decay).
    #[arg(long, default_value_t = 0.0)]
    pub min_lr_ratio: f64,
    /// AdamW's decoupled weight decay (matrices only).
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    /// Clip the global gradient norm (0: off).
    #[arg(long, default_value_t = 1.0)]
    pub clip: f64,
    /// Longest sentence in tokens (default: the model's positions).
    #[arg(long)]
    pub max_len: Option<usize>,
    /// Seed of the sentence order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output directory (must not exist).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The arguments of `shrink distill --task classify ...` (without the `--task` pair) when the
/// command line asks for it.
pub fn requested(args: &[OsString]) -> Option<Vec<OsString>> {
    if args.get(1).is_none_or(|a| a != "distill") {
        return None;
    }
    let mut out = vec![OsString::from("shrink distill --task classify")];
    let mut found = false;
    let mut i = 2;
    while i < args.len() {
        let a = &args[i];
        if a == "--" {
            out.extend(args[i..].iter().cloned());
            break;
        }
        if a == "--task=classify" {
            found = true;
        } else if a == "--task" && args.get(i + 1).is_some_and(|v| v == "classify") {
            found = true;
            i += 1;
        } else {
            out.push(a.clone());
        }
        i += 1;
    }
    found.then_some(out)
}

/// Run `shrink distill --task classify`.
pub fn run(a: Args) -> Result<()> {
    check_output(&a.output)?;
    let splits = Splits::read(&a.data, a.valid.as_deref(), a.test.as_deref())?;
    let t_ckpt = common::open(&a.teacher)?;
    let Checkpoint::Hf(h) = &t_ckpt else {
        bail!(
            "{}: the teacher must be a Hugging Face directory",
            a.teacher.display()
        );
    };
    let teacher_dir = h.dir.clone();
    let teacher = classify::load_classifier(&t_ckpt, &a.teacher)?;
    let tok = common::tokenizer(&t_ckpt)?;
    let labels = teacher.labels().to_vec();

    let (mut student, kept, student_path) = match &a.student {
        Some(p) => {
            let s = classify::load_classifier(&common::open(p)?, p)?;
            if s.labels() != labels.as_slice() {
                bail!(
                    "{}: its labels ({}) are not the teacher's ({})",
                    p.display(),
                    s.labels().join(", "),
                    labels.join(", ")
                );
            }
            if s.bert().vocab_size != teacher.bert().vocab_size {
                bail!(
                    "{}: its vocabulary ({} tokens) is not the teacher's ({})",
                    p.display(),
                    s.bert().vocab_size,
                    teacher.bert().vocab_size
                );
            }
            (s, None, Some(p.clone()))
        }
        None => {
            let (dl, dh) = classify::default_student_shape(teacher.bert());
            let pick = match a.layer_pick {
                Pick::Even => LayerPick::Even,
                Pick::First => LayerPick::First,
            };
            let layers = a.student_layers.unwrap_or(dl);
            let heads = a.student_heads.unwrap_or(dh);
            let (s, kept) = classify::student_from(&teacher, layers, heads, pick)?;
            (s, Some(kept), None)
        }
    };
    let positions = teacher
        .bert()
        .max_position_embeddings
        .min(student.bert().max_position_embeddings);
    let max_len = max_len(a.max_len, positions)?;
    let files = (a.data.as_path(), a.valid.as_deref(), a.test.as_deref());
    let enc = encode_splits(&splits, files, &tok, &labels, max_len)?;
    let cfg = ClassifyConfig {
        epochs: a.epochs,
        batch: a.batch,
        loss: KdLoss {
            temperature: a.temperature,
            alpha: a.alpha,
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

    let sb = student.bert();
    eprintln!(
        "teacher {} layers × {} heads, {} parameters → student {} layers × {} heads{}, {} parameters",
        teacher.bert().num_layers,
        teacher.bert().num_heads,
        teacher.model.params.count(),
        sb.num_layers,
        sb.num_heads,
        kept.as_ref()
            .map(|k| format!(" (teacher layers {k:?})"))
            .unwrap_or_default(),
        student.model.params.count()
    );
    eprintln!(
        "teacher logits of {} training sentences ...",
        enc.train.len()
    );
    let t_logits = classify::logits(&teacher.model, &enc.train)?;
    let summary = run_training(&mut student.model, &enc, Some(&t_logits), &cfg, "distill")?;
    let (teacher_test, test) = if enc.test.is_empty() {
        (None, None)
    } else {
        (
            Some(classify::evaluate(&teacher.model, &enc.test, &labels)?),
            Some(classify::evaluate(&student.model, &enc.test, &labels)?),
        )
    };
    let teacher_valid = if enc.valid.is_empty() {
        None
    } else {
        Some(classify::evaluate(&teacher.model, &enc.valid, &labels)?)
    };

    let mut inputs = vec![a.teacher.as_path()];
    inputs.extend(student_path.as_deref());
    let o = OutputDir::create(&a.output, &inputs)?;
    student.write(&o, &teacher_dir)?;
    o.write("train.jsonl", log_lines(&summary).as_bytes())?;
    let report = serde_json::json!({
        "command": "distill --task classify",
        "teacher": a.teacher,
        "student": student_path,
        "output": a.output,
        "data": { "train": a.data, "valid": a.valid, "test": a.test,
                  "sentences": [enc.train.len(), enc.valid.len(), enc.test.len()] },
        "labels": labels,
        "teacher_parameters": teacher.model.params.count(),
        "parameters": student.model.params.count(),
        "student_layers": student.bert().num_layers,
        "student_heads": student.bert().num_heads,
        "kept_layers": kept,
        "max_len": max_len,
        "config": cfg,
        "summary": summary,
        "teacher_valid": teacher_valid,
        "teacher_test": teacher_test,
        "test": test,
        "peak_rss_mib": common::peak_rss().map(|b| b as f64 / (1u64 << 20) as f64),
    });
    o.write(
        "distill.json",
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    o.commit()
        .with_context(|| format!("writing {}", a.output.display()))?;
    print_report(&report, a.json)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn routes_only_distill_with_task_classify() {
        let got = requested(&os(&[
            "shrink",
            "distill",
            "--teacher",
            "t",
            "--task",
            "classify",
        ]));
        assert_eq!(
            got,
            Some(os(&["shrink distill --task classify", "--teacher", "t"]))
        );
        assert!(requested(&os(&["shrink", "distill", "--task=classify", "-o", "x"])).is_some());
        assert!(requested(&os(&["shrink", "distill", "--task", "lm"])).is_none());
        assert!(requested(&os(&["shrink", "distill", "--text", "t"])).is_none());
        assert!(requested(&os(&["shrink", "compare", "--task", "classify"])).is_none());
    }
}
