//! `shrink eval`: lee-ppl-v1 perplexity, with KLD / top-1 agreement against a base model.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::ValueEnum;
use shrink_eval::{lee_texts, perplexity, PplOptions, PROTOCOL};
use shrink_models::{Model, ModelConfig};

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
}

/// Run `shrink eval`.
pub fn run(a: Args) -> Result<()> {
    if a.max_windows == Some(0) {
        bail!("--max-windows must be at least 1");
    }
    let raw = shrink_io::read_text(&a.text)?;
    let text = match a.protocol {
        Protocol::Lee => {
            lee_texts(&raw)
                .map_err(|e| anyhow::anyhow!("{}: {e}", a.text.display()))?
                .evaluation
        }
        Protocol::Raw => raw,
    };
    let ckpt = common::open(&a.model)?;
    // An architecture shrink cannot run is the first thing to say, before a missing tokenizer.
    ModelConfig::from_checkpoint(&ckpt)?;
    let tok = common::tokenizer(&ckpt)?;
    let t0 = std::time::Instant::now();
    let ids = tok.encode(&text, false)?;
    let tokenize_s = t0.elapsed().as_secs_f64();
    let opts = PplOptions {
        max_windows: a.max_windows,
        ..Default::default()
    };
    if shrink_eval::perplexity::windows(&ids, &opts).is_empty() {
        bail!(
            "{}: the text has {} tokens, fewer than one window of {}",
            a.text.display(),
            ids.len(),
            opts.window
        );
    }
    let model = Model::load(&ckpt)?;
    let base = match &a.base {
        Some(p) => {
            let bc = common::open(p)?;
            let bm = Model::load(&bc)?;
            if bm.config().vocab_size() != model.config().vocab_size() {
                bail!(
                    "{}: vocabulary of {} tokens differs from the model's {}; KLD needs the same vocabulary",
                    p.display(),
                    bm.config().vocab_size(),
                    model.config().vocab_size()
                );
            }
            Some(bm)
        }
        None => None,
    };
    let total = shrink_eval::perplexity::windows(&ids, &opts).len();
    let pb = common::bar(total as u64, "perplexity");
    let rep = perplexity(&model, base.as_ref(), &ids, &opts, |d, _| {
        pb.set_position(d as u64)
    })?;
    pb.finish_and_clear();
    let tps = rep.scored_tokens as f64 / rep.seconds;
    if a.json {
        let mut v = serde_json::json!({
            "protocol": if matches!(a.protocol, Protocol::Lee) { PROTOCOL } else { "raw" },
            "model": a.model,
            "base": a.base,
            "tokens": ids.len(),
            "windows": rep.windows,
            "scored_tokens": rep.scored_tokens,
            "ppl": rep.ppl,
            "nll_mean": rep.nll_mean,
            "kld": rep.kld,
            "top1_agreement": rep.top1_agreement,
            "seconds": rep.seconds,
            "tokenize_seconds": tokenize_s,
            "tokens_per_second": tps,
            "peak_rss_bytes": common::peak_rss(),
        });
        if a.per_window {
            v["per_window_nll"] =
                serde_json::json!(rep.per_window.iter().map(|w| w.nll).collect::<Vec<_>>());
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("model          {}", a.model.display());
        println!(
            "protocol       {}",
            if matches!(a.protocol, Protocol::Lee) {
                PROTOCOL
            } else {
                "raw"
            }
        );
        println!(
            "tokens         {} ({} windows of 512, {} scored)",
            ids.len(),
            rep.windows,
            rep.scored_tokens
        );
        println!("perplexity     {:.4}", rep.ppl);
        if let (Some(k), Some(t)) = (rep.kld, rep.top1_agreement) {
            println!("KLD vs base    {k:.5}");
            println!("top-1 agree    {:.2} %", 100.0 * t);
        }
        println!(
            "time           {:.1} s ({tps:.0} scored tokens/s)",
            rep.seconds
        );
        if let Some(r) = common::peak_rss() {
            println!("peak RSS       {}", common::human(r));
        }
    }
    Ok(())
}
