//! The 4-bit non-linear formats IQ4_NL and IQ4_XS.
//!
//! Both store 4-bit indices into the fixed table [`KVALUES_IQ4NL`] instead of linear levels.
//! Layouts follow `block_iq4_nl` / `block_iq4_xs` in llama.cpp's `ggml/src/ggml-common.h`; the
//! dequantizers port `dequantize_row_iq4_nl` / `dequantize_row_iq4_xs` of
//! `ggml/src/ggml-quants.c`. The quantizers port `quantize_iq4_nl` / `quantize_iq4_xs`, i.e.
//! `quantize_row_iq4_nl_impl` with `ntry = 7`, with or without `quant_weights` (ggml's
//! `quantize_row_iq4_nl_ref` uses `ntry = -1`, but `llama-quantize` never calls it).
//! All multi-byte fields are little-endian; `ggml_half` is IEEE f16.
//!
//! Element order inside each 32-element (sub-)block: byte `j` of its 16 `qs` bytes holds
//! element `j` in the low nibble and element `j + 16` in the high nibble.

// The quantizer keeps ggml's index loops so it reads side by side with the C it ports.
#![allow(clippy::needless_range_loop)]

use super::k_quants::{nearest_int, GROUP_MAX_EPS};
use super::{
    f16_le, fp16_bytes, write_blocks, Block, FieldReader, FieldWriter, Quantize, QK4_NL, QK_K,
};

/// ggml's `kvalues_iq4nl` (ggml-common.h): the 16 non-linear levels, in units of the scale.
pub(crate) const KVALUES_IQ4NL: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// `ntry` of `quantize_iq4_nl` / `quantize_iq4_xs`: scales `(itry + values[0])/max` for
/// `itry` in -7..=7 are tried after the first fit.
const NTRY: i32 = 7;

/// Port of ggml's `best_index_int8` for the 16 sorted levels: the index of the level nearest
/// to `x`, ties going up. Current ggml compares `x + x` with the sums of neighbouring levels
/// (exact in f32) in a branch-free binary search; older releases compared `x - val[i-1]` with
/// `val[i] - x`, which is also exact wherever the choice is close (both differences are
/// multiples of x's ulp and smaller than 2^24 of them), so both give the same index for every
/// finite `x` (checked in the tests) and the bytes do not depend on the llama.cpp version.
#[inline(always)]
fn best_index_int8(val: &[i8; 16], x: f32) -> u8 {
    let x2 = x + x;
    let mut idx = 0;
    let mut step = 8;
    while step > 0 {
        let j = idx + step;
        if x2 >= (val[j - 1] as i32 + val[j] as i32) as f32 {
            idx = j;
        }
        step >>= 1;
    }
    idx as u8
}

/// What `quantize_row_iq4_nl_impl` writes for one super-block of `L` 32-element blocks
/// (`L` = 1 for IQ4_NL, 8 for IQ4_XS).
struct Iq4Out<const N: usize> {
    /// `dh[0]`, the f16 (super-)block scale.
    d: [u8; 2],
    /// The 6-bit sub-block scales' top bits (IQ4_XS only).
    scales_h: u16,
    /// The 6-bit sub-block scales' low nibbles (IQ4_XS only; `N/2` bytes used).
    scales_l: [u8; 4],
    /// The 4-bit table indices, 16 bytes per 32-element block.
    q4: [[u8; 16]; N],
}

/// Port of `quantize_row_iq4_nl_impl(super_block_size = 32*N, block_size = 32, nvalues = 16,
/// …, values = kvalues_iq4nl, quant_weights, ntry = 7)`.
///
/// Per 32-element block: the first fit `d = -max/values[0]`, the weighted least-squares scale
/// of its indices, then 15 more candidate scales; with `N > 1` the block scales are quantized
/// to 6 bits relative to the super-block scale and the indices recomputed with them.
fn quantize_iq4_impl<const N: usize>(x: &[f32], qw: Option<&[f32]>) -> Iq4Out<N> {
    let values = &KVALUES_IQ4NL;
    let super_block_size = 32 * N;
    debug_assert_eq!(x.len(), super_block_size);
    let mut sigma2 = 0f32;
    for j in 0..super_block_size {
        sigma2 += x[j] * x[j];
    }
    sigma2 *= 2.0 / super_block_size as f32;

    let mut out = Iq4Out {
        d: fp16_bytes(0.0),
        scales_h: 0,
        scales_l: [0; 4],
        q4: [[0; 16]; N],
    };
    let mut l = [[0u8; 32]; N];
    let mut scales = [0f32; N];
    let mut weight = [0f32; 32];
    let v0 = values[0] as f32;
    let (mut max_scale, mut amax_scale) = (0f32, 0f32);
    for ib in 0..N {
        let xb = &x[32 * ib..32 * ib + 32];
        let lb = &mut l[ib];
        match qw {
            Some(qw) => {
                let qw = &qw[32 * ib..32 * ib + 32];
                for j in 0..32 {
                    weight[j] = qw[j] * (sigma2 + xb[j] * xb[j]).sqrt();
                }
            }
            None => {
                for j in 0..32 {
                    weight[j] = xb[j] * xb[j];
                }
            }
        }
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in xb {
            let ax = v.abs();
            if ax > amax {
                amax = ax;
                max = v;
            }
        }
        if amax < GROUP_MAX_EPS {
            scales[ib] = 0.0;
            lb.fill(0);
            continue;
        }
        // ntry > 0
        let mut d = -max / v0;
        let mut id = 1.0 / d;
        let (mut sumqx, mut sumq2) = (0f32, 0f32);
        for j in 0..32 {
            let al = id * xb[j];
            let li = best_index_int8(values, al);
            lb[j] = li;
            let q = values[li as usize] as f32;
            let w = weight[j];
            sumqx += w * q * xb[j];
            sumq2 += w * q * q;
        }
        d = if sumq2 > 0.0 { sumqx / sumq2 } else { 0.0 };
        let mut best = d * sumqx;
        for itry in -NTRY..=NTRY {
            id = (itry + values[0] as i32) as f32 / max;
            sumqx = 0.0;
            sumq2 = 0.0;
            for j in 0..32 {
                let al = id * xb[j];
                let li = best_index_int8(values, al);
                let q = values[li as usize] as f32;
                let w = weight[j];
                sumqx += w * q * xb[j];
                sumq2 += w * q * q;
            }
            if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
                d = sumqx / sumq2;
                best = d * sumqx;
            }
        }
        scales[ib] = d;
        let abs_d = d.abs();
        if abs_d > amax_scale {
            amax_scale = abs_d;
            max_scale = d;
        }
    }

    if N > 1 {
        let d = -max_scale / 32.0;
        out.d = fp16_bytes(d);
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        for ib in 0..N {
            let ls = nearest_int(id * scales[ib]).clamp(-32, 31);
            let dl = d * ls as f32;
            let idl = if dl != 0.0 { 1.0 / dl } else { 0.0 };
            let xb = &x[32 * ib..32 * ib + 32];
            for j in 0..32 {
                l[ib][j] = best_index_int8(values, idl * xb[j]);
            }
            let ls = (ls + 32) as u8;
            let (l_l, l_h) = (ls & 0xf, ls >> 4);
            if ib % 2 == 0 {
                out.scales_l[ib / 2] = l_l;
            } else {
                out.scales_l[ib / 2] |= l_l << 4;
            }
            out.scales_h |= (l_h as u16) << (2 * (ib % 8));
        }
    } else {
        out.d = fp16_bytes(scales[0]);
        // ntry > 0: the indices again, with the unrounded scale.
        let id = if scales[0] != 0.0 {
            1.0 / scales[0]
        } else {
            0.0
        };
        for j in 0..32 {
            l[0][j] = best_index_int8(values, id * x[j]);
        }
    }

    for (q4, l) in out.q4.iter_mut().zip(&l) {
        for j in 0..16 {
            q4[j] = l[j] | (l[16 + j] << 4);
        }
    }
    out
}

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

impl Quantize for BlockIq4Nl {
    const F16_FIELDS: &'static [usize] = &[0];

    /// Port of `quantize_iq4_nl` without weights (one block).
    fn quantize(x: &[f32]) -> Self {
        let o = quantize_iq4_impl::<1>(x, None);
        BlockIq4Nl {
            d: o.d,
            qs: o.q4[0],
        }
    }

    /// Port of `quantize_iq4_nl` with `quant_weights`.
    fn quantize_row_weighted(x: &[f32], qw: &[f32], y: &mut [u8]) {
        write_blocks(x, y, |xb, ib| {
            let o = quantize_iq4_impl::<1>(xb, Some(&qw[QK4_NL * ib..QK4_NL * (ib + 1)]));
            BlockIq4Nl {
                d: o.d,
                qs: o.q4[0],
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

impl BlockIq4Xs {
    /// Assemble the block from `quantize_row_iq4_nl_impl`'s outputs.
    fn from_impl(o: Iq4Out<8>) -> Self {
        let mut qs = [0u8; QK_K / 2];
        for (dst, src) in qs.chunks_exact_mut(16).zip(&o.q4) {
            dst.copy_from_slice(src);
        }
        BlockIq4Xs {
            d: o.d,
            scales_h: o.scales_h.to_le_bytes(),
            scales_l: o.scales_l,
            qs,
        }
    }
}

impl Quantize for BlockIq4Xs {
    const F16_FIELDS: &'static [usize] = &[0];

    /// Port of `quantize_iq4_xs` without weights (one super-block).
    fn quantize(x: &[f32]) -> Self {
        Self::from_impl(quantize_iq4_impl::<8>(x, None))
    }

    /// Port of `quantize_iq4_xs` with `quant_weights`.
    fn quantize_row_weighted(x: &[f32], qw: &[f32], y: &mut [u8]) {
        write_blocks(x, y, |xb, ib| {
            Self::from_impl(quantize_iq4_impl::<8>(
                xb,
                Some(&qw[QK_K * ib..QK_K * (ib + 1)]),
            ))
        });
    }

    fn write(&self, bytes: &mut [u8]) {
        let mut w = FieldWriter::new(bytes);
        w.put(&self.d);
        w.put(&self.scales_h);
        w.put(&self.scales_l);
        w.put(&self.qs);
        w.finish();
    }
}

/// The IQ4 table as the values codes index (`x = scale · table[code]`).
const TABLE: [f32; 16] = {
    let mut t = [0f32; 16];
    let mut i = 0;
    while i < 16 {
        t[i] = KVALUES_IQ4NL[i] as f32;
        i += 1;
    }
    t
};

/// Element `j` of a 32-element run's nibbles (byte `j % 16`, high nibble for `j ≥ 16`).
#[inline(always)]
fn iq4_code(qs: &[u8], j: usize) -> u8 {
    if j < 16 {
        qs[j] & 15
    } else {
        qs[j - 16] >> 4
    }
}

impl super::Affine for BlockIq4Nl {
    const BITS: u8 = 4;
    const GRANULE: usize = QK4_NL;
    const OFFSET: u8 = 0;
    const MINS: bool = false;
    const TABLE: Option<[f32; 16]> = Some(TABLE);
    fn affine(&self, codes: &mut [u8], scales: &mut [f32], _: &mut [f32]) {
        for (j, c) in codes.iter_mut().enumerate() {
            *c = iq4_code(&self.qs, j);
        }
        scales[0] = f16_le(self.d);
    }
}

impl super::Affine for BlockIq4Xs {
    const BITS: u8 = 4;
    const GRANULE: usize = 32;
    const OFFSET: u8 = 0;
    const MINS: bool = false;
    const TABLE: Option<[f32; 16]> = Some(TABLE);
    fn affine(&self, codes: &mut [u8], scales: &mut [f32], _: &mut [f32]) {
        let d = f16_le(self.d);
        let scales_h = u16::from_le_bytes(self.scales_h) as i32;
        for ib in 0..QK_K / 32 {
            let ls = ((self.scales_l[ib / 2] as i32 >> (4 * (ib % 2))) & 0xf)
                | (((scales_h >> (2 * ib)) & 3) << 4);
            scales[ib] = d * (ls - 32) as f32;
            let qs = &self.qs[16 * ib..16 * ib + 16];
            for (j, c) in codes[32 * ib..32 * ib + 32].iter_mut().enumerate() {
                *c = iq4_code(qs, j);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{dequantize, GgmlType};
    use half::f16;

    /// `best_index_int8` as older llama.cpp releases have it (binary search, then nearest of two).
    fn best_index_int8_old(val: &[i8; 16], x: f32) -> u8 {
        if x <= val[0] as f32 {
            return 0;
        }
        if x >= val[15] as f32 {
            return 15;
        }
        let (mut ml, mut mu) = (0, 15);
        while mu - ml > 1 {
            let mav = (ml + mu) / 2;
            if x < val[mav] as f32 {
                mu = mav;
            } else {
                ml = mav;
            }
        }
        if x - (val[mu - 1] as f32) < val[mu] as f32 - x {
            (mu - 1) as u8
        } else {
            mu as u8
        }
    }

    #[test]
    fn best_index_int8_old_and_new_agree() {
        let v = &super::KVALUES_IQ4NL;
        let mut xs = Vec::new();
        // Every midpoint and its neighbours a few ulps away, plus a dense sweep.
        for w in v.windows(2) {
            let m = (w[0] as f32 + w[1] as f32) / 2.0;
            let mut lo = m;
            let mut hi = m;
            for _ in 0..8 {
                xs.extend([lo, hi]);
                lo = f32::from_bits(if lo > 0.0 {
                    lo.to_bits() - 1
                } else {
                    lo.to_bits() + 1
                });
                hi = f32::from_bits(if hi > 0.0 {
                    hi.to_bits() + 1
                } else {
                    hi.to_bits() - 1
                });
            }
        }
        xs.extend((-300_000..300_000).map(|i| i as f32 * 0.000_5));
        xs.extend([-1e30, 1e30, 0.0, -0.0, 1e-30, -1e-30, 127.0, -127.0]);
        for x in xs {
            assert_eq!(
                super::best_index_int8(v, x),
                best_index_int8_old(v, x),
                "{x}"
            );
        }
        assert_eq!(super::best_index_int8(v, -4.5), 8, "ties go up");
    }

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
