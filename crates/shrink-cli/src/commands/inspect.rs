//! `shrink inspect`: what a checkpoint holds and exactly how much memory it takes.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Result;
use shrink_io::{Checkpoint, TensorEntry};
use shrink_models::ModelConfig;

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

/// Sizes of every dotted prefix of the tensor names ("" is the whole model).
pub fn module_sizes(tensors: &[TensorEntry]) -> BTreeMap<String, u64> {
    let mut sizes = BTreeMap::new();
    for t in tensors {
        *sizes.entry(String::new()).or_insert(0) += t.bytes;
        let parts: Vec<&str> = t.name.split('.').collect();
        for i in 1..parts.len() {
            *sizes.entry(parts[..i].join(".")).or_insert(0) += t.bytes;
        }
        *sizes.entry(t.name.clone()).or_insert(0) += t.bytes;
    }
    sizes
}

/// Run `shrink inspect`.
pub fn run(a: Args) -> Result<()> {
    let ckpt = common::open(&a.model)?;
    let tensors = ckpt.tensors();
    // Causal LMs first; BERT-style classifiers are a family of their own.
    let cfg = ModelConfig::from_checkpoint(&ckpt)
        .map(|c| c.family())
        .or_else(|e| {
            shrink_models::BertConfig::from_checkpoint(&ckpt)
                .map(|b| match b.kind {
                    shrink_models::BertKind::Bert => "BERT classifier",
                    shrink_models::BertKind::DistilBert => "DistilBERT classifier",
                })
                .map_err(|_| e)
        });
    let (arch, format) = match &ckpt {
        Checkpoint::Hf(h) => (
            h.config
                .get("model_type")
                .and_then(|v| v.as_str())
                .unwrap_or("?")
                .to_string(),
            "huggingface safetensors",
        ),
        Checkpoint::Gguf(g) => (g.architecture().unwrap_or("?").to_string(), "gguf"),
    };
    // Packed tensors of a quantized checkpoint hold several weights per element: count the
    // parameters of the model the configuration describes instead.
    let quantized = matches!(&ckpt, Checkpoint::Hf(h) if h.quantization_config().is_some());
    let params: u64 = match (&ckpt, quantized) {
        (_, true) => match ModelConfig::from_checkpoint(&ckpt) {
            Ok(c) => shrink_models::weight_shapes(&c)
                .iter()
                .map(|(_, s)| s.iter().product::<usize>() as u64)
                .sum(),
            Err(_) => tensors.iter().map(|t| t.elements()).sum(),
        },
        _ => tensors.iter().map(|t| t.elements()).sum(),
    };
    let bytes: u64 = tensors.iter().map(|t| t.bytes).sum();
    let mut per_dtype: BTreeMap<String, (usize, u64, u64)> = BTreeMap::new();
    for t in &tensors {
        let e = per_dtype.entry(t.dtype.name()).or_default();
        e.0 += 1;
        e.1 += t.elements();
        e.2 += t.bytes;
    }
    let modules = a.modules.then(|| module_sizes(&tensors));
    if a.json {
        let mut v = serde_json::json!({
            "path": a.model,
            "format": format,
            "architecture": arch,
            "family": cfg.as_ref().ok(),
            "parameters": params,
            "tensors": tensors.len(),
            "footprint_bytes": bytes,
            "float32_bytes": params * 4,
            "bits_per_weight": bytes as f64 * 8.0 / params.max(1) as f64,
            "dtypes": per_dtype.iter().map(|(k, (n, p, b))| (k.clone(), serde_json::json!({"tensors": n, "parameters": p, "bytes": b}))).collect::<serde_json::Map<_, _>>(),
        });
        if let Err(e) = &cfg {
            v["config_error"] = serde_json::json!(e.to_string());
        }
        if let Some(m) = &modules {
            v["modules"] = serde_json::json!(m);
        }
        if a.tensors {
            v["tensor_list"] = serde_json::json!(tensors
                .iter()
                .map(|t| serde_json::json!({"name": t.name, "dtype": t.dtype.name(), "shape": t.shape, "bytes": t.bytes}))
                .collect::<Vec<_>>());
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("model          {}", a.model.display());
    println!("format         {format}");
    match &cfg {
        Ok(family) => println!("architecture   {arch} ({family} family)"),
        Err(e) => println!("architecture   {arch} (not runnable by shrink: {e})"),
    }
    println!("parameters     {params} ({:.1} M)", params as f64 / 1e6);
    println!("tensors        {}", tensors.len());
    println!(
        "footprint      {bytes} bytes ({}), {:.3} bits/weight",
        common::human(bytes),
        bytes as f64 * 8.0 / params.max(1) as f64
    );
    println!(
        "as float32     {} bytes ({})",
        params * 4,
        common::human(params * 4)
    );
    println!("dtypes");
    for (k, (n, p, b)) in &per_dtype {
        println!("  {k:<8} {n:>5} tensors {p:>14} params {b:>14} bytes");
    }
    if let Some(m) = &modules {
        println!("modules (bytes)");
        for (k, b) in m {
            let name = if k.is_empty() { "<model>" } else { k };
            println!("  {name:<50} {b:>14}");
        }
    }
    if a.tensors {
        println!("tensors");
        for t in &tensors {
            println!(
                "  {:<50} {:<6} {:<16} {:>12}",
                t.name,
                t.dtype.name(),
                format!("{:?}", t.shape),
                t.bytes
            );
        }
    }
    Ok(())
}
