//! `shrink prune`: magnitude, Wanda and SparseGPT (unstructured or N:M, uniform or OWL, SparseGPT
//! optionally with joint quantization), layer by layer ([`shrink_methods::prune`]); structured
//! removal of layers, neurons or heads ([`shrink_methods::structured`]).

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, ValueEnum};
use shrink_formats::float::FloatType;
use shrink_formats::sparse_layout::SparseLayout;
use shrink_methods::calibrated::Run;
use shrink_methods::gptq::GptqSpec;
use shrink_methods::prune::{self, Profile, PruneMethod, PruneSpec};
use shrink_methods::select::Selection;
use shrink_methods::sparsity::Pattern;
use shrink_methods::structured::Structured;

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

/// How the pruned weights are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Dense with their zeros: loads anywhere.
    Dense,
    /// compressed-tensors' sparse-bitmask: non-zeros, a bitmask and row offsets.
    SparseBitmask,
    /// compressed-tensors' sparse-24-bitmask (2:4 only): two values of every four and a bitmask.
    #[value(name = "sparse-24-bitmask")]
    Sparse24Bitmask,
}

/// What structured pruning removes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StructuredKind {
    /// Whole layers (blocks), those whose output differs least from their input (ShortGPT).
    Layers,
    /// MLP intermediate channels, the least active (Minitron).
    Neurons,
    /// Attention heads (with GQA, whole key/value groups), the least active (Minitron).
    Heads,
}

/// How the sparsity is spread over the layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SparsityProfile {
    /// Every layer at --sparsity.
    Uniform,
    /// Outlier-weighted (OWL): layers with more outlier activations pruned less, the same mean.
    Owl,
}

/// Prune weights to zero (magnitude, Wanda, SparseGPT; unstructured or N:M), or remove whole
/// layers, MLP neurons or attention heads.
#[derive(Parser, Debug)]
#[command(
    after_help = "The linear layers of the decoder (or encoder) blocks are pruned; embeddings, norms and the LM head are kept (--include/--exclude change that). Calibrated methods (wanda, sparsegpt) go layer by layer, each layer seeing the outputs of the already-pruned layers before it, on every architecture: the Llama family, GPT-2, GPT-NeoX and BERT/DistilBERT encoders. The output stores every weight dense with its zeros (it loads anywhere); with --bits, SparseGPT quantizes the kept weights jointly and writes the HF gptq layout. Quantizing a pruned checkpoint afterwards (shrink quantize: int, nf4, gptq, awq) keeps its zeros. The unstructured methods keep their finished layers in OUT.run (every --keep-every seconds): after a kill, Ctrl-C or a full disk, the same command with --resume continues after the last kept layer.\n\n--pattern N:M zeroes N of every M consecutive weights of each row (2:4, 4:8), for all three methods.\n\nExamples:\n  shrink prune smollm2-f32 --method sparsegpt --sparsity 0.5 --calib assets/lee_background.cor -o smollm2-sparsegpt50\n  shrink prune smollm2-f32 --method sparsegpt --pattern 2:4 --gptaq --calib assets/lee_background.cor -o smollm2-2of4-gptaq\n  shrink prune smollm2-f32 --method wanda --pattern 2:4 --calib assets/lee_background.cor -o smollm2-wanda-2of4\n  shrink prune smollm2-f32 --method magnitude --sparsity 0.3 -o smollm2-mag30\n  shrink prune smollm2-f32 --method sparsegpt --pattern 2:4 --format sparse-24-bitmask --calib assets/lee_background.cor -o smollm2-2of4-ct\n  shrink prune smollm2-f32 --method sparsegpt --sparsity 0.5 --sparsity-profile owl --calib assets/lee_background.cor -o smollm2-owl\n  shrink prune smollm2-f32 --method sparsegpt --sparsity 0.5 --bits 4 --group-size 64 --calib assets/lee_background.cor -o smollm2-sparse-w4\n  shrink prune smollm2-f32 --structured layers --remove 6 --calib assets/lee_background.cor -o smollm2-24-layers\n  shrink prune smollm2-f32 --structured neurons --keep-ratio 0.75 --calib assets/lee_background.cor -o smollm2-mlp75\n  shrink prune smollm2-f32 --structured heads --keep-ratio 0.75 --calib assets/lee_background.cor -o smollm2-heads75\n\nStructured pruning writes a smaller dense model of the same architecture, config.json rewritten (layers, intermediate size, heads), loadable by transformers and exportable to GGUF. Heads are pruned on the Llama family only: GPT-2, GPT-NeoX and BERT derive the head width from the hidden size in transformers."
)]
pub struct Args {
    /// Input model: a Hugging Face directory or a .gguf file.
    pub model: PathBuf,
    /// Output directory (must not exist).
    #[arg(short, long)]
    pub output: PathBuf,
    /// The pruning method (unstructured or N:M).
    #[arg(long, value_enum, required_unless_present = "structured")]
    pub method: Option<Method>,
    /// Structured pruning instead: remove whole layers (--remove K, lowest Block Influence),
    /// MLP neurons or attention heads (--keep-ratio R, lowest mean activation); the result is a
    /// smaller dense model of the same architecture (calibrated).
    #[arg(
        long,
        value_enum,
        conflicts_with_all = ["method", "gptaq"],
        help_heading = "Structured"
    )]
    pub structured: Option<StructuredKind>,
    /// --structured layers: how many layers to remove.
    #[arg(long, help_heading = "Structured")]
    pub remove: Option<usize>,
    /// --structured neurons|heads: the share kept, in (0, 1] (heads: whole key/value groups).
    #[arg(long, help_heading = "Structured")]
    pub keep_ratio: Option<f64>,
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
    /// GPTAQ's asymmetric calibration (SparseGPT only).
    #[command(flatten)]
    pub gptaq: super::calibrated::GptaqOpts,
    /// SparseGPT: also quantize the kept weights to this many bits (2, 3, 4, 8), jointly.
    #[arg(long, help_heading = "SparseGPT")]
    pub bits: Option<u8>,
    /// SparseGPT with --bits: columns per group of scales.
    #[arg(long, default_value_t = 64, help_heading = "SparseGPT")]
    pub group_size: usize,
    /// SparseGPT with --bits: symmetric grid.
    #[arg(long, help_heading = "SparseGPT")]
    pub sym: bool,
    /// How the pruned weights are stored (compressed-tensors' sparse layouts load in
    /// compressed-tensors / vLLM and back in shrink).
    #[arg(
        long,
        value_enum,
        default_value = "dense",
        conflicts_with = "structured"
    )]
    pub format: Format,
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
fn spec(a: &Args, method: Method) -> Result<PruneSpec> {
    let method = match method {
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
    s.gptaq_alpha = a.gptaq.alpha();
    s.dequantize = a.dequantize;
    s.layout = match a.format {
        Format::Dense => None,
        Format::SparseBitmask => Some(SparseLayout::Bitmask),
        Format::Sparse24Bitmask => Some(SparseLayout::Sparse24Bitmask),
    };
    s.quant = a.bits.map(|bits| GptqSpec {
        bits,
        group_size: a.group_size,
        sym: a.sym,
        damp: a.damp,
        ..Default::default()
    });
    Ok(s)
}

/// The structured removal the flags ask for.
fn structured(a: &Args, kind: StructuredKind) -> Result<Structured> {
    let ratio = || {
        a.keep_ratio
            .ok_or_else(|| anyhow::anyhow!("--structured {kind:?} needs --keep-ratio R"))
    };
    Ok(match kind {
        StructuredKind::Layers => Structured::Layers {
            remove: a
                .remove
                .ok_or_else(|| anyhow::anyhow!("--structured layers needs --remove K"))?,
        },
        StructuredKind::Neurons => Structured::Neurons {
            keep_ratio: ratio()?,
        },
        StructuredKind::Heads => Structured::Heads {
            keep_ratio: ratio()?,
        },
    })
}

/// Run `shrink prune`.
pub fn run(a: Args) -> Result<()> {
    let (spec, what) = match (a.method, a.structured) {
        (Some(m), None) => (Some(spec(&a, m)?), None),
        (None, Some(k)) => (None, Some(structured(&a, k)?)),
        _ => anyhow::bail!("give one of --method or --structured"),
    };
    let selection = Selection {
        include: a.include.clone(),
        exclude: a.exclude.clone(),
    };
    if spec.is_none() {
        a.calib.long.refuse("--structured")?;
    }
    let ckpt = common::open(&a.model)?;
    let (samples, calibration) = if spec.is_none_or(|s| s.method.calibrated()) {
        let what = match &spec {
            Some(s) => format!("--method {}", s.method.name()),
            None => "--structured".to_string(),
        };
        let c = a.calib.args(&what)?;
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
        run_dir: match spec {
            Some(_) => Some(a.calib.long.run_dir(&a.output)?),
            None => None,
        },
    };
    let report = match (&spec, what) {
        (Some(s), _) => prune::prune(&run, s)?,
        (None, Some(w)) => shrink_methods::structured::prune(&run, w)?,
        (None, None) => unreachable!("one of the two was required above"),
    };
    common::print_report(&report, a.json)
}
