//! `shrink inspect`: what a checkpoint holds, exactly how much memory it takes and how sparse
//! its weights are.

use std::path::PathBuf;

use anyhow::Result;
use shrink_models::footprint::{module_sizes, Footprint};
use shrink_models::sparsity::Sparsity;

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
    /// Every tensor: name, dtype, shape, bytes and sparsity (fraction of exact zeros).
    #[arg(long)]
    pub tensors: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Run `shrink inspect`.
pub fn run(a: Args) -> Result<()> {
    let ckpt = common::open(&a.model)?;
    let f = Footprint::of(&ckpt);
    // Weights are read one at a time; a checkpoint shrink cannot decode still gets its footprint.
    let sparsity = Sparsity::of(&ckpt).map_err(|e| e.to_string());
    if a.json {
        let mut v = f.to_json(&a.model, a.modules, a.tensors);
        match &sparsity {
            Ok(s) => v["sparsity"] = s.to_json(),
            Err(e) => {
                v["sparsity"] = serde_json::Value::Null;
                v["sparsity_error"] = serde_json::json!(e);
            }
        }
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
    match &sparsity {
        Ok(s) => {
            let linear = s.linear_weights().map_or(String::new(), |l| {
                format!(", {:.2} % of linear weights", 100.0 * l)
            });
            println!(
                "sparsity       {:.2} % of all weights{linear} are exact zeros",
                100.0 * s.overall()
            );
        }
        Err(e) => println!("sparsity       unavailable ({e})"),
    }
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
        let per: std::collections::BTreeMap<&str, f64> = match &sparsity {
            Ok(s) => s
                .tensors
                .iter()
                .map(|t| (t.name.as_str(), t.sparsity()))
                .collect(),
            Err(_) => Default::default(),
        };
        let pct = |name: &str| {
            per.get(name)
                .map_or("-".into(), |s| format!("{:.2} %", 100.0 * s))
        };
        println!("tensors (sparsity: fraction of exact zeros)");
        for t in &f.tensors {
            let shape = format!("{:?}", t.shape);
            let (name, dtype) = (&t.name, t.dtype.name());
            let sp = pct(name);
            println!(
                "  {name:<50} {dtype:<6} {shape:<16} {:>12} {sp:>9}",
                t.bytes
            );
        }
        // Weights stored under other names (sparse or quantized layouts, GGUF names).
        let stored: std::collections::BTreeSet<&str> =
            f.tensors.iter().map(|t| t.name.as_str()).collect();
        let decoded: Vec<&str> = per
            .keys()
            .copied()
            .filter(|n| !stored.contains(n))
            .collect();
        if !decoded.is_empty() {
            println!("weights stored in packed layouts or under other names (sparsity decoded)");
            for name in decoded {
                println!("  {name:<50} {:>9}", pct(name));
            }
        }
    }
    Ok(())
}
