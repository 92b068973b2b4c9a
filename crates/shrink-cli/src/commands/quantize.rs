//! `shrink quantize`: round-to-nearest quantization, streamed one weight at a time, written in
//! the layouts other tools read (compressed-tensors for integers, bitsandbytes for NF4/FP4).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use shrink_formats::float::FloatType;
use shrink_formats::hqq_layout::HqqSpec;
use shrink_formats::int::{Granularity, IntSpec};
use shrink_formats::nf4::{Fp4Kind, Nf4Spec};
use shrink_methods::hqq::HqqOptions;
use shrink_methods::per_tensor::{write_encoded, Hqq, Job, QuantizerEncoder, WeightQuantizer};
use shrink_methods::rtn::Rtn;
use shrink_methods::select::Selection;

use crate::common;

/// Quantization methods.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Method {
    /// Symmetric 8-bit: scale = absmax / 127 (per tensor unless --granularity says otherwise).
    AbsmaxInt8,
    /// Asymmetric 8-bit with a zero point (per tensor unless --granularity says otherwise).
    ZeropointInt8,
    /// Integers of --bits (2, 3, 4, 5, 6 or 8), --group-size (default 64), asymmetric unless
    /// --sym.
    Int,
    /// bitsandbytes NF4 (blocks of --block-size, optional --double-quant).
    Nf4,
    /// bitsandbytes FP4.
    Fp4,
    /// LLM.int8(): row-wise int8 weights (bitsandbytes 8-bit layout); at inference, activation
    /// features above --threshold go through a float matmul, the rest int8 × int8 → int32.
    LlmInt8,
    /// Dynamic int8 (torch's quantize_dynamic for Linear): symmetric int8 weights per channel,
    /// activations quantized to int8 per token at run time, integer matmul (compressed-tensors
    /// `int-quantized` W8A8 layout).
    DynamicInt8,
    /// GPTQ: integers of --bits (2, 3, 4, 8) in groups of --group-size, each column's rounding
    /// error compensated through the inverse Hessian of calibration activations (--calib);
    /// written in the Hugging Face `gptq` layout.
    Gptq,
    /// AWQ: activation-aware per-input-channel scales (grid search on calibration activations,
    /// folded into the preceding norm / linear), clipping search, then 4-bit groups of
    /// --group-size; written in AutoAWQ's GEMM layout.
    Awq,
    /// HQQ (half-quadratic quantization): --bits (1, 2, 3, 4, 8) in groups of --group-size
    /// along --axis, each group's float zero point optimised for a sparsity-promoting ℓp
    /// error; no calibration (shrink's `shrink-hqq` layout).
    Hqq,
    /// Block-AP (EfficientQAT's first phase): block by block, each Linear's weights, step sizes
    /// and zero points trained together through the rounding (straight-through) to match the
    /// float block's outputs on the calibration samples (--calib); integers of --bits (2, 3,
    /// 4, 8) in groups of --group-size, written in the Hugging Face `gptq` layout, which
    /// `shrink finetune` (E2E-QP) then takes.
    BlockAp,
    /// llama.cpp Q4_0 (GGUF output, llama-quantize's per-tensor mix).
    #[value(name = "q4_0")]
    Q4_0,
    /// llama.cpp Q4_1 (GGUF output, llama-quantize's per-tensor mix).
    #[value(name = "q4_1")]
    Q4_1,
    /// llama.cpp Q5_0 (GGUF output, llama-quantize's per-tensor mix).
    #[value(name = "q5_0")]
    Q5_0,
    /// llama.cpp Q5_1 (GGUF output, llama-quantize's per-tensor mix).
    #[value(name = "q5_1")]
    Q5_1,
    /// llama.cpp Q8_0 (GGUF output, llama-quantize's per-tensor mix).
    #[value(name = "q8_0")]
    Q8_0,
    /// llama.cpp Q2_K (GGUF output, llama-quantize's per-tensor mix).
    #[value(name = "q2_k")]
    Q2K,
    /// llama.cpp Q2_K_S (GGUF output, llama-quantize's per-tensor mix).
    #[value(name = "q2_k_s")]
    Q2KS,
    /// llama.cpp Q3_K_S (GGUF output, llama-quantize's per-tensor mix).
    #[value(name = "q3_k_s")]
    Q3KS,
    /// llama.cpp Q3_K_M (GGUF output, llama-quantize's per-tensor mix).
    #[value(name = "q3_k_m", alias = "q3_k")]
    Q3KM,
    /// llama.cpp Q3_K_L (GGUF output, llama-quantize's per-tensor mix).
    #[value(name = "q3_k_l")]
    Q3KL,
    /// llama.cpp Q4_K_S (GGUF output, llama-quantize's per-tensor mix).
    #[value(name = "q4_k_s")]
    Q4KS,
    /// llama.cpp Q4_K_M (GGUF output, llama-quantize's per-tensor mix).
    #[value(name = "q4_k_m", alias = "q4_k")]
    Q4KM,
    /// llama.cpp Q5_K_S (GGUF output, llama-quantize's per-tensor mix).
    #[value(name = "q5_k_s")]
    Q5KS,
    /// llama.cpp Q5_K_M (GGUF output, llama-quantize's per-tensor mix).
    #[value(name = "q5_k_m", alias = "q5_k")]
    Q5KM,
    /// llama.cpp Q6_K (GGUF output, llama-quantize's per-tensor mix).
    #[value(name = "q6_k")]
    Q6K,
    /// llama.cpp IQ4_NL (GGUF output, llama-quantize's per-tensor mix).
    #[value(name = "iq4_nl")]
    Iq4Nl,
    /// llama.cpp IQ4_XS (GGUF output, llama-quantize's per-tensor mix).
    #[value(name = "iq4_xs")]
    Iq4Xs,
}

/// GPTQ's column order (see --act-order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ActOrder {
    /// Columns in their own order.
    None,
    /// Decreasing Hessian diagonal, static contiguous groups.
    Static,
    /// Decreasing Hessian diagonal, groups in that order (desc_act with g_idx).
    Group,
}

impl Method {
    /// The llama.cpp preset name of a GGUF method (`None` for the others).
    pub fn ggml_name(self) -> Option<String> {
        let name = self.to_possible_value()?.get_name().to_string();
        shrink_methods::ggml_mix::GgmlPreset::from_name(&name).map(|_| name)
    }
}

/// Granularity of integer scales.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Gran {
    /// One scale per tensor.
    Tensor,
    /// One scale per output channel (row).
    Channel,
    /// One scale per --group-size elements of a row.
    Group,
}

/// Arguments of `shrink quantize`.
#[derive(clap::Args)]
#[command(
    after_help = "By default every linear layer of the decoder (or encoder) blocks is quantized; embeddings, norms and the LM head keep their precision (--include/--exclude change that, e.g. --exclude '*.down_proj' --include lm_head). GPTQ and AWQ go layer by layer on every architecture: the Llama family, GPT-2, GPT-NeoX and BERT/DistilBERT encoders. They keep their finished layers in OUT.run (every --keep-every seconds): after a kill, Ctrl-C or a full disk, the same command with --resume continues after the last kept layer and writes the same bytes.\n\nExamples:\n  shrink quantize assets/SmolLM2-135M-Instruct.Q4_1.gguf --method nf4 --double-quant -o smollm2-nf4\n  shrink quantize assets/SmolLM2-135M-Instruct.Q4_1.gguf --method int --bits 4 --group-size 64 -o smollm2-int4-g64\n  shrink quantize my-model --method absmax-int8 --granularity channel -o my-model-int8\n  shrink quantize my-model --method llm-int8 --threshold 6 -o my-model-llm-int8\n  shrink quantize my-model --method dynamic-int8 -o my-model-w8a8\n  shrink quantize assets/SmolLM2-135M-Instruct.Q4_1.gguf --method hqq --bits 3 --group-size 64 -o smollm2-hqq3\n  shrink quantize assets/SmolLM2-135M-Instruct.Q4_1.gguf --method gptq --bits 4 --group-size 64 --calib assets/lee_background.cor -o smollm2-gptq"
)]
pub struct Args {
    /// Model to quantize (HF directory or .gguf).
    pub model: PathBuf,
    /// Output directory (must not exist).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Method.
    #[arg(long, value_enum)]
    pub method: Method,
    /// Bits per weight: --method int 2-8 (default 4), gptq 2/3/4/8, awq 4, hqq 1/2/3/4/8.
    #[arg(long)]
    pub bits: Option<u8>,
    /// Scale granularity for integer methods.
    #[arg(long, value_enum)]
    pub granularity: Option<Gran>,
    /// Elements per scale group (int with --granularity group, gptq, awq, hqq; default 64).
    #[arg(long)]
    pub group_size: Option<usize>,
    /// Symmetric (absmax) integers.
    #[arg(long, conflicts_with = "asym")]
    pub sym: bool,
    /// Asymmetric (zero-point) integers.
    #[arg(long)]
    pub asym: bool,
    /// Storage type of the scales of integer methods (f16 default; f32 for per-tensor).
    #[arg(long, value_parser = parse_float)]
    pub scale_dtype: Option<FloatType>,
    /// LLM.int8() activation outlier threshold.
    #[arg(long, default_value_t = 6.0)]
    pub threshold: f64,
    /// NF4/FP4 block size.
    #[arg(long, default_value_t = 64)]
    pub block_size: usize,
    /// NF4/FP4: quantize the block absmax to 8 bits too (QLoRA, ≈ 4.127 bits/weight).
    #[arg(long)]
    pub double_quant: bool,
    /// Storage type of the tensors left unquantized.
    #[arg(long, value_parser = parse_float, default_value = "f32")]
    pub dense_dtype: FloatType,
    /// Also quantize these weights (glob over names, e.g. lm_head or 'model.embed_tokens').
    #[arg(long)]
    pub include: Vec<String>,
    /// Leave these weights unquantized (glob, e.g. '*.down_proj').
    #[arg(long)]
    pub exclude: Vec<String>,
    #[command(flatten)]
    pub calib: super::calibrated::CalibOpts,
    /// GPTQ: column order. `static` (default, as llm-compressor): columns in order of
    /// decreasing Hessian diagonal, group scales from the weight before any update, groups
    /// contiguous; `group` (AutoGPTQ's desc_act): groups formed in that order, stored with
    /// g_idx; `none`: columns in their own order. With `group` and `none` a group's scales
    /// come from the weight as it stood when the block holding its first column began, as the
    /// reference gptq.py computes them.
    #[arg(long, value_enum, default_value = "static", help_heading = "GPTQ")]
    pub act_order: ActOrder,
    /// GPTQ: dampening, as a fraction of the mean Hessian diagonal.
    #[arg(long, default_value_t = 0.01, help_heading = "GPTQ")]
    pub damp: f64,
    /// GPTQ: accumulate the Hessian in float64 (float32 by default).
    #[arg(long, help_heading = "GPTQ")]
    pub hessian_f64: bool,
    /// GPTAQ's asymmetric calibration (GPTQ only).
    #[command(flatten)]
    pub gptaq: super::calibrated::GptaqOpts,
    /// GPTQ: search each group's clipping range (the range shrunk by up to 80 % in steps of 1 %,
    /// least Σ|q − w|^2.4) instead of its full min/max.
    #[arg(long, help_heading = "GPTQ")]
    pub clip_search: bool,
    /// AWQ: calibration samples the scale search's losses are computed on (statistics use
    /// them all).
    #[arg(long, default_value_t = 16, help_heading = "AWQ")]
    pub awq_search_samples: usize,
    /// Block-AP: passes over the calibration samples per block.
    #[arg(long, default_value_t = 2, help_heading = "Block-AP")]
    pub epochs: usize,
    /// Block-AP: samples per optimiser step.
    #[arg(long, default_value_t = 2, help_heading = "Block-AP")]
    pub block_batch: usize,
    /// Block-AP: learning rate of the step sizes and zero points.
    #[arg(long, default_value_t = 1e-4, help_heading = "Block-AP")]
    pub quant_lr: f64,
    /// Block-AP: learning rate of the weights (EfficientQAT: 1e-5 at 3-4 bits, 2e-5 at 2).
    #[arg(long, default_value_t = 1e-5, help_heading = "Block-AP")]
    pub weight_lr: f64,
    /// HQQ: grouping axis, 1 (consecutive input features of a row) or 0 (hqq's strided).
    #[arg(long, default_value_t = 1, help_heading = "HQQ")]
    pub axis: u8,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// llama.cpp importance matrix (imatrix.dat or imatrix GGUF) for the GGUF methods.
    #[arg(long)]
    pub imatrix: Option<PathBuf>,
    /// GGUF methods: requantize an already-quantized input without the warning.
    #[arg(long)]
    pub allow_requantize: bool,
    /// GGUF methods: keep output.weight as stored (llama-quantize --leave-output-tensor).
    #[arg(long)]
    pub leave_output_tensor: bool,
    /// Rotate the model first (`shrink rotate`: residual stream and heads, QuaRot's R1/R2
    /// without online Hadamards), then quantize the rotated model; for int, nf4, fp4, hqq,
    /// gptq and awq. The rotated copy lives beside the output until the run ends.
    #[arg(long, help_heading = "Rotation")]
    pub rotate: bool,
    #[command(flatten)]
    pub rotation: super::rotate::RotationOpts,
}

fn parse_float(s: &str) -> Result<FloatType, String> {
    FloatType::parse(s).ok_or_else(|| format!("unknown dtype {s:?}: use f32, bf16 or f16"))
}

/// The per-tensor method the flags describe; options that contradict it are refused rather
/// than ignored.
fn method(a: &Args) -> Result<Box<dyn WeightQuantizer>> {
    // The spelling a user typed, for the messages.
    let name = |v: &dyn Fn() -> Option<clap::builder::PossibleValue>| {
        v().map_or_else(String::new, |p| p.get_name().to_string())
    };
    if let (Some(g), Some(n)) = (a.granularity, a.group_size) {
        if g != Gran::Group {
            bail!(
                "--group-size {n} applies to groups; --granularity {} has none (drop one)",
                name(&|| g.to_possible_value())
            );
        }
    }
    if let (Method::AbsmaxInt8 | Method::ZeropointInt8, Some(b)) = (a.method, a.bits) {
        if b != 8 {
            bail!(
                "--method {} is 8-bit; --bits {b} does not apply (use --method int --bits {b})",
                name(&|| a.method.to_possible_value())
            );
        }
    }
    if let (Method::Int, Some(b)) = (a.method, a.bits) {
        if !matches!(b, 2..=6 | 8) {
            bail!("--method int takes --bits 2, 3, 4, 5, 6 or 8 (not {b})");
        }
    }
    let gran = |default: Gran| match a.granularity.unwrap_or(if a.group_size.is_some() {
        Gran::Group
    } else {
        default
    }) {
        Gran::Tensor => Granularity::Tensor,
        Gran::Channel => Granularity::Channel,
        Gran::Group => Granularity::Group(a.group_size.unwrap_or(64)),
    };
    let int = |bits: u8, symmetric: bool, default: Gran| {
        let granularity = gran(default);
        let scale_type = a
            .scale_dtype
            .unwrap_or(if granularity == Granularity::Tensor {
                FloatType::F32
            } else {
                FloatType::F16
            });
        IntSpec {
            bits,
            symmetric,
            granularity,
            scale_type,
        }
    };
    let four = |kind| -> Result<Box<dyn WeightQuantizer>> {
        if let Some(b) = a.bits.filter(|&b| b != 4) {
            bail!(
                "--method {:?} is 4-bit; --bits {b} does not apply",
                a.method
            );
        }
        Ok(Box::new(Rtn::Nf4(Nf4Spec {
            kind,
            block_size: a.block_size,
            double_quant: a.double_quant,
        })))
    };
    Ok(match a.method {
        Method::AbsmaxInt8 => Box::new(Rtn::Int(int(8, !a.asym, Gran::Tensor))),
        Method::ZeropointInt8 => Box::new(Rtn::Int(int(8, a.sym, Gran::Tensor))),
        Method::Int => Box::new(Rtn::Int(int(a.bits.unwrap_or(4), a.sym, Gran::Group))),
        Method::Nf4 => return four(Fp4Kind::Nf4),
        Method::Fp4 => return four(Fp4Kind::Fp4),
        Method::LlmInt8 => Box::new(Rtn::LlmInt8 {
            threshold: a.threshold,
        }),
        Method::Hqq => {
            if a.granularity.is_some_and(|g| g != Gran::Group) || a.sym {
                bail!("HQQ quantizes asymmetric groups of --group-size (no --granularity/--sym)");
            }
            let bits = a.bits.unwrap_or(4);
            Box::new(Hqq {
                spec: HqqSpec::new(bits, a.group_size.unwrap_or(64), a.axis),
                // As hqq's BaseQuantizeConfig: integer initial zero points for 4 bits.
                options: HqqOptions {
                    round_zero: bits == 4,
                    ..Default::default()
                },
            })
        }
        Method::DynamicInt8 => {
            if a.bits.is_some_and(|b| b != 8) || a.asym {
                bail!("--method dynamic-int8 uses symmetric 8-bit weights (no --bits/--asym)");
            }
            Box::new(Rtn::DynamicInt8(int(8, true, Gran::Channel)))
        }
        _ => unreachable!("calibrated and GGUF methods are dispatched before"),
    })
}

/// Where a calibrated run of `a` writes, over the weights `selection` names.
fn target<'a>(a: &'a Args, selection: &'a Selection) -> super::calibrated::Target<'a> {
    super::calibrated::Target {
        model: &a.model,
        output: &a.output,
        selection,
        dense_dtype: a.dense_dtype,
        json: a.json,
        keep_layers: !a.rotate,
    }
}

/// Run `shrink quantize`.
pub fn run(mut a: Args) -> Result<()> {
    if !a.rotate {
        if a.rotation.no_residual
            || a.rotation.no_heads
            || a.rotation.rotate_seed != 0
            || a.rotation.keep_channels.0.is_some()
        {
            bail!(
                "--no-residual, --no-heads, --rotate-seed and --keep-channels shape --rotate; \
                 add --rotate"
            );
        }
        return quantize(a);
    }
    if a.calib.long.resume {
        bail!(
            "--resume does not apply with --rotate (each run makes its rotated copy anew): \
             rotate first (shrink rotate MODEL -o ROT), then shrink quantize ROT ... --resume"
        );
    }
    if a.method.ggml_name().is_some() {
        bail!(
            "--rotate applies to int, nf4, fp4, hqq, gptq and awq; for a GGUF preset rotate \
             first (shrink rotate MODEL -o ROT), then shrink export ROT --to gguf --type {} \
             -o OUT.gguf",
            a.method.ggml_name().unwrap_or_default()
        );
    }
    let rotated = super::rotate::Rotated::create(&a.model, &a.output, &a.rotation)?;
    let input = std::mem::replace(&mut a.model, rotated.dir.clone());
    let output = a.output.clone();
    quantize(a).with_context(|| {
        format!(
            "quantizing the rotated copy of {} (removed again)",
            input.display()
        )
    })?;
    shrink_methods::output::record_rotation(&output, &input, &rotated.report)?;
    Ok(())
}

/// Quantize `a.model` as the flags say.
fn quantize(a: Args) -> Result<()> {
    if let Some(preset) = a.method.ggml_name() {
        return super::quantize_ggml::run(&a, &preset);
    }
    if a.imatrix.is_some() {
        bail!("--imatrix applies to the llama.cpp methods (q4_k_m, q8_0, ...) only");
    }
    let selection = Selection {
        include: a.include.clone(),
        exclude: a.exclude.clone(),
    };
    if a.method == Method::Awq {
        if a.granularity.is_some_and(|g| g != Gran::Group) || a.sym {
            bail!("AWQ quantizes asymmetric groups of --group-size (no --granularity/--sym)");
        }
        let spec = shrink_methods::awq::AwqSpec {
            bits: a.bits.unwrap_or(4),
            group_size: a.group_size.unwrap_or(64),
            search_samples: a.awq_search_samples,
            ..Default::default()
        };
        return super::calibrated::run_awq(
            &target(&a, &selection),
            &a.calib.args(&format!("--method {:?}", a.method))?,
            spec,
        );
    }
    if a.method == Method::BlockAp {
        a.calib.long.refuse("--method block-ap")?;
        if a.granularity.is_some_and(|g| g != Gran::Group) || a.sym {
            bail!("Block-AP quantizes asymmetric groups of --group-size (no --granularity/--sym)");
        }
        let spec = shrink_train::block_ap::BlockApSpec {
            bits: a.bits.unwrap_or(4),
            group_size: a.group_size.unwrap_or(64),
            epochs: a.epochs,
            batch: a.block_batch,
            quant_lr: a.quant_lr,
            weight_lr: a.weight_lr,
            seed: a.calib.seed,
            ..Default::default()
        };
        return super::calibrated::run_block_ap(
            &target(&a, &selection),
            &a.calib.args("--method block-ap")?,
            spec,
        );
    }
    if a.method != Method::Gptq && (a.gptaq.gptaq || a.clip_search) {
        bail!("--gptaq and --clip-search apply to --method gptq");
    }
    if a.method == Method::Gptq {
        if a.granularity.is_some_and(|g| g != Gran::Group) {
            bail!("GPTQ quantizes in groups of --group-size (no --granularity)");
        }
        let spec = shrink_methods::gptq::GptqSpec {
            bits: a.bits.unwrap_or(4),
            group_size: a.group_size.unwrap_or(64),
            sym: a.sym,
            act_order: a.act_order != ActOrder::None,
            static_groups: a.act_order == ActOrder::Static,
            damp: a.damp,
            clip_search: a.clip_search,
            gptaq_alpha: a.gptaq.alpha(),
            ..Default::default()
        };
        return super::calibrated::run_gptq(
            &target(&a, &selection),
            &a.calib.args(&format!("--method {:?}", a.method))?,
            spec,
            a.hessian_f64,
        );
    }
    a.calib
        .long
        .refuse(&format!("--method {:?}", a.method).to_lowercase())?;
    let ckpt = common::open(&a.model)?;
    let enc = QuantizerEncoder {
        method: method(&a)?,
        dense_dtype: a.dense_dtype,
    };
    let bar = common::Bar::default();
    let job = Job {
        ckpt: &ckpt,
        output: &a.output,
        selection: &selection,
        dense_dtype: a.dense_dtype,
        progress: &bar,
    };
    common::print_report(&write_encoded(&job, &enc)?, a.json)
}
