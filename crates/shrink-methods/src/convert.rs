//! Change the storage dtype of a checkpoint, tensor by tensor, into a Hugging Face directory
//! (`shrink convert`, `shrink export --to hf`), and optionally compare the logits of the input
//! and the output on one prompt.
//!
//! A plain HF directory keeps every stored tensor (floats converted, others copied); a GGUF file
//! or a quantized HF directory is written as its model's weights by HF name, dequantized.
//! Streaming: each tensor is read, converted and written before the next is touched.

use std::cell::RefCell;
use std::path::Path;

use shrink_formats::float::{self, FloatType};
use shrink_io::tokenizer::Tokenizer;
use shrink_io::{Checkpoint, IoError, LazyTensor, OutputDir, StoredDtype};
use shrink_models::{Architecture, Model, ModelConfig, ModelError, WeightLoader};

use crate::error::{MethodError, Result};
use crate::pipeline::Progress;
use crate::report::{human, peak_rss, Report, Sizes};

/// One output tensor and where its values come from.
struct Planned {
    name: String,
    shape: Vec<usize>,
    /// Output byte length.
    len: usize,
    /// Converted from float (stored as the target dtype), or copied verbatim.
    convert: bool,
}

/// Every output tensor of a plain HF directory: floats converted, others copied.
fn plan_hf(ckpt: &Checkpoint, dtype: FloatType) -> Vec<Planned> {
    let mut plan = Vec::new();
    for t in ckpt.tensors() {
        let n: usize = t.shape.iter().product();
        let (len, convert) = match t.dtype {
            StoredDtype::Float(_) => (n * dtype.size(), true),
            _ => (t.bytes as usize, false),
        };
        plan.push(Planned {
            name: t.name,
            shape: t.shape,
            len,
            convert,
        });
    }
    plan
}

/// The model's weights by HF name, dequantized (GGUF files, quantized HF directories).
fn plan_model(
    ckpt: &Checkpoint,
    arch: &Architecture,
    model: &Path,
    dtype: FloatType,
) -> Result<Vec<Planned>> {
    let input = |what: String| MethodError::Input {
        path: model.to_path_buf(),
        what,
    };
    if let Checkpoint::Gguf(g) = ckpt {
        if let Some(t) = g.tensors.iter().find(|t| !t.ty.can_dequantize()) {
            return Err(input(format!(
                "tensor {} is stored as {}, which shrink cannot dequantize yet",
                t.name,
                t.ty.name()
            )));
        }
    }
    let w = arch.weight_loader(ckpt);
    let mut plan = Vec::new();
    for (name, shape) in arch.weight_shapes() {
        if !w.has(&name) {
            let family = arch.family();
            return Err(input(format!(
                "weight {name} (required by the {family} config) is not in the file"
            )));
        }
        let n: usize = shape.iter().product();
        plan.push(Planned {
            name,
            len: n * dtype.size(),
            shape,
            convert: true,
        });
    }
    Ok(plan)
}

/// The bytes of output tensor `p`.
fn read(
    ckpt: &Checkpoint,
    arch: Option<(&Architecture, &WeightLoader)>,
    p: &Planned,
    dtype: FloatType,
) -> Result<Vec<u8>> {
    if !p.convert {
        let Checkpoint::Hf(h) = ckpt else {
            unreachable!("only HF tensors are copied verbatim")
        };
        let info = &h.weights.tensors[&p.name];
        let bytes = h.weights.bytes(info).to_vec();
        h.weights.release(info);
        return Ok(bytes);
    }
    let by_model = !matches!(ckpt, Checkpoint::Hf(h) if h.quantization_config().is_none());
    let values = match arch {
        Some((a, w)) if by_model => crate::pipeline::values(&a.read_weight(w, &p.name, &p.shape)?)?,
        _ => ckpt.read_f32(&p.name)?.0,
    };
    Ok(float::encode(dtype, &values))
}

/// Stream `plan` into `out`'s model.safetensors; the first failure is returned (the file is
/// then incomplete and the directory is not committed).
fn write(
    ckpt: &Checkpoint,
    arch: Option<&Architecture>,
    plan: &[Planned],
    out: &OutputDir,
    dtype: FloatType,
    progress: &dyn Progress,
) -> Result<()> {
    let failure: RefCell<Option<MethodError>> = RefCell::new(None);
    let loader = arch.map(|a| a.weight_loader(ckpt));
    let arch = arch.zip(loader.as_ref());
    progress.start("convert", plan.len() as u64);
    let lazy: Vec<(String, LazyTensor)> = plan
        .iter()
        .map(|p| {
            let failure = &failure;
            let dt = match ckpt {
                Checkpoint::Hf(h) if !p.convert => h.weights.tensors[&p.name].dtype,
                _ => shrink_io::safetensors_dtype(dtype),
            };
            let t = LazyTensor::new(dt, p.shape.clone(), p.len, move || {
                progress.inc(1);
                if failure.borrow().is_some() {
                    return vec![0u8; p.len];
                }
                read(ckpt, arch, p, dtype).unwrap_or_else(|e| {
                    *failure.borrow_mut() = Some(with_tensor(e, &p.name));
                    vec![0u8; p.len]
                })
            });
            (p.name.clone(), t)
        })
        .collect();
    let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    shrink_io::write_safetensors_streaming(&out.file("model.safetensors"), lazy, Some(meta))?;
    progress.finish();
    failure.into_inner().map_or(Ok(()), Err)
}

/// Convert `ckpt` into the HF directory `output` with its float weights stored as `dtype`;
/// with `check = Some(prompt)`, compare the logits of input and output on `prompt` (skipped
/// for an architecture shrink does not run). The report's extra fields: `dtype`, `tensors`,
/// footprints before / after and their `ratio`, the logit differences, peak RSS while
/// streaming.
pub fn convert(
    ckpt: &Checkpoint,
    output: &Path,
    dtype: FloatType,
    check: Option<&str>,
    progress: &dyn Progress,
) -> Result<Report> {
    let t0 = std::time::Instant::now();
    let model = ckpt.path();
    // A plain HF directory is copied tensor by tensor: its architecture need not be known.
    let plain = matches!(ckpt, Checkpoint::Hf(h) if h.quantization_config().is_none());
    let arch = match Architecture::from_checkpoint(ckpt) {
        Ok(a) => Some(a),
        Err(_) if plain => None,
        Err(e) => return Err(e.into()),
    };
    let out = OutputDir::create(output, &[model])?;
    let bytes_before: u64 = ckpt.tensors().iter().map(|t| t.bytes).sum();
    let plan = match &arch {
        Some(a) if !plain => plan_model(ckpt, a, model, dtype)?,
        _ => plan_hf(ckpt, dtype),
    };
    write(ckpt, arch.as_ref(), &plan, &out, dtype, progress)?;
    let rss_streaming = peak_rss();
    let bytes_after: u64 = plan.iter().map(|p| p.len as u64).sum();

    let model_cfg = arch.as_ref().and_then(|c| c.decoder());
    let name = dtype.torch_name();
    crate::output::write_config_and_tokenizer(ckpt, model_cfg, &out, name, None)?;
    // Logits of the source and of the output, one model in memory at a time: skipped when one
    // model as float32 does not fit in the memory free (a model larger than RAM streams through
    // the conversion itself, tensor by tensor, but not through a whole-model forward).
    let f32_bytes: u64 = plan
        .iter()
        .map(|p| p.shape.iter().product::<usize>() as u64 * 4)
        .sum();
    let free = shrink_io::available_memory();
    let fits = free.is_none_or(|free| f32_bytes < free);
    let diff = match check {
        Some(prompt) if model_cfg.is_some() && fits => {
            Some(compare_logits(ckpt, out.dir(), prompt)?)
        }
        _ => None,
    };
    let target = out.commit()?;

    let total_params = plan
        .iter()
        .map(|p| p.shape.iter().product::<usize>() as u64)
        .sum();
    let sizes = Sizes {
        dense_bytes: bytes_after,
        total_params,
        ..Sizes::default()
    };
    let mut r = Report::new(
        model.into(),
        target,
        format!("convert-{}", dtype.name()),
        sizes,
    );
    r.seconds = t0.elapsed().as_secs_f64();
    r.set("dtype", dtype.name());
    r.set("tensors", plan.len());
    r.set("footprint_before_bytes", bytes_before);
    r.set("footprint_after_bytes", bytes_after);
    r.set("ratio", bytes_after as f64 / bytes_before.max(1) as f64);
    r.set("logits_mean_abs_diff", diff.map(|c| c.0));
    r.set("logits_max_abs_diff", diff.map(|c| c.1));
    r.set("check_tokens", diff.map(|c| c.2));
    r.set("peak_rss_streaming_bytes", rss_streaming);
    r.notes.push(match (diff, check) {
        (Some((mean, max, n)), Some(p)) => {
            format!(
                "logits         mean |Δ| {mean:.3e}, max |Δ| {max:.3e} over {n} positions of {p:?}"
            )
        }
        _ if model_cfg.is_none() => {
            "logits         not compared: the architecture is not one shrink runs".into()
        }
        (None, Some(_)) if !fits => format!(
            "logits         not compared: the model as float32 ({}) does not fit in the {} of \
             memory free",
            human(f32_bytes),
            human(free.unwrap_or(0))
        ),
        _ => "logits         not compared (--no-check)".into(),
    });
    Ok(r)
}

/// `e` naming tensor `name` (errors that do not name it already).
pub(crate) fn with_tensor(e: MethodError, name: &str) -> MethodError {
    match e {
        MethodError::Model(m) => {
            MethodError::Model(ModelError::Input(format!("tensor {name}: {m}")))
        }
        e => e,
    }
}

/// Token ids of `prompt` for `src`'s tokenizer; without one, a fixed id sequence within the
/// vocabulary.
fn prompt_ids(src: &Checkpoint, prompt: &str) -> Result<Vec<u32>> {
    let tok: std::result::Result<Tokenizer, IoError> = match src {
        Checkpoint::Gguf(g) => Tokenizer::from_gguf(g),
        Checkpoint::Hf(h) => match &h.tokenizer_json {
            Some(p) => Tokenizer::from_file(p),
            None => Err(IoError::malformed(&h.dir, "no tokenizer.json")),
        },
    };
    Ok(match tok {
        Ok(t) => t.encode(prompt, true)?,
        Err(_) => {
            let v = ModelConfig::from_checkpoint(src)?.vocab_size() as u32;
            (0..8u32).map(|i| (i * 7919 + 13) % v).collect()
        }
    })
}

/// Mean and max |Δ| of the logits of `src` and of the model in `out_dir` on `prompt`, and
/// the number of tokens.
pub fn compare_logits(src: &Checkpoint, out_dir: &Path, prompt: &str) -> Result<(f64, f64, usize)> {
    let ids = prompt_ids(src, prompt)?;
    let logits = |m: &Model| -> Result<Vec<f32>> {
        let t = m.forward(&ids, None)?;
        Ok(t.flatten_all()
            .and_then(|t| t.to_vec1())
            .map_err(ModelError::from)?)
    };
    let before = logits(&Model::load(src)?)?;
    let after = logits(&Model::load(&Checkpoint::open(out_dir)?)?)?;
    let (mut sum, mut max) = (0f64, 0f64);
    for (x, y) in before.iter().zip(&after) {
        let d = (x - y).abs() as f64;
        sum += d;
        max = max.max(d);
    }
    Ok((sum / before.len() as f64, max, ids.len()))
}
