//! Quantization-aware training: the float model trained through the quantizer it will be stored
//! with, then quantized for real — the seed articles' QAT against PTQ comparison.
//!
//! Each selected weight keeps a float32 master copy θ; the model runs on `W = Q(θ)`, θ
//! quantized and dequantized by the very quantizer that writes the output (the same grid,
//! scales and rounding, recomputed from θ at every step), so the trained forward is the stored
//! model's. Rounding has no useful derivative; the straight-through estimator (Bengio, Léonard
//! & Courville 2013, "Estimating or Propagating Gradients Through Stochastic Neurons";
//! Jacob et al. 2018, "Quantization and Training of Neural Networks for Efficient
//! Integer-Arithmetic-Only Inference", §3) passes dL/dW to θ unchanged: the grid's range is
//! each group's own minimum and maximum, so nothing is clipped and no gradient is masked.
//! The target is the float model's next-token distribution (KL at temperature 1), as in
//! LLM-QAT (Liu et al. 2023), trained on the calibration documents only; the weights outside
//! the selection (embeddings, norms, head) stay frozen.

use std::path::{Path, PathBuf};

use shrink_formats::float::FloatType;
use shrink_io::Checkpoint;
use shrink_methods::per_tensor::{
    write_encoded, Encoded, Encoder, Job, QuantizerEncoder, WeightQuantizer,
};
use shrink_methods::pipeline::Progress;
use shrink_methods::report::Report;
use shrink_methods::select::Selection;
use shrink_models::LinearInfo;

use crate::error::{Result, TrainError};
use crate::forward::Trainable;
use crate::params::transpose;
use crate::reparam::Reparam;

/// One weight trained through its quantizer.
pub struct FakeQuant<'q> {
    /// HF weight name.
    pub name: String,
    index: usize,
    /// Output and input features.
    rows: usize,
    cols: usize,
    /// Stored [in, out] (GPT-2's Conv1D).
    conv1d: bool,
    /// The float32 master weight, in the checkpoint's layout.
    pub master: Vec<f32>,
    grid: &'q dyn WeightQuantizer,
}

impl FakeQuant<'_> {
    /// `Q(θ)`: the master quantized and dequantized by the grid, in the checkpoint's layout.
    pub fn quantized(&self) -> Result<Vec<f32>> {
        let w = if self.conv1d {
            transpose(&self.master, self.cols, self.rows)
        } else {
            self.master.clone()
        };
        let (dq, _) = self
            .grid
            .quantize(&self.name, &w, self.rows, self.cols)?
            .dequantize();
        Ok(if self.conv1d {
            transpose(&dq, self.rows, self.cols)
        } else {
            dq
        })
    }
}

impl Reparam for FakeQuant<'_> {
    fn name(&self) -> &str {
        &self.name
    }
    fn index(&self) -> usize {
        self.index
    }
    fn theta(&self) -> &[f32] {
        &self.master
    }
    fn set_theta(&mut self, theta: Vec<f32>) {
        self.master = theta;
    }
    fn weight(&self) -> Result<Vec<f32>> {
        self.quantized()
    }
    fn theta_grad(&self, gw: &[f32]) -> Result<Vec<f32>> {
        // The straight-through estimator: dL/dθ = dL/dQ(θ).
        Ok(gw.to_vec())
    }
}

/// The float model of `ckpt` ready for quantization-aware training towards `grid`: the model,
/// and its weights that `selection` names as [`FakeQuant`]s (masters = the input's weights).
pub fn load<'q>(
    ckpt: &Checkpoint,
    selection: &Selection,
    grid: &'q dyn WeightQuantizer,
) -> Result<(Trainable, Vec<FakeQuant<'q>>)> {
    if let Checkpoint::Hf(h) = ckpt {
        if h.quantization_config().is_some() {
            return Err(TrainError::input(
                ckpt.path(),
                "the model is already quantized: QAT trains a float model towards a grid \
                 (give the float model; to train a quantized model's scales use shrink finetune)",
            ));
        }
    }
    let model = Trainable::load(ckpt)?;
    let selected: Vec<LinearInfo> = selection.resolve(model.arch())?;
    let mut out = Vec::with_capacity(selected.len());
    for l in selected {
        grid.validate(&l.weight, l.out_features, l.in_features)?;
        let index = model
            .params
            .names()
            .iter()
            .position(|n| *n == l.weight)
            .ok_or_else(|| {
                TrainError::input(ckpt.path(), format!("no weight {} to train", l.weight))
            })?;
        out.push(FakeQuant {
            master: model.params.values(index)?,
            name: l.weight,
            index,
            rows: l.out_features,
            cols: l.in_features,
            conv1d: l.conv1d,
            grid,
        });
    }
    Ok((model, out))
}

/// The trained masters written back into `student`'s weights (so that it holds the float
/// model QAT produced, ready to be quantized for real).
pub fn masters_into(student: &mut Trainable, trained: &[FakeQuant]) -> Result<()> {
    for t in trained {
        student.params.set_values(t.index, t.master.clone())?;
    }
    Ok(())
}

/// The share of the trained weights whose quantized value differs from what plain rounding of
/// the input (`ckpt`) gives: how far training moved the model on the grid.
pub fn changed_from_ptq(ckpt: &Checkpoint, trained: &[FakeQuant]) -> Result<f64> {
    let arch = shrink_models::Architecture::from_checkpoint(ckpt)?;
    let w = arch.weight_loader(ckpt);
    let shapes: std::collections::HashMap<String, Vec<usize>> =
        arch.weight_shapes().into_iter().collect();
    let (mut changed, mut total) = (0usize, 0usize);
    for t in trained {
        let w0: Vec<f32> = arch
            .read_weight(&w, &t.name, &shapes[&t.name])?
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1()?;
        let ptq = FakeQuant {
            master: w0,
            name: t.name.clone(),
            ..*t
        };
        let (a, b) = (ptq.quantized()?, t.quantized()?);
        changed += a.iter().zip(&b).filter(|(x, y)| x != y).count();
        total += a.len();
    }
    Ok(changed as f64 / total.max(1) as f64)
}

/// The per-tensor encoder that stores a trained model (QAT's, a merged QLoRA's): the grid,
/// its report named `LABEL-…` with the training's `record`, and `files` (the log, the chart)
/// beside the weights, all written before the output is committed.
pub struct TrainedEncoder {
    /// The grid, storing as a plain quantize would.
    pub inner: QuantizerEncoder,
    /// What trained the model (`qat`, `qlora`): the method's prefix and the record's key.
    pub label: String,
    /// The model training started from (the input the report names).
    pub input: std::path::PathBuf,
    /// What training did, under the report's `LABEL` key.
    pub record: serde_json::Value,
    /// Files written beside the weights (name, bytes).
    pub files: Vec<(String, Vec<u8>)>,
}

impl Encoder for TrainedEncoder {
    fn name(&self) -> String {
        format!("{}-{}", self.label, self.inner.name())
    }
    fn validate(&self, l: &LinearInfo) -> shrink_methods::Result<()> {
        self.inner.validate(l)
    }
    fn encode(
        &self,
        l: &LinearInfo,
        read: &mut dyn FnMut() -> shrink_methods::Result<Vec<f32>>,
        source: Option<shrink_io::quantized::Quantized>,
    ) -> shrink_methods::Result<Encoded> {
        self.inner.encode(l, read, source)
    }
    fn config(&self, ignore: &[String], dense_dtype: &str) -> serde_json::Value {
        self.inner.config(ignore, dense_dtype)
    }
    fn extra_files(
        &self,
        config: &serde_json::Value,
    ) -> shrink_methods::Result<Vec<(String, Vec<u8>)>> {
        let mut f = self.inner.extra_files(config)?;
        f.extend(self.files.iter().cloned());
        Ok(f)
    }
    fn report(&self, r: &mut Report) {
        self.inner.report(r);
        r.input = self.input.clone();
        r.extra.insert(self.label.clone(), self.record.clone());
    }
}

/// A directory removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Store the QAT-trained model: `student`'s weights with the masters of `trained` in place,
/// quantized by `grid` (the one trained towards) into `output` in the layout `shrink quantize`
/// writes for it, with `record` (the report's `qat` key) and `files` beside the weights.
/// `input` is the float checkpoint QAT began from.
#[allow(clippy::too_many_arguments)]
pub fn write(
    input: &Checkpoint,
    mut student: Trainable,
    trained: Vec<FakeQuant>,
    grid: Box<dyn WeightQuantizer>,
    selection: &Selection,
    (record, files): (serde_json::Value, Vec<(String, Vec<u8>)>),
    output: &Path,
    progress: &dyn Progress,
) -> Result<Report> {
    masters_into(&mut student, &trained)?;
    drop(trained);
    store(
        input,
        student,
        grid,
        selection,
        ("qat", record, files),
        output,
        progress,
    )
}

/// Store the weights `student` holds, the `selection` quantized by `grid`, into `output` in
/// the layout `shrink quantize` writes for it; the report is named `LABEL-…` and holds `record`
/// under `LABEL`, `files` go beside the weights. The float model passes through a hidden
/// scratch directory beside `output`, removed afterwards; `output` is committed whole or not at
/// all. `input` is the checkpoint training began from (its config and tokenizer are copied).
pub fn store(
    input: &Checkpoint,
    student: Trainable,
    grid: Box<dyn WeightQuantizer>,
    selection: &Selection,
    (label, record, files): (&str, serde_json::Value, Vec<(String, Vec<u8>)>),
    output: &Path,
    progress: &dyn Progress,
) -> Result<Report> {
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    let parent = output.parent().filter(|p| !p.as_os_str().is_empty());
    let scratch = Scratch(
        parent
            .unwrap_or(Path::new("."))
            .join(format!(".{name}.qat-float-{}", std::process::id())),
    );
    {
        let o = shrink_io::OutputDir::create(&scratch.0, &[input.path()])?;
        shrink_methods::output::write_config_and_tokenizer(input, None, &o, "float32", None)?;
        student
            .params
            .write_safetensors(&o.file("model.safetensors"))?;
        o.commit()?;
    }
    drop(student);
    let enc = TrainedEncoder {
        inner: QuantizerEncoder {
            method: grid,
            dense_dtype: FloatType::F32,
        },
        label: label.to_string(),
        input: input.path().to_path_buf(),
        record,
        files,
    };
    let float = Checkpoint::open(&scratch.0)?;
    let job = Job {
        ckpt: &float,
        output,
        selection,
        dense_dtype: FloatType::F32,
        progress,
    };
    Ok(write_encoded(&job, &enc)?)
}
