//! `shrink chart`: perplexity against bits/weight (or sparsity) for every method of a results
//! CSV, as a PNG.

use std::path::PathBuf;

use anyhow::Result;
use shrink_eval::chart;
use shrink_eval::chart_csv::{draw, ChartRequest};

/// Arguments of `shrink chart`.
#[derive(clap::Args)]
#[command(after_help = "\
The CSV has a header naming at least the columns label,source,bits_per_weight,ppl,windows
(docs/results/ppl-bits.csv adds command; extra columns are ignored). One row per measured
method: source is \"shrink\", \"base\" (f32/bf16/fp16; the widest is drawn as the dashed
baseline) or the peer tool (llama.cpp, bitsandbytes, hqq, ...); bits_per_weight counts the
quantized tensors only, scales and zeros included; windows is how many 512-token windows of
lee-ppl-v1 the perplexity was scored on (peers.md compares the first 24).

The chart: both axes log scale, perplexity capped at 300 (higher points are listed beside it),
shrink's points filled red, labels on shrink's points and each peer's Pareto front.

Examples:
  shrink chart --data docs/results/ppl-bits.csv -o docs/results/ppl-bits.png
  shrink chart --data docs/results/ppl-bits.csv --windows 74 -o full.png --title \"Full protocol\" --json
  shrink chart --data docs/results/ppl-sparsity.csv --x sparsity -o ppl-sparsity.png")]
pub struct Args {
    /// Results CSV (header: label,source,bits_per_weight,ppl,windows[,command,...]).
    #[arg(long)]
    pub data: PathBuf,
    /// The PNG to write (drawn under a temporary name beside it, then renamed).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Keep only the rows scored on this many windows.
    #[arg(long, default_value_t = 24)]
    pub windows: u32,
    /// Chart title [default: names the protocol and the windows].
    #[arg(long)]
    pub title: Option<String>,
    /// Image width in pixels.
    #[arg(long, default_value_t = chart::SIZE.0)]
    pub width: u32,
    /// Image height in pixels.
    #[arg(long, default_value_t = chart::SIZE.1)]
    pub height: u32,
    /// The horizontal axis: `bits` (bits/weight of the quantized tensors, column
    /// bits_per_weight), `model-bits` (of the whole model, column model_bits_per_weight) or
    /// `sparsity` (column sparsity, the fraction of zero weights in [0, 1)).
    #[arg(long, default_value = "bits", value_parser = ["bits", "model-bits", "sparsity"])]
    pub x: String,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Run `shrink chart`.
pub fn run(args: Args) -> Result<()> {
    let drawn = draw(&ChartRequest {
        data: args.data,
        output: args.output,
        windows: args.windows,
        title: args.title,
        size: (args.width, args.height),
        x: chart::XAxis::parse(&args.x).expect("clap checked the value"),
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&drawn.to_json())?);
    } else {
        drawn.lines().iter().for_each(|l| println!("{l}"));
    }
    Ok(())
}
