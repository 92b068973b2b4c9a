//! The 4-bit non-linear formats IQ4_NL and IQ4_XS.
//!
//! Both store 4-bit indices into the fixed table [`KVALUES_IQ4NL`] instead of linear levels.
//! Layouts follow `block_iq4_nl` / `block_iq4_xs` in llama.cpp's `ggml/src/ggml-common.h`; the
//! dequantizers port `dequantize_row_iq4_nl` / `dequantize_row_iq4_xs` of
//! `ggml/src/ggml-quants.c`. All multi-byte fields are little-endian; `ggml_half` is IEEE f16.
//!
//! Element order inside each 32-element (sub-)block: byte `j` of its 16 `qs` bytes holds
//! element `j` in the low nibble and element `j + 16` in the high nibble.

use super::{f16_le, Block, FieldReader, QK4_NL, QK_K};

/// ggml's `kvalues_iq4nl` (ggml-common.h): the 16 non-linear levels, in units of the scale.
pub(crate) const KVALUES_IQ4NL: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// `block_iq4_nl` (18 bytes): `x = d * kvalues_iq4nl[q]`.
#[repr(C)]
pub(crate) struct BlockIq4Nl {
    /// Offset 0: `ggml_half d`, the block scale.
    d: [u8; 2],
    /// Offset 2: `uint8_t qs[16]`, 32 4-bit table indices (nibbles, see module docs).
    qs: [u8; QK4_NL / 2],
}
const _: () = assert!(std::mem::size_of::<BlockIq4Nl>() == 2 + QK4_NL / 2);

impl Block for BlockIq4Nl {
    const SIZE: usize = std::mem::size_of::<Self>();
    const QK: usize = QK4_NL;

    fn read(bytes: &[u8]) -> Self {
        let mut r = FieldReader::new(bytes);
        let b = BlockIq4Nl {
            d: r.take(),
            qs: r.take(),
        };
        r.finish();
        b
    }

    /// Port of `dequantize_row_iq4_nl` (one block).
    fn dequantize(&self, y: &mut [f32]) {
        let y: &mut [f32; QK4_NL] = y.try_into().expect("one IQ4_NL block");
        let d = f16_le(self.d);
        for j in 0..QK4_NL / 2 {
            y[j] = d * KVALUES_IQ4NL[(self.qs[j] & 0xf) as usize] as f32;
            y[j + QK4_NL / 2] = d * KVALUES_IQ4NL[(self.qs[j] >> 4) as usize] as f32;
        }
    }
}

/// `block_iq4_xs` (136 bytes): 8 sub-blocks of 32, `x = (d * (ls - 32)) * kvalues_iq4nl[q]`.
#[repr(C)]
pub(crate) struct BlockIq4Xs {
    /// Offset 0: `ggml_half d`, the super-block scale.
    d: [u8; 2],
    /// Offset 2: `uint16_t scales_h`, the top 2 bits of sub-block `ib`'s 6-bit scale at bit
    /// shift `2*ib`.
    scales_h: [u8; 2],
    /// Offset 4: `uint8_t scales_l[4]`, the low 4 bits of the scales: sub-block `ib` in byte
    /// `ib/2`, low nibble for even `ib`, high nibble for odd.
    scales_l: [u8; QK_K / 64],
    /// Offset 8: `uint8_t qs[128]`, 16 bytes of 4-bit table indices per sub-block.
    qs: [u8; QK_K / 2],
}
const _: () = assert!(std::mem::size_of::<BlockIq4Xs>() == 2 + 2 + QK_K / 64 + QK_K / 2);

impl Block for BlockIq4Xs {
    const SIZE: usize = std::mem::size_of::<Self>();
    const QK: usize = QK_K;

    fn read(bytes: &[u8]) -> Self {
        let mut r = FieldReader::new(bytes);
        let b = BlockIq4Xs {
            d: r.take(),
            scales_h: r.take(),
            scales_l: r.take(),
            qs: r.take(),
        };
        r.finish();
        b
    }

    /// Port of `dequantize_row_iq4_xs` (one super-block).
    fn dequantize(&self, y: &mut [f32]) {
        let y: &mut [f32; QK_K] = y.try_into().expect("one IQ4_XS block");
        let d = f16_le(self.d);
        let scales_h = u16::from_le_bytes(self.scales_h) as i32;
        for ib in 0..QK_K / 32 {
            let ls = ((self.scales_l[ib / 2] as i32 >> (4 * (ib % 2))) & 0xf)
                | (((scales_h >> (2 * ib)) & 3) << 4);
            let dl = d * (ls - 32) as f32;
            let qs = &self.qs[16 * ib..16 * ib + 16];
            let yb = &mut y[32 * ib..32 * ib + 32];
            for j in 0..16 {
                yb[j] = dl * KVALUES_IQ4NL[(qs[j] & 0xf) as usize] as f32;
                yb[j + 16] = dl * KVALUES_IQ4NL[(qs[j] >> 4) as usize] as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{dequantize, GgmlType};
    use half::f16;

    #[test]
    fn iq4_nl_table_lookup() {
        let mut b = vec![0u8; 18];
        b[..2].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
        b[2] = 0xF0; // element 0 -> kvalues[0] = -127, element 16 -> kvalues[15] = 113
        b[17] = 0x78; // element 15 -> kvalues[8] = 1, element 31 -> kvalues[7] = -10
        let mut y = [0f32; 32];
        dequantize(GgmlType::IQ4_NL, &b, &mut y).unwrap();
        assert_eq!((y[0], y[16], y[15], y[31]), (-63.5, 56.5, 0.5, -5.0));
    }

    #[test]
    fn iq4_xs_sub_block_scales() {
        let mut b = vec![0u8; 136];
        b[..2].copy_from_slice(&f16::from_f32(0.25).to_le_bytes());
        // Sub-block 3: ls = 0b10_0101 = 37 -> dl = 0.25 * 5; sub-block 0: ls = 0 -> dl = -8.
        b[2..4].copy_from_slice(&(0b10u16 << 6).to_le_bytes());
        b[4 + 1] = 0x5 << 4;
        b[8 + 16 * 3] = 0x0F; // sub-block 3, element 0 -> 113, element 16 -> -127
        let mut y = vec![0f32; 256];
        dequantize(GgmlType::IQ4_XS, &b, &mut y).unwrap();
        assert_eq!((y[96], y[112]), (1.25 * 113.0, 1.25 * -127.0));
        assert_eq!(y[0], -8.0 * -127.0);
    }
}
