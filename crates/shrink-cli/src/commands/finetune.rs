//! `shrink finetune`: a quantized model's scales trained end to end against its float teacher
//! ([`shrink_train::finetune`], EfficientQAT's E2E-QP), written back into the same layout.

use std::path::PathBuf;

use anyhow::{Context, Result};
use shrink_train::distill::{self, Windows};
use shrink_train::finetune::{self, FinetuneConfig};

use super::distill::{training, training_ids, TextFormat};
use crate::common;
use crate::common::run_dir_of;

/// Arguments of `shrink finetune`.
#[derive(clap::Args)]
#[command(
    after_help = "Only the quantization step sizes train (EfficientQAT's E2E-QP, Chen et al. 2024): every weight stays W = s·(q − z) with its integer codes q and zero points z frozen, and the scales s move to bring the quantized model's next-token distribution closer to the float teacher's (KL at temperature 1 against the teacher's full next-token distribution, or with --teacher-topk K its K largest logits cached once in the run directory). The model runs on the scales rounded to float16, as the layout stores them, so the output computes exactly what training measured. The output is the input's directory with only its scales tensors replaced: it loads wherever the input did (transformers' GPTQ loaders, shrink export --to gguf / compressed-tensors).\n\nReads the Hugging Face gptq layout (shrink quantize --method gptq, with --act-order static or none). Train on the calibration documents only (--text-format lee keeps documents 0..149 of a Lee corpus file).\n\nThe run directory (--run-dir, default OUT.run) holds train.jsonl, the teacher cache and the checkpoint of the scales (every --save-every steps and on Ctrl-C); --resume continues a killed run exactly.\n\nExamples:\n  shrink finetune smollm2-gptq --teacher smollm2-f32 --text assets/lee_background.cor --steps 100 -o smollm2-gptq-ft\n  shrink finetune ... --resume        # after a kill or Ctrl-C, the same flags"
)]
pub struct Args {
    /// The quantized model (a gptq-layout Hugging Face directory).
    pub model: PathBuf,
    /// The float model it was quantized from.
    #[arg(long)]
    pub teacher: PathBuf,
    #[command(flatten)]
    pub train: TrainOpts,
    /// Output directory (must not exist).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

/// A file written beside an output: its name and bytes.
pub type NamedFile = (String, Vec<u8>);

/// The training flags `finetune`, `qat`, `qlora` and `rotate --learn` share.
#[derive(clap::Args)]
pub struct TrainOpts {
    /// Training text, required (e.g. assets/lee_background.cor).
    #[arg(long)]
    pub text: Option<PathBuf>,
    /// Which part of --text to train on.
    #[arg(long, value_enum, default_value = "lee")]
    pub text_format: TextFormat,
    /// Optimiser steps.
    #[arg(long, default_value_t = 100)]
    pub steps: usize,
    /// Tokens per window.
    #[arg(long, default_value_t = 512)]
    pub seq_len: usize,
    /// Windows per step.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Peak learning rate (Adam; default: finetune 2e-5, qat 2e-5, qlora 2e-4; rotate --learn:
    /// the Cayley step's, 1.5).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Warmup steps (default: 5 % of --steps).
    #[arg(long)]
    pub warmup: Option<usize>,
    /// Final learning rate as a share of the peak (cosine decay).
    #[arg(long, default_value_t = 0.1)]
    pub min_lr_ratio: f64,
    /// Clip the trained parameters' global gradient norm (0: off; default 1, rotate --learn 0).
    #[arg(long)]
    pub clip: Option<f64>,
    /// Keep only the teacher's K largest logits per position, computed once and cached (the
    /// target renormalised over them: cheaper, but the rest of the distribution is not held);
    /// by default the teacher runs on every window and every logit counts.
    #[arg(long, value_name = "K")]
    pub teacher_topk: Option<usize>,
    /// Seed of the window order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Checkpoint every N steps (0: only at the end and on Ctrl-C).
    #[arg(long, default_value_t = 25)]
    pub save_every: usize,
    /// Run directory: log, checkpoint, teacher cache (default: OUT.run).
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// Continue the run in the run directory from its checkpoint.
    #[arg(long)]
    pub resume: bool,
}

impl TrainOpts {
    /// The run's settings, `lr` and `clip` the command's defaults.
    pub fn config(&self, lr: f64, clip: f64) -> Result<FinetuneConfig> {
        let cfg = FinetuneConfig {
            steps: self.steps,
            seq_len: self.seq_len,
            batch: self.batch,
            lr: self.lr.unwrap_or(lr),
            warmup: self.warmup.unwrap_or(self.steps / 20),
            min_lr_ratio: self.min_lr_ratio,
            clip: self.clip.unwrap_or(clip),
            seed: self.seed,
            teacher_topk: self.teacher_topk,
            save_every: self.save_every,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// The training text (--text), required.
    pub fn text(&self) -> Result<&std::path::Path> {
        self.text.as_deref().context(
            "--text FILE is required: the text to train on (e.g. assets/lee_background.cor)",
        )
    }

    /// The training windows of --text, tokenized by `tokenizer_of`'s tokenizer.
    pub fn windows(&self, tokenizer_of: &shrink_io::Checkpoint) -> Result<Windows> {
        let text = self.text()?;
        let ids = training_ids(tokenizer_of, text, self.text_format)?;
        Ok(Windows::cut(&ids, self.seq_len, 0, text)?)
    }

    /// Refuse a --seq-len beyond the model's positions.
    pub fn check_positions(&self, model: &shrink_train::Trainable) -> Result<()> {
        if let Some(max) = model.max_positions() {
            if self.seq_len > max {
                anyhow::bail!(
                    "--seq-len {} exceeds the model's {max} positions",
                    self.seq_len
                );
            }
        }
        Ok(())
    }

    /// The log of the run in `run_dir` charted into `run_dir/loss.png` (`series` picks the
    /// value of each step); returns the log and the files that go beside the output
    /// (`train.jsonl`, `loss.png`) as (name, bytes).
    pub fn chart(
        run_dir: &std::path::Path,
        title: &str,
        label: &str,
        series: fn(&distill::StepLog) -> f64,
    ) -> Result<(Vec<distill::StepLog>, Vec<NamedFile>)> {
        let log = distill::read_log(run_dir)?;
        let curve: Vec<(f64, f64)> = log.iter().map(|l| (l.step as f64, series(l))).collect();
        let png = run_dir.join("loss.png");
        shrink_eval::plot::curves_png(&png, title, label, &[(label, curve.as_slice())])?;
        let read = |p: std::path::PathBuf| {
            std::fs::read(&p).with_context(|| format!("reading {}", p.display()))
        };
        let files = vec![
            (
                "train.jsonl".to_string(),
                read(run_dir.join("train.jsonl"))?,
            ),
            ("loss.png".to_string(), read(png)?),
        ];
        Ok((log, files))
    }
}

/// Run `shrink finetune`.
pub fn run(a: Args) -> Result<()> {
    let out = &a.output;
    if out.exists() {
        anyhow::bail!(
            "{}: output already exists; shrink never overwrites (remove it or choose another -o)",
            out.display()
        );
    }
    let t = &a.train;
    let run_dir = run_dir_of(out, t.run_dir.as_deref());
    let input = common::open(&a.model)?;
    let teacher_ckpt = common::open(&a.teacher)?;
    let windows = t.windows(&teacher_ckpt)?;
    let cfg = t.config(2e-5, 1.0)?;
    let (mut student, mut quant) =
        finetune::load(&input).with_context(|| format!("loading {}", a.model.display()))?;
    t.check_positions(&student)?;
    let teacher = shrink_models::Model::load(&teacher_ckpt)?;

    let summary = training("finetune", |bar, stop| {
        finetune::finetune(
            &teacher,
            &mut student,
            &mut quant,
            &windows,
            &cfg,
            &run_dir,
            t.resume,
            stop,
            bar,
        )
    })?;

    // The log, its chart, and the reports beside the weights.
    let (log, mut extra) = TrainOpts::chart(
        &run_dir,
        "scale fine-tuning",
        "KL to the teacher per token",
        |l| l.kd,
    )?;
    let read =
        |p: &std::path::Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    let moved: f64 = {
        let (mut num, mut den) = (0f64, 0f64);
        for q in &quant {
            for (a, b) in q.stored_scales().iter().zip(&q.parts.scales) {
                num += ((a - b) as f64).powi(2);
                den += (*b as f64).powi(2);
            }
        }
        (num / den.max(f64::MIN_POSITIVE)).sqrt()
    };
    let report = serde_json::json!({
        "command": "finetune",
        "method": "e2e-qp (scales only)",
        "input": a.model,
        "teacher": a.teacher,
        "output": out,
        "run_dir": run_dir,
        "quantized_weights": quant.len(),
        "scales": quant.iter().map(|q| q.scales.len()).sum::<usize>(),
        "scales_relative_change": moved,
        "config": cfg,
        "train_windows": windows.train.len(),
        "summary": summary,
        "peak_rss_mib": shrink_methods::report::peak_rss().map(|b| b as f64 / (1u64 << 20) as f64),
    });
    extra.push((
        "finetune.json".to_string(),
        serde_json::to_vec_pretty(&report)?,
    ));
    // The quantizer's report, if any, says what the scales became.
    let qr = a.model.join("shrink-quantize.json");
    if qr.is_file() {
        let mut v: serde_json::Value = serde_json::from_slice(&read(&qr)?)
            .with_context(|| format!("{}: not JSON", qr.display()))?;
        let m = v["method"].as_str().unwrap_or("").to_string();
        v["method"] = format!("{m}+e2eqp").into();
        v["finetune"] = report.clone();
        extra.push((
            "shrink-quantize.json".into(),
            serde_json::to_vec_pretty(&v)?,
        ));
    }
    finetune::write(&input, &quant, out, &extra)?;
    let _ = std::fs::remove_file(shrink_train::reparam::state_path(&run_dir));
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let last = summary.last.as_ref();
    println!("wrote          {}", out.display());
    println!(
        "trained        {} scales of {} weights, {} steps × {} tokens; KL to the teacher {:.4} → {:.4}",
        report["scales"],
        quant.len(),
        summary.steps,
        t.batch * t.seq_len,
        log.first().map_or(f64::NAN, |l| l.kd),
        last.map_or(f64::NAN, |l| l.kd)
    );
    println!("scales moved   {:.2} % (relative RMS)", 100.0 * moved);
    println!(
        "time           {:.1} s ({:.0} tokens/s), teacher cache {:.1} s",
        summary.seconds, summary.tokens_per_s, summary.teacher_cache_seconds
    );
    Ok(())
}
