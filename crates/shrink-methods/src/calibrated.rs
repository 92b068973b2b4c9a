//! Calibrated quantization of a whole checkpoint, layer by layer through
//! [`crate::pipeline`]: GPTQ (the Hugging Face `gptq` layout), AWQ (AutoAWQ's GEMM layout) and
//! llama.cpp's importance matrix, on every architecture shrink-models opens as a
//! [`Sequential`] stack. The output is written as the blocks complete, so only one block's
//! weights and the samples' activations are resident.
//!
//! ```no_run
//! use shrink_methods::{calib, calibrated, gptq::GptqSpec, pipeline::Silent, select::Selection};
//! let ckpt = shrink_io::Checkpoint::open("tiny-llama")?;
//! let ids: Vec<u32> = (0..4096).map(|i| i % 100).collect();
//! let samples = calib::draw_samples(&ids, calib::CalibSpec { samples: 8, seqlen: 64, seed: 0 })?;
//! let (out, all) = (std::path::Path::new("tiny-llama-gptq"), Selection::default());
//! let run = calibrated::Run::new(&ckpt, out, &samples, &all, &Silent);
//! let report = calibrated::gptq(&run, GptqSpec::default(), false)?;
//! println!("{}", report.bits_per_weight_model);
//! # Ok::<(), shrink_methods::MethodError>(())
//! ```

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Instant;

use candle_core::{Device, Tensor};
use shrink_formats::awq_layout::AwqParts;
use shrink_formats::float::{self, FloatType};
use shrink_formats::gptq_layout::GptqParts;
use shrink_formats::int::{Granularity, IntSpec, IntTensor};
use shrink_io::imatrix::Imatrix;
use shrink_io::quantized::StoredTensor;
use shrink_io::{Checkpoint, OutputDir};
use shrink_models::layerwise::{Block, LinearSlot, Sequential};
use shrink_models::linear::Linear;
use shrink_models::{Architecture, LinearInfo};

use crate::awq::{self, AwqSpec, BlockInputs, LayerWeights};
use crate::error::{MethodError, Result};
use crate::gptq::{self, GptqSpec};
use crate::hessian::{Cross, Hessian, PreparedHessian};
use crate::output;
use crate::pipeline::{self, LayerStep, Layers, Plan, Progress, Source, StepKind, Stored};
use crate::report::{squared_error, Report, Sizes};
use crate::resume::{self, LayerState, RunDir};
use crate::select::Selection;

/// One calibrated run: the input, the output directory to create, the calibration samples
/// (token ids), which weights to compress and how the others are stored.
pub struct Run<'a> {
    /// The input checkpoint.
    pub ckpt: &'a Checkpoint,
    /// The output directory (must not exist).
    pub output: &'a Path,
    /// Calibration samples, token ids.
    pub samples: &'a [Vec<u32>],
    /// The weights to compress (the blocks' linears by default).
    pub selection: &'a Selection,
    /// Storage type of the tensors left dense.
    pub dense_dtype: FloatType,
    /// Where the calibration came from, for the report.
    pub calibration: serde_json::Value,
    /// Progress of the layers.
    pub progress: &'a dyn Progress,
    /// Where finished layers are kept so that a killed run can continue (`--resume`); none
    /// kept without it.
    pub run_dir: Option<RunDir>,
}

impl<'a> Run<'a> {
    /// A run with dense tensors in float32 and no calibration description.
    pub fn new(
        ckpt: &'a Checkpoint,
        output: &'a Path,
        samples: &'a [Vec<u32>],
        selection: &'a Selection,
        progress: &'a dyn Progress,
    ) -> Self {
        Run {
            ckpt,
            output,
            samples,
            selection,
            dense_dtype: FloatType::F32,
            calibration: serde_json::Value::Null,
            progress,
            run_dir: None,
        }
    }
}

/// The run opened: architecture, stack and selection checked, output planned.
pub(crate) struct Opened<'a> {
    pub(crate) arch: Architecture,
    pub(crate) seq: Sequential<'a>,
    pub(crate) selected: Vec<LinearInfo>,
    pub(crate) names: HashSet<String>,
    pub(crate) shapes: Vec<(String, Vec<usize>)>,
}

/// Open `run`'s checkpoint for `method`, refusing a selection it cannot compress (`validate`).
pub(crate) fn open<'a>(
    run: &Run<'a>,
    method: &str,
    validate: impl FnMut(&LinearInfo) -> Result<()>,
) -> Result<Opened<'a>> {
    let arch = Architecture::from_checkpoint(run.ckpt)?;
    let seq = Sequential::new(run.ckpt)?;
    let selected = run.selection.resolve(&arch)?;
    pipeline::check_selected(run.ckpt.path(), &seq, method, &selected, validate)?;
    let names = selected.iter().map(|l| l.weight.clone()).collect();
    let shapes = arch.weight_shapes();
    Ok(Opened {
        arch,
        seq,
        selected,
        names,
        shapes,
    })
}

impl Opened<'_> {
    /// The output's plan: each selected linear laid out as `blank` lays it out.
    pub(crate) fn plan(
        &self,
        dense_dtype: FloatType,
        blank: impl Fn(&str, usize, usize) -> Result<Vec<StoredTensor>>,
    ) -> Result<Plan> {
        let by_name: HashMap<&str, &LinearInfo> = self
            .selected
            .iter()
            .map(|l| (l.weight.as_str(), l))
            .collect();
        pipeline::plan(&self.shapes, &by_name, dense_dtype, blank)
    }
}

/// A layer-by-layer output written but not yet committed.
pub(crate) struct Driven {
    /// The output directory.
    pub(crate) out: OutputDir,
    /// The report's sizes.
    pub(crate) sizes: Sizes,
    /// The finished layers kept for `--resume`, removed once the output is committed.
    state: Option<LayerState>,
}

impl Driven {
    /// Write the report `r` beside the output and rename it into place, then remove the kept
    /// layers.
    pub(crate) fn commit(self, r: &mut Report) -> Result<()> {
        if let Some(s) = &self.state {
            r.set("keep_layers_seconds", s.seconds());
            if s.resumed() > 0 {
                r.set("resumed_after_layers", s.resumed());
                r.notes.push(format!(
                    "resumed        after {} finished layers kept in {}",
                    s.resumed(),
                    s.dir().display()
                ));
            }
        }
        output::commit(self.out, r)?;
        if let Some(s) = self.state {
            s.finish()?;
        }
        Ok(())
    }
}

/// Write the output of `o` as `plan` lays it out (with the file `metadata`), taking every block
/// through `step` (whose options `settings` describes, so a resumed run can tell it continues
/// the same one).
pub(crate) fn drive(
    run: &Run,
    o: &Opened,
    label: &str,
    settings: &str,
    plan: &Plan,
    metadata: HashMap<String, String>,
    step: &mut dyn LayerStep,
) -> Result<Driven> {
    let out = OutputDir::create(run.output, &[run.ckpt.path()])?;
    let state = match &run.run_dir {
        Some(dir) => {
            let mut names: Vec<&str> = o.names.iter().map(String::as_str).collect();
            names.sort_unstable();
            let extra = serde_json::json!({
                "dense": run.dense_dtype.torch_name(),
                "selected": names,
            });
            let id = resume::identity(run.ckpt.path(), label, settings, run.samples, extra);
            Some(LayerState::open(dir, id, &[run.ckpt.path()])?)
        }
        None => None,
    };
    let mut layers = Layers::start(&o.seq, run.samples, step, state)?;
    let loader = o.arch.weight_loader(run.ckpt);
    let src = Source {
        arch: &o.arch,
        loader: &loader,
        shapes: &o.shapes,
    };
    run.progress.start(label, o.seq.num_layers() as u64);
    pipeline::write_layer_by_layer(
        &o.seq,
        &src,
        &out,
        plan,
        run.dense_dtype,
        metadata,
        |l, stored| {
            layers.next(l, step, stored)?;
            run.progress.inc(1);
            Ok(())
        },
    )?;
    run.progress.finish();
    let sizes = Sizes {
        quantized_params: plan.q_params,
        quantized_bytes: plan.q_bytes,
        dense_bytes: plan.dense_bytes,
        total_params: o
            .shapes
            .iter()
            .map(|(_, s)| s.iter().product::<usize>() as u64)
            .sum(),
    };
    Ok(Driven {
        out,
        sizes,
        state: layers.into_state(),
    })
}

/// The selected linears of block `l`, in forward order, grouped by the input they read.
pub(crate) fn selected_by_input(
    seq: &Sequential,
    names: &HashSet<String>,
    l: usize,
) -> Vec<(&'static str, Vec<&'static str>)> {
    let mut groups: Vec<(&'static str, Vec<&'static str>)> = Vec::new();
    for s in seq.linears() {
        if !names.contains(&seq.weight_name(l, s.name)) {
            continue;
        }
        match groups.iter_mut().find(|g| g.0 == s.input) {
            Some(g) => g.1.push(s.name),
            None => groups.push((s.input, vec![s.name])),
        }
    }
    groups
}

/// A linear's weight as float32 `[out, in]`, refusing non-finite values by name.
pub(crate) fn finite_weight(path: &Path, name: &str, lin: &Linear) -> Result<Vec<f32>> {
    let w = pipeline::values(&lin.weight().map_err(shrink_models::ModelError::from)?)?;
    if let Some(i) = w.iter().position(|v| !v.is_finite()) {
        let cols = lin.in_features();
        return Err(MethodError::Input {
            path: path.to_path_buf(),
            what: format!(
                "weight {name} holds {} at ({}, {})",
                w[i],
                i / cols,
                i % cols
            ),
        });
    }
    Ok(w)
}

/// The format layer's refusal of module `name`'s tensors.
pub(crate) fn format_err(name: &str) -> impl Fn(shrink_formats::FormatError) -> MethodError + '_ {
    move |source| MethodError::Format {
        name: name.to_string(),
        source,
    }
}

/// Replace `lin`'s weight by `w` (`[out, in]`), keeping its bias.
pub(crate) fn replace(lin: &mut Linear, w: Vec<f32>) -> Result<()> {
    let (rows, cols) = (lin.out_features(), lin.in_features());
    let bias = lin.bias.clone();
    let t =
        Tensor::from_vec(w, (rows, cols), &Device::Cpu).map_err(shrink_models::ModelError::from)?;
    *lin = Linear::new(t, bias).map_err(shrink_models::ModelError::from)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// GPTQ
// ---------------------------------------------------------------------------------------

/// GPTQ as a layer step: one Hessian per distinct input of the block, then every selected
/// linear reading it quantized (Algorithm 1, [`gptq::quantize`]) and replaced by its
/// dequantized weight.
struct GptqStep<'a> {
    spec: GptqSpec,
    /// A spec of its own for each weight (`shrink auto`'s mix; same dampening and order as
    /// `spec`), else `spec` for every weight.
    per_weight: Option<&'a HashMap<String, GptqSpec>>,
    /// The tensors a weight's result is stored as.
    store: &'a dyn Fn(&str, &GptqParts) -> Result<Vec<StoredTensor>>,
    f64_hessian: bool,
    names: &'a HashSet<String>,
    slots: &'static [LinearSlot],
    path: &'a Path,
    hs: HashMap<&'static str, Hessian>,
    /// GPTAQ's observations, when asked for.
    asym: Option<Asymmetry>,
    tally: GptqTally,
}

/// GPTAQ's asymmetric calibration as a layer step observes it, for GPTQ and SparseGPT alike:
/// the current sample's float-model input of each linear input, then `Σ Δx x̃ᵀ` ([`Cross`]) once
/// the compressed model's input of the same sample is seen.
#[derive(Debug, Default)]
pub(crate) struct Asymmetry {
    float_inputs: HashMap<&'static str, Vec<f32>>,
    cross: HashMap<&'static str, Cross>,
}

impl Asymmetry {
    /// The float model's input `x` of `linear` for the sample about to be observed, kept under
    /// the input of `slots` that `linear` is (inputs no slot reads are ignored).
    pub(crate) fn observe_float(
        &mut self,
        slots: &[LinearSlot],
        linear: &str,
        x: &Tensor,
    ) -> shrink_models::Result<()> {
        if let Some(s) = slots.iter().find(|s| s.input == linear) {
            self.float_inputs.insert(s.input, pipeline::rows(x)?.0);
        }
        Ok(())
    }

    /// The compressed model's input rows `v` (`n` features) of `input` for the same sample.
    pub(crate) fn observe(
        &mut self,
        input: &'static str,
        v: &[f32],
        n: usize,
    ) -> shrink_models::Result<()> {
        let f = self.float_inputs.remove(input).ok_or_else(|| {
            shrink_models::ModelError::Input(format!(
                "GPTAQ: the float model's input of {input} was not observed"
            ))
        })?;
        if f.len() != v.len() {
            return Err(shrink_models::ModelError::Input(format!(
                "GPTAQ: the float and compressed inputs of {input} differ in size"
            )));
        }
        self.cross
            .entry(input)
            .or_insert_with(|| Cross::new(n))
            .add(&f, v);
        Ok(())
    }

    /// The block's cross terms, leaving none for the next block.
    pub(crate) fn take(&mut self) -> HashMap<&'static str, Cross> {
        std::mem::take(&mut self.cross)
    }
}

/// `prepared` with GPTAQ's term for `input` from the block's `cross` terms (`alpha`: GPTAQ's α).
pub(crate) fn with_asymmetry(
    prepared: PreparedHessian,
    cross: &HashMap<&'static str, Cross>,
    input: &str,
    alpha: f64,
) -> Result<PreparedHessian> {
    let d = cross.get(input).ok_or_else(|| {
        MethodError::Options(format!("the float input of {input} was not observed"))
    })?;
    Ok(prepared.with_asymmetry(&d.matrix(), alpha))
}

/// What GPTQ adds up over the blocks for its report (carried by a resumed run).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct GptqTally {
    losses: Vec<f64>,
    max_damp: f64,
    sq: (f64, f64),
    seconds: f64,
}

impl LayerStep for GptqStep<'_> {
    fn kind(&self) -> StepKind {
        StepKind::Compress { compare: false }
    }

    fn observe(&mut self, _: usize, linear: &str, x: &Tensor) -> shrink_models::Result<()> {
        if let Some(s) = self.slots.iter().find(|s| s.input == linear) {
            let (v, n) = pipeline::rows(x)?;
            if let Some(a) = &mut self.asym {
                a.observe(s.input, &v, n)?;
            }
            let f64_acc = self.f64_hessian;
            self.hs
                .entry(s.input)
                .or_insert_with(|| Hessian::new(n, f64_acc))
                .add(&v);
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
        let hs = std::mem::take(&mut self.hs);
        let cross = self.asym.as_mut().map(Asymmetry::take).unwrap_or_default();
        let t = Instant::now();
        let mut loss = 0.0;
        for (input, locals) in selected_by_input(seq, self.names, l) {
            let h = hs.get(input).ok_or_else(|| {
                MethodError::Options(format!("the input of {input} was not observed"))
            })?;
            let label = locals
                .iter()
                .map(|n| seq.weight_name(l, n))
                .collect::<Vec<_>>()
                .join(", ");
            let mut prepared = gptq::prepare(h.matrix(), h.n, &self.spec, &label)?;
            if let Some(alpha) = self.spec.gptaq_alpha {
                prepared = with_asymmetry(prepared, &cross, input, alpha)?;
            }
            self.tally.max_damp = self.tally.max_damp.max(prepared.damp);
            for local in locals {
                let name = seq.weight_name(l, local);
                let lin = block
                    .linear_mut(local)
                    .ok_or_else(|| MethodError::Options(format!("no linear {name}")))?;
                let w = finite_weight(self.path, &name, lin)?;
                let (rows, cols) = (lin.out_features(), lin.in_features());
                let spec = self
                    .per_weight
                    .and_then(|m| m.get(&name))
                    .unwrap_or(&self.spec);
                let r = gptq::quantize(&w, rows, cols, &prepared, spec);
                loss += r.loss;
                let deq = r.parts.dequantize();
                let (e, norm) = squared_error(&w, &deq);
                self.tally.sq.0 += e;
                self.tally.sq.1 += norm;
                let module = name.strip_suffix(".weight").unwrap_or(&name);
                for s in (self.store)(module, &r.parts)? {
                    stored.insert(s.name.clone(), s);
                }
                replace(lin, deq)?;
            }
        }
        self.tally.seconds += t.elapsed().as_secs_f64();
        self.tally.losses.push(loss);
        Ok(())
    }

    fn carry(&self, _l: usize) -> Result<serde_json::Value> {
        Ok(serde_json::to_value(&self.tally).expect("numbers serialize"))
    }

    fn restore(&mut self, l: usize, carried: serde_json::Value) -> Result<()> {
        self.tally = carried_as(l, carried)?;
        Ok(())
    }
}

/// What a step carried from block `l`, read back as `T`.
pub(crate) fn carried_as<T: serde::de::DeserializeOwned>(
    l: usize,
    carried: serde_json::Value,
) -> Result<T> {
    serde_json::from_value(carried).map_err(|e| {
        MethodError::Options(format!(
            "the state kept for layer {l} does not fit this method: {e}"
        ))
    })
}

/// The method name of a GPTQ run, e.g. `gptq-w4g64-asym-actorder-static`.
pub fn gptq_name(spec: &GptqSpec) -> String {
    format!(
        "{}-w{}g{}-{}{}{}",
        if spec.gptaq_alpha.is_some() {
            "gptaq"
        } else {
            "gptq"
        },
        spec.bits,
        spec.group_size,
        if spec.sym { "sym" } else { "asym" },
        match (spec.act_order, spec.static_groups) {
            (true, true) => "-actorder-static",
            (true, false) => "-actorder",
            _ => "",
        },
        if spec.clip_search { "-clip" } else { "" }
    )
}

/// Module `module`'s tensors in the HF `gptq` layout of `spec` with every value 0 (their sizes
/// are the plan's).
pub(crate) fn gptq_blank(
    spec: &GptqSpec,
    module: &str,
    rows: usize,
    cols: usize,
) -> Result<Vec<StoredTensor>> {
    let ng = cols / spec.group_size;
    let parts = GptqParts {
        bits: spec.bits,
        group_size: spec.group_size,
        rows,
        cols,
        codes: vec![0; rows * cols],
        scales: vec![0.0; rows * ng],
        zeros: vec![1; rows * ng],
        g_idx: (0..cols).map(|c| (c / spec.group_size) as u32).collect(),
    };
    shrink_io::hf_int::gptq_tensors(module, &parts).map_err(format_err(module))
}

/// config.json with the `gptq` `quantization_config` of `spec`, the tokenizer, and
/// `quantize_config.json`.
pub(crate) fn write_gptq_config(
    run: &Run,
    o: &Opened,
    out: &OutputDir,
    spec: &GptqSpec,
) -> Result<()> {
    let qcfg = shrink_io::hf_int::gptq_config(
        spec.bits,
        Some(spec.group_size),
        spec.act_order && !spec.static_groups,
        spec.sym,
        spec.damp,
        false,
        spec.static_groups,
    );
    let qfile = shrink_io::hf_int::gptq_quantize_config(&qcfg);
    let dense_name = run.dense_dtype.torch_name();
    output::write_config_and_tokenizer(run.ckpt, o.arch.decoder(), out, dense_name, Some(qcfg))?;
    let text = serde_json::to_string_pretty(&qfile).expect("JSON values serialize");
    out.write("quantize_config.json", text.as_bytes())?;
    Ok(())
}

/// Run GPTQ with `spec` (Hessians accumulated in float64 if `f64_hessian`) and write the HF
/// `gptq` layout, with `quantize_config.json`.
pub fn gptq(run: &Run, spec: GptqSpec, f64_hessian: bool) -> Result<Report> {
    let t_start = Instant::now();
    let o = open(run, "GPTQ", |l| {
        spec.validate(&l.weight, l.out_features, l.in_features)
    })?;
    let blank = |module: &str, rows: usize, cols: usize| gptq_blank(&spec, module, rows, cols);
    let store = |module: &str, parts: &GptqParts| {
        shrink_io::hf_int::gptq_tensors(module, parts).map_err(format_err(module))
    };
    let mut step = GptqStep {
        spec,
        per_weight: None,
        store: &store,
        f64_hessian,
        names: &o.names,
        slots: o.seq.linears(),
        path: run.ckpt.path(),
        hs: HashMap::new(),
        asym: spec.gptaq_alpha.map(|_| Asymmetry::default()),
        tally: GptqTally::default(),
    };
    let plan = o.plan(run.dense_dtype, blank)?;
    let d = drive(
        run,
        &o,
        "gptq layers",
        &format!("{spec:?} f64_hessian={f64_hessian}"),
        &plan,
        pipeline::file_metadata(&o.selected),
        &mut step,
    )?;
    write_gptq_config(run, &o, &d.out, &spec)?;

    let mut r = gptq_report(run, &o, gptq_name(&spec), &d, &step.tally, t_start);
    let t = &step.tally;
    r.set("max_damp", t.max_damp);
    r.set("gptaq_alpha", spec.gptaq_alpha);
    r.set("clip_search", spec.clip_search);
    r.set("gptq_solve_seconds", t.seconds);
    r.notes.push(format!(
        "calibration    {} samples × {} tokens",
        run.samples.len(),
        run.samples.first().map_or(0, Vec::len)
    ));
    d.commit(&mut r)?;
    Ok(r)
}

/// The report of a GPTQ run named `method`, from its output `d` and what it tallied.
fn gptq_report(
    run: &Run,
    o: &Opened,
    method: String,
    d: &Driven,
    t: &GptqTally,
    t_start: Instant,
) -> Report {
    let mut r = Report::new(
        run.ckpt.path().to_path_buf(),
        run.output.to_path_buf(),
        method,
        d.sizes,
    );
    r.calibration = Some(run.calibration.clone());
    r.against_input(run.ckpt);
    r.quantized_tensors = o.selected.len();
    r.relative_rmse = Some((t.sq.0 / t.sq.1.max(f64::MIN_POSITIVE)).sqrt());
    r.quantize_seconds = t.seconds;
    r.seconds = t_start.elapsed().as_secs_f64();
    r.set("gptq_loss_per_layer", &t.losses);
    r
}

/// A weight's compressed-tensors tensors with every value 0 (their sizes and names, for the
/// output's plan).
fn int_blank(spec: &IntSpec, module: &str, rows: usize, cols: usize) -> Vec<StoredTensor> {
    let n = spec.num_scales(rows, cols);
    let t = IntTensor {
        spec: *spec,
        rows,
        cols,
        packed: vec![0; rows * spec.row_bytes(cols)],
        scales: vec![0; n * spec.scale_type.size()],
        zeros: (!spec.symmetric).then(|| vec![0; n]),
    };
    shrink_io::quantized::ct_tensors(module, &t)
}

/// GPTQ's result `parts` on the integer grid `spec` it was run for (`to_int_tensor` gives
/// asymmetric groups; a symmetric grid's zero points are its fixed offset, a group spanning
/// the row is a channel).
fn on_grid(module: &str, parts: &GptqParts, spec: &IntSpec) -> Result<IntTensor> {
    let mut t = parts.to_int_tensor().ok_or_else(|| {
        MethodError::Options(format!(
            "{module}: GPTQ's groups do not fit {}",
            spec.name()
        ))
    })?;
    if spec.symmetric {
        let off = 1u8 << (spec.bits - 1);
        if t.zeros
            .as_ref()
            .is_some_and(|z| z.iter().any(|&v| v != off))
        {
            return Err(MethodError::Options(format!(
                "{module}: symmetric GPTQ gave zero points other than {off}"
            )));
        }
        t.zeros = None;
    }
    t.spec = *spec;
    Ok(t)
}

/// GPTQ with an integer grid of its own for each selected block linear (`shrink auto`'s mix,
/// `grids` by weight name; `base` gives the dampening, order and clipping all share), written
/// as compressed-tensors with `qcfg` as its `quantization_config`. `outside` holds the layouts
/// of weights outside the blocks (the token table, an untied head), encoded beforehand, which
/// take their place in the file.
pub fn gptq_mix(
    run: &Run,
    base: GptqSpec,
    grids: &HashMap<String, IntSpec>,
    outside: Vec<(String, Vec<StoredTensor>)>,
    qcfg: serde_json::Value,
) -> Result<Report> {
    let t_start = Instant::now();
    let o = open(run, "GPTQ", |l| {
        let spec = grids.get(&l.weight).ok_or_else(|| {
            MethodError::Options(format!("{}: selected but given no grid", l.weight))
        })?;
        spec.validate(l.out_features, l.in_features)
            .map_err(format_err(&l.weight))
    })?;
    let per_weight: HashMap<String, GptqSpec> = o
        .selected
        .iter()
        .map(|l| {
            let g = &grids[&l.weight];
            let group_size = match g.granularity {
                Granularity::Group(n) => n,
                _ => l.in_features,
            };
            let spec = GptqSpec {
                bits: g.bits,
                group_size,
                sym: g.symmetric,
                ..base
            };
            (l.weight.clone(), spec)
        })
        .collect();
    let blank = |module: &str, rows: usize, cols: usize| {
        Ok(int_blank(
            &grids[&format!("{module}.weight")],
            module,
            rows,
            cols,
        ))
    };
    let mut plan = o.plan(run.dense_dtype, blank)?;
    // The weights outside the blocks, already encoded, in place of their dense entries.
    for (weight, tensors) in outside {
        let k = plan
            .header
            .iter()
            .position(|h| h.name == weight)
            .ok_or_else(|| MethodError::Options(format!("{weight}: not in the model")))?;
        let old = plan.header.remove(k);
        let origin = plan.origin.remove(k);
        plan.dense_bytes -= old.len as u64;
        plan.q_params += old.shape.iter().product::<usize>() as u64;
        for (j, t) in tensors.into_iter().enumerate() {
            plan.q_bytes += t.bytes.len() as u64;
            plan.header.insert(k + j, pipeline::header_of(&t));
            plan.origin.insert(k + j, origin);
            plan.encoded.insert(t.name.clone(), t);
        }
    }
    let store = |module: &str, parts: &GptqParts| {
        let t = on_grid(module, parts, &grids[&format!("{module}.weight")])?;
        Ok(shrink_io::quantized::ct_tensors(module, &t))
    };
    let mut step = GptqStep {
        spec: base,
        per_weight: Some(&per_weight),
        store: &store,
        f64_hessian: false,
        names: &o.names,
        slots: o.seq.linears(),
        path: run.ckpt.path(),
        hs: HashMap::new(),
        asym: None,
        tally: GptqTally::default(),
    };
    let d = drive(
        run,
        &o,
        "gptq layers",
        &format!("{base:?} {per_weight:?}"),
        &plan,
        pipeline::file_metadata(&o.selected),
        &mut step,
    )?;
    let dense_name = run.dense_dtype.torch_name();
    output::write_config_and_tokenizer(run.ckpt, o.arch.decoder(), &d.out, dense_name, Some(qcfg))?;
    let mut r = gptq_report(run, &o, "gptq-mix".into(), &d, &step.tally, t_start);
    r.set("clip_search", base.clip_search);
    d.commit(&mut r)?;
    Ok(r)
}

// ---------------------------------------------------------------------------------------
// AWQ
// ---------------------------------------------------------------------------------------

/// What AWQ did to one block, for the report: per group (named by the linear before it), the
/// ratio chosen and its loss.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct AwqLayer {
    groups: Vec<(String, f32, f64)>,
    output_rel_err: f64,
}

/// AWQ as a layer step: the block's inputs kept, then [`awq::quantize_block`]; the tensors it
/// rescales but leaves dense (norms, biases, unselected weights) are stored rounded to the
/// dense type, and the block keeps those rounded values, so the next block sees what the file
/// holds.
struct AwqStep<'a> {
    spec: AwqSpec,
    names: &'a HashSet<String>,
    header: HashSet<String>,
    /// Conv1D weights (GPT-2), stored [in, out] by their checkpoint.
    conv1d: HashSet<String>,
    slots: &'static [LinearSlot],
    dense_dtype: FloatType,
    inputs: BlockInputs,
    layers: Vec<AwqLayer>,
    pending: Vec<(String, f32, f64)>,
    seconds: f64,
}

/// Round `v` to what `dtype` stores.
pub(crate) fn stored_values(dtype: FloatType, v: &mut [f32]) {
    if dtype != FloatType::F32 {
        let b = float::encode(dtype, v);
        float::decode(dtype, &b, v);
    }
}

/// A tensor AWQ left dense: name, values, and the (rows, cols) of a Conv1D weight to
/// transpose back.
type DenseTensor<'a> = (String, &'a mut Vec<f32>, Option<(usize, usize)>);

impl AwqStep<'_> {
    /// Store the dense tensors of block `l` as AWQ left them, rounded to the dense type (an
    /// unselected Conv1D weight back in its checkpoint's [in, out] layout).
    fn store_dense(&self, seq: &Sequential, l: usize, lw: &mut LayerWeights, stored: &mut Stored) {
        let mut dense: Vec<DenseTensor> = Vec::new();
        for n in lw.norms.iter_mut() {
            dense.push((
                seq.tensor_name(l, &format!("{}.weight", n.name)),
                &mut n.w,
                None,
            ));
            if let Some(b) = n.bias.as_mut() {
                dense.push((seq.tensor_name(l, &format!("{}.bias", n.name)), b, None));
            }
        }
        for lin in lw.linears.iter_mut() {
            if let Some(b) = lin.bias.as_mut() {
                dense.push((seq.tensor_name(l, &format!("{}.bias", lin.name)), b, None));
            }
            let name = seq.weight_name(l, lin.name);
            if !self.names.contains(&name) {
                let t = self.conv1d.contains(&name).then_some((lin.rows, lin.cols));
                dense.push((name, &mut lin.w, t));
            }
        }
        for (name, v, transpose) in dense {
            if !self.header.contains(&name) {
                continue;
            }
            stored_values(self.dense_dtype, v);
            let bytes = match transpose {
                Some((rows, cols)) => {
                    let t: Vec<f32> = (0..rows * cols)
                        .map(|k| v[(k % rows) * cols + k / rows])
                        .collect();
                    float::encode(self.dense_dtype, &t)
                }
                None => float::encode(self.dense_dtype, v),
            };
            stored.insert(
                name.clone(),
                StoredTensor {
                    name,
                    dtype: shrink_io::safetensors_dtype(self.dense_dtype),
                    shape: vec![],
                    bytes,
                },
            );
        }
    }
}

impl LayerStep for AwqStep<'_> {
    fn kind(&self) -> StepKind {
        StepKind::Compress { compare: true }
    }

    fn observe(&mut self, _: usize, linear: &str, x: &Tensor) -> shrink_models::Result<()> {
        self.inputs.observe(self.slots, linear, x);
        Ok(())
    }

    fn compress(
        &mut self,
        seq: &Sequential,
        l: usize,
        block: &mut dyn Block,
        stored: &mut Stored,
    ) -> Result<()> {
        let t = Instant::now();
        let mut inputs = std::mem::take(&mut self.inputs);
        let selected = |name: &str| self.names.contains(&seq.weight_name(l, name));
        let r = awq::quantize_block(seq, l, block, &mut inputs, &self.spec, &selected)?;
        drop(inputs);
        for (name, parts) in &r.parts {
            let full = seq.weight_name(l, name);
            let module = full.strip_suffix(".weight").unwrap_or(&full);
            for s in
                shrink_io::hf_int::awq_parts_tensors(module, parts).map_err(format_err(module))?
            {
                stored.insert(s.name.clone(), s);
            }
        }
        let mut lw = r.weights;
        self.store_dense(seq, l, &mut lw, stored);
        if self.dense_dtype != FloatType::F32 {
            // The block computes with the values the file holds.
            lw.write(block)?;
        }
        self.seconds += t.elapsed().as_secs_f64();
        self.pending = r
            .groups
            .iter()
            .map(|g| (g.group.prev.name().to_string(), g.ratio, g.loss))
            .collect();
        Ok(())
    }

    fn after(&mut self, _l: usize, before: &[Tensor], after: &[Tensor]) -> Result<()> {
        let (mut num, mut den) = (0f64, 0f64);
        for (a, b) in after.iter().zip(before) {
            // Σ (a − b)² and Σ b², with the float output `b` as the reference.
            let (e, r) = squared_error(&pipeline::values(b)?, &pipeline::values(a)?);
            num += e;
            den += r;
        }
        self.layers.push(AwqLayer {
            groups: std::mem::take(&mut self.pending),
            output_rel_err: num / den.max(f64::MIN_POSITIVE),
        });
        Ok(())
    }

    fn carry(&self, _l: usize) -> Result<serde_json::Value> {
        Ok(serde_json::json!({"layer": self.layers.last(), "seconds": self.seconds}))
    }

    fn restore(&mut self, l: usize, carried: serde_json::Value) -> Result<()> {
        let (layer, seconds): (AwqLayer, f64) =
            carried_as(l, serde_json::json!([carried["layer"], carried["seconds"]]))?;
        self.layers.push(layer);
        self.seconds = seconds;
        Ok(())
    }
}

/// Run AWQ with `spec` and write AutoAWQ's GEMM layout (`quant_method: "awq"`), with
/// `quant_config.json`.
pub fn awq(run: &Run, spec: AwqSpec) -> Result<Report> {
    let t_start = Instant::now();
    let o = open(run, "AWQ", |l| {
        spec.validate(&l.weight, l.out_features, l.in_features)
    })?;
    let g = spec.group_size;
    let blank = |module: &str, rows: usize, cols: usize| {
        let parts = AwqParts {
            group_size: g,
            rows,
            cols,
            codes: vec![0; rows * cols],
            scales: vec![1.0; rows * (cols / g)],
            zeros: vec![0; rows * (cols / g)],
        };
        shrink_io::hf_int::awq_parts_tensors(module, &parts).map_err(format_err(module))
    };
    let plan = o.plan(run.dense_dtype, blank)?;
    let header = plan.header.iter().map(|h| h.name.clone()).collect();
    let mut step = AwqStep {
        spec,
        names: &o.names,
        header,
        conv1d: o
            .arch
            .block_linears()
            .into_iter()
            .filter(|l| l.conv1d)
            .map(|l| l.weight)
            .collect(),
        slots: o.seq.linears(),
        dense_dtype: run.dense_dtype,
        inputs: BlockInputs::default(),
        layers: Vec::new(),
        pending: Vec::new(),
        seconds: 0.0,
    };
    let d = drive(
        run,
        &o,
        "awq layers",
        &format!("{spec:?}"),
        &plan,
        pipeline::file_metadata(&o.selected),
        &mut step,
    )?;
    let bits = spec.bits;
    let mut qcfg = shrink_io::hf_int::awq_config(bits, Some(g), true, "gemm");
    let mut qfile = shrink_io::hf_int::awq_quant_config(bits, Some(g), true, "gemm");
    let left: Vec<String> = o
        .arch
        .block_linears()
        .iter()
        .filter(|l| !o.names.contains(&l.weight))
        .map(|l| {
            l.weight
                .strip_suffix(".weight")
                .unwrap_or(&l.weight)
                .to_string()
        })
        .collect();
    if !left.is_empty() {
        qcfg["modules_to_not_convert"] = serde_json::json!(left);
        qfile["modules_to_not_convert"] = serde_json::json!(left);
    }
    let dense_name = run.dense_dtype.torch_name();
    output::write_config_and_tokenizer(run.ckpt, o.arch.decoder(), &d.out, dense_name, Some(qcfg))?;
    let text = serde_json::to_string_pretty(&qfile).expect("JSON values serialize");
    d.out.write("quant_config.json", text.as_bytes())?;

    let mut r = Report::new(
        run.ckpt.path().to_path_buf(),
        run.output.to_path_buf(),
        format!("awq-w{bits}g{g}-asym"),
        d.sizes,
    );
    let mut calibration = run.calibration.clone();
    if let Some(c) = calibration.as_object_mut() {
        let n = spec.search_samples.min(run.samples.len());
        c.insert("search_samples".into(), n.into());
        c.insert("clip_tokens".into(), spec.clip_tokens.into());
    }
    r.calibration = Some(calibration);
    r.against_input(run.ckpt);
    r.quantized_tensors = o.selected.len();
    r.quantize_seconds = step.seconds;
    r.seconds = t_start.elapsed().as_secs_f64();
    let layers = &step.layers;
    let mean = layers.iter().map(|s| s.output_rel_err).sum::<f64>() / layers.len().max(1) as f64;
    let per_layer: Vec<serde_json::Value> = layers
        .iter()
        .enumerate()
        .map(|(l, s)| {
            let map = |f: &dyn Fn(&(String, f32, f64)) -> serde_json::Value| {
                s.groups
                    .iter()
                    .map(|g| (g.0.clone(), f(g)))
                    .collect::<serde_json::Map<_, _>>()
            };
            serde_json::json!({
                "layer": l,
                "ratios": map(&|g| serde_json::json!(g.1)),
                "losses": map(&|g| serde_json::json!(g.2)),
                "output_relative_mse": s.output_rel_err,
            })
        })
        .collect();
    r.set("mean_layer_output_relative_mse", mean);
    r.set("awq_layers", per_layer);
    r.set("awq_seconds", step.seconds);
    r.notes.push(format!(
        "layer error    mean relative MSE of the layers' outputs {mean:.3e}"
    ));
    d.commit(&mut r)?;
    Ok(r)
}

// ---------------------------------------------------------------------------------------
// The importance matrix
// ---------------------------------------------------------------------------------------

/// llama.cpp's importance matrix as a layer step: per linear, the sum of x² of each input
/// column and the rows seen; blocks are not changed.
struct ImatrixStep {
    sums: HashMap<String, (Vec<f64>, usize)>,
    chunks: usize,
    m: Imatrix,
    /// The entries the last block added (what a resumed run carries).
    last: Vec<String>,
}

impl LayerStep for ImatrixStep {
    fn kind(&self) -> StepKind {
        StepKind::Observe
    }

    fn observe(&mut self, _: usize, linear: &str, x: &Tensor) -> shrink_models::Result<()> {
        let (v, n) = pipeline::rows(x)?;
        let e = self.sums.entry(linear.to_string()).or_default();
        e.1 += crate::hessian::add_squares(&mut e.0, &v, n);
        Ok(())
    }

    fn compress(
        &mut self,
        seq: &Sequential,
        l: usize,
        _block: &mut dyn Block,
        _stored: &mut Stored,
    ) -> Result<()> {
        self.last.clear();
        for s in seq.linears() {
            let (sum, count) = self
                .sums
                .remove(s.name)
                .ok_or_else(|| MethodError::Options(format!("{} was not observed", s.name)))?;
            let hf = seq.weight_name(l, s.name);
            let name = seq.stack().gguf_name(&hf).unwrap_or(hf);
            self.m.ncall.insert(name.clone(), self.chunks as i32);
            self.m.entries.insert(
                name.clone(),
                sum.iter().map(|&v| (v / count as f64) as f32).collect(),
            );
            self.last.push(name);
        }
        Ok(())
    }

    fn carry(&self, _l: usize) -> Result<serde_json::Value> {
        let entries: HashMap<&str, &Vec<f32>> = self
            .last
            .iter()
            .filter_map(|n| self.m.entries.get(n).map(|v| (n.as_str(), v)))
            .collect();
        Ok(serde_json::json!(entries))
    }

    fn restore(&mut self, l: usize, carried: serde_json::Value) -> Result<()> {
        let entries: HashMap<String, Vec<f32>> = carried_as(l, carried)?;
        for (name, v) in entries {
            self.m.ncall.insert(name.clone(), self.chunks as i32);
            self.m.entries.insert(name, v);
        }
        Ok(())
    }
}

/// llama.cpp's importance matrix (mean x² per input column of every linear, entries named as
/// in GGUF) of `ckpt` on the text `chunks` (consecutive pieces of the text, as llama-imatrix
/// cuts it). With `run_dir`, each finished layer's entries are kept there and an interrupted
/// run continues (see [`crate::resume`]); the state is returned, to
/// [`LayerState::finish`] once the matrix is written.
pub fn imatrix(
    ckpt: &Checkpoint,
    chunks: &[Vec<u32>],
    run_dir: Option<&RunDir>,
    progress: &dyn Progress,
) -> Result<(Imatrix, Option<LayerState>)> {
    let seq = Sequential::new(ckpt)?;
    let mut step = ImatrixStep {
        sums: HashMap::new(),
        chunks: chunks.len(),
        m: Imatrix::new(),
        last: Vec::new(),
    };
    let state = match run_dir {
        Some(dir) => {
            let id = resume::identity(ckpt.path(), "imatrix", "", chunks, serde_json::Value::Null);
            Some(LayerState::open(dir, id, &[ckpt.path()])?)
        }
        None => None,
    };
    let state = pipeline::observe_all(&seq, chunks, &mut step, state, progress)?;
    let mut m = step.m;
    m.chunks = Some(chunks.len() as u32);
    m.chunk_size = chunks.first().map(|c| c.len() as u32);
    Ok((m, state))
}
