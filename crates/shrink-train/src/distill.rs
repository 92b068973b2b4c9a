//! Knowledge distillation of a causal language model: a student learns the teacher's soft
//! targets at a temperature and the text's next tokens (Hinton et al. 2015; for a student
//! made by structured pruning of the teacher, as Minitron, Muralidharan et al. 2024).
//!
//! The text is cut into non-overlapping windows of `seq_len + 1` tokens (inputs and their next
//! tokens). Each step takes `batch × grad_accum` windows in an order shuffled per epoch from
//! the seed alone, so a resumed run sees exactly the windows an uninterrupted one would. The
//! teacher runs the fast inference forward of `shrink-models`; with `teacher_topk` its K
//! largest logits per position are computed once and cached in the run directory.
//!
//! Every step appends a line to `train.jsonl` in the run directory; every `save_every` steps
//! (and on interruption) the weights and the optimiser state are checkpointed atomically
//! ([`crate::state`]); a run resumed from a checkpoint rewrites the log from there, so the
//! curve is the uninterrupted run's.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::Tensor;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use shrink_models::Model;

use crate::error::{Result, TrainError};
use crate::forward::Trainable;
use crate::grad::{self, Grads};
use crate::loss::{self, KdLoss, LossParts, Teacher};
use crate::optim::{self, AdamW, OptimState, Schedule};
use crate::state;

/// Settings of a distillation run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DistillConfig {
    /// Optimiser steps.
    pub steps: usize,
    /// Tokens per window (inputs; each window also holds the next token of the last).
    pub seq_len: usize,
    /// Windows per micro-batch.
    pub batch: usize,
    /// Micro-batches summed per step.
    pub grad_accum: usize,
    /// The loss.
    pub loss: KdLoss,
    /// AdamW.
    pub optim: AdamW,
    /// Warmup steps of the learning rate.
    pub warmup: usize,
    /// Final learning rate as a share of the peak (cosine decay).
    pub min_lr_ratio: f64,
    /// Clip the global gradient norm to this (0: no clipping).
    pub clip: f64,
    /// Seed of the window order.
    pub seed: u64,
    /// Cache the teacher's K largest logits per position instead of running it every step.
    pub teacher_topk: Option<usize>,
    /// Checkpoint every this many steps (0: only at the end or on interruption).
    pub save_every: usize,
    /// Held-out perplexity every this many steps (0: never).
    pub eval_every: usize,
    /// Windows held out of training for that perplexity (taken from the end of the text).
    pub holdout: usize,
}

impl DistillConfig {
    /// Check the settings against each other.
    pub fn validate(&self) -> Result<()> {
        self.loss.validate()?;
        let bad = |w: &str| Err(TrainError::Options(w.into()));
        if self.steps == 0 {
            return bad("--steps must be at least 1");
        }
        if self.seq_len < 2 {
            return bad("--seq-len must be at least 2");
        }
        if self.batch == 0 || self.grad_accum == 0 {
            return bad("--batch and --grad-accum must be at least 1");
        }
        if !(self.optim.lr.is_finite() && self.optim.lr > 0.0) {
            return bad("--lr must be > 0");
        }
        if self.teacher_topk == Some(0) {
            return bad("--teacher-topk must be at least 1");
        }
        if self.teacher_topk.is_some()
            && self.loss.alpha > 0.0
            && self.loss.divergence == crate::loss::Divergence::Reverse
        {
            return bad("reverse KL needs the teacher's whole distribution; drop --teacher-topk");
        }
        if self.eval_every > 0 && self.holdout == 0 {
            return bad("--eval-every needs held-out windows (--holdout ≥ 1)");
        }
        Ok(())
    }
}

/// Training windows and held-out windows cut from one token stream.
#[derive(Debug, Clone)]
pub struct Windows {
    /// Windows trained on, `seq_len + 1` tokens each.
    pub train: Vec<Vec<u32>>,
    /// Windows held out for perplexity.
    pub heldout: Vec<Vec<u32>>,
}

impl Windows {
    /// Cut `ids` (read from `source`, named in errors) into windows of `seq_len + 1` tokens,
    /// the last `holdout` held out.
    pub fn cut(ids: &[u32], seq_len: usize, holdout: usize, source: &Path) -> Result<Self> {
        let mut all: Vec<Vec<u32>> = ids.chunks_exact(seq_len + 1).map(|c| c.to_vec()).collect();
        if all.len() < holdout + 1 {
            return Err(TrainError::input(
                source,
                format!(
                    "{} tokens make {} window(s) of {} tokens; training needs at least {} \
                     (lower --seq-len or --holdout, or give more text)",
                    ids.len(),
                    all.len(),
                    seq_len + 1,
                    holdout + 1
                ),
            ));
        }
        let heldout = all.split_off(all.len() - holdout);
        Ok(Windows {
            train: all,
            heldout,
        })
    }
}

/// One step's record (a line of `train.jsonl`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepLog {
    /// 1-based step.
    pub step: usize,
    /// The weighted loss per token.
    pub loss: f64,
    /// Soft term (divergence at T) per token.
    pub kd: f64,
    /// Cross-entropy with the next tokens per token.
    pub ce: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Tokens trained on so far.
    pub tokens: usize,
    /// Tokens per second of this step.
    pub tokens_per_s: f64,
    /// Held-out perplexity, on evaluation steps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heldout_ppl: Option<f64>,
}

/// The end of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Steps taken in all (including before a resume).
    pub steps: usize,
    /// Steps this process took.
    pub steps_this_run: usize,
    /// Step resumed from, if any.
    pub resumed_from: Option<usize>,
    /// Seconds of this process's training.
    pub seconds: f64,
    /// Tokens per second of this process's training.
    pub tokens_per_s: f64,
    /// Last step's record.
    pub last: Option<StepLog>,
    /// Seconds spent caching the teacher's top-K logits.
    pub teacher_cache_seconds: f64,
}

/// What the run reports as it goes.
pub trait Progress {
    /// A step finished.
    fn step(&self, log: &StepLog, total: usize);
    /// Something worth a line (caching the teacher, a checkpoint).
    fn note(&self, msg: &str);
}

/// Reports nothing.
pub struct Silent;

impl Progress for Silent {
    fn step(&self, _: &StepLog, _: usize) {}
    fn note(&self, _: &str) {}
}

/// A permutation of 0..n for `epoch`, drawn from the seed and the epoch alone (so a resumed
/// run, or any step, finds its order without replaying the generator).
pub fn epoch_order(seed: u64, epoch: usize, n: usize) -> Vec<usize> {
    let mut perm: Vec<usize> = (0..n).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(
        seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
    );
    perm.shuffle(&mut rng);
    perm
}

/// The window indices of step `step` (1-based): `per_step` windows from a per-epoch
/// permutation of `n`, drawn from `seed` and the epoch alone.
pub fn step_windows(seed: u64, n: usize, per_step: usize, step: usize) -> Vec<usize> {
    let mut out = Vec::with_capacity(per_step);
    let mut cached: Option<(usize, Vec<usize>)> = None;
    for j in 0..per_step {
        let g = (step - 1) * per_step + j;
        let (epoch, pos) = (g / n, g % n);
        if cached.as_ref().map(|c| c.0) != Some(epoch) {
            cached = Some((epoch, epoch_order(seed, epoch, n)));
        }
        out.push(cached.as_ref().expect("set above").1[pos]);
    }
    out
}

/// The teacher's top-K logits of every training window, cached in the run directory.
pub(crate) struct TopK {
    pub(crate) k: usize,
    /// Per window: ids then logits, rows × K each.
    pub(crate) rows: Vec<(Vec<u32>, Vec<f32>)>,
}

/// The `k` largest logits of every row (ids, values), in decreasing order.
pub(crate) fn topk_rows(logits: &[f32], vocab: usize, k: usize) -> (Vec<u32>, Vec<f32>) {
    let mut ids = Vec::with_capacity(logits.len() / vocab * k);
    let mut vals = Vec::with_capacity(ids.capacity());
    for row in logits.chunks_exact(vocab) {
        let mut idx: Vec<u32> = (0..vocab as u32).collect();
        idx.select_nth_unstable_by(k - 1, |&a, &b| row[b as usize].total_cmp(&row[a as usize]));
        idx.truncate(k);
        idx.sort_unstable_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]).then(a.cmp(&b)));
        vals.extend(idx.iter().map(|&i| row[i as usize]));
        ids.extend(idx);
    }
    (ids, vals)
}

/// The teacher's logits of `ids`, flattened.
pub(crate) fn teacher_logits(teacher: &Model, ids: &[u32]) -> Result<Vec<f32>> {
    Ok(teacher.forward(ids, None)?.flatten_all()?.to_vec1()?)
}

impl TopK {
    /// Load the cache from `path` or compute it (and write it atomically).
    pub(crate) fn load_or_build(
        path: &Path,
        teacher: &Model,
        windows: &[Vec<u32>],
        seq_len: usize,
        k: usize,
        vocab: usize,
        progress: &dyn Progress,
    ) -> Result<Self> {
        if path.is_file() {
            let bytes = std::fs::read(path).map_err(|source| TrainError::File {
                path: path.into(),
                source,
            })?;
            let st = safetensors::SafeTensors::deserialize(&bytes)
                .map_err(|e| TrainError::input(path, format!("not a safetensors file: {e}")))?;
            let ids = state::f32_tensor(&st, "ids", path)?;
            let vals = state::f32_tensor(&st, "logits", path)?;
            let per = seq_len * k;
            if ids.len() != windows.len() * per || vals.len() != ids.len() {
                return Err(TrainError::input(
                    path,
                    "the cached teacher logits do not match these windows (remove the file)",
                ));
            }
            let rows = ids
                .chunks_exact(per)
                .zip(vals.chunks_exact(per))
                .map(|(i, v)| (i.iter().map(|&x| x as u32).collect(), v.to_vec()))
                .collect();
            return Ok(TopK { k, rows });
        }
        let mut rows = Vec::with_capacity(windows.len());
        for (i, w) in windows.iter().enumerate() {
            progress.note(&format!(
                "teacher top-{k}: window {}/{}",
                i + 1,
                windows.len()
            ));
            let l = teacher_logits(teacher, &w[..seq_len])?;
            rows.push(topk_rows(&l, vocab, k));
        }
        // Token ids are stored as f32: every id below 2^24 is exact.
        let n = windows.len();
        let ids: Vec<f32> = rows
            .iter()
            .flat_map(|r| r.0.iter().map(|&i| i as f32))
            .collect();
        let vals: Vec<f32> = rows.iter().flat_map(|r| r.1.iter().copied()).collect();
        let bytes = state::safetensors_bytes(
            &[
                ("ids".into(), vec![n, seq_len, k], ids),
                ("logits".into(), vec![n, seq_len, k], vals),
            ],
            None,
        )?;
        state::write_atomic(path, &bytes)?;
        Ok(TopK { k, rows })
    }
}

/// The student's logits of `ids` without keeping any autograd graph.
pub fn logits_no_graph(model: &Trainable, ids: &[u32]) -> Result<Tensor> {
    let mut x = model.embed(ids)?.detach();
    for i in 0..model.num_layers() {
        x = model.layer(i, &x)?.detach();
    }
    Ok(model.head(&x)?.detach())
}

/// Perplexity of `model` on `windows` (each window's tokens after the first scored).
pub fn perplexity(model: &Trainable, windows: &[Vec<u32>]) -> Result<f64> {
    let vocab = model.vocab_size();
    let (mut nll, mut n) = (0f64, 0usize);
    for w in windows {
        let l: Vec<f32> = logits_no_graph(model, &w[..w.len() - 1])?
            .flatten_all()?
            .to_vec1()?;
        for (row, &y) in l.chunks_exact(vocab).zip(&w[1..]) {
            nll += loss::logsumexp(row, 1.0) - row[y as usize] as f64;
            n += 1;
        }
    }
    Ok((nll / n.max(1) as f64).exp())
}

/// The run's identity, stored in every checkpoint: a resume must match it.
fn identity(cfg: &DistillConfig, n_train: usize) -> serde_json::Value {
    serde_json::json!({ "config": cfg, "train_windows": n_train })
}

/// Distil `teacher` into `student` on `windows` for `cfg.steps` steps, keeping the run's log
/// and checkpoints in `run_dir` (created if missing). With `resume`, continue from the run
/// directory's checkpoint. `stop` set (by Ctrl-C) makes the run checkpoint and return
/// [`TrainError::Interrupted`].
#[allow(clippy::too_many_arguments)]
pub fn distill(
    teacher: Option<&Model>,
    student: &mut Trainable,
    windows: &Windows,
    cfg: &DistillConfig,
    run_dir: &Path,
    resume: bool,
    stop: &AtomicBool,
    progress: &dyn Progress,
) -> Result<Summary> {
    cfg.validate()?;
    if cfg.loss.alpha > 0.0 && teacher.is_none() {
        return Err(TrainError::Options(
            "alpha > 0 needs a teacher (or pass --alpha 0 to train on the labels only)".into(),
        ));
    }
    let vocab = student.vocab_size();
    if let Some(t) = teacher {
        let tv = t.config().vocab_size();
        if tv != vocab {
            return Err(TrainError::Options(format!(
                "teacher and student have different vocabularies ({tv} and {vocab} tokens): \
                 distillation needs the teacher's tokenizer in the student"
            )));
        }
    }
    if let Some(max) = student.max_positions() {
        if cfg.seq_len > max {
            return Err(TrainError::Options(format!(
                "--seq-len {} exceeds the student's {max} positions",
                cfg.seq_len
            )));
        }
    }
    std::fs::create_dir_all(run_dir).map_err(|source| TrainError::File {
        path: run_dir.into(),
        source,
    })?;
    let n_train = windows.train.len();
    let id = identity(cfg, n_train);

    // Resume.
    let mut opt = OptimState::new(&student.params);
    let mut resumed_from = None;
    let log_path = run_dir.join("train.jsonl");
    if resume {
        let Some(ck) = state::latest(run_dir) else {
            return Err(TrainError::input(
                run_dir,
                "--resume: no checkpoint in the run directory",
            ));
        };
        let (o, run) = state::load(&ck, &student.params)?;
        if run != id {
            return Err(TrainError::input(
                &ck,
                "--resume: the checkpoint was made with other settings or text (same flags and \
                 text needed)",
            ));
        }
        opt = o;
        resumed_from = Some(opt.step);
        truncate_log(&log_path, opt.step)?;
        progress.note(&format!("resumed at step {}", opt.step));
    } else if std::fs::metadata(&log_path).is_ok_and(|m| m.len() > 0)
        || state::latest(run_dir).is_some()
    {
        return Err(TrainError::input(
            run_dir,
            "holds an earlier run (continue it with --resume, or remove it)",
        ));
    }

    // Teacher cache.
    let t_cache = Instant::now();
    let topk = match (cfg.teacher_topk, teacher) {
        (Some(k), Some(t)) if cfg.loss.alpha > 0.0 => Some(TopK::load_or_build(
            &run_dir.join(format!("teacher-top{k}.safetensors")),
            t,
            &windows.train,
            cfg.seq_len,
            k.min(vocab),
            vocab,
            progress,
        )?),
        _ => None,
    };
    let teacher_cache_seconds = t_cache.elapsed().as_secs_f64();

    let sched = Schedule {
        warmup: cfg.warmup,
        total: cfg.steps,
        min_ratio: cfg.min_lr_ratio,
    };
    let per_step = cfg.batch * cfg.grad_accum;
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|source| TrainError::File {
            path: log_path.clone(),
            source,
        })?;
    let start_step = opt.step;
    let t0 = Instant::now();
    let mut last = None;
    let mut last_ckpt = state::latest(run_dir);
    let tokens_per_step = per_step * cfg.seq_len;
    for step in start_step + 1..=cfg.steps {
        let ts = Instant::now();
        let mut grads = Grads::new(student.params.len());
        let mut parts = LossParts::default();
        let norm = tokens_per_step as f64;
        for wi in step_windows(cfg.seed, n_train, per_step, step) {
            let w = &windows.train[wi];
            let (ids, labels) = (&w[..cfg.seq_len], &w[1..]);
            let full;
            let t = match (&topk, teacher) {
                (Some(c), _) => Teacher::TopK {
                    ids: &c.rows[wi].0,
                    logits: &c.rows[wi].1,
                    k: c.k,
                },
                (None, Some(t)) if cfg.loss.alpha > 0.0 => {
                    full = teacher_logits(t, ids)?;
                    Teacher::Full(&full)
                }
                _ => Teacher::None,
            };
            let p = grad::backward_kd(student, ids, labels, t, &cfg.loss, norm, &mut grads)?;
            parts.add(&p);
        }
        let loss_value = parts.total(&cfg.loss) / norm;
        if !loss_value.is_finite() {
            return Err(TrainError::NonFinite {
                step,
                value: loss_value,
                last_good: last_ckpt,
            });
        }
        let grad_norm = optim::clip(&mut grads, cfg.clip);
        if !grad_norm.is_finite() {
            return Err(TrainError::NonFinite {
                step,
                value: grad_norm,
                last_good: last_ckpt,
            });
        }
        let lr = cfg.optim.lr * sched.factor(step);
        optim::step(&mut student.params, &grads, &mut opt, &cfg.optim, lr)?;
        let heldout_ppl = if cfg.eval_every > 0 && (step % cfg.eval_every == 0 || step == cfg.steps)
        {
            Some(perplexity(student, &windows.heldout)?)
        } else {
            None
        };
        let entry = StepLog {
            step,
            loss: loss_value,
            kd: parts.kd / norm,
            ce: parts.ce / norm,
            lr,
            grad_norm,
            tokens: step * tokens_per_step,
            tokens_per_s: tokens_per_step as f64 / ts.elapsed().as_secs_f64(),
            heldout_ppl,
        };
        let line = serde_json::to_string(&entry).expect("JSON");
        writeln!(log, "{line}").map_err(|source| TrainError::File {
            path: log_path.clone(),
            source,
        })?;
        progress.step(&entry, cfg.steps);
        last = Some(entry);
        let interrupted = stop.load(Ordering::SeqCst);
        if interrupted || (cfg.save_every > 0 && step % cfg.save_every == 0 && step < cfg.steps) {
            let p = state::save(run_dir, &student.params, &opt, &id)?;
            progress.note(&format!("checkpoint at step {step}"));
            last_ckpt = Some(p.clone());
            if interrupted {
                return Err(TrainError::Interrupted { step, path: p });
            }
        }
    }
    let seconds = t0.elapsed().as_secs_f64();
    let steps_this_run = cfg.steps - start_step;
    Ok(Summary {
        steps: cfg.steps,
        steps_this_run,
        resumed_from,
        seconds,
        tokens_per_s: (steps_this_run * tokens_per_step) as f64 / seconds.max(1e-9),
        last,
        teacher_cache_seconds,
    })
}

/// Keep only the log lines of steps ≤ `step` (a resumed run rewrites the rest).
pub(crate) fn truncate_log(path: &Path, step: usize) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let text = std::fs::read_to_string(path).map_err(|source| TrainError::File {
        path: path.into(),
        source,
    })?;
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<StepLog>(l)
                .map(|s| s.step <= step)
                .unwrap_or(false)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    state::write_atomic(path, kept.as_bytes())
}

/// The log of a run directory, step by step.
pub fn read_log(run_dir: &Path) -> Result<Vec<StepLog>> {
    let path = run_dir.join("train.jsonl");
    let text = std::fs::read_to_string(&path).map_err(|source| TrainError::File {
        path: path.clone(),
        source,
    })?;
    text.lines()
        .map(|l| {
            serde_json::from_str(l).map_err(|e| TrainError::input(&path, format!("bad line: {e}")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_a_permutation_per_epoch() {
        let n = 7;
        let mut seen: Vec<usize> = (1..=7).flat_map(|s| step_windows(3, n, 1, s)).collect();
        seen.sort();
        assert_eq!(seen, (0..7).collect::<Vec<_>>());
        // The same step always gets the same windows; another seed another order.
        assert_eq!(step_windows(3, n, 2, 5), step_windows(3, n, 2, 5));
        let a: Vec<usize> = (1..=7).flat_map(|s| step_windows(3, n, 1, s)).collect();
        let b: Vec<usize> = (1..=7).flat_map(|s| step_windows(4, n, 1, s)).collect();
        assert_ne!(a, b);
    }

    #[test]
    fn topk_keeps_the_largest() {
        let (ids, vals) = topk_rows(&[0.1, 3.0, -1.0, 2.0, 2.5, 0.0], 3, 2);
        assert_eq!(ids, vec![1, 0, 1, 0]);
        assert_eq!(vals, vec![3.0, 0.1, 2.5, 2.0]);
    }
}
