//! `shrink quantize --method gptq|awq`: the calibration text cut into samples, then the
//! library's layer-by-layer run ([`shrink_methods::calibrated`]) with a progress bar.

use std::path::{Path, PathBuf};

use anyhow::Result;
use shrink_formats::float::FloatType;
use shrink_methods::awq::AwqSpec;
use shrink_methods::calib::{draw_samples, CalibSpec};
use shrink_methods::calibrated::{self, Run};
use shrink_methods::gptq::GptqSpec;
use shrink_methods::select::Selection;

use crate::common;

/// Which part of the --calib file calibrated methods see.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CalibFormat {
    /// A Lee corpus file (one document per line): the lee-ppl-v1 calibration documents 0..149.
    Lee,
    /// The whole file as one text.
    Raw,
}

/// The calibration flags of the calibrated commands (quantize, prune).
#[derive(Debug, Clone, clap::Args)]
pub struct CalibOpts {
    /// Calibration text of calibrated methods (e.g. assets/lee_background.cor).
    #[arg(long, help_heading = "Calibration")]
    pub calib: Option<PathBuf>,
    /// Which part of --calib to use.
    #[arg(long, value_enum, default_value = "lee", help_heading = "Calibration")]
    pub calib_format: CalibFormat,
    /// Number of calibration samples.
    #[arg(long, default_value_t = 128, help_heading = "Calibration")]
    pub calib_samples: usize,
    /// Tokens per calibration sample.
    #[arg(long, default_value_t = 512, help_heading = "Calibration")]
    pub calib_seqlen: usize,
    /// Seed of the calibration samples' random starts.
    #[arg(long, default_value_t = 0, help_heading = "Calibration")]
    pub seed: u64,
}

impl CalibOpts {
    /// The calibration options, or an error saying that `what` needs --calib.
    pub fn args(&self, what: &str) -> Result<CalibArgs> {
        let Some(file) = &self.calib else {
            anyhow::bail!(
                "{what} is calibrated: give a calibration text with --calib FILE (e.g. --calib \
                 assets/lee_background.cor)"
            );
        };
        Ok(CalibArgs {
            file: file.clone(),
            lee: self.calib_format == CalibFormat::Lee,
            spec: CalibSpec {
                samples: self.calib_samples,
                seqlen: self.calib_seqlen,
                seed: self.seed,
            },
        })
    }
}

/// Where the calibration text comes from and how it is cut into samples.
#[derive(Debug, Clone)]
pub struct CalibArgs {
    /// The text file.
    pub file: PathBuf,
    /// Take the lee-ppl-v1 calibration documents (0..149) of a Lee corpus file, or the raw text.
    pub lee: bool,
    /// Samples, length and seed.
    pub spec: CalibSpec,
}

/// The token ids of calibration text `file` for `ckpt`'s tokenizer: the lee-ppl-v1
/// calibration documents of a Lee corpus file if `lee`, else the whole text.
pub fn calib_ids(ckpt: &shrink_io::Checkpoint, file: &Path, lee: bool) -> Result<Vec<u32>> {
    let raw = shrink_io::read_text(file)?;
    let text = if lee {
        shrink_eval::lee_texts(&raw)
            .map_err(|e| {
                anyhow::anyhow!(
                    "{}: {e} (use --calib-format raw for any other text)",
                    file.display()
                )
            })?
            .calibration
    } else {
        raw
    };
    Ok(common::tokenizer(ckpt)?.encode(&text, false)?)
}

/// The calibration samples (token ids) of `c` for `ckpt`'s tokenizer.
pub fn samples(ckpt: &shrink_io::Checkpoint, c: &CalibArgs) -> Result<Vec<Vec<u32>>> {
    let ids = calib_ids(ckpt, &c.file, c.lee)?;
    draw_samples(&ids, c.spec).map_err(|e| anyhow::anyhow!("{}: {e}", c.file.display()))
}

impl CalibArgs {
    /// The calibration as the report records it.
    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({"file": self.file, "lee": self.lee, "samples": self.spec.samples,
                           "seqlen": self.spec.seqlen, "seed": self.spec.seed})
    }
}

/// The compressed weights, the dense type and the report's destination of a calibrated run.
pub struct Target<'a> {
    /// The input checkpoint.
    pub model: &'a Path,
    /// The output directory.
    pub output: &'a Path,
    /// Which weights to compress.
    pub selection: &'a Selection,
    /// Storage type of the dense tensors.
    pub dense_dtype: FloatType,
    /// Print JSON rather than text.
    pub json: bool,
}

/// Calibrate on `calib` and run `method` (GPTQ or AWQ) on `t`, printing its report.
fn run(
    t: &Target,
    calib: &CalibArgs,
    method: impl FnOnce(&Run) -> shrink_methods::Result<shrink_methods::report::Report>,
) -> Result<()> {
    let ckpt = common::open(t.model)?;
    let samples = samples(&ckpt, calib)?;
    let bar = common::Bar::default();
    let r = Run {
        ckpt: &ckpt,
        output: t.output,
        samples: &samples,
        selection: t.selection,
        dense_dtype: t.dense_dtype,
        calibration: calib.describe(),
        progress: &bar,
    };
    let report = method(&r)?;
    common::print_report(&report, t.json)
}

/// Run GPTQ with `spec` on `t` and write the HF `gptq` layout.
pub fn run_gptq(t: &Target, calib: &CalibArgs, spec: GptqSpec, f64_hessian: bool) -> Result<()> {
    run(t, calib, |r| calibrated::gptq(r, spec, f64_hessian))
}

/// Run AWQ with `spec` on `t` and write AutoAWQ's GEMM layout.
pub fn run_awq(t: &Target, calib: &CalibArgs, spec: AwqSpec) -> Result<()> {
    run(t, calib, |r| calibrated::awq(r, spec))
}
