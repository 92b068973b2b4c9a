//! AutoAWQ's GEMM checkpoint layout (`WQLinear_GEMM`; `quant_method: "awq"`,
//! `version: "gemm"`), 4-bit, as AutoAWQ writes it and transformers loads it.
//!
//! A linear layer whose weight is `[out, in]`, quantized with groups of `G` input columns
//! (`ngroups = in / G`), is stored as three tensors, all with the input axis first:
//! - `qweight` int32 `[in, out/8]`: word `w` of row `i` holds the codes of input column `i` for
//!   output features `8w … 8w+7`, 4 bits each, nibble `k` (bits `4k … 4k+3`) holding output
//!   `8w + AWQ_ORDER[k]` with [`AWQ_ORDER`] = `[0, 2, 4, 6, 1, 3, 5, 7]` (AutoAWQ
//!   `WQLinear_GEMM.from_linear`, `awq/modules/linear/gemm.py`; the inverse is
//!   `reverse_awq_order` in `awq/utils/packing_utils.py`);
//! - `qzeros` int32 `[ngroups, out/8]`: the zero points, interleaved the same way and stored
//!   as they are (no `− 1`, unlike GPTQ's v1);
//! - `scales` float16 `[ngroups, out]`.
//!
//! The value of element `(r, c)` is `(code − zero) · scale` with the zero and scale of row `r`,
//! group `c / G` (`dequantize_gemm`). `out` must be a multiple of 8 and `G` divide `in`.

use half::f16;

use crate::error::FormatError;
use crate::float::FloatType;
use crate::gptq_layout::{check_values, grouped_parts, int_packed, word_aligned};
use crate::int::{Granularity, IntSpec, IntTensor};

/// Format name used in errors.
const FORMAT: &str = "awq";

/// Bits per code of the GEMM layout (AutoAWQ packs only 4-bit weights this way).
pub const AWQ_BITS: u8 = 4;

/// AutoAWQ's order map: nibble `k` of a word holds output `8w + AWQ_ORDER[k]`.
pub const AWQ_ORDER: [usize; 8] = [0, 2, 4, 6, 1, 3, 5, 7];

/// The inverse of [`AWQ_ORDER`]: output `8w + j` sits in nibble `AWQ_REVERSE_ORDER[j]`.
pub const AWQ_REVERSE_ORDER: [usize; 8] = [0, 4, 1, 5, 2, 6, 3, 7];

/// An AWQ-quantized weight, unpacked: what an AWQ quantizer produces and what
/// [`AwqParts::pack`] lays out (4-bit codes, zero points, float16-exact scales).
#[derive(Debug, Clone, PartialEq)]
pub struct AwqParts {
    /// Input columns per group (`G`, dividing `cols`; `cols` for HF's `group_size: -1`).
    pub group_size: usize,
    /// Rows: output features (a multiple of 8).
    pub rows: usize,
    /// Columns: input features.
    pub cols: usize,
    /// Codes, row-major `[rows, cols]`, each < 16.
    pub codes: Vec<u8>,
    /// Scales, row-major `[rows, cols / G]`, each exactly representable in float16.
    pub scales: Vec<f32>,
    /// Zero points, row-major `[rows, cols / G]`, each < 16.
    pub zeros: Vec<u8>,
}

/// The three tensors of an AWQ GEMM layer, row-major, in checkpoint order and types.
#[derive(Debug, Clone, PartialEq)]
pub struct AwqPacked {
    /// `qweight`, `[cols, rows/8]`.
    pub qweight: Vec<i32>,
    /// `qzeros`, `[cols/G, rows/8]`.
    pub qzeros: Vec<i32>,
    /// `scales`, `[cols/G, rows]`.
    pub scales: Vec<f16>,
}

/// Shapes of `qweight`, `qzeros` and `scales` of a `[rows, cols]` weight; meaningful for
/// dimensions that [`check_dims`] accepts.
pub fn shapes(group_size: usize, rows: usize, cols: usize) -> [[usize; 2]; 3] {
    let ng = cols / group_size.max(1);
    [[cols, rows / 8], [ng, rows / 8], [ng, rows]]
}

/// Check the shape of a `[rows, cols]` AWQ weight: non-empty, `G` dividing `cols`, `rows` a
/// multiple of 8. Returns the number of groups.
pub fn check_dims(group_size: usize, rows: usize, cols: usize) -> Result<usize, FormatError> {
    if rows == 0 || cols == 0 {
        return Err(FormatError::Empty { format: FORMAT });
    }
    if group_size == 0 || !cols.is_multiple_of(group_size) {
        return Err(FormatError::GroupSize {
            format: FORMAT,
            rows,
            cols,
            group: group_size,
        });
    }
    word_aligned(FORMAT, "output features", rows, AWQ_BITS)?;
    Ok(cols / group_size)
}

/// Pack `[n, 8·words]` 4-bit values (`get(i, o)`) into `[n, words]` int32, AutoAWQ's order.
fn interleave(n: usize, words: usize, get: impl Fn(usize, usize) -> u8) -> Vec<i32> {
    let mut out = vec![0i32; n * words];
    for i in 0..n {
        for w in 0..words {
            let v = AWQ_ORDER.iter().enumerate().fold(0u32, |acc, (k, &j)| {
                acc | (get(i, 8 * w + j) as u32) << (4 * k)
            });
            out[i * words + w] = v as i32;
        }
    }
    out
}

/// The inverse of [`interleave`]: calls `set(i, o, value)` for every value.
fn deinterleave(packed: &[i32], words: usize, mut set: impl FnMut(usize, usize, u8)) {
    for (idx, &q) in packed.iter().enumerate() {
        let (i, w) = (idx / words, idx % words);
        for (j, &k) in AWQ_REVERSE_ORDER.iter().enumerate() {
            set(i, 8 * w + j, ((q as u32 >> (4 * k)) & 0xF) as u8);
        }
    }
}

impl AwqParts {
    /// Number of groups, `cols / group_size`.
    pub fn num_groups(&self) -> usize {
        self.cols / self.group_size.max(1)
    }

    /// Check that the parts fit together and the layout can hold them: [`check_dims`], lengths,
    /// codes and zero points below 16, scales finite and exact in float16.
    pub fn check(&self) -> Result<(), FormatError> {
        let ng = check_dims(self.group_size, self.rows, self.cols)?;
        check_values(
            FORMAT,
            AWQ_BITS,
            [self.rows, self.cols, ng],
            &self.codes,
            &self.scales,
            &self.zeros,
        )
    }

    /// The three tensors of the layout; errors if [`AwqParts::check`] does.
    pub fn pack(&self) -> Result<AwqPacked, FormatError> {
        self.check()?;
        let (rows, cols, ng) = (self.rows, self.cols, self.num_groups());
        let qweight = interleave(cols, rows / 8, |i, o| self.codes[o * cols + i]);
        let qzeros = interleave(ng, rows / 8, |g, o| self.zeros[o * ng + g]);
        let mut scales = vec![f16::ZERO; ng * rows];
        for r in 0..rows {
            for g in 0..ng {
                scales[g * rows + r] = f16::from_f32(self.scales[r * ng + g]);
            }
        }
        Ok(AwqPacked {
            qweight,
            qzeros,
            scales,
        })
    }

    /// Unpack the tensors of a `[rows, cols]` layer; errors on lengths that do not match the
    /// shape and on non-finite scales.
    pub fn unpack(
        packed: &AwqPacked,
        group_size: usize,
        rows: usize,
        cols: usize,
    ) -> Result<AwqParts, FormatError> {
        let ng = check_dims(group_size, rows, cols)?;
        let [qw, qz, sc] = shapes(group_size, rows, cols);
        for (name, len, shape) in [
            ("qweight", packed.qweight.len(), qw),
            ("qzeros", packed.qzeros.len(), qz),
            ("scales", packed.scales.len(), sc),
        ] {
            if len != shape[0] * shape[1] {
                return Err(FormatError::Inconsistent {
                    format: FORMAT,
                    what: format!(
                        "{name} holds {len} values, expected {shape:?} = {}",
                        shape[0] * shape[1]
                    ),
                });
            }
        }
        if let Some(i) = packed.scales.iter().position(|s| !s.is_finite()) {
            return Err(FormatError::Inconsistent {
                format: FORMAT,
                what: format!(
                    "scale {} at group {}, output {} is not finite",
                    packed.scales[i],
                    i / rows,
                    i % rows
                ),
            });
        }
        let mut codes = vec![0u8; rows * cols];
        deinterleave(&packed.qweight, rows / 8, |i, o, v| codes[o * cols + i] = v);
        let mut zeros = vec![0u8; rows * ng];
        deinterleave(&packed.qzeros, rows / 8, |g, o, v| zeros[o * ng + g] = v);
        let mut scales = vec![0f32; rows * ng];
        for r in 0..rows {
            for g in 0..ng {
                scales[r * ng + g] = packed.scales[g * rows + r].to_f32();
            }
        }
        Ok(AwqParts {
            group_size,
            rows,
            cols,
            codes,
            scales,
            zeros,
        })
    }

    /// The same weight as an asymmetric 4-bit [`IntTensor`] with float16 scales and groups of
    /// `G`. Meant for parts that pass [`AwqParts::check`].
    pub fn to_int_tensor(&self) -> IntTensor {
        IntTensor {
            spec: IntSpec::asymmetric(
                AWQ_BITS,
                Granularity::Group(self.group_size),
                FloatType::F16,
            ),
            rows: self.rows,
            cols: self.cols,
            packed: int_packed(&self.codes, AWQ_BITS, self.cols),
            scales: crate::float::encode(FloatType::F16, &self.scales),
            zeros: Some(self.zeros.clone()),
        }
    }

    /// The parts of a 4-bit [`IntTensor`] whose scales float16 holds exactly (symmetric ones
    /// get zero points 8; per-tensor and per-channel ones one group per row). Errors if the
    /// tensor or the layout's shape rules refuse.
    pub fn from_int_tensor(t: &IntTensor) -> Result<AwqParts, FormatError> {
        if t.spec.bits != AWQ_BITS {
            return Err(FormatError::UnsupportedBits {
                format: FORMAT,
                bits: t.spec.bits,
                supported: "4",
            });
        }
        let g = grouped_parts(FORMAT, t)?;
        let parts = AwqParts {
            group_size: g.group_size,
            rows: t.rows,
            cols: t.cols,
            codes: g.codes,
            scales: g.scales,
            zeros: g.zeros,
        };
        parts.check()?;
        Ok(parts)
    }

    /// The weight in float32, row-major `[rows, cols]`: `(code − zero) · scale` of the
    /// element's group. Panics on parts that fail [`AwqParts::check`].
    pub fn dequantize(&self) -> Vec<f32> {
        let (ng, g) = (self.num_groups(), self.group_size);
        let mut out = vec![0f32; self.rows * self.cols];
        for (r, (o, c)) in out
            .chunks_exact_mut(self.cols)
            .zip(self.codes.chunks_exact(self.cols))
            .enumerate()
        {
            for (j, (o, c)) in o.chunks_exact_mut(g).zip(c.chunks_exact(g)).enumerate() {
                let (s, z) = (self.scales[r * ng + j], self.zeros[r * ng + j] as i32);
                for (o, &c) in o.iter_mut().zip(c) {
                    *o = (c as i32 - z) as f32 * s;
                }
            }
        }
        out
    }

    /// Bytes the checkpoint stores: `qweight` and `qzeros` (4 bytes a word) and `scales`
    /// (2 bytes each).
    pub fn stored_bytes(&self) -> usize {
        let [qw, qz, sc] = shapes(self.group_size, self.rows, self.cols);
        4 * (qw[0] * qw[1] + qz[0] * qz[1]) + 2 * sc[0] * sc[1]
    }
}
