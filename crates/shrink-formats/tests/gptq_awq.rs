//! GPTQ (AutoGPTQ / GPTQModel int32) and AWQ (AutoAWQ GEMM) layouts: byte equality of the
//! packed tensors and value equality of the dequantized weight against the public packers
//! (`tests/data/gptq_awq_reference.safetensors`, made by `scripts/make-gptq-awq-reference.py`
//! with AutoGPTQ's, GPTQModel's and AutoAWQ's code ported to numpy), round trips for every bit
//! width and both zero-point formats, conversions from and to [`IntTensor`], and the refusals.

use half::f16;
use safetensors::SafeTensors;
use shrink_formats::awq_layout::{AwqPacked, AwqParts};
use shrink_formats::float::FloatType;
use shrink_formats::gptq_layout::{CheckpointFormat, GptqPacked, GptqParts, GPTQ_BITS};
use shrink_formats::int::{self, Granularity, IntSpec};
use shrink_formats::FormatError;

const REFERENCE: &[u8] = include_bytes!("data/gptq_awq_reference.safetensors");
const OUT: usize = 64;
const IN: usize = 128;
const G: usize = 32;

/// The little-endian bytes of tensor `name` of the reference file.
fn bytes<'a>(st: &'a SafeTensors, name: &str) -> &'a [u8] {
    st.tensor(name)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .data()
}

fn i32s(b: &[u8]) -> Vec<i32> {
    b.chunks_exact(4)
        .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn f16s(b: &[u8]) -> Vec<f16> {
    b.chunks_exact(2)
        .map(|c| f16::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn le_i32(v: &[i32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn le_f16(v: &[f16]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Bitwise equality of float32 slices (so -0.0 ≠ 0.0 and NaN would be caught).
fn assert_same_f32(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    if let Some(i) = (0..a.len()).find(|&i| a[i].to_bits() != b[i].to_bits()) {
        panic!("{what}: element {i}: {} vs {}", a[i], b[i]);
    }
}

#[test]
fn gptq_matches_autogptq_and_gptqmodel() {
    let st = SafeTensors::deserialize(REFERENCE).unwrap();
    for bits in GPTQ_BITS {
        for case in ["triv", "act"] {
            let p = format!("gptq{bits}_{case}");
            let parts = GptqParts {
                bits,
                group_size: G,
                rows: OUT,
                cols: IN,
                codes: bytes(&st, &format!("{p}.codes")).to_vec(),
                scales: f32s(bytes(&st, &format!("{p}.scales_in"))),
                zeros: bytes(&st, &format!("{p}.zeros")).to_vec(),
                g_idx: i32s(bytes(&st, &format!("{p}.g_idx")))
                    .into_iter()
                    .map(|g| g as u32)
                    .collect(),
            };
            parts.check().unwrap();
            assert_eq!(parts.has_trivial_g_idx(), case == "triv", "{p}");
            for (format, qz) in [
                (CheckpointFormat::Gptq, "qzeros_v1"),
                (CheckpointFormat::GptqV2, "qzeros_v2"),
            ] {
                let packed = parts.pack(format).unwrap();
                let what = format!("{p} {}", format.name());
                assert_eq!(
                    le_i32(&packed.qweight),
                    bytes(&st, &format!("{p}.qweight")),
                    "{what} qweight"
                );
                assert_eq!(
                    le_i32(&packed.qzeros),
                    bytes(&st, &format!("{p}.{qz}")),
                    "{what} qzeros"
                );
                assert_eq!(
                    le_f16(&packed.scales),
                    bytes(&st, &format!("{p}.scales")),
                    "{what} scales"
                );
                assert_eq!(
                    le_i32(&packed.g_idx),
                    bytes(&st, &format!("{p}.g_idx")),
                    "{what} g_idx"
                );
                // The reference tensors unpack to the same parts.
                let reference = GptqPacked {
                    qweight: i32s(bytes(&st, &format!("{p}.qweight"))),
                    qzeros: i32s(bytes(&st, &format!("{p}.{qz}"))),
                    scales: f16s(bytes(&st, &format!("{p}.scales"))),
                    g_idx: i32s(bytes(&st, &format!("{p}.g_idx"))),
                };
                let back = GptqParts::unpack(&reference, bits, G, OUT, IN, format).unwrap();
                assert_eq!(back, parts, "{what} unpack");
            }
            let want = f32s(bytes(&st, &format!("{p}.dequant")));
            assert_same_f32(&parts.dequantize(), &want, &p);
            match parts.to_int_tensor() {
                Some(t) => {
                    assert_eq!(case, "triv");
                    t.check().unwrap();
                    assert_same_f32(&t.dequantize(), &want, &format!("{p} IntTensor"));
                    assert_eq!(GptqParts::from_int_tensor(&t).unwrap(), parts, "{p}");
                }
                None => assert_eq!(case, "act"),
            }
            let [qw, qz, sc] = shrink_formats::gptq_layout::shapes(bits, G, OUT, IN);
            assert_eq!(
                parts.stored_bytes(),
                4 * qw[0] * qw[1] + 4 * qz[0] * qz[1] + 2 * sc[0] * sc[1] + 4 * IN
            );
            assert_eq!(
                parts.stored_bytes(),
                ["qweight", "qzeros_v1", "scales", "g_idx"]
                    .iter()
                    .map(|t| bytes(&st, &format!("{p}.{t}")).len())
                    .sum::<usize>()
            );
        }
    }
}

#[test]
fn awq_matches_autoawq() {
    let st = SafeTensors::deserialize(REFERENCE).unwrap();
    let parts = AwqParts {
        group_size: G,
        rows: OUT,
        cols: IN,
        codes: bytes(&st, "awq4.codes").to_vec(),
        scales: f32s(bytes(&st, "awq4.scales_in")),
        zeros: bytes(&st, "awq4.zeros").to_vec(),
    };
    let packed = parts.pack().unwrap();
    assert_eq!(le_i32(&packed.qweight), bytes(&st, "awq4.qweight"));
    assert_eq!(le_i32(&packed.qzeros), bytes(&st, "awq4.qzeros"));
    assert_eq!(le_f16(&packed.scales), bytes(&st, "awq4.scales"));
    let reference = AwqPacked {
        qweight: i32s(bytes(&st, "awq4.qweight")),
        qzeros: i32s(bytes(&st, "awq4.qzeros")),
        scales: f16s(bytes(&st, "awq4.scales")),
    };
    assert_eq!(AwqParts::unpack(&reference, G, OUT, IN).unwrap(), parts);
    let want = f32s(bytes(&st, "awq4.dequant"));
    assert_same_f32(&parts.dequantize(), &want, "awq");
    let t = parts.to_int_tensor();
    t.check().unwrap();
    assert_same_f32(&t.dequantize(), &want, "awq IntTensor");
    assert_eq!(AwqParts::from_int_tensor(&t).unwrap(), parts);
    assert_eq!(
        parts.stored_bytes(),
        ["qweight", "qzeros", "scales"]
            .iter()
            .map(|n| bytes(&st, &format!("awq4.{n}")).len())
            .sum::<usize>()
    );
}

/// xorshift64* stream.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        (self.next() >> 11) % n
    }
    /// A float16-exact scale in about [1e-4, 0.1].
    fn scale(&mut self) -> f32 {
        f16::from_f32(1e-4 + (self.below(1 << 20) as f32) / (1u32 << 20) as f32 * 0.1).to_f32()
    }
}

/// Random parts; `act` gives a permuted g_idx with groups of `g` columns.
fn random_parts(
    rng: &mut Rng,
    bits: u8,
    g: usize,
    rows: usize,
    cols: usize,
    act: bool,
) -> GptqParts {
    let ng = cols.div_ceil(g);
    let n = 1u64 << bits;
    let mut g_idx: Vec<u32> = (0..cols).map(|c| (c / g) as u32).collect();
    if act {
        for i in (1..cols).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            g_idx.swap(i, j);
        }
    }
    GptqParts {
        bits,
        group_size: g,
        rows,
        cols,
        codes: (0..rows * cols).map(|_| rng.below(n) as u8).collect(),
        scales: (0..rows * ng).map(|_| rng.scale()).collect(),
        // Zero points 0 and 2^bits − 1 included: the v1 offset's borrow and wrap.
        zeros: (0..rows * ng).map(|_| rng.below(n) as u8).collect(),
        g_idx,
    }
}

#[test]
fn gptq_round_trips_every_bits_and_format() {
    let mut rng = Rng(0x5EED_1234_ABCD_0001);
    for bits in GPTQ_BITS {
        // (group, rows, cols): groups dividing the row, one group, and a ragged last group.
        for (g, rows, cols, act) in [
            (32, 32, 128, false),
            (32, 64, 64, true),
            (128, 32, 64, false),
            (64, 32, 96, false),
            (64, 96, 160, true),
        ] {
            let mut parts = random_parts(&mut rng, bits, g, rows, cols, act);
            parts.zeros[0] = 0;
            parts.zeros[1] = ((1u32 << bits) - 1) as u8;
            assert!(!parts.v1_exact());
            for format in [CheckpointFormat::Gptq, CheckpointFormat::GptqV2] {
                let packed = parts.pack(format).unwrap();
                let back = GptqParts::unpack(&packed, bits, g, rows, cols, format).unwrap();
                assert_eq!(
                    back, parts,
                    "{bits} bits, G {g}, [{rows}, {cols}], {format:?}"
                );
            }
            let t = parts.to_int_tensor();
            let ng = cols.div_ceil(g);
            assert_eq!(t.is_some(), !act && (ng == 1 || cols % g == 0));
            if let Some(t) = t {
                t.check().unwrap();
                assert_same_f32(&t.dequantize(), &parts.dequantize(), "IntTensor");
            }
        }
    }
}

#[test]
fn v1_without_zero_point_zero_is_field_wise_minus_one() {
    // With every zero point ≥ 1, v1 is v2 with 1 subtracted from each field (AutoGPTQ's pack).
    let mut rng = Rng(77);
    for bits in GPTQ_BITS {
        let mut parts = random_parts(&mut rng, bits, 32, 32, 64, false);
        parts.zeros.iter_mut().for_each(|z| *z = (*z).max(1));
        assert!(parts.v1_exact());
        let mut minus = parts.clone();
        minus.zeros.iter_mut().for_each(|z| *z -= 1);
        assert_eq!(
            parts.pack(CheckpointFormat::Gptq).unwrap().qzeros,
            minus.pack(CheckpointFormat::GptqV2).unwrap().qzeros,
            "{bits} bits"
        );
    }
}

#[test]
fn int_tensors_convert_exactly() {
    let mut rng = Rng(99);
    let (rows, cols) = (32, 128);
    let w: Vec<f32> = (0..rows * cols)
        .map(|_| (rng.below(1 << 16) as f32 / 32768.0 - 1.0) * 0.05)
        .collect();
    for bits in GPTQ_BITS {
        for sym in [false, true] {
            for gran in [
                Granularity::Group(32),
                Granularity::Group(128),
                Granularity::Channel,
                Granularity::Tensor,
            ] {
                let spec = IntSpec {
                    bits,
                    symmetric: sym,
                    granularity: gran,
                    scale_type: FloatType::F16,
                };
                let t = int::quantize(&w, rows, cols, spec).unwrap();
                let parts = GptqParts::from_int_tensor(&t).unwrap();
                assert!(parts.has_trivial_g_idx());
                assert_same_f32(&parts.dequantize(), &t.dequantize(), &spec.name());
                let back = parts.to_int_tensor().unwrap();
                assert_same_f32(&back.dequantize(), &t.dequantize(), &spec.name());
                if !sym {
                    if let Granularity::Group(_) = gran {
                        assert_eq!(back, t, "{}", spec.name());
                    }
                }
                if bits == 4 {
                    let a = AwqParts::from_int_tensor(&t).unwrap();
                    assert_same_f32(&a.dequantize(), &t.dequantize(), &spec.name());
                    assert_same_f32(&a.to_int_tensor().dequantize(), &t.dequantize(), "awq");
                }
            }
        }
    }
}

#[test]
fn refusals() {
    let mut rng = Rng(5);
    let good = random_parts(&mut rng, 4, 32, 32, 64, false);
    let v1 = CheckpointFormat::Gptq;
    let check = |p: &GptqParts| p.pack(v1).map(|_| ()).unwrap_err();
    // Unsupported bits.
    let mut p = good.clone();
    p.bits = 5;
    assert!(matches!(
        check(&p),
        FormatError::UnsupportedBits { bits: 5, .. }
    ));
    // Axes that do not fill int32 words.
    for (bits, rows, cols, axis, multiple) in [
        (4, 32, 36, "input features", 8),
        (3, 32, 48, "input features", 32),
        (2, 32, 24, "input features", 16),
        (4, 20, 64, "output features", 8),
        (8, 6, 64, "output features", 4),
    ] {
        let p = random_parts(&mut rng, bits, 8, rows, cols, false);
        match check(&p) {
            FormatError::NotWordAligned {
                axis: a,
                multiple: m,
                ..
            } => assert_eq!((a, m), (axis, multiple)),
            other => panic!("{other:?}"),
        }
    }
    // Out-of-range values, with their place named.
    let mut p = good.clone();
    p.zeros[3] = 16;
    let msg = check(&p).to_string();
    assert!(
        msg.contains("zero point 16") && msg.contains("exceeds 15"),
        "{msg}"
    );
    let mut p = good.clone();
    p.codes[65] = 200;
    let msg = check(&p).to_string();
    assert!(msg.contains("row 1, column 1"), "{msg}");
    let mut p = good.clone();
    p.scales[0] = 0.1;
    assert!(check(&p).to_string().contains("not a finite float16"));
    let mut p = good.clone();
    p.g_idx[7] = 2;
    assert!(check(&p).to_string().contains("g_idx[7] = 2"));
    let mut p = good.clone();
    p.g_idx.pop();
    assert!(check(&p).to_string().contains("g_idx has 63 entries"));
    let mut p = good.clone();
    p.group_size = 0;
    assert!(matches!(check(&p), FormatError::GroupSize { .. }));
    // Unpacking tensors of the wrong size or with impossible g_idx.
    let packed = good.pack(v1).unwrap();
    let mut q = packed.clone();
    q.qweight.pop();
    let e = GptqParts::unpack(&q, 4, 32, 32, 64, v1).unwrap_err();
    assert!(e.to_string().contains("qweight holds 255 values"), "{e}");
    let mut q = packed.clone();
    q.g_idx[0] = -1;
    let e = GptqParts::unpack(&q, 4, 32, 32, 64, v1).unwrap_err();
    assert!(e.to_string().contains("g_idx[0] = -1"), "{e}");
    let mut q = packed;
    q.scales[1] = f16::INFINITY;
    assert!(GptqParts::unpack(&q, 4, 32, 32, 64, v1).is_err());
    // IntTensors GPTQ cannot hold: 5 bits, scales float16 does not hold exactly.
    let w: Vec<f32> = (0..32 * 64).map(|i| (i as f32 * 0.37).sin()).collect();
    let t = int::quantize(
        &w,
        32,
        64,
        IntSpec::asymmetric(5, Granularity::Group(32), FloatType::F16),
    )
    .unwrap();
    assert!(matches!(
        GptqParts::from_int_tensor(&t),
        Err(FormatError::UnsupportedBits { bits: 5, .. })
    ));
    let t = int::quantize(
        &w,
        32,
        64,
        IntSpec::asymmetric(4, Granularity::Group(32), FloatType::F32),
    )
    .unwrap();
    let e = GptqParts::from_int_tensor(&t).unwrap_err().to_string();
    assert!(e.contains("not exactly representable in float16"), "{e}");
    // AWQ: 4 bits only, output features a multiple of 8, groups dividing the row.
    let t = int::quantize(
        &w,
        32,
        64,
        IntSpec::asymmetric(3, Granularity::Group(32), FloatType::F16),
    )
    .unwrap();
    assert!(matches!(
        AwqParts::from_int_tensor(&t),
        Err(FormatError::UnsupportedBits { bits: 3, .. })
    ));
    let a = AwqParts {
        group_size: 32,
        rows: 12,
        cols: 64,
        codes: vec![0; 12 * 64],
        scales: vec![1.0; 24],
        zeros: vec![0; 24],
    };
    assert!(matches!(
        a.pack(),
        Err(FormatError::NotWordAligned { multiple: 8, .. })
    ));
    let a = AwqParts {
        group_size: 48,
        rows: 8,
        cols: 64,
        codes: vec![0; 8 * 64],
        scales: vec![1.0; 8],
        zeros: vec![0; 8],
    };
    assert!(matches!(a.pack(), Err(FormatError::GroupSize { .. })));
}
