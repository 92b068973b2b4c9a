//! Sparse weights in compressed-tensors' `sparse-bitmask` and `sparse-24-bitmask` checkpoint
//! layouts (the packing is [`shrink_formats::sparse_layout`]): the tensors to write, the
//! `quantization_config` that announces them, and the reader that decodes them back to dense.
//!
//! A sparse module `<module>` (whose dense weight is `<module>.weight`) stores
//! `<module>.compressed`, `<module>.bitmask`, `<module>.shape` and, for `sparse-bitmask`,
//! `<module>.row_offsets` (compressed-tensors 0.9–0.14: `BaseSparseCompressor.compress` strips
//! `.weight` before `compress_weight`). Checkpoints of compressed-tensors 0.8 named them
//! `<module>.weight.compressed`, ...; the reader takes both.
//!
//! Sparsity is not a quantization: the reader returns the dense float32 weight in the layout
//! the dense checkpoint had (GPT-2's Conv1D weights stay `[in, out]`), through
//! [`crate::Checkpoint::read_f32`].

use safetensors::tensor::Dtype;
use serde_json::{json, Value};
use shrink_formats::float::{self, FloatType};
use shrink_formats::sparse_layout::{mask_row_bytes, SparseLayout, SparseTensor};
use shrink_formats::FormatError;

use crate::checkpoint::HfCheckpoint;
use crate::error::{IoError, Result};
use crate::quantized::StoredTensor;
use crate::safetensors::StTensorInfo;

/// The compressed-tensors version whose sparse layouts shrink writes (the last one with
/// sparse compressors).
pub const CT_SPARSE_VERSION: &str = "0.14.0";

/// The stored tensors of module `module` (the weight's name without `.weight`) holding the
/// row-major `[rows, cols]` weight `w`, stored as `dtype` in `layout`.
///
/// The weight is first rounded to `dtype`; an element is stored when it is not ±0 there.
/// A 2:4 layout refuses a weight with more than two non-zeros in a group of four columns, or
/// whose `cols` is not a multiple of 4 ([`FormatError::WithTensor`] names the module).
/// The bytes of the returned tensors are exactly what the layout stores ([`stored_bytes`]).
pub fn sparse_tensors(
    module: &str,
    w: &[f32],
    rows: usize,
    cols: usize,
    dtype: FloatType,
    layout: SparseLayout,
) -> std::result::Result<Vec<StoredTensor>, FormatError> {
    let with = |e: FormatError| FormatError::WithTensor {
        name: format!("{module}.weight"),
        source: Box::new(e),
    };
    if w.len() != rows * cols {
        return Err(with(FormatError::ShapeMismatch {
            format: layout.name(),
            rows,
            cols,
            expected: rows * cols,
            actual: w.len(),
        }));
    }
    let dense = float::encode(dtype, w);
    let t = SparseTensor::compress(layout, &dense, rows, cols, dtype.size()).map_err(with)?;
    let i64s = |v: &[i64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let shape_shape = match layout {
        SparseLayout::Bitmask => vec![2],
        SparseLayout::Sparse24Bitmask => vec![2, 1],
    };
    let compressed_shape = match layout {
        SparseLayout::Bitmask => vec![t.stored_elements()],
        SparseLayout::Sparse24Bitmask => vec![rows, cols / 2],
    };
    let mut out = vec![
        StoredTensor {
            name: format!("{module}.shape"),
            dtype: Dtype::I64,
            shape: shape_shape,
            bytes: i64s(&[rows as i64, cols as i64]),
        },
        StoredTensor {
            name: format!("{module}.compressed"),
            dtype: crate::safetensors_dtype(dtype),
            shape: compressed_shape,
            bytes: t.values,
        },
        StoredTensor {
            name: format!("{module}.bitmask"),
            dtype: Dtype::U8,
            shape: vec![rows, mask_row_bytes(cols)],
            bytes: t.bitmask,
        },
    ];
    if let Some(o) = &t.row_offsets {
        out.push(StoredTensor {
            name: format!("{module}.row_offsets"),
            dtype: Dtype::I64,
            shape: vec![rows],
            bytes: i64s(o),
        });
    }
    Ok(out)
}

/// Bytes stored by a set of tensors (values, masks, offsets and shapes, all counted).
pub fn stored_bytes(tensors: &[StoredTensor]) -> usize {
    tensors.iter().map(|t| t.bytes.len()).sum()
}

/// The `quantization_config` of config.json for a checkpoint whose `targets` (module names or
/// types, e.g. `["Linear"]`) are stored in `layout` and `ignore`d modules dense, as
/// compressed-tensors' `ModelCompressor.update_config` writes it for a sparse-only model.
/// `global_sparsity` is the fraction (0–1) of zero parameters in the whole model, what
/// llm-compressor's `SparsityConfigMetadata.infer_global_sparsity` records.
pub fn sparsity_config(
    layout: SparseLayout,
    global_sparsity: f64,
    targets: &[String],
    ignore: &[String],
) -> Value {
    json!({
        "quant_method": "compressed-tensors",
        "version": CT_SPARSE_VERSION,
        "sparsity_config": {
            "format": layout.name(),
            "global_sparsity": global_sparsity,
            "ignore": ignore,
            "registry_requires_subclass": false,
            "sparsity_structure": layout.structure(),
            "targets": targets,
        },
        "transform_config": {},
    })
}

/// The sparse layout a `quantization_config` announces, if any.
pub fn layout_of(qcfg: &Value) -> Option<SparseLayout> {
    if qcfg.get("quant_method").and_then(Value::as_str) != Some("compressed-tensors") {
        return None;
    }
    qcfg.pointer("/sparsity_config/format")
        .and_then(Value::as_str)
        .and_then(SparseLayout::parse)
}

/// The prefix under which the sparse parts of tensor `name` are stored (`<module>` for
/// `<module>.weight`, or `name` itself as compressed-tensors 0.8 wrote), if the checkpoint
/// announces a sparse layout and stores `<prefix>.compressed`.
pub fn sparse_prefix(h: &HfCheckpoint, name: &str) -> Option<String> {
    layout_of(h.quantization_config()?)?;
    let has = |p: &str| h.weights.tensors.contains_key(&format!("{p}.compressed"));
    match name.strip_suffix(".weight") {
        Some(m) if has(m) => Some(m.to_string()),
        _ if has(name) => Some(name.to_string()),
        _ => None,
    }
}

/// Parts of one sparse module, with errors naming the file and the tensor.
struct Parts<'a> {
    h: &'a HfCheckpoint,
    prefix: &'a str,
}

impl<'a> Parts<'a> {
    fn info(&self, part: &str) -> Option<&'a StTensorInfo> {
        let h: &'a HfCheckpoint = self.h;
        h.weights.tensors.get(&format!("{}.{part}", self.prefix))
    }

    fn err(&self, part: &str, what: String) -> IoError {
        let name = format!("{}.{part}", self.prefix);
        let path = self
            .info(part)
            .map_or(self.h.dir.as_path(), |t| self.h.weights.path_of(t));
        IoError::malformed(path, format!("{name}: {what}"))
    }

    /// Part `part`, which must be present with dtype `dtype` (any float when `None`).
    fn need(&self, part: &str, dtype: Option<Dtype>) -> Result<(&'a StTensorInfo, &'a [u8])> {
        let t = self.info(part).ok_or_else(|| {
            IoError::malformed(
                &self.h.dir,
                format!(
                    "{}.{part} is missing (the module has a {}.compressed)",
                    self.prefix, self.prefix
                ),
            )
        })?;
        if let Some(d) = dtype {
            if t.dtype != d {
                return Err(self.err(part, format!("dtype {:?}, expected {d:?}", t.dtype)));
            }
        }
        let bytes = self.h.weights.bytes(t);
        let want = t.shape.iter().product::<usize>() * t.dtype.bitsize() / 8;
        if bytes.len() != want {
            return Err(self.err(
                part,
                format!("{} bytes for shape {:?}", bytes.len(), t.shape),
            ));
        }
        Ok((t, bytes))
    }
}

fn i64s(b: &[u8]) -> Vec<i64> {
    b.chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect()
}

/// The dense float32 value and shape of tensor `name` when the checkpoint stores it in a sparse
/// layout; `None` when it is stored otherwise. Every inconsistency between the parts (bitmask
/// size, set bits against stored values, row offsets, 2:4 groups, shapes, dtypes) is an error
/// naming the file and the tensor.
pub fn read(h: &HfCheckpoint, name: &str) -> Result<Option<(Vec<f32>, Vec<usize>)>> {
    let Some(prefix) = sparse_prefix(h, name) else {
        return Ok(None);
    };
    let layout = h
        .quantization_config()
        .and_then(layout_of)
        .expect("sparse_prefix checked the layout");
    let p = Parts { h, prefix: &prefix };
    if p.info("weight_scale").is_some() {
        return Err(p.err(
            "weight_scale",
            format!(
                "{} stacked on a quantized layout is not supported by shrink (only sparse \
                 float weights)",
                layout.name()
            ),
        ));
    }
    let (_, shape_bytes) = p.need("shape", Some(Dtype::I64))?;
    let shape = i64s(shape_bytes);
    if shape.is_empty() || shape.iter().any(|&d| d <= 0) {
        return Err(p.err("shape", format!("{shape:?} is not a dense shape")));
    }
    let shape: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
    let cols = *shape.last().expect("non-empty");
    let rows: usize = shape[..shape.len() - 1].iter().product();
    let (ct, values) = p.need("compressed", None)?;
    let ty = match ct.dtype {
        Dtype::F32 => FloatType::F32,
        Dtype::F16 => FloatType::F16,
        Dtype::BF16 => FloatType::BF16,
        other => {
            return Err(p.err(
                "compressed",
                format!("dtype {other:?}: shrink reads sparse float weights only"),
            ))
        }
    };
    if layout == SparseLayout::Sparse24Bitmask && ct.shape != [rows, cols / 2] {
        return Err(p.err(
            "compressed",
            format!(
                "shape {:?}, expected [{rows}, {}] for a {shape:?} 2:4 weight",
                ct.shape,
                cols / 2
            ),
        ));
    }
    let (bt, bitmask) = p.need("bitmask", Some(Dtype::U8))?;
    let mut want_mask = shape.clone();
    *want_mask.last_mut().expect("non-empty") = mask_row_bytes(cols);
    if bt.shape != want_mask {
        return Err(p.err(
            "bitmask",
            format!(
                "shape {:?}, expected {want_mask:?} for a {shape:?} weight",
                bt.shape
            ),
        ));
    }
    let row_offsets = match layout {
        SparseLayout::Bitmask => Some(i64s(p.need("row_offsets", Some(Dtype::I64))?.1)),
        SparseLayout::Sparse24Bitmask => None,
    };
    let t = SparseTensor {
        layout,
        rows,
        cols,
        elem_size: ty.size(),
        values: values.to_vec(),
        bitmask: bitmask.to_vec(),
        row_offsets,
    };
    let dense = t.decompress().map_err(|e| IoError::Format {
        path: h.weights.path_of(ct).to_path_buf(),
        name: format!("{prefix}.compressed"),
        source: e,
    })?;
    let mut out = vec![0f32; rows * cols];
    float::decode(ty, &dense, &mut out);
    for part in layout.parts() {
        if let Some(t) = p.info(part) {
            h.weights.release(t);
        }
    }
    Ok(Some((out, shape)))
}
