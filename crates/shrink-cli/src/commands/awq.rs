//! AWQ layer by layer (`shrink quantize --method awq`), as [`super::calibrated::run_gptq`]
//! runs GPTQ: the calibration samples are embedded once; each decoder layer is loaded, the
//! inputs of its linears captured on the samples, AWQ run on it
//! ([`shrink_methods::awq::quantize_llama_layer`]: scale search, scaling folded into the norms
//! and previous linears, clip search, 4-bit quantization), and its outputs recomputed with the
//! compressed weights and scaled norms to feed the next layer. The output (AutoAWQ's GEMM
//! layout, `quant_method: "awq"`) is written as the layers complete, so only one layer's
//! weights and the samples' activations are resident.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use candle_core::Tensor;
use shrink_formats::awq::AwqParts;
use shrink_formats::float::{self, FloatType};
use shrink_io::quantized::StoredTensor;
use shrink_io::OutputDir;
use shrink_methods::awq::{self, AwqSpec, LayerWeights, LlamaInputs};
use shrink_models::sequential::{Sequential, LAYER_LINEARS};
use shrink_models::Architecture;

use super::calibrated::{check_selected, plan, samples, CalibArgs, Layout};
use crate::common;

/// One layer's outcome, for the report.
struct LayerStats {
    /// (previous op, best ratio, its loss) of each scaling group searched.
    groups: Vec<(&'static str, f32, f64)>,
    /// ‖y_awq − y‖² / ‖y‖² of the layer's outputs on the samples, both from the same inputs.
    output_rel_err: f64,
}

/// Round `v` to what `dtype` stores.
fn stored_values(dtype: FloatType, v: &mut [f32]) {
    if dtype != FloatType::F32 {
        let b = float::encode(dtype, v);
        float::decode(dtype, &b, v);
    }
}

/// Run AWQ (`bits` must be 4: AutoAWQ's GEMM layout) with groups of `group_size` on `model`,
/// the scale search's losses on the first `search_samples` calibration samples, and write the
/// AutoAWQ GEMM layout to `output`.
#[allow(clippy::too_many_arguments)]
pub fn run_awq(
    model: &Path,
    output: &Path,
    calib: &CalibArgs,
    bits: u8,
    group_size: usize,
    search_samples: usize,
    selection: &shrink_methods::select::Selection,
    dense_dtype: FloatType,
    json: bool,
) -> Result<()> {
    let t_start = Instant::now();
    let spec = AwqSpec {
        bits,
        group_size,
        search_samples,
        ..AwqSpec::default()
    };
    let ckpt = common::open(model)?;
    let arch = Architecture::from_checkpoint(&ckpt)?;
    let seq = Sequential::new(&ckpt)?;
    let selected = selection.resolve(&arch)?;
    let by_name: HashMap<&str, &shrink_models::LinearInfo> =
        selected.iter().map(|l| (l.weight.as_str(), l)).collect();
    check_selected(model, "AWQ", &selected, |l| {
        Ok(spec.validate(&l.weight, l.out_features, l.in_features)?)
    })?;
    let samples = samples(&ckpt, calib)?;
    let out = OutputDir::create(output, &[model])?;
    let shapes = arch.weight_shapes();
    let dense_name = dense_dtype.torch_name();

    // The header: each selected linear's AWQ tensors (sizes depend on the shape only).
    let Layout {
        header,
        origin,
        q_params,
        q_bytes,
        dense_bytes,
    } = plan(&shapes, &by_name, dense_dtype, |module, rows, cols| {
        let ng = cols / group_size;
        let blank = AwqParts {
            group_size,
            rows,
            cols,
            codes: vec![0; rows * cols],
            scales: vec![1.0; rows * ng],
            zeros: vec![0; rows * ng],
        };
        Ok(shrink_io::hf_int::awq_parts_tensors(module, &blank)?)
    })?;
    let header_names: HashSet<String> = header.iter().map(|h| h.name.clone()).collect();

    let t_embed = Instant::now();
    let mut xs = seq.embed(&samples)?;
    let embed_s = t_embed.elapsed().as_secs_f64();
    let loader = arch.weight_loader(&ckpt);
    let mut stats: Vec<LayerStats> = Vec::new();
    let pb = common::bar(seq.num_layers() as u64, "awq layers");
    let mut awq_s = 0f64;

    let mut advance = |l: usize,
                       xs: &mut Vec<Tensor>,
                       stored: &mut HashMap<String, StoredTensor>|
     -> Result<()> {
        let mut layer = seq.layer(l)?;
        let (mut inputs, float_out) = LlamaInputs::capture(&seq, &layer, xs)?;
        let t = Instant::now();
        let mut sel = [false; 7];
        for (i, local) in LAYER_LINEARS.iter().enumerate() {
            sel[i] = by_name.contains_key(Sequential::weight_name(l, local).as_str());
        }
        let r = awq::quantize_llama_layer(&seq, &mut layer, &mut inputs, &spec, &sel, l)?;
        drop(inputs);
        for (i, parts) in &r.parts {
            let name = Sequential::weight_name(l, LAYER_LINEARS[*i]);
            let module = name.strip_suffix(".weight").unwrap_or(&name).to_string();
            for s in shrink_io::hf_int::awq_parts_tensors(&module, parts)? {
                stored.insert(s.name.clone(), s);
            }
        }
        // The tensors of the layer stored dense (norms, biases, unselected weights) as AWQ
        // left them, rounded to the dense type so the next layer sees what the file holds.
        let mut lw = LayerWeights::read(&layer)?;
        let p = format!("model.layers.{l}");
        let mut dense: Vec<(String, &mut Vec<f32>)> = vec![
            (format!("{p}.input_layernorm.weight"), &mut lw.input_norm),
            (
                format!("{p}.post_attention_layernorm.weight"),
                &mut lw.post_norm,
            ),
        ];
        for ((local, w), b) in LAYER_LINEARS
            .iter()
            .zip(lw.w.iter_mut())
            .zip(lw.bias.iter_mut())
        {
            if let Some(b) = b {
                dense.push((format!("{p}.{local}.bias"), b));
            }
            let name = Sequential::weight_name(l, local);
            if !by_name.contains_key(name.as_str()) {
                dense.push((name, w));
            }
        }
        for (name, v) in dense {
            if !header_names.contains(&name) {
                continue;
            }
            stored_values(dense_dtype, v);
            stored.insert(
                name.clone(),
                StoredTensor {
                    name,
                    dtype: shrink_io::safetensors_dtype(dense_dtype),
                    shape: vec![],
                    bytes: float::encode(dense_dtype, v),
                },
            );
        }
        lw.write(&mut layer)?;
        awq_s += t.elapsed().as_secs_f64();
        *xs = seq.run(&layer, xs, None)?;
        let (mut num, mut den) = (0f64, 0f64);
        for (a, b) in xs.iter().zip(&float_out) {
            let a = a.flatten_all()?.to_vec1::<f32>()?;
            let b = b.flatten_all()?.to_vec1::<f32>()?;
            // Σ (a − b)² and Σ b², with the float output `b` as the reference.
            let (e, r) = super::quantize::squared_error(&b, &a);
            num += e;
            den += r;
        }
        stats.push(LayerStats {
            groups: r
                .groups
                .iter()
                .map(|g| (g.group.prev_op(), g.ratio, g.loss))
                .collect(),
            output_rel_err: num / den.max(f64::MIN_POSITIVE),
        });
        pb.inc(1);
        Ok(())
    };

    super::calibrated::write_layer_by_layer(
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

    let mut qcfg = shrink_io::hf_int::awq_config(bits, Some(group_size), true, "gemm");
    let mut qfile = shrink_io::hf_int::awq_quant_config(bits, Some(group_size), true, "gemm");
    let left: Vec<String> = arch
        .block_linears()
        .iter()
        .filter(|l| !by_name.contains_key(l.weight.as_str()))
        .map(|l| {
            l.weight
                .strip_suffix(".weight")
                .unwrap_or(&l.weight)
                .to_string()
        })
        .collect();
    if !left.is_empty() {
        qcfg["modules_to_not_convert"] = serde_json::json!(left);
        qfile["modules_to_not_convert"] = serde_json::json!(left);
    }
    common::write_config_and_tokenizer(&ckpt, arch.decoder(), &out, dense_name, Some(qcfg))?;
    out.write(
        "quant_config.json",
        serde_json::to_string_pretty(&qfile)?.as_bytes(),
    )?;

    let total_params: u64 = shapes
        .iter()
        .map(|(_, s)| s.iter().product::<usize>() as u64)
        .sum();
    let model_bytes = q_bytes + dense_bytes;
    let bpw_q = q_bytes as f64 * 8.0 / q_params as f64;
    let bpw_all = model_bytes as f64 * 8.0 / total_params as f64;
    let seconds = t_start.elapsed().as_secs_f64();
    let method = format!("awq-w{bits}g{group_size}-asym");
    let mean_rel = stats.iter().map(|s| s.output_rel_err).sum::<f64>() / stats.len().max(1) as f64;
    let per_layer: Vec<serde_json::Value> = stats
        .iter()
        .enumerate()
        .map(|(l, s)| {
            serde_json::json!({
                "layer": l,
                "ratios": s.groups.iter().map(|g| (g.0.to_string(), serde_json::json!(g.1)))
                    .collect::<serde_json::Map<_, _>>(),
                "losses": s.groups.iter().map(|g| (g.0.to_string(), serde_json::json!(g.2)))
                    .collect::<serde_json::Map<_, _>>(),
                "output_relative_mse": s.output_rel_err,
            })
        })
        .collect();
    let v = serde_json::json!({
        "input": model, "output": output, "method": method,
        "calibration": {"file": calib.file, "lee": calib.lee, "samples": calib.spec.samples,
                        "seqlen": calib.spec.seqlen, "seed": calib.spec.seed,
                        "search_samples": search_samples.min(calib.spec.samples),
                        "clip_tokens": spec.clip_tokens},
        "quantized_tensors": selected.len(), "quantized_params": q_params,
        "bits_per_weight_quantized": bpw_q, "bits_per_weight_model": bpw_all,
        "quantized_bytes": q_bytes, "dense_bytes": dense_bytes, "model_bytes": model_bytes,
        "float32_bytes": total_params * 4,
        "mean_layer_output_relative_mse": mean_rel,
        "awq_layers": per_layer,
        "embed_seconds": embed_s, "awq_seconds": awq_s, "seconds": seconds,
        "peak_rss_bytes": common::peak_rss(),
    });
    let text = [
        format!(
            "method         {method} on {} weights ({q_params} params), calibrated on {} × {} tokens (scale search on {})",
            selected.len(),
            calib.spec.samples,
            calib.spec.seqlen,
            search_samples.min(calib.spec.samples)
        ),
        format!("bits/weight    {bpw_q:.4} on quantized weights (qweight, qzeros, scales), {bpw_all:.4} whole model as stored"),
        format!(
            "model bytes    {model_bytes} ({}; f32 would be {})",
            common::human(model_bytes),
            common::human(total_params * 4)
        ),
        format!("layer error    mean relative MSE of the layers' outputs {mean_rel:.3e}"),
        format!("time           {seconds:.1} s ({awq_s:.1} s in the AWQ searches)"),
    ];
    common::commit_with_report(out, &v, json, &text)
}
