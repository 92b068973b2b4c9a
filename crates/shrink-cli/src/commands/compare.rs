//! `shrink compare`: one table of what each compressed model cost and kept, against its base.

use std::path::PathBuf;

use anyhow::{bail, Result};
use shrink_eval::classify::compare_classifiers;
use shrink_eval::compare::{compare, CompareOptions};

use crate::common;

/// Arguments of `shrink compare`.
#[derive(clap::Args)]
#[command(
    after_help = "Language models are scored on lee-ppl-v1 (--text); BERT/DistilBERT classifiers on labelled sentences (--data, `__label__X text` lines): parameters, bytes, accuracy, macro precision, recall and F1, per-class scores and agreement with the base's predictions.\n\nExamples:\n  shrink compare assets/SmolLM2-135M-Instruct.Q4_1.gguf smollm2-nf4 smollm2-int4 --text assets/lee_background.cor --report report/\n  shrink compare minilm-rt minilm-rt-student minilm-rt-student-nf4 --data assets/rotten_tomatoes.test.txt"
)]
pub struct Args {
    /// The reference model (HF directory or .gguf).
    pub base: PathBuf,
    /// Compressed models to compare with it.
    #[arg(required = true)]
    pub models: Vec<PathBuf>,
    /// The Lee corpus (lee-ppl-v1 evaluation text).
    #[arg(long, required_unless_present = "data", conflicts_with = "data")]
    pub text: Option<PathBuf>,
    /// Labelled sentences (`__label__X text`) to score classifiers on, instead of --text.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Windows of 512 tokens to score (peers.md's comparison set is the first 24).
    #[arg(long, default_value_t = 24)]
    pub max_windows: usize,
    /// Write report.md, report.json and weight histograms (PNG) into this new directory (never an
    /// existing one, an input, or a directory inside an input).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Weight whose histogram is drawn (default: the first decoder linear layer).
    #[arg(long)]
    pub tensor: Option<String>,
    /// Prompt for the generations shown side by side.
    #[arg(long, default_value = "The capital of France is")]
    pub prompt: String,
    /// Tokens generated per model (greedy).
    #[arg(long, default_value_t = 24)]
    pub max_tokens: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Run `shrink compare`.
pub fn run(a: Args) -> Result<()> {
    if let Some(data) = &a.data {
        // The report directory checked before any scoring, written whole or not at all.
        let out = a
            .report
            .as_deref()
            .map(|dir| shrink_eval::compare::report_dir(dir, &a.base, data, &a.models))
            .transpose()?;
        let c = compare_classifiers(&a.base, &a.models, data, &common::Bar::default())?;
        if let Some(out) = out {
            for (name, text) in [
                ("report.json", serde_json::to_string_pretty(&c.to_json())?),
                ("report.md", c.markdown()),
            ] {
                out.write(name, text.as_bytes())?;
            }
            out.commit()?;
        }
        if a.json {
            println!("{}", serde_json::to_string_pretty(&c.to_json())?);
        } else {
            print!("{}", c.markdown());
        }
        return Ok(());
    }
    let text = a.text.expect("clap: --text or --data");
    if let Ok(shrink_models::Architecture::Encoder(_)) =
        common::open(&a.base).and_then(|c| Ok(shrink_models::Architecture::from_checkpoint(&c)?))
    {
        bail!(
            "{}: a classifier; score it on labelled sentences with --data FILE",
            a.base.display()
        );
    }
    if a.max_windows == 0 {
        bail!("--max-windows must be at least 1");
    }
    let opts = CompareOptions {
        max_windows: a.max_windows,
        tensor: a.tensor,
        prompt: a.prompt,
        max_tokens: a.max_tokens,
        report: a.report,
    };
    let c = compare(&a.base, &a.models, &text, &opts, &common::Bar::default())?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&c.to_json())?);
    } else {
        print!("{}", c.markdown());
    }
    Ok(())
}
