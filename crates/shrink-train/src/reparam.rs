//! Training through a reparameterisation: some of a model's weights are functions `W = f(θ)` of
//! other parameters θ, and only θ trains. The engine's backward ([`crate::grad`]) gives dL/dW;
//! each [`Reparam`] turns it into dL/dθ by the chain rule, Adam updates θ, and the weights are
//! rebuilt from θ before the next step. One loop serves every method of this kind:
//! - [`crate::finetune`]: θ = a quantized weight's scales, `W = s·(q − z)` (EfficientQAT's
//!   E2E-QP);
//! - [`crate::qat`]: θ = a float master weight, `W = Q(θ)` fake-quantized, dL/dθ = dL/dW (the
//!   straight-through estimator);
//! - [`crate::lora`]: θ = a LoRA pair (A, B), `W = W₀ + (α/r)·B·A` over a frozen (quantized)
//!   `W₀` (QLoRA).
//!
//! A run need not use Adam on per-weight parameters: [`Trained`] is what the loop asks of a
//! run (its state for the checkpoint, the weights it gives, dL/dθ, one update), and [`Adam`]
//! is that for a set of [`Reparam`]s; [`crate::rotation`] trains orthogonal matrices shared by
//! many weights with a Cayley step instead.
//!
//! The target is the float teacher's next-token distribution (KL at temperature 1, per token),
//! or the text itself when there is no teacher. Resumable: θ, its Adam moments and the step are
//! checkpointed atomically into `state.safetensors` in the run directory.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use shrink_models::Model;

use crate::distill::{step_windows, Progress, StepLog, Summary, TopK, Windows};
use crate::error::{Result, TrainError};
use crate::forward::Trainable;
use crate::grad::{self, Grads};
use crate::loss::{Divergence, KdLoss, LossParts, Teacher};
use crate::optim::{adamw, AdamW, Schedule};
use crate::state;

/// A weight trained through parameters θ.
pub trait Reparam: Send + Sync {
    /// HF name of the weight (`….weight`).
    fn name(&self) -> &str;
    /// Its index in the model's [`crate::Params`].
    fn index(&self) -> usize;
    /// The trained parameters, flattened.
    fn theta(&self) -> &[f32];
    /// Replace the trained parameters (same length).
    fn set_theta(&mut self, theta: Vec<f32>);
    /// The weight θ gives, row-major in the model's layout.
    fn weight(&self) -> Result<Vec<f32>>;
    /// dL/dθ from dL/dW.
    fn theta_grad(&self, gw: &[f32]) -> Result<Vec<f32>>;
}

/// The settings of a run that trains through a reparameterisation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FinetuneConfig {
    /// Optimiser steps.
    pub steps: usize,
    /// Tokens per window.
    pub seq_len: usize,
    /// Windows per step.
    pub batch: usize,
    /// Peak learning rate of θ.
    pub lr: f64,
    /// Warmup steps.
    pub warmup: usize,
    /// Final learning rate as a share of the peak (cosine decay).
    pub min_lr_ratio: f64,
    /// Clip θ's global gradient norm to this (0: no clipping).
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
}

/// The loss against a teacher (KL at T 1) or, without one, the text (cross-entropy).
fn loss_of(teacher: Option<&Model>) -> KdLoss {
    KdLoss {
        temperature: 1.0,
        alpha: if teacher.is_some() { 1.0 } else { 0.0 },
        divergence: Divergence::Forward,
    }
}

/// Rebuild every reparameterised weight of `student` from its θ.
pub fn rebuild<R: Reparam>(student: &mut Trainable, trained: &[R]) -> Result<()> {
    for r in trained {
        student.params.set_values(r.index(), r.weight()?)?;
    }
    Ok(())
}

/// dL/dθ of every trained weight from the summed weight gradients, each weight's gradient
/// freed as soon as it is used (the two sets are never whole in memory together).
fn theta_grads<R: Reparam>(trained: &[R], grads: &mut Grads) -> Result<Vec<Vec<f32>>> {
    let out = trained
        .iter()
        .map(|r| {
            let gw = grads.sums[r.index()]
                .take()
                .ok_or_else(|| TrainError::Options(format!("no gradient reached {}", r.name())))?;
            r.theta_grad(&gw)
        })
        .collect();
    *grads = Grads::default();
    out
}

/// The loss per token of `student` on `window` (`seq_len + 1` tokens) — KL to `teacher`'s
/// logits (or their top-`topk`) at temperature 1, or the cross-entropy with the next tokens
/// without a teacher — and its gradient with respect to every θ of `trained`.
pub fn gradients<R: Reparam>(
    teacher: Option<&Model>,
    student: &mut Trainable,
    trained: &[R],
    window: &[u32],
    seq_len: usize,
    topk: Option<usize>,
) -> Result<(Vec<Vec<f32>>, f64)> {
    let (mut grads, loss) = weight_grads(teacher, student, window, seq_len, topk)?;
    Ok((theta_grads(trained, &mut grads)?, loss))
}

/// [`gradients`] for any [`Trained`] run.
pub fn gradients_of(
    teacher: Option<&Model>,
    student: &mut Trainable,
    trained: &dyn Trained,
    window: &[u32],
    seq_len: usize,
    topk: Option<usize>,
) -> Result<(Vec<Vec<f32>>, f64)> {
    let (mut grads, loss) = weight_grads(teacher, student, window, seq_len, topk)?;
    Ok((trained.theta_grads(&mut grads)?, loss))
}

/// The loss per token on one window and every weight's gradient.
fn weight_grads(
    teacher: Option<&Model>,
    student: &mut Trainable,
    window: &[u32],
    seq_len: usize,
    topk: Option<usize>,
) -> Result<(Grads, f64)> {
    let vocab = student.vocab_size();
    let ids = &window[..seq_len];
    let logits;
    let (tids, tvals, k);
    let t = match (teacher, topk) {
        (None, _) => Teacher::None,
        (Some(m), Some(kk)) => {
            logits = crate::distill::teacher_logits(m, ids)?;
            k = kk.min(vocab);
            (tids, tvals) = crate::distill::topk_rows(&logits, vocab, k);
            Teacher::TopK {
                ids: &tids,
                logits: &tvals,
                k,
            }
        }
        (Some(m), None) => {
            logits = crate::distill::teacher_logits(m, ids)?;
            Teacher::Full(&logits)
        }
    };
    let loss = loss_of(teacher);
    let mut grads = Grads::new(student.params.len());
    let norm = seq_len as f64;
    let p = grad::backward_kd(student, ids, &window[1..], t, &loss, norm, &mut grads)?;
    Ok((grads, p.total(&loss) / norm))
}

/// What a run's checkpoint identifies it by: the method, the settings and the training windows.
fn identity(method: &str, cfg: &FinetuneConfig, n_train: usize) -> serde_json::Value {
    serde_json::json!({ "method": method, "finetune": cfg, "train_windows": n_train })
}

/// The checkpoint's file in `run_dir`.
pub fn state_path(run_dir: &Path) -> PathBuf {
    run_dir.join("state.safetensors")
}

/// What the training loop asks of a run: the parameters it trains (with any optimiser state)
/// for the checkpoint, the weights they give, dL/dθ from the weights' gradients, and one update.
pub trait Trained {
    /// Every vector a checkpoint keeps (θ and optimiser state), each under a unique key.
    fn state(&self) -> Vec<(String, Cow<'_, [f32]>)>;
    /// Restore what [`Trained::state`] saved: `get(key)` reads one vector; `path` names the
    /// checkpoint in errors.
    fn restore(&mut self, get: &dyn Fn(&str) -> Result<Vec<f32>>, path: &Path) -> Result<()>;
    /// Write the weights θ gives into `student`.
    fn rebuild(&self, student: &mut Trainable) -> Result<()>;
    /// dL/dθ from the summed weight gradients (which are consumed).
    fn theta_grads(&self, grads: &mut Grads) -> Result<Vec<Vec<f32>>>;
    /// One optimiser step at learning rate `lr` with the gradients `gs` (to be scaled by `clip`).
    fn update(&mut self, gs: &[Vec<f32>], clip: f32, lr: f64, step: usize) -> Result<()>;
}

/// A set of [`Reparam`]s trained by Adam (no weight decay: neither a scale nor an adapter has
/// a reason to shrink, and a master weight's decay would pull it off the grid it trains
/// towards).
pub struct Adam<'a, R> {
    /// The weights trained.
    pub trained: &'a mut [R],
    m: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}

impl<'a, R: Reparam> Adam<'a, R> {
    /// Adam with zero moments over `trained`.
    pub fn new(trained: &'a mut [R]) -> Self {
        let m: Vec<Vec<f32>> = trained.iter().map(|r| vec![0.0; r.theta().len()]).collect();
        Adam {
            v: m.clone(),
            m,
            trained,
        }
    }
}

impl<R: Reparam> Trained for Adam<'_, R> {
    fn state(&self) -> Vec<(String, Cow<'_, [f32]>)> {
        let mut t = Vec::new();
        for (i, r) in self.trained.iter().enumerate() {
            t.push((format!("{}.theta", r.name()), Cow::Borrowed(r.theta())));
            t.push((format!("{}.m", r.name()), Cow::Borrowed(&self.m[i][..])));
            t.push((format!("{}.v", r.name()), Cow::Borrowed(&self.v[i][..])));
        }
        t
    }

    fn restore(&mut self, get: &dyn Fn(&str) -> Result<Vec<f32>>, path: &Path) -> Result<()> {
        for (i, r) in self.trained.iter_mut().enumerate() {
            let key = |k: &str| format!("{}.{k}", r.name());
            let (th, m, v) = (get(&key("theta"))?, get(&key("m"))?, get(&key("v"))?);
            let n = r.theta().len();
            if th.len() != n || m.len() != n || v.len() != n {
                return Err(TrainError::input(
                    path,
                    format!("{}: wrong sizes", r.name()),
                ));
            }
            r.set_theta(th);
            (self.m[i], self.v[i]) = (m, v);
        }
        Ok(())
    }

    fn rebuild(&self, student: &mut Trainable) -> Result<()> {
        rebuild(student, self.trained)
    }

    fn theta_grads(&self, grads: &mut Grads) -> Result<Vec<Vec<f32>>> {
        theta_grads(self.trained, grads)
    }

    fn update(&mut self, gs: &[Vec<f32>], clip: f32, lr: f64, step: usize) -> Result<()> {
        let opt = AdamW::default();
        for (i, (r, g)) in self.trained.iter_mut().zip(gs).enumerate() {
            let th = adamw(
                r.theta(),
                (&mut self.m[i], &mut self.v[i]),
                (g, clip),
                step,
                &opt,
                (lr, 0.0),
            );
            r.set_theta(th);
        }
        Ok(())
    }
}

/// Save the run's state (atomically).
fn save(
    run_dir: &Path,
    trained: &dyn Trained,
    step: usize,
    id: &serde_json::Value,
) -> Result<PathBuf> {
    let t: Vec<(String, Vec<usize>, Vec<f32>)> = trained
        .state()
        .into_iter()
        .map(|(k, v)| (k, vec![v.len()], v.into_owned()))
        .collect();
    let meta = HashMap::from([
        ("step".to_string(), step.to_string()),
        ("run".to_string(), id.to_string()),
    ]);
    let path = state_path(run_dir);
    state::write_atomic(&path, &state::safetensors_bytes(&t, Some(meta))?)?;
    Ok(path)
}

/// Load a checkpoint written by [`save`]; returns its step.
fn restore(path: &Path, trained: &mut dyn Trained, id: &serde_json::Value) -> Result<usize> {
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
    trained.restore(&|k: &str| state::f32_tensor(&st, k, path), path)?;
    Ok(step)
}

/// Train θ of `trained` (weights of `student`) for `cfg.steps` steps on `windows.train`,
/// against `teacher` (KL at T 1) or, without one, the text; `method` names the run in its
/// checkpoint. Log and checkpoints in `run_dir`. With `resume`, continue from its checkpoint;
/// `stop` set (Ctrl-C) checkpoints and returns [`TrainError::Interrupted`].
#[allow(clippy::too_many_arguments)]
pub fn train<R: Reparam>(
    method: &str,
    teacher: Option<&Model>,
    student: &mut Trainable,
    trained: &mut [R],
    windows: &Windows,
    cfg: &FinetuneConfig,
    run_dir: &Path,
    resume: bool,
    stop: &AtomicBool,
    progress: &dyn Progress,
) -> Result<Summary> {
    let mut adam = Adam::new(trained);
    train_with(
        method, teacher, student, &mut adam, windows, cfg, run_dir, resume, stop, progress,
    )
}

/// [`train`] for any [`Trained`] run (its own parameters and update).
#[allow(clippy::too_many_arguments)]
pub fn train_with(
    method: &str,
    teacher: Option<&Model>,
    student: &mut Trainable,
    trained: &mut dyn Trained,
    windows: &Windows,
    cfg: &FinetuneConfig,
    run_dir: &Path,
    resume: bool,
    stop: &AtomicBool,
    progress: &dyn Progress,
) -> Result<Summary> {
    cfg.validate()?;
    let vocab = student.vocab_size();
    if let Some(t) = teacher {
        if t.config().vocab_size() != vocab {
            return Err(TrainError::Options(format!(
                "teacher and trained model have different vocabularies ({} and {vocab} tokens)",
                t.config().vocab_size()
            )));
        }
    } else if cfg.teacher_topk.is_some() {
        return Err(TrainError::Options("--teacher-topk needs a teacher".into()));
    }
    std::fs::create_dir_all(run_dir).map_err(|source| TrainError::File {
        path: run_dir.into(),
        source,
    })?;
    let n_train = windows.train.len();
    let id = identity(method, cfg, n_train);
    let ck = state_path(run_dir);
    let log_path = run_dir.join("train.jsonl");
    let mut start = 0;
    if resume {
        if !ck.is_file() {
            return Err(TrainError::input(
                run_dir,
                "--resume: no checkpoint in the run directory",
            ));
        }
        start = restore(&ck, trained, &id)?;
        crate::distill::truncate_log(&log_path, start)?;
        progress.note(&format!("resumed at step {start}"));
    } else if ck.exists() || std::fs::metadata(&log_path).is_ok_and(|m| m.len() > 0) {
        return Err(TrainError::input(
            run_dir,
            "holds an earlier run (continue it with --resume, or remove it)",
        ));
    }
    trained.rebuild(student)?;
    let t_cache = Instant::now();
    let topk = match (teacher, cfg.teacher_topk) {
        (Some(t), Some(k)) => Some(TopK::load_or_build(
            &run_dir.join(format!("teacher-top{}.safetensors", k.min(vocab))),
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
    let loss = loss_of(teacher);
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
            let t = match (&topk, teacher) {
                (Some(c), _) => Teacher::TopK {
                    ids: &c.rows[wi].0,
                    logits: &c.rows[wi].1,
                    k: c.k,
                },
                (None, Some(m)) => {
                    full = crate::distill::teacher_logits(m, &w[..cfg.seq_len])?;
                    Teacher::Full(&full)
                }
                (None, None) => Teacher::None,
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
        // θ's gradients, their global norm, clipping.
        let gs = trained.theta_grads(&mut grads)?;
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
        trained.update(&gs, clip, lr, step)?;
        drop(gs);
        trained.rebuild(student)?;
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
            let p = save(run_dir, trained, step, &id)?;
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
