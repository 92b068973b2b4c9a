//! Streaming GGUF v3 writer: metadata and tensor infos first, then each tensor's bytes as the
//! caller produces them, so a model is never held in memory whole.
//!
//! Layout (ggml's `docs/gguf.md`, as `gguf_write_to_file` and `llama-quantize` write it): magic
//! `GGUF`, u32 version 3, u64 tensor count, u64 metadata count, the key/values, the tensor infos
//! (name, u32 dims, u64 `ne[i]`, u32 ggml type, u64 offset into the data section), zero padding
//! to `general.alignment` (32 unless the metadata says otherwise), then the tensors, each padded
//! with zeros to the alignment as llama-quantize pads them.
//!
//! The file is written to a hidden temporary sibling of the target and renamed into place only
//! after every tensor arrived with its exact byte count and the finished file reopens through
//! [`GgufFile::open`]; on any failure (or a drop without [`GgufWriter::finish`]) the temporary
//! file is removed and nothing is left behind. The writer refuses to write over one of its inputs,
//! and over an existing file unless told to. Everything the reader would refuse (nested arrays,
//! unknown sizes, rows that are not whole blocks, duplicate names) is refused before a byte is
//! written, so the writer cannot emit a file the reader rejects.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use shrink_formats::ggml::GgmlType;

use crate::error::{IoError, Result};
use crate::gguf::{GgufValue, DEFAULT_ALIGNMENT, GGUF_MAGIC};

/// The GGUF version this writer produces.
pub const GGUF_VERSION: u32 = 3;
/// ggml's `GGML_MAX_NAME`: tensor names must be shorter than this (llama.cpp refuses longer).
pub const MAX_TENSOR_NAME: usize = 64;
/// ggml's `GGML_MAX_DIMS`.
const MAX_DIMS: usize = 4;

/// One tensor to be written: its name, dimensions and storage type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufTensorSpec {
    /// llama.cpp's tensor name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Dimensions in ggml order: `ne[0]` (the contiguous row length) first.
    pub ne: Vec<u64>,
    /// Storage type.
    pub ty: GgmlType,
}

impl GgufTensorSpec {
    /// A tensor of `ty` with ggml dimensions `ne` (row length first).
    pub fn new(name: impl Into<String>, ne: Vec<u64>, ty: GgmlType) -> Self {
        GgufTensorSpec {
            name: name.into(),
            ne,
            ty,
        }
    }

    /// Number of elements.
    pub fn elements(&self) -> u64 {
        self.ne.iter().product()
    }

    /// Bytes of stored data (`ggml_nbytes`), or `None` if the rows are not whole blocks or the
    /// size overflows.
    pub fn bytes(&self) -> Option<u64> {
        let block = self.ty.block_size() as u64;
        if self.ne.first().is_none_or(|&n0| n0 % block != 0) {
            return None;
        }
        let elements = self.ne.iter().try_fold(1u64, |a, &d| a.checked_mul(d))?;
        (elements / block).checked_mul(self.ty.type_size() as u64)
    }
}

/// Where and how to write.
#[derive(Debug, Clone, Default)]
pub struct GgufWriteOptions {
    /// Replace an existing file at the target (never one of `inputs`).
    pub overwrite: bool,
    /// Files the output must not be (the model being converted, an imatrix, ...).
    pub inputs: Vec<PathBuf>,
}

/// A GGUF file being written: header at [`create`](GgufWriter::create), then tensors in order
/// with [`write_tensor`](GgufWriter::write_tensor), then [`finish`](GgufWriter::finish).
///
/// Dropping it unfinished removes the temporary file.
pub struct GgufWriter {
    tmp: crate::output::Partial,
    out: Option<BufWriter<File>>,
    tensors: Vec<GgufTensorSpec>,
    sizes: Vec<u64>,
    alignment: u64,
    next: usize,
    written: u64,
}

impl std::fmt::Debug for GgufWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufWriter")
            .field("target", &self.tmp.target())
            .field("tensors", &self.tensors.len())
            .field("next", &self.next)
            .finish()
    }
}

/// The alignment the metadata asks for, validated as the reader validates it.
fn alignment_of(path: &Path, metadata: &[(String, GgufValue)]) -> Result<u64> {
    match metadata.iter().find(|(k, _)| k == "general.alignment") {
        None => Ok(DEFAULT_ALIGNMENT),
        Some((_, v)) => match (v, v.as_u64()) {
            (GgufValue::U32(_), Some(a)) if a > 0 && a.is_power_of_two() => Ok(a),
            _ => Err(IoError::malformed(
                path,
                format!(
                    "GGUF writer: general.alignment must be a u32 power of two, got {}",
                    v.summary()
                ),
            )),
        },
    }
}

/// GGUF value type id of a value (ggml's `enum gguf_type`).
fn type_id(v: &GgufValue) -> u32 {
    match v {
        GgufValue::U8(_) => 0,
        GgufValue::I8(_) => 1,
        GgufValue::U16(_) => 2,
        GgufValue::I16(_) => 3,
        GgufValue::U32(_) => 4,
        GgufValue::I32(_) => 5,
        GgufValue::F32(_) => 6,
        GgufValue::Bool(_) => 7,
        GgufValue::String(_) => 8,
        GgufValue::Array(_) => 9,
        GgufValue::U64(_) => 10,
        GgufValue::I64(_) => 11,
        GgufValue::F64(_) => 12,
    }
}

fn put_string(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

/// Encode one value's payload (without its type id); arrays must be flat and of one type.
fn put_value(buf: &mut Vec<u8>, key: &str, v: &GgufValue, path: &Path) -> Result<()> {
    match v {
        GgufValue::U8(x) => buf.push(*x),
        GgufValue::I8(x) => buf.push(*x as u8),
        GgufValue::U16(x) => buf.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I16(x) => buf.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F32(x) => buf.extend_from_slice(&x.to_bits().to_le_bytes()),
        GgufValue::Bool(x) => buf.push(*x as u8),
        GgufValue::String(s) => put_string(buf, s),
        GgufValue::U64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F64(x) => buf.extend_from_slice(&x.to_bits().to_le_bytes()),
        GgufValue::Array(items) => {
            // An empty array has no element to name its type: write it as an array of strings,
            // the type of every list key llama.cpp reads that can be empty (e.g. a tokenizer
            // without merges must still carry `tokenizer.ggml.merges`).
            let elem = items.first().map_or(8, type_id);
            if elem == 9 {
                return Err(IoError::malformed(
                    path,
                    format!("GGUF writer: key {key}: nested arrays are not supported"),
                ));
            }
            if let Some(bad) = items.iter().find(|x| type_id(x) != elem) {
                return Err(IoError::malformed(
                    path,
                    format!(
                        "GGUF writer: key {key}: array mixes value types ({} after type {elem})",
                        bad.summary()
                    ),
                ));
            }
            buf.extend_from_slice(&elem.to_le_bytes());
            buf.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for x in items {
                put_value(buf, key, x, path)?;
            }
        }
    }
    Ok(())
}

/// The header bytes (up to, not including, the padding before the data) and each tensor's
/// data size, after validating everything the reader validates.
fn encode_header(
    path: &Path,
    metadata: &[(String, GgufValue)],
    tensors: &[GgufTensorSpec],
    alignment: u64,
) -> Result<(Vec<u8>, Vec<u64>)> {
    let bad = |what: String| IoError::malformed(path, format!("GGUF writer: {what}"));
    let mut buf = Vec::with_capacity(1 << 16);
    buf.extend_from_slice(&GGUF_MAGIC);
    buf.extend_from_slice(&GGUF_VERSION.to_le_bytes());
    buf.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    buf.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    let mut keys = std::collections::HashSet::new();
    for (k, v) in metadata {
        if !keys.insert(k.as_str()) {
            return Err(bad(format!("metadata key {k} appears twice")));
        }
        put_string(&mut buf, k);
        buf.extend_from_slice(&type_id(v).to_le_bytes());
        put_value(&mut buf, k, v, path)?;
    }
    let mut names = std::collections::HashSet::new();
    let mut sizes = Vec::with_capacity(tensors.len());
    let mut offset = 0u64;
    for t in tensors {
        if !names.insert(t.name.as_str()) {
            return Err(bad(format!("tensor {} appears twice", t.name)));
        }
        if t.name.len() >= MAX_TENSOR_NAME {
            return Err(bad(format!(
                "tensor name {} is {} bytes; ggml allows at most {}",
                t.name,
                t.name.len(),
                MAX_TENSOR_NAME - 1
            )));
        }
        if t.ne.is_empty() || t.ne.len() > MAX_DIMS {
            return Err(bad(format!(
                "tensor {}: {} dimensions (1 to {MAX_DIMS} allowed)",
                t.name,
                t.ne.len()
            )));
        }
        let size = t.bytes().ok_or_else(|| {
            bad(format!(
                "tensor {}: dimensions {:?} are not whole {} blocks of {} or overflow",
                t.name,
                t.ne,
                t.ty.name(),
                t.ty.block_size()
            ))
        })?;
        put_string(&mut buf, &t.name);
        buf.extend_from_slice(&(t.ne.len() as u32).to_le_bytes());
        for d in &t.ne {
            buf.extend_from_slice(&d.to_le_bytes());
        }
        buf.extend_from_slice(&t.ty.id().to_le_bytes());
        buf.extend_from_slice(&offset.to_le_bytes());
        offset = size
            .checked_next_multiple_of(alignment)
            .and_then(|s| offset.checked_add(s))
            .ok_or_else(|| bad(format!("tensor {}: data offsets overflow", t.name)))?;
        sizes.push(size);
    }
    Ok((buf, sizes))
}

impl GgufWriter {
    /// Start writing `target` with `metadata` (in this order) and `tensors` (whose bytes must
    /// then be given in this order). Checks the target (not an input; absent unless
    /// `overwrite`; parent directory exists) and the header, then writes the header to a
    /// temporary file in the target's directory.
    pub fn create(
        target: impl AsRef<Path>,
        metadata: &[(String, GgufValue)],
        tensors: Vec<GgufTensorSpec>,
        opts: &GgufWriteOptions,
    ) -> Result<Self> {
        let target = target.as_ref().to_path_buf();
        // Checked first, so that `-o` naming the input says so rather than "already exists";
        // also an output inside an input directory, whatever `overwrite` says.
        let inputs: Vec<&Path> = opts.inputs.iter().map(|p| p.as_path()).collect();
        crate::output::refuse_inputs(&target, &inputs)?;
        if target.is_dir() {
            return Err(IoError::malformed(
                &target,
                "output is a directory; a GGUF output is one file",
            ));
        }
        if target.exists() && !opts.overwrite {
            return Err(IoError::malformed(
                &target,
                "output already exists; shrink does not overwrite it (remove it or choose another -o)",
            ));
        }
        let alignment = alignment_of(&target, metadata)?;
        let (header, sizes) = encode_header(&target, metadata, &tensors, alignment)?;
        let tmp = crate::output::Partial::new(&target)?;
        let file = File::create(tmp.path()).map_err(|e| IoError::os(tmp.path(), e))?;
        let mut w = GgufWriter {
            tmp,
            out: Some(BufWriter::with_capacity(1 << 20, file)),
            tensors,
            sizes,
            alignment,
            next: 0,
            written: 0,
        };
        w.put(&header)?;
        w.pad()?;
        Ok(w)
    }

    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        let out = self.out.as_mut().expect("open until finish");
        out.write_all(bytes)
            .map_err(|e| IoError::os(self.tmp.path(), e))?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Zeros up to the next multiple of the alignment.
    fn pad(&mut self) -> Result<()> {
        let n = self.written.next_multiple_of(self.alignment) - self.written;
        self.put(&vec![0u8; n as usize])
    }

    /// The tensors, in the order their bytes are expected.
    pub fn tensors(&self) -> &[GgufTensorSpec] {
        &self.tensors
    }

    /// Index of the tensor whose bytes come next.
    pub fn next_index(&self) -> usize {
        self.next
    }

    /// The path the file will have once finished.
    pub fn target(&self) -> &Path {
        self.tmp.target()
    }

    /// Write the next tensor's bytes (exactly its size; the padding is added here).
    pub fn write_tensor(&mut self, bytes: &[u8]) -> Result<()> {
        let Some(t) = self.tensors.get(self.next) else {
            return Err(IoError::malformed(
                self.tmp.target(),
                format!(
                    "GGUF writer: more tensors given than the {} announced",
                    self.tensors.len()
                ),
            ));
        };
        if bytes.len() as u64 != self.sizes[self.next] {
            return Err(IoError::malformed(
                self.tmp.target(),
                format!(
                    "GGUF writer: tensor {} ({} {:?}) needs {} bytes, got {}",
                    t.name,
                    t.ty.name(),
                    t.ne,
                    self.sizes[self.next],
                    bytes.len()
                ),
            ));
        }
        self.put(bytes)?;
        self.pad()?;
        self.next += 1;
        Ok(())
    }

    /// Check every tensor was written, flush and sync, reopen the file with [`GgufFile::open`]
    /// as a final validation, and rename it into place. Returns the file's size in bytes.
    pub fn finish(mut self) -> Result<u64> {
        if self.next != self.tensors.len() {
            return Err(IoError::malformed(
                self.tmp.target(),
                format!(
                    "GGUF writer: finished after {} of {} tensors",
                    self.next,
                    self.tensors.len()
                ),
            ));
        }
        let out = self.out.take().expect("open until finish");
        let file = out
            .into_inner()
            .map_err(|e| IoError::os(self.tmp.path(), e.into_error()))?;
        file.sync_all()
            .map_err(|e| IoError::os(self.tmp.path(), e))?;
        drop(file);
        crate::gguf::GgufFile::open(self.tmp.path())?;
        self.tmp.commit()?;
        Ok(self.written)
    }
}

impl Drop for GgufWriter {
    fn drop(&mut self) {
        // Closed before the temporary goes (`Partial`'s drop removes it unless committed).
        drop(self.out.take());
    }
}

/// Write a whole GGUF file, asking `next(i, spec)` for tensor `i`'s bytes only when the writer
/// reaches it (one tensor in memory at a time). Returns the file's size in bytes.
///
/// Any error — the callback's included — leaves nothing at `target`.
pub fn write_gguf<E: From<IoError>>(
    target: impl AsRef<Path>,
    metadata: &[(String, GgufValue)],
    tensors: Vec<GgufTensorSpec>,
    opts: &GgufWriteOptions,
    mut next: impl FnMut(usize, &GgufTensorSpec) -> std::result::Result<Vec<u8>, E>,
) -> std::result::Result<u64, E> {
    let mut w = GgufWriter::create(target, metadata, tensors, opts)?;
    for i in 0..w.tensors.len() {
        let bytes = next(i, &w.tensors[i])?;
        w.write_tensor(&bytes)?;
    }
    Ok(w.finish()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GgufFile;

    fn every_value_type() -> Vec<(String, GgufValue)> {
        use GgufValue::*;
        vec![
            ("general.architecture".into(), String("llama".into())),
            ("t.u8".into(), U8(200)),
            ("t.i8".into(), I8(-100)),
            ("t.u16".into(), U16(60000)),
            ("t.i16".into(), I16(-30000)),
            ("t.u32".into(), U32(4_000_000_000)),
            ("t.i32".into(), I32(-2_000_000_000)),
            ("t.f32".into(), F32(-1.5e-7)),
            ("t.bool".into(), Bool(true)),
            ("t.string".into(), String("héllo ✓".into())),
            ("t.u64".into(), U64(u64::MAX - 3)),
            ("t.i64".into(), I64(i64::MIN + 5)),
            ("t.f64".into(), F64(std::f64::consts::PI)),
            (
                "t.arr_str".into(),
                Array(vec![
                    String("a".into()),
                    String("".into()),
                    String("ccc".into()),
                ]),
            ),
            ("t.arr_i32".into(), Array(vec![I32(-1), I32(2), I32(3)])),
            ("t.arr_f32".into(), Array(vec![F32(0.5), F32(-0.25)])),
            ("t.arr_empty".into(), Array(vec![])),
        ]
    }

    fn bytes_of(i: usize, t: &GgufTensorSpec) -> Vec<u8> {
        (0..t.bytes().unwrap())
            .map(|k| (k as usize * 31 + i * 7) as u8)
            .collect()
    }

    #[test]
    fn round_trips_through_the_reader() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        let meta = every_value_type();
        let tensors = vec![
            GgufTensorSpec::new("a.weight", vec![64, 3], GgmlType::Q8_0),
            GgufTensorSpec::new("norm.weight", vec![5], GgmlType::F32),
            GgufTensorSpec::new("k.weight", vec![256, 2], GgmlType::Q4_K),
            GgufTensorSpec::new("h.weight", vec![7, 3], GgmlType::F16),
        ];
        let size = write_gguf::<IoError>(
            &path,
            &meta,
            tensors.clone(),
            &GgufWriteOptions::default(),
            |i, t| Ok(bytes_of(i, t)),
        )
        .unwrap();
        assert_eq!(size, std::fs::metadata(&path).unwrap().len());
        let g = GgufFile::open(&path).unwrap();
        assert_eq!(g.version, 3);
        assert_eq!(g.alignment, 32);
        assert_eq!(g.metadata.len(), meta.len());
        for (k, v) in &meta {
            assert_eq!(g.get(k), Some(v), "{k}");
        }
        assert_eq!(g.tensors.len(), tensors.len());
        for (i, (a, b)) in tensors.iter().zip(&g.tensors).enumerate() {
            assert_eq!(a.name, b.name);
            assert_eq!(a.ne, b.ne);
            assert_eq!(a.ty, b.ty);
            assert_eq!(b.offset % 32, 0);
            assert_eq!(g.tensor_bytes(b), &bytes_of(i, a)[..]);
        }
        // Nothing but the file is left in the directory.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn honours_a_custom_alignment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        let meta = vec![("general.alignment".to_string(), GgufValue::U32(64))];
        let tensors = vec![
            GgufTensorSpec::new("a", vec![3], GgmlType::F32),
            GgufTensorSpec::new("b", vec![32], GgmlType::Q4_0),
        ];
        write_gguf::<IoError>(
            &path,
            &meta,
            tensors.clone(),
            &Default::default(),
            |i, t| Ok(bytes_of(i, t)),
        )
        .unwrap();
        let g = GgufFile::open(&path).unwrap();
        assert_eq!(g.alignment, 64);
        assert_eq!(g.data_offset % 64, 0);
        assert_eq!(g.tensors[1].offset, 64);
        assert_eq!(g.tensor_bytes(&g.tensors[1]), &bytes_of(1, &tensors[1])[..]);
        let bad = vec![("general.alignment".to_string(), GgufValue::U32(48))];
        let e = GgufWriter::create(dir.path().join("x.gguf"), &bad, vec![], &Default::default())
            .unwrap_err();
        assert!(e.to_string().contains("power of two"), "{e}");
    }

    #[test]
    fn a_failure_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        let tensors = vec![
            GgufTensorSpec::new("a", vec![32], GgmlType::Q8_0),
            GgufTensorSpec::new("b", vec![32], GgmlType::Q8_0),
        ];
        // The callback fails on the second tensor.
        let r = write_gguf(&path, &[], tensors.clone(), &Default::default(), |i, t| {
            if i == 1 {
                Err(IoError::malformed("cb", "boom"))
            } else {
                Ok(bytes_of(i, t))
            }
        });
        assert!(r.unwrap_err().to_string().contains("boom"));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        // A wrong byte count.
        let r = write_gguf::<IoError>(&path, &[], tensors.clone(), &Default::default(), |_, _| {
            Ok(vec![0u8; 5])
        });
        let e = r.unwrap_err().to_string();
        assert!(e.contains("needs 34 bytes, got 5"), "{e}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        // Unfinished.
        let mut w = GgufWriter::create(&path, &[], tensors, &Default::default()).unwrap();
        w.write_tensor(&[0u8; 34]).unwrap();
        let e = w.finish().unwrap_err().to_string();
        assert!(e.contains("after 1 of 2"), "{e}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn refuses_what_the_reader_would_refuse() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        let create = |meta: &[(String, GgufValue)], t: Vec<GgufTensorSpec>| {
            GgufWriter::create(&path, meta, t, &Default::default())
                .unwrap_err()
                .to_string()
        };
        let e = create(
            &[],
            vec![GgufTensorSpec::new("a", vec![33], GgmlType::Q8_0)],
        );
        assert!(e.contains("not whole Q8_0 blocks"), "{e}");
        let e = create(
            &[],
            vec![
                GgufTensorSpec::new("a", vec![1], GgmlType::F32),
                GgufTensorSpec::new("a", vec![1], GgmlType::F32),
            ],
        );
        assert!(e.contains("appears twice"), "{e}");
        let e = create(
            &[],
            vec![GgufTensorSpec::new("a", vec![1; 5], GgmlType::F32)],
        );
        assert!(e.contains("5 dimensions"), "{e}");
        let e = create(
            &[],
            vec![GgufTensorSpec::new("n".repeat(64), vec![1], GgmlType::F32)],
        );
        assert!(e.contains("at most 63"), "{e}");
        let nested = GgufValue::Array(vec![GgufValue::Array(vec![])]);
        let e = create(&[("k".into(), nested)], vec![]);
        assert!(e.contains("nested"), "{e}");
        let mixed = GgufValue::Array(vec![GgufValue::U8(1), GgufValue::I8(1)]);
        let e = create(&[("k".into(), mixed)], vec![]);
        assert!(e.contains("mixes"), "{e}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn refuses_the_input_and_existing_files() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.gguf");
        std::fs::write(&input, b"x").unwrap();
        let opts = GgufWriteOptions {
            overwrite: true,
            inputs: vec![input.clone()],
        };
        let e = GgufWriter::create(&input, &[], vec![], &opts).unwrap_err();
        assert!(e.to_string().contains("same path as an input"), "{e}");
        // Through another spelling of the same path.
        let other = dir.path().join(".").join("in.gguf");
        let e = GgufWriter::create(&other, &[], vec![], &opts).unwrap_err();
        assert!(e.to_string().contains("same path as an input"), "{e}");
        let existing = dir.path().join("out.gguf");
        std::fs::write(&existing, b"old").unwrap();
        let e = GgufWriter::create(&existing, &[], vec![], &Default::default()).unwrap_err();
        assert!(e.to_string().contains("already exists"), "{e}");
        assert_eq!(std::fs::read(&existing).unwrap(), b"old");
        // With overwrite, replaced only once finished.
        let w = GgufWriter::create(&existing, &[], vec![], &opts).unwrap();
        assert_eq!(std::fs::read(&existing).unwrap(), b"old");
        w.finish().unwrap();
        assert!(GgufFile::open(&existing).is_ok());
        let e = GgufWriter::create(dir.path().join("no/such/dir.gguf"), &[], vec![], &opts)
            .unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
    }
}
