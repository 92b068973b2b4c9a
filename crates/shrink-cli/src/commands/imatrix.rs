//! `shrink imatrix`: llama.cpp's importance matrix — per weight, the mean x² of each input
//! column over calibration text — collected layer by layer and written as `imatrix.dat`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use shrink_methods::calib::{consecutive_chunks, CalibSpec};

use super::calibrated::CalibFormat;
use crate::common;

/// Arguments of `shrink imatrix`.
#[derive(clap::Args)]
#[command(
    after_help = "The matrix feeds `shrink quantize --method q4_k_m --imatrix FILE` (and llama.cpp's llama-quantize --imatrix). Like llama-imatrix, the text is cut into consecutive chunks of --calib-seqlen tokens and the float model is run over them; entries are named as in GGUF (blk.N.ffn_down.weight). Finished layers are kept in OUT.run (every --keep-every seconds): after a kill, the same command with --resume continues after the last kept layer.\n\nExample:\n  shrink imatrix assets/SmolLM2-135M-Instruct.Q4_1.gguf --calib assets/lee_background.cor -o smollm2.imatrix.dat"
)]
pub struct Args {
    /// Model (HF directory or .gguf; any decoder family).
    pub model: PathBuf,
    /// Output file (legacy imatrix.dat format; must not exist).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Calibration text.
    #[arg(long)]
    pub calib: PathBuf,
    /// Which part of --calib to use.
    #[arg(long, value_enum, default_value = "lee")]
    pub calib_format: CalibFormat,
    /// Most chunks to use.
    #[arg(long, default_value_t = 128)]
    pub calib_samples: usize,
    /// Tokens per chunk.
    #[arg(long, default_value_t = 512)]
    pub calib_seqlen: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Resuming a long run.
    #[command(flatten)]
    pub long: super::calibrated::LongRun,
}

/// Run `shrink imatrix`.
pub fn run(a: Args) -> Result<()> {
    if a.output.exists() {
        bail!("{}: exists; choose a new output file", a.output.display());
    }
    let t0 = Instant::now();
    let ckpt = common::open(&a.model)?;
    let ids = super::calibrated::calib_ids(&ckpt, &a.calib, a.calib_format == CalibFormat::Lee)?;
    let spec = CalibSpec {
        samples: a.calib_samples,
        seqlen: a.calib_seqlen,
        seed: 0,
    };
    let chunks = consecutive_chunks(&ids, spec)
        .map_err(|e| anyhow::anyhow!("{}: {e}", a.calib.display()))?;
    let run_dir = a.long.run_dir(&a.output)?;
    let (mut m, state) = shrink_methods::calibrated::imatrix(
        &ckpt,
        &chunks,
        Some(&run_dir),
        &common::Bar::default(),
    )?;
    m.datasets = vec![a.calib.display().to_string()];
    m.write(&a.output)?;
    let resumed = state.as_ref().map(|s| s.resumed()).filter(|&n| n > 0);
    if let Some(s) = state {
        s.finish()?;
    }
    let seconds = t0.elapsed().as_secs_f64();
    let v = serde_json::json!({
        "model": a.model, "output": a.output, "entries": m.entries.len(),
        "chunks": chunks.len(), "chunk_tokens": a.calib_seqlen, "seconds": seconds,
        "peak_rss_bytes": common::peak_rss(), "resumed_after_layers": resumed,
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("wrote          {}", a.output.display());
        println!(
            "entries        {} weights, from {} chunks of {} tokens",
            m.entries.len(),
            chunks.len(),
            a.calib_seqlen
        );
        if let Some(n) = resumed {
            println!("resumed        after {n} finished layers");
        }
        println!("time           {seconds:.1} s");
        if let Some(r) = common::peak_rss() {
            println!("peak RSS       {}", common::human(r));
        }
    }
    Ok(())
}
