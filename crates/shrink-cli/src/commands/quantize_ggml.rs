//! `shrink quantize MODEL --method q4_k_m|q8_0|... -o OUT.gguf`: a GGUF of ggml-quantized
//! tensors, as llama.cpp's `llama-quantize` makes it.
//!
//! The per-tensor types come from `shrink_methods::ggml_mix` (llama.cpp's
//! `llama_tensor_get_type`, fallbacks for rows that are not whole blocks included), the bytes
//! from `shrink_formats::ggml`'s quantizers (byte-identical to ggml's), the file from
//! `shrink_io::gguf_write`. Like llama-quantize: metadata is copied with `general.file_type` and
//! `general.quantization_version` updated; tensors are visited and written in llama.cpp's order;
//! tensors llama.cpp leaves alone (norms, 1-D) and tensors already of their target type are
//! copied as stored; an importance matrix weighs every 2-D weight it has an entry for. Q/K rows
//! stay in the GGUF's (llama.cpp's permuted) order: they are quantized as stored.
//!
//! Streaming: one tensor is read (dequantized to f32 when stored quantized), quantized and
//! written at a time.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use shrink_formats::float::{self, FloatType};
use shrink_formats::ggml::{self, GgmlType};
use shrink_io::gguf_write::{write_gguf, GgufTensorSpec, GgufWriteOptions};
use shrink_io::imatrix::Imatrix;
use shrink_io::{Checkpoint, GgufFile, GgufValue};
use shrink_methods::ggml_mix::{self, GgmlPreset, MixModel, MixOptions, TensorChoice};

use super::gguf_summary::GgufSummary;
use crate::common;

/// What `shrink quantize` passes for a llama.cpp method.
#[derive(Debug, Clone)]
pub struct GgmlArgs {
    /// Model to quantize (a .gguf file).
    pub model: PathBuf,
    /// Output .gguf file.
    pub output: PathBuf,
    /// Preset or type name as llama-quantize spells it (`q4_k_m`, `Q8_0`, `iq4_xs`, ...).
    pub preset: String,
    /// llama.cpp importance matrix (`imatrix.dat` or GGUF imatrix).
    pub imatrix: Option<PathBuf>,
    /// Print one JSON object instead of text.
    pub json: bool,
    /// Requantize already-quantized tensors without the warning about stacked error.
    pub allow_requantize: bool,
    /// Replace an existing output file (never the input).
    pub overwrite: bool,
    /// Keep `output.weight` as stored (llama-quantize's `--leave-output-tensor`).
    pub leave_output_tensor: bool,
}

/// Every method name `run` accepts (lower case), for the CLI's value list.
pub fn method_names() -> Vec<String> {
    GgmlPreset::names()
}

/// What became of one tensor.
enum Action {
    /// Bytes copied as stored.
    Copy,
    /// Dequantized (if needed) and quantized to the type.
    Quantize(GgmlType),
}

/// Hyperparameters the mix rules read, from the GGUF metadata.
fn mix_model(g: &GgufFile) -> Result<MixModel> {
    let arch = g.architecture()?.to_string();
    let u = |k: &str| {
        g.get(&format!("{}.{k}", g.architecture().unwrap_or_default()))
            .and_then(GgufValue::as_u64)
    };
    let n_layer = g.require_u64(&format!("{arch}.block_count"))? as usize;
    let n_head = u("attention.head_count").unwrap_or(0) as usize;
    let n_head_kv = u("attention.head_count_kv").map_or(n_head, |v| v as usize);
    Ok(MixModel {
        arch,
        n_layer,
        n_head,
        n_head_kv,
        n_expert: u("expert_count").unwrap_or(0) as usize,
    })
}

/// The output's metadata: the input's, `general.architecture` first, with llama-quantize's
/// updates (file type, quantization version, split keys removed, imatrix provenance added).
fn metadata(
    g: &GgufFile,
    preset: GgmlPreset,
    imatrix: Option<(&Path, &Imatrix)>,
) -> Vec<(String, GgufValue)> {
    let mut m: Vec<(String, GgufValue)> = Vec::with_capacity(g.metadata.len() + 6);
    if let Some(v) = g.get("general.architecture") {
        m.push(("general.architecture".into(), v.clone()));
    }
    for (k, v) in &g.metadata {
        let skip = k == "general.architecture"
            || k.starts_with("split.")
            || k.starts_with("quantize.imatrix.");
        if !skip {
            m.push((k.clone(), v.clone()));
        }
    }
    let mut set = |k: &str, v: GgufValue| match m.iter_mut().find(|(key, _)| key == k) {
        Some(slot) => slot.1 = v,
        None => m.push((k.to_string(), v)),
    };
    set("general.quantization_version", GgufValue::U32(2));
    set("general.file_type", GgufValue::U32(preset.ftype()));
    if let Some((path, im)) = imatrix {
        set(
            "quantize.imatrix.file",
            GgufValue::String(path.display().to_string()),
        );
        if let Some(ds) = im.datasets.last() {
            set("quantize.imatrix.dataset", GgufValue::String(ds.clone()));
        }
        set(
            "quantize.imatrix.entries_count",
            GgufValue::U32(im.entries.len() as u32),
        );
        if let Some(c) = im.chunks.filter(|&c| c > 0) {
            set("quantize.imatrix.chunks_count", GgufValue::U32(c));
        }
    }
    m
}

/// Quantize `data` (a tensor of ggml dims `ne`) to `ty`, with per-column importance when given
/// (one vector of `ne[0]` per matrix of `ne[0]·ne[1]`, as llama-quantize applies it).
fn quantize_tensor(
    name: &str,
    ty: GgmlType,
    ne: &[u64],
    data: &[f32],
    importance: Option<&[f32]>,
) -> Result<Vec<u8>> {
    match ty {
        GgmlType::F32 => return Ok(float::encode(FloatType::F32, data)),
        GgmlType::F16 => return Ok(float::encode(FloatType::F16, data)),
        GgmlType::BF16 => return Ok(float::encode(FloatType::BF16, data)),
        _ => {}
    }
    let cols = ne[0] as usize;
    let mut out = vec![
        0u8;
        ty.row_bytes(data.len())
            .with_context(|| format!("tensor {name}"))?
    ];
    match importance {
        None => ggml::quantize(ty, data, &mut out).with_context(|| format!("tensor {name}"))?,
        Some(imp) => {
            let mat = cols * ne.get(1).copied().unwrap_or(1) as usize;
            let mat_bytes = ty.row_bytes(mat)?;
            for (k, (src, dst)) in data.chunks(mat).zip(out.chunks_mut(mat_bytes)).enumerate() {
                let w = &imp[k * cols..(k + 1) * cols];
                ggml::quantize_with_importance(ty, src, cols, w, dst)
                    .with_context(|| format!("tensor {name}"))?;
            }
        }
    }
    Ok(out)
}

/// Run `shrink quantize` for a llama.cpp preset.
pub fn run(a: GgmlArgs) -> Result<()> {
    let t0 = Instant::now();
    let Some(preset) = GgmlPreset::from_name(&a.preset) else {
        bail!(
            "unknown llama.cpp quantization {:?}; known: {}",
            a.preset,
            method_names().join(", ")
        );
    };
    let ckpt = common::open(&a.model)?;
    let g = match &ckpt {
        Checkpoint::Gguf(g) => g,
        Checkpoint::Hf(h) => bail!(
            "{}: --method {p} takes a GGUF input (it keeps that file's metadata); for a Hugging \
             Face directory run `shrink export {} --to gguf --type {p} -o OUT.gguf`, which also \
             builds the tokenizer metadata from tokenizer.json",
            h.dir.display(),
            h.dir.display(),
            p = preset.name().to_ascii_lowercase()
        ),
    };
    let model = mix_model(g)?;
    let imatrix = match &a.imatrix {
        Some(p) => Some(Imatrix::read(p)?),
        None => None,
    };
    let opts = MixOptions {
        has_imatrix: imatrix.is_some(),
        quantize_output: !a.leave_output_tensor,
    };
    let tensors: Vec<(String, Vec<u64>)> = g
        .tensors
        .iter()
        .map(|t| (t.name.clone(), t.ne.clone()))
        .collect();
    let choices = ggml_mix::assign(preset, &model, &opts, &tensors)?;

    // Decide every tensor's action and check the imatrix before writing anything.
    let mut plan: Vec<(&TensorChoice, Action, Option<&[f32]>)> = Vec::with_capacity(choices.len());
    let (mut requantized, mut requant_types) = (0usize, BTreeMap::<&str, usize>::new());
    let mut missing = Vec::new();
    let mut used = 0usize;
    for c in &choices {
        let info = g.tensor(&c.name).expect("assigned from this file");
        let action = match c.ty {
            Some(ty) if ty != info.ty => Action::Quantize(ty),
            _ => Action::Copy,
        };
        let mut imp = None;
        if let (Action::Quantize(ty), Some(im)) = (&action, &imatrix) {
            // One vector of ne[0] per matrix (per expert of a 3-D tensor), as llama.cpp applies it.
            let n_mat = info.elements() / (info.ne[0] * info.ne.get(1).copied().unwrap_or(1));
            match im.get(&c.name) {
                None if ggml_formats_weighted(*ty) => missing.push(c.name.as_str()),
                None => {}
                Some(v) if v.len() as u64 == info.ne[0] * n_mat => {
                    imp = Some(v);
                    used += 1;
                }
                // llama.cpp ignores a mismatched entry only for the token embedding.
                Some(_) if c.name == "token_embd.weight" => {}
                Some(v) => {
                    let experts = if n_mat > 1 {
                        format!(" × {n_mat} matrices")
                    } else {
                        String::new()
                    };
                    bail!(
                        "{}: imatrix entry {} has {} values, but the tensor's rows have {} \
                         columns{experts}: the imatrix was computed on another model",
                        a.imatrix.as_ref().unwrap().display(),
                        c.name,
                        v.len(),
                        info.ne[0],
                    )
                }
            }
        }
        if matches!(action, Action::Quantize(_))
            && !matches!(info.ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)
        {
            requantized += 1;
            *requant_types.entry(info.ty.name()).or_default() += 1;
        }
        plan.push((c, action, imp));
    }
    if requantized > 0 && !a.allow_requantize {
        let types: Vec<String> = requant_types
            .iter()
            .map(|(t, n)| format!("{n} {t}"))
            .collect();
        eprintln!(
            "warning: {requantized} tensors of {} are already quantized ({}): they are dequantized \
             and quantized again, which stacks two rounding errors; quantize from an F32/F16/BF16 \
             model where there is one (--allow-requantize silences this)",
            a.model.display(),
            types.join(", ")
        );
    }

    let meta = metadata(
        g,
        preset,
        imatrix
            .as_ref()
            .map(|im| (a.imatrix.as_deref().unwrap(), im)),
    );
    let specs: Vec<GgufTensorSpec> = plan
        .iter()
        .map(|(c, action, _)| {
            let ty = match action {
                Action::Copy => g.tensor(&c.name).unwrap().ty,
                Action::Quantize(t) => *t,
            };
            GgufTensorSpec::new(c.name.clone(), c.ne.clone(), ty)
        })
        .collect();
    let mut inputs = vec![a.model.clone()];
    inputs.extend(a.imatrix.clone());
    let wopts = GgufWriteOptions {
        overwrite: a.overwrite,
        inputs,
    };

    let pb = common::bar(plan.len() as u64, "quantize");
    let mut quant_seconds = 0f64;
    let file_bytes = write_gguf(&a.output, &meta, specs.clone(), &wopts, |i, spec| {
        let (c, action, imp) = &plan[i];
        pb.set_message(c.name.clone());
        let info = g.tensor(&c.name).expect("from this file");
        let bytes = match action {
            Action::Copy => g.tensor_bytes(info).to_vec(),
            Action::Quantize(ty) => {
                let data = g.read_f32(info)?;
                let t = Instant::now();
                let q = quantize_tensor(&c.name, *ty, &spec.ne, &data, *imp)?;
                quant_seconds += t.elapsed().as_secs_f64();
                q
            }
        };
        g.release(info);
        pb.inc(1);
        Ok::<_, anyhow::Error>(bytes)
    })?;
    pb.finish_and_clear();
    let seconds = t0.elapsed().as_secs_f64();

    // Summary: per-type counts, fallbacks, bits/weight as llama-quantize reports it.
    let sum = GgufSummary::new(
        specs
            .iter()
            .zip(&plan)
            .map(|(spec, (c, _, _))| (spec, c.wanted)),
    );
    let (elements, tensor_bytes, bpw) = (sum.elements, sum.tensor_bytes, sum.bits_per_weight());
    let copied = plan
        .iter()
        .filter(|(_, act, _)| matches!(act, Action::Copy))
        .count();
    let v = serde_json::json!({
        "input": a.model, "output": a.output, "method": preset.name(), "file_type": preset.ftype(),
        "tensors": plan.len(), "quantized_tensors": plan.len() - copied, "copied_tensors": copied,
        "requantized_tensors": requantized,
        "types": sum.types_json(), "fallbacks": sum.fallbacks_json(),
        "imatrix": a.imatrix.as_ref().map(|p| serde_json::json!({
            "file": p, "entries": imatrix.as_ref().map_or(0, |m| m.entries.len()),
            "used": used, "tensors_without_entry": missing,
        })),
        "elements": elements, "tensor_bytes": tensor_bytes, "file_bytes": file_bytes,
        "bits_per_weight": bpw, "seconds": seconds, "quantize_seconds": quant_seconds,
        "peak_rss_bytes": common::peak_rss(),
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("wrote          {}", a.output.display());
    println!(
        "method         {} (llama.cpp file type {}), {} tensors: {} quantized, {} copied as stored",
        preset.name(),
        preset.ftype(),
        plan.len(),
        plan.len() - copied,
        copied
    );
    sum.print();
    if let (Some(p), Some(im)) = (&a.imatrix, &imatrix) {
        println!(
            "imatrix        {} ({} entries): used on {used} tensors{}",
            p.display(),
            im.entries.len(),
            if missing.is_empty() {
                String::new()
            } else {
                format!(
                    "; no entry for {} (e.g. {})",
                    missing.len(),
                    missing
                        .iter()
                        .take(3)
                        .copied()
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        );
    }
    if requantized > 0 {
        println!("requantized    {requantized} tensors were stored quantized in the input");
    }
    println!(
        "bits/weight    {bpw:.4} (all {} tensor bytes × 8 / {} weights)",
        tensor_bytes, elements
    );
    println!(
        "file           {} bytes ({}; f32 would be {})",
        file_bytes,
        common::human(file_bytes),
        common::human(elements * 4)
    );
    println!("time           {seconds:.2} s ({quant_seconds:.2} s in the quantizers)");
    if let Some(r) = common::peak_rss() {
        println!("peak RSS       {}", common::human(r));
    }
    Ok(())
}

/// Types whose quantizer uses importance weights (ggml ignores them for Q8_0).
fn ggml_formats_weighted(ty: GgmlType) -> bool {
    ty.can_quantize() && !matches!(ty, GgmlType::Q8_0 | GgmlType::Q8_K)
}
