//! Round-to-nearest quantization of single weights: integers (absmax / zero-point, per tensor,
//! channel or group), bitsandbytes' NF4/FP4 and LLM.int8's row-wise int8, each giving the
//! shared [`Quantized`] form that `per_tensor::layout` stores in the ecosystem's layout. (HQQ,
//! which optimises its zero points, is `per_tensor::Hqq`.)

use serde_json::Value;
use shrink_formats::int::{self, IntSpec};
use shrink_formats::int8_rowwise;
use shrink_formats::nf4::{self, Nf4Spec};
use shrink_io::quantized::{self, Quantized};

use crate::error::{MethodError, Result};

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
}

impl Rtn {
    /// Short name for reports (`int4-g64-asym-f16`, `nf4-b64-dq`, ...).
    pub fn name(&self) -> String {
        match self {
            Rtn::Int(s) => s.name(),
            Rtn::Nf4(s) => s.name(),
            Rtn::LlmInt8 { threshold } => format!("llm-int8-t{threshold}"),
            Rtn::DynamicInt8(s) => format!("dynamic-{}", s.name()),
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
        };
        r.map_err(|source| MethodError::Format {
            name: name.to_string(),
            source,
        })
    }

    /// Quantize the row-major [rows, cols] weight `w` (rows = output features).
    pub fn quantize(&self, name: &str, w: &[f32], rows: usize, cols: usize) -> Result<Quantized> {
        let fmt = |source| MethodError::Format {
            name: name.to_string(),
            source,
        };
        Ok(match self {
            Rtn::Int(s) => Quantized::Int(int::quantize(w, rows, cols, *s).map_err(fmt)?),
            Rtn::DynamicInt8(s) => Quantized::W8A8(int::quantize(w, rows, cols, *s).map_err(fmt)?),
            Rtn::Nf4(s) => Quantized::Nf4(nf4::quantize(w, *s).map_err(fmt)?, vec![rows, cols]),
            Rtn::LlmInt8 { threshold } => Quantized::Int8Row(
                int8_rowwise::quantize(w, rows, cols).map_err(fmt)?,
                *threshold as f32,
            ),
        })
    }

    /// config.json's `quantization_config` for a model quantized with this method;
    /// `ignore` lists the modules left dense (compressed-tensors' convention).
    pub fn config(&self, ignore: &[String], compute_dtype: &str) -> Value {
        match self {
            Rtn::Int(s) => quantized::ct_config(s, ignore),
            Rtn::Nf4(s) => quantized::bnb4_config(s, compute_dtype),
            Rtn::LlmInt8 { threshold } => quantized::bnb8_config(*threshold),
            Rtn::DynamicInt8(s) => quantized::ct_w8a8_config(s, ignore),
        }
    }
}
