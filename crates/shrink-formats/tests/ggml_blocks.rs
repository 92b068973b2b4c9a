//! GGML dequantizers against block bytes written by llama.cpp itself.
//!
//! Fixtures (`shared/fixtures/ggml-blocks`, written by llama.cpp's `llama-quantize`, no imatrix):
//! for each of 11 types, the f32 tensor `<TYPE>.f32` [rows, cols] and the quantized bytes
//! `<TYPE>.blocks` (u8) that llama.cpp produced from it; `blocks.json` describes them.
//!
//! Three checks per type:
//! 1. byte counts: the fixture's byte count equals `row_bytes` (and `blocks.json`);
//! 2. exactness: the dequantized values hash to the same FNV-1a 64 as gguf-py's reference
//!    dequantizer (llama.cpp's own numpy port) — i.e. they are bit-identical;
//! 3. plausibility against the source: every decoded value is one of its block's levels (as
//!    unpacked independently here), that level is the one nearest to the source value (up to
//!    the f16 rounding of scales), and the relative RMSE is within a per-type bound measured
//!    from llama.cpp's data with 5% headroom, so a wrong scale unpacking fails.
//!
//! The fixtures are required: a missing fixture directory fails the tests.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use half::f16;
use safetensors::{Dtype, SafeTensors};
use shrink_formats::ggml::{dequantize, GgmlType};

const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/fixtures/ggml-blocks"
);

/// The 11 types the fixtures cover.
const TYPES: [GgmlType; 11] = [
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::IQ4_NL,
    GgmlType::IQ4_XS,
];

/// FNV-1a 64 of gguf-py's dequantized output (float32, little-endian, row-major) per type.
///
/// Produced with gguf 0.19.0 (PyPI) and numpy 2.4.6 by the script below, run with a scratch
/// venv's python from the directory that holds `shared/` (`python3 -m venv /tmp/ggufvenv &&
/// /tmp/ggufvenv/bin/pip install gguf numpy`, then `/tmp/ggufvenv/bin/python hashes.py`).
/// Rust's output was also compared element by element with gguf-py's: 0 differing bits.
///
/// ```text
/// import json, struct, numpy as np
/// from gguf.quants import dequantize
/// from gguf.constants import GGMLQuantizationType as T
/// FIX = "shared/fixtures/ggml-blocks"
/// meta = json.load(open(f"{FIX}/blocks.json"))
/// raw = open(f"{FIX}/blocks.safetensors", "rb").read()
/// n = struct.unpack("<Q", raw[:8])[0]; hdr = json.loads(raw[8:8 + n])
/// def tensor(name):
///     a, b = hdr[name]["data_offsets"]
///     return np.frombuffer(raw[8 + n + a: 8 + n + b], dtype="u1")
/// def fnv1a64(bs):
///     h = 0xcbf29ce484222325
///     for x in bs: h = ((h ^ x) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
///     return h
/// for name in sorted(meta["types"]):
///     rows, cols = meta["types"][name]["rows_cols"]
///     out = dequantize(tensor(f"{name}.blocks").reshape(rows, -1), T[name]).astype("<f4")
///     assert out.shape == (rows, cols)
///     print(f'("{name}", 0x{fnv1a64(out.tobytes()):016x}),')
/// ```
const GGUF_PY_FNV1A64: [(&str, u64); 11] = [
    ("IQ4_NL", 0x54ca419907b655fb),
    ("IQ4_XS", 0xf45d81622d860579),
    ("Q3_K", 0x2cf47e7d4eccb2ed),
    ("Q4_0", 0x49b781739794a676),
    ("Q4_1", 0x3255da9083ac8ab6),
    ("Q4_K", 0x0f28395e24e9878f),
    ("Q5_0", 0x76520696fefec4fc),
    ("Q5_1", 0xd78659064ad11273),
    ("Q5_K", 0xc51d21e6cb0c683d),
    ("Q6_K", 0x131bab61eac20915),
    ("Q8_0", 0xc227225e351ab60b),
];

/// Upper bounds on RMSE(dequantized − source) / RMS(source): the value measured on llama.cpp's
/// fixture data (in the comment) times 1.05, rounded up.
///
/// Q4_1 is exactly 0: the fixture model (SmolLM2-135M from a quantized GGUF, dequantized to f32)
/// has at most 16 evenly spaced values per 32-element block in `blk.0.attn_k.weight`, so
/// llama.cpp's Q4_1 represents it exactly and the decoded values must equal the source
/// bit for bit.
const REL_RMSE_BOUND: [(&str, f64); 11] = [
    ("Q8_0", 0.006458),  // measured 0.006150
    ("Q4_0", 0.1021),    // measured 0.097154
    ("Q4_1", 0.0),       // measured 0 (exact, see above)
    ("Q5_0", 0.05179),   // measured 0.049317
    ("Q5_1", 0.05594),   // measured 0.053271
    ("Q3_K", 0.1622),    // measured 0.154412
    ("Q4_K", 0.01907),   // measured 0.018154
    ("Q5_K", 0.02016),   // measured 0.019198
    ("Q6_K", 0.01883),   // measured 0.017933
    ("IQ4_NL", 0.08637), // measured 0.082254
    ("IQ4_XS", 0.07912), // measured 0.075348
];

/// Q8_0 never clamps (d = amax/127), so |error| ≤ d/2 plus the f16 rounding of d moving the
/// levels by up to 128·d·2^-11: max|error|/d ≤ 0.5 + 0.0625 (measured 0.5348).
const Q8_0_MAX_ERR_IN_STEPS: f64 = 0.5625;

/// One fixture type: llama.cpp's source tensor and its quantized bytes.
struct Case {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    json_bytes: usize,
    json_bits_per_weight: f64,
    source: Vec<f32>,
    blocks: Vec<u8>,
}

impl Case {
    /// Dequantize the fixture bytes with shrink.
    fn decoded(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        dequantize(self.ty, &self.blocks, &mut out).expect("dequantize");
        out
    }
}

/// Load every case once (panics, failing the tests, if the fixtures are missing).
fn cases() -> &'static BTreeMap<&'static str, Case> {
    static CASES: OnceLock<BTreeMap<&'static str, Case>> = OnceLock::new();
    CASES.get_or_init(|| {
        let read = |f: &str| {
            let path = format!("{FIXTURES}/{f}");
            std::fs::read(&path).unwrap_or_else(|e| {
                panic!("GGML block fixtures are required: cannot read {path}: {e}")
            })
        };
        let meta: serde_json::Value =
            serde_json::from_slice(&read("blocks.json")).expect("blocks.json is JSON");
        let st_bytes = read("blocks.safetensors");
        let st = SafeTensors::deserialize(&st_bytes).expect("blocks.safetensors");
        let types = meta["types"].as_object().expect("blocks.json: types");
        let mut out = BTreeMap::new();
        for ty in TYPES {
            let name = ty.name();
            let m = &types
                .get(name)
                .unwrap_or_else(|| panic!("blocks.json lacks {name}"));
            let rc = m["rows_cols"].as_array().expect("rows_cols");
            let (rows, cols) = (
                rc[0].as_u64().unwrap() as usize,
                rc[1].as_u64().unwrap() as usize,
            );
            let src = st.tensor(&format!("{name}.f32")).expect("source tensor");
            assert_eq!(src.dtype(), Dtype::F32);
            assert_eq!(src.shape(), &[rows, cols], "{name}.f32 shape");
            let source = src
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            let blk = st.tensor(&format!("{name}.blocks")).expect("block tensor");
            assert_eq!(blk.dtype(), Dtype::U8);
            out.insert(
                name,
                Case {
                    ty,
                    rows,
                    cols,
                    json_bytes: m["bytes"].as_u64().unwrap() as usize,
                    json_bits_per_weight: m["bits_per_weight"].as_f64().unwrap(),
                    source,
                    blocks: blk.data().to_vec(),
                },
            );
        }
        assert_eq!(types.len(), TYPES.len(), "blocks.json has unexpected types");
        out
    })
}

fn fnv1a64(values: &[f32]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for v in values {
        for b in v.to_le_bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

#[test]
fn byte_counts_match_ggml_row_size() {
    for (name, c) in cases() {
        assert_eq!(c.blocks.len(), c.json_bytes, "{name}: bytes vs blocks.json");
        let per_row = c.ty.row_bytes(c.cols).expect("whole blocks per row");
        assert_eq!(
            c.blocks.len(),
            per_row * c.rows,
            "{name}: bytes vs row_bytes"
        );
        assert_eq!(
            c.ty.row_bytes(c.rows * c.cols).unwrap(),
            c.blocks.len(),
            "{name}"
        );
        assert_eq!(
            c.ty.bits_per_weight(),
            c.json_bits_per_weight,
            "{name}: bpw"
        );
    }
}

#[test]
fn bit_identical_to_gguf_py() {
    let expected: BTreeMap<_, _> = GGUF_PY_FNV1A64.into_iter().collect();
    assert_eq!(expected.len(), TYPES.len());
    for (name, c) in cases() {
        let got = fnv1a64(&c.decoded());
        assert_eq!(
            got, expected[name],
            "{name}: output differs from gguf-py's (FNV-1a 64 {got:#018x})"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Independent unpacking of each block's levels, for the plausibility checks.
// ---------------------------------------------------------------------------------------------

/// ggml's `kvalues_iq4nl`.
const KVALUES_IQ4NL: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

fn h16(b: &[u8], off: usize) -> f32 {
    f16::from_le_bytes([b[off], b[off + 1]]).to_f32()
}

/// Q4_K / Q5_K 6-bit scale and min of sub-block `j`, written from the packing side
/// (`quantize_row_q4_K_ref`): sub-blocks 0..4 in bytes j / j+4, sub-blocks 4..8 as nibbles of
/// byte j+4 plus the top 2 bits of bytes j-4 (scale) and j (min).
fn k4_scale_min(s: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        let ls = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
        let lm = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
        (ls, lm)
    }
}

/// The level grid of every sub-block of one block, in element order: (elements, levels).
/// Levels are computed with the same f32 operations as ggml, so decoded values match exactly.
fn block_levels(ty: GgmlType, b: &[u8]) -> Vec<(usize, Vec<f32>)> {
    let lin = |d: f32, m: f32, q: std::ops::Range<i32>| -> Vec<f32> {
        q.map(|q| q as f32 * d + m).collect()
    };
    match ty {
        GgmlType::Q8_0 => vec![(32, (-128..128).map(|q| q as f32 * h16(b, 0)).collect())],
        GgmlType::Q4_0 => vec![(32, (-8..8).map(|q| q as f32 * h16(b, 0)).collect())],
        GgmlType::Q5_0 => vec![(32, (-16..16).map(|q| q as f32 * h16(b, 0)).collect())],
        GgmlType::Q4_1 => vec![(32, lin(h16(b, 0), h16(b, 2), 0..16))],
        GgmlType::Q5_1 => vec![(32, lin(h16(b, 0), h16(b, 2), 0..32))],
        GgmlType::IQ4_NL => {
            let d = h16(b, 0);
            vec![(32, KVALUES_IQ4NL.iter().map(|&k| d * k as f32).collect())]
        }
        GgmlType::Q3_K => {
            // hmask[32] qs[64] scales[12] d
            let (s, d) = (&b[96..108], h16(b, 108));
            (0..16)
                .map(|j| {
                    // Per-scale formula of quantize_row_q3_K_ref (not ggml's kmask shuffle).
                    let lo = if j < 8 { s[j] & 0xF } else { s[j - 8] >> 4 };
                    let sc = (lo | (((s[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) as i32 - 32;
                    let dl = d * sc as f32;
                    (16, (-4..4).map(|q| dl * q as f32).collect())
                })
                .collect()
        }
        GgmlType::Q4_K | GgmlType::Q5_K => {
            // d dmin scales[12] ...
            let (d, dmin, s) = (h16(b, 0), h16(b, 2), &b[4..16]);
            let qmax = if ty == GgmlType::Q4_K { 16 } else { 32 };
            (0..8)
                .map(|j| {
                    let (sc, m) = k4_scale_min(s, j);
                    let (dl, ml) = (d * sc as f32, dmin * m as f32);
                    (32, (0..qmax).map(|q| dl * q as f32 - ml).collect())
                })
                .collect()
        }
        GgmlType::Q6_K => {
            // ql[128] qh[64] scales[16] d: sub-block of 16 elements k uses scales[k].
            let d = h16(b, 208);
            (0..16)
                .map(|k| {
                    let dl = d * (b[192 + k] as i8) as f32;
                    (16, (-32..32).map(|q| dl * q as f32).collect())
                })
                .collect()
        }
        GgmlType::IQ4_XS => {
            // d scales_h[2] scales_l[4] qs[128]
            let d = h16(b, 0);
            let sh = u16::from_le_bytes([b[2], b[3]]);
            (0..8)
                .map(|ib| {
                    let lo = (b[4 + ib / 2] >> (4 * (ib % 2))) & 0xF;
                    let hi = ((sh >> (2 * ib)) & 3) as u8;
                    let dl = d * ((lo | (hi << 4)) as i32 - 32) as f32;
                    (32, KVALUES_IQ4NL.iter().map(|&k| dl * k as f32).collect())
                })
                .collect()
        }
        _ => unreachable!("{ty} is not a fixture type"),
    }
}

/// How much worse than the nearest level llama.cpp's choice may be, relative to the sub-block's
/// largest |level|. K-quants requantize with the f16-rounded scales they store, so only float
/// rounding remains. Legacy and IQ4 types pick levels with the f32 scale (and min) *before*
/// rounding to f16, which moves every level by at most 2^-11 of (|q|max·|d| + |m|) ≤
/// 3·max|level|·2^-11; twice that (choice vs. true nearest) is below 2^-8.
fn nearest_slack(ty: GgmlType) -> f64 {
    match ty {
        GgmlType::Q3_K | GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K => 1e-5,
        _ => 1.0 / 256.0,
    }
}

/// Measured reconstruction statistics of one type.
struct Stats {
    rel_rmse: f64,
    /// Largest |error| over the sub-block's level spacing (largest gap between levels).
    max_err_in_steps: f64,
    /// Largest (|error| − distance to nearest level) / max|level|; ≤ slack means "nearest".
    worst_excess: f64,
}

fn measure(c: &Case) -> Stats {
    let dec = c.decoded();
    let (bs, ts) = (c.ty.block_size(), c.ty.type_size());
    let (mut se, mut ss) = (0f64, 0f64);
    let (mut max_steps, mut worst_excess) = (0f64, f64::NEG_INFINITY);
    let mut e = 0;
    for block in c.blocks.chunks_exact(ts) {
        let start = e;
        for (n, levels) in block_levels(c.ty, block) {
            let top = levels.iter().fold(0f64, |a, &l| a.max(l.abs() as f64));
            let mut sorted: Vec<f64> = levels.iter().map(|&l| l as f64).collect();
            sorted.sort_by(f64::total_cmp);
            let step = sorted.windows(2).fold(0f64, |a, w| a.max(w[1] - w[0]));
            for _ in 0..n {
                let (x, y) = (c.source[e] as f64, dec[e]);
                assert!(
                    levels.iter().any(|l| l.to_bits() == y.to_bits()),
                    "{}: element {e} = {y} is not one of its block's levels",
                    c.ty
                );
                let err = (x - y as f64).abs();
                let nearest = sorted
                    .iter()
                    .fold(f64::INFINITY, |a, &l| a.min((x - l).abs()));
                if top > 0.0 {
                    worst_excess = worst_excess.max((err - nearest) / top);
                }
                if step > 0.0 {
                    max_steps = max_steps.max(err / step);
                }
                se += err * err;
                ss += x * x;
                e += 1;
            }
        }
        assert_eq!(e - start, bs, "{}: levels cover one block", c.ty);
    }
    assert_eq!(e, dec.len());
    Stats {
        rel_rmse: (se / ss).sqrt(),
        max_err_in_steps: max_steps,
        worst_excess,
    }
}

#[test]
fn reconstruction_error_within_format_bounds() {
    let bounds: BTreeMap<_, _> = REL_RMSE_BOUND.into_iter().collect();
    let mut failures = Vec::new();
    for (name, c) in cases() {
        let s = measure(c);
        println!(
            "{name:7} rel_rmse {:.6}  max|err|/step {:.4}  worst excess over nearest {:.2e}",
            s.rel_rmse, s.max_err_in_steps, s.worst_excess
        );
        if s.rel_rmse > bounds[name] {
            failures.push(format!(
                "{name}: rel RMSE {} > {}",
                s.rel_rmse, bounds[name]
            ));
        }
        if c.ty == GgmlType::Q8_0 && s.max_err_in_steps > Q8_0_MAX_ERR_IN_STEPS {
            failures.push(format!("Q8_0: max |err| = {} d", s.max_err_in_steps));
        }
        if s.worst_excess > nearest_slack(c.ty) {
            failures.push(format!(
                "{name}: a decoded value is {:.3e}·max|level| farther than the nearest level",
                s.worst_excess
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
