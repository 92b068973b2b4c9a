//! A llama.cpp GGUF from a Hugging Face directory (as `convert_hf_to_gguf.py`, then
//! `llama-quantize` for a quantized type, would make it), or a GGUF re-typed (`shrink export
//! MODEL --to gguf --type f16|q8_0|q4_k_m|...`).
//!
//! From an HF directory (llama, mistral, qwen2, gpt2, gpt_neox; float, or quantized in a layout
//! shrink reads, then dequantized): metadata as the converter writes it
//! ([`shrink_models::gguf_arch`] for the `general.*` / `<arch>.*` keys, `shrink_io::gguf_meta`
//! for the tokenizer), tensors renamed and transformed as the converter does, in the
//! converter's order (HF names sorted) for F32/F16/BF16 and in llama-quantize's order for
//! quantized presets. Types: F32 everywhere; F16/BF16 for every tensor llama.cpp quantizes
//! (1-D tensors and norms stay F32); a preset's types from [`crate::ggml_mix`] (fallbacks
//! included, reported).
//!
//! From a GGUF: a quantized preset is [`crate::ggml_quantize`] (llama-quantize); F32/F16/BF16
//! dequantize each tensor and store it in that type, metadata copied with the file type updated.
//!
//! Streaming: one tensor is read, converted and written at a time.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use serde_json::json;
use shrink_formats::ggml::{self, GgmlType};
use shrink_io::gguf_write::{write_gguf, GgufTensorSpec, GgufWriteOptions};
use shrink_io::model_card::{self, CardValue};
use shrink_io::{Checkpoint, GgufFile, GgufValue, HfCheckpoint};
use shrink_models::gguf_arch::{GgufArch, Transform};
use shrink_models::ModelConfig;

use crate::error::{MethodError, Result};
use crate::ggml_mix::{self, GgmlPreset, MixModel, MixOptions};
use crate::ggml_quantize::{self, quantize_tensor, GgmlQuantize, GgufSummary};
use crate::pipeline::Progress;
use crate::report::Report;

/// The storage requested.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// One float type for every tensor llama.cpp quantizes (F32: for every tensor).
    Float(GgmlType),
    /// A llama.cpp preset.
    Preset(GgmlPreset),
}

impl Target {
    /// The target `--type` names: f32, f16, bf16 or a preset.
    pub fn parse(s: &str) -> Result<Target> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "f32" => Target::Float(GgmlType::F32),
            "f16" => Target::Float(GgmlType::F16),
            "bf16" => Target::Float(GgmlType::BF16),
            other => match GgmlPreset::from_name(other) {
                Some(p) => Target::Preset(p),
                None => {
                    return Err(MethodError::Options(format!(
                        "unknown --type {s:?}; known: f32, f16, bf16, {}",
                        GgmlPreset::names().join(", ")
                    )))
                }
            },
        })
    }

    /// `general.file_type` (`llama_ftype`: ALL_F32 0, MOSTLY_F16 1, MOSTLY_BF16 32).
    pub fn ftype(self) -> u32 {
        match self {
            Target::Float(GgmlType::F16) => 1,
            Target::Float(GgmlType::BF16) => 32,
            Target::Float(_) => 0,
            Target::Preset(p) => p.ftype(),
        }
    }

    /// The name reports give.
    pub fn name(self) -> &'static str {
        match self {
            Target::Float(t) => t.name(),
            Target::Preset(p) => p.name(),
        }
    }
}

/// Options of a GGUF export.
#[derive(Debug, Clone)]
pub struct GgufExport {
    /// The storage.
    pub target: Target,
    /// `tokenizer.ggml.pre` to write (HF input), instead of the one recognised.
    pub pre: Option<String>,
    /// Replace an existing output file (never the input).
    pub overwrite: bool,
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

/// The output's metadata and tensors, and the tokenizer pre-tokenizer recognised (HF input).
struct Layout {
    meta: Vec<(String, GgufValue)>,
    plan: Vec<Planned>,
    pre: Option<(String, String)>,
    /// Whether the input stores its linears quantized (then a quantized target requantizes).
    requantized: bool,
}

/// Types for `tensors` (GGUF name, ne, source) under `target`, in output order, with
/// fallbacks. A preset's tensors come in llama-quantize's order; float targets keep the order.
fn choose(
    target: Target,
    model: &MixModel,
    tensors: Vec<(String, Vec<u64>, Source)>,
) -> Result<Vec<Planned>> {
    let names: Vec<(String, Vec<u64>)> = tensors
        .iter()
        .map(|(n, ne, _)| (n.clone(), ne.clone()))
        .collect();
    let mut sources: BTreeMap<String, Source> =
        tensors.into_iter().map(|(n, _, s)| (n, s)).collect();
    let chosen: Vec<(String, Vec<u64>, GgmlType, Option<GgmlType>)> = match target {
        Target::Float(ty) => names
            .into_iter()
            .map(|(n, ne)| {
                let quantizable = ggml_mix::allows_quantization(&n, &ne, true);
                let t = if ty == GgmlType::F32 || quantizable {
                    ty
                } else {
                    GgmlType::F32
                };
                (n, ne, t, None)
            })
            .collect(),
        Target::Preset(p) => ggml_mix::assign(p, model, &MixOptions::default(), &names)?
            .into_iter()
            .map(|c| (c.name, c.ne, c.ty.unwrap_or(GgmlType::F32), c.wanted))
            .collect(),
    };
    Ok(chosen
        .into_iter()
        .map(|(n, ne, ty, wanted)| Planned {
            source: sources.remove(&n).expect("chosen from these tensors"),
            spec: GgufTensorSpec::new(n, ne, ty),
            wanted,
        })
        .collect())
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

/// A GGUF input re-typed to a float target: the input's metadata with the file type updated.
fn from_gguf(g: &GgufFile, target: Target) -> Result<Layout> {
    let tensors = g
        .tensors
        .iter()
        .map(|t| (t.name.clone(), t.ne.clone(), Source::Gguf(t.name.clone())))
        .collect();
    let model = MixModel {
        arch: g.architecture()?.to_string(),
        n_layer: 0,
        n_head: 0,
        n_head_kv: 0,
        n_expert: 0,
    };
    let mut meta: Vec<(String, GgufValue)> = g
        .metadata
        .iter()
        .filter(|(k, _)| !k.starts_with("split."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    ggml_quantize::set(
        &mut meta,
        "general.file_type",
        GgufValue::U32(target.ftype()),
    );
    ggml_quantize::set(&mut meta, "general.quantization_version", GgufValue::U32(2));
    Ok(Layout {
        meta,
        plan: choose(target, &model, tensors)?,
        pre: None,
        requantized: false,
    })
}

/// An HF directory as llama.cpp's converter maps it.
fn from_hf(ckpt: &Checkpoint, h: &HfCheckpoint, o: &GgufExport) -> Result<Layout> {
    let cfg = ModelConfig::from_checkpoint(ckpt)?;
    let arch = GgufArch::of(&cfg, &h.dir)?;
    // HF names in the converter's order (sorted), mapped to llama.cpp's. A quantized
    // directory's weights are its modules' (each dequantized when read).
    let requantized = h.quantization_config().is_some();
    let mut names: Vec<(String, Vec<usize>)> = if requantized {
        shrink_models::weight_shapes(&cfg)
    } else {
        let t = &h.weights.tensors;
        t.iter()
            .map(|(n, t)| (n.clone(), t.shape.clone()))
            .collect()
    };
    names.sort();
    let mut mapped = Vec::new();
    for (n, shape) in names.iter().filter(|(n, _)| !GgufArch::skipped(n)) {
        let (g, transform) = arch.tensor(n).ok_or_else(|| MethodError::Input {
            path: h.dir.clone(),
            what: format!("no GGUF mapping for tensor {n}"),
        })?;
        let ne = transform
            .shape(shape)
            .iter()
            .rev()
            .map(|&d| d as u64)
            .collect();
        let name = n.clone();
        mapped.push((g, ne, Source::Hf { name, transform }));
    }
    let (n_layer, n_head, n_head_kv) = arch.heads();
    let model = MixModel {
        arch: arch.name.to_string(),
        n_layer,
        n_head,
        n_head_kv,
        n_expert: 0,
    };
    let tok =
        shrink_io::gguf_meta::tokenizer_metadata(&h.dir, arch.vocab_size(), o.pre.as_deref())?;
    Ok(Layout {
        meta: hf_metadata(h, &arch, o.target, tok.metadata),
        plan: choose(o.target, &model, mapped)?,
        pre: Some(tok.pre),
        requantized,
    })
}

/// Refuse an input as output (or a path inside an input directory) and an existing output
/// before reading anything (the writer checks again).
fn check_output(input: &Path, output: &Path, overwrite: bool) -> Result<()> {
    shrink_io::refuse_inputs(output, &[input])?;
    if output.exists() && !overwrite {
        return Err(MethodError::Options(format!(
            "{}: output already exists; shrink does not overwrite it (remove it, choose another \
             -o, or --overwrite)",
            output.display()
        )));
    }
    Ok(())
}

/// Export `ckpt` (at `input`) to the GGUF file `output` as `o` says.
pub fn export_gguf(
    ckpt: &Checkpoint,
    input: &Path,
    output: &Path,
    o: &GgufExport,
    progress: &dyn Progress,
) -> Result<Report> {
    let t0 = Instant::now();
    check_output(input, output, o.overwrite)?;
    let l = match (ckpt, o.target) {
        (Checkpoint::Gguf(g), Target::Preset(preset)) => {
            let q = GgmlQuantize {
                preset,
                imatrix: None,
                allow_requantize: false,
                overwrite: o.overwrite,
                leave_output_tensor: false,
            };
            return ggml_quantize::quantize_gguf(g, input, output, &q, progress);
        }
        (Checkpoint::Gguf(g), target) => from_gguf(g, target)?,
        (Checkpoint::Hf(h), _) => from_hf(ckpt, h, o)?,
    };
    let specs: Vec<GgufTensorSpec> = l.plan.iter().map(|p| p.spec.clone()).collect();
    let wopts = GgufWriteOptions {
        overwrite: o.overwrite,
        inputs: vec![input.to_path_buf()],
    };
    progress.start("export", l.plan.len() as u64);
    let mut convert_seconds = 0f64;
    // Blocks of a quantized input's weights stored in a quantized type, and those whose values
    // lay on the type's grid (Q4_0, Q8_0) and were kept exactly.
    let (mut grid_blocks, mut kept_blocks) = (0usize, 0usize);
    let file_bytes = write_gguf(output, &l.meta, specs, &wopts, |i, spec| {
        // `packed`: the weight is stored in the input's quantized layout (not as a float
        // tensor of its own name).
        let (data, packed) = match (&l.plan[i].source, ckpt) {
            (Source::Hf { name, transform }, Checkpoint::Hf(h)) => {
                let (v, shape) = ckpt.read_f32(name)?;
                let info = h.weights.tensors.get(name);
                if let Some(info) = info {
                    h.weights.release(info);
                }
                (transform.apply(name, v, &shape)?, info.is_none())
            }
            (Source::Gguf(name), Checkpoint::Gguf(g)) => {
                let info = g.tensor(name).expect("from this file");
                let v = g.read_f32(info)?;
                g.release(info);
                (v, false)
            }
            _ => unreachable!("sources come from the checkpoint"),
        };
        let t = Instant::now();
        let bytes = if packed && matches!(spec.ty, GgmlType::Q4_0 | GgmlType::Q8_0) {
            // A symmetric grid of 32 (GPTQ's, round-to-nearest's) is carried over exactly.
            let fmt = |source| MethodError::Format {
                name: spec.name.clone(),
                source,
            };
            let mut out = vec![0u8; spec.ty.row_bytes(data.len()).map_err(fmt)?];
            kept_blocks += ggml::quantize_keeping_grid(spec.ty, &data, &mut out).map_err(fmt)?;
            grid_blocks += data.len() / spec.ty.block_size();
            out
        } else {
            if packed && spec.ty.can_quantize() {
                // Rounded a second time: counted, so that the report warns.
                grid_blocks += data.len() / spec.ty.block_size();
            }
            quantize_tensor(&spec.name, spec.ty, &spec.ne, &data, None)?
        };
        convert_seconds += t.elapsed().as_secs_f64();
        progress.inc(1);
        Ok::<_, MethodError>(bytes)
    })?;
    progress.finish();
    let mut r = report(
        input,
        output,
        o.target,
        &l,
        file_bytes,
        (kept_blocks, grid_blocks),
    );
    r.quantize_seconds = convert_seconds;
    r.set("convert_seconds", convert_seconds);
    r.seconds = t0.elapsed().as_secs_f64();
    Ok(r)
}

/// The report of an export to GGUF.
/// `(kept, blocks)`: of the blocks of a quantized input's weights stored in a quantized type,
/// those stored exactly on the grid they lay on.
fn report(
    input: &Path,
    output: &Path,
    target: Target,
    l: &Layout,
    file_bytes: u64,
    (kept, blocks): (usize, usize),
) -> Report {
    let sum = GgufSummary::new(l.plan.iter().map(|p| (&p.spec, p.wanted)));
    let mut r = sum.report(input, output, target.name(), file_bytes);
    let warning = (l.requantized && matches!(target, Target::Preset(_)) && kept < blocks.max(1))
        .then(|| {
            let grid = if blocks > 0 {
                format!(
                    " ({kept} of {blocks} blocks lay on a Q4_0/Q8_0 grid and were kept exactly)"
                )
            } else {
                String::new()
            };
            format!(
                "{} stores its linears quantized: they were dequantized and requantized to {}, \
                 which stacks both rounding errors{grid}",
                input.display(),
                target.name()
            )
        });
    if blocks > 0 {
        r.set("blocks_on_grid", kept);
        r.set("blocks_requantized", blocks);
        r.notes.push(format!(
            "on the grid    {kept} of {blocks} blocks of the quantized input's weights lay on a \
             Q4_0/Q8_0 grid and were stored exactly (the rest rounded again)"
        ));
    }
    r.quantized_tensors = l.plan.len();
    r.set("warning", warning);
    r.set("dequantized_input", l.requantized);
    r.set("format", "gguf");
    r.set("type", target.name());
    r.set("file_type", target.ftype());
    r.set("tensors", l.plan.len());
    let pre = l
        .pre
        .as_ref()
        .map(|(n, why)| json!({"name": n, "why": why}));
    r.set("tokenizer_pre", pre);
    r.notes.insert(
        0,
        format!(
            "type           {} (llama.cpp file type {}), {} tensors",
            target.name(),
            target.ftype(),
            l.plan.len()
        ),
    );
    if let Some((n, why)) = &l.pre {
        r.notes.push(format!("tokenizer.pre  {n} ({why})"));
    }
    r
}
