//! Learned quantization: the step sizes of a quantized model trained end to end against its
//! float teacher, the integer codes and zero points frozen — EfficientQAT's E2E-QP (Chen et al.
//! 2024, "EfficientQAT: Efficient Quantization-Aware Training for Large Language Models", §3.3:
//! "we only train the quantization step sizes s … the weights are frozen as integers"), with
//! the float model's logits as the target (KL at temperature 1) rather than the text.
//!
//! Each quantized weight is `W = s[r, g(c)] · (q[r, c] − z[r, g(c)])`; the backward of the
//! training engine gives dL/dW, so `dL/ds[r, g] = Σ_{c ∈ g} dL/dW[r, c] · (q[r, c] −
//! z[r, g])`. AdamW updates the scales (kept in float32, the model always runs on them rounded to
//! float16 — what the layout stores), and the weights are rebuilt from them after every step.
//! The output is the input's layout with only its scales replaced, so it loads wherever the
//! input did. Resumable: the scales, their moments and the step are checkpointed atomically.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use shrink_formats::gptq_layout::GptqParts;
use shrink_io::Checkpoint;
use shrink_models::Model;

use crate::distill::{step_windows, Progress, StepLog, Summary, TopK, Windows};
use crate::error::{Result, TrainError};
use crate::forward::Trainable;
use crate::grad::{self, Grads};
use crate::loss::{Divergence, KdLoss, LossParts, Teacher};
use crate::optim::{adamw, AdamW, Schedule};
use crate::params::Params;
use crate::state;

/// The settings of a scale fine-tuning run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FinetuneConfig {
    /// Optimiser steps.
    pub steps: usize,
    /// Tokens per window.
    pub seq_len: usize,
    /// Windows per step.
    pub batch: usize,
    /// Peak learning rate of the scales (EfficientQAT's E2E-QP uses 1e-5 to 2e-5 on Llama).
    pub lr: f64,
    /// Warmup steps.
    pub warmup: usize,
    /// Final learning rate as a share of the peak (cosine decay).
    pub min_lr_ratio: f64,
    /// Clip the scales' global gradient norm to this (0: no clipping).
    pub clip: f64,
    /// Seed of the window order.
    pub seed: u64,
    /// Keep only the teacher's K largest logits per position, cached once (the target then
    /// renormalised over them); `None`: the teacher runs on every window, every logit.
    pub teacher_topk: Option<usize>,
    /// Checkpoint every this many steps (0: only at the end or on interruption).
    pub save_every: usize,
}

impl FinetuneConfig {
    /// Check the settings.
    pub fn validate(&self) -> Result<()> {
        let bad = |s: String| Err(TrainError::Options(s));
        if self.steps == 0 || self.seq_len < 2 || self.batch == 0 {
            return bad(format!(
                "--steps {}, --seq-len {} and --batch {} must be at least 1, 2 and 1",
                self.steps, self.seq_len, self.batch
            ));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("--lr {} must be positive", self.lr));
        }
        if self.teacher_topk == Some(0) {
            return bad("--teacher-topk must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return bad(format!(
                "--min-lr-ratio {} is outside [0, 1]",
                self.min_lr_ratio
            ));
        }
        Ok(())
    }

    fn loss(&self) -> KdLoss {
        KdLoss {
            temperature: 1.0,
            alpha: 1.0,
            divergence: Divergence::Forward,
        }
    }
}

/// One quantized weight whose scales train.
#[derive(Debug, Clone)]
pub struct QuantWeight {
    /// HF weight name (`….weight`).
    pub name: String,
    /// Its index in the model's [`Params`].
    index: usize,
    /// Codes, zero points, group of each column; `parts.scales` as stored in the input.
    pub parts: GptqParts,
    /// `q − z` per element, row-major `[rows, cols]`.
    centered: Vec<f32>,
    /// The trained scales (float32 master copy), `[rows, ngroups]`.
    pub scales: Vec<f32>,
    m: Vec<f32>,
    v: Vec<f32>,
}

impl QuantWeight {
    fn new(name: String, index: usize, parts: GptqParts) -> Self {
        let ng = parts.num_groups();
        let centered = (0..parts.rows * parts.cols)
            .map(|k| {
                let (r, c) = (k / parts.cols, k % parts.cols);
                let g = parts.g_idx[c] as usize;
                parts.codes[k] as f32 - parts.zeros[r * ng + g] as f32
            })
            .collect();
        let n = parts.scales.len();
        QuantWeight {
            name,
            index,
            scales: parts.scales.clone(),
            centered,
            parts,
            m: vec![0.0; n],
            v: vec![0.0; n],
        }
    }

    /// The scales as the layout stores them (float16 values).
    pub fn stored_scales(&self) -> Vec<f32> {
        self.scales
            .iter()
            .map(|&s| half::f16::from_f32(s).to_f32())
            .collect()
    }

    /// The weight the stored scales give, row-major `[rows, cols]`.
    fn weight(&self) -> Vec<f32> {
        let (cols, ng) = (self.parts.cols, self.parts.num_groups());
        let s = self.stored_scales();
        self.centered
            .par_chunks(cols)
            .enumerate()
            .flat_map_iter(|(r, row)| {
                let s = &s[r * ng..(r + 1) * ng];
                let g_idx = &self.parts.g_idx;
                row.iter().zip(g_idx).map(move |(&q, &g)| q * s[g as usize])
            })
            .collect()
    }

    /// dL/ds from dL/dW.
    fn scale_grad(&self, gw: &[f32]) -> Vec<f32> {
        let (cols, ng) = (self.parts.cols, self.parts.num_groups());
        let mut out = vec![0f32; self.scales.len()];
        out.par_chunks_mut(ng).enumerate().for_each(|(r, o)| {
            let (q, g) = (
                &self.centered[r * cols..(r + 1) * cols],
                &gw[r * cols..(r + 1) * cols],
            );
            let mut acc = vec![0f64; ng];
            for ((&qv, &gv), &gi) in q.iter().zip(g).zip(&self.parts.g_idx) {
                acc[gi as usize] += qv as f64 * gv as f64;
            }
            o.iter_mut().zip(&acc).for_each(|(o, &a)| *o = a as f32);
        });
        out
    }
}

/// The quantized weights of `ckpt` (a GPTQ-layout directory) and a trainable model holding
/// their dequantized values (every other weight as stored).
pub fn load(ckpt: &Checkpoint) -> Result<(Trainable, Vec<QuantWeight>)> {
    let Checkpoint::Hf(h) = ckpt else {
        return Err(TrainError::input(
            ckpt.path(),
            "fine-tuning scales needs a quantized Hugging Face directory (a GGUF's blocks are \
             not trained here)",
        ));
    };
    let Some(qcfg) = h.quantization_config() else {
        return Err(TrainError::input(
            ckpt.path(),
            "the checkpoint is not quantized: there are no scales to train (quantize it first, \
             e.g. shrink quantize MODEL --method gptq)",
        ));
    };
    let method = qcfg
        .get("quant_method")
        .and_then(|m| m.as_str())
        .unwrap_or("");
    if method != "gptq" {
        return Err(TrainError::input(
            ckpt.path(),
            format!(
                "quant_method {method:?}: scale fine-tuning reads the gptq layout (shrink \
                 quantize --method gptq, or shrink export --to gptq)"
            ),
        ));
    }
    let arch = shrink_models::Architecture::from_checkpoint(ckpt)?;
    let w = arch.weight_loader(ckpt);
    let mut tensors = Vec::new();
    let mut quant = Vec::new();
    for (name, shape) in arch.weight_shapes() {
        if !w.has(&name) {
            continue;
        }
        if let Some(q) = h.quantized(&name)? {
            let parts = match &q {
                shrink_io::quantized::Quantized::Int(t) => GptqParts::from_int_tensor(t)
                    .map_err(|e| TrainError::input(ckpt.path(), format!("{name}: {e}")))?,
                _ => {
                    return Err(TrainError::input(
                        ckpt.path(),
                        format!(
                            "{name}: act-order with a g_idx permutation is not trained yet \
                             (quantize with --act-order static or none)"
                        ),
                    ))
                }
            };
            let qw = QuantWeight::new(name.clone(), tensors.len(), parts);
            let t = candle_core::Tensor::from_vec(
                qw.weight(),
                shape.as_slice(),
                &candle_core::Device::Cpu,
            )?;
            tensors.push((name, t));
            quant.push(qw);
        } else {
            tensors.push((name.clone(), arch.read_weight(&w, &name, &shape)?));
        }
    }
    if quant.is_empty() {
        return Err(TrainError::input(
            ckpt.path(),
            "no weight is stored quantized: nothing to train",
        ));
    }
    Ok((Trainable::new(Params::from_tensors(arch, tensors)?), quant))
}

/// Rebuild every quantized weight of `student` from the current scales of `quant`.
pub fn rebuild(student: &mut Trainable, quant: &[QuantWeight]) -> Result<()> {
    for q in quant {
        student.params.set_values(q.index, q.weight())?;
    }
    Ok(())
}

/// dL/ds of every quantized weight from the summed weight gradients.
fn scale_grads(quant: &[QuantWeight], grads: &Grads) -> Result<Vec<Vec<f32>>> {
    quant
        .iter()
        .map(|q| {
            let gw = grads.sums[q.index]
                .as_deref()
                .ok_or_else(|| TrainError::Options(format!("no gradient reached {}", q.name)))?;
            Ok(q.scale_grad(gw))
        })
        .collect()
}

/// The loss (KL to `teacher`'s logits, or its top-`topk`, at temperature 1, per token) of `student` on
/// `window` (`seq_len + 1` tokens) and its gradient with respect to every scale of `quant`.
pub fn scale_gradients(
    teacher: &Model,
    student: &mut Trainable,
    quant: &[QuantWeight],
    window: &[u32],
    seq_len: usize,
    topk: Option<usize>,
) -> Result<(Vec<Vec<f32>>, f64)> {
    let vocab = student.vocab_size();
    let ids = &window[..seq_len];
    let logits = crate::distill::teacher_logits(teacher, ids)?;
    let (tids, tvals, k);
    let t = match topk {
        Some(kk) => {
            k = kk.min(vocab);
            (tids, tvals) = crate::distill::topk_rows(&logits, vocab, k);
            Teacher::TopK {
                ids: &tids,
                logits: &tvals,
                k,
            }
        }
        None => Teacher::Full(&logits),
    };
    let loss = KdLoss {
        temperature: 1.0,
        alpha: 1.0,
        divergence: Divergence::Forward,
    };
    let mut grads = Grads::new(student.params.len());
    let norm = seq_len as f64;
    let p = grad::backward_kd(student, ids, &window[1..], t, &loss, norm, &mut grads)?;
    Ok((scale_grads(quant, &grads)?, p.total(&loss) / norm))
}

/// What a run's checkpoint identifies it by: the settings and the training windows.
fn identity(cfg: &FinetuneConfig, n_train: usize) -> serde_json::Value {
    serde_json::json!({ "finetune": cfg, "train_windows": n_train })
}

/// Save the scales and their moments (atomically) into `run_dir/scales.safetensors`.
fn save(
    run_dir: &Path,
    quant: &[QuantWeight],
    step: usize,
    id: &serde_json::Value,
) -> Result<PathBuf> {
    let mut t = Vec::new();
    for q in quant {
        let n = q.scales.len();
        t.push((format!("{}.scales", q.name), vec![n], q.scales.clone()));
        t.push((format!("{}.m", q.name), vec![n], q.m.clone()));
        t.push((format!("{}.v", q.name), vec![n], q.v.clone()));
    }
    let meta = HashMap::from([
        ("step".to_string(), step.to_string()),
        ("run".to_string(), id.to_string()),
    ]);
    let path = run_dir.join("scales.safetensors");
    state::write_atomic(&path, &state::safetensors_bytes(&t, Some(meta))?)?;
    Ok(path)
}

/// Load a checkpoint written by [`save`]; returns its step.
fn restore(path: &Path, quant: &mut [QuantWeight], id: &serde_json::Value) -> Result<usize> {
    let bytes = std::fs::read(path).map_err(|source| TrainError::File {
        path: path.into(),
        source,
    })?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| TrainError::input(path, format!("not a safetensors file: {e}")))?;
    let meta = meta.metadata().clone().unwrap_or_default();
    if meta.get("run") != Some(&id.to_string()) {
        return Err(TrainError::input(
            path,
            "--resume: the checkpoint was made with other settings or text (same flags and text \
             needed)",
        ));
    }
    let step = meta
        .get("step")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| TrainError::input(path, "no step in the checkpoint's metadata"))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| TrainError::input(path, format!("not a safetensors file: {e}")))?;
    for q in quant.iter_mut() {
        let get = |k: &str| state::f32_tensor(&st, &format!("{}.{k}", q.name), path);
        let (s, m, v) = (get("scales")?, get("m")?, get("v")?);
        if s.len() != q.scales.len() || m.len() != s.len() || v.len() != s.len() {
            return Err(TrainError::input(path, format!("{}: wrong sizes", q.name)));
        }
        (q.scales, q.m, q.v) = (s, m, v);
    }
    Ok(step)
}

/// Train the scales of `quant` (in `student`) against `teacher` on `windows.train` for
/// `cfg.steps` steps; log and checkpoints in `run_dir`. With `resume`, continue from its
/// checkpoint; `stop` set (Ctrl-C) checkpoints and returns [`TrainError::Interrupted`].
#[allow(clippy::too_many_arguments)]
pub fn finetune(
    teacher: &Model,
    student: &mut Trainable,
    quant: &mut [QuantWeight],
    windows: &Windows,
    cfg: &FinetuneConfig,
    run_dir: &Path,
    resume: bool,
    stop: &AtomicBool,
    progress: &dyn Progress,
) -> Result<Summary> {
    cfg.validate()?;
    let vocab = student.vocab_size();
    if teacher.config().vocab_size() != vocab {
        return Err(TrainError::Options(format!(
            "teacher and quantized model have different vocabularies ({} and {vocab} tokens)",
            teacher.config().vocab_size()
        )));
    }
    std::fs::create_dir_all(run_dir).map_err(|source| TrainError::File {
        path: run_dir.into(),
        source,
    })?;
    let n_train = windows.train.len();
    let id = identity(cfg, n_train);
    let ck = run_dir.join("scales.safetensors");
    let log_path = run_dir.join("train.jsonl");
    let mut start = 0;
    if resume {
        if !ck.is_file() {
            return Err(TrainError::input(
                run_dir,
                "--resume: no checkpoint in the run directory",
            ));
        }
        start = restore(&ck, quant, &id)?;
        rebuild(student, quant)?;
        crate::distill::truncate_log(&log_path, start)?;
        progress.note(&format!("resumed at step {start}"));
    } else if ck.exists() || std::fs::metadata(&log_path).is_ok_and(|m| m.len() > 0) {
        return Err(TrainError::input(
            run_dir,
            "holds an earlier run (continue it with --resume, or remove it)",
        ));
    }
    let t_cache = Instant::now();
    let topk = match cfg.teacher_topk {
        Some(k) => Some(TopK::load_or_build(
            &run_dir.join(format!("teacher-top{}.safetensors", k.min(vocab))),
            teacher,
            &windows.train,
            cfg.seq_len,
            k.min(vocab),
            vocab,
            progress,
        )?),
        None => None,
    };
    let teacher_cache_seconds = t_cache.elapsed().as_secs_f64();
    let loss = cfg.loss();
    let sched = Schedule {
        warmup: cfg.warmup,
        total: cfg.steps,
        min_ratio: cfg.min_lr_ratio,
    };
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|source| TrainError::File {
            path: log_path.clone(),
            source,
        })?;
    let tokens_per_step = cfg.batch * cfg.seq_len;
    let t0 = Instant::now();
    let mut last = None;
    for step in start + 1..=cfg.steps {
        let ts = Instant::now();
        let mut grads = Grads::new(student.params.len());
        let mut parts = LossParts::default();
        let norm = tokens_per_step as f64;
        for wi in step_windows(cfg.seed, n_train, cfg.batch, step) {
            let w = &windows.train[wi];
            let full;
            let t = match &topk {
                Some(c) => Teacher::TopK {
                    ids: &c.rows[wi].0,
                    logits: &c.rows[wi].1,
                    k: c.k,
                },
                None => {
                    full = crate::distill::teacher_logits(teacher, &w[..cfg.seq_len])?;
                    Teacher::Full(&full)
                }
            };
            let p = grad::backward_kd(
                student,
                &w[..cfg.seq_len],
                &w[1..],
                t,
                &loss,
                norm,
                &mut grads,
            )?;
            parts.add(&p);
        }
        let value = parts.total(&loss) / norm;
        // The scales' gradients, their global norm, clipping.
        let gs = scale_grads(quant, &grads)?;
        drop(grads);
        let gnorm = gs
            .iter()
            .flatten()
            .map(|&g| (g as f64) * (g as f64))
            .sum::<f64>()
            .sqrt();
        if !value.is_finite() || !gnorm.is_finite() {
            return Err(TrainError::NonFinite {
                step,
                value: if value.is_finite() { gnorm } else { value },
                last_good: ck.is_file().then(|| ck.clone()),
            });
        }
        let clip = if cfg.clip > 0.0 && gnorm > cfg.clip {
            (cfg.clip / (gnorm + 1e-6)) as f32
        } else {
            1.0
        };
        let lr = cfg.lr * sched.factor(step);
        // Adam (no weight decay: a scale has no reason to shrink).
        let opt = AdamW::default();
        for (q, g) in quant.iter_mut().zip(&gs) {
            q.scales = adamw(
                &q.scales,
                (&mut q.m, &mut q.v),
                (g, clip),
                step,
                &opt,
                (lr, 0.0),
            );
        }
        rebuild(student, quant)?;
        let entry = StepLog {
            step,
            loss: value,
            kd: parts.kd / norm,
            ce: parts.ce / norm,
            lr,
            grad_norm: gnorm,
            tokens: step * tokens_per_step,
            tokens_per_s: tokens_per_step as f64 / ts.elapsed().as_secs_f64(),
            heldout_ppl: None,
        };
        writeln!(log, "{}", serde_json::to_string(&entry).expect("JSON")).map_err(|source| {
            TrainError::File {
                path: log_path.clone(),
                source,
            }
        })?;
        progress.step(&entry, cfg.steps);
        last = Some(entry);
        let interrupted = stop.load(Ordering::SeqCst);
        if interrupted || (cfg.save_every > 0 && step % cfg.save_every == 0) || step == cfg.steps {
            let p = save(run_dir, quant, step, &id)?;
            if interrupted {
                return Err(TrainError::Interrupted { step, path: p });
            }
        }
    }
    let seconds = t0.elapsed().as_secs_f64();
    let steps_this_run = cfg.steps - start;
    Ok(Summary {
        steps: cfg.steps,
        steps_this_run,
        resumed_from: resume.then_some(start),
        seconds,
        tokens_per_s: (steps_this_run * tokens_per_step) as f64 / seconds.max(1e-9),
        last,
        teacher_cache_seconds,
    })
}

/// The trained scales of `q` as the gptq layout's `<module>.scales` tensor: float16,
/// `[ngroups, rows]`, little-endian.
fn scales_tensor(q: &QuantWeight) -> Vec<u8> {
    let (rows, ng) = (q.parts.rows, q.parts.num_groups());
    let s = q.stored_scales();
    let mut out = Vec::with_capacity(rows * ng * 2);
    for g in 0..ng {
        for r in 0..rows {
            out.extend(half::f16::from_f32(s[r * ng + g]).to_le_bytes());
        }
    }
    out
}

/// Write `input` (the directory [`load`] read) into the new directory `output` with the
/// trained scales of `quant` in place of its own: every other tensor, the file's metadata and
/// the side files (config, tokenizer, quantize_config.json) as they were, then `extra` files
/// (name, bytes), which replace a side file of the same name. Written under a temporary name
/// and renamed when complete.
pub fn write(
    input: &Checkpoint,
    quant: &[QuantWeight],
    output: &Path,
    extra: &[(String, Vec<u8>)],
) -> Result<PathBuf> {
    let Checkpoint::Hf(h) = input else {
        return Err(TrainError::input(
            input.path(),
            "not a Hugging Face directory",
        ));
    };
    if h.weights.files.len() != 1 {
        return Err(TrainError::input(
            input.path(),
            "sharded checkpoints are not rewritten yet (one model.safetensors)",
        ));
    }
    let mut replaced: HashMap<String, Vec<u8>> = HashMap::new();
    for q in quant {
        let module = q.name.strip_suffix(".weight").unwrap_or(&q.name);
        let name = format!("{module}.scales");
        let info = h.weights.tensors.get(&name).ok_or_else(|| {
            TrainError::input(input.path(), format!("tensor {name} is not in the file"))
        })?;
        let bytes = scales_tensor(q);
        if info.dtype != safetensors::Dtype::F16 || h.weights.bytes(info).len() != bytes.len() {
            return Err(TrainError::input(
                input.path(),
                format!("tensor {name}: float16 [groups, rows] scales expected"),
            ));
        }
        replaced.insert(name, bytes);
    }
    let out = shrink_io::OutputDir::create(output, &[input.path()])?;
    let names: Vec<String> = h.weights.tensors.keys().cloned().collect();
    let headers: Vec<shrink_io::TensorHeader> = names
        .iter()
        .map(|n| {
            let t = &h.weights.tensors[n];
            shrink_io::TensorHeader {
                name: n.clone(),
                dtype: t.dtype,
                shape: t.shape.clone(),
                len: h.weights.bytes(t).len(),
            }
        })
        .collect();
    let meta = h.weights.files[0].metadata.clone();
    shrink_io::write_safetensors_ordered(
        &out.file("model.safetensors"),
        &headers,
        meta,
        |i| -> Result<Vec<u8>> {
            let n = &names[i];
            Ok(match replaced.get(n) {
                Some(b) => b.clone(),
                None => h.weights.bytes(&h.weights.tensors[n]).to_vec(),
            })
        },
    )?;
    for e in std::fs::read_dir(&h.dir).map_err(|source| TrainError::File {
        path: h.dir.clone(),
        source,
    })? {
        let e = e.map_err(|source| TrainError::File {
            path: h.dir.clone(),
            source,
        })?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".safetensors") || !e.path().is_file() {
            continue;
        }
        std::fs::copy(e.path(), out.file(&name)).map_err(|source| TrainError::File {
            path: e.path(),
            source,
        })?;
    }
    for (name, bytes) in extra {
        out.write(name, bytes)?;
    }
    Ok(out.commit()?)
}
