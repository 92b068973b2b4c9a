//! The output directory of a compressed model beside its weights: config.json (with the
//! `quantization_config` its layout needs), the tokenizer files (copied from an HF directory or
//! built from GGUF metadata), the model card, and the run's report — then committed atomically.

use std::path::{Path, PathBuf};

use shrink_io::model_card;
use shrink_io::tokenizer::Tokenizer;
use shrink_io::{Checkpoint, IoError, OutputDir};
use shrink_models::ModelConfig;

use crate::error::{MethodError, Result};
use crate::report::Report;

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
                return Err(MethodError::Options(format!(
                    "{}: architecture not supported",
                    g.path().display()
                )));
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
    let text = serde_json::to_string_pretty(&c).expect("JSON values serialize");
    out.write("config.json", text.as_bytes())?;
    if let Checkpoint::Hf(h) = ckpt {
        copy_side_files(&h.dir, out)?;
    }
    Ok(())
}

/// Write the report beside the model as `shrink-quantize.json` (`shrink compare` reads it) and
/// rename the directory into place; returns where it went.
pub fn commit(out: OutputDir, report: &Report) -> Result<PathBuf> {
    let text = serde_json::to_string_pretty(&report.to_json()).expect("a report serializes");
    out.write("shrink-quantize.json", text.as_bytes())?;
    Ok(out.commit()?)
}

/// Replace the committed output `dir`'s report by `report` (a run that adds to the report
/// after the writer committed it), written to a temporary name and renamed.
pub fn rewrite_report(dir: &Path, report: &Report) -> Result<()> {
    let text = serde_json::to_string_pretty(&report.to_json()).expect("a report serializes");
    Ok(shrink_io::output::write_atomic(
        &dir.join("shrink-quantize.json"),
        text.as_bytes(),
    )?)
}

/// Record in the committed output `dir`'s report that the method ran on a rotated copy of
/// `input` (`shrink quantize --rotate`): `input` restored, the method named `rot-…`, and the
/// rotation's own report under `rotation`. Written to a temporary name and renamed.
pub fn record_rotation(dir: &Path, input: &Path, rotation: &Report) -> Result<()> {
    let path = dir.join("shrink-quantize.json");
    let text = std::fs::read_to_string(&path).map_err(|e| os(&path, e))?;
    let mut v: serde_json::Value = serde_json::from_str(&text).map_err(|e| MethodError::Input {
        path: path.clone(),
        what: format!("not the JSON this run just wrote: {e}"),
    })?;
    v["input"] = input.display().to_string().into();
    let method = v["method"].as_str().unwrap_or("").to_string();
    v["method"] = format!("rot-{method}").into();
    let mut rot = rotation.to_json();
    if let Some(o) = rot.as_object_mut() {
        for k in ["input", "output", "quantized_tensors", "quantized_params"] {
            o.remove(k);
        }
    }
    v["rotation"] = rot;
    let tmp = dir.join(".shrink-quantize.json.partial");
    let text = serde_json::to_string_pretty(&v).expect("JSON values serialize");
    std::fs::write(&tmp, text).map_err(|e| os(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| os(&path, e))?;
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

/// The OS refused an operation on `p`.
fn os(p: &Path, e: std::io::Error) -> MethodError {
    MethodError::Io(IoError::os(p, e))
}

/// Copy tokenizer and generation files of an HF directory (everything but weights, config and
/// the files that describe the weights' quantization).
fn copy_side_files(dir: &Path, out: &OutputDir) -> Result<()> {
    for e in std::fs::read_dir(dir).map_err(|e| os(dir, e))? {
        let e = e.map_err(|e| os(dir, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let skip = name == "config.json"
            || name == "shrink-quantize.json"
            || name == "quantize_config.json"
            || name.ends_with(".safetensors")
            || name == "model.safetensors.index.json";
        if skip || !e.file_type().map_err(|e| os(dir, e))?.is_file() {
            continue;
        }
        let p = e.path();
        std::fs::copy(&p, out.file(&name)).map_err(|e| os(&p, e))?;
    }
    Ok(())
}
