//! GGUF reader (versions 2 and 3), memory-mapped and validated before any tensor is touched.
//!
//! Layout (ggml's `docs/gguf.md`): magic `GGUF`, u32 version, u64 tensor count, u64 metadata
//! count, metadata key/values, tensor infos (name, dims, ggml type, offset), padding to
//! `general.alignment` (default 32), then tensor data. Every length read from the file is
//! checked against the bytes that remain, so a lying header yields an error, never a panic.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use shrink_formats::ggml::GgmlType;

use crate::error::{IoError, Result};

/// The four bytes every GGUF file starts with.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Alignment of tensor data when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Upper bound on tensor dimensions (ggml's GGML_MAX_DIMS).
const MAX_DIMS: u32 = 4;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    /// type 0
    U8(u8),
    /// type 1
    I8(i8),
    /// type 2
    U16(u16),
    /// type 3
    I16(i16),
    /// type 4
    U32(u32),
    /// type 5
    I32(i32),
    /// type 6
    F32(f32),
    /// type 7
    Bool(bool),
    /// type 8
    String(String),
    /// type 9 (elements all of one type)
    Array(Vec<GgufValue>),
    /// type 10
    U64(u64),
    /// type 11
    I64(i64),
    /// type 12
    F64(f64),
}

impl GgufValue {
    /// The value as an unsigned integer, if it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v as u64),
            GgufValue::U16(v) => Some(v as u64),
            GgufValue::U32(v) => Some(v as u64),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) if v >= 0 => Some(v as u64),
            GgufValue::I16(v) if v >= 0 => Some(v as u64),
            GgufValue::I32(v) if v >= 0 => Some(v as u64),
            GgufValue::I64(v) if v >= 0 => Some(v as u64),
            _ => None,
        }
    }

    /// The value as a float, if it is numeric.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v as f64),
            GgufValue::F64(v) => Some(v),
            GgufValue::I8(v) => Some(v as f64),
            GgufValue::I16(v) => Some(v as f64),
            GgufValue::I32(v) => Some(v as f64),
            GgufValue::I64(v) => Some(v as f64),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    /// The value as a string slice, if it is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as a bool, if it is one.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GgufValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The value as an array, if it is one.
    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }

    /// A short human rendering (arrays summarised by length).
    pub fn summary(&self) -> String {
        match self {
            GgufValue::String(s) if s.len() > 60 => {
                format!("{:?}… ({} bytes)", &s[..s.floor_char_boundary(60)], s.len())
            }
            GgufValue::String(s) => format!("{s:?}"),
            GgufValue::Array(a) => format!("[{} items]", a.len()),
            GgufValue::Bool(b) => b.to_string(),
            v => v.as_f64().map(|x| x.to_string()).unwrap_or_default(),
        }
    }
}

/// One tensor's description in a GGUF file.
#[derive(Debug, Clone)]
pub struct GgufTensorInfo {
    /// llama.cpp's tensor name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Dimensions in ggml order: `ne[0]` (the contiguous row length) first.
    pub ne: Vec<u64>,
    /// Storage type.
    pub ty: GgmlType,
    /// Offset of the data from the start of the data section.
    pub offset: u64,
    /// Bytes of stored data.
    pub bytes: u64,
}

impl GgufTensorInfo {
    /// Shape in row-major order (outermost first), as PyTorch would print it.
    pub fn shape(&self) -> Vec<usize> {
        self.ne.iter().rev().map(|&d| d as usize).collect()
    }

    /// Number of elements.
    pub fn elements(&self) -> u64 {
        self.ne.iter().product()
    }
}

/// An open, validated GGUF file.
pub struct GgufFile {
    path: PathBuf,
    mmap: Mmap,
    /// Format version (2 or 3).
    pub version: u32,
    /// Metadata key/values.
    pub metadata: BTreeMap<String, GgufValue>,
    /// Tensor descriptions in file order.
    pub tensors: Vec<GgufTensorInfo>,
    /// Absolute offset of the data section.
    pub data_offset: u64,
    /// Alignment of tensor data.
    pub alignment: u64,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// A bounds-checked cursor over the header bytes.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn err(&self, what: impl Into<String>) -> IoError {
        IoError::malformed(
            self.path,
            format!("GGUF: {} (at byte {})", what.into(), self.pos),
        )
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| {
                self.err(format!(
                    "truncated: {what} needs {n} bytes, {} remain",
                    self.buf.len() - self.pos
                ))
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1, "u8")?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2, "u16")?.try_into().unwrap()))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4, "u32")?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8, "u64")?.try_into().unwrap()))
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.u64()?;
        let remain = (self.buf.len() - self.pos) as u64;
        if len > remain {
            return Err(self.err(format!(
                "{what}: string length {len} exceeds the {remain} bytes left: truncated or corrupt"
            )));
        }
        let bytes = self.take(len as usize, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| self.err(format!("{what}: string is not UTF-8")))
    }

    fn value(&mut self, ty: u32, key: &str, depth: u32) -> Result<GgufValue> {
        Ok(match ty {
            0 => GgufValue::U8(self.u8()?),
            1 => GgufValue::I8(self.u8()? as i8),
            2 => GgufValue::U16(self.u16()?),
            3 => GgufValue::I16(self.u16()? as i16),
            4 => GgufValue::U32(self.u32()?),
            5 => GgufValue::I32(self.u32()? as i32),
            6 => GgufValue::F32(f32::from_bits(self.u32()?)),
            7 => match self.u8()? {
                0 => GgufValue::Bool(false),
                1 => GgufValue::Bool(true),
                b => return Err(self.err(format!("key {key}: bool byte {b} is neither 0 nor 1"))),
            },
            8 => GgufValue::String(self.string(key)?),
            9 => {
                if depth > 0 {
                    return Err(self.err(format!("key {key}: nested arrays are not supported")));
                }
                let elem_ty = self.u32()?;
                let len = self.u64()?;
                // Every element takes at least one byte: a longer array is a lie.
                let remain = (self.buf.len() - self.pos) as u64;
                if len > remain {
                    return Err(self.err(format!(
                        "key {key}: array of {len} items exceeds the {remain} bytes left: truncated or corrupt"
                    )));
                }
                // Capacity capped: a lying length must fail on the bytes, not allocate for them.
                let mut items = Vec::with_capacity(len.min(1 << 16) as usize);
                for _ in 0..len {
                    items.push(self.value(elem_ty, key, depth + 1)?);
                }
                GgufValue::Array(items)
            }
            10 => GgufValue::U64(self.u64()?),
            11 => GgufValue::I64(self.u64()? as i64),
            12 => GgufValue::F64(f64::from_bits(self.u64()?)),
            t => return Err(self.err(format!("key {key}: unknown metadata value type {t}"))),
        })
    }

    /// The header after the magic: version (2 or 3), tensor and metadata counts (bounded).
    fn header(&mut self) -> Result<(u32, u64, u64)> {
        let version = self.u32()?;
        if !(2..=3).contains(&version) {
            return Err(self.err(format!(
                "unsupported GGUF version {version} (shrink reads 2 and 3)"
            )));
        }
        let n_tensors = self.u64()?;
        let n_kv = self.u64()?;
        let remain = (self.buf.len() - self.pos) as u64;
        // A metadata pair takes at least 13 bytes, a tensor info at least 28.
        if n_kv.saturating_mul(13) > remain || n_tensors.saturating_mul(28) > remain {
            return Err(self.err(format!(
                "header claims {n_tensors} tensors and {n_kv} metadata keys, more than the {remain} bytes left can hold: truncated or corrupt"
            )));
        }
        Ok((version, n_tensors, n_kv))
    }

    /// The `n_kv` metadata key/values.
    fn metadata(&mut self, n_kv: u64) -> Result<BTreeMap<String, GgufValue>> {
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = self.string("metadata key")?;
            let ty = self.u32()?;
            let v = self.value(ty, &key, 0)?;
            metadata.insert(key, v);
        }
        Ok(metadata)
    }

    /// `general.alignment` (a power of two), or the default.
    fn alignment(&self, metadata: &BTreeMap<String, GgufValue>) -> Result<u64> {
        match metadata.get("general.alignment") {
            None => Ok(DEFAULT_ALIGNMENT),
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() => Ok(a),
                _ => Err(self.err(format!(
                    "general.alignment {} is not a power of two",
                    v.summary()
                ))),
            },
        }
    }

    /// The `n_tensors` tensor infos.
    fn tensor_infos(&mut self, n_tensors: u64, alignment: u64) -> Result<Vec<GgufTensorInfo>> {
        let mut tensors = Vec::with_capacity(n_tensors as usize);
        for _ in 0..n_tensors {
            tensors.push(self.tensor_info(alignment)?);
        }
        Ok(tensors)
    }

    /// One tensor info: name, dimensions, type and offset, with its size in bytes.
    fn tensor_info(&mut self, alignment: u64) -> Result<GgufTensorInfo> {
        let name = self.string("tensor name")?;
        let n_dims = self.u32()?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(self.err(format!(
                "tensor {name}: {n_dims} dimensions (1 to {MAX_DIMS} allowed)"
            )));
        }
        let mut ne = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            ne.push(self.u64()?);
        }
        let ty_id = self.u32()?;
        let ty = GgmlType::from_id(ty_id)
            .ok_or_else(|| self.err(format!("tensor {name}: unknown tensor type id {ty_id}")))?;
        let offset = self.u64()?;
        let elements = ne
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .ok_or_else(|| self.err(format!("tensor {name}: dimensions {ne:?} overflow")))?;
        if ne[0] % ty.block_size() as u64 != 0 {
            return Err(self.err(format!(
                "tensor {name}: row length {} is not a multiple of {}'s block size {}",
                ne[0],
                ty.name(),
                ty.block_size()
            )));
        }
        let bytes = (elements / ty.block_size() as u64)
            .checked_mul(ty.type_size() as u64)
            .ok_or_else(|| self.err(format!("tensor {name}: size overflows")))?;
        if offset % alignment != 0 {
            return Err(self.err(format!(
                "tensor {name}: offset {offset} is not aligned to {alignment}"
            )));
        }
        Ok(GgufTensorInfo {
            name,
            ne,
            ty,
            offset,
            bytes,
        })
    }
}

/// Memory-map `path` read-only.
fn map_file(path: &Path) -> Result<Mmap> {
    let file = File::open(path).map_err(|e| IoError::os(path, e))?;
    // SAFETY: the map is read-only; shrink never writes to its inputs. A concurrent writer
    // truncating the file is outside what any mmap-based reader can guard against.
    unsafe { Mmap::map(&file) }.map_err(|e| IoError::os(path, e))
}

/// Check that `bytes` start with the GGUF magic.
fn check_magic(bytes: &[u8], path: &Path) -> Result<()> {
    if bytes.len() < 4 || bytes[..4] != GGUF_MAGIC {
        let got = &bytes[..bytes.len().min(4)];
        return Err(IoError::malformed(
            path,
            format!("not a GGUF file: magic is {got:02x?}, expected \"GGUF\""),
        ));
    }
    Ok(())
}

/// Check that the data section starts inside the file when there are tensors to read.
fn check_data_start(
    path: &Path,
    data_offset: u64,
    file_len: u64,
    tensors: &[GgufTensorInfo],
) -> Result<()> {
    if data_offset > file_len && !tensors.is_empty() {
        return Err(IoError::malformed(
            path,
            format!(
                "GGUF: truncated: the data section would start at byte {data_offset}, past the end of the file ({file_len} bytes)"
            ),
        ));
    }
    Ok(())
}

/// Check that every tensor's bytes lie inside the data section and no two overlap.
fn check_tensor_bounds(path: &Path, data_len: u64, tensors: &[GgufTensorInfo]) -> Result<()> {
    // Sort a view by offset and walk it.
    let mut order: Vec<&GgufTensorInfo> = tensors.iter().collect();
    order.sort_by_key(|t| t.offset);
    let mut prev_end = 0u64;
    let mut prev_name = "";
    for t in &order {
        let end = t.offset.saturating_add(t.bytes);
        if end > data_len {
            return Err(IoError::malformed(
                path,
                format!(
                    "GGUF: tensor {} ({} bytes at data offset {}) runs past the end of the file (data section holds {} bytes): truncated or corrupt",
                    t.name, t.bytes, t.offset, data_len
                ),
            ));
        }
        if t.offset < prev_end {
            return Err(IoError::malformed(
                path,
                format!("GGUF: tensors {prev_name} and {} overlap", t.name),
            ));
        }
        prev_end = end;
        prev_name = &t.name;
    }
    Ok(())
}

/// Check that no tensor name appears twice.
fn check_unique_names(path: &Path, tensors: &[GgufTensorInfo]) -> Result<()> {
    let mut names = std::collections::HashSet::new();
    for t in tensors {
        if !names.insert(t.name.as_str()) {
            return Err(IoError::malformed(
                path,
                format!("GGUF: tensor {} appears twice", t.name),
            ));
        }
    }
    Ok(())
}

impl GgufFile {
    /// Open and validate `path`: header, metadata, tensor infos and that every tensor's bytes
    /// lie inside the file without overlapping another's.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let mmap = map_file(&path)?;
        check_magic(&mmap, &path)?;
        let mut c = Cursor {
            buf: &mmap,
            pos: GGUF_MAGIC.len(),
            path: &path,
        };
        let (version, n_tensors, n_kv) = c.header()?;
        let metadata = c.metadata(n_kv)?;
        let alignment = c.alignment(&metadata)?;
        let tensors = c.tensor_infos(n_tensors, alignment)?;
        let data_offset = (c.pos as u64).div_ceil(alignment) * alignment;
        check_data_start(&path, data_offset, mmap.len() as u64, &tensors)?;
        let data_len = (mmap.len() as u64).saturating_sub(data_offset);
        check_tensor_bounds(&path, data_len, &tensors)?;
        check_unique_names(&path, &tensors)?;
        Ok(GgufFile {
            path,
            mmap,
            version,
            metadata,
            tensors,
            data_offset,
            alignment,
        })
    }

    /// The file this was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Metadata value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }

    /// String metadata of `key`, if present and a string.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(GgufValue::as_str)
    }

    /// Numeric metadata of `key` as u64, or a clear error naming the key.
    pub fn require_u64(&self, key: &str) -> Result<u64> {
        self.get(key).and_then(GgufValue::as_u64).ok_or_else(|| {
            IoError::malformed(
                &self.path,
                format!("GGUF: metadata {key} missing or not an integer"),
            )
        })
    }

    /// Numeric metadata of `key` as f64, if present.
    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(GgufValue::as_f64)
    }

    /// The architecture named by `general.architecture`.
    pub fn architecture(&self) -> Result<&str> {
        self.get_str("general.architecture").ok_or_else(|| {
            IoError::malformed(&self.path, "GGUF: metadata general.architecture is missing")
        })
    }

    /// Description of the tensor called `name`.
    pub fn tensor(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The stored bytes of a tensor (validated to lie inside the file at open).
    pub fn tensor_bytes(&self, info: &GgufTensorInfo) -> &[u8] {
        let start = (self.data_offset + info.offset) as usize;
        &self.mmap[start..start + info.bytes as usize]
    }

    /// Tell the kernel this tensor's pages are no longer needed, so reading a model tensor by
    /// tensor keeps the resident set at one tensor rather than the whole file.
    pub fn release(&self, info: &GgufTensorInfo) {
        crate::release_pages(
            &self.mmap,
            (self.data_offset + info.offset) as usize,
            info.bytes as usize,
        );
    }

    /// Dequantize a tensor to float32 (row-major, shape [`GgufTensorInfo::shape`]).
    pub fn read_f32(&self, info: &GgufTensorInfo) -> Result<Vec<f32>> {
        let mut out = vec![0f32; info.elements() as usize];
        shrink_formats::ggml::dequantize(info.ty, self.tensor_bytes(info), &mut out).map_err(
            |source| IoError::Format {
                path: self.path.clone(),
                name: info.name.clone(),
                source,
            },
        )?;
        Ok(out)
    }
}
