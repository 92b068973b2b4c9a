//! The original ("legacy") 32-element block formats: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0.
//!
//! Layouts follow `block_q4_0` … `block_q8_0` in llama.cpp's `ggml/src/ggml-common.h`; the
//! dequantizers port `dequantize_row_q4_0` … `dequantize_row_q8_0` of `ggml/src/ggml-quants.c`
//! operation for operation, and the quantizers port `quantize_row_q4_0_ref` …
//! `quantize_row_q8_0_ref` (no importance) and `quantize_row_q4_0_impl` …
//! `quantize_row_q5_1_impl` (with importance). All multi-byte fields are little-endian;
//! `ggml_half` is IEEE f16.
//!
//! Element order inside a 4/5-bit block: byte `j` of `qs` holds element `j` in its low nibble
//! and element `j + 16` in its high nibble.

// The quantizers keep ggml's index loops (`x[j]` with `x[j + 16]`) so they read side by side
// with the C they port.
#![allow(clippy::needless_range_loop)]

use super::k_quants::{make_qkx3_quants, make_qx_quants};
use super::{
    f16_le, fp16_bytes, write_blocks, Block, FieldReader, FieldWriter, OnGrid, Quantize, QK4_0,
    QK4_1, QK5_0, QK5_1, QK8_0,
};

/// `sigma2` of the weighted legacy quantizers: the mean square of the whole row.
fn row_sigma2(x: &[f32]) -> f32 {
    let mut sum_x2 = 0f32;
    for &v in x {
        sum_x2 += v * v;
    }
    sum_x2 / x.len() as f32
}

/// The importance weights of one 32-element block: `qw[j] * sqrtf(sigma2 + x[j]*x[j])`.
fn block_weights(xb: &[f32], qw: &[f32], sigma2: f32) -> [f32; 32] {
    let mut w = [0f32; 32];
    for j in 0..32 {
        w[j] = qw[j] * (sigma2 + xb[j] * xb[j]).sqrt();
    }
    w
}

/// The (absolute max, signed value at it) of a block, first occurrence winning ties.
#[inline(always)]
fn signed_absmax(x: &[f32]) -> (f32, f32) {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    (amax, max)
}

/// When every value of `x` is exactly `d·k` for one f16 `d` and integers `k` in `lo..=hi`:
/// that `d` and the `k`. A symmetric quantizer that already ran (GPTQ, RTN in groups of the
/// block's size) leaves its values so; rounding them again would move them. The scale is sought
/// from the largest value: `d = x_max / k` for each admissible `k`.
fn exact_grid<const N: usize>(x: &[f32], lo: i32, hi: i32) -> Option<(f32, [i32; N])> {
    let x: &[f32; N] = x.try_into().ok()?;
    let (amax, max) = signed_absmax(x);
    if amax == 0.0 || !amax.is_finite() {
        return None;
    }
    // Largest |k| first (the smallest scale), the negative one first of each pair.
    let ks = (1..=lo.abs().max(hi.abs()))
        .rev()
        .flat_map(|m| [-m, m])
        .filter(|k| (lo..=hi).contains(k));
    'candidates: for kmax in ks {
        let d = max / kmax as f32;
        if half::f16::from_f32(d).to_f32() != d || d == 0.0 {
            continue;
        }
        let mut k = [0i32; N];
        for (kj, &v) in k.iter_mut().zip(x) {
            let q = (v / d).round();
            if q < lo as f32 || q > hi as f32 || q * d != v {
                continue 'candidates;
            }
            *kj = q as i32;
        }
        return Some((d, k));
    }
    None
}

impl OnGrid for BlockQ4_0 {
    /// The block holding `x` exactly, when `x` lies on a Q4_0 grid ([`exact_grid`], codes
    /// −8..=7).
    fn on_grid(x: &[f32]) -> Option<Self> {
        let (d, k) = exact_grid::<QK4_0>(x, -8, 7)?;
        let mut qs = [0u8; QK4_0 / 2];
        for j in 0..QK4_0 / 2 {
            qs[j] = (k[j] + 8) as u8 | (((k[j + QK4_0 / 2] + 8) as u8) << 4);
        }
        Some(BlockQ4_0 {
            d: fp16_bytes(d),
            qs,
        })
    }
}

impl OnGrid for BlockQ8_0 {
    /// The block holding `x` exactly, when `x` lies on a Q8_0 grid ([`exact_grid`]; codes
    /// −127..=127, as ggml's quantizer writes them: its AVX2 dot product takes |q| with
    /// `_mm256_sign_epi8`, which −128 would break).
    fn on_grid(x: &[f32]) -> Option<Self> {
        let (d, k) = exact_grid::<QK8_0>(x, -127, 127)?;
        Some(BlockQ8_0 {
            d: fp16_bytes(d),
            qs: k.map(|v| v as i8 as u8),
        })
    }
}

/// The (min, max) of a block as `quantize_row_q4_1_ref` finds them.
#[inline(always)]
fn min_max(x: &[f32]) -> (f32, f32) {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

/// Pack 32 quants of up to 5 bits: low nibbles into `qs` (element `j` low, `j + 16` high), the
/// fifth bits into the little-endian `qh` word.
#[inline(always)]
fn pack_q5(l: &[u8; 32]) -> ([u8; 16], [u8; 4]) {
    let mut qs = [0u8; 16];
    let mut qh = 0u32;
    for j in 0..16 {
        let (xi0, xi1) = (l[j], l[j + 16]);
        qs[j] = (xi0 & 0x0F) | ((xi1 & 0x0F) << 4);
        qh |= ((xi0 as u32 & 0x10) >> 4) << j;
        qh |= ((xi1 as u32 & 0x10) >> 4) << (j + 16);
    }
    (qs, qh.to_le_bytes())
}

/// `block_q4_0` (18 bytes): `x = (q - 8) * d`.
#[repr(C)]
pub(crate) struct BlockQ4_0 {
    /// Offset 0: `ggml_half d`, the block scale (delta).
    d: [u8; 2],
    /// Offset 2: `uint8_t qs[16]`, 32 unsigned 4-bit quants (nibbles, see module docs).
    qs: [u8; QK4_0 / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_0>() == 2 + QK4_0 / 2);

impl Block for BlockQ4_0 {
    const SIZE: usize = std::mem::size_of::<Self>();
    const QK: usize = QK4_0;

    fn read(bytes: &[u8]) -> Self {
        let mut r = FieldReader::new(bytes);
        let b = BlockQ4_0 {
            d: r.take(),
            qs: r.take(),
        };
        r.finish();
        b
    }

    /// Port of `dequantize_row_q4_0` (one block).
    fn dequantize(&self, y: &mut [f32]) {
        let y: &mut [f32; QK4_0] = y.try_into().expect("one Q4_0 block");
        let d = f16_le(self.d);
        for j in 0..QK4_0 / 2 {
            let x0 = (self.qs[j] & 0x0F) as i32 - 8;
            let x1 = (self.qs[j] >> 4) as i32 - 8;
            y[j] = x0 as f32 * d;
            y[j + QK4_0 / 2] = x1 as f32 * d;
        }
    }
}

impl Quantize for BlockQ4_0 {
    const F16_FIELDS: &'static [usize] = &[0];

    /// Port of `quantize_row_q4_0_ref` (one block).
    fn quantize(x: &[f32]) -> Self {
        let x: &[f32; QK4_0] = x.try_into().expect("one Q4_0 block");
        let (_, max) = signed_absmax(x);
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut qs = [0u8; QK4_0 / 2];
        for j in 0..QK4_0 / 2 {
            let x0 = x[j] * id;
            let x1 = x[QK4_0 / 2 + j] * id;
            // `MIN(15, (int8_t)(x0 + 8.5f))`: truncation toward zero, then clamp.
            let xi0 = ((x0 + 8.5) as i8).min(15) as u8;
            let xi1 = ((x1 + 8.5) as i8).min(15) as u8;
            qs[j] = xi0 | (xi1 << 4);
        }
        BlockQ4_0 {
            d: fp16_bytes(d),
            qs,
        }
    }

    /// Port of `quantize_row_q4_0_impl` with `quant_weights`.
    fn quantize_row_weighted(x: &[f32], qw: &[f32], y: &mut [u8]) {
        let sigma2 = row_sigma2(x);
        write_blocks(x, y, |xb, ib| {
            let weight = block_weights(xb, &qw[QK4_0 * ib..], sigma2);
            let mut l = [0i8; QK4_0];
            let d = make_qx_quants(8, xb, &mut l, 1, Some(&weight));
            let mut qs = [0u8; QK4_0 / 2];
            for j in 0..16 {
                qs[j] = (l[j] as u8) | ((l[j + 16] as u8) << 4);
            }
            BlockQ4_0 {
                d: fp16_bytes(d),
                qs,
            }
        });
    }

    fn write(&self, bytes: &mut [u8]) {
        let mut w = FieldWriter::new(bytes);
        w.put(&self.d);
        w.put(&self.qs);
        w.finish();
    }
}

/// `block_q4_1` (20 bytes): `x = q * d + m`.
#[repr(C)]
pub(crate) struct BlockQ4_1 {
    /// Offset 0: `ggml_half d`, the block scale (delta).
    d: [u8; 2],
    /// Offset 2: `ggml_half m`, the block minimum.
    m: [u8; 2],
    /// Offset 4: `uint8_t qs[16]`, 32 unsigned 4-bit quants (nibbles, see module docs).
    qs: [u8; QK4_1 / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == 2 * 2 + QK4_1 / 2);

impl Block for BlockQ4_1 {
    const SIZE: usize = std::mem::size_of::<Self>();
    const QK: usize = QK4_1;

    fn read(bytes: &[u8]) -> Self {
        let mut r = FieldReader::new(bytes);
        let b = BlockQ4_1 {
            d: r.take(),
            m: r.take(),
            qs: r.take(),
        };
        r.finish();
        b
    }

    /// Port of `dequantize_row_q4_1` (one block).
    fn dequantize(&self, y: &mut [f32]) {
        let y: &mut [f32; QK4_1] = y.try_into().expect("one Q4_1 block");
        let d = f16_le(self.d);
        let m = f16_le(self.m);
        for j in 0..QK4_1 / 2 {
            let x0 = (self.qs[j] & 0x0F) as i32;
            let x1 = (self.qs[j] >> 4) as i32;
            y[j] = x0 as f32 * d + m;
            y[j + QK4_1 / 2] = x1 as f32 * d + m;
        }
    }
}

impl Quantize for BlockQ4_1 {
    const F16_FIELDS: &'static [usize] = &[0, 2];

    /// Port of `quantize_row_q4_1_ref` (one block).
    fn quantize(x: &[f32]) -> Self {
        let x: &[f32; QK4_1] = x.try_into().expect("one Q4_1 block");
        let (min, max) = min_max(x);
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut qs = [0u8; QK4_1 / 2];
        for j in 0..QK4_1 / 2 {
            let x0 = (x[j] - min) * id;
            let x1 = (x[QK4_1 / 2 + j] - min) * id;
            let xi0 = ((x0 + 0.5) as i8).min(15) as u8;
            let xi1 = ((x1 + 0.5) as i8).min(15) as u8;
            qs[j] = xi0 | (xi1 << 4);
        }
        BlockQ4_1 {
            d: fp16_bytes(d),
            m: fp16_bytes(min),
            qs,
        }
    }

    /// Port of `quantize_row_q4_1_impl` with `quant_weights`.
    fn quantize_row_weighted(x: &[f32], qw: &[f32], y: &mut [u8]) {
        let sigma2 = row_sigma2(x);
        write_blocks(x, y, |xb, ib| {
            let weight = block_weights(xb, &qw[QK4_1 * ib..], sigma2);
            let (mut l, mut laux) = ([0u8; QK4_1], [0u8; QK4_1]);
            let (d, min) = make_qkx3_quants(
                15,
                xb,
                Some(&weight),
                &mut l,
                &mut laux,
                -0.9,
                0.05,
                36,
                false,
            );
            let mut qs = [0u8; QK4_1 / 2];
            for j in 0..16 {
                qs[j] = l[j] | (l[j + 16] << 4);
            }
            BlockQ4_1 {
                d: fp16_bytes(d),
                m: fp16_bytes(-min),
                qs,
            }
        });
    }

    fn write(&self, bytes: &mut [u8]) {
        let mut w = FieldWriter::new(bytes);
        w.put(&self.d);
        w.put(&self.m);
        w.put(&self.qs);
        w.finish();
    }
}

/// `block_q5_0` (22 bytes): `x = (q - 16) * d`, q = 4 low bits from `qs` | 5th bit from `qh`.
#[repr(C)]
pub(crate) struct BlockQ5_0 {
    /// Offset 0: `ggml_half d`, the block scale (delta).
    d: [u8; 2],
    /// Offset 2: `uint8_t qh[4]`, a little-endian u32 whose bit `i` is element `i`'s 5th bit.
    qh: [u8; 4],
    /// Offset 6: `uint8_t qs[16]`, the low 4 bits of the 32 quants (nibbles, see module docs).
    qs: [u8; QK5_0 / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ5_0>() == 2 + 4 + QK5_0 / 2);

impl Block for BlockQ5_0 {
    const SIZE: usize = std::mem::size_of::<Self>();
    const QK: usize = QK5_0;

    fn read(bytes: &[u8]) -> Self {
        let mut r = FieldReader::new(bytes);
        let b = BlockQ5_0 {
            d: r.take(),
            qh: r.take(),
            qs: r.take(),
        };
        r.finish();
        b
    }

    /// Port of `dequantize_row_q5_0` (one block).
    fn dequantize(&self, y: &mut [f32]) {
        let y: &mut [f32; QK5_0] = y.try_into().expect("one Q5_0 block");
        let d = f16_le(self.d);
        let qh = u32::from_le_bytes(self.qh);
        for j in 0..QK5_0 / 2 {
            let xh_0 = (((qh >> j) << 4) & 0x10) as u8;
            let xh_1 = ((qh >> (j + 12)) & 0x10) as u8;
            let x0 = ((self.qs[j] & 0x0F) | xh_0) as i32 - 16;
            let x1 = ((self.qs[j] >> 4) | xh_1) as i32 - 16;
            y[j] = x0 as f32 * d;
            y[j + QK5_0 / 2] = x1 as f32 * d;
        }
    }
}

impl Quantize for BlockQ5_0 {
    const F16_FIELDS: &'static [usize] = &[0];

    /// Port of `quantize_row_q5_0_ref` (one block).
    fn quantize(x: &[f32]) -> Self {
        let x: &[f32; QK5_0] = x.try_into().expect("one Q5_0 block");
        let (_, max) = signed_absmax(x);
        let d = max / -16.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut l = [0u8; QK5_0];
        for j in 0..QK5_0 {
            l[j] = ((x[j] * id + 16.5) as i8).min(31) as u8;
        }
        let (qs, qh) = pack_q5(&l);
        BlockQ5_0 {
            d: fp16_bytes(d),
            qh,
            qs,
        }
    }

    /// Port of `quantize_row_q5_0_impl` with `quant_weights`.
    fn quantize_row_weighted(x: &[f32], qw: &[f32], y: &mut [u8]) {
        let sigma2 = row_sigma2(x);
        write_blocks(x, y, |xb, ib| {
            let weight = block_weights(xb, &qw[QK5_0 * ib..], sigma2);
            let mut l = [0i8; QK5_0];
            let d = make_qx_quants(16, xb, &mut l, 1, Some(&weight));
            let (qs, qh) = pack_q5(&l.map(|v| v as u8));
            BlockQ5_0 {
                d: fp16_bytes(d),
                qh,
                qs,
            }
        });
    }

    fn write(&self, bytes: &mut [u8]) {
        let mut w = FieldWriter::new(bytes);
        w.put(&self.d);
        w.put(&self.qh);
        w.put(&self.qs);
        w.finish();
    }
}

/// `block_q5_1` (24 bytes): `x = q * d + m`, q = 4 low bits from `qs` | 5th bit from `qh`.
#[repr(C)]
pub(crate) struct BlockQ5_1 {
    /// Offset 0: `ggml_half d`, the block scale (delta).
    d: [u8; 2],
    /// Offset 2: `ggml_half m`, the block minimum.
    m: [u8; 2],
    /// Offset 4: `uint8_t qh[4]`, a little-endian u32 whose bit `i` is element `i`'s 5th bit.
    qh: [u8; 4],
    /// Offset 8: `uint8_t qs[16]`, the low 4 bits of the 32 quants (nibbles, see module docs).
    qs: [u8; QK5_1 / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ5_1>() == 2 * 2 + 4 + QK5_1 / 2);

impl Block for BlockQ5_1 {
    const SIZE: usize = std::mem::size_of::<Self>();
    const QK: usize = QK5_1;

    fn read(bytes: &[u8]) -> Self {
        let mut r = FieldReader::new(bytes);
        let b = BlockQ5_1 {
            d: r.take(),
            m: r.take(),
            qh: r.take(),
            qs: r.take(),
        };
        r.finish();
        b
    }

    /// Port of `dequantize_row_q5_1` (one block).
    fn dequantize(&self, y: &mut [f32]) {
        let y: &mut [f32; QK5_1] = y.try_into().expect("one Q5_1 block");
        let d = f16_le(self.d);
        let m = f16_le(self.m);
        let qh = u32::from_le_bytes(self.qh);
        for j in 0..QK5_1 / 2 {
            let xh_0 = (((qh >> j) << 4) & 0x10) as u8;
            let xh_1 = ((qh >> (j + 12)) & 0x10) as u8;
            let x0 = ((self.qs[j] & 0x0F) | xh_0) as i32;
            let x1 = ((self.qs[j] >> 4) | xh_1) as i32;
            y[j] = x0 as f32 * d + m;
            y[j + QK5_1 / 2] = x1 as f32 * d + m;
        }
    }
}

impl Quantize for BlockQ5_1 {
    const F16_FIELDS: &'static [usize] = &[0, 2];

    /// Port of `quantize_row_q5_1_ref` (one block).
    fn quantize(x: &[f32]) -> Self {
        let x: &[f32; QK5_1] = x.try_into().expect("one Q5_1 block");
        let (min, max) = min_max(x);
        let d = (max - min) / 31.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut l = [0u8; QK5_1];
        for j in 0..QK5_1 {
            // `(uint8_t)(x0 + 0.5f)`: no clamp in ggml (the value stays below 32).
            l[j] = ((x[j] - min) * id + 0.5) as u8;
        }
        let (qs, qh) = pack_q5(&l);
        BlockQ5_1 {
            d: fp16_bytes(d),
            m: fp16_bytes(min),
            qh,
            qs,
        }
    }

    /// Port of `quantize_row_q5_1_impl` with `quant_weights`.
    fn quantize_row_weighted(x: &[f32], qw: &[f32], y: &mut [u8]) {
        let sigma2 = row_sigma2(x);
        write_blocks(x, y, |xb, ib| {
            let weight = block_weights(xb, &qw[QK5_1 * ib..], sigma2);
            let (mut l, mut laux) = ([0u8; QK5_1], [0u8; QK5_1]);
            let (d, min) = make_qkx3_quants(
                31,
                xb,
                Some(&weight),
                &mut l,
                &mut laux,
                -0.9,
                0.05,
                36,
                false,
            );
            let (qs, qh) = pack_q5(&l);
            BlockQ5_1 {
                d: fp16_bytes(d),
                m: fp16_bytes(-min),
                qh,
                qs,
            }
        });
    }

    fn write(&self, bytes: &mut [u8]) {
        let mut w = FieldWriter::new(bytes);
        w.put(&self.d);
        w.put(&self.m);
        w.put(&self.qh);
        w.put(&self.qs);
        w.finish();
    }
}

/// `block_q8_0` (34 bytes): `x = q * d`.
#[repr(C)]
pub(crate) struct BlockQ8_0 {
    /// Offset 0: `ggml_half d`, the block scale (delta).
    d: [u8; 2],
    /// Offset 2: `int8_t qs[32]`, the quants in element order.
    qs: [u8; QK8_0],
}
const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 2 + QK8_0);

impl Block for BlockQ8_0 {
    const SIZE: usize = std::mem::size_of::<Self>();
    const QK: usize = QK8_0;

    fn read(bytes: &[u8]) -> Self {
        let mut r = FieldReader::new(bytes);
        let b = BlockQ8_0 {
            d: r.take(),
            qs: r.take(),
        };
        r.finish();
        b
    }

    /// Port of `dequantize_row_q8_0` (one block).
    fn dequantize(&self, y: &mut [f32]) {
        let y: &mut [f32; QK8_0] = y.try_into().expect("one Q8_0 block");
        let d = f16_le(self.d);
        for (o, &q) in y.iter_mut().zip(&self.qs) {
            *o = (q as i8) as f32 * d;
        }
    }
}

impl Quantize for BlockQ8_0 {
    const F16_FIELDS: &'static [usize] = &[0];

    /// Port of `quantize_row_q8_0_ref` (one block).
    fn quantize(x: &[f32]) -> Self {
        let x: &[f32; QK8_0] = x.try_into().expect("one Q8_0 block");
        let mut amax = 0f32;
        for &v in x {
            amax = amax.max(v.abs());
        }
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut qs = [0u8; QK8_0];
        for j in 0..QK8_0 {
            // `roundf`: halves away from zero, like `f32::round`.
            qs[j] = (x[j] * id).round() as i8 as u8;
        }
        BlockQ8_0 {
            d: fp16_bytes(d),
            qs,
        }
    }

    /// `quantize_q8_0` ignores `quant_weights`.
    fn quantize_row_weighted(x: &[f32], _qw: &[f32], y: &mut [u8]) {
        write_blocks(x, y, |xb, _| Self::quantize(xb));
    }

    fn write(&self, bytes: &mut [u8]) {
        let mut w = FieldWriter::new(bytes);
        w.put(&self.d);
        w.put(&self.qs);
        w.finish();
    }
}

/// Element `j` of a 4/5-bit block's nibbles (byte `j % 16`, high nibble for `j ≥ 16`), plus
/// `qh`'s bit `j` as the 5th bit when given.
#[inline(always)]
fn legacy_code(qs: &[u8; 16], qh: Option<u32>, j: usize) -> u8 {
    let low = if j < 16 { qs[j] & 15 } else { qs[j - 16] >> 4 };
    low | qh.map_or(0, |h| (((h >> j) & 1) << 4) as u8)
}

impl super::Affine for BlockQ4_0 {
    const BITS: u8 = 4;
    const GRANULE: usize = QK4_0;
    const OFFSET: u8 = 8;
    const MINS: bool = false;
    fn affine(&self, codes: &mut [u8], scales: &mut [f32], _: &mut [f32]) {
        for (j, c) in codes.iter_mut().enumerate() {
            *c = legacy_code(&self.qs, None, j);
        }
        scales[0] = f16_le(self.d);
    }
}

impl super::Affine for BlockQ4_1 {
    const BITS: u8 = 4;
    const GRANULE: usize = QK4_1;
    const OFFSET: u8 = 0;
    const MINS: bool = true;
    fn affine(&self, codes: &mut [u8], scales: &mut [f32], mins: &mut [f32]) {
        for (j, c) in codes.iter_mut().enumerate() {
            *c = legacy_code(&self.qs, None, j);
        }
        scales[0] = f16_le(self.d);
        mins[0] = f16_le(self.m);
    }
}

impl super::Affine for BlockQ5_0 {
    const BITS: u8 = 5;
    const GRANULE: usize = QK5_0;
    const OFFSET: u8 = 16;
    const MINS: bool = false;
    fn affine(&self, codes: &mut [u8], scales: &mut [f32], _: &mut [f32]) {
        let qh = u32::from_le_bytes(self.qh);
        for (j, c) in codes.iter_mut().enumerate() {
            *c = legacy_code(&self.qs, Some(qh), j);
        }
        scales[0] = f16_le(self.d);
    }
}

impl super::Affine for BlockQ5_1 {
    const BITS: u8 = 5;
    const GRANULE: usize = QK5_1;
    const OFFSET: u8 = 0;
    const MINS: bool = true;
    fn affine(&self, codes: &mut [u8], scales: &mut [f32], mins: &mut [f32]) {
        let qh = u32::from_le_bytes(self.qh);
        for (j, c) in codes.iter_mut().enumerate() {
            *c = legacy_code(&self.qs, Some(qh), j);
        }
        scales[0] = f16_le(self.d);
        mins[0] = f16_le(self.m);
    }
}

impl super::Affine for BlockQ8_0 {
    const BITS: u8 = 8;
    const GRANULE: usize = QK8_0;
    const OFFSET: u8 = 128;
    const MINS: bool = false;
    fn affine(&self, codes: &mut [u8], scales: &mut [f32], _: &mut [f32]) {
        for (c, &q) in codes.iter_mut().zip(&self.qs) {
            *c = (q as i8 as i16 + 128) as u8;
        }
        scales[0] = f16_le(self.d);
    }
}

#[cfg(test)]
mod tests {
    use super::super::{dequantize, GgmlType};
    use half::f16;

    fn h(v: f32) -> [u8; 2] {
        f16::from_f32(v).to_le_bytes()
    }

    #[test]
    fn q4_0_nibble_order_and_offset() {
        let mut b = vec![0u8; 18];
        b[..2].copy_from_slice(&h(0.5));
        b[2] = 0xF0; // element 0: 0-8 = -8, element 16: 15-8 = 7
        b[3] = 0x09; // element 1: 9-8 = 1, element 17: 0-8 = -8
        let mut y = [0f32; 32];
        dequantize(GgmlType::Q4_0, &b, &mut y).unwrap();
        assert_eq!((y[0], y[16], y[1], y[17]), (-4.0, 3.5, 0.5, -4.0));
    }

    #[test]
    fn q4_1_is_q_times_d_plus_m() {
        let mut b = vec![0u8; 20];
        b[..2].copy_from_slice(&h(0.25));
        b[2..4].copy_from_slice(&h(-1.0));
        b[4] = 0x3F; // element 0: 15, element 16: 3
        let mut y = [0f32; 32];
        dequantize(GgmlType::Q4_1, &b, &mut y).unwrap();
        assert_eq!((y[0], y[16], y[1]), (2.75, -0.25, -1.0));
    }

    #[test]
    fn q5_fifth_bit() {
        let mut b = vec![0u8; 22];
        b[..2].copy_from_slice(&h(1.0));
        // qh bit 0 -> element 0, bit 16 -> element 16, bit 31 -> element 31.
        b[2..6].copy_from_slice(&(1u32 | 1 << 16 | 1 << 31).to_le_bytes());
        b[6] = 0x21; // element 0 low bits 1, element 16 low bits 2
        let mut y = [0f32; 32];
        dequantize(GgmlType::Q5_0, &b, &mut y).unwrap();
        assert_eq!((y[0], y[16], y[1], y[31]), (1.0, 2.0, -16.0, 0.0));

        let mut b = vec![0u8; 24];
        b[..2].copy_from_slice(&h(1.0));
        b[2..4].copy_from_slice(&h(0.5));
        b[4..8].copy_from_slice(&(1u32 << 15).to_le_bytes());
        b[8 + 15] = 0xFF;
        let mut y = [0f32; 32];
        dequantize(GgmlType::Q5_1, &b, &mut y).unwrap();
        assert_eq!((y[15], y[31], y[0]), (31.5, 15.5, 0.5));
    }

    #[test]
    fn q8_0_signed() {
        let mut b = vec![0u8; 34];
        b[..2].copy_from_slice(&h(0.125));
        b[2] = 0x80; // -128
        b[33] = 127;
        let mut y = [0f32; 32];
        dequantize(GgmlType::Q8_0, &b, &mut y).unwrap();
        assert_eq!((y[0], y[31], y[1]), (-16.0, 15.875, 0.0));
    }
}
