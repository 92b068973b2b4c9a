//! What a checkpoint holds and exactly how much memory it takes (`shrink inspect`): format,
//! architecture, parameters, bytes per storage dtype and per module.
//!
//! Bytes count what is stored. Parameters count the model's weights: for a quantized HF
//! checkpoint, whose packed tensors hold several weights per element, they come from the
//! configuration's weight shapes instead of the stored tensors.

use std::collections::BTreeMap;

use serde::Serialize;
use shrink_io::{Checkpoint, TensorEntry};

use crate::{BertConfig, BertKind, ModelConfig};

/// Tensors, parameters and bytes of one storage dtype.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DtypeCount {
    /// Tensors stored in it.
    pub tensors: usize,
    /// Their elements.
    pub parameters: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// The accounting of one checkpoint.
#[derive(Debug, Clone)]
pub struct Footprint {
    /// `huggingface safetensors` or `gguf`.
    pub format: &'static str,
    /// The architecture the checkpoint names (`model_type` or `general.architecture`).
    pub architecture: String,
    /// The family shrink runs it as, or why it cannot.
    pub family: Result<&'static str, String>,
    /// Weights of the model.
    pub parameters: u64,
    /// Every stored tensor.
    pub tensors: Vec<TensorEntry>,
    /// Bytes of every stored tensor.
    pub bytes: u64,
    /// Counts per storage dtype, by name.
    pub dtypes: BTreeMap<String, DtypeCount>,
}

/// Sizes of every dotted prefix of the tensor names ("" is the whole model), like accelerate's
/// `compute_module_sizes`.
pub fn module_sizes(tensors: &[TensorEntry]) -> BTreeMap<String, u64> {
    let mut sizes = BTreeMap::new();
    for t in tensors {
        *sizes.entry(String::new()).or_insert(0) += t.bytes;
        let parts: Vec<&str> = t.name.split('.').collect();
        for i in 1..parts.len() {
            *sizes.entry(parts[..i].join(".")).or_insert(0) += t.bytes;
        }
        *sizes.entry(t.name.clone()).or_insert(0) += t.bytes;
    }
    sizes
}

/// The family shrink runs a checkpoint as: causal LMs first, BERT-style classifiers after.
fn family(ckpt: &Checkpoint) -> Result<&'static str, String> {
    ModelConfig::from_checkpoint(ckpt)
        .map(|c| c.family())
        .or_else(|e| {
            BertConfig::from_checkpoint(ckpt)
                .map(|b| match b.kind {
                    BertKind::Bert => "BERT classifier",
                    BertKind::DistilBert => "DistilBERT classifier",
                })
                .map_err(|_| e)
        })
        .map_err(|e| e.to_string())
}

impl Footprint {
    /// Account for `ckpt`.
    pub fn of(ckpt: &Checkpoint) -> Self {
        let tensors = ckpt.tensors();
        let (architecture, format) = match ckpt {
            Checkpoint::Hf(h) => (
                h.config
                    .get("model_type")
                    .and_then(|v| v.as_str())
                    .unwrap_or("?")
                    .to_string(),
                "huggingface safetensors",
            ),
            Checkpoint::Gguf(g) => (g.architecture().unwrap_or("?").to_string(), "gguf"),
        };
        let stored: u64 = tensors.iter().map(|t| t.elements()).sum();
        let quantized = matches!(ckpt, Checkpoint::Hf(h) if h.quantization_config().is_some());
        let parameters = match quantized.then(|| ModelConfig::from_checkpoint(ckpt)) {
            Some(Ok(c)) => crate::weight_shapes(&c)
                .iter()
                .map(|(_, s)| s.iter().product::<usize>() as u64)
                .sum(),
            _ => stored,
        };
        let mut dtypes: BTreeMap<String, DtypeCount> = BTreeMap::new();
        for t in &tensors {
            let e = dtypes.entry(t.dtype.name()).or_default();
            e.tensors += 1;
            e.parameters += t.elements();
            e.bytes += t.bytes;
        }
        Footprint {
            format,
            architecture,
            family: family(ckpt),
            parameters,
            bytes: tensors.iter().map(|t| t.bytes).sum(),
            tensors,
            dtypes,
        }
    }

    /// Stored bits per weight.
    pub fn bits_per_weight(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.parameters.max(1) as f64
    }

    /// Bytes the weights take in float32.
    pub fn float32_bytes(&self) -> u64 {
        self.parameters * 4
    }

    /// The accounting as one JSON object; `modules` adds [`module_sizes`], `tensors` every
    /// tensor's name, dtype, shape and bytes.
    pub fn to_json(
        &self,
        path: &std::path::Path,
        modules: bool,
        tensors: bool,
    ) -> serde_json::Value {
        let mut v = serde_json::json!({
            "path": path,
            "format": self.format,
            "architecture": self.architecture,
            "family": self.family.as_ref().ok(),
            "parameters": self.parameters,
            "tensors": self.tensors.len(),
            "footprint_bytes": self.bytes,
            "float32_bytes": self.float32_bytes(),
            "bits_per_weight": self.bits_per_weight(),
            "dtypes": self.dtypes,
        });
        if let Err(e) = &self.family {
            v["config_error"] = serde_json::json!(e);
        }
        if modules {
            v["modules"] = serde_json::json!(module_sizes(&self.tensors));
        }
        if tensors {
            v["tensor_list"] = serde_json::json!(self
                .tensors
                .iter()
                .map(|t| serde_json::json!({"name": t.name, "dtype": t.dtype.name(), "shape": t.shape, "bytes": t.bytes}))
                .collect::<Vec<_>>());
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shrink_io::StoredDtype;

    fn entry(name: &str, shape: Vec<usize>, bytes: u64) -> TensorEntry {
        TensorEntry {
            name: name.into(),
            dtype: StoredDtype::Float(shrink_formats::float::FloatType::F32),
            shape,
            bytes,
        }
    }

    #[test]
    fn module_sizes_sum_every_dotted_prefix() {
        let t = [
            entry("model.layers.0.w", vec![2, 2], 16),
            entry("model.layers.1.w", vec![2], 8),
            entry("lm_head.weight", vec![1], 4),
        ];
        let m = module_sizes(&t);
        assert_eq!(m[""], 28);
        assert_eq!(m["model"], 24);
        assert_eq!(m["model.layers"], 24);
        assert_eq!(m["model.layers.0"], 16);
        assert_eq!(m["model.layers.1.w"], 8);
        assert_eq!(m["lm_head"], 4);
        assert_eq!(m.len(), 9);
    }

    #[test]
    fn an_unreadable_config_still_has_a_footprint() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("config.json"), r#"{"model_type": "mamba"}"#).unwrap();
        let data = vec![0u8; 24];
        let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2, 3], &data)
            .unwrap();
        safetensors::serialize_to_file(
            [("backbone.w", view)],
            None,
            &tmp.path().join("model.safetensors"),
        )
        .unwrap();
        let f = Footprint::of(&Checkpoint::open(tmp.path()).unwrap());
        assert_eq!(f.architecture, "mamba");
        assert_eq!(f.format, "huggingface safetensors");
        assert!(f.family.is_err());
        assert_eq!((f.parameters, f.bytes, f.float32_bytes()), (6, 24, 24));
        assert_eq!(f.bits_per_weight(), 32.0);
        assert_eq!(
            f.dtypes["F32"],
            DtypeCount {
                tensors: 1,
                parameters: 6,
                bytes: 24
            }
        );
        let v = f.to_json(tmp.path(), true, true);
        assert!(v["family"].is_null() && v["config_error"].is_string());
        assert_eq!(v["modules"]["backbone"], 24);
        assert_eq!(v["tensor_list"][0]["shape"], serde_json::json!([2, 3]));
    }
}
