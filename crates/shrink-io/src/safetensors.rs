//! Memory-mapped safetensors files, single or sharded (`model.safetensors.index.json`).
//!
//! Validation is the safetensors crate's own (`SafeTensors::read_metadata`): header length,
//! JSON, dtypes, offsets in bounds, contiguous and covering the whole data section.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata, TensorInfo};
use safetensors::{SafeTensorError, SafeTensors};

use crate::error::{IoError, Result};

/// One tensor's description in a safetensors file.
#[derive(Debug, Clone)]
pub struct StTensorInfo {
    /// Tensor name as stored.
    pub name: String,
    /// Storage dtype.
    pub dtype: Dtype,
    /// Shape, outermost first.
    pub shape: Vec<usize>,
    /// Byte range in the file (absolute).
    pub start: usize,
    /// End of the byte range (absolute, exclusive).
    pub end: usize,
    /// Which shard holds it (index into [`SafetensorsModel::files`]).
    pub shard: usize,
}

/// One open, validated safetensors file.
pub struct SafetensorsFile {
    path: PathBuf,
    mmap: Mmap,
    /// `__metadata__` strings of the header.
    pub metadata: Option<HashMap<String, String>>,
}

impl SafetensorsFile {
    /// Open and validate a safetensors file.
    pub fn open(path: impl AsRef<Path>) -> Result<(Self, Vec<StTensorInfo>)> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| IoError::os(&path, e))?;
        // SAFETY: read-only map of an input shrink never writes.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| IoError::os(&path, e))?;
        let (header_len, meta): (usize, Metadata) =
            SafeTensors::read_metadata(&mmap).map_err(|source| match explain(&mmap, &source) {
                Some(what) => {
                    IoError::malformed(&path, format!("invalid safetensors file: {what}"))
                }
                None => IoError::Safetensors {
                    path: path.clone(),
                    source,
                },
            })?;
        let base = 8 + header_len;
        let mut infos = Vec::new();
        for (name, info) in meta.tensors() {
            let (s, e) = info.data_offsets;
            infos.push(StTensorInfo {
                name,
                dtype: info.dtype,
                shape: info.shape.clone(),
                start: base + s,
                end: base + e,
                shard: 0,
            });
        }
        infos.sort_by_key(|t| t.start);
        let metadata = meta.metadata().clone();
        Ok((
            SafetensorsFile {
                path,
                mmap,
                metadata,
            },
            infos,
        ))
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tell the kernel a tensor's pages are no longer needed (see [`crate::release_pages`]).
    pub fn release(&self, info: &StTensorInfo) {
        crate::release_pages(&self.mmap, info.start, info.end - info.start);
    }

    /// The bytes of a tensor described by an info from this file.
    pub fn bytes(&self, info: &StTensorInfo) -> &[u8] {
        &self.mmap[info.start..info.end]
    }
}

/// Say which bytes or which tensor are wrong where the safetensors crate's own diagnosis does
/// not (a truncated file reads "invalid header length" or "file not fully covered" there).
fn explain(buf: &[u8], err: &SafeTensorError) -> Option<String> {
    let n = u64::from_le_bytes(buf.get(..8)?.try_into().ok()?);
    let file_len = buf.len();
    match err {
        SafeTensorError::InvalidHeaderLength => Some(format!(
            "header length {n} (the first 8 bytes) runs past the end of the file ({file_len} \
             bytes): truncated or not a safetensors file"
        )),
        SafeTensorError::HeaderTooLarge => Some(format!(
            "header length {n} (the first 8 bytes) is over the 100 MB safetensors allows: \
             corrupt or not a safetensors file"
        )),
        SafeTensorError::MetadataIncompleteBuffer | SafeTensorError::TensorInvalidInfo => {
            let header: BTreeMap<String, serde_json::Value> =
                serde_json::from_slice(buf.get(8..(n as usize).checked_add(8)?)?).ok()?;
            let infos = header
                .into_iter()
                .filter(|(k, _)| k != "__metadata__")
                .filter_map(|(k, v)| Some((k, serde_json::from_value::<TensorInfo>(v).ok()?)));
            let data_len = file_len.saturating_sub(8 + n as usize);
            let mut last: Option<(String, usize)> = None;
            for (name, t) in infos {
                let (s, e) = t.data_offsets;
                let need = t
                    .shape
                    .iter()
                    .try_fold(t.dtype.bitsize(), |a, &d| a.checked_mul(d));
                if need.is_none_or(|b| b % 8 != 0 || e.checked_sub(s) != Some(b / 8)) {
                    return Some(format!(
                        "tensor {name}: data_offsets [{s}, {e}] do not fit dtype {:?} and shape {:?}",
                        t.dtype, t.shape
                    ));
                }
                if last.as_ref().is_none_or(|l| e > l.1) {
                    last = Some((name, e));
                }
            }
            let (name, end) = last?;
            Some(if end > data_len {
                format!(
                    "tensor {name} ends at byte {end} of the data section, which holds only \
                     {data_len} bytes: the file is truncated"
                )
            } else {
                format!(
                    "the tensors end at byte {end} of the data section, which holds {data_len} \
                     bytes: {} bytes of trailing garbage",
                    data_len - end
                )
            })
        }
        SafeTensorError::InvalidOffset(_) => {
            // The crate wants the tensors to tile the data section in offset order: say which
            // two overlap, or where the gap is.
            let header: BTreeMap<String, serde_json::Value> =
                serde_json::from_slice(buf.get(8..(n as usize).checked_add(8)?)?).ok()?;
            let mut ranges: Vec<(usize, usize, String)> = header
                .into_iter()
                .filter(|(k, _)| k != "__metadata__")
                .filter_map(|(k, v)| {
                    let t = serde_json::from_value::<TensorInfo>(v).ok()?;
                    Some((t.data_offsets.0, t.data_offsets.1, k))
                })
                .collect();
            ranges.sort();
            let mut end = 0;
            let mut prev = None::<&str>;
            for (s, e, name) in &ranges {
                if *s < end {
                    return Some(format!(
                        "tensors {} and {name} overlap (the first ends at byte {end} of the data \
                         section, the second starts at {s})",
                        prev.unwrap_or("?")
                    ));
                }
                if *s > end {
                    return Some(format!(
                        "bytes {end}..{s} of the data section belong to no tensor (a gap before \
                         {name})"
                    ));
                }
                end = *e;
                prev = Some(name);
            }
            None
        }
        _ => None,
    }
}

/// All safetensors files of a model directory, with a name → tensor map.
pub struct SafetensorsModel {
    /// The open shards.
    pub files: Vec<SafetensorsFile>,
    /// Every tensor, in name order.
    pub tensors: BTreeMap<String, StTensorInfo>,
}

impl SafetensorsModel {
    /// Open `dir/model.safetensors`, or the shards listed by `dir/model.safetensors.index.json`.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let shard_paths: Vec<PathBuf> = if single.exists() {
            vec![single]
        } else if index.exists() {
            let v = crate::read_json(&index)?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| IoError::malformed(&index, "no \"weight_map\" object"))?;
            let mut files: Vec<String> = Vec::new();
            for (name, f) in map {
                let f = f.as_str().ok_or_else(|| {
                    IoError::malformed(
                        &index,
                        format!("weight_map entry {name} is not a file name"),
                    )
                })?;
                if f.contains('/') || f.contains("..") {
                    return Err(IoError::malformed(
                        &index,
                        format!("weight_map names file {f:?} outside the directory"),
                    ));
                }
                if !files.iter().any(|x| x == f) {
                    files.push(f.to_string());
                }
            }
            files.sort();
            files.into_iter().map(|f| dir.join(f)).collect()
        } else {
            return Err(IoError::malformed(
                dir,
                "no model.safetensors or model.safetensors.index.json in this directory",
            ));
        };
        let mut files: Vec<SafetensorsFile> = Vec::new();
        let mut tensors: BTreeMap<String, StTensorInfo> = BTreeMap::new();
        for (i, p) in shard_paths.iter().enumerate() {
            let (f, infos) = SafetensorsFile::open(p)?;
            for mut t in infos {
                t.shard = i;
                if let Some(other) = tensors.get(&t.name) {
                    let other: &Path = files[other.shard].path();
                    return Err(IoError::malformed(
                        p,
                        format!("tensor {} also appears in {}", t.name, other.display()),
                    ));
                }
                tensors.insert(t.name.clone(), t);
            }
            files.push(f);
        }
        Ok(SafetensorsModel { files, tensors })
    }

    /// The bytes of a tensor.
    pub fn bytes(&self, info: &StTensorInfo) -> &[u8] {
        self.files[info.shard].bytes(info)
    }

    /// Drop a tensor's pages from the resident set once read.
    pub fn release(&self, info: &StTensorInfo) {
        self.files[info.shard].release(info)
    }

    /// The file holding a tensor.
    pub fn path_of(&self, info: &StTensorInfo) -> &Path {
        self.files[info.shard].path()
    }
}
