//! Products with weights kept quantized: `y = x Wᵀ` where `W` stays packed between calls.
//!
//! Weight-only formats (integers, NF4/FP4): each call dequantizes `W` block by block (16
//! output rows per task, all threads) straight into a reused, transposed float32 scratch of
//! one layer, then runs the same GEMM as the dense path. The result is bit-identical to a
//! dense model holding the dequantized weights, and memory holds the packed weights plus one
//! layer's float32 weight at a time.
//!
//! Integer weights of every source share one form, [`IntRows`]: codes (4-bit nibbles; 5- and
//! 6-bit ones as nibbles plus high-bit planes; bytes), a scale per granule (float16 where
//! exact), zero points or mins, or a 16-entry code table (NF4/FP4, GGUF's IQ4). shrink's own
//! integers, HQQ, GPTQ (act-order through a column permutation) and AWQ, bitsandbytes NF4/FP4
//! and the GGUF types Q4_0 … Q8_0, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS all become it losslessly.
//!
//! When [`crate::runtime::int8_activations`] is on (the binary's `generate` and `bench`, `eval
//! --int8-activations`): each token's activations are rounded to int8 blocks of 32 and
//! multiplied against the codes in integers, never materialising a float row — on CPUs with
//! AVX-512 VNNI against the codes repacked once into 16-row panels ([`q8_gemm`], as ggml's
//! repacked GEMM), for prompts on all threads and for a few tokens (generation) on the
//! [`crate::team`] of threads that spin between a token's products; elsewhere a few tokens
//! against the rows as stored ([`q8`], as ggml's `vec_dot`, AVX2) and many in float. Off,
//! every product equals the float32 product with the dequantized weights (what `eval`
//! measures).
//!
//! Int8 weights with int8 activations (LLM.int8(), dynamic int8): activations are quantized
//! per token at run time and multiplied in integers ([`crate::int8_gemm`]); LLM.int8() sends
//! the input features holding outliers through a float product instead, as bitsandbytes does.

use std::cell::RefCell;

use candle_core::Tensor;
use rayon::prelude::*;
use shrink_formats::hqq_layout::HqqTensor;
use shrink_formats::int::{Granularity, IntTensor};
use shrink_formats::nf4::Nf4Tensor;
use shrink_formats::{float, int8_rowwise::RowwiseInt8};
use shrink_io::quantized::Quantized;

use crate::int8_gemm::{self, PackedInt8};

#[cfg(target_arch = "x86_64")]
mod avx512;
pub mod q8;
pub mod q8_gemm;
mod sparse;

use sparse::SparseRows;

/// Output rows dequantized per task (one 64-byte line of the transposed scratch per input).
const ROWS: usize = 16;
/// Most float32 values of scratch per GEMM (512 KiB): weights go in column chunks of this
/// many values, so the scratch is written and read back within L2. On SmolLM2's MLP shapes
/// (512 tokens, one thread) quantized products then run within 2 % of the dense float32 GEMM
/// (`cargo bench --bench qmatmul`, BENCHMARKS.md); 2^19 and 2^21 measured 3–10 % slower than
/// 2^17 (with another job on the machine).
const CHUNK_VALUES: usize = 1 << 17;

/// A quantized weight `[n, k]` in the form its dequantizer reads fastest.
pub struct QuantMatmul {
    /// Output features.
    n: usize,
    /// Input features.
    k: usize,
    /// Bytes the packed form holds.
    resident: usize,
    kind: Kind,
    /// GPTQ act-order: the kind holds the input columns in this order (column `j` is the
    /// weight's column `perm[j]`); inputs are gathered into it before each product.
    perm: Option<Vec<u32>>,
    /// Integer codes repacked for the int8 GEMM ([`q8_gemm`]), built by the first product.
    panels: std::sync::OnceLock<Option<q8_gemm::Panels>>,
}

enum Kind {
    /// Integers: `(code − zero) · scale`, one (scale, zero) per granule of `glen` values.
    Int(IntRows),
    /// NF4 / FP4: `code[index] · absmax`, absmax per block of the flattened weight.
    Nf4 {
        packed: Vec<u8>,
        absmax: Vec<f32>,
        block: usize,
        code: [f32; 16],
    },
    /// Int8 weights multiplied with int8 activations: `scale` per output row (bitsandbytes'
    /// SCB for LLM.int8(), the dequantization scale for dynamic int8).
    Int8 {
        w: PackedInt8,
        scale: Vec<f32>,
        act: Activations,
    },
    /// Float32 rows mostly zero (a pruned weight), kept as their non-zeros and bitmasks.
    Sparse(SparseRows),
    /// Float32 rows shared with another tensor (a tied embedding used as the LM head), so
    /// the head needs no transposed copy of its own; with the rows as the float16 / bfloat16
    /// the checkpoint stores them in (exactly), which a few tokens read instead: half the bytes.
    Rows(Tensor, Option<HalfRows>),
}

/// Rows stored as 16-bit floats, each value exactly the float32 it stands for.
pub enum HalfRows {
    F16(Vec<half::f16>),
    Bf16(Vec<half::bf16>),
}

/// Integer codes with their decoded scales, zero points and mins: value =
/// `(code − zero)·scale + min` per granule.
pub(crate) struct IntRows {
    pub(crate) bits: u8,
    /// Bytes of `packed` per row.
    pub(crate) row_bytes: usize,
    /// 4-bit codes (and the low 4 bits of 5-/6-bit codes held as planes): two per byte, the
    /// low nibble first; 8-bit: one per byte; other widths: LSB-first bit packing per row.
    pub(crate) packed: Vec<u8>,
    /// 5- and 6-bit codes held as planes (rows a multiple of 64 values): per row, per step of
    /// 64 values, `bits − 4` masks whose bit `p` is bit `4 + i` of the value at kernel position
    /// `p` ([`kernel_position`]); empty otherwise.
    pub(crate) high: Vec<u64>,
    /// Values per granule.
    pub(crate) glen: usize,
    /// Granules per row (0: one for the whole tensor).
    pub(crate) per_row: usize,
    pub(crate) scales: Floats,
    /// Zero points (asymmetric; integers, or HQQ's float zeros), one per granule; empty when
    /// symmetric.
    pub(crate) zeros: Vec<f32>,
    /// Mins added after scaling (GGUF's Q4_1, Q5_1, Q4_K, Q5_K), one per granule; empty when
    /// none.
    pub(crate) mins: Floats,
    /// With zero points, `min − scale·zero` per granule (the mins 0 when none), what the
    /// int8 kernels add per granule (`bias · Σ d_b·q`); empty without zero points (the
    /// kernels then add the mins).
    pub(crate) zbias: Floats,
    /// The zero of symmetric codes (stored with an offset), used when `zeros` is empty.
    pub(crate) offset: f32,
    /// 4-bit codes indexing a table of values (NF4 / FP4): value = `table[code] · scale`.
    pub(crate) table: Option<Box<Table>>,
}

/// A 16-entry code table (NF4 / FP4, GGUF's IQ4) and its integer form for the int8 kernels.
pub(crate) struct Table {
    /// The values, as the format defines them (what products of many tokens use, exactly).
    pub(crate) values: [f32; 16],
    /// `v + 128` for integer values `v` in −127..=127 (IQ4: exact), else `round(127 · v) + 128`
    /// for values in [−1, 1] (NF4 / FP4: each weight within 1/254 of its block's absmax): the
    /// unsigned codes the integer kernels multiply, with the offset 128 removed as a symmetric
    /// zero and the result scaled by [`Self::int_scale`].
    pub(crate) ints: [u8; 16],
    /// 1 for an exact integer table, 1/127 for a scaled one.
    pub(crate) int_scale: f32,
}

impl Table {
    /// The table of `values`: integers in −127..=127 held exactly, else values in [−1, 1]
    /// held as multiples of 1/127.
    pub(crate) fn new(values: [f32; 16]) -> Self {
        let integers = values
            .iter()
            .all(|&v| v.fract() == 0.0 && (-127.0..=127.0).contains(&v));
        let int_scale = if integers { 1.0 } else { 1.0 / 127.0 };
        let ints = std::array::from_fn(|i| {
            ((values[i] / int_scale).round().clamp(-127.0, 127.0) as i32 + 128) as u8
        });
        Table {
            values,
            ints,
            int_scale,
        }
    }
}

/// The integer table's zero (the offset of [`Table::ints`]).
pub(crate) const TABLE_OFFSET: f32 = 128.0;

/// Per-granule floats (scales, mins), held as float16 when every one of them is a float16
/// exactly (GGUF's legacy types, shrink's float16 scales) — half the bytes a token reads — else
/// float32. Followed by [`Floats::PAD`] zeros, so the kernels may load a few past the end.
pub(crate) enum Floats {
    F32(Vec<f32>),
    F16(Vec<half::f16>),
}

impl Floats {
    /// Zeros after the values (non-empty ones).
    pub(crate) const PAD: usize = 16;

    /// `v` in the narrowest form that holds it exactly.
    pub(crate) fn new(mut v: Vec<f32>) -> Self {
        if v.is_empty() {
            return Floats::F32(v);
        }
        let half = |s: f32| half::f16::from_f32(s);
        if v.iter().all(|&s| half(s).to_f32().to_bits() == s.to_bits()) {
            let mut h: Vec<half::f16> = v.iter().map(|&s| half(s)).collect();
            h.resize(h.len() + Self::PAD, half::f16::ZERO);
            return Floats::F16(h);
        }
        v.resize(v.len() + Self::PAD, 0.0);
        Floats::F32(v)
    }

    /// Value `i`.
    #[inline(always)]
    pub(crate) fn get(&self, i: usize) -> f32 {
        match self {
            Floats::F32(v) => v[i],
            Floats::F16(v) => f16_to_f32(v[i].to_bits()),
        }
    }

    /// Values held (the padding left out).
    pub(crate) fn len(&self) -> usize {
        match self {
            Floats::F32(v) => v.len().saturating_sub(Self::PAD),
            Floats::F16(v) => v.len().saturating_sub(Self::PAD),
        }
    }

    /// Whether there are none.
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of the values (the padding left out).
    pub(crate) fn bytes(&self) -> usize {
        match self {
            Floats::F32(_) => 4 * self.len(),
            Floats::F16(_) => 2 * self.len(),
        }
    }

    /// `Σ_i v[g0 + i] · w_i · a_i` over `a`, with `w` all ones when `None`.
    #[inline(always)]
    pub(crate) fn dot(&self, g0: usize, w: Option<&[f32]>, a: &[f32]) -> f32 {
        fn go(v: impl Iterator<Item = f32>, w: Option<&[f32]>, a: &[f32]) -> f32 {
            match w {
                Some(w) => v.zip(w).zip(a).map(|((v, w), a)| v * w * a).sum(),
                None => v.zip(a).map(|(v, a)| v * a).sum(),
            }
        }
        match self {
            Floats::F32(v) => go(v[g0..g0 + a.len()].iter().copied(), w, a),
            Floats::F16(v) => go(
                v[g0..g0 + a.len()].iter().map(|h| f16_to_f32(h.to_bits())),
                w,
                a,
            ),
        }
    }
}

/// A float16's value (exact), inlined: `half`'s conversion is a call that detects F16C, which
/// per granule cost the dequantizer and the kernels several percent.
#[inline(always)]
pub(crate) fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h & 0x8000) as u32) << 16;
    let exp = ((h >> 10) & 0x1f) as u32;
    let man = (h & 0x3ff) as u32;
    match exp {
        0 => {
            // Zero or subnormal: man · 2⁻²⁴, exactly.
            let v = man as f32 * (1.0 / 16_777_216.0);
            if sign != 0 {
                -v
            } else {
                v
            }
        }
        31 => f32::from_bits(sign | 0x7f80_0000 | (man << 13)),
        _ => f32::from_bits(sign | ((exp + 112) << 23) | (man << 13)),
    }
}

/// Where value `v` (0..64) of a 64-value step sits in the kernels' order: even values in the
/// first 32 positions, odd ones in the last 32 (the low and high nibbles of 32 packed bytes).
pub(crate) fn kernel_position(v: usize) -> usize {
    if v.is_multiple_of(2) {
        v / 2
    } else {
        32 + v / 2
    }
}

impl IntRows {
    /// Rows of `codes` (one byte per value, `rows × cols`) with one scale (zero, min) per
    /// granule of `glen` values (`per_row` per row, 0 for one in all): 4-bit codes packed in
    /// nibbles, 5-/6-bit ones as nibbles plus high-bit planes when rows are a multiple of 64
    /// values, others LSB-first.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn from_codes(
        bits: u8,
        codes: &[u8],
        rows: usize,
        cols: usize,
        glen: usize,
        per_row: usize,
        scales: Vec<f32>,
        zeros: Vec<f32>,
        mins: Vec<f32>,
        offset: f32,
    ) -> Self {
        let planes = matches!(bits, 5 | 6) && cols.is_multiple_of(64);
        let (packed, row_bytes, high) = if bits == 8 {
            (codes.to_vec(), cols, Vec::new())
        } else if bits == 4 || planes {
            let packed = codes
                .par_chunks(cols)
                .flat_map_iter(|row| {
                    row.chunks(2)
                        .map(|p| (p[0] & 15) | (p.get(1).unwrap_or(&0) & 15) << 4)
                })
                .collect();
            let high = if planes {
                codes
                    .par_chunks(64)
                    .flat_map_iter(|step| {
                        (0..bits as usize - 4).map(move |i| {
                            step.iter().enumerate().fold(0u64, |m, (v, &c)| {
                                m | (((c >> (4 + i)) & 1) as u64) << kernel_position(v)
                            })
                        })
                    })
                    .collect()
            } else {
                Vec::new()
            };
            (packed, cols.div_ceil(2), high)
        } else {
            let packed = codes
                .chunks(cols)
                .flat_map(|row| shrink_formats::int::pack(row, bits))
                .collect::<Vec<u8>>();
            (packed, (cols * bits as usize).div_ceil(8), Vec::new())
        };
        debug_assert_eq!(packed.len(), rows * row_bytes);
        IntRows {
            bits,
            row_bytes,
            packed,
            high,
            glen,
            per_row,
            zbias: zero_bias(&scales, &zeros, &mins),
            scales: Floats::new(scales),
            zeros,
            mins: Floats::new(mins),
            offset,
            table: None,
        }
    }

    /// What the int8 kernels add per granule after the integer sums, times `Σ d_b·q` of the
    /// granule's activations: `min − scale·zero` with zero points, else the mins (`None`
    /// when neither: symmetric codes, whose offset the VNNI kernel folds into its sums).
    pub(crate) fn bias(&self) -> Option<&Floats> {
        if !self.zeros.is_empty() {
            Some(&self.zbias)
        } else if !self.mins.is_empty() {
            Some(&self.mins)
        } else {
            None
        }
    }

    /// 4-bit `codes` (one byte each, `rows × cols`) indexing `values`, one scale per granule of
    /// `glen` values (a divisor of `cols`): value = `values[code] · scale` (NF4 / FP4 rows).
    pub(crate) fn from_table(
        codes: &[u8],
        rows: usize,
        cols: usize,
        glen: usize,
        scales: Vec<f32>,
        values: [f32; 16],
    ) -> Self {
        let mut t = IntRows::from_codes(
            4,
            codes,
            rows,
            cols,
            glen,
            cols / glen,
            scales,
            Vec::new(),
            Vec::new(),
            TABLE_OFFSET,
        );
        t.table = Some(Box::new(Table::new(values)));
        t
    }

    /// A GGUF tensor's codes ([`shrink_formats::ggml::to_codes`]) as rows.
    pub(crate) fn from_ggml(c: shrink_formats::ggml::GgmlCodes, rows: usize, cols: usize) -> Self {
        if let Some(values) = c.table {
            return IntRows::from_table(&c.codes, rows, cols, c.granule, c.scales, values);
        }
        IntRows::from_codes(
            c.bits,
            &c.codes,
            rows,
            cols,
            c.granule,
            cols / c.granule,
            c.scales,
            Vec::new(),
            c.mins,
            c.offset as f32,
        )
    }

    /// Index of the granule holding column `c` of row `r`.
    #[inline(always)]
    pub(crate) fn granule_index(&self, r: usize, c: usize) -> usize {
        if self.per_row == 0 {
            0
        } else {
            r * self.per_row + c / self.glen
        }
    }

    /// Scale and zero of the granule holding column `c` of row `r`.
    #[inline(always)]
    pub(crate) fn granule(&self, r: usize, c: usize) -> (f32, f32) {
        let g = self.granule_index(r, c);
        (
            self.scales.get(g),
            self.zeros.get(g).copied().unwrap_or(self.offset),
        )
    }

    /// The min of granule `g` (0 when the codes have none).
    #[inline(always)]
    pub(crate) fn min(&self, g: usize) -> f32 {
        if self.mins.is_empty() {
            0.0
        } else {
            self.mins.get(g)
        }
    }

    /// Whether 5-/6-bit codes are held as nibbles plus high-bit planes.
    pub(crate) fn planes(&self) -> bool {
        !self.high.is_empty()
    }

    /// High-bit masks per row (planes only).
    pub(crate) fn high_per_row(&self, k: usize) -> usize {
        k / 64 * (self.bits as usize - 4)
    }

    /// The codes of row `r` (`k` values) into `out`: [`Self::code`] for each, with 4- and
    /// 8-bit rows read straight from their bytes.
    pub(crate) fn row_codes(&self, r: usize, k: usize, out: &mut [u8]) {
        let row = &self.packed[r * self.row_bytes..(r + 1) * self.row_bytes];
        match self.bits {
            8 => out[..k].copy_from_slice(&row[..k]),
            4 if !self.planes() => {
                for (pair, &byte) in out[..k].chunks_mut(2).zip(row) {
                    pair[0] = byte & 15;
                    if let Some(high) = pair.get_mut(1) {
                        *high = byte >> 4;
                    }
                }
            }
            _ => {
                for (c, o) in out[..k].iter_mut().enumerate() {
                    *o = self.code(r, c, k);
                }
            }
        }
    }

    /// The code of row `r`, column `c` (any layout; `k` values per row).
    pub(crate) fn code(&self, r: usize, c: usize, k: usize) -> u8 {
        let row = &self.packed[r * self.row_bytes..(r + 1) * self.row_bytes];
        match self.bits {
            8 => row[c],
            4 => (row[c / 2] >> (4 * (c % 2))) & 15,
            _ if self.planes() => {
                let low = (row[c / 2] >> (4 * (c % 2))) & 15;
                let per = self.bits as usize - 4;
                let masks = &self.high[r * self.high_per_row(k) + c / 64 * per..][..per];
                let p = kernel_position(c % 64);
                masks
                    .iter()
                    .enumerate()
                    .fold(low, |v, (i, m)| v | ((((m >> p) & 1) as u8) << (4 + i)))
            }
            bits => {
                let bit = c * bits as usize;
                let lo = row[bit / 8] as u32;
                let hi = row.get(bit / 8 + 1).copied().unwrap_or(0) as u32;
                ((((hi << 8) | lo) >> (bit % 8)) & ((1u32 << bits) - 1)) as u8
            }
        }
    }
}

/// How an int8 product quantizes its input.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Activations {
    /// bitsandbytes LLM.int8(): float16-rounded input, features with an |x| ≥ threshold go
    /// through a float product (threshold 0: none), the rest int8 per token by row absmax.
    LlmInt8 { threshold: f32 },
    /// Symmetric int8 per token: scale = row absmax / 127.
    PerToken,
}

/// Token counts up to which [`QuantMatmul::matmul`] dots dequantized rows instead of a GEMM.
const FEW_TOKENS: usize = 8;

/// bitsandbytes' 1/(127·127), the dequantization constant of its int8 product.
const LLM_INT8_ALPHA: f32 = 6.200124e-05;

thread_local! {
    /// The transposed float32 weight of the layer being multiplied (reused across calls).
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

impl QuantMatmul {
    /// Prepare a quantized weight for products (scales decoded to float32 once).
    pub fn new(q: Quantized) -> Self {
        let resident = q.stored_bytes();
        let (n, k) = q.shape();
        let mut perm = None;
        let kind = match q {
            Quantized::Int(t) => int_kind(t),
            Quantized::ActOrder { t, perm: p, .. } => {
                perm = Some(p);
                int_kind(t)
            }
            Quantized::W8A8(t) => w8a8_kind(t),
            Quantized::Int8Row(RowwiseInt8 { q, scb, rows, cols }, threshold) => Kind::Int8 {
                w: PackedInt8::pack(&q, rows, cols),
                scale: scb,
                act: Activations::LlmInt8 { threshold },
            },
            Quantized::Nf4(t, _) => nf4_kind(t, k),
            Quantized::Hqq(t) => hqq_kind(t),
            Quantized::Dense {
                values, rows, cols, ..
            } => Kind::Rows(
                Tensor::from_vec(values, (rows, cols), &candle_core::Device::Cpu)
                    .expect("values hold rows · cols floats"),
                None,
            ),
        };
        QuantMatmul {
            n,
            k,
            resident,
            kind,
            perm,
            panels: Default::default(),
        }
    }

    /// A GGUF tensor `[n, k]` held as its integer codes ([`shrink_formats::ggml::to_codes`],
    /// lossless), `stored` its bytes in the file: products equal the dequantized weight's.
    pub fn ggml(codes: shrink_formats::ggml::GgmlCodes, n: usize, k: usize, stored: usize) -> Self {
        QuantMatmul {
            n,
            k,
            resident: stored,
            kind: Kind::Int(IntRows::from_ggml(codes, n, k)),
            perm: None,
            panels: Default::default(),
        }
    }

    /// A product with a float32 weight `[n, k]` read in place (no transposed copy).
    pub fn rows(w: Tensor) -> candle_core::Result<Self> {
        let (n, k) = w.dims2()?;
        let w = w.contiguous()?;
        Ok(QuantMatmul {
            n,
            k,
            resident: 0,
            kind: Kind::Rows(w, None),
            perm: None,
            panels: Default::default(),
        })
    }

    /// [`Self::rows`] with the rows also held as the 16-bit floats `half` (`[n, k]`, each
    /// exactly the float32 value): products of a few tokens read those, half the bytes.
    pub fn rows_half(w: Tensor, half: HalfRows) -> candle_core::Result<Self> {
        let (n, k) = w.dims2()?;
        let len = match &half {
            HalfRows::F16(v) => v.len(),
            HalfRows::Bf16(v) => v.len(),
        };
        if len != n * k {
            candle_core::bail!("rows_half: {len} values for [{n}, {k}]");
        }
        Ok(QuantMatmul {
            n,
            k,
            resident: 2 * n * k,
            kind: Kind::Rows(w.contiguous()?, Some(half)),
            perm: None,
            panels: Default::default(),
        })
    }

    /// A float32 weight `[n, k]` held sparse — its non-zero values and a bit per weight — when
    /// `k` is a multiple of 16 (`None` otherwise). Products equal the dense weight's (the same
    /// GEMM over the expanded rows for many tokens; a bitmask dot product per row for a few).
    pub fn sparse(w: &[f32], n: usize, k: usize) -> Option<Self> {
        let s = SparseRows::new(w, n, k)?;
        Some(QuantMatmul {
            n,
            k,
            resident: s.bytes(),
            kind: Kind::Sparse(s),
            perm: None,
            panels: Default::default(),
        })
    }

    /// Whether the weight is quantized (not float rows, in place or sparse).
    pub fn is_quantized(&self) -> bool {
        !matches!(self.kind, Kind::Rows(..) | Kind::Sparse(_))
    }

    /// (out_features, in_features).
    pub fn shape(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    /// Bytes of the quantized values held (codes, scales, zeros).
    pub fn resident_bytes(&self) -> usize {
        self.resident
    }

    /// Whether a product over `m` tokens rounds the activations to int8 blocks of 32 instead of
    /// multiplying in float32: with int8 activations on ([`crate::runtime::int8_activations`])
    /// and integer codes, any number of tokens against panels repacked for the VNNI GEMM
    /// ([`q8_gemm`]); on CPUs without VNNI, a few tokens against the rows as stored ([`q8`],
    /// AVX2) and many in float.
    pub fn rounds_activations(&self, m: usize) -> bool {
        m > 0 && (self.q8_many().is_some() || (m <= FEW_TOKENS && self.q8().is_some()))
    }

    /// The panels (built here on first use) and kernel of [`Self::q8_many`], when it applies.
    fn panels_q8(&self) -> Option<(&q8_gemm::Panels, q8::Int8Kernel)> {
        let (t, kernel) = self.q8_many()?;
        let p = self
            .panels
            .get_or_init(|| q8_gemm::Panels::new(t, self.n, self.k))
            .as_ref()?;
        Some((p, kernel))
    }

    /// The integer rows and kernel a many-token product multiplies with int8 activations
    /// ([`q8_gemm`]), when it does.
    fn q8_many(&self) -> Option<(&IntRows, q8::Int8Kernel)> {
        match (&self.kind, q8_kernel().and_then(q8_gemm::kernel_for)) {
            (Kind::Int(t), Some(kernel)) if q8_gemm::fits(t, self.k) => Some((t, kernel)),
            _ => None,
        }
    }

    /// The integer rows and kernel a product multiplies with int8 activations, when it does.
    fn q8(&self) -> Option<(&IntRows, q8::Int8Kernel)> {
        match (&self.kind, q8_kernel()) {
            (Kind::Int(t), Some(kernel)) if q8::fits(t, self.k) => Some((t, kernel)),
            _ => None,
        }
    }

    /// Bytes one product reads from memory, as the weight is held here: the packed codes with
    /// their scales and zeros decoded to float32, the sparse values and masks, or the float32
    /// rows (a tied head, HQQ along axis 0, dense values). Not [`Self::resident_bytes`], which
    /// counts the stored form.
    pub fn bytes_read(&self) -> usize {
        if let Some((t, _)) = self.q8_many() {
            if let Some(b) = q8_gemm::Panels::bytes_for(t, self.n, self.k) {
                return b;
            }
        }
        match &self.kind {
            Kind::Int(r) => {
                r.packed.len()
                    + 8 * r.high.len()
                    + r.scales.bytes()
                    + 4 * r.zeros.len()
                    + r.mins.bytes()
            }
            Kind::Nf4 { packed, absmax, .. } => packed.len() + 4 * absmax.len(),
            Kind::Int8 { w, scale, .. } => w.resident_bytes() + 4 * scale.len(),
            Kind::Sparse(s) => s.bytes(),
            Kind::Rows(_, None) => self.n * self.k * 4,
            Kind::Rows(_, Some(_)) => self.n * self.k * 2,
        }
    }

    /// The weight dequantized and transposed: `out[c · n + r] = W[r, c]`.
    pub fn dequantize_t_into(&self, out: &mut [f32]) {
        self.dequantize_t_rows(0, self.n, out, true);
        if let Some(perm) = &self.perm {
            // Held column j is the weight's column perm[j]: rows of the transposed output.
            let held = out.to_vec();
            for (j, &c) in perm.iter().enumerate() {
                out[c as usize * self.n..(c as usize + 1) * self.n]
                    .copy_from_slice(&held[j * self.n..(j + 1) * self.n]);
            }
        }
    }

    /// Rows `r0..r1` dequantized and transposed: `out[c · (r1 − r0) + (r − r0)] = W[r, c]`.
    fn dequantize_t_rows(&self, r0: usize, r1: usize, out: &mut [f32], parallel: bool) {
        let k = self.k;
        let width = r1 - r0;
        assert_eq!(out.len(), width * k, "dequantize_t_rows: length");
        #[cfg(target_arch = "x86_64")]
        let fast = self
            .avx512_rows()
            .filter(|r| avx512::available() && r.fits(k));
        let base = SendPtr(out.as_mut_ptr());
        let block = |rows: &mut Vec<f32>, b: usize| {
            let b0 = b * ROWS;
            let count = ROWS.min(width - b0);
            #[cfg(target_arch = "x86_64")]
            if let (Some(fast), ROWS) = (&fast, count) {
                // SAFETY: AVX-512 was detected and the layout fits (`fits`); block b owns
                // columns b0..b0+16 of every one of the k rows of `out` ([k, width]).
                unsafe { avx512::block16(fast, k, r0 + b0, base.get().add(b0), width) };
                return;
            }
            for i in 0..count {
                self.dequantize_held_row(r0 + b0 + i, &mut rows[i * k..(i + 1) * k]);
            }
            let src = &rows[..count * k];
            // Scatter the block transposed: `count` contiguous values per input feature.
            for c in 0..k {
                // SAFETY: block b owns columns b0..b0+count of every row of `out`, which
                // has width·k elements; blocks are disjoint, so no two tasks write one element.
                let dst = unsafe {
                    std::slice::from_raw_parts_mut(base.get().add(c * width + b0), count)
                };
                for (i, d) in dst.iter_mut().enumerate() {
                    *d = src[i * k + c];
                }
            }
        };
        let blocks = width.div_ceil(ROWS);
        if parallel {
            (0..blocks)
                .into_par_iter()
                .for_each_init(|| vec![0f32; ROWS * k], block);
        } else {
            let mut rows = vec![0f32; ROWS * k];
            (0..blocks).for_each(|b| block(&mut rows, b));
        }
    }

    /// The weight as the AVX-512 block dequantizer reads it, for the formats it handles.
    #[cfg(target_arch = "x86_64")]
    fn avx512_rows(&self) -> Option<avx512::Rows<'_>> {
        match &self.kind {
            Kind::Int(t) if t.bits == 4 || t.bits == 8 || t.planes() => Some(avx512::Rows::Int(t)),
            Kind::Nf4 {
                packed,
                absmax,
                block,
                code,
            } => Some(avx512::Rows::Nf4 {
                packed,
                k: self.k,
                absmax,
                block: *block,
                code,
            }),
            _ => None,
        }
    }

    /// Row `r` of the weight dequantized into `out` (`k` values).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        if let Some(perm) = &self.perm {
            let mut held = vec![0f32; self.k];
            self.dequantize_held_row(r, &mut held);
            for (&c, &v) in perm.iter().zip(&held) {
                out[c as usize] = v;
            }
            return;
        }
        self.dequantize_held_row(r, out);
    }

    /// Row `r` as held (columns in `perm`'s order for act-order weights).
    fn dequantize_held_row(&self, r: usize, out: &mut [f32]) {
        let k = self.k;
        match &self.kind {
            Kind::Int(t) => {
                let IntRows {
                    bits,
                    row_bytes,
                    packed,
                    glen,
                    ..
                } = t;
                let bytes = &packed[r * row_bytes..(r + 1) * row_bytes];
                let with_min = !t.mins.is_empty();
                let granule = |j: usize| {
                    let g = t.granule_index(r, j * glen);
                    let (s, z) = t.granule(r, j * glen);
                    (s, z, t.min(g))
                };
                match bits {
                    8 => {
                        for (j, (o, c)) in
                            out.chunks_mut(*glen).zip(bytes.chunks(*glen)).enumerate()
                        {
                            let (s, z, m) = granule(j);
                            for (o, &c) in o.iter_mut().zip(c) {
                                *o = (c as f32 - z) * s;
                                if with_min {
                                    *o += m;
                                }
                            }
                        }
                    }
                    4 if glen.is_multiple_of(2) => {
                        for (j, (o, c)) in out
                            .chunks_mut(*glen)
                            .zip(bytes.chunks(glen / 2))
                            .enumerate()
                        {
                            let (s, z, m) = granule(j);
                            // The granule's 16 possible values, then one lookup per code.
                            let t: [f32; 16] = std::array::from_fn(|c| {
                                if let Some(tab) = &t.table {
                                    return tab.values[c] * s;
                                }
                                let v = (c as f32 - z) * s;
                                if with_min {
                                    v + m
                                } else {
                                    v
                                }
                            });
                            lookup_nibbles(&t, c, o, false);
                        }
                    }
                    _ => {
                        for (i, o) in out.iter_mut().enumerate() {
                            let (s, z) = t.granule(r, i);
                            *o = (t.code(r, i, k) as f32 - z) * s;
                            if with_min {
                                *o += t.min(t.granule_index(r, i));
                            }
                        }
                    }
                }
            }
            Kind::Nf4 {
                packed,
                absmax,
                block,
                code,
            } => {
                // Element e of the flattened weight: byte e/2, high nibble first.
                let e0 = r * k;
                if e0.is_multiple_of(2) && block.is_multiple_of(2) {
                    // Whole bytes, one absmax per run of the row inside one block.
                    let mut i = 0;
                    while i < k {
                        let e = e0 + i;
                        let end = ((e / block + 1) * block - e0).min(k);
                        let a = absmax[e / block];
                        let bytes = &packed[e / 2..(e0 + end).div_ceil(2)];
                        let t: [f32; 16] = std::array::from_fn(|c| code[c] * a);
                        lookup_nibbles(&t, bytes, &mut out[i..end], true);
                        i = end;
                    }
                    return;
                }
                for (i, o) in out.iter_mut().enumerate() {
                    let e = e0 + i;
                    let b = packed[e / 2];
                    let idx = if e.is_multiple_of(2) { b >> 4 } else { b & 15 };
                    *o = code[idx as usize] * absmax[e / block];
                }
            }
            Kind::Sparse(s) => s.dequantize_row(r, out),
            Kind::Rows(t, _) => {
                let row = t.get(r).and_then(|t| t.to_vec1::<f32>());
                out.copy_from_slice(&row.expect("QuantMatmul::rows holds a float32 matrix"));
            }
            Kind::Int8 { w, scale, act } => {
                let s = scale[r];
                for (c, o) in out.iter_mut().enumerate() {
                    let q = w.get(r, c) as f32;
                    *o = match act {
                        Activations::LlmInt8 { .. } => {
                            q * s * shrink_formats::int8_rowwise::INV_127
                        }
                        Activations::PerToken => q * s,
                    };
                }
            }
        }
    }

    /// `x` row-major `[m, k]` times `Wᵀ`: row-major `[m, n]`.
    pub fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        assert_eq!(x.len(), m * self.k, "matmul: input length");
        let gathered;
        let x = match &self.perm {
            Some(perm) => {
                // The input columns in the held order (k values per token: cheap beside the
                // product).
                gathered = x
                    .chunks_exact(self.k)
                    .flat_map(|row| perm.iter().map(|&c| row[c as usize]))
                    .collect::<Vec<f32>>();
                &gathered[..]
            }
            None => x,
        };
        let (n, k) = (self.n, self.k);
        let zeroed = || vec![0f32; m * n];
        if let Kind::Rows(t, half) = &self.kind {
            if let (Some(h), true) = (half, m <= crate::kernels::FEW_TOKENS) {
                return match h {
                    HalfRows::F16(v) => crate::kernels::gemv_rows_half(x, m, k, v, n),
                    HalfRows::Bf16(v) => crate::kernels::gemv_rows_half(x, m, k, v, n),
                };
            }
            let (s, l) = t.storage_and_layout();
            let candle_core::Storage::Cpu(candle_core::CpuStorage::F32(w)) = &*s else {
                panic!("QuantMatmul::rows holds a float32 CPU tensor")
            };
            let w = &w[l.start_offset()..l.start_offset() + n * k];
            if m <= crate::kernels::FEW_TOKENS {
                return crate::kernels::gemv_rows(x, m, k, w, n);
            }
            let mut y = zeroed();
            crate::kernels::gemm_f32_bt(x, m, k, w, n, &mut y);
            return y;
        }
        if let Kind::Int8 { w, scale, act } = &self.kind {
            let mut y = zeroed();
            match *act {
                Activations::LlmInt8 { threshold } => {
                    self.llm_int8(x, m, w, scale, threshold, &mut y)
                }
                Activations::PerToken => {
                    let (q, a_scale) = quantize_per_token(x, m, k);
                    int8_gemm::gemm_i8_scaled(&q, m, &a_scale, w, scale, 1.0, &mut y);
                }
            }
            return y;
        }
        if m <= FEW_TOKENS {
            let mut y = zeroed();
            self.matmul_few(x, m, &mut y);
            return y;
        }
        if let Some((p, kernel)) = self.panels_q8() {
            let mut y = zeroed();
            q8_gemm::gemm(kernel, p, &q8_gemm::Acts::new(x, m, k), &mut y);
            return y;
        }
        // Not zeroed first: gemm overwrites every element (a memset of the result measured
        // ~3 % of a 512-token forward).
        let mut y: Vec<f32> = Vec::with_capacity(m * n);
        // One task per thread, each owning an equal run of 16-column blocks of the output, and
        // within it chunks whose scratch stays in L2: dequantize, then a single-threaded GEMM.
        // (A parallel dequantize plus a parallel GEMM per chunk costs two fork-joins per chunk,
        // measured 7–15 % slower than the dense model at 512 tokens on 2 threads.)
        let threads = rayon::current_num_threads().max(1);
        let per = n.div_ceil(ROWS).div_ceil(threads) * ROWS;
        // Chunks a multiple of 64 columns: gemm's AVX-512 tiles are 64 wide in this dimension,
        // and chunks of 224 or 80 ran edge kernels on a third of the work.
        let sub = (CHUNK_VALUES / k.max(1)).max(64) / 64 * 64;
        let yp = SendPtr(y.as_mut_ptr());
        (0..n.div_ceil(per)).into_par_iter().for_each(|t| {
            let (c0, c1) = (t * per, ((t + 1) * per).min(n));
            SCRATCH.with(|s| {
                let mut s = s.borrow_mut();
                let need = sub.min(c1 - c0) * k;
                if s.len() < need {
                    s.resize(need, 0.0);
                }
                for r0 in (c0..c1).step_by(sub) {
                    let r1 = (r0 + sub).min(c1);
                    let wt = &mut s[..(r1 - r0) * k];
                    self.dequantize_t_rows(r0, r1, wt, false);
                    // SAFETY: this task alone writes columns r0..r1 of y ([m, n]).
                    unsafe {
                        crate::kernels::gemm_f32_serial(x, m, k, wt, r1 - r0, yp.get().add(r0), n)
                    };
                }
            });
        });
        // SAFETY: the tasks above wrote all m · n elements: every column run c0..c1 of every
        // row (gemm with `read_dst` off writes its whole output block).
        unsafe { y.set_len(m * n) };
        y
    }
}

impl QuantMatmul {
    /// `x` (`[m, k]`) times each of `ws` (weights sharing the input width: a layer's q, k, v
    /// or gate, up), one `[m, n]` result per weight. For a few tokens on integer rows, all in
    /// one fork-join of the [`crate::team`], with the activations quantized once for every
    /// weight that reads them alike: a token of SmolLM2 runs 210 products, and each fork-join
    /// costs the spinning threads a wake-up and a wait for the slowest.
    pub fn matmul_group(ws: &[&QuantMatmul], x: &[f32], m: usize) -> Vec<Vec<f32>> {
        let Some(first) = ws.first() else {
            return Vec::new();
        };
        let k = first.k;
        if !(1..=FEW_TOKENS).contains(&m) || ws.len() < 2 {
            return ws.iter().map(|w| w.matmul(x, m)).collect();
        }
        /// How the grouped products multiply: panels (VNNI) or rows as stored.
        enum Few<'a> {
            Panels(Vec<(&'a q8_gemm::Panels, q8::Int8Kernel)>),
            Rows(Vec<(&'a IntRows, q8::Int8Kernel)>),
        }
        let alike = |w: &QuantMatmul| w.k == k && w.perm.is_none();
        let panels: Option<Vec<_>> = ws
            .iter()
            .map(|w| w.panels_q8().filter(|_| alike(w)))
            .collect();
        let few = match panels {
            // A panel must not straddle two parts: every weight whole panels.
            Some(p) if ws.iter().all(|w| w.n % q8_gemm::PANEL == 0) => Few::Panels(p),
            // Each product alone, through the same kernel.
            Some(_) => return ws.iter().map(|w| w.matmul(x, m)).collect(),
            None => match ws.iter().map(|w| w.q8().filter(|_| alike(w))).collect() {
                Some(r) => Few::Rows(r),
                None => return ws.iter().map(|w| w.matmul(x, m)).collect(),
            },
        };
        assert_eq!(x.len(), m * k, "matmul_group: input length");
        let mut ys: Vec<Vec<f32>> = ws.iter().map(|w| vec![0f32; m * w.n]).collect();
        let bases: Vec<SendPtr> = ys.iter_mut().map(|y| SendPtr(y.as_mut_ptr())).collect();
        let starts: Vec<usize> = ws
            .iter()
            .scan(0, |s, w| {
                let at = *s;
                *s += w.n;
                Some(at)
            })
            .collect();
        let total: usize = ws.iter().map(|w| w.n).sum();
        row_runs(total, |run| {
            // Each part rounds the activations itself (cheaper than reading another core's).
            let panel_acts = matches!(few, Few::Panels(_)).then(|| q8_gemm::Acts::new(x, m, k));
            let row_acts = match &few {
                Few::Rows(r) => {
                    let rows: Vec<&IntRows> = r.iter().map(|&(t, _)| t).collect();
                    Some(q8::Q8Act::for_each(x, k, &rows))
                }
                Few::Panels(_) => None,
            };
            for (i, w) in ws.iter().enumerate() {
                let (lo, hi) = (run.start.max(starts[i]), run.end.min(starts[i] + w.n));
                if lo >= hi {
                    continue;
                }
                let own = lo - starts[i]..hi - starts[i];
                match (&few, &panel_acts, &row_acts) {
                    (Few::Panels(ps), Some(acts), _) => {
                        let (p, kernel) = ps[i];
                        let own = own.start / q8_gemm::PANEL..own.end.div_ceil(q8_gemm::PANEL);
                        // SAFETY: runs of whole 16-row blocks of the concatenation, every
                        // weight whole panels: this part alone writes panels `own` of weight i.
                        unsafe { q8_gemm::gemm_panels(kernel, p, acts, bases[i], own) };
                    }
                    (Few::Rows(rs), _, Some((acts, which))) => {
                        let (t, kernel) = rs[i];
                        // SAFETY: rows of the concatenation are split into disjoint runs
                        // (`row_runs`), so this part alone writes rows `own` of weight i.
                        unsafe { q8_rows(kernel, t, own, k, &acts[which[i]], bases[i], w.n) };
                    }
                    _ => unreachable!("activations made for the kernel chosen"),
                }
            }
        });
        ys
    }

    /// The product for a few tokens (generation): each weight row is dequantized once into a
    /// buffer and dotted with every token, with no transposed scratch or GEMM packing (which
    /// cost 10× the arithmetic at one token).
    fn matmul_few(&self, x: &[f32], m: usize, y: &mut [f32]) {
        let (n, k) = (self.n, self.k);
        let base = SendPtr(y.as_mut_ptr());
        // Element (i, r) of y ([m, n]) is written by the part owning row r only.
        let put = |i: usize, r: usize, v: f32| {
            // SAFETY: rows are split into disjoint runs (`row_runs`), one per part.
            unsafe { *base.get().add(i * n + r) = v }
        };
        if let Kind::Sparse(s) = &self.kind {
            row_runs(n, |rows| {
                for r in rows {
                    for (i, xi) in x.chunks_exact(k).enumerate() {
                        put(i, r, s.dot_row(r, xi));
                    }
                }
            });
            return;
        }
        if let Some((p, kernel)) = self.panels_q8() {
            // The panels' GEMM for these few tokens too: no horizontal sums per row.
            // SAFETY: runs of whole 16-row blocks (`row_runs`) are whole panels, one per part.
            row_runs(n, |rows| unsafe {
                let acts = q8_gemm::Acts::new(x, m, k);
                let panels = rows.start / q8_gemm::PANEL..rows.end.div_ceil(q8_gemm::PANEL);
                q8_gemm::gemm_panels(kernel, p, &acts, base, panels)
            });
            return;
        }
        if let Some((t, kernel)) = self.q8() {
            // Activations quantized once per token by each thread (`Q8Act::for_each`), then
            // integer dots against the codes.
            // SAFETY: rows are split into disjoint runs (`row_runs`), one per part.
            row_runs(n, |rows| unsafe {
                let (acts, _) = q8::Q8Act::for_each(x, k, &[t]);
                q8_rows(kernel, t, rows, k, &acts[0], base, n)
            });
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if let Some(fast) = self
            .avx512_rows()
            .filter(|r| avx512::available() && r.fits(k))
        {
            row_runs(n, |rows| {
                let mut ys = vec![0f32; m];
                for r in rows {
                    // SAFETY: AVX-512 was detected and the layout fits; x is [m, k].
                    unsafe { avx512::dot_rows(&fast, r, k, x, &mut ys) };
                    for (i, &v) in ys.iter().enumerate() {
                        put(i, r, v);
                    }
                }
            });
            return;
        }
        row_runs(n, |rows| {
            let mut buf = vec![0f32; k];
            for r in rows {
                self.dequantize_held_row(r, &mut buf);
                for (i, xi) in x.chunks_exact(k).enumerate() {
                    put(i, r, crate::kernels::dot(xi, &buf));
                }
            }
        });
        debug_assert_eq!(x.len(), m * k);
    }

    /// LLM.int8()'s product as bitsandbytes computes it (`int8_vectorwise_quant` then
    /// `int8_mixed_scaled_mm`): `y = int8(x̂) · int8(W)ᵀ · (rowabsmax · SCB) / 127² + x[:, O] · Ŵ[:, O]ᵀ`
    /// where x̂ is x rounded to float16 with its outliers zeroed and O the outlier features.
    fn llm_int8(
        &self,
        x: &[f32],
        m: usize,
        w: &PackedInt8,
        scb: &[f32],
        threshold: f32,
        y: &mut [f32],
    ) {
        use half::slice::HalfFloatSliceExt;
        let (n, k) = (self.n, self.k);
        // x rounded to float16 (half's slice conversion uses F16C when the CPU has it).
        let mut xh = vec![0f32; m * k];
        xh.par_chunks_mut(k).zip(x.par_chunks(k)).for_each_init(
            || vec![half::f16::ZERO; k],
            |h, (o, row)| {
                h.convert_from_f32_slice(row);
                h.convert_to_f32_slice(o);
            },
        );
        let outlier = |v: f32| threshold > 0.0 && v.abs() >= threshold;
        let is_outlier_col: Vec<bool> = if threshold > 0.0 {
            xh.par_chunks(k)
                .fold(
                    || vec![false; k],
                    |mut acc, row| {
                        for (o, &v) in acc.iter_mut().zip(row) {
                            *o |= outlier(v);
                        }
                        acc
                    },
                )
                .reduce(
                    || vec![false; k],
                    |mut a, b| {
                        a.iter_mut().zip(b).for_each(|(x, y)| *x |= y);
                        a
                    },
                )
        } else {
            vec![false; k]
        };
        let mut q = vec![0i8; m * k];
        let mut row_stats = vec![0f32; m];
        xh.par_chunks(k)
            .zip(q.par_chunks_mut(k))
            .zip(row_stats.par_iter_mut())
            .for_each(|((row, qr), rs)| {
                // Row absmax with the outlier values themselves left out (zeroed).
                *rs = row
                    .iter()
                    .map(|&v| if outlier(v) { 0.0 } else { v.abs() })
                    .fold(0f32, f32::max);
                if *rs == 0.0 {
                    return;
                }
                let inv = 127.0 / *rs;
                for ((qv, &v), &oc) in qr.iter_mut().zip(row).zip(&is_outlier_col) {
                    // |v·inv| ≤ 127 off the outlier features.
                    *qv = if oc {
                        0
                    } else {
                        crate::kernels::round_ties_even_small(v * inv) as i8
                    };
                }
            });
        int8_gemm::gemm_i8_scaled(&q, m, &row_stats, w, scb, LLM_INT8_ALPHA, y);
        let cols: Vec<usize> = (0..k).filter(|&c| is_outlier_col[c]).collect();
        if cols.is_empty() {
            return;
        }
        // The outlier features in float: the original input (not float16) times the
        // dequantized weight columns.
        let no = cols.len();
        let sub_x: Vec<f32> = (0..m)
            .flat_map(|i| cols.iter().map(move |&c| x[i * k + c]))
            .collect();
        let mut sub_wt = vec![0f32; no * n];
        for (j, &c) in cols.iter().enumerate() {
            for r in 0..n {
                sub_wt[j * n + r] =
                    w.get(r, c) as f32 * scb[r] * shrink_formats::int8_rowwise::INV_127;
            }
        }
        let mut extra = vec![0f32; m * n];
        crate::kernels::gemm_f32(&sub_x, m, no, &sub_wt, n, &mut extra);
        for (a, b) in y.iter_mut().zip(&extra) {
            *a += b;
        }
    }
}

/// Symmetric int8 per row of `x` (`[m, k]`): codes and scales (row absmax / 127).
fn quantize_per_token(x: &[f32], m: usize, k: usize) -> (Vec<i8>, Vec<f32>) {
    let mut q = vec![0i8; m * k];
    let mut scales = vec![0f32; m];
    x.par_chunks(k)
        .zip(q.par_chunks_mut(k))
        .zip(scales.par_iter_mut())
        .for_each(|((row, qr), s)| {
            let absmax = row.iter().fold(0f32, |a, v| a.max(v.abs()));
            if absmax == 0.0 {
                return;
            }
            *s = absmax / 127.0;
            let inv = 127.0 / absmax;
            for (qv, &v) in qr.iter_mut().zip(row) {
                *qv = crate::kernels::round_ties_even_small(v * inv).clamp(-127.0, 127.0) as i8;
            }
        });
    (q, scales)
}

/// `out[2j], out[2j+1]` = `t` at the two nibbles of `bytes[j]`: low nibble first (LSB-first
/// packing) or high nibble first (bitsandbytes). `out` may end on half a byte.
#[inline]
fn lookup_nibbles(t: &[f32; 16], bytes: &[u8], out: &mut [f32], high_first: bool) {
    let (pairs, rest) = out.split_at_mut(out.len() / 2 * 2);
    for (o, &b) in pairs.chunks_exact_mut(2).zip(bytes) {
        let (lo, hi) = (t[(b & 15) as usize], t[(b >> 4) as usize]);
        if high_first {
            o[0] = hi;
            o[1] = lo;
        } else {
            o[0] = lo;
            o[1] = hi;
        }
    }
    if let Some(o) = rest.first_mut() {
        let b = bytes[pairs.len() / 2];
        *o = t[(if high_first { b >> 4 } else { b & 15 }) as usize];
    }
}

/// The kernel a few tokens' integer-weight products use ([`q8`]), or `None` for the float path
/// (dequantized rows dotted in float32): the fastest SIMD kernel this CPU runs when
/// [`crate::runtime::int8_activations`] is on, else none. `SHRINK_Q8` overrides: `0` (float),
/// `1` (the fastest), `vnni`, `avx2` or `portable` (each only where the CPU runs it).
fn q8_kernel() -> Option<q8::Int8Kernel> {
    use q8::Int8Kernel::*;
    static FORCED: std::sync::OnceLock<Option<Option<q8::Int8Kernel>>> = std::sync::OnceLock::new();
    static FASTEST: std::sync::OnceLock<Option<q8::Int8Kernel>> = std::sync::OnceLock::new();
    let fastest =
        || *FASTEST.get_or_init(|| Some(q8::Int8Kernel::detect()).filter(|&k| k != Portable));
    let forced = *FORCED.get_or_init(|| {
        let k = match std::env::var("SHRINK_Q8").as_deref() {
            Ok("0") => return Some(None),
            Ok("1") => return Some(fastest()),
            Ok("vnni") => Vnni,
            Ok("avx2") => Avx2,
            Ok("portable") => Portable,
            _ => return None,
        };
        Some(Some(k).filter(|k| k.is_available()))
    });
    match forced {
        Some(k) => k,
        None if crate::runtime::int8_activations() => fastest(),
        None => None,
    }
}

/// Rows `rows` of `t` times the tokens' activations `acts` into `y` (`[tokens, n]`).
///
/// # Safety
/// `y` points to `acts.len() · n` floats of which no other thread writes columns `rows`.
unsafe fn q8_rows(
    kernel: q8::Int8Kernel,
    t: &IntRows,
    rows: std::ops::Range<usize>,
    k: usize,
    acts: &[q8::Q8Act],
    y: SendPtr,
    n: usize,
) {
    let m = acts.len();
    if m == 1 {
        // One token: the outputs are the run of y itself.
        let out = std::slice::from_raw_parts_mut(y.get().add(rows.start), rows.len());
        q8::dot_rows_tokens(kernel, t, rows, k, acts, out);
        return;
    }
    let mut out = vec![0f32; rows.len() * m];
    q8::dot_rows_tokens(kernel, t, rows.clone(), k, acts, &mut out);
    for (r, o) in rows.zip(out.chunks_exact(m)) {
        for (i, &v) in o.iter().enumerate() {
            *y.get().add(i * n + r) = v;
        }
    }
}

/// `f` over `0..n` split into one run of whole [`ROWS`]-row blocks per thread of the
/// [`crate::team`] (whose threads spin between a token's products).
fn row_runs(n: usize, f: impl Fn(std::ops::Range<usize>) + Sync) {
    let parts = crate::team::threads();
    let per = n.div_ceil(ROWS).div_ceil(parts) * ROWS;
    crate::team::run(n.div_ceil(per.max(1)), |p| {
        f(p * per..((p + 1) * per).min(n))
    });
}

/// A raw pointer that tasks writing disjoint elements may share.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub(crate) *mut f32);
// SAFETY: only used for writes to disjoint elements (see `dequantize_t_into`).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

fn int_kind(t: IntTensor) -> Kind {
    let spec = t.spec;
    let per_row = spec.scales_per_row(t.cols);
    let glen = match spec.granularity {
        Granularity::Tensor | Granularity::Channel => t.cols,
        Granularity::Group(g) => g,
    };
    let nscales = spec.num_scales(t.rows, t.cols).max(1);
    let mut scales = vec![0f32; nscales];
    float::decode(spec.scale_type, &t.scales, &mut scales);
    let zeros: Vec<f32> = t
        .zeros
        .as_ref()
        .map(|z| z.iter().map(|&z| f32::from(z)).collect())
        .unwrap_or_default();
    let offset = spec.code_offset() as f32;
    if matches!(spec.bits, 5 | 6) && t.cols.is_multiple_of(64) {
        // Re-packed as nibbles and high-bit planes, which the integer kernels read.
        return Kind::Int(IntRows::from_codes(
            spec.bits,
            &t.codes(),
            t.rows,
            t.cols,
            glen,
            per_row,
            scales,
            zeros,
            Vec::new(),
            offset,
        ));
    }
    Kind::Int(IntRows {
        bits: spec.bits,
        row_bytes: spec.row_bytes(t.cols),
        packed: t.packed,
        high: Vec::new(),
        glen,
        per_row,
        zbias: zero_bias(&scales, &zeros, &[]),
        scales: Floats::new(scales),
        zeros,
        mins: Floats::new(Vec::new()),
        offset,
        table: None,
    })
}

/// `min − scale·zero` per granule ([`IntRows::zbias`]); empty without zero points.
fn zero_bias(scales: &[f32], zeros: &[f32], mins: &[f32]) -> Floats {
    if zeros.is_empty() {
        return Floats::new(Vec::new());
    }
    let bias = zeros
        .iter()
        .enumerate()
        .map(|(g, &z)| mins.get(g).copied().unwrap_or(0.0) - scales[g] * z)
        .collect();
    Floats::new(bias)
}

/// HQQ along axis 1 as integer rows with float zero points; along axis 0 (strided groups)
/// decoded to float rows.
fn hqq_kind(t: HqqTensor) -> Kind {
    if t.spec.axis != 1 {
        let (rows, cols) = (t.rows, t.cols);
        return Kind::Rows(
            Tensor::from_vec(t.dequantize(), (rows, cols), &candle_core::Device::Cpu)
                .expect("rows · cols floats"),
            None,
        );
    }
    let (scales, zeros) = (t.scales_f32(), t.zeros_f32());
    Kind::Int(IntRows {
        bits: t.spec.bits,
        row_bytes: t.packed.len() / t.rows.max(1),
        glen: t.spec.group_size,
        per_row: t.cols / t.spec.group_size,
        zbias: zero_bias(&scales, &zeros, &[]),
        scales: Floats::new(scales),
        zeros,
        mins: Floats::new(Vec::new()),
        high: Vec::new(),
        offset: 0.0,
        table: None,
        packed: t.packed,
    })
}

/// Symmetric int8 weights with one scale per row (per tensor: the scale repeated).
fn w8a8_kind(t: IntTensor) -> Kind {
    let spec = t.spec;
    let mut scales = vec![0f32; spec.num_scales(t.rows, t.cols).max(1)];
    float::decode(spec.scale_type, &t.scales, &mut scales);
    let scale = match spec.granularity {
        Granularity::Tensor => vec![scales[0]; t.rows],
        Granularity::Channel => scales,
        Granularity::Group(_) => {
            // The reader refuses grouped scales for W8A8; a group per row is per channel.
            return int_kind(t);
        }
    };
    let q: Vec<i8> = t.packed.iter().map(|&c| (c as i16 - 128) as i8).collect();
    Kind::Int8 {
        w: PackedInt8::pack(&q, t.rows, t.cols),
        scale,
        act: Activations::PerToken,
    }
}

/// NF4 / FP4 as rows of table codes ([`IntRows::from_table`]: what the int8 generation
/// kernels read) when each block lies inside one row and the rows are 64k values; else as the
/// flattened bitsandbytes layout.
fn nf4_kind(t: Nf4Tensor, cols: usize) -> Kind {
    let block = t.spec.block_size;
    if cols > 0 && cols.is_multiple_of(block) && cols.is_multiple_of(64) && block.is_multiple_of(16)
    {
        let rows = t.numel / cols;
        // Element e: byte e / 2, the high nibble first.
        let codes: Vec<u8> = (0..t.numel)
            .map(|e| {
                let b = t.packed[e / 2];
                if e % 2 == 0 {
                    b >> 4
                } else {
                    b & 15
                }
            })
            .collect();
        return Kind::Int(IntRows::from_table(
            &codes,
            rows,
            cols,
            block,
            t.absmax.values(),
            *t.spec.kind.code(),
        ));
    }
    Kind::Nf4 {
        absmax: t.absmax.values(),
        block: t.spec.block_size,
        code: *t.spec.kind.code(),
        packed: t.packed,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn float16_widening_is_exact_for_every_value() {
        for h in 0..=u16::MAX {
            let want = half::f16::from_bits(h).to_f32();
            let got = super::f16_to_f32(h);
            if want.is_nan() {
                assert!(got.is_nan(), "{h:#06x}");
            } else {
                assert_eq!(got.to_bits(), want.to_bits(), "{h:#06x}");
            }
        }
    }
}
