//! What storing one tensor as one candidate would cost (the inputs of [`crate::allocate`],
//! issue 17's `shrink auto`): for the ggml types, each weight quantized as llama-quantize would
//! (with the importance matrix when there is one) and the error weighed by the importance
//! matrix, `Σ_i Σ_j a_j (W_ij − Ŵ_ij)²` with `a_j` the mean of `x_j²` over the calibration text —
//! the diagonal of the layer Hessian, so an estimate of `E‖(W − Ŵ)x‖²`, the error the layer adds
//! to its output (the objective llama.cpp's importance-weighted quantizers minimise, and GPTQ's
//! `H = 2XXᵀ` restricted to its diagonal).
//!
//! What the error costs the model is measured, not assumed: [`divergences`] runs the model with
//! chosen weights replaced ([`stored_as`] a type) and gives the next-token KL divergence from
//! the stored model and the change of the next token's log-likelihood — per tensor alone, or for
//! a whole mix — with all probes carried through the blocks in shared passes.

use candle_core::{Device, Tensor};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use shrink_formats::ggml::{self, GgmlType};
use shrink_models::layerwise::Sequential;
use shrink_models::linear::Linear;

use crate::allocate::Candidate;
use crate::error::{MethodError, Result};
use crate::ggml_quantize::quantize_tensor;
use crate::pipeline::Progress;

/// The ggml types a row of `cols` elements can be stored as without a fallback (whole blocks),
/// among `types`.
pub fn fitting(types: &[GgmlType], cols: usize) -> Vec<GgmlType> {
    types
        .iter()
        .copied()
        .filter(|t| cols.is_multiple_of(t.block_size()) && t.can_dequantize())
        .collect()
}

/// The cost of storing `w` (`rows × cols`, row-major) as `ty`: its bytes, and the error
/// weighed by `importance` (`cols` values; all ones without it), the importance also guiding
/// the quantizer as llama-quantize uses it.
pub fn ggml_candidate(
    name: &str,
    ty: GgmlType,
    w: &[f32],
    rows: usize,
    cols: usize,
    importance: Option<&[f32]>,
) -> Result<Candidate> {
    if w.len() != rows * cols || importance.is_some_and(|a| a.len() != cols) {
        return Err(MethodError::Options(format!(
            "{name}: {} values for {rows} × {cols}, or an importance vector of another width",
            w.len()
        )));
    }
    let ne = [cols as u64, rows as u64];
    let bytes = quantize_tensor(name, ty, &ne, w, importance)?;
    let mut back = vec![0f32; w.len()];
    ggml::dequantize(ty, &bytes, &mut back).map_err(|source| MethodError::Format {
        name: name.to_string(),
        source,
    })?;
    let mut loss = 0f64;
    for (row, q) in w.chunks(cols).zip(back.chunks(cols)) {
        for (j, (&a, &b)) in row.iter().zip(q).enumerate() {
            let d = f64::from(a - b);
            loss += importance.map_or(1.0, |imp| f64::from(imp[j])) * d * d;
        }
    }
    Ok(Candidate {
        bytes: bytes.len() as u64,
        loss,
    })
}

/// One tensor of a GGUF and what each candidate would cost it.
#[derive(Debug, Clone)]
pub struct TensorCosts {
    /// The GGUF tensor name.
    pub name: String,
    /// Its ggml dims.
    pub ne: Vec<u64>,
    /// Each candidate type and its cost; a tensor llama.cpp does not quantize (a norm, a 1-D
    /// tensor) has one: its stored type, at no loss.
    pub candidates: Vec<(GgmlType, Candidate)>,
}

/// The costs of every tensor of `g` under each of `types` that fits its rows, one tensor read
/// at a time, weighed by `imatrix` where it has an entry for the tensor (an unweighted error
/// otherwise).
pub fn ggml_costs(
    g: &shrink_io::GgufFile,
    types: &[GgmlType],
    imatrix: Option<&shrink_io::imatrix::Imatrix>,
    progress: &dyn Progress,
) -> Result<Vec<TensorCosts>> {
    let mut out = Vec::with_capacity(g.tensors.len());
    progress.start("costs", g.tensors.len() as u64);
    for info in &g.tensors {
        progress.inc(1);
        let stored = Candidate {
            bytes: info.bytes,
            loss: 0.0,
        };
        let cols = info.ne[0] as usize;
        let rows = (info.elements() as usize) / cols.max(1);
        let fit = fitting(types, cols);
        let quantized = crate::ggml_mix::allows_quantization(&info.name, &info.ne, true);
        if !quantized || fit.is_empty() {
            out.push(TensorCosts {
                name: info.name.clone(),
                ne: info.ne.clone(),
                candidates: vec![(info.ty, stored)],
            });
            continue;
        }
        let w = g.read_f32(info)?;
        let imp = imatrix
            .and_then(|m| m.entries.get(&info.name))
            .filter(|v| v.len() == cols)
            .map(Vec::as_slice);
        let candidates = fit
            .iter()
            .map(|&t| Ok((t, ggml_candidate(&info.name, t, &w, rows, cols, imp)?)))
            .collect::<Result<Vec<_>>>()?;
        g.release(info);
        out.push(TensorCosts {
            name: info.name.clone(),
            ne: info.ne.clone(),
            candidates,
        });
    }
    progress.finish();
    Ok(out)
}

/// `w` (`[rows, cols]`, float32) stored as `ty` and read back, with `importance` (one value
/// per column) guiding the quantizer: what a probe replaces a weight by.
pub fn stored_as(
    name: &str,
    ty: GgmlType,
    w: &Tensor,
    importance: Option<&[f32]>,
) -> Result<Tensor> {
    let cd = |e: candle_core::Error| MethodError::Model(e.into());
    let (rows, cols) = w.dims2().map_err(cd)?;
    let data = w
        .flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(cd)?;
    let imp = importance.filter(|v| v.len() == cols);
    let q = quantize_tensor(name, ty, &[cols as u64, rows as u64], &data, imp)?;
    let mut back = vec![0f32; data.len()];
    ggml::dequantize(ty, &q, &mut back).map_err(|source| MethodError::Format {
        name: name.to_string(),
        source,
    })?;
    Tensor::from_vec(back, (rows, cols), &Device::Cpu).map_err(cd)
}

/// What replacing some weights does to the model's next-token distribution on the probe text.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Divergence {
    /// Mean KL(base ‖ replaced) per position, natural log.
    pub kl: f64,
    /// Mean change of the next token's negative log-likelihood (replaced − base), nats per
    /// scored token: `exp(nll_delta) − 1` is the perplexity's relative change.
    pub nll_delta: f64,
}

/// The weight `name` (HF name, `[out, in]`) of probe `probe` as the probe replaces it, from the
/// stored weight.
pub type Replace<'a> = dyn Fn(usize, &str, &Tensor) -> Result<Tensor> + Sync + 'a;

fn cd<T>(r: candle_core::Result<T>) -> Result<T> {
    r.map_err(|e| MethodError::Model(e.into()))
}

/// The rows of `logits` ([t, vocab]) as float32 vectors.
fn rows(logits: &Tensor) -> Result<Vec<Vec<f32>>> {
    cd(logits
        .to_dtype(candle_core::DType::F32)
        .and_then(|l| l.to_vec2::<f32>()))
}

/// `log Σ_v e^(row_v)`, overwriting `row` with `e^(row_v − max)` (the vectorised exp of the
/// attention kernels).
fn log_sum_exp(row: &mut [f32]) -> f64 {
    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let s = shrink_models::kernels::exp_scaled_sum(row, 1.0, m);
    f64::from(m) + f64::from(s).ln()
}

/// One position of the base model: its next-token distribution and what a comparison needs.
struct BasePosition {
    /// p over the vocabulary.
    p: Vec<f32>,
    /// Σ_v p_v log p_v.
    neg_entropy: f64,
    /// log p of the next token (none at a sample's last position).
    next: Option<(usize, f64)>,
}

/// The base model's distribution at every position of every sample. `KL(p ‖ q) = Σ p log p −
/// Σ p log q` with `log q_v = z_v − logsumexp(z)`: a probe's logits `z` need one dot product
/// and one exp per entry, and `log q` is never stored.
struct Base {
    positions: Vec<Vec<BasePosition>>,
}

impl Base {
    /// The base of the logits of each of `samples`.
    fn new(samples: &[Vec<u32>], logits: impl Iterator<Item = Result<Tensor>>) -> Result<Base> {
        let positions = logits
            .zip(samples)
            .map(|(l, ids)| {
                Ok(rows(&l?)?
                    .into_par_iter()
                    .enumerate()
                    .map(|(i, z)| {
                        let y = ids.get(i + 1).map(|&y| y as usize);
                        let mut p = z.clone();
                        let lse = log_sum_exp(&mut p);
                        let sum: f64 = p.iter().map(|&v| f64::from(v)).sum();
                        p.iter_mut().for_each(|v| *v = (f64::from(*v) / sum) as f32);
                        let neg_entropy = p
                            .iter()
                            .zip(&z)
                            .map(|(&pv, &zv)| f64::from(pv) * (f64::from(zv) - lse))
                            .sum();
                        let next = y.map(|y| (y, f64::from(z[y]) - lse));
                        BasePosition {
                            p,
                            neg_entropy,
                            next,
                        }
                    })
                    .collect())
            })
            .collect::<Result<_>>()?;
        Ok(Base { positions })
    }

    /// Sum over `sample`'s positions of KL(p ‖ q), and of the next token's −log q + log p.
    fn compare(&self, sample: usize, logits: &Tensor) -> Result<(f64, f64)> {
        let base = &self.positions[sample];
        let (kl, nll) = rows(logits)?
            .into_par_iter()
            .enumerate()
            .map(|(i, mut z)| {
                let b = &base[i];
                let (mut pz, mut psum) = (0f64, 0f64);
                for (&pv, &zv) in b.p.iter().zip(&z) {
                    pz += f64::from(pv) * f64::from(zv);
                    psum += f64::from(pv);
                }
                let next = b.next.map(|(y, lp)| (lp, z[y]));
                let lse = log_sum_exp(&mut z);
                let kl = b.neg_entropy - (pz - lse * psum);
                let nll = next.map_or(0.0, |(lp, zy)| lp - (f64::from(zy) - lse));
                (kl, nll)
            })
            .reduce(|| (0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
        Ok((kl, nll))
    }
}

/// Activation bytes the started probes of one pass over the blocks may hold: more probes take
/// more passes.
pub const PASS_BYTES: usize = 1 << 30;

/// For each probe (the HF names of the weights it replaces), the [`Divergence`] of the model
/// with those weights replaced by `replace` from the model as stored, on `samples`. Probes go
/// in passes over the blocks, each block loaded once a pass: a probe's activations are carried
/// from the first block it changes (from the embedding when it replaces the token table), so
/// memory is one block plus the started probes' activations, at most [`PASS_BYTES`] (as many
/// passes as that takes). A replaced token table that the LM head shares is replaced in the
/// head too.
pub fn divergences(
    seq: &Sequential,
    samples: &[Vec<u32>],
    probes: &[Vec<String>],
    replace: &Replace,
    progress: &dyn Progress,
) -> Result<Vec<Divergence>> {
    divergences_within(seq, samples, probes, replace, PASS_BYTES, progress)
}

/// [`divergences`] with at most `pass_bytes` of probe activations a pass.
pub fn divergences_within(
    seq: &Sequential,
    samples: &[Vec<u32>],
    probes: &[Vec<String>],
    replace: &Replace,
    pass_bytes: usize,
    progress: &dyn Progress,
) -> Result<Vec<Divergence>> {
    let tokens: usize = samples.iter().map(Vec::len).sum();
    // A block's inputs and outputs, float32.
    let per_probe = (2 * tokens * seq.width() * 4).max(1);
    let n = (pass_bytes / per_probe).max(1);
    let mut out = Vec::with_capacity(probes.len());
    for (k, chunk) in probes.chunks(n).enumerate() {
        let r = |p: usize, name: &str, w: &Tensor| replace(k * n + p, name, w);
        out.extend(pass(seq, samples, chunk, &r, progress)?);
    }
    Ok(out)
}

/// [`divergences`] of `probes` in one pass.
fn pass(
    seq: &Sequential,
    samples: &[Vec<u32>],
    probes: &[Vec<String>],
    replace: &Replace,
    progress: &dyn Progress,
) -> Result<Vec<Divergence>> {
    let head = seq.head()?;
    let n_layers = seq.num_layers();
    // The block each probe first changes (`None`: only the head), and its head weight.
    let mut first: Vec<Option<usize>> = Vec::with_capacity(probes.len());
    for (p, names) in probes.iter().enumerate() {
        let mut at: Option<usize> = None;
        for n in names {
            let l = if n == head.table {
                Some(0)
            } else if n == head.weight {
                None
            } else {
                Some(seq.layer_of(n).ok_or_else(|| {
                    MethodError::Options(format!("probe {p}: {n} is not a weight of a block"))
                })?)
            };
            at = match (at, l) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        first.push(at);
    }
    let replaced_table = |p: usize| -> Result<Option<Tensor>> {
        if probes[p].iter().any(|n| n == head.table) {
            let table = if head.tied() {
                head.weight().clone()
            } else {
                seq.read(head.table, head.weight().dims())?
            };
            return Ok(Some(replace(p, head.table, &table)?));
        }
        Ok(None)
    };
    let head_weight = |p: usize| -> Result<Option<Tensor>> {
        if probes[p].iter().any(|n| n == head.weight) {
            return Ok(Some(replace(p, head.weight, head.weight())?));
        }
        Ok(None)
    };

    progress.start("probe", n_layers as u64 + 1);
    let mut xs = seq.embed(samples)?;
    // Started probes and their activations.
    let mut live: Vec<(usize, Vec<Tensor>)> = Vec::new();
    for (p, f) in first.iter().enumerate() {
        if *f == Some(0) {
            if let Some(t) = replaced_table(p)? {
                live.push((p, seq.embed_with(samples, &t)?));
            }
        }
    }
    for l in 0..n_layers {
        let block = seq.layer(l)?;
        let mut next = Vec::with_capacity(live.len() + 8);
        let started: Vec<(usize, Vec<Tensor>)> = first
            .iter()
            .enumerate()
            .filter(|(p, f)| **f == Some(l) && !live.iter().any(|(q, _)| q == p))
            .map(|(p, _)| (p, xs.clone()))
            .collect();
        let all: Vec<(usize, Vec<Tensor>)> = live.drain(..).chain(started).collect();
        for (p, inputs) in all {
            let local: Vec<&str> = seq
                .linears()
                .iter()
                .map(|s| s.name)
                .filter(|s| probes[p].contains(&seq.weight_name(l, s)))
                .collect();
            let out = if local.is_empty() {
                seq.run(block.as_ref(), &inputs, None)?
            } else {
                let mut b = block.boxed();
                for name in local {
                    let lin = b.linear_mut(name).ok_or_else(|| {
                        MethodError::Options(format!("block {l} has no linear {name}"))
                    })?;
                    let w = cd(lin.weight())?;
                    let new = replace(p, &seq.weight_name(l, name), &w)?;
                    *lin = cd(Linear::new(new, lin.bias.clone()))?;
                }
                seq.run(b.as_ref(), &inputs, None)?
            };
            next.push((p, out));
        }
        xs = seq.run(block.as_ref(), &xs, None)?;
        live = next;
        progress.inc(1);
    }
    // The base distribution, then each probe's against it.
    let base = Base::new(
        samples,
        xs.iter().map(|x| head.logits(x, None).map_err(Into::into)),
    )?;
    let positions: usize = samples.iter().map(Vec::len).sum();
    let scored: usize = samples.iter().map(|s| s.len().saturating_sub(1)).sum();
    let mut out = vec![Divergence::default(); probes.len()];
    let mut sums = |p: usize, outs: &[Tensor], w: Option<&Tensor>| -> Result<()> {
        let (mut kl, mut nll) = (0f64, 0f64);
        for (i, x) in outs.iter().enumerate() {
            let (k, n) = base.compare(i, &head.logits(x, w)?)?;
            kl += k;
            nll += n;
        }
        out[p] = Divergence {
            kl: kl / positions.max(1) as f64,
            nll_delta: nll / scored.max(1) as f64,
        };
        Ok(())
    };
    // A tied head's weight is the token table: `head.weight` names it.
    for (p, outs) in &live {
        let w = head_weight(*p)?;
        sums(*p, outs, w.as_ref())?;
    }
    // Probes of the head alone.
    for (p, f) in first.iter().enumerate() {
        if f.is_none() && !probes[p].is_empty() {
            let w = head_weight(p)?;
            sums(p, &xs, w.as_ref())?;
        }
    }
    progress.finish();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic weights with heavy-tailed rows, as trained weights have.
    fn weights(rows: usize, cols: usize) -> Vec<f32> {
        let mut s = 0x2545_f491_4f6c_dd1du64;
        (0..rows * cols)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let u = (s >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
                (u * u * u * 8.0) as f32
            })
            .collect()
    }

    #[test]
    fn more_bits_cost_more_bytes_and_lose_less() {
        let (rows, cols) = (16, 512);
        let w = weights(rows, cols);
        let types = [
            GgmlType::Q2_K,
            GgmlType::Q3_K,
            GgmlType::Q4_K,
            GgmlType::Q5_K,
            GgmlType::Q6_K,
            GgmlType::Q8_0,
        ];
        let c: Vec<Candidate> = types
            .iter()
            .map(|&t| ggml_candidate("w", t, &w, rows, cols, None).unwrap())
            .collect();
        for (k, pair) in c.windows(2).enumerate() {
            assert!(pair[0].bytes < pair[1].bytes, "{:?}", types[k]);
            assert!(pair[0].loss > pair[1].loss, "{:?}: {pair:?}", types[k]);
        }
        // Bytes are the type's exact storage.
        assert_eq!(c[5].bytes, (rows * cols / 32 * 34) as u64);
    }

    #[test]
    fn the_importance_weighs_the_error_and_guides_the_quantizer() {
        let (rows, cols) = (8, 256);
        let w = weights(rows, cols);
        // The calibration inputs live on the first 16 columns.
        let imp: Vec<f32> = (0..cols)
            .map(|j| if j < 16 { 100.0 } else { 0.01 })
            .collect();
        let guided = ggml_candidate("w", GgmlType::Q3_K, &w, rows, cols, Some(&imp)).unwrap();
        // The same weighted error of the quantizer that ignores the importance.
        let mut q = vec![0u8; GgmlType::Q3_K.row_bytes(w.len()).unwrap()];
        ggml::quantize(GgmlType::Q3_K, &w, &mut q).unwrap();
        let mut back = vec![0f32; w.len()];
        ggml::dequantize(GgmlType::Q3_K, &q, &mut back).unwrap();
        let blind: f64 = w
            .iter()
            .zip(&back)
            .enumerate()
            .map(|(k, (a, b))| f64::from(imp[k % cols]) * f64::from(a - b).powi(2))
            .sum();
        assert!(guided.loss < blind, "{} !< {blind}", guided.loss);
    }

    #[test]
    fn only_whole_blocks_fit() {
        let all = [
            GgmlType::Q4_K,
            GgmlType::Q5_0,
            GgmlType::Q8_0,
            GgmlType::IQ4_NL,
        ];
        // SmolLM2's 576-wide rows: no 256-element K block.
        assert_eq!(
            fitting(&all, 576),
            vec![GgmlType::Q5_0, GgmlType::Q8_0, GgmlType::IQ4_NL]
        );
        assert_eq!(fitting(&all, 1536), all.to_vec());
    }
}
