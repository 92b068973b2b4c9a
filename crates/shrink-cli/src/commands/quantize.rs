//! `shrink quantize`: round-to-nearest quantization, streamed one weight at a time, written in
//! the layouts other tools read (compressed-tensors for integers, bitsandbytes for NF4/FP4).

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::ValueEnum;
use serde_json::Value;
use shrink_formats::float::{self, FloatType};
use shrink_formats::int::{Granularity, IntSpec};
use shrink_formats::nf4::{Fp4Kind, Nf4Spec};
use shrink_io::quantized::{Quantized, StoredTensor, TRANSPOSED_KEY};
use shrink_io::{Checkpoint, OutputDir, TensorHeader};
use shrink_methods::rtn::Rtn;
use shrink_methods::select::Selection;
use shrink_models::{Architecture, LinearInfo};

use crate::common;

/// Quantization methods.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Method {
    /// Symmetric 8-bit: scale = absmax / 127 (per tensor unless --granularity says otherwise).
    AbsmaxInt8,
    /// Asymmetric 8-bit with a zero point (per tensor unless --granularity says otherwise).
    ZeropointInt8,
    /// Integers of --bits (2-8), --group-size (default 64), asymmetric unless --sym.
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

/// Which part of the --calib file calibrated methods see.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CalibFormat {
    /// A Lee corpus file (one document per line): the lee-ppl-v1 calibration documents 0..149.
    Lee,
    /// The whole file as one text.
    Raw,
}

impl Method {
    /// The llama.cpp preset name of a GGUF method (`None` for the others).
    pub fn ggml_name(self) -> Option<&'static str> {
        Some(match self {
            Method::Q4_0 => "q4_0",
            Method::Q4_1 => "q4_1",
            Method::Q5_0 => "q5_0",
            Method::Q5_1 => "q5_1",
            Method::Q8_0 => "q8_0",
            Method::Q2K => "q2_k",
            Method::Q2KS => "q2_k_s",
            Method::Q3KS => "q3_k_s",
            Method::Q3KM => "q3_k_m",
            Method::Q3KL => "q3_k_l",
            Method::Q4KS => "q4_k_s",
            Method::Q4KM => "q4_k_m",
            Method::Q5KS => "q5_k_s",
            Method::Q5KM => "q5_k_m",
            Method::Q6K => "q6_k",
            Method::Iq4Nl => "iq4_nl",
            Method::Iq4Xs => "iq4_xs",
            _ => return None,
        })
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
    after_help = "By default every linear layer of the decoder blocks is quantized; embeddings, norms and the LM head keep their precision (--include/--exclude change that, e.g. --exclude '*.down_proj' --include lm_head).\n\nExamples:\n  shrink quantize assets/SmolLM2-135M-Instruct.Q4_1.gguf --method nf4 --double-quant -o smollm2-nf4\n  shrink quantize assets/SmolLM2-135M-Instruct.Q4_1.gguf --method int --bits 4 --group-size 64 -o smollm2-int4-g64\n  shrink quantize my-model --method absmax-int8 --granularity channel -o my-model-int8\n  shrink quantize my-model --method llm-int8 --threshold 6 -o my-model-llm-int8\n  shrink quantize my-model --method dynamic-int8 -o my-model-w8a8\n  shrink quantize assets/SmolLM2-135M-Instruct.Q4_1.gguf --method hqq --bits 3 --group-size 64 -o smollm2-hqq3\n  shrink quantize assets/SmolLM2-135M-Instruct.Q4_1.gguf --method gptq --bits 4 --group-size 64 --calib assets/lee_background.cor -o smollm2-gptq"
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
    /// Calibration text of calibrated methods (gptq, awq).
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
    /// GPTQ: column order. `static` (default, as llm-compressor): columns in order of
    /// decreasing Hessian diagonal, group scales from the weight before any update, groups
    /// contiguous; `group` (AutoGPTQ's desc_act): groups formed in that order, stored with
    /// g_idx; `none`: columns in their own order, scales from the updated weight.
    #[arg(long, value_enum, default_value = "static", help_heading = "GPTQ")]
    pub act_order: ActOrder,
    /// GPTQ: dampening, as a fraction of the mean Hessian diagonal.
    #[arg(long, default_value_t = 0.01, help_heading = "GPTQ")]
    pub damp: f64,
    /// GPTQ: accumulate the Hessian in float64 (float32 by default).
    #[arg(long, help_heading = "GPTQ")]
    pub hessian_f64: bool,
    /// AWQ: calibration samples the scale search's losses are computed on (statistics use
    /// them all).
    #[arg(long, default_value_t = 16, help_heading = "AWQ")]
    pub awq_search_samples: usize,
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
}

impl Args {
    /// The calibration options, or an error naming what is missing.
    fn calib(&self) -> Result<super::calibrated::CalibArgs> {
        let Some(file) = &self.calib else {
            bail!(
                "--method {:?} is calibrated: give a calibration text with --calib FILE (e.g. \
                 --calib assets/lee_background.cor)",
                self.method
            );
        };
        Ok(super::calibrated::CalibArgs {
            file: file.clone(),
            lee: self.calib_format == CalibFormat::Lee,
            spec: shrink_methods::calib::CalibSpec {
                samples: self.calib_samples,
                seqlen: self.calib_seqlen,
                seed: self.seed,
            },
        })
    }
}

fn parse_float(s: &str) -> Result<FloatType, String> {
    FloatType::parse(s).ok_or_else(|| format!("unknown dtype {s:?}: use f32, bf16 or f16"))
}

/// The method the flags describe.
fn method(a: &Args) -> Result<Rtn> {
    let int = |bits: u8, symmetric: bool, default: Gran| -> Result<Rtn> {
        let gran = match a.granularity.unwrap_or(if a.group_size.is_some() {
            Gran::Group
        } else {
            default
        }) {
            Gran::Tensor => Granularity::Tensor,
            Gran::Channel => Granularity::Channel,
            Gran::Group => Granularity::Group(a.group_size.unwrap_or(64)),
        };
        let scale_type = a.scale_dtype.unwrap_or(if gran == Granularity::Tensor {
            FloatType::F32
        } else {
            FloatType::F16
        });
        Ok(Rtn::Int(IntSpec {
            bits,
            symmetric,
            granularity: gran,
            scale_type,
        }))
    };
    let four = |kind| -> Result<Rtn> {
        if a.bits.is_some_and(|b| b != 4) {
            bail!(
                "--method {:?} is 4-bit; --bits {} does not apply",
                a.method,
                a.bits.unwrap()
            );
        }
        Ok(Rtn::Nf4(Nf4Spec {
            kind,
            block_size: a.block_size,
            double_quant: a.double_quant,
        }))
    };
    match a.method {
        Method::AbsmaxInt8 => int(8, !a.asym, Gran::Tensor),
        Method::ZeropointInt8 => int(8, a.sym, Gran::Tensor).map(|m| match m {
            Rtn::Int(s) => Rtn::Int(IntSpec {
                symmetric: a.sym,
                ..s
            }),
            other => other,
        }),
        Method::Int => int(a.bits.unwrap_or(4), a.sym, Gran::Group),
        Method::Nf4 => four(Fp4Kind::Nf4),
        Method::Fp4 => four(Fp4Kind::Fp4),
        Method::LlmInt8 => Ok(Rtn::LlmInt8 {
            threshold: a.threshold,
        }),
        Method::Gptq | Method::Awq => unreachable!("calibrated methods are dispatched before"),
        Method::Hqq => {
            if a.granularity.is_some_and(|g| g != Gran::Group) || a.sym {
                bail!("HQQ quantizes asymmetric groups of --group-size (no --granularity/--sym)");
            }
            Ok(Rtn::Hqq(
                shrink_formats::hqq_layout::HqqSpec::new(
                    a.bits.unwrap_or(4),
                    a.group_size.unwrap_or(64),
                    a.axis,
                ),
                // As hqq's BaseQuantizeConfig: integer initial zero points for 4 bits.
                shrink_methods::hqq::HqqOptions {
                    round_zero: a.bits.unwrap_or(4) == 4,
                    ..Default::default()
                },
            ))
        }
        Method::Q4_0
        | Method::Q4_1
        | Method::Q5_0
        | Method::Q5_1
        | Method::Q8_0
        | Method::Q2K
        | Method::Q2KS
        | Method::Q3KS
        | Method::Q3KM
        | Method::Q3KL
        | Method::Q4KS
        | Method::Q4KM
        | Method::Q5KS
        | Method::Q5KM
        | Method::Q6K
        | Method::Iq4Nl
        | Method::Iq4Xs => {
            unreachable!("GGUF methods are dispatched before")
        }
        Method::DynamicInt8 => {
            if a.bits.is_some_and(|b| b != 8) || a.asym {
                bail!("--method dynamic-int8 uses symmetric 8-bit weights (no --bits/--asym)");
            }
            match int(8, true, Gran::Channel)? {
                Rtn::Int(s) => Ok(Rtn::DynamicInt8(s)),
                other => Ok(other),
            }
        }
    }
}

/// Where a calibrated run of `a` writes, over the weights `selection` names.
fn target<'a>(a: &'a Args, selection: &'a Selection) -> super::calibrated::Target<'a> {
    super::calibrated::Target {
        model: &a.model,
        output: &a.output,
        selection,
        dense_dtype: a.dense_dtype,
        json: a.json,
    }
}

/// Run `shrink quantize`.
pub fn run(a: Args) -> Result<()> {
    if let Some(preset) = a.method.ggml_name() {
        return super::quantize_ggml::run(super::quantize_ggml::GgmlArgs {
            model: a.model,
            output: a.output,
            preset: preset.to_string(),
            imatrix: a.imatrix,
            json: a.json,
            allow_requantize: a.allow_requantize,
            overwrite: false,
            leave_output_tensor: a.leave_output_tensor,
        });
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
        return super::calibrated::run_awq(&target(&a, &selection), &a.calib()?, spec);
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
            ..Default::default()
        };
        return super::calibrated::run_gptq(
            &target(&a, &selection),
            &a.calib()?,
            spec,
            a.hessian_f64,
        );
    }
    let rtn = method(&a)?;
    write_encoded(
        &common::open(&a.model)?,
        &a.output,
        &selection,
        a.dense_dtype,
        a.json,
        &RtnEncoder(rtn, a.dense_dtype.torch_name()),
    )
}

/// One selected weight as it will be stored.
pub(crate) struct Encoded {
    /// The layout's tensors.
    pub stored: Vec<StoredTensor>,
    /// The weight as the layout gives it back, row-major [out, in].
    pub dequantized: Vec<f32>,
    /// Bytes of codes, scales and zero points.
    pub stored_bytes: usize,
    /// Seconds in the quantizer.
    pub seconds: f64,
    /// The weight as read from the input, when the encoder read it (`None`: the input's own
    /// quantized codes were kept, so the weight is `dequantized` exactly).
    pub input: Option<Vec<f32>>,
}

/// How the selected weights of a model become a quantized safetensors layout.
pub(crate) trait Encoder {
    /// The method / layout, for reports.
    fn name(&self) -> String;
    /// Refuse a weight before anything is read or written.
    fn validate(&self, l: &LinearInfo) -> Result<()>;
    /// Encode a weight: `read` gives it as [out, in] float32 (dequantized if stored quantized);
    /// `source` is the input's own quantized form of it, when the input stores it quantized and
    /// the encoder asked for it (an encoder that keeps it need not read the weight).
    fn encode(
        &self,
        l: &LinearInfo,
        read: &mut dyn FnMut() -> Result<Vec<f32>>,
        source: Option<Quantized>,
    ) -> Result<Encoded>;
    /// Whether `encode` wants the input's quantized form.
    fn wants_source(&self) -> bool {
        false
    }
    /// config.json's `quantization_config`; `ignore` lists the linears left dense.
    fn config(&self, ignore: &[String], dense_dtype: &str) -> Value;
    /// Files written beside config.json (name, bytes), given the `quantization_config`.
    fn extra_files(&self, _config: &Value) -> Result<Vec<(String, Vec<u8>)>> {
        Ok(Vec::new())
    }
    /// Extra report fields and text lines (after the encoder has run).
    fn report(&self) -> (serde_json::Map<String, Value>, Vec<String>) {
        Default::default()
    }
}

/// The round-to-nearest methods of `shrink quantize`, each in its own layout (with the dense
/// tensors' torch dtype name, which bitsandbytes' quant state records).
struct RtnEncoder(Rtn, &'static str);

impl Encoder for RtnEncoder {
    fn name(&self) -> String {
        self.0.name()
    }
    fn validate(&self, l: &LinearInfo) -> Result<()> {
        Ok(self.0.validate(&l.weight, l.out_features, l.in_features)?)
    }
    fn encode(
        &self,
        l: &LinearInfo,
        read: &mut dyn FnMut() -> Result<Vec<f32>>,
        _source: Option<Quantized>,
    ) -> Result<Encoded> {
        let w = read()?;
        let t = Instant::now();
        let q = self
            .0
            .quantize(&l.weight, &w, l.out_features, l.in_features)?;
        let seconds = t.elapsed().as_secs_f64();
        let module = l.weight.strip_suffix(".weight").unwrap_or(&l.weight);
        let stored = self
            .0
            .layout(module, &q, &[l.out_features, l.in_features], self.1);
        Ok(Encoded {
            stored,
            dequantized: q.dequantize(),
            stored_bytes: q.stored_bytes(),
            seconds,
            input: Some(w),
        })
    }
    fn config(&self, ignore: &[String], dense_dtype: &str) -> Value {
        self.0.config(ignore, dense_dtype)
    }
}

/// Write `model` to the directory `output` with the selected linears encoded by `enc` and the
/// rest stored dense as `dense_dtype`; streams (two passes: sizes, then bytes, one weight
/// resident at a time) and prints / returns the report.
pub(crate) fn write_encoded(
    ckpt: &Checkpoint,
    output: &std::path::Path,
    selection: &Selection,
    dense_dtype: FloatType,
    json: bool,
    enc: &dyn Encoder,
) -> Result<()> {
    let model = ckpt.path();
    let arch = Architecture::from_checkpoint(ckpt)?;
    let selected = selection.resolve(&arch)?;
    // Refuse impossible parameters before reading or writing anything.
    for l in &selected {
        enc.validate(l)?;
    }
    let out = OutputDir::create(output, &[model])?;
    let loader = arch.weight_loader(ckpt);
    let by_name: HashMap<&str, &LinearInfo> =
        selected.iter().map(|l| (l.weight.as_str(), l)).collect();
    let dense_name = dense_dtype.torch_name();
    let shapes = arch.weight_shapes();
    let bad = |e: anyhow::Error| shrink_io::IoError::malformed(model, format!("{e:#}"));

    // A selected weight as [out, in] float32 (GPT-2's Conv1D weights are transposed here).
    let read = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
        let t = arch.read_weight(&loader, name, shape)?;
        let t = if by_name.get(name).is_some_and(|l| l.conv1d) {
            t.t()?.contiguous()?
        } else {
            t
        };
        Ok(t.flatten_all()?.to_vec1()?)
    };
    // A selected weight encoded, from the input's quantized form too when the encoder wants it.
    let encode = |l: &LinearInfo, name: &str, shape: &[usize]| -> Result<Encoded> {
        // Stored quantized weights are [out, in] (GPT-2's Conv1D ones too).
        let source = match ckpt {
            Checkpoint::Hf(h) if enc.wants_source() => h
                .quantized(&l.weight)?
                .filter(|q| q.shape() == (l.out_features, l.in_features)),
            _ => None,
        };
        enc.encode(l, &mut || read(name, shape), source)
    };

    // Pass 1: quantize every selected weight once to learn the layout's tensor sizes (some,
    // like bitsandbytes' JSON quant state, depend on the values) and measure the error.
    let t0 = Instant::now();
    let mut quant_seconds = 0f64;
    let pb = common::bar(shapes.len() as u64, "quantize");
    let mut header = Vec::new();
    let mut origin = Vec::new(); // for each header entry: index into `shapes`
    let (mut q_params, mut q_bytes, mut q_file_bytes, mut dense_bytes) = (0u64, 0u64, 0u64, 0u64);
    let (mut sq_err, mut sq_ref) = (0f64, 0f64);
    let mut reused = 0usize;
    for (i, (name, shape)) in shapes.iter().enumerate() {
        pb.inc(1);
        match by_name.get(name.as_str()) {
            Some(l) => {
                let e = encode(l, name, shape)?;
                quant_seconds += e.seconds;
                reused += usize::from(e.input.is_none());
                let w = e.input.as_deref().unwrap_or(&e.dequantized);
                let (se, sr) = squared_error(w, &e.dequantized);
                sq_err += se;
                sq_ref += sr;
                q_params += (l.out_features * l.in_features) as u64;
                q_bytes += e.stored_bytes as u64;
                for s in e.stored {
                    q_file_bytes += s.bytes.len() as u64;
                    header.push(TensorHeader {
                        name: s.name,
                        dtype: s.dtype,
                        shape: s.shape,
                        len: s.bytes.len(),
                    });
                    origin.push(i);
                }
            }
            None => {
                let n: usize = shape.iter().product();
                dense_bytes += (n * dense_dtype.size()) as u64;
                header.push(TensorHeader {
                    name: name.clone(),
                    dtype: shrink_io::safetensors_dtype(dense_dtype),
                    shape: shape.clone(),
                    len: n * dense_dtype.size(),
                });
                origin.push(i);
            }
        }
    }
    pb.finish_and_clear();
    let pass1_seconds = t0.elapsed().as_secs_f64();

    // Pass 2: write in module order; each module is quantized once and its pieces served in turn.
    let cache: RefCell<Option<(usize, Vec<StoredTensor>)>> = RefCell::new(None);
    let pb = common::bar(header.len() as u64, "write");
    let mut meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    let transposed: Vec<&str> = selected
        .iter()
        .filter(|l| l.conv1d)
        .map(|l| l.weight.as_str())
        .collect();
    if !transposed.is_empty() {
        meta.insert(TRANSPOSED_KEY.to_string(), transposed.join(","));
    }
    shrink_io::write_safetensors_ordered(
        &out.file("model.safetensors"),
        &header,
        Some(meta),
        |k| -> std::result::Result<Vec<u8>, shrink_io::IoError> {
            pb.inc(1);
            let i = origin[k];
            let (name, shape) = &shapes[i];
            let Some(l) = by_name.get(name.as_str()) else {
                let v = read(name, shape).map_err(bad)?;
                return Ok(float::encode(dense_dtype, &v));
            };
            let mut c = cache.borrow_mut();
            if c.as_ref().is_none_or(|(j, _)| *j != i) {
                let e = encode(l, name, shape).map_err(bad)?;
                *c = Some((i, e.stored));
            }
            let stored = &c.as_ref().unwrap().1;
            let s = stored
                .iter()
                .find(|s| s.name == header[k].name)
                .expect("layout is deterministic");
            Ok(s.bytes.clone())
        },
    )?;
    pb.finish_and_clear();
    let ignore: Vec<String> = shapes
        .iter()
        .filter(|(n, s)| s.len() == 2 && !by_name.contains_key(n.as_str()))
        .map(|(n, _)| n.strip_suffix(".weight").unwrap_or(n).to_string())
        .chain(std::iter::once("lm_head".to_string()))
        .collect();
    let qcfg = enc.config(&ignore, dense_name);
    let extra = enc.extra_files(&qcfg)?;
    common::write_config_and_tokenizer(ckpt, arch.decoder(), &out, dense_name, Some(qcfg))?;
    for (name, bytes) in extra {
        out.write(&name, &bytes)?;
    }

    let total_params: u64 = shapes
        .iter()
        .map(|(_, s)| s.iter().product::<usize>() as u64)
        .sum();
    // Everything the file stores for the weights (layout tables and shapes included).
    let model_bytes = q_file_bytes + dense_bytes;
    let bpw_q = q_bytes as f64 * 8.0 / q_params as f64;
    let bpw_all = model_bytes as f64 * 8.0 / total_params as f64;
    let rel_err = (sq_err / sq_ref.max(f64::MIN_POSITIVE)).sqrt();
    let sqnr_db = 10.0 * (sq_ref / sq_err.max(f64::MIN_POSITIVE)).log10();
    let (extra, lines) = enc.report();
    let mut v = serde_json::json!({
        "input": model, "output": output, "method": enc.name(),
        "quantized_tensors": selected.len(), "quantized_params": q_params,
        "bits_per_weight_quantized": bpw_q, "bits_per_weight_model": bpw_all,
        "quantized_bytes": q_bytes, "quantized_file_bytes": q_file_bytes, "dense_bytes": dense_bytes, "model_bytes": model_bytes,
        "float32_bytes": total_params * 4, "compression_vs_f32": (total_params * 4) as f64 / model_bytes as f64,
        "relative_rmse": rel_err, "sqnr_db": sqnr_db, "quantize_seconds": quant_seconds, "read_and_quantize_seconds": pass1_seconds,
        "reused_tensors": reused,
        "peak_rss_bytes": common::peak_rss(),
    });
    v.as_object_mut().expect("an object").extend(extra);
    let mut text = vec![
        format!(
            "method         {} on {} weights ({} params)",
            enc.name(),
            selected.len(),
            q_params
        ),
        format!("bits/weight    {bpw_q:.4} on quantized weights (codes, scales, zeros), {bpw_all:.4} whole model as stored"),
        format!(
            "model bytes    {model_bytes} ({}; f32 would be {}, ×{:.2} smaller)",
            common::human(model_bytes),
            common::human(total_params * 4),
            (total_params * 4) as f64 / model_bytes as f64
        ),
        format!("weight error   relative RMSE {rel_err:.4}, SQNR {sqnr_db:.1} dB"),
    ];
    text.extend(lines);
    text.push(format!("time           {quant_seconds:.2} s in the quantizer ({pass1_seconds:.2} s with reading the weights)"));
    common::commit_with_report(out, &v, json, &text)
}

/// Σ (w − d)² and Σ w², accumulated in f64 over chunks on all threads.
pub(crate) fn squared_error(w: &[f32], d: &[f32]) -> (f64, f64) {
    use rayon::prelude::*;
    w.par_chunks(1 << 14)
        .zip(d.par_chunks(1 << 14))
        .map(|(a, b)| {
            a.iter().zip(b).fold((0f64, 0f64), |(e, r), (&x, &y)| {
                (e + ((x - y) as f64).powi(2), r + (x as f64).powi(2))
            })
        })
        .reduce(|| (0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1))
}
