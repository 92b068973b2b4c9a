//! GPTQ's int32 checkpoint layout, as AutoGPTQ, GPTQModel and optimum write it and transformers
//! loads it (`quant_method: "gptq"`).
//!
//! A linear layer whose weight is `[out, in]`, quantized to `bits` ∈ {2, 3, 4, 8} with groups of
//! `G` input columns (`ngroups = ceil(in / G)`), is stored as four tensors:
//! - `qweight` int32 `[in·bits/32, out]`: column `o` holds the codes of output row `o`, input
//!   columns in their original order, as a little-endian, LSB-first bit stream cut into 32-bit
//!   words (code `c` at stream bits `[c·bits, (c+1)·bits)`). For 2, 4 and 8 bits that is
//!   `32/bits` codes per word, the first in the low bits; for 3 bits 32 codes fill 3 words and
//!   codes 10 and 21 straddle a word boundary (AutoGPTQ `QuantLinear.pack`,
//!   `auto_gptq/nn_modules/qlinear/qlinear_cuda_old.py`; GPTQModel's `pack_original`);
//! - `qzeros` int32 `[ngroups, out·bits/32]`: row `g` holds the zero points of group `g` of every
//!   output row, packed along `out` the same way;
//! - `scales` float16 `[ngroups, out]`;
//! - `g_idx` int32 `[in]`: the group of each input column, `c / G` unless GPTQ ran with
//!   act-order (`desc_act`), which assigns groups in the order of a column permutation.
//!
//! The value of element `(r, c)` is `(code − zero) · scale` with the zero and scale of row `r`,
//! group `g_idx[c]`. Symmetric GPTQ (`sym: true`) is the same layout with every zero point at
//! 2^(bits−1).
//!
//! **Zero points** ([`CheckpointFormat`]): `gptq_v2` stores the zero point itself; `gptq` (v1,
//! AutoGPTQ's format and the default everywhere) stores `zero − 1`. For 2, 4 and 8 bits shrink
//! subtracts the constant with a 1 in every field from each v2 word, modulo 2^32, and adds it
//! back on reading, as GPTQModel does (`convert_gptq_v2_to_v1_format_module` and its inverse):
//! this equals AutoGPTQ's field-wise `zero − 1` whenever no zero point is 0, and round-trips
//! exactly when one is (it borrows from the next field). For 3 bits each field is shifted on
//! its own, modulo 8 (GPTQModel's `_shift_gptq_qzeros`). Kernels that decode v1 field by field
//! (`(q & mask) + 1`, AutoGPTQ's and exllama's) cannot represent a zero point of 0: a tensor
//! with one ([`GptqParts::v1_exact`] is false) is exact for them only as `gptq_v2`.
//!
//! **Shapes**: `in·bits` and `out·bits` must be multiples of 32 (`in` a multiple of 16, 32, 8 or
//! 4 for 2, 3, 4 or 8 bits; `out` likewise); shrink refuses others
//! ([`FormatError::NotWordAligned`]) rather than pad.

use half::f16;

use crate::error::FormatError;
use crate::float::FloatType;
use crate::int::{self, Granularity, IntSpec, IntTensor};

/// Format name used in errors.
const FORMAT: &str = "gptq";

/// The bit widths of GPTQ's int32 layout.
pub const GPTQ_BITS: [u8; 4] = [2, 3, 4, 8];

/// [`GPTQ_BITS`] as the error message spells it.
const GPTQ_BITS_TEXT: &str = "2, 3, 4 or 8";

/// How `qzeros` holds the zero points (the config's `checkpoint_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CheckpointFormat {
    /// `"gptq"` (v1, AutoGPTQ): stores `zero − 1` (see the module doc for a zero point of 0).
    Gptq,
    /// `"gptq_v2"` (GPTQModel): stores the zero point itself.
    GptqV2,
}

impl CheckpointFormat {
    /// The config's spelling: `gptq` or `gptq_v2`.
    pub fn name(self) -> &'static str {
        match self {
            CheckpointFormat::Gptq => "gptq",
            CheckpointFormat::GptqV2 => "gptq_v2",
        }
    }

    /// Parse a config's `checkpoint_format` (`gptq` or `gptq_v2`, any case).
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "gptq" => Some(CheckpointFormat::Gptq),
            "gptq_v2" => Some(CheckpointFormat::GptqV2),
            _ => None,
        }
    }
}

/// A GPTQ-quantized weight, unpacked: what a GPTQ quantizer produces and what
/// [`GptqParts::pack`] lays out.
#[derive(Debug, Clone, PartialEq)]
pub struct GptqParts {
    /// Bits per code: one of [`GPTQ_BITS`].
    pub bits: u8,
    /// Input columns per group (`G`; the whole row for HF's `group_size: -1`).
    pub group_size: usize,
    /// Rows: output features.
    pub rows: usize,
    /// Columns: input features.
    pub cols: usize,
    /// Codes, row-major `[rows, cols]`, columns in their original order, each < 2^bits.
    pub codes: Vec<u8>,
    /// Scales, row-major `[rows, ngroups]`, each exactly representable in float16.
    pub scales: Vec<f32>,
    /// Zero points, row-major `[rows, ngroups]`, each < 2^bits.
    pub zeros: Vec<u8>,
    /// The group of each input column (`[cols]`, each < ngroups); `c / G` without act-order.
    pub g_idx: Vec<u32>,
}

/// The four tensors of a GPTQ layer, row-major, in checkpoint order and types.
#[derive(Debug, Clone, PartialEq)]
pub struct GptqPacked {
    /// `qweight`, `[cols·bits/32, rows]`.
    pub qweight: Vec<i32>,
    /// `qzeros`, `[ngroups, rows·bits/32]`.
    pub qzeros: Vec<i32>,
    /// `scales`, `[ngroups, rows]`.
    pub scales: Vec<f16>,
    /// `g_idx`, `[cols]`.
    pub g_idx: Vec<i32>,
}

/// Number of groups of `cols` input columns in groups of `group_size`: `ceil(cols / G)`.
pub fn num_groups(cols: usize, group_size: usize) -> usize {
    cols.div_ceil(group_size.max(1))
}

/// Shapes of `qweight`, `qzeros` and `scales` of a `[rows, cols]` weight (`g_idx` is `[cols]`);
/// meaningful for dimensions that [`check_dims`] accepts.
pub fn shapes(bits: u8, group_size: usize, rows: usize, cols: usize) -> [[usize; 2]; 3] {
    let b = bits as usize;
    let ng = num_groups(cols, group_size);
    [[cols * b / 32, rows], [ng, rows * b / 32], [ng, rows]]
}

/// Check bits, group size and shape of a `[rows, cols]` GPTQ weight: supported bits, non-empty,
/// `G > 0`, and both axes filling whole int32 words. Returns the number of groups.
pub fn check_dims(
    bits: u8,
    group_size: usize,
    rows: usize,
    cols: usize,
) -> Result<usize, FormatError> {
    if !GPTQ_BITS.contains(&bits) {
        return Err(FormatError::UnsupportedBits {
            format: FORMAT,
            bits,
            supported: GPTQ_BITS_TEXT,
        });
    }
    if rows == 0 || cols == 0 {
        return Err(FormatError::Empty { format: FORMAT });
    }
    if group_size == 0 {
        return Err(FormatError::GroupSize {
            format: FORMAT,
            rows,
            cols,
            group: 0,
        });
    }
    word_aligned(FORMAT, "input features", cols, bits)?;
    word_aligned(FORMAT, "output features", rows, bits)?;
    Ok(num_groups(cols, group_size))
}

/// Refuse `len` values of `bits` bits that do not fill whole int32 words.
pub(crate) fn word_aligned(
    format: &'static str,
    axis: &'static str,
    len: usize,
    bits: u8,
) -> Result<(), FormatError> {
    let multiple = 32 / gcd(32, bits as usize);
    if len.is_multiple_of(multiple) {
        Ok(())
    } else {
        Err(FormatError::NotWordAligned {
            format,
            axis,
            len,
            bits,
            multiple,
        })
    }
}

/// Greatest common divisor.
fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// An [`FormatError::Inconsistent`] of this format.
fn bad(what: String) -> FormatError {
    FormatError::Inconsistent {
        format: FORMAT,
        what,
    }
}

/// The constant with a 1 in every `bits`-bit field of a word (v1 offset of 2, 4, 8 bits).
fn v1_ones(bits: u8) -> u32 {
    (0..32 / bits as u32)
        .map(|k| 1u32 << (bits as u32 * k))
        .sum()
}

/// `codes` (each < 2^bits, `codes.len()·bits == 32·out.len()`) as the LSB-first bit stream cut
/// into little-endian 32-bit words.
fn to_words(codes: &[u8], bits: u8, out: &mut [u32]) {
    let bytes = int::pack(codes, bits);
    for (w, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
        *w = u32::from_le_bytes(b.try_into().expect("4 bytes"));
    }
}

/// The `out.len()` codes of `bits` bits in the words [`to_words`] writes.
fn from_words(words: &[u32], bits: u8, out: &mut [u8]) {
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    let codes = int::unpack(&bytes, bits, out.len()).expect("bits checked, words counted");
    out.copy_from_slice(&codes);
}

/// Whether `s` is a finite float32 that float16 holds exactly.
pub(crate) fn f16_exact(s: f32) -> bool {
    s.is_finite() && f16::from_f32(s).to_f32() == s
}

/// Check the lengths (`[rows, cols]` codes, `[rows, ngroups]` scales and zero points) and
/// ranges of unpacked codes, scales (finite, f16-exact) and zero points.
pub(crate) fn check_values(
    format: &'static str,
    bits: u8,
    [rows, cols, ng]: [usize; 3],
    codes: &[u8],
    scales: &[f32],
    zeros: &[u8],
) -> Result<(), FormatError> {
    let bad = |what: String| FormatError::Inconsistent { format, what };
    if codes.len() != rows * cols {
        return Err(bad(format!(
            "{} codes, expected {rows} × {cols} = {}",
            codes.len(),
            rows * cols
        )));
    }
    for (name, len) in [("scales", scales.len()), ("zero points", zeros.len())] {
        if len != rows * ng {
            return Err(bad(format!(
                "{len} {name}, expected {rows} rows × {ng} groups = {}",
                rows * ng
            )));
        }
    }
    let qmax = ((1u32 << bits) - 1) as u8;
    if let Some(i) = codes.iter().position(|&c| c > qmax) {
        return Err(bad(format!(
            "code {} at row {}, column {} exceeds {qmax} ({bits} bits)",
            codes[i],
            i / cols,
            i % cols
        )));
    }
    if let Some(i) = zeros.iter().position(|&z| z > qmax) {
        return Err(bad(format!(
            "zero point {} at row {}, group {} exceeds {qmax} ({bits} bits)",
            zeros[i],
            i / ng,
            i % ng
        )));
    }
    if let Some(i) = scales.iter().position(|&s| !f16_exact(s)) {
        return Err(bad(format!(
            "scale {} at row {}, group {} is not a finite float16 value",
            scales[i],
            i / ng,
            i % ng
        )));
    }
    Ok(())
}

/// An [`IntTensor`]'s codes with one scale and zero point per row and group.
pub(crate) struct Grouped {
    /// Input columns per group.
    pub(crate) group_size: usize,
    /// Codes, `[rows, cols]`.
    pub(crate) codes: Vec<u8>,
    /// Scales, `[rows, ngroups]`.
    pub(crate) scales: Vec<f32>,
    /// Zero points, `[rows, ngroups]`.
    pub(crate) zeros: Vec<u8>,
}

/// The [`Grouped`] form of an [`IntTensor`] whose scales float16 holds exactly, with symmetric
/// codes given the zero point 2^(bits−1) and per-tensor / per-channel granules one group per
/// row.
pub(crate) fn grouped_parts(format: &'static str, t: &IntTensor) -> Result<Grouped, FormatError> {
    t.check()?;
    let spec = t.spec;
    let (g, per_row) = match spec.granularity {
        Granularity::Tensor | Granularity::Channel => (t.cols, 1),
        Granularity::Group(g) => (g, t.cols / g),
    };
    let granule = |r: usize, j: usize| match spec.granularity {
        Granularity::Tensor => 0,
        _ => r * per_row + j,
    };
    let sc = t.scales_f32();
    let mut scales = Vec::with_capacity(t.rows * per_row);
    let mut zeros = Vec::with_capacity(t.rows * per_row);
    for r in 0..t.rows {
        for j in 0..per_row {
            let i = granule(r, j);
            let s = sc[i];
            if !f16_exact(s) {
                return Err(FormatError::Inconsistent {
                    format,
                    what: format!(
                        "scale {s} (row {r}, group {j}) is not exactly representable in \
                         float16, which this layout stores"
                    ),
                });
            }
            scales.push(s);
            zeros.push(match &t.zeros {
                Some(z) => z[i],
                None => spec.code_offset() as u8,
            });
        }
    }
    Ok(Grouped {
        group_size: g,
        codes: t.codes(),
        scales,
        zeros,
    })
}

/// Row-major `[rows, cols]` codes packed into [`IntTensor`] rows.
pub(crate) fn int_packed(codes: &[u8], bits: u8, cols: usize) -> Vec<u8> {
    let mut packed = Vec::with_capacity(codes.len() / cols * int::packed_len(cols, bits));
    for row in codes.chunks_exact(cols) {
        packed.extend(int::pack(row, bits));
    }
    packed
}

impl GptqParts {
    /// Number of groups, `ceil(cols / group_size)`.
    pub fn num_groups(&self) -> usize {
        num_groups(self.cols, self.group_size)
    }

    /// Check that the parts fit together and the layout can hold them: [`check_dims`], lengths,
    /// codes and zero points below 2^bits, `g_idx` within the groups, scales finite and exact in
    /// float16.
    pub fn check(&self) -> Result<(), FormatError> {
        let ng = check_dims(self.bits, self.group_size, self.rows, self.cols)?;
        check_values(
            FORMAT,
            self.bits,
            [self.rows, self.cols, ng],
            &self.codes,
            &self.scales,
            &self.zeros,
        )?;
        if self.g_idx.len() != self.cols {
            return Err(bad(format!(
                "g_idx has {} entries, expected one per input column ({})",
                self.g_idx.len(),
                self.cols
            )));
        }
        if let Some(c) = self.g_idx.iter().position(|&g| g as usize >= ng) {
            return Err(bad(format!(
                "g_idx[{c}] = {} is not a group (there are {ng})",
                self.g_idx[c]
            )));
        }
        Ok(())
    }

    /// Whether `g_idx` is the identity grouping `c / G` (no act-order permutation).
    pub fn has_trivial_g_idx(&self) -> bool {
        let g = self.group_size.max(1);
        self.g_idx
            .iter()
            .enumerate()
            .all(|(c, &i)| i as usize == c / g)
    }

    /// Whether the v1 (`gptq`) format holds every zero point for field-wise decoders too: no
    /// zero point is 0 (see the module doc).
    pub fn v1_exact(&self) -> bool {
        !self.zeros.contains(&0)
    }

    /// The four tensors of the layout, zero points stored as `format` says; errors if
    /// [`GptqParts::check`] does.
    pub fn pack(&self, format: CheckpointFormat) -> Result<GptqPacked, FormatError> {
        self.check()?;
        let (rows, cols, bits) = (self.rows, self.cols, self.bits);
        let ng = self.num_groups();
        // qweight: the words of row r's code stream go down column r.
        let wpr = cols * bits as usize / 32;
        let mut qweight = vec![0i32; wpr * rows];
        let mut words = vec![0u32; wpr];
        for (r, row) in self.codes.chunks_exact(cols).enumerate() {
            to_words(row, bits, &mut words);
            for (w, &v) in words.iter().enumerate() {
                qweight[w * rows + r] = v as i32;
            }
        }
        // qzeros: row g packs group g's zero points of all output rows.
        let zw = rows * bits as usize / 32;
        let mut qzeros = vec![0i32; ng * zw];
        let mut col = vec![0u8; rows];
        let mut zwords = vec![0u32; zw];
        let v1 = format == CheckpointFormat::Gptq;
        for g in 0..ng {
            for (r, z) in col.iter_mut().enumerate() {
                *z = self.zeros[r * ng + g];
                if v1 && bits == 3 {
                    // GPTQModel's logical shift: each field on its own, modulo 8.
                    *z = z.wrapping_sub(1) & 7;
                }
            }
            to_words(&col, bits, &mut zwords);
            for (w, &v) in zwords.iter().enumerate() {
                let v = if v1 && bits != 3 {
                    v.wrapping_sub(v1_ones(bits))
                } else {
                    v
                };
                qzeros[g * zw + w] = v as i32;
            }
        }
        let mut scales = vec![f16::ZERO; ng * rows];
        for r in 0..rows {
            for g in 0..ng {
                scales[g * rows + r] = f16::from_f32(self.scales[r * ng + g]);
            }
        }
        Ok(GptqPacked {
            qweight,
            qzeros,
            scales,
            g_idx: self.g_idx.iter().map(|&g| g as i32).collect(),
        })
    }

    /// Unpack the tensors of a `[rows, cols]` layer; errors on lengths that do not match the
    /// shape, `g_idx` entries outside the groups and non-finite scales.
    pub fn unpack(
        packed: &GptqPacked,
        bits: u8,
        group_size: usize,
        rows: usize,
        cols: usize,
        format: CheckpointFormat,
    ) -> Result<GptqParts, FormatError> {
        let ng = check_dims(bits, group_size, rows, cols)?;
        let [qw, qz, sc] = shapes(bits, group_size, rows, cols);
        for (name, len, shape) in [
            ("qweight", packed.qweight.len(), qw),
            ("qzeros", packed.qzeros.len(), qz),
            ("scales", packed.scales.len(), sc),
        ] {
            if len != shape[0] * shape[1] {
                return Err(bad(format!(
                    "{name} holds {len} values, expected {shape:?} = {}",
                    shape[0] * shape[1]
                )));
            }
        }
        if packed.g_idx.len() != cols {
            return Err(bad(format!(
                "g_idx holds {} values, expected {cols}",
                packed.g_idx.len()
            )));
        }
        if let Some(c) = packed.g_idx.iter().position(|&g| g < 0 || g as usize >= ng) {
            return Err(bad(format!(
                "g_idx[{c}] = {} is not a group (there are {ng})",
                packed.g_idx[c]
            )));
        }
        if let Some(i) = packed.scales.iter().position(|s| !s.is_finite()) {
            return Err(bad(format!(
                "scale {} at group {}, output {} is not finite",
                packed.scales[i],
                i / rows,
                i % rows
            )));
        }
        let wpr = qw[0];
        let mut codes = vec![0u8; rows * cols];
        let mut words = vec![0u32; wpr];
        for (r, row) in codes.chunks_exact_mut(cols).enumerate() {
            for (w, v) in words.iter_mut().enumerate() {
                *v = packed.qweight[w * rows + r] as u32;
            }
            from_words(&words, bits, row);
        }
        let zw = qz[1];
        let v1 = format == CheckpointFormat::Gptq;
        let mut zeros = vec![0u8; rows * ng];
        let mut zwords = vec![0u32; zw];
        let mut col = vec![0u8; rows];
        for g in 0..ng {
            for (w, v) in zwords.iter_mut().enumerate() {
                let q = packed.qzeros[g * zw + w] as u32;
                *v = if v1 && bits != 3 {
                    q.wrapping_add(v1_ones(bits))
                } else {
                    q
                };
            }
            from_words(&zwords, bits, &mut col);
            for (r, &z) in col.iter().enumerate() {
                zeros[r * ng + g] = if v1 && bits == 3 { (z + 1) & 7 } else { z };
            }
        }
        let mut scales = vec![0f32; rows * ng];
        for r in 0..rows {
            for g in 0..ng {
                scales[r * ng + g] = packed.scales[g * rows + r].to_f32();
            }
        }
        Ok(GptqParts {
            bits,
            group_size,
            rows,
            cols,
            codes,
            scales,
            zeros,
            g_idx: packed.g_idx.iter().map(|&g| g as u32).collect(),
        })
    }

    /// The same weight as an asymmetric [`IntTensor`] with float16 scales and groups of `G`
    /// (one group per row when there is a single group), when `g_idx` is trivial and `G`
    /// divides the row; `None` otherwise (act-order). Meant for parts that pass
    /// [`GptqParts::check`].
    pub fn to_int_tensor(&self) -> Option<IntTensor> {
        let ng = self.num_groups();
        let g = if ng == 1 { self.cols } else { self.group_size };
        if !self.has_trivial_g_idx() || !self.cols.is_multiple_of(g) {
            return None;
        }
        Some(IntTensor {
            spec: IntSpec::asymmetric(self.bits, Granularity::Group(g), FloatType::F16),
            rows: self.rows,
            cols: self.cols,
            packed: int_packed(&self.codes, self.bits, self.cols),
            scales: crate::float::encode(FloatType::F16, &self.scales),
            zeros: Some(self.zeros.clone()),
        })
    }

    /// An act-order weight (`g_idx` not `c / G`) as an [`IntTensor`] over its columns sorted
    /// by group (stable), with each sorted column's original index: possible when every group
    /// holds exactly `G` columns (as GPTQ's `desc_act` assigns them); `None` otherwise.
    pub fn to_act_order(&self) -> Option<(IntTensor, Vec<u32>)> {
        let g = self.group_size;
        let ng = self.num_groups();
        if ng < 2 || self.cols != ng * g {
            return None;
        }
        let mut perm: Vec<u32> = (0..self.cols as u32).collect();
        perm.sort_by_key(|&c| self.g_idx[c as usize]);
        if perm
            .iter()
            .enumerate()
            .any(|(j, &c)| self.g_idx[c as usize] as usize != j / g)
        {
            return None;
        }
        let codes: Vec<u8> = (0..self.rows)
            .flat_map(|r| perm.iter().map(move |&c| (r, c as usize)))
            .map(|(r, c)| self.codes[r * self.cols + c])
            .collect();
        Some((
            IntTensor {
                spec: IntSpec::asymmetric(self.bits, Granularity::Group(g), FloatType::F16),
                rows: self.rows,
                cols: self.cols,
                packed: int_packed(&codes, self.bits, self.cols),
                scales: crate::float::encode(FloatType::F16, &self.scales),
                zeros: Some(self.zeros.clone()),
            },
            perm,
        ))
    }

    /// The parts of an [`IntTensor`] with 2, 3, 4 or 8 bits and scales float16 holds exactly
    /// (symmetric ones get zero points 2^(bits−1); per-tensor and per-channel ones one group
    /// per row); `g_idx` trivial. Errors if the tensor or the layout's shape rules refuse.
    pub fn from_int_tensor(t: &IntTensor) -> Result<GptqParts, FormatError> {
        if !GPTQ_BITS.contains(&t.spec.bits) {
            return Err(FormatError::UnsupportedBits {
                format: FORMAT,
                bits: t.spec.bits,
                supported: GPTQ_BITS_TEXT,
            });
        }
        let g = grouped_parts(FORMAT, t)?;
        let parts = GptqParts {
            bits: t.spec.bits,
            group_size: g.group_size,
            rows: t.rows,
            cols: t.cols,
            codes: g.codes,
            scales: g.scales,
            zeros: g.zeros,
            g_idx: (0..t.cols).map(|c| (c / g.group_size) as u32).collect(),
        };
        parts.check()?;
        Ok(parts)
    }

    /// The weight in float32, row-major `[rows, cols]`:
    /// `(code − zero[r][g_idx[c]]) · scale[r][g_idx[c]]`. Panics on parts that fail
    /// [`GptqParts::check`].
    pub fn dequantize(&self) -> Vec<f32> {
        let ng = self.num_groups();
        let mut out = vec![0f32; self.rows * self.cols];
        for (r, (o, c)) in out
            .chunks_exact_mut(self.cols)
            .zip(self.codes.chunks_exact(self.cols))
            .enumerate()
        {
            let (s, z) = (
                &self.scales[r * ng..(r + 1) * ng],
                &self.zeros[r * ng..(r + 1) * ng],
            );
            for ((o, &c), &g) in o.iter_mut().zip(c).zip(&self.g_idx) {
                let g = g as usize;
                *o = (c as i32 - z[g] as i32) as f32 * s[g];
            }
        }
        out
    }

    /// Bytes the checkpoint stores: `qweight`, `qzeros`, `scales` (2 bytes each) and `g_idx`
    /// (4 bytes each).
    pub fn stored_bytes(&self) -> usize {
        let [qw, qz, sc] = shapes(self.bits, self.group_size, self.rows, self.cols);
        4 * (qw[0] * qw[1] + qz[0] * qz[1]) + 2 * sc[0] * sc[1] + 4 * self.cols
    }
}
