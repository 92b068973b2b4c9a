//! `shrink quantize --method gptq|awq`: the calibration text cut into samples, then the
//! library's layer-by-layer run ([`shrink_methods::calibrated`]) with a progress bar.

use std::path::{Path, PathBuf};

use anyhow::Result;
use shrink_formats::float::FloatType;
use shrink_methods::awq::AwqSpec;
use shrink_methods::calib::{draw_samples, CalibSpec};
use shrink_methods::calibrated::{self, Run};
use shrink_methods::gptq::GptqSpec;
use shrink_methods::resume::RunDir;
use shrink_methods::select::Selection;

use crate::common;

/// Which part of the --calib file calibrated methods see.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CalibFormat {
    /// A Lee corpus file (one document per line): the lee-ppl-v1 calibration documents 0..149.
    Lee,
    /// The whole file as one text.
    Raw,
    /// Token ids, JSON `[[id, ...], ...]`: the samples exactly (another tool's, to compare on
    /// the same calibration); --calib-samples/--calib-seqlen/--seed do not apply.
    Ids,
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
    /// Resuming a long run.
    #[command(flatten)]
    pub long: LongRun,
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
            format: self.calib_format,
            spec: CalibSpec {
                samples: self.calib_samples,
                seqlen: self.calib_seqlen,
                seed: self.seed,
            },
            long: self.long.clone(),
        })
    }
}

/// GPTAQ's asymmetric calibration (Li et al. 2025), for the methods that update weights
/// (quantize's GPTQ, prune's SparseGPT).
#[derive(Debug, Clone, clap::Args)]
pub struct GptaqOpts {
    /// GPTQ / SparseGPT → GPTAQ's asymmetric calibration: each layer fitted to the float
    /// model's output rather than to its own, already drifted, input — the float model runs
    /// beside the compressed one on the calibration samples (twice the forward work).
    #[arg(long, help_heading = "GPTAQ")]
    pub gptaq: bool,
    /// GPTAQ: weight α of the asymmetric term (the reference's 0.25).
    #[arg(
        long,
        default_value_t = 0.25,
        help_heading = "GPTAQ",
        requires = "gptaq"
    )]
    pub gptaq_alpha: f64,
}

impl GptaqOpts {
    /// α when --gptaq is given.
    pub fn alpha(&self) -> Option<f64> {
        self.gptaq.then_some(self.gptaq_alpha)
    }
}

/// Where the calibration text comes from and how it is cut into samples.
#[derive(Debug, Clone)]
pub struct CalibArgs {
    /// The text file.
    pub file: PathBuf,
    /// Which part of the file, or token ids.
    pub format: CalibFormat,
    /// Samples, length and seed.
    pub spec: CalibSpec,
    /// Resuming the run.
    pub long: LongRun,
}

/// The flags of a layer-by-layer run that can be resumed (quantize, prune, imatrix).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LongRun {
    /// Continue a killed or failed layer-by-layer run (gptq, awq, wanda, sparsegpt, imatrix)
    /// after its last kept layer: run the same command with the same flags and --resume.
    #[arg(long, help_heading = "Long runs")]
    pub resume: bool,
    /// Where the finished layers are kept while the run goes (default OUT.run beside the
    /// output; removed once the output is written).
    #[arg(long, value_name = "DIR", help_heading = "Long runs")]
    pub run_dir: Option<PathBuf>,
    /// Keep the finished layers at most every SECONDS (default 30; 0: after every layer); a
    /// resumed run repeats at most that much work.
    #[arg(long, value_name = "SECONDS", help_heading = "Long runs")]
    pub keep_every: Option<f64>,
}

impl LongRun {
    /// Where a run writing `output` keeps its finished layers.
    pub fn run_dir(&self, output: &Path) -> Result<RunDir> {
        let seconds = self.keep_every.unwrap_or(30.0);
        let every = std::time::Duration::try_from_secs_f64(seconds)
            .map_err(|_| anyhow::anyhow!("--keep-every {seconds}: give a number of seconds ≥ 0"))?;
        Ok(RunDir {
            dir: common::run_dir_of(output, self.run_dir.as_deref()),
            resume: self.resume,
            every,
        })
    }

    /// Refuse these flags for `what`, which keeps no finished layers.
    pub fn refuse(&self, what: &str) -> Result<()> {
        if self.resume || self.run_dir.is_some() || self.keep_every.is_some() {
            anyhow::bail!(
                "--resume, --run-dir and --keep-every apply to the layer-by-layer methods (gptq, \
                 awq, wanda, sparsegpt, magnitude, imatrix); {what} keeps no finished layers"
            );
        }
        Ok(())
    }
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
    if c.format == CalibFormat::Ids {
        let v = ids_file(&c.file)?;
        let n = common::tokenizer(ckpt)?.vocab_size();
        if let Some(id) = v.iter().flatten().find(|&&id| id as usize >= n) {
            anyhow::bail!(
                "{}: token id {id} is outside the model's vocabulary of {n}",
                c.file.display()
            );
        }
        return Ok(v);
    }
    let ids = calib_ids(ckpt, &c.file, c.format == CalibFormat::Lee)?;
    draw_samples(&ids, c.spec).map_err(|e| anyhow::anyhow!("{}: {e}", c.file.display()))
}

/// Samples given as token ids in a JSON file, `[[id, ...], ...]`.
fn ids_file(file: &Path) -> Result<Vec<Vec<u32>>> {
    let text = shrink_io::read_text(file)?;
    let v: Vec<Vec<u32>> = serde_json::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "{}: not token ids as JSON [[id, ...], ...] (--calib-format ids): {e}",
            file.display()
        )
    })?;
    if v.is_empty() || v.iter().any(Vec::is_empty) {
        anyhow::bail!("{}: no samples, or an empty one", file.display());
    }
    Ok(v)
}

impl CalibArgs {
    /// The calibration as the report records it.
    pub fn describe(&self) -> serde_json::Value {
        let format = format!("{:?}", self.format).to_lowercase();
        if self.format == CalibFormat::Ids {
            return serde_json::json!({"file": self.file, "format": format});
        }
        serde_json::json!({"file": self.file, "format": format, "samples": self.spec.samples,
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
    /// Keep finished layers for --resume (not for a rotated copy made anew by each run).
    pub keep_layers: bool,
}

/// Calibrate on `calib` and run `method` (GPTQ, AWQ, Block-AP) on `t`, printing its report.
fn run<E: std::error::Error + Send + Sync + 'static>(
    t: &Target,
    calib: &CalibArgs,
    method: impl FnOnce(&Run) -> std::result::Result<shrink_methods::report::Report, E>,
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
        run_dir: t
            .keep_layers
            .then(|| calib.long.run_dir(t.output))
            .transpose()?,
    };
    let report = method(&r)?;
    common::print_report(&report, t.json)
}

/// Run GPTQ with `spec` on `t` and write the HF `gptq` layout.
pub fn run_gptq(t: &Target, calib: &CalibArgs, spec: GptqSpec, f64_hessian: bool) -> Result<()> {
    run(t, calib, |r| calibrated::gptq(r, spec, f64_hessian))
}

/// Run Block-AP with `spec` on `t` and write the HF `gptq` layout.
pub fn run_block_ap(
    t: &Target,
    calib: &CalibArgs,
    spec: shrink_train::block_ap::BlockApSpec,
) -> Result<()> {
    run(t, calib, |r| shrink_train::block_ap::quantize(r, &spec))
}

/// Run AWQ with `spec` on `t` and write AutoAWQ's GEMM layout.
pub fn run_awq(t: &Target, calib: &CalibArgs, spec: AwqSpec) -> Result<()> {
    run(t, calib, |r| calibrated::awq(r, spec))
}
