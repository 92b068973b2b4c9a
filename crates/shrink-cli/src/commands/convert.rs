//! `shrink convert`: change the storage dtype, tensor by tensor, into a Hugging Face directory
//! ([`shrink_methods::convert`]), the report printed.

use std::path::PathBuf;

use anyhow::Result;
use shrink_formats::float::FloatType;

use crate::common;

/// Arguments of `shrink convert`.
#[derive(clap::Args)]
#[command(
    after_help = "Streams one tensor at a time: memory stays near the largest tensor, never two copies of the model.\n\nExamples:\n  shrink convert assets/SmolLM2-135M-Instruct.Q4_1.gguf --dtype f32 -o smollm2-f32     # GGUF -> HF directory\n  shrink convert smollm2-f32 --dtype bf16 -o smollm2-bf16"
)]
pub struct Args {
    /// Model to convert (HF directory or .gguf).
    pub model: PathBuf,
    /// Storage dtype of the floating-point weights in the output.
    #[arg(long, value_parser = parse_dtype)]
    pub dtype: FloatType,
    /// Output directory (must not exist; written under a temporary name, renamed when complete).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Prompt whose logits are compared between the source and the output.
    #[arg(long, default_value = "The capital of France is")]
    pub prompt: String,
    /// Skip the logit comparison (which loads both models in float32, one after the other).
    #[arg(long)]
    pub no_check: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

fn parse_dtype(s: &str) -> Result<FloatType, String> {
    FloatType::parse(s).ok_or_else(|| format!("unknown dtype {s:?}: use f32, bf16 or f16"))
}

/// Run `shrink convert`.
pub fn run(a: Args) -> Result<()> {
    let ckpt = common::open(&a.model)?;
    let check = (!a.no_check).then_some(a.prompt.as_str());
    let bar = common::Bar::default();
    let r = shrink_methods::convert::convert(&ckpt, &a.output, a.dtype, check, &bar)?;
    if a.json {
        return common::print_report(&r, true);
    }
    let (x, h) = (&r.extra, |k: &str| {
        common::human(r.extra[k].as_u64().unwrap_or(0))
    });
    println!(
        "wrote          {} ({} tensors as {})",
        r.output.display(),
        x["tensors"],
        a.dtype.name()
    );
    println!(
        "footprint      {} -> {} bytes ({} -> {}, ×{:.3})",
        x["footprint_before_bytes"],
        x["footprint_after_bytes"],
        h("footprint_before_bytes"),
        h("footprint_after_bytes"),
        x["ratio"].as_f64().unwrap_or(0.0)
    );
    r.notes.iter().for_each(|l| println!("{l}"));
    if let Some(rss) = x["peak_rss_streaming_bytes"].as_u64() {
        println!("peak RSS       {} while streaming", common::human(rss));
    }
    Ok(())
}
