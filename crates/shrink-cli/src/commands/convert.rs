//! `shrink convert`: change the storage dtype, tensor by tensor, into a Hugging Face directory.

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use safetensors::tensor::Dtype;
use shrink_formats::float::{self, FloatType};
use shrink_io::{Checkpoint, LazyTensor, OutputDir, StoredDtype};
use shrink_models::{Architecture, Model, ModelConfig};

use crate::common;

/// Arguments of `shrink convert`.
#[derive(clap::Args)]
#[command(
    after_help = "Streams one tensor at a time: memory stays near the largest tensor, never two copies of the model.\n\nExamples:\n  shrink convert assets/SmolLM2-135M-Instruct.Q4_1.gguf --dtype f32 -o smollm2-f32     # GGUF -> HF directory\n  shrink convert smollm2-f32 --dtype bf16 -o smollm2-bf16"
)]
pub struct Args {
    /// Model to convert (HF directory or .gguf).
    pub model: PathBuf,
    /// Storage dtype of the floating-point weights in the output.
    #[arg(long, value_parser = parse_dtype)]
    pub dtype: FloatType,
    /// Output directory (must not exist; written under a temporary name, renamed when complete).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Prompt whose logits are compared between the source and the output.
    #[arg(long, default_value = "The capital of France is")]
    pub prompt: String,
    /// Skip the logit comparison (which loads both models in float32, one after the other).
    #[arg(long)]
    pub no_check: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

fn parse_dtype(s: &str) -> Result<FloatType, String> {
    FloatType::parse(s).ok_or_else(|| format!("unknown dtype {s:?}: use f32, bf16 or f16"))
}

/// One output tensor and where its values come from.
struct Planned {
    name: String,
    shape: Vec<usize>,
    /// Output dtype and byte length.
    dtype: Dtype,
    len: usize,
    /// Converted from float (Some(stored name / HF name)), or copied verbatim.
    convert: bool,
}

/// Whether tensors are read as the model's weights by HF name (GGUF files, quantized HF
/// directories) rather than copied tensor by tensor.
fn by_model(ckpt: &Checkpoint) -> bool {
    !matches!(ckpt, Checkpoint::Hf(h) if h.quantization_config().is_none())
}

/// Run `shrink convert`.
pub fn run(a: Args) -> Result<()> {
    let ckpt = common::open(&a.model)?;
    let cfg = Architecture::from_checkpoint(&ckpt);
    let out = OutputDir::create(&a.output, &[&a.model])?;
    let bytes_before: u64 = ckpt.tensors().iter().map(|t| t.bytes).sum();

    // Plan every output tensor.
    let mut plan = Vec::new();
    match &ckpt {
        // A plain HF directory: every stored tensor, floats converted, others copied.
        Checkpoint::Hf(h) if h.quantization_config().is_none() => {
            for t in ckpt.tensors() {
                let n: usize = t.shape.iter().product();
                match t.dtype {
                    StoredDtype::Float(_) => plan.push(Planned {
                        len: n * a.dtype.size(),
                        name: t.name,
                        shape: t.shape,
                        dtype: shrink_io::safetensors_dtype(a.dtype),
                        convert: true,
                    }),
                    _ => {
                        let info = &h.weights.tensors[&t.name];
                        plan.push(Planned {
                            len: t.bytes as usize,
                            name: t.name,
                            shape: t.shape,
                            dtype: info.dtype,
                            convert: false,
                        })
                    }
                }
            }
        }
        // GGUF files and quantized HF directories: the model's weights by HF name, dequantized.
        _ => {
            let cfg = cfg.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
            let unsupported = match &ckpt {
                Checkpoint::Gguf(g) => g.tensors.iter().find(|t| !t.ty.can_dequantize()),
                Checkpoint::Hf(_) => None,
            };
            if let Some(t) = unsupported {
                bail!(
                    "{}: tensor {} is stored as {}, which shrink cannot dequantize yet",
                    a.model.display(),
                    t.name,
                    t.ty.name()
                );
            }
            let w = cfg.weight_loader(&ckpt);
            for (name, shape) in cfg.weight_shapes() {
                if !w.has(&name) {
                    bail!(
                        "{}: weight {name} (required by the {} config) is not in the file",
                        a.model.display(),
                        cfg.family()
                    );
                }
                let n: usize = shape.iter().product();
                plan.push(Planned {
                    name,
                    len: n * a.dtype.size(),
                    shape,
                    dtype: shrink_io::safetensors_dtype(a.dtype),
                    convert: true,
                });
            }
        }
    }

    // Stream: each tensor is read, converted and written before the next is touched.
    let failure: RefCell<Option<anyhow::Error>> = RefCell::new(None);
    let pb = common::bar(plan.len() as u64, "convert");
    let loader = cfg.as_ref().ok().map(|c| c.weight_loader(&ckpt));
    let read = |p: &Planned| -> Result<Vec<u8>> {
        if !p.convert {
            let Checkpoint::Hf(h) = &ckpt else {
                unreachable!("only HF tensors are copied verbatim")
            };
            let info = &h.weights.tensors[&p.name];
            let bytes = h.weights.bytes(info).to_vec();
            h.weights.release(info);
            return Ok(bytes);
        }
        let values: Vec<f32> = match (&ckpt, &loader, &cfg) {
            (ckpt, Some(w), Ok(c)) if by_model(ckpt) => c
                .read_weight(w, &p.name, &p.shape)?
                .flatten_all()?
                .to_vec1()?,
            _ => ckpt.read_f32(&p.name)?.0,
        };
        Ok(float::encode(a.dtype, &values))
    };
    let lazy: Vec<(String, LazyTensor)> = plan
        .iter()
        .map(|p| {
            let (failure, read, pb) = (&failure, &read, &pb);
            let t = LazyTensor::new(p.dtype, p.shape.clone(), p.len, move || {
                pb.inc(1);
                if failure.borrow().is_some() {
                    return vec![0u8; p.len];
                }
                match read(p) {
                    Ok(b) => b,
                    Err(e) => {
                        *failure.borrow_mut() = Some(e.context(format!("tensor {}", p.name)));
                        vec![0u8; p.len]
                    }
                }
            });
            (p.name.clone(), t)
        })
        .collect();
    let mut meta = std::collections::HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    shrink_io::write_safetensors_streaming(&out.file("model.safetensors"), lazy, Some(meta))?;
    pb.finish_and_clear();
    if let Some(e) = failure.into_inner() {
        return Err(e.context(format!(
            "converting {}: nothing was written",
            a.model.display()
        )));
    }
    let rss_streaming = common::peak_rss();
    let bytes_after: u64 = plan.iter().map(|p| p.len as u64).sum();

    // config.json and tokenizer files.
    let model_cfg = cfg.as_ref().ok().and_then(|c| c.decoder());
    common::write_config_and_tokenizer(&ckpt, model_cfg, &out, a.dtype.torch_name(), None)?;

    // Logits of the source and of the output on one prompt, one model in memory at a time.
    let check = if a.no_check || model_cfg.is_none() {
        None
    } else {
        Some(compare_logits(&ckpt, out.dir(), &a.prompt)?)
    };
    let target = out.commit()?;

    let ratio = bytes_after as f64 / bytes_before.max(1) as f64;
    if a.json {
        let v = serde_json::json!({
            "input": a.model,
            "output": target,
            "dtype": a.dtype.name(),
            "tensors": plan.len(),
            "footprint_before_bytes": bytes_before,
            "footprint_after_bytes": bytes_after,
            "ratio": ratio,
            "logits_mean_abs_diff": check.as_ref().map(|c| c.0),
            "logits_max_abs_diff": check.as_ref().map(|c| c.1),
            "check_tokens": check.as_ref().map(|c| c.2),
            "peak_rss_streaming_bytes": rss_streaming,
            "peak_rss_bytes": common::peak_rss(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "wrote          {} ({} tensors as {})",
            target.display(),
            plan.len(),
            a.dtype.name()
        );
        println!(
            "footprint      {} -> {} bytes ({} -> {}, ×{ratio:.3})",
            bytes_before,
            bytes_after,
            common::human(bytes_before),
            common::human(bytes_after)
        );
        match &check {
            Some((mean, max, n)) => println!(
                "logits         mean |Δ| {mean:.3e}, max |Δ| {max:.3e} over {n} positions of {:?}",
                a.prompt
            ),
            None if model_cfg.is_none() => {
                println!("logits         not compared: the architecture is not one shrink runs")
            }
            None => println!("logits         not compared (--no-check)"),
        }
        if let Some(r) = rss_streaming {
            println!("peak RSS       {} while streaming", common::human(r));
        }
    }
    Ok(())
}

/// Mean and max |Δ| of the logits of `src` and of the model in `out_dir` on `prompt`.
fn compare_logits(src: &Checkpoint, out_dir: &Path, prompt: &str) -> Result<(f64, f64, usize)> {
    let ids = match common::tokenizer(src) {
        Ok(tok) => tok.encode(prompt, true)?,
        // Without a tokenizer, compare on a fixed id sequence within the vocabulary.
        Err(_) => {
            let v = ModelConfig::from_checkpoint(src)?.vocab_size() as u32;
            (0..8u32).map(|i| (i * 7919 + 13) % v).collect()
        }
    };
    let before: Vec<f32> = Model::load(src)?
        .forward(&ids, None)?
        .flatten_all()?
        .to_vec1()?;
    let dst = Checkpoint::open(out_dir)?;
    let after: Vec<f32> = Model::load(&dst)
        .context("loading the converted model back")?
        .forward(&ids, None)?
        .flatten_all()?
        .to_vec1()?;
    let (mut sum, mut max) = (0f64, 0f64);
    for (x, y) in before.iter().zip(&after) {
        let d = (x - y).abs() as f64;
        sum += d;
        max = max.max(d);
    }
    Ok((sum / before.len() as f64, max, ids.len()))
}
