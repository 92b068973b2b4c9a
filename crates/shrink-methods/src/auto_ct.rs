//! `shrink auto --to compressed-tensors`: the per-tensor mix written as a compressed-tensors
//! checkpoint with one config group per integer grid, the token table included — the format
//! that reaches the low targets a GGUF cannot (llama.cpp's K-quants need rows that are a
//! multiple of 256; a 576-wide model has only 32-element blocks of ≥ 4.5 bits/weight).
//!
//! The options of every weight the probes can replace (the token table, an untied LM head,
//! every block linear) are integer grids ([`parse_grid`]: bits, group size, symmetric or not)
//! rounded by [`crate::weighted_int`] with the importance matrix, plus the float16 copy;
//! their bytes are exactly what the file stores for them (codes packed as compressed-tensors
//! packs them, scales, zero points, shape). Every other tensor is stored float16. Probing,
//! prediction and allocation are [`crate::auto`]'s, over this [`Storage`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::time::Instant;

use candle_core::{Device, Tensor};
use serde_json::Value;
use shrink_formats::float::FloatType;
use shrink_formats::int::{Granularity, IntSpec, IntTensor};
use shrink_io::imatrix::Imatrix;
use shrink_io::quantized::{self as layouts, Quantized};
use shrink_io::Checkpoint;
use shrink_models::layerwise::Sequential;
use shrink_models::{Architecture, LinearInfo};

use crate::allocate::Candidate;
use crate::auto::{
    self, Measure, Plan, Sensitivity, Storage, Target, TensorOption, TensorSensitivity,
};
use crate::error::{MethodError, Result};
use crate::per_tensor::{encoded, layout, read_out_in, write_encoded, Encoded, Encoder, Job};
use crate::pipeline::Progress;
use crate::report::Report;
use crate::select::Selection;

/// The grids `shrink auto --to compressed-tensors` chooses among by default: the widths
/// compressed-tensors packs densely (2, 4, 8 bits; 3, 5 and 6 are stored a byte a code) in
/// groups of 32, 64 and 128 and per channel, asymmetric.
pub const DEFAULT_GRIDS: &str =
    "int2-g32,int2-g64,int2-g128,int4-g32,int4-g64,int4-g128,int4-channel,int8-g64,int8-channel";

/// The grid a name such as `int4-g64`, `int4-sym-g128` or `int8-channel` stands for
/// (asymmetric unless `-sym`; float16 scales).
pub fn parse_grid(name: &str) -> Option<IntSpec> {
    let rest = name.strip_prefix("int")?;
    let (bits, rest) = rest.split_once('-')?;
    let bits: u8 = bits.parse().ok()?;
    let (symmetric, gran) = match rest.strip_prefix("sym-") {
        Some(g) => (true, g),
        None => (false, rest),
    };
    let granularity = match gran {
        "channel" => Granularity::Channel,
        g => Granularity::Group(g.strip_prefix('g')?.parse().ok().filter(|&g| g > 0)?),
    };
    let spec = IntSpec {
        bits,
        symmetric,
        granularity,
        scale_type: FloatType::F16,
    };
    shrink_formats::int::SUPPORTED_BITS
        .contains(&bits)
        .then_some(spec)
}

/// The name [`parse_grid`] reads back.
pub fn grid_name(s: &IntSpec) -> String {
    let g = match s.granularity {
        Granularity::Group(g) => format!("g{g}"),
        _ => "channel".into(),
    };
    format!("int{}-{}{g}", s.bits, if s.symmetric { "sym-" } else { "" })
}

/// Integer grids rounded with the importance of each weight's input columns.
pub struct CtStorage {
    /// HF name → importance of its input columns.
    importance: HashMap<String, Vec<f32>>,
    /// The weights a probe can replace.
    planned: HashSet<String>,
}

impl CtStorage {
    fn importance(&self, name: &str, cols: usize) -> Option<&[f32]> {
        self.importance
            .get(name)
            .filter(|v| v.len() == cols)
            .map(Vec::as_slice)
    }

    /// `w` (`[rows, cols]`) rounded to `spec`.
    fn quantize(
        &self,
        name: &str,
        w: &[f32],
        rows: usize,
        cols: usize,
        spec: IntSpec,
    ) -> Result<(IntTensor, f64)> {
        crate::weighted_int::quantize(name, w, rows, cols, spec, self.importance(name, cols))
    }
}

impl Storage for CtStorage {
    fn hf_name(&self, name: &str) -> Option<String> {
        self.planned.contains(name).then(|| name.to_string())
    }
    fn stored_as(&self, name: &str, ty: &str, w: &Tensor) -> Result<Tensor> {
        let cd = |e: candle_core::Error| MethodError::Model(e.into());
        let spec = parse_grid(ty)
            .ok_or_else(|| MethodError::Options(format!("{name}: {ty} is not an integer grid")))?;
        let (rows, cols) = w.dims2().map_err(cd)?;
        let data = crate::pipeline::values(w)?;
        let (t, _) = self.quantize(name, &data, rows, cols, spec)?;
        Tensor::from_vec(t.dequantize(), (rows, cols), &Device::Cpu).map_err(cd)
    }
}

/// The weights `shrink auto` plans for in compressed-tensors: the token table, the LM head
/// when untied, and every block linear, as the writer selects them (`[out, in]` shapes).
fn planned(arch: &Architecture, seq: &Sequential) -> Result<HashMap<String, LinearInfo>> {
    let (table, head) = seq.head_names()?;
    let shapes: HashMap<String, Vec<usize>> = arch.weight_shapes().into_iter().collect();
    let mut out = Vec::new();
    for name in [table, head] {
        if out.iter().any(|l: &LinearInfo| l.weight == name) {
            continue;
        }
        if let Some(s) = shapes.get(name).filter(|s| s.len() == 2) {
            out.push(LinearInfo {
                weight: name.to_string(),
                out_features: s[0],
                in_features: s[1],
                conv1d: false,
            });
        }
    }
    out.extend(arch.block_linears());
    Ok(out.into_iter().map(|l| (l.weight.clone(), l)).collect())
}

/// The importance of every planned weight's input columns, from the importance matrix (keyed
/// by llama.cpp's names) and the head's vector.
fn importance_by_hf(seq: &Sequential, im: &Imatrix) -> Result<HashMap<String, Vec<f32>>> {
    let (table, head) = seq.head_names()?;
    let mut hf = vec![table.to_string(), head.to_string()];
    for l in 0..seq.num_layers() {
        hf.extend(seq.linears().iter().map(|s| seq.weight_name(l, s.name)));
    }
    Ok(hf
        .into_iter()
        .filter_map(|h| {
            let g = seq.stack().gguf_name(&h)?;
            // The tied table's entry is the head's input importance (the embedding lookup
            // has no input to weigh).
            let v = im.entries.get(&g)?.clone();
            Some((h, v))
        })
        .collect())
}

/// The smallest and largest whole-model bits/weight any mix of `grids` reaches on `ckpt`
/// (every tensor not planned stored float16), without quantizing anything.
pub fn reachable_bpw(ckpt: &Checkpoint, grids: &[IntSpec]) -> Result<(f64, f64)> {
    let arch = Architecture::from_checkpoint(ckpt)?;
    let seq = Sequential::new(ckpt)?;
    let plan = planned(&arch, &seq)?;
    let mut options = Vec::new();
    let mut elements = 0u64;
    for (name, shape) in arch.weight_shapes() {
        let n = shape.iter().product::<usize>() as u64;
        elements += n;
        let mut o = vec![Candidate {
            bytes: 2 * n,
            loss: 0.0,
        }];
        if let Some(l) = plan.get(&name) {
            let (rows, cols) = (l.out_features, l.in_features);
            o.extend(
                grids
                    .iter()
                    .filter(|g| g.validate(rows, cols).is_ok())
                    .map(|g| Candidate {
                        bytes: layouts::ct_file_bytes(g, rows, cols),
                        loss: 0.0,
                    }),
            );
        }
        options.push(o);
    }
    let (lo, hi) = crate::allocate::reachable(&options)?;
    let bpw = |b: u64| b as f64 * 8.0 / elements.max(1) as f64;
    Ok((bpw(lo), bpw(hi)))
}

/// The sensitivity of every weight of `ckpt` to the grids `grids`: each planned weight's
/// options (float16 copy, every grid that fits its rows) with exact bytes and
/// importance-weighted error, then [`auto::probe`].
pub fn measure(
    ckpt: &Checkpoint,
    grids: &[IntSpec],
    storage: &CtStorage,
    m: &Measure,
    progress: &dyn Progress,
) -> Result<Sensitivity> {
    let t0 = Instant::now();
    let arch = Architecture::from_checkpoint(ckpt)?;
    let seq = Sequential::new(ckpt)?;
    let plan = planned(&arch, &seq)?;
    let loader = arch.weight_loader(ckpt);
    let shapes = arch.weight_shapes();
    let mut tensors = Vec::with_capacity(shapes.len());
    progress.start("costs", shapes.len() as u64);
    for (name, shape) in &shapes {
        progress.inc(1);
        let n: u64 = shape.iter().product::<usize>() as u64;
        let mut options = vec![TensorOption {
            ty: "f16".into(),
            copy: true,
            bytes: n * 2,
            error: 0.0,
            kl: 0.0,
        }];
        if let Some(l) = plan.get(name) {
            let (rows, cols) = (l.out_features, l.in_features);
            let w = read_out_in(&arch, &loader, name, shape, l.conv1d)?;
            for spec in grids.iter().filter(|g| g.validate(rows, cols).is_ok()) {
                let (_, error) = storage.quantize(name, &w, rows, cols, *spec)?;
                options.push(TensorOption {
                    ty: grid_name(spec),
                    copy: false,
                    bytes: layouts::ct_file_bytes(spec, rows, cols),
                    error,
                    kl: 0.0,
                });
            }
        }
        tensors.push(TensorSensitivity {
            name: name.clone(),
            ne: shape.iter().rev().map(|&d| d as u64).collect(),
            stored: "f16".into(),
            options,
            probes: Vec::new(),
        });
    }
    progress.finish();
    auto::probe(&seq, tensors, storage, m, t0, progress)
}

/// The storage of `ckpt`'s planned weights, rounded with the importance matrix `im` (and the
/// head's vector in it): what [`measure`] probes with and [`write`] writes with.
pub fn storage(ckpt: &Checkpoint, im: &Imatrix) -> Result<CtStorage> {
    let arch = Architecture::from_checkpoint(ckpt)?;
    let seq = Sequential::new(ckpt)?;
    let importance = importance_by_hf(&seq, im)?;
    let planned = planned(&arch, &seq)?.into_keys().collect();
    Ok(CtStorage {
        importance,
        planned,
    })
}

/// Encodes each planned weight on the grid the plan chose for it.
struct MixEncoder<'a> {
    storage: &'a CtStorage,
    grids: HashMap<String, IntSpec>,
}

impl Encoder for MixEncoder<'_> {
    fn name(&self) -> String {
        "auto (compressed-tensors)".into()
    }
    fn validate(&self, l: &LinearInfo) -> Result<()> {
        let spec = self.grids.get(&l.weight).ok_or_else(|| {
            MethodError::Options(format!("{}: selected but not planned", l.weight))
        })?;
        spec.validate(l.out_features, l.in_features)
            .map_err(|source| MethodError::Format {
                name: l.weight.clone(),
                source,
            })
    }
    fn encode(
        &self,
        l: &LinearInfo,
        read: &mut dyn FnMut() -> Result<Vec<f32>>,
        _source: Option<Quantized>,
    ) -> Result<Encoded> {
        let w = read()?;
        let t0 = Instant::now();
        let (t, _) = self.storage.quantize(
            &l.weight,
            &w,
            l.out_features,
            l.in_features,
            self.grids[&l.weight],
        )?;
        encoded(
            l,
            Quantized::Int(t),
            Some(w),
            t0.elapsed().as_secs_f64(),
            |m, q| layout(m, q, "float16"),
        )
    }
    fn config(&self, ignore: &[String], _dense_dtype: &str) -> Value {
        let mut groups: BTreeMap<String, (IntSpec, Vec<String>)> = BTreeMap::new();
        for (w, s) in &self.grids {
            let module = w.strip_suffix(".weight").unwrap_or(w).to_string();
            groups
                .entry(grid_name(s))
                .or_insert((*s, Vec::new()))
                .1
                .push(module);
        }
        let list: Vec<(IntSpec, Vec<String>)> = groups
            .into_values()
            .map(|(s, mut m)| {
                m.sort();
                (s, m)
            })
            .collect();
        layouts::ct_config_groups(&list, ignore)
    }
}

/// How the chosen grids are rounded when the file is written.
pub enum Rounding<'a> {
    /// Each weight on its own: the importance-weighted scale search the costs were measured
    /// with ([`crate::weighted_int`]).
    Weighted,
    /// GPTQ layer by layer on these calibration samples (`base`: dampening, order, clipping),
    /// each block linear on its grid; the weights outside the blocks as `Weighted`.
    Gptq {
        /// Calibration samples (token ids).
        samples: &'a [Vec<u32>],
        /// What every weight's GPTQ shares.
        base: crate::gptq::GptqSpec,
        /// The calibration, for the report.
        calibration: Value,
    },
}

/// Write the plan as a compressed-tensors directory at `output` (dense tensors float16),
/// rounded as `rounding` says, and its report (the plan per tensor included).
#[allow(clippy::too_many_arguments)]
pub fn write(
    ckpt: &Checkpoint,
    output: &Path,
    s: &Sensitivity,
    plan: &Plan,
    target: Target,
    storage: &CtStorage,
    rounding: Rounding,
    progress: &dyn Progress,
) -> Result<Report> {
    let arch = Architecture::from_checkpoint(ckpt)?;
    let defaults: HashSet<String> = arch.block_linears().into_iter().map(|l| l.weight).collect();
    let mut grids = HashMap::new();
    let (mut include, mut exclude) = (Vec::new(), Vec::new());
    for (t, &k) in s.tensors.iter().zip(&plan.allocation.picks) {
        if storage.hf_name(&t.name).is_none() {
            continue;
        }
        let o = &t.options[k];
        let default = defaults.contains(&t.name);
        if o.copy {
            if default {
                exclude.push(t.name.clone());
            }
            continue;
        }
        let spec = parse_grid(&o.ty).ok_or_else(|| {
            MethodError::Options(format!("{}: {} is not an integer grid", t.name, o.ty))
        })?;
        grids.insert(t.name.clone(), spec);
        if !default {
            include.push(t.name.clone());
        }
    }
    let in_blocks = grids.keys().any(|w| defaults.contains(w));
    let enc = MixEncoder { storage, grids };
    let mut r = match rounding {
        Rounding::Gptq {
            samples,
            base,
            calibration,
        } if in_blocks => {
            // The weights outside the blocks are encoded here; GPTQ takes the blocks'.
            let shapes: HashMap<String, Vec<usize>> = arch.weight_shapes().into_iter().collect();
            let loader = arch.weight_loader(ckpt);
            let mut outside = Vec::new();
            for name in &include {
                let shape = &shapes[name];
                let w = read_out_in(&arch, &loader, name, shape, false)?;
                let (t, _) = storage.quantize(name, &w, shape[0], shape[1], enc.grids[name])?;
                let module = name.strip_suffix(".weight").unwrap_or(name);
                outside.push((name.clone(), layouts::ct_tensors(module, &t)));
            }
            let ignore =
                crate::per_tensor::ignored(&arch.weight_shapes(), |n| enc.grids.contains_key(n));
            let qcfg = enc.config(&ignore, "float16");
            let block_grids: HashMap<String, IntSpec> = enc
                .grids
                .iter()
                .filter(|(w, _)| defaults.contains(*w))
                .map(|(w, g)| (w.clone(), *g))
                .collect();
            let selection = Selection {
                include: Vec::new(),
                exclude,
            };
            let run = crate::calibrated::Run {
                ckpt,
                output,
                samples,
                selection: &selection,
                dense_dtype: FloatType::F16,
                calibration,
                progress,
                run_dir: None,
            };
            crate::calibrated::gptq_mix(&run, base, &block_grids, outside, qcfg)?
        }
        _ => {
            let selection = Selection { include, exclude };
            let job = Job {
                ckpt,
                output,
                selection: &selection,
                dense_dtype: FloatType::F16,
                progress,
            };
            write_encoded(&job, &enc)?
        }
    };
    r.method = "auto".into();
    auto::describe(&mut r, s, plan, target);
    crate::output::rewrite_report(output, &r)?;
    Ok(r)
}
