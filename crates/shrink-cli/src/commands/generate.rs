//! `shrink generate`: continue a prompt, streaming tokens as they are produced.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use shrink_eval::generate::{generate, GenOptions};
use shrink_models::{Model, ModelConfig};

use crate::common;

/// Arguments of `shrink generate`.
#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  shrink generate assets/SmolLM2-135M-Instruct.Q4_1.gguf --prompt \"The capital of France is\"\n  shrink generate assets/SmolLM2-135M-Instruct.Q4_1.gguf --chat --prompt \"Name three fruits.\" --temperature 0.7 --seed 1"
)]
pub struct Args {
    /// Model (HF directory or .gguf).
    pub model: PathBuf,
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
    let ckpt = common::open(&a.model)?;
    // An architecture shrink cannot run is the first thing to say, before a missing tokenizer.
    ModelConfig::from_checkpoint(&ckpt)?;
    let tok = common::tokenizer(&ckpt)?;
    let model = Model::load(&ckpt)?;
    let text = if a.chat {
        tok.apply_chat_template(&[("user", &a.prompt)], true)?
    } else {
        a.prompt.clone()
    };
    let ids = tok.encode(&text, true)?;
    let opts = GenOptions {
        max_tokens: a.max_tokens,
        temperature: a.temperature,
        top_p: a.top_p,
        seed: a.seed,
        stop: tok.eos_ids(),
    };
    let mut stream = tok.decode_stream();
    let mut stdout = std::io::stdout();
    if !a.json {
        print!("{}", a.prompt);
        if a.chat {
            println!();
        }
        stdout.flush()?;
    }
    let t0 = std::time::Instant::now();
    let mut err = None;
    let out = generate(&model, &ids, &opts, |id| {
        if a.json || err.is_some() {
            return;
        }
        match stream.step(id) {
            Ok(Some(s)) => {
                print!("{s}");
                let _ = stdout.flush();
            }
            Ok(None) => {}
            Err(e) => err = Some(e),
        }
    })?;
    if let Some(e) = err {
        return Err(e.into());
    }
    let secs = t0.elapsed().as_secs_f64();
    if a.json {
        let v = serde_json::json!({
            "prompt": text,
            "completion": tok.decode(&out)?,
            "prompt_ids": ids,
            "ids": out,
            "seconds": secs,
            "tokens_per_second": out.len() as f64 / secs,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!();
        eprintln!(
            "[{} tokens in {:.2} s, {:.1} tokens/s]",
            out.len(),
            secs,
            out.len() as f64 / secs
        );
    }
    Ok(())
}
