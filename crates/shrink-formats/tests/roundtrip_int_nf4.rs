//! Round trips of the round-to-nearest formats: `int` (symmetric / zero-point integers) and
//! `nf4` (bitsandbytes' NF4 / FP4), the latter checked bit for bit against bitsandbytes.
//!
//! `int`: every bit width × symmetric/asymmetric × granularity (tensor, channel, groups of
//! 32/64/128) × scale type (f32, f16, bf16): the error bound of round-to-nearest, idempotence,
//! packing, byte accounting, and the refusals.
//!
//! `nf4`: the dequantized value is always the nearest code level; packed bytes, absmax, nested
//! state and dequantized values hash to what bitsandbytes 0.50.2 produced on CPU (see
//! [`BNB`]); double quantization costs ≈ 4.127 bits per weight.

use shrink_formats::float::FloatType;
use shrink_formats::int::{self, Granularity, IntSpec, IntTensor, SUPPORTED_BITS};
use shrink_formats::nf4::{self, Absmax, Fp4Kind, Nf4Spec, Nf4Tensor, DYNAMIC_MAP, NESTED_BLOCK};
use shrink_formats::FormatError;

/// FNV-1a 64 of `bytes`.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// FNV-1a 64 of float32 values as little-endian bytes.
fn fnv_f32(v: &[f32]) -> u64 {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    fnv1a64(&bytes)
}

/// splitmix64: advance `state` and return the next output.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The test signal, written identically in the Python script of [`BNB`]: element `i` is the
/// sum of four 22-bit splitmix64 outputs (top bits), centred and scaled by 2^-21 (an
/// Irwin–Hall bell, std ≈ 1.15, exact in float32), ×8 when `i % 97 == 0` (outliers), and
/// ×2^((i/64) % 5 − 2) so that consecutive 64-blocks differ in scale. Every step is exact.
fn signal(n: usize, seed: u64) -> Vec<f32> {
    let mut st = seed;
    (0..n)
        .map(|i| {
            let s: u64 = (0..4).map(|_| splitmix64(&mut st) >> 42).sum();
            let mut v = (s as f64 - (1u64 << 23) as f64) * 2f64.powi(-21);
            if i % 97 == 0 {
                v *= 8.0;
            }
            v *= 2f64.powi(((i / 64) % 5) as i32 - 2);
            v as f32
        })
        .collect()
}

/// The bell part of [`signal`] alone: no outliers, no per-block scale changes.
fn bell(n: usize, seed: u64) -> Vec<f32> {
    let mut st = seed;
    (0..n)
        .map(|_| {
            let s: u64 = (0..4).map(|_| splitmix64(&mut st) >> 42).sum();
            ((s as f64 - (1u64 << 23) as f64) * 2f64.powi(-21)) as f32
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// int
// ---------------------------------------------------------------------------------------------

/// Granularities under test.
const GRANULARITIES: [Granularity; 5] = [
    Granularity::Tensor,
    Granularity::Channel,
    Granularity::Group(32),
    Granularity::Group(64),
    Granularity::Group(128),
];

/// Scale types under test.
const SCALE_TYPES: [FloatType; 3] = [FloatType::F32, FloatType::F16, FloatType::BF16];

/// Twice the largest relative rounding error of a scale stored as `ty`.
fn scale_rel(ty: FloatType) -> f32 {
    match ty {
        FloatType::F32 => 2f32.powi(-23),
        FloatType::F16 => 2f32.powi(-10),
        FloatType::BF16 => 2f32.powi(-7),
    }
}

/// Every spec of the matrix.
fn all_specs() -> Vec<IntSpec> {
    let mut v = Vec::new();
    for bits in SUPPORTED_BITS {
        for symmetric in [true, false] {
            for granularity in GRANULARITIES {
                for scale_type in SCALE_TYPES {
                    v.push(IntSpec {
                        bits,
                        symmetric,
                        granularity,
                        scale_type,
                    });
                }
            }
        }
    }
    v
}

/// A [rows, cols] weight whose rows have different magnitudes (and one all-positive row).
fn weight(rows: usize, cols: usize) -> Vec<f32> {
    let mut w = signal(rows * cols, 0xC0FFEE);
    for (r, row) in w.chunks_mut(cols).enumerate() {
        let k = 0.01 * (1 + r % 7) as f32;
        row.iter_mut().for_each(|v| *v *= k);
        if r == 3 {
            row.iter_mut().for_each(|v| *v = v.abs() + 0.001);
        }
    }
    w
}

#[test]
fn int_error_is_half_a_step_except_clamped() {
    let (rows, cols) = (24, 384);
    let w = weight(rows, cols);
    for spec in all_specs() {
        let t = int::quantize(&w, rows, cols, spec).unwrap();
        t.check().unwrap();
        let d = t.dequantize();
        let codes = t.codes();
        let qmax = spec.qmax();
        let rel = scale_rel(spec.scale_type);
        let zeros = t.zeros.clone();
        for r in 0..rows {
            for c in 0..cols {
                let i = r * cols + c;
                let s = t.scale_at(r, c);
                let err = (w[i] - d[i]).abs();
                let code = codes[i] as i32;
                let clamped = if spec.symmetric {
                    code - spec.code_offset() == qmax || code - spec.code_offset() == -qmax
                } else {
                    code == 0 || code == qmax
                };
                let tiny = s * 1e-5 + w[i].abs() * 1e-6;
                let bound = if clamped {
                    0.5 * s + qmax as f32 * s * rel + tiny
                } else {
                    0.5 * s + tiny
                };
                assert!(
                    err <= bound,
                    "{}: ({r}, {c}) w {} w' {} scale {s} err {err} > {bound} \
                     (clamped {clamped}, zero {:?})",
                    spec.name(),
                    w[i],
                    d[i],
                    zeros.as_ref().map(|z| z[r])
                );
                assert!(code >> spec.bits == 0);
            }
        }
        // Zero stays exactly zero.
        let mut z = w.clone();
        z[5] = 0.0;
        let tz = int::quantize(&z, rows, cols, spec).unwrap();
        assert_eq!(tz.dequantize()[5], 0.0, "{}", spec.name());
    }
}

/// Re-quantizing the dequantized tensor.
///
/// - Every dequantized value is a fixed point of its own grid: quantizing it again with the
///   stored scale and zero point gives back its code (all specs).
/// - Symmetric, all scale types: re-deriving the parameters from the dequantized tensor gives
///   identical codes and scales (the absmax element sits on ±qmax).
/// - Asymmetric with f32 scales: identical codes and zero points; a re-derived scale may move
///   by one ulp (`(max' − min') / qmax` re-rounds two products).
/// - Asymmetric with f16 / bf16 scales is *not* idempotent in general, and this test only
///   counts it: with the scale rounded to storage, `(max − min) / scale` is no longer exactly
///   qmax, so the largest element can land on qmax − 1; the re-derived range is then one step
///   shorter and the grid changes. That is a property of the min/max zero-point recipe
///   (torch, quanto, compressed-tensors), which the format follows.
#[test]
fn int_requantizing_the_dequantized_tensor_is_idempotent() {
    let (rows, cols) = (16, 256);
    let w = weight(rows, cols);
    let mut not_idempotent = Vec::new();
    for spec in all_specs() {
        let t = int::quantize(&w, rows, cols, spec).unwrap();
        let d = t.dequantize();
        let codes = t.codes();
        let scales = t.scales_f32();
        let per = spec.num_scales(rows, cols);
        for (i, (&v, &c)) in d.iter().zip(&codes).enumerate() {
            let g = i * per / (rows * cols);
            let z = t.zeros.as_ref().map_or(0, |z| z[g]);
            assert_eq!(
                spec.quantize_value(v, scales[g], z),
                c,
                "{} {i}",
                spec.name()
            );
            assert_eq!(spec.dequantize_value(c, scales[g], z), v);
        }
        let t2 = int::quantize(&d, rows, cols, spec).unwrap();
        let same_codes = t2.codes() == codes && t2.zeros == t.zeros;
        let scales2 = t2.scales_f32();
        let ulps = scales
            .iter()
            .zip(&scales2)
            .map(|(a, b)| (a.to_bits() as i64 - b.to_bits() as i64).abs())
            .max()
            .unwrap();
        if spec.symmetric {
            assert!(same_codes && ulps == 0, "{}: not idempotent", spec.name());
        } else if spec.scale_type == FloatType::F32 {
            assert!(same_codes && ulps <= 1, "{}: not idempotent", spec.name());
        } else if !same_codes {
            not_idempotent.push(spec.name());
        }
    }
    // Asymmetric f16/bf16 specs whose codes moved (expected for some; see above).
    eprintln!("asymmetric, rounded scales, codes moved: {not_idempotent:?}");
}

#[test]
fn int_dequantize_matches_stored_bytes() {
    // The scales used while quantizing are the stored ones: rebuilding the tensor from its
    // bytes (as a reader would) gives the same values, and from the formula by hand as well.
    let (rows, cols) = (8, 128);
    let w = weight(rows, cols);
    for spec in all_specs() {
        let t = int::quantize(&w, rows, cols, spec).unwrap();
        let rebuilt = IntTensor {
            spec,
            rows,
            cols,
            packed: t.packed.clone(),
            scales: t.scales.clone(),
            zeros: t.zeros.clone(),
        };
        rebuilt.check().unwrap();
        let d = rebuilt.dequantize();
        let codes = int::unpack(&t.packed, spec.bits, rows * cols);
        // Rows are byte-aligned: compare per row when a row is not a whole number of bytes.
        let codes = if (cols * spec.bits as usize).is_multiple_of(8) {
            codes.unwrap()
        } else {
            t.codes()
        };
        for r in 0..rows {
            for c in 0..cols {
                let i = r * cols + c;
                let z = match &t.zeros {
                    Some(z) => {
                        let per = spec.num_scales(rows, cols);
                        z[if per == 1 { 0 } else { i * per / (rows * cols) }] as i32
                    }
                    None => spec.code_offset(),
                };
                let want = (codes[i] as i32 - z) as f32 * t.scale_at(r, c);
                assert_eq!(d[i].to_bits(), want.to_bits(), "{} ({r}, {c})", spec.name());
            }
        }
    }
}

#[test]
fn int_pack_unpack_round_trip() {
    let mut st = 42u64;
    for bits in 1..=8u8 {
        for n in [0usize, 1, 7, 8, 9, 63, 64, 65, 1000] {
            let codes: Vec<u8> = (0..n)
                .map(|_| (splitmix64(&mut st) >> 56) as u8 & ((1u16 << bits) - 1) as u8)
                .collect();
            let p = int::pack(&codes, bits);
            assert_eq!(p.len(), (n * bits as usize).div_ceil(8));
            assert_eq!(p.len(), int::packed_len(n, bits));
            assert_eq!(int::unpack(&p, bits, n).unwrap(), codes, "{bits} bits, {n}");
            // Spare bits of the last byte are zero.
            if !(n * bits as usize).is_multiple_of(8) {
                let used = (n * bits as usize) % 8;
                assert_eq!(p[p.len() - 1] >> used, 0);
            }
        }
    }
    // A tensor's packed bytes are its codes packed row by row, each row byte-aligned.
    let (rows, cols) = (5, 10);
    let w = weight(rows, cols);
    for bits in SUPPORTED_BITS {
        let spec = IntSpec::asymmetric(bits, Granularity::Group(5), FloatType::F16);
        let t = int::quantize(&w, rows, cols, spec).unwrap();
        let rb = spec.row_bytes(cols);
        assert_eq!(rb, (cols * bits as usize).div_ceil(8));
        let codes = t.codes();
        let mut repacked = Vec::new();
        for row in codes.chunks(cols) {
            repacked.extend(int::pack(row, bits));
        }
        assert_eq!(repacked, t.packed, "{bits}");
    }
    assert!(matches!(
        int::unpack(&[0u8; 2], 3, 6),
        Err(FormatError::WrongByteCount {
            expected: 3,
            actual: 2,
            ..
        })
    ));
    assert!(matches!(
        int::unpack(&[0u8; 2], 9, 1),
        Err(FormatError::UnsupportedBits { bits: 9, .. })
    ));
}

#[test]
fn int_byte_accounting() {
    let (rows, cols) = (24, 384);
    let w = weight(rows, cols);
    for spec in all_specs() {
        let t = int::quantize(&w, rows, cols, spec).unwrap();
        let zeros = t.zeros.as_ref().map_or(0, Vec::len);
        assert_eq!(t.stored_bytes(), t.packed.len() + t.scales.len() + zeros);
        assert_eq!(t.stored_bytes(), spec.stored_bytes(rows, cols));
        let n = spec.num_scales(rows, cols);
        assert_eq!(t.scales.len(), n * spec.scale_type.size());
        assert_eq!(zeros, if spec.symmetric { 0 } else { n });
        assert_eq!(t.bits_per_weight(), spec.bits_per_weight(rows, cols));
    }
    let bpw = |bits, sym: bool, g, ty, rows, cols| {
        let spec = IntSpec {
            bits,
            symmetric: sym,
            granularity: g,
            scale_type: ty,
        };
        let t = int::quantize(&weight(rows, cols), rows, cols, spec).unwrap();
        assert_eq!(t.bits_per_weight(), spec.bits_per_weight(rows, cols));
        t.bits_per_weight()
    };
    // int4, groups of 64, f16 scale + u8 zero: 4 + 24/64.
    assert_eq!(
        bpw(4, false, Granularity::Group(64), FloatType::F16, 8, 256),
        4.375
    );
    // int8 per channel, f32 scale: 8 + 32/cols.
    assert_eq!(
        bpw(8, true, Granularity::Channel, FloatType::F32, 4, 4096),
        8.0 + 32.0 / 4096.0
    );
    // int3, groups of 128, bf16 scale: 3 + 16/128.
    assert_eq!(
        bpw(3, true, Granularity::Group(128), FloatType::BF16, 4, 384),
        3.125
    );
    // Per tensor: one f32 scale and zero for the whole [16, 64] int2 tensor.
    assert_eq!(
        bpw(2, false, Granularity::Tensor, FloatType::F32, 16, 64),
        2.0 + 40.0 / 1024.0
    );
    // Rows that are not whole bytes: 10 3-bit codes = 30 bits → 4 bytes per row.
    assert_eq!(
        bpw(3, true, Granularity::Channel, FloatType::F16, 2, 10),
        (2.0 * (4.0 + 2.0) * 8.0) / 20.0
    );
}

#[test]
fn int_refuses_bad_input() {
    let w = weight(4, 100);
    let spec = |bits, g| IntSpec::asymmetric(bits, g, FloatType::F16);
    // A group that does not divide the row: refused, never padded.
    match int::quantize(&w, 4, 100, spec(4, Granularity::Group(48))) {
        Err(e @ FormatError::GroupSize { .. }) => {
            let FormatError::GroupSize {
                rows, cols, group, ..
            } = e
            else {
                unreachable!()
            };
            assert_eq!((rows, cols, group), (4, 100, 48));
            let msg = e.to_string();
            assert!(msg.contains("48") && msg.contains("[4, 100]") && msg.contains("pad"));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        int::quantize(&w, 4, 100, spec(4, Granularity::Group(0))),
        Err(FormatError::GroupSize { group: 0, .. })
    ));
    assert!(spec(4, Granularity::Group(25)).validate(4, 100).is_ok());
    for bits in [0u8, 1, 7, 9, 16] {
        match int::quantize(&w, 4, 100, spec(bits, Granularity::Channel)) {
            Err(FormatError::UnsupportedBits { bits: b, .. }) => assert_eq!(b, bits),
            other => panic!("{bits}: {other:?}"),
        }
    }
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut x = w.clone();
        x[2 * 100 + 3] = bad;
        x[3 * 100 + 7] = f32::NAN;
        match int::quantize(&x, 4, 100, spec(8, Granularity::Channel)) {
            Err(e @ FormatError::NonFinite { .. }) => {
                let FormatError::NonFinite {
                    index, row, col, ..
                } = e
                else {
                    unreachable!()
                };
                assert_eq!((index, row, col), (203, 2, 3));
                assert!(e.to_string().contains("row 2, column 3"), "{e}");
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(matches!(
        int::quantize(&[], 0, 100, spec(4, Granularity::Channel)),
        Err(FormatError::Empty { .. })
    ));
    assert!(matches!(
        int::quantize(&[], 4, 0, spec(4, Granularity::Tensor)),
        Err(FormatError::Empty { .. })
    ));
    assert!(matches!(
        int::quantize(&w[..399], 4, 100, spec(4, Granularity::Channel)),
        Err(FormatError::ShapeMismatch {
            expected: 400,
            actual: 399,
            ..
        })
    ));
}

// ---------------------------------------------------------------------------------------------
// nf4
// ---------------------------------------------------------------------------------------------

/// Elements of the bitsandbytes comparison: 600 blocks of 64 and a partial block of 37 (odd,
/// so the last byte holds a padding nibble), 601 blocks → 3 nested blocks of 256, 256, 89.
const BNB_NUMEL: usize = 64 * 600 + 37;
/// Seed of the comparison signal.
const BNB_SEED: u64 = 0x5EED;
/// FNV-1a 64 of the comparison signal (float32 LE), as the Python script printed it.
const BNB_SIGNAL_FNV: u64 = 0xc1c5_0578_0485_fc53;

/// One bitsandbytes result: spec, then FNV-1a 64 of the packed bytes, of the float32 absmax
/// (plain) or of the nested codes and nested absmax (double), and of the dequantized output.
struct BnbCase {
    /// Code.
    kind: Fp4Kind,
    /// Block size.
    block: usize,
    /// `compress_statistics`.
    double: bool,
    /// `q.numpy().tobytes()`.
    packed: u64,
    /// Plain: `state.absmax` (f32 LE); double: `state.absmax` (the u8 codes).
    absmax: u64,
    /// Double only: `state.state2.absmax` (f32 LE).
    nested: u64,
    /// `dequantize_4bit(q, state)` (f32 LE).
    dequantized: u64,
}

/// The double-quantization offset bitsandbytes computed (`state.offset`, float32 bits) — the
/// torch mean, one ulp below the float32-rounded sum / n that [`nf4::mean_offset`] gives.
const BNB_OFFSET_BITS: u32 = 0x4113_13f4;

/// bitsandbytes 0.50.2 (PyPI wheel), torch 2.15.0 (CPU, AVX512 capability), numpy 2.4.6, run
/// on CPU by this throwaway script (`/work/refvenv/bin/python ref.py`); keys below are the
/// cases it printed:
///
/// ```text
/// import numpy as np, torch, bitsandbytes.functional as F
/// MASK = (1 << 64) - 1
/// def splitmix64(state):
///     state = (state + 0x9E3779B97F4A7C15) & MASK
///     z = state
///     z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
///     z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
///     return state, z ^ (z >> 31)
/// def signal(n, seed):
///     st, out = seed, np.empty(n, dtype=np.float32)
///     for i in range(n):
///         s = 0
///         for _ in range(4):
///             st, z = splitmix64(st); s += z >> 42
///         v = float(s - (1 << 23)) * 2.0 ** -21
///         if i % 97 == 0: v *= 8.0
///         v *= 2.0 ** ((i // 64) % 5 - 2)
///         out[i] = np.float32(v)
///     return out
/// def fnv(b):
///     h = 0xcbf29ce484222325
///     for x in b: h = ((h ^ x) * 0x100000001b3) & MASK
///     return h
/// t = torch.from_numpy(signal(64 * 600 + 37, 0x5EED))
/// for qt in ["nf4", "fp4"]:
///     for bs, dq in [(64, False), (64, True), (32, False), (4096, False)]:
///         q, s = F.quantize_4bit(t, blocksize=bs, quant_type=qt, compress_statistics=dq)
///         print(qt, bs, dq, hex(fnv(q.numpy().tobytes())),
///               hex(fnv(s.absmax.numpy().tobytes())),
///               hex(fnv(s.state2.absmax.numpy().tobytes())) if dq else "",
///               hex(s.offset.view(torch.int32).item()) if dq else "",
///               hex(fnv(F.dequantize_4bit(q, s).numpy().tobytes())))
/// ```
const BNB: [BnbCase; 8] = [
    BnbCase {
        kind: Fp4Kind::Nf4,
        block: 64,
        double: false,
        packed: 0xd644_bd47_cf33_443c,
        absmax: 0xf746_3b26_8a12_4226,
        nested: 0,
        dequantized: 0xf85a_4c5c_6d09_9025,
    },
    BnbCase {
        kind: Fp4Kind::Nf4,
        block: 64,
        double: true,
        packed: 0xd644_bd47_cf33_443c,
        absmax: 0xbaae_f918_4c74_10f9,
        nested: 0x742b_c0ba_6f0b_9466,
        dequantized: 0xdaa3_86f9_7552_6f3e,
    },
    BnbCase {
        kind: Fp4Kind::Nf4,
        block: 32,
        double: false,
        packed: 0x8964_1c86_afa7_4b18,
        absmax: 0x26c4_5930_5728_488e,
        nested: 0,
        dequantized: 0x22ed_65ae_81d4_d658,
    },
    BnbCase {
        kind: Fp4Kind::Nf4,
        block: 4096,
        double: false,
        packed: 0xd13c_c23b_532a_c05f,
        absmax: 0x49cb_b2d2_4b8d_5e2d,
        nested: 0,
        dequantized: 0xdfe1_17c6_96f8_54a1,
    },
    BnbCase {
        kind: Fp4Kind::Fp4,
        block: 64,
        double: false,
        packed: 0x7184_358e_c27b_f20b,
        absmax: 0xf746_3b26_8a12_4226,
        nested: 0,
        dequantized: 0x8d04_dbed_b9ee_92e3,
    },
    BnbCase {
        kind: Fp4Kind::Fp4,
        block: 64,
        double: true,
        packed: 0x7184_358e_c27b_f20b,
        absmax: 0xbaae_f918_4c74_10f9,
        nested: 0x742b_c0ba_6f0b_9466,
        dequantized: 0x58b0_fdce_3878_785e,
    },
    BnbCase {
        kind: Fp4Kind::Fp4,
        block: 32,
        double: false,
        packed: 0x7a72_aac3_fed7_8627,
        absmax: 0x26c4_5930_5728_488e,
        nested: 0,
        dequantized: 0xb168_3420_c4e1_48c4,
    },
    BnbCase {
        kind: Fp4Kind::Fp4,
        block: 4096,
        double: false,
        packed: 0x1dbb_d257_d9b0_e456,
        absmax: 0x49cb_b2d2_4b8d_5e2d,
        nested: 0,
        dequantized: 0x8804_2833_fec0_5594,
    },
];

#[test]
fn nf4_is_bit_identical_to_bitsandbytes() {
    let x = signal(BNB_NUMEL, BNB_SEED);
    assert_eq!(
        fnv_f32(&x),
        BNB_SIGNAL_FNV,
        "the signal differs from the script's"
    );
    let bnb_offset = f32::from_bits(BNB_OFFSET_BITS);
    for case in &BNB {
        let spec = Nf4Spec {
            kind: case.kind,
            block_size: case.block,
            double_quant: case.double,
        };
        let name = spec.name();
        let t = nf4::quantize(&x, spec).unwrap();
        t.check().unwrap();
        assert_eq!(t.packed.len(), BNB_NUMEL.div_ceil(2));
        assert_eq!(fnv1a64(&t.packed), case.packed, "{name}: packed");
        // Reproduce bitsandbytes' state: the plain absmax, double-quantized with its offset.
        let plain = nf4::quantize(
            &x,
            Nf4Spec {
                double_quant: false,
                ..spec
            },
        )
        .unwrap();
        let Absmax::F32(am) = &plain.absmax else {
            unreachable!()
        };
        let bnb_state = if case.double {
            let abs = Absmax::double_with_offset(am, bnb_offset);
            let Absmax::Double {
                codes,
                nested_absmax,
                offset,
                nested_block,
            } = &abs
            else {
                unreachable!()
            };
            assert_eq!(fnv1a64(codes), case.absmax, "{name}: nested codes");
            assert_eq!(fnv_f32(nested_absmax), case.nested, "{name}: nested absmax");
            assert_eq!((*offset, *nested_block), (bnb_offset, NESTED_BLOCK));
            assert_eq!(nested_absmax.len(), 3);
            // Our own offset (sum rounded to f32, / n) is within one ulp of torch's mean.
            let Absmax::Double { offset: ours, .. } = &t.absmax else {
                panic!("{name}: not double-quantized")
            };
            assert!((ours.to_bits() as i64 - BNB_OFFSET_BITS as i64).abs() <= 1);
            abs
        } else {
            assert_eq!(fnv_f32(am), case.absmax, "{name}: absmax");
            assert_eq!(t.absmax, plain.absmax);
            plain.absmax.clone()
        };
        let t_bnb = Nf4Tensor {
            absmax: bnb_state,
            ..t.clone()
        };
        t_bnb.check().unwrap();
        assert_eq!(
            fnv_f32(&t_bnb.dequantize()),
            case.dequantized,
            "{name}: dequantized"
        );
    }
}

/// Every dequantized value is a nearest level `code[k] · absmax` of its block.
#[test]
fn nf4_dequantized_values_are_nearest_levels() {
    let x = signal(4096 + 77, 0xABCD);
    for kind in [Fp4Kind::Nf4, Fp4Kind::Fp4] {
        for block in [32, 64, 256] {
            for double_quant in [false, true] {
                let spec = Nf4Spec {
                    kind,
                    block_size: block,
                    double_quant,
                };
                let t = nf4::quantize(&x, spec).unwrap();
                let d = t.dequantize();
                let absmax = t.absmax.values();
                let Absmax::F32(exact) = nf4::quantize(
                    &x,
                    Nf4Spec {
                        double_quant: false,
                        ..spec
                    },
                )
                .unwrap()
                .absmax
                else {
                    unreachable!()
                };
                let code = kind.code();
                let idx = t.indices();
                let (mut se, mut sx) = (0f64, 0f64);
                for (i, (&w, &v)) in x.iter().zip(&d).enumerate() {
                    let b = i / block;
                    let a = absmax[b];
                    assert_eq!(v, code[idx[i] as usize] * a);
                    // The index is the nearest level for the exact absmax the quantizer used.
                    let e = exact[b];
                    let dist = |k: usize| (w - code[k] * e).abs();
                    let best = (0..16).map(dist).fold(f32::INFINITY, f32::min);
                    assert!(
                        dist(idx[i] as usize) <= best + e * 1e-6,
                        "{}: element {i}",
                        spec.name()
                    );
                    se += ((w - v) as f64).powi(2);
                    sx += (w as f64).powi(2);
                }
                let rel_rmse = (se / sx).sqrt();
                eprintln!("{}: relative RMSE {rel_rmse:.4}", spec.name());
            }
        }
    }
}

#[test]
fn nf4_bits_per_weight() {
    let x = bell(576 * 576, 7);
    let t = nf4::quantize(&x, Nf4Spec::qlora()).unwrap();
    // 331776 / 64 = 5184 blocks; 5184 / 256 → 21 nested blocks.
    assert_eq!(
        t.stored_bytes(),
        331776 / 2 + 5184 + 4 * 21 + 4,
        "packed + codes + nested absmax + offset"
    );
    assert_eq!(t.stored_bytes(), Nf4Spec::qlora().stored_bytes(576 * 576));
    let bpw = t.bits_per_weight();
    assert!((bpw - 4.127).abs() < 0.01, "{bpw}");
    assert!(
        (bpw - (4.0 + 8.0 / 64.0 + 32.0 / (64.0 * 256.0))).abs() < 1e-3,
        "{bpw}"
    );
    let plain = nf4::quantize(&x, Nf4Spec::nf4()).unwrap();
    assert_eq!(plain.bits_per_weight(), 4.5);
    let fp4 = nf4::quantize(
        &x,
        Nf4Spec {
            kind: Fp4Kind::Fp4,
            block_size: 128,
            double_quant: false,
        },
    )
    .unwrap();
    assert_eq!(fp4.bits_per_weight(), 4.25);
    // Double quantization costs little accuracy: absmax within a dynamic-map step.
    let (Absmax::Double { .. }, Absmax::F32(exact)) = (&t.absmax, &plain.absmax) else {
        unreachable!()
    };
    let got = t.absmax.values();
    let worst = exact
        .iter()
        .zip(&got)
        .map(|(a, b)| (a - b).abs() / a)
        .fold(0f32, f32::max);
    assert!(worst < 0.02, "worst relative absmax error {worst}");
}

#[test]
fn nf4_tables_and_dynamic_map() {
    assert_eq!(
        Fp4Kind::Nf4.code()[..8],
        [
            -1.0,
            -0.696_192_8,
            -0.525_073_05,
            -0.394_917_5,
            -0.284_441_38,
            -0.184_773_43,
            -0.091_050_036,
            0.0
        ]
    );
    assert_eq!(Fp4Kind::Fp4.code()[2], 8.0 / 12.0);
    assert_eq!(Fp4Kind::Fp4.code()[9], -0.0625 / 12.0);
    assert_eq!(Fp4Kind::parse("NF4"), Some(Fp4Kind::Nf4));
    assert_eq!(Fp4Kind::parse("int4"), None);
    // FNV-1a 64 of bitsandbytes' create_dynamic_map() (float32 LE), with the script's `fnv`:
    // `hex(fnv(F.create_dynamic_map().numpy().tobytes()))`.
    assert_eq!(fnv_f32(&DYNAMIC_MAP), 0xd677_f22a_9666_5bc4);
    // First element in the high nibble.
    let t = nf4::quantize(&[1.0, -1.0, 0.0], Nf4Spec::nf4()).unwrap();
    assert_eq!(t.packed, vec![0xF0, 0x77]);
    assert_eq!(t.indices(), vec![15, 0, 7]);
    assert_eq!(t.dequantize(), vec![1.0, -1.0, 0.0]);
}

#[test]
fn nf4_refuses_bad_input() {
    for block in [0, 16, 48, 100, 8192] {
        let spec = Nf4Spec {
            block_size: block,
            ..Nf4Spec::nf4()
        };
        assert!(
            matches!(
                nf4::quantize(&[1.0; 64], spec),
                Err(FormatError::BlockSize { block: b, .. }) if b == block
            ),
            "{block}"
        );
    }
    let mut x = vec![0.5f32; 100];
    x[70] = f32::NAN;
    match nf4::quantize(&x, Nf4Spec::qlora()) {
        Err(FormatError::NonFinite { index, .. }) => assert_eq!(index, 70),
        other => panic!("{other:?}"),
    }
    x[70] = f32::NEG_INFINITY;
    assert!(matches!(
        nf4::quantize(&x, Nf4Spec::nf4()),
        Err(FormatError::NonFinite { index: 70, .. })
    ));
    assert!(matches!(
        nf4::quantize(&[], Nf4Spec::nf4()),
        Err(FormatError::Empty { .. })
    ));
    // Parts that do not fit together.
    let t = nf4::quantize(&signal(1000, 1), Nf4Spec::qlora()).unwrap();
    let mut u = t.clone();
    u.packed.pop();
    assert!(matches!(u.check(), Err(FormatError::Inconsistent { .. })));
    let mut u = t.clone();
    u.spec.double_quant = false;
    assert!(matches!(u.check(), Err(FormatError::Inconsistent { .. })));
    let mut u = t;
    if let Absmax::Double { nested_absmax, .. } = &mut u.absmax {
        nested_absmax.push(1.0);
    }
    assert!(matches!(u.check(), Err(FormatError::Inconsistent { .. })));
}

/// Relative RMSE of NF4 / FP4 on a bell-shaped signal (no outliers): measured values
/// (NF4 0.0873 / 0.0912 / 0.0959 and FP4 0.1126 / 0.1189 / 0.1271 for blocks of 32 / 64 / 256)
/// plus 5% headroom; NF4 beats FP4, smaller blocks beat larger ones, and double quantization
/// moves the error by less than 0.1%.
#[test]
fn nf4_error_on_a_bell_signal() {
    let x = bell(64 * 1024, 11);
    let rel_rmse = |spec: Nf4Spec| {
        let d = nf4::quantize(&x, spec).unwrap().dequantize();
        let se: f64 = x
            .iter()
            .zip(&d)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum();
        let sx: f64 = x.iter().map(|a| (*a as f64).powi(2)).sum();
        (se / sx).sqrt()
    };
    let cases = [
        (Fp4Kind::Nf4, 32, 0.0873),
        (Fp4Kind::Nf4, 64, 0.0912),
        (Fp4Kind::Nf4, 256, 0.0959),
        (Fp4Kind::Fp4, 32, 0.1126),
        (Fp4Kind::Fp4, 64, 0.1189),
        (Fp4Kind::Fp4, 256, 0.1271),
    ];
    let mut prev = 0.0;
    for (kind, block, measured) in cases {
        let spec = Nf4Spec {
            kind,
            block_size: block,
            double_quant: false,
        };
        let plain = rel_rmse(spec);
        let dq = rel_rmse(Nf4Spec {
            double_quant: true,
            ..spec
        });
        assert!(plain < measured * 1.05, "{}: {plain}", spec.name());
        assert!(
            (dq - plain).abs() < plain * 1e-3,
            "{}: {dq} vs {plain}",
            spec.name()
        );
        if block > 32 {
            assert!(
                plain > prev,
                "{}: larger blocks should cost more",
                spec.name()
            );
        }
        prev = plain;
    }
}
