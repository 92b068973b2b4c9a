//! `shrink generate`: continue a prompt, streaming tokens as they are produced.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use shrink_eval::generate::{GenOptions, Generator, Stop};

/// Arguments of `shrink generate`.
#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  shrink generate assets/SmolLM2-135M-Instruct.Q4_1.gguf --prompt \"The capital of France is\"\n  shrink generate assets/SmolLM2-135M-Instruct.Q4_1.gguf --chat --prompt \"Name three fruits.\" --temperature 0.7 --seed 1"
)]
pub struct Args {
    /// Model (HF directory or .gguf).
    pub model: PathBuf,
    /// A PEFT LoRA adapter directory (e.g. from shrink qlora) run beside the model's layers.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// The prompt text (with --chat: the user's message).
    #[arg(long)]
    pub prompt: String,
    /// Most new tokens.
    #[arg(long, default_value_t = 64)]
    pub max_tokens: usize,
    /// 0 = greedy (default); above 0 samples.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Nucleus sampling threshold (with --temperature > 0).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// Sampler seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Wrap the prompt in the model's chat template (as a user message).
    #[arg(long)]
    pub chat: bool,
    /// How the KV cache holds keys and values: f32 (exact), or f16 as llama.cpp's default
    /// (half the memory and the bytes a long context's attention reads; Llama family: others
    /// read a float32 copy per token)
    #[arg(long, value_name = "TYPE", default_value = "f32", value_parser = ["f32", "f16"])]
    pub kv_cache: String,
    /// Print one JSON object (prompt, completion, token ids, speed) at the end instead of streaming.
    #[arg(long)]
    pub json: bool,
}

/// Run `shrink generate`.
pub fn run(a: Args) -> Result<()> {
    if !(0.0..=1.0).contains(&a.top_p) || a.top_p == 0.0 {
        anyhow::bail!("--top-p must be in (0, 1]");
    }
    if a.temperature < 0.0 || !a.temperature.is_finite() {
        anyhow::bail!("--temperature must be 0 or positive");
    }
    let g = Generator::open_with(&a.model, a.adapter.as_deref())?;
    let prompt = g.prompt(&a.prompt, a.chat)?;
    let opts = GenOptions {
        max_tokens: a.max_tokens,
        temperature: a.temperature,
        top_p: a.top_p,
        seed: a.seed,
        stop: Vec::new(),
        half_kv: a.kv_cache == "f16",
    };
    if a.json {
        let out = g.run(&prompt, &opts, None)?;
        println!("{}", serde_json::to_string_pretty(&out.to_json())?);
        return Ok(());
    }
    print!("{}{}", a.prompt, if a.chat { "\n" } else { "" });
    std::io::stdout().flush()?;
    let out = g.run(
        &prompt,
        &opts,
        Some(&mut |s: &str| {
            print!("{s}");
            let _ = std::io::stdout().flush();
        }),
    )?;
    println!();
    eprintln!(
        "[{} tokens in {:.2} s, {:.1} tokens/s]",
        out.ids.len(),
        out.seconds,
        out.tokens_per_second()
    );
    if let Stop::Context(n) = out.stopped {
        eprintln!("note: stopped because the model's context of {n} positions is full");
    }
    Ok(())
}
