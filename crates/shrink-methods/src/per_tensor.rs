//! Per-tensor methods over a whole checkpoint: each selected linear is read, encoded in a
//! quantized safetensors layout and written, one weight resident at a time; every other
//! weight is stored dense.
//!
//! - [`WeightQuantizer`]: one weight → the shared [`Quantized`] form ([`Rtn`], [`Hqq`]);
//! - [`Encoder`]: how the selected weights become a layout's tensors and `quantization_config`
//!   ([`QuantizerEncoder`] for `shrink quantize`; the ecosystem layouts of
//!   [`crate::export_layout`]);
//! - [`write_encoded`]: the streaming two-pass writer (sizes, then bytes) and its [`Report`].

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use serde_json::Value;
use shrink_formats::float::{self, FloatType};
use shrink_formats::hqq_layout::HqqSpec;
use shrink_io::quantized::{self as layouts, Quantized, StoredTensor};
use shrink_io::{Checkpoint, OutputDir, TensorHeader};
use shrink_models::{Architecture, LinearInfo, ModelError, WeightLoader};

use crate::error::{MethodError, Result};
use crate::hqq::HqqOptions;
use crate::pipeline::{file_metadata, header_of, Progress};
use crate::report::{squared_error, Report, Sizes};
use crate::rtn::Rtn;
use crate::select::Selection;

/// A method that quantizes one weight on its own (no calibration).
pub trait WeightQuantizer: Sync {
    /// Short name for reports (`int4-g64-asym-f16`, `nf4-b64-dq`, ...).
    fn name(&self) -> String;
    /// Check the parameters against weight `name` of `rows × cols` before any work is done.
    fn validate(&self, name: &str, rows: usize, cols: usize) -> Result<()>;
    /// Quantize the row-major [rows, cols] weight `w` (rows = output features).
    fn quantize(&self, name: &str, w: &[f32], rows: usize, cols: usize) -> Result<Quantized>;
    /// config.json's `quantization_config`; `ignore` lists the modules left dense.
    fn config(&self, ignore: &[String], dense_dtype: &str) -> Value;
}

impl WeightQuantizer for Rtn {
    fn name(&self) -> String {
        Rtn::name(self)
    }
    fn validate(&self, name: &str, rows: usize, cols: usize) -> Result<()> {
        Rtn::validate(self, name, rows, cols)
    }
    fn quantize(&self, name: &str, w: &[f32], rows: usize, cols: usize) -> Result<Quantized> {
        Rtn::quantize(self, name, w, rows, cols)
    }
    fn config(&self, ignore: &[String], dense_dtype: &str) -> Value {
        Rtn::config(self, ignore, dense_dtype)
    }
}

/// HQQ (half-quadratic optimisation of each group's zero point, [`crate::hqq`]), stored in
/// shrink's `shrink-hqq` layout.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hqq {
    /// Bits, group size and axis.
    pub spec: HqqSpec,
    /// The solver's parameters.
    pub options: HqqOptions,
}

impl WeightQuantizer for Hqq {
    fn name(&self) -> String {
        self.spec.name()
    }
    fn validate(&self, name: &str, rows: usize, cols: usize) -> Result<()> {
        self.options.validate()?;
        self.spec
            .validate(rows, cols)
            .map_err(|source| MethodError::Format {
                name: name.to_string(),
                source,
            })
    }
    fn quantize(&self, _name: &str, w: &[f32], rows: usize, cols: usize) -> Result<Quantized> {
        let t = crate::hqq::quantize(w, rows, cols, self.spec, self.options)?;
        Ok(Quantized::Hqq(t))
    }
    fn config(&self, ignore: &[String], _dense_dtype: &str) -> Value {
        layouts::hqq_config(&self.spec, ignore)
    }
}

/// The stored tensors of module `module` holding `q` in the layout its kind is written in
/// (compressed-tensors integers / W8A8, bitsandbytes 4-bit / 8-bit, shrink-hqq); `dense_dtype`
/// is the torch dtype name bitsandbytes' quant state records.
pub fn layout(module: &str, q: &Quantized, dense_dtype: &str) -> Result<Vec<StoredTensor>> {
    Ok(match q {
        Quantized::Int(t) => layouts::ct_tensors(module, t),
        Quantized::W8A8(t) => layouts::ct_w8a8_tensors(module, t),
        Quantized::Nf4(t, shape) => layouts::bnb4_tensors(module, t, shape, dense_dtype),
        Quantized::Int8Row(t, _) => layouts::bnb8_tensors(module, t),
        Quantized::Hqq(t) => layouts::hqq_tensors(module, t),
        Quantized::Dense { .. } => {
            return Err(MethodError::Options(format!(
                "{module}: a weight decoded to float has no quantized layout"
            )))
        }
        Quantized::ActOrder { .. } => {
            return Err(MethodError::Options(format!(
                "{module}: a GPTQ act-order weight has no layout of these kinds"
            )))
        }
    })
}

/// One selected weight as it will be stored.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// The layout's tensors.
    pub stored: Vec<StoredTensor>,
    /// The weight as the layout gives it back, row-major [out, in].
    pub dequantized: Vec<f32>,
    /// Bytes of codes, scales and zero points.
    pub stored_bytes: usize,
    /// Seconds in the quantizer.
    pub seconds: f64,
    /// The weight as read from the input, when the encoder read it (`None`: the input's own
    /// quantized codes were kept, so the weight is `dequantized` exactly).
    pub input: Option<Vec<f32>>,
}

/// How the selected weights of a model become a quantized safetensors layout.
pub trait Encoder {
    /// The method / layout, for reports.
    fn name(&self) -> String;
    /// Refuse a weight before anything is read or written.
    fn validate(&self, l: &LinearInfo) -> Result<()>;
    /// Encode a weight: `read` gives it as [out, in] float32 (dequantized if stored quantized);
    /// `source` is the input's own quantized form of it, when the input stores it quantized and
    /// the encoder asked for it (an encoder that keeps it need not read the weight).
    fn encode(
        &self,
        l: &LinearInfo,
        read: &mut dyn FnMut() -> Result<Vec<f32>>,
        source: Option<Quantized>,
    ) -> Result<Encoded>;
    /// Whether `encode` wants the input's quantized form.
    fn wants_source(&self) -> bool {
        false
    }
    /// config.json's `quantization_config`; `ignore` lists the linears left dense.
    fn config(&self, ignore: &[String], dense_dtype: &str) -> Value;
    /// Files written beside config.json (name, bytes), given the `quantization_config`.
    fn extra_files(&self, _config: &Value) -> Result<Vec<(String, Vec<u8>)>> {
        Ok(Vec::new())
    }
    /// Add the encoder's own fields and text lines to the report (after it has run).
    fn report(&self, _r: &mut Report) {}
    /// Seconds the method spent before the writing began (an encoder of weights trained
    /// beforehand, as Block-AP's), counted in the report's method and total times.
    fn seconds_before(&self) -> f64 {
        0.0
    }
}

/// Quantize `w` of weight `l` with `q` and store it in `q`'s layout.
pub fn encode_with(
    q: &dyn WeightQuantizer,
    l: &LinearInfo,
    w: Vec<f32>,
    dense_dtype: &str,
) -> Result<Encoded> {
    let t = Instant::now();
    let qw = q.quantize(&l.weight, &w, l.out_features, l.in_features)?;
    let seconds = t.elapsed().as_secs_f64();
    encoded(l, qw, Some(w), seconds, |module, q| {
        layout(module, q, dense_dtype)
    })
}

/// `q` of weight `l` stored by `lay(module, q)`.
pub fn encoded(
    l: &LinearInfo,
    q: Quantized,
    input: Option<Vec<f32>>,
    seconds: f64,
    lay: impl FnOnce(&str, &Quantized) -> Result<Vec<StoredTensor>>,
) -> Result<Encoded> {
    let module = l.weight.strip_suffix(".weight").unwrap_or(&l.weight);
    Ok(Encoded {
        stored: lay(module, &q)?,
        dequantized: q.dequantize().0,
        stored_bytes: q.stored_bytes(),
        seconds,
        input,
    })
}

/// A [`WeightQuantizer`] applied to every selected weight, each in its own layout (with the
/// dense tensors' torch dtype name, which bitsandbytes' quant state records).
pub struct QuantizerEncoder {
    /// The method.
    pub method: Box<dyn WeightQuantizer>,
    /// Storage type of the dense tensors.
    pub dense_dtype: FloatType,
}

impl Encoder for QuantizerEncoder {
    fn name(&self) -> String {
        self.method.name()
    }
    fn validate(&self, l: &LinearInfo) -> Result<()> {
        self.method
            .validate(&l.weight, l.out_features, l.in_features)
    }
    fn encode(
        &self,
        l: &LinearInfo,
        read: &mut dyn FnMut() -> Result<Vec<f32>>,
        _source: Option<Quantized>,
    ) -> Result<Encoded> {
        encode_with(
            self.method.as_ref(),
            l,
            read()?,
            self.dense_dtype.torch_name(),
        )
    }
    fn config(&self, ignore: &[String], dense_dtype: &str) -> Value {
        self.method.config(ignore, dense_dtype)
    }
}

/// Where a per-tensor run reads and writes.
pub struct Job<'a> {
    /// The input checkpoint.
    pub ckpt: &'a Checkpoint,
    /// The output directory (must not exist).
    pub output: &'a Path,
    /// Which weights to encode.
    pub selection: &'a Selection,
    /// Storage type of every other tensor.
    pub dense_dtype: FloatType,
    /// Progress of the two passes.
    pub progress: &'a dyn Progress,
}

/// Weight `name` (stored `shape`) as `[out, in]` float32: GPT-2's Conv1D weights (`conv1d`)
/// transposed.
pub(crate) fn read_out_in(
    arch: &Architecture,
    loader: &WeightLoader,
    name: &str,
    shape: &[usize],
    conv1d: bool,
) -> Result<Vec<f32>> {
    let t = arch.read_weight(loader, name, shape)?;
    let t = if conv1d {
        t.t()
            .and_then(|t| t.contiguous())
            .map_err(ModelError::from)?
    } else {
        t
    };
    crate::pipeline::values(&t)
}

/// The model as the writer walks it: architecture, selected linears by weight name, shapes.
struct Walk<'a> {
    ckpt: &'a Checkpoint,
    arch: &'a Architecture,
    loader: WeightLoader<'a>,
    by_name: HashMap<&'a str, &'a LinearInfo>,
    shapes: Vec<(String, Vec<usize>)>,
    enc: &'a dyn Encoder,
}

impl Walk<'_> {
    /// A weight as [out, in] float32 (GPT-2's Conv1D weights are transposed here).
    fn read(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let conv1d = self.by_name.get(name).is_some_and(|l| l.conv1d);
        read_out_in(self.arch, &self.loader, name, shape, conv1d)
    }

    /// Selected weight `l` (`shapes[i]`) encoded, from the input's quantized form too when
    /// the encoder wants it.
    fn encode(&self, l: &LinearInfo, i: usize) -> Result<Encoded> {
        let (name, shape) = &self.shapes[i];
        // Stored quantized weights are [out, in] (GPT-2's Conv1D ones too).
        let source = match self.ckpt {
            Checkpoint::Hf(h) if self.enc.wants_source() => h
                .quantized(&l.weight)?
                .filter(|q| q.shape() == (l.out_features, l.in_features)),
            _ => None,
        };
        self.enc.encode(l, &mut || self.read(name, shape), source)
    }
}

/// What pass 1 learned: the file's header, where each entry comes from, sizes and error.
#[derive(Default)]
struct Pass1 {
    header: Vec<TensorHeader>,
    /// For each header entry: index into the shapes.
    origin: Vec<usize>,
    sizes: Sizes,
    q_file_bytes: u64,
    sq_err: f64,
    sq_ref: f64,
    seconds: f64,
    reused: usize,
}

/// Pass 1: encode every selected weight once to learn the layout's tensor sizes (some, like
/// bitsandbytes' JSON quant state, depend on the values) and measure the error.
fn plan(w: &Walk, dense_dtype: FloatType, progress: &dyn Progress) -> Result<Pass1> {
    let mut p = Pass1::default();
    progress.start("quantize", w.shapes.len() as u64);
    for (i, (name, shape)) in w.shapes.iter().enumerate() {
        progress.inc(1);
        p.sizes.total_params += shape.iter().product::<usize>() as u64;
        let Some(l) = w.by_name.get(name.as_str()) else {
            let n = shape.iter().product::<usize>() * dense_dtype.size();
            p.sizes.dense_bytes += n as u64;
            p.header.push(TensorHeader {
                name: name.clone(),
                dtype: shrink_io::safetensors_dtype(dense_dtype),
                shape: shape.clone(),
                len: n,
            });
            p.origin.push(i);
            continue;
        };
        let e = w.encode(l, i)?;
        p.seconds += e.seconds;
        p.reused += usize::from(e.input.is_none());
        let (se, sr) = squared_error(e.input.as_deref().unwrap_or(&e.dequantized), &e.dequantized);
        p.sq_err += se;
        p.sq_ref += sr;
        p.sizes.quantized_params += (l.out_features * l.in_features) as u64;
        p.sizes.quantized_bytes += e.stored_bytes as u64;
        for s in &e.stored {
            p.q_file_bytes += s.bytes.len() as u64;
            p.header.push(header_of(s));
            p.origin.push(i);
        }
    }
    progress.finish();
    Ok(p)
}

/// Pass 2: write in module order; each module is encoded once and its pieces served in turn.
fn write(w: &Walk, p: &Pass1, out: &OutputDir, job: &Job, selected: &[LinearInfo]) -> Result<()> {
    let cache: RefCell<Option<(usize, Vec<StoredTensor>)>> = RefCell::new(None);
    job.progress.start("write", p.header.len() as u64);
    shrink_io::write_safetensors_ordered(
        &out.file("model.safetensors"),
        &p.header,
        Some(file_metadata(selected)),
        |k| -> Result<Vec<u8>> {
            job.progress.inc(1);
            let i = p.origin[k];
            let (name, shape) = &w.shapes[i];
            let Some(l) = w.by_name.get(name.as_str()) else {
                return Ok(float::encode(job.dense_dtype, &w.read(name, shape)?));
            };
            let mut c = cache.borrow_mut();
            if c.as_ref().is_none_or(|(j, _)| *j != i) {
                *c = Some((i, w.encode(l, i)?.stored));
            }
            let stored = &c.as_ref().expect("just filled").1;
            let s = stored
                .iter()
                .find(|s| s.name == p.header[k].name)
                .expect("layout is deterministic");
            Ok(s.bytes.clone())
        },
    )?;
    job.progress.finish();
    Ok(())
}

/// The `quantization_config`'s `ignore` list: every 2-D weight of `shapes` not `quantized`, by
/// module name, and `lm_head` unless it is quantized (a tied or dense head loaders would
/// otherwise take for quantized).
pub(crate) fn ignored(
    shapes: &[(String, Vec<usize>)],
    quantized: impl Fn(&str) -> bool,
) -> Vec<String> {
    shapes
        .iter()
        .filter(|(n, s)| s.len() == 2 && !quantized(n))
        .map(|(n, _)| n.strip_suffix(".weight").unwrap_or(n).to_string())
        .chain((!quantized("lm_head.weight")).then(|| "lm_head".to_string()))
        .collect()
}

/// Write `job.ckpt` to `job.output` with the selected linears encoded by `enc` and the rest
/// stored dense; streams (two passes: sizes, then bytes, one weight resident at a time),
/// writes config, tokenizer and the report beside the weights, commits the directory, and
/// returns the report.
pub fn write_encoded(job: &Job, enc: &dyn Encoder) -> Result<Report> {
    let t0 = Instant::now();
    let model = job.ckpt.path();
    let arch = Architecture::from_checkpoint(job.ckpt)?;
    let selected = job.selection.resolve(&arch)?;
    // Refuse impossible parameters before reading or writing anything.
    for l in &selected {
        enc.validate(l)?;
    }
    let out = OutputDir::create(job.output, &[model])?;
    let w = Walk {
        ckpt: job.ckpt,
        arch: &arch,
        loader: arch.weight_loader(job.ckpt),
        by_name: selected.iter().map(|l| (l.weight.as_str(), l)).collect(),
        shapes: arch.weight_shapes(),
        enc,
    };
    let p = plan(&w, job.dense_dtype, job.progress)?;
    let pass1_seconds = t0.elapsed().as_secs_f64();
    write(&w, &p, &out, job, &selected)?;

    let dense_name = job.dense_dtype.torch_name();
    let ignore = ignored(&w.shapes, |n| w.by_name.contains_key(n));
    let qcfg = enc.config(&ignore, dense_name);
    let extra = enc.extra_files(&qcfg)?;
    crate::output::write_config_and_tokenizer(
        job.ckpt,
        arch.decoder(),
        &out,
        dense_name,
        Some(qcfg),
    )?;
    for (name, bytes) in extra {
        out.write(&name, &bytes)?;
    }

    let r = report(job, enc, &p, selected.len(), pass1_seconds, t0);
    crate::output::commit(out, &r)?;
    Ok(r)
}

/// The report of a per-tensor run.
fn report(
    job: &Job,
    enc: &dyn Encoder,
    p: &Pass1,
    tensors: usize,
    pass1_seconds: f64,
    t0: Instant,
) -> Report {
    // model_bytes: everything the file stores for the weights (layout tables and shapes too);
    // bits/weight of the quantized weights: their codes, scales and zeros only.
    let file_sizes = Sizes {
        quantized_bytes: p.q_file_bytes,
        ..p.sizes
    };
    let mut r = Report::new(
        job.ckpt.path().to_path_buf(),
        job.output.to_path_buf(),
        enc.name(),
        file_sizes,
    );
    r.quantized_bytes = p.sizes.quantized_bytes;
    r.bits_per_weight_quantized =
        p.sizes.quantized_bytes as f64 * 8.0 / p.sizes.quantized_params as f64;
    r.quantized_tensors = tensors;
    r.against_input(job.ckpt);
    r.relative_rmse = Some((p.sq_err / p.sq_ref.max(f64::MIN_POSITIVE)).sqrt());
    r.quantize_seconds = p.seconds + enc.seconds_before();
    let sqnr_db = 10.0 * (p.sq_ref / p.sq_err.max(f64::MIN_POSITIVE)).log10();
    r.set("quantized_file_bytes", p.q_file_bytes);
    r.set("sqnr_db", sqnr_db);
    r.set("read_and_quantize_seconds", pass1_seconds);
    r.set("reused_tensors", p.reused);
    r.notes.push(format!("sqnr           {sqnr_db:.1} dB"));
    enc.report(&mut r);
    r.seconds = t0.elapsed().as_secs_f64() + enc.seconds_before();
    r
}
