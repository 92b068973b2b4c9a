//! llama.cpp importance matrices (`llama-imatrix` output), read in both of its formats and
//! written in the legacy one.
//!
//! An importance matrix holds, for each weight matrix the model multiplies activations by, the
//! mean of x² of every input column over the calibration tokens; `llama-quantize --imatrix`
//! passes it as `quant_weights` to ggml's quantizers (`quantize_with_importance` here).
//!
//! Formats (llama.cpp `tools/imatrix/imatrix.cpp` `save_imatrix_legacy` / `save_imatrix`,
//! `tools/quantize/quantize.cpp` `load_legacy_imatrix` / `load_imatrix`):
//! - legacy `imatrix.dat`, all little-endian: `i32 n_entries`; per entry `i32 name_len`, the
//!   name, `i32 ncall`, `i32 nval`, `f32 values[nval]`; then optionally `i32 last_call`,
//!   `i32 dataset_len` and the dataset file name. Each stored value is
//!   `(Σx² / count) · ncall` (ncall = chunks seen), so the reader divides by `ncall` (when > 0)
//!   to get the mean, as llama-quantize does;
//! - GGUF (`general.type = imatrix`): per entry the f32 tensors `NAME.in_sum2` (Σx², `[cols,
//!   n_mat]`) and `NAME.counts` (`[1, n_mat]`, tokens seen), plus `imatrix.datasets`,
//!   `imatrix.chunk_count`, `imatrix.chunk_size`; the mean is `in_sum2 / count`, and a matrix
//!   with count 0 (an expert never routed to) gets ones, as llama-quantize does.
//!
//! Every length is checked against the bytes that remain, so a truncated file or one whose
//! lengths lie gives an error naming the file, the entry and what is wrong, never a panic.

use std::collections::BTreeMap;
use std::path::Path;

use shrink_formats::ggml::GgmlType;

use crate::error::{IoError, Result};
use crate::gguf::{GgufFile, GgufValue};

/// Which on-disk format an importance matrix came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImatrixFormat {
    /// The binary `imatrix.dat` format.
    Legacy,
    /// The GGUF format with `.in_sum2` / `.counts` tensors.
    Gguf,
}

/// An importance matrix: per tensor, the mean squared activation of each input column.
#[derive(Debug, Clone, PartialEq)]
pub struct Imatrix {
    /// Per GGUF tensor name (e.g. `blk.0.ffn_down.weight`): the per-input-column mean of x²
    /// (for a 3-D expert tensor, the experts' vectors one after the other).
    pub entries: BTreeMap<String, Vec<f32>>,
    /// Per entry: the number of chunks it was accumulated over (the legacy format's `ncall`;
    /// for a GGUF imatrix, ⌈max count / chunk size⌉ as llama.cpp computes it when converting).
    pub ncall: BTreeMap<String, i32>,
    /// Chunks the whole matrix was computed on (legacy `last_call`, GGUF `imatrix.chunk_count`).
    pub chunks: Option<u32>,
    /// Tokens per chunk (GGUF `imatrix.chunk_size`; the legacy format does not store it).
    pub chunk_size: Option<u32>,
    /// Calibration files the matrix was computed on, as `llama-imatrix` recorded them.
    pub datasets: Vec<String>,
    /// The format it was read from.
    pub format: ImatrixFormat,
}

/// A bounds-checked little-endian reader over a legacy file's bytes.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn err(&self, what: impl std::fmt::Display) -> IoError {
        IoError::malformed(self.path, format!("imatrix: {what} (at byte {})", self.pos))
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.err(format!(
                "truncated: {what} needs {n} bytes, {} remain",
                self.remaining()
            )));
        }
        let buf: &'a [u8] = self.buf;
        let s = &buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn i32(&mut self, what: &str) -> Result<i32> {
        Ok(i32::from_le_bytes(self.take(4, what)?.try_into().unwrap()))
    }
}

impl Imatrix {
    /// An empty matrix (entries are added by the caller).
    pub fn new() -> Self {
        Imatrix {
            entries: BTreeMap::new(),
            ncall: BTreeMap::new(),
            chunks: None,
            chunk_size: None,
            datasets: Vec::new(),
            format: ImatrixFormat::Legacy,
        }
    }

    /// Read an importance matrix in either format (GGUF when the file starts with `GGUF`).
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| IoError::os(path, e))?;
        if bytes.starts_with(&crate::gguf::GGUF_MAGIC) {
            drop(bytes);
            Self::read_gguf(path)
        } else {
            Self::parse_legacy(path, &bytes)
        }
    }

    /// The mean-of-x² vector of tensor `name`, if the matrix has one.
    pub fn get(&self, name: &str) -> Option<&[f32]> {
        self.entries.get(name).map(Vec::as_slice)
    }

    /// Parse the legacy binary format from `bytes` (read from `path`).
    pub fn parse_legacy(path: &Path, bytes: &[u8]) -> Result<Self> {
        let mut r = Reader {
            buf: bytes,
            pos: 0,
            path,
        };
        let n_entries = r.i32("entry count")?;
        if n_entries < 1 {
            return Err(r.err(format!(
                "entry count is {n_entries}; a legacy imatrix.dat holds at least one entry"
            )));
        }
        // An entry takes at least 4 + 1 + 4 + 4 + 4 bytes.
        if n_entries as usize > r.remaining() / 17 {
            return Err(r.err(format!(
                "header claims {n_entries} entries, more than the {} bytes left can hold: truncated or not an imatrix",
                r.remaining()
            )));
        }
        let mut m = Imatrix::new();
        for i in 0..n_entries {
            let len = r.i32("name length")?;
            if len <= 0 || len as usize > r.remaining() {
                return Err(r.err(format!(
                    "entry {i}: name length {len} is impossible ({} bytes remain)",
                    r.remaining()
                )));
            }
            let name = std::str::from_utf8(r.take(len as usize, "name")?)
                .map_err(|_| r.err(format!("entry {i}: name is not UTF-8")))?
                .to_string();
            let ncall = r.i32("ncall")?;
            let nval = r.i32("value count")?;
            if nval < 1 || nval as usize > r.remaining() / 4 {
                return Err(r.err(format!(
                    "entry {i} ({name}): value count {nval} is impossible ({} bytes remain): truncated or corrupt",
                    r.remaining()
                )));
            }
            let raw = r.take(nval as usize * 4, "values")?;
            let mut values: Vec<f32> = raw
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            if ncall > 0 {
                for v in &mut values {
                    *v /= ncall as f32;
                }
            }
            check_values(path, &name, &values)?;
            if m.entries.insert(name.clone(), values).is_some() {
                return Err(r.err(format!("entry {name} appears twice")));
            }
            m.ncall.insert(name, ncall);
        }
        // Newer legacy files end with the chunk count and the dataset's file name.
        if r.remaining() > 0 {
            let last_call = r.i32("chunk count")?;
            let len = r.i32("dataset name length")?;
            if len < 0 || len as usize > r.remaining() {
                return Err(r.err(format!(
                    "dataset name length {len} is impossible ({} bytes remain)",
                    r.remaining()
                )));
            }
            let ds = String::from_utf8_lossy(r.take(len as usize, "dataset name")?).into_owned();
            if r.remaining() > 0 {
                return Err(r.err(format!(
                    "{} unexpected bytes after the dataset name",
                    r.remaining()
                )));
            }
            m.chunks = u32::try_from(last_call).ok();
            if !ds.is_empty() {
                m.datasets.push(ds);
            }
        }
        Ok(m)
    }

    /// Read the GGUF format.
    fn read_gguf(path: &Path) -> Result<Self> {
        let g = GgufFile::open(path)?;
        let bad = |what: String| IoError::malformed(path, format!("imatrix: {what}"));
        let mut pairs: BTreeMap<&str, (Option<usize>, Option<usize>)> = BTreeMap::new();
        for (i, t) in g.tensors.iter().enumerate() {
            if let Some(n) = t.name.strip_suffix(".in_sum2") {
                pairs.entry(n).or_default().0 = Some(i);
            } else if let Some(n) = t.name.strip_suffix(".counts") {
                pairs.entry(n).or_default().1 = Some(i);
            }
        }
        if pairs.is_empty() {
            return Err(bad(format!(
                "no .in_sum2/.counts tensors in this GGUF (general.type is {}): a model rather than an importance matrix?",
                g.get("general.type").map_or("absent".into(), GgufValue::summary)
            )));
        }
        let mut m = Imatrix::new();
        m.format = ImatrixFormat::Gguf;
        m.chunks = g
            .get("imatrix.chunk_count")
            .and_then(GgufValue::as_u64)
            .map(|v| v as u32);
        m.chunk_size = g
            .get("imatrix.chunk_size")
            .and_then(GgufValue::as_u64)
            .map(|v| v as u32);
        if let Some(a) = g.get("imatrix.datasets").and_then(GgufValue::as_array) {
            m.datasets = a
                .iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect();
        }
        for (name, (sums, counts)) in pairs {
            let (Some(si), Some(ci)) = (sums, counts) else {
                return Err(bad(format!(
                    "entry {name} has only one of .in_sum2 and .counts"
                )));
            };
            let (s, c) = (&g.tensors[si], &g.tensors[ci]);
            for t in [s, c] {
                if t.ty != GgmlType::F32 {
                    return Err(bad(format!("tensor {} is {}, expected F32", t.name, t.ty)));
                }
            }
            let cols = s.ne[0] as usize;
            let n_mat = s.ne[1..].iter().product::<u64>() as usize;
            if c.elements() as usize != n_mat {
                return Err(bad(format!(
                    "entry {name}: {} counts for {n_mat} matrices of in_sum2 {:?}",
                    c.elements(),
                    s.ne
                )));
            }
            let f32s = |t| -> Vec<f32> {
                g.tensor_bytes(t)
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                    .collect()
            };
            let (sums, counts) = (f32s(s), f32s(c));
            let mut values = Vec::with_capacity(sums.len());
            for (j, &count) in counts.iter().enumerate() {
                let row = &sums[j * cols..(j + 1) * cols];
                if count > 0.0 {
                    values.extend(row.iter().map(|v| v / count));
                } else {
                    // An expert never routed to during calibration: neutral weights.
                    values.extend(std::iter::repeat_n(1.0f32, cols));
                }
            }
            check_values(path, name, &values)?;
            let max_count = counts.iter().fold(0f32, |a, &b| a.max(b));
            let ncall = match m.chunk_size {
                Some(cs) if cs > 0 => ((max_count as f64) / cs as f64).ceil() as i32,
                _ => 1,
            };
            m.ncall.insert(name.to_string(), ncall);
            m.entries.insert(name.to_string(), values);
        }
        Ok(m)
    }

    /// Write the legacy `imatrix.dat` format (read by every llama.cpp version), through a
    /// temporary file renamed into place; refuses to replace an existing file.
    ///
    /// Each value is stored as `mean · ncall` (ncall 1 for entries without one), as
    /// `save_imatrix_legacy` does, followed by the chunk count and the last dataset name.
    pub fn write(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        if self.entries.is_empty() {
            return Err(IoError::malformed(
                path,
                "imatrix: nothing to write (no entries)",
            ));
        }
        if path.exists() {
            return Err(IoError::malformed(
                path,
                "output already exists; shrink does not overwrite it",
            ));
        }
        let mut buf = Vec::new();
        let too_big = |what: &str| IoError::malformed(path, format!("imatrix: {what} exceeds i32"));
        let n = i32::try_from(self.entries.len()).map_err(|_| too_big("entry count"))?;
        buf.extend_from_slice(&n.to_le_bytes());
        for (name, values) in &self.entries {
            let len = i32::try_from(name.len()).map_err(|_| too_big("name length"))?;
            buf.extend_from_slice(&len.to_le_bytes());
            buf.extend_from_slice(name.as_bytes());
            let ncall = self
                .ncall
                .get(name)
                .copied()
                .filter(|&c| c > 0)
                .unwrap_or(1);
            buf.extend_from_slice(&ncall.to_le_bytes());
            let nval = i32::try_from(values.len()).map_err(|_| too_big("value count"))?;
            buf.extend_from_slice(&nval.to_le_bytes());
            for v in values {
                buf.extend_from_slice(&(v * ncall as f32).to_le_bytes());
            }
        }
        let chunks = self.chunks.unwrap_or(0) as i32;
        buf.extend_from_slice(&chunks.to_le_bytes());
        let ds = self.datasets.last().map_or("", String::as_str);
        buf.extend_from_slice(&(ds.len() as i32).to_le_bytes());
        buf.extend_from_slice(ds.as_bytes());

        let tmp = crate::output::Partial::new(path)?;
        std::fs::write(tmp.path(), &buf).map_err(|e| IoError::os(tmp.path(), e))?;
        tmp.commit()
    }
}

impl Default for Imatrix {
    fn default() -> Self {
        Self::new()
    }
}

/// llama-quantize refuses non-finite importance; ggml's weighted searches need it ≥ 0.
fn check_values(path: &Path, name: &str, values: &[f32]) -> Result<()> {
    if let Some((i, v)) = values
        .iter()
        .enumerate()
        .find(|(_, v)| !(v.is_finite() && **v >= 0.0))
    {
        return Err(IoError::malformed(
            path,
            format!("imatrix: entry {name}: value {i} is {v} (importance must be finite and >= 0)"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A legacy file as llama.cpp's `save_imatrix_legacy` lays it out.
    fn legacy_bytes(entries: &[(&str, i32, &[f32])], trailer: Option<(i32, &str)>) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&(entries.len() as i32).to_le_bytes());
        for (name, ncall, vals) in entries {
            b.extend_from_slice(&(name.len() as i32).to_le_bytes());
            b.extend_from_slice(name.as_bytes());
            b.extend_from_slice(&ncall.to_le_bytes());
            b.extend_from_slice(&(vals.len() as i32).to_le_bytes());
            for v in *vals {
                b.extend_from_slice(&v.to_le_bytes());
            }
        }
        if let Some((calls, ds)) = trailer {
            b.extend_from_slice(&calls.to_le_bytes());
            b.extend_from_slice(&(ds.len() as i32).to_le_bytes());
            b.extend_from_slice(ds.as_bytes());
        }
        b
    }

    #[test]
    fn legacy_values_are_divided_by_ncall() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("imatrix.dat");
        let bytes = legacy_bytes(
            &[
                ("blk.0.attn_q.weight", 4, &[4.0, 8.0, 2.0]),
                ("blk.0.ffn_down.weight", 0, &[1.5, 0.0]),
            ],
            Some((10, "calib.txt")),
        );
        std::fs::write(&p, &bytes).unwrap();
        let m = Imatrix::read(&p).unwrap();
        assert_eq!(m.format, ImatrixFormat::Legacy);
        assert_eq!(m.get("blk.0.attn_q.weight").unwrap(), &[1.0, 2.0, 0.5]);
        // ncall 0: values taken as they are (llama-quantize divides only when ncall > 0).
        assert_eq!(m.get("blk.0.ffn_down.weight").unwrap(), &[1.5, 0.0]);
        assert_eq!(m.ncall["blk.0.attn_q.weight"], 4);
        assert_eq!(m.chunks, Some(10));
        assert_eq!(m.datasets, vec!["calib.txt".to_string()]);
        // Without the trailer (older files).
        let short = legacy_bytes(&[("a.weight", 1, &[3.0])], None);
        let m2 = Imatrix::parse_legacy(&p, &short).unwrap();
        assert_eq!(m2.chunks, None);
        assert!(m2.datasets.is_empty());
    }

    #[test]
    fn write_then_read_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.dat");
        let mut m = Imatrix::new();
        m.entries
            .insert("blk.1.attn_v.weight".into(), vec![0.1, 3.25, 7.0]);
        m.entries.insert("blk.0.ffn_up.weight".into(), vec![2.0; 5]);
        m.ncall.insert("blk.1.attn_v.weight".into(), 3);
        m.chunks = Some(3);
        m.datasets = vec!["lee.txt".into()];
        m.write(&p).unwrap();
        let back = Imatrix::read(&p).unwrap();
        assert_eq!(
            back.entries.keys().collect::<Vec<_>>(),
            m.entries.keys().collect::<Vec<_>>()
        );
        for (k, v) in &m.entries {
            for (a, b) in v.iter().zip(back.get(k).unwrap()) {
                assert!((a - b).abs() <= a.abs() * 1e-6, "{k}: {a} vs {b}");
            }
        }
        assert_eq!(back.ncall["blk.0.ffn_up.weight"], 1);
        assert_eq!(back.chunks, Some(3));
        assert_eq!(back.datasets, m.datasets);
        // Refuses to replace a file, and leaves no temporary behind.
        assert!(m
            .write(&p)
            .unwrap_err()
            .to_string()
            .contains("already exists"));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn damaged_legacy_files_are_named_errors() {
        let p = Path::new("bad.dat");
        let good = legacy_bytes(
            &[("blk.0.attn_q.weight", 1, &[1.0, 2.0, 3.0])],
            Some((1, "x")),
        );
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![1, 0], "truncated"),
            (0i32.to_le_bytes().to_vec(), "entry count is 0"),
            (1000i32.to_le_bytes().to_vec(), "claims 1000 entries"),
            (good[..34].to_vec(), "value count"),
            (good[..good.len() - 6].to_vec(), "truncated"),
            ([good.clone(), vec![9]].concat(), "unexpected bytes"),
            (
                legacy_bytes(&[("a", 1, &[1.0]), ("a", 1, &[1.0])], None),
                "appears twice",
            ),
            (legacy_bytes(&[("a", 1, &[f32::NAN])], None), "finite"),
            (legacy_bytes(&[("a", 1, &[-1.0])], None), ">= 0"),
        ];
        for (bytes, want) in cases {
            let e = Imatrix::parse_legacy(p, &bytes).unwrap_err().to_string();
            assert!(e.contains("bad.dat") && e.contains(want), "{want}: {e}");
        }
        // A name length that lies.
        let mut lying = good.clone();
        lying[4..8].copy_from_slice(&1_000_000i32.to_le_bytes());
        let e = Imatrix::parse_legacy(p, &lying).unwrap_err().to_string();
        assert!(e.contains("name length 1000000"), "{e}");
        // A value count that lies.
        let mut lying = good.clone();
        let at = 4 + 4 + "blk.0.attn_q.weight".len() + 4;
        lying[at..at + 4].copy_from_slice(&(1i32 << 30).to_le_bytes());
        let e = Imatrix::parse_legacy(p, &lying).unwrap_err().to_string();
        assert!(e.contains("value count 1073741824"), "{e}");
    }

    #[test]
    fn reads_the_gguf_format() {
        use crate::gguf_write::{write_gguf, GgufTensorSpec};
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("imatrix.gguf");
        let meta = vec![
            (
                "general.type".to_string(),
                GgufValue::String("imatrix".into()),
            ),
            (
                "imatrix.datasets".to_string(),
                GgufValue::Array(vec![GgufValue::String("calib.txt".into())]),
            ),
            ("imatrix.chunk_count".to_string(), GgufValue::U32(6)),
            ("imatrix.chunk_size".to_string(), GgufValue::U32(512)),
        ];
        // A dense entry (count 1024) and a 2-expert entry whose second expert saw nothing.
        let tensors = vec![
            GgufTensorSpec::new("blk.0.attn_q.weight.in_sum2", vec![3, 1], GgmlType::F32),
            GgufTensorSpec::new("blk.0.attn_q.weight.counts", vec![1, 1], GgmlType::F32),
            GgufTensorSpec::new(
                "blk.0.ffn_down_exps.weight.in_sum2",
                vec![2, 2],
                GgmlType::F32,
            ),
            GgufTensorSpec::new(
                "blk.0.ffn_down_exps.weight.counts",
                vec![1, 2],
                GgmlType::F32,
            ),
        ];
        let data: Vec<Vec<f32>> = vec![
            vec![1024.0, 2048.0, 512.0],
            vec![1024.0],
            vec![10.0, 20.0, 5.0, 5.0],
            vec![10.0, 0.0],
        ];
        write_gguf::<IoError>(&p, &meta, tensors, &Default::default(), |i, _| {
            Ok(data[i].iter().flat_map(|v| v.to_le_bytes()).collect())
        })
        .unwrap();
        let m = Imatrix::read(&p).unwrap();
        assert_eq!(m.format, ImatrixFormat::Gguf);
        assert_eq!(m.get("blk.0.attn_q.weight").unwrap(), &[1.0, 2.0, 0.5]);
        assert_eq!(
            m.get("blk.0.ffn_down_exps.weight").unwrap(),
            &[1.0, 2.0, 1.0, 1.0]
        );
        assert_eq!(m.ncall["blk.0.attn_q.weight"], 2);
        assert_eq!((m.chunks, m.chunk_size), (Some(6), Some(512)));
        assert_eq!(m.datasets, vec!["calib.txt".to_string()]);
        // Converted to the legacy format, the means survive.
        let dat = dir.path().join("imatrix.dat");
        m.write(&dat).unwrap();
        assert_eq!(Imatrix::read(&dat).unwrap().entries, m.entries);
    }

    #[test]
    fn a_model_gguf_is_not_an_imatrix() {
        use crate::gguf_write::{write_gguf, GgufTensorSpec};
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("model.gguf");
        let t = vec![GgufTensorSpec::new(
            "token_embd.weight",
            vec![4, 2],
            GgmlType::F32,
        )];
        write_gguf::<IoError>(&p, &[], t, &Default::default(), |_, _| Ok(vec![0u8; 32])).unwrap();
        let e = Imatrix::read(&p).unwrap_err().to_string();
        assert!(e.contains("model.gguf") && e.contains("no .in_sum2"), "{e}");
    }
}
