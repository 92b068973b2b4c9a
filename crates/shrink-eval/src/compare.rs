//! Compressed models against their base, side by side: size, perplexity, KLD, top-1 agreement,
//! the worst layers by SQNR, weight histograms and greedy generations (`shrink compare`).
//!
//! [`compare`] scores every model on the same lee-ppl-v1 tokens as the base, reads the
//! `shrink-quantize.json` report a compression run left beside its output (method, quantize
//! time), counts each model's zeros (sparsity of all weights and of the decoder linears), and
//! compares every decoder linear weight with the base's. [`Comparison`] renders the
//! result as JSON ([`Comparison::to_json`]) or Markdown ([`Comparison::markdown`]).

use std::path::{Path, PathBuf};

use serde::Serialize;
use shrink_io::tokenizer::Tokenizer;
use shrink_io::{Checkpoint, IoError};
use shrink_methods::pipeline::Progress;
use shrink_models::{Model, ModelConfig, WeightLoader};

use crate::error::{EvalError, Result};
use crate::generate::{generate, GenOptions};
use crate::weights::{weight_error, WeightError};
use crate::{lee_texts, perplexity, PplOptions, PplReport};

/// What to compare and how much of it.
#[derive(Debug, Clone)]
pub struct CompareOptions {
    /// Windows of 512 tokens scored per model.
    pub max_windows: usize,
    /// Weight whose histogram is drawn (default: the first decoder linear weight).
    pub tensor: Option<String>,
    /// Prompt of the generations shown side by side.
    pub prompt: String,
    /// Tokens generated per model (greedy).
    pub max_tokens: usize,
    /// Directory to write the report into (report.json, report.md, the histograms): it must not
    /// exist and must not be or lie inside an input; written under a temporary name and
    /// renamed when complete.
    pub report: Option<PathBuf>,
}

/// One compressed model's row of the comparison.
#[derive(Debug, Clone, Serialize)]
pub struct ModelRow {
    /// The model's path as given.
    pub model: String,
    /// The method of its report, else its `quant_method`, dtype or `gguf`.
    pub method: String,
    /// Bits per weight of the quantized decoder linears (HF quantized checkpoints).
    pub bits_per_weight_quantized: Option<f64>,
    /// Bits per weight of the whole model as stored.
    pub bits_per_weight_model: f64,
    /// Bytes of every tensor as stored.
    pub model_bytes: u64,
    /// Float32 bytes of the base's weights over `model_bytes`.
    pub compression_vs_f32: f64,
    /// Fraction of exact zeros over all the model's weights.
    pub sparsity: f64,
    /// Fraction of exact zeros over its decoder linear weights (what pruning targets).
    pub sparsity_linear: f64,
    /// Perplexity.
    pub ppl: f64,
    /// Perplexity change against the base, in percent.
    pub delta_ppl_pct: f64,
    /// Mean KL(base ‖ model) per token.
    pub kld: f64,
    /// Share of tokens whose arg-max agrees with the base's.
    pub top1_agreement: f64,
    /// Seconds the compression method took, from the run's report.
    pub quantize_seconds: Option<f64>,
    /// Greedy continuation of the prompt.
    pub generation: String,
    /// Error of every decoder linear weight against the base's.
    pub layers: Vec<WeightError>,
}

/// The comparison of compressed models with their base.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// The base model's path.
    pub base: PathBuf,
    /// Its perplexity.
    pub base_ppl: f64,
    /// Windows scored.
    pub windows: usize,
    /// Tokens scored per model.
    pub scored_tokens: usize,
    /// Prompt of the generations.
    pub prompt: String,
    /// The base's greedy continuation.
    pub base_generation: String,
    /// Weight drawn in the histograms.
    pub histogram_tensor: String,
    /// One row per compressed model, in the order given.
    pub models: Vec<ModelRow>,
    /// Windows asked for (the report's heading names them).
    #[serde(skip)]
    pub max_windows: usize,
    /// Whether histograms were drawn beside a report.
    #[serde(skip)]
    pub histograms: bool,
}

/// The reference every model is measured against.
struct Base<'a> {
    cfg: &'a ModelConfig,
    model: Model,
    ids: Vec<u32>,
    tok: Tokenizer,
    prompt_ids: Vec<u32>,
    gen: GenOptions,
    ppl: PplReport,
    generation: String,
    opts: PplOptions,
    hist_name: String,
    hist_shape: Vec<usize>,
    hist: Vec<f32>,
    total_params: u64,
}

/// A weight as float32 values in the HF layout.
fn read_weight(
    loader: &WeightLoader,
    cfg: &ModelConfig,
    name: &str,
    shape: &[usize],
) -> Result<Vec<f32>> {
    Ok(shrink_models::read_hf_weight(loader, cfg, name, shape)?
        .flatten_all()?
        .to_vec1()?)
}

/// The HF shape of weight `name`.
fn shape_of(cfg: &ModelConfig, name: &str) -> Option<Vec<usize>> {
    shrink_models::weight_shapes(cfg)
        .into_iter()
        .find(|(w, _)| w == name)
        .map(|(_, s)| s)
}

/// Perplexity of `model` (against `base`), reported to `progress` as `what`, `len` windows.
fn scored(
    model: &Model,
    base: Option<&Model>,
    ids: &[u32],
    opts: &PplOptions,
    (what, len): (&str, usize),
    progress: &dyn Progress,
) -> Result<PplReport> {
    progress.start(what, len as u64);
    let mut last = 0;
    let r = perplexity(model, base, ids, opts, |d, _| {
        progress.inc(d.saturating_sub(last) as u64);
        last = d;
    })?;
    progress.finish();
    Ok(r)
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

/// The report a compression run leaves beside its output (`shrink-quantize.json`), if any.
pub fn quantize_report(dir: &Path) -> Option<serde_json::Value> {
    serde_json::from_slice(&std::fs::read(dir.join("shrink-quantize.json")).ok()?).ok()
}

/// Score the base model, generate from it and read its histogram weight.
fn load_base<'a>(
    (path, ckpt): (&Path, &'a Checkpoint),
    cfg: &'a ModelConfig,
    text: &str,
    opts: &CompareOptions,
    progress: &dyn Progress,
) -> Result<Base<'a>> {
    let tok = Tokenizer::for_checkpoint(ckpt)?;
    let ids = tok.encode(text, false)?;
    let model = Model::load(ckpt)?;
    let ppl_opts = PplOptions {
        max_windows: Some(opts.max_windows),
        ..Default::default()
    };
    let len = opts.max_windows;
    let ppl = scored(&model, None, &ids, &ppl_opts, ("base", len), progress)?;
    let prompt_ids = tok.encode(&opts.prompt, true)?;
    let gen = GenOptions {
        max_tokens: opts.max_tokens,
        stop: tok.eos_ids(),
        ..Default::default()
    };
    let generation = tok.decode(&generate(&model, &prompt_ids, &gen, |_| {})?)?;
    let linears = shrink_models::decoder_linears(cfg);
    let hist_name = opts
        .tensor
        .clone()
        .unwrap_or_else(|| linears[0].weight.clone());
    let Some(hist_shape) = shape_of(cfg, &hist_name) else {
        return Err(EvalError::Input(format!(
            "--tensor {hist_name}: no such weight in {}",
            path.display()
        )));
    };
    let hist = read_weight(
        &shrink_models::weight_loader(ckpt, cfg),
        cfg,
        &hist_name,
        &hist_shape,
    )?;
    let total_params = shrink_models::weight_shapes(cfg)
        .iter()
        .map(|(_, s)| s.iter().product::<usize>() as u64)
        .sum();
    Ok(Base {
        cfg,
        model,
        ids,
        tok,
        prompt_ids,
        gen,
        ppl,
        generation,
        opts: ppl_opts,
        hist_name,
        hist_shape,
        hist,
        total_params,
    })
}

/// Score one compressed model against the base and draw its histogram into `report`.
fn model_row(
    path: &Path,
    ckpt: &Checkpoint,
    cfg: &ModelConfig,
    base: &Base,
    report: Option<&Path>,
    progress: &dyn Progress,
) -> Result<ModelRow> {
    let model = Model::load(ckpt)?;
    let label = path.display().to_string();
    let len = base.opts.max_windows.unwrap_or(0);
    let opts = &base.opts;
    let rep = scored(
        &model,
        Some(&base.model),
        &base.ids,
        opts,
        (&label, len),
        progress,
    )?;
    let (method, bpw_q) = accounting(ckpt, cfg)?;
    let model_bytes: u64 = ckpt.tensors().iter().map(|t| t.bytes).sum();
    let sparsity = shrink_models::sparsity::Sparsity::of(ckpt)?;
    if let Some(dir) = report {
        let loader = shrink_models::weight_loader(ckpt, cfg);
        let w1 = read_weight(&loader, cfg, &base.hist_name, &base.hist_shape)?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into());
        crate::plot::histogram_png(
            &dir.join(format!("hist-{name}.png")),
            &format!("{}: original vs {name}", base.hist_name),
            &[("original", &base.hist), (&name, &w1)],
            120,
        )?;
    }
    let generation = base
        .tok
        .decode(&generate(&model, &base.prompt_ids, &base.gen, |_| {})?)?;
    let q = quantize_report(path);
    let base_ppl = base.ppl.ppl;
    Ok(ModelRow {
        model: label,
        method: q
            .as_ref()
            .and_then(|v| v["method"].as_str().map(String::from))
            .unwrap_or(method),
        bits_per_weight_quantized: bpw_q,
        bits_per_weight_model: model_bytes as f64 * 8.0 / base.total_params as f64,
        model_bytes,
        compression_vs_f32: (base.total_params * 4) as f64 / model_bytes as f64,
        sparsity: sparsity.overall(),
        sparsity_linear: sparsity.linear_weights().unwrap_or(0.0),
        ppl: rep.ppl,
        delta_ppl_pct: 100.0 * (rep.ppl - base_ppl) / base_ppl,
        kld: rep.kld.unwrap_or(0.0),
        top1_agreement: rep.top1_agreement.unwrap_or(1.0),
        quantize_seconds: q.as_ref().and_then(|v| v["quantize_seconds"].as_f64()),
        generation,
        layers: Vec::new(),
    })
}

/// Per-layer weight error: each base weight is read once and compared with every model's.
fn layer_errors(
    base_ckpt: &Checkpoint,
    base: &Base,
    opened: &[(Checkpoint, ModelConfig)],
    rows: &mut [ModelRow],
) -> Result<()> {
    let base_loader = shrink_models::weight_loader(base_ckpt, base.cfg);
    let loaders: Vec<_> = opened
        .iter()
        .map(|(c, cfg)| shrink_models::weight_loader(c, cfg))
        .collect();
    for l in shrink_models::decoder_linears(base.cfg) {
        let shape = shape_of(base.cfg, &l.weight).expect("listed weight");
        let w0 = read_weight(&base_loader, base.cfg, &l.weight, &shape)?;
        for ((row, (_, cfg)), loader) in rows.iter_mut().zip(opened).zip(&loaders) {
            let w1 = read_weight(loader, cfg, &l.weight, &shape)?;
            row.layers.push(weight_error(&l.weight, &w0, &w1));
        }
    }
    Ok(())
}

/// The new report directory of a comparison of `models` with `base` on `data`, refused when it
/// exists, is an input or lies inside one; written under a temporary name until committed.
pub fn report_dir(
    dir: &Path,
    base: &Path,
    data: &Path,
    models: &[PathBuf],
) -> Result<shrink_io::OutputDir> {
    let mut inputs: Vec<&Path> = vec![base, data];
    inputs.extend(models.iter().map(PathBuf::as_path));
    Ok(shrink_io::OutputDir::create(dir, &inputs)?)
}

/// Compare `models` with `base` on the lee-ppl-v1 evaluation text of the Lee corpus at `text`.
///
/// With `opts.report`, the report (report.json, report.md and the histograms of the chosen
/// weight, `hist-<model>.png`) is written into that new directory; `progress` sees one task
/// per scored model.
pub fn compare(
    base: &Path,
    models: &[PathBuf],
    text: &Path,
    opts: &CompareOptions,
    progress: &dyn Progress,
) -> Result<Comparison> {
    if opts.max_windows == 0 {
        return Err(EvalError::Input("--max-windows must be at least 1".into()));
    }
    // The report directory is checked (and its temporary twin made) before any scoring.
    let out = opts
        .report
        .as_deref()
        .map(|dir| report_dir(dir, base, text, models))
        .transpose()?;
    let raw = shrink_io::read_text(text)?;
    let eval_text = lee_texts(&raw)
        .map_err(|e| EvalError::Input(format!("{}: {e}", text.display())))?
        .evaluation;
    let base_ckpt = Checkpoint::open(base)?;
    let base_cfg = ModelConfig::from_checkpoint(&base_ckpt)?;
    let b = load_base((base, &base_ckpt), &base_cfg, &eval_text, opts, progress)?;
    let (mut rows, mut opened) = (Vec::new(), Vec::new());
    for path in models {
        let ckpt = Checkpoint::open(path)?;
        let cfg = ModelConfig::from_checkpoint(&ckpt)?;
        if cfg.vocab_size() != base_cfg.vocab_size() {
            return Err(EvalError::Input(format!(
                "{}: vocabulary differs from the base's",
                path.display()
            )));
        }
        let report = out.as_ref().map(|o| o.dir());
        rows.push(model_row(path, &ckpt, &cfg, &b, report, progress)?);
        opened.push((ckpt, cfg));
    }
    layer_errors(&base_ckpt, &b, &opened, &mut rows)?;
    let c = Comparison {
        base: base.to_path_buf(),
        base_ppl: b.ppl.ppl,
        windows: b.ppl.windows,
        scored_tokens: b.ppl.scored_tokens,
        prompt: opts.prompt.clone(),
        base_generation: b.generation,
        histogram_tensor: b.hist_name,
        models: rows,
        max_windows: opts.max_windows,
        histograms: opts.report.is_some(),
    };
    if let Some(out) = out {
        c.write_report(out.dir())?;
        out.commit()?;
    }
    Ok(c)
}

impl Comparison {
    /// The comparison as one JSON object (what `--json` prints and report.json holds).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("a comparison serializes")
    }

    /// Write report.json and report.md into `dir`.
    pub fn write_report(&self, dir: &Path) -> Result<()> {
        let json = serde_json::to_string_pretty(&self.to_json()).expect("JSON serializes");
        for (name, text) in [("report.json", json), ("report.md", self.markdown())] {
            let p = dir.join(name);
            std::fs::write(&p, text).map_err(|e| IoError::os(p, e))?;
        }
        Ok(())
    }

    /// The comparison as a Markdown report (also what the terminal shows).
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "# shrink compare\n\nbase: {} — PPL {:.4} on the first {} windows of lee-ppl-v1\n\n",
            self.base.display(),
            self.base_ppl,
            self.max_windows
        );
        s += "| model | method | bits/weight (quantized) | bits/weight (model) | model bytes | ×smaller vs f32 | sparsity (linears) | PPL | ΔPPL % | KLD | top-1 | quantize s |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n";
        for r in &self.models {
            s += &format!(
                "| {} | {} | {} | {:.3} | {} | {:.2} | {:.2} % | {:.4} | {:+.2} | {:.5} | {:.2} % | {} |\n",
                r.model,
                r.method,
                r.bits_per_weight_quantized
                    .map_or("–".into(), |b| format!("{b:.3}")),
                r.bits_per_weight_model,
                r.model_bytes,
                r.compression_vs_f32,
                100.0 * r.sparsity_linear,
                r.ppl,
                r.delta_ppl_pct,
                r.kld,
                100.0 * r.top1_agreement,
                r.quantize_seconds.map_or("–".into(), |t| format!("{t:.2}")),
            );
        }
        s += &format!(
            "\n## Generated from {:?} (greedy)\n\n- **base**: {:?}\n",
            self.prompt, self.base_generation
        );
        for r in &self.models {
            s += &format!("- **{}**: {:?}\n", r.model, r.generation);
        }
        s += "\n## Weight error per layer (worst 5 by SQNR)\n\n";
        for r in &self.models {
            s += &format!(
                "{}:\n\n| weight | MSE | SQNR dB | max abs |\n|---|---|---|---|\n",
                r.model
            );
            for e in r.worst_layers(5) {
                s += &format!(
                    "| {} | {:.3e} | {:.1} | {:.4} |\n",
                    e.name, e.mse, e.sqnr_db, e.max_abs
                );
            }
            s += "\n";
        }
        if self.histograms {
            s += &format!(
                "Histograms of `{}`: hist-<model>.png beside this report.\n",
                self.histogram_tensor
            );
        }
        s
    }
}

impl ModelRow {
    /// The `n` layers of lowest SQNR, worst first.
    pub fn worst_layers(&self, n: usize) -> Vec<&WeightError> {
        let mut l: Vec<&WeightError> = self.layers.iter().collect();
        l.sort_by(|x, y| x.sqnr_db.total_cmp(&y.sqnr_db));
        l.truncate(n);
        l
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, quantize_seconds: Option<f64>, sqnr: &[f64]) -> ModelRow {
        ModelRow {
            model: name.into(),
            method: "gptq-w4g64".into(),
            bits_per_weight_quantized: Some(4.25),
            bits_per_weight_model: 5.0,
            model_bytes: 1000,
            compression_vs_f32: 6.4,
            sparsity: 0.25,
            sparsity_linear: 0.5,
            ppl: 11.0,
            delta_ppl_pct: 10.0,
            kld: 0.01,
            top1_agreement: 0.9,
            quantize_seconds,
            generation: "x".into(),
            layers: sqnr
                .iter()
                .enumerate()
                .map(|(i, &s)| WeightError {
                    name: format!("w{i}"),
                    mse: 1e-3,
                    sqnr_db: s,
                    max_abs: 0.1,
                })
                .collect(),
        }
    }

    fn comparison(models: Vec<ModelRow>) -> Comparison {
        Comparison {
            base: "base".into(),
            base_ppl: 10.0,
            windows: 1,
            scored_tokens: 511,
            prompt: "p".into(),
            base_generation: "y".into(),
            histogram_tensor: "w0".into(),
            models,
            max_windows: 1,
            histograms: false,
        }
    }

    #[test]
    fn worst_layers_are_the_lowest_sqnr_first() {
        let r = row("m", None, &[20.0, 5.0, f64::INFINITY, 12.0]);
        let names: Vec<&str> = r.worst_layers(2).iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["w1", "w3"]);
        assert_eq!(r.worst_layers(10).len(), 4);
    }

    #[test]
    fn markdown_shows_the_quantize_time_or_a_dash() {
        let c = comparison(vec![
            row("gptq", Some(3.456), &[1.0]),
            row("plain", None, &[]),
        ]);
        let md = c.markdown();
        let line = |m: &str| {
            md.lines()
                .find(|l| l.starts_with(&format!("| {m} |")))
                .unwrap()
                .to_string()
        };
        assert!(line("gptq").ends_with("| 3.46 |"), "{md}");
        assert!(line("plain").ends_with("| – |"), "{md}");
        assert!(line("gptq").contains("| 50.00 % | 11.0000 |"), "{md}");
        assert!(md.contains("| sparsity (linears) | PPL |"), "{md}");
        assert!(md.contains("PPL 10.0000 on the first 1 windows"));
        assert!(!md.contains("Histograms of"));
    }

    #[test]
    fn json_has_every_row_field_and_hides_the_rendering_flags() {
        let v = comparison(vec![row("gptq", Some(2.0), &[1.0])]).to_json();
        assert_eq!(v["models"][0]["quantize_seconds"], 2.0);
        assert_eq!(v["models"][0]["sparsity"], 0.25);
        assert_eq!(v["models"][0]["sparsity_linear"], 0.5);
        assert_eq!(v["models"][0]["layers"][0]["name"], "w0");
        assert!(v.get("max_windows").is_none() && v.get("histograms").is_none());
        assert_eq!(v["base"], "base");
    }

    #[test]
    fn quantize_report_reads_the_file_beside_an_output() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(quantize_report(tmp.path()).is_none());
        std::fs::write(
            tmp.path().join("shrink-quantize.json"),
            r#"{"method": "awq-w4g64", "quantize_seconds": 1.5}"#,
        )
        .unwrap();
        let v = quantize_report(tmp.path()).unwrap();
        assert_eq!(v["quantize_seconds"], 1.5);
    }
}
