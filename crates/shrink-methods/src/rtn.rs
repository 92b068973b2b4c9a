//! Round-to-nearest quantization of single weights: integers (absmax / zero-point, per tensor,
//! channel or group) and bitsandbytes' NF4/FP4, each written in the ecosystem's layout.

use serde_json::Value;
use shrink_formats::hqq_layout::{HqqSpec, HqqTensor};
use shrink_formats::int::{IntSpec, IntTensor};
use shrink_formats::int8_rowwise::RowwiseInt8;
use shrink_formats::nf4::{Nf4Spec, Nf4Tensor};
use shrink_io::quantized::{self, StoredTensor};

use crate::error::{MethodError, Result};
use crate::hqq::HqqOptions;

/// A round-to-nearest method and its parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rtn {
    /// Integers, stored as compressed-tensors.
    Int(IntSpec),
    /// NF4 / FP4, stored as bitsandbytes 4-bit.
    Nf4(Nf4Spec),
    /// LLM.int8()'s row-wise int8 weights, stored as bitsandbytes 8-bit; `threshold` is the
    /// activation outlier threshold recorded for inference.
    LlmInt8 {
        /// Outlier threshold (bitsandbytes' default 6.0).
        threshold: f64,
    },
    /// Dynamic int8: symmetric int8 weights (normally per channel) whose activations are
    /// quantized to int8 per token at run time; stored as compressed-tensors `int-quantized`.
    DynamicInt8(IntSpec),
    /// HQQ: half-quadratic optimisation of each group's zero point (no calibration), stored
    /// in shrink's `shrink-hqq` layout.
    Hqq(HqqSpec, HqqOptions),
}

/// One weight quantized by an [`Rtn`] method.
#[derive(Debug, Clone)]
pub enum QuantizedWeight {
    /// Integer codes, scales and zero points.
    Int(IntTensor),
    /// NF4/FP4 codes and block absmax.
    Nf4(Nf4Tensor),
    /// Row-wise int8 with per-row absmax.
    Int8Row(RowwiseInt8),
    /// HQQ codes with float zero points.
    Hqq(HqqTensor),
}

impl QuantizedWeight {
    /// Float32 values the stored weight decodes to, row-major [out, in].
    pub fn dequantize(&self) -> Vec<f32> {
        match self {
            QuantizedWeight::Int(t) => t.dequantize(),
            QuantizedWeight::Nf4(t) => t.dequantize(),
            QuantizedWeight::Int8Row(t) => t.dequantize(),
            QuantizedWeight::Hqq(t) => t.dequantize(),
        }
    }

    /// Bytes stored for the weight (codes, scales, zero points, absmax, ...).
    pub fn stored_bytes(&self) -> usize {
        match self {
            QuantizedWeight::Int(t) => t.stored_bytes(),
            QuantizedWeight::Nf4(t) => t.stored_bytes(),
            QuantizedWeight::Int8Row(t) => t.stored_bytes(),
            QuantizedWeight::Hqq(t) => t.stored_bytes(),
        }
    }
}

impl Rtn {
    /// Short name for reports (`int4-g64-asym-f16`, `nf4-b64-dq`, ...).
    pub fn name(&self) -> String {
        match self {
            Rtn::Int(s) => s.name(),
            Rtn::Nf4(s) => s.name(),
            Rtn::LlmInt8 { threshold } => format!("llm-int8-t{threshold}"),
            Rtn::DynamicInt8(s) => format!("dynamic-{}", s.name()),
            Rtn::Hqq(s, _) => s.name(),
        }
    }

    /// Check the parameters against a weight of `rows × cols` before any work is done.
    pub fn validate(&self, name: &str, rows: usize, cols: usize) -> Result<()> {
        let r = match self {
            Rtn::Int(s) => s.validate(rows, cols),
            Rtn::DynamicInt8(s)
                if s.bits != 8
                    || !s.symmetric
                    || matches!(s.granularity, shrink_formats::int::Granularity::Group(_)) =>
            {
                return Err(MethodError::Options(
                    "dynamic-int8 needs symmetric 8-bit weights with one scale per channel or \
                     tensor (the integer product applies one weight scale per output)"
                        .into(),
                ))
            }
            Rtn::DynamicInt8(s) => s.validate(rows, cols),
            Rtn::Nf4(s) => s.validate(),
            Rtn::LlmInt8 { threshold } if !threshold.is_finite() || *threshold <= 0.0 => {
                return Err(MethodError::Options(format!(
                    "--threshold must be positive, got {threshold}"
                )))
            }
            Rtn::LlmInt8 { .. } => Ok(()),
            Rtn::Hqq(s, o) => {
                o.validate()?;
                s.validate(rows, cols)
            }
        };
        r.map_err(|source| MethodError::Format {
            name: name.to_string(),
            source,
        })
    }

    /// Quantize the row-major [rows, cols] weight `w` (rows = output features).
    pub fn quantize(
        &self,
        name: &str,
        w: &[f32],
        rows: usize,
        cols: usize,
    ) -> Result<QuantizedWeight> {
        let fmt = |source| MethodError::Format {
            name: name.to_string(),
            source,
        };
        Ok(match self {
            Rtn::Int(s) | Rtn::DynamicInt8(s) => {
                QuantizedWeight::Int(shrink_formats::int::quantize(w, rows, cols, *s).map_err(fmt)?)
            }
            Rtn::Nf4(s) => QuantizedWeight::Nf4(shrink_formats::nf4::quantize(w, *s).map_err(fmt)?),
            Rtn::Hqq(s, o) => QuantizedWeight::Hqq(crate::hqq::quantize(w, rows, cols, *s, *o)?),
            Rtn::LlmInt8 { .. } => QuantizedWeight::Int8Row(
                shrink_formats::int8_rowwise::quantize(w, rows, cols).map_err(fmt)?,
            ),
        })
    }

    /// The stored tensors of module `module` holding `q` (a weight of `shape`, dense dtype
    /// `dtype_name`), in the layout this method writes.
    pub fn layout(
        &self,
        module: &str,
        q: &QuantizedWeight,
        shape: &[usize],
        dtype_name: &str,
    ) -> Vec<StoredTensor> {
        match q {
            QuantizedWeight::Int(t) if matches!(self, Rtn::DynamicInt8(_)) => {
                quantized::ct_w8a8_tensors(module, t)
            }
            QuantizedWeight::Int(t) => quantized::ct_tensors(module, t),
            QuantizedWeight::Nf4(t) => quantized::bnb4_tensors(module, t, shape, dtype_name),
            QuantizedWeight::Int8Row(t) => quantized::bnb8_tensors(module, t),
            QuantizedWeight::Hqq(t) => quantized::hqq_tensors(module, t),
        }
    }

    /// config.json's `quantization_config` for a model quantized with this method;
    /// `ignore` lists the modules left dense (compressed-tensors' convention).
    pub fn config(&self, ignore: &[String], compute_dtype: &str) -> Value {
        match self {
            Rtn::Int(s) => quantized::ct_config(s, ignore),
            Rtn::Nf4(s) => quantized::bnb4_config(s, compute_dtype),
            Rtn::LlmInt8 { threshold } => quantized::bnb8_config(*threshold),
            Rtn::DynamicInt8(s) => quantized::ct_w8a8_config(s, ignore),
            Rtn::Hqq(s, _) => quantized::hqq_config(s, ignore),
        }
    }
}
