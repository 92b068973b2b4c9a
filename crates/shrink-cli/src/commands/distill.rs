//! `shrink distill`: teach a student language model the teacher's soft targets and the text's
//! next tokens ([`shrink_train::distill`]); the student given, or made from the teacher by
//! structured pruning ([`shrink_train::student`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use indicatif::ProgressBar;
use shrink_io::{Checkpoint, OutputDir};
use shrink_train::distill::{self, DistillConfig, StepLog, Windows};
use shrink_train::loss::{Divergence, KdLoss};
use shrink_train::optim::AdamW;
use shrink_train::student::{self, StudentSpec};
use shrink_train::{TrainError, Trainable};

use crate::common;

/// Which part of --text is trained on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TextFormat {
    /// A Lee corpus file: only the lee-ppl-v1 calibration documents (0..149), never the
    /// evaluation documents.
    Lee,
    /// The whole file.
    Raw,
    /// Token ids as JSON `[[id, ...], ...]`, concatenated.
    Ids,
}

/// The soft term's divergence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Kl {
    /// KL(teacher ‖ student), Hinton's.
    Forward,
    /// KL(student ‖ teacher), mode-seeking (needs the full teacher distribution).
    Reverse,
}

/// Distil a teacher language model into a student: soft targets at a temperature plus the
/// next-token cross-entropy, AdamW, resumable.
#[derive(Parser, Debug)]
#[command(
    after_help = "The loss per token is alpha·T²·KL(teacher_T ‖ student_T) + (1 − alpha)·CE(next token) (Hinton et al. 2015); --alpha 0 trains on the text alone, --kl reverse uses KL(student ‖ teacher). The student is any model with the teacher's vocabulary (--student), or is made from the teacher by structured pruning (--student-from-teacher layers=K,heads=R,neurons=R: keep K blocks by Block Influence, a share R of heads / MLP channels by activation), as Minitron does; that undistilled student is kept in the run directory as student-init.\n\nThe text (a Lee corpus file: its calibration documents only) is cut into windows of --seq-len + 1 tokens, shuffled per epoch from --seed; each step sums --batch × --grad-accum windows. Training recomputes each block's forward in the backward, so memory is one block's graph plus the model and AdamW's moments. With --teacher-topk K the teacher runs once per window and only its K largest logits are kept (cached in the run directory).\n\nThe run directory (--run-dir, default OUT.run) holds train.jsonl (one line per step), the checkpoint (every --save-every steps and on Ctrl-C, written atomically) and the teacher cache; --resume continues a killed run exactly where its checkpoint left it. OUT is written only at the end: a Hugging Face directory every other command takes (eval, quantize, export), with train.jsonl and loss.png.\n\nExamples:\n  shrink distill --teacher smollm2-f32 --student-from-teacher layers=24 --text assets/lee_background.cor --steps 200 --seq-len 512 --lr 1e-4 -o smollm2-24-distilled\n  shrink distill --teacher smollm2-f32 --student smollm2-24 --text assets/lee_background.cor --steps 200 --alpha 0 -o smollm2-24-ce\n  shrink distill ... --resume            # after a kill or Ctrl-C, the same flags"
)]
pub struct Args {
    /// What is distilled: lm, or classify (a sequence classifier; its flags: shrink distill
    /// --task classify --help).
    #[arg(long, value_enum, default_value = "lm")]
    pub task: super::distill_classify::Task,
    /// The teacher: a Hugging Face directory or a .gguf file.
    #[arg(long)]
    pub teacher: PathBuf,
    /// The student: a Hugging Face directory with the teacher's vocabulary.
    #[arg(
        long,
        conflicts_with = "student_from_teacher",
        required_unless_present = "student_from_teacher"
    )]
    pub student: Option<PathBuf>,
    /// Make the student from the teacher: `layers=K` (blocks kept), `heads=R`, `neurons=R`
    /// (shares kept), comma-separated.
    #[arg(long, value_name = "SPEC")]
    pub student_from_teacher: Option<String>,
    /// Training text (e.g. assets/lee_background.cor).
    #[arg(long)]
    pub text: PathBuf,
    /// Which part of --text to train on.
    #[arg(long, value_enum, default_value = "lee")]
    pub text_format: TextFormat,
    /// Optimiser steps.
    #[arg(long, default_value_t = 100)]
    pub steps: usize,
    /// Tokens per window.
    #[arg(long, default_value_t = 512)]
    pub seq_len: usize,
    /// Windows per micro-batch.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Micro-batches per step (gradient accumulation).
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    /// Peak learning rate (AdamW).
    #[arg(long, default_value_t = 1e-4)]
    pub lr: f64,
    /// Warmup steps (default: 5 % of --steps).
    #[arg(long)]
    pub warmup: Option<usize>,
    /// Final learning rate as a share of the peak (cosine decay).
    #[arg(long, default_value_t = 0.1)]
    pub min_lr_ratio: f64,
    /// AdamW's decoupled weight decay (matrices only).
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    /// Clip the global gradient norm (0: off).
    #[arg(long, default_value_t = 1.0)]
    pub clip: f64,
    /// Softmax temperature of the soft targets (1: measured best on SmolLM2 with a top-K
    /// teacher; T 2 recovered 29 % of the gap to the teacher against T 1's 91 %, BENCHMARKS.md).
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    /// Weight of the soft term (1 − alpha weighs the next-token cross-entropy).
    #[arg(long, default_value_t = 0.5)]
    pub alpha: f64,
    /// Divergence of the soft term.
    #[arg(long, value_enum, default_value = "forward")]
    pub kl: Kl,
    /// Keep only the teacher's K largest logits per position, computed once and cached.
    #[arg(long, value_name = "K")]
    pub teacher_topk: Option<usize>,
    /// Seed of the window order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Checkpoint every N steps (0: only on Ctrl-C).
    #[arg(long, default_value_t = 50)]
    pub save_every: usize,
    /// Held-out perplexity every N steps (0: never), on --holdout windows of the text kept out
    /// of training.
    #[arg(long, default_value_t = 0)]
    pub eval_every: usize,
    /// Windows held out of training for --eval-every (taken from the end of the text).
    #[arg(long, default_value_t = 2)]
    pub holdout: usize,
    /// Run directory: log, checkpoint, teacher cache (default: OUT.run).
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// Continue the run in the run directory from its checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Output directory (must not exist).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

/// A progress bar showing the loss, tokens/s and the ETA.
pub(crate) struct Bar {
    bar: ProgressBar,
}

impl distill::Progress for Bar {
    fn step(&self, l: &StepLog, total: usize) {
        self.bar.set_length(total as u64);
        self.bar.set_position(l.step as u64);
        let ppl = l
            .heldout_ppl
            .map(|p| format!(" held-out PPL {p:.3}"))
            .unwrap_or_default();
        if l.heldout_ppl.is_some() {
            self.bar
                .println(format!("step {}: loss {:.4}{ppl}", l.step, l.loss));
        }
        self.bar.set_message(format!(
            "loss {:.4} (kd {:.4} ce {:.4}) {:.0} tok/s",
            l.loss, l.kd, l.ce, l.tokens_per_s
        ));
    }
    fn note(&self, msg: &str) {
        self.bar.set_message(msg.to_string());
    }
}

/// The bar of a training run named `what`.
fn steps_bar(what: &str) -> ProgressBar {
    crate::common::styled(0, what, " {msg}")
}

/// The token ids to train on: `text` as `format` says, tokenized by `ckpt`'s tokenizer.
pub(crate) fn training_ids(ckpt: &Checkpoint, text: &Path, format: TextFormat) -> Result<Vec<u32>> {
    Ok(match format {
        TextFormat::Ids => {
            let t = shrink_io::read_text(text)?;
            let v: Vec<Vec<u32>> = serde_json::from_str(&t).with_context(|| {
                format!("{}: not token ids as JSON [[id, ...], ...]", text.display())
            })?;
            v.concat()
        }
        f => super::calibrated::calib_ids(ckpt, text, f == TextFormat::Lee)?,
    })
}

/// Run the training loop `train` with Ctrl-C checkpointing ([`crate::STOP`]) and the progress bar of
/// `what`; an interrupted or diverged run is reported by its own message.
pub(crate) fn training<T>(
    what: &str,
    train: impl FnOnce(&Bar, &AtomicBool) -> std::result::Result<T, TrainError>,
) -> Result<T> {
    // The first Ctrl-C (or SIGTERM) now sets crate::STOP: the loop checkpoints and stops.
    crate::GRACEFUL.store(true, Ordering::SeqCst);
    let bar = Bar {
        bar: steps_bar(what),
    };
    match train(&bar, &crate::STOP) {
        Ok(s) => {
            bar.bar.finish_and_clear();
            Ok(s)
        }
        Err(e) => {
            bar.bar.abandon();
            if let TrainError::NonFinite { .. } | TrainError::Interrupted { .. } = e {
                anyhow::bail!("{e}");
            }
            Err(e.into())
        }
    }
}

/// Run `shrink distill`.
pub fn run(a: Args) -> Result<()> {
    if a.task == super::distill_classify::Task::Classify {
        anyhow::bail!("--task classify takes its own flags: shrink distill --task classify --help");
    }
    let out = &a.output;
    if out.exists() {
        anyhow::bail!(
            "{}: output already exists; shrink never overwrites (remove it or choose another -o)",
            out.display()
        );
    }
    let run_dir = crate::common::run_dir_of(out, a.run_dir.as_deref());
    let teacher_ckpt = common::open(&a.teacher)?;
    let ids = training_ids(&teacher_ckpt, &a.text, a.text_format)?;
    if ids.is_empty() {
        anyhow::bail!("{}: the text holds no tokens", a.text.display());
    }
    let holdout = if a.eval_every > 0 { a.holdout } else { 0 };
    let windows = Windows::cut(&ids, a.seq_len, holdout, &a.text)?;
    let cfg = DistillConfig {
        steps: a.steps,
        seq_len: a.seq_len,
        batch: a.batch,
        grad_accum: a.grad_accum,
        loss: KdLoss {
            temperature: a.temperature,
            alpha: a.alpha,
            divergence: match a.kl {
                Kl::Forward => Divergence::Forward,
                Kl::Reverse => Divergence::Reverse,
            },
        },
        optim: AdamW {
            lr: a.lr,
            weight_decay: a.weight_decay,
            ..AdamW::default()
        },
        warmup: a.warmup.unwrap_or(a.steps / 20),
        min_lr_ratio: a.min_lr_ratio,
        clip: a.clip,
        seed: a.seed,
        teacher_topk: a.teacher_topk,
        save_every: a.save_every,
        eval_every: a.eval_every,
        holdout,
    };
    cfg.validate()?;

    // The student: given, or made from the teacher (kept as the run's student-init).
    let student_path = match (&a.student, &a.student_from_teacher) {
        (Some(s), _) => s.clone(),
        (None, Some(spec)) => {
            let spec = StudentSpec::parse(spec)?;
            let init = run_dir.join("student-init");
            if !init.exists() {
                if a.resume {
                    anyhow::bail!(
                        "{}: --resume: no student-init in the run directory",
                        run_dir.display()
                    );
                }
                std::fs::create_dir_all(&run_dir)
                    .with_context(|| format!("creating {}", run_dir.display()))?;
                // Calibrated on the training windows (the text's calibration documents).
                let samples: Vec<Vec<u32>> = windows
                    .train
                    .iter()
                    .map(|w| w[..a.seq_len].to_vec())
                    .collect();
                let bar = common::Bar::default();
                eprintln!("making the student from the teacher ({spec}) ...");
                student::from_teacher(&teacher_ckpt, &spec, &samples, &init, &bar)?;
            }
            init
        }
        (None, None) => anyhow::bail!("give --student or --student-from-teacher"),
    };
    let student_ckpt = common::open(&student_path)?;
    if matches!(student_ckpt, Checkpoint::Gguf(_)) {
        anyhow::bail!(
            "{}: the student must be a Hugging Face directory (shrink export MODEL --to hf)",
            student_path.display()
        );
    }
    let mut model = Trainable::load(&student_ckpt)
        .with_context(|| format!("loading the student {}", student_path.display()))?;
    let teacher = if cfg.loss.alpha > 0.0 {
        Some(shrink_models::Model::load(&teacher_ckpt)?)
    } else {
        None
    };

    let summary = training("distill", |bar, stop| {
        distill::distill(
            teacher.as_ref(),
            &mut model,
            &windows,
            &cfg,
            &run_dir,
            a.resume,
            stop,
            bar,
        )
    })?;

    // The output: the student's config and tokenizer, the trained weights, the log and chart.
    let o = OutputDir::create(out, &[&a.teacher, &student_path])?;
    shrink_methods::output::write_config_and_tokenizer(&student_ckpt, None, &o, "float32", None)?;
    model
        .params
        .write_safetensors(&o.file("model.safetensors"))?;
    let log = distill::read_log(&run_dir)?;
    std::fs::copy(run_dir.join("train.jsonl"), o.file("train.jsonl"))
        .with_context(|| format!("copying {}", run_dir.join("train.jsonl").display()))?;
    let curve: Vec<(f64, f64)> = log.iter().map(|l| (l.step as f64, l.loss)).collect();
    let ce: Vec<(f64, f64)> = log.iter().map(|l| (l.step as f64, l.ce)).collect();
    let mut series = vec![("loss", curve.as_slice()), ("next-token CE", ce.as_slice())];
    let ppl: Vec<(f64, f64)> = log
        .iter()
        .filter_map(|l| l.heldout_ppl.map(|p| (l.step as f64, p.ln())))
        .collect();
    if !ppl.is_empty() {
        series.push(("held-out log PPL", ppl.as_slice()));
    }
    shrink_eval::plot::curves_png(&o.file("loss.png"), "distillation", "per token", &series)?;
    let report = serde_json::json!({
        "command": "distill",
        "teacher": a.teacher,
        "student": student_path,
        "output": out,
        "run_dir": run_dir,
        "student_params": model.params.count(),
        "config": cfg,
        "train_windows": windows.train.len(),
        "heldout_windows": windows.heldout.len(),
        "summary": summary,
        "peak_rss_mib": shrink_methods::report::peak_rss().map(|b| b as f64 / (1u64 << 20) as f64),
    });
    o.write(
        "distill.json",
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    o.commit()?;
    // The run is complete: its checkpoint is no longer needed.
    if let Some(ck) = shrink_train::state::latest(&run_dir) {
        let _ = std::fs::remove_dir_all(ck);
    }
    print_summary(&report, out, a.json)
}

fn print_summary(r: &serde_json::Value, out: &Path, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(r)?);
        return Ok(());
    }
    let s = &r["summary"];
    println!("wrote {}", out.display());
    println!(
        "  student {} parameters, {} steps ({} this run) in {:.1} s, {:.1} tokens/s",
        r["student_params"],
        s["steps"],
        s["steps_this_run"],
        s["seconds"].as_f64().unwrap_or(0.0),
        s["tokens_per_s"].as_f64().unwrap_or(0.0)
    );
    if let Some(l) = s.get("last").filter(|l| !l.is_null()) {
        println!(
            "  last step: loss {:.4} (soft {:.4}, next-token CE {:.4})",
            l["loss"].as_f64().unwrap_or(f64::NAN),
            l["kd"].as_f64().unwrap_or(f64::NAN),
            l["ce"].as_f64().unwrap_or(f64::NAN)
        );
    }
    if let Some(rss) = r["peak_rss_mib"].as_f64() {
        println!("  peak RSS {rss:.0} MiB");
    }
    Ok(())
}
