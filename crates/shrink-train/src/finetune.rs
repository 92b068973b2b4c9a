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
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use rayon::prelude::*;
use shrink_formats::gptq_layout::GptqParts;
use shrink_io::Checkpoint;
use shrink_models::Model;

use crate::distill::{Progress, Summary, Windows};
use crate::error::{Result, TrainError};
use crate::forward::Trainable;
use crate::params::Params;
pub use crate::reparam::FinetuneConfig;
use crate::reparam::{self, Reparam};

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
        QuantWeight {
            name,
            index,
            scales: parts.scales.clone(),
            centered,
            parts,
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

impl Reparam for QuantWeight {
    fn name(&self) -> &str {
        &self.name
    }
    fn index(&self) -> usize {
        self.index
    }
    fn theta(&self) -> &[f32] {
        &self.scales
    }
    fn set_theta(&mut self, theta: Vec<f32>) {
        self.scales = theta;
    }
    fn weight(&self) -> Result<Vec<f32>> {
        Ok(QuantWeight::weight(self))
    }
    fn theta_grad(&self, gw: &[f32]) -> Result<Vec<f32>> {
        Ok(self.scale_grad(gw))
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
    reparam::rebuild(student, quant)
}

/// The loss (KL to `teacher`'s logits, or its top-`topk`, at temperature 1, per token) of
/// `student` on `window` (`seq_len + 1` tokens) and its gradient with respect to every scale of
/// `quant`.
pub fn scale_gradients(
    teacher: &Model,
    student: &mut Trainable,
    quant: &[QuantWeight],
    window: &[u32],
    seq_len: usize,
    topk: Option<usize>,
) -> Result<(Vec<Vec<f32>>, f64)> {
    reparam::gradients(Some(teacher), student, quant, window, seq_len, topk)
}

/// Train the scales of `quant` (in `student`) against `teacher` on `windows.train` for
/// `cfg.steps` steps ([`reparam::train`]); log and checkpoints in `run_dir`.
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
    reparam::train(
        "e2e-qp",
        Some(teacher),
        student,
        quant,
        windows,
        cfg,
        run_dir,
        resume,
        stop,
        progress,
    )
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
