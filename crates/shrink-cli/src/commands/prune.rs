//! `shrink prune`: magnitude, Wanda and SparseGPT (unstructured or N:M, uniform or OWL, SparseGPT
//! optionally with joint quantization), layer by layer ([`shrink_methods::prune`]).

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, ValueEnum};
use shrink_formats::float::FloatType;
use shrink_methods::calibrated::Run;
use shrink_methods::gptq::GptqSpec;
use shrink_methods::prune::{self, Profile, PruneMethod, PruneSpec};
use shrink_methods::select::Selection;
use shrink_methods::sparsity::Pattern;

use crate::common;

/// The pruning method.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Method {
    /// The lowest |W| of each weight tensor; no calibration.
    Magnitude,
    /// Wanda: the lowest |W_ij|·‖X_j‖ of each output row (calibrated; no weight update).
    Wanda,
    /// SparseGPT: mask by w²/[H⁻¹]ᵢᵢ², the kept weights updated to compensate (calibrated).
    Sparsegpt,
}

/// How the sparsity is spread over the layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SparsityProfile {
    /// Every layer at --sparsity.
    Uniform,
    /// Outlier-weighted (OWL): layers with more outlier activations pruned less, the same mean.
    Owl,
}

/// Prune weights to zero: magnitude, Wanda, SparseGPT; unstructured or N:M.
#[derive(Parser, Debug)]
#[command(
    after_help = "The linear layers of the decoder (or encoder) blocks are pruned; embeddings, norms and the LM head are kept (--include/--exclude change that). Calibrated methods (wanda, sparsegpt) go layer by layer, each layer seeing the outputs of the already-pruned layers before it, on every architecture: the Llama family, GPT-2, GPT-NeoX and BERT/DistilBERT encoders. The output stores every weight dense with its zeros (it loads anywhere); with --bits, SparseGPT quantizes the kept weights jointly and writes the HF gptq layout. Quantizing a pruned checkpoint afterwards (shrink quantize: int, nf4, gptq, awq) keeps its zeros.\n\n--pattern N:M zeroes N of every M consecutive weights of each row (2:4, 4:8), for all three methods.\n\nExamples:\n  shrink prune smollm2-f32 --method sparsegpt --sparsity 0.5 --calib assets/lee_background.cor -o smollm2-sparsegpt50\n  shrink prune smollm2-f32 --method wanda --pattern 2:4 --calib assets/lee_background.cor -o smollm2-wanda-2of4\n  shrink prune smollm2-f32 --method magnitude --sparsity 0.3 -o smollm2-mag30\n  shrink prune smollm2-f32 --method sparsegpt --sparsity 0.5 --sparsity-profile owl --calib assets/lee_background.cor -o smollm2-owl\n  shrink prune smollm2-f32 --method sparsegpt --sparsity 0.5 --bits 4 --group-size 64 --calib assets/lee_background.cor -o smollm2-sparse-w4"
)]
pub struct Args {
    /// Input model: a Hugging Face directory or a .gguf file.
    pub model: PathBuf,
    /// Output directory (must not exist).
    #[arg(short, long)]
    pub output: PathBuf,
    /// The pruning method.
    #[arg(long, value_enum)]
    pub method: Method,
    /// Fraction of each pruned weight's entries set to zero, in (0, 1) (ignored with --pattern).
    #[arg(long, default_value_t = 0.5, allow_negative_numbers = true)]
    pub sparsity: f64,
    /// N:M sparsity: N of every M consecutive weights of a row are zero (2:4, 4:8).
    #[arg(long, value_name = "N:M")]
    pub pattern: Option<String>,
    /// How the sparsity is spread over the layers.
    #[arg(long, value_enum, default_value = "uniform")]
    pub sparsity_profile: SparsityProfile,
    /// OWL: outlier threshold, as a multiple of a layer's mean |W|·‖X‖ score.
    #[arg(long, default_value_t = 5.0, help_heading = "OWL")]
    pub owl_m: f64,
    /// OWL: largest deviation of a layer's sparsity from --sparsity.
    #[arg(long, default_value_t = 0.08, help_heading = "OWL")]
    pub owl_lambda: f64,
    /// SparseGPT: columns per block (the unstructured mask is chosen per block).
    #[arg(long, default_value_t = 128, help_heading = "SparseGPT")]
    pub blocksize: usize,
    /// SparseGPT: dampening, as a fraction of the mean Hessian diagonal.
    #[arg(long, default_value_t = 0.01, help_heading = "SparseGPT")]
    pub damp: f64,
    /// SparseGPT: also quantize the kept weights to this many bits (2, 3, 4, 8), jointly.
    #[arg(long, help_heading = "SparseGPT")]
    pub bits: Option<u8>,
    /// SparseGPT with --bits: columns per group of scales.
    #[arg(long, default_value_t = 64, help_heading = "SparseGPT")]
    pub group_size: usize,
    /// SparseGPT with --bits: symmetric grid.
    #[arg(long, help_heading = "SparseGPT")]
    pub sym: bool,
    /// Storage type of the output's float tensors.
    #[arg(long, value_parser = parse_float, default_value = "f32")]
    pub dense_dtype: FloatType,
    /// Also prune these weights (glob over names).
    #[arg(long)]
    pub include: Vec<String>,
    /// Leave these weights unpruned (glob, e.g. '*.down_proj').
    #[arg(long)]
    pub exclude: Vec<String>,
    /// Prune an input that stores its weights quantized (GGUF blocks, GPTQ, ...) after
    /// dequantizing them; refused otherwise.
    #[arg(long)]
    pub dequantize: bool,
    #[command(flatten)]
    pub calib: super::calibrated::CalibOpts,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

fn parse_float(s: &str) -> Result<FloatType, String> {
    FloatType::parse(s).ok_or_else(|| format!("unknown dtype {s:?}: use f32, bf16 or f16"))
}

/// The library's spec of the flags.
fn spec(a: &Args) -> Result<PruneSpec> {
    let method = match a.method {
        Method::Magnitude => PruneMethod::Magnitude,
        Method::Wanda => PruneMethod::Wanda,
        Method::Sparsegpt => PruneMethod::SparseGpt,
    };
    let mut s = PruneSpec::new(method, Pattern::new(a.sparsity, a.pattern.as_deref())?);
    if a.sparsity_profile == SparsityProfile::Owl {
        s.profile = Profile::Owl {
            m: a.owl_m,
            lambda: a.owl_lambda,
        };
    }
    s.block_size = a.blocksize;
    s.damp = a.damp;
    s.dequantize = a.dequantize;
    s.quant = a.bits.map(|bits| GptqSpec {
        bits,
        group_size: a.group_size,
        sym: a.sym,
        damp: a.damp,
        ..Default::default()
    });
    Ok(s)
}

/// Run `shrink prune`.
pub fn run(a: Args) -> Result<()> {
    let spec = spec(&a)?;
    let selection = Selection {
        include: a.include.clone(),
        exclude: a.exclude.clone(),
    };
    let ckpt = common::open(&a.model)?;
    let (samples, calibration) = if spec.method.calibrated() {
        let c = a.calib.args(&format!("--method {}", spec.method.name()))?;
        (super::calibrated::samples(&ckpt, &c)?, c.describe())
    } else {
        (Vec::new(), serde_json::Value::Null)
    };
    let bar = common::Bar::default();
    let run = Run {
        ckpt: &ckpt,
        output: &a.output,
        samples: &samples,
        selection: &selection,
        dense_dtype: a.dense_dtype,
        calibration,
        progress: &bar,
    };
    let report = prune::prune(&run, &spec)?;
    common::print_report(&report, a.json)
}
