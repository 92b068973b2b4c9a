//! A checkpoint on disk, whichever its format: a Hugging Face directory or a GGUF file.

use std::path::{Path, PathBuf};

use safetensors::tensor::Dtype;
use shrink_formats::float::{self, FloatType};
use shrink_formats::ggml::GgmlType;

use crate::error::{IoError, Result};
use crate::gguf::GgufFile;
use crate::safetensors::SafetensorsModel;

/// How a tensor is stored.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum StoredDtype {
    /// A plain float type (F32/F16/BF16).
    Float(FloatType),
    /// A GGML block type (GGUF files).
    Ggml(GgmlType),
    /// Anything else (integers of quantized checkpoints, fp8, ...), by name.
    Other(String),
}

impl StoredDtype {
    /// The name as `inspect` prints it (`F32`, `BF16`, `Q4_K`, `I32`, ...).
    pub fn name(&self) -> String {
        match self {
            StoredDtype::Float(f) => f.name().to_uppercase(),
            StoredDtype::Ggml(g) => g.name().to_string(),
            StoredDtype::Other(s) => s.clone(),
        }
    }

    fn from_safetensors(d: Dtype) -> Self {
        match d {
            Dtype::F32 => StoredDtype::Float(FloatType::F32),
            Dtype::F16 => StoredDtype::Float(FloatType::F16),
            Dtype::BF16 => StoredDtype::Float(FloatType::BF16),
            other => StoredDtype::Other(format!("{other:?}")),
        }
    }
}

/// One stored tensor: name as in the file, how stored, logical shape and exact bytes.
#[derive(Debug, Clone)]
pub struct TensorEntry {
    /// Name as stored in the file.
    pub name: String,
    /// Storage type.
    pub dtype: StoredDtype,
    /// Logical shape, outermost first.
    pub shape: Vec<usize>,
    /// Bytes the stored data occupies.
    pub bytes: u64,
}

impl TensorEntry {
    /// Number of elements.
    pub fn elements(&self) -> u64 {
        self.shape.iter().map(|&d| d as u64).product()
    }
}

/// A Hugging Face model directory: config.json, safetensors weights, optional tokenizer.json.
pub struct HfCheckpoint {
    /// The directory.
    pub dir: PathBuf,
    /// Parsed config.json.
    pub config: serde_json::Value,
    /// The weights.
    pub weights: SafetensorsModel,
    /// tokenizer.json, when present.
    pub tokenizer_json: Option<PathBuf>,
}

impl HfCheckpoint {
    /// The `quantization_config` of config.json, if any.
    pub fn quantization_config(&self) -> Option<&serde_json::Value> {
        self.config
            .get("quantization_config")
            .filter(|v| v.is_object())
    }

    /// The weight `name` decoded from its quantized layout, when it is stored quantized.
    ///
    /// A weight stored in a sparse layout is not quantized (`None`): [`Checkpoint::read_f32`]
    /// decodes it to dense.
    pub fn quantized(&self, name: &str) -> Result<Option<crate::quantized::Quantized>> {
        if crate::sparse::sparse_prefix(self, name).is_some() {
            return Ok(None);
        }
        match self.quantization_config() {
            Some(q) => crate::quantized::read(&self.weights, &self.dir, q, name),
            None => Ok(None),
        }
    }

    /// Whether a quantized weight was stored [out, in] for a dense layout of [in, out].
    fn transposed(&self, name: &str) -> bool {
        self.weights.files.iter().any(|f| {
            f.metadata
                .as_ref()
                .and_then(|m| m.get(crate::quantized::TRANSPOSED_KEY))
                .is_some_and(|list| list.split(',').any(|n| n == name))
        })
    }
}

/// A checkpoint shrink can read.
pub enum Checkpoint {
    /// A Hugging Face directory.
    Hf(HfCheckpoint),
    /// A GGUF file.
    Gguf(GgufFile),
}

impl Checkpoint {
    /// Open a model directory or a `.gguf` file, validating everything but the tensor values.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let meta = std::fs::metadata(path).map_err(|e| IoError::os(path, e))?;
        if meta.is_dir() {
            let cfg_path = path.join("config.json");
            if !cfg_path.exists() {
                return Err(IoError::malformed(
                    path,
                    "no config.json in this directory (a Hugging Face model directory needs one)",
                ));
            }
            let config = crate::read_json(&cfg_path)?;
            if !config.is_object() {
                return Err(IoError::malformed(
                    &cfg_path,
                    "config.json is not a JSON object",
                ));
            }
            let weights = SafetensorsModel::open_dir(path)?;
            let tok = path.join("tokenizer.json");
            Ok(Checkpoint::Hf(HfCheckpoint {
                dir: path.to_path_buf(),
                config,
                weights,
                tokenizer_json: tok.exists().then_some(tok),
            }))
        } else {
            let mut magic = [0u8; 4];
            let n = {
                use std::io::Read;
                let mut f = std::fs::File::open(path).map_err(|e| IoError::os(path, e))?;
                f.read(&mut magic).map_err(|e| IoError::os(path, e))?
            };
            let is_gguf_name = path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
            if (n == 4 && magic == crate::gguf::GGUF_MAGIC) || is_gguf_name {
                Ok(Checkpoint::Gguf(GgufFile::open(path)?))
            } else if path.extension().is_some_and(|e| e == "safetensors") {
                Err(IoError::malformed(
                    path,
                    "a lone .safetensors file is not a model: pass its directory (with config.json)",
                ))
            } else {
                Err(IoError::malformed(
                    path,
                    "not a model: expected a Hugging Face model directory or a .gguf file",
                ))
            }
        }
    }

    /// Where the checkpoint lives.
    pub fn path(&self) -> &Path {
        match self {
            Checkpoint::Hf(h) => &h.dir,
            Checkpoint::Gguf(g) => g.path(),
        }
    }

    /// Every stored tensor, in file-name order for HF and file order for GGUF.
    pub fn tensors(&self) -> Vec<TensorEntry> {
        match self {
            Checkpoint::Hf(h) => h
                .weights
                .tensors
                .values()
                .map(|t| TensorEntry {
                    name: t.name.clone(),
                    dtype: StoredDtype::from_safetensors(t.dtype),
                    shape: t.shape.clone(),
                    bytes: (t.end - t.start) as u64,
                })
                .collect(),
            Checkpoint::Gguf(g) => g
                .tensors
                .iter()
                .map(|t| TensorEntry {
                    name: t.name.clone(),
                    dtype: match t.ty {
                        GgmlType::F32 => StoredDtype::Float(FloatType::F32),
                        GgmlType::F16 => StoredDtype::Float(FloatType::F16),
                        GgmlType::BF16 => StoredDtype::Float(FloatType::BF16),
                        other => StoredDtype::Ggml(other),
                    },
                    shape: t.shape(),
                    bytes: t.bytes,
                })
                .collect(),
        }
    }

    /// Whether a tensor of that name exists (stored dense, or quantized in a known layout).
    pub fn has(&self, name: &str) -> bool {
        match self {
            Checkpoint::Hf(h) => {
                h.weights.tensors.contains_key(name)
                    || crate::sparse::sparse_prefix(h, name).is_some()
                    || (h.quantization_config().is_some()
                        && name.strip_suffix(".weight").is_some_and(|m| {
                            // The tensor that marks a module stored in a quantized layout.
                            ["weight_scale", "qweight", "W_q"]
                                .iter()
                                .any(|k| h.weights.tensors.contains_key(&format!("{m}.{k}")))
                        }))
            }
            Checkpoint::Gguf(g) => g.tensor(name).is_some(),
        }
    }

    /// Read a tensor by stored name as float32, with its shape (outermost first).
    pub fn read_f32(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let (v, shape) = self.read_f32_unchecked(name)?;
        if let Some(what) = non_finite(&v, &shape) {
            return Err(IoError::malformed(
                self.path(),
                format!("tensor {name} holds {what}; shrink refuses weights that are not finite"),
            ));
        }
        Ok((v, shape))
    }

    /// [`Self::read_f32`] without the check for NaN and infinities.
    fn read_f32_unchecked(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        match self {
            Checkpoint::Hf(h) => {
                if let Some(dense) = crate::sparse::read(h, name)? {
                    return Ok(dense);
                }
                if let Some(q) = h.quantized(name)? {
                    let (mut v, mut shape) = q.dequantize();
                    if h.transposed(name) {
                        v = shrink_formats::transpose::transpose(&v, shape[0], shape[1]);
                        shape.swap(0, 1);
                    }
                    return Ok((v, shape));
                }
                let t = h
                    .weights
                    .tensors
                    .get(name)
                    .ok_or_else(|| IoError::MissingTensor {
                        path: h.dir.clone(),
                        name: name.to_string(),
                    })?;
                let ty = match StoredDtype::from_safetensors(t.dtype) {
                    StoredDtype::Float(f) => f,
                    other => {
                        return Err(IoError::malformed(
                            h.weights.path_of(t),
                            format!(
                                "tensor {name}: dtype {} cannot be read as float",
                                other.name()
                            ),
                        ))
                    }
                };
                let n: usize = t.shape.iter().product();
                let mut out = vec![0f32; n];
                float::decode(ty, h.weights.bytes(t), &mut out);
                h.weights.release(t);
                Ok((out, t.shape.clone()))
            }
            Checkpoint::Gguf(g) => {
                let t = g.tensor(name).ok_or_else(|| IoError::MissingTensor {
                    path: g.path().to_path_buf(),
                    name: name.to_string(),
                })?;
                let out = g.read_f32(t)?;
                g.release(t);
                Ok((out, t.shape()))
            }
        }
    }
}

/// The first value of `v` (shaped `shape`) that is NaN or infinite, described with its place
/// (`NaN at [3, 17]`), or `None` when every value is finite. Scanned in blocks without an early
/// exit inside each, so that it vectorises: loading the float32 SmolLM2 GGUF and running one
/// token took 0.52–0.57 s with the check against 0.46–0.72 s without (`shrink bench f32.gguf -p
/// 0 -n 1 -r 1`, three alternations).
pub fn non_finite(v: &[f32], shape: &[usize]) -> Option<String> {
    const BLOCK: usize = 4096;
    let exp = 0x7f80_0000u32;
    let block = v
        .chunks(BLOCK)
        .position(|c| c.iter().fold(false, |a, x| a | (x.to_bits() & exp == exp)))?;
    let i = block * BLOCK + v[block * BLOCK..].iter().position(|x| !x.is_finite())?;
    Some(format!("{} at {:?}", v[i], place(i, shape)))
}

/// Element `i` of a row-major tensor of `shape`, as its index in each dimension.
fn place(i: usize, shape: &[usize]) -> Vec<usize> {
    let mut at = Vec::with_capacity(shape.len());
    let mut rest = i;
    for &d in shape.iter().rev() {
        let d = d.max(1);
        at.push(rest % d);
        rest /= d;
    }
    at.reverse();
    at
}

/// The first non-finite value among stored float bytes of `dtype` (float32, float16 or
/// bfloat16, little-endian), described with its place in `shape`; `None` when all are finite
/// or the dtype is not a float one. Writers check what they are about to write with it,
/// reading the bytes in place.
pub fn non_finite_stored(
    dtype: ::safetensors::tensor::Dtype,
    bytes: &[u8],
    shape: &[usize],
) -> Option<String> {
    use ::safetensors::tensor::Dtype;
    // All exponent bits set: an infinity when the mantissa is zero, else NaN.
    let (found, mantissa, limit) = match dtype {
        Dtype::F32 => (first_all_ones::<4>(bytes, 0x7f80_0000), 0x007f_ffff, ""),
        Dtype::F16 => (
            first_all_ones::<2>(bytes, 0x7c00),
            0x03ff,
            " (float16 holds magnitudes up to 65504)",
        ),
        Dtype::BF16 => (first_all_ones::<2>(bytes, 0x7f80), 0x007f, ""),
        _ => return None,
    };
    let (i, word) = found?;
    let at = place(i, shape);
    Some(if word & mantissa == 0 {
        format!("an infinity at {at:?}{limit}")
    } else {
        format!("NaN at {at:?}")
    })
}

/// The index and bits of the first little-endian word of `W` bytes whose `exp` bits are all
/// set, scanned in blocks without an early exit inside each so that it vectorises.
fn first_all_ones<const W: usize>(bytes: &[u8], exp: u32) -> Option<(usize, u32)> {
    const BLOCK: usize = 4096;
    let word = |c: &[u8]| {
        let mut b = [0u8; 4];
        b[..W].copy_from_slice(c);
        u32::from_le_bytes(b)
    };
    let block = bytes.chunks(BLOCK * W).position(|c| {
        c.chunks_exact(W)
            .fold(false, |a, w| a | (word(w) & exp == exp))
    })?;
    let rest = &bytes[block * BLOCK * W..];
    let i = rest.chunks_exact(W).position(|w| word(w) & exp == exp)?;
    Some((block * BLOCK + i, word(&rest[i * W..(i + 1) * W])))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::safetensors::tensor::Dtype;

    #[test]
    fn non_finite_stored_finds_the_first_in_every_float_format() {
        let f32s = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let f16s = |v: &[f32]| {
            v.iter()
                .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
                .collect::<Vec<u8>>()
        };
        let bf16s = |v: &[f32]| {
            v.iter()
                .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
                .collect::<Vec<u8>>()
        };
        // Past the first scan block (4096 words), so the block search is exercised.
        let mut v = vec![1.5f32; 5000];
        let shape = [50, 100];
        for (bytes, dtype) in [
            (f32s(&v), Dtype::F32),
            (f16s(&v), Dtype::F16),
            (bf16s(&v), Dtype::BF16),
        ] {
            assert_eq!(non_finite_stored(dtype, &bytes, &shape), None);
        }
        v[4321] = f32::NEG_INFINITY;
        v[4500] = f32::NAN;
        for (bytes, dtype) in [
            (f32s(&v), Dtype::F32),
            (f16s(&v), Dtype::F16),
            (bf16s(&v), Dtype::BF16),
        ] {
            let what = non_finite_stored(dtype, &bytes, &shape).unwrap();
            assert!(
                what.starts_with("an infinity at [43, 21]"),
                "{dtype:?}: {what}"
            );
        }
        v[4321] = 1.0;
        for (bytes, dtype) in [
            (f32s(&v), Dtype::F32),
            (f16s(&v), Dtype::F16),
            (bf16s(&v), Dtype::BF16),
        ] {
            assert_eq!(
                non_finite_stored(dtype, &bytes, &shape).as_deref(),
                Some("NaN at [45, 0]"),
                "{dtype:?}"
            );
        }
        // A float16 overflow says its limit; integers are not checked.
        assert!(non_finite_stored(Dtype::F16, &f16s(&[1e6]), &[1])
            .unwrap()
            .contains("65504"));
        assert_eq!(non_finite_stored(Dtype::U8, &[0xff; 8], &[8]), None);
    }
}
