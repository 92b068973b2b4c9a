//! `shrink compare`: one table of what each compressed model cost and kept, against its base.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use shrink_eval::generate::{generate, GenOptions};
use shrink_eval::weights::{weight_error, WeightError};
use shrink_eval::{lee_texts, perplexity, PplOptions};
use shrink_io::Checkpoint;
use shrink_models::{Model, ModelConfig};

use crate::common;

/// Arguments of `shrink compare`.
#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  shrink compare assets/SmolLM2-135M-Instruct.Q4_1.gguf smollm2-nf4 smollm2-int4 --text assets/lee_background.cor --report report/"
)]
pub struct Args {
    /// The reference model (HF directory or .gguf).
    pub base: PathBuf,
    /// Compressed models to compare with it.
    #[arg(required = true)]
    pub models: Vec<PathBuf>,
    /// The Lee corpus (lee-ppl-v1 evaluation text).
    #[arg(long)]
    pub text: PathBuf,
    /// Windows of 512 tokens to score (peers.md's comparison set is the first 24).
    #[arg(long, default_value_t = 24)]
    pub max_windows: usize,
    /// Write report.md, report.json and weight histograms (PNG) into this directory.
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

/// One model's row of the comparison.
#[derive(serde::Serialize)]
struct Row {
    model: String,
    method: String,
    bits_per_weight_quantized: Option<f64>,
    bits_per_weight_model: f64,
    model_bytes: u64,
    compression_vs_f32: f64,
    ppl: f64,
    delta_ppl_pct: f64,
    kld: f64,
    top1_agreement: f64,
    quantize_seconds: Option<f64>,
    generation: String,
    layers: Vec<WeightError>,
}

/// Method name and quantized bits/weight of a checkpoint (from its quantization_config).
fn accounting(ckpt: &Checkpoint, cfg: &ModelConfig) -> Result<(String, Option<f64>)> {
    let Checkpoint::Hf(h) = ckpt else {
        return Ok(("gguf".into(), None));
    };
    let Some(q) = h.quantization_config() else {
        let dtype = h
            .config
            .get("dtype")
            .or_else(|| h.config.get("torch_dtype"))
            .and_then(|v| v.as_str())
            .unwrap_or("float");
        return Ok((dtype.to_string(), None));
    };
    let (mut bytes, mut params) = (0usize, 0usize);
    for l in shrink_models::decoder_linears(cfg) {
        if let Some(t) = h.quantized(&l.weight)? {
            bytes += t.stored_bytes();
            params += l.out_features * l.in_features;
        }
    }
    let method = q
        .get("quant_method")
        .and_then(|v| v.as_str())
        .unwrap_or("?")
        .to_string();
    Ok((
        method,
        (params > 0).then(|| bytes as f64 * 8.0 / params as f64),
    ))
}

/// The report `shrink quantize` leaves beside its output, if any.
fn quantize_report(dir: &Path) -> Option<serde_json::Value> {
    serde_json::from_slice(&std::fs::read(dir.join("shrink-quantize.json")).ok()?).ok()
}

/// Run `shrink compare`.
pub fn run(a: Args) -> Result<()> {
    if a.max_windows == 0 {
        bail!("--max-windows must be at least 1");
    }
    let raw = shrink_io::read_text(&a.text)?;
    let text = lee_texts(&raw)
        .map_err(|e| anyhow::anyhow!("{}: {e}", a.text.display()))?
        .evaluation;
    let base_ckpt = common::open(&a.base)?;
    let base_cfg = ModelConfig::from_checkpoint(&base_ckpt)?;
    let tok = common::tokenizer(&base_ckpt)?;
    let ids = tok.encode(&text, false)?;
    let base = Model::load(&base_ckpt)?;
    let opts = PplOptions {
        max_windows: Some(a.max_windows),
        ..Default::default()
    };
    let pb = common::bar(a.max_windows as u64, "base");
    let base_rep = perplexity(&base, None, &ids, &opts, |d, _| pb.set_position(d as u64))?;
    pb.finish_and_clear();
    let prompt_ids = tok.encode(&a.prompt, true)?;
    let gen_opts = GenOptions {
        max_tokens: a.max_tokens,
        stop: tok.eos_ids(),
        ..Default::default()
    };
    let base_gen = tok.decode(&generate(&base, &prompt_ids, &gen_opts, |_| {})?)?;
    let linears = shrink_models::decoder_linears(&base_cfg);
    let hist_name = a
        .tensor
        .clone()
        .unwrap_or_else(|| linears[0].weight.clone());
    let base_loader = shrink_models::weight_loader(&base_ckpt, &base_cfg);
    let shape_of = |n: &str| {
        shrink_models::weight_shapes(&base_cfg)
            .into_iter()
            .find(|(w, _)| w == n)
            .map(|(_, s)| s)
    };
    let Some(hist_shape) = shape_of(&hist_name) else {
        bail!(
            "--tensor {hist_name}: no such weight in {}",
            a.base.display()
        )
    };
    let hist_base: Vec<f32> =
        shrink_models::read_hf_weight(&base_loader, &base_cfg, &hist_name, &hist_shape)?
            .flatten_all()?
            .to_vec1()?;
    let total_params: u64 = shrink_models::weight_shapes(&base_cfg)
        .iter()
        .map(|(_, s)| s.iter().product::<usize>() as u64)
        .sum();
    if let Some(dir) = &a.report {
        std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
    }

    let mut rows = Vec::new();
    for path in &a.models {
        let ckpt = common::open(path)?;
        let cfg = ModelConfig::from_checkpoint(&ckpt)?;
        if cfg.vocab_size() != base_cfg.vocab_size() {
            bail!("{}: vocabulary differs from the base's", path.display());
        }
        let model = Model::load(&ckpt)?;
        let pb = common::bar(a.max_windows as u64, &path.display().to_string());
        let rep = perplexity(&model, Some(&base), &ids, &opts, |d, _| {
            pb.set_position(d as u64)
        })?;
        pb.finish_and_clear();
        let (method, bpw_q) = accounting(&ckpt, &cfg)?;
        let model_bytes: u64 = ckpt.tensors().iter().map(|t| t.bytes).sum();
        let loader = shrink_models::weight_loader(&ckpt, &cfg);
        if let Some(dir) = &a.report {
            let w1: Vec<f32> =
                shrink_models::read_hf_weight(&loader, &cfg, &hist_name, &hist_shape)?
                    .flatten_all()?
                    .to_vec1()?;
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "model".into());
            let png = dir.join(format!("hist-{name}.png"));
            shrink_eval::plot::histogram_png(
                &png,
                &format!("{hist_name}: original vs {name}"),
                &[("original", &hist_base), (&name, &w1)],
                120,
            )?;
        }
        let generation = tok.decode(&generate(&model, &prompt_ids, &gen_opts, |_| {})?)?;
        let q = quantize_report(path);
        rows.push(Row {
            model: path.display().to_string(),
            method: q
                .as_ref()
                .and_then(|v| v["method"].as_str().map(String::from))
                .unwrap_or(method),
            bits_per_weight_quantized: bpw_q,
            bits_per_weight_model: model_bytes as f64 * 8.0 / total_params as f64,
            model_bytes,
            compression_vs_f32: (total_params * 4) as f64 / model_bytes as f64,
            ppl: rep.ppl,
            delta_ppl_pct: 100.0 * (rep.ppl - base_rep.ppl) / base_rep.ppl,
            kld: rep.kld.unwrap_or(0.0),
            top1_agreement: rep.top1_agreement.unwrap_or(1.0),
            quantize_seconds: q.as_ref().and_then(|v| v["quantize_seconds"].as_f64()),
            generation,
            layers: Vec::new(),
        });
    }

    // Per-layer weight error: each base weight is read once and compared with every model's.
    let opened: Vec<(Checkpoint, ModelConfig)> = a
        .models
        .iter()
        .map(|p| -> Result<_> {
            let c = common::open(p)?;
            let cfg = ModelConfig::from_checkpoint(&c)?;
            Ok((c, cfg))
        })
        .collect::<Result<_>>()?;
    let loaders: Vec<_> = opened
        .iter()
        .map(|(c, cfg)| shrink_models::weight_loader(c, cfg))
        .collect();
    for l in &linears {
        let shape = shape_of(&l.weight).expect("listed weight");
        let w0: Vec<f32> =
            shrink_models::read_hf_weight(&base_loader, &base_cfg, &l.weight, &shape)?
                .flatten_all()?
                .to_vec1()?;
        for ((row, (_, cfg)), loader) in rows.iter_mut().zip(&opened).zip(&loaders) {
            let w1: Vec<f32> = shrink_models::read_hf_weight(loader, cfg, &l.weight, &shape)?
                .flatten_all()?
                .to_vec1()?;
            row.layers.push(weight_error(&l.weight, &w0, &w1));
        }
    }

    let report = serde_json::json!({
        "base": a.base, "base_ppl": base_rep.ppl, "windows": base_rep.windows, "scored_tokens": base_rep.scored_tokens,
        "prompt": a.prompt, "base_generation": base_gen, "histogram_tensor": hist_name, "models": rows,
    });
    let md = markdown(&a, &base_rep.ppl, &base_gen, &hist_name, &rows);
    if let Some(dir) = &a.report {
        std::fs::write(
            dir.join("report.json"),
            serde_json::to_string_pretty(&report)?,
        )?;
        std::fs::write(dir.join("report.md"), &md)?;
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{md}");
    }
    Ok(())
}

/// The comparison as a Markdown report (also what the terminal shows).
fn markdown(a: &Args, base_ppl: &f64, base_gen: &str, hist: &str, rows: &[Row]) -> String {
    let mut s = format!(
        "# shrink compare\n\nbase: {} — PPL {base_ppl:.4} on the first {} windows of lee-ppl-v1\n\n",
        a.base.display(),
        a.max_windows
    );
    s += "| model | method | bits/weight (quantized) | bits/weight (model) | model bytes | ×smaller vs f32 | PPL | ΔPPL % | KLD | top-1 | quantize s |\n|---|---|---|---|---|---|---|---|---|---|---|\n";
    for r in rows {
        s += &format!(
            "| {} | {} | {} | {:.3} | {} | {:.2} | {:.4} | {:+.2} | {:.5} | {:.2} % | {} |\n",
            r.model,
            r.method,
            r.bits_per_weight_quantized
                .map_or("–".into(), |b| format!("{b:.3}")),
            r.bits_per_weight_model,
            r.model_bytes,
            r.compression_vs_f32,
            r.ppl,
            r.delta_ppl_pct,
            r.kld,
            100.0 * r.top1_agreement,
            r.quantize_seconds.map_or("–".into(), |t| format!("{t:.2}")),
        );
    }
    s += &format!(
        "\n## Generated from {:?} (greedy)\n\n- **base**: {:?}\n",
        a.prompt, base_gen
    );
    for r in rows {
        s += &format!("- **{}**: {:?}\n", r.model, r.generation);
    }
    s += "\n## Weight error per layer (worst 5 by SQNR)\n\n";
    for r in rows {
        let mut l: Vec<&WeightError> = r.layers.iter().collect();
        l.sort_by(|x, y| x.sqnr_db.total_cmp(&y.sqnr_db));
        s += &format!(
            "{}:\n\n| weight | MSE | SQNR dB | max abs |\n|---|---|---|---|\n",
            r.model
        );
        for e in l.iter().take(5) {
            s += &format!(
                "| {} | {:.3e} | {:.1} | {:.4} |\n",
                e.name, e.mse, e.sqnr_db, e.max_abs
            );
        }
        s += "\n";
    }
    if a.report.is_some() {
        s += &format!("Histograms of `{hist}`: hist-<model>.png beside this report.\n");
    }
    s
}
