//! The original ("legacy") 32-element block formats: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0.
//!
//! Layouts follow `block_q4_0` … `block_q8_0` in llama.cpp's `ggml/src/ggml-common.h`; the
//! dequantizers port `dequantize_row_q4_0` … `dequantize_row_q8_0` of `ggml/src/ggml-quants.c`
//! operation for operation. All multi-byte fields are little-endian; `ggml_half` is IEEE f16.
//!
//! Element order inside a 4/5-bit block: byte `j` of `qs` holds element `j` in its low nibble
//! and element `j + 16` in its high nibble.

use super::{f16_le, Block, FieldReader, QK4_0, QK4_1, QK5_0, QK5_1, QK8_0};

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
