//! The one layer-by-layer driver of every calibrated method (GPTQ, AWQ, imatrix; Wanda and
//! SparseGPT plug in as one more [`LayerStep`]), over any architecture shrink-models opens as a
//! [`Sequential`] stack — and the streaming writer that writes a checkpoint as the layers
//! complete.
//!
//! GPTQ's sequential scheme (Frantar et al. 2022, `llama.py`): the calibration samples are
//! embedded once; each block is loaded, run on the samples with hooks that show the step every
//! linear's input ([`LayerStep::observe`]), compressed ([`LayerStep::compress`]), and run again
//! with its compressed weights so the next block sees what the compressed model computes. Only
//! one block's weights and the samples' activations are resident.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use candle_core::Tensor;
use shrink_formats::float::{self, FloatType};
use shrink_io::quantized::StoredTensor;
use shrink_io::{OutputDir, TensorHeader};
use shrink_models::layerwise::{Block, Sequential};
use shrink_models::{Architecture, LinearInfo, WeightLoader};

use crate::error::{MethodError, Result};
use crate::resume::LayerState;

/// Shows the progress of long work (the binary draws a bar; a library user may ignore it).
pub trait Progress: Sync {
    /// Work of `len` steps named `what` begins.
    fn start(&self, what: &str, len: u64);
    /// `n` more steps are done.
    fn inc(&self, n: u64);
    /// The work is done.
    fn finish(&self);
}

/// Progress that shows nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Silent;

impl Progress for Silent {
    fn start(&self, _what: &str, _len: u64) {}
    fn inc(&self, _n: u64) {}
    fn finish(&self) {}
}

/// The tensors of compressed blocks waiting to be written, by name.
pub type Stored = HashMap<String, StoredTensor>;

/// Whether a step changes the block (whose outputs are then recomputed) and whether it wants
/// the block's outputs before the change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    /// Only observes: the observed run's outputs feed the next block (imatrix).
    Observe,
    /// Compresses the block; with `compare`, [`LayerStep::after`] gets the outputs before and
    /// after compression.
    Compress {
        /// Keep the pre-compression outputs for [`LayerStep::after`].
        compare: bool,
    },
}

/// What a layer-by-layer method does to each block.
pub trait LayerStep {
    /// Whether the step changes blocks.
    fn kind(&self) -> StepKind;
    /// Sees linear `linear`'s input `x` [t, in] of sample `sample` while the block runs on
    /// the samples (linears sharing an input are each shown it).
    fn observe(&mut self, sample: usize, linear: &str, x: &Tensor) -> shrink_models::Result<()>;
    /// Compress block `l` of `seq` after it was observed; tensors to write go in `stored`.
    fn compress(
        &mut self,
        seq: &Sequential,
        l: usize,
        block: &mut dyn Block,
        stored: &mut Stored,
    ) -> Result<()>;
    /// The block's outputs on the samples before and after compression (with
    /// `StepKind::Compress { compare: true }`).
    fn after(&mut self, _l: usize, _before: &[Tensor], _after: &[Tensor]) -> Result<()> {
        Ok(())
    }
    /// Whether the step also observes the float model (GPTAQ's asymmetric calibration): the
    /// driver then carries the uncompressed model's activations beside the compressed one's.
    fn wants_float(&self) -> bool {
        false
    }
    /// Sees linear `linear`'s input `x` of sample `sample` in the float model, just before the
    /// same sample's input in the compressed model is shown to [`LayerStep::observe`].
    fn observe_float(
        &mut self,
        _sample: usize,
        _linear: &str,
        _x: &Tensor,
    ) -> shrink_models::Result<()> {
        Ok(())
    }
    /// What the step keeps from finished block `l` beyond the tensors it stored (report
    /// figures, statistics), saved with the block so that a resumed run can restore it.
    fn carry(&self, _l: usize) -> Result<serde_json::Value> {
        Ok(serde_json::Value::Null)
    }
    /// Take back what [`LayerStep::carry`] returned after block `l`; a resumed run calls it
    /// for every kept block, in order, instead of running them.
    fn restore(&mut self, _l: usize, _carried: serde_json::Value) -> Result<()> {
        Ok(())
    }
}

/// The layer loop's position: the next block's inputs, and the finished layers kept for
/// `--resume` ([`crate::resume`]) when the run has a run directory.
pub struct Layers<'a> {
    seq: &'a Sequential<'a>,
    xs: Vec<Tensor>,
    fs: Option<Vec<Tensor>>,
    state: Option<LayerState>,
}

impl<'a> Layers<'a> {
    /// Start the loop over `seq` on the calibration `samples` for `step`: from the next block's
    /// inputs `state` kept after the layers it holds finished, else from the embedded samples.
    pub fn start(
        seq: &'a Sequential<'a>,
        samples: &[Vec<u32>],
        step: &dyn LayerStep,
        state: Option<LayerState>,
    ) -> Result<Self> {
        let (xs, fs) = match &state {
            Some(s) if s.resumed() > seq.num_layers() => {
                return Err(MethodError::Options(format!(
                    "{}: holds {} finished layers, more than the model's {}",
                    s.dir().display(),
                    s.resumed(),
                    seq.num_layers()
                )));
            }
            Some(s) if s.resumed() > 0 => s.activations()?,
            _ => {
                let xs = seq.embed(samples)?;
                let fs = step.wants_float().then(|| xs.clone());
                (xs, fs)
            }
        };
        Ok(Layers { seq, xs, fs, state })
    }

    /// Block `l` (the loop's next) through `step`, its output tensors added to `stored`: read
    /// back, with what the step carried from it, when an earlier run finished it; else
    /// computed ([`advance`]) and kept.
    pub fn next(&mut self, l: usize, step: &mut dyn LayerStep, stored: &mut Stored) -> Result<()> {
        let Some(s) = self.state.as_mut() else {
            return advance(self.seq, l, &mut self.xs, self.fs.as_mut(), step, stored);
        };
        if l < s.resumed() {
            return step.restore(l, s.load(l, stored)?);
        }
        let before: HashSet<String> = stored.keys().cloned().collect();
        advance(self.seq, l, &mut self.xs, self.fs.as_mut(), step, stored)?;
        let new: Vec<&StoredTensor> = stored
            .iter()
            .filter(|(k, _)| !before.contains(*k))
            .map(|(_, t)| t)
            .collect();
        let n = self.seq.num_layers();
        s.save(l, n, &new, &step.carry(l)?, &self.xs, self.fs.as_deref())
    }

    /// The kept state, to [`LayerState::finish`] once the output is committed.
    pub fn into_state(self) -> Option<LayerState> {
        self.state
    }
}

/// Take block `l` of `seq` through `step` on the block inputs `xs`, which become its outputs.
/// With `fs` (the float model's block inputs, for a step that [`LayerStep::wants_float`]),
/// each sample runs through the uncompressed block on `fs` then on `xs`, and `fs` becomes the
/// float block's outputs.
pub fn advance(
    seq: &Sequential,
    l: usize,
    xs: &mut Vec<Tensor>,
    fs: Option<&mut Vec<Tensor>>,
    step: &mut dyn LayerStep,
    stored: &mut Stored,
) -> Result<()> {
    let mut block = seq.layer(l)?;
    let kind = step.kind();
    let outputs = match fs {
        Some(fs) => {
            let (mut outs, mut fouts) = (Vec::with_capacity(xs.len()), Vec::new());
            for (i, (x, f)) in xs.iter().zip(fs.iter()).enumerate() {
                let mut tap = |_: usize, name: &str, t: &Tensor| step.observe_float(i, name, t);
                fouts.extend(seq.run(block.as_ref(), std::slice::from_ref(f), Some(&mut tap))?);
                let mut tap = |_: usize, name: &str, t: &Tensor| step.observe(i, name, t);
                outs.extend(seq.run(block.as_ref(), std::slice::from_ref(x), Some(&mut tap))?);
            }
            *fs = fouts;
            outs
        }
        None => {
            let mut tap = |i: usize, name: &str, t: &Tensor| step.observe(i, name, t);
            seq.run(block.as_ref(), xs, Some(&mut tap))?
        }
    };
    match kind {
        StepKind::Observe => {
            step.compress(seq, l, block.as_mut(), stored)?;
            *xs = outputs;
        }
        StepKind::Compress { compare } => {
            let before = compare.then_some(outputs);
            step.compress(seq, l, block.as_mut(), stored)?;
            let next = seq.run(block.as_ref(), xs, None)?;
            if let Some(b) = before {
                step.after(l, &b, &next)?;
            }
            *xs = next;
        }
    }
    check_finite(l, xs)
}

/// The next block's inputs must be finite: a NaN or infinity here (the activations overflowed,
/// or a compressed block went wrong) is named with its layer and sample, not carried on into
/// every later layer's statistics.
fn check_finite(l: usize, xs: &[Tensor]) -> Result<()> {
    for (i, x) in xs.iter().enumerate() {
        if let Some(what) =
            shrink_models::with_f32(x, |v| shrink_io::checkpoint::non_finite(v, x.dims()))?
        {
            return Err(MethodError::Numerical {
                layer: format!("layer {l}"),
                what: format!(
                    "its outputs on calibration sample {i} hold {what}: the activations \
                     overflowed or a weight is not finite"
                ),
            });
        }
    }
    Ok(())
}

/// Run `step` over every block of `seq` from the embedded `samples`, with nothing written
/// (statistics such as the importance matrix).
///
/// With `state`, finished layers are kept there ([`LayerState::save`]) and those it already
/// holds are not run again; the state is returned, to [`LayerState::finish`] once the result is
/// written.
pub fn observe_all(
    seq: &Sequential,
    samples: &[Vec<u32>],
    step: &mut dyn LayerStep,
    state: Option<LayerState>,
    progress: &dyn Progress,
) -> Result<Option<LayerState>> {
    let mut layers = Layers::start(seq, samples, step, state)?;
    let mut stored = Stored::new();
    progress.start("layers", seq.num_layers() as u64);
    for l in 0..seq.num_layers() {
        layers.next(l, step, &mut stored)?;
        stored.clear();
        progress.inc(1);
    }
    progress.finish();
    Ok(layers.into_state())
}

/// Refuse a selection a calibrated `method` cannot compress — a weight outside the blocks, or
/// one `validate` rejects — before anything is read or written.
pub fn check_selected(
    model: &Path,
    seq: &Sequential,
    method: &str,
    selected: &[LinearInfo],
    mut validate: impl FnMut(&LinearInfo) -> Result<()>,
) -> Result<()> {
    if selected.is_empty() {
        return Err(MethodError::Options(format!(
            "{}: the selection names no weight for {method}",
            model.display()
        )));
    }
    for l in selected {
        if seq.layer_of(&l.weight).is_none() {
            return Err(MethodError::Options(format!(
                "{}: {method} compresses the linears inside the {} blocks; {} is outside them",
                model.display(),
                seq.stack().family(),
                l.weight
            )));
        }
        validate(l)?;
    }
    Ok(())
}

/// The output file's tensors in write order, and what they hold.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Headers in load order, each selected linear's layout tensors in place of its weight.
    pub header: Vec<TensorHeader>,
    /// For each header entry, the index into the model's weight shapes it comes from.
    pub origin: Vec<usize>,
    /// Elements of the compressed weights.
    pub q_params: u64,
    /// Bytes of their layout tensors.
    pub q_bytes: u64,
    /// Bytes of the tensors stored dense.
    pub dense_bytes: u64,
    /// Tensors encoded before the blocks run (the layouts of weights outside them, such as a
    /// quantized token table), written as they are.
    pub encoded: Stored,
}

/// Plan the output: each selected linear (by weight name in `by_name`) stored as the tensors
/// `blank(module, rows, cols)` returns — a layout whose sizes depend on the shape only — and
/// every other weight dense as `dense_dtype`.
pub fn plan(
    shapes: &[(String, Vec<usize>)],
    by_name: &HashMap<&str, &LinearInfo>,
    dense_dtype: FloatType,
    blank: impl Fn(&str, usize, usize) -> Result<Vec<StoredTensor>>,
) -> Result<Plan> {
    let mut p = Plan::default();
    for (i, (name, shape)) in shapes.iter().enumerate() {
        if let Some(l) = by_name.get(name.as_str()) {
            let (rows, cols) = (l.out_features, l.in_features);
            let module = name.strip_suffix(".weight").unwrap_or(name);
            for s in blank(module, rows, cols)? {
                p.q_bytes += s.bytes.len() as u64;
                p.header.push(header_of(&s));
                p.origin.push(i);
            }
            p.q_params += (rows * cols) as u64;
        } else {
            let n: usize = shape.iter().product();
            p.dense_bytes += (n * dense_dtype.size()) as u64;
            p.header.push(TensorHeader {
                name: name.clone(),
                dtype: shrink_io::safetensors_dtype(dense_dtype),
                shape: shape.clone(),
                len: n * dense_dtype.size(),
            });
            p.origin.push(i);
        }
    }
    Ok(p)
}

/// The header entry of a stored tensor.
pub fn header_of(s: &StoredTensor) -> TensorHeader {
    TensorHeader {
        name: s.name.clone(),
        dtype: s.dtype,
        shape: s.shape.clone(),
        len: s.bytes.len(),
    }
}

/// Where a layer-by-layer run reads and writes.
pub struct Source<'a> {
    /// The model's architecture.
    pub arch: &'a Architecture,
    /// Its weights.
    pub loader: &'a WeightLoader<'a>,
    /// HF names and shapes of every weight, in write order.
    pub shapes: &'a [(String, Vec<usize>)],
}

/// Write `model.safetensors` of `out` as `plan` lays it out: the tensors of block `l` are taken
/// from `stored` once `advance(l, stored)` has compressed it — blocks in order, each when the
/// writer first reaches one of its tensors, so only one block is ever in flight — and every
/// other tensor is read from the checkpoint and written as `dense_dtype`, unless the plan holds
/// it encoded ([`Plan::encoded`]). `metadata` goes in the file's header.
pub fn write_layer_by_layer(
    seq: &Sequential,
    src: &Source,
    out: &OutputDir,
    plan: &Plan,
    dense_dtype: FloatType,
    metadata: HashMap<String, String>,
    mut advance: impl FnMut(usize, &mut Stored) -> Result<()>,
) -> Result<()> {
    let mut done: Option<usize> = None;
    let mut stored = plan.encoded.clone();
    shrink_io::write_safetensors_ordered(
        &out.file("model.safetensors"),
        &plan.header,
        Some(metadata),
        |k| -> Result<Vec<u8>> {
            let (name, shape) = &src.shapes[plan.origin[k]];
            if let Some(l) = seq.layer_of(name) {
                while done.is_none_or(|d| d < l) {
                    let next = done.map_or(0, |d| d + 1);
                    advance(next, &mut stored)?;
                    done = Some(next);
                }
            }
            if let Some(s) = stored.remove(&plan.header[k].name) {
                return Ok(s.bytes);
            }
            let t = src.arch.read_weight(src.loader, name, shape)?;
            let v = t
                .flatten_all()
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(shrink_models::ModelError::from)?;
            Ok(float::encode(dense_dtype, &v))
        },
    )
}

/// The safetensors metadata of a quantized checkpoint: `format: pt`, and the Conv1D weights
/// stored [out, in] rather than as their checkpoint stores them.
pub fn file_metadata(selected: &[LinearInfo]) -> HashMap<String, String> {
    let mut meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    let transposed: Vec<&str> = selected
        .iter()
        .filter(|l| l.conv1d)
        .map(|l| l.weight.as_str())
        .collect();
    if !transposed.is_empty() {
        meta.insert(
            shrink_io::quantized::TRANSPOSED_KEY.to_string(),
            transposed.join(","),
        );
    }
    meta
}

/// A linear input `x` (`[t, n]`) as its flat float32 rows and `n`: what the observing steps
/// accumulate.
pub fn rows(x: &Tensor) -> shrink_models::Result<(Vec<f32>, usize)> {
    Ok((x.flatten_all()?.to_vec1::<f32>()?, x.dim(1)?))
}

/// A tensor's values as a flat f32 vector.
pub fn values(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(shrink_models::ModelError::from)?)
}
