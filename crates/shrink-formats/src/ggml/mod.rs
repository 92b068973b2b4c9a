//! GGML block formats: type ids, block layouts, reference quantizers and dequantizers.
//!
//! A GGUF tensor of a quantized type is a sequence of fixed-size *blocks*; each block packs
//! [`GgmlType::block_size`] consecutive elements of a row into [`GgmlType::type_size`] bytes.
//! Everything here is ported from llama.cpp's ggml:
//! - type ids and names: `enum ggml_type` in `ggml/include/ggml.h` (names as gguf-py spells them);
//! - block layouts: the `block_*` structs of `ggml/src/ggml-common.h`;
//! - dequantizers: the `dequantize_row_*` reference functions of `ggml/src/ggml-quants.c`;
//! - quantizers ([`quantize`]): what `llama-quantize` runs without an importance matrix, i.e.
//!   `quantize_row_*_ref` for the legacy and K types and `quantize_iq4_nl` / `quantize_iq4_xs`
//!   with no weights; [`quantize_with_importance`] ports the `quant_weights` paths
//!   (`quantize_row_q4_K_impl` etc.) that `llama-quantize --imatrix` runs.
//!
//! The dequantizers perform the same float32 operations in the same order as ggml's
//! reference C code (scales converted from f16 first, then e.g. `x = q*d + m`), so the output
//! is bit-identical to ggml's and to gguf-py's `gguf.quants.dequantize`. The quantizers do the
//! same for ggml's search loops (`nearest_int`'s 1.5·2^23 trick, `make_qx_quants`,
//! `make_qkx2_quants`, `make_q3_quants`, `best_index_int8`, …): every float operation is an f32
//! operation in C's evaluation order, never fused (Rust does not contract `a*b + c` into an FMA),
//! so the bytes equal llama.cpp's. The per-block hot loops are hand-written ports because no
//! maintained crate reproduces ggml's quantizers bit for bit.
//!
//! Submodules: `legacy` (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0), `k_quants` (Q2_K … Q6_K, Q8_K),
//! `iq4` (IQ4_NL, IQ4_XS). Each documents its block layouts with byte offsets and holds each
//! format's quantizer next to its dequantizer, as ggml-quants.c does.

use rayon::prelude::*;

use crate::error::FormatError;
use crate::float::{self, FloatType};

mod iq4;
mod k_quants;
mod legacy;

/// Elements per Q4_0 block.
pub const QK4_0: usize = 32;
/// Elements per Q4_1 block.
pub const QK4_1: usize = 32;
/// Elements per Q5_0 block.
pub const QK5_0: usize = 32;
/// Elements per Q5_1 block.
pub const QK5_1: usize = 32;
/// Elements per Q8_0 block.
pub const QK8_0: usize = 32;
/// Elements per Q8_1 block.
pub const QK8_1: usize = 32;
/// Elements per IQ4_NL block.
pub const QK4_NL: usize = 32;
/// Elements per MXFP4 block.
pub const QK_MXFP4: usize = 32;
/// Elements per NVFP4 block.
pub const QK_NVFP4: usize = 64;
/// Elements per Q1_0 block.
pub const QK1_0: usize = 128;
/// Elements per super-block of the K-quants, IQ and TQ types.
pub const QK_K: usize = 256;
/// Bytes of packed 6-bit scales and mins in a Q4_K / Q5_K super-block.
pub const K_SCALE_SIZE: usize = 12;

/// `dequantize` splits work across threads from this many elements on.
const PAR_MIN_ELEMENTS: usize = 1 << 16;
/// Target number of elements per parallel work item (rounded down to whole blocks).
const PAR_CHUNK_ELEMENTS: usize = 1 << 14;

/// A GGML tensor type as numbered in ggml.h (ids never reused).
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    /// IEEE float32 (id 0).
    F32,
    /// IEEE float16 (id 1).
    F16,
    /// 32-element blocks: f16 scale + 4-bit quants, `x = (q-8)*d` (id 2).
    Q4_0,
    /// 32-element blocks: f16 scale and min + 4-bit quants, `x = q*d + m` (id 3).
    Q4_1,
    /// 32-element blocks: f16 scale + 5-bit quants, `x = (q-16)*d` (id 6).
    Q5_0,
    /// 32-element blocks: f16 scale and min + 5-bit quants, `x = q*d + m` (id 7).
    Q5_1,
    /// 32-element blocks: f16 scale + int8 quants, `x = q*d` (id 8).
    Q8_0,
    /// 32-element blocks: f16 scale and sum + int8 quants; an activation type (id 9).
    Q8_1,
    /// 2-bit K-quant: 256-element super-blocks of 16×16 (id 10).
    Q2_K,
    /// 3-bit K-quant: 256-element super-blocks of 16×16 (id 11).
    Q3_K,
    /// 4-bit K-quant: 256-element super-blocks of 8×32 (id 12).
    Q4_K,
    /// 5-bit K-quant: 256-element super-blocks of 8×32 (id 13).
    Q5_K,
    /// 6-bit K-quant: 256-element super-blocks of 16×16 (id 14).
    Q6_K,
    /// 8-bit K-quant with f32 scale; an activation type (id 15).
    Q8_K,
    /// IQ2_XXS, 2.06 bits per weight (id 16).
    IQ2_XXS,
    /// IQ2_XS, 2.31 bits per weight (id 17).
    IQ2_XS,
    /// IQ3_XXS, 3.06 bits per weight (id 18).
    IQ3_XXS,
    /// IQ1_S, 1.56 bits per weight (id 19).
    IQ1_S,
    /// 32-element blocks: f16 scale + 4-bit indices into a non-linear table (id 20).
    IQ4_NL,
    /// IQ3_S, 3.44 bits per weight (id 21).
    IQ3_S,
    /// IQ2_S, 2.56 bits per weight (id 22).
    IQ2_S,
    /// 256-element super-blocks of IQ4_NL-style values with 6-bit sub-block scales (id 23).
    IQ4_XS,
    /// 8-bit signed integer (id 24).
    I8,
    /// 16-bit signed integer (id 25).
    I16,
    /// 32-bit signed integer (id 26).
    I32,
    /// 64-bit signed integer (id 27).
    I64,
    /// IEEE float64 (id 28).
    F64,
    /// IQ1_M, 1.75 bits per weight (id 29).
    IQ1_M,
    /// bfloat16 (id 30).
    BF16,
    /// Ternary TQ1_0, 1.69 bits per weight (id 34).
    TQ1_0,
    /// Ternary TQ2_0, 2.06 bits per weight (id 35).
    TQ2_0,
    /// MXFP4: 32 FP4 (E2M1) values sharing an E8M0 scale (id 39).
    MXFP4,
    /// NVFP4: 64 FP4 (E2M1) values with four UE4M3 scales (id 40).
    NVFP4,
    /// Q1_0: 128 sign bits sharing an f16 scale (id 41).
    Q1_0,
}

impl GgmlType {
    /// Every type this module knows, in id order.
    pub const ALL: [GgmlType; 34] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q8_1,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q8_K,
        GgmlType::IQ2_XXS,
        GgmlType::IQ2_XS,
        GgmlType::IQ3_XXS,
        GgmlType::IQ1_S,
        GgmlType::IQ4_NL,
        GgmlType::IQ3_S,
        GgmlType::IQ2_S,
        GgmlType::IQ4_XS,
        GgmlType::I8,
        GgmlType::I16,
        GgmlType::I32,
        GgmlType::I64,
        GgmlType::F64,
        GgmlType::IQ1_M,
        GgmlType::BF16,
        GgmlType::TQ1_0,
        GgmlType::TQ2_0,
        GgmlType::MXFP4,
        GgmlType::NVFP4,
        GgmlType::Q1_0,
    ];

    /// (id, name, elements per block, bytes per block), from ggml.h / ggml-common.h / gguf-py.
    const fn info(self) -> (u32, &'static str, usize, usize) {
        use GgmlType::*;
        match self {
            F32 => (0, "F32", 1, 4),
            F16 => (1, "F16", 1, 2),
            Q4_0 => (2, "Q4_0", QK4_0, legacy::BlockQ4_0::SIZE),
            Q4_1 => (3, "Q4_1", QK4_1, legacy::BlockQ4_1::SIZE),
            Q5_0 => (6, "Q5_0", QK5_0, legacy::BlockQ5_0::SIZE),
            Q5_1 => (7, "Q5_1", QK5_1, legacy::BlockQ5_1::SIZE),
            Q8_0 => (8, "Q8_0", QK8_0, legacy::BlockQ8_0::SIZE),
            // block_q8_1 is { ggml_half d; ggml_half s; int8_t qs[32]; } = 36 bytes in ggml
            // (gguf-py's table still says 4 + 4 + 32, from when d and s were floats).
            Q8_1 => (9, "Q8_1", QK8_1, 2 + 2 + QK8_1),
            Q2_K => (10, "Q2_K", QK_K, k_quants::BlockQ2K::SIZE),
            Q3_K => (11, "Q3_K", QK_K, k_quants::BlockQ3K::SIZE),
            Q4_K => (12, "Q4_K", QK_K, k_quants::BlockQ4K::SIZE),
            Q5_K => (13, "Q5_K", QK_K, k_quants::BlockQ5K::SIZE),
            Q6_K => (14, "Q6_K", QK_K, k_quants::BlockQ6K::SIZE),
            Q8_K => (15, "Q8_K", QK_K, k_quants::BlockQ8K::SIZE),
            // block_iq2_xxs: d + uint16 qs[QK_K/8]
            IQ2_XXS => (16, "IQ2_XXS", QK_K, 2 + QK_K / 4),
            // block_iq2_xs: d + uint16 qs[QK_K/8] + scales[QK_K/32]
            IQ2_XS => (17, "IQ2_XS", QK_K, 2 + QK_K / 4 + QK_K / 32),
            // block_iq3_xxs: d + qs[3*QK_K/8]
            IQ3_XXS => (18, "IQ3_XXS", QK_K, 2 + 3 * QK_K / 8),
            // block_iq1_s: d + qs[QK_K/8] + uint16 qh[QK_K/32]
            IQ1_S => (19, "IQ1_S", QK_K, 2 + QK_K / 8 + QK_K / 16),
            IQ4_NL => (20, "IQ4_NL", QK4_NL, iq4::BlockIq4Nl::SIZE),
            // block_iq3_s: d + qs[QK_K/4] + qh[QK_K/32] + signs[QK_K/8] + scales[QK_K/64]
            IQ3_S => (
                21,
                "IQ3_S",
                QK_K,
                2 + QK_K / 4 + QK_K / 32 + QK_K / 8 + QK_K / 64,
            ),
            // block_iq2_s: d + qs[QK_K/4] + qh[QK_K/32] + scales[QK_K/32]
            IQ2_S => (22, "IQ2_S", QK_K, 2 + QK_K / 4 + QK_K / 16),
            IQ4_XS => (23, "IQ4_XS", QK_K, iq4::BlockIq4Xs::SIZE),
            I8 => (24, "I8", 1, 1),
            I16 => (25, "I16", 1, 2),
            I32 => (26, "I32", 1, 4),
            I64 => (27, "I64", 1, 8),
            F64 => (28, "F64", 1, 8),
            // block_iq1_m: qs[QK_K/8] + qh[QK_K/16] + scales[QK_K/32]
            IQ1_M => (29, "IQ1_M", QK_K, QK_K / 8 + QK_K / 16 + QK_K / 32),
            BF16 => (30, "BF16", 1, 2),
            // block_tq1_0: qs[(QK_K - 4*QK_K/64)/5] + qh[QK_K/64] + d
            TQ1_0 => (
                34,
                "TQ1_0",
                QK_K,
                (QK_K - 4 * QK_K / 64) / 5 + QK_K / 64 + 2,
            ),
            // block_tq2_0: qs[QK_K/4] + d
            TQ2_0 => (35, "TQ2_0", QK_K, QK_K / 4 + 2),
            // block_mxfp4: e (E8M0) + qs[QK_MXFP4/2]
            MXFP4 => (39, "MXFP4", QK_MXFP4, 1 + QK_MXFP4 / 2),
            // block_nvfp4: d[QK_NVFP4/16] (UE4M3) + qs[QK_NVFP4/2]
            NVFP4 => (40, "NVFP4", QK_NVFP4, QK_NVFP4 / 16 + QK_NVFP4 / 2),
            // block_q1_0: d + qs[QK1_0/8]
            Q1_0 => (41, "Q1_0", QK1_0, 2 + QK1_0 / 8),
        }
    }

    /// The type with ggml id `id`, or `None` for an unknown or retired id.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        Self::ALL.iter().copied().find(|t| t.id() == id)
    }

    /// The ggml id (`enum ggml_type` value, as stored in GGUF tensor infos).
    pub fn id(self) -> u32 {
        self.info().0
    }

    /// Upper-case name as gguf-py spells it: "F32", "Q4_K", "IQ4_NL", ...
    pub fn name(self) -> &'static str {
        self.info().1
    }

    /// The type named `name` (case-insensitive: "q4_k" and "Q4_K" both work).
    pub fn from_name(name: &str) -> Option<GgmlType> {
        Self::ALL
            .iter()
            .copied()
            .find(|t| t.name().eq_ignore_ascii_case(name))
    }

    /// Elements per block (1 for the plain scalar types).
    pub fn block_size(self) -> usize {
        self.info().2
    }

    /// Bytes per block.
    pub fn type_size(self) -> usize {
        self.info().3
    }

    /// Storage cost in bits per element: `type_size * 8 / block_size`.
    pub fn bits_per_weight(self) -> f64 {
        (self.type_size() * 8) as f64 / self.block_size() as f64
    }

    /// Whether [`dequantize`] supports this type.
    pub fn can_dequantize(self) -> bool {
        use GgmlType::*;
        matches!(
            self,
            F32 | F16
                | BF16
                | Q4_0
                | Q4_1
                | Q5_0
                | Q5_1
                | Q8_0
                | Q2_K
                | Q3_K
                | Q4_K
                | Q5_K
                | Q6_K
                | Q8_K
                | IQ4_NL
                | IQ4_XS
        )
    }

    /// Whether [`quantize`] and [`quantize_with_importance`] support this type.
    pub fn can_quantize(self) -> bool {
        use GgmlType::*;
        matches!(
            self,
            Q4_0 | Q4_1
                | Q5_0
                | Q5_1
                | Q8_0
                | Q2_K
                | Q3_K
                | Q4_K
                | Q5_K
                | Q6_K
                | Q8_K
                | IQ4_NL
                | IQ4_XS
        )
    }

    /// Bytes that `elements` consecutive elements take (ggml_row_size); errors if not whole blocks.
    pub fn row_bytes(self, elements: usize) -> Result<usize, FormatError> {
        let block = self.block_size();
        let blocks = elements / block;
        if blocks * block != elements {
            return Err(FormatError::NotBlockAligned {
                format: self.name(),
                elements,
                block,
            });
        }
        Ok(blocks * self.type_size())
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Dequantize `dst.len()` elements stored as `ty` in `src` (exactly row_bytes(dst.len()) bytes, else WrongByteCount).
///
/// Large outputs (at least 2^16 elements) are split on block boundaries and decoded in parallel
/// with rayon; every block is decoded by the same scalar reference code either way, so the
/// result does not depend on the thread count.
pub fn dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), FormatError> {
    if !ty.can_dequantize() {
        return Err(FormatError::Unsupported(ty.name()));
    }
    let expected = ty.row_bytes(dst.len())?;
    if src.len() != expected {
        return Err(FormatError::WrongByteCount {
            format: ty.name(),
            elements: dst.len(),
            expected,
            actual: src.len(),
        });
    }
    if dst.len() < PAR_MIN_ELEMENTS {
        dequantize_serial(ty, src, dst);
    } else {
        let blocks_per_chunk = (PAR_CHUNK_ELEMENTS / ty.block_size()).max(1);
        let chunk_elems = blocks_per_chunk * ty.block_size();
        let chunk_bytes = blocks_per_chunk * ty.type_size();
        dst.par_chunks_mut(chunk_elems)
            .zip(src.par_chunks(chunk_bytes))
            .for_each(|(d, s)| dequantize_serial(ty, s, d));
    }
    Ok(())
}

/// Decode whole blocks on the current thread; sizes were checked by [`dequantize`].
fn dequantize_serial(ty: GgmlType, src: &[u8], dst: &mut [f32]) {
    use GgmlType::*;
    match ty {
        F32 => float::decode(FloatType::F32, src, dst),
        F16 => float::decode(FloatType::F16, src, dst),
        BF16 => float::decode(FloatType::BF16, src, dst),
        Q4_0 => dequantize_blocks::<legacy::BlockQ4_0>(src, dst),
        Q4_1 => dequantize_blocks::<legacy::BlockQ4_1>(src, dst),
        Q5_0 => dequantize_blocks::<legacy::BlockQ5_0>(src, dst),
        Q5_1 => dequantize_blocks::<legacy::BlockQ5_1>(src, dst),
        Q8_0 => dequantize_blocks::<legacy::BlockQ8_0>(src, dst),
        Q2_K => dequantize_blocks::<k_quants::BlockQ2K>(src, dst),
        Q3_K => dequantize_blocks::<k_quants::BlockQ3K>(src, dst),
        Q4_K => dequantize_blocks::<k_quants::BlockQ4K>(src, dst),
        Q5_K => dequantize_blocks::<k_quants::BlockQ5K>(src, dst),
        Q6_K => dequantize_blocks::<k_quants::BlockQ6K>(src, dst),
        Q8_K => dequantize_blocks::<k_quants::BlockQ8K>(src, dst),
        IQ4_NL => dequantize_blocks::<iq4::BlockIq4Nl>(src, dst),
        IQ4_XS => dequantize_blocks::<iq4::BlockIq4Xs>(src, dst),
        _ => unreachable!("{} passed can_dequantize", ty.name()),
    }
}

/// One GGML block type: a fixed byte layout decoding to `QK` float32 values.
pub(crate) trait Block: Sized {
    /// Bytes per block (`sizeof(block_*)` in ggml-common.h).
    const SIZE: usize;
    /// Elements per block.
    const QK: usize;
    /// Read one block from exactly `SIZE` bytes (fields in declaration order, no padding).
    fn read(bytes: &[u8]) -> Self;
    /// Write the block's `QK` values into `y` (`y.len() == QK`), as ggml's `dequantize_row_*`.
    fn dequantize(&self, y: &mut [f32]);
}

/// Scalar reference loop: decode each `B::SIZE`-byte block of `src` into `B::QK` values of `dst`.
fn dequantize_blocks<B: Block>(src: &[u8], dst: &mut [f32]) {
    debug_assert_eq!(src.len() / B::SIZE * B::QK, dst.len());
    for (bytes, y) in src.chunks_exact(B::SIZE).zip(dst.chunks_exact_mut(B::QK)) {
        B::read(bytes).dequantize(y);
    }
}

/// Quantize `src` into `dst` as `ty`, byte for byte as llama.cpp does without an importance
/// matrix (`ggml_quantize_chunk` with `imatrix == NULL`, which is what `llama-quantize` runs).
///
/// `src.len()` must be a whole number of blocks and `dst.len()` exactly
/// `ty.row_bytes(src.len())`. Every block is independent in these formats, so rows need not be
/// given: any run of whole blocks quantizes the same as the rows it spans.
///
/// Errors (checked before anything is written, except the last): [`FormatError::Unsupported`]
/// for a type without a quantizer (see [`GgmlType::can_quantize`]),
/// [`FormatError::NotBlockAligned`], [`FormatError::WrongByteCount`], [`FormatError::NonFinite`]
/// naming the first NaN or infinity of `src` (row 0, column = flat index), and
/// [`FormatError::ScaleOverflow`] when a block's f16 scale or min would be infinite (inputs
/// beyond about ±65504 per level; ggml would write the infinity and refuse the file on load);
/// after that error `dst` holds unspecified bytes.
///
/// Large inputs (at least 2^16 elements) are split on block boundaries and quantized in
/// parallel with rayon; each block runs the same scalar code either way, so the bytes do not
/// depend on the thread count.
pub fn quantize(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<(), FormatError> {
    if !ty.can_quantize() {
        return Err(FormatError::Unsupported(ty.name()));
    }
    let expected = ty.row_bytes(src.len())?;
    if dst.len() != expected {
        return Err(FormatError::WrongByteCount {
            format: ty.name(),
            elements: src.len(),
            expected,
            actual: dst.len(),
        });
    }
    check_finite(ty, src, src.len().max(1))?;
    let overflow = if src.len() < PAR_MIN_ELEMENTS {
        quantize_serial(ty, src, dst, None)
    } else {
        let blocks_per_chunk = (PAR_CHUNK_ELEMENTS / ty.block_size()).max(1);
        let chunk_elems = blocks_per_chunk * ty.block_size();
        let chunk_bytes = blocks_per_chunk * ty.type_size();
        dst.par_chunks_mut(chunk_bytes)
            .zip(src.par_chunks(chunk_elems))
            .map(|(d, s)| quantize_serial(ty, s, d, None))
            .find_map_first(|o| o)
    };
    overflow.map_or(Ok(()), Err)
}

/// Quantize a `[rows, cols]` row-major matrix with per-column importance weights, as
/// llama.cpp's `quantize_q4_K(src, dst, nrow, n_per_row, quant_weights)` and kin do when
/// `llama-quantize` is given an importance matrix (`--imatrix`).
///
/// `importance[c]` weighs column `c` of every row (the imatrix entry of this tensor, i.e. the
/// mean squared activation feeding that input feature); `cols` must be a whole number of
/// blocks, `src.len()` a multiple of `cols`, and `dst.len()` exactly `rows * row_bytes(cols)`.
/// The weighted searches differ from the unweighted ones (e.g. Q4_K uses `make_qkx3_quants`
/// and quantized super-block scales from `make_qp_quants`), so uniform weights do not give
/// [`quantize`]'s bytes. Q8_0 and Q8_K ignore the weights, as ggml does.
///
/// Errors: those of [`quantize`] (with the row and column of a non-finite value), plus
/// [`FormatError::ShapeMismatch`] when `cols` is 0 or does not divide `src.len()`, and
/// [`FormatError::Inconsistent`] when `importance` has the wrong length or holds a NaN, an
/// infinity or a negative weight. Rows are quantized in parallel; the result does not depend on
/// the thread count.
pub fn quantize_with_importance(
    ty: GgmlType,
    src: &[f32],
    cols: usize,
    importance: &[f32],
    dst: &mut [u8],
) -> Result<(), FormatError> {
    if !ty.can_quantize() {
        return Err(FormatError::Unsupported(ty.name()));
    }
    if cols == 0 || !src.len().is_multiple_of(cols) {
        let rows = src.len().checked_div(cols).unwrap_or(0);
        return Err(FormatError::ShapeMismatch {
            format: ty.name(),
            rows,
            cols,
            expected: rows * cols,
            actual: src.len(),
        });
    }
    let rows = src.len() / cols;
    let row_bytes = ty.row_bytes(cols)?;
    if importance.len() != cols {
        return Err(FormatError::Inconsistent {
            format: ty.name(),
            what: format!(
                "{} importance weights for rows of {cols} columns",
                importance.len()
            ),
        });
    }
    if let Some(c) = importance
        .iter()
        .position(|w| !(w.is_finite() && *w >= 0.0))
    {
        return Err(FormatError::Inconsistent {
            format: ty.name(),
            what: format!(
                "importance weight of column {c} is {} (weights must be finite and >= 0)",
                importance[c]
            ),
        });
    }
    let expected = rows * row_bytes;
    if dst.len() != expected {
        return Err(FormatError::WrongByteCount {
            format: ty.name(),
            elements: src.len(),
            expected,
            actual: dst.len(),
        });
    }
    check_finite(ty, src, cols)?;
    let run = |s: &[f32], d: &mut [u8]| {
        s.chunks_exact(cols)
            .zip(d.chunks_exact_mut(row_bytes))
            .find_map(|(x, y)| quantize_serial(ty, x, y, Some(importance)))
    };
    let overflow = if src.len() < PAR_MIN_ELEMENTS {
        run(src, dst)
    } else {
        let rows_per_chunk = (PAR_CHUNK_ELEMENTS / cols).max(1);
        dst.par_chunks_mut(rows_per_chunk * row_bytes)
            .zip(src.par_chunks(rows_per_chunk * cols))
            .map(|(d, s)| run(s, d))
            .find_map_first(|o| o)
    };
    overflow.map_or(Ok(()), Err)
}

/// [`FormatError::NonFinite`] for the first NaN or infinity of `src`, seen as rows of `cols`.
fn check_finite(ty: GgmlType, src: &[f32], cols: usize) -> Result<(), FormatError> {
    // Whole chunks are scanned branch-free (`all` over `is_finite` vectorises); only the first
    // chunk holding a bad value is searched for its position.
    let chunk_ok = |c: &[f32]| c.iter().fold(true, |ok, v| ok & v.is_finite());
    let bad_chunk = if src.len() < PAR_MIN_ELEMENTS {
        src.chunks(PAR_CHUNK_ELEMENTS).position(|c| !chunk_ok(c))
    } else {
        src.par_chunks(PAR_CHUNK_ELEMENTS)
            .position_first(|c| !chunk_ok(c))
    };
    let bad = bad_chunk.and_then(|k| {
        let start = k * PAR_CHUNK_ELEMENTS;
        src[start..]
            .iter()
            .position(|v| !v.is_finite())
            .map(|i| start + i)
    });
    match bad {
        None => Ok(()),
        Some(index) => Err(FormatError::NonFinite {
            format: ty.name(),
            index,
            row: index / cols,
            col: index % cols,
            value: src[index],
        }),
    }
}

/// Quantize whole blocks on the current thread (sizes and finiteness were checked by the
/// caller); with `importance`, `src` is exactly one row. Returns the overflow error, if any.
fn quantize_serial(
    ty: GgmlType,
    src: &[f32],
    dst: &mut [u8],
    importance: Option<&[f32]>,
) -> Option<FormatError> {
    use GgmlType::*;
    match ty {
        Q4_0 => quantize_blocks::<legacy::BlockQ4_0>(src, dst, importance),
        Q4_1 => quantize_blocks::<legacy::BlockQ4_1>(src, dst, importance),
        Q5_0 => quantize_blocks::<legacy::BlockQ5_0>(src, dst, importance),
        Q5_1 => quantize_blocks::<legacy::BlockQ5_1>(src, dst, importance),
        Q8_0 => quantize_blocks::<legacy::BlockQ8_0>(src, dst, None),
        Q2_K => quantize_blocks::<k_quants::BlockQ2K>(src, dst, importance),
        Q3_K => quantize_blocks::<k_quants::BlockQ3K>(src, dst, importance),
        Q4_K => quantize_blocks::<k_quants::BlockQ4K>(src, dst, importance),
        Q5_K => quantize_blocks::<k_quants::BlockQ5K>(src, dst, importance),
        Q6_K => quantize_blocks::<k_quants::BlockQ6K>(src, dst, importance),
        Q8_K => quantize_blocks::<k_quants::BlockQ8K>(src, dst, None),
        IQ4_NL => quantize_blocks::<iq4::BlockIq4Nl>(src, dst, importance),
        IQ4_XS => quantize_blocks::<iq4::BlockIq4Xs>(src, dst, importance),
        _ => unreachable!("{} passed can_quantize", ty.name()),
    }
    .then(|| FormatError::ScaleOverflow {
        format: ty.name(),
        scale: f32::INFINITY,
        scale_type: "f16",
    })
}

/// Quantize `src` into `dst` as [`quantize`] does, except that each block whose values already
/// lie exactly on the type's grid — `d·k`, `d` an f16 and `k` codes the type stores — keeps
/// that grid: a symmetric quantizer's codes (GPTQ's, or round-to-nearest in groups of the block
/// size) carried over instead of rounded a second time. Q4_0 and Q8_0 (the grids of 4- and
/// 8-bit symmetric groups of 32); other types are quantized as [`quantize`] does. Returns how
/// many blocks hold their input exactly.
pub fn quantize_keeping_grid(
    ty: GgmlType,
    src: &[f32],
    dst: &mut [u8],
) -> Result<usize, FormatError> {
    quantize(ty, src, dst)?;
    let keep: fn(&[f32], &mut [u8]) -> usize = match ty {
        GgmlType::Q4_0 => keep_grid::<legacy::BlockQ4_0>,
        GgmlType::Q8_0 => keep_grid::<legacy::BlockQ8_0>,
        _ => return Ok(0),
    };
    let blocks_per_chunk = (PAR_CHUNK_ELEMENTS / ty.block_size()).max(1);
    Ok(dst
        .par_chunks_mut(blocks_per_chunk * ty.type_size())
        .zip(src.par_chunks(blocks_per_chunk * ty.block_size()))
        .map(|(d, s)| keep(s, d))
        .sum())
}

/// A block type that can hold values already on its grid exactly.
trait OnGrid: Quantize {
    /// The block holding `x` exactly, if `x` lies on a grid of this type.
    fn on_grid(x: &[f32]) -> Option<Self>;
}

/// Replace each block of `dst` (quantized from `src`) that does not hold its values exactly by
/// the grid they lie on, where they do; returns the blocks that hold them exactly.
fn keep_grid<B: OnGrid>(src: &[f32], dst: &mut [u8]) -> usize {
    let mut exact = 0;
    let mut y = vec![0f32; B::QK];
    for (x, bytes) in src.chunks_exact(B::QK).zip(dst.chunks_exact_mut(B::SIZE)) {
        B::read(bytes).dequantize(&mut y);
        if y.as_slice() == x {
            exact += 1;
        } else if let Some(b) = B::on_grid(x) {
            b.write(bytes);
            exact += 1;
        }
    }
    exact
}

/// A block type with ggml's reference quantizer.
trait Quantize: Block {
    /// Byte offsets of the block's `ggml_half` scale / min fields, checked for overflow.
    const F16_FIELDS: &'static [usize];
    /// Quantize `B::QK` values (`x.len() == QK`) as ggml's `quantize_row_*_ref` (or, for the
    /// IQ4 types, `quantize_iq4_*` with no weights) does for one block.
    fn quantize(x: &[f32]) -> Self;
    /// Quantize one whole row with importance weights `qw` (`qw.len() == x.len()`), as ggml's
    /// `quantize_*` with `quant_weights`. Some formats use statistics of the whole row.
    fn quantize_row_weighted(x: &[f32], qw: &[f32], y: &mut [u8]);
    /// Write the block into exactly `SIZE` bytes (fields in declaration order).
    fn write(&self, bytes: &mut [u8]);
}

/// Quantize every block of `src` into `dst` (one row when weighted); true if a stored f16
/// scale overflowed.
fn quantize_blocks<B: Quantize>(src: &[f32], dst: &mut [u8], importance: Option<&[f32]>) -> bool {
    debug_assert_eq!(src.len() / B::QK * B::SIZE, dst.len());
    match importance {
        None => {
            for (x, y) in src.chunks_exact(B::QK).zip(dst.chunks_exact_mut(B::SIZE)) {
                B::quantize(x).write(y);
            }
        }
        Some(qw) => B::quantize_row_weighted(src, qw, dst),
    }
    dst.chunks_exact(B::SIZE).any(|b| {
        B::F16_FIELDS
            .iter()
            .any(|&o| !f16_le([b[o], b[o + 1]]).is_finite())
    })
}

/// Quantize each `B::QK`-element block of a row with `f` and write it.
fn write_blocks<B: Quantize>(x: &[f32], y: &mut [u8], mut f: impl FnMut(&[f32], usize) -> B) {
    for (ib, (xb, yb)) in x
        .chunks_exact(B::QK)
        .zip(y.chunks_exact_mut(B::SIZE))
        .enumerate()
    {
        f(xb, ib).write(yb);
    }
}

/// Sequential writer that fills a block's bytes field by field.
struct FieldWriter<'a> {
    bytes: &'a mut [u8],
}

impl<'a> FieldWriter<'a> {
    /// Start writing at offset 0 of `bytes`.
    fn new(bytes: &'a mut [u8]) -> Self {
        FieldWriter { bytes }
    }

    /// Write the next `N` bytes.
    #[inline(always)]
    fn put<const N: usize>(&mut self, field: &[u8; N]) {
        let (head, rest) = std::mem::take(&mut self.bytes)
            .split_first_chunk_mut::<N>()
            .expect("block shorter than its layout");
        *head = *field;
        self.bytes = rest;
    }

    /// Check that the layout filled the whole block.
    #[inline(always)]
    fn finish(self) {
        debug_assert!(self.bytes.is_empty(), "block longer than its layout");
    }
}

/// `GGML_FP32_TO_FP16` as little-endian bytes: round to nearest even (like F16C's
/// `_cvtss_sh(x, 0)` and ggml's software fallback).
#[inline(always)]
fn fp16_bytes(x: f32) -> [u8; 2] {
    half::f16::from_f32(x).to_le_bytes()
}

/// Sequential reader that splits a block's bytes into its fixed-size fields.
struct FieldReader<'a> {
    bytes: &'a [u8],
}

impl<'a> FieldReader<'a> {
    /// Start reading at offset 0 of `bytes`.
    fn new(bytes: &'a [u8]) -> Self {
        FieldReader { bytes }
    }

    /// The next `N` bytes as an array (the field's length comes from its type).
    #[inline(always)]
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let (head, rest) = self
            .bytes
            .split_first_chunk::<N>()
            .expect("block shorter than its layout");
        self.bytes = rest;
        *head
    }

    /// Check that the layout consumed the whole block.
    #[inline(always)]
    fn finish(self) {
        debug_assert!(self.bytes.is_empty(), "block longer than its layout");
    }
}

/// `GGML_FP16_TO_FP32` of a little-endian `ggml_half` (exact).
#[inline(always)]
fn f16_le(b: [u8; 2]) -> f32 {
    half::f16::from_le_bytes(b).to_f32()
}

/// A block type whose values are integer codes in granules: `(code − OFFSET)·scale + min`, or
/// `TABLE[code]·scale` for the table types (IQ4), computed with the same float operations as
/// its `dequantize` (so the form is lossless).
pub(crate) trait Affine: Block {
    /// Bits per code.
    const BITS: u8;
    /// Values per granule (one scale, and min, each).
    const GRANULE: usize;
    /// The code of zero for symmetric types (0 for types with mins).
    const OFFSET: u8;
    /// Whether the type stores a min per granule.
    const MINS: bool;
    /// The values codes index, for table types.
    const TABLE: Option<[f32; 16]> = None;
    /// The block's `QK` codes in element order, its `QK / GRANULE` scales and, when `MINS`,
    /// its mins (as added: ggml's `− dmin·m` is stored as the min `−(dmin·m)`).
    fn affine(&self, codes: &mut [u8], scales: &mut [f32], mins: &mut [f32]);
}

/// A GGUF tensor as integer codes with a float32 scale (and min) per granule:
/// value = `(code − offset)·scale + min`, or `table[code]·scale` (IQ4_NL, IQ4_XS: ggml's
/// non-linear levels, integers in −127..=113), bit-identical to [`dequantize`] (tested per
/// type).
#[derive(Debug, Clone)]
pub struct GgmlCodes {
    /// Bits per code (4, 5, 6 or 8).
    pub bits: u8,
    /// Values per granule (16 or 32).
    pub granule: usize,
    /// The code of zero (symmetric types), 0 where mins are stored.
    pub offset: u8,
    /// One code per value, row-major, one byte each.
    pub codes: Vec<u8>,
    /// One scale per granule, row-major.
    pub scales: Vec<f32>,
    /// One min per granule, or empty for symmetric types.
    pub mins: Vec<f32>,
    /// The values codes index (table types), else `None`.
    pub table: Option<[f32; 16]>,
}

/// A tensor of `rows` rows of `cols` values stored as `ty` (`data` its blocks) as integer codes
/// with their scales and mins ([`GgmlCodes`]), for Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K,
/// Q6_K, IQ4_NL and IQ4_XS; `None` for the other types (Q2_K/Q3_K's 2/3-bit codes, the other
/// IQ types' grids, float types). Errors: rows not a whole number of blocks,
/// or `data` not their size.
pub fn to_codes(
    ty: GgmlType,
    data: &[u8],
    rows: usize,
    cols: usize,
) -> Result<Option<GgmlCodes>, FormatError> {
    use GgmlType::*;
    let decode = match ty {
        Q4_0 => codes_of::<legacy::BlockQ4_0>,
        Q4_1 => codes_of::<legacy::BlockQ4_1>,
        Q5_0 => codes_of::<legacy::BlockQ5_0>,
        Q5_1 => codes_of::<legacy::BlockQ5_1>,
        Q8_0 => codes_of::<legacy::BlockQ8_0>,
        Q4_K => codes_of::<k_quants::BlockQ4K>,
        Q5_K => codes_of::<k_quants::BlockQ5K>,
        Q6_K => codes_of::<k_quants::BlockQ6K>,
        IQ4_NL => codes_of::<iq4::BlockIq4Nl>,
        IQ4_XS => codes_of::<iq4::BlockIq4Xs>,
        _ => return Ok(None),
    };
    // Rows of whole blocks (NotBlockAligned otherwise), then exactly their bytes.
    let expected = rows * ty.row_bytes(cols)?;
    if data.len() != expected {
        return Err(FormatError::WrongByteCount {
            format: ty.name(),
            elements: rows * cols,
            expected,
            actual: data.len(),
        });
    }
    Ok(Some(decode(data)))
}

/// Every block of `data` as codes, scales and mins (the size was checked by the caller).
fn codes_of<B: Affine>(data: &[u8]) -> GgmlCodes {
    let blocks = data.len() / B::SIZE;
    let per = B::QK / B::GRANULE;
    let mut codes = vec![0u8; blocks * B::QK];
    let mut scales = vec![0f32; blocks * per];
    let mut mins = vec![0f32; blocks * per];
    codes
        .par_chunks_mut(B::QK)
        .zip(scales.par_chunks_mut(per))
        .zip(mins.par_chunks_mut(per))
        .zip(data.par_chunks(B::SIZE))
        .for_each(|(((c, s), m), bytes)| B::read(bytes).affine(c, s, m));
    if !B::MINS {
        mins = Vec::new();
    }
    GgmlCodes {
        bits: B::BITS,
        granule: B::GRANULE,
        offset: B::OFFSET,
        codes,
        scales,
        mins,
        table: B::TABLE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values `d·k` of a symmetric grid per 32-block: `d` an f16, `|k| < top` but one `k = top`,
    /// the largest magnitude, positive (round-to-nearest then picks another scale: Q4_0 puts
    /// the largest at −8, Q8_0 at ±127).
    fn grid(blocks: usize, top: i32) -> Vec<f32> {
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let mut x = Vec::with_capacity(blocks * 32);
        for _ in 0..blocks {
            let d = half::f16::from_f32(0.001 + (next() % 1000) as f32 * 1e-4).to_f32();
            for j in 0..32 {
                let k = if j == 5 {
                    top
                } else {
                    (next() % (2 * top - 1) as u64) as i32 - (top - 1)
                };
                x.push(k as f32 * d);
            }
        }
        x
    }

    #[test]
    fn values_on_a_symmetric_grid_keep_it_and_others_quantize_as_llama_cpp() {
        for (ty, top) in [(GgmlType::Q4_0, 7), (GgmlType::Q8_0, 100)] {
            let x = grid(64, top);
            let n = ty.row_bytes(x.len()).unwrap();
            let (mut plain, mut kept) = (vec![0u8; n], vec![0u8; n]);
            quantize(ty, &x, &mut plain).unwrap();
            let exact = quantize_keeping_grid(ty, &x, &mut kept).unwrap();
            assert_eq!(exact, 64, "{}", ty.name());
            let mut back = vec![0f32; x.len()];
            dequantize(ty, &kept, &mut back).unwrap();
            assert!(back == x, "{}: the grid is kept exactly", ty.name());
            // Round-to-nearest moves them (the reason for the function).
            dequantize(ty, &plain, &mut back).unwrap();
            assert!(back != x, "{}", ty.name());
            // Values on no grid: the same bytes as `quantize`, no block counted.
            let y: Vec<f32> = (0..64 * 32)
                .map(|i| ((i * 7919 % 1013) as f32).sin())
                .collect();
            let (mut a, mut b) = (vec![0u8; n], vec![0u8; n]);
            quantize(ty, &y, &mut a).unwrap();
            assert_eq!(quantize_keeping_grid(ty, &y, &mut b).unwrap(), 0);
            assert_eq!(a, b, "{}", ty.name());
        }
        // Another type: as `quantize`, nothing kept.
        let x = grid(8, 7);
        let n = GgmlType::Q4_1.row_bytes(x.len()).unwrap();
        let (mut a, mut b) = (vec![0u8; n], vec![0u8; n]);
        quantize(GgmlType::Q4_1, &x, &mut a).unwrap();
        assert_eq!(
            quantize_keeping_grid(GgmlType::Q4_1, &x, &mut b).unwrap(),
            0
        );
        assert_eq!(a, b);
    }

    #[test]
    fn integer_types_become_codes_scales_and_mins_exactly() {
        let (rows, cols) = (3, 512);
        // Varying magnitudes per 16 values, so sub-block scales and mins differ.
        let x: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 37 % 101) as f32 - 43.0) / 7.0 * (1 + i / 16 % 5) as f32)
            .collect();
        use GgmlType::*;
        for ty in [
            Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS,
        ] {
            let mut q = vec![0u8; ty.row_bytes(rows * cols).unwrap()];
            quantize(ty, &x, &mut q).unwrap();
            let mut want = vec![0f32; x.len()];
            dequantize(ty, &q, &mut want).unwrap();
            let c = to_codes(ty, &q, rows, cols).unwrap().unwrap();
            assert_eq!(c.codes.len(), x.len());
            assert_eq!(c.scales.len(), x.len() / c.granule);
            assert!(c.mins.is_empty() || c.mins.len() == c.scales.len());
            for (i, w) in want.iter().enumerate() {
                let g = i / c.granule;
                assert!(
                    (c.codes[i] as u32) < 1u32 << c.bits,
                    "{ty}: code {}",
                    c.codes[i]
                );
                let v = match c.table {
                    Some(t) => t[c.codes[i] as usize] * c.scales[g],
                    None => (c.codes[i] as f32 - c.offset as f32) * c.scales[g],
                };
                let v = if c.mins.is_empty() { v } else { v + c.mins[g] };
                assert_eq!(v.to_bits(), w.to_bits(), "{ty} value {i}: {v} vs {w}");
            }
        }
        assert!(to_codes(Q2_K, &[], 1, 256).unwrap().is_none());
        assert!(to_codes(Q4_0, &[0; 17], 1, 32).is_err());
        assert!(to_codes(Q8_0, &[0; 34], 1, 16).is_err());
        assert!(to_codes(Q6_K, &[0; 210], 1, 128).is_err());
    }

    #[test]
    fn ids_round_trip_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for t in GgmlType::ALL {
            assert_eq!(GgmlType::from_id(t.id()), Some(t), "{t}");
            assert_eq!(GgmlType::from_name(t.name()), Some(t));
            assert_eq!(GgmlType::from_name(&t.name().to_lowercase()), Some(t));
            assert!(seen.insert(t.id()), "duplicate id {}", t.id());
        }
        // Retired or never-used ids.
        for id in [4, 5, 31, 32, 33, 36, 37, 38, 42, 1000] {
            assert_eq!(GgmlType::from_id(id), None, "{id}");
        }
        assert_eq!(GgmlType::from_name("Q4_K_M"), None);
    }

    #[test]
    fn ids_match_ggml_h() {
        use GgmlType::*;
        let expect = [
            (F32, 0),
            (F16, 1),
            (Q4_0, 2),
            (Q4_1, 3),
            (Q5_0, 6),
            (Q5_1, 7),
            (Q8_0, 8),
            (Q8_1, 9),
            (Q2_K, 10),
            (Q3_K, 11),
            (Q4_K, 12),
            (Q5_K, 13),
            (Q6_K, 14),
            (Q8_K, 15),
            (IQ2_XXS, 16),
            (IQ2_XS, 17),
            (IQ3_XXS, 18),
            (IQ1_S, 19),
            (IQ4_NL, 20),
            (IQ3_S, 21),
            (IQ2_S, 22),
            (IQ4_XS, 23),
            (I8, 24),
            (I16, 25),
            (I32, 26),
            (I64, 27),
            (F64, 28),
            (IQ1_M, 29),
            (BF16, 30),
            (TQ1_0, 34),
            (TQ2_0, 35),
            (MXFP4, 39),
            (NVFP4, 40),
            (Q1_0, 41),
        ];
        assert_eq!(expect.len(), GgmlType::ALL.len());
        for (t, id) in expect {
            assert_eq!(t.id(), id, "{t}");
        }
    }

    #[test]
    fn sizes_match_ggml() {
        use GgmlType::*;
        // (type, elements per block, bytes per block) from ggml's type_traits / gguf-py.
        let expect = [
            (F32, 1, 4),
            (F16, 1, 2),
            (BF16, 1, 2),
            (Q4_0, 32, 18),
            (Q4_1, 32, 20),
            (Q5_0, 32, 22),
            (Q5_1, 32, 24),
            (Q8_0, 32, 34),
            (Q8_1, 32, 36),
            (Q2_K, 256, 84),
            (Q3_K, 256, 110),
            (Q4_K, 256, 144),
            (Q5_K, 256, 176),
            (Q6_K, 256, 210),
            (Q8_K, 256, 292),
            (IQ2_XXS, 256, 66),
            (IQ2_XS, 256, 74),
            (IQ3_XXS, 256, 98),
            (IQ1_S, 256, 50),
            (IQ4_NL, 32, 18),
            (IQ3_S, 256, 110),
            (IQ2_S, 256, 82),
            (IQ4_XS, 256, 136),
            (I8, 1, 1),
            (I16, 1, 2),
            (I32, 1, 4),
            (I64, 1, 8),
            (F64, 1, 8),
            (IQ1_M, 256, 56),
            (TQ1_0, 256, 54),
            (TQ2_0, 256, 66),
            (MXFP4, 32, 17),
            (NVFP4, 64, 36),
            (Q1_0, 128, 18),
        ];
        assert_eq!(expect.len(), GgmlType::ALL.len());
        for (t, bs, ts) in expect {
            assert_eq!((t.block_size(), t.type_size()), (bs, ts), "{t}");
        }
        assert_eq!(Q4_K.bits_per_weight(), 4.5);
        assert_eq!(Q6_K.bits_per_weight(), 6.5625);
        assert_eq!(IQ4_XS.bits_per_weight(), 4.25);
        assert_eq!(Q3_K.bits_per_weight(), 3.4375);
        assert_eq!(Q2_K.bits_per_weight(), 2.625);
        assert_eq!(Q8_0.bits_per_weight(), 8.5);
    }

    #[test]
    fn row_bytes_and_errors() {
        assert_eq!(GgmlType::Q4_K.row_bytes(1536).unwrap(), 6 * 144);
        assert_eq!(GgmlType::F16.row_bytes(7).unwrap(), 14);
        assert_eq!(GgmlType::Q4_K.row_bytes(0).unwrap(), 0);
        match GgmlType::Q4_K.row_bytes(576) {
            Err(FormatError::NotBlockAligned {
                format,
                elements,
                block,
            }) => assert_eq!((format, elements, block), ("Q4_K", 576, 256)),
            other => panic!("{other:?}"),
        }
        let mut out = vec![0f32; 64];
        match dequantize(GgmlType::Q8_0, &[0u8; 67], &mut out) {
            Err(FormatError::WrongByteCount {
                format,
                elements,
                expected,
                actual,
            }) => assert_eq!((format, elements, expected, actual), ("Q8_0", 64, 68, 67)),
            other => panic!("{other:?}"),
        }
        let mut out = vec![0f32; 48];
        assert!(matches!(
            dequantize(GgmlType::Q8_0, &[0u8; 51], &mut out),
            Err(FormatError::NotBlockAligned { .. })
        ));
        let mut out = vec![0f32; 256];
        match dequantize(GgmlType::IQ2_XXS, &[0u8; 66], &mut out) {
            Err(FormatError::Unsupported(name)) => assert_eq!(name, "IQ2_XXS"),
            other => panic!("{other:?}"),
        }
        assert!(dequantize(GgmlType::Q4_K, &[], &mut []).is_ok());
    }

    /// Deterministic pseudo-random bytes (xorshift64*).
    fn noise(n: usize, mut s: u64) -> Vec<u8> {
        (0..n)
            .map(|_| {
                s ^= s >> 12;
                s ^= s << 25;
                s ^= s >> 27;
                (s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
            })
            .collect()
    }

    /// Overwrite every f16 field at `offsets` of each block with a tame value, so random
    /// blocks decode to finite numbers (NaN != NaN would defeat the comparisons).
    fn tame(bytes: &mut [u8], type_size: usize, offsets: &[usize]) {
        for (i, block) in bytes.chunks_exact_mut(type_size).enumerate() {
            for (k, &o) in offsets.iter().enumerate() {
                let v = half::f16::from_f32(0.001 * ((i + k) % 17) as f32 - 0.005);
                block[o..o + 2].copy_from_slice(&v.to_le_bytes());
            }
        }
    }

    #[test]
    fn parallel_matches_serial_for_every_type() {
        let f16_fields: &[(GgmlType, &[usize])] = &[
            (GgmlType::F32, &[]),
            (GgmlType::F16, &[]),
            (GgmlType::BF16, &[]),
            (GgmlType::Q4_0, &[0]),
            (GgmlType::Q4_1, &[0, 2]),
            (GgmlType::Q5_0, &[0]),
            (GgmlType::Q5_1, &[0, 2]),
            (GgmlType::Q8_0, &[0]),
            (GgmlType::Q2_K, &[80, 82]),
            (GgmlType::Q3_K, &[108]),
            (GgmlType::Q4_K, &[0, 2]),
            (GgmlType::Q5_K, &[0, 2]),
            (GgmlType::Q6_K, &[208]),
            (GgmlType::Q8_K, &[]),
            (GgmlType::IQ4_NL, &[0]),
            (GgmlType::IQ4_XS, &[0]),
        ];
        for &(ty, offs) in f16_fields {
            assert!(ty.can_dequantize());
            let n = PAR_MIN_ELEMENTS + 5 * QK_K;
            let mut src = noise(
                ty.row_bytes(n).unwrap(),
                0x9E37_79B9_7F4A_7C15 ^ ty.id() as u64,
            );
            if ty == GgmlType::Q8_K {
                // f32 scale at offset 0.
                for block in src.chunks_exact_mut(ty.type_size()) {
                    block[..4].copy_from_slice(&0.01f32.to_le_bytes());
                }
            } else if ty.block_size() > 1 {
                tame(&mut src, ty.type_size(), offs);
            } else {
                // Plain float types: keep only finite values by clearing the exponent's top bit.
                let w = ty.type_size();
                for c in src.chunks_exact_mut(w) {
                    c[w - 1] &= 0b1011_1111;
                }
            }
            let mut par = vec![0f32; n];
            dequantize(ty, &src, &mut par).unwrap();
            let mut ser = vec![0f32; n];
            dequantize_serial(ty, &src, &mut ser);
            assert!(par.iter().all(|v| v.is_finite()), "{ty}");
            assert!(
                par.iter()
                    .zip(&ser)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{ty}: parallel and serial differ"
            );
        }
    }
}
