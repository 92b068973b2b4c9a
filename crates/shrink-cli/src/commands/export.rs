//! `shrink export MODEL --to gguf|hf|gptq|awq|bitsandbytes|compressed-tensors`: the flags
//! handed to [`shrink_methods::export_gguf`], [`shrink_methods::export_layout`] or `convert`,
//! the report printed.

use std::path::PathBuf;

use anyhow::{bail, Result};
use shrink_formats::float::FloatType;
use shrink_methods::export_gguf::{export_gguf, GgufExport, Target};
use shrink_methods::export_layout::Layout;

use crate::common;

/// Arguments of `shrink export`.
#[derive(clap::Args)]
#[command(
    after_help = "A weight the input already stores on a grid the target holds is repacked unchanged (lossless: a GPTQ checkpoint to compressed-tensors or AWQ, bitsandbytes NF4 to bitsandbytes); any other is dequantized and requantized, with a warning that requantizing stacks error. To GGUF Q4_0 / Q8_0, a quantized input's symmetric 4- or 8-bit groups of 32 or a multiple of 32 (shrink quantize --method gptq --bits 4 --group-size 32 --sym) keep their grid exactly: GPTQ's rounding in llama.cpp's format. With no --type/--group-size/--sym, a quantized input's own grid is kept.\n\nExamples:\n  shrink export smollm2-f32 --to gguf --type f16 -o smollm2-f16.gguf\n  shrink export smollm2-f32 --to gguf --type q4_k_m -o smollm2-q4_k_m.gguf\n  shrink export smollm2-gptq --to gguf --type q4_k_m -o smollm2-q4_k_m.gguf\n  shrink export model.Q8_0.gguf --to gguf --type f32 -o model-f32.gguf\n  shrink export model.gguf --to hf --type bf16 -o model-hf\n  shrink export smollm2-f32 --to gptq --type int4 --group-size 64 -o smollm2-gptq-rtn\n  shrink export smollm2-gptq --to compressed-tensors -o smollm2-ct\n  shrink export smollm2-f32 --to bitsandbytes --type nf4 --double-quant -o smollm2-bnb"
)]
pub struct Args {
    /// Model to export (HF directory, float or quantized in a layout shrink reads, or a .gguf).
    pub model: PathBuf,
    /// Output format: gguf (a file); hf (a directory of float safetensors, config.json and
    /// tokenizer files — what `shrink convert` writes); or a quantized safetensors directory in
    /// an ecosystem layout: gptq (AutoGPTQ, with quantize_config.json), awq (AutoAWQ GEMM),
    /// bitsandbytes (nf4/fp4 with quant_state, or int8 with SCB), compressed-tensors
    /// (pack-quantized; naive-quantized for 3, 5, 6 and 7 bits).
    #[arg(long, default_value = "gguf", value_parser = ["gguf", "hf", "gptq", "awq", "bitsandbytes", "compressed-tensors"])]
    pub to: String,
    /// Storage type. gguf: f32, f16 (default), bf16 or a llama.cpp preset (q8_0, q4_0,
    /// q4_k_m, ...); hf: f32, f16, bf16; gptq: int2/int3/int4/int8; awq: int4;
    /// compressed-tensors: int2..int8; bitsandbytes: nf4, fp4, int8.
    #[arg(long = "type")]
    pub ty: Option<String>,
    /// Output .gguf file or directory (must not exist unless --overwrite; never the input).
    #[arg(short, long)]
    pub output: PathBuf,
    /// `tokenizer.ggml.pre` to write (HF input), instead of the one recognised from tokenizer.json.
    #[arg(long)]
    pub pre: Option<String>,
    /// Replace an existing output file (gguf only; never the input).
    #[arg(long)]
    pub overwrite: bool,
    /// Integer layouts: elements per scale group (default 64, as `shrink quantize`; 0 = one
    /// per output channel).
    #[arg(long, help_heading = "Quantized safetensors")]
    pub group_size: Option<usize>,
    /// Integer layouts: symmetric integers (default asymmetric, with zero points).
    #[arg(long, help_heading = "Quantized safetensors")]
    pub sym: bool,
    /// bitsandbytes nf4/fp4: quantize the block absmax to 8 bits too (QLoRA).
    #[arg(long, help_heading = "Quantized safetensors")]
    pub double_quant: bool,
    /// bitsandbytes nf4/fp4: block size (default 64).
    #[arg(long, help_heading = "Quantized safetensors")]
    pub block_size: Option<usize>,
    /// Storage type of the tensors left unquantized (default: the input's float type; f32
    /// for a GGUF input).
    #[arg(long, value_parser = ["f32", "f16", "bf16"], help_heading = "Quantized safetensors")]
    pub dense_dtype: Option<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Run `shrink export`.
pub fn run(a: Args) -> Result<()> {
    if let Some(layout) = Layout::parse(&a.to) {
        return super::export_layout::run(a, layout);
    }
    let ty = a.ty.clone().unwrap_or_else(|| "f16".into());
    if a.group_size.is_some()
        || a.sym
        || a.double_quant
        || a.block_size.is_some()
        || a.dense_dtype.is_some()
    {
        bail!("--group-size, --sym, --double-quant, --block-size and --dense-dtype apply to the quantized safetensors layouts (--to gptq|awq|bitsandbytes|compressed-tensors)");
    }
    if a.to == "hf" {
        let Some(dtype) = FloatType::parse(&ty) else {
            bail!("--to hf writes float weights: --type f32, f16 or bf16, not {ty:?}");
        };
        return super::convert::run(super::convert::Args {
            model: a.model,
            dtype,
            output: a.output,
            prompt: String::new(),
            no_check: true,
            json: a.json,
        });
    }
    let o = GgufExport {
        target: Target::parse(&ty)?,
        pre: a.pre,
        overwrite: a.overwrite,
    };
    let ckpt = common::open(&a.model)?;
    let report = export_gguf(&ckpt, &a.model, &a.output, &o, &common::Bar::default())?;
    common::print_report(&report, a.json)
}
