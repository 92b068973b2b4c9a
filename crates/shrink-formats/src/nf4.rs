//! NF4 and FP4: bitsandbytes' 4-bit block formats, with optional double quantization of the
//! block scales (QLoRA's "double quant", bitsandbytes' `compress_statistics=True`).
//!
//! Ported from bitsandbytes 0.50.2 (`bitsandbytes/functional.py`, its CPU backend
//! `backends/default/ops.py` and `libbitsandbytes_cpu`), and bit-identical to it on CPU:
//! - the flattened tensor is cut into blocks of `B` elements (the last one may be partial);
//!   each block stores its absmax as float32;
//! - each value is scaled into [−1, 1] and mapped to the **nearest** of 16 code values
//!   ([`NF4_CODE`] or [`FP4_CODE`], `get_4bit_type`): the index is the number of midpoints
//!   between consecutive sorted code values (float32 `(a + b) / 2`) that lie strictly below
//!   the scaled value (`torch.bucketize` with `right=False`), so a value exactly on a midpoint
//!   takes the lower code. Full blocks scale by `x · (1 / max(absmax, 1e-38))`, the partial
//!   last block by `x / max(absmax, 1e-38)` and stores `max(absmax, 1e-38)` as its absmax —
//!   both exactly as bitsandbytes' CPU path does;
//! - two indices per byte, **the first element in the high nibble**
//!   (`packed = (q[0::2] << 4) | q[1::2]`, as the CUDA kernel `kQuantizeBlockwise` writes
//!   `qvals[j] = dQuantizeNF4(vals[2j]) << 4 | dQuantizeNF4(vals[2j+1])`); an odd element
//!   count is padded with the code of 0.0;
//! - dequantized value: `code[index] · absmax` in float32.
//!
//! Double quantization ([`Absmax::Double`]): the per-block absmax vector minus its mean (the
//! `offset`) is quantized blockwise, 256 values per block, to 8-bit codes of bitsandbytes'
//! signed "dynamic" map ([`DYNAMIC_MAP`], `create_dynamic_map(signed=True)`), with one float32
//! absmax per 256 blocks; a block's absmax comes back as
//! `DYNAMIC_MAP[code] · nested_absmax + offset`. The 8-bit quantizer reproduces
//! `libbitsandbytes_cpu`'s `quantize_cpu`: a 65536-entry lookup table from the value scaled to
//! [−1, 1] to the nearest code (see [`quantize_blockwise_dynamic`]).
//!
//! Where bitsandbytes' CUDA kernels differ (all at the level of ties and last bits):
//! `dQuantizeNF4` / `dQuantizeFP4` compare against decimal midpoint constants that can be an
//! ulp away from the float32 midpoints, and FP4 on CUDA is sign-magnitude (a tiny negative
//! value gets the "−0" code 8 where the CPU path gives code 0, and vice versa for tiny
//! positives); the CUDA 8-bit quantizer is an exact nearest search rather than a 65536-entry
//! table; CUDA scales the partial block by the reciprocal like the others. The **offset** is
//! computed here as the float32 sum of the absmax values (accumulated in float64) divided by
//! their count, whereas `torch.mean` sums in an order that depends on the CPU's vector width and the
//! thread count, so its offset can differ in the last bit; [`Absmax::double_with_offset`]
//! takes a given offset to reproduce a bitsandbytes state exactly.
//!
//! bits per weight with `B` = 64: 4 (indices) + 32/64 (f32 absmax) = 4.5, or with double
//! quantization 4 + 8/64 + 32/(64·256) + 32/numel ≈ 4.127. The code tables themselves (16
//! and 256 float32 values that a bitsandbytes checkpoint stores beside each tensor as
//! `quant_map` and `nested_quant_map`) are constants of the format and are not counted.

use std::sync::OnceLock;

use rayon::prelude::*;

use crate::error::FormatError;
use crate::PAR_MIN_ELEMENTS;

/// Format name used in errors.
const FORMAT: &str = "nf4";

/// bitsandbytes' default block size (`quantize_4bit(blocksize=None)`).
pub const DEFAULT_BLOCK: usize = 64;

/// Block sizes bitsandbytes accepts for 4-bit quantization.
pub const BLOCK_SIZES: [usize; 8] = [32, 64, 128, 256, 512, 1024, 2048, 4096];

/// Block size of the nested 8-bit quantization of the absmax vector (bitsandbytes: 256).
pub const NESTED_BLOCK: usize = 256;

/// The NF4 code (`get_4bit_type("nf4")`): quantiles of N(0, 1) normalized to [−1, 1].
///
/// −1.0, −0.6961928009986877, −0.5250730514526367, −0.39491748809814453,
/// −0.28444138169288635, −0.18477343022823334, −0.09105003625154495, 0.0,
/// 0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
/// 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0 — given here as the
/// float32 bit patterns bitsandbytes holds, so no decimal rounding can creep in.
pub const NF4_CODE: [f32; 16] = [
    f32::from_bits(0xbf80_0000),
    f32::from_bits(0xbf32_39b1),
    f32::from_bits(0xbf06_6b30),
    f32::from_bits(0xbeca_32a0),
    f32::from_bits(0xbe91_a24d),
    f32::from_bits(0xbe3d_353f),
    f32::from_bits(0xbdba_7871),
    f32::from_bits(0x0000_0000),
    f32::from_bits(0x3da2_faff),
    f32::from_bits(0x3e24_cae3),
    f32::from_bits(0x3e7c_04dd),
    f32::from_bits(0x3ead_033a),
    f32::from_bits(0x3ee1_a4b8),
    f32::from_bits(0x3f10_07ab),
    f32::from_bits(0x3f39_13b3),
    f32::from_bits(0x3f80_0000),
];

/// The FP4 code (`get_4bit_type("fp4")`): 1 sign, 2 exponent, 1 mantissa bit (bias 2), in
/// bit-pattern order, divided by its maximum 12.
///
/// Index `s·8 + m`: magnitudes 0, 0.0625, 8, 12, 4, 6, 2, 3 for `m` = 0..8, negative when `s`
/// is 1. Index 8 is +0.0, not −0.0: bitsandbytes writes it as the Python integer `-0` (its
/// torch dequantizer gives +0.0 for it, its C++ and CUDA kernels −0.0; equal as numbers).
pub const FP4_CODE: [f32; 16] = [
    0.0 / 12.0,
    0.0625 / 12.0,
    8.0 / 12.0,
    1.0, // 12 / 12
    4.0 / 12.0,
    6.0 / 12.0,
    2.0 / 12.0,
    3.0 / 12.0,
    0.0 / 12.0,
    -0.0625 / 12.0,
    -8.0 / 12.0,
    -1.0, // -12 / 12
    -4.0 / 12.0,
    -6.0 / 12.0,
    -2.0 / 12.0,
    -3.0 / 12.0,
];

/// FP4 code indices in ascending order of value (`torch.argsort` of [`FP4_CODE`]; the two
/// zeros keep index order, so +0 of index 0 comes before index 8).
const FP4_ORDER: [u8; 16] = [11, 10, 13, 12, 15, 14, 9, 0, 8, 1, 6, 7, 4, 5, 2, 3];

/// NF4 code indices in ascending order of value (the table is sorted).
const NF4_ORDER: [u8; 16] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];

/// Midpoints between consecutive code values in sorted order, in float32 as torch computes
/// `(code[order[:-1]] + code[order[1:]]) / 2`.
const fn midpoints(code: &[f32; 16], order: &[u8; 16]) -> [f32; 15] {
    let mut m = [0f32; 15];
    let mut i = 0;
    while i < 15 {
        m[i] = (code[order[i] as usize] + code[order[i + 1] as usize]) / 2.0;
        i += 1;
    }
    m
}

/// Decision boundaries of NF4.
const NF4_BOUNDS: [f32; 15] = midpoints(&NF4_CODE, &NF4_ORDER);
/// Decision boundaries of FP4.
const FP4_BOUNDS: [f32; 15] = midpoints(&FP4_CODE, &FP4_ORDER);

/// bitsandbytes' floor under an absmax before taking its reciprocal: float32(1e-38), a
/// subnormal (`absmax.clamp(min=1e-38)`).
const ABSMAX_FLOOR: f32 = f32::from_bits(0x006c_e3ee);

/// bitsandbytes' signed 8-bit "dynamic" map, `create_dynamic_map(signed=True)`, as float32
/// bit patterns in ascending order (index 127 is 0.0, index 255 is 1.0).
const DYNAMIC_MAP_BITS: [u32; 256] = [
    0xbf7e3333, 0xbf7a999a, 0xbf770000, 0xbf736666, 0xbf6fcccd, 0xbf6c3333, 0xbf68999a, 0xbf650000,
    0xbf616666, 0xbf5dcccd, 0xbf5a3333, 0xbf56999a, 0xbf530000, 0xbf4f6666, 0xbf4bcccd, 0xbf483333,
    0xbf44999a, 0xbf410000, 0xbf3d6666, 0xbf39cccd, 0xbf363334, 0xbf32999a, 0xbf2f0000, 0xbf2b6666,
    0xbf27cccd, 0xbf243334, 0xbf20999a, 0xbf1d0000, 0xbf196666, 0xbf15cccd, 0xbf123334, 0xbf0e999a,
    0xbf0b0000, 0xbf076666, 0xbf03cccc, 0xbf003333, 0xbef93332, 0xbef20000, 0xbeeacccc, 0xbee3999a,
    0xbedc6666, 0xbed53333, 0xbece0000, 0xbec6cccc, 0xbebf999a, 0xbeb86666, 0xbeb13333, 0xbeaa0000,
    0xbea2cccc, 0xbe9b999a, 0xbe946666, 0xbe8d3334, 0xbe860000, 0xbe7d9999, 0xbe6f3333, 0xbe60cccd,
    0xbe526666, 0xbe440000, 0xbe35999a, 0xbe273333, 0xbe18cccd, 0xbe0a6666, 0xbdf80000, 0xbddb3334,
    0xbdc9eb85, 0xbdc428f7, 0xbdbe6667, 0xbdb8a3d7, 0xbdb2e148, 0xbdad1eb8, 0xbda75c2a, 0xbda1999a,
    0xbd9bd70a, 0xbd96147b, 0xbd9051eb, 0xbd8a8f5d, 0xbd84cccd, 0xbd7e147b, 0xbd728f5d, 0xbd670a3d,
    0xbd5b851f, 0xbd500000, 0xbd447ae1, 0xbd38f5c3, 0xbd2d70a3, 0xbd21eb85, 0xbd166667, 0xbd0ae148,
    0xbcfeb852, 0xbce7ae15, 0xbcd0a3d7, 0xbcb9999a, 0xbca28f5d, 0xbc8b851f, 0xbc68f5c3, 0xbc3ae148,
    0xbc1f3b64, 0xbc160418, 0xbc0ccccd, 0xbc039581, 0xbbf4bc6a, 0xbbe24dd3, 0xbbcfdf3b, 0xbbbd70a4,
    0xbbab020d, 0xbb989374, 0xbb8624dd, 0xbb676c8a, 0xbb428f5c, 0xbb1db22d, 0xbaf1a9fc, 0xbaa7ef9d,
    0xba7765ff, 0xba59e83e, 0xba3c6a80, 0xba1eecc1, 0xba016f01, 0xb9c7e283, 0xb98ce705, 0xb923d70b,
    0xb8ba1f4b, 0xb88aefb3, 0xb8378034, 0xb7b24206, 0xb70205ff, 0xb65a1a94, 0xb513a3b7, 0x00000000,
    0x3513a3b7, 0x365a1a94, 0x370205ff, 0x37b24206, 0x38378034, 0x388aefb3, 0x38ba1f4b, 0x3923d70b,
    0x398ce705, 0x39c7e283, 0x3a016f01, 0x3a1eecc1, 0x3a3c6a80, 0x3a59e83e, 0x3a7765ff, 0x3aa7ef9d,
    0x3af1a9fc, 0x3b1db22d, 0x3b428f5c, 0x3b676c8a, 0x3b8624dd, 0x3b989374, 0x3bab020d, 0x3bbd70a4,
    0x3bcfdf3b, 0x3be24dd3, 0x3bf4bc6a, 0x3c039581, 0x3c0ccccd, 0x3c160418, 0x3c1f3b64, 0x3c3ae148,
    0x3c68f5c3, 0x3c8b851f, 0x3ca28f5d, 0x3cb9999a, 0x3cd0a3d7, 0x3ce7ae15, 0x3cfeb852, 0x3d0ae148,
    0x3d166667, 0x3d21eb85, 0x3d2d70a3, 0x3d38f5c3, 0x3d447ae1, 0x3d500000, 0x3d5b851f, 0x3d670a3d,
    0x3d728f5d, 0x3d7e147b, 0x3d84cccd, 0x3d8a8f5d, 0x3d9051eb, 0x3d96147b, 0x3d9bd70a, 0x3da1999a,
    0x3da75c2a, 0x3dad1eb8, 0x3db2e148, 0x3db8a3d7, 0x3dbe6667, 0x3dc428f7, 0x3dc9eb85, 0x3ddb3334,
    0x3df80000, 0x3e0a6666, 0x3e18cccd, 0x3e273333, 0x3e35999a, 0x3e440000, 0x3e526666, 0x3e60cccd,
    0x3e6f3333, 0x3e7d9999, 0x3e860000, 0x3e8d3334, 0x3e946666, 0x3e9b999a, 0x3ea2cccc, 0x3eaa0000,
    0x3eb13333, 0x3eb86666, 0x3ebf999a, 0x3ec6cccc, 0x3ece0000, 0x3ed53333, 0x3edc6666, 0x3ee3999a,
    0x3eeacccc, 0x3ef20000, 0x3ef93332, 0x3f003333, 0x3f03cccc, 0x3f076666, 0x3f0b0000, 0x3f0e999a,
    0x3f123334, 0x3f15cccd, 0x3f196666, 0x3f1d0000, 0x3f20999a, 0x3f243334, 0x3f27cccd, 0x3f2b6666,
    0x3f2f0000, 0x3f32999a, 0x3f363334, 0x3f39cccd, 0x3f3d6666, 0x3f410000, 0x3f44999a, 0x3f483333,
    0x3f4bcccd, 0x3f4f6666, 0x3f530000, 0x3f56999a, 0x3f5a3333, 0x3f5dcccd, 0x3f616666, 0x3f650000,
    0x3f68999a, 0x3f6c3333, 0x3f6fcccd, 0x3f736666, 0x3f770000, 0x3f7a999a, 0x3f7e3333, 0x3f800000,
];

/// [`DYNAMIC_MAP_BITS`] as float32.
const fn dynamic_map() -> [f32; 256] {
    let mut m = [0f32; 256];
    let mut i = 0;
    while i < 256 {
        m[i] = f32::from_bits(DYNAMIC_MAP_BITS[i]);
        i += 1;
    }
    m
}

/// bitsandbytes' signed 8-bit dynamic map (`create_dynamic_map(signed=True)`), ascending.
///
/// Built from 7 "exponent" decades 10^-6 … 10^0, each split linearly into 2^i fraction steps
/// (the midpoints of `linspace(0.1, 1, 2^i + 1)`), both signs, plus 0 and 1.0. Copied bit for
/// bit from bitsandbytes 0.50.2.
pub const DYNAMIC_MAP: [f32; 256] = dynamic_map();

/// Which 4-bit code: NormalFloat or bitsandbytes' FP4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fp4Kind {
    /// NormalFloat4 (QLoRA): [`NF4_CODE`].
    Nf4,
    /// bitsandbytes' FP4 (E2M1, bias 2): [`FP4_CODE`].
    Fp4,
}

impl Fp4Kind {
    /// The 16 code values, indexed by the stored 4-bit index.
    pub fn code(self) -> &'static [f32; 16] {
        match self {
            Fp4Kind::Nf4 => &NF4_CODE,
            Fp4Kind::Fp4 => &FP4_CODE,
        }
    }

    /// bitsandbytes' `quant_type` name: "nf4" or "fp4".
    pub fn name(self) -> &'static str {
        match self {
            Fp4Kind::Nf4 => "nf4",
            Fp4Kind::Fp4 => "fp4",
        }
    }

    /// Parse bitsandbytes' `quant_type` ("nf4", "fp4"; any case).
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "nf4" => Some(Fp4Kind::Nf4),
            "fp4" => Some(Fp4Kind::Fp4),
            _ => None,
        }
    }

    /// The index of the code value nearest to `x` (a value scaled into [−1, 1]); a value on a
    /// midpoint takes the lower code value (bitsandbytes' CPU rule, `torch.bucketize`).
    pub fn nearest(self, x: f32) -> u8 {
        let (bounds, order) = match self {
            Fp4Kind::Nf4 => (&NF4_BOUNDS, &NF4_ORDER),
            Fp4Kind::Fp4 => (&FP4_BOUNDS, &FP4_ORDER),
        };
        order[bounds.partition_point(|&b| b < x)]
    }
}

/// How to quantize: code, block size, and whether to double-quantize the block absmax.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Nf4Spec {
    /// NF4 or FP4.
    pub kind: Fp4Kind,
    /// Elements per block: one of [`BLOCK_SIZES`] (default [`DEFAULT_BLOCK`]).
    pub block_size: usize,
    /// Quantize the absmax vector to 8 bits (QLoRA double quantization).
    pub double_quant: bool,
}

impl Nf4Spec {
    /// NF4, blocks of 64, float32 absmax (bitsandbytes' `quantize_4bit(quant_type="nf4")`).
    pub fn nf4() -> Self {
        Nf4Spec {
            kind: Fp4Kind::Nf4,
            block_size: DEFAULT_BLOCK,
            double_quant: false,
        }
    }

    /// NF4, blocks of 64, double-quantized absmax: QLoRA's storage (≈ 4.127 bits per weight).
    pub fn qlora() -> Self {
        Nf4Spec {
            double_quant: true,
            ..Nf4Spec::nf4()
        }
    }

    /// Check the block size.
    pub fn validate(&self) -> Result<(), FormatError> {
        if !BLOCK_SIZES.contains(&self.block_size) {
            return Err(FormatError::BlockSize {
                format: FORMAT,
                block: self.block_size,
                allowed: "32, 64, 128, 256, 512, 1024, 2048 or 4096",
            });
        }
        Ok(())
    }

    /// Short name such as `nf4-b64-dq` or `fp4-b128`.
    pub fn name(&self) -> String {
        let dq = if self.double_quant { "-dq" } else { "" };
        format!("{}-b{}{dq}", self.kind.name(), self.block_size)
    }

    /// Bytes a tensor of `numel` elements takes: packed indices + absmax (+ nested state).
    pub fn stored_bytes(&self, numel: usize) -> usize {
        let blocks = numel.div_ceil(self.block_size);
        let absmax = if self.double_quant {
            blocks + 4 * blocks.div_ceil(NESTED_BLOCK) + 4
        } else {
            4 * blocks
        };
        numel.div_ceil(2) + absmax
    }
}

impl Default for Nf4Spec {
    /// [`Nf4Spec::nf4`].
    fn default() -> Self {
        Nf4Spec::nf4()
    }
}

/// The per-block absmax values, plain or double-quantized.
#[derive(Debug, Clone, PartialEq)]
pub enum Absmax {
    /// One float32 per block.
    F32(Vec<f32>),
    /// 8-bit dynamic-map codes of `absmax − offset`, blockwise over `nested_block` values.
    Double {
        /// One code per block (index into [`DYNAMIC_MAP`]).
        codes: Vec<u8>,
        /// One float32 absmax per `nested_block` codes (the last group may be partial).
        nested_absmax: Vec<f32>,
        /// Subtracted before quantizing, added back after: the mean of the absmax values.
        offset: f32,
        /// Codes per nested block ([`NESTED_BLOCK`]).
        nested_block: usize,
    },
}

impl Absmax {
    /// Double-quantize `absmax` with its mean as offset ([`mean_offset`]).
    pub fn double(absmax: &[f32]) -> Absmax {
        Absmax::double_with_offset(absmax, mean_offset(absmax))
    }

    /// Double-quantize `absmax` with a given offset (e.g. one read from a bitsandbytes state).
    pub fn double_with_offset(absmax: &[f32], offset: f32) -> Absmax {
        let centered: Vec<f32> = absmax.iter().map(|&a| a - offset).collect();
        let (codes, nested_absmax) = quantize_blockwise_dynamic(&centered, NESTED_BLOCK);
        Absmax::Double {
            codes,
            nested_absmax,
            offset,
            nested_block: NESTED_BLOCK,
        }
    }

    /// Number of blocks described.
    pub fn len(&self) -> usize {
        match self {
            Absmax::F32(v) => v.len(),
            Absmax::Double { codes, .. } => codes.len(),
        }
    }

    /// True if no blocks are described.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The absmax of every block as the dequantizer uses it: the float32 values, or
    /// `DYNAMIC_MAP[code] · nested_absmax + offset` (two float32 roundings, as bitsandbytes).
    pub fn values(&self) -> Vec<f32> {
        match self {
            Absmax::F32(v) => v.clone(),
            Absmax::Double {
                codes,
                nested_absmax,
                offset,
                nested_block,
            } => {
                let mut v = dequantize_blockwise_dynamic(codes, nested_absmax, *nested_block);
                v.iter_mut().for_each(|a| *a += *offset);
                v
            }
        }
    }

    /// Bytes stored: 4 per block, or 1 per block + 4 per nested block + 4 for the offset.
    pub fn stored_bytes(&self) -> usize {
        match self {
            Absmax::F32(v) => 4 * v.len(),
            Absmax::Double {
                codes,
                nested_absmax,
                ..
            } => codes.len() + 4 * nested_absmax.len() + 4,
        }
    }
}

/// The double-quantization offset: the mean of `absmax` as float32 — the sum rounded once to
/// float32, divided by the count in float32 (`torch.mean`'s sum-then-divide, without its
/// machine-dependent summation order). 0 for an empty slice.
pub fn mean_offset(absmax: &[f32]) -> f32 {
    if absmax.is_empty() {
        return 0.0;
    }
    // Accumulate in f64 (its error is far below float32's half ulp for any realistic count),
    // round the sum to float32 once, then divide in float32 as torch does.
    let sum: f64 = absmax.iter().map(|&a| a as f64).sum();
    (sum as f32) / absmax.len() as f32
}

/// Entries of the lookup table of [`quantize_blockwise_dynamic`].
const LUT_SIZE: usize = 65536;

/// bitsandbytes' `build_quantize_lut` for [`DYNAMIC_MAP`]: entry `i` is the code nearest to
/// `2i/65535 − 1` (float32), found by advancing past midpoints `(c[k] + c[k+1]) · 0.5`
/// strictly below it.
fn dynamic_lut() -> &'static [u8] {
    static LUT: OnceLock<Vec<u8>> = OnceLock::new();
    LUT.get_or_init(|| {
        let code = &DYNAMIC_MAP;
        let mid: Vec<f32> = code.windows(2).map(|c| 0.5 * (c[0] + c[1])).collect();
        let mut lut = vec![0u8; LUT_SIZE];
        let mut k = 0usize;
        for (i, l) in lut.iter_mut().enumerate() {
            let val = (2.0 * i as f32) / (LUT_SIZE - 1) as f32 - 1.0;
            while k < mid.len() && val > mid[k] {
                k += 1;
            }
            *l = k as u8;
        }
        lut
    })
}

/// bitsandbytes' blockwise 8-bit quantization onto [`DYNAMIC_MAP`] (`quantize_blockwise` on
/// CPU, `libbitsandbytes_cpu`'s `quantize_cpu`): per block of `block` values, absmax = max |x|
/// (an all-zero block stores 0 and codes 0); each value becomes
/// `lut[trunc(fma((clamp(x · (1/absmax), −1, 1) + 1) · 0.5, 65535, 0.5))]`.
///
/// Returns (one code per value, one absmax per block). `x` must be finite.
pub fn quantize_blockwise_dynamic(x: &[f32], block: usize) -> (Vec<u8>, Vec<f32>) {
    assert!(block > 0, "quantize_blockwise_dynamic: block size 0");
    let lut = dynamic_lut();
    let mut codes = vec![0u8; x.len()];
    let mut absmax = vec![0f32; x.len().div_ceil(block)];
    for ((xb, cb), a) in x
        .chunks(block)
        .zip(codes.chunks_mut(block))
        .zip(&mut absmax)
    {
        let m = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        *a = m;
        if m == 0.0 {
            continue; // codes stay 0, as bitsandbytes' memset
        }
        let inv = 1.0 / m;
        for (c, &v) in cb.iter_mut().zip(xb) {
            let t = ((v * inv).clamp(-1.0, 1.0) + 1.0) * 0.5;
            // The compiled C++ fuses `t * 65535 + 0.5` into one FMA; truncation to u16.
            let idx = t.mul_add((LUT_SIZE - 1) as f32, 0.5) as u32 as u16;
            *c = lut[idx as usize];
        }
    }
    (codes, absmax)
}

/// Inverse of [`quantize_blockwise_dynamic`]: `DYNAMIC_MAP[code] · absmax[i / block]`.
pub fn dequantize_blockwise_dynamic(codes: &[u8], absmax: &[f32], block: usize) -> Vec<f32> {
    assert!(block > 0, "dequantize_blockwise_dynamic: block size 0");
    codes
        .chunks(block)
        .zip(absmax)
        .flat_map(|(cb, &a)| cb.iter().map(move |&c| DYNAMIC_MAP[c as usize] * a))
        .collect()
}

/// A 4-bit (NF4 / FP4) quantized tensor of `numel` elements, flattened.
#[derive(Debug, Clone, PartialEq)]
pub struct Nf4Tensor {
    /// How it was quantized.
    pub spec: Nf4Spec,
    /// Number of elements (any shape, flattened row-major).
    pub numel: usize,
    /// `ceil(numel / 2)` bytes, two indices per byte, the first element in the high nibble.
    pub packed: Vec<u8>,
    /// One absmax per block, plain or double-quantized.
    pub absmax: Absmax,
}

/// Elements per parallel work item (a whole number of blocks).
const PAR_CHUNK_ELEMENTS: usize = 1 << 14;

/// Quantize the flattened tensor `w` (any shape) to NF4 / FP4.
///
/// Errors: an invalid block size, an empty tensor, or a NaN / infinity (the first is named).
/// Large tensors are quantized block-parallel with rayon; the result does not depend on it.
pub fn quantize(w: &[f32], spec: Nf4Spec) -> Result<Nf4Tensor, FormatError> {
    quantize_impl(w, spec, w.len() >= PAR_MIN_ELEMENTS, true)
}

/// [`quantize`] with the choice of parallel or serial execution, and of the AVX2 build of the
/// kernel (where the CPU has it) or the baseline one.
fn quantize_impl(
    w: &[f32],
    spec: Nf4Spec,
    parallel: bool,
    simd: bool,
) -> Result<Nf4Tensor, FormatError> {
    spec.validate()?;
    if w.is_empty() {
        return Err(FormatError::Empty { format: FORMAT });
    }
    let b = spec.block_size;
    let numel = w.len();
    let mut packed = vec![0u8; numel.div_ceil(2)];
    let mut absmax = vec![0f32; numel.div_ceil(b)];
    let blocks_per_chunk = (PAR_CHUNK_ELEMENTS / b).max(1);
    let chunk = blocks_per_chunk * b;
    // A chunk with a NaN or infinity stops with Err(()); the error names the tensor's first.
    let work = |((wc, pc), ac): ((&[f32], &mut [u8]), &mut [f32])| {
        if quantize_blocks(spec.kind, b, wc, pc, ac, simd) {
            Ok(())
        } else {
            Err(())
        }
    };
    let finite = if parallel {
        w.par_chunks(chunk)
            .zip(packed.par_chunks_mut(chunk / 2))
            .zip(absmax.par_chunks_mut(blocks_per_chunk))
            .try_for_each(work)
    } else {
        w.chunks(chunk)
            .zip(packed.chunks_mut(chunk / 2))
            .zip(absmax.chunks_mut(blocks_per_chunk))
            .try_for_each(work)
    };
    if finite.is_err() {
        crate::int::check_finite(w, usize::MAX, FORMAT)?;
    }
    let absmax = if spec.double_quant {
        Absmax::double(&absmax)
    } else {
        Absmax::F32(absmax)
    };
    Ok(Nf4Tensor {
        spec,
        numel,
        packed,
        absmax,
    })
}

/// Quantize whole blocks of `w` (only the tensor's last block may be short) into `packed`
/// (`ceil(w.len()/2)` bytes) and `absmax` (one per block), with the AVX2 build of the kernel if
/// `simd` and the CPU has AVX2. False, with the outputs unfinished, if `w` holds a NaN or an
/// infinity.
fn quantize_blocks(
    kind: Fp4Kind,
    b: usize,
    w: &[f32],
    packed: &mut [u8],
    absmax: &mut [f32],
    simd: bool,
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if simd && std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above).
        return unsafe { quantize_blocks_avx2(kind, b, w, packed, absmax) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = simd;
    quantize_blocks_kernel(kind, b, w, packed, absmax)
}

/// [`quantize_blocks_kernel`] compiled for AVX2, twice the vector width of the baseline x86-64
/// target (SSE2). The operations are the same IEEE ones (no FMA contraction), so the indices
/// are too.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn quantize_blocks_avx2(
    kind: Fp4Kind,
    b: usize,
    w: &[f32],
    packed: &mut [u8],
    absmax: &mut [f32],
) -> bool {
    quantize_blocks_kernel(kind, b, w, packed, absmax)
}

/// The body of [`quantize_blocks`], inlined into each instruction-set build.
#[inline(always)]
fn quantize_blocks_kernel(
    kind: Fp4Kind,
    b: usize,
    w: &[f32],
    packed: &mut [u8],
    absmax: &mut [f32],
) -> bool {
    let (bounds, order) = match kind {
        Fp4Kind::Nf4 => (&NF4_BOUNDS, &NF4_ORDER),
        Fp4Kind::Fp4 => (&FP4_BOUNDS, &FP4_ORDER),
    };
    // Indices of the whole run of blocks, then packed in one go: per block, the packing loop
    // would be too short for its vectorised body.
    // (u32, not u8: stored at full width, the counts of `bucket` stay in the compares' 32-bit
    // lanes instead of being narrowed to bytes compare by compare.)
    let mut idx = vec![0u32; w.len()];
    for ((wb, qb), a) in w.chunks(b).zip(idx.chunks_mut(b)).zip(absmax) {
        let Some(m) = block_absmax(wb) else {
            return false;
        };
        if wb.len() == b {
            // bitsandbytes: A * (1.0 / absmax.clamp(min=1e-38)), clamped to [-1, 1].
            *a = m;
            let inv = 1.0 / m.max(ABSMAX_FLOOR);
            for (q, &v) in qb.iter_mut().zip(wb) {
                *q = bucket(bounds, (v * inv).clamp(-1.0, 1.0));
            }
        } else {
            // The partial last block: am = absmax.clamp(min=1e-38) is stored, A / am.
            let am = m.max(ABSMAX_FLOOR);
            *a = am;
            for (q, &v) in qb.iter_mut().zip(wb) {
                *q = bucket(bounds, (v / am).clamp(-1.0, 1.0));
            }
        }
    }
    if kind != Fp4Kind::Nf4 {
        // NF4's order is the identity.
        idx.iter_mut()
            .for_each(|q| *q = order[(*q & 15) as usize] as u32);
    }
    // Two indices a byte, the first in the high nibble (blocks have even lengths, so pairs
    // never straddle two); an odd last index is paired with the code of 0.0.
    let mut pairs = idx.chunks_exact(2);
    for (p, q) in packed.iter_mut().zip(&mut pairs) {
        *p = ((q[0] << 4) | q[1]) as u8;
    }
    if let [last] = pairs.remainder() {
        packed[idx.len() / 2] = (*last as u8) << 4 | kind.nearest(0.0);
    }
    true
}

/// max |v| over `block`, or None if it holds a NaN or an infinity.
///
/// Taken on the bits, in 16 independent lanes so that it vectorises (a float max is a serial
/// chain the compiler may not reorder): for finite floats `bits & 0x7fff_ffff` orders as |v|,
/// and it reaches 0x7f80_0000 exactly for the infinities and NaNs.
#[inline(always)]
fn block_absmax(block: &[f32]) -> Option<f32> {
    let mut lanes = [0u32; 16];
    let mut chunks = block.chunks_exact(16);
    for c in &mut chunks {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l = (*l).max(v.to_bits() & 0x7fff_ffff);
        }
    }
    let mut m = lanes.into_iter().fold(0, u32::max);
    for v in chunks.remainder() {
        m = m.max(v.to_bits() & 0x7fff_ffff);
    }
    (m < 0x7f80_0000).then(|| f32::from_bits(m))
}

/// The number of `bounds` strictly below `x`: the sorted position [`Fp4Kind::nearest`] finds
/// with a binary search (`torch.bucketize`, `right=False`), counted instead so that it
/// vectorises across values (15 compares a value, no branches).
#[inline(always)]
fn bucket(bounds: &[f32; 15], x: f32) -> u32 {
    bounds.iter().fold(0, |n, &b| n + (b < x) as u32)
}

impl Nf4Tensor {
    /// Check that the parts fit together (block size, lengths, nested state). Run it on parts
    /// read from a file before dequantizing (the methods below panic on inconsistent parts).
    pub fn check(&self) -> Result<(), FormatError> {
        self.spec.validate()?;
        let bad = |what: String| FormatError::Inconsistent {
            format: FORMAT,
            what,
        };
        if self.packed.len() != self.numel.div_ceil(2) {
            return Err(bad(format!(
                "{} packed bytes for {} elements",
                self.packed.len(),
                self.numel
            )));
        }
        let blocks = self.num_blocks();
        if self.absmax.len() != blocks {
            return Err(bad(format!(
                "{} absmax values for {blocks} blocks",
                self.absmax.len()
            )));
        }
        match &self.absmax {
            Absmax::F32(_) if self.spec.double_quant => {
                Err(bad("plain absmax but the spec says double_quant".into()))
            }
            Absmax::Double { .. } if !self.spec.double_quant => {
                Err(bad("double-quantized absmax but the spec says plain".into()))
            }
            Absmax::Double {
                nested_absmax,
                nested_block,
                ..
            } if *nested_block == 0 || nested_absmax.len() != blocks.div_ceil(*nested_block) => {
                Err(bad(format!(
                    "{} nested absmax values for {blocks} blocks in groups of {nested_block}",
                    nested_absmax.len()
                )))
            }
            _ => Ok(()),
        }
    }

    /// Number of blocks: `ceil(numel / block_size)`.
    pub fn num_blocks(&self) -> usize {
        self.numel.div_ceil(self.spec.block_size)
    }

    /// The 4-bit indices, unpacked (`numel` values below 16).
    pub fn indices(&self) -> Vec<u8> {
        let mut out: Vec<u8> = self
            .packed
            .iter()
            .flat_map(|&p| [p >> 4, p & 0x0F])
            .collect();
        out.truncate(self.numel);
        out
    }

    /// Dequantize into `out` (`numel` values): `code[index] · absmax[block]`.
    pub fn dequantize_into(&self, out: &mut [f32]) {
        assert_eq!(out.len(), self.numel, "dequantize: output length");
        let absmax = self.absmax.values();
        let code = self.spec.kind.code();
        let b = self.spec.block_size;
        let work = |((o, p), &a): ((&mut [f32], &[u8]), &f32)| {
            for (o2, &p) in o.chunks_mut(2).zip(p) {
                o2[0] = code[(p >> 4) as usize] * a;
                if let Some(x) = o2.get_mut(1) {
                    *x = code[(p & 0x0F) as usize] * a;
                }
            }
        };
        if self.numel >= PAR_MIN_ELEMENTS {
            out.par_chunks_mut(b)
                .zip(self.packed.par_chunks(b / 2))
                .zip(absmax.par_iter())
                .for_each(work);
        } else {
            out.chunks_mut(b)
                .zip(self.packed.chunks(b / 2))
                .zip(absmax.iter())
                .for_each(work);
        }
    }

    /// Dequantize (flattened float32).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.numel];
        self.dequantize_into(&mut out);
        out
    }

    /// Bytes stored: packed indices + absmax (+ nested codes, nested absmax, offset).
    pub fn stored_bytes(&self) -> usize {
        self.packed.len() + self.absmax.stored_bytes()
    }

    /// Storage cost in bits per weight, from [`Nf4Tensor::stored_bytes`].
    pub fn bits_per_weight(&self) -> f64 {
        (self.stored_bytes() * 8) as f64 / self.numel as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_bitsandbytes_bits() {
        // float32 bit patterns printed by bitsandbytes 0.50.2 (get_4bit_type(..., "cpu")).
        let nf4: [u32; 16] = [
            0xbf800000, 0xbf3239b1, 0xbf066b30, 0xbeca32a0, 0xbe91a24d, 0xbe3d353f, 0xbdba7871,
            0x0, 0x3da2faff, 0x3e24cae3, 0x3e7c04dd, 0x3ead033a, 0x3ee1a4b8, 0x3f1007ab,
            0x3f3913b3, 0x3f800000,
        ];
        let fp4: [u32; 16] = [
            0x0, 0x3baaaaab, 0x3f2aaaab, 0x3f800000, 0x3eaaaaab, 0x3f000000, 0x3e2aaaab,
            0x3e800000, 0x0, 0xbbaaaaab, 0xbf2aaaab, 0xbf800000, 0xbeaaaaab, 0xbf000000,
            0xbe2aaaab, 0xbe800000,
        ];
        assert_eq!(NF4_CODE.map(f32::to_bits), nf4);
        assert_eq!(FP4_CODE.map(f32::to_bits), fp4);
        // torch's midpoints (printed by _get_4bit_quantize_bounds).
        assert_eq!(NF4_BOUNDS[14], 0.861_478_45);
        assert_eq!(NF4_BOUNDS[7], 0.039_790_15);
        assert_eq!(FP4_BOUNDS[7], 0.0);
        assert_eq!(FP4_BOUNDS[13], 0.583_333_4);
        assert_eq!(ABSMAX_FLOOR, 1e-38);
        assert!(DYNAMIC_MAP.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(
            (DYNAMIC_MAP[0], DYNAMIC_MAP[127], DYNAMIC_MAP[255]),
            (-0.992_968_75, 0.0, 1.0)
        );
    }

    #[test]
    fn nearest_follows_bucketize() {
        for kind in [Fp4Kind::Nf4, Fp4Kind::Fp4] {
            let code = kind.code();
            for (i, &c) in code.iter().enumerate() {
                // Each code value maps to itself (FP4's second zero, index 8, to index 0).
                let want = if kind == Fp4Kind::Fp4 && i == 8 { 0 } else { i };
                assert_eq!(kind.nearest(c) as usize, want, "{kind:?} {c}");
            }
        }
        // On a midpoint: the lower value; just above: the upper one.
        let m = NF4_BOUNDS[10];
        assert_eq!(Fp4Kind::Nf4.nearest(m), 10);
        assert_eq!(Fp4Kind::Nf4.nearest(f32::from_bits(m.to_bits() + 1)), 11);
        // FP4 on CPU: tiny positives take index 8 (the second zero), zero and tiny negatives 0.
        assert_eq!(Fp4Kind::Fp4.nearest(0.001), 8);
        assert_eq!(Fp4Kind::Fp4.nearest(0.0), 0);
        assert_eq!(Fp4Kind::Fp4.nearest(-0.001), 0);
        assert_eq!(Fp4Kind::Fp4.nearest(-0.004), 9);
        assert_eq!(Fp4Kind::Fp4.nearest(1.0), 3);
        assert_eq!(Fp4Kind::Fp4.nearest(-1.0), 11);
    }

    #[test]
    fn parallel_matches_serial() {
        let n = 3 * PAR_CHUNK_ELEMENTS + 129;
        let w: Vec<f32> = (0..n)
            .map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 0.001 * (1 + i % 5) as f32)
            .collect();
        for spec in [
            Nf4Spec::nf4(),
            Nf4Spec::qlora(),
            Nf4Spec {
                kind: Fp4Kind::Fp4,
                block_size: 4096,
                double_quant: false,
            },
        ] {
            let a = quantize_impl(&w, spec, true, true).unwrap();
            let b = quantize_impl(&w, spec, false, true).unwrap();
            assert_eq!(a, b, "{}", spec.name());
        }
    }

    #[test]
    fn simd_build_matches_baseline() {
        // An odd count: a partial last block and a padded last byte; zeros of both signs.
        let n = 2 * PAR_CHUNK_ELEMENTS + 4096 + 77;
        let mut w: Vec<f32> = (0..n)
            .map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 0.001 * (1 + i % 5) as f32)
            .collect();
        w[..64].fill(-0.0);
        w[64..128].iter_mut().step_by(3).for_each(|v| *v = 0.0);
        for kind in [Fp4Kind::Nf4, Fp4Kind::Fp4] {
            for block_size in [32, 64, 4096] {
                let spec = Nf4Spec {
                    kind,
                    block_size,
                    double_quant: false,
                };
                let a = quantize_impl(&w, spec, false, true).unwrap();
                let b = quantize_impl(&w, spec, false, false).unwrap();
                assert_eq!(a, b, "{}", spec.name());
                // The indices are the nearest code values, as `nearest` finds them.
                let absmax = a.absmax.values();
                for (i, (&v, &q)) in w.iter().zip(&a.indices()).enumerate() {
                    let am = absmax[i / block_size].max(ABSMAX_FLOOR);
                    let x = if i < n / block_size * block_size {
                        v * (1.0 / am)
                    } else {
                        v / am
                    };
                    assert_eq!(q, kind.nearest(x.clamp(-1.0, 1.0)), "{} {i}", spec.name());
                }
            }
        }
    }

    #[test]
    fn non_finite_is_named_first_one() {
        let mut w = vec![0.5f32; 5 * PAR_CHUNK_ELEMENTS];
        w[4 * PAR_CHUNK_ELEMENTS + 3] = f32::NAN;
        w[PAR_CHUNK_ELEMENTS + 9] = f32::NEG_INFINITY;
        for parallel in [true, false] {
            match quantize_impl(&w, Nf4Spec::qlora(), parallel, true) {
                Err(FormatError::NonFinite { index, .. }) => {
                    assert_eq!(index, PAR_CHUNK_ELEMENTS + 9)
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn zero_blocks_and_lut_edges() {
        let mut w = vec![0f32; 64 + 5];
        w[64] = 0.5;
        let t = quantize(&w, Nf4Spec::nf4()).unwrap();
        assert_eq!(t.absmax, Absmax::F32(vec![0.0, 0.5]));
        assert!(t.indices()[..64].iter().all(|&i| i == 7));
        assert_eq!(t.dequantize()[64], 0.5);
        // An all-zero partial block stores bitsandbytes' floor 1e-38.
        let t = quantize(
            &[1.0; 64]
                .iter()
                .chain(&[0.0; 3])
                .copied()
                .collect::<Vec<_>>(),
            Nf4Spec::nf4(),
        )
        .unwrap();
        assert_eq!(t.absmax, Absmax::F32(vec![1.0, ABSMAX_FLOOR]));
        // 8-bit table: ±1 and 0 land on their codes.
        // 0.0 does not land on code 127 (0.0) but on 131 (2.125e-5): the table entry for 0
        // is 32768, i.e. 2·32768/65535 − 1 ≈ 1.5e-5 (bitsandbytes gives [0, 131, 255] too).
        let (c, a) = quantize_blockwise_dynamic(&[-2.0, 0.0, 2.0], 256);
        assert_eq!((c, a), (vec![0, 131, 255], vec![2.0]));
        let (c, a) = quantize_blockwise_dynamic(&[0.0; 3], 2);
        assert_eq!((c, a), (vec![0, 0, 0], vec![0.0, 0.0]));
    }
}
