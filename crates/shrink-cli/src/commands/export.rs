//! `shrink export MODEL --to gguf --type f16|q8_0|q4_k_m|... -o OUT.gguf`: a llama.cpp GGUF
//! from a Hugging Face directory (as `convert_hf_to_gguf.py`, then `llama-quantize` for a
//! quantized type, would make it), or a GGUF re-typed; `--to hf` for a float HF directory; and
//! `--to gptq|awq|bitsandbytes|compressed-tensors` for the ecosystem's quantized safetensors
//! layouts (`export_layout`).
//!
//! From an HF directory (llama, mistral, qwen2, gpt2, gpt_neox; float, or quantized in a layout
//! shrink reads, then dequantized): metadata as the converter writes it (`gguf_arch` for the
//! `general.*` / `<arch>.*` keys, `shrink_io::gguf_meta` for the tokenizer), tensors renamed
//! and transformed as the converter does (`gguf_arch::Transform`), in the converter's order (HF
//! names sorted) for F32/F16/BF16 and in llama-quantize's order for quantized presets. Types:
//! F32 everywhere; F16/BF16 for every tensor llama.cpp quantizes (1-D tensors and norms stay
//! F32); a preset's types from `shrink_methods::ggml_mix` (fallbacks included, printed).
//!
//! From a GGUF: a quantized preset is `shrink quantize --method` (llama-quantize); F32/F16/BF16
//! dequantize each tensor and store it in that type, metadata copied with the file type updated.
//!
//! Streaming: one tensor is read, converted and written at a time.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use shrink_formats::float::{self, FloatType};
use shrink_formats::ggml::{self, GgmlType};
use shrink_io::gguf_write::{write_gguf, GgufTensorSpec, GgufWriteOptions};
use shrink_io::model_card::{self, CardValue};
use shrink_io::{Checkpoint, GgufFile, GgufValue, HfCheckpoint};
use shrink_methods::ggml_mix::{self, GgmlPreset, MixModel, MixOptions};
use shrink_models::ModelConfig;

use super::gguf_arch::{GgufArch, Transform};
use super::gguf_summary::GgufSummary;
use crate::common;
use shrink_methods::export_layout::Layout;

/// Arguments of `shrink export`.
#[derive(clap::Args)]
#[command(
    after_help = "A weight the input already stores on a grid the target holds is repacked unchanged (lossless: a GPTQ checkpoint to compressed-tensors or AWQ, bitsandbytes NF4 to bitsandbytes); any other is dequantized and requantized, with a warning that requantizing stacks error. With no --type/--group-size/--sym, a quantized input's own grid is kept.\n\nExamples:\n  shrink export smollm2-f32 --to gguf --type f16 -o smollm2-f16.gguf\n  shrink export smollm2-f32 --to gguf --type q4_k_m -o smollm2-q4_k_m.gguf\n  shrink export smollm2-gptq --to gguf --type q4_k_m -o smollm2-q4_k_m.gguf\n  shrink export model.Q8_0.gguf --to gguf --type f32 -o model-f32.gguf\n  shrink export model.gguf --to hf --type bf16 -o model-hf\n  shrink export smollm2-f32 --to gptq --type int4 --group-size 64 -o smollm2-gptq-rtn\n  shrink export smollm2-gptq --to compressed-tensors -o smollm2-ct\n  shrink export smollm2-f32 --to bitsandbytes --type nf4 --double-quant -o smollm2-bnb"
)]
pub struct Args {
    /// Model to export (HF directory, float or quantized in a layout shrink reads, or a .gguf).
    pub model: PathBuf,
    /// Output format: gguf (a file); hf (a directory of float safetensors, config.json and
    /// tokenizer files — what `shrink convert` writes); or a quantized safetensors directory in
    /// an ecosystem layout: gptq (AutoGPTQ, with quantize_config.json), awq (AutoAWQ GEMM),
    /// bitsandbytes (nf4/fp4 with quant_state, or int8 with SCB), compressed-tensors
    /// (pack-quantized; naive-quantized for 3, 5, 6 and 7 bits).
    #[arg(long, default_value = "gguf", value_parser = ["gguf", "hf", "gptq", "awq", "bitsandbytes", "compressed-tensors"])]
    pub to: String,
    /// Storage type. gguf: f32, f16 (default), bf16 or a llama.cpp preset (q8_0, q4_0,
    /// q4_k_m, ...); hf: f32, f16, bf16; gptq: int2/int3/int4/int8; awq: int4;
    /// compressed-tensors: int2..int8; bitsandbytes: nf4, fp4, int8.
    #[arg(long = "type")]
    pub ty: Option<String>,
    /// Output .gguf file or directory (must not exist unless --overwrite; never the input).
    #[arg(short, long)]
    pub output: PathBuf,
    /// `tokenizer.ggml.pre` to write (HF input), instead of the one recognised from tokenizer.json.
    #[arg(long)]
    pub pre: Option<String>,
    /// Replace an existing output file (gguf only; never the input).
    #[arg(long)]
    pub overwrite: bool,
    /// Integer layouts: elements per scale group (default 64, as `shrink quantize`; 0 = one
    /// per output channel).
    #[arg(long, help_heading = "Quantized safetensors")]
    pub group_size: Option<usize>,
    /// Integer layouts: symmetric integers (default asymmetric, with zero points).
    #[arg(long, help_heading = "Quantized safetensors")]
    pub sym: bool,
    /// bitsandbytes nf4/fp4: quantize the block absmax to 8 bits too (QLoRA).
    #[arg(long, help_heading = "Quantized safetensors")]
    pub double_quant: bool,
    /// bitsandbytes nf4/fp4: block size (default 64).
    #[arg(long, help_heading = "Quantized safetensors")]
    pub block_size: Option<usize>,
    /// Storage type of the tensors left unquantized (default: the input's float type; f32
    /// for a GGUF input).
    #[arg(long, value_parser = ["f32", "f16", "bf16"], help_heading = "Quantized safetensors")]
    pub dense_dtype: Option<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// The storage requested.
#[derive(Debug, Clone, Copy)]
enum Target {
    /// One float type for every tensor llama.cpp quantizes (F32: for every tensor).
    Float(GgmlType),
    /// A llama.cpp preset.
    Preset(GgmlPreset),
}

impl Target {
    fn parse(s: &str) -> Result<Target> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "f32" => Target::Float(GgmlType::F32),
            "f16" => Target::Float(GgmlType::F16),
            "bf16" => Target::Float(GgmlType::BF16),
            other => match GgmlPreset::from_name(other) {
                Some(p) => Target::Preset(p),
                None => bail!(
                    "unknown --type {s:?}; known: f32, f16, bf16, {}",
                    GgmlPreset::names().join(", ")
                ),
            },
        })
    }

    /// `general.file_type` (`llama_ftype`: ALL_F32 0, MOSTLY_F16 1, MOSTLY_BF16 32).
    fn ftype(self) -> u32 {
        match self {
            Target::Float(GgmlType::F16) => 1,
            Target::Float(GgmlType::BF16) => 32,
            Target::Float(_) => 0,
            Target::Preset(p) => p.ftype(),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Target::Float(t) => t.name(),
            Target::Preset(p) => p.name(),
        }
    }
}

/// Where one output tensor's values come from.
enum Source {
    /// An HF tensor, with the transform llama.cpp's converter applies to it.
    Hf { name: String, transform: Transform },
    /// A GGUF tensor, by name.
    Gguf(String),
}

/// One output tensor.
struct Planned {
    spec: GgufTensorSpec,
    source: Source,
    /// When a row length forced a fallback: the type the rules wanted.
    wanted: Option<GgmlType>,
}

/// Encode f32 values as `ty`.
fn encode(name: &str, ty: GgmlType, data: &[f32]) -> Result<Vec<u8>> {
    Ok(match ty {
        GgmlType::F32 => float::encode(FloatType::F32, data),
        GgmlType::F16 => float::encode(FloatType::F16, data),
        GgmlType::BF16 => float::encode(FloatType::BF16, data),
        _ => {
            let mut out = vec![
                0u8;
                ty.row_bytes(data.len())
                    .with_context(|| format!("tensor {name}"))?
            ];
            ggml::quantize(ty, data, &mut out).with_context(|| format!("tensor {name}"))?;
            out
        }
    })
}

/// One tensor's storage: (GGUF name, ne, type, the type the rules wanted before a fallback).
type Choice = (String, Vec<u64>, GgmlType, Option<GgmlType>);

/// Types for (GGUF name, ne) under `target`, in output order, with fallbacks. A preset's
/// tensors come in llama-quantize's order; float targets keep the given order.
fn choose(target: Target, model: &MixModel, tensors: &[(String, Vec<u64>)]) -> Result<Vec<Choice>> {
    Ok(match target {
        Target::Float(ty) => tensors
            .iter()
            .map(|(n, ne)| {
                let t = if ty == GgmlType::F32 || ggml_mix::allows_quantization(n, ne, true) {
                    ty
                } else {
                    GgmlType::F32
                };
                (n.clone(), ne.clone(), t, None)
            })
            .collect(),
        Target::Preset(p) => ggml_mix::assign(p, model, &MixOptions::default(), tensors)?
            .into_iter()
            .map(|c| (c.name, c.ne, c.ty.unwrap_or(GgmlType::F32), c.wanted))
            .collect(),
    })
}

/// llama.cpp's `general.*` and `<arch>.*` metadata of an HF model (the converter's
/// `set_gguf_parameters`), in the converter's order; the tokenizer keys go in before
/// `general.quantization_version`.
fn hf_metadata(
    h: &HfCheckpoint,
    arch: &GgufArch,
    target: Target,
    tokenizer: Vec<(String, GgufValue)>,
) -> Vec<(String, GgufValue)> {
    let s = |v: &str| GgufValue::String(v.to_string());
    let name = h
        .config
        .get("_name_or_path")
        .and_then(|v| v.as_str())
        .and_then(|p| p.rsplit('/').find(|x| !x.is_empty()))
        .map(str::to_string)
        .or_else(|| {
            std::fs::canonicalize(&h.dir)
                .ok()
                .and_then(|d| d.file_name().map(|f| f.to_string_lossy().into_owned()))
        })
        .unwrap_or_else(|| "model".into());
    // The model card's keys, as llama.cpp's converter reads them (gguf-py `Metadata`); its
    // `name` wins over the directory's.
    let card = model_card::read(&h.dir);
    let find = |k: &str| card.iter().find(|(c, _)| c == k).map(|(_, v)| v);
    let name = match find("name") {
        Some(CardValue::Text(n)) => n.clone(),
        _ => name,
    };
    let mut m = vec![
        ("general.architecture".to_string(), s(arch.name)),
        ("general.type".into(), s("model")),
        ("general.name".into(), s(&name)),
    ];
    for (ck, gk) in &model_card::CARD_KEYS[1..] {
        let v = match find(ck).or_else(|| (*ck == "language").then(|| find("languages")).flatten())
        {
            Some(CardValue::Text(t)) if *ck == "language" => GgufValue::Array(vec![s(t)]),
            Some(CardValue::Text(t)) => s(t),
            Some(CardValue::List(l)) if *ck == "language" && !l.is_empty() => {
                GgufValue::Array(l.iter().map(|x| s(x)).collect())
            }
            _ => continue,
        };
        m.push((gk.to_string(), v));
    }
    m.extend(arch.hparams(target.ftype()));
    m.extend(tokenizer);
    m.push(("general.quantization_version".into(), GgufValue::U32(2)));
    m
}

/// The GGUF's metadata with the file type updated (float targets).
fn gguf_metadata(g: &GgufFile, target: Target) -> Vec<(String, GgufValue)> {
    let mut m: Vec<(String, GgufValue)> = g
        .metadata
        .iter()
        .filter(|(k, _)| !k.starts_with("split."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (k, v) in [
        ("general.file_type", GgufValue::U32(target.ftype())),
        ("general.quantization_version", GgufValue::U32(2)),
    ] {
        match m.iter_mut().find(|(key, _)| key == k) {
            Some(slot) => slot.1 = v,
            None => m.push((k.to_string(), v)),
        }
    }
    m
}

/// Hyperparameters the mix rules read.
fn mix_model(arch: &str, n_layer: usize, n_head: usize, n_head_kv: usize) -> MixModel {
    MixModel {
        arch: arch.to_string(),
        n_layer,
        n_head,
        n_head_kv,
        n_expert: 0,
    }
}

/// Run `shrink export`.
pub fn run(a: Args) -> Result<()> {
    if let Some(layout) = Layout::parse(&a.to) {
        return super::export_layout::run(a, layout);
    }
    let ty = a.ty.clone().unwrap_or_else(|| "f16".into());
    if a.group_size.is_some()
        || a.sym
        || a.double_quant
        || a.block_size.is_some()
        || a.dense_dtype.is_some()
    {
        bail!("--group-size, --sym, --double-quant, --block-size and --dense-dtype apply to the quantized safetensors layouts (--to gptq|awq|bitsandbytes|compressed-tensors)");
    }
    if a.to == "hf" {
        let Some(dtype) = FloatType::parse(&ty) else {
            bail!("--to hf writes float weights: --type f32, f16 or bf16, not {ty:?}");
        };
        return super::convert::run(super::convert::Args {
            model: a.model,
            dtype,
            output: a.output,
            prompt: String::new(),
            no_check: true,
            json: a.json,
        });
    }
    let t0 = Instant::now();
    let target = Target::parse(&ty)?;
    if a.output.exists() && !a.overwrite {
        // Checked before reading anything (the writer checks again, and for input = output).
        let same = std::fs::canonicalize(&a.output).ok() == std::fs::canonicalize(&a.model).ok();
        if !same {
            bail!(
                "{}: output already exists; shrink does not overwrite it (remove it, choose another -o, or --overwrite)",
                a.output.display()
            );
        }
    }
    let ckpt = common::open(&a.model)?;
    // Whether the input stores its linears quantized (then a quantized target requantizes).
    let mut requantized = false;
    let (meta, plan, pre) = match &ckpt {
        Checkpoint::Gguf(g) => {
            if let Target::Preset(p) = target {
                return super::quantize_ggml::run(super::quantize_ggml::GgmlArgs {
                    model: a.model,
                    output: a.output,
                    preset: p.name().to_string(),
                    imatrix: None,
                    json: a.json,
                    allow_requantize: false,
                    overwrite: a.overwrite,
                    leave_output_tensor: false,
                });
            }
            let tensors: Vec<(String, Vec<u64>)> = g
                .tensors
                .iter()
                .map(|t| (t.name.clone(), t.ne.clone()))
                .collect();
            let model = mix_model(g.architecture()?, 0, 0, 0);
            let plan = choose(target, &model, &tensors)?
                .into_iter()
                .map(|(n, ne, ty, wanted)| Planned {
                    spec: GgufTensorSpec::new(n.clone(), ne, ty),
                    source: Source::Gguf(n),
                    wanted,
                })
                .collect::<Vec<_>>();
            (gguf_metadata(g, target), plan, None)
        }
        Checkpoint::Hf(h) => {
            let cfg = ModelConfig::from_checkpoint(&ckpt)?;
            let arch = GgufArch::of(&cfg, &h.dir)?;
            // HF names in the converter's order (sorted), mapped to llama.cpp's. A quantized
            // directory's weights are its modules' (each dequantized when read).
            let mut names: Vec<(String, Vec<usize>)> = if h.quantization_config().is_some() {
                requantized = true;
                shrink_models::weight_shapes(&cfg)
            } else {
                h.weights
                    .tensors
                    .iter()
                    .map(|(n, t)| (n.clone(), t.shape.clone()))
                    .collect()
            };
            names.sort();
            let mut mapped: Vec<(String, Vec<u64>, Source)> = Vec::new();
            for (n, shape) in &names {
                if GgufArch::skipped(n) {
                    continue;
                }
                let (g, transform) = arch.tensor(n).with_context(|| {
                    format!("{}: no GGUF mapping for tensor {n}", h.dir.display())
                })?;
                let ne: Vec<u64> = transform
                    .shape(shape)
                    .iter()
                    .rev()
                    .map(|&d| d as u64)
                    .collect();
                mapped.push((
                    g,
                    ne,
                    Source::Hf {
                        name: n.clone(),
                        transform,
                    },
                ));
            }
            let tensors: Vec<(String, Vec<u64>)> = mapped
                .iter()
                .map(|(n, ne, _)| (n.clone(), ne.clone()))
                .collect();
            let model = arch.mix_model();
            let mut sources: BTreeMap<String, Source> =
                mapped.into_iter().map(|(n, _, s)| (n, s)).collect();
            let plan = choose(target, &model, &tensors)?
                .into_iter()
                .map(|(n, ne, ty, wanted)| Planned {
                    spec: GgufTensorSpec::new(n.clone(), ne, ty),
                    source: sources.remove(&n).expect("chosen from these tensors"),
                    wanted,
                })
                .collect::<Vec<_>>();
            let tok = shrink_io::gguf_meta::tokenizer_metadata(
                &h.dir,
                arch.vocab_size(),
                a.pre.as_deref(),
            )?;
            (
                hf_metadata(h, &arch, target, tok.metadata),
                plan,
                Some(tok.pre),
            )
        }
    };

    let specs: Vec<GgufTensorSpec> = plan.iter().map(|p| p.spec.clone()).collect();
    let wopts = GgufWriteOptions {
        overwrite: a.overwrite,
        inputs: vec![a.model.clone()],
    };
    let pb = common::bar(plan.len() as u64, "export");
    let mut convert_seconds = 0f64;
    let file_bytes = write_gguf(&a.output, &meta, specs.clone(), &wopts, |i, spec| {
        let p = &plan[i];
        pb.set_message(spec.name.clone());
        let data = match (&p.source, &ckpt) {
            (Source::Hf { name, transform }, Checkpoint::Hf(h)) => {
                let (v, shape) = ckpt.read_f32(name)?;
                if let Some(info) = h.weights.tensors.get(name) {
                    h.weights.release(info);
                }
                transform.apply(name, v, &shape)?
            }
            (Source::Gguf(name), Checkpoint::Gguf(g)) => {
                let info = g.tensor(name).expect("from this file");
                let v = g.read_f32(info)?;
                g.release(info);
                v
            }
            _ => unreachable!("sources come from the checkpoint"),
        };
        let t = Instant::now();
        let bytes = encode(&spec.name, spec.ty, &data)?;
        convert_seconds += t.elapsed().as_secs_f64();
        pb.inc(1);
        Ok::<_, anyhow::Error>(bytes)
    })?;
    pb.finish_and_clear();
    let seconds = t0.elapsed().as_secs_f64();

    let sum = GgufSummary::new(plan.iter().map(|p| (&p.spec, p.wanted)));
    let (elements, tensor_bytes, bpw) = (sum.elements, sum.tensor_bytes, sum.bits_per_weight());
    let warning = (requantized && matches!(target, Target::Preset(_))).then(|| {
        format!(
            "{} stores its linears quantized: they were dequantized and requantized to {}, which stacks both rounding errors",
            a.model.display(),
            target.name()
        )
    });
    if let Some(w) = &warning {
        eprintln!("warning: {w}");
    }
    let v = serde_json::json!({
        "warning": warning, "dequantized_input": requantized,
        "input": a.model, "output": a.output, "format": "gguf", "type": target.name(),
        "file_type": target.ftype(), "tensors": plan.len(),
        "tokenizer_pre": pre.as_ref().map(|(n, why)| serde_json::json!({"name": n, "why": why})),
        "types": sum.types_json(), "fallbacks": sum.fallbacks_json(),
        "elements": elements, "tensor_bytes": tensor_bytes, "file_bytes": file_bytes,
        "bits_per_weight": bpw, "seconds": seconds, "convert_seconds": convert_seconds,
        "peak_rss_bytes": common::peak_rss(),
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("wrote          {}", a.output.display());
    println!(
        "type           {} (llama.cpp file type {}), {} tensors",
        target.name(),
        target.ftype(),
        plan.len()
    );
    sum.print();
    if let Some((n, why)) = &pre {
        println!("tokenizer.pre  {n} ({why})");
    }
    println!("bits/weight    {bpw:.4} (all {tensor_bytes} tensor bytes × 8 / {elements} weights)");
    println!(
        "file           {} bytes ({})",
        file_bytes,
        common::human(file_bytes)
    );
    println!("time           {seconds:.2} s ({convert_seconds:.2} s converting)");
    if let Some(r) = common::peak_rss() {
        println!("peak RSS       {}", common::human(r));
    }
    Ok(())
}
