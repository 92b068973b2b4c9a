//! Hugging Face's GPTQ and AWQ checkpoint layouts: the stored tensors and the
//! `quantization_config` to write them with, and readers of such checkpoints, made by shrink or
//! by other tools (AutoGPTQ, GPTQModel, optimum, AutoAWQ).
//!
//! The layouts themselves (int32 packing, zero-point offsets, AWQ's order) are in
//! [`shrink_formats::gptq_layout`] and [`shrink_formats::awq_layout`]. Writers store GPTQ with
//! `checkpoint_format: "gptq"` (v1, loadable everywhere) and AWQ as `version: "gemm"`.
//! Readers return [`Quantized::Int`] when the weight is an integer tensor with groups of
//! consecutive columns, and [`Quantized::Dense`] (decoded once, when loading) for GPTQ with an
//! act-order `g_idx`; `None` for a module stored dense. Every refusal names the file, the tensor
//! and what is wrong with it.

use std::path::Path;

use safetensors::tensor::Dtype;
use serde_json::{json, Value};
use shrink_formats::awq_layout::{self as awq, AwqPacked, AwqParts, AWQ_BITS};
use shrink_formats::gptq_layout::{
    self as gptq, CheckpointFormat, GptqPacked, GptqParts, GPTQ_BITS,
};
use shrink_formats::int::IntTensor;
use shrink_formats::FormatError;

use crate::error::{IoError, Result};
use crate::quantized::{Quantized, StoredTensor};
use crate::safetensors::SafetensorsModel;

/// The `group_size` value of a config: `-1` (one group per row) for `None`.
fn group_value(group_size: Option<usize>) -> Value {
    match group_size {
        Some(g) => json!(g),
        None => json!(-1),
    }
}

fn i32_bytes(v: &[i32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn f16_bytes(v: &[half::f16]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The GPTQ tensors of module `module` (`<module>.qweight`, `.qzeros`, `.scales`, `.g_idx`),
/// zero points in the v1 (`checkpoint_format: "gptq"`) convention; errors if the parts fail
/// [`GptqParts::check`].
pub fn gptq_tensors(module: &str, parts: &GptqParts) -> Result<Vec<StoredTensor>, FormatError> {
    let p = parts.pack(CheckpointFormat::Gptq)?;
    let [qw, qz, sc] = gptq::shapes(parts.bits, parts.group_size, parts.rows, parts.cols);
    Ok(vec![
        StoredTensor {
            name: format!("{module}.qweight"),
            dtype: Dtype::I32,
            shape: qw.to_vec(),
            bytes: i32_bytes(&p.qweight),
        },
        StoredTensor {
            name: format!("{module}.qzeros"),
            dtype: Dtype::I32,
            shape: qz.to_vec(),
            bytes: i32_bytes(&p.qzeros),
        },
        StoredTensor {
            name: format!("{module}.scales"),
            dtype: Dtype::F16,
            shape: sc.to_vec(),
            bytes: f16_bytes(&p.scales),
        },
        StoredTensor {
            name: format!("{module}.g_idx"),
            dtype: Dtype::I32,
            shape: vec![parts.cols],
            bytes: i32_bytes(&p.g_idx),
        },
    ])
}

/// The `quantization_config` of a GPTQ checkpoint (transformers' `GPTQConfig`,
/// `quant_method: "gptq"`, `checkpoint_format: "gptq"`); `group_size` `None` is HF's `-1`.
#[allow(clippy::too_many_arguments)]
pub fn gptq_config(
    bits: u8,
    group_size: Option<usize>,
    desc_act: bool,
    sym: bool,
    damp_percent: f64,
    true_sequential: bool,
    static_groups: bool,
) -> Value {
    json!({
        "bits": bits, "checkpoint_format": CheckpointFormat::Gptq.name(),
        "damp_percent": damp_percent, "desc_act": desc_act, "group_size": group_value(group_size),
        "model_file_base_name": null, "model_name_or_path": null, "quant_method": "gptq",
        "static_groups": static_groups, "sym": sym, "true_sequential": true_sequential,
    })
}

/// The `quantize_config.json` AutoGPTQ writes beside the weights, from the
/// `quantization_config` of [`gptq_config`] (the same keys, the weights' base name `model`).
pub fn gptq_quantize_config(quantization_config: &Value) -> Value {
    let mut v = quantization_config.clone();
    v["model_file_base_name"] = json!("model");
    v
}

/// The AWQ GEMM tensors of module `module` (`<module>.qweight`, `.qzeros`, `.scales`).
pub fn awq_parts_tensors(module: &str, parts: &AwqParts) -> Result<Vec<StoredTensor>, FormatError> {
    let p = parts.pack()?;
    let [qw, qz, sc] = awq::shapes(parts.group_size, parts.rows, parts.cols);
    Ok(vec![
        StoredTensor {
            name: format!("{module}.qweight"),
            dtype: Dtype::I32,
            shape: qw.to_vec(),
            bytes: i32_bytes(&p.qweight),
        },
        StoredTensor {
            name: format!("{module}.qzeros"),
            dtype: Dtype::I32,
            shape: qz.to_vec(),
            bytes: i32_bytes(&p.qzeros),
        },
        StoredTensor {
            name: format!("{module}.scales"),
            dtype: Dtype::F16,
            shape: sc.to_vec(),
            bytes: f16_bytes(&p.scales),
        },
    ])
}

/// The AWQ GEMM tensors of module `module` for a 4-bit integer tensor whose scales float16
/// holds exactly ([`AwqParts::from_int_tensor`]).
pub fn awq_tensors(module: &str, t: &IntTensor) -> Result<Vec<StoredTensor>, FormatError> {
    awq_parts_tensors(module, &AwqParts::from_int_tensor(t)?)
}

/// The `quantization_config` of an AWQ checkpoint (transformers' `AwqConfig`,
/// `quant_method: "awq"`); `group_size` `None` is HF's `-1`, `version` e.g. `gemm`.
pub fn awq_config(bits: u8, group_size: Option<usize>, zero_point: bool, version: &str) -> Value {
    json!({
        "bits": bits, "group_size": group_value(group_size), "modules_to_not_convert": null,
        "quant_method": "awq", "version": version.to_ascii_lowercase(), "zero_point": zero_point,
    })
}

/// The `quant_config.json` AutoAWQ writes beside the weights.
pub fn awq_quant_config(
    bits: u8,
    group_size: Option<usize>,
    zero_point: bool,
    version: &str,
) -> Value {
    json!({
        "modules_to_not_convert": null, "q_group_size": group_value(group_size),
        "version": version.to_ascii_uppercase(), "w_bit": bits, "zero_point": zero_point,
    })
}

/// The tensors of one module, with errors that name the file and the tensor.
struct Module<'a> {
    st: &'a SafetensorsModel,
    dir: &'a Path,
    module: &'a str,
}

impl<'a> Module<'a> {
    /// An error about the checkpoint (its configuration, or the module as a whole).
    fn err(&self, what: String) -> IoError {
        IoError::malformed(self.dir, what)
    }

    /// An error about tensor `<module>.<suffix>`, naming the file that holds it.
    fn tensor_err(&self, suffix: &str, what: String) -> IoError {
        let name = format!("{}.{suffix}", self.module);
        let path = self
            .st
            .tensors
            .get(&name)
            .map_or(self.dir, |t| self.st.path_of(t));
        IoError::malformed(path, format!("{name}: {what}"))
    }

    /// Dtype, shape and bytes of `<module>.<suffix>`, if present.
    fn get(&self, suffix: &str) -> Option<(Dtype, &'a [usize], &'a [u8])> {
        let st: &'a SafetensorsModel = self.st;
        st.tensors
            .get(&format!("{}.{suffix}", self.module))
            .map(|t| (t.dtype, t.shape.as_slice(), st.bytes(t)))
    }

    /// Tensor `<module>.<suffix>`, which must be present with this dtype and shape.
    fn need(&self, suffix: &str, dtype: Dtype, shape: &[usize]) -> Result<&'a [u8]> {
        let (dt, sh, bytes) = self.get(suffix).ok_or_else(|| {
            self.err(format!(
                "{}.{suffix} is missing (the module has a qweight)",
                self.module
            ))
        })?;
        if dt != dtype {
            return Err(self.tensor_err(suffix, format!("dtype {dt:?}, expected {dtype:?}")));
        }
        if sh != shape {
            return Err(self.tensor_err(suffix, format!("shape {sh:?}, expected {shape:?}")));
        }
        let want = shape.iter().product::<usize>() * dtype.bitsize() / 8;
        if bytes.len() != want {
            return Err(self.tensor_err(suffix, format!("{} bytes, expected {want}", bytes.len())));
        }
        Ok(bytes)
    }

    /// The 2-D int32 `qweight` (its dtype and rank checked) and its shape.
    fn qweight(&self) -> Result<Option<[usize; 2]>> {
        let Some((dt, sh, _)) = self.get("qweight") else {
            return Ok(None);
        };
        if dt != Dtype::I32 {
            return Err(self.tensor_err("qweight", format!("dtype {dt:?}, expected I32")));
        }
        match sh {
            &[a, b] if a > 0 && b > 0 => Ok(Some([a, b])),
            _ => Err(self.tensor_err(
                "qweight",
                format!("shape {sh:?}, expected two non-zero dimensions"),
            )),
        }
    }

    /// Float16 scales of the given shape, all finite.
    fn scales(&self, shape: [usize; 2]) -> Result<Vec<half::f16>> {
        let b = self.need("scales", Dtype::F16, &shape)?;
        let s: Vec<half::f16> = b
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]))
            .collect();
        if let Some(i) = s.iter().position(|v| !v.is_finite()) {
            return Err(self.tensor_err(
                "scales",
                format!(
                    "value {} at [{}, {}] is not finite",
                    s[i],
                    i / shape[1],
                    i % shape[1]
                ),
            ));
        }
        Ok(s)
    }

    /// A format-layer refusal about the module.
    fn format_err(&self, e: FormatError) -> IoError {
        self.err(format!("{}: {e}", self.module))
    }
}

/// `e` with `hint` added when it is a shape mismatch (what a wrong `group_size` gives).
fn shape_hint(e: IoError, hint: &str) -> IoError {
    match e {
        IoError::Malformed { path, what } if what.contains(": shape ") => IoError::Malformed {
            path,
            what: format!("{what} ({hint})"),
        },
        e => e,
    }
}

fn i32s(b: &[u8]) -> Vec<i32> {
    b.chunks_exact(4)
        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// A positive integer of the config under the first of `keys` present, or `default`.
fn cfg_uint(m: &Module, qcfg: &Value, keys: &[&str], default: Option<u64>) -> Result<u64> {
    match keys.iter().find_map(|k| qcfg.get(*k).map(|v| (*k, v))) {
        Some((k, v)) => v.as_u64().ok_or_else(|| {
            m.err(format!(
                "quantization_config: {k} is {v}, expected a non-negative integer"
            ))
        }),
        None => {
            default.ok_or_else(|| m.err(format!("quantization_config: {} is missing", keys[0])))
        }
    }
}

/// The group size of the config under the first of `keys` present (default 128): `None` for
/// `-1` (one group per row).
fn cfg_group(m: &Module, qcfg: &Value, keys: &[&str]) -> Result<Option<usize>> {
    match keys.iter().find_map(|k| qcfg.get(*k).map(|v| (*k, v))) {
        None => Ok(Some(128)),
        Some((k, v)) => match v.as_i64() {
            Some(-1) => Ok(None),
            Some(g) if g > 0 => Ok(Some(g as usize)),
            _ => Err(m.err(format!(
                "quantization_config: {k} is {v}, expected a positive integer or -1"
            ))),
        },
    }
}

/// The GPTQ weight of module `module` (`<module>.qweight` and kin) of a checkpoint whose
/// `quantization_config` is `qcfg` (`quant_method: "gptq"`); `None` when the module has no
/// `qweight` (stored dense).
///
/// Accepts `checkpoint_format` `gptq` (v1, the default) and `gptq_v2`, symmetric or not, bits
/// 2, 3, 4 and 8, any `g_idx` (missing: `c / G`). Refuses, naming the tensor: wrong dtypes,
/// shapes that disagree with each other or with the config, `g_idx` entries outside the
/// groups, non-finite scales, and configs it does not read (other bits, Marlin format).
pub fn read_gptq(
    st: &SafetensorsModel,
    dir: &Path,
    qcfg: &Value,
    module: &str,
) -> Result<Option<Quantized>> {
    let m = Module { st, dir, module };
    let Some([wr, out]) = m.qweight()? else {
        return Ok(None);
    };
    let bits = cfg_uint(&m, qcfg, &["bits"], None)?;
    let bits = match u8::try_from(bits) {
        Ok(b) if GPTQ_BITS.contains(&b) => b,
        _ => {
            return Err(m.err(format!(
                "quantization_config: bits {bits} is not a GPTQ width shrink reads (2, 3, 4 or 8)"
            )))
        }
    };
    if qcfg.get("is_marlin_format").and_then(Value::as_bool) == Some(true) {
        return Err(m.err(
            "quantization_config: is_marlin_format is true; shrink reads the gptq and gptq_v2 \
             layouts, not Marlin's"
                .into(),
        ));
    }
    let format = match qcfg.get("checkpoint_format").or_else(|| qcfg.get("format")) {
        None | Some(Value::Null) => CheckpointFormat::Gptq,
        Some(v) => v
            .as_str()
            .and_then(CheckpointFormat::parse)
            .ok_or_else(|| {
                m.err(format!(
                    "quantization_config: checkpoint_format {v} is not one shrink reads (gptq or \
                 gptq_v2)"
                ))
            })?,
    };
    if (wr * 32) % bits as usize != 0 {
        return Err(m.tensor_err(
            "qweight",
            format!(
                "shape [{wr}, {out}]: {wr} int32 rows do not hold a whole number of {bits}-bit \
                 input columns"
            ),
        ));
    }
    let cols = wr * 32 / bits as usize;
    let rows = out;
    let group_size = cfg_group(&m, qcfg, &["group_size"])?.unwrap_or(cols);
    let ng = gptq::check_dims(bits, group_size, rows, cols).map_err(|e| m.format_err(e))?;
    let [qw, qz, sc] = gptq::shapes(bits, group_size, rows, cols);
    let qweight = i32s(m.need("qweight", Dtype::I32, &qw)?);
    let hint = format!("group_size {group_size} gives {ng} groups of the {cols} input columns");
    let qzeros = i32s(
        m.need("qzeros", Dtype::I32, &qz)
            .map_err(|e| shape_hint(e, &hint))?,
    );
    let scales = m.scales(sc).map_err(|e| shape_hint(e, &hint))?;
    let (g_idx, g_idx_bytes) = match m.get("g_idx") {
        None => ((0..cols).map(|c| (c / group_size) as i32).collect(), 0),
        Some(_) => {
            let b = m.need("g_idx", Dtype::I32, &[cols])?;
            let g = i32s(b);
            if let Some(c) = g.iter().position(|&v| v < 0 || v as usize >= ng) {
                return Err(m.tensor_err(
                    "g_idx",
                    format!(
                        "entry {c} is {}, not a group: there are {ng} (0 to {})",
                        g[c],
                        ng - 1
                    ),
                ));
            }
            (g, b.len())
        }
    };
    let stored_bytes = 4 * (qweight.len() + qzeros.len()) + 2 * scales.len() + g_idx_bytes;
    let packed = GptqPacked {
        qweight,
        qzeros,
        scales,
        g_idx,
    };
    let parts = GptqParts::unpack(&packed, bits, group_size, rows, cols, format)
        .map_err(|e| m.format_err(e))?;
    if let Some(t) = parts.to_int_tensor() {
        return Ok(Some(Quantized::Int(t)));
    }
    Ok(Some(match parts.to_act_order() {
        Some((t, perm)) => Quantized::ActOrder {
            t,
            perm,
            stored_bytes,
        },
        None => Quantized::Dense {
            values: parts.dequantize(),
            rows,
            cols,
            stored_bytes,
        },
    }))
}

/// The AWQ GEMM weight of module `module` of a checkpoint whose `quantization_config` is `qcfg`
/// (`quant_method: "awq"`); `None` when the module has no `qweight` (stored dense, e.g. in
/// `modules_to_not_convert`).
///
/// Accepts `version` `gemm` (any case; the default) with zero points, 4 bits, any group size
/// dividing the row (AutoAWQ's `q_group_size` / `w_bit` spellings too). Refuses, naming the
/// tensor: other versions, bits or `zero_point: false`, wrong dtypes, shapes that disagree with
/// each other or with the config, non-finite scales.
pub fn read_awq(
    st: &SafetensorsModel,
    dir: &Path,
    qcfg: &Value,
    module: &str,
) -> Result<Option<Quantized>> {
    let m = Module { st, dir, module };
    let Some([cols, words]) = m.qweight()? else {
        return Ok(None);
    };
    let bits = cfg_uint(&m, qcfg, &["bits", "w_bit"], Some(AWQ_BITS as u64))?;
    if bits != AWQ_BITS as u64 {
        return Err(m.err(format!(
            "quantization_config: bits {bits}: shrink reads AWQ's GEMM layout, which is 4-bit"
        )));
    }
    let version = match qcfg.get("version") {
        None | Some(Value::Null) => "gemm".to_string(),
        Some(v) => v.as_str().unwrap_or_default().to_ascii_lowercase(),
    };
    if version != "gemm" {
        return Err(m.err(format!(
            "quantization_config: AWQ version {} is not one shrink reads (gemm)",
            qcfg.get("version").unwrap_or(&Value::Null)
        )));
    }
    if qcfg.get("zero_point").and_then(Value::as_bool) == Some(false) {
        return Err(m.err(
            "quantization_config: zero_point is false; AWQ's GEMM layout stores zero points and \
             shrink reads only that"
                .into(),
        ));
    }
    let rows = words * 8;
    let group_size = cfg_group(&m, qcfg, &["group_size", "q_group_size"])?.unwrap_or(cols);
    let ng = awq::check_dims(group_size, rows, cols).map_err(|e| m.format_err(e))?;
    let [qw, qz, sc] = awq::shapes(group_size, rows, cols);
    let hint = format!("group_size {group_size} gives {ng} groups of the {cols} input columns");
    let packed = AwqPacked {
        qweight: i32s(m.need("qweight", Dtype::I32, &qw)?),
        qzeros: i32s(
            m.need("qzeros", Dtype::I32, &qz)
                .map_err(|e| shape_hint(e, &hint))?,
        ),
        scales: m.scales(sc).map_err(|e| shape_hint(e, &hint))?,
    };
    let parts = AwqParts::unpack(&packed, group_size, rows, cols).map_err(|e| m.format_err(e))?;
    Ok(Some(Quantized::Int(parts.to_int_tensor())))
}
