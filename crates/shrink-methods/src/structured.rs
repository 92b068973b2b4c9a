//! Structured pruning: a smaller dense model of the same architecture, written as a Hugging
//! Face directory whose config.json says the new sizes.
//!
//! - [`Structured::Layers`]: drop the blocks with the lowest Block Influence (ShortGPT, Men et
//!   al. 2024, eq. 1): `BI_i = 1 − E_t cos(x_i,t, x_i+1,t)` over the calibration tokens, where
//!   `x_i` is block i's input and `x_i+1` its output; the blocks left are renumbered.
//! - [`Structured::Neurons`]: keep the MLP channels of largest mean activation magnitude (Minitron,
//!   Muralidharan et al. 2024, §2.2: `F_neuron(i) = Σ_t |X_t,i|` of the down projection's input),
//!   the same number in every block; the up/gate rows (and biases) and the down columns go.
//! - [`Structured::Heads`]: keep the attention heads of largest mean output norm (Minitron's
//!   `F_head(i) = Σ_t ‖attn_i(X)_t‖₂`, the head's slice of the output projection's input), the
//!   same number in every block; under grouped-query attention whole key/value groups go with
//!   their query heads, ranked by the sum of their heads' importance. Only the Llama family can
//!   say a head width other than hidden/heads (`head_dim`); transformers' GPT-2, GPT-NeoX, BERT
//!   and DistilBERT derive it from the hidden size (5.x dropped `pruned_heads`), so heads are
//!   refused there.
//!
//! Importance is measured on the unpruned model, block by block ([`Sequential`]: one block's
//! weights and the samples' activations resident); the output is then streamed tensor by tensor
//! into a temporary directory committed at the end, so a failure leaves nothing.
//!
//! ```no_run
//! use shrink_methods::{calibrated::Run, pipeline::Silent, select::Selection};
//! use shrink_methods::structured::{prune, Structured};
//! let ckpt = shrink_io::Checkpoint::open("tiny-llama")?;
//! let samples: Vec<Vec<u32>> = vec![(0..64).collect()];
//! let all = Selection::default();
//! let run = Run::new(&ckpt, "tiny-llama-short".as_ref(), &samples, &all, &Silent);
//! let report = prune(&run, Structured::Layers { remove: 1 })?;
//! println!("{}", report.extra["params_after"]);
//! # Ok::<(), shrink_methods::MethodError>(())
//! ```

use std::collections::HashMap;
use std::time::Instant;

use candle_core::Tensor;
use serde_json::{json, Value};
use shrink_formats::float;
use shrink_io::{Checkpoint, OutputDir, StoredDtype, TensorHeader};
use shrink_models::bert::BertKind;
use shrink_models::layerwise::Sequential;
use shrink_models::{Architecture, ModelConfig, ModelError};

use crate::calibrated::Run;
use crate::error::{MethodError, Result};
use crate::output;
use crate::report::{Report, Sizes};

/// What structured pruning removes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Structured {
    /// Drop the `remove` blocks of lowest Block Influence (ShortGPT).
    Layers {
        /// Blocks to drop, at least 1 and fewer than the model has.
        remove: usize,
    },
    /// Keep `keep_ratio` of every block's MLP channels, by mean |activation| (Minitron).
    Neurons {
        /// Share of channels kept, in (0, 1]; rounded to the nearest count.
        keep_ratio: f64,
    },
    /// Keep `keep_ratio` of every block's attention heads (whole key/value groups under GQA),
    /// by mean output norm (Minitron).
    Heads {
        /// Share of heads (of key/value groups under GQA) kept, in (0, 1]; rounded to the
        /// nearest count.
        keep_ratio: f64,
    },
}

impl Structured {
    /// The method's name in reports, e.g. `structured-layers-remove6`.
    pub fn name(&self) -> String {
        match self {
            Structured::Layers { remove } => format!("structured-layers-remove{remove}"),
            Structured::Neurons { keep_ratio } => format!("structured-neurons-keep{keep_ratio}"),
            Structured::Heads { keep_ratio } => format!("structured-heads-keep{keep_ratio}"),
        }
    }
}

/// The families, as far as pruning tells them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Llama,
    Gpt2,
    Neox,
    Bert,
    DistilBert,
}

impl Family {
    /// config.json's key for the number of blocks.
    fn layers_key(self) -> &'static str {
        match self {
            Family::Gpt2 => "n_layer",
            Family::DistilBert => "n_layers",
            _ => "num_hidden_layers",
        }
    }

    /// config.json's key for the MLP width.
    fn intermediate_key(self) -> &'static str {
        match self {
            Family::Gpt2 => "n_inner",
            Family::DistilBert => "hidden_dim",
            _ => "intermediate_size",
        }
    }

    /// The MLP's down projection (its input is the intermediate activation), by block name.
    fn down(self) -> &'static str {
        match self {
            Family::Llama => "mlp.down_proj",
            Family::Gpt2 => "mlp.c_proj",
            Family::Neox => "mlp.dense_4h_to_h",
            Family::Bert => "output.dense",
            Family::DistilBert => "ffn.lin2",
        }
    }

    /// The tensors cut along the MLP channels: (name inside the block, axis of the stored
    /// tensor). GPT-2's Conv1D weights are stored [in, out].
    fn neuron_cuts(self) -> &'static [(&'static str, usize)] {
        match self {
            Family::Llama => &[
                ("mlp.gate_proj.weight", 0),
                ("mlp.gate_proj.bias", 0),
                ("mlp.up_proj.weight", 0),
                ("mlp.up_proj.bias", 0),
                ("mlp.down_proj.weight", 1),
            ],
            Family::Gpt2 => &[
                ("mlp.c_fc.weight", 1),
                ("mlp.c_fc.bias", 0),
                ("mlp.c_proj.weight", 0),
            ],
            Family::Neox => &[
                ("mlp.dense_h_to_4h.weight", 0),
                ("mlp.dense_h_to_4h.bias", 0),
                ("mlp.dense_4h_to_h.weight", 1),
            ],
            Family::Bert => &[
                ("intermediate.dense.weight", 0),
                ("intermediate.dense.bias", 0),
                ("output.dense.weight", 1),
            ],
            Family::DistilBert => &[
                ("ffn.lin1.weight", 0),
                ("ffn.lin1.bias", 0),
                ("ffn.lin2.weight", 1),
            ],
        }
    }
}

/// Which heads a Llama-family tensor is cut by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HeadUnit {
    Query,
    KeyValue,
}

/// The Llama family's tensors cut along heads: (name inside the block, axis, unit).
const HEAD_CUTS: &[(&str, usize, HeadUnit)] = &[
    ("self_attn.q_proj.weight", 0, HeadUnit::Query),
    ("self_attn.q_proj.bias", 0, HeadUnit::Query),
    ("self_attn.k_proj.weight", 0, HeadUnit::KeyValue),
    ("self_attn.k_proj.bias", 0, HeadUnit::KeyValue),
    ("self_attn.v_proj.weight", 0, HeadUnit::KeyValue),
    ("self_attn.v_proj.bias", 0, HeadUnit::KeyValue),
    ("self_attn.o_proj.weight", 1, HeadUnit::Query),
];

/// The sizes pruning reads from the configuration.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    family: Family,
    layers: usize,
    intermediate: usize,
    /// Query heads, key/value heads, head width.
    heads: (usize, usize, usize),
}

impl Geometry {
    fn of(arch: &Architecture) -> Self {
        match arch {
            Architecture::Decoder(ModelConfig::Llama(c)) => Geometry {
                family: Family::Llama,
                layers: c.num_layers,
                intermediate: c.intermediate_size,
                heads: (c.num_heads, c.num_kv_heads, c.head_dim),
            },
            Architecture::Decoder(ModelConfig::Gpt2(c)) => Geometry {
                family: Family::Gpt2,
                layers: c.n_layer,
                intermediate: c.n_inner,
                heads: (c.n_head, c.n_head, c.n_embd / c.n_head),
            },
            Architecture::Decoder(ModelConfig::Neox(c)) => Geometry {
                family: Family::Neox,
                layers: c.num_layers,
                intermediate: c.intermediate_size,
                heads: (c.num_heads, c.num_heads, c.hidden_size / c.num_heads),
            },
            Architecture::Encoder(c) => Geometry {
                family: match c.kind {
                    BertKind::Bert => Family::Bert,
                    BertKind::DistilBert => Family::DistilBert,
                },
                layers: c.num_layers,
                intermediate: c.intermediate_size,
                heads: (c.num_heads, c.num_heads, c.head_dim()),
            },
        }
    }
}

/// What is kept, by the input's block index.
#[derive(Debug, Default)]
struct Keep {
    /// The blocks kept, in order (all of them unless layers are pruned).
    layers: Vec<usize>,
    /// MLP channels kept per block, ascending.
    channels: Option<Vec<Vec<usize>>>,
    /// Query heads and key/value heads kept per block, ascending.
    heads: Option<Vec<(Vec<usize>, Vec<usize>)>>,
}

/// Importance measured on the unpruned model, per block.
#[derive(Debug, Default)]
struct Stats {
    /// Block Influence of each block.
    bi: Vec<f64>,
    /// Mean |input of the down projection| per channel.
    channels: Vec<Vec<f64>>,
    /// Mean L2 norm of each head's output.
    heads: Vec<Vec<f64>>,
}

/// Prune `run.ckpt` as `what` says into `run.output` (an HF directory of the same
/// architecture, float tensors stored as `run.dense_dtype`). `run.selection` is not used:
/// structured pruning applies to every block. The report's extra fields: `params_before`,
/// `params_after`, `bytes_before`, `bytes_after`, and per mode the block influences and
/// dropped blocks, or the channels / heads kept per block with their importance.
pub fn prune(run: &Run, what: Structured) -> Result<Report> {
    let t0 = Instant::now();
    let ckpt = run.ckpt;
    let path = ckpt.path();
    let input = |what: String| MethodError::Input {
        path: path.to_path_buf(),
        what,
    };
    let h = match ckpt {
        Checkpoint::Hf(h) => h,
        Checkpoint::Gguf(_) => {
            return Err(input(
                "structured pruning reads Hugging Face directories; convert the GGUF first \
                 (shrink export MODEL --to hf)"
                    .into(),
            ))
        }
    };
    if h.quantization_config().is_some() {
        return Err(input(
            "the checkpoint is quantized; structured pruning needs the dense model (prune \
             first, then quantize)"
                .into(),
        ));
    }
    let arch = Architecture::from_checkpoint(ckpt)?;
    let geo = Geometry::of(&arch);
    check_options(&arch, &geo, what)?;
    if run.samples.is_empty() || run.samples.iter().any(|s| s.is_empty()) {
        return Err(MethodError::Options(
            "structured pruning needs calibration samples (none, or an empty one, given)".into(),
        ));
    }
    let seq = Sequential::new(ckpt)?;

    let t_stats = Instant::now();
    let stats = measure(run, &seq, &geo, what)?;
    let stats_seconds = t_stats.elapsed().as_secs_f64();
    let keep = choose(&geo, what, &stats);

    let out = OutputDir::create(run.output, &[path])?;
    let planned = plan(ckpt, &seq, &geo, &keep, run)?;
    write(ckpt, &planned, &out, run)?;

    // config.json with the new sizes; tokenizer and side files copied.
    let dtype_name = run.dense_dtype.torch_name();
    output::write_config_and_tokenizer(ckpt, None, &out, dtype_name, None)?;
    let mut cfg = h.config.clone();
    edit_config(&mut cfg, &geo, &keep);
    cfg["dtype"] = dtype_name.into();
    cfg["torch_dtype"] = dtype_name.into();
    if let Some(o) = cfg.as_object_mut() {
        o.remove("quantization_config");
    }
    let text = serde_json::to_string_pretty(&cfg).expect("JSON values serialize");
    out.write("config.json", text.as_bytes())?;
    verify(&out, &planned)?;

    let params = |it: &mut dyn Iterator<Item = &Vec<usize>>| -> u64 {
        it.map(|s| s.iter().product::<usize>() as u64).sum()
    };
    let before: Vec<_> = ckpt.tensors();
    let params_before = params(&mut before.iter().map(|t| &t.shape));
    let bytes_before: u64 = before.iter().map(|t| t.bytes).sum();
    let params_after = params(&mut planned.iter().map(|p| &p.header.shape));
    let bytes_after: u64 = planned.iter().map(|p| p.header.len as u64).sum();
    let sizes = Sizes {
        dense_bytes: bytes_after,
        total_params: params_after,
        ..Sizes::default()
    };
    let mut r = Report::new(path.into(), out.target().into(), what.name(), sizes);
    if !run.calibration.is_null() {
        r.calibration = Some(run.calibration.clone());
    }
    r.set("structured", describe(&geo, what, &keep, &stats));
    r.set("params_before", params_before);
    r.set("params_after", params_after);
    r.set(
        "params_ratio",
        params_after as f64 / params_before.max(1) as f64,
    );
    r.set("bytes_before", bytes_before);
    r.set("bytes_after", bytes_after);
    r.notes.push(format!(
        "parameters     {params_before} → {params_after} ({:.1} %)",
        100.0 * params_after as f64 / params_before.max(1) as f64
    ));
    r.notes.push(format!(
        "bytes          {bytes_before} → {bytes_after} ({:.1} %)",
        100.0 * bytes_after as f64 / bytes_before.max(1) as f64
    ));
    r.notes.extend(notes(&geo, what, &keep, &stats));
    r.quantize_seconds = stats_seconds;
    r.seconds = t0.elapsed().as_secs_f64();
    let target = output::commit(out, &r)?;
    r.output = target;
    Ok(r)
}

/// Refuse options that cannot apply to this model, before anything is computed or written.
fn check_options(arch: &Architecture, geo: &Geometry, what: Structured) -> Result<()> {
    let opt = |s: String| Err(MethodError::Options(s));
    let ratio = |r: f64| -> Result<()> {
        if !(r > 0.0 && r <= 1.0) {
            return opt(format!("keep ratio {r} is outside (0, 1]"));
        }
        Ok(())
    };
    match what {
        Structured::Layers { remove } => {
            if remove == 0 {
                return opt(
                    "removing 0 layers leaves the model as it is; ask for 1 or more".into(),
                );
            }
            if remove >= geo.layers {
                return opt(format!(
                    "removing {remove} of {} layers leaves none; remove at most {}",
                    geo.layers,
                    geo.layers - 1
                ));
            }
            if let Architecture::Decoder(ModelConfig::Gpt2(c)) = arch {
                if c.scale_attn_by_inverse_layer_idx {
                    return opt("this GPT-2 scales attention by 1/(layer index + 1) \
                         (scale_attn_by_inverse_layer_idx): renumbering the blocks left would \
                         change what they compute"
                        .into());
                }
            }
        }
        Structured::Neurons { keep_ratio } => {
            ratio(keep_ratio)?;
            if kept_count(keep_ratio, geo.intermediate) == 0 {
                return opt(format!(
                    "keep ratio {keep_ratio} of {} MLP channels keeps none",
                    geo.intermediate
                ));
            }
        }
        Structured::Heads { keep_ratio } => {
            ratio(keep_ratio)?;
            if geo.family != Family::Llama {
                return opt(format!(
                    "head pruning is not possible on {}: transformers derives its head width \
                     from hidden_size / num_heads (it has no head_dim setting, and 5.x no longer \
                     reads pruned_heads), so fewer heads of the same width cannot be loaded; \
                     only the Llama family (llama, mistral, qwen2) takes --structured heads",
                    arch.family()
                ));
            }
            let (heads, groups, _) = geo.heads;
            if kept_count(keep_ratio, groups) == 0 {
                let unit = if groups < heads {
                    format!(
                        "key/value groups (grouped-query attention: {heads} query heads share \
                         {groups} key/value heads, and a group goes whole)"
                    )
                } else {
                    "heads".into()
                };
                return opt(format!(
                    "keep ratio {keep_ratio} of {groups} {unit} keeps none"
                ));
            }
        }
    }
    Ok(())
}

/// `ratio` of `n`, rounded to the nearest count.
fn kept_count(ratio: f64, n: usize) -> usize {
    ((ratio * n as f64).round() as usize).min(n)
}

/// Run the unpruned model over the samples block by block, measuring what `what` ranks.
fn measure(run: &Run, seq: &Sequential, geo: &Geometry, what: Structured) -> Result<Stats> {
    let (want_channels, want_heads) = match what {
        Structured::Layers { .. } => (false, false),
        Structured::Neurons { .. } => (true, false),
        Structured::Heads { .. } => (false, true),
    };
    let tokens: usize = run.samples.iter().map(Vec::len).sum();
    let (heads, _, head_dim) = geo.heads;
    let down = geo.family.down();
    let o_proj = "self_attn.o_proj";
    let mut stats = Stats::default();
    let mut xs = seq.embed(run.samples)?;
    run.progress.start("importance", geo.layers as u64);
    for l in 0..geo.layers {
        let block = seq.layer(l)?;
        let mut channels = vec![0f64; geo.intermediate];
        let mut norms = vec![0f64; heads];
        let ys = {
            let mut tap = |_: usize, name: &str, x: &Tensor| -> shrink_models::Result<()> {
                if want_channels && name == down {
                    let s = x.abs()?.sum(0)?.to_vec1::<f32>()?;
                    add(&mut channels, &s, name)?;
                }
                if want_heads && name == o_proj {
                    let t = x.dim(0)?;
                    let n = x
                        .reshape((t, heads, head_dim))?
                        .sqr()?
                        .sum(2)?
                        .sqrt()?
                        .sum(0)?
                        .to_vec1::<f32>()?;
                    add(&mut norms, &n, name)?;
                }
                Ok(())
            };
            let tap: Option<shrink_models::layerwise::SampleTap> = if want_channels || want_heads {
                Some(&mut tap)
            } else {
                None
            };
            seq.run(block.as_ref(), &xs, tap)?
        };
        if matches!(what, Structured::Layers { .. }) {
            stats.bi.push(block_influence(&xs, &ys)?);
        }
        let mean = |v: Vec<f64>| v.into_iter().map(|s| s / tokens as f64).collect();
        stats.channels.push(mean(channels));
        stats.heads.push(mean(norms));
        xs = ys;
        run.progress.inc(1);
    }
    run.progress.finish();
    Ok(stats)
}

/// `acc += v`, refusing a width other than expected (naming the linear).
fn add(acc: &mut [f64], v: &[f32], name: &str) -> shrink_models::Result<()> {
    if acc.len() != v.len() {
        return Err(ModelError::Input(format!(
            "{name}: input of width {} where the configuration says {}",
            v.len(),
            acc.len()
        )));
    }
    for (a, &x) in acc.iter_mut().zip(v) {
        *a += x as f64;
    }
    Ok(())
}

/// ShortGPT's Block Influence: 1 − the mean over every token of cos(input, output).
fn block_influence(xs: &[Tensor], ys: &[Tensor]) -> Result<f64> {
    let (mut sum, mut n) = (0f64, 0usize);
    for (x, y) in xs.iter().zip(ys) {
        let dot = (x * y)
            .and_then(|p| p.sum(1))
            .and_then(|s| s.to_vec1::<f32>());
        let nx = x.sqr().and_then(|p| p.sum(1)).and_then(|s| s.to_vec1());
        let ny = y.sqr().and_then(|p| p.sum(1)).and_then(|s| s.to_vec1());
        let (dot, nx, ny): (Vec<f32>, Vec<f32>, Vec<f32>) = (
            dot.map_err(ModelError::from)?,
            nx.map_err(ModelError::from)?,
            ny.map_err(ModelError::from)?,
        );
        for ((d, a), b) in dot.iter().zip(&nx).zip(&ny) {
            let den = (*a as f64).sqrt() * (*b as f64).sqrt();
            sum += if den > 0.0 { *d as f64 / den } else { 0.0 };
            n += 1;
        }
    }
    Ok(1.0 - sum / n.max(1) as f64)
}

/// The indices of the `k` largest of `scores` (ties to the lower index), ascending.
fn top(scores: &[f64], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let mut kept = order[..k.min(order.len())].to_vec();
    kept.sort_unstable();
    kept
}

/// What is kept, from the measured importance.
fn choose(geo: &Geometry, what: Structured, stats: &Stats) -> Keep {
    let all: Vec<usize> = (0..geo.layers).collect();
    match what {
        Structured::Layers { remove } => {
            // Drop the `remove` lowest influences = keep the largest.
            Keep {
                layers: top(&stats.bi, geo.layers - remove),
                ..Keep::default()
            }
        }
        Structured::Neurons { keep_ratio } => {
            let k = kept_count(keep_ratio, geo.intermediate);
            Keep {
                layers: all,
                channels: Some(stats.channels.iter().map(|s| top(s, k)).collect()),
                heads: None,
            }
        }
        Structured::Heads { keep_ratio } => {
            let (heads, groups, _) = geo.heads;
            let per = heads / groups;
            let g = kept_count(keep_ratio, groups);
            let kept = stats
                .heads
                .iter()
                .map(|s| {
                    let group: Vec<f64> = s.chunks(per).map(|c| c.iter().sum()).collect();
                    let kv = top(&group, g);
                    let q = kv.iter().flat_map(|&j| j * per..(j + 1) * per).collect();
                    (q, kv)
                })
                .collect();
            Keep {
                layers: all,
                channels: None,
                heads: Some(kept),
            }
        }
    }
}

/// A cut of one stored tensor: along `axis`, blocks of `block` elements, keeping `units`.
#[derive(Debug, Clone)]
struct Cut {
    axis: usize,
    block: usize,
    units: Vec<usize>,
}

/// One output tensor and where it comes from.
#[derive(Debug)]
struct Planned {
    /// Name in the input.
    source: String,
    /// Name, dtype, shape and length in the output.
    header: TensorHeader,
    /// Read as float and stored as the dense dtype (else copied verbatim).
    float: bool,
    cut: Option<Cut>,
}

/// Every output tensor: the kept blocks renumbered, the cut tensors sliced, the rest copied.
fn plan(
    ckpt: &Checkpoint,
    seq: &Sequential,
    geo: &Geometry,
    keep: &Keep,
    run: &Run,
) -> Result<Vec<Planned>> {
    let new_index: HashMap<usize, usize> = keep
        .layers
        .iter()
        .enumerate()
        .map(|(i, &l)| (l, i))
        .collect();
    let (_, _, head_dim) = geo.heads;
    let mut planned = Vec::new();
    for t in ckpt.tensors() {
        // GPT-2 checkpoints may store block names without `transformer.`; written with it.
        let bare = !t.name.starts_with("transformer.") && !t.name.starts_with("lm_head.");
        let name = if geo.family == Family::Gpt2 && bare {
            format!("transformer.{}", t.name)
        } else {
            t.name.clone()
        };
        let mut out_name = name.clone();
        let mut cut = None;
        if let Some(l) = seq.layer_of(&name) {
            let Some(&nl) = new_index.get(&l) else {
                continue; // a dropped block
            };
            let prefix = seq.tensor_name(l, "");
            let local = &name[prefix.len()..];
            out_name = format!("{}{local}", seq.tensor_name(nl, ""));
            if let Some(ch) = &keep.channels {
                if let Some(&(_, axis)) = geo.family.neuron_cuts().iter().find(|c| c.0 == local) {
                    cut = Some(Cut {
                        axis,
                        block: 1,
                        units: ch[l].clone(),
                    });
                }
            }
            if let Some(hs) = &keep.heads {
                if let Some(&(_, axis, unit)) = HEAD_CUTS.iter().find(|c| c.0 == local) {
                    let (q, kv) = &hs[l];
                    cut = Some(Cut {
                        axis,
                        block: head_dim,
                        units: if unit == HeadUnit::Query { q } else { kv }.clone(),
                    });
                }
            }
        }
        let mut shape = t.shape.clone();
        if let Some(c) = &cut {
            if c.axis >= shape.len() || shape.len() > 2 {
                return Err(MethodError::Input {
                    path: ckpt.path().to_path_buf(),
                    what: format!(
                        "tensor {} has shape {:?}; expected a matrix or vector",
                        t.name, t.shape
                    ),
                });
            }
            shape[c.axis] = c.units.len() * c.block;
        }
        let elements: usize = shape.iter().product();
        let (float, dtype, len) = match t.dtype {
            StoredDtype::Float(_) => (
                true,
                shrink_io::safetensors_dtype(run.dense_dtype),
                elements * run.dense_dtype.size(),
            ),
            _ if cut.is_some() => {
                return Err(MethodError::Input {
                    path: ckpt.path().to_path_buf(),
                    what: format!(
                        "tensor {} is stored as {}, not a float type",
                        t.name,
                        t.dtype.name()
                    ),
                })
            }
            _ => {
                let Checkpoint::Hf(h) = ckpt else {
                    unreachable!("only HF directories are pruned")
                };
                (false, h.weights.tensors[&t.name].dtype, t.bytes as usize)
            }
        };
        planned.push(Planned {
            source: t.name,
            header: TensorHeader {
                name: out_name,
                dtype,
                shape,
                len,
            },
            float,
            cut,
        });
    }
    // Blocks in order, then by name: a readable file whatever the input's order.
    planned.sort_by_cached_key(|p| {
        let l = seq.layer_of(&p.header.name);
        (l.is_some(), l, p.header.name.clone())
    });
    Ok(planned)
}

/// Keep `cut.units` (blocks of `cut.block`) of `v` [shape] along `cut.axis`.
fn slice(v: &[f32], shape: &[usize], cut: &Cut) -> Option<Vec<f32>> {
    let n = shape.get(cut.axis)?;
    if cut.units.iter().any(|&u| (u + 1) * cut.block > *n) {
        return None;
    }
    let mut out = Vec::with_capacity(v.len() / n * cut.units.len() * cut.block);
    if cut.axis == 0 {
        let inner: usize = shape[1..].iter().product();
        for &u in &cut.units {
            out.extend_from_slice(&v[u * cut.block * inner..(u + 1) * cut.block * inner]);
        }
    } else {
        let cols = shape[1];
        for row in v.chunks_exact(cols) {
            for &u in &cut.units {
                out.extend_from_slice(&row[u * cut.block..(u + 1) * cut.block]);
            }
        }
    }
    Some(out)
}

/// Stream the planned tensors into `out`'s model.safetensors.
fn write(ckpt: &Checkpoint, planned: &[Planned], out: &OutputDir, run: &Run) -> Result<()> {
    let Checkpoint::Hf(h) = ckpt else {
        unreachable!("only HF directories are pruned")
    };
    let headers: Vec<TensorHeader> = planned.iter().map(|p| p.header.clone()).collect();
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    run.progress.start("write", planned.len() as u64);
    shrink_io::write_safetensors_ordered(
        &out.file("model.safetensors"),
        &headers,
        Some(meta),
        |i| -> Result<Vec<u8>> {
            let p = &planned[i];
            run.progress.inc(1);
            if !p.float {
                let info = &h.weights.tensors[&p.source];
                let bytes = h.weights.bytes(info).to_vec();
                h.weights.release(info);
                return Ok(bytes);
            }
            let (v, shape) = ckpt.read_f32(&p.source)?;
            let v = match &p.cut {
                None => v,
                Some(c) => slice(&v, &shape, c).ok_or_else(|| MethodError::Input {
                    path: ckpt.path().to_path_buf(),
                    what: format!(
                        "tensor {} of shape {shape:?} does not hold the {} units of {} its \
                         configuration implies along axis {}",
                        p.source,
                        c.units.iter().max().map_or(0, |u| u + 1),
                        c.block,
                        c.axis
                    ),
                })?,
            };
            Ok(float::encode(run.dense_dtype, &v))
        },
    )?;
    run.progress.finish();
    Ok(())
}

/// Rewrite config.json's sizes for what is kept.
fn edit_config(cfg: &mut Value, geo: &Geometry, keep: &Keep) {
    let fam = geo.family;
    if keep.layers.len() != geo.layers {
        cfg[fam.layers_key()] = keep.layers.len().into();
        // Per-layer lists (transformers 5's `layer_types`) follow their blocks.
        if let Some(Value::Array(a)) = cfg.get("layer_types") {
            if a.len() == geo.layers {
                let kept: Vec<Value> = keep.layers.iter().map(|&l| a[l].clone()).collect();
                cfg["layer_types"] = Value::Array(kept);
            }
        }
    }
    if let Some(ch) = &keep.channels {
        cfg[fam.intermediate_key()] = ch.first().map_or(0, Vec::len).into();
    }
    if let Some(hs) = &keep.heads {
        let (q, kv) = hs.first().map_or((0, 0), |(q, kv)| (q.len(), kv.len()));
        cfg["num_attention_heads"] = q.into();
        cfg["num_key_value_heads"] = kv.into();
        // hidden_size / heads no longer gives the head width: say it.
        cfg["head_dim"] = geo.heads.2.into();
    }
}

/// Open the written directory as shrink will and check that every block weight its new
/// configuration implies is there with that shape: a file that would not load is never
/// committed.
fn verify(out: &OutputDir, planned: &[Planned]) -> Result<()> {
    let ckpt = Checkpoint::open(out.dir())?;
    let arch = Architecture::from_checkpoint(&ckpt)?;
    let seq = Sequential::new(&ckpt)?;
    let written: HashMap<&str, &Vec<usize>> = planned
        .iter()
        .map(|p| (p.header.name.as_str(), &p.header.shape))
        .collect();
    for (name, shape) in arch.weight_shapes() {
        let got = written.get(name.as_str());
        let missing = got.is_none() && seq.layer_of(&name).is_some();
        if missing || got.is_some_and(|s| **s != shape) {
            return Err(MethodError::Options(format!(
                "internal: the pruned weight {name} has shape {got:?} where the new \
                 configuration implies {shape:?}"
            )));
        }
    }
    Ok(())
}

/// The report's `structured` object: the mode and what was kept or dropped.
fn describe(geo: &Geometry, what: Structured, keep: &Keep, stats: &Stats) -> Value {
    let round = |v: &[f64]| -> Vec<f64> { v.iter().map(|x| (x * 1e6).round() / 1e6).collect() };
    match what {
        Structured::Layers { remove } => {
            let dropped: Vec<Value> = (0..geo.layers)
                .filter(|l| !keep.layers.contains(l))
                .map(|l| json!({"layer": l, "block_influence": stats.bi[l]}))
                .collect();
            json!({
                "mode": "layers",
                "remove": remove,
                "layers_before": geo.layers,
                "layers_after": keep.layers.len(),
                "block_influence": round(&stats.bi),
                "dropped": dropped,
                "kept": keep.layers,
            })
        }
        Structured::Neurons { keep_ratio } => {
            let ch = keep.channels.as_deref().unwrap_or_default();
            // The share of each block's total importance the kept channels carry.
            let share: Vec<f64> = ch
                .iter()
                .zip(&stats.channels)
                .map(|(k, s)| {
                    let total: f64 = s.iter().sum();
                    k.iter().map(|&i| s[i]).sum::<f64>() / total.max(f64::MIN_POSITIVE)
                })
                .collect();
            json!({
                "mode": "neurons",
                "keep_ratio": keep_ratio,
                "intermediate_before": geo.intermediate,
                "intermediate_after": ch.first().map_or(0, Vec::len),
                "importance_kept_share": round(&share),
            })
        }
        Structured::Heads { keep_ratio } => {
            let hs = keep.heads.as_deref().unwrap_or_default();
            let (heads, groups, head_dim) = geo.heads;
            let q: Vec<&Vec<usize>> = hs.iter().map(|h| &h.0).collect();
            let kv: Vec<&Vec<usize>> = hs.iter().map(|h| &h.1).collect();
            let importance: Vec<Vec<f64>> = stats.heads.iter().map(|v| round(v)).collect();
            json!({
                "mode": "heads",
                "keep_ratio": keep_ratio,
                "head_dim": head_dim,
                "heads_before": heads,
                "heads_after": q.first().map_or(0, |v| v.len()),
                "kv_heads_before": groups,
                "kv_heads_after": kv.first().map_or(0, |v| v.len()),
                "head_importance": importance,
                "heads_kept": q,
                "kv_heads_kept": kv,
            })
        }
    }
}

/// The text report's lines for the mode.
fn notes(geo: &Geometry, what: Structured, keep: &Keep, stats: &Stats) -> Vec<String> {
    match what {
        Structured::Layers { .. } => {
            let dropped: Vec<String> = (0..geo.layers)
                .filter(|l| !keep.layers.contains(l))
                .map(|l| format!("{l} (BI {:.4})", stats.bi[l]))
                .collect();
            vec![format!(
                "layers         {} → {}; dropped {}",
                geo.layers,
                keep.layers.len(),
                dropped.join(", ")
            )]
        }
        Structured::Neurons { .. } => {
            let k = keep
                .channels
                .as_ref()
                .and_then(|c| c.first())
                .map_or(0, Vec::len);
            vec![format!(
                "MLP channels   {} → {k} in each of {} blocks",
                geo.intermediate, geo.layers
            )]
        }
        Structured::Heads { .. } => {
            let (heads, groups, _) = geo.heads;
            let (q, kv) = keep
                .heads
                .as_ref()
                .and_then(|h| h.first())
                .map_or((0, 0), |(q, kv)| (q.len(), kv.len()));
            let mut v = vec![format!(
                "heads          {heads} → {q} query, {groups} → {kv} key/value in each of {} \
                 blocks",
                geo.layers
            )];
            if groups < heads {
                v.push(format!(
                    "               grouped-query attention: whole groups of {} query heads \
                     kept or dropped",
                    heads / groups
                ));
            }
            v
        }
    }
}
