//! AWQ (Lin et al. 2023, "AWQ: Activation-aware Weight Quantization for LLM Compression and
//! Acceleration", arXiv:2306.00978) as AutoAWQ runs it (`awq/quantize/quantizer.py`,
//! `awq/quantize/scale.py`, `awq/models/llama.py`), on any architecture's blocks
//! (`shrink_models::layerwise`; each family names its scaling groups).
//!
//! Per decoder layer, on the inputs its linears see on the calibration samples:
//! 1. **Scale search** (`_search_best_scale`) for each scaling group of
//!    `get_layers_for_scaling` ([`ScaleGroup`]): `input_layernorm → q, k, v` (loss on the
//!    attention block's output), `v_proj → o_proj` (only when the two weights have the same
//!    shape, so never under grouped-query attention), `post_attention_layernorm → gate, up`
//!    (loss on the MLP's output) and `up_proj → down_proj` (loss on down_proj's output).
//!    `x̄` is the per-channel mean `|x|` of the group's input, `w̄` the per-input-channel mean
//!    of `|W|` normalised by its group's absmax over the group's weights stacked; for
//!    `r = i / n_grid`, `s = clamp(x̄^r / (w̄^(1−r) + 1e-4), 1e-4)` ("duo scaling") divided by
//!    `sqrt(max s · min s)`, and the loss is the mean squared difference of the module's
//!    output with `Q(W·diag(s))·diag(s)⁻¹` against the original. All four searches run on the
//!    original weights and inputs; then the best scales are applied (the norm's weight or the
//!    previous linear's output rows divided by `s`, the group's weight columns multiplied by
//!    `s`, the captured inputs divided by `s`), which leaves the float function unchanged.
//! 2. **Clip search** (`_search_best_clip`) for every linear but q_proj and k_proj: for each
//!    (row, group) the threshold `max|w| · (1 − i/20)`, `i < 10`, whose quantized group gives
//!    partial outputs closest (squared error) to the original on up to 512 tokens taken at a
//!    stride from the inputs; the weight is then clamped to `±threshold`.
//! 3. **Quantization** (`pseudo_quantize_tensor`, `zero_point=True`): per group of `G` input
//!    columns, `scale = max(max − min, 1e-5) / (2^b − 1)` (rounded to float16, as stored),
//!    `zero = clamp(−round(min / scale), 0, 2^b − 1)`,
//!    `code = clamp(round(w / scale) + zero, 0, 2^b − 1)`, rounding half to even like torch.
//!
//! Deviations from AutoAWQ, all for CPU time or because shrink computes in float32:
//! - the statistics `x̄` use every calibration token, but the scale search's losses run on the
//!   first [`AwqSpec::search_samples`] samples (AutoAWQ uses them all);
//! - everything is float32 (AutoAWQ casts the inspected module and the weights to float16
//!   before the search and the final quantization); the scales alone are rounded to float16;
//! - scaling groups whose linears are all left unselected are skipped; in the others only the
//!   selected linears are fake-quantized during the search;
//! - the driver ([`crate::calibrated`]) feeds each layer the outputs of the previous one
//!   *compressed* (GPTQ's sequential scheme); AutoAWQ feeds it the float outputs;
//! - GPT-2, GPT-NeoX and the BERT encoders fold scales only where their blocks allow it
//!   without changing the function (their norms; BERT's value → output projection), and
//!   GPT-2's fused `c_attn` is not clipped, as AutoAWQ spares queries and keys.

use std::collections::HashMap;

use candle_core::{Device, Module, Tensor};
use half::f16;
use rayon::prelude::*;
use shrink_formats::awq_layout::{AwqParts, AWQ_BITS};
use shrink_models::layerwise::{
    Block, Inspect, LinearSlot, Positions, Prev, ScaleGroup, Sequential,
};
use shrink_models::linear::Linear;
use shrink_models::ModelError;

use crate::error::{MethodError, Result};
use crate::pipeline::values;

/// AWQ's parameters, named after AutoAWQ's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AwqSpec {
    /// Bits per weight (`w_bit`); the AWQ GEMM layout stores 4 only.
    pub bits: u8,
    /// Input columns per group of scales (`q_group_size`, default 128).
    pub group_size: usize,
    /// Points of the scale search (`n_grid`, 20): ratios `0, 1/n, …, (n−1)/n`.
    pub n_grid: usize,
    /// Scale by activations and weights (`duo_scaling`, true) rather than activations alone.
    pub duo_scaling: bool,
    /// Search and apply per-group clipping (`apply_clip`, true).
    pub clip: bool,
    /// Grid of the clip search (`n_grid` of `_compute_best_clip`, 20).
    pub clip_grid: usize,
    /// Largest shrink of the clip search (`max_shrink`, 0.5): shrinks `i / clip_grid` for
    /// `i < max_shrink · clip_grid`.
    pub max_shrink: f32,
    /// Tokens the clip search takes at a stride from the inputs (`n_sample_token`, 512).
    pub clip_tokens: usize,
    /// Calibration samples the scale search's losses run on (default 16); the activation
    /// statistics use them all.
    pub search_samples: usize,
}

impl Default for AwqSpec {
    fn default() -> Self {
        AwqSpec {
            bits: AWQ_BITS,
            group_size: 128,
            n_grid: 20,
            duo_scaling: true,
            clip: true,
            clip_grid: 20,
            max_shrink: 0.5,
            clip_tokens: 512,
            search_samples: 16,
        }
    }
}

impl AwqSpec {
    /// Check the parameters against a weight `name` of `rows × cols` before any work.
    pub fn validate(&self, name: &str, rows: usize, cols: usize) -> Result<()> {
        let bad = |what: String| Err(MethodError::Options(format!("{name}: {what}")));
        if self.bits != AWQ_BITS {
            return bad(format!(
                "AWQ's GEMM layout stores 4-bit weights only, not --bits {}",
                self.bits
            ));
        }
        if self.group_size == 0 || !cols.is_multiple_of(self.group_size) {
            return bad(format!(
                "--group-size {} does not divide the {cols} input features",
                self.group_size
            ));
        }
        if !rows.is_multiple_of(8) {
            return bad(format!(
                "AWQ packs 8 output features per int32; {rows} is not a multiple of 8"
            ));
        }
        if self.n_grid == 0 || self.clip_grid == 0 || self.clip_tokens == 0 {
            return bad("the AWQ search grids and the clip tokens must be at least 1".into());
        }
        if self.search_samples == 0 {
            return bad("--awq-search-samples must be at least 1".into());
        }
        if !(self.max_shrink > 0.0 && self.max_shrink < 1.0) {
            return bad(format!(
                "the clip search's max shrink {} must lie in (0, 1)",
                self.max_shrink
            ));
        }
        Ok(())
    }
}

/// A candle error as this crate's error.
fn cd<T>(r: candle_core::Result<T>) -> Result<T> {
    r.map_err(|e| MethodError::Model(ModelError::from(e)))
}

// ---------------------------------------------------------------------------------------
// The quantizer (AutoAWQ `pseudo_quantize_tensor`, zero_point=True)
// ---------------------------------------------------------------------------------------

/// The grid of one group of weights: `(scale, zero)` with the scale rounded to float16.
pub fn group_params(w: &[f32], bits: u8) -> (f32, f32) {
    let maxq = ((1u32 << bits) - 1) as f32;
    let (mn, mx) = w
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let scale = f16::from_f32((mx - mn).max(1e-5) / maxq).to_f32();
    let zero = (-rne(mn / scale)).clamp(0.0, maxq);
    (scale, zero)
}

/// `x` rounded half to even (torch.round), without a libm call: adding and subtracting
/// 1.5 · 2²³ leaves the float addition to round, which it does half to even.
#[inline]
fn rne(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    if x.abs() < 4_194_304.0 {
        (x + MAGIC) - MAGIC
    } else {
        x.round_ties_even()
    }
}

/// The code of `w` on the grid `(scale, zero)`.
#[inline]
fn code(w: f32, scale: f32, zero: f32, maxq: f32) -> f32 {
    (rne(w / scale) + zero).clamp(0.0, maxq)
}

/// Replace each group of `group_size` columns of the row-major `[·, cols]` weight `w` by its
/// quantized-dequantized values.
pub fn pseudo_quantize(w: &mut [f32], group_size: usize, bits: u8) {
    let maxq = ((1u32 << bits) - 1) as f32;
    for g in w.chunks_exact_mut(group_size) {
        let (s, z) = group_params(g, bits);
        for v in g.iter_mut() {
            *v = (code(*v, s, z, maxq) - z) * s;
        }
    }
}

/// Quantize the row-major `[rows, cols]` weight `w` into AWQ's 4-bit parts (groups of
/// `group_size` columns).
pub fn quantize(
    name: &str,
    w: &[f32],
    rows: usize,
    cols: usize,
    group_size: usize,
) -> Result<AwqParts> {
    let maxq = ((1u32 << AWQ_BITS) - 1) as f32;
    let ng = cols / group_size.max(1);
    let mut codes = vec![0u8; rows * cols];
    let mut scales = vec![0f32; rows * ng];
    let mut zeros = vec![0u8; rows * ng];
    for (i, (g, c)) in w
        .chunks_exact(group_size)
        .zip(codes.chunks_exact_mut(group_size))
        .enumerate()
    {
        let (s, z) = group_params(g, AWQ_BITS);
        scales[i] = s;
        zeros[i] = z as u8;
        for (c, &v) in c.iter_mut().zip(g) {
            *c = code(v, s, z, maxq) as u8;
        }
    }
    let parts = AwqParts {
        group_size,
        rows,
        cols,
        codes,
        scales,
        zeros,
    };
    parts.check().map_err(|source| MethodError::Format {
        name: name.to_string(),
        source,
    })?;
    Ok(parts)
}

// ---------------------------------------------------------------------------------------
// The scale search (`_search_best_scale`, `_compute_best_scale`)
// ---------------------------------------------------------------------------------------

/// Per-input-channel mean of `|W|` normalised by its group's absmax (`+ 1e-6`), over the rows
/// of the weights `ws` (each row-major `[·, cols]`) stacked.
pub fn weight_mean(ws: &[&[f32]], cols: usize, group_size: usize) -> Vec<f32> {
    let mut acc = vec![0f64; cols];
    let mut rows = 0usize;
    for w in ws {
        for row in w.chunks_exact(cols) {
            rows += 1;
            for (a, g) in acc
                .chunks_exact_mut(group_size)
                .zip(row.chunks_exact(group_size))
            {
                let m = g.iter().fold(0f32, |m, v| m.max(v.abs())) + 1e-6;
                for (a, v) in a.iter_mut().zip(g) {
                    *a += (v.abs() / m) as f64;
                }
            }
        }
    }
    acc.iter()
        .map(|a| (a / rows.max(1) as f64) as f32)
        .collect()
}

/// Per-channel mean `|x|` over every row of the `[t, cols]` tensors `xs`.
pub fn activation_mean(xs: &[Tensor]) -> Result<Vec<f32>> {
    let mut acc: Vec<f64> = Vec::new();
    let mut n = 0usize;
    for x in xs {
        let cols = cd(x.dim(1))?;
        acc.resize(cols, 0.0);
        let v = cd(x.flatten_all().and_then(|t| t.to_vec1::<f32>()))?;
        for row in v.chunks_exact(cols) {
            n += 1;
            for (a, x) in acc.iter_mut().zip(row) {
                *a += x.abs() as f64;
            }
        }
    }
    Ok(acc.iter().map(|a| (a / n.max(1) as f64) as f32).collect())
}

/// The scales tried at `ratio`: `x̄^r / (w̄^(1−r) + 1e-4)` (or `x̄^r` without duo scaling),
/// at least 1e-4, divided by `sqrt(max · min)`; non-finite ones become 1.
pub fn candidate_scales(x_mean: &[f32], w_mean: &[f32], ratio: f32, duo: bool) -> Vec<f32> {
    let mut s: Vec<f32> = x_mean
        .iter()
        .zip(w_mean)
        .map(|(&x, &w)| {
            let v = if duo {
                x.powf(ratio) / (w.powf(1.0 - ratio) + 1e-4)
            } else {
                x.powf(ratio)
            };
            v.max(1e-4)
        })
        .collect();
    let (mn, mx) = s
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let norm = (mx * mn).sqrt();
    for v in s.iter_mut() {
        *v /= norm;
        if !v.is_finite() {
            *v = 1.0;
        }
    }
    s
}

/// What the scale search found for one group.
#[derive(Debug, Clone, PartialEq)]
pub struct ScaleSearch {
    /// The best ratio `r`.
    pub ratio: f32,
    /// The scales at that ratio, one per input channel.
    pub scales: Vec<f32>,
    /// The loss at that ratio.
    pub loss: f64,
    /// The loss at every ratio of the grid.
    pub losses: Vec<f64>,
}

/// Try the ratios `i / n_grid` and keep the scales whose `loss` is lowest (the grid points are
/// evaluated in parallel). Errors when every loss is non-finite.
pub fn search_scale<F>(
    x_mean: &[f32],
    w_mean: &[f32],
    spec: &AwqSpec,
    what: &str,
    loss: F,
) -> Result<ScaleSearch>
where
    F: Fn(&[f32]) -> Result<f64> + Sync,
{
    let n = spec.n_grid;
    let tried: Vec<(f32, Vec<f32>, f64)> = (0..n)
        .into_par_iter()
        .map(|i| {
            let r = i as f32 / n as f32;
            let s = candidate_scales(x_mean, w_mean, r, spec.duo_scaling);
            let l = loss(&s)?;
            Ok((r, s, l))
        })
        .collect::<Result<_>>()?;
    let losses: Vec<f64> = tried.iter().map(|t| t.2).collect();
    let mut best: Option<usize> = None;
    for (i, t) in tried.iter().enumerate() {
        if t.2 < best.map_or(f64::INFINITY, |b| tried[b].2) {
            best = Some(i);
        }
    }
    let Some(b) = best else {
        return Err(MethodError::Numerical {
            layer: what.to_string(),
            what: format!("every AWQ scale candidate gave a non-finite loss ({losses:?})"),
        });
    };
    let (ratio, scales, loss) = tried.into_iter().nth(b).expect("index in range");
    Ok(ScaleSearch {
        ratio,
        scales,
        loss,
        losses,
    })
}

// ---------------------------------------------------------------------------------------
// The clip search (`_search_best_clip`, `_compute_best_clip`, `apply_clip`)
// ---------------------------------------------------------------------------------------

/// Rows `0, step, 2·step, …` of the `[t, cols]` tensors `xs` stacked, with
/// `step = max(1, rows / n)` (AutoAWQ's `input_feat[:, ::step]`): the tokens and their count.
pub fn sample_tokens(xs: &[Tensor], n: usize) -> Result<(Vec<f32>, usize)> {
    let total: usize = xs.iter().map(|x| x.dim(0).unwrap_or(0)).sum();
    let step = (total / n.max(1)).max(1);
    let mut out = Vec::new();
    let mut count = 0usize;
    let mut base = 0usize; // global index of the first row of the current sample
    let mut next = 0usize; // next global index to take
    for x in xs {
        let (t, cols) = cd(x.dims2())?;
        if next < base + t {
            let v = cd(x.flatten_all().and_then(|t| t.to_vec1::<f32>()))?;
            while next < base + t {
                let r = next - base;
                out.extend_from_slice(&v[r * cols..(r + 1) * cols]);
                count += 1;
                next += step;
            }
        }
        base += t;
    }
    Ok((out, count))
}

/// `dst[m, n] = a[m, k] · b[n, k]ᵀ` for row-major `a` and `b`.
fn matmul_nt(dst: &mut [f32], a: &[f32], b: &[f32], m: usize, n: usize, k: usize) {
    debug_assert!(dst.len() == m * n && a.len() == m * k && b.len() == n * k);
    // SAFETY: dst is [m, n] row-major (row stride n); a is [m, k] row-major (row stride k);
    // the rhs [k, n] is bᵀ: element (kk, j) at b[j·k + kk] (row stride 1, column stride k).
    // The lengths are checked above.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            k as isize,
            1,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// The clip threshold of every (row, group) of the row-major `[rows, cols]` weight `w`
/// (`[rows, cols / G]`): `max|w| · (1 − i / clip_grid)` for the `i < max_shrink · clip_grid`
/// whose quantized group's partial outputs on the tokens `x` (`[t, cols]`) have the lowest
/// mean squared error. Groups are searched in parallel.
pub fn search_clip(
    w: &[f32],
    rows: usize,
    cols: usize,
    x: &[f32],
    t: usize,
    spec: &AwqSpec,
) -> Vec<f32> {
    let g = spec.group_size;
    let ng = cols / g;
    let steps = (spec.max_shrink * spec.clip_grid as f32) as usize;
    let per_group: Vec<Vec<f32>> = (0..ng)
        .into_par_iter()
        .map(|j| {
            let wg: Vec<f32> = (0..rows)
                .flat_map(|r| w[r * cols + j * g..r * cols + (j + 1) * g].iter().copied())
                .collect();
            let xg: Vec<f32> = (0..t)
                .flat_map(|i| x[i * cols + j * g..i * cols + (j + 1) * g].iter().copied())
                .collect();
            let org_max: Vec<f32> = wg
                .chunks_exact(g)
                .map(|r| r.iter().fold(0f32, |m, v| m.max(v.abs())))
                .collect();
            let mut org_out = vec![0f32; t * rows];
            matmul_nt(&mut org_out, &xg, &wg, t, rows, g);
            let mut best = org_max.clone();
            let mut min_err = vec![1e9f64; rows];
            let mut q = vec![0f32; rows * g];
            let mut cur = vec![0f32; t * rows];
            let mut err = vec![0f64; rows];
            for i in 0..steps {
                let f = 1.0 - i as f32 / spec.clip_grid as f32;
                for (r, (qr, wr)) in q.chunks_exact_mut(g).zip(wg.chunks_exact(g)).enumerate() {
                    let m = org_max[r] * f;
                    for (qv, &wv) in qr.iter_mut().zip(wr) {
                        *qv = wv.clamp(-m, m);
                    }
                    pseudo_quantize(qr, g, spec.bits);
                }
                matmul_nt(&mut cur, &xg, &q, t, rows, g);
                err.iter_mut().for_each(|e| *e = 0.0);
                for (cr, or) in cur.chunks_exact(rows).zip(org_out.chunks_exact(rows)) {
                    for ((e, &c), &o) in err.iter_mut().zip(cr).zip(or) {
                        *e += ((c - o) as f64).powi(2);
                    }
                }
                for r in 0..rows {
                    let e = err[r] / t.max(1) as f64;
                    if e < min_err[r] {
                        min_err[r] = e;
                        best[r] = org_max[r] * f;
                    }
                }
            }
            best
        })
        .collect();
    let mut out = vec![0f32; rows * ng];
    for (j, b) in per_group.iter().enumerate() {
        for (r, &v) in b.iter().enumerate() {
            out[r * ng + j] = v;
        }
    }
    out
}

/// Clamp every (row, group) of the row-major `[·, cols]` weight `w` to `±max_val[row, group]`.
pub fn apply_clip(w: &mut [f32], cols: usize, group_size: usize, max_val: &[f32]) {
    let ng = cols / group_size;
    for (r, row) in w.chunks_exact_mut(cols).enumerate() {
        for (j, g) in row.chunks_exact_mut(group_size).enumerate() {
            let m = max_val[r * ng + j];
            for v in g.iter_mut() {
                *v = v.clamp(-m, m);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// One block of any architecture (`AwqQuantizer._apply_quant`, `get_layers_for_scaling`)
// ---------------------------------------------------------------------------------------

/// Linears AutoAWQ never clips (`avoid_clipping`: queries and keys, whose products the
/// softmax amplifies), plus GPT-2's fused `c_attn`, which holds its queries and keys.
const AVOID_CLIPPING: [&str; 6] = ["q_", "k_", "query", "key", "Wqkv", "c_attn"];

/// What a block's linears read on the calibration samples, one `[t, ·]` tensor per sample,
/// by the name of the first linear reading each input ([`LinearSlot::input`]).
#[derive(Debug, Clone, Default)]
pub struct BlockInputs {
    /// The inputs, per sample.
    pub x: HashMap<&'static str, Vec<Tensor>>,
}

impl BlockInputs {
    /// Keep `t` if `linear` is the first reader of its input among `slots`.
    pub fn observe(&mut self, slots: &'static [LinearSlot], linear: &str, t: &Tensor) {
        if let Some(s) = slots.iter().find(|s| s.input == linear) {
            self.x.entry(s.input).or_default().push(t.clone());
        }
    }

    /// The samples of the input linear `name` reads.
    fn of(&self, slots: &[LinearSlot], name: &str) -> Result<&[Tensor]> {
        let input = slots
            .iter()
            .find(|s| s.name == name)
            .map(|s| s.input)
            .ok_or_else(|| MethodError::Options(format!("{name} is not a linear of the block")))?;
        self.x
            .get(input)
            .map(Vec::as_slice)
            .ok_or_else(|| MethodError::Options(format!("the input of {name} was not observed")))
    }

    /// Divide the channels of the input linear `name` reads by `s`.
    fn divide(&mut self, slots: &[LinearSlot], name: &str, s: &[f32]) -> Result<()> {
        let input = slots
            .iter()
            .find(|sl| sl.name == name)
            .map(|sl| sl.input)
            .unwrap_or(name);
        let st = cd(Tensor::from_slice(s, (1, s.len()), &Device::Cpu))?;
        for x in self.x.get_mut(input).into_iter().flatten() {
            *x = cd(x.broadcast_div(&st))?;
        }
        Ok(())
    }
}

/// One linear's weight (row-major `[rows, cols]`) and bias as float32 vectors.
#[derive(Debug, Clone)]
pub struct LinearWeights {
    /// Name inside the block.
    pub name: &'static str,
    /// The weight.
    pub w: Vec<f32>,
    /// Output features.
    pub rows: usize,
    /// Input features.
    pub cols: usize,
    /// The bias, if any.
    pub bias: Option<Vec<f32>>,
}

/// One norm's weight and bias as float32 vectors.
#[derive(Debug, Clone)]
pub struct NormWeights {
    /// Name inside the block.
    pub name: &'static str,
    /// The weight.
    pub w: Vec<f32>,
    /// The bias (LayerNorm), if any.
    pub bias: Option<Vec<f32>>,
}

/// A block's linear weights and the norms its scaling groups fold into, as float32 vectors
/// to scale in place.
#[derive(Debug, Clone)]
pub struct LayerWeights {
    /// The linears, in the block's forward order.
    pub linears: Vec<LinearWeights>,
    /// The norms of the scaling groups.
    pub norms: Vec<NormWeights>,
}

/// A block lacks a tensor its family names.
fn missing(what: &str) -> MethodError {
    MethodError::Options(format!("the block has no {what}"))
}

impl LayerWeights {
    /// Read `block`'s linears (`slots`) and the norms of `groups`.
    pub fn read(
        block: &mut dyn Block,
        slots: &[LinearSlot],
        groups: &[ScaleGroup],
    ) -> Result<Self> {
        let mut linears = Vec::new();
        for s in slots {
            let l = block.linear(s.name).ok_or_else(|| missing(s.name))?;
            linears.push(LinearWeights {
                name: s.name,
                w: values(&cd(l.weight())?)?,
                rows: l.out_features(),
                cols: l.in_features(),
                bias: l.bias.as_ref().map(values).transpose()?,
            });
        }
        let mut norms = Vec::new();
        for g in groups {
            if let Prev::Norm(name) = g.prev {
                let (w, b) = block.norm_mut(name).ok_or_else(|| missing(name))?;
                let (w, b) = (values(w)?, b.map(|b| values(b)).transpose()?);
                norms.push(NormWeights { name, w, bias: b });
            }
        }
        Ok(LayerWeights { linears, norms })
    }

    /// The linear named `name`.
    pub fn linear(&self, name: &str) -> Result<&LinearWeights> {
        self.linears
            .iter()
            .find(|l| l.name == name)
            .ok_or_else(|| missing(name))
    }

    fn linear_mut(&mut self, name: &str) -> Result<&mut LinearWeights> {
        self.linears
            .iter_mut()
            .find(|l| l.name == name)
            .ok_or_else(|| missing(name))
    }

    /// Fold the scales `s` of group `g`: the previous op's output divided by `s`, the group's
    /// weight columns multiplied by `s`. The block computes the same function (in exact
    /// arithmetic).
    pub fn apply_scale(&mut self, g: &ScaleGroup, s: &[f32]) -> Result<()> {
        let div = |v: &mut [f32]| v.iter_mut().zip(s).for_each(|(v, &sv)| *v /= sv);
        match g.prev {
            Prev::Norm(name) => {
                let n = self
                    .norms
                    .iter_mut()
                    .find(|n| n.name == name)
                    .ok_or_else(|| missing(name))?;
                div(&mut n.w);
                if let Some(b) = n.bias.as_mut() {
                    div(b);
                }
            }
            Prev::Linear(name) => {
                let p = self.linear_mut(name)?;
                for (row, &sv) in p.w.chunks_exact_mut(p.cols).zip(s) {
                    row.iter_mut().for_each(|v| *v /= sv);
                }
                if let Some(b) = p.bias.as_mut() {
                    div(b);
                }
            }
        }
        for name in g.linears {
            let l = self.linear_mut(name)?;
            for row in l.w.chunks_exact_mut(l.cols) {
                row.iter_mut().zip(s).for_each(|(v, &sv)| *v *= sv);
            }
        }
        Ok(())
    }

    /// Put the weights back into `block`.
    pub fn write(&self, block: &mut dyn Block) -> Result<()> {
        let dev = Device::Cpu;
        for n in &self.norms {
            let (w, b) = block.norm_mut(n.name).ok_or_else(|| missing(n.name))?;
            *w = cd(Tensor::from_slice(&n.w, n.w.len(), &dev))?;
            if let (Some(b), Some(v)) = (b, n.bias.as_ref()) {
                *b = cd(Tensor::from_slice(v, v.len(), &dev))?;
            }
        }
        for l in &self.linears {
            let w = cd(Tensor::from_slice(&l.w, (l.rows, l.cols), &dev))?;
            let b = l
                .bias
                .as_ref()
                .map(|b| Tensor::from_slice(b, b.len(), &dev))
                .transpose();
            let lin = block.linear_mut(l.name).ok_or_else(|| missing(l.name))?;
            *lin = cd(Linear::new(w, cd(b)?))?;
        }
        Ok(())
    }
}

/// What AWQ did to one scaling group of a block.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupReport {
    /// The group.
    pub group: ScaleGroup,
    /// The best ratio.
    pub ratio: f32,
    /// Its loss (mean squared output error on the search samples).
    pub loss: f64,
    /// The loss at every ratio.
    pub losses: Vec<f64>,
}

/// What AWQ made of one block.
#[derive(Debug, Clone)]
pub struct BlockAwq {
    /// The scaling groups searched, in order.
    pub groups: Vec<GroupReport>,
    /// The quantized weights, by linear name inside the block.
    pub parts: Vec<(&'static str, AwqParts)>,
    /// The block's weights as AWQ left them (what the block now holds).
    pub weights: LayerWeights,
}

/// Sum of squared differences of two equal-shape tensors, in float64.
fn sq_diff(a: &Tensor, b: &Tensor) -> Result<(f64, usize)> {
    let (a, b) = (values(a)?, values(b)?);
    let s = a
        .iter()
        .zip(&b)
        .map(|(x, y)| ((x - y) as f64).powi(2))
        .sum();
    Ok((s, a.len()))
}

/// The output of group `g`'s module in `block` for its input `x`.
fn inspect(g: &ScaleGroup, block: &dyn Block, x: &Tensor, pos: &Positions) -> Result<Tensor> {
    Ok(match g.inspect {
        Inspect::Linear => {
            let l = block
                .linear(g.linears[0])
                .ok_or_else(|| missing(g.linears[0]))?;
            cd(l.forward(x))?
        }
        what => block.inspect(what, x, pos)?,
    })
}

/// Run AWQ on block `l` of `seq` (scale search, scaling, clip search, quantization) given what
/// its linears read on the calibration samples (`inputs`, divided by the scales on return).
/// `selected(name)` says whether the linear named `name` is quantized. On return the block
/// holds the scaled norms and the dequantized (or, when unselected, scaled float) weights, and
/// computes what the checkpoint written from [`BlockAwq::parts`] computes.
pub fn quantize_block(
    seq: &Sequential,
    l: usize,
    block: &mut dyn Block,
    inputs: &mut BlockInputs,
    spec: &AwqSpec,
    selected: &dyn Fn(&str) -> bool,
) -> Result<BlockAwq> {
    let slots = seq.linears();
    let groups = seq.stack().scale_groups();
    let mut lw = LayerWeights::read(block, slots, &groups)?;
    let orig: &dyn Block = block;
    let n_search = spec
        .search_samples
        .min(inputs.of(slots, slots[0].name)?.len());
    // Positions of each search sample's length.
    let mut pos: Vec<(usize, Positions)> = Vec::new();
    for x in &inputs.of(slots, slots[0].name)?[..n_search] {
        let t = cd(x.dim(0))?;
        if !pos.iter().any(|p| p.0 == t) {
            pos.push((t, seq.positions(t)?));
        }
    }
    let pos_of = |x: &Tensor| -> Result<&Positions> {
        let t = cd(x.dim(0))?;
        Ok(&pos.iter().find(|p| p.0 == t).expect("tables made above").1)
    };

    let mut found: Vec<(ScaleGroup, ScaleSearch)> = Vec::new();
    for g in &groups {
        let quantized: Vec<&'static str> =
            g.linears.iter().copied().filter(|n| selected(n)).collect();
        if quantized.is_empty() {
            continue;
        }
        let xs = inputs.of(slots, g.linears[0])?;
        let x_mean = activation_mean(xs)?;
        let ws: Vec<&[f32]> = g
            .linears
            .iter()
            .map(|n| lw.linear(n).map(|l| l.w.as_slice()))
            .collect::<Result<_>>()?;
        let w_mean = weight_mean(&ws, lw.linear(g.linears[0])?.cols, spec.group_size);
        let refs: Vec<Tensor> = xs[..n_search]
            .iter()
            .map(|x| inspect(g, orig, x, pos_of(x)?))
            .collect::<Result<_>>()?;
        let what = format!(
            "{}: {} → {}",
            seq.tensor_name(l, g.prev.name()),
            g.prev.name(),
            g.linears.join(", ")
        );
        let found_g = search_scale(&x_mean, &w_mean, spec, &what, |s| {
            let mut cand = orig.boxed();
            for name in &quantized {
                let lin = lw.linear(name)?;
                let mut w = lin.w.clone();
                for row in w.chunks_exact_mut(lin.cols) {
                    row.iter_mut().zip(s).for_each(|(v, &sv)| *v *= sv);
                }
                pseudo_quantize(&mut w, spec.group_size, spec.bits);
                for row in w.chunks_exact_mut(lin.cols) {
                    row.iter_mut().zip(s).for_each(|(v, &sv)| *v /= sv);
                }
                let wt = cd(Tensor::from_vec(w, (lin.rows, lin.cols), &Device::Cpu))?;
                let target = cand.linear_mut(name).ok_or_else(|| missing(name))?;
                *target = cd(Linear::new(wt, target.bias.clone()))?;
            }
            let (mut sum, mut n) = (0f64, 0usize);
            for (x, r) in xs[..n_search].iter().zip(&refs) {
                let (s, k) = sq_diff(&inspect(g, cand.as_ref(), x, pos_of(x)?)?, r)?;
                sum += s;
                n += k;
            }
            Ok(sum / n.max(1) as f64)
        })?;
        found.push((*g, found_g));
    }
    for (g, f) in &found {
        lw.apply_scale(g, &f.scales)?;
        inputs.divide(slots, g.linears[0], &f.scales)?;
    }

    let mut parts = Vec::new();
    for s in slots {
        if !selected(s.name) {
            continue;
        }
        let clip = spec.clip && !AVOID_CLIPPING.iter().any(|p| s.name.contains(p));
        let x = if clip {
            Some(sample_tokens(inputs.of(slots, s.name)?, spec.clip_tokens)?)
        } else {
            None
        };
        let lin = lw.linear_mut(s.name)?;
        if let Some((x, t)) = x {
            let max_val = search_clip(&lin.w, lin.rows, lin.cols, &x, t, spec);
            apply_clip(&mut lin.w, lin.cols, spec.group_size, &max_val);
        }
        let full = seq.weight_name(l, s.name);
        let p = quantize(&full, &lin.w, lin.rows, lin.cols, spec.group_size)?;
        lin.w = p.dequantize();
        parts.push((s.name, p));
    }
    lw.write(block)?;
    Ok(BlockAwq {
        groups: found
            .into_iter()
            .map(|(group, f)| GroupReport {
                group,
                ratio: f.ratio,
                loss: f.loss,
                losses: f.losses,
            })
            .collect(),
        parts,
        weights: lw,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn fixture(name: &str) -> Option<shrink_io::Checkpoint> {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/fixtures")
            .join(name);
        p.exists()
            .then(|| shrink_io::Checkpoint::open(&p).expect("open the fixture"))
    }

    fn randn(rng: &mut rand::rngs::StdRng, n: usize, sd: f32) -> Vec<f32> {
        // Sum of 4 uniforms: close enough to a normal for these tests.
        (0..n)
            .map(|_| (0..4).map(|_| rng.random::<f32>() - 0.5).sum::<f32>() * sd * 1.7)
            .collect()
    }

    #[test]
    fn rne_rounds_half_to_even() {
        for x in [
            0.5f32, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49999997, 3.7, -3.7, 1e7, -1e7, 0.0,
        ] {
            assert_eq!(rne(x), x.round_ties_even(), "{x}");
        }
    }

    #[test]
    fn quantizer_matches_autoawq_formulas() {
        // A group with min -1, max 2 over 4 bits: scale 3/15 = 0.2, zero round(5) = 5.
        let w = [-1.0f32, 0.0, 0.31, 2.0];
        let (s, z) = group_params(&w, 4);
        assert_eq!(s, f16::from_f32(0.2).to_f32());
        assert_eq!(z, 5.0);
        let mut q = w.to_vec();
        pseudo_quantize(&mut q, 4, 4);
        assert_eq!(q[0], -5.0 * s);
        assert_eq!(q[3], 10.0 * s);
        assert_eq!(q[2], 2.0 * s); // 0.31 / 0.2 = 1.55 → 2
        let p = quantize("w", &[w, w].concat(), 1, 8, 4);
        assert!(p.is_err(), "one row is not a multiple of 8 rows");
        let w8: Vec<f32> = (0..64).map(|i| (i as f32 * 0.37).sin()).collect();
        let p = quantize("w", &w8, 8, 8, 4).unwrap();
        let mut q8 = w8.clone();
        pseudo_quantize(&mut q8, 4, 4);
        assert_eq!(p.dequantize(), q8);
    }

    #[test]
    fn scales_folded_into_norms_keep_the_layer_function() {
        for name in [
            "tiny-llama",
            "tiny-gpt2",
            "tiny-gpt_neox",
            "tiny-bert_cls",
            "tiny-distilbert_cls",
        ] {
            let Some(ckpt) = fixture(name) else {
                eprintln!("{name} fixture missing; skipped");
                continue;
            };
            let seq = Sequential::new(&ckpt).unwrap();
            let mut block = seq.layer(0).unwrap();
            let h = block.linear(seq.linears()[0].name).unwrap().in_features();
            let mut rng = rand::rngs::StdRng::seed_from_u64(7);
            let xs: Vec<Tensor> = (0..2)
                .map(|_| Tensor::from_vec(randn(&mut rng, 24 * h, 1.0), (24, h), &Device::Cpu))
                .collect::<candle_core::Result<_>>()
                .unwrap();
            let before = seq.run(block.as_ref(), &xs, None).unwrap();
            let groups = seq.stack().scale_groups();
            let mut lw = LayerWeights::read(block.as_mut(), seq.linears(), &groups).unwrap();
            let orig = lw.clone();
            for g in &groups {
                let n = lw.linear(g.linears[0]).unwrap().cols;
                let s: Vec<f32> = (0..n).map(|_| 0.25 + 3.0 * rng.random::<f32>()).collect();
                lw.apply_scale(g, &s).unwrap();
            }
            lw.write(block.as_mut()).unwrap();
            let after = seq.run(block.as_ref(), &xs, None).unwrap();
            for (a, b) in before.iter().zip(&after) {
                let d = values(&(a - b).unwrap().abs().unwrap()).unwrap();
                let m = d.iter().fold(0f32, |m, v| m.max(*v));
                assert!(m < 1e-4, "{name}: scaled layer differs by {m}");
            }
            // The weights did change.
            let changed = groups[0].linears[0];
            assert_ne!(
                lw.linear(changed).unwrap().w,
                orig.linear(changed).unwrap().w,
                "{name}"
            );
        }
    }

    #[test]
    fn awq_beats_round_to_nearest_with_outlier_channels() {
        // y = x Wᵀ with a few input channels 30× larger than the rest: AWQ protects them.
        let (rows, cols, t, g) = (64usize, 128usize, 256usize, 32usize);
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let w = randn(&mut rng, rows * cols, 0.05);
        let mut x = randn(&mut rng, t * cols, 1.0);
        for r in 0..t {
            for c in [3usize, 40, 77, 100] {
                x[r * cols + c] *= 30.0;
            }
        }
        let spec = AwqSpec {
            group_size: g,
            ..AwqSpec::default()
        };
        let out = |wq: &[f32]| {
            let mut y = vec![0f32; t * rows];
            matmul_nt(&mut y, &x, wq, t, rows, cols);
            y
        };
        let y0 = out(&w);
        let err = |wq: &[f32]| -> f64 {
            out(wq)
                .iter()
                .zip(&y0)
                .map(|(a, b)| ((a - b) as f64).powi(2))
                .sum::<f64>()
                / (t * rows) as f64
        };
        let mut rtn = w.clone();
        pseudo_quantize(&mut rtn, g, 4);
        let e_rtn = err(&rtn);

        let xt = Tensor::from_vec(x.clone(), (t, cols), &Device::Cpu).unwrap();
        let x_mean = activation_mean(std::slice::from_ref(&xt)).unwrap();
        let w_mean = weight_mean(&[&w], cols, g);
        let scaled = |s: &[f32]| {
            let mut q = w.clone();
            for row in q.chunks_exact_mut(cols) {
                row.iter_mut().zip(s).for_each(|(v, &sv)| *v *= sv);
            }
            q
        };
        let unscale = |mut q: Vec<f32>, s: &[f32]| {
            for row in q.chunks_exact_mut(cols) {
                row.iter_mut().zip(s).for_each(|(v, &sv)| *v /= sv);
            }
            q
        };
        let found = search_scale(&x_mean, &w_mean, &spec, "test", |s| {
            let mut q = scaled(s);
            pseudo_quantize(&mut q, g, 4);
            Ok(err(&unscale(q, s)))
        })
        .unwrap();
        assert!(found.ratio > 0.0, "some activation awareness pays here");
        let s = &found.scales;
        let mut ws = scaled(s);
        let xs: Vec<f32> = x
            .chunks_exact(cols)
            .flat_map(|r| r.iter().zip(s).map(|(v, sv)| v / sv).collect::<Vec<_>>())
            .collect();
        let max_val = search_clip(&ws, rows, cols, &xs, t, &spec);
        apply_clip(&mut ws, cols, g, &max_val);
        let p = quantize("w", &ws, rows, cols, g).unwrap();
        let e_awq = err(&unscale(p.dequantize(), s));
        assert!(
            e_awq < 0.7 * e_rtn,
            "AWQ error {e_awq} should beat round-to-nearest's {e_rtn}"
        );
    }

    #[test]
    fn sample_tokens_takes_a_stride_over_all_samples() {
        let a = Tensor::from_vec(
            (0..10).map(|i| i as f32).collect::<Vec<_>>(),
            (5, 2),
            &Device::Cpu,
        )
        .unwrap();
        let b = Tensor::from_vec(
            (10..16).map(|i| i as f32).collect::<Vec<_>>(),
            (3, 2),
            &Device::Cpu,
        )
        .unwrap();
        // 8 rows, 4 wanted: step 2 → rows 0, 2, 4, 6 (row 6 is b's second).
        let (v, n) = sample_tokens(&[a, b], 4).unwrap();
        assert_eq!(n, 4);
        assert_eq!(v, vec![0.0, 1.0, 4.0, 5.0, 8.0, 9.0, 12.0, 13.0]);
    }

    #[test]
    fn validate_refuses_other_bits() {
        let spec = AwqSpec {
            bits: 3,
            group_size: 64,
            ..AwqSpec::default()
        };
        let e = spec.validate("w", 64, 128).unwrap_err().to_string();
        assert!(e.contains("4-bit"), "{e}");
        assert!(AwqSpec {
            group_size: 64,
            ..AwqSpec::default()
        }
        .validate("w", 64, 128)
        .is_ok());
    }
}
