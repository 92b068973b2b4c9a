//! A GGUF of ggml-quantized tensors from a GGUF, as llama.cpp's `llama-quantize` makes it
//! (`shrink quantize MODEL --method q4_k_m|q8_0|...`), and what every GGUF writer here shares:
//! [`quantize_tensor`], the per-type [`GgufSummary`] of a written file, and [`write_mix`], the
//! writer of any per-tensor choice of types (a preset's here, a measured one in `crate::auto`).
//!
//! The per-tensor types come from [`crate::ggml_mix`] (llama.cpp's `llama_tensor_get_type`,
//! fallbacks for rows that are not whole blocks included), the bytes from
//! `shrink_formats::ggml`'s quantizers (byte-identical to ggml's), the file from
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

use serde_json::{json, Value};
use shrink_formats::float::{self, FloatType};
use shrink_formats::ggml::{self, GgmlType};
use shrink_io::gguf_write::{write_gguf, GgufTensorSpec, GgufWriteOptions};
use shrink_io::imatrix::Imatrix;
use shrink_io::{GgufFile, GgufValue};

use crate::error::{MethodError, Result};
use crate::ggml_mix::{self, GgmlPreset, MixModel, MixOptions, TensorChoice};
use crate::pipeline::Progress;
use crate::report::{Report, Sizes};

/// Encode `data` (a tensor of ggml dims `ne`) as `ty`, with per-column importance when given
/// (one vector of `ne[0]` per matrix of `ne[0]·ne[1]`, as llama-quantize applies it).
pub fn quantize_tensor(
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
    let fmt = |source| MethodError::Format {
        name: name.to_string(),
        source,
    };
    let mut out = vec![0u8; ty.row_bytes(data.len()).map_err(fmt)?];
    let Some(imp) = importance else {
        ggml::quantize(ty, data, &mut out).map_err(fmt)?;
        return Ok(out);
    };
    let cols = ne[0] as usize;
    let mat = cols * ne.get(1).copied().unwrap_or(1) as usize;
    let mat_bytes = ty.row_bytes(mat).map_err(fmt)?;
    for (k, (src, dst)) in data.chunks(mat).zip(out.chunks_mut(mat_bytes)).enumerate() {
        let w = &imp[k * cols..(k + 1) * cols];
        ggml::quantize_with_importance(ty, src, cols, w, dst).map_err(fmt)?;
    }
    Ok(out)
}

/// Per-type tally.
#[derive(Default, Clone, Copy)]
struct Tally {
    tensors: u64,
    elements: u64,
    bytes: u64,
}

impl Tally {
    fn bits_per_weight(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.elements.max(1) as f64
    }
}

/// Types and fallbacks of a written GGUF's tensors.
#[derive(Default)]
pub struct GgufSummary {
    by_type: BTreeMap<&'static str, Tally>,
    /// (row length, wanted type, stored type) → tensors.
    fallbacks: BTreeMap<(u64, &'static str, &'static str), u64>,
    /// Weights in all tensors.
    pub elements: u64,
    /// Bytes of all tensors.
    pub tensor_bytes: u64,
}

impl GgufSummary {
    /// The summary of `tensors`: each spec with the type the rules wanted when a fallback
    /// replaced it.
    pub fn new<'a>(
        tensors: impl IntoIterator<Item = (&'a GgufTensorSpec, Option<GgmlType>)>,
    ) -> Self {
        let mut s = GgufSummary::default();
        for (spec, wanted) in tensors {
            let (n, b) = (
                spec.elements(),
                spec.bytes().expect("validated by the writer"),
            );
            let t = s.by_type.entry(spec.ty.name()).or_default();
            t.tensors += 1;
            t.elements += n;
            t.bytes += b;
            s.elements += n;
            s.tensor_bytes += b;
            if let Some(w) = wanted {
                *s.fallbacks
                    .entry((spec.ne[0], w.name(), spec.ty.name()))
                    .or_default() += 1;
            }
        }
        s
    }

    /// Bits per weight over all tensors, as llama-quantize reports it.
    pub fn bits_per_weight(&self) -> f64 {
        self.tensor_bytes as f64 * 8.0 / self.elements.max(1) as f64
    }

    /// A report of a GGUF written to `output` from `input` by `method`, `file_bytes` long:
    /// sizes as every report has them (all tensors counted as quantized), and the per-type
    /// `types`, `fallbacks`, `elements`, `tensor_bytes`, `file_bytes` and `bits_per_weight`
    /// fields with their text lines.
    pub fn report(&self, input: &Path, output: &Path, method: &str, file_bytes: u64) -> Report {
        let sizes = Sizes {
            quantized_params: self.elements,
            quantized_bytes: self.tensor_bytes,
            dense_bytes: 0,
            total_params: self.elements,
        };
        let mut r = Report::new(input.into(), output.into(), method.into(), sizes);
        let types: serde_json::Map<String, Value> = self
            .by_type
            .iter()
            .map(|(t, x)| {
                let v = json!({"tensors": x.tensors, "elements": x.elements, "bytes": x.bytes,
                               "bits_per_weight": x.bits_per_weight()});
                (t.to_string(), v)
            })
            .collect();
        let fallbacks: Vec<Value> = self
            .fallbacks
            .iter()
            .map(|((cols, w, got), n)| json!({"cols": cols, "wanted": w, "got": got, "tensors": n}))
            .collect();
        r.set("types", types);
        r.set("fallbacks", fallbacks);
        r.set("elements", self.elements);
        r.set("tensor_bytes", self.tensor_bytes);
        r.set("file_bytes", file_bytes);
        r.set("bits_per_weight", self.bits_per_weight());
        for (t, x) in &self.by_type {
            r.notes.push(format!(
                "  {t:<7} {:>4} tensors {:>12} weights {:>7.3} bits/weight",
                x.tensors,
                x.elements,
                x.bits_per_weight()
            ));
        }
        for ((cols, w, got), n) in &self.fallbacks {
            r.notes.push(format!("fallback       {cols}-wide rows: {w} → {got} on {n} tensors (rows not whole {w} blocks, as llama.cpp does)"));
        }
        r
    }
}

/// Options of a llama-quantize run.
#[derive(Debug, Clone)]
pub struct GgmlQuantize {
    /// The preset (`Q4_K_M`, `Q8_0`, ...).
    pub preset: GgmlPreset,
    /// llama.cpp importance matrix (`imatrix.dat` or GGUF imatrix).
    pub imatrix: Option<PathBuf>,
    /// Requantize already-quantized tensors without the warning about stacked error.
    pub allow_requantize: bool,
    /// Replace an existing output file (never the input).
    pub overwrite: bool,
    /// Keep `output.weight` as stored (llama-quantize's `--leave-output-tensor`).
    pub leave_output_tensor: bool,
}

/// Hyperparameters the mix rules read, from the GGUF metadata.
pub fn mix_model(g: &GgufFile) -> Result<MixModel> {
    let arch = g.architecture()?.to_string();
    let u = |k: &str| g.get(&format!("{arch}.{k}")).and_then(GgufValue::as_u64);
    let n_layer = g.require_u64(&format!("{arch}.block_count"))? as usize;
    let n_head = u("attention.head_count").unwrap_or(0) as usize;
    let n_head_kv = u("attention.head_count_kv").map_or(n_head, |v| v as usize);
    Ok(MixModel {
        n_expert: u("expert_count").unwrap_or(0) as usize,
        arch,
        n_layer,
        n_head,
        n_head_kv,
    })
}

/// The output's metadata: the input's, `general.architecture` first, with llama-quantize's
/// updates (file type, quantization version, split keys removed, imatrix provenance added).
fn metadata(
    g: &GgufFile,
    ftype: u32,
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
    set(&mut m, "general.quantization_version", GgufValue::U32(2));
    set(&mut m, "general.file_type", GgufValue::U32(ftype));
    if let Some((path, im)) = imatrix {
        let file = GgufValue::String(path.display().to_string());
        set(&mut m, "quantize.imatrix.file", file);
        if let Some(ds) = im.datasets.last() {
            set(
                &mut m,
                "quantize.imatrix.dataset",
                GgufValue::String(ds.clone()),
            );
        }
        let n = GgufValue::U32(im.entries.len() as u32);
        set(&mut m, "quantize.imatrix.entries_count", n);
        if let Some(c) = im.chunks.filter(|&c| c > 0) {
            set(&mut m, "quantize.imatrix.chunks_count", GgufValue::U32(c));
        }
    }
    m
}

/// Set key `k` of `m` in place, or append it.
pub fn set(m: &mut Vec<(String, GgufValue)>, k: &str, v: GgufValue) {
    match m.iter_mut().find(|(key, _)| key == k) {
        Some(slot) => slot.1 = v,
        None => m.push((k.to_string(), v)),
    }
}

/// One tensor's fate: the choice, its target type when quantized (`None`: copied as
/// stored), its importance vector.
type Step<'a> = (&'a TensorChoice, Option<GgmlType>, Option<&'a [f32]>);

/// What planning learned besides the steps.
#[derive(Default)]
struct Tally2<'a> {
    requantized: usize,
    requant_types: BTreeMap<&'static str, usize>,
    missing: Vec<&'a str>,
    used: usize,
}

/// The importance vector of tensor `c` (stored as `info`) quantized to `ty`, checked.
fn importance<'a>(
    c: &'a TensorChoice,
    info: &shrink_io::gguf::GgufTensorInfo,
    ty: GgmlType,
    im: &'a Imatrix,
    path: &Path,
    t: &mut Tally2<'a>,
) -> Result<Option<&'a [f32]>> {
    // One vector of ne[0] per matrix (per expert of a 3-D tensor), as llama.cpp applies it.
    let n_mat = info.elements() / (info.ne[0] * info.ne.get(1).copied().unwrap_or(1));
    Ok(match im.get(&c.name) {
        None if ty.can_quantize() && !matches!(ty, GgmlType::Q8_0 | GgmlType::Q8_K) => {
            // Types whose quantizer uses importance weights (ggml ignores them for Q8_0).
            t.missing.push(c.name.as_str());
            None
        }
        None => None,
        Some(v) if v.len() as u64 == info.ne[0] * n_mat => {
            t.used += 1;
            Some(v)
        }
        // llama.cpp ignores a mismatched entry only for the token embedding.
        Some(_) if c.name == "token_embd.weight" => None,
        Some(v) => {
            let experts = if n_mat > 1 {
                format!(" × {n_mat} matrices")
            } else {
                String::new()
            };
            return Err(MethodError::Input {
                path: path.to_path_buf(),
                what: format!(
                    "imatrix entry {} has {} values, but the tensor's rows have {} columns\
                     {experts}: the imatrix was computed on another model",
                    c.name,
                    v.len(),
                    info.ne[0]
                ),
            });
        }
    })
}

/// Decide every tensor's action and check the imatrix before writing anything.
fn plan<'a>(
    g: &GgufFile,
    choices: &'a [TensorChoice],
    imatrix: Option<(&Path, &'a Imatrix)>,
) -> Result<(Vec<Step<'a>>, Tally2<'a>)> {
    let mut t = Tally2::default();
    let mut steps = Vec::with_capacity(choices.len());
    for c in choices {
        let info = g.tensor(&c.name).expect("assigned from this file");
        let ty = c.ty.filter(|&ty| ty != info.ty);
        let imp = match (ty, imatrix) {
            (Some(ty), Some((path, im))) => importance(c, info, ty, im, path, &mut t)?,
            _ => None,
        };
        if ty.is_some() && !matches!(info.ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) {
            t.requantized += 1;
            *t.requant_types.entry(info.ty.name()).or_default() += 1;
        }
        steps.push((c, ty, imp));
    }
    Ok((steps, t))
}

/// Quantize the GGUF `g` (at `input`) to `output` as `opts` says, as llama-quantize does; the
/// report's `warning` says when already-quantized tensors were requantized.
pub fn quantize_gguf(
    g: &GgufFile,
    input: &Path,
    output: &Path,
    opts: &GgmlQuantize,
    progress: &dyn Progress,
) -> Result<Report> {
    let imatrix = opts.imatrix.as_ref().map(Imatrix::read).transpose()?;
    let mix = MixOptions {
        has_imatrix: imatrix.is_some(),
        quantize_output: !opts.leave_output_tensor,
    };
    let tensors: Vec<(String, Vec<u64>)> = g
        .tensors
        .iter()
        .map(|t| (t.name.clone(), t.ne.clone()))
        .collect();
    let choices = ggml_mix::assign(opts.preset, &mix_model(g)?, &mix, &tensors)?;
    let write = MixWrite {
        method: opts.preset.name().to_string(),
        ftype: opts.preset.ftype(),
        imatrix: opts.imatrix.as_deref().zip(imatrix.as_ref()),
        allow_requantize: opts.allow_requantize,
        overwrite: opts.overwrite,
    };
    write_mix(g, input, output, &choices, &write, progress)
}

/// How [`write_mix`] writes a GGUF of chosen types.
pub struct MixWrite<'a> {
    /// The method the report names (a preset, `auto`).
    pub method: String,
    /// `general.file_type` (a preset's, or llama.cpp's 1024, "guessed", for a free mix).
    pub ftype: u32,
    /// The importance matrix guiding the quantizers, and its file.
    pub imatrix: Option<(&'a Path, &'a Imatrix)>,
    /// Requantize already-quantized tensors without the warning about stacked error.
    pub allow_requantize: bool,
    /// Replace an existing output file (never the input).
    pub overwrite: bool,
}

/// Write the GGUF `g` (at `input`) to `output` with each tensor of `choices` (one per tensor
/// of `g`, in the order to write) quantized to its type or copied as stored, one tensor
/// resident at a time; the per-type report.
pub fn write_mix(
    g: &GgufFile,
    input: &Path,
    output: &Path,
    choices: &[TensorChoice],
    opts: &MixWrite,
    progress: &dyn Progress,
) -> Result<Report> {
    let t0 = Instant::now();
    let im = opts.imatrix;
    let (steps, tally) = plan(g, choices, im)?;

    let specs: Vec<GgufTensorSpec> = steps
        .iter()
        .map(|(c, ty, _)| {
            let ty = ty.unwrap_or_else(|| g.tensor(&c.name).expect("from this file").ty);
            GgufTensorSpec::new(c.name.clone(), c.ne.clone(), ty)
        })
        .collect();
    let mut inputs = vec![input.to_path_buf()];
    inputs.extend(im.map(|(p, _)| p.to_path_buf()));
    let wopts = GgufWriteOptions {
        overwrite: opts.overwrite,
        inputs,
    };
    progress.start("quantize", steps.len() as u64);
    let mut quant_seconds = 0f64;
    let meta = metadata(g, opts.ftype, im);
    let file_bytes = write_gguf(output, &meta, specs.clone(), &wopts, |i, spec| {
        let (c, ty, imp) = &steps[i];
        let info = g.tensor(&c.name).expect("from this file");
        let bytes = match ty {
            None => g.tensor_bytes(info).to_vec(),
            Some(ty) => {
                let data = g.read_f32(info)?;
                let t = Instant::now();
                let q = quantize_tensor(&c.name, *ty, &spec.ne, &data, *imp)?;
                quant_seconds += t.elapsed().as_secs_f64();
                q
            }
        };
        g.release(info);
        progress.inc(1);
        Ok::<_, MethodError>(bytes)
    })?;
    progress.finish();

    let sum = GgufSummary::new(specs.iter().zip(&steps).map(|(s, (c, _, _))| (s, c.wanted)));
    let mut r = sum.report(input, output, &opts.method, file_bytes);
    ggml_report(&mut r, opts, &steps, &tally);
    // Its own warning says when an input is requantized (--allow-requantize silences it).
    r.input_bytes = Some(g.tensors.iter().map(|t| t.bytes).sum());
    r.quantize_seconds = quant_seconds;
    r.seconds = t0.elapsed().as_secs_f64();
    Ok(r)
}

/// The fields of a llama-quantize run beside the summary's.
fn ggml_report(r: &mut Report, opts: &MixWrite, steps: &[Step], t: &Tally2) {
    let copied = steps.iter().filter(|(_, ty, _)| ty.is_none()).count();
    r.quantized_tensors = steps.len() - copied;
    r.set("file_type", opts.ftype);
    r.set("tensors", steps.len());
    r.set("copied_tensors", copied);
    r.set("requantized_tensors", t.requantized);
    r.notes.insert(
        0,
        format!(
            "types          llama.cpp file type {}, {} tensors: {} quantized, {} copied as stored",
            opts.ftype,
            steps.len(),
            steps.len() - copied,
            copied
        ),
    );
    let entries = opts.imatrix.map_or(0, |(_, m)| m.entries.len());
    r.set(
        "imatrix",
        opts.imatrix.map(|(p, _)| {
            json!({
                "file": p, "entries": entries, "used": t.used, "tensors_without_entry": t.missing,
            })
        }),
    );
    if let Some((p, _)) = opts.imatrix {
        let missing = match t.missing.len() {
            0 => String::new(),
            n => format!(
                "; no entry for {n} (e.g. {})",
                t.missing[..n.min(3)].join(", ")
            ),
        };
        r.notes.push(format!(
            "imatrix        {} ({entries} entries): used on {} tensors{missing}",
            p.display(),
            t.used
        ));
    }
    if t.requantized > 0 {
        r.notes.push(format!(
            "requantized    {} tensors were stored quantized in the input",
            t.requantized
        ));
    }
    if t.requantized > 0 && !opts.allow_requantize {
        let types: Vec<String> = t
            .requant_types
            .iter()
            .map(|(t, n)| format!("{n} {t}"))
            .collect();
        r.set(
            "warning",
            format!(
                "{} tensors of {} are already quantized ({}): they are dequantized and quantized \
                 again, which stacks two rounding errors; quantize from an F32/F16/BF16 model \
                 where there is one (--allow-requantize silences this)",
                t.requantized,
                r.input.display(),
                types.join(", ")
            ),
        );
    }
}
