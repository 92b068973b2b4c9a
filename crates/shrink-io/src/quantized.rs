//! Quantized weights stored in the ecosystem's safetensors layouts, so other tools read them:
//! compressed-tensors `pack-quantized` / `naive-quantized` for integers and bitsandbytes'
//! 4-bit layout for NF4/FP4. The exact layouts are in `docs/quant-layouts.md`.
//!
//! Writers turn a quantized tensor into the named tensors of its layout; the reader turns them
//! back into float32, bit-exactly what the quantizer's own `dequantize` gives.

use std::collections::HashMap;

use safetensors::tensor::Dtype;
use serde_json::{json, Value};
use shrink_formats::float::FloatType;
use shrink_formats::hqq_layout::{HqqSpec, HqqTensor};
use shrink_formats::int::{Granularity, IntSpec, IntTensor};
use shrink_formats::int8_rowwise::RowwiseInt8;
use shrink_formats::nf4::{Absmax, Fp4Kind, Nf4Spec, Nf4Tensor, DYNAMIC_MAP, NESTED_BLOCK};

use crate::error::{IoError, Result};
use crate::safetensors::SafetensorsModel;

/// `__metadata__` key listing weights stored [out, in] although their dense HF layout is
/// [in, out] (GPT-2's Conv1D), comma-separated.
pub const TRANSPOSED_KEY: &str = "shrink.transposed";

/// One tensor of a layout, ready to be written.
#[derive(Debug, Clone)]
pub struct StoredTensor {
    /// Full tensor name.
    pub name: String,
    /// Storage dtype.
    pub dtype: Dtype,
    /// Shape.
    pub shape: Vec<usize>,
    /// Little-endian bytes.
    pub bytes: Vec<u8>,
}

fn float_of(d: Dtype) -> Option<FloatType> {
    match d {
        Dtype::F32 => Some(FloatType::F32),
        Dtype::F16 => Some(FloatType::F16),
        Dtype::BF16 => Some(FloatType::BF16),
        _ => None,
    }
}

/// Whether compressed-tensors' dense `pack-quantized` layout holds this bit width exactly
/// (its packing of 3/5/6/7 bits changed in 2026; shrink uses `naive-quantized` for those).
pub fn ct_packs(bits: u8) -> bool {
    matches!(bits, 2 | 4 | 8)
}

/// Bytes of the compressed-tensors tensors [`ct_tensors`] writes for a `[rows, cols]` weight
/// quantized with `spec` (codes, scales, zero points, shape), without quantizing it.
pub fn ct_file_bytes(spec: &IntSpec, rows: usize, cols: usize) -> u64 {
    let bits = spec.bits as usize;
    let scales = spec.num_scales(rows, cols);
    let (scale_rows, scale_cols) = match spec.granularity {
        Granularity::Tensor => (1, 1),
        _ => (rows, spec.scales_per_row(cols)),
    };
    let packs = ct_packs(spec.bits);
    let codes = if packs {
        rows * (cols * bits).div_ceil(32) * 4 + 16
    } else {
        rows * cols
    };
    let zeros = match (spec.symmetric, packs) {
        (true, _) => 0,
        (false, true) => (scale_rows * bits).div_ceil(32) * 4 * scale_cols,
        (false, false) => scales,
    };
    (codes + scales * spec.scale_type.size() + zeros) as u64
}

/// The compressed-tensors tensors of module `module` (`<module>.weight_packed`, ...).
pub fn ct_tensors(module: &str, t: &IntTensor) -> Vec<StoredTensor> {
    let s = t.spec;
    let off = 1u8 << (s.bits - 1);
    let codes = t.codes();
    let groups = t.spec.scales_per_row(t.cols);
    let scale_shape = match s.granularity {
        Granularity::Tensor => vec![1],
        _ => vec![t.rows, groups],
    };
    let mut out = Vec::new();
    if ct_packs(s.bits) {
        // Unsigned codes u = q + 2^(bits-1), LSB-first in little-endian int32 words per row.
        let words = (t.cols * s.bits as usize).div_ceil(32);
        let mut bytes = Vec::with_capacity(t.rows * words * 4);
        for r in 0..t.rows {
            let mut row = vec![0u8; words * 4];
            let row_codes = &codes[r * t.cols..(r + 1) * t.cols];
            // shrink's codes already are compressed-tensors' unsigned values: symmetric codes
            // are q + 2^(bits-1); asymmetric (q_u, z_u) store as CT's signed pair offset by the
            // same 2^(bits-1), i.e. the same bytes.
            let packed = shrink_formats::int::pack(row_codes, s.bits);
            row[..packed.len()].copy_from_slice(&packed);
            bytes.extend_from_slice(&row);
        }
        out.push(StoredTensor {
            name: format!("{module}.weight_packed"),
            dtype: Dtype::I32,
            shape: vec![t.rows, words],
            bytes,
        });
    } else {
        let bytes: Vec<u8> = codes
            .iter()
            .map(|&c| (c as i16 - off as i16) as i8 as u8)
            .collect();
        out.push(StoredTensor {
            name: format!("{module}.weight"),
            dtype: Dtype::I8,
            shape: vec![t.rows, t.cols],
            bytes,
        });
    }
    out.push(StoredTensor {
        name: format!("{module}.weight_scale"),
        dtype: crate::safetensors_dtype(s.scale_type),
        shape: scale_shape.clone(),
        bytes: t.scales.clone(),
    });
    // Only the packed format records the dense shape (an unpacked `weight` carries its own;
    // compressed-tensors' naive format has no `weight_shape`).
    if ct_packs(s.bits) {
        out.push(StoredTensor {
            name: format!("{module}.weight_shape"),
            dtype: Dtype::I64,
            shape: vec![2],
            bytes: [t.rows as i64, t.cols as i64]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        });
    }
    if let Some(z) = &t.zeros {
        if ct_packs(s.bits) {
            // Zero points u = zp + 2^(bits-1) (= shrink's unsigned zero), packed along rows.
            let (n_rows, n_cols) = (scale_shape[0], *scale_shape.get(1).unwrap_or(&1));
            let words = (n_rows * s.bits as usize).div_ceil(32);
            let mut w = vec![0u32; words * n_cols];
            for g in 0..n_cols {
                let col: Vec<u8> = (0..n_rows).map(|r| z[r * n_cols + g]).collect();
                let p = shrink_formats::int::pack(&col, s.bits);
                let mut padded = vec![0u8; words * 4];
                padded[..p.len()].copy_from_slice(&p);
                for (wi, chunk) in padded.chunks_exact(4).enumerate() {
                    w[wi * n_cols + g] = u32::from_le_bytes(chunk.try_into().unwrap());
                }
            }
            out.push(StoredTensor {
                name: format!("{module}.weight_zero_point"),
                dtype: Dtype::I32,
                shape: vec![words, n_cols],
                bytes: w.iter().flat_map(|v| v.to_le_bytes()).collect(),
            });
        } else {
            out.push(StoredTensor {
                name: format!("{module}.weight_zero_point"),
                dtype: Dtype::I8,
                shape: scale_shape,
                bytes: z
                    .iter()
                    .map(|&v| (v as i16 - off as i16) as i8 as u8)
                    .collect(),
            });
        }
    }
    out
}

/// The `quantization_config` of a compressed-tensors checkpoint quantized with `spec`.
pub fn ct_config(spec: &IntSpec, ignore: &[String]) -> Value {
    let mut v = ct_config_groups(&[(*spec, vec!["Linear".to_string()])], ignore);
    v["shrink"]["scale_dtype"] = json!(spec.scale_type.name());
    v
}

/// compressed-tensors' format name and `weights` arguments of `spec`.
fn ct_scheme(spec: &IntSpec) -> (&'static str, Value) {
    let format = if ct_packs(spec.bits) {
        "pack-quantized"
    } else {
        "naive-quantized"
    };
    let (strategy, group) = match spec.granularity {
        Granularity::Tensor => ("tensor", Value::Null),
        Granularity::Channel => ("channel", Value::Null),
        Granularity::Group(g) => ("group", json!(g)),
    };
    let weights = json!({"dynamic": false, "group_size": group, "num_bits": spec.bits,
        "strategy": strategy, "symmetric": spec.symmetric, "type": "int"});
    (format, weights)
}

/// The `quantization_config` of a compressed-tensors checkpoint whose modules are quantized
/// with several specs: one config group per spec, targeting the modules listed with it (exact
/// module names, or a class such as `Linear`). The top-level `format` is the groups' common
/// one, else `mixed-precision`.
pub fn ct_config_groups(groups: &[(IntSpec, Vec<String>)], ignore: &[String]) -> Value {
    let mut cg = serde_json::Map::new();
    let mut formats = std::collections::BTreeSet::new();
    for (k, (spec, targets)) in groups.iter().enumerate() {
        let (format, weights) = ct_scheme(spec);
        formats.insert(format);
        cg.insert(
            format!("group_{k}"),
            json!({"format": format, "input_activations": null, "output_activations": null,
                   "targets": targets, "weights": weights}),
        );
    }
    let format = match formats.len() {
        1 => formats.into_iter().next().expect("one"),
        _ => "mixed-precision",
    };
    json!({
        "config_groups": cg,
        "format": format, "global_compression_ratio": null, "ignore": ignore, "kv_cache_scheme": null,
        "moe_sparsity_config": null, "quant_method": "compressed-tensors", "quantization_status": "compressed",
        "sparsity_config": {}, "transform_config": {}, "version": "0.20.0",
        "shrink": {"symmetric_qmax": "2^(bits-1)-1"},
    })
}

/// The compressed-tensors tensors of module `module` for int8 weights with dynamic int8
/// activations (`int-quantized`: an int8 `weight` and its `weight_scale`).
pub fn ct_w8a8_tensors(module: &str, t: &IntTensor) -> Vec<StoredTensor> {
    let shape_name = format!("{module}.weight_shape");
    let mut v: Vec<StoredTensor> = ct_tensors(module, t)
        .into_iter()
        .filter(|s| s.name != shape_name)
        .collect();
    if let Some(w) = v.iter_mut().find(|s| s.name.ends_with(".weight_packed")) {
        // 8-bit codes are written unpacked in this format.
        w.name = format!("{module}.weight");
        w.dtype = Dtype::I8;
        w.shape = vec![t.rows, t.cols];
        w.bytes = t
            .codes()
            .iter()
            .map(|&c| (c as i16 - 128) as i8 as u8)
            .collect();
    }
    v
}

/// The `quantization_config` of int8 weights (`spec`, symmetric) with int8 activations
/// quantized per token at run time (compressed-tensors' W8A8 dynamic scheme).
pub fn ct_w8a8_config(spec: &IntSpec, ignore: &[String]) -> Value {
    let mut v = ct_config(spec, ignore);
    v["format"] = json!("int-quantized");
    let g = &mut v["config_groups"]["group_0"];
    g["format"] = json!("int-quantized");
    g["input_activations"] = json!({"dynamic": true, "group_size": null, "num_bits": 8,
        "strategy": "token", "symmetric": true, "type": "int", "observer": null});
    v
}

/// The bitsandbytes 4-bit tensors of module `module` for a weight of `shape` whose dense
/// dtype is `dtype_name` (`float32`, `bfloat16`, `float16`).
pub fn bnb4_tensors(
    module: &str,
    t: &Nf4Tensor,
    shape: &[usize],
    dtype_name: &str,
) -> Vec<StoredTensor> {
    let p = format!("{module}.weight");
    let f32s = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let mut out = vec![StoredTensor {
        name: p.clone(),
        dtype: Dtype::U8,
        shape: vec![t.packed.len(), 1],
        bytes: t.packed.clone(),
    }];
    let mut state = serde_json::Map::new();
    state.insert("quant_type".into(), t.spec.kind.name().into());
    state.insert("blocksize".into(), t.spec.block_size.into());
    state.insert("dtype".into(), dtype_name.into());
    state.insert("shape".into(), json!(shape));
    match &t.absmax {
        Absmax::F32(a) => out.push(StoredTensor {
            name: format!("{p}.absmax"),
            dtype: Dtype::F32,
            shape: vec![a.len()],
            bytes: f32s(a),
        }),
        Absmax::Double {
            codes,
            nested_absmax,
            offset,
            nested_block,
        } => {
            out.push(StoredTensor {
                name: format!("{p}.absmax"),
                dtype: Dtype::U8,
                shape: vec![codes.len()],
                bytes: codes.clone(),
            });
            out.push(StoredTensor {
                name: format!("{p}.nested_absmax"),
                dtype: Dtype::F32,
                shape: vec![nested_absmax.len()],
                bytes: f32s(nested_absmax),
            });
            out.push(StoredTensor {
                name: format!("{p}.nested_quant_map"),
                dtype: Dtype::F32,
                shape: vec![256],
                bytes: f32s(&DYNAMIC_MAP),
            });
            state.insert("nested_blocksize".into(), (*nested_block).into());
            state.insert("nested_dtype".into(), "float32".into());
            state.insert("nested_offset".into(), json!(*offset as f64));
        }
    }
    out.push(StoredTensor {
        name: format!("{p}.quant_map"),
        dtype: Dtype::F32,
        shape: vec![16],
        bytes: f32s(t.spec.kind.code()),
    });
    // bitsandbytes writes json.dumps(dict): ", " and ": " separators, insertion order.
    let text = bnb_json(&state);
    out.push(StoredTensor {
        name: format!("{p}.quant_state.bitsandbytes__{}", t.spec.kind.name()),
        dtype: Dtype::U8,
        shape: vec![text.len()],
        bytes: text.into_bytes(),
    });
    out
}

/// `json.dumps` of a flat map with Python's default separators.
fn bnb_json(m: &serde_json::Map<String, Value>) -> String {
    let items: Vec<String> = m
        .iter()
        .map(|(k, v)| {
            let v = match v {
                Value::Array(a) => format!(
                    "[{}]",
                    a.iter()
                        .map(|x| x.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                other => other.to_string(),
            };
            format!("{}: {v}", Value::String(k.clone()))
        })
        .collect();
    format!("{{{}}}", items.join(", "))
}

/// The `quantization_config` of a bitsandbytes 4-bit checkpoint.
pub fn bnb4_config(spec: &Nf4Spec, compute_dtype: &str) -> Value {
    json!({
        "bnb_4bit_compute_dtype": compute_dtype, "bnb_4bit_quant_storage": "uint8",
        "bnb_4bit_quant_type": spec.kind.name(), "bnb_4bit_use_double_quant": spec.double_quant,
        "llm_int8_enable_fp32_cpu_offload": false, "llm_int8_has_fp16_weight": false,
        "llm_int8_skip_modules": null, "llm_int8_threshold": 6.0, "load_in_4bit": true,
        "load_in_8bit": false, "quant_method": "bitsandbytes",
    })
}

/// The bitsandbytes 8-bit (LLM.int8) tensors of module `module`: `weight` int8 [out, in],
/// `SCB` float32 [out], `weight_format` uint8 scalar 0 ("row").
pub fn bnb8_tensors(module: &str, t: &RowwiseInt8) -> Vec<StoredTensor> {
    vec![
        StoredTensor {
            name: format!("{module}.weight"),
            dtype: Dtype::I8,
            shape: vec![t.rows, t.cols],
            bytes: t.q.iter().map(|&v| v as u8).collect(),
        },
        StoredTensor {
            name: format!("{module}.SCB"),
            dtype: Dtype::F32,
            shape: vec![t.rows],
            bytes: t.scb.iter().flat_map(|v| v.to_le_bytes()).collect(),
        },
        StoredTensor {
            name: format!("{module}.weight_format"),
            dtype: Dtype::U8,
            shape: vec![],
            bytes: vec![0],
        },
    ]
}

/// The `quantization_config` of a bitsandbytes 8-bit (LLM.int8) checkpoint.
pub fn bnb8_config(threshold: f64) -> Value {
    json!({
        "bnb_4bit_compute_dtype": "float32", "bnb_4bit_quant_storage": "uint8", "bnb_4bit_quant_type": "fp4",
        "bnb_4bit_use_double_quant": false, "llm_int8_enable_fp32_cpu_offload": false,
        "llm_int8_has_fp16_weight": false, "llm_int8_skip_modules": null, "llm_int8_threshold": threshold,
        "load_in_4bit": false, "load_in_8bit": true, "quant_method": "bitsandbytes",
    })
}

/// `quant_method` of shrink's HQQ layout (not Hugging Face's `hqq`, whose serialisation is the
/// hqq library's own module state).
pub const HQQ_METHOD: &str = "shrink-hqq";

/// The stored tensors of module `module` holding the HQQ tensor `t`: `<module>.W_q` (U8 packed
/// codes: `[rows, ceil(cols·b/8)]` along axis 1, flat along axis 0), `<module>.scale` and
/// `<module>.zero` (F16, one per group).
pub fn hqq_tensors(module: &str, t: &HqqTensor) -> Vec<StoredTensor> {
    let g = t.spec.num_groups(t.rows, t.cols);
    let packed_shape = if t.spec.axis == 1 {
        vec![t.rows, t.packed.len() / t.rows.max(1)]
    } else {
        vec![t.packed.len()]
    };
    vec![
        StoredTensor {
            name: format!("{module}.W_q"),
            dtype: Dtype::U8,
            shape: packed_shape,
            bytes: t.packed.clone(),
        },
        StoredTensor {
            name: format!("{module}.scale"),
            dtype: Dtype::F16,
            shape: vec![g],
            bytes: t.scales.clone(),
        },
        StoredTensor {
            name: format!("{module}.zero"),
            dtype: Dtype::F16,
            shape: vec![g],
            bytes: t.zeros.clone(),
        },
        StoredTensor {
            name: format!("{module}.weight_shape"),
            dtype: Dtype::I64,
            shape: vec![2],
            bytes: [t.rows as i64, t.cols as i64]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        },
    ]
}

/// config.json's `quantization_config` for shrink's HQQ layout; `ignore` lists dense modules.
pub fn hqq_config(spec: &HqqSpec, ignore: &[String]) -> Value {
    json!({
        "quant_method": HQQ_METHOD, "nbits": spec.bits, "group_size": spec.group_size,
        "axis": spec.axis, "scale_dtype": "float16", "zero_dtype": "float16",
        "ignore": ignore,
    })
}

fn read_hqq(r: &Reader, qcfg: &Value, module: &str) -> Result<Option<Quantized>> {
    let Some((packed, pdt, _)) = r.raw(&format!("{module}.W_q")) else {
        return Ok(None);
    };
    let num = |k: &str| qcfg.get(k).and_then(Value::as_u64);
    let (Some(bits), Some(group_size), Some(axis)) = (num("nbits"), num("group_size"), num("axis"))
    else {
        return Err(
            r.err("quantization_config: shrink-hqq needs nbits, group_size and axis".into())
        );
    };
    let (sb, sdt, _) = r.need(&format!("{module}.scale"))?;
    let (zb, zdt, _) = r.need(&format!("{module}.zero"))?;
    let (shape, _, _) = r.need(&format!("{module}.weight_shape"))?;
    if pdt != Dtype::U8 || sdt != Dtype::F16 || zdt != Dtype::F16 || shape.len() != 16 {
        return Err(r.err(format!(
            "{module}: shrink-hqq stores W_q as U8, scale and zero as F16 and weight_shape as two I64"
        )));
    }
    let rows = i64::from_le_bytes(shape[..8].try_into().unwrap());
    let cols = i64::from_le_bytes(shape[8..].try_into().unwrap());
    if rows <= 0 || cols <= 0 {
        return Err(r.err(format!("{module}.weight_shape: [{rows}, {cols}]")));
    }
    let t = HqqTensor {
        spec: HqqSpec {
            bits: bits as u8,
            group_size: group_size as usize,
            axis: axis as u8,
        },
        rows: rows as usize,
        cols: cols as usize,
        packed: packed.to_vec(),
        scales: sb.to_vec(),
        zeros: zb.to_vec(),
    };
    t.check().map_err(|e| r.err(format!("{module}: {e}")))?;
    Ok(Some(Quantized::Hqq(t)))
}

/// A quantized weight found in a checkpoint, decoded back to its quantizer's tensor.
pub enum Quantized {
    /// bitsandbytes LLM.int8 row-wise int8, with the activation outlier threshold its config
    /// sets for inference (`llm_int8_threshold`; 0 = no outlier decomposition).
    Int8Row(RowwiseInt8, f32),
    /// compressed-tensors integers (weight-only: activations stay float).
    Int(IntTensor),
    /// compressed-tensors int8 weights whose activations are quantized to int8 per token at
    /// run time (`int-quantized`, dynamic `input_activations`).
    W8A8(IntTensor),
    /// bitsandbytes NF4/FP4, with the dense shape.
    Nf4(Nf4Tensor, Vec<usize>),
    /// HQQ codes with float zero points (shrink's `shrink-hqq` layout).
    Hqq(HqqTensor),
    /// GPTQ with act-order `g_idx`: the integer tensor `t` over the input columns reordered so
    /// each group's columns lie together — column `j` of `t` is column `perm[j]` of the weight.
    ActOrder {
        /// The weight's columns in group order, groups of the layout's size.
        t: IntTensor,
        /// Original column of each column of `t`.
        perm: Vec<u32>,
        /// Bytes of the stored (packed) form.
        stored_bytes: usize,
    },
    /// A layout shrink decodes to float32 when loading (GPTQ act-order groups of unequal
    /// sizes, HQQ along axis 0, ggml blocks): row-major `[rows, cols]` values and the bytes the
    /// file stores.
    Dense {
        /// The decoded weight, row-major.
        values: Vec<f32>,
        /// Output features.
        rows: usize,
        /// Input features.
        cols: usize,
        /// Bytes of the stored (packed) form.
        stored_bytes: usize,
    },
}

impl Quantized {
    /// Bytes the quantized values need (codes, scales, zero points, absmax state).
    pub fn stored_bytes(&self) -> usize {
        match self {
            Quantized::Int(t) | Quantized::W8A8(t) => t.stored_bytes(),
            Quantized::Int8Row(t, _) => t.stored_bytes(),
            Quantized::Nf4(t, _) => t.stored_bytes(),
            Quantized::Hqq(t) => t.stored_bytes(),
            Quantized::ActOrder { stored_bytes, .. } | Quantized::Dense { stored_bytes, .. } => {
                *stored_bytes
            }
        }
    }

    /// (rows, cols) = (out_features, in_features) of the weight.
    pub fn shape(&self) -> (usize, usize) {
        match self {
            Quantized::Int(t) | Quantized::W8A8(t) => (t.rows, t.cols),
            Quantized::Int8Row(t, _) => (t.rows, t.cols),
            Quantized::Nf4(_, s) => (s[0], s.get(1).copied().unwrap_or(1)),
            Quantized::Hqq(t) => (t.rows, t.cols),
            Quantized::ActOrder { t, .. } => (t.rows, t.cols),
            Quantized::Dense { rows, cols, .. } => (*rows, *cols),
        }
    }

    /// Float32 values (row-major) and shape [out, in].
    pub fn dequantize(&self) -> (Vec<f32>, Vec<usize>) {
        match self {
            Quantized::Int(t) | Quantized::W8A8(t) => (t.dequantize(), vec![t.rows, t.cols]),
            Quantized::Int8Row(t, _) => (t.dequantize(), vec![t.rows, t.cols]),
            Quantized::Nf4(t, s) => (t.dequantize(), s.clone()),
            Quantized::Hqq(t) => (t.dequantize(), vec![t.rows, t.cols]),
            Quantized::ActOrder { t, perm, .. } => {
                let v = t.dequantize();
                let mut out = vec![0f32; v.len()];
                for (row, src) in out.chunks_exact_mut(t.cols).zip(v.chunks_exact(t.cols)) {
                    for (&p, &x) in perm.iter().zip(src) {
                        row[p as usize] = x;
                    }
                }
                (out, vec![t.rows, t.cols])
            }
            Quantized::Dense {
                values, rows, cols, ..
            } => (values.clone(), vec![*rows, *cols]),
        }
    }
}

/// Read helper over the safetensors of a model directory.
struct Reader<'a> {
    st: &'a SafetensorsModel,
    dir: &'a std::path::Path,
}

impl Reader<'_> {
    fn err(&self, what: String) -> IoError {
        IoError::malformed(self.dir, what)
    }
    fn raw(&self, name: &str) -> Option<(&[u8], Dtype, &[usize])> {
        self.st
            .tensors
            .get(name)
            .map(|t| (self.st.bytes(t), t.dtype, t.shape.as_slice()))
    }
    fn need(&self, name: &str) -> Result<(&[u8], Dtype, &[usize])> {
        self.raw(name)
            .ok_or_else(|| self.err(format!("quantized layout: tensor {name} is missing")))
    }
}

/// The quantized weight of HF weight `weight` (`<module>.weight`) if the checkpoint stores it
/// in a layout of its `quantization_config`; `None` when it is stored dense.
pub fn read(
    st: &SafetensorsModel,
    dir: &std::path::Path,
    qcfg: &Value,
    weight: &str,
) -> Result<Option<Quantized>> {
    let Some(module) = weight.strip_suffix(".weight") else {
        return Ok(None);
    };
    let r = Reader { st, dir };
    let q = match qcfg.get("quant_method").and_then(Value::as_str) {
        Some("compressed-tensors") => read_ct(&r, qcfg, module),
        Some("bitsandbytes") if qcfg.get("load_in_8bit").and_then(Value::as_bool) == Some(true) => {
            // transformers' default threshold when the config leaves it out.
            let threshold = qcfg
                .get("llm_int8_threshold")
                .and_then(Value::as_f64)
                .unwrap_or(6.0) as f32;
            read_bnb8(&r, module, threshold)
        }
        Some("bitsandbytes") => read_bnb4(&r, module),
        Some(HQQ_METHOD) => read_hqq(&r, qcfg, module),
        Some("gptq") => crate::hf_int::read_gptq(st, dir, qcfg, module),
        Some("awq") => crate::hf_int::read_awq(st, dir, qcfg, module),
        Some(other) => Err(r.err(format!(
            "quantization_config: quant_method {other:?} is not one shrink reads yet"
        ))),
        None => Err(r.err("quantization_config has no quant_method".into())),
    }?;
    if q.is_some() {
        // The pieces were copied out: their mapped pages need not stay resident.
        let prefix = format!("{module}.");
        for (_, t) in st.tensors.iter().filter(|(n, _)| n.starts_with(&prefix)) {
            st.release(t);
        }
    }
    Ok(q)
}

/// A compressed-tensors module (`int-quantized`, `pack-quantized`, `naive-quantized`), if
/// `module` has a `weight_scale`.
fn read_ct(r: &Reader, qcfg: &Value, module: &str) -> Result<Option<Quantized>> {
    let Some((scale_bytes, scale_dtype, _)) = r.raw(&format!("{module}.weight_scale")) else {
        return Ok(None);
    };
    let (spec, dynamic_int8) = ct_spec(r, qcfg, module, scale_dtype)?;
    let (rows, cols) = ct_shape(r, module, spec.bits)?;
    // Every size below (codes, words, scales) is at most 8 bytes an element: bound that once
    // against a lying shape.
    if rows
        .checked_mul(cols)
        .and_then(|n| n.checked_mul(8))
        .is_none()
    {
        return Err(r.err(format!(
            "{module}.weight_shape: [{rows}, {cols}] is too large to be a weight"
        )));
    }
    spec.validate(rows, cols)
        .map_err(|e| r.err(format!("{module}: {e}")))?;
    let codes = ct_codes(r, module, spec.bits, rows, cols)?;
    let n_scales = spec.num_scales(rows, cols);
    if scale_bytes.len() != n_scales * spec.scale_type.size() {
        return Err(r.err(format!(
            "{module}.weight_scale: {} bytes, expected {}",
            scale_bytes.len(),
            n_scales * spec.scale_type.size()
        )));
    }
    let zeros = if spec.symmetric {
        None
    } else {
        Some(ct_zeros(r, module, &spec, rows, cols)?)
    };
    let mut packed = Vec::with_capacity(spec.row_bytes(cols) * rows);
    for row in codes.chunks_exact(cols) {
        packed.extend(shrink_formats::int::pack(row, spec.bits));
    }
    let t = IntTensor {
        spec,
        rows,
        cols,
        packed,
        scales: scale_bytes.to_vec(),
        zeros,
    };
    t.check().map_err(|e| r.err(format!("{module}: {e}")))?;
    Ok(Some(if dynamic_int8 {
        Quantized::W8A8(t)
    } else {
        Quantized::Int(t)
    }))
}

/// The config group of `module`: the one whose `targets` name it, else the only group, else
/// the one targeting its class (`Embedding` for a token table, `Linear` otherwise).
fn ct_group_of<'a>(qcfg: &'a Value, module: &str) -> Option<&'a Value> {
    let groups = qcfg.get("config_groups").and_then(Value::as_object)?;
    let targets = |g: &Value, t: &str| {
        g.get("targets")
            .and_then(Value::as_array)
            .is_some_and(|ts| ts.iter().any(|x| x.as_str() == Some(t)))
    };
    let class = if module.contains("embed") || module.ends_with(".wte") {
        "Embedding"
    } else {
        "Linear"
    };
    groups
        .values()
        .find(|g| targets(g, module))
        .or_else(|| {
            (groups.len() == 1)
                .then(|| groups.values().next())
                .flatten()
        })
        .or_else(|| groups.values().find(|g| targets(g, class)))
}

/// [`ct_group_of`], or the error naming what is missing.
fn ct_group<'a>(r: &Reader, qcfg: &'a Value, module: &str) -> Result<&'a Value> {
    ct_group_of(qcfg, module).ok_or_else(|| {
        r.err(format!(
            "quantization_config: no config group targets {module} (by name or class)"
        ))
    })
}

/// The integer grid of a compressed-tensors config for `module` (its group's weights), and
/// whether its activations are dynamic int8 per token (W8A8).
fn ct_spec(r: &Reader, qcfg: &Value, module: &str, scale_dtype: Dtype) -> Result<(IntSpec, bool)> {
    let group = ct_group(r, qcfg, module)?;
    let w = group
        .get("weights")
        .filter(|w| w.is_object())
        .ok_or_else(|| {
            r.err(format!(
                "quantization_config: the config group of {module} has no weights"
            ))
        })?;
    let bits = w.get("num_bits").and_then(Value::as_u64).unwrap_or(0) as u8;
    let symmetric = w.get("symmetric").and_then(Value::as_bool).unwrap_or(true);
    let dynamic_int8 = match group.get("input_activations") {
        None | Some(Value::Null) => false,
        Some(a) => {
            let is = |k: &str, v: Value| a.get(k) == Some(&v);
            if is("num_bits", json!(8))
                && is("type", json!("int"))
                && is("dynamic", json!(true))
                && is("strategy", json!("token"))
                && is("symmetric", json!(true))
                && bits == 8
                && symmetric
                && w.get("strategy").and_then(Value::as_str) != Some("group")
            {
                true
            } else {
                return Err(r.err(format!(
                    "quantization_config: input_activations {a} are not supported (shrink runs \
                     dynamic symmetric int8 per token with symmetric int8 weights per channel or tensor)"
                )));
            }
        }
    };
    let granularity = match w.get("strategy").and_then(Value::as_str) {
        Some("tensor") => Granularity::Tensor,
        Some("channel") => Granularity::Channel,
        Some("group") => {
            Granularity::Group(w.get("group_size").and_then(Value::as_u64).unwrap_or(0) as usize)
        }
        s => {
            return Err(r.err(format!(
                "quantization_config: strategy {s:?} is not supported"
            )))
        }
    };
    let scale_type = float_of(scale_dtype).ok_or_else(|| {
        r.err(format!(
            "{module}.weight_scale: dtype {scale_dtype:?} is not a float"
        ))
    })?;
    let spec = IntSpec {
        bits,
        symmetric,
        granularity,
        scale_type,
    };
    Ok((spec, dynamic_int8))
}

/// The dense `(rows, cols)` of a compressed-tensors weight: packed layouts record it in
/// `weight_shape`; unpacked int8 `weight`s carry their own.
fn ct_shape(r: &Reader, module: &str, bits: u8) -> Result<(usize, usize)> {
    Ok(match r.raw(&format!("{module}.weight_shape")) {
        Some((b, _, _)) if b.len() == 16 => (
            i64::from_le_bytes(b[..8].try_into().unwrap()) as usize,
            i64::from_le_bytes(b[8..].try_into().unwrap()) as usize,
        ),
        Some(_) => return Err(r.err(format!("{module}.weight_shape: expected two int64"))),
        None => match r.raw(&format!("{module}.weight")) {
            Some((_, _, &[rows, cols])) if !ct_packs(bits) || bits == 8 => (rows, cols),
            _ => return Err(r.err(format!("{module}.weight_shape is missing"))),
        },
    })
}

/// The unsigned codes `[rows, cols]` of a compressed-tensors weight: unpacked from
/// `weight_packed`, or offset from the signed integers of `weight`.
fn ct_codes(r: &Reader, module: &str, bits: u8, rows: usize, cols: usize) -> Result<Vec<u8>> {
    let off = 1u8 << (bits - 1);
    let packed_name = format!("{module}.weight_packed");
    if r.raw(&packed_name).is_some() {
        let (b, _, shape) = r.need(&packed_name)?;
        let words = (cols * bits as usize).div_ceil(32);
        if shape != [rows, words] || b.len() != rows * words * 4 {
            return Err(r.err(format!(
                "{module}.weight_packed: shape {shape:?}, expected [{rows}, {words}]"
            )));
        }
        let mut c = Vec::with_capacity(rows * cols);
        for row in b.chunks_exact(words * 4) {
            c.extend(
                shrink_formats::int::unpack(row, bits, cols)
                    .map_err(|e| r.err(format!("{module}: {e}")))?,
            );
        }
        Ok(c)
    } else {
        let (b, _, shape) = r.need(&format!("{module}.weight"))?;
        if shape != [rows, cols] {
            return Err(r.err(format!(
                "{module}.weight: shape {shape:?}, expected [{rows}, {cols}]"
            )));
        }
        // Signed codes stored one per int8: each must lie on the config's grid.
        let (lo, hi) = (-(off as i16), off as i16 - 1);
        if let Some(i) = b
            .iter()
            .position(|&v| !(lo..=hi).contains(&(v as i8 as i16)))
        {
            return Err(r.err(format!(
                "{module}.weight: code {} at element {i} is outside the {bits}-bit range \
                 [{lo}, {hi}] its config states",
                b[i] as i8
            )));
        }
        Ok(b.iter()
            .map(|&v| (v as i8 as i16 + off as i16) as u8)
            .collect())
    }
}

/// The unsigned zero points of an asymmetric compressed-tensors weight: packed int32 along
/// the output rows, or signed int8.
fn ct_zeros(r: &Reader, module: &str, spec: &IntSpec, rows: usize, cols: usize) -> Result<Vec<u8>> {
    let bits = spec.bits;
    let n_scales = spec.num_scales(rows, cols);
    let (b, dt, shape) = r.need(&format!("{module}.weight_zero_point"))?;
    let (n_rows, per_row) = match spec.granularity {
        Granularity::Tensor => (1, 1),
        _ => (rows, spec.scales_per_row(cols)),
    };
    let expect = if dt == Dtype::I32 {
        (n_rows * bits as usize).div_ceil(32) * per_row * 4
    } else {
        n_scales
    };
    if b.len() != expect || shape.is_empty() {
        return Err(r.err(format!(
            "{module}.weight_zero_point: {} bytes, expected {expect}",
            b.len()
        )));
    }
    if dt != Dtype::I32 {
        let off = 1u8 << (bits - 1);
        return Ok(b
            .iter()
            .map(|&v| (v as i8 as i16 + off as i16) as u8)
            .collect());
    }
    let words = shape[0];
    let mut z = vec![0u8; n_scales];
    for g in 0..per_row {
        let col: Vec<u8> = (0..words)
            .flat_map(|wi| b[(wi * per_row + g) * 4..(wi * per_row + g) * 4 + 4].to_vec())
            .collect();
        let vals = shrink_formats::int::unpack(&col, bits, n_rows)
            .map_err(|e| r.err(format!("{module}: {e}")))?;
        for (row, v) in vals.into_iter().enumerate() {
            z[row * per_row + g] = v;
        }
    }
    Ok(z)
}

fn read_bnb8(r: &Reader, module: &str, threshold: f32) -> Result<Option<Quantized>> {
    let Some((scb, _, _)) = r.raw(&format!("{module}.SCB")) else {
        return Ok(None);
    };
    let (q, dt, shape) = r.need(&format!("{module}.weight"))?;
    if dt != Dtype::I8 || shape.len() != 2 || scb.len() != shape[0] * 4 {
        return Err(r.err(format!(
            "{module}: LLM.int8 weight must be I8 [out, in] with SCB float32 [out]"
        )));
    }
    let t = RowwiseInt8 {
        rows: shape[0],
        cols: shape[1],
        q: q.iter().map(|&b| b as i8).collect(),
        scb: scb
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect(),
    };
    Ok(Some(Quantized::Int8Row(t, threshold)))
}

fn read_bnb4(r: &Reader, module: &str) -> Result<Option<Quantized>> {
    let p = format!("{module}.weight");
    let state_name = ["nf4", "fp4"]
        .iter()
        .map(|k| format!("{p}.quant_state.bitsandbytes__{k}"))
        .find(|n| r.raw(n).is_some());
    let Some(state_name) = state_name else {
        return Ok(None);
    };
    let (sb, _, _) = r.need(&state_name)?;
    let state: HashMap<String, Value> =
        serde_json::from_slice(sb).map_err(|e| r.err(format!("{state_name}: {e}")))?;
    let kind = state
        .get("quant_type")
        .and_then(Value::as_str)
        .and_then(Fp4Kind::parse)
        .ok_or_else(|| r.err(format!("{state_name}: bad quant_type")))?;
    let block_size = state.get("blocksize").and_then(Value::as_u64).unwrap_or(0) as usize;
    let shape: Vec<usize> = state
        .get("shape")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_u64)
                .map(|v| v as usize)
                .collect()
        })
        .ok_or_else(|| r.err(format!("{state_name}: no shape")))?;
    let numel: usize = shape.iter().product();
    let (packed, _, _) = r.need(&p)?;
    let (ab, adt, _) = r.need(&format!("{p}.absmax"))?;
    let f32s = |b: &[u8]| {
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect::<Vec<f32>>()
    };
    let (absmax, double_quant) = if adt == Dtype::U8 {
        let (nb, _, _) = r.need(&format!("{p}.nested_absmax"))?;
        let offset = state
            .get("nested_offset")
            .and_then(Value::as_f64)
            .ok_or_else(|| r.err(format!("{state_name}: no nested_offset")))?
            as f32;
        let nested_block = state
            .get("nested_blocksize")
            .and_then(Value::as_u64)
            .unwrap_or(NESTED_BLOCK as u64) as usize;
        (
            Absmax::Double {
                codes: ab.to_vec(),
                nested_absmax: f32s(nb),
                offset,
                nested_block,
            },
            true,
        )
    } else {
        (Absmax::F32(f32s(ab)), false)
    };
    let t = Nf4Tensor {
        spec: Nf4Spec {
            kind,
            block_size,
            double_quant,
        },
        numel,
        packed: packed.to_vec(),
        absmax,
    };
    t.check().map_err(|e| r.err(format!("{module}: {e}")))?;
    Ok(Some(Quantized::Nf4(t, shape)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_module_takes_the_group_naming_it_else_its_class() {
        let spec = |b| IntSpec::asymmetric(b, Granularity::Group(32), FloatType::F16);
        let named = ct_config_groups(
            &[
                (spec(2), vec!["model.layers.0.mlp.up_proj".into()]),
                (spec(4), vec!["model.embed_tokens".into(), "Linear".into()]),
            ],
            &[],
        );
        let bits = |q: &Value, m: &str| ct_group_of(q, m).map(|g| g["weights"]["num_bits"].clone());
        assert_eq!(bits(&named, "model.layers.0.mlp.up_proj"), Some(json!(2)));
        assert_eq!(bits(&named, "model.embed_tokens"), Some(json!(4)));
        assert_eq!(bits(&named, "model.layers.1.mlp.up_proj"), Some(json!(4)));
        let classes = ct_config_groups(
            &[
                (spec(8), vec!["Embedding".into()]),
                (spec(4), vec!["Linear".into()]),
            ],
            &[],
        );
        assert_eq!(bits(&classes, "model.embed_tokens"), Some(json!(8)));
        assert_eq!(
            bits(&classes, "model.layers.0.self_attn.q_proj"),
            Some(json!(4))
        );
        let only_named = ct_config_groups(
            &[(spec(2), vec!["a".into()]), (spec(4), vec!["b".into()])],
            &[],
        );
        assert_eq!(bits(&only_named, "c"), None);
        // One group serves every module (llm-compressor's usual `targets: ["Linear"]`).
        assert_eq!(bits(&ct_config(&spec(4), &[]), "anything"), Some(json!(4)));
    }

    #[test]
    fn ct_file_bytes_counts_what_ct_tensors_writes() {
        for bits in shrink_formats::int::SUPPORTED_BITS {
            for symmetric in [false, true] {
                for granularity in [
                    Granularity::Tensor,
                    Granularity::Channel,
                    Granularity::Group(32),
                    Granularity::Group(64),
                ] {
                    let spec = IntSpec {
                        bits,
                        symmetric,
                        granularity,
                        scale_type: FloatType::F16,
                    };
                    let (rows, cols) = (37, 192);
                    let w: Vec<f32> = (0..rows * cols).map(|i| (i % 23) as f32 - 11.0).collect();
                    let t = shrink_formats::int::quantize(&w, rows, cols, spec).unwrap();
                    let written: usize = ct_tensors("m", &t).iter().map(|s| s.bytes.len()).sum();
                    assert_eq!(ct_file_bytes(&spec, rows, cols), written as u64, "{spec:?}");
                }
            }
        }
    }
}
