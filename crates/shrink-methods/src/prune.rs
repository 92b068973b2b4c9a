//! One-shot unstructured and N:M pruning of a whole checkpoint, layer by layer through
//! [`crate::pipeline`] on every architecture: magnitude, Wanda and SparseGPT
//! ([`crate::sparsity`], [`crate::sparsegpt`]), optionally with non-uniform layer sparsities
//! (OWL) and, for SparseGPT, joint quantization on GPTQ's grid.
//!
//! The calibrated methods see each block's inputs as the already-pruned blocks before it compute
//! them (SparseGPT's and Wanda's sequential scheme); only one block's weights and the samples'
//! activations are resident. The output keeps every weight dense, the pruned ones exactly 0
//! (it loads anywhere), or — jointly quantized — the HF `gptq` layout.
//!
//! OWL (Yin et al. 2024, "Outlier Weighed Layerwise Sparsity"): each block's outlier ratio
//! `D_l` is the share of its Wanda scores `|W_ij| · ‖X_j‖₂` above `M` times their mean, on the
//! unpruned model; the ratios, rescaled to `[0, 2λ]`, lower the sparsity of the blocks with more
//! outliers and raise the others': `S_l = S − D̂_l + mean(D̂)`, the same mean as uniform
//! (llm-compressor's `_infer_owl_layer_sparsity`).
//!
//! ```no_run
//! use shrink_methods::{calib, calibrated::Run, pipeline::Silent, select::Selection};
//! use shrink_methods::prune::{self, PruneMethod, PruneSpec};
//! use shrink_methods::sparsity::Pattern;
//! let ckpt = shrink_io::Checkpoint::open("tiny-llama")?;
//! let ids: Vec<u32> = (0..4096).map(|i| i % 100).collect();
//! let samples = calib::draw_samples(&ids, calib::CalibSpec { samples: 8, seqlen: 64, seed: 0 })?;
//! let all = Selection::default();
//! let run = Run::new(&ckpt, std::path::Path::new("tiny-llama-50"), &samples, &all, &Silent);
//! let spec = PruneSpec::new(PruneMethod::SparseGpt, Pattern::Unstructured(0.5));
//! let report = prune::prune(&run, &spec)?;
//! println!("{}", report.extra["sparsity"]);
//! # Ok::<(), shrink_methods::MethodError>(())
//! ```

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use candle_core::Tensor;
use shrink_formats::float;
use shrink_formats::sparse_layout::SparseLayout;
use shrink_io::quantized::StoredTensor;
use shrink_io::{Checkpoint, OutputDir};
use shrink_models::layerwise::{Block, LinearSlot, Sequential};

use crate::calibrated::{self, Opened, Run};
use crate::error::{MethodError, Result};
use crate::gptq::GptqSpec;
use crate::hessian::{self, Hessian};
use crate::output;
use crate::pipeline::{self, LayerStep, StepKind, Stored};
use crate::report::{squared_error, Report, Sizes};
use crate::sparsegpt::{self, SparseGptSpec};
use crate::sparsity::{self, Pattern};

/// The one-shot pruning methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PruneMethod {
    /// The lowest |W| of each tensor; no calibration.
    Magnitude,
    /// The lowest |W_ij| · ‖X_j‖₂ of each output row; calibrated, no weight update.
    Wanda,
    /// SparseGPT: mask by `w² / [H⁻¹]_jj²`, the kept weights updated to compensate.
    SparseGpt,
}

impl PruneMethod {
    /// The method's name in reports.
    pub fn name(&self) -> &'static str {
        match self {
            PruneMethod::Magnitude => "magnitude",
            PruneMethod::Wanda => "wanda",
            PruneMethod::SparseGpt => "sparsegpt",
        }
    }

    /// Whether the method reads calibration samples.
    pub fn calibrated(&self) -> bool {
        !matches!(self, PruneMethod::Magnitude)
    }
}

/// How the target sparsity is spread over the blocks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Profile {
    /// Every block at the target.
    Uniform,
    /// OWL: outlier-weighted, the same mean (`m`: the outlier threshold as a multiple of the
    /// mean score, 5 in the paper; `lambda`: the largest deviation from the target, 0.08).
    Owl {
        /// Outlier threshold, times the mean score.
        m: f64,
        /// Largest deviation of a block's sparsity from the target.
        lambda: f64,
    },
}

/// What to prune and how.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PruneSpec {
    /// The method.
    pub method: PruneMethod,
    /// The pattern and target sparsity.
    pub pattern: Pattern,
    /// How the sparsity is spread over the blocks.
    pub profile: Profile,
    /// SparseGPT's block of columns (default 128).
    pub block_size: usize,
    /// SparseGPT's dampening, a fraction of the mean Hessian diagonal (default 0.01).
    pub damp: f64,
    /// SparseGPT with GPTAQ's asymmetric calibration (this α, GPTAQ's 0.25): each layer pruned
    /// to fit the float model's output on its inputs, not its own drifted inputs.
    pub gptaq_alpha: Option<f64>,
    /// SparseGPT jointly quantizing the kept weights on this grid (written as the HF `gptq`
    /// layout).
    pub quant: Option<GptqSpec>,
    /// Prune a checkpoint that stores its weights quantized, after dequantizing them (a warning
    /// in the report); refused otherwise.
    pub dequantize: bool,
    /// Store the pruned weights in this compressed-tensors sparse layout (`sparse-bitmask`, or
    /// `sparse-24-bitmask` for 2:4) rather than dense with zeros.
    pub layout: Option<SparseLayout>,
}

impl PruneSpec {
    /// `method` at `pattern`, uniform, the references' defaults.
    pub fn new(method: PruneMethod, pattern: Pattern) -> Self {
        PruneSpec {
            method,
            pattern,
            profile: Profile::Uniform,
            block_size: 128,
            damp: 0.01,
            gptaq_alpha: None,
            quant: None,
            dequantize: false,
            layout: None,
        }
    }

    /// The run's name in reports, e.g. `sparsegpt-50%`, `wanda-2:4-owl`, `sparsegpt-2:4+w4g64`.
    pub fn name(&self) -> String {
        let mut s = format!("{}-{}", self.method.name(), self.pattern.label());
        if matches!(self.profile, Profile::Owl { .. }) {
            s.push_str("-owl");
        }
        if self.gptaq_alpha.is_some() {
            s.push_str("-gptaq");
        }
        if let Some(q) = self.quant {
            s.push_str(&format!("+w{}g{}", q.bits, q.group_size));
        }
        if let Some(l) = self.layout {
            s.push_str(&format!(" ({})", l.name()));
        }
        s
    }

    /// Refuse impossible combinations before anything is read.
    fn check(&self) -> Result<()> {
        let bad = |m: String| Err(MethodError::Options(m));
        if let Pattern::Unstructured(s) = self.pattern {
            if !(s > 0.0 && s < 1.0) {
                return bad(format!("--sparsity {s} must lie strictly between 0 and 1"));
            }
        }
        if let Pattern::NofM { n, m } = self.pattern {
            if n == 0 || n >= m {
                return bad(format!("--pattern {n}:{m} needs 0 < N < M"));
            }
        }
        if self.quant.is_some() && self.method != PruneMethod::SparseGpt {
            return bad(format!(
                "--bits quantizes jointly only with sparsegpt, not {}; quantize the pruned \
                 checkpoint afterwards (its zeros are kept)",
                self.method.name()
            ));
        }
        if let Some(a) = self.gptaq_alpha {
            if self.method != PruneMethod::SparseGpt {
                return bad(format!(
                    "--gptaq updates the kept weights; {} does not (use sparsegpt)",
                    self.method.name()
                ));
            }
            if !(a > 0.0 && a <= 1.0) {
                return bad(format!("--gptaq-alpha {a} must lie in (0, 1]"));
            }
        }
        if let Profile::Owl { m, lambda } = self.profile {
            if matches!(self.pattern, Pattern::NofM { .. }) {
                return bad(
                    "--sparsity-profile owl varies the sparsity per layer; an N:M \
                            pattern has one sparsity"
                        .into(),
                );
            }
            if m.is_nan() || m <= 0.0 || lambda.is_nan() || lambda < 0.0 {
                return bad(format!("OWL needs M > 0 and λ ≥ 0, not {m} and {lambda}"));
            }
            let s = self.pattern.sparsity();
            if s - lambda <= 0.0 || s + lambda >= 1.0 {
                return bad(format!(
                    "OWL's layer sparsities span {s} ± {lambda}, outside (0, 1); lower --owl-lambda"
                ));
            }
        }
        match (self.layout, self.quant, self.pattern) {
            (Some(l), Some(_), _) => {
                return bad(format!(
                    "--format {} stores float weights; jointly quantized weights go in the gptq \
                     layout",
                    l.name()
                ))
            }
            (Some(SparseLayout::Sparse24Bitmask), _, p) if p != Pattern::NofM { n: 2, m: 4 } => {
                return bad(format!(
                    "--format sparse-24-bitmask stores 2:4 sparsity; use --pattern 2:4, or \
                     sparse-bitmask for {}",
                    p.label()
                ))
            }
            _ => {}
        }
        if !(self.damp > 0.0 && self.damp < 1.0) {
            return bad(format!("--damp {} must lie in (0, 1)", self.damp));
        }
        if self.block_size == 0 {
            return bad("--block-size must be at least 1".into());
        }
        Ok(())
    }
}

/// Prune `run`'s checkpoint with `spec`, writing the pruned model (dense, or the `gptq` layout
/// when jointly quantized) to `run.output`.
pub fn prune(run: &Run, spec: &PruneSpec) -> Result<Report> {
    let t_start = Instant::now();
    spec.check()?;
    let warning = quantized_input(run, spec)?;
    if spec.method.calibrated() && run.samples.is_empty() {
        return Err(MethodError::Options(format!(
            "{} needs calibration samples",
            spec.method.name()
        )));
    }
    let o = calibrated::open(run, spec.method.name(), |l| {
        spec.pattern.validate(&l.weight, l.in_features)?;
        match spec.quant {
            Some(q) => q.validate(&l.weight, l.out_features, l.in_features),
            None => Ok(()),
        }
    })?;
    let layer_sparsity = match spec.profile {
        Profile::Uniform => vec![spec.pattern.sparsity(); o.seq.num_layers()],
        Profile::Owl { m, lambda } => owl(run, &o, spec.pattern.sparsity(), m, lambda)?,
    };
    let conv1d: HashSet<String> = o
        .selected
        .iter()
        .filter(|l| l.conv1d)
        .map(|l| l.weight.clone())
        .collect();
    let dense = run.dense_dtype;
    let (plan, metadata) = match &spec.quant {
        Some(q) => (
            o.plan(dense, |module, rows, cols| {
                calibrated::gptq_blank(q, module, rows, cols)
            })?,
            pipeline::file_metadata(&o.selected),
        ),
        None => (
            o.plan(dense, |module, rows, cols| {
                let name = format!("{module}.weight");
                let shape = if conv1d.contains(&name) {
                    vec![cols, rows]
                } else {
                    vec![rows, cols]
                };
                Ok(vec![dense_blank(name, shape, dense)])
            })?,
            HashMap::from([("format".to_string(), "pt".to_string())]),
        ),
    };
    let mut step = PruneStep {
        spec,
        layer_sparsity: &layer_sparsity,
        names: &o.names,
        conv1d: &conv1d,
        slots: o.seq.linears(),
        path: run.ckpt.path(),
        dense,
        hs: HashMap::new(),
        asym: spec.gptaq_alpha.map(|_| calibrated::Asymmetry::default()),
        x_sq: HashMap::new(),
        layers: Vec::new(),
        sq: (0.0, 0.0),
        seconds: 0.0,
    };
    let label = format!("{} layers", spec.method.name());
    let mut d = calibrated::drive(
        run,
        &o,
        &label,
        &format!("{spec:?}"),
        &plan,
        metadata,
        &mut step,
    )?;
    match &spec.quant {
        Some(q) => calibrated::write_gptq_config(run, &o, &d.out, q)?,
        None => output::write_config_and_tokenizer(
            run.ckpt,
            o.arch.decoder(),
            &d.out,
            dense.torch_name(),
            None,
        )?,
    }
    if let Some(layout) = spec.layout {
        d.sizes = store_sparse(&d.out, &o, layout, dense)?;
    }
    let mut r = Report::new(
        run.ckpt.path().to_path_buf(),
        run.output.to_path_buf(),
        spec.name(),
        d.sizes,
    );
    r.quantized_tensors = o.selected.len();
    r.quantize_seconds = step.seconds;
    step.report(run, spec, &layer_sparsity, d.sizes.total_params, &mut r);
    if let Some(w) = warning {
        r.set("warning", w);
    }
    r.seconds = t_start.elapsed().as_secs_f64();
    d.commit(&mut r)?;
    Ok(r)
}

/// Refuse an input stored quantized unless `spec.dequantize`; then the report's warning.
fn quantized_input(run: &Run, spec: &PruneSpec) -> Result<Option<String>> {
    let path = run.ckpt.path().display();
    match (crate::report::stored_quantized(run.ckpt), spec.dequantize) {
        (Some(what), false) => Err(MethodError::Options(format!(
            "{path}: the weights are stored quantized ({what}); pruning would work on their \
             dequantized values and store them dense — pass --dequantize to do so, or prune the \
             float model and quantize afterwards (the zeros are kept)"
        ))),
        (Some(what), true) => Ok(Some(format!(
            "{path} stores its weights quantized ({what}): they were dequantized before pruning"
        ))),
        (None, _) => Ok(None),
    }
}

/// Rewrite the dense output `out` (written, not yet committed) with the pruned linears of `o`
/// in compressed-tensors' sparse `layout` and the `quantization_config` announcing it (its
/// `global_sparsity`: the zeros of every tensor over all parameters): every weight is
/// compressed once to size the header and once more as it is written, so only one weight is in
/// memory. Returns the new sizes.
fn store_sparse(
    out: &OutputDir,
    o: &Opened,
    layout: SparseLayout,
    dense: float::FloatType,
) -> Result<Sizes> {
    let ckpt = Checkpoint::open(out.dir())?;
    let selected: HashSet<&str> = o.selected.iter().map(|l| l.weight.as_str()).collect();
    // A weight as the layout stores it (GPT-2's Conv1D as its checkpoint does, [in, out]).
    // And its zeros.
    let parts = |name: &str, shape: &[usize]| -> Result<(Vec<StoredTensor>, usize)> {
        let (v, _) = ckpt.read_f32(name)?;
        let module = name.strip_suffix(".weight").unwrap_or(name);
        let (rows, cols) = (shape[0], shape[1..].iter().product());
        let t = shrink_io::sparse::sparse_tensors(module, &v, rows, cols, dense, layout)
            .map_err(calibrated::format_err(module))?;
        Ok((t, sparsity::zeros(&v)))
    };
    let mut sizes = Sizes {
        total_params: o
            .shapes
            .iter()
            .map(|(_, s)| s.iter().product::<usize>() as u64)
            .sum(),
        ..Sizes::default()
    };
    let (mut header, mut origin) = (Vec::new(), Vec::new());
    for (i, (name, shape)) in o.shapes.iter().enumerate() {
        if selected.contains(name.as_str()) {
            for (j, t) in parts(name, shape)?.0.iter().enumerate() {
                sizes.quantized_bytes += t.bytes.len() as u64;
                header.push(pipeline::header_of(t));
                origin.push((i, Some(j)));
            }
            sizes.quantized_params += shape.iter().product::<usize>() as u64;
        } else {
            let t = dense_blank(name.clone(), shape.clone(), dense);
            sizes.dense_bytes += t.bytes.len() as u64;
            header.push(pipeline::header_of(&t));
            origin.push((i, None));
        }
    }
    let tmp = out.file("model.sparse.safetensors");
    let mut current: Option<(usize, Vec<StoredTensor>)> = None;
    let mut zeros = 0usize;
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    shrink_io::write_safetensors_ordered(&tmp, &header, Some(meta), |k| -> Result<Vec<u8>> {
        let (i, part) = origin[k];
        let (name, shape) = &o.shapes[i];
        let Some(j) = part else {
            let (v, _) = ckpt.read_f32(name)?;
            zeros += sparsity::zeros(&v);
            return Ok(float::encode(dense, &v));
        };
        if current.as_ref().is_none_or(|c| c.0 != i) {
            let (t, z) = parts(name, shape)?;
            zeros += z;
            current = Some((i, t));
        }
        let c = current.as_mut().expect("set above");
        Ok(std::mem::take(&mut c.1[j].bytes))
    })?;
    drop(ckpt);
    let file = out.file("model.safetensors");
    std::fs::rename(&tmp, &file).map_err(|e| shrink_io::IoError::os(&file, e))?;
    let cfg_path = out.file("config.json");
    let text = shrink_io::read_text(&cfg_path)?;
    let mut cfg: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| MethodError::Options(format!("{}: {e}", cfg_path.display())))?;
    let targets = ["Linear".to_string()];
    let global = zeros as f64 / sizes.total_params.max(1) as f64;
    cfg["quantization_config"] =
        shrink_io::sparse::sparsity_config(layout, global, &targets, &["lm_head".to_string()]);
    let text = serde_json::to_string_pretty(&cfg).expect("JSON values serialize");
    out.write("config.json", text.as_bytes())?;
    Ok(sizes)
}

/// The plan's entry of a weight stored dense: `name`, `shape`, zeros of `dtype`.
fn dense_blank(name: String, shape: Vec<usize>, dtype: float::FloatType) -> StoredTensor {
    let n: usize = shape.iter().product();
    StoredTensor {
        name,
        dtype: shrink_io::safetensors_dtype(dtype),
        shape,
        bytes: vec![0; n * dtype.size()],
    }
}

/// What pruning did to one block.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct LayerStats {
    zeros: usize,
    params: usize,
    loss: f64,
}

/// Pruning as a layer step: each selected linear's input statistics observed (the Hessian for
/// SparseGPT, `Σ x²` per input feature for Wanda), then each pruned and replaced, so the next
/// block sees the pruned block's outputs.
struct PruneStep<'a> {
    spec: &'a PruneSpec,
    layer_sparsity: &'a [f64],
    names: &'a HashSet<String>,
    conv1d: &'a HashSet<String>,
    slots: &'static [LinearSlot],
    path: &'a std::path::Path,
    dense: float::FloatType,
    hs: HashMap<&'static str, Hessian>,
    /// GPTAQ's observations for SparseGPT, when asked for.
    asym: Option<calibrated::Asymmetry>,
    x_sq: HashMap<&'static str, Vec<f64>>,
    layers: Vec<LayerStats>,
    sq: (f64, f64),
    seconds: f64,
}

impl LayerStep for PruneStep<'_> {
    fn kind(&self) -> StepKind {
        StepKind::Compress { compare: false }
    }

    fn observe(&mut self, _: usize, linear: &str, x: &Tensor) -> shrink_models::Result<()> {
        let Some(s) = self.slots.iter().find(|s| s.input == linear) else {
            return Ok(());
        };
        match self.spec.method {
            PruneMethod::Magnitude => {}
            PruneMethod::Wanda => {
                let (v, n) = pipeline::rows(x)?;
                hessian::add_squares(self.x_sq.entry(s.input).or_default(), &v, n);
            }
            PruneMethod::SparseGpt => {
                let (v, n) = pipeline::rows(x)?;
                if let Some(a) = &mut self.asym {
                    a.observe(s.input, &v, n)?;
                }
                self.hs
                    .entry(s.input)
                    .or_insert_with(|| Hessian::new(n, false))
                    .add(&v);
            }
        }
        Ok(())
    }

    fn wants_float(&self) -> bool {
        self.asym.is_some()
    }

    fn observe_float(&mut self, _: usize, linear: &str, x: &Tensor) -> shrink_models::Result<()> {
        match &mut self.asym {
            Some(a) => a.observe_float(self.slots, linear, x),
            None => Ok(()),
        }
    }

    fn compress(
        &mut self,
        seq: &Sequential,
        l: usize,
        block: &mut dyn Block,
        stored: &mut Stored,
    ) -> Result<()> {
        let t = Instant::now();
        let hs = std::mem::take(&mut self.hs);
        let cross = self
            .asym
            .as_mut()
            .map(calibrated::Asymmetry::take)
            .unwrap_or_default();
        let x_sq = std::mem::take(&mut self.x_sq);
        let pattern = self.spec.pattern.with_sparsity(self.layer_sparsity[l]);
        let mut stats = LayerStats::default();
        for (input, locals) in calibrated::selected_by_input(seq, self.names, l) {
            let label = || {
                locals
                    .iter()
                    .map(|n| seq.weight_name(l, n))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let unobserved =
                || MethodError::Options(format!("the input of {} was not observed", label()));
            let prepared = match self.spec.method {
                PruneMethod::SparseGpt => {
                    let h = hs.get(input).ok_or_else(unobserved)?;
                    let prepared =
                        hessian::prepare(h.matrix(), h.n, self.spec.damp, false, &label())?;
                    Some(match self.spec.gptaq_alpha {
                        Some(a) => calibrated::with_asymmetry(prepared, &cross, input, a)?,
                        None => prepared,
                    })
                }
                _ => None,
            };
            let norms = match self.spec.method {
                PruneMethod::Wanda => Some(x_sq.get(input).ok_or_else(unobserved)?),
                _ => None,
            };
            for local in locals {
                let name = seq.weight_name(l, local);
                let lin = block
                    .linear_mut(local)
                    .ok_or_else(|| MethodError::Options(format!("no linear {name}")))?;
                let w = calibrated::finite_weight(self.path, &name, lin)?;
                let (rows, cols) = (lin.out_features(), lin.in_features());
                let module = name.strip_suffix(".weight").unwrap_or(&name);
                let mut pruned = self.prune_weight(
                    module,
                    &w,
                    (rows, cols),
                    pattern,
                    (prepared.as_ref(), norms),
                    stored,
                    &mut stats,
                )?;
                if self.spec.quant.is_none() {
                    calibrated::stored_values(self.dense, &mut pruned);
                    stored.insert(name.clone(), self.dense_tensor(&name, &pruned, rows, cols));
                }
                stats.zeros += sparsity::zeros(&pruned);
                stats.params += pruned.len();
                let (e, norm) = squared_error(&w, &pruned);
                self.sq.0 += e;
                self.sq.1 += norm;
                calibrated::replace(lin, pruned)?;
            }
        }
        self.layers.push(stats);
        self.seconds += t.elapsed().as_secs_f64();
        Ok(())
    }

    fn carry(&self, _l: usize) -> Result<serde_json::Value> {
        Ok(serde_json::json!([
            self.layers.last(),
            self.sq,
            self.seconds
        ]))
    }

    fn restore(&mut self, l: usize, carried: serde_json::Value) -> Result<()> {
        let (stats, sq, seconds): (LayerStats, (f64, f64), f64) =
            calibrated::carried_as(l, carried)?;
        self.layers.push(stats);
        self.sq = sq;
        self.seconds = seconds;
        Ok(())
    }
}

impl PruneStep<'_> {
    /// Prune weight `w` (`[rows, cols]`) of `module` with the step's method at `pattern`: by
    /// SparseGPT given the block input's prepared Hessian (its `gptq` tensors into `stored`
    /// when quantizing jointly), by Wanda given `Σ x²` per input feature, else by magnitude.
    #[allow(clippy::too_many_arguments)]
    fn prune_weight(
        &self,
        module: &str,
        w: &[f32],
        (rows, cols): (usize, usize),
        pattern: Pattern,
        (prepared, norms): (Option<&hessian::PreparedHessian>, Option<&Vec<f64>>),
        stored: &mut Stored,
        stats: &mut LayerStats,
    ) -> Result<Vec<f32>> {
        if let Some(hp) = prepared {
            let sg = SparseGptSpec {
                pattern,
                block_size: self.spec.block_size,
                damp: self.spec.damp,
                quant: self.spec.quant,
            };
            let r = sparsegpt::prune(w, rows, cols, hp, &sg);
            stats.loss += r.loss;
            if let Some(parts) = &r.parts {
                for s in shrink_io::hf_int::gptq_tensors(module, parts)
                    .map_err(calibrated::format_err(module))?
                {
                    stored.insert(s.name.clone(), s);
                }
            }
            return Ok(r.weight);
        }
        let mask = match norms {
            Some(x_sq) => sparsity::wanda(w, cols, x_sq, pattern),
            None => sparsity::magnitude(w, cols, pattern),
        };
        let mut v = w.to_vec();
        sparsity::apply(&mut v, &mask);
        Ok(v)
    }

    /// The run's measurements into `r`: sparsity overall, of the model (`total_params`) and per
    /// block against `targets`, weight error, SparseGPT's losses, calibration.
    fn report(
        &self,
        run: &Run,
        spec: &PruneSpec,
        targets: &[f64],
        total_params: u64,
        r: &mut Report,
    ) {
        let (zeros, params) = self
            .layers
            .iter()
            .fold((0, 0), |a, l| (a.0 + l.zeros, a.1 + l.params));
        let sparsity = zeros as f64 / params.max(1) as f64;
        let of_model = zeros as f64 / total_params.max(1) as f64;
        if spec.method.calibrated() {
            r.calibration = Some(run.calibration.clone());
            r.notes.push(format!(
                "calibration    {} samples × {} tokens",
                run.samples.len(),
                run.samples.first().map_or(0, Vec::len)
            ));
        }
        r.relative_rmse = Some((self.sq.0 / self.sq.1.max(f64::MIN_POSITIVE)).sqrt());
        r.set("pattern", spec.pattern.label());
        r.set("sparsity", sparsity);
        r.set("sparsity_model", of_model);
        r.set("layer_sparsity_target", targets);
        let measured: Vec<f64> = self
            .layers
            .iter()
            .map(|l| l.zeros as f64 / l.params.max(1) as f64)
            .collect();
        r.set("layer_sparsity", &measured);
        if spec.method == PruneMethod::SparseGpt {
            let losses: Vec<f64> = self.layers.iter().map(|l| l.loss).collect();
            r.set("sparsegpt_loss_per_layer", losses);
            r.set("gptaq_alpha", spec.gptaq_alpha);
        }
        r.notes.push(format!(
            "sparsity       {sparsity:.4} of the pruned weights ({zeros} of {params} zero), \
             {of_model:.4} of the model"
        ));
        if let Profile::Owl { .. } = spec.profile {
            let lo = targets.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = targets.iter().copied().fold(0.0, f64::max);
            r.notes.push(format!(
                "OWL            layer sparsity from {lo:.3} to {hi:.3}"
            ));
        }
    }

    /// Weight `name` (`[rows, cols]`) as the output stores it: the dense type, a Conv1D weight
    /// back in its checkpoint's `[in, out]` layout.
    fn dense_tensor(&self, name: &str, v: &[f32], rows: usize, cols: usize) -> StoredTensor {
        let (shape, bytes) = if self.conv1d.contains(name) {
            let t: Vec<f32> = (0..rows * cols)
                .map(|k| v[(k % rows) * cols + k / rows])
                .collect();
            (vec![cols, rows], float::encode(self.dense, &t))
        } else {
            (vec![rows, cols], float::encode(self.dense, v))
        };
        StoredTensor {
            name: name.to_string(),
            dtype: shrink_io::safetensors_dtype(self.dense),
            shape,
            bytes,
        }
    }
}

/// OWL's statistics as a layer step that only observes: `Σ x²` of every selected linear's
/// input, then the block's outlier ratio.
struct OwlStep<'a> {
    m: f64,
    names: &'a HashSet<String>,
    slots: &'static [LinearSlot],
    path: &'a std::path::Path,
    x_sq: HashMap<&'static str, Vec<f64>>,
    ratios: Vec<f64>,
}

impl LayerStep for OwlStep<'_> {
    fn kind(&self) -> StepKind {
        StepKind::Observe
    }

    fn observe(&mut self, _: usize, linear: &str, x: &Tensor) -> shrink_models::Result<()> {
        if let Some(s) = self.slots.iter().find(|s| s.input == linear) {
            let (v, n) = pipeline::rows(x)?;
            hessian::add_squares(self.x_sq.entry(s.input).or_default(), &v, n);
        }
        Ok(())
    }

    fn compress(
        &mut self,
        seq: &Sequential,
        l: usize,
        block: &mut dyn Block,
        _stored: &mut Stored,
    ) -> Result<()> {
        let x_sq = std::mem::take(&mut self.x_sq);
        let mut scores: Vec<f32> = Vec::new();
        for (input, locals) in calibrated::selected_by_input(seq, self.names, l) {
            let x_sq = x_sq.get(input).ok_or_else(|| {
                MethodError::Options(format!("the input {input} was not observed"))
            })?;
            for local in locals {
                let name = seq.weight_name(l, local);
                let lin = block
                    .linear_mut(local)
                    .ok_or_else(|| MethodError::Options(format!("no linear {name}")))?;
                let w = calibrated::finite_weight(self.path, &name, lin)?;
                scores.extend(sparsity::wanda_scores(&w, x_sq));
            }
        }
        let mean = scores.iter().map(|&v| v as f64).sum::<f64>() / scores.len().max(1) as f64;
        let t = (mean * self.m) as f32;
        let outliers = scores.iter().filter(|&&v| v > t).count();
        self.ratios
            .push(100.0 * outliers as f64 / scores.len().max(1) as f64);
        Ok(())
    }
}

/// OWL's layer sparsities around `target` from the unpruned model's outlier ratios.
fn owl(run: &Run, o: &Opened, target: f64, m: f64, lambda: f64) -> Result<Vec<f64>> {
    let mut step = OwlStep {
        m,
        names: &o.names,
        slots: o.seq.linears(),
        path: run.ckpt.path(),
        x_sq: HashMap::new(),
        ratios: Vec::new(),
    };
    pipeline::observe_all(&o.seq, run.samples, &mut step, None, run.progress)?;
    Ok(owl_sparsities(&step.ratios, target, lambda))
}

/// `S_l = S − D̂_l + mean(D̂)` with `D̂` the outlier ratios rescaled to `[0, 2λ]`.
pub fn owl_sparsities(ratios: &[f64], target: f64, lambda: f64) -> Vec<f64> {
    let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if ratios.is_empty() || hi <= lo {
        return vec![target; ratios.len()];
    }
    let d: Vec<f64> = ratios
        .iter()
        .map(|r| (r - lo) / (hi - lo) * lambda * 2.0)
        .collect();
    let mean = d.iter().sum::<f64>() / d.len() as f64;
    d.iter().map(|di| target - di + mean).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owl_keeps_the_mean_and_spares_outlier_layers() {
        let s = owl_sparsities(&[1.0, 3.0, 2.0, 6.0], 0.5, 0.08);
        let mean = s.iter().sum::<f64>() / 4.0;
        assert!((mean - 0.5).abs() < 1e-12);
        assert!(s[3] < s[1] && s[1] < s[2] && s[2] < s[0]);
        assert!((s[0] - s[3] - 0.16).abs() < 1e-12);
        assert_eq!(owl_sparsities(&[2.0, 2.0], 0.5, 0.08), [0.5, 0.5]);
    }

    #[test]
    fn impossible_specs_are_refused() {
        let nm = Pattern::NofM { n: 2, m: 4 };
        let mut s = PruneSpec::new(PruneMethod::Wanda, nm);
        s.quant = Some(GptqSpec::default());
        assert!(s.check().unwrap_err().to_string().contains("sparsegpt"));
        let mut s = PruneSpec::new(PruneMethod::SparseGpt, nm);
        s.profile = Profile::Owl {
            m: 5.0,
            lambda: 0.08,
        };
        assert!(s.check().is_err());
        let mut s = PruneSpec::new(PruneMethod::SparseGpt, Pattern::Unstructured(0.95));
        s.profile = Profile::Owl {
            m: 5.0,
            lambda: 0.08,
        };
        assert!(s.check().unwrap_err().to_string().contains("lambda"));
        assert!(
            PruneSpec::new(PruneMethod::Magnitude, Pattern::Unstructured(1.0))
                .check()
                .is_err()
        );
    }
}
