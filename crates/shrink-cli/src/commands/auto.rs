//! `shrink auto MODEL --calib FILE (--target-bpw B | --max-kld K | --max-ppl-increase P)
//! [--to gguf|compressed-tensors] -o OUT`: every tensor's ggml type or integer grid chosen
//! from measured sensitivities ([`shrink_methods::auto`], [`shrink_methods::auto_ct`]), the
//! plan printed and kept in the report.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use shrink_formats::ggml::GgmlType;
use shrink_formats::int::IntSpec;
use shrink_io::imatrix::Imatrix;
use shrink_io::Checkpoint;
use shrink_methods::auto::{self, GgufStorage, Measure, Sensitivity, Target};
use shrink_methods::auto_ct;
use shrink_methods::calib::{consecutive_chunks, draw_samples, CalibSpec};
use shrink_methods::gptq::GptqSpec;
use shrink_models::layerwise::Sequential;

use super::calibrated::CalibFormat;
use crate::common;

/// Where `shrink auto` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum To {
    /// A GGUF with any mixture of ggml types, one per tensor (llama.cpp loads it).
    Gguf,
    /// A compressed-tensors directory with one config group per integer grid (--grids), the
    /// token table included (vLLM / transformers' compressed-tensors reader load it).
    CompressedTensors,
}

/// `--rounding`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RoundingArg {
    /// GPTQ, each block linear on its grid.
    Gptq,
    /// The importance-weighted scale search, each weight on its own.
    Weighted,
}

/// Arguments of `shrink auto`.
#[derive(clap::Args)]
#[command(
    group(clap::ArgGroup::new("target").required(true).args(["target_bpw", "max_kld", "max_ppl_increase"])),
    after_help = "How it works: (1) an importance matrix is collected on the calibration text (or read with --imatrix), and the LM head's (mean square of its input) measured; (2) every tensor is quantized to every type in --types that fits its rows (with --to compressed-tensors: every weight — the token table, an untied head, each block linear — to every integer grid in --grids whose groups divide its rows, each group's scale searched for the least importance-weighted error, the rest stored float16) and its importance-weighted error kept, and the model's next-token KL divergence is measured with that tensor alone at a probe type (the smallest of at least 4 bits/weight, and the smallest type too where it is under 4; every type for the token table and the head), in passes over the blocks on --probe-samples × --probe-seqlen tokens of the calibration text; each tensor's KL ÷ error scales its errors into predicted KL (cached in --sensitivity, so another target takes seconds); (3) one type per tensor, or the tensor copied as stored, is chosen to minimise the summed predicted KL within --target-bpw (whole model: every tensor's bytes over every weight, embedding and head included), or to be smallest within --max-kld / --max-ppl-increase (by a Lagrangian relaxation that states its gap to the optimum); (4) the mix is run whole and measured, and a bound is corrected by the measurement (up to 3 times) until a mix meets it. The report lists what each tensor got and why (--plan-png draws it). Targets no mix reaches are refused before any work, naming the smallest and largest reachable.\n\nExamples:\n  shrink auto assets/SmolLM2-135M-Instruct.Q4_1.gguf --calib assets/lee_background.cor --target-bpw 4.5 -o smollm2-auto-4.5.gguf\n  shrink auto assets/SmolLM2-135M-Instruct.Q4_1.gguf --calib assets/lee_background.cor --max-ppl-increase 2 -o smollm2-auto-2pct.gguf\n  shrink auto assets/SmolLM2-135M-Instruct.Q4_1.gguf --calib assets/lee_background.cor --to compressed-tensors --target-bpw 3.5 -o smollm2-auto-3.5"
)]
pub struct Args {
    /// Model: a GGUF (any architecture shrink runs); with --to compressed-tensors also a
    /// Hugging Face directory.
    pub model: PathBuf,
    /// Output GGUF file, or compressed-tensors directory (must not exist).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Whole-model bits per weight to meet with the least divergence.
    #[arg(long)]
    pub target_bpw: Option<f64>,
    /// Largest mean KL divergence from the input (nats per token): the smallest mix within it.
    #[arg(long)]
    pub max_kld: Option<f64>,
    /// Largest perplexity increase over the input, percent: the smallest mix within it.
    #[arg(long)]
    pub max_ppl_increase: Option<f64>,
    /// What to write.
    #[arg(long, value_enum, default_value = "gguf")]
    pub to: To,
    /// Integer grids to choose among with --to compressed-tensors (comma-separated:
    /// intB-gG, intB-channel, intB-sym-gG; each weight may also stay float16).
    /// [default: int2 and int4 in groups of 32, 64, 128 and int4 per channel, int8 in groups of
    /// 64 and per channel, all asymmetric]
    #[arg(long, value_delimiter = ',')]
    pub grids: Option<Vec<String>>,
    /// How --to compressed-tensors rounds the chosen grids when writing: every weight by the
    /// importance-weighted scale search the sensitivities were measured with, or GPTQ layer by
    /// layer on --gptq-samples windows (the blocks' linears; the table and an untied head
    /// weighted). On SmolLM2 GPTQ scores better on the calibration corpus and much worse on
    /// held-out text (BENCHMARKS.md), hence the default. [default: weighted]
    #[arg(long, value_enum)]
    pub rounding: Option<RoundingArg>,
    /// Calibration windows (of --calib-seqlen tokens) for --rounding gptq. [default: 32]
    #[arg(long)]
    pub gptq_samples: Option<usize>,
    /// ggml types to choose among with --to gguf (comma-separated; each tensor may also stay
    /// as stored).
    /// [default: q2_k,q3_k,q4_0,q4_1,iq4_nl,q4_k,q5_0,q5_1,q5_k,q6_k,q8_0,iq4_xs,f16]
    #[arg(long, value_delimiter = ',')]
    pub types: Option<Vec<String>>,
    /// Calibration text.
    #[arg(long)]
    pub calib: PathBuf,
    /// Which part of --calib to use.
    #[arg(long, value_enum, default_value = "lee")]
    pub calib_format: CalibFormat,
    /// Importance matrix to use (imatrix.dat or GGUF); collected from --calib otherwise
    /// (--calib-samples chunks of --calib-seqlen tokens) and saved beside the sensitivity file.
    #[arg(long)]
    pub imatrix: Option<PathBuf>,
    /// Chunks for the importance matrix.
    #[arg(long, default_value_t = 128)]
    pub calib_samples: usize,
    /// Tokens per chunk of the importance matrix.
    #[arg(long, default_value_t = 512)]
    pub calib_seqlen: usize,
    /// Samples the divergences are measured on (random windows of the calibration text).
    #[arg(long, default_value_t = 4)]
    pub probe_samples: usize,
    /// Tokens per probe sample.
    #[arg(long, default_value_t = 256)]
    pub probe_seqlen: usize,
    /// Seed of the probe windows.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Sensitivity cache (JSON): read when it matches the model, text and settings, written
    /// otherwise [default: MODELSTEM.HASH.sensitivity.json beside the output].
    #[arg(long)]
    pub sensitivity: Option<PathBuf>,
    /// Also draw the plan as a PNG: every tensor by block and kind, coloured by its
    /// bits/weight and named by its type.
    #[arg(long)]
    pub plan_png: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Draw the report's `plan` to `path` (under a temporary name, then renamed).
fn draw_plan(r: &shrink_methods::report::Report, path: &std::path::Path) -> Result<()> {
    use shrink_eval::plot::{grid_png, GridCell};
    let plan = r
        .extra
        .get("plan")
        .and_then(|v| v.as_array())
        .cloned()
        .unwrap_or_default();
    let mut rows: Vec<String> = Vec::new();
    let mut cells = Vec::new();
    let mut cols = 1;
    for row in &plan {
        let name = row["tensor"].as_str().unwrap_or_default();
        let ty = row["type"].as_str().unwrap_or_default();
        let bits = row["bits_per_weight"].as_f64().unwrap_or(0.0);
        // The block number is the first numeric part of the name (`blk.3.attn_q.weight`,
        // `model.layers.3.self_attn.q_proj.weight`); what follows it is the kind.
        let base = name.trim_end_matches(".weight");
        let parts: Vec<&str> = base.split('.').collect();
        let (kind, col) = match parts.iter().position(|p| p.parse::<usize>().is_ok()) {
            Some(i) if i + 1 < parts.len() => {
                (parts[i + 1..].join("."), parts[i].parse().unwrap_or(0))
            }
            _ => (base.to_string(), 0),
        };
        let kind = kind.as_str();
        let r = match rows.iter().position(|k| k == kind) {
            Some(i) => i,
            None => {
                rows.push(kind.to_string());
                rows.len() - 1
            }
        };
        cols = cols.max(col + 1);
        cells.push(GridCell {
            row: r,
            col,
            value: bits,
            text: ty.replace("_", ""),
        });
    }
    let tmp = path.with_extension("tmp.png");
    let title = format!(
        "shrink auto plan for {}: {:.3} bits/weight whole model (block number below)",
        r.extra.get("target").and_then(|v| v.as_str()).unwrap_or(""),
        r.extra
            .get("bits_per_weight")
            .and_then(|v| v.as_f64())
            .unwrap_or(0.0)
    );
    grid_png(&tmp, &title, &rows, cols, &cells, (2.5, 8.5), "bits/weight")?;
    std::fs::rename(&tmp, path).with_context(|| format!("{}: cannot write", path.display()))?;
    Ok(())
}

fn target(a: &Args) -> Result<Target> {
    let check = |flag: &str, v: f64, ok: bool| -> Result<f64> {
        if !v.is_finite() || !ok {
            bail!("{flag} {v}: out of range");
        }
        Ok(v)
    };
    Ok(match (a.target_bpw, a.max_kld, a.max_ppl_increase) {
        (Some(b), None, None) => Target::Bpw(check("--target-bpw", b, b > 0.0)?),
        (None, Some(k), None) => Target::MaxKld(check("--max-kld", k, k > 0.0)?),
        (None, None, Some(p)) => Target::MaxPplIncrease(check("--max-ppl-increase", p, p > 0.0)?),
        _ => bail!("give one of --target-bpw, --max-kld, --max-ppl-increase"),
    })
}

/// `--types`, or the default list.
fn type_names(a: &Args) -> Vec<String> {
    a.types
        .clone()
        .unwrap_or_else(|| auto::DEFAULT_TYPES.split(',').map(String::from).collect())
}

/// `--grids`, or the default list.
fn grid_names(a: &Args) -> Vec<String> {
    a.grids.clone().unwrap_or_else(|| {
        auto_ct::DEFAULT_GRIDS
            .split(',')
            .map(String::from)
            .collect()
    })
}

/// Refuse options that do not apply to `--to` (they would be silently ignored).
fn check_applies(a: &Args) -> Result<()> {
    match a.to {
        To::Gguf => {
            for (given, flag) in [
                (a.grids.is_some(), "--grids"),
                (a.rounding.is_some(), "--rounding"),
                (a.gptq_samples.is_some(), "--gptq-samples"),
            ] {
                if given {
                    bail!("{flag} applies to --to compressed-tensors, not to a GGUF (--types)");
                }
            }
        }
        To::CompressedTensors => {
            if a.types.is_some() {
                bail!(
                    "--types (ggml types) applies to --to gguf; compressed-tensors takes --grids"
                );
            }
            if a.gptq_samples.is_some() && a.rounding != Some(RoundingArg::Gptq) {
                bail!("--gptq-samples applies to --rounding gptq");
            }
        }
    }
    Ok(())
}

/// The ggml types of `--types`.
fn ggml_types(a: &Args) -> Result<Vec<GgmlType>> {
    type_names(a)
        .iter()
        .map(|t| {
            GgmlType::from_name(t)
                // Q8_K is ggml's activation type: llama.cpp stores no weight in it.
                .filter(|ty| {
                    (ty.can_quantize() && *ty != GgmlType::Q8_K)
                        || matches!(ty, GgmlType::F16 | GgmlType::BF16)
                })
                .with_context(|| format!("--types: {t} is not a ggml type shrink can write"))
        })
        .collect()
}

/// The integer grids of `--grids`.
fn int_grids(a: &Args) -> Result<Vec<IntSpec>> {
    let mut out: Vec<IntSpec> = Vec::new();
    for g in &grid_names(a) {
        let spec = auto_ct::parse_grid(g).with_context(|| {
            format!(
                "--grids: {g} is not an integer grid (intB-gG, intB-channel or intB-sym-gG, \
                 B one of 2, 3, 4, 5, 6, 8)"
            )
        })?;
        if !out.contains(&spec) {
            out.push(spec);
        }
    }
    Ok(out)
}

/// Run `shrink auto`.
pub fn run(a: Args) -> Result<()> {
    let t0 = Instant::now();
    let target = target(&a)?;
    check_applies(&a)?;
    for p in std::iter::once(&a.output).chain(&a.plan_png) {
        if p.exists() {
            bail!("{}: exists; choose a new output", p.display());
        }
    }
    let ckpt = common::open(&a.model)?;
    // The options, and a size target checked before anything is measured.
    let (types, grids, (lo, hi), what) = match a.to {
        To::Gguf => {
            let types = ggml_types(&a)?;
            let Checkpoint::Gguf(g) = &ckpt else {
                let d = a.model.display();
                bail!(
                    "{d}: shrink auto --to gguf takes a GGUF input (it keeps that file's \
                     metadata); write one first with `shrink export {d} --to gguf --type f16 -o \
                     MODEL.gguf`, or choose --to compressed-tensors"
                );
            };
            let range = auto::reachable_bpw(g, &types)?;
            let why = "every tensor at its smallest type whose blocks fit its rows — a \
                       256-element K block fits no row of a width that is not a multiple of 256";
            (types, Vec::new(), range, (type_names(&a).join(","), why))
        }
        To::CompressedTensors => {
            let grids = int_grids(&a)?;
            let range = auto_ct::reachable_bpw(&ckpt, &grids)?;
            let why = "every planned weight at its smallest grid whose groups divide its rows, \
                       every other tensor float16";
            (Vec::new(), grids, range, (grid_names(&a).join(","), why))
        }
    };
    if let Target::Bpw(b) = target {
        if b < lo {
            bail!(
                "--target-bpw {b}: no mix of {} reaches it on {}: the smallest is {lo:.3} \
                 bits/weight ({}), the largest {hi:.3}",
                what.0,
                a.model.display(),
                what.1
            );
        }
    }
    let ids = super::calibrated::calib_ids(&ckpt, &a.calib, a.calib_format == CalibFormat::Lee)?;
    let probe_spec = CalibSpec {
        samples: a.probe_samples,
        seqlen: a.probe_seqlen,
        seed: a.seed,
    };
    let samples = draw_samples(&ids, probe_spec)
        .map_err(|e| anyhow::anyhow!("{}: {e}", a.calib.display()))?;
    let dir = a
        .output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or(PathBuf::from("."), PathBuf::from);
    let (kind, options) = match a.to {
        To::Gguf => (
            "auto-sensitivity-v2",
            format!("types={}", type_names(&a).join(",")),
        ),
        To::CompressedTensors => (
            "auto-ct-sensitivity-v1",
            format!("grids={}", grid_names(&a).join(",")),
        ),
    };
    let settings = format!(
        "{options} imatrix={:?} calib-samples={} calib-seqlen={}",
        a.imatrix, a.calib_samples, a.calib_seqlen
    );
    let identity = shrink_methods::resume::identity(
        &a.model,
        kind,
        &settings,
        &samples,
        serde_json::Value::Null,
    );
    let cache = a
        .sensitivity
        .clone()
        .unwrap_or_else(|| auto::cache_path(&dir, &a.model, &identity));
    // The importance matrix: given, cached beside the sensitivity file, or collected.
    let (im_path, mut im) = match &a.imatrix {
        Some(p) => (p.clone(), Imatrix::read(p)?),
        None => {
            let p = cache.with_extension("imatrix.dat");
            match Imatrix::read(&p) {
                Ok(m) if p.exists() => (p, m),
                _ => {
                    let spec = CalibSpec {
                        samples: a.calib_samples,
                        seqlen: a.calib_seqlen,
                        seed: 0,
                    };
                    let chunks = consecutive_chunks(&ids, spec)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", a.calib.display()))?;
                    let (mut m, _) = shrink_methods::calibrated::imatrix(
                        &ckpt,
                        &chunks,
                        None,
                        &common::Bar::default(),
                    )?;
                    m.datasets = vec![a.calib.display().to_string()];
                    let tmp = p.with_extension("dat.tmp");
                    m.write(&tmp)?;
                    std::fs::rename(&tmp, &p)
                        .with_context(|| format!("{}: cannot write", p.display()))?;
                    (p, m)
                }
            }
        }
    };
    // The head's importance joins the matrix (measured with the sensitivities, cached with
    // them), so costs, probes and the written file weigh the head's rounding alike.
    let cached = Sensitivity::load(&cache, &identity)?;
    let head = match &cached {
        Some(s) => s.head_importance.clone(),
        None => auto::head_importance(&ckpt, &samples, &common::Bar::default())?,
    };
    if let Some((n, v)) = &head {
        im.entries.insert(n.clone(), v.clone());
    }
    let m = Measure {
        types: &types,
        imatrix: Some(&im),
        samples: &samples,
        identity: identity.clone(),
    };
    let bar = common::Bar::default();
    let ct_storage = match a.to {
        To::CompressedTensors => Some(auto_ct::storage(&ckpt, &im)?),
        To::Gguf => None,
    };
    let (sens, reused) = match cached {
        Some(s) => (s, true),
        None => {
            let mut s = match (&ct_storage, &ckpt) {
                (Some(st), _) => auto_ct::measure(&ckpt, &grids, st, &m, &bar)?,
                (None, Checkpoint::Gguf(g)) => auto::measure(g, &ckpt, &m, &bar)?,
                (None, _) => bail!("{}: --to gguf takes a GGUF input", a.model.display()),
            };
            s.head_importance = head;
            s.save(&cache)?;
            (s, false)
        }
    };
    let mut r = match (&ct_storage, &ckpt) {
        (None, Checkpoint::Gguf(g)) => {
            let storage = GgufStorage::new(&Sequential::new(&ckpt)?, Some(&im))?;
            let plan = auto::plan(&ckpt, &sens, target, &storage, &samples, &bar)?;
            auto::write(
                g,
                &a.model,
                &a.output,
                &sens,
                &plan,
                target,
                Some((&im_path, &im)),
                false,
                &bar,
            )?
        }
        (None, _) => bail!("{}: --to gguf takes a GGUF input", a.model.display()),
        (Some(storage), _) => {
            let plan = auto::plan(&ckpt, &sens, target, storage, &samples, &bar)?;
            let chunks;
            let chosen = a.rounding.unwrap_or(RoundingArg::Weighted);
            let gptq_samples = a.gptq_samples.unwrap_or(32);
            let rounding = match chosen {
                RoundingArg::Weighted => auto_ct::Rounding::Weighted,
                RoundingArg::Gptq => {
                    let spec = CalibSpec {
                        samples: gptq_samples,
                        seqlen: a.calib_seqlen,
                        seed: a.seed,
                    };
                    chunks = draw_samples(&ids, spec)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", a.calib.display()))?;
                    auto_ct::Rounding::Gptq {
                        samples: &chunks,
                        base: GptqSpec {
                            clip_search: true,
                            ..GptqSpec::default()
                        },
                        calibration: serde_json::json!({
                            "file": a.calib.display().to_string(), "samples": gptq_samples,
                            "seqlen": a.calib_seqlen, "seed": a.seed,
                        }),
                    }
                }
            };
            let mut r = auto_ct::write(
                &ckpt, &a.output, &sens, &plan, target, storage, rounding, &bar,
            )?;
            r.set("rounding", format!("{chosen:?}").to_lowercase());
            if chosen == RoundingArg::Gptq {
                r.notes.push(
                    "rounding       GPTQ per block linear on its grid (the plan's predicted and \
                     measured KL are those of the importance-weighted rounding)"
                        .into(),
                );
            }
            r
        }
    };
    r.set("sensitivity_file", cache.display().to_string());
    r.set("sensitivity_reused", reused);
    r.set("imatrix_file", im_path.display().to_string());
    r.notes.push(format!(
        "sensitivity    {} ({}, {:.1} s when measured)",
        cache.display(),
        if reused { "reused" } else { "measured now" },
        sens.seconds
    ));
    if let Some(p) = &a.plan_png {
        draw_plan(&r, p)?;
        r.notes.push(format!("plan chart     {}", p.display()));
        r.set("plan_png", p.display().to_string());
    }
    r.seconds = t0.elapsed().as_secs_f64();
    r.peak_rss_bytes = common::peak_rss();
    common::print_report(&r, a.json)
}
