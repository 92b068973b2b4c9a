//! `shrink qat`: quantization-aware training ([`shrink_train::qat`]) — the float model trained
//! through the quantizer it will be stored with, then quantized for real by that quantizer.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use shrink_formats::float::FloatType;
use shrink_formats::int::{Granularity, IntSpec};
use shrink_formats::nf4::{Fp4Kind, Nf4Spec};
use shrink_methods::rtn::Rtn;
use shrink_methods::select::Selection;
use shrink_train::qat;
use shrink_train::reparam;

use super::distill::training;
use super::finetune::TrainOpts;
use crate::common;
use crate::common::run_dir_of;

/// The grids QAT trains towards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Grid {
    /// Integers of --bits in groups of --group-size, asymmetric unless --sym (compressed-tensors,
    /// as `shrink quantize --method int`).
    Int,
    /// bitsandbytes NF4 in blocks of --group-size (as `shrink quantize --method nf4`).
    Nf4,
    /// bitsandbytes FP4 in blocks of --group-size.
    Fp4,
}

/// Arguments of `shrink qat`.
#[derive(clap::Args)]
#[command(
    after_help = "Quantization-aware training: every decoder Linear keeps a float32 master copy, and the model runs on that copy quantized and dequantized by the very quantizer that writes the output (the grid, the group's scale and zero point recomputed from the master at every step). Rounding has no useful derivative, so the straight-through estimator passes the gradient through it unchanged to the master. The target is the float input's own next-token distribution (KL at temperature 1); embeddings, norms and the head stay frozen. When training ends the masters are quantized for real, so the output computes exactly what training measured, in the layout `shrink quantize` writes for the same grid (compare the two: post-training quantization against quantization-aware training).\n\nTrain on the calibration documents only (--text-format lee keeps documents 0..149 of a Lee corpus file). The run directory (--run-dir, default OUT.run) holds train.jsonl and the checkpoint of the masters (every --save-every steps and on Ctrl-C); --resume continues a killed run exactly.\n\nExamples:\n  shrink qat smollm2-f32 --bits 4 --group-size 64 --text assets/lee_background.cor --steps 100 -o smollm2-qat-int4\n  shrink qat smollm2-f32 --grid nf4 --double-quant --text assets/lee_background.cor -o smollm2-qat-nf4"
)]
pub struct Args {
    /// The float model to train and quantize.
    pub model: PathBuf,
    /// The grid trained towards and stored.
    #[arg(long, value_enum, default_value = "int")]
    pub grid: Grid,
    /// Integer bits (int grid, 2-8).
    #[arg(long, default_value_t = 4)]
    pub bits: u8,
    /// Group (int) or block (nf4, fp4) size.
    #[arg(long, default_value_t = 64)]
    pub group_size: usize,
    /// Symmetric integers (int grid).
    #[arg(long)]
    pub sym: bool,
    /// NF4/FP4: the block absmax quantized to 8 bits too (QLoRA's double quantization).
    #[arg(long)]
    pub double_quant: bool,
    #[command(flatten)]
    pub train: TrainOpts,
    /// Output directory (must not exist).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

impl Args {
    fn grid(&self) -> Result<Rtn> {
        Ok(match self.grid {
            Grid::Int => Rtn::Int(IntSpec {
                bits: self.bits,
                symmetric: self.sym,
                granularity: Granularity::Group(self.group_size),
                scale_type: FloatType::F16,
            }),
            g => {
                if self.bits != 4 {
                    bail!("--grid {g:?} is 4-bit; --bits {} does not apply", self.bits);
                }
                if self.sym {
                    bail!("--sym applies to --grid int");
                }
                Rtn::Nf4(Nf4Spec {
                    kind: if g == Grid::Nf4 {
                        Fp4Kind::Nf4
                    } else {
                        Fp4Kind::Fp4
                    },
                    block_size: self.group_size,
                    double_quant: self.double_quant,
                })
            }
        })
    }
}

/// Run `shrink qat`.
pub fn run(a: Args) -> Result<()> {
    let out = &a.output;
    if out.exists() {
        bail!(
            "{}: output already exists; shrink never overwrites (remove it or choose another -o)",
            out.display()
        );
    }
    if a.double_quant && a.grid == Grid::Int {
        bail!("--double-quant applies to --grid nf4 and fp4");
    }
    let grid = a.grid()?;
    let t = &a.train;
    let run_dir = run_dir_of(out, t.run_dir.as_deref());
    let ckpt = common::open(&a.model)?;
    let windows = t.windows(&ckpt)?;
    let cfg = t.config(2e-5, 1.0)?;
    let selection = Selection::default();
    let (mut student, mut masters) = qat::load(&ckpt, &selection, &grid)
        .with_context(|| format!("loading {}", a.model.display()))?;
    t.check_positions(&student)?;
    let teacher = shrink_models::Model::load(&ckpt)?;
    let method = format!("qat-{}", grid.name());
    let summary = training("qat", |bar, stop| {
        reparam::train(
            &method,
            Some(&teacher),
            &mut student,
            &mut masters,
            &windows,
            &cfg,
            &run_dir,
            t.resume,
            stop,
            bar,
        )
    })?;
    drop(teacher);
    let (log, files) = TrainOpts::chart(
        &run_dir,
        "quantization-aware training",
        "KL to the float model per token",
        |l| l.kd,
    )?;
    let changed = qat::changed_from_ptq(&ckpt, &masters)?;
    if !a.json {
        eprintln!(
            "trained        {} weights, {} steps × {} tokens; KL to the float model {:.4} → {:.4}",
            masters.len(),
            summary.steps,
            t.batch * t.seq_len,
            log.first().map_or(f64::NAN, |l| l.kd),
            log.last().map_or(f64::NAN, |l| l.kd)
        );
        eprintln!(
            "moved          {:.2} % of the weights to another grid point than rounding gives",
            100.0 * changed
        );
    }

    let record = serde_json::json!({
        "config": cfg,
        "text": t.text,
        "train_windows": windows.train.len(),
        "summary": summary,
        "kl_first_step": log.first().map(|l| l.kd),
        "kl_last_step": log.last().map(|l| l.kd),
        "changed_from_ptq": changed,
        "run_dir": run_dir,
        "peak_rss_mib": shrink_methods::report::peak_rss().map(|b| b as f64 / (1u64 << 20) as f64),
    });
    let bar = common::Bar::default();
    let report = qat::write(
        &ckpt,
        student,
        masters,
        Box::new(grid),
        &selection,
        (record, files),
        out,
        &bar,
    )?;
    let _ = std::fs::remove_file(reparam::state_path(&run_dir));
    common::print_report(&report, a.json)
}
