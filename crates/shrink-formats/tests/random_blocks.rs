//! Every dequantizable GGML type against gguf-py on pseudo-random blocks.
//!
//! `ggml_blocks.rs` checks 11 types on blocks that llama.cpp's quantizer wrote; those blocks only
//! use the bit patterns a quantizer produces. Here every type for which
//! [`GgmlType::can_dequantize`] holds gets 16384 elements (64 super-blocks' worth) of
//! deterministic pseudo-random bytes, so every quant, scale and min bit pattern occurs. Only the
//! floating-point fields are constrained: the f16 scale/min fields of each block, Q8_K's f32
//! scale, and every element of F32 / F16 / BF16 are built from random sign, exponent and
//! mantissa bits as finite normal numbers with magnitudes in [2^-10, 4), so that no NaN, infinity
//! or subnormal turns up (NaN != NaN would hide or fake a mismatch).
//!
//! The decoded values must hash to the same FNV-1a 64 as gguf-py's reference dequantizer
//! (llama.cpp's own numpy port), i.e. be bit-identical to it.

use shrink_formats::ggml::{dequantize, GgmlType};

/// Elements per type: 64 blocks of the 256-element types, 512 of the 32-element ones.
const ELEMENTS: usize = 64 * 256;

/// Seed of the generator for a type: `SEED + ggml type id`.
const SEED: u64 = 0x5348_5249_4E4B_0000;

/// A floating-point field that the generator fills with a finite value (not random bytes).
#[derive(Clone, Copy)]
enum FloatField {
    /// `ggml_half` at this byte offset of each block.
    F16(usize),
    /// `float` at this byte offset of each block.
    F32(usize),
}

use FloatField::{F16, F32};

/// Every dequantizable type with the float fields of its block (empty for the scalar types,
/// whose every element is generated as a float).
const TYPES: [(GgmlType, &[FloatField]); 16] = [
    (GgmlType::F32, &[]),
    (GgmlType::F16, &[]),
    (GgmlType::BF16, &[]),
    (GgmlType::Q4_0, &[F16(0)]),
    (GgmlType::Q4_1, &[F16(0), F16(2)]),
    (GgmlType::Q5_0, &[F16(0)]),
    (GgmlType::Q5_1, &[F16(0), F16(2)]),
    (GgmlType::Q8_0, &[F16(0)]),
    (GgmlType::Q2_K, &[F16(80), F16(82)]),
    (GgmlType::Q3_K, &[F16(108)]),
    (GgmlType::Q4_K, &[F16(0), F16(2)]),
    (GgmlType::Q5_K, &[F16(0), F16(2)]),
    (GgmlType::Q6_K, &[F16(208)]),
    (GgmlType::Q8_K, &[F32(0)]),
    (GgmlType::IQ4_NL, &[F16(0)]),
    (GgmlType::IQ4_XS, &[F16(0)]),
];

/// SplitMix64 (Steele, Lea, Flood 2014), the generator of all test bytes.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Bits of a finite normal float of `width` bits with `mbits` mantissa bits and exponent bias
/// `bias`, built from one random draw `r`: sign = bit 63, unbiased exponent = -10 + (r >> 32) % 12
/// (so |x| in [2^-10, 4)), mantissa = the low `mbits` bits of `r`.
fn float_bits(r: u64, width: u32, mbits: u32, bias: u64) -> u64 {
    let sign = r >> 63;
    let exp = bias - 10 + (r >> 32) % 12;
    (sign << (width - 1)) | (exp << mbits) | (r & ((1 << mbits) - 1))
}

/// Write the random float for field `f` of the block at `block` from the draw `r`.
fn put_field(block: &mut [u8], f: FloatField, r: u64) {
    match f {
        F16(o) => {
            let bits = float_bits(r, 16, 10, 15) as u16;
            block[o..o + 2].copy_from_slice(&bits.to_le_bytes());
        }
        F32(o) => {
            let bits = float_bits(r, 32, 23, 127) as u32;
            block[o..o + 4].copy_from_slice(&bits.to_le_bytes());
        }
    }
}

/// The `ELEMENTS` elements of `ty` as bytes.
///
/// Scalar types: one draw per element, turned into a float (F32: 8/23-bit, F16: 5/10-bit, BF16:
/// 8/7-bit exponent/mantissa). Block types: the bytes of whole draws (little-endian u64s,
/// truncated to the tensor's size), then, block by block and field by field in `fields` order,
/// one draw per float field overwriting it.
fn random_tensor(ty: GgmlType, fields: &[FloatField]) -> Vec<u8> {
    let mut rng = SplitMix64(SEED + ty.id() as u64);
    let n = ty.row_bytes(ELEMENTS).expect("whole blocks");
    let mut out = Vec::with_capacity(n + 8);
    if ty.block_size() == 1 {
        for _ in 0..ELEMENTS {
            let r = rng.next();
            match ty {
                GgmlType::F32 => out.extend((float_bits(r, 32, 23, 127) as u32).to_le_bytes()),
                GgmlType::F16 => out.extend((float_bits(r, 16, 10, 15) as u16).to_le_bytes()),
                GgmlType::BF16 => out.extend((float_bits(r, 16, 7, 127) as u16).to_le_bytes()),
                _ => unreachable!("{ty}"),
            }
        }
    } else {
        while out.len() < n {
            out.extend(rng.next().to_le_bytes());
        }
        out.truncate(n);
        for block in out.chunks_exact_mut(ty.type_size()) {
            for &f in fields {
                put_field(block, f, rng.next());
            }
        }
    }
    assert_eq!(out.len(), n);
    out
}

fn fnv1a64(bytes: impl IntoIterator<Item = u8>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn decoded(ty: GgmlType, src: &[u8]) -> Vec<f32> {
    let mut y = vec![0f32; ELEMENTS];
    dequantize(ty, src, &mut y).unwrap_or_else(|e| panic!("{ty}: {e}"));
    y
}

/// Per type: (name, FNV-1a 64 of the generated input bytes, FNV-1a 64 of the reference output
/// as little-endian f32 bit patterns).
///
/// Produced with gguf 0.19.0 (PyPI, llama.cpp's gguf-py) and numpy 2.4.6 on CPython 3.11 by
/// the script below (`python3 -m venv /tmp/ggufvenv && /tmp/ggufvenv/bin/pip install gguf==0.19.0
/// numpy`, then `/tmp/ggufvenv/bin/python script.py`). It regenerates the input bytes with its
/// own port of [`random_tensor`] (the input hash checks that both ports agree) and decodes them
/// with `gguf.quants.dequantize`. gguf-py has no Q8_K dequantizer (it raises
/// `NotImplementedError`), so Q8_K's reference is ggml-quants.c's `dequantize_row_q8_K` formula
/// `y = x[i].d * x[i].qs[j]` in numpy float32 (see also [`q8_k_matches_ggml_formula`]). Rust's
/// inputs and outputs were also compared with the script's byte by byte and element by element:
/// 0 differing bytes, 0 differing elements for all 16 types.
///
/// ```text
/// import numpy as np
/// from gguf.quants import dequantize
/// from gguf.constants import GGMLQuantizationType as T, GGML_QUANT_SIZES
/// M, N, SEED = (1 << 64) - 1, 64 * 256, 0x5348_5249_4E4B_0000
/// F16, F32 = (16, 10, 15), (32, 23, 127)  # (width, mantissa bits, exponent bias)
/// SCALAR = {"F32": F32, "F16": F16, "BF16": (16, 7, 127)}
/// FIELDS = {"Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0],
///           "Q2_K": [80, 82], "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208],
///           "IQ4_NL": [0], "IQ4_XS": [0]}  # offsets of the f16 fields; Q8_K: f32 at 0
/// def splitmix64(s):
///     while True:
///         s = (s + 0x9E3779B97F4A7C15) & M
///         z = ((s ^ (s >> 30)) * 0xBF58476D1CE4E5B9) & M
///         z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M
///         yield z ^ (z >> 31)
/// def fbits(r, w, mb, bias):
///     e = bias - 10 + (r >> 32) % 12
///     b = ((r >> 63) << (w - 1)) | (e << mb) | (r & ((1 << mb) - 1))
///     return b.to_bytes(w // 8, "little")
/// def tensor(name):
///     bs, ts = GGML_QUANT_SIZES[T[name]]
///     g = splitmix64(SEED + T[name].value)
///     if bs == 1:
///         return b"".join(fbits(next(g), *SCALAR[name]) for _ in range(N))
///     n = N // bs * ts
///     raw = bytearray(b"".join(next(g).to_bytes(8, "little") for _ in range(-(-n // 8)))[:n])
///     fields = [(0, F32)] if name == "Q8_K" else [(f, F16) for f in FIELDS[name]]
///     for o in range(0, n, ts):
///         for f, fmt in fields:
///             raw[o + f:o + f + fmt[0] // 8] = fbits(next(g), *fmt)
///     return bytes(raw)
/// def reference(name, raw):
///     if name == "Q8_K":  # ggml-quants.c dequantize_row_q8_K: y = x[i].d * x[i].qs[j]
///         b = np.frombuffer(raw, np.uint8).reshape(-1, 292)
///         d, qs = b[:, :4].copy().view("<f4"), b[:, 4:260].copy().view(np.int8)
///         return (d * qs.astype(np.float32)).reshape(-1)
///     return dequantize(np.frombuffer(raw, np.uint8), T[name]).reshape(-1).astype("<f4")
/// def fnv1a64(bs):
///     h = 0xcbf29ce484222325
///     for x in bs:
///         h = ((h ^ x) * 0x100000001b3) & M
///     return h
/// for name in ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K",
///              "Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ4_NL", "IQ4_XS"]:
///     raw = tensor(name)
///     out = reference(name, raw)
///     assert out.shape == (N,) and np.isfinite(out).all(), name
///     print(f'("{name}", 0x{fnv1a64(raw):016x}, 0x{fnv1a64(out.tobytes()):016x}),')
/// ```
const REFERENCE_FNV1A64: [(&str, u64, u64); 16] = [
    ("F32", 0x61f408c907917dcc, 0x61f408c907917dcc),
    ("F16", 0xe5c497ae129aabd9, 0xdea76a0f477cc74e),
    ("BF16", 0xe0064899efaf63c3, 0xdeb37b67e7c98fe3),
    ("Q4_0", 0x3cc625b9e50bd2c3, 0xa3b5ab107b150660),
    ("Q4_1", 0xda5573ff0fc9b574, 0x0a86f897547b527f),
    ("Q5_0", 0x5ec5c7c1a1462449, 0x6409bd1965d148ad),
    ("Q5_1", 0x8ec7c7218771e5f4, 0x9b44323ce9acb80c),
    ("Q8_0", 0x3f4b32c2377d8300, 0x52b8d3faa775844a),
    ("Q2_K", 0xfd643b42dc728311, 0x2279510f9703c698),
    ("Q3_K", 0x0bbc7074ae4e6040, 0xfbc26eedf0deb7c6),
    ("Q4_K", 0x09733024788667ee, 0x82c262751a1c33c8),
    ("Q5_K", 0xf2611851a744be41, 0x0e81dadd37e15606),
    ("Q6_K", 0xfe12d9c9409c5aaa, 0x4f3b17b8bc6abb65),
    ("Q8_K", 0xa817a8b3f522cea9, 0x4dda3c9df355eb5f),
    ("IQ4_NL", 0xeac676e92ec394d0, 0xc60296617aea1e9e),
    ("IQ4_XS", 0x58458ed2656a1f81, 0x586f657a6d554701),
];

#[test]
fn covers_every_dequantizable_type() {
    let listed: Vec<GgmlType> = TYPES.iter().map(|&(t, _)| t).collect();
    let dequantizable: Vec<GgmlType> = GgmlType::ALL
        .into_iter()
        .filter(|t| t.can_dequantize())
        .collect();
    for t in &dequantizable {
        assert!(
            listed.contains(t),
            "{t} is dequantizable but not tested here"
        );
    }
    for t in &listed {
        assert!(t.can_dequantize(), "{t}");
    }
    assert_eq!(listed.len(), dequantizable.len());
    let names: Vec<&str> = REFERENCE_FNV1A64.iter().map(|&(n, _, _)| n).collect();
    let expected: Vec<&str> = listed.iter().map(|t| t.name()).collect();
    assert_eq!(names, expected);
}

#[test]
fn bit_identical_to_gguf_py() {
    for ((ty, fields), (name, in_hash, out_hash)) in TYPES.into_iter().zip(REFERENCE_FNV1A64) {
        assert_eq!(ty.name(), name);
        let src = random_tensor(ty, fields);
        let got_in = fnv1a64(src.iter().copied());
        assert_eq!(
            got_in, in_hash,
            "{ty}: generated bytes differ from the reference script's ({got_in:#018x})"
        );
        let y = decoded(ty, &src);
        assert!(y.iter().all(|v| v.is_finite()), "{ty}: non-finite output");
        let got_out = fnv1a64(y.iter().flat_map(|v| v.to_le_bytes()));
        assert_eq!(
            got_out, out_hash,
            "{ty}: output differs from gguf-py's ({got_out:#018x})"
        );
    }
}

/// Q8_K, which gguf-py cannot decode, against ggml-quants.c's `dequantize_row_q8_K`
/// (`*y++ = x[i].d * x[i].qs[j];`: f32 scale times the int8 quant) on a few blocks.
#[test]
fn q8_k_matches_ggml_formula() {
    let (ty, fields) = TYPES[13];
    assert_eq!(ty, GgmlType::Q8_K);
    let src = random_tensor(ty, fields);
    let y = decoded(ty, &src);
    for i in [0, 1, 31, 63] {
        let block = &src[i * 292..(i + 1) * 292];
        let d = f32::from_le_bytes(block[..4].try_into().unwrap());
        assert!(d.is_normal(), "block {i}: d = {d}");
        for j in 0..256 {
            let expect = d * (block[4 + j] as i8) as f32;
            assert_eq!(
                y[i * 256 + j].to_bits(),
                expect.to_bits(),
                "block {i}, element {j}"
            );
        }
    }
}
