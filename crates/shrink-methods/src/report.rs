//! The one report of a compression run: what every command's `--json` prints and what
//! `shrink-quantize.json` beside each output holds (`shrink compare` reads it).
//!
//! The common fields (method, sizes, bits/weight, times) are typed; what only one method
//! measures (GPTQ's losses, AWQ's ratios, ...) goes in [`Report::extra`], flattened into the
//! same JSON object.

use std::path::PathBuf;

use serde::Serialize;
use serde_json::{Map, Value};
use shrink_io::Checkpoint;

/// What a compression run produced.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// The input checkpoint.
    pub input: PathBuf,
    /// The output written.
    pub output: PathBuf,
    /// The method and its parameters, e.g. `gptq-w4g64-asym`.
    pub method: String,
    /// The calibration data, for calibrated methods (file, samples, length, seed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calibration: Option<Value>,
    /// Weights compressed.
    pub quantized_tensors: usize,
    /// Their elements.
    pub quantized_params: u64,
    /// Bits per weight of the compressed weights (codes, scales, zeros, indices).
    pub bits_per_weight_quantized: f64,
    /// Bits per weight of the whole model as stored.
    pub bits_per_weight_model: f64,
    /// Bytes of the compressed weights.
    pub quantized_bytes: u64,
    /// Bytes of the tensors stored dense.
    pub dense_bytes: u64,
    /// Bytes of every tensor as stored.
    pub model_bytes: u64,
    /// Bytes the weights take in float32.
    pub float32_bytes: u64,
    /// `float32_bytes / model_bytes`.
    pub compression_vs_f32: f64,
    /// Relative RMSE of the compressed weights against the input's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relative_rmse: Option<f64>,
    /// Bytes the input checkpoint stores its tensors in, when the run compared them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_bytes: Option<u64>,
    /// Seconds in the method itself (quantizers, searches, solves).
    pub quantize_seconds: f64,
    /// Seconds of the whole run.
    pub seconds: f64,
    /// Peak resident set size of the process, where the OS tells.
    pub peak_rss_bytes: Option<u64>,
    /// Method-specific fields, flattened into the JSON object.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
    /// Method-specific lines of the text report (not in the JSON).
    #[serde(skip)]
    pub notes: Vec<String>,
}

/// Byte and parameter counts of an output, from which the report's sizes follow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sizes {
    /// Elements of the compressed weights.
    pub quantized_params: u64,
    /// Bytes of their stored tensors.
    pub quantized_bytes: u64,
    /// Bytes of the tensors stored dense.
    pub dense_bytes: u64,
    /// Elements of every weight of the model.
    pub total_params: u64,
}

impl Report {
    /// A report of `method` from `input` to `output` with the sizes filled from `s`.
    pub fn new(input: PathBuf, output: PathBuf, method: String, s: Sizes) -> Self {
        let model_bytes = s.quantized_bytes + s.dense_bytes;
        let bits = |bytes: u64, params: u64| bytes as f64 * 8.0 / params.max(1) as f64;
        Report {
            input,
            output,
            method,
            quantized_params: s.quantized_params,
            bits_per_weight_quantized: bits(s.quantized_bytes, s.quantized_params),
            bits_per_weight_model: bits(model_bytes, s.total_params),
            quantized_bytes: s.quantized_bytes,
            dense_bytes: s.dense_bytes,
            model_bytes,
            float32_bytes: s.total_params * 4,
            compression_vs_f32: (s.total_params * 4) as f64 / model_bytes.max(1) as f64,
            peak_rss_bytes: peak_rss(),
            ..Report::default()
        }
    }

    /// Compare the output with the input `ckpt` it was made from: its size (the text report
    /// says how much larger or smaller the output is) and, when the input already stores its
    /// weights quantized, a warning that they were quantized again (unless one is set).
    pub fn against_input(&mut self, ckpt: &Checkpoint) {
        self.input_bytes = Some(ckpt.tensors().iter().map(|t| t.bytes).sum());
        if self.extra.get("warning").is_none_or(Value::is_null) {
            if let Some(what) = stored_quantized(ckpt) {
                self.set(
                    "warning",
                    format!(
                        "{} stores its weights quantized ({what}): they were dequantized and \
                         quantized again, which stacks both rounding errors (quantize the float \
                         model where you have it)",
                        ckpt.path().display()
                    ),
                );
            }
        }
    }

    /// Set a method-specific field.
    pub fn set(&mut self, key: &str, v: impl Serialize) {
        self.extra.insert(
            key.to_string(),
            serde_json::to_value(v).expect("report fields serialize"),
        );
    }

    /// The report as one JSON object.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).expect("a report serializes")
    }

    /// The text report: method, bits/weight, bytes, error, the method's notes, time.
    pub fn lines(&self) -> Vec<String> {
        let mut v = vec![
            format!(
                "method         {} on {} weights ({} params)",
                self.method, self.quantized_tensors, self.quantized_params
            ),
            format!(
                "bits/weight    {:.4} on quantized weights, {:.4} whole model as stored",
                self.bits_per_weight_quantized, self.bits_per_weight_model
            ),
            format!(
                "model bytes    {} ({}; f32 would be {}, ×{:.2} smaller)",
                self.model_bytes,
                human(self.model_bytes),
                human(self.float32_bytes),
                self.compression_vs_f32
            ),
        ];
        if let Some(i) = self.input_bytes.filter(|&i| i > 0 && self.model_bytes > 0) {
            let (ratio, way) = if self.model_bytes > i {
                (self.model_bytes as f64 / i as f64, "larger")
            } else {
                (i as f64 / self.model_bytes as f64, "smaller")
            };
            v.push(format!(
                "input bytes    {i} ({}; the output is ×{ratio:.2} {way})",
                human(i)
            ));
        }
        if let Some(e) = self.relative_rmse {
            v.push(format!("weight error   relative RMSE {e:.4}"));
        }
        v.extend(self.notes.iter().cloned());
        v.push(format!(
            "time           {:.1} s ({:.1} s in the method)",
            self.seconds, self.quantize_seconds
        ));
        v
    }
}

/// Peak resident set size of this process so far, in bytes (Linux; None elsewhere).
pub fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
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

/// Σ (w − d)² and Σ w², accumulated in f64 over chunks on all threads.
pub fn squared_error(w: &[f32], d: &[f32]) -> (f64, f64) {
    use rayon::prelude::*;
    w.par_chunks(1 << 14)
        .zip(d.par_chunks(1 << 14))
        .map(|(a, b)| {
            a.iter().zip(b).fold((0f64, 0f64), |(e, r), (&x, &y)| {
                (e + ((x - y) as f64).powi(2), r + (x as f64).powi(2))
            })
        })
        .reduce(|| (0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1))
}

/// What the input stores quantized, if anything: the HF `quantization_config`'s method, or a
/// GGUF's quantized block types.
pub fn stored_quantized(ckpt: &Checkpoint) -> Option<String> {
    match ckpt {
        Checkpoint::Hf(h) => {
            let q = h.quantization_config()?;
            // compressed-tensors with no quantization groups only stores sparsity.
            let groups = q.get("config_groups").and_then(|g| g.as_object());
            if q.get("quant_method").and_then(|v| v.as_str()) == Some("compressed-tensors")
                && groups.is_none_or(|g| g.is_empty())
            {
                return None;
            }
            Some(format!(
                "its quantization_config ({})",
                q.get("quant_method")
                    .and_then(|v| v.as_str())
                    .unwrap_or("unknown method")
            ))
        }
        Checkpoint::Gguf(g) => {
            use shrink_formats::ggml::GgmlType;
            let mut types: Vec<String> = g
                .tensors
                .iter()
                .filter(|t| !matches!(t.ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16))
                .map(|t| format!("{:?}", t.ty))
                .collect();
            types.sort();
            types.dedup();
            (!types.is_empty()).then(|| format!("GGUF blocks of {}", types.join(", ")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_give_bits_per_weight_and_json_keeps_extra_fields() {
        let mut r = Report::new(
            "in".into(),
            "out".into(),
            "m".into(),
            Sizes {
                quantized_params: 1000,
                quantized_bytes: 500,
                dense_bytes: 1500,
                total_params: 2000,
            },
        );
        assert_eq!(r.bits_per_weight_quantized, 4.0);
        assert_eq!(r.bits_per_weight_model, 8.0);
        assert_eq!(r.compression_vs_f32, 4.0);
        r.set("gptq_loss_per_layer", vec![1.5, 2.5]);
        r.quantize_seconds = 3.0;
        let j = r.to_json();
        assert_eq!(j["gptq_loss_per_layer"][1], 2.5);
        assert_eq!(j["quantize_seconds"], 3.0);
        assert!(j.get("notes").is_none());
        assert!(r.lines().iter().any(|l| l.contains("×4.00 smaller")));
    }
}
