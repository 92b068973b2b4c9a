//! compressed-tensors' sparse layouts, `sparse-bitmask` and `sparse-24-bitmask`, as
//! llm-compressor writes them (compressed-tensors 0.9–0.14,
//! `src/compressed_tensors/compressors/sparse_compressors/sparse_bitmask.py` and
//! `sparse_24_bitmask.py`, with `pack_bitmasks` / `unpack_bitmasks`; the formats were dropped
//! from compressed-tensors 0.15, whose `config/sparse_*bitmask.py` still name them).
//!
//! A dense `[rows, cols]` weight `W` of a float type is stored as:
//! - `bitmask` uint8 `[rows, ceil(cols/8)]`: bit `c % 8` (least significant first, numpy's
//!   `packbits(..., axis=-1, bitorder="little")`) of byte `c / 8` of row `r` is set when
//!   element `(r, c)` is stored; padding bits past `cols` are zero (and ignored when reading);
//! - `compressed`: the stored elements in row-major order, in the weight's own dtype;
//!   - `sparse-bitmask` (`BitmaskTensor`): exactly the non-zero elements (`W != 0`, so −0.0 is
//!     a zero and comes back as +0.0), 1-D `[nnz]`; with `row_offsets` int64 `[rows]`, the
//!     index in `compressed` of each row's first element (`cumsum(row_counts) − row_counts`);
//!   - `sparse-24-bitmask` (`Sparse24BitMaskTensor`): two elements of every group of four
//!     consecutive columns, `[rows, cols/2]` (`get_24_bytemasks`: the two largest magnitudes
//!     of each group, so a group with fewer than two non-zeros stores zeros too);
//! - `shape` int64: the dense shape, `[2]` for `sparse-bitmask` and `[2, 1]` for
//!   `sparse-24-bitmask` (`torch.tensor(shape).reshape(-1, 1)`).
//!
//! Which zeros fill a 2:4 group with fewer than two non-zeros is the tie order of
//! `torch.topk` in compressed-tensors; shrink takes the first zero columns of the group. Both
//! decode to the same weight.
//!
//! This module works on the elements' little-endian bytes (any element size) so values are
//! stored exactly as the dense dtype holds them; `shrink-io` names the tensors and writes the
//! configuration.

use crate::error::FormatError;

/// A compressed-tensors sparse layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SparseLayout {
    /// `sparse-bitmask`: the non-zeros, a bitmask and row offsets (any sparsity pattern).
    Bitmask,
    /// `sparse-24-bitmask`: two values of every four and a bitmask (2:4 sparsity only).
    Sparse24Bitmask,
}

impl SparseLayout {
    /// Every layout.
    pub const ALL: [SparseLayout; 2] = [SparseLayout::Bitmask, SparseLayout::Sparse24Bitmask];

    /// The compressed-tensors `format` name.
    pub fn name(self) -> &'static str {
        match self {
            SparseLayout::Bitmask => "sparse-bitmask",
            SparseLayout::Sparse24Bitmask => "sparse-24-bitmask",
        }
    }

    /// The layout of a compressed-tensors `format` name.
    pub fn parse(s: &str) -> Option<Self> {
        SparseLayout::ALL.into_iter().find(|l| l.name() == s)
    }

    /// The `sparsity_structure` compressed-tensors records with it by default.
    pub fn structure(self) -> &'static str {
        match self {
            SparseLayout::Bitmask => "unstructured",
            SparseLayout::Sparse24Bitmask => "2:4",
        }
    }

    /// Names of the tensors a module stores, after `<module>.`.
    pub fn parts(self) -> &'static [&'static str] {
        match self {
            SparseLayout::Bitmask => &["shape", "compressed", "bitmask", "row_offsets"],
            SparseLayout::Sparse24Bitmask => &["shape", "compressed", "bitmask"],
        }
    }
}

/// Bytes of one bitmask row of `cols` columns.
pub fn mask_row_bytes(cols: usize) -> usize {
    cols.div_ceil(8)
}

/// Whether the little-endian float element `e` (4 or 2 bytes) is ±0.
pub fn is_zero(e: &[u8]) -> bool {
    match e.len() {
        // Every bit but the sign (the top bit of the last byte) is clear.
        0 => true,
        n => e[..n - 1].iter().all(|&b| b == 0) && e[n - 1] & 0x7F == 0,
    }
}

/// Pack a row-major `[rows, cols]` mask into `[rows, ceil(cols/8)]` bytes, least significant
/// bit first (numpy `packbits(axis=-1, bitorder="little")`).
pub fn pack_bitmask(mask: &[bool], rows: usize, cols: usize) -> Vec<u8> {
    let rb = mask_row_bytes(cols);
    let mut out = vec![0u8; rows * rb];
    for r in 0..rows {
        for c in 0..cols {
            if mask[r * cols + c] {
                out[r * rb + c / 8] |= 1 << (c % 8);
            }
        }
    }
    out
}

/// The inverse of [`pack_bitmask`] (padding bits past `cols` ignored, like numpy's
/// `unpackbits(count=cols)`).
pub fn unpack_bitmask(packed: &[u8], rows: usize, cols: usize) -> Result<Vec<bool>, FormatError> {
    let rb = mask_row_bytes(cols);
    if packed.len() != rows * rb {
        return Err(FormatError::WrongByteCount {
            format: "bitmask",
            elements: rows * cols,
            expected: rows * rb,
            actual: packed.len(),
        });
    }
    let mut out = Vec::with_capacity(rows * cols);
    for row in packed.chunks_exact(rb.max(1)).take(rows) {
        out.extend((0..cols).map(|c| row[c / 8] >> (c % 8) & 1 == 1));
    }
    Ok(out)
}

/// A weight in a compressed-tensors sparse layout: what the file stores, unpacked from the
/// safetensors framing.
#[derive(Debug, Clone, PartialEq)]
pub struct SparseTensor {
    /// The layout.
    pub layout: SparseLayout,
    /// Rows of the dense weight (all dimensions but the last).
    pub rows: usize,
    /// Columns of the dense weight (its last dimension).
    pub cols: usize,
    /// Bytes per element of the dense dtype.
    pub elem_size: usize,
    /// `compressed`: the stored elements' bytes, row-major.
    pub values: Vec<u8>,
    /// `bitmask`: `[rows, ceil(cols/8)]`.
    pub bitmask: Vec<u8>,
    /// `row_offsets` (`sparse-bitmask` only).
    pub row_offsets: Option<Vec<i64>>,
}

impl SparseTensor {
    /// Compress the row-major `[rows, cols]` elements `dense` (`elem_size` bytes each) into
    /// `layout`. A 2:4 layout needs `cols` a multiple of 4 and at most two non-zeros in every
    /// group of four consecutive columns ([`FormatError::NotTwoFour`] names the first group
    /// that has more).
    pub fn compress(
        layout: SparseLayout,
        dense: &[u8],
        rows: usize,
        cols: usize,
        elem_size: usize,
    ) -> Result<Self, FormatError> {
        let format = layout.name();
        if rows == 0 || cols == 0 || elem_size == 0 {
            return Err(FormatError::Empty { format });
        }
        if dense.len() != rows * cols * elem_size {
            return Err(FormatError::ShapeMismatch {
                format,
                rows,
                cols,
                expected: rows * cols,
                actual: dense.len() / elem_size,
            });
        }
        let nonzero: Vec<bool> = dense.chunks_exact(elem_size).map(|e| !is_zero(e)).collect();
        let mask = match layout {
            SparseLayout::Bitmask => nonzero,
            SparseLayout::Sparse24Bitmask => mask_24(&nonzero, rows, cols)?,
        };
        let mut values = Vec::new();
        let mut row_offsets = Vec::with_capacity(rows);
        for r in 0..rows {
            row_offsets.push((values.len() / elem_size) as i64);
            for c in 0..cols {
                let i = r * cols + c;
                if mask[i] {
                    values.extend_from_slice(&dense[i * elem_size..(i + 1) * elem_size]);
                }
            }
        }
        Ok(SparseTensor {
            layout,
            rows,
            cols,
            elem_size,
            values,
            bitmask: pack_bitmask(&mask, rows, cols),
            row_offsets: (layout == SparseLayout::Bitmask).then_some(row_offsets),
        })
    }

    /// Number of stored elements.
    pub fn stored_elements(&self) -> usize {
        self.values.len() / self.elem_size.max(1)
    }

    /// Bytes the layout stores: values, bitmask, row offsets and the int64 shape.
    pub fn stored_bytes(&self) -> usize {
        self.values.len()
            + self.bitmask.len()
            + self.row_offsets.as_ref().map_or(0, |o| o.len() * 8)
            + 2 * 8
    }

    /// Check that the parts fit each other: the bitmask's size, as many set bits as stored
    /// values, row offsets that are the running count of set bits, and for 2:4 two set bits
    /// in every group of four columns.
    pub fn check(&self) -> Result<Vec<bool>, FormatError> {
        let format = self.layout.name();
        let inconsistent = |what: String| FormatError::Inconsistent { format, what };
        if self.rows == 0 || self.cols == 0 || self.elem_size == 0 {
            return Err(FormatError::Empty { format });
        }
        if !self.values.len().is_multiple_of(self.elem_size) {
            return Err(inconsistent(format!(
                "compressed holds {} bytes, not a whole number of {}-byte elements",
                self.values.len(),
                self.elem_size
            )));
        }
        let mask = unpack_bitmask(&self.bitmask, self.rows, self.cols)?;
        let set = mask.iter().filter(|&&b| b).count();
        if set != self.stored_elements() {
            return Err(inconsistent(format!(
                "the bitmask flags {set} elements but compressed holds {}",
                self.stored_elements()
            )));
        }
        match self.layout {
            SparseLayout::Bitmask => {
                let offsets = self
                    .row_offsets
                    .as_ref()
                    .ok_or_else(|| inconsistent("row_offsets are missing".into()))?;
                if offsets.len() != self.rows {
                    return Err(inconsistent(format!(
                        "{} row_offsets for {} rows",
                        offsets.len(),
                        self.rows
                    )));
                }
                let mut run = 0i64;
                for (r, &o) in offsets.iter().enumerate() {
                    if o != run {
                        return Err(inconsistent(format!(
                            "row_offsets[{r}] is {o}, the bitmask says {run}"
                        )));
                    }
                    let row = &mask[r * self.cols..(r + 1) * self.cols];
                    run += row.iter().filter(|&&b| b).count() as i64;
                }
            }
            SparseLayout::Sparse24Bitmask => {
                if !self.cols.is_multiple_of(4) {
                    return Err(FormatError::NotTwoFour {
                        row: 0,
                        col: 0,
                        count: 0,
                        what: format!("{} columns are not a multiple of 4", self.cols),
                    });
                }
                for (g, group) in mask.chunks_exact(4).enumerate() {
                    let n = group.iter().filter(|&&b| b).count();
                    if n != 2 {
                        let (row, col) = (g * 4 / self.cols, g * 4 % self.cols);
                        return Err(FormatError::NotTwoFour {
                            row,
                            col,
                            count: n,
                            what: "bitmask bits set in the group (2:4 stores exactly 2)".into(),
                        });
                    }
                }
            }
        }
        Ok(mask)
    }

    /// The dense `[rows, cols]` elements' bytes (zeros where the bitmask is clear), after
    /// [`SparseTensor::check`].
    pub fn decompress(&self) -> Result<Vec<u8>, FormatError> {
        let mask = self.check()?;
        let es = self.elem_size;
        let mut out = vec![0u8; self.rows * self.cols * es];
        let mut k = 0;
        for (i, &m) in mask.iter().enumerate() {
            if m {
                out[i * es..(i + 1) * es].copy_from_slice(&self.values[k * es..(k + 1) * es]);
                k += 1;
            }
        }
        Ok(out)
    }
}

/// The 2:4 mask of `nonzero`: each group's non-zeros, padded with its first zero columns up to
/// two. Errors on a group with more than two non-zeros.
fn mask_24(nonzero: &[bool], rows: usize, cols: usize) -> Result<Vec<bool>, FormatError> {
    if !cols.is_multiple_of(4) {
        return Err(FormatError::NotTwoFour {
            row: 0,
            col: 0,
            count: 0,
            what: format!("{cols} columns are not a multiple of 4"),
        });
    }
    let mut mask = nonzero.to_vec();
    for (g, group) in mask.chunks_exact_mut(4).enumerate() {
        let n = group.iter().filter(|&&b| b).count();
        if n > 2 {
            return Err(FormatError::NotTwoFour {
                row: g * 4 / cols,
                col: g * 4 % cols,
                count: n,
                what: "non-zeros in the group (2:4 allows at most 2)".into(),
            });
        }
        for b in group.iter_mut().filter(|b| !**b).take(2 - n) {
            *b = true;
        }
    }
    debug_assert!(rows * cols == mask.len());
    Ok(mask)
}

/// Whether the row-major `[rows, cols]` float32 weight is 2:4 sparse (at most two non-zeros
/// in every group of four consecutive columns, `cols` a multiple of 4).
pub fn is_two_four(w: &[f32], cols: usize) -> bool {
    cols > 0
        && cols.is_multiple_of(4)
        && w.len().is_multiple_of(cols)
        && w.chunks_exact(4)
            .all(|g| g.iter().filter(|v| **v != 0.0).count() <= 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (xorshift) for test matrices.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn unit(&mut self) -> f32 {
            (self.next() >> 40) as f32 / (1u64 << 24) as f32
        }
    }

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn random_sparse(rng: &mut Rng, n: usize, density: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                if rng.unit() < density {
                    rng.unit() * 2.0 - 1.0 + 1e-3
                } else {
                    0.0
                }
            })
            .collect()
    }

    /// Zero the two smallest magnitudes of every group of four (magnitude 2:4 pruning).
    fn prune_24(w: &mut [f32]) {
        for g in w.chunks_exact_mut(4) {
            let mut idx = [0, 1, 2, 3];
            idx.sort_by(|&a, &b| g[a].abs().total_cmp(&g[b].abs()));
            g[idx[0]] = 0.0;
            g[idx[1]] = 0.0;
        }
    }

    #[test]
    fn bitmask_bits_are_numpy_little_order() {
        // numpy.packbits([1,0,0,0,0,0,0,0, 0,1,1], bitorder="little") == [1, 6]
        let m = [
            true, false, false, false, false, false, false, false, false, true, true,
        ];
        assert_eq!(pack_bitmask(&m, 1, 11), vec![1, 6]);
        assert_eq!(unpack_bitmask(&[1, 6], 1, 11).unwrap(), m);
        // Padding bits are ignored.
        assert_eq!(unpack_bitmask(&[1, 6 | 0xF8], 1, 11).unwrap(), m);
    }

    #[test]
    fn unstructured_round_trip_is_exact() {
        let mut rng = Rng(0x9E3779B97F4A7C15);
        for &(rows, cols, density) in &[
            (1, 1, 1.0),
            (3, 7, 0.5),
            (5, 13, 0.3),
            (8, 64, 0.5),
            (17, 33, 0.1),
            (4, 9, 0.0),
        ] {
            let w = random_sparse(&mut rng, rows * cols, density);
            let t = SparseTensor::compress(SparseLayout::Bitmask, &f32_bytes(&w), rows, cols, 4)
                .unwrap();
            let nnz = w.iter().filter(|v| **v != 0.0).count();
            assert_eq!(t.stored_elements(), nnz);
            assert_eq!(t.bitmask.len(), rows * cols.div_ceil(8));
            assert_eq!(t.decompress().unwrap(), f32_bytes(&w), "{rows}x{cols}");
            assert_eq!(
                t.stored_bytes(),
                nnz * 4 + rows * cols.div_ceil(8) + rows * 8 + 16
            );
        }
    }

    #[test]
    fn row_offsets_are_exclusive_running_counts() {
        let w = [1.0f32, 0.0, 2.0, 0.0, 0.0, 0.0, 3.0, 4.0, 5.0];
        let t = SparseTensor::compress(SparseLayout::Bitmask, &f32_bytes(&w), 3, 3, 4).unwrap();
        assert_eq!(t.row_offsets, Some(vec![0, 2, 2]));
    }

    #[test]
    fn negative_zero_is_a_zero() {
        let w = [-0.0f32, 1.0];
        let t = SparseTensor::compress(SparseLayout::Bitmask, &f32_bytes(&w), 1, 2, 4).unwrap();
        assert_eq!(t.stored_elements(), 1);
        assert_eq!(t.decompress().unwrap(), f32_bytes(&[0.0, 1.0]));
    }

    #[test]
    fn two_four_round_trip_is_exact_for_any_element_size() {
        let mut rng = Rng(42);
        for &(rows, cols) in &[(1, 4), (3, 12), (7, 40), (16, 64)] {
            let mut w: Vec<f32> = (0..rows * cols).map(|_| rng.unit() - 0.5).collect();
            prune_24(&mut w);
            // Some groups with fewer than two non-zeros.
            w[0] = 0.0;
            assert!(is_two_four(&w, cols));
            let t = SparseTensor::compress(
                SparseLayout::Sparse24Bitmask,
                &f32_bytes(&w),
                rows,
                cols,
                4,
            )
            .unwrap();
            assert_eq!(t.stored_elements(), rows * cols / 2);
            assert_eq!(t.row_offsets, None);
            assert_eq!(t.decompress().unwrap(), f32_bytes(&w));
            assert_eq!(
                t.stored_bytes(),
                rows * cols * 2 + rows * cols.div_ceil(8) + 16
            );
            // bfloat16 elements: two bytes each.
            let b = crate::float::encode(crate::float::FloatType::BF16, &w);
            let t2 =
                SparseTensor::compress(SparseLayout::Sparse24Bitmask, &b, rows, cols, 2).unwrap();
            assert_eq!(t2.decompress().unwrap(), b);
        }
    }

    #[test]
    fn a_short_group_keeps_its_first_zeros() {
        let w = [0.0f32, 0.0, 0.0, 7.0];
        let t =
            SparseTensor::compress(SparseLayout::Sparse24Bitmask, &f32_bytes(&w), 1, 4, 4).unwrap();
        assert_eq!(t.bitmask, vec![0b1001]);
        assert_eq!(t.values, f32_bytes(&[0.0, 7.0]));
    }

    #[test]
    fn two_four_refuses_three_non_zeros_and_odd_widths() {
        let w = [1.0f32, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0];
        let e = SparseTensor::compress(SparseLayout::Sparse24Bitmask, &f32_bytes(&w), 1, 8, 4)
            .unwrap_err();
        assert!(
            matches!(
                e,
                FormatError::NotTwoFour {
                    row: 0,
                    col: 4,
                    count: 3,
                    ..
                }
            ),
            "{e}"
        );
        let e = SparseTensor::compress(SparseLayout::Sparse24Bitmask, &f32_bytes(&w), 2, 4, 4)
            .unwrap_err();
        assert!(e.to_string().contains("row 1"), "{e}");
        let e = SparseTensor::compress(SparseLayout::Sparse24Bitmask, &f32_bytes(&w[..6]), 1, 6, 4)
            .unwrap_err();
        assert!(e.to_string().contains("multiple of 4"), "{e}");
        assert!(!is_two_four(&w, 8));
    }

    #[test]
    fn lying_parts_are_refused() {
        let w = [1.0f32, 0.0, 2.0, 0.0, 0.0, 3.0];
        let good = SparseTensor::compress(SparseLayout::Bitmask, &f32_bytes(&w), 2, 3, 4).unwrap();
        let mut t = good.clone();
        t.values.truncate(8);
        assert!(t.decompress().unwrap_err().to_string().contains("flags 3"));
        let mut t = good.clone();
        t.bitmask.push(0);
        assert!(matches!(
            t.decompress().unwrap_err(),
            FormatError::WrongByteCount { .. }
        ));
        let mut t = good.clone();
        t.row_offsets = Some(vec![0, 1]);
        assert!(t
            .decompress()
            .unwrap_err()
            .to_string()
            .contains("row_offsets[1]"));
        let mut t = good;
        t.row_offsets = None;
        assert!(t.decompress().is_err());
        let mut t24 = SparseTensor::compress(
            SparseLayout::Sparse24Bitmask,
            &f32_bytes(&[1.0, 0.0, 0.0, 2.0]),
            1,
            4,
            4,
        )
        .unwrap();
        t24.bitmask = vec![0b0111];
        t24.values.extend_from_slice(&0f32.to_le_bytes());
        assert!(t24.decompress().unwrap_err().to_string().contains("2:4"));
    }

    #[test]
    fn layout_names_round_trip() {
        for l in SparseLayout::ALL {
            assert_eq!(SparseLayout::parse(l.name()), Some(l));
        }
        assert_eq!(SparseLayout::parse("dense"), None);
    }
}
