//! `shrink rotate`: the same model in a rotated basis that quantizes better
//! ([`shrink_methods::rotate`]), its logits checked against the input's.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use shrink_formats::float::FloatType;
use shrink_methods::report::Report;
use shrink_methods::rotate::RotateSpec;

use crate::common;

/// Arguments of `shrink rotate`.
#[derive(clap::Args)]
#[command(
    after_help = "The residual stream is rotated by a randomized Hadamard matrix (QuaRot's R1: each norm's weight folded into the linears that read it, the rotation absorbed into the embedding and into every linear that reads or writes the stream) and each head's values and output columns by another (R2). The output is an ordinary checkpoint of the same architecture (transformers loads it, `shrink export --to gguf` exports it) whose logits equal the input's to float rounding — checked on a prompt before it is committed. A tied LM head is untied when the final norm's weight is not all ones (the report counts the extra parameters). BERT and DistilBERT normalize after the residual addition: only --no-residual (the heads) applies there.\n\nRotation spreads outliers over every channel, so rounding to few bits loses less; `shrink quantize --rotate` rotates and quantizes in one command.\n\nExamples:\n  shrink rotate smollm2-f32 -o smollm2-rot\n  shrink quantize smollm2-rot --method gptq --bits 4 --group-size 64 --calib assets/lee_background.cor -o smollm2-rot-gptq\n  shrink rotate tiny-bert --no-residual -o tiny-bert-rot"
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
    let ckpt = common::open(&a.model)?;
    let bar = common::Bar::default();
    let r = shrink_methods::rotate::rotate(&ckpt, &a.output, a.rotation.spec(), a.dtype, &bar)?;
    if a.json {
        return common::print_report(&r, true);
    }
    println!("wrote          {} ({})", r.output.display(), r.method);
    r.notes.iter().for_each(|l| println!("{l}"));
    println!("time           {:.1} s", r.seconds);
    Ok(())
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
