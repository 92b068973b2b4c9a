//! Calibrated quantization (GPTQ, AWQ), layer by layer: the calibration samples are embedded
//! once; each decoder layer is loaded, its linears' inputs observed on the samples, its
//! weights compressed, and its outputs recomputed with the compressed weights to feed the
//! next layer (GPTQ's sequential scheme). The output file is written as the layers complete,
//! so only one layer's weights and the samples' activations are resident.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use shrink_formats::float;
use shrink_formats::gptq::GptqParts;
use shrink_io::quantized::StoredTensor;
use shrink_io::{OutputDir, TensorHeader};
use shrink_methods::calib::{draw_samples, CalibSpec};
use shrink_methods::gptq::{self, GptqSpec};
use shrink_methods::hessian::Hessian;
use shrink_models::llama::LlamaLayer;
use shrink_models::sequential::{Sequential, LAYER_LINEARS};
use shrink_models::Architecture;

use crate::common;

/// Where the calibration text comes from and how it is cut into samples.
#[derive(Debug, Clone)]
pub struct CalibArgs {
    /// The text file.
    pub file: PathBuf,
    /// Take the lee-ppl-v1 calibration documents (0..149) of a Lee corpus file, or the raw text.
    pub lee: bool,
    /// Samples, length and seed.
    pub spec: CalibSpec,
}

/// The token ids of calibration text `file` for `ckpt`'s tokenizer: the lee-ppl-v1
/// calibration documents of a Lee corpus file if `lee`, else the whole text.
pub fn calib_ids(ckpt: &shrink_io::Checkpoint, file: &Path, lee: bool) -> Result<Vec<u32>> {
    let raw = shrink_io::read_text(file)?;
    let text = if lee {
        shrink_eval::lee_texts(&raw)
            .map_err(|e| {
                anyhow::anyhow!(
                    "{}: {e} (use --calib-format raw for any other text)",
                    file.display()
                )
            })?
            .calibration
    } else {
        raw
    };
    Ok(common::tokenizer(ckpt)?.encode(&text, false)?)
}

/// The calibration samples (token ids) of `c` for `ckpt`'s tokenizer.
pub fn samples(ckpt: &shrink_io::Checkpoint, c: &CalibArgs) -> Result<Vec<Vec<u32>>> {
    let ids = calib_ids(ckpt, &c.file, c.lee)?;
    draw_samples(&ids, c.spec).map_err(|e| anyhow::anyhow!("{}: {e}", c.file.display()))
}

/// The four distinct inputs of a Llama layer's linears, named by the first linear reading each.
const INPUTS: [&str; 4] = [
    "self_attn.q_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.down_proj",
];

/// The input (one of [`INPUTS`]) linear `local` reads.
fn input_of(local: &str) -> &'static str {
    match local {
        "self_attn.q_proj" | "self_attn.k_proj" | "self_attn.v_proj" => INPUTS[0],
        "self_attn.o_proj" => INPUTS[1],
        "mlp.gate_proj" | "mlp.up_proj" => INPUTS[2],
        _ => INPUTS[3],
    }
}

/// A tensor's values as a flat f32 vector.
fn values(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_vec1::<f32>()?)
}

/// Per-input Hessians of `layer` on `xs` (and the layer's outputs with its current weights).
fn observe(
    seq: &Sequential,
    layer: &LlamaLayer,
    xs: &[Tensor],
    f64_acc: bool,
) -> Result<HashMap<&'static str, Hessian>> {
    let mut hs: HashMap<&'static str, Hessian> = HashMap::new();
    let mut tap = |_: usize, name: &str, t: &Tensor| -> shrink_models::Result<()> {
        if let Some(&key) = INPUTS.iter().find(|&&k| k == name) {
            let n = t.dim(1)?;
            let v = t.flatten_all()?.to_vec1::<f32>()?;
            hs.entry(key)
                .or_insert_with(|| Hessian::new(n, f64_acc))
                .add(&v);
        }
        Ok(())
    };
    seq.run(layer, xs, Some(&mut tap))?;
    Ok(hs)
}

/// Write `model.safetensors` of `out`: header entry `k` is the tensor `shapes[origin[k]]`. The
/// tensors of decoder layer `l` are taken from `stored` once `advance(l, xs, stored)` has
/// compressed it — layers in order, each when the writer first reaches one of its tensors, so
/// only one layer is ever in flight — and every other tensor is read from the checkpoint and
/// written as `dense_dtype`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn write_layer_by_layer(
    model: &Path,
    out: &OutputDir,
    arch: &Architecture,
    loader: &shrink_models::WeightLoader,
    shapes: &[(String, Vec<usize>)],
    header: &[TensorHeader],
    origin: &[usize],
    dense_dtype: shrink_formats::float::FloatType,
    xs: &mut Vec<Tensor>,
    mut advance: impl FnMut(usize, &mut Vec<Tensor>, &mut HashMap<String, StoredTensor>) -> Result<()>,
) -> Result<()> {
    let layer_of = |name: &str| -> Option<usize> {
        name.strip_prefix("model.layers.")?
            .split('.')
            .next()?
            .parse()
            .ok()
    };
    let mut done: Option<usize> = None;
    let mut stored: HashMap<String, StoredTensor> = HashMap::new();
    shrink_io::write_safetensors_ordered(
        &out.file("model.safetensors"),
        header,
        Some(HashMap::from([("format".to_string(), "pt".to_string())])),
        |k| {
            let (name, shape) = &shapes[origin[k]];
            let wrap = |e: anyhow::Error| shrink_io::IoError::malformed(model, format!("{e:#}"));
            if let Some(l) = layer_of(name) {
                while done.is_none_or(|d| d < l) {
                    let next = done.map_or(0, |d| d + 1);
                    advance(next, xs, &mut stored).map_err(wrap)?;
                    done = Some(next);
                }
            }
            if let Some(s) = stored.remove(&header[k].name) {
                return Ok(s.bytes);
            }
            let v = arch
                .read_weight(loader, name, shape)
                .and_then(|t| Ok(t.flatten_all()?.to_vec1::<f32>()?))
                .map_err(|e| wrap(e.into()))?;
            Ok(float::encode(dense_dtype, &v))
        },
    )?;
    Ok(())
}

/// The output file's tensors in write order, and what they hold.
pub(crate) struct Layout {
    /// Headers in load order, each selected linear's layout tensors in place of its weight.
    pub header: Vec<TensorHeader>,
    /// For each header entry, the index into the model's weight shapes it comes from.
    pub origin: Vec<usize>,
    /// Elements of the quantized weights.
    pub q_params: u64,
    /// Bytes of their layout tensors.
    pub q_bytes: u64,
    /// Bytes of the tensors stored dense.
    pub dense_bytes: u64,
}

/// Refuse a selection a calibrated `method` cannot compress: a weight outside the decoder
/// layers, or one `validate` rejects — before anything is read or written.
pub(crate) fn check_selected(
    model: &Path,
    method: &str,
    selected: &[shrink_models::LinearInfo],
    mut validate: impl FnMut(&shrink_models::LinearInfo) -> Result<()>,
) -> Result<()> {
    for l in selected {
        if !l.weight.starts_with("model.layers.") {
            bail!(
                "{}: {method} compresses the decoder layers' linears; {} is outside them",
                model.display(),
                l.weight
            );
        }
        validate(l)?;
    }
    Ok(())
}

/// Plan the output: each selected linear (by weight name in `by_name`) stored as the tensors
/// `blank(module, rows, cols)` returns — a layout whose sizes depend on the shape only — and
/// every other weight dense as `dense_dtype`.
pub(crate) fn plan(
    shapes: &[(String, Vec<usize>)],
    by_name: &HashMap<&str, &shrink_models::LinearInfo>,
    dense_dtype: shrink_formats::float::FloatType,
    blank: impl Fn(&str, usize, usize) -> Result<Vec<StoredTensor>>,
) -> Result<Layout> {
    let mut p = Layout {
        header: Vec::new(),
        origin: Vec::new(),
        q_params: 0,
        q_bytes: 0,
        dense_bytes: 0,
    };
    for (i, (name, shape)) in shapes.iter().enumerate() {
        if let Some(l) = by_name.get(name.as_str()) {
            let (rows, cols) = (l.out_features, l.in_features);
            let module = name.strip_suffix(".weight").unwrap_or(name);
            for s in blank(module, rows, cols)? {
                p.q_bytes += s.bytes.len() as u64;
                p.header.push(TensorHeader {
                    name: s.name,
                    dtype: s.dtype,
                    shape: s.shape,
                    len: s.bytes.len(),
                });
                p.origin.push(i);
            }
            p.q_params += (rows * cols) as u64;
        } else {
            let n: usize = shape.iter().product();
            p.dense_bytes += (n * dense_dtype.size()) as u64;
            p.header.push(TensorHeader {
                name: name.clone(),
                dtype: shrink_io::safetensors_dtype(dense_dtype),
                shape: shape.clone(),
                len: n * dense_dtype.size(),
            });
            p.origin.push(i);
        }
    }
    Ok(p)
}

/// What a calibrated run produced, for the report.
struct LayerStats {
    loss: f64,
    max_damp: f64,
}

/// Run GPTQ on `model` with `spec` and write the HF `gptq` layout to `output`. Returns the
/// report's JSON.
#[allow(clippy::too_many_arguments)]
pub fn run_gptq(
    model: &Path,
    output: &Path,
    calib: &CalibArgs,
    spec: GptqSpec,
    f64_hessian: bool,
    selection: &shrink_methods::select::Selection,
    dense_dtype: shrink_formats::float::FloatType,
    json: bool,
) -> Result<()> {
    let t_start = Instant::now();
    let ckpt = common::open(model)?;
    let arch = Architecture::from_checkpoint(&ckpt)?;
    let seq = Sequential::new(&ckpt)?;
    let selected = selection.resolve(&arch)?;
    let by_name: HashMap<&str, &shrink_models::LinearInfo> =
        selected.iter().map(|l| (l.weight.as_str(), l)).collect();
    check_selected(model, "GPTQ", &selected, |l| {
        Ok(spec.validate(&l.weight, l.out_features, l.in_features)?)
    })?;
    let samples = samples(&ckpt, calib)?;
    let out = OutputDir::create(output, &[model])?;
    let shapes = arch.weight_shapes();
    let dense_name = dense_dtype.torch_name();

    // The header: each selected linear's gptq tensors (sizes depend on the shape only).
    let Layout {
        header,
        origin,
        q_params,
        q_bytes,
        dense_bytes,
    } = plan(&shapes, &by_name, dense_dtype, |module, rows, cols| {
        let ng = cols / spec.group_size;
        let blank = GptqParts {
            bits: spec.bits,
            group_size: spec.group_size,
            rows,
            cols,
            codes: vec![0; rows * cols],
            scales: vec![0.0; rows * ng],
            zeros: vec![1; rows * ng],
            g_idx: (0..cols).map(|c| (c / spec.group_size) as u32).collect(),
        };
        Ok(shrink_io::hf_int::gptq_tensors(module, &blank)?)
    })?;

    let t_embed = Instant::now();
    let mut xs = seq.embed(&samples)?;
    let embed_s = t_embed.elapsed().as_secs_f64();
    let loader = arch.weight_loader(&ckpt);
    let mut stats: Vec<LayerStats> = Vec::new();
    let (mut sq_err, mut sq_ref) = (0f64, 0f64);
    let pb = common::bar(seq.num_layers() as u64, "gptq layers");
    let mut gptq_s = 0f64;

    let mut advance = |l: usize,
                       xs: &mut Vec<Tensor>,
                       stored: &mut HashMap<String, StoredTensor>|
     -> Result<()> {
        let mut layer = seq.layer(l)?;
        let hs = observe(&seq, &layer, xs, f64_hessian)?;
        let t = Instant::now();
        let mut st = LayerStats {
            loss: 0.0,
            max_damp: 0.0,
        };
        for input in INPUTS {
            let locals: Vec<&str> = LAYER_LINEARS
                .iter()
                .copied()
                .filter(|n| input_of(n) == input)
                .filter(|n| by_name.contains_key(Sequential::weight_name(l, n).as_str()))
                .collect();
            if locals.is_empty() {
                continue;
            }
            let h = hs.get(input).context("every input was observed")?;
            let label = locals
                .iter()
                .map(|n| Sequential::weight_name(l, n))
                .collect::<Vec<_>>()
                .join(", ");
            let prepared = gptq::prepare(h.matrix(), h.n, &spec, &label)?;
            st.max_damp = st.max_damp.max(prepared.damp);
            for local in locals {
                let lin = layer.linear_mut(local).context("a Llama linear")?;
                let w = values(&lin.weight()?.contiguous()?)?;
                let (rows, cols) = (lin.out_features(), lin.in_features());
                if let Some(i) = w.iter().position(|v| !v.is_finite()) {
                    bail!(
                        "{}: weight {} holds {} at ({}, {})",
                        model.display(),
                        Sequential::weight_name(l, local),
                        w[i],
                        i / cols,
                        i % cols
                    );
                }
                let r = gptq::quantize(&w, rows, cols, &prepared, &spec);
                st.loss += r.loss;
                let deq = r.parts.dequantize();
                let (e, norm) = super::quantize::squared_error(&w, &deq);
                sq_err += e;
                sq_ref += norm;
                let name = Sequential::weight_name(l, local);
                let module = name.strip_suffix(".weight").unwrap_or(&name).to_string();
                for s in shrink_io::hf_int::gptq_tensors(&module, &r.parts)? {
                    stored.insert(s.name.clone(), s);
                }
                let bias = lin.bias.clone();
                *lin = shrink_models::linear::Linear::new(
                    Tensor::from_vec(deq, (rows, cols), &Device::Cpu)?,
                    bias,
                )?;
            }
        }
        gptq_s += t.elapsed().as_secs_f64();
        *xs = seq.run(&layer, xs, None)?;
        stats.push(st);
        pb.inc(1);
        Ok(())
    };

    write_layer_by_layer(
        model,
        &out,
        &arch,
        &loader,
        &shapes,
        &header,
        &origin,
        dense_dtype,
        &mut xs,
        &mut advance,
    )?;
    pb.finish_and_clear();
    drop(xs);

    let qcfg = shrink_io::hf_int::gptq_config(
        spec.bits,
        Some(spec.group_size),
        spec.act_order && !spec.static_groups,
        spec.sym,
        spec.damp,
        false,
        spec.static_groups,
    );
    let qfile = shrink_io::hf_int::gptq_quantize_config(&qcfg);
    common::write_config_and_tokenizer(&ckpt, arch.decoder(), &out, dense_name, Some(qcfg))?;
    out.write(
        "quantize_config.json",
        serde_json::to_string_pretty(&qfile)?.as_bytes(),
    )?;

    let total_params: u64 = shapes
        .iter()
        .map(|(_, s)| s.iter().product::<usize>() as u64)
        .sum();
    let model_bytes = q_bytes + dense_bytes;
    let bpw_q = q_bytes as f64 * 8.0 / q_params as f64;
    let bpw_all = model_bytes as f64 * 8.0 / total_params as f64;
    let rel_err = (sq_err / sq_ref.max(f64::MIN_POSITIVE)).sqrt();
    let seconds = t_start.elapsed().as_secs_f64();
    let method = format!(
        "gptq-w{}g{}-{}{}",
        spec.bits,
        spec.group_size,
        if spec.sym { "sym" } else { "asym" },
        match (spec.act_order, spec.static_groups) {
            (true, true) => "-actorder-static",
            (true, false) => "-actorder",
            _ => "",
        }
    );
    let v = serde_json::json!({
        "input": model, "output": output, "method": method,
        "calibration": {"file": calib.file, "lee": calib.lee, "samples": calib.spec.samples,
                        "seqlen": calib.spec.seqlen, "seed": calib.spec.seed},
        "quantized_tensors": selected.len(), "quantized_params": q_params,
        "bits_per_weight_quantized": bpw_q, "bits_per_weight_model": bpw_all,
        "quantized_bytes": q_bytes, "dense_bytes": dense_bytes, "model_bytes": model_bytes,
        "float32_bytes": total_params * 4,
        "relative_rmse": rel_err,
        "gptq_loss_per_layer": stats.iter().map(|s| s.loss).collect::<Vec<_>>(),
        "max_damp": stats.iter().map(|s| s.max_damp).fold(0.0, f64::max),
        "embed_seconds": embed_s, "gptq_solve_seconds": gptq_s, "seconds": seconds,
        "peak_rss_bytes": common::peak_rss(),
    });
    let text = [
        format!(
            "method         {method} on {} weights ({q_params} params), calibrated on {} × {} tokens",
            selected.len(),
            calib.spec.samples,
            calib.spec.seqlen
        ),
        format!("bits/weight    {bpw_q:.4} on quantized weights (qweight, qzeros, scales, g_idx), {bpw_all:.4} whole model as stored"),
        format!(
            "model bytes    {model_bytes} ({}; f32 would be {})",
            common::human(model_bytes),
            common::human(total_params * 4)
        ),
        format!("weight error   relative RMSE {rel_err:.4}"),
        format!("time           {seconds:.1} s ({gptq_s:.1} s in the GPTQ solves)"),
    ];
    common::commit_with_report(out, &v, json, &text)
}
