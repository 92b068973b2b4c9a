//! `shrink inspect`: what a checkpoint holds and exactly how much memory it takes.

use std::path::PathBuf;

use anyhow::Result;
use shrink_models::footprint::{module_sizes, Footprint};

use crate::common;

/// Arguments of `shrink inspect`.
#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  shrink inspect assets/SmolLM2-135M-Instruct.Q4_1.gguf\n  shrink inspect my-model-dir --modules --json"
)]
pub struct Args {
    /// Model (HF directory or .gguf).
    pub model: PathBuf,
    /// Size of every submodule (every dotted prefix of the tensor names), like accelerate's compute_module_sizes.
    #[arg(long)]
    pub modules: bool,
    /// Every tensor: name, dtype, shape, bytes.
    #[arg(long)]
    pub tensors: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Run `shrink inspect`.
pub fn run(a: Args) -> Result<()> {
    let f = Footprint::of(&common::open(&a.model)?);
    if a.json {
        let v = f.to_json(&a.model, a.modules, a.tensors);
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let (params, bytes) = (f.parameters, f.bytes);
    println!("model          {}", a.model.display());
    println!("format         {}", f.format);
    match &f.family {
        Ok(family) => println!("architecture   {} ({family} family)", f.architecture),
        Err(e) => println!(
            "architecture   {} (not runnable by shrink: {e})",
            f.architecture
        ),
    }
    println!("parameters     {params} ({:.1} M)", params as f64 / 1e6);
    println!("tensors        {}", f.tensors.len());
    println!(
        "footprint      {bytes} bytes ({}), {:.3} bits/weight",
        common::human(bytes),
        f.bits_per_weight()
    );
    let f32_bytes = f.float32_bytes();
    println!(
        "as float32     {f32_bytes} bytes ({})",
        common::human(f32_bytes)
    );
    println!("dtypes");
    for (k, d) in &f.dtypes {
        let (n, p, b) = (d.tensors, d.parameters, d.bytes);
        println!("  {k:<8} {n:>5} tensors {p:>14} params {b:>14} bytes");
    }
    if a.modules {
        println!("modules (bytes)");
        for (k, b) in module_sizes(&f.tensors) {
            let name = if k.is_empty() { "<model>" } else { &k };
            println!("  {name:<50} {b:>14}");
        }
    }
    if a.tensors {
        println!("tensors");
        for t in &f.tensors {
            let shape = format!("{:?}", t.shape);
            let (name, dtype) = (&t.name, t.dtype.name());
            println!("  {name:<50} {dtype:<6} {shape:<16} {:>12}", t.bytes);
        }
    }
    Ok(())
}
