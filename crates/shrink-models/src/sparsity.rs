//! How sparse a checkpoint is: the fraction of exact zeros (+0.0 or −0.0) of every weight, of
//! the linear layers' weights and of all parameters (`shrink inspect`, `shrink compare`).
//!
//! Weights are read one at a time in float32 and dropped once counted: whatever the checkpoint
//! stores (dense floats, compressed-tensors' sparse layouts, quantized layouts, GGUF blocks),
//! the zeros counted are the decoded weight's. For an architecture shrink runs, the weights are
//! those the configuration names (HF names) and the linear weights those of the decoder or
//! encoder blocks ([`Architecture::block_linears`], what pruning targets); otherwise every
//! stored float tensor is counted and no linear share is given.

use std::collections::BTreeSet;

use shrink_io::{Checkpoint, StoredDtype};

use crate::error::Result;
use crate::Architecture;

/// The zeros of one weight.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorZeros {
    /// Its HF name (the stored name for an architecture shrink does not run).
    pub name: String,
    /// Exact zeros.
    pub zeros: u64,
    /// Elements.
    pub elements: u64,
    /// Whether it is the weight of a linear layer inside the blocks.
    pub linear: bool,
}

impl TensorZeros {
    /// Fraction of zeros (0 for an empty tensor).
    pub fn sparsity(&self) -> f64 {
        ratio(self.zeros, self.elements)
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// Number of exact zeros (±0.0) in `v`.
pub fn count_zeros(v: &[f32]) -> u64 {
    v.iter().filter(|x| **x == 0.0).count() as u64
}

/// The sparsity of a checkpoint, weight by weight.
#[derive(Debug, Clone, PartialEq)]
pub struct Sparsity {
    /// Every weight, in the configuration's (or the file's) order.
    pub tensors: Vec<TensorZeros>,
    /// Whether the linear weights are known (the architecture is one shrink runs).
    pub linears_known: bool,
}

impl Sparsity {
    /// Count the zeros of every weight of `ckpt`, one weight at a time.
    pub fn of(ckpt: &Checkpoint) -> Result<Self> {
        let Ok(arch) = Architecture::from_checkpoint(ckpt) else {
            return Self::of_stored(ckpt);
        };
        let linears: BTreeSet<String> =
            arch.block_linears().into_iter().map(|l| l.weight).collect();
        let loader = arch.weight_loader(ckpt);
        let mut tensors = Vec::new();
        for (name, shape) in arch.weight_shapes() {
            if !loader.has(&name) {
                continue;
            }
            let v = arch
                .read_weight(&loader, &name, &shape)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            tensors.push(TensorZeros {
                linear: linears.contains(&name),
                zeros: count_zeros(&v),
                elements: v.len() as u64,
                name,
            });
        }
        Ok(Sparsity {
            tensors,
            linears_known: true,
        })
    }

    /// Every stored float (or GGUF block) tensor, by stored name, for checkpoints whose
    /// architecture shrink does not run.
    fn of_stored(ckpt: &Checkpoint) -> Result<Self> {
        let sparse = matches!(ckpt, Checkpoint::Hf(h)
            if h.quantization_config().and_then(shrink_io::sparse::layout_of).is_some());
        let mut tensors = Vec::new();
        for t in ckpt.tensors() {
            if matches!(t.dtype, StoredDtype::Other(_)) {
                continue;
            }
            // A sparse layout's float part is its module's weight.
            let name = match t.name.strip_suffix(".compressed") {
                Some(m) if sparse && m.ends_with(".weight") => m.to_string(),
                Some(m) if sparse => format!("{m}.weight"),
                _ => t.name,
            };
            let (v, _) = ckpt.read_f32(&name)?;
            tensors.push(TensorZeros {
                zeros: count_zeros(&v),
                elements: v.len() as u64,
                name,
                linear: false,
            });
        }
        Ok(Sparsity {
            tensors,
            linears_known: false,
        })
    }

    /// Fraction of zeros over every weight.
    pub fn overall(&self) -> f64 {
        let (z, n) = self
            .tensors
            .iter()
            .fold((0, 0), |(z, n), t| (z + t.zeros, n + t.elements));
        ratio(z, n)
    }

    /// Fraction of zeros over the linear layers' weights inside the blocks, when known.
    pub fn linear_weights(&self) -> Option<f64> {
        if !self.linears_known {
            return None;
        }
        let (z, n) = self
            .tensors
            .iter()
            .filter(|t| t.linear)
            .fold((0, 0), |(z, n), t| (z + t.zeros, n + t.elements));
        Some(ratio(z, n))
    }

    /// `{"overall": x, "linear_weights": y | null, "per_tensor": {name: s, ...}}`.
    pub fn to_json(&self) -> serde_json::Value {
        let per: serde_json::Map<String, serde_json::Value> = self
            .tensors
            .iter()
            .map(|t| (t.name.clone(), serde_json::json!(t.sparsity())))
            .collect();
        serde_json::json!({
            "overall": self.overall(),
            "linear_weights": self.linear_weights(),
            "per_tensor": per,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/fixtures")
            .join(name)
    }

    #[test]
    fn zeros_are_counted_with_either_sign() {
        assert_eq!(count_zeros(&[0.0, -0.0, 1.0, f32::MIN_POSITIVE]), 2);
    }

    #[test]
    fn a_dense_fixture_is_counted_weight_by_weight() {
        let ckpt = Checkpoint::open(fixture("tiny-llama")).unwrap();
        let s = Sparsity::of(&ckpt).unwrap();
        // 20 weights (the LM head is tied), 14 of them block linears.
        assert_eq!(s.tensors.len(), 20);
        assert_eq!(s.tensors.iter().filter(|t| t.linear).count(), 14);
        let elements: u64 = s.tensors.iter().map(|t| t.elements).sum();
        // Per layer: q, o 64×64; k, v 32×64; gate, up, down 64·160; two norms of 64.
        let layer = 2 * 64 * 64 + 2 * 32 * 64 + 3 * 64 * 160 + 2 * 64;
        assert_eq!(elements, 2 * layer + 512 * 64 + 64);
        assert!(s.overall() < 0.01, "{}", s.overall());
        let v = s.to_json();
        assert!(v["per_tensor"]["model.norm.weight"].is_number());
        assert!(v["linear_weights"].is_number());
    }

    #[test]
    fn sparse_parts_count_as_their_decoded_weight() {
        // compressed-tensors' own checkpoint (no dimensions in its config: stored tensors).
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shrink-io/tests/data/ct-sparse/sparse-24-bitmask");
        let s = Sparsity::of(&Checkpoint::open(dir).unwrap()).unwrap();
        let names: Vec<&str> = s.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names.len(), 3);
        assert!(
            names.iter().all(|n| n.ends_with("_proj.weight")),
            "{names:?}"
        );
        // 2:4: at least half of every weight is zero.
        assert!(s.tensors.iter().all(|t| t.sparsity() >= 0.5));
    }

    #[test]
    fn an_unknown_architecture_counts_its_stored_floats() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("config.json"), r#"{"model_type": "mamba"}"#).unwrap();
        let data: Vec<u8> = [0.0f32, 1.0, 0.0, -0.0, 2.0, 3.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2, 3], &data)
            .unwrap();
        safetensors::serialize_to_file(
            [("backbone.w", view)],
            None,
            &tmp.path().join("model.safetensors"),
        )
        .unwrap();
        let s = Sparsity::of(&Checkpoint::open(tmp.path()).unwrap()).unwrap();
        assert_eq!(s.overall(), 0.5);
        assert_eq!(s.linear_weights(), None);
        assert!(s.to_json()["linear_weights"].is_null());
    }
}
