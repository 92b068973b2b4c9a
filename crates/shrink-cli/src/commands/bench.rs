//! `shrink bench`: prompt-processing and generation speed in llama-bench's terms, with the
//! memory-bandwidth ceiling of generation.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use shrink_eval::bench::{self, BenchSpec, Limit};
use shrink_models::footprint::Footprint;
use shrink_models::Model;

use crate::common;

/// Arguments of `shrink bench`.
#[derive(clap::Args)]
#[command(
    after_help = "Measures as llama.cpp's llama-bench does, so the two tables can be put side by side: \
pp = a prompt of random tokens in one batch (logits of its last token), tg = random tokens one at a \
time through the KV cache, each test from an empty cache (or one holding --n-depth tokens, filled as \
an unmeasured prompt: llama-bench's -d) after one unmeasured warm-up, tokens/s as \
mean ± sample standard deviation over the repetitions. Then the ceiling of generation: the bytes of \
weights one token reads (every linear layer as shrink holds it, the head, the norms, one embedding \
row) against the machine's memory bandwidth, measured here.\n\nExamples:\n  shrink bench \
assets/SmolLM2-135M-Instruct.Q4_1.gguf\n  shrink bench smollm2-int4 -p 512 -n 128 -r 5 -t 2 --json\n  \
shrink bench model.gguf -p 0 -n 128 -d 1024            # generation after 1024 tokens\n  \
llama-bench -m model.gguf -p 512 -n 128 -r 5 -t 2        # the peer, same columns"
)]
pub struct Args {
    /// Model (HF directory or .gguf).
    pub model: PathBuf,
    /// Prompt tokens of the pp test (0: skip it).
    #[arg(short = 'p', long = "n-prompt", default_value_t = 512)]
    pub n_prompt: usize,
    /// Generated tokens of the tg test (0: skip it).
    #[arg(short = 'n', long = "n-gen", default_value_t = 128)]
    pub n_gen: usize,
    /// Measured repetitions of each test.
    #[arg(short = 'r', long, default_value_t = 5)]
    pub repetitions: usize,
    /// Tokens already in the KV cache when each test starts.
    #[arg(short = 'd', long = "n-depth", default_value_t = 0)]
    pub depth: usize,
    /// How the KV cache holds keys and values: f32, or f16 as llama-bench's default (`-ctk f16
    /// -ctv f16`)
    #[arg(long, value_name = "TYPE", default_value = "f32", value_parser = ["f32", "f16"])]
    pub kv_cache: String,
    /// Threads (default: every logical CPU).
    #[arg(short = 't', long)]
    pub threads: Option<usize>,
    /// Skip the memory-bandwidth measurement (and so the ceiling).
    #[arg(long)]
    pub no_bandwidth: bool,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// Run `shrink bench`.
pub fn run(a: Args) -> Result<()> {
    if let Some(t) = a.threads {
        if t == 0 {
            bail!("--threads must be at least 1");
        }
        // candle's GEMM asks the same variable as rayon's pool; set both before either starts.
        std::env::set_var("RAYON_NUM_THREADS", t.to_string());
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global()
            .context("setting the thread count")?;
    }
    let spec = BenchSpec {
        n_prompt: a.n_prompt,
        n_gen: a.n_gen,
        repetitions: a.repetitions,
        depth: a.depth,
        half_kv: a.kv_cache == "f16",
        seed: 0,
    };
    let ckpt = common::open(&a.model)?;
    let fp = Footprint::of(&ckpt);
    let model = Model::load(&ckpt)?;
    drop(ckpt);
    let threads = rayon::current_num_threads();
    let results = bench::run(&model, &spec, &common::Bar::default())?;
    let bytes = model.bytes_per_token();
    let limit = (!a.no_bandwidth).then(|| Limit::new(bytes, bench::memory_bandwidth(5)));
    let tg = results.iter().find(|r| r.n_gen > 0);
    let name = a
        .model
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| a.model.display().to_string());
    if a.json {
        let v = serde_json::json!({
            "model": a.model,
            "model_type": fp.architecture,
            "model_size": fp.bytes,
            "model_n_params": fp.parameters,
            "backend": "CPU",
            "n_threads": threads,
            "results": results,
            "bytes_per_token": bytes,
            "limit": limit,
            "share_of_limit": limit.zip(tg).map(|(l, r)| l.share(r.avg_ts)),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("| model | size | params | backend | threads | test | t/s |");
    println!("| --- | ---: | ---: | --- | ---: | ---: | ---: |");
    for r in &results {
        println!(
            "| {name} ({}) | {:.2} MiB | {:.2} M | CPU | {threads} | {} | {:.2} ± {:.2} |",
            fp.architecture,
            fp.bytes as f64 / (1u64 << 20) as f64,
            fp.parameters as f64 / 1e6,
            r.test,
            r.avg_ts,
            r.stddev_ts
        );
    }
    println!();
    println!(
        "weights read per token  {:.1} MB (every linear as held, the head, the norms, one embedding row)",
        bytes as f64 / 1e6
    );
    if let Some(l) = limit {
        println!(
            "memory bandwidth        {:.1} GB/s (best of 5 sums over 512 MiB, {threads} threads)",
            l.bandwidth_bytes_per_s / 1e9
        );
        match tg {
            Some(r) => println!(
                "generation ceiling      {:.1} tokens/s; {} reaches {:.1} % of it",
                l.tokens_per_s,
                r.test,
                100.0 * l.share(r.avg_ts)
            ),
            None => println!("generation ceiling      {:.1} tokens/s", l.tokens_per_s),
        }
    }
    Ok(())
}
