//! Block-AP: block-wise training of all parameters — EfficientQAT's first phase (Chen et al.
//! 2024, "EfficientQAT: Efficient Quantization-Aware Training for Large Language Models",
//! §3.2; its `quantize/block_ap.py` and `quantize/quantizer.py`).
//!
//! Block by block, every Linear's weight W and its quantizer's step sizes s and zero points z
//! (per group of consecutive input columns, asymmetric, initialised by the group's min/max)
//! train together through the fake quantizer
//! `Q(W) = s · (clamp(⌊W/s⌉ + ⌊z⌉, 0, 2ᵇ − 1) − ⌊z⌉)` with straight-through rounding, to make
//! the block's output on the *quantized* model's input match the float block's output on the
//! float model's input (mean squared error; EfficientQAT's `quant_inps` → `fp_inps` pairs).
//! Through the rounding (STE) and torch's clamp, per element with `x = W/s`:
//! - inside the range: ∂Q/∂W = 1, ∂Q/∂s = ⌊x⌉ − x, ∂Q/∂z = 0;
//! - clamped to 0 or to 2ᵇ − 1 (`q₀`): ∂Q/∂W = 0, ∂Q/∂s = q₀ − ⌊z⌉, ∂Q/∂z = −s.
//!
//! AdamW (no decay) with its own learning rates for W and for (s, z), each cosine-annealed to
//! lr / `min_lr_factor` over the block's iterations. Each block is then quantized for real (s
//! rounded to float16, z to an integer, as the GPTQ layout stores them), its quantized output
//! becomes the next block's input, and the model is written in the Hugging Face `gptq` layout —
//! so E2E-QP (`shrink finetune`) can follow, as in EfficientQAT.

use std::collections::HashMap;
use std::time::Instant;

use candle_core::Tensor;
use shrink_formats::gptq_layout::{GptqParts, GPTQ_BITS};
use shrink_io::Checkpoint;
use shrink_methods::calibrated::Run;
use shrink_methods::per_tensor::{write_encoded, Encoded, Encoder, Job};
use shrink_methods::report::Report;
use shrink_models::LinearInfo;

use crate::error::{Result, TrainError};
use crate::forward::Trainable;
use crate::optim::{adamw, AdamW};
use crate::params::transpose;

/// Block-AP's settings (EfficientQAT's defaults: 2 epochs, batch 2, quant lr 1e-4, weight lr
/// 1e-5 at 3–4 bits and 2e-5 at 2, min lr factor 20).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct BlockApSpec {
    /// Bits per weight code (2, 3, 4 or 8: the GPTQ layout's).
    pub bits: u8,
    /// Input columns per group.
    pub group_size: usize,
    /// Passes over the calibration samples per block.
    pub epochs: usize,
    /// Samples per optimiser step.
    pub batch: usize,
    /// Learning rate of the step sizes and zero points.
    pub quant_lr: f64,
    /// Learning rate of the weights.
    pub weight_lr: f64,
    /// The cosine schedule ends at lr / this.
    pub min_lr_factor: f64,
    /// Seed of the sample order.
    pub seed: u64,
}

impl Default for BlockApSpec {
    fn default() -> Self {
        BlockApSpec {
            bits: 4,
            group_size: 64,
            epochs: 2,
            batch: 2,
            quant_lr: 1e-4,
            weight_lr: 1e-5,
            min_lr_factor: 20.0,
            seed: 0,
        }
    }
}

impl BlockApSpec {
    /// Check the settings.
    pub fn validate(&self) -> Result<()> {
        if !GPTQ_BITS.contains(&self.bits) {
            return Err(TrainError::Options(format!(
                "--bits {}: Block-AP writes the GPTQ layout, which stores 2, 3, 4 or 8 bits",
                self.bits
            )));
        }
        if self.group_size == 0 || self.epochs == 0 || self.batch == 0 {
            return Err(TrainError::Options(
                "--group-size, --epochs and --batch must be at least 1".into(),
            ));
        }
        for (n, v) in [
            ("--quant-lr", self.quant_lr),
            ("--weight-lr", self.weight_lr),
            ("--min-lr-factor", self.min_lr_factor),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(TrainError::Options(format!(
                    "{n} {v} must be 0 or positive"
                )));
            }
        }
        if self.min_lr_factor < 1.0 {
            return Err(TrainError::Options(format!(
                "--min-lr-factor {} must be at least 1",
                self.min_lr_factor
            )));
        }
        Ok(())
    }

    /// The method's name in reports.
    pub fn name(&self) -> String {
        format!("block-ap-w{}g{}-asym", self.bits, self.group_size)
    }

    fn qmax(&self) -> f32 {
        ((1u32 << self.bits) - 1) as f32
    }
}

/// Adam moments of one tensor.
#[derive(Debug, Clone)]
struct Moments {
    m: Vec<f32>,
    v: Vec<f32>,
}

impl Moments {
    fn new(n: usize) -> Self {
        Moments {
            m: vec![0.0; n],
            v: vec![0.0; n],
        }
    }
}

/// One Linear of the block being trained.
struct BlockLinear {
    name: String,
    index: usize,
    rows: usize,
    cols: usize,
    conv1d: bool,
    /// W, `[rows, cols]`.
    w: Vec<f32>,
    /// s and z, `[rows, groups]`.
    s: Vec<f32>,
    z: Vec<f32>,
    mw: Moments,
    ms: Moments,
    mz: Moments,
}

impl BlockLinear {
    /// EfficientQAT's initialisation: each group's min/max range, scale clamped to
    /// [1e-4, 1e4], zero point `round(−min / s)`.
    fn new(l: &LinearInfo, index: usize, w: Vec<f32>, spec: &BlockApSpec) -> Self {
        let (rows, cols, g) = (l.out_features, l.in_features, spec.group_size);
        let ng = cols / g;
        let (mut s, mut z) = (Vec::with_capacity(rows * ng), Vec::with_capacity(rows * ng));
        for group in w.chunks_exact(g) {
            let (lo, hi) = group
                .iter()
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| {
                    (a.min(x), b.max(x))
                });
            let scale = ((hi - lo) / spec.qmax()).clamp(1e-4, 1e4);
            s.push(scale);
            z.push((-(lo / scale).clamp(-1e4, 1e4)).round_ties_even());
        }
        let n = rows * ng;
        BlockLinear {
            name: l.weight.clone(),
            index,
            rows,
            cols,
            conv1d: l.conv1d,
            mw: Moments::new(w.len()),
            w,
            s,
            z,
            ms: Moments::new(n),
            mz: Moments::new(n),
        }
    }

    fn ng(&self) -> usize {
        self.s.len() / self.rows
    }

    /// `Q(W)` `[rows, cols]` with the step sizes `s`.
    fn fake(&self, s: &[f32], qmax: f32) -> Vec<f32> {
        let (g, ng) = (self.cols / self.ng(), self.ng());
        let mut out = vec![0f32; self.w.len()];
        for (k, (o, &w)) in out.iter_mut().zip(&self.w).enumerate() {
            let gi = (k / self.cols) * ng + (k % self.cols) / g;
            let (sc, zr) = (s[gi], self.z[gi].round_ties_even().clamp(0.0, qmax));
            let q = ((w / sc).round_ties_even() + zr).clamp(0.0, qmax);
            *o = (q - zr) * sc;
        }
        out
    }

    /// (dL/dW, dL/ds, dL/dz) from dL/dQ(W) `[rows, cols]`.
    fn grads(&self, gq: &[f32], qmax: f32) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let (g, ng) = (self.cols / self.ng(), self.ng());
        let mut gw = vec![0f32; self.w.len()];
        let (mut gs, mut gz) = (vec![0f64; self.s.len()], vec![0f64; self.z.len()]);
        for (k, (&w, &d)) in self.w.iter().zip(gq).enumerate() {
            let gi = (k / self.cols) * ng + (k % self.cols) / g;
            let (sc, zr) = (self.s[gi], self.z[gi].round_ties_even().clamp(0.0, qmax));
            let x = w / sc;
            let pre = x.round_ties_even() + zr;
            if (0.0..=qmax).contains(&pre) {
                gw[k] = d;
                gs[gi] += (d * (x.round_ties_even() - x)) as f64;
            } else {
                let q0 = if pre < 0.0 { 0.0 } else { qmax };
                gs[gi] += (d * (q0 - zr)) as f64;
                gz[gi] -= (d * sc) as f64;
            }
        }
        let f = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect();
        (gw, f(gs), f(gz))
    }

    /// The stored form: codes, float16 scales, integer zeros.
    fn parts(&self, spec: &BlockApSpec) -> GptqParts {
        let qmax = spec.qmax();
        let s16: Vec<f32> = self
            .s
            .iter()
            .map(|&s| half::f16::from_f32(s).to_f32())
            .collect();
        let (g, ng) = (spec.group_size, self.ng());
        let zeros: Vec<u8> = self
            .z
            .iter()
            .map(|z| z.round_ties_even().clamp(0.0, qmax) as u8)
            .collect();
        let codes = self
            .w
            .iter()
            .enumerate()
            .map(|(k, &w)| {
                let gi = (k / self.cols) * ng + (k % self.cols) / g;
                ((w / s16[gi]).round_ties_even() + zeros[gi] as f32).clamp(0.0, qmax) as u8
            })
            .collect();
        GptqParts {
            bits: spec.bits,
            group_size: g,
            rows: self.rows,
            cols: self.cols,
            codes,
            scales: s16,
            zeros,
            g_idx: (0..self.cols).map(|c| (c / g) as u32).collect(),
        }
    }

    /// `w` `[rows, cols]` in the checkpoint's layout.
    fn to_layout(&self, w: Vec<f32>) -> Vec<f32> {
        if self.conv1d {
            transpose(&w, self.rows, self.cols)
        } else {
            w
        }
    }
}

/// The block a weight belongs to: the first dot-separated component of its name that is a
/// number (`model.layers.12.mlp…` → 12, `transformer.h.3.attn…` → 3).
fn block_of(name: &str) -> Option<usize> {
    name.split('.').find_map(|p| p.parse().ok())
}

/// Mean squared error of `y` against `t` and dL/dy.
fn mse(y: &Tensor, t: &Tensor, numel: usize) -> Result<(f64, Tensor)> {
    let d = (y - t)?;
    let sq = d.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
    Ok((sq / numel as f64, (d * (2.0 / numel as f64))?))
}

/// The cosine-annealed rate at iteration `t` (0-based) of `total`, from `lr` to `lr / factor`
/// (torch's CosineAnnealingLR).
fn cosine(lr: f64, factor: f64, t: usize, total: usize) -> f64 {
    let min = lr / factor;
    min + (lr - min) * (1.0 + (std::f64::consts::PI * t as f64 / total.max(1) as f64).cos()) / 2.0
}

/// Block `l`'s mean squared error on the inputs `xs` against `targets` (no graph).
fn block_loss(model: &Trainable, l: usize, xs: &[Tensor], targets: &[Tensor]) -> Result<f64> {
    let mut sum = 0.0;
    for (x, t) in xs.iter().zip(targets) {
        let y = model.layer(l, x)?.detach();
        sum += mse(&y, t, t.elem_count())?.0;
    }
    Ok(sum / xs.len().max(1) as f64)
}

/// What each block's training did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BlockLog {
    /// Block index.
    pub block: usize,
    /// Reconstruction MSE with the min/max initialisation (round to nearest).
    pub mse_rtn: f64,
    /// Reconstruction MSE after training, as stored.
    pub mse_trained: f64,
    /// Seconds.
    pub seconds: f64,
}

/// Block-AP on `run.ckpt` (a float model) with the calibration samples of `run`, the selected
/// weights (the blocks' Linears) written in the HF `gptq` layout to `run.output`.
pub fn quantize(run: &Run, spec: &BlockApSpec) -> Result<Report> {
    spec.validate()?;
    let t0 = Instant::now();
    if let Checkpoint::Hf(h) = run.ckpt {
        if h.quantization_config().is_some() {
            return Err(TrainError::input(
                run.ckpt.path(),
                "the model is already quantized: Block-AP starts from the float model",
            ));
        }
    }
    if run.samples.is_empty() {
        return Err(TrainError::Options("no calibration samples".into()));
    }
    let mut model = Trainable::load(run.ckpt)?;
    let selected = run.selection.resolve(model.arch())?;
    let mut by_block: HashMap<usize, Vec<LinearInfo>> = HashMap::new();
    for l in selected {
        if l.in_features % spec.group_size != 0 {
            return Err(TrainError::Options(format!(
                "{}: {} input features are not a multiple of --group-size {}",
                l.weight, l.in_features, spec.group_size
            )));
        }
        let b = block_of(&l.weight).ok_or_else(|| {
            TrainError::Options(format!(
                "{}: Block-AP trains the blocks' Linears only (--include of a weight outside \
                 the blocks)",
                l.weight
            ))
        })?;
        by_block.entry(b).or_default().push(l);
    }
    let n_layers = model.num_layers();
    let qmax = spec.qmax();
    let mut fp: Vec<Tensor> = run
        .samples
        .iter()
        .map(|ids| Ok(model.embed(ids)?.detach()))
        .collect::<Result<_>>()?;
    let mut q = fp.clone();
    let mut parts: HashMap<String, GptqParts> = HashMap::new();
    let mut logs = Vec::new();
    let n = fp.len();
    let iters_per_epoch = n.div_ceil(spec.batch);
    let total = spec.epochs * iters_per_epoch;
    let opt = AdamW::default();
    run.progress.start("block-ap blocks", n_layers as u64);
    for l in 0..n_layers {
        let tb = Instant::now();
        // The float block's outputs on the float inputs: the targets.
        let targets: Vec<Tensor> = fp
            .iter()
            .map(|x| Ok(model.layer(l, x)?.detach()))
            .collect::<Result<_>>()?;
        let mut lin: Vec<BlockLinear> = Vec::new();
        for info in by_block.remove(&l).unwrap_or_default() {
            let index = model
                .params
                .names()
                .iter()
                .position(|x| *x == info.weight)
                .ok_or_else(|| {
                    TrainError::input(run.ckpt.path(), format!("no weight {}", info.weight))
                })?;
            let mut w = model.params.values(index)?;
            if info.conv1d {
                w = transpose(&w, info.in_features, info.out_features);
            }
            lin.push(BlockLinear::new(&info, index, w, spec));
        }
        let set = |model: &mut Trainable, lin: &[BlockLinear]| -> Result<()> {
            for b in lin {
                model
                    .params
                    .set_values(b.index, b.to_layout(b.fake(&b.s, qmax)))?;
            }
            Ok(())
        };
        set(&mut model, &lin)?;
        let mse_rtn = block_loss(&model, l, &q, &targets)?;
        let mut it = 0;
        if !lin.is_empty() {
            for epoch in 0..spec.epochs {
                let order = crate::distill::epoch_order(spec.seed ^ l as u64, epoch, n);
                for chunk in order.chunks(spec.batch) {
                    let mut gq: Vec<Vec<f32>> = lin.iter().map(|b| vec![0f32; b.w.len()]).collect();
                    let numel: usize = chunk.iter().map(|&i| targets[i].elem_count()).sum();
                    for &i in chunk {
                        let y = model.layer(l, &q[i])?;
                        let (_, dy) = mse(&y.detach(), &targets[i], numel)?;
                        let store = (&y * &dy)?.sum_all()?.backward()?;
                        for (b, acc) in lin.iter().zip(gq.iter_mut()) {
                            let var = &model.params.vars()[b.index];
                            let g = store.get(var.as_tensor()).ok_or_else(|| {
                                TrainError::Options(format!("no gradient reached {}", b.name))
                            })?;
                            let g: Vec<f32> = g.flatten_all()?.to_vec1()?;
                            let g = if b.conv1d {
                                transpose(&g, b.cols, b.rows)
                            } else {
                                g
                            };
                            acc.iter_mut().zip(&g).for_each(|(a, x)| *a += x);
                        }
                    }
                    it += 1;
                    let (lr_w, lr_q) = (
                        cosine(spec.weight_lr, spec.min_lr_factor, it - 1, total),
                        cosine(spec.quant_lr, spec.min_lr_factor, it - 1, total),
                    );
                    for (b, g) in lin.iter_mut().zip(&gq) {
                        let (gw, gs, gz) = b.grads(g, qmax);
                        if spec.weight_lr > 0.0 {
                            b.w = adamw(
                                &b.w,
                                (&mut b.mw.m, &mut b.mw.v),
                                (&gw, 1.0),
                                it,
                                &opt,
                                (lr_w, 0.0),
                            );
                        }
                        if spec.quant_lr > 0.0 {
                            b.s = adamw(
                                &b.s,
                                (&mut b.ms.m, &mut b.ms.v),
                                (&gs, 1.0),
                                it,
                                &opt,
                                (lr_q, 0.0),
                            )
                            .into_iter()
                            .map(|s| s.clamp(1e-4, 1e4))
                            .collect();
                            b.z = adamw(
                                &b.z,
                                (&mut b.mz.m, &mut b.mz.v),
                                (&gz, 1.0),
                                it,
                                &opt,
                                (lr_q, 0.0),
                            );
                        }
                    }
                    set(&mut model, &lin)?;
                }
            }
        }
        // Quantized for real: the stored form's weights, the next block's inputs.
        for b in &lin {
            let p = b.parts(spec);
            model
                .params
                .set_values(b.index, b.to_layout(p.dequantize()))?;
            parts.insert(b.name.clone(), p);
        }
        let mse_trained = block_loss(&model, l, &q, &targets)?;
        if !mse_trained.is_finite() {
            return Err(TrainError::NonFinite {
                step: l,
                value: mse_trained,
                last_good: None,
            });
        }
        for x in q.iter_mut() {
            *x = model.layer(l, x)?.detach();
        }
        fp = targets;
        logs.push(BlockLog {
            block: l,
            mse_rtn,
            mse_trained,
            seconds: tb.elapsed().as_secs_f64(),
        });
        run.progress.inc(1);
    }
    run.progress.finish();
    drop((model, fp, q));
    let record = serde_json::json!({
        "spec": spec,
        "samples": n,
        "iterations_per_block": total,
        "blocks": logs,
        "train_seconds": t0.elapsed().as_secs_f64(),
    });
    let enc = PartsEncoder {
        spec: *spec,
        parts,
        record,
        calibration: run.calibration.clone(),
        train_seconds: t0.elapsed().as_secs_f64(),
    };
    let job = Job {
        ckpt: run.ckpt,
        output: run.output,
        selection: run.selection,
        dense_dtype: run.dense_dtype,
        progress: run.progress,
    };
    Ok(write_encoded(&job, &enc)?)
}

/// Stores the trained parts in the GPTQ layout.
struct PartsEncoder {
    spec: BlockApSpec,
    parts: HashMap<String, GptqParts>,
    record: serde_json::Value,
    calibration: serde_json::Value,
    /// Seconds of the training, before the writing.
    train_seconds: f64,
}

impl PartsEncoder {
    fn qconfig(&self) -> serde_json::Value {
        shrink_io::hf_int::gptq_config(
            self.spec.bits,
            Some(self.spec.group_size),
            false,
            false,
            0.0,
            true,
            false,
        )
    }
}

impl Encoder for PartsEncoder {
    fn name(&self) -> String {
        self.spec.name()
    }
    fn validate(&self, l: &LinearInfo) -> shrink_methods::Result<()> {
        if self.parts.contains_key(&l.weight) {
            Ok(())
        } else {
            Err(shrink_methods::MethodError::Options(format!(
                "{}: not trained",
                l.weight
            )))
        }
    }
    fn encode(
        &self,
        l: &LinearInfo,
        read: &mut dyn FnMut() -> shrink_methods::Result<Vec<f32>>,
        _source: Option<shrink_io::quantized::Quantized>,
    ) -> shrink_methods::Result<Encoded> {
        let p = &self.parts[&l.weight];
        let module = l.weight.strip_suffix(".weight").unwrap_or(&l.weight);
        let stored = shrink_io::hf_int::gptq_tensors(module, p).map_err(|source| {
            shrink_methods::MethodError::Format {
                name: l.weight.clone(),
                source,
            }
        })?;
        Ok(Encoded {
            stored,
            dequantized: p.dequantize(),
            stored_bytes: p.stored_bytes(),
            seconds: 0.0,
            input: Some(read()?),
        })
    }
    fn config(&self, _ignore: &[String], _dense_dtype: &str) -> serde_json::Value {
        self.qconfig()
    }
    fn extra_files(
        &self,
        config: &serde_json::Value,
    ) -> shrink_methods::Result<Vec<(String, Vec<u8>)>> {
        let q = shrink_io::hf_int::gptq_quantize_config(config);
        Ok(vec![(
            "quantize_config.json".into(),
            serde_json::to_vec_pretty(&q).expect("JSON"),
        )])
    }
    fn report(&self, r: &mut Report) {
        r.calibration = Some(self.calibration.clone());
        r.extra.insert("block_ap".into(), self.record.clone());
    }
    fn seconds_before(&self) -> f64 {
        self.train_seconds
    }
}
