//! `shrink eval`: lee-ppl-v1 perplexity, with KLD / top-1 agreement against a base model.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::ValueEnum;
use shrink_eval::evaluation::{evaluate, EvalRequest, TextProtocol};

use crate::common;

/// How the text file becomes the evaluated text.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Protocol {
    /// The Lee corpus: documents 150..299 joined with blank lines (lee-ppl-v1).
    Lee,
    /// The whole file as it is.
    Raw,
}

/// Arguments of `shrink eval`.
#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  shrink eval assets/SmolLM2-135M-Instruct.Q4_1.gguf --text assets/lee_background.cor\n  shrink eval out-bf16 --base assets/SmolLM2-135M-Instruct.Q4_1.gguf --text assets/lee_background.cor --max-windows 8 --json"
)]
pub struct Args {
    /// Model to evaluate (HF directory or .gguf).
    pub model: PathBuf,
    /// Text file: the Lee corpus (one document per line) for --protocol lee.
    #[arg(long)]
    pub text: PathBuf,
    /// How to read the text file.
    #[arg(long, value_enum, default_value = "lee")]
    pub protocol: Protocol,
    /// A PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors, e.g.
    /// from shrink qlora) run beside the model's layers, as PEFT runs it over its base.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Reference model for KLD and top-1 agreement (scored on the same tokens).
    #[arg(long)]
    pub base: Option<PathBuf>,
    /// Evaluate only the first N windows of 512 tokens (quick checks).
    #[arg(long)]
    pub max_windows: Option<usize>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Include every window's NLL in the JSON output.
    #[arg(long)]
    pub per_window: bool,
    /// Round activations to int8 blocks of 32 where weights are integer codes and multiply in
    /// integers, as llama.cpp's perplexity does (the full lee-ppl-v1 evaluation of SmolLM2's Q4_1
    /// GGUF 71.1 s → 40.0 s, +0.33 % PPL, on a 2-core AVX-512 VNNI CPU; BENCHMARKS.md). Off by
    /// default: lee-ppl-v1 computes in float32 with the weights dequantized.
    #[arg(long)]
    pub int8_activations: bool,
}

/// Run `shrink eval`.
pub fn run(a: Args) -> Result<()> {
    if a.max_windows == Some(0) {
        bail!("--max-windows must be at least 1");
    }
    if a.int8_activations {
        shrink_models::runtime::set_int8_activations(true);
    }
    let req = EvalRequest {
        model: a.model,
        adapter: a.adapter,
        base: a.base,
        text: a.text,
        protocol: match a.protocol {
            Protocol::Lee => TextProtocol::Lee,
            Protocol::Raw => TextProtocol::Raw,
        },
        max_windows: a.max_windows,
    };
    let e = evaluate(&req, &common::Bar::default())?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&e.to_json(a.per_window))?
        );
    } else {
        e.lines().iter().for_each(|l| println!("{l}"));
    }
    Ok(())
}
