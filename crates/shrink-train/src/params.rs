//! The trainable weights of a model: every tensor of its checkpoint as a float32 [`Var`], by
//! Hugging Face name and in Hugging Face layout, with their gradients summed in plain buffers.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Tensor, Var};
use shrink_io::Checkpoint;
use shrink_models::Architecture;

use crate::error::{Result, TrainError};

/// A model's weights, trainable, in the order the architecture lists them.
#[derive(Debug, Clone)]
pub struct Params {
    /// The architecture the weights belong to.
    pub arch: Architecture,
    names: Vec<String>,
    vars: Vec<Var>,
    index: HashMap<String, usize>,
}

impl Params {
    /// Read every weight of `ckpt` as float32 (dequantizing nothing: a quantized checkpoint is
    /// refused by the loader with its own message).
    pub fn load(ckpt: &Checkpoint) -> Result<Self> {
        let arch = Architecture::from_checkpoint(ckpt)?;
        let w = arch.weight_loader(ckpt);
        let mut tensors = Vec::new();
        for (name, shape) in arch.weight_shapes() {
            if !w.has(&name) {
                // Optional weights (a BERT pooler a classifier does not use, say) are skipped;
                // a missing required one fails below when the forward asks for it.
                continue;
            }
            tensors.push((name.clone(), arch.read_weight(&w, &name, &shape)?));
        }
        Params::from_tensors(arch, tensors)
    }

    /// Weights given as (HF name, tensor) pairs.
    pub fn from_tensors(arch: Architecture, tensors: Vec<(String, Tensor)>) -> Result<Self> {
        let mut p = Params {
            arch,
            names: Vec::new(),
            vars: Vec::new(),
            index: HashMap::new(),
        };
        for (name, t) in tensors {
            let t = t.to_dtype(candle_core::DType::F32)?.contiguous()?;
            if t.elem_count() > 0 {
                let v: Vec<f32> = t.flatten_all()?.to_vec1()?;
                if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                    return Err(TrainError::Options(format!(
                        "weight {name} holds a non-finite value ({}) at element {i}",
                        v[i]
                    )));
                }
            }
            p.index.insert(name.clone(), p.names.len());
            p.names.push(name);
            p.vars.push(Var::from_tensor(&t)?);
        }
        Ok(p)
    }

    /// The weight named `name`, tracked for gradients.
    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.index
            .get(name)
            .map(|&i| self.vars[i].as_tensor())
            .ok_or_else(|| TrainError::Options(format!("the model has no weight {name}")))
    }

    /// The weight named `name`, if present.
    pub fn get_opt(&self, name: &str) -> Option<&Tensor> {
        self.index.get(name).map(|&i| self.vars[i].as_tensor())
    }

    /// Whether a weight named `name` exists.
    pub fn has(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// Number of weight tensors.
    pub fn len(&self) -> usize {
        self.vars.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.vars.is_empty()
    }

    /// Number of scalar parameters.
    pub fn count(&self) -> usize {
        self.vars.iter().map(|v| v.elem_count()).sum()
    }

    /// Names in order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The variables in order.
    pub fn vars(&self) -> &[Var] {
        &self.vars
    }

    /// The float32 values of weight `i`, flattened.
    pub fn values(&self, i: usize) -> Result<Vec<f32>> {
        Ok(self.vars[i].as_tensor().flatten_all()?.to_vec1()?)
    }

    /// Replace weight `i`'s values (same element count) in place.
    pub fn set_values(&self, i: usize, v: Vec<f32>) -> Result<()> {
        let var = &self.vars[i];
        let t = Tensor::from_vec(v, var.shape(), var.device())?;
        var.set(&t)?;
        Ok(())
    }

    /// Make `v` (same element count) weight `i`, without copying it.
    pub fn replace(&mut self, i: usize, v: Vec<f32>) -> Result<()> {
        let var = &self.vars[i];
        let t = Tensor::from_vec(v, var.shape(), var.device())?;
        self.vars[i] = Var::from_tensor(&t)?;
        Ok(())
    }

    /// Run `f` on weight `i`'s float32 values in place (no copy).
    pub fn with_values<R>(&self, i: usize, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
        with_f32(self.vars[i].as_tensor(), f)
    }

    /// Every weight as float32 into the safetensors file `path`, streamed one tensor at a time
    /// (no copy of the whole model in memory).
    pub fn write_safetensors(&self, path: &Path) -> Result<()> {
        let header: Vec<shrink_io::TensorHeader> = self
            .names
            .iter()
            .zip(&self.vars)
            .map(|(n, v)| shrink_io::TensorHeader {
                name: n.clone(),
                dtype: safetensors::Dtype::F32,
                shape: v.shape().dims().to_vec(),
                len: 4 * v.elem_count(),
            })
            .collect();
        shrink_io::write_safetensors_ordered(path, &header, None, |i| -> Result<Vec<u8>> {
            self.with_values(i, |v| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        })
    }

    /// Load values saved by [`Params::write_safetensors`] (or any f32 safetensors with the same
    /// names and shapes) from `path`.
    pub fn load_values(&self, path: &Path) -> Result<()> {
        let bytes = std::fs::read(path).map_err(|source| TrainError::File {
            path: path.into(),
            source,
        })?;
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| TrainError::input(path, format!("not a safetensors file: {e}")))?;
        for (i, name) in self.names.iter().enumerate() {
            let v = crate::state::f32_tensor(&st, name, path)?;
            if v.len() != self.vars[i].elem_count() {
                return Err(TrainError::input(
                    path,
                    format!(
                        "{name} holds {} values, the model {}",
                        v.len(),
                        self.vars[i].elem_count()
                    ),
                ));
            }
            self.set_values(i, v)?;
        }
        Ok(())
    }
}

/// Run `f` on the float32 values of a CPU tensor without copying them
/// ([`shrink_models::with_f32`], with this crate's error).
pub fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    Ok(shrink_models::with_f32(t, f)?)
}

/// `w` (`[a, b]`, row-major) transposed to `[b, a]`: a Conv1D weight (GPT-2 stores `[in, out]`)
/// to nn.Linear's `[out, in]` and back.
pub(crate) use shrink_formats::transpose::transpose;
