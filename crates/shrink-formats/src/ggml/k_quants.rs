//! The K-quants: 256-element super-blocks with quantized sub-block scales (Q2_K … Q6_K, Q8_K).
//!
//! Layouts follow `block_q2_K` … `block_q8_K` in llama.cpp's `ggml/src/ggml-common.h`; the
//! dequantizers port `dequantize_row_q2_K` … `dequantize_row_q8_K` of `ggml/src/ggml-quants.c`,
//! including the exact scale unpacking (`get_scale_min_k4`, Q3_K's `kmask1`/`kmask2` shuffle)
//! and the same float32 operation order (e.g. `d1 = d * sc; m1 = min * m; x = d1 * q - m1`).
//! All multi-byte fields are little-endian; `ggml_half` is IEEE f16.

use super::{f16_le, Block, FieldReader, K_SCALE_SIZE, QK_K};

/// `block_q2_K` (84 bytes): 16 sub-blocks of 16, `x = (d * sc) * q - (dmin * m)`, q in 0..=3.
#[repr(C)]
pub(crate) struct BlockQ2K {
    /// Offset 0: `uint8_t scales[16]`, per sub-block: low nibble = scale, high nibble = min.
    scales: [u8; QK_K / 16],
    /// Offset 16: `uint8_t qs[64]`, 2-bit quants; byte `l` of each 32-byte group holds
    /// elements `l`, `l+32`, `l+64`, `l+96` of that 128-element half at bit shifts 0, 2, 4, 6.
    qs: [u8; QK_K / 4],
    /// Offset 80: `ggml_half d`, super-block scale for the quantized scales.
    d: [u8; 2],
    /// Offset 82: `ggml_half dmin`, super-block scale for the quantized mins.
    dmin: [u8; 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ2K>() == 2 * 2 + QK_K / 16 + QK_K / 4);

impl Block for BlockQ2K {
    const SIZE: usize = std::mem::size_of::<Self>();
    const QK: usize = QK_K;

    fn read(bytes: &[u8]) -> Self {
        let mut r = FieldReader::new(bytes);
        let b = BlockQ2K {
            scales: r.take(),
            qs: r.take(),
            d: r.take(),
            dmin: r.take(),
        };
        r.finish();
        b
    }

    /// Port of `dequantize_row_q2_K` (one super-block).
    fn dequantize(&self, y: &mut [f32]) {
        let y: &mut [f32; QK_K] = y.try_into().expect("one Q2_K block");
        let d = f16_le(self.d);
        let min = f16_le(self.dmin);
        let mut out = 0;
        let mut is = 0;
        for n in (0..QK_K).step_by(128) {
            let q = &self.qs[n / 4..n / 4 + 32];
            let mut shift = 0;
            for _ in 0..4 {
                for half in [0, 16] {
                    let sc = self.scales[is];
                    is += 1;
                    let dl = d * (sc & 0xF) as f32;
                    let ml = min * (sc >> 4) as f32;
                    for l in 0..16 {
                        y[out] = dl * ((q[l + half] >> shift) & 3) as f32 - ml;
                        out += 1;
                    }
                }
                shift += 2;
            }
        }
    }
}

/// `block_q3_K` (110 bytes): 16 sub-blocks of 16, `x = (d * (sc - 32)) * q`, q in -4..=3.
#[repr(C)]
pub(crate) struct BlockQ3K {
    /// Offset 0: `uint8_t hmask[32]`, the quants' high bit, *cleared* when 4 is to be
    /// subtracted; bit `k` of byte `l` belongs to element `32*k + l`.
    hmask: [u8; QK_K / 8],
    /// Offset 32: `uint8_t qs[64]`, low 2 bits of the quants, packed as in Q2_K.
    qs: [u8; QK_K / 4],
    /// Offset 96: `uint8_t scales[12]`, sixteen 6-bit scales (biased by 32): bytes 0..8 hold
    /// the low nibbles (scales 0..8 in the low halves, 8..16 in the high halves), bytes 8..12
    /// the high 2-bit pairs (scale `j` at byte `8 + j%4`, bit shift `2*(j/4)`).
    scales: [u8; 12],
    /// Offset 108: `ggml_half d`, the super-block scale.
    d: [u8; 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ3K>() == 2 + QK_K / 4 + QK_K / 8 + 12);

impl BlockQ3K {
    /// The 16 unpacked 6-bit scales (still biased by 32), via ggml's `kmask1`/`kmask2` shuffle.
    #[allow(clippy::identity_op)] // `tmp >> 0` kept to mirror ggml's code
    fn unpacked_scales(&self) -> [i8; 16] {
        const KMASK1: u32 = 0x0303_0303;
        const KMASK2: u32 = 0x0f0f_0f0f;
        let word = |k: usize| {
            u32::from_le_bytes(self.scales[4 * k..4 * k + 4].try_into().expect("4 bytes"))
        };
        let (a0, a1, tmp) = (word(0), word(1), word(2));
        let aux = [
            (a0 & KMASK2) | (((tmp >> 0) & KMASK1) << 4),
            (a1 & KMASK2) | (((tmp >> 2) & KMASK1) << 4),
            ((a0 >> 4) & KMASK2) | (((tmp >> 4) & KMASK1) << 4),
            ((a1 >> 4) & KMASK2) | (((tmp >> 6) & KMASK1) << 4),
        ];
        let mut out = [0i8; 16];
        for (k, w) in aux.iter().enumerate() {
            for (o, b) in out[4 * k..4 * k + 4].iter_mut().zip(w.to_le_bytes()) {
                *o = b as i8;
            }
        }
        out
    }
}

impl Block for BlockQ3K {
    const SIZE: usize = std::mem::size_of::<Self>();
    const QK: usize = QK_K;

    fn read(bytes: &[u8]) -> Self {
        let mut r = FieldReader::new(bytes);
        let b = BlockQ3K {
            hmask: r.take(),
            qs: r.take(),
            scales: r.take(),
            d: r.take(),
        };
        r.finish();
        b
    }

    /// Port of `dequantize_row_q3_K` (one super-block).
    fn dequantize(&self, y: &mut [f32]) {
        let y: &mut [f32; QK_K] = y.try_into().expect("one Q3_K block");
        let d_all = f16_le(self.d);
        let scales = self.unpacked_scales();
        let hm = &self.hmask;
        let mut m: u8 = 1;
        let mut out = 0;
        let mut is = 0;
        for n in (0..QK_K).step_by(128) {
            let q = &self.qs[n / 4..n / 4 + 32];
            let mut shift = 0;
            for _ in 0..4 {
                for half in [0, 16] {
                    let dl = d_all * (scales[is] as i32 - 32) as f32;
                    is += 1;
                    for l in 0..16 {
                        let low = ((q[l + half] >> shift) & 3) as i32;
                        let sub = if hm[l + half] & m != 0 { 0 } else { 4 };
                        y[out] = dl * (low - sub) as f32;
                        out += 1;
                    }
                }
                shift += 2;
                m = m.wrapping_shl(1);
            }
        }
    }
}

/// ggml's `get_scale_min_k4`: the 6-bit scale and min of sub-block `j` (0..8) of Q4_K / Q5_K.
///
/// Sub-blocks 0..4 keep scale and min in the low 6 bits of bytes `j` and `j+4`; sub-blocks 4..8
/// keep their low nibbles in byte `j+4` and their top 2 bits in the top bits of bytes `j-4`
/// (scale) and `j` (min).
#[inline(always)]
fn get_scale_min_k4(j: usize, q: &[u8; K_SCALE_SIZE]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// `block_q4_K` (144 bytes): 8 sub-blocks of 32, `x = (d * sc) * q - (dmin * m)`, q in 0..=15.
#[repr(C)]
pub(crate) struct BlockQ4K {
    /// Offset 0: `ggml_half d`, super-block scale for the quantized scales.
    d: [u8; 2],
    /// Offset 2: `ggml_half dmin`, super-block scale for the quantized mins.
    dmin: [u8; 2],
    /// Offset 4: `uint8_t scales[12]`, eight 6-bit scales and eight 6-bit mins (see
    /// [`get_scale_min_k4`]).
    scales: [u8; K_SCALE_SIZE],
    /// Offset 16: `uint8_t qs[128]`, 4-bit quants; each 32-byte group covers 64 elements:
    /// low nibbles are the first 32, high nibbles the next 32.
    qs: [u8; QK_K / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ4K>() == 2 * 2 + K_SCALE_SIZE + QK_K / 2);

impl Block for BlockQ4K {
    const SIZE: usize = std::mem::size_of::<Self>();
    const QK: usize = QK_K;

    fn read(bytes: &[u8]) -> Self {
        let mut r = FieldReader::new(bytes);
        let b = BlockQ4K {
            d: r.take(),
            dmin: r.take(),
            scales: r.take(),
            qs: r.take(),
        };
        r.finish();
        b
    }

    /// Port of `dequantize_row_q4_K` (one super-block).
    fn dequantize(&self, y: &mut [f32]) {
        let y: &mut [f32; QK_K] = y.try_into().expect("one Q4_K block");
        let d = f16_le(self.d);
        let min = f16_le(self.dmin);
        let mut is = 0;
        for (g, j) in (0..QK_K).step_by(64).enumerate() {
            let q = &self.qs[32 * g..32 * g + 32];
            let (sc, m) = get_scale_min_k4(is, &self.scales);
            let d1 = d * sc as f32;
            let m1 = min * m as f32;
            let (sc, m) = get_scale_min_k4(is + 1, &self.scales);
            let d2 = d * sc as f32;
            let m2 = min * m as f32;
            for l in 0..32 {
                y[j + l] = d1 * (q[l] & 0xF) as f32 - m1;
            }
            for l in 0..32 {
                y[j + 32 + l] = d2 * (q[l] >> 4) as f32 - m2;
            }
            is += 2;
        }
    }
}

/// `block_q5_K` (176 bytes): 8 sub-blocks of 32, `x = (d * sc) * q - (dmin * m)`, q in 0..=31.
#[repr(C)]
pub(crate) struct BlockQ5K {
    /// Offset 0: `ggml_half d`, super-block scale for the quantized scales.
    d: [u8; 2],
    /// Offset 2: `ggml_half dmin`, super-block scale for the quantized mins.
    dmin: [u8; 2],
    /// Offset 4: `uint8_t scales[12]`, packed as in Q4_K (see [`get_scale_min_k4`]).
    scales: [u8; K_SCALE_SIZE],
    /// Offset 16: `uint8_t qh[32]`, the quants' 5th bit: bit `k` of byte `l` belongs to
    /// element `32*k + l`.
    qh: [u8; QK_K / 8],
    /// Offset 48: `uint8_t qs[128]`, low 4 bits of the quants, packed as in Q4_K.
    qs: [u8; QK_K / 2],
}
const _: () =
    assert!(std::mem::size_of::<BlockQ5K>() == 2 * 2 + K_SCALE_SIZE + QK_K / 2 + QK_K / 8);

impl Block for BlockQ5K {
    const SIZE: usize = std::mem::size_of::<Self>();
    const QK: usize = QK_K;

    fn read(bytes: &[u8]) -> Self {
        let mut r = FieldReader::new(bytes);
        let b = BlockQ5K {
            d: r.take(),
            dmin: r.take(),
            scales: r.take(),
            qh: r.take(),
            qs: r.take(),
        };
        r.finish();
        b
    }

    /// Port of `dequantize_row_q5_K` (one super-block).
    fn dequantize(&self, y: &mut [f32]) {
        let y: &mut [f32; QK_K] = y.try_into().expect("one Q5_K block");
        let d = f16_le(self.d);
        let min = f16_le(self.dmin);
        let qh = &self.qh;
        let mut is = 0;
        let (mut u1, mut u2): (u8, u8) = (1, 2);
        for (g, j) in (0..QK_K).step_by(64).enumerate() {
            let ql = &self.qs[32 * g..32 * g + 32];
            let (sc, m) = get_scale_min_k4(is, &self.scales);
            let d1 = d * sc as f32;
            let m1 = min * m as f32;
            let (sc, m) = get_scale_min_k4(is + 1, &self.scales);
            let d2 = d * sc as f32;
            let m2 = min * m as f32;
            for l in 0..32 {
                let hi = if qh[l] & u1 != 0 { 16 } else { 0 };
                y[j + l] = d1 * ((ql[l] & 0xF) as i32 + hi) as f32 - m1;
            }
            for l in 0..32 {
                let hi = if qh[l] & u2 != 0 { 16 } else { 0 };
                y[j + 32 + l] = d2 * ((ql[l] >> 4) as i32 + hi) as f32 - m2;
            }
            is += 2;
            u1 = u1.wrapping_shl(2);
            u2 = u2.wrapping_shl(2);
        }
    }
}

/// `block_q6_K` (210 bytes): 16 sub-blocks of 16, `x = (d * sc) * q`, q in -32..=31.
#[repr(C)]
pub(crate) struct BlockQ6K {
    /// Offset 0: `uint8_t ql[128]`, low 4 bits of the quants; per 128-element half, byte `l`
    /// holds elements `l` (low) and `l+64` (high), byte `l+32` elements `l+32` and `l+96`.
    ql: [u8; QK_K / 2],
    /// Offset 128: `uint8_t qh[64]`, high 2 bits; per half, byte `l` holds elements `l`, `l+32`,
    /// `l+64`, `l+96` at bit shifts 0, 2, 4, 6.
    qh: [u8; QK_K / 4],
    /// Offset 192: `int8_t scales[16]`, signed 8-bit sub-block scales.
    scales: [u8; QK_K / 16],
    /// Offset 208: `ggml_half d`, the super-block scale.
    d: [u8; 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ6K>() == 2 + QK_K / 16 + 3 * QK_K / 4);

impl Block for BlockQ6K {
    const SIZE: usize = std::mem::size_of::<Self>();
    const QK: usize = QK_K;

    fn read(bytes: &[u8]) -> Self {
        let mut r = FieldReader::new(bytes);
        let b = BlockQ6K {
            ql: r.take(),
            qh: r.take(),
            scales: r.take(),
            d: r.take(),
        };
        r.finish();
        b
    }

    /// Port of `dequantize_row_q6_K` (one super-block).
    fn dequantize(&self, y: &mut [f32]) {
        let y: &mut [f32; QK_K] = y.try_into().expect("one Q6_K block");
        let d = f16_le(self.d);
        for (h, n) in (0..QK_K).step_by(128).enumerate() {
            let ql = &self.ql[64 * h..64 * h + 64];
            let qh = &self.qh[32 * h..32 * h + 32];
            let sc = &self.scales[8 * h..8 * h + 8];
            let sc = |k: usize| sc[k] as i8 as f32;
            for l in 0..32 {
                let is = l / 16;
                let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i8 - 32;
                let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
                y[n + l] = d * sc(is) * q1 as f32;
                y[n + l + 32] = d * sc(is + 2) * q2 as f32;
                y[n + l + 64] = d * sc(is + 4) * q3 as f32;
                y[n + l + 96] = d * sc(is + 6) * q4 as f32;
            }
        }
    }
}

/// `block_q8_K` (292 bytes): `x = d * q` with an f32 scale; ggml's activation format.
#[repr(C)]
pub(crate) struct BlockQ8K {
    /// Offset 0: `float d`, the scale.
    d: [u8; 4],
    /// Offset 4: `int8_t qs[256]`, the quants in element order.
    qs: [u8; QK_K],
    /// Offset 260: `int16_t bsums[16]`, sums of each 16 quants (for dot products only).
    #[allow(dead_code)]
    bsums: [u8; QK_K / 16 * 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ8K>() == 4 + QK_K + QK_K / 16 * 2);

impl Block for BlockQ8K {
    const SIZE: usize = std::mem::size_of::<Self>();
    const QK: usize = QK_K;

    fn read(bytes: &[u8]) -> Self {
        let mut r = FieldReader::new(bytes);
        let b = BlockQ8K {
            d: r.take(),
            qs: r.take(),
            bsums: r.take(),
        };
        r.finish();
        b
    }

    /// Port of `dequantize_row_q8_K` (one block).
    fn dequantize(&self, y: &mut [f32]) {
        let y: &mut [f32; QK_K] = y.try_into().expect("one Q8_K block");
        let d = f32::from_le_bytes(self.d);
        for (o, &q) in y.iter_mut().zip(&self.qs) {
            *o = d * (q as i8) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{dequantize, GgmlType};
    use super::*;
    use half::f16;

    fn h(v: f32) -> [u8; 2] {
        f16::from_f32(v).to_le_bytes()
    }

    /// The straightforward per-scale formula from `quantize_row_q3_K_ref`.
    fn q3_scale_ref(s: &[u8; 12], j: usize) -> i8 {
        let lo = if j < 8 { s[j] & 0xF } else { s[j - 8] >> 4 };
        (lo | (((s[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) as i8
    }

    #[test]
    fn q3_k_kmask_shuffle_matches_per_scale_formula() {
        let mut seed = 12345u32;
        for _ in 0..200 {
            let mut b = BlockQ3K {
                hmask: [0; 32],
                qs: [0; 64],
                scales: [0; 12],
                d: [0; 2],
            };
            for s in b.scales.iter_mut() {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                *s = (seed >> 24) as u8;
            }
            let un = b.unpacked_scales();
            for (j, &u) in un.iter().enumerate() {
                assert_eq!(u, q3_scale_ref(&b.scales, j), "scale {j}");
            }
        }
    }

    #[test]
    fn get_scale_min_k4_layout() {
        // Sub-block 5: scale = 0b10_0111 (39), min = 0b01_1010 (26).
        let mut q = [0u8; 12];
        q[9] = 0x7 | (0xA << 4); // low nibbles of scale and min
        q[1] = 0b10 << 6; // top bits of the scale (byte j-4)
        q[5] = 0b01 << 6; // top bits of the min (byte j)
        assert_eq!(get_scale_min_k4(5, &q), (39, 26));
        // Sub-block 1 reads the low 6 bits of bytes 1 and 5, ignoring the borrowed top bits.
        q[1] |= 17;
        q[5] |= 33;
        assert_eq!(get_scale_min_k4(1, &q), (17, 33));
    }

    #[test]
    fn q4_k_single_value() {
        let mut b = vec![0u8; 144];
        b[0..2].copy_from_slice(&h(0.5)); // d
        b[2..4].copy_from_slice(&h(0.25)); // dmin
        b[4 + 1] = 3; // scale of sub-block 1
        b[4 + 5] = 4; // min of sub-block 1
        b[16] = 0x70; // element 32 (high nibble of byte 0): q = 7
        let mut y = vec![0f32; 256];
        dequantize(GgmlType::Q4_K, &b, &mut y).unwrap();
        assert_eq!(y[32], 0.5 * 3.0 * 7.0 - 0.25 * 4.0);
        assert_eq!(y[33], -1.0);
        assert_eq!(y[0], 0.0);
    }

    #[test]
    fn q6_k_element_order() {
        let mut b = vec![0u8; 210];
        b[208..210].copy_from_slice(&h(1.0));
        for s in &mut b[192..208] {
            *s = 1;
        }
        b[192 + 14] = (-2i8) as u8; // scale of elements 224..240
                                    // Element 128 + 96 + 1 = 225: ql byte 64 + 32 + 1 high nibble, qh byte 32 + 1 bits 6..8.
        b[64 + 33] = 0xF0;
        b[128 + 33] = 0b11 << 6;
        let mut y = vec![0f32; 256];
        dequantize(GgmlType::Q6_K, &b, &mut y).unwrap();
        assert_eq!(y[225], -2.0 * 31.0);
        assert_eq!(y[0], -32.0);
    }

    #[test]
    fn q8_k_f32_scale() {
        let mut b = vec![0u8; 292];
        b[0..4].copy_from_slice(&0.1f32.to_le_bytes());
        b[4] = (-3i8) as u8;
        b[259] = 100;
        let mut y = vec![0f32; 256];
        dequantize(GgmlType::Q8_K, &b, &mut y).unwrap();
        assert_eq!((y[0], y[255]), (0.1f32 * -3.0, 0.1f32 * 100.0));
    }
}
