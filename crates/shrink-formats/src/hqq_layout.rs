//! HQQ's stored form (Half-Quadratic Quantization, Badri & Shaji 2023, mobiusml/hqq): unsigned
//! `bits`-bit codes with a float16 scale and a **float** (not integer) float16 zero point per
//! group. The optimiser that picks the zero points lives in `shrink-methods` (`hqq`); this
//! module only knows the layout and how to decode it.
//!
//! A weight is a row-major `[rows, cols]` matrix, N = rows·cols elements. The value of code
//! `c` in a group with scale `s` and zero `z` (both decoded from f16) is
//! `(c as f32 − z) · s`, computed in float32 — exactly what the quantizer that wrote the
//! tensor computed, so the stored bytes reproduce its dequantized weight bit for bit.
//!
//! **Groups** follow hqq's `Quantizer.quantize`, which reshapes the weight and reduces along
//! `axis`:
//! - axis 1: `W.reshape([-1, G])`, so a group is `G` consecutive columns of one row; group of
//!   element `(r, c)` = `r·(cols/G) + c/G`; `G` must divide `cols` (shrink never pads);
//! - axis 0: `W.reshape([G, -1])` with statistics along dim 0, so group `j` (of M = N/G)
//!   holds the flat elements `j, j + M, j + 2M, …`; `G` must divide N.
//!
//! **Packing** reuses [`int::pack`](crate::int::pack) (little-endian, LSB-first bit stream).
//! Axis 1: one byte-aligned packed row per weight row, `ceil(cols·bits/8)` bytes each, as in
//! [`IntTensor`](crate::int::IntTensor). Axis 0: all N codes in flat (row-major element) order
//! packed densely, `ceil(N·bits/8)` bytes. Scales and zero points are little-endian f16
//! bytes, one per group in group order.

use half::f16;

use crate::error::FormatError;
use crate::float::{self, FloatType};
use crate::int::{self, packed_len};

/// Format name used in errors.
const FORMAT: &str = "hqq";

/// The bit widths [`HqqSpec`] accepts (hqq's integer widths that fit a byte).
pub const SUPPORTED_BITS: [u8; 5] = [1, 2, 3, 4, 8];

/// [`SUPPORTED_BITS`] as the error message spells it.
const SUPPORTED_BITS_TEXT: &str = "1, 2, 3, 4 or 8";

/// Smallest group size accepted.
pub const MIN_GROUP: usize = 16;

/// Largest group size accepted.
pub const MAX_GROUP: usize = 1024;

/// How a weight is quantized: bit width, group size and hqq's grouping axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HqqSpec {
    /// Bits per code: one of [`SUPPORTED_BITS`].
    pub bits: u8,
    /// Elements per group (hqq's `group_size`), in [`MIN_GROUP`]..=[`MAX_GROUP`].
    pub group_size: usize,
    /// hqq's `axis`: 1 groups consecutive columns of a row, 0 strided flat elements.
    pub axis: u8,
}

impl HqqSpec {
    /// A spec from its three fields (checked by [`HqqSpec::validate`]).
    pub fn new(bits: u8, group_size: usize, axis: u8) -> Self {
        HqqSpec {
            bits,
            group_size,
            axis,
        }
    }

    /// Largest code, 2^bits − 1.
    pub fn qmax(&self) -> u8 {
        ((1u16 << self.bits) - 1) as u8
    }

    /// Short name such as `hqq4-g64-axis1`.
    pub fn name(&self) -> String {
        format!("hqq{}-g{}-axis{}", self.bits, self.group_size, self.axis)
    }

    /// Check the spec against a `[rows, cols]` shape: supported bits and axis, non-empty, a
    /// group size in range that divides `cols` (axis 1) or `rows·cols` (axis 0).
    pub fn validate(&self, rows: usize, cols: usize) -> Result<(), FormatError> {
        if !SUPPORTED_BITS.contains(&self.bits) {
            return Err(FormatError::UnsupportedBits {
                format: FORMAT,
                bits: self.bits,
                supported: SUPPORTED_BITS_TEXT,
            });
        }
        if self.axis > 1 {
            return Err(FormatError::Inconsistent {
                format: FORMAT,
                what: format!("axis {} (hqq groups along axis 0 or 1)", self.axis),
            });
        }
        if !(MIN_GROUP..=MAX_GROUP).contains(&self.group_size) {
            return Err(FormatError::BlockSize {
                format: FORMAT,
                block: self.group_size,
                allowed: "16 to 1024",
            });
        }
        if rows == 0 || cols == 0 {
            return Err(FormatError::Empty { format: FORMAT });
        }
        let g = self.group_size;
        if self.axis == 1 && !cols.is_multiple_of(g) {
            return Err(FormatError::GroupSize {
                format: FORMAT,
                rows,
                cols,
                group: g,
            });
        }
        if self.axis == 0 && !(rows * cols).is_multiple_of(g) {
            return Err(FormatError::NotBlockAligned {
                format: FORMAT,
                elements: rows * cols,
                block: g,
            });
        }
        Ok(())
    }

    /// Check a weight before quantizing: [`HqqSpec::validate`], `w.len() == rows·cols`, and
    /// no NaN or infinity ([`FormatError::NonFinite`] names the first).
    pub fn check_input(&self, w: &[f32], rows: usize, cols: usize) -> Result<(), FormatError> {
        self.validate(rows, cols)?;
        if w.len() != rows * cols {
            return Err(FormatError::ShapeMismatch {
                format: FORMAT,
                rows,
                cols,
                expected: rows * cols,
                actual: w.len(),
            });
        }
        int::check_finite(w, cols, FORMAT)
    }

    /// Number of groups (scales, zero points) of a `[rows, cols]` tensor: `rows·cols / G`.
    pub fn num_groups(&self, rows: usize, cols: usize) -> usize {
        rows * cols / self.group_size
    }

    /// Group of element `(r, c)` (see the module doc).
    pub fn group_of(&self, rows: usize, cols: usize, r: usize, c: usize) -> usize {
        if self.axis == 1 {
            r * (cols / self.group_size) + c / self.group_size
        } else {
            (r * cols + c) % self.num_groups(rows, cols)
        }
    }

    /// Bytes of packed codes: `rows · ceil(cols·bits/8)` (axis 1), `ceil(N·bits/8)` (axis 0).
    pub fn packed_bytes(&self, rows: usize, cols: usize) -> usize {
        if self.axis == 1 {
            rows * packed_len(cols, self.bits)
        } else {
            packed_len(rows * cols, self.bits)
        }
    }

    /// Bytes a `[rows, cols]` tensor takes: packed codes + f16 scales + f16 zero points.
    pub fn stored_bytes(&self, rows: usize, cols: usize) -> usize {
        self.packed_bytes(rows, cols) + 4 * self.num_groups(rows, cols)
    }

    /// Storage cost in bits per weight, from [`HqqSpec::stored_bytes`] (4-bit g64: 4.5).
    pub fn bits_per_weight(&self, rows: usize, cols: usize) -> f64 {
        (self.stored_bytes(rows, cols) * 8) as f64 / (rows * cols) as f64
    }
}

/// An HQQ-quantized `[rows, cols]` tensor: packed codes, f16 scales and f16 float zero points.
#[derive(Debug, Clone, PartialEq)]
pub struct HqqTensor {
    /// How it was quantized.
    pub spec: HqqSpec,
    /// Rows (output features).
    pub rows: usize,
    /// Columns (input features).
    pub cols: usize,
    /// Codes, packed as the module doc describes ([`HqqSpec::packed_bytes`] bytes).
    pub packed: Vec<u8>,
    /// Scales, little-endian f16 bytes, one per group.
    pub scales: Vec<u8>,
    /// Float zero points, little-endian f16 bytes, one per group.
    pub zeros: Vec<u8>,
}

impl HqqTensor {
    /// Build a tensor from row-major codes (each ≤ 2^bits − 1) and per-group scales and zeros.
    ///
    /// Errors if the spec does not fit the shape, a length is wrong, a code is too large or a
    /// scale or zero is not finite.
    pub fn from_parts(
        spec: HqqSpec,
        rows: usize,
        cols: usize,
        codes: &[u8],
        scales: &[f16],
        zeros: &[f16],
    ) -> Result<Self, FormatError> {
        spec.validate(rows, cols)?;
        let bad = |what: String| FormatError::Inconsistent {
            format: FORMAT,
            what,
        };
        if codes.len() != rows * cols {
            return Err(FormatError::ShapeMismatch {
                format: FORMAT,
                rows,
                cols,
                expected: rows * cols,
                actual: codes.len(),
            });
        }
        if let Some(i) = codes.iter().position(|&c| c > spec.qmax()) {
            return Err(bad(format!(
                "code {} at element {i} exceeds {}",
                codes[i],
                spec.qmax()
            )));
        }
        let n = spec.num_groups(rows, cols);
        if scales.len() != n || zeros.len() != n {
            return Err(bad(format!(
                "{} scales and {} zero points, expected {n} each",
                scales.len(),
                zeros.len()
            )));
        }
        let packed = if spec.axis == 1 {
            let rb = packed_len(cols, spec.bits);
            let mut out = Vec::with_capacity(rows * rb);
            for row in codes.chunks_exact(cols) {
                out.extend_from_slice(&int::pack(row, spec.bits));
            }
            out
        } else {
            int::pack(codes, spec.bits)
        };
        let t = HqqTensor {
            spec,
            rows,
            cols,
            packed,
            scales: scales.iter().flat_map(|s| s.to_le_bytes()).collect(),
            zeros: zeros.iter().flat_map(|z| z.to_le_bytes()).collect(),
        };
        t.check()?;
        Ok(t)
    }

    /// Check that the parts fit together: valid spec, lengths, finite scales and zero points.
    /// Run it on parts read from a file before dequantizing (the accessors below panic on
    /// inconsistent parts).
    pub fn check(&self) -> Result<(), FormatError> {
        let spec = &self.spec;
        spec.validate(self.rows, self.cols)?;
        let bad = |what: String| FormatError::Inconsistent {
            format: FORMAT,
            what,
        };
        let packed = spec.packed_bytes(self.rows, self.cols);
        if self.packed.len() != packed {
            return Err(bad(format!(
                "{} packed bytes, expected {packed}",
                self.packed.len()
            )));
        }
        let n = spec.num_groups(self.rows, self.cols);
        for (what, v) in [("scale", &self.scales), ("zero point", &self.zeros)] {
            if v.len() != 2 * n {
                return Err(bad(format!("{} {what} bytes, expected {}", v.len(), 2 * n)));
            }
        }
        let (s, z) = (self.scales_f32(), self.zeros_f32());
        for (what, v) in [("scale", &s), ("zero point", &z)] {
            if let Some(g) = v.iter().position(|x| !x.is_finite()) {
                return Err(bad(format!("non-finite {what} {} of group {g}", v[g])));
            }
        }
        Ok(())
    }

    /// Number of groups.
    pub fn num_groups(&self) -> usize {
        self.spec.num_groups(self.rows, self.cols)
    }

    /// The scales decoded to float32, one per group.
    pub fn scales_f32(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.scales.len() / 2];
        float::decode(FloatType::F16, &self.scales, &mut out);
        out
    }

    /// The zero points decoded to float32, one per group.
    pub fn zeros_f32(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.zeros.len() / 2];
        float::decode(FloatType::F16, &self.zeros, &mut out);
        out
    }

    /// All codes, unpacked, in row-major element order (`rows · cols` values ≤ 2^bits − 1).
    pub fn codes(&self) -> Vec<u8> {
        let mut out = vec![0u8; self.rows * self.cols];
        for (r, o) in out.chunks_mut(self.cols).enumerate() {
            self.row_codes(r, o);
        }
        out
    }

    /// Unpack the codes of row `r` into `out` (`cols` values).
    fn row_codes(&self, r: usize, out: &mut [u8]) {
        let (bits, cols) = (self.spec.bits, self.cols);
        let (bytes, start) = if self.spec.axis == 1 {
            let rb = packed_len(cols, bits);
            (&self.packed[r * rb..(r + 1) * rb], 0)
        } else {
            (&self.packed[..], r * cols)
        };
        let bit0 = start * bits as usize;
        if bit0.is_multiple_of(8) {
            let codes = int::unpack(&bytes[bit0 / 8..], bits, cols).expect("hqq: packed length");
            out.copy_from_slice(&codes);
        } else {
            // A dense axis-0 row that starts inside a byte: read each code's bits directly.
            let mask = (1u16 << bits) - 1;
            for (i, o) in out.iter_mut().enumerate() {
                let b = bit0 + i * bits as usize;
                let lo = bytes[b / 8] as u16;
                let hi = bytes.get(b / 8 + 1).copied().unwrap_or(0) as u16;
                *o = (((lo | hi << 8) >> (b % 8)) & mask) as u8;
            }
        }
    }

    /// Dequantize row `r` into `out` (`out.len() == cols`): `(c − z)·s` per element.
    ///
    /// Panics if `r` is out of range, `out` has the wrong length, or the parts are inconsistent.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        assert!(r < self.rows, "dequantize_row: row {r} of {}", self.rows);
        assert_eq!(out.len(), self.cols, "dequantize_row: output length");
        let mut codes = vec![0u8; self.cols];
        self.row_codes(r, &mut codes);
        let g = self.spec.group_size;
        if self.spec.axis == 1 {
            let k = self.cols / g;
            let mut s = vec![0f32; k];
            let mut z = vec![0f32; k];
            float::decode(FloatType::F16, &self.scales[2 * r * k..], &mut s);
            float::decode(FloatType::F16, &self.zeros[2 * r * k..], &mut z);
            for (j, (o, c)) in out.chunks_mut(g).zip(codes.chunks(g)).enumerate() {
                let (s, z) = (s[j], z[j]);
                for (o, &c) in o.iter_mut().zip(c) {
                    *o = (c as f32 - z) * s;
                }
            }
        } else {
            let m = self.num_groups();
            let mut j = (r * self.cols) % m;
            for (o, &c) in out.iter_mut().zip(&codes) {
                let s = f16::from_le_bytes([self.scales[2 * j], self.scales[2 * j + 1]]);
                let z = f16::from_le_bytes([self.zeros[2 * j], self.zeros[2 * j + 1]]);
                *o = (c as f32 - z.to_f32()) * s.to_f32();
                j += 1;
                if j == m {
                    j = 0;
                }
            }
        }
    }

    /// Dequantize the whole tensor into `out` (`rows · cols` values, row-major), row-parallel
    /// for large tensors.
    pub fn dequantize_into(&self, out: &mut [f32]) {
        assert_eq!(
            out.len(),
            self.rows * self.cols,
            "dequantize: output length"
        );
        crate::fill_rows(out, self.cols, |r, o| self.dequantize_row(r, o));
    }

    /// Dequantize the whole tensor (row-major `[rows, cols]` float32).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        self.dequantize_into(&mut out);
        out
    }

    /// Bytes stored: packed codes + scales + zero points.
    pub fn stored_bytes(&self) -> usize {
        self.packed.len() + self.scales.len() + self.zeros.len()
    }

    /// Storage cost in bits per weight, from [`HqqTensor::stored_bytes`].
    pub fn bits_per_weight(&self) -> f64 {
        (self.stored_bytes() * 8) as f64 / (self.rows * self.cols) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic tensor of `spec` with codes `(i·7) mod 2^bits`.
    fn sample(spec: HqqSpec, rows: usize, cols: usize) -> (HqqTensor, Vec<u8>, Vec<f32>) {
        let codes: Vec<u8> = (0..rows * cols)
            .map(|i| ((i * 7) % (spec.qmax() as usize + 1)) as u8)
            .collect();
        let n = spec.num_groups(rows, cols);
        let s: Vec<f16> = (0..n)
            .map(|j| f16::from_f32(0.01 + j as f32 * 1e-3))
            .collect();
        let z: Vec<f16> = (0..n)
            .map(|j| f16::from_f32(1.3 + j as f32 * 0.1))
            .collect();
        let t = HqqTensor::from_parts(spec, rows, cols, &codes, &s, &z).unwrap();
        let want = (0..rows * cols)
            .map(|i| {
                let j = spec.group_of(rows, cols, i / cols, i % cols);
                (codes[i] as f32 - z[j].to_f32()) * s[j].to_f32()
            })
            .collect();
        (t, codes, want)
    }

    #[test]
    fn round_trip_every_bits_and_axis() {
        for bits in SUPPORTED_BITS {
            for axis in [0, 1] {
                // 5 × 36 (axis 0 only): 1- and 3-bit rows start inside a byte.
                for (rows, cols, g) in [(5, 48, 16), (5, 36, 20)] {
                    if axis == 1 && cols % g != 0 {
                        continue;
                    }
                    let spec = HqqSpec::new(bits, g, axis);
                    let (t, codes, want) = sample(spec, rows, cols);
                    assert_eq!(t.codes(), codes, "{bits} bits axis {axis} {cols}");
                    assert_eq!(t.dequantize(), want, "{bits} bits axis {axis} {cols}");
                }
            }
        }
    }

    #[test]
    fn bits_per_weight_counts_f16_scale_and_zero() {
        let spec = HqqSpec::new(4, 64, 1);
        assert_eq!(spec.bits_per_weight(64, 128), 4.5);
        let (t, _, _) = sample(spec, 64, 128);
        assert_eq!(t.bits_per_weight(), 4.5);
        assert_eq!(t.stored_bytes(), spec.stored_bytes(64, 128));
    }

    #[test]
    fn bad_specs_are_refused() {
        let err = |s: HqqSpec, r, c| s.validate(r, c).unwrap_err().to_string();
        assert!(err(HqqSpec::new(5, 64, 1), 4, 64).contains("5-bit"));
        assert!(err(HqqSpec::new(4, 64, 2), 4, 64).contains("axis 2"));
        assert!(err(HqqSpec::new(4, 8, 1), 4, 64).contains("block size 8"));
        assert!(err(HqqSpec::new(4, 64, 1), 4, 96).contains("does not divide"));
        assert!(err(HqqSpec::new(4, 64, 0), 3, 33).contains("not a multiple"));
        assert!(HqqSpec::new(4, 64, 0).validate(2, 96).is_ok());
        let w = [0.0, 1.0, f32::NAN, 2.0];
        let e = HqqSpec::new(4, 16, 1).check_input(&w, 1, 4).unwrap_err();
        assert!(matches!(e, FormatError::GroupSize { .. }));
        let mut w = vec![0f32; 32];
        w[17] = f32::INFINITY;
        let e = HqqSpec::new(4, 16, 1).check_input(&w, 2, 16).unwrap_err();
        assert!(matches!(
            e,
            FormatError::NonFinite {
                index: 17,
                row: 1,
                col: 1,
                ..
            }
        ));
    }

    #[test]
    fn check_catches_inconsistent_parts() {
        let (t, _, _) = sample(HqqSpec::new(3, 16, 0), 4, 40);
        let mut u = t.clone();
        u.packed.pop();
        assert!(u.check().is_err());
        let mut u = t.clone();
        u.zeros[..2].copy_from_slice(&f16::INFINITY.to_le_bytes());
        assert!(u.check().unwrap_err().to_string().contains("zero point"));
        let mut u = t;
        u.scales.truncate(2);
        assert!(u.check().is_err());
    }
}
