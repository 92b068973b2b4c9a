//! `shrink rotate`: the same model in a rotated basis that quantizes better
//! ([`shrink_methods::rotate`]), its logits checked against the input's.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use shrink_formats::float::FloatType;
use shrink_formats::int::{Granularity, IntSpec};
use shrink_methods::report::Report;
use shrink_methods::rotate::{Provenance, RotateSpec};
use shrink_methods::rtn::Rtn;
use shrink_methods::select::Selection;
use shrink_train::reparam;
use shrink_train::rotation::{self, RotationSpec};

use super::distill::training;
use super::finetune::TrainOpts;
use crate::common;
use crate::common::run_dir_of;

/// Arguments of `shrink rotate`.
#[derive(clap::Args)]
#[command(
    after_help = "The residual stream is rotated by a randomized Hadamard matrix (QuaRot's R1: each norm's weight folded into the linears that read it, the rotation absorbed into the embedding and into every linear that reads or writes the stream) and each head's values and output columns by another (R2). The output is an ordinary checkpoint of the same architecture (transformers loads it, `shrink export --to gguf` exports it) whose logits equal the input's to float rounding — checked on a prompt before it is committed. A tied LM head is untied when the final norm's weight is not all ones (the report counts the extra parameters). BERT and DistilBERT normalize after the residual addition: only --no-residual (the heads) applies there.\n\nRotation spreads outliers over every channel, so rounding to few bits loses less; `shrink quantize --rotate` rotates and quantizes in one command.\n\nWith --learn (SpinQuant, Llama family) the random rotation is only the start: a further rotation of the residual stream and one per block's heads are trained, kept orthogonal by Cayley steps, to bring the model quantized on --bits/--group-size (round to nearest, straight-through estimator) closer to the float model's next-token distribution (KL) on --text. The output is again an exact rotation of the input; quantize it with any method afterwards. The run directory (--run-dir, default OUT.run) holds train.jsonl and the checkpoint of the matrices; --resume continues a killed run.\n\nExamples:\n  shrink rotate smollm2-f32 -o smollm2-rot\n  shrink rotate smollm2-f32 --learn --text assets/lee_background.cor --bits 4 --group-size 64 --steps 100 -o smollm2-spin\n  shrink quantize smollm2-rot --method gptq --bits 4 --group-size 64 --calib assets/lee_background.cor -o smollm2-rot-gptq\n  shrink rotate tiny-bert --no-residual -o tiny-bert-rot"
)]
pub struct Args {
    /// Model to rotate (HF directory or .gguf; float weights).
    pub model: PathBuf,
    /// Output directory (must not exist).
    #[arg(short, long)]
    pub output: PathBuf,
    #[command(flatten)]
    pub rotation: RotationOpts,
    /// Storage dtype of the output's weights.
    #[arg(long, value_parser = parse_dtype, default_value = "f32")]
    pub dtype: FloatType,
    /// Train the rotations on the quantized model's loss (SpinQuant) instead of keeping the
    /// random ones; needs --text.
    #[arg(long, help_heading = "Learned rotation")]
    pub learn: bool,
    /// Integer bits of the grid the rotations are trained for (2-8).
    #[arg(long, default_value_t = 4, help_heading = "Learned rotation")]
    pub bits: u8,
    /// Group size of that grid.
    #[arg(long, default_value_t = 64, help_heading = "Learned rotation")]
    pub group_size: usize,
    /// Symmetric integers on that grid.
    #[arg(long, help_heading = "Learned rotation")]
    pub sym: bool,
    #[command(flatten)]
    pub train: TrainOpts,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// The rotation flags (shared with `shrink quantize --rotate`).
#[derive(clap::Args, Clone, Debug)]
pub struct RotationOpts {
    /// Leave the residual stream as it is (rotate the heads only).
    #[arg(long, help_heading = "Rotation")]
    pub no_residual: bool,
    /// Leave the heads' values and output columns as they are.
    #[arg(long, help_heading = "Rotation")]
    pub no_heads: bool,
    /// Seed of the random signs.
    #[arg(long, default_value_t = 0, help_heading = "Rotation")]
    pub rotate_seed: u64,
    /// Residual channels left out of the rotation: `auto` (those most norms suppress, where the
    /// stream's massive activations live), `none`, or a list such as `247,507`.
    #[arg(long, default_value = "auto", value_parser = parse_keep, help_heading = "Rotation")]
    pub keep_channels: Keep,
}

/// `--keep-channels`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keep(pub Option<Vec<usize>>);

fn parse_keep(s: &str) -> Result<Keep, String> {
    match s {
        "auto" => Ok(Keep(None)),
        "none" => Ok(Keep(Some(vec![]))),
        _ => s
            .split(',')
            .map(|c| {
                c.trim().parse::<usize>().map_err(|_| {
                    format!("--keep-channels {s:?}: use auto, none or channel numbers like 247,507")
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|v| Keep(Some(v))),
    }
}

impl RotationOpts {
    /// The library's spec.
    pub fn spec(&self) -> RotateSpec {
        RotateSpec {
            residual: !self.no_residual,
            heads: !self.no_heads,
            seed: self.rotate_seed,
            keep: self.keep_channels.0.clone(),
            given: Default::default(),
        }
    }
}

fn parse_dtype(s: &str) -> Result<FloatType, String> {
    FloatType::parse(s).ok_or_else(|| format!("unknown dtype {s:?}: use f32, bf16 or f16"))
}

/// Run `shrink rotate`.
pub fn run(a: Args) -> Result<()> {
    let r = if a.learn {
        learned(&a)?
    } else {
        if a.train.text.is_some() {
            bail!("--text is the training text of a learned rotation: add --learn");
        }
        let ckpt = common::open(&a.model)?;
        let bar = common::Bar::default();
        shrink_methods::rotate::rotate(&ckpt, &a.output, a.rotation.spec(), a.dtype, &bar)?
    };
    if a.json {
        return common::print_report(&r, true);
    }
    println!("wrote          {} ({})", r.output.display(), r.method);
    r.notes.iter().for_each(|l| println!("{l}"));
    println!("time           {:.1} s", r.seconds);
    Ok(())
}

/// `shrink rotate --learn`: the random rotation into a hidden directory, the rotations trained
/// on top of it ([`shrink_train::rotation`]), then the trained rotation applied to it into the
/// output.
fn learned(a: &Args) -> Result<Report> {
    let out = &a.output;
    if out.exists() {
        bail!(
            "{}: output already exists; shrink never overwrites (remove it or choose another -o)",
            out.display()
        );
    }
    let t = &a.train;
    let grid = Rtn::Int(IntSpec {
        bits: a.bits,
        symmetric: a.sym,
        granularity: Granularity::Group(a.group_size),
        scale_type: FloatType::F16,
    });
    let cfg = t.config(1.5, 0.0)?;
    let run_dir = run_dir_of(out, t.run_dir.as_deref());
    let input = common::open(&a.model)?;
    rotation::check_family(&shrink_models::Architecture::from_checkpoint(&input)?)?;
    let windows = t.windows(&input)?;
    drop(input);
    let start = Rotated::create(&a.model, out, &a.rotation)?;
    let kept: Vec<usize> = start.report.extra["residual"]["kept_channels"]
        .as_array()
        .map(|v| {
            v.iter()
                .filter_map(|c| c.as_u64())
                .map(|c| c as usize)
                .collect()
        })
        .unwrap_or_default();
    let ckpt = common::open(&start.dir)?;
    let spec = RotationSpec {
        residual: !a.rotation.no_residual,
        heads: !a.rotation.no_heads,
    };
    let selection = Selection::default();
    let (mut student, mut rot) = rotation::load(&ckpt, &kept, spec, &selection, Some(&grid))
        .with_context(|| format!("loading the rotated {}", a.model.display()))?;
    t.check_positions(&student)?;
    let teacher = shrink_models::Model::load(&ckpt)?;
    let method = format!("rotation-learned-{}", grid.name());
    let summary = training("rotate", |bar, stop| {
        reparam::train_with(
            &method,
            Some(&teacher),
            &mut student,
            &mut rot,
            &windows,
            &cfg,
            &run_dir,
            t.resume,
            stop,
            bar,
        )
    })?;
    drop((teacher, student));
    let (log, files) = TrainOpts::chart(
        &run_dir,
        "learned rotation",
        "KL of the quantized model to the float one per token",
        |l| l.kd,
    )?;
    eprintln!(
        "trained        {} rotation(s), {} steps × {} tokens on {}; KL of the {} model to the \
         float one {:.4} → {:.4}",
        usize::from(spec.residual) + if spec.heads { student_layers(&rot) } else { 0 },
        summary.steps,
        t.batch * t.seq_len,
        grid.name(),
        grid.name(),
        log.first().map_or(f64::NAN, |l| l.kd),
        log.last().map_or(f64::NAN, |l| l.kd)
    );
    let record = serde_json::json!({
        "grid": grid.name(),
        "config": cfg,
        "text": t.text,
        "train_windows": windows.train.len(),
        "summary": summary,
        "kl_first_step": log.first().map(|l| l.kd),
        "kl_last_step": log.last().map(|l| l.kd),
        "run_dir": run_dir,
        "peak_rss_mib": shrink_methods::report::peak_rss().map(|b| b as f64 / (1u64 << 20) as f64),
        "start": start.report.extra,
    });
    let mut given = rot.given();
    given.provenance = Some(Provenance {
        input: a.model.clone(),
        record,
        files,
    });
    let spec = RotateSpec {
        keep: Some(kept),
        given,
        ..a.rotation.spec()
    };
    let bar = common::Bar::default();
    let r = shrink_methods::rotate::rotate(&ckpt, out, spec, a.dtype, &bar)?;
    let _ = std::fs::remove_file(reparam::state_path(&run_dir));
    Ok(r)
}

/// How many head rotations a run trains (one per block).
fn student_layers(rot: &rotation::Rotation) -> usize {
    rot.given().heads.map_or(0, |h| h.len())
}

/// A rotated copy of `model` beside `output` for `shrink quantize --rotate`, removed when
/// dropped.
pub struct Rotated {
    /// The rotated model's directory.
    pub dir: PathBuf,
    /// The rotation's report.
    pub report: Report,
}

impl Rotated {
    /// Rotate `model` into a hidden directory beside `output`; the lines of the report go to
    /// stderr (stdout may carry JSON).
    pub fn create(model: &Path, output: &Path, opts: &RotationOpts) -> Result<Self> {
        let name = output
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "out".into());
        let parent = output.parent().filter(|p| !p.as_os_str().is_empty());
        let dir = parent
            .unwrap_or(Path::new("."))
            .join(format!(".{name}.rotated-{}", std::process::id()));
        let ckpt = common::open(model)?;
        let bar = common::Bar::default();
        let report = shrink_methods::rotate::rotate(&ckpt, &dir, opts.spec(), FloatType::F32, &bar)
            .with_context(|| format!("rotating {}", model.display()))?;
        eprintln!("rotated        {} ({})", model.display(), report.method);
        report.notes.iter().for_each(|l| eprintln!("{l}"));
        Ok(Rotated { dir, report })
    }
}

impl Drop for Rotated {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
