//! `shrink auto`: a GGUF whose every tensor gets the ggml type chosen for it from measurements,
//! to meet a whole-model bits/weight budget with the least predicted divergence, or a
//! divergence / perplexity bound at the least size.
//!
//! 1. **Sensitivity** ([`measure`]): for every tensor llama.cpp quantizes and each ggml type
//!    that fits its rows, the exact bytes and the importance-weighted error `E` of storing it
//!    so ([`crate::sensitivity::ggml_costs`]); then, for each tensor alone, the model's
//!    next-token KL divergence from the stored model when that tensor — only it — is stored
//!    at a probe type (the smallest of at least 4 bits/weight; and, where smaller types fit,
//!    the smallest too; every type for the token table and the LM head, with the head's own
//!    importance vector, [`head_importance`]), the probes in passes over the blocks
//!    ([`crate::sensitivity::divergences`]). Each tensor's measured `KL / E` is its gain; a
//!    type's predicted cost is `gain · E` (the gain interpolated in log `E` between the two
//!    probes where there are two). The result is cached as JSON, so a new target does not
//!    measure again.
//! 2. **Allocation** ([`crate::allocate`]): one type per tensor — or the tensor copied as
//!    stored, at no cost — under the byte budget or the bound, by Lagrangian relaxation, the
//!    gap to the optimum stated.
//! 3. **Interactions**: the chosen mix is run whole and its divergence measured; for a bound,
//!    the bound on the prediction is scaled by bound ÷ measured and the allocation redone (up
//!    to three times, until a mix measures within the bound and within 10 % of it); the
//!    smallest mix measured within it is kept.
//! 4. The GGUF is written by [`crate::ggml_quantize::write_mix`] (`general.file_type` 1024,
//!    llama.cpp's "guessed"), and the plan — what each tensor got and why — goes in the report.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use shrink_formats::ggml::GgmlType;
use shrink_io::imatrix::Imatrix;
use shrink_io::{Checkpoint, GgufFile};
use shrink_models::layerwise::Sequential;

use crate::allocate::{self, Allocation, Candidate};
use crate::error::{MethodError, Result};
use crate::ggml_mix::{allows_quantization, TensorChoice};
use crate::ggml_quantize::{write_mix, MixWrite};
use crate::pipeline::Progress;
use crate::report::Report;
use crate::sensitivity::{divergences, fitting, ggml_costs, stored_as, Divergence};

/// llama.cpp's `LLAMA_FTYPE_GUESSED`: a file whose tensors follow no preset.
pub const FTYPE_MIX: u32 = 1024;

/// The ggml types `shrink auto` chooses among by default (every type shrink quantizes to
/// whose rows fit, besides copying a tensor as stored).
pub const DEFAULT_TYPES: &str =
    "q2_k,q3_k,q4_0,q4_1,iq4_nl,q4_k,q5_0,q5_1,q5_k,q6_k,q8_0,iq4_xs,f16";

/// What the mix must meet.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// Whole-model bits per weight (every tensor's bytes over every weight, as llama-quantize
    /// counts them): the least divergence within it.
    Bpw(f64),
    /// Mean next-token KL divergence from the input model (nats): the smallest mix within it.
    MaxKld(f64),
    /// Perplexity increase over the input model, in percent: the smallest mix within it.
    MaxPplIncrease(f64),
}

impl Target {
    fn describe(&self) -> String {
        match self {
            Target::Bpw(b) => format!("{b} bits/weight"),
            Target::MaxKld(k) => format!("KL divergence ≤ {k}"),
            Target::MaxPplIncrease(p) => format!("perplexity increase ≤ {p} %"),
        }
    }
}

/// One option of one tensor.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TensorOption {
    /// The ggml type (the stored one when `copy`).
    pub ty: String,
    /// Copied as stored (no requantization, no loss).
    pub copy: bool,
    /// Bytes stored.
    pub bytes: u64,
    /// Importance-weighted squared error against the stored weight.
    pub error: f64,
    /// Predicted KL divergence when only this tensor takes this option.
    pub kl: f64,
}

/// A probe: one tensor alone at one type, measured.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProbePoint {
    /// The ggml type.
    pub ty: String,
    /// Its importance-weighted error.
    pub error: f64,
    /// The model's divergence with this tensor alone at this type.
    pub divergence: Divergence,
}

/// One GGUF tensor, its options and its probes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TensorSensitivity {
    /// GGUF name.
    pub name: String,
    /// ggml dims.
    pub ne: Vec<u64>,
    /// The stored type.
    pub stored: String,
    /// The options, the stored copy first.
    pub options: Vec<TensorOption>,
    /// What was measured.
    pub probes: Vec<ProbePoint>,
}

/// How well the error proxy, scaled by one probe, predicts another probe's measured divergence.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProxyCheck {
    /// Tensors with two probes.
    pub tensors: usize,
    /// Spearman rank correlation of predicted and measured divergence at the second probe.
    pub spearman: f64,
    /// Median of measured ÷ predicted.
    pub median_ratio: f64,
}

/// The sensitivity of every tensor of a GGUF, as [`measure`] finds it (and caches it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Sensitivity {
    /// The input, calibration and settings it was measured on.
    pub identity: Value,
    /// Probe positions (tokens) per measurement.
    pub probe_tokens: usize,
    /// Seconds of the measurement (imatrix excluded).
    pub seconds: f64,
    /// Every tensor of the GGUF, in file order.
    pub tensors: Vec<TensorSensitivity>,
    /// The proxy's check against the second probes.
    pub proxy: Option<ProxyCheck>,
    /// The LM head's importance vector ([`head_importance`]) the costs were weighed with.
    #[serde(default)]
    pub head_importance: Option<(String, Vec<f32>)>,
}

impl Sensitivity {
    /// The cached sensitivity at `path` when its identity is `identity`.
    pub fn load(path: &Path, identity: &Value) -> Result<Option<Sensitivity>> {
        let Ok(text) = std::fs::read_to_string(path) else {
            return Ok(None);
        };
        let s: Sensitivity = serde_json::from_str(&text).map_err(|e| MethodError::Input {
            path: path.to_path_buf(),
            what: format!("not a sensitivity file of shrink auto: {e}; remove it to measure again"),
        })?;
        Ok((&s.identity == identity).then_some(s))
    }

    /// Save to `path` (whole, under a temporary name).
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_vec_pretty(self).expect("serializable");
        Ok(shrink_io::output::write_atomic(path, &text)?)
    }

    /// Every weight of the model.
    pub fn elements(&self) -> u64 {
        self.tensors
            .iter()
            .map(|t| t.ne.iter().product::<u64>())
            .sum()
    }

    /// The allocator's options.
    fn candidates(&self) -> Vec<Vec<Candidate>> {
        self.tensors
            .iter()
            .map(|t| {
                t.options
                    .iter()
                    .map(|o| Candidate {
                        bytes: o.bytes,
                        loss: o.kl,
                    })
                    .collect()
            })
            .collect()
    }
}

/// The option bytes of every tensor of `g` (no quantizing): whether a target can be reached.
pub fn reachable_bpw(g: &GgufFile, types: &[GgmlType]) -> Result<(f64, f64)> {
    let mut options = Vec::with_capacity(g.tensors.len());
    let mut elements = 0u64;
    for info in &g.tensors {
        elements += info.elements();
        let mut o = vec![Candidate {
            bytes: info.bytes,
            loss: 0.0,
        }];
        if quantizable(&info.name, &info.ne) {
            for t in fitting(types, info.ne[0] as usize) {
                let bytes = t.row_bytes(info.elements() as usize).map_err(|source| {
                    MethodError::Format {
                        name: info.name.clone(),
                        source,
                    }
                })?;
                o.push(Candidate {
                    bytes: bytes as u64,
                    loss: 0.0,
                });
            }
        }
        options.push(o);
    }
    let (lo, hi) = allocate::reachable(&options)?;
    let bpw = |b: u64| b as f64 * 8.0 / elements.max(1) as f64;
    Ok((bpw(lo), bpw(hi)))
}

fn quantizable(name: &str, ne: &[u64]) -> bool {
    allows_quantization(name, ne, true)
}

/// Settings of the sensitivity pass.
pub struct Measure<'a> {
    /// ggml types to consider (none for compressed-tensors, whose grids [`crate::auto_ct`]
    /// takes itself).
    pub types: &'a [GgmlType],
    /// The importance matrix (weighs the error, guides the quantizers).
    pub imatrix: Option<&'a Imatrix>,
    /// The probe text.
    pub samples: &'a [Vec<u32>],
    /// The identity recorded with the result.
    pub identity: Value,
}

/// Every weight a probe can replace (the token table, the head, each block's linears) as
/// (HF name, GGUF name).
fn probe_names(seq: &Sequential) -> Result<Vec<(String, String)>> {
    let (table, weight) = seq.head_names()?;
    let mut hf = vec![table.to_string(), weight.to_string()];
    for l in 0..seq.num_layers() {
        hf.extend(seq.linears().iter().map(|s| seq.weight_name(l, s.name)));
    }
    Ok(hf
        .into_iter()
        .filter_map(|h| seq.stack().gguf_name(&h).map(|g| (h, g)))
        .collect())
}

/// How the options of a tensor are stored and read back: the format `shrink auto` writes
/// (ggml types in a GGUF, integer grids in compressed-tensors).
pub trait Storage: Sync {
    /// The HF name of the weight a probe replaces for tensor `name` (as the sensitivity names
    /// it), if a probe can replace it.
    fn hf_name(&self, name: &str) -> Option<String>;
    /// The weight `w` (`[out, in]`, float32) of tensor `name` stored as option `ty` and read
    /// back.
    fn stored_as(&self, name: &str, ty: &str, w: &Tensor) -> Result<Tensor>;
}

/// The ggml types of a GGUF, quantized as llama-quantize would with the importance matrix.
pub struct GgufStorage<'a> {
    /// GGUF name → HF name of every weight a probe can replace.
    to_hf: HashMap<String, String>,
    /// Guides the quantizers.
    imatrix: Option<&'a Imatrix>,
}

impl<'a> GgufStorage<'a> {
    /// The storage of the model `seq` reads, quantized with `imatrix`.
    pub fn new(seq: &Sequential, imatrix: Option<&'a Imatrix>) -> Result<GgufStorage<'a>> {
        let to_hf = probe_names(seq)?.into_iter().map(|(h, g)| (g, h)).collect();
        Ok(GgufStorage { to_hf, imatrix })
    }
}

impl Storage for GgufStorage<'_> {
    fn hf_name(&self, name: &str) -> Option<String> {
        self.to_hf.get(name).cloned()
    }
    fn stored_as(&self, name: &str, ty: &str, w: &Tensor) -> Result<Tensor> {
        let ty = GgmlType::from_name(ty)
            .ok_or_else(|| MethodError::Options(format!("{name}: {ty} is not a ggml type")))?;
        let imp = self
            .imatrix
            .and_then(|im| im.entries.get(name))
            .map(Vec::as_slice);
        stored_as(name, ty, w, imp)
    }
}

/// Measure the sensitivity of every tensor of `g` (opened as `ckpt` too) as the module says.
pub fn measure(
    g: &GgufFile,
    ckpt: &Checkpoint,
    m: &Measure,
    progress: &dyn Progress,
) -> Result<Sensitivity> {
    let t0 = Instant::now();
    let seq = Sequential::new(ckpt)?;
    let storage = GgufStorage::new(&seq, m.imatrix)?;
    let costs = ggml_costs(g, m.types, m.imatrix, progress)?;
    let mut tensors = Vec::with_capacity(costs.len());
    for c in &costs {
        let info = g.tensor(&c.name).expect("from this file");
        let mut options = vec![TensorOption {
            ty: info.ty.name().to_string(),
            copy: true,
            bytes: info.bytes,
            error: 0.0,
            kl: 0.0,
        }];
        if quantizable(&c.name, &c.ne) && storage.to_hf.contains_key(&c.name) {
            for (ty, cand) in &c.candidates {
                if *ty == info.ty {
                    continue; // the copy, at no loss
                }
                options.push(TensorOption {
                    ty: ty.name().to_string(),
                    copy: false,
                    bytes: cand.bytes,
                    error: cand.loss,
                    kl: 0.0,
                });
            }
        }
        tensors.push(TensorSensitivity {
            name: c.name.clone(),
            ne: c.ne.clone(),
            stored: info.ty.name().to_string(),
            options,
            probes: Vec::new(),
        });
    }
    probe(&seq, tensors, &storage, m, t0, progress)
}

/// Probe the tensors whose options are known (module docs, step 1): each tensor alone at the
/// smallest option of at least 4 bits/weight, and at its smallest where that is under 4; the
/// token table and the head at every option. Then predict every option's KL from the probes.
/// `t0` is when the measurement began (the result's `seconds` count from it).
pub fn probe(
    seq: &Sequential,
    mut tensors: Vec<TensorSensitivity>,
    storage: &dyn Storage,
    m: &Measure,
    t0: Instant,
    progress: &dyn Progress,
) -> Result<Sensitivity> {
    let (table, head_weight) = seq.head_names()?;
    // (tensor, option) of every probe.
    let mut probes: Vec<(usize, usize)> = Vec::new();
    for (i, t) in tensors.iter().enumerate() {
        let Some(hf) = storage.hf_name(&t.name) else {
            continue;
        };
        let n: u64 = t.ne.iter().product();
        let bpw = |k: usize| t.options[k].bytes as f64 * 8.0 / n as f64;
        let quantized: Vec<usize> = (0..t.options.len())
            .filter(|&k| !t.options[k].copy)
            .collect();
        let four = quantized
            .iter()
            .copied()
            .filter(|&k| bpw(k) >= 4.0)
            .min_by_key(|&k| t.options[k].bytes);
        let least = quantized
            .iter()
            .copied()
            .min_by_key(|&k| t.options[k].bytes);
        // The token table and the head feed every position's logits directly: each of
        // their options is measured (a pass of the head each), not predicted.
        let chosen: Vec<usize> = if hf == table || hf == head_weight {
            quantized.clone()
        } else {
            four.into_iter()
                .chain(least.filter(|&k| bpw(k) < 4.0))
                .collect()
        };
        probes.extend(chosen.into_iter().map(|k| (i, k)));
    }
    let probe_names: Vec<Vec<String>> = probes
        .iter()
        .map(|&(i, _)| vec![storage.hf_name(&tensors[i].name).expect("probed")])
        .collect();
    let replace = |p: usize, _hf: &str, w: &Tensor| -> Result<Tensor> {
        let (i, k) = probes[p];
        storage.stored_as(&tensors[i].name, &tensors[i].options[k].ty, w)
    };
    let measured = divergences(seq, m.samples, &probe_names, &replace, progress)?;
    for (&(i, k), d) in probes.iter().zip(measured) {
        let t = &mut tensors[i];
        let (ty, error) = (t.options[k].ty.clone(), t.options[k].error);
        t.probes.push(ProbePoint {
            ty,
            error,
            divergence: d,
        });
    }
    for t in &mut tensors {
        predict(t);
    }
    Ok(Sensitivity {
        identity: m.identity.clone(),
        probe_tokens: m.samples.iter().map(Vec::len).sum(),
        seconds: t0.elapsed().as_secs_f64(),
        proxy: proxy_check(&tensors),
        tensors,
        head_importance: None,
    })
}

/// The LM head's importance vector — the mean square of each column of its input (the final
/// norm's output) over `samples` — under the GGUF name of the head's weight (the token table's
/// when they are tied). The head is a product like any linear and importance-weighted rounding
/// protects the columns its inputs use; llama-imatrix collects no entry for it.
pub fn head_importance(
    ckpt: &Checkpoint,
    samples: &[Vec<u32>],
    progress: &dyn Progress,
) -> Result<Option<(String, Vec<f32>)>> {
    let cd = |e: candle_core::Error| MethodError::Model(e.into());
    let seq = Sequential::new(ckpt)?;
    let head = seq.head()?;
    let Some(name) = seq.stack().gguf_name(head.weight) else {
        return Ok(None);
    };
    progress.start("head importance", seq.num_layers() as u64);
    let mut xs = seq.embed(samples)?;
    for l in 0..seq.num_layers() {
        let b = seq.layer(l)?;
        xs = seq.run(b.as_ref(), &xs, None)?;
        progress.inc(1);
    }
    progress.finish();
    let (mut sum, mut n) = (Vec::<f64>::new(), 0usize);
    for x in &xs {
        let xn = head.normed(x)?;
        let rows = xn.to_vec2::<f32>().map_err(cd)?;
        for r in rows {
            sum.resize(r.len(), 0.0);
            sum.iter_mut()
                .zip(&r)
                .for_each(|(s, &v)| *s += f64::from(v) * f64::from(v));
            n += 1;
        }
    }
    let v = sum.iter().map(|s| (s / n.max(1) as f64) as f32).collect();
    Ok(Some((name, v)))
}

/// Each option's predicted KL from the tensor's probes: `gain · error`, the gain (measured
/// KL ÷ error) interpolated in log error between two probes, constant beyond them.
fn predict(t: &mut TensorSensitivity) {
    let mut points: Vec<(f64, f64)> = t
        .probes
        .iter()
        .filter(|p| p.error > 0.0)
        .map(|p| (p.error, p.divergence.kl.max(0.0) / p.error))
        .collect();
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    if points.is_empty() {
        return;
    }
    let gain = |e: f64| -> f64 {
        let (first, last) = (points[0], points[points.len() - 1]);
        if e <= first.0 || points.len() == 1 {
            return first.1;
        }
        if e >= last.0 {
            return last.1;
        }
        let f = (e.ln() - first.0.ln()) / (last.0.ln() - first.0.ln());
        first.1 + f * (last.1 - first.1)
    };
    for o in t.options.iter_mut().filter(|o| !o.copy) {
        o.kl = gain(o.error) * o.error;
    }
}

/// Spearman's ρ (ranks without ties) of two equally long lists.
fn spearman(a: &[f64], b: &[f64]) -> f64 {
    let rank = |v: &[f64]| {
        let mut idx: Vec<usize> = (0..v.len()).collect();
        idx.sort_by(|&i, &j| v[i].total_cmp(&v[j]));
        let mut r = vec![0f64; v.len()];
        for (k, &i) in idx.iter().enumerate() {
            r[i] = k as f64;
        }
        r
    };
    let (ra, rb) = (rank(a), rank(b));
    let n = a.len() as f64;
    let d2: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - y).powi(2)).sum();
    1.0 - 6.0 * d2 / (n * (n * n - 1.0))
}

/// The proxy scaled by each tensor's first probe against its second probe's measurement.
fn proxy_check(tensors: &[TensorSensitivity]) -> Option<ProxyCheck> {
    let (mut predicted, mut measured) = (Vec::new(), Vec::new());
    for t in tensors.iter().filter(|t| t.probes.len() == 2) {
        let (p1, p2) = (&t.probes[0], &t.probes[1]);
        if p1.error > 0.0 {
            predicted.push(p1.divergence.kl / p1.error * p2.error);
            measured.push(p2.divergence.kl);
        }
    }
    if predicted.len() < 3 {
        return None;
    }
    let mut ratios: Vec<f64> = measured
        .iter()
        .zip(&predicted)
        .map(|(m, p)| m / p.max(f64::MIN_POSITIVE))
        .collect();
    ratios.sort_by(f64::total_cmp);
    Some(ProxyCheck {
        tensors: predicted.len(),
        spearman: spearman(&predicted, &measured),
        median_ratio: ratios[ratios.len() / 2],
    })
}

/// How many times a bound is corrected by a measurement at most.
const CORRECTIONS: usize = 3;

/// A mix measured within this fraction of its bound is kept without loosening the bound.
const NEAR: f64 = 0.9;

/// The chosen mix: an allocation and what it was measured to do.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The allocation (per tensor, the option index).
    pub allocation: Allocation,
    /// The whole mix measured on the probe text.
    pub measured: Divergence,
    /// Every mix measured on the way (a bound's corrections), in order.
    pub tries: Vec<(Allocation, Divergence)>,
    /// The kept mix meets the target on the probe text (a size target always does).
    pub meets: bool,
    /// Seconds of allocation and measurement.
    pub seconds: f64,
}

/// The mix's divergence measured whole.
fn measure_mix(
    seq: &Sequential,
    s: &Sensitivity,
    a: &Allocation,
    storage: &dyn Storage,
    samples: &[Vec<u32>],
    progress: &dyn Progress,
) -> Result<Divergence> {
    // HF name → (tensor, option) of every replaced weight.
    let replaced: HashMap<String, (&str, &str)> = s
        .tensors
        .iter()
        .zip(&a.picks)
        .filter(|(t, &k)| !t.options[k].copy)
        .filter_map(|(t, &k)| {
            let hf = storage.hf_name(&t.name)?;
            Some((hf, (t.name.as_str(), t.options[k].ty.as_str())))
        })
        .collect();
    if replaced.is_empty() {
        return Ok(Divergence::default());
    }
    let names: Vec<String> = replaced.keys().cloned().collect();
    let replace = |_p: usize, hf: &str, w: &Tensor| -> Result<Tensor> {
        let (name, ty) = replaced[hf];
        storage.stored_as(name, ty, w)
    };
    Ok(divergences(seq, samples, &[names], &replace, progress)?[0])
}

/// Allocate for `target` and check the mix whole, correcting a bound by the measurement
/// (module docs).
pub fn plan(
    ckpt: &Checkpoint,
    s: &Sensitivity,
    target: Target,
    storage: &dyn Storage,
    samples: &[Vec<u32>],
    progress: &dyn Progress,
) -> Result<Plan> {
    let t0 = Instant::now();
    let options = s.candidates();
    let elements = s.elements();
    let seq = Sequential::new(ckpt)?;
    let bpw = |b: u64| b as f64 * 8.0 / elements.max(1) as f64;
    let (lo, hi) = allocate::reachable(&options)?;
    let bound = |d: &Divergence| match target {
        Target::MaxKld(_) => d.kl,
        _ => d.nll_delta,
    };
    let limit = match target {
        Target::Bpw(b) => {
            let budget = (b * elements as f64 / 8.0).floor() as u64;
            if budget < lo || !b.is_finite() {
                return Err(MethodError::Options(format!(
                    "--target-bpw {b}: no mix of the types reaches it on this model; the \
                     smallest is {:.3} bits/weight (every tensor at its smallest type whose \
                     blocks fit its rows), the largest {:.3}",
                    bpw(lo),
                    bpw(hi)
                )));
            }
            let a = allocate::within_bytes(&options, budget)?;
            let measured = measure_mix(&seq, s, &a, storage, samples, progress)?;
            return Ok(Plan {
                allocation: a,
                measured,
                tries: Vec::new(),
                meets: true,
                seconds: t0.elapsed().as_secs_f64(),
            });
        }
        Target::MaxKld(k) => k,
        Target::MaxPplIncrease(p) => (1.0 + p / 100.0).ln(),
    };
    // Allocate within the bound, measure the mix whole, and correct the bound on the
    // prediction by measured ÷ bound until a mix meets it (at most CORRECTIONS times); the
    // smallest mix measured within the bound is kept, else the one nearest to it.
    let mut tries: Vec<(Allocation, Divergence)> = Vec::new();
    let mut predicted_limit = limit;
    for _ in 0..=CORRECTIONS {
        let a = allocate::within_loss(&options, predicted_limit)?;
        if tries.iter().any(|(b, _)| b.picks == a.picks) {
            break;
        }
        let d = measure_mix(&seq, s, &a, storage, samples, progress)?;
        let measured = bound(&d);
        tries.push((a, d));
        // Within the bound and near it, or nothing to scale by: done. Far under the bound, the
        // bound on the prediction is loosened the same way (a smaller mix may still meet it).
        if (measured <= limit && measured >= NEAR * limit) || measured <= 0.0 {
            break;
        }
        predicted_limit *= limit / measured;
    }
    let within: Vec<usize> = (0..tries.len())
        .filter(|&k| bound(&tries[k].1) <= limit)
        .collect();
    let best = match within.iter().min_by_key(|&&k| tries[k].0.bytes) {
        Some(&k) => k,
        None => (0..tries.len())
            .min_by(|&x, &y| bound(&tries[x].1).total_cmp(&bound(&tries[y].1)))
            .expect("one try at least"),
    };
    let (allocation, measured) = tries[best].clone();
    Ok(Plan {
        allocation,
        measured,
        meets: !within.is_empty(),
        tries,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// Write the plan's GGUF and its report (the plan per tensor included).
#[allow(clippy::too_many_arguments)]
pub fn write(
    g: &GgufFile,
    input: &Path,
    output: &Path,
    s: &Sensitivity,
    plan: &Plan,
    target: Target,
    imatrix: Option<(&Path, &Imatrix)>,
    overwrite: bool,
    progress: &dyn Progress,
) -> Result<Report> {
    let choices: Vec<TensorChoice> = s
        .tensors
        .iter()
        .zip(&plan.allocation.picks)
        .map(|(t, &k)| {
            let o = &t.options[k];
            TensorChoice {
                name: t.name.clone(),
                ne: t.ne.clone(),
                ty: (!o.copy).then(|| GgmlType::from_name(&o.ty).expect("a ggml type")),
                wanted: None,
                requires_imatrix: false,
            }
        })
        .collect();
    let mw = MixWrite {
        method: "auto".into(),
        ftype: FTYPE_MIX,
        imatrix,
        // Costs are measured against the stored weights: requantizing is the point.
        allow_requantize: true,
        overwrite,
    };
    let mut r = write_mix(g, input, output, &choices, &mw, progress)?;
    describe(&mut r, s, plan, target);
    Ok(r)
}

/// The plan in the report: what each tensor got and why, predicted and measured divergence,
/// every try of a bound, the proxy check.
pub fn describe(r: &mut Report, s: &Sensitivity, plan: &Plan, target: Target) {
    let elements = s.elements();
    let a = &plan.allocation;
    let rows: Vec<Value> = s
        .tensors
        .iter()
        .zip(&a.picks)
        .filter(|(t, _)| t.options.len() > 1)
        .map(|(t, &k)| {
            let o = &t.options[k];
            let n: u64 = t.ne.iter().product();
            json!({
                "tensor": t.name, "type": o.ty, "copied": o.copy, "bytes": o.bytes,
                "bits_per_weight": o.bytes as f64 * 8.0 / n as f64,
                "predicted_kl": o.kl,
                "probes": t.probes.iter().map(|p| json!({"type": p.ty, "kl": p.divergence.kl}))
                    .collect::<Vec<_>>(),
                "options": t.options.iter().map(|o| json!({"type": o.ty, "bytes": o.bytes,
                    "kl": o.kl})).collect::<Vec<_>>(),
            })
        })
        .collect();
    r.set("target", target.describe());
    r.set("plan", rows);
    r.set("predicted_kl", a.loss);
    r.set("loss_bound", a.loss_bound);
    r.set("measured_kl", plan.measured.kl);
    r.set(
        "measured_ppl_increase_percent",
        plan.measured.nll_delta.exp_m1() * 100.0,
    );
    r.set("probe_tokens", s.probe_tokens);
    r.set("sensitivity_seconds", s.seconds);
    r.set("allocation_seconds", plan.seconds);
    r.set(
        "proxy_check",
        serde_json::to_value(&s.proxy).expect("serializable"),
    );
    let tries: Vec<Value> = plan
        .tries
        .iter()
        .map(|(a, d)| {
            json!({"bits_per_weight": a.bytes as f64 * 8.0 / elements as f64,
                   "predicted_kl": a.loss, "measured_kl": d.kl,
                   "measured_ppl_increase_percent": d.nll_delta.exp_m1() * 100.0})
        })
        .collect();
    r.set("tries", tries);
    r.set("meets_target", plan.meets);
    if !plan.meets {
        r.set(
            "warning",
            format!(
                "no mix measured within {} on the probe text after {} corrections; the nearest \
                 is written",
                target.describe(),
                CORRECTIONS
            ),
        );
    }
    r.notes.push(format!(
        "plan           {}: predicted KL {:.5} (within {:.5} of the least any mix of this size \
         reaches), measured {:.5} on {} probe tokens, perplexity {:+.2} % there",
        target.describe(),
        a.loss,
        (a.loss - a.loss_bound).max(0.0),
        plan.measured.kl,
        s.probe_tokens,
        plan.measured.nll_delta.exp_m1() * 100.0
    ));
    if let Some(p) = &s.proxy {
        r.notes.push(format!(
            "proxy check    {} tensors: KL predicted from the 4-bit probe vs measured at the \
             smallest type, Spearman ρ {:.3}, median measured/predicted {:.2}",
            p.tensors, p.spearman, p.median_ratio
        ));
    }
}

/// The default cache file of a sensitivity measurement of `input` with `identity`, in `dir`.
pub fn cache_path(dir: &Path, input: &Path, identity: &Value) -> PathBuf {
    let stem = input
        .file_stem()
        .map_or("model".into(), |s| s.to_string_lossy().into_owned());
    let text = identity.to_string();
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in text.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    dir.join(format!("{stem}.{:08x}.sensitivity.json", h as u32))
}
