//! Pieces every command shares: opening a model with its tokenizer, progress bars, byte sizes.

use std::path::Path;

use anyhow::bail;
use shrink_io::model_card;
use shrink_io::OutputDir;
use shrink_models::ModelConfig;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use shrink_io::tokenizer::Tokenizer;
use shrink_io::Checkpoint;

/// The tokenizer of a checkpoint: tokenizer.json of an HF directory, or the GGUF's vocabulary.
pub fn tokenizer(ckpt: &Checkpoint) -> Result<Tokenizer> {
    Ok(match ckpt {
        Checkpoint::Gguf(g) => Tokenizer::from_gguf(g)?,
        Checkpoint::Hf(h) => {
            let p = h.tokenizer_json.as_ref().with_context(|| {
                format!(
                    "{}: no tokenizer.json in this directory; this command needs one",
                    h.dir.display()
                )
            })?;
            Tokenizer::from_file(p)?
        }
    })
}

/// Open a checkpoint, with the path in the error.
pub fn open(path: &Path) -> Result<Checkpoint> {
    Ok(Checkpoint::open(path)?)
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
pub fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// Bytes as a human size (MiB with three decimals below a GiB).
pub fn human(bytes: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    if bytes as f64 >= 1024.0 * MIB {
        format!("{:.3} GiB", bytes as f64 / MIB / 1024.0)
    } else {
        format!("{:.3} MiB", bytes as f64 / MIB)
    }
}

/// Peak resident set size of this process so far, in bytes (Linux; None elsewhere).
pub fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Write config.json (with `dtype` set to `dtype_name` and an optional `quantization_config`)
/// and the tokenizer files into `out`: copied from an HF directory, built from GGUF metadata.
pub fn write_config_and_tokenizer(
    ckpt: &Checkpoint,
    cfg: Option<&ModelConfig>,
    out: &OutputDir,
    dtype_name: &str,
    quantization_config: Option<serde_json::Value>,
) -> Result<()> {
    let mut c = match ckpt {
        Checkpoint::Hf(h) => h.config.clone(),
        Checkpoint::Gguf(g) => {
            let Some(cfg) = cfg else {
                bail!("{}: architecture not supported", g.path().display())
            };
            let tok = Tokenizer::from_gguf(g)?;
            for (name, content) in tok.hf_files()? {
                out.write(&name, content.as_bytes())?;
            }
            // The model-card keys (general.name, license, ...) go where llama.cpp's converter
            // reads them back: README.md's front matter.
            let card = gguf_model_card(g);
            if !card.is_empty() {
                out.write("README.md", model_card::render(&card).as_bytes())?;
            }
            cfg.to_hf_json(dtype_name, tok.bos_id(), tok.eos_id())
        }
    };
    c["dtype"] = dtype_name.into();
    c["torch_dtype"] = dtype_name.into();
    match quantization_config {
        Some(q) => c["quantization_config"] = q,
        None => {
            if let Some(o) = c.as_object_mut() {
                o.remove("quantization_config");
            }
        }
    }
    out.write("config.json", serde_json::to_string_pretty(&c)?.as_bytes())?;
    if let Checkpoint::Hf(h) = ckpt {
        copy_side_files(&h.dir, out)?;
    }
    Ok(())
}

/// Finish a quantized output directory: write the report `v` beside the model as
/// shrink-quantize.json (`shrink compare` reads it), rename the directory into place, then print
/// `v` as JSON, or the `wrote` line, the report's `lines` and the peak RSS.
pub fn commit_with_report(
    out: OutputDir,
    v: &serde_json::Value,
    json: bool,
    lines: &[String],
) -> Result<()> {
    out.write(
        "shrink-quantize.json",
        serde_json::to_string_pretty(v)?.as_bytes(),
    )?;
    let target = out.commit()?;
    if json {
        println!("{}", serde_json::to_string_pretty(v)?);
        return Ok(());
    }
    println!("wrote          {}", target.display());
    for l in lines {
        println!("{l}");
    }
    if let Some(r) = peak_rss() {
        println!("peak RSS       {}", human(r));
    }
    Ok(())
}

/// The `general.*` model-card keys of a GGUF as model-card entries.
fn gguf_model_card(g: &shrink_io::GgufFile) -> Vec<(String, model_card::CardValue)> {
    use model_card::CardValue;
    model_card::CARD_KEYS
        .iter()
        .filter_map(|(card, key)| {
            let v = match g.get(key)? {
                shrink_io::GgufValue::String(s) => CardValue::Text(s.clone()),
                shrink_io::GgufValue::Array(items) => CardValue::List(
                    items
                        .iter()
                        .filter_map(|i| match i {
                            shrink_io::GgufValue::String(s) => Some(s.clone()),
                            _ => None,
                        })
                        .collect(),
                ),
                _ => return None,
            };
            Some((card.to_string(), v))
        })
        .collect()
}

/// Copy tokenizer and generation files of an HF directory (everything but weights, config and
/// the files that describe the weights' quantization).
fn copy_side_files(dir: &Path, out: &OutputDir) -> Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("{}: cannot list", dir.display()))? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        let skip = name == "config.json"
            || name == "shrink-quantize.json"
            || name == "quantize_config.json"
            || name.ends_with(".safetensors")
            || name == "model.safetensors.index.json";
        if skip || !e.file_type()?.is_file() {
            continue;
        }
        std::fs::copy(e.path(), out.file(&name))
            .with_context(|| format!("{}: cannot copy", e.path().display()))?;
    }
    Ok(())
}
