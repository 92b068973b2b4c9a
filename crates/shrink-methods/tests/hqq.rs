//! HQQ: agreement with the hqq library (committed outputs of `scripts/make-hqq-reference.py`),
//! exact round trip of the stored form, refusal of bad input, and the gain over min/max RTN.

use safetensors::SafeTensors;
use shrink_formats::hqq_layout::HqqSpec;
use shrink_formats::FormatError;
use shrink_methods::hqq::{self, HqqOptions, HqqWeight};
use shrink_methods::MethodError;

/// Written by `scripts/make-hqq-reference.py` (hqq 0.2.8.post1, torch, float32 on CPU).
const REFERENCE: &[u8] = include_bytes!("data/hqq_reference.safetensors");

/// Fraction of codes that must equal hqq's before the f16 rounding step.
const MIN_CODE_AGREEMENT: f64 = 0.999;

/// Relative tolerance on hqq's float32 scale and zero (zeros relative to max(|zero|, 1)).
const PARAM_RTOL: f32 = 1e-5;

/// The stored (f16) result's mean |W − W_r| may exceed hqq's float32 one by this fraction.
const ERROR_RTOL: f64 = 0.01;

/// Little-endian f32 tensor `name` of the reference file.
fn f32s(st: &SafeTensors, name: &str) -> Vec<f32> {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    t.data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[test]
fn agrees_with_the_hqq_library() {
    let st = SafeTensors::deserialize(REFERENCE).unwrap();
    let mut cases = 0;
    for (shape, rows, cols) in [("r64c128", 64, 128), ("r96c192", 96, 192)] {
        let w = f32s(&st, &format!("{shape}.W"));
        for bits in [4u8, 3, 2] {
            for axis in [0u8, 1] {
                let key = format!("{shape}_b{bits}_a{axis}");
                let spec = HqqSpec::new(bits, 64, axis);
                let sol = hqq::optimize(&w, rows, cols, spec, HqqOptions::default()).unwrap();

                let want_q = st.tensor(&format!("{key}.W_q")).unwrap().data().to_vec();
                let same = sol
                    .codes
                    .iter()
                    .zip(&want_q)
                    .filter(|(a, b)| a == b)
                    .count();
                let agreement = same as f64 / want_q.len() as f64;
                assert!(
                    agreement >= MIN_CODE_AGREEMENT,
                    "{key}: codes agree on {agreement:.5} (steps {})",
                    sol.steps
                );

                let want_s = f32s(&st, &format!("{key}.scale"));
                let want_z = f32s(&st, &format!("{key}.zero"));
                assert_eq!(sol.scale.len(), want_s.len(), "{key}");
                for (j, (&a, &b)) in sol.scale.iter().zip(&want_s).enumerate() {
                    assert!(
                        (a - b).abs() <= PARAM_RTOL * b.abs(),
                        "{key}: scale {j}: {a} vs hqq {b}"
                    );
                }
                for (j, (&a, &b)) in sol.zero.iter().zip(&want_z).enumerate() {
                    assert!(
                        (a - b).abs() <= PARAM_RTOL * b.abs().max(1.0),
                        "{key}: zero {j}: {a} vs hqq {b}"
                    );
                }

                let w_r = f32s(&st, &format!("{key}.W_r"));
                let hqq_err = mean_abs_diff(&w, &w_r);
                let ours = hqq::quantize_report(&w, rows, cols, spec, HqqOptions::default())
                    .unwrap()
                    .error;
                assert!(
                    ours <= hqq_err * (1.0 + ERROR_RTOL),
                    "{key}: mean |W - W_r| {ours} vs hqq {hqq_err}"
                );
                assert!(
                    (sol.error - hqq_err).abs() <= 1e-4 * hqq_err,
                    "{key}: float32 error {} vs hqq {hqq_err}",
                    sol.error
                );
                eprintln!(
                    "{key}: {} steps, codes agree {agreement:.5}, mean |W - W_r| f32 {:.6e} \
                     f16 {ours:.6e} hqq {hqq_err:.6e}",
                    sol.steps, sol.error
                );
                cases += 1;
            }
        }
    }
    assert_eq!(cases, 12);
}

/// Mean |a − b| in f64.
fn mean_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).abs())
        .sum::<f64>()
        / a.len() as f64
}

/// Deterministic heavy-tailed test weights: a normal times 0.02, with every 97th value ×8.
fn weights(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut uniform = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    (0..n)
        .map(|i| {
            let (u, v) = (uniform(), uniform());
            let z = (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos();
            let z = if i % 97 == 0 { 8.0 * z } else { z };
            (0.02 * z) as f32
        })
        .collect()
}

#[test]
fn stored_tensor_decodes_to_the_reported_values() {
    let (rows, cols) = (48, 320);
    let w = weights(rows * cols, 1);
    for bits in [1u8, 2, 3, 4, 8] {
        for axis in [0u8, 1] {
            for g in [32, 64] {
                let spec = HqqSpec::new(bits, g, axis);
                let q = hqq::quantize_report(&w, rows, cols, spec, HqqOptions::default()).unwrap();
                let back = q.tensor.dequantize();
                let same = back
                    .iter()
                    .zip(&q.dequantized)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{}: dequantize differs from the report", spec.name());
                let err = mean_abs_diff(&w, &back);
                assert!((q.error - err).abs() <= 1e-6 * err, "{}", spec.name());
                let bpw = bits as f64 + 32.0 / g as f64;
                assert_eq!(q.tensor.bits_per_weight(), bpw, "{}", spec.name());
                let t = hqq::quantize(&w, rows, cols, spec, HqqOptions::default()).unwrap();
                assert_eq!(t, q.tensor);
            }
        }
    }
    // 4-bit g64: 4 + 32/64.
    let t = hqq::quantize(
        &w,
        rows,
        cols,
        HqqSpec::new(4, 64, 1),
        HqqOptions::default(),
    );
    assert_eq!(t.unwrap().bits_per_weight(), 4.5);
}

#[test]
fn bad_input_is_refused() {
    let w = weights(4 * 128, 2);
    let spec = HqqSpec::new(4, 64, 1);
    let opts = HqqOptions::default();
    let format_err = |r: Result<_, MethodError>| match r {
        Err(MethodError::Format { source, .. }) => source,
        other => panic!("expected a format error, got {other:?}"),
    };

    let e = format_err(hqq::quantize(&w, 4, 128, HqqSpec::new(5, 64, 1), opts));
    assert!(matches!(e, FormatError::UnsupportedBits { bits: 5, .. }));
    let e = format_err(hqq::quantize(&w, 4, 128, HqqSpec::new(4, 48, 1), opts));
    assert!(matches!(e, FormatError::GroupSize { group: 48, .. }));
    let e = format_err(hqq::quantize(
        &w[..4 * 120],
        4,
        120,
        HqqSpec::new(4, 64, 0),
        opts,
    ));
    assert!(matches!(e, FormatError::NotBlockAligned { block: 64, .. }));
    let e = format_err(hqq::quantize(&w, 4, 128, HqqSpec::new(4, 8, 1), opts));
    assert!(matches!(e, FormatError::BlockSize { block: 8, .. }));
    let e = format_err(hqq::quantize(&w, 4, 100, spec, opts));
    assert!(matches!(e, FormatError::GroupSize { .. }));
    let e = format_err(hqq::quantize(&w[1..], 4, 128, spec, opts));
    assert!(matches!(e, FormatError::ShapeMismatch { .. }));

    let mut bad = w.clone();
    bad[300] = f32::NAN;
    bad[400] = f32::INFINITY;
    let e = format_err(hqq::quantize(&bad, 4, 128, spec, opts));
    assert!(
        matches!(
            e,
            FormatError::NonFinite {
                index: 300,
                row: 2,
                col: 44,
                ..
            }
        ),
        "{e}"
    );

    for o in [
        HqqOptions { iters: 0, ..opts },
        HqqOptions {
            lp_norm: 1.5,
            ..opts
        },
        HqqOptions { beta: 0.0, ..opts },
        HqqOptions { kappa: 0.5, ..opts },
    ] {
        let r = hqq::quantize(&w, 4, 128, spec, o);
        assert!(matches!(r, Err(MethodError::Options(_))), "{o:?}: {r:?}");
    }

    // A batch names the tensor that failed.
    let batch = [
        HqqWeight {
            name: "a",
            data: &w,
            rows: 4,
            cols: 128,
        },
        HqqWeight {
            name: "b",
            data: &bad,
            rows: 4,
            cols: 128,
        },
    ];
    match hqq::quantize_all(&batch, spec, opts) {
        Err(MethodError::Format { name, .. }) => assert_eq!(name, "b"),
        other => panic!("expected a format error on b, got {other:?}"),
    }
}

#[test]
fn beats_min_max_rounding() {
    let (rows, cols) = (256, 512);
    let w = weights(rows * cols, 3);
    for bits in [4u8, 3, 2] {
        for axis in [0u8, 1] {
            let spec = HqqSpec::new(bits, 64, axis);
            let rtn = HqqOptions {
                optimize: false,
                ..HqqOptions::default()
            };
            let plain = hqq::quantize_report(&w, rows, cols, spec, rtn).unwrap();
            let q = hqq::quantize_report(&w, rows, cols, spec, HqqOptions::default()).unwrap();
            assert_eq!(plain.steps, 0);
            assert!(q.steps >= 2, "{}: {} steps", spec.name(), q.steps);
            assert!(
                q.error < 0.97 * plain.error,
                "{}: hqq {} vs rtn {}",
                spec.name(),
                q.error,
                plain.error
            );
        }
    }
}

#[test]
fn batch_matches_single_tensors() {
    let a = weights(64 * 128, 4);
    let b = weights(96 * 64, 5);
    let spec = HqqSpec::new(3, 32, 1);
    let opts = HqqOptions::default();
    let batch = [
        HqqWeight {
            name: "a",
            data: &a,
            rows: 64,
            cols: 128,
        },
        HqqWeight {
            name: "b",
            data: &b,
            rows: 96,
            cols: 64,
        },
    ];
    let all = hqq::quantize_all(&batch, spec, opts).unwrap();
    assert_eq!(all[0], hqq::quantize(&a, 64, 128, spec, opts).unwrap());
    assert_eq!(all[1], hqq::quantize(&b, 96, 64, spec, opts).unwrap());
}

/// Whole-model timing for comparison with `scripts/bench-hqq-peer.py`: quantizes every
/// decoder linear of the f32 model in `$SHRINK_HQQ_MODEL` (a `shrink convert --dtype f32`
/// output) and prints the same JSON. `SHRINK_HQQ_MODEL=DIR cargo test --release -p
/// shrink-methods --test hqq -- --ignored --nocapture`.
#[test]
#[ignore = "needs $SHRINK_HQQ_MODEL; a timing, not a check"]
fn time_whole_model() {
    let dir = std::env::var("SHRINK_HQQ_MODEL").expect("set SHRINK_HQQ_MODEL to an f32 model dir");
    let bytes = std::fs::read(std::path::Path::new(&dir).join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st
        .names()
        .into_iter()
        .filter(|n| {
            n.starts_with("model.layers.")
                && n.ends_with("_proj.weight")
                && (n.contains(".self_attn.") || n.contains(".mlp."))
        })
        .map(str::to_string)
        .collect();
    names.sort();
    let data: Vec<(Vec<f32>, usize, usize)> = names
        .iter()
        .map(|n| {
            let t = st.tensor(n).unwrap();
            assert_eq!(t.dtype(), safetensors::Dtype::F32, "{n}");
            (f32s(&st, n), t.shape()[0], t.shape()[1])
        })
        .collect();
    let weights: Vec<HqqWeight> = names
        .iter()
        .zip(&data)
        .map(|(name, (d, rows, cols))| HqqWeight {
            name,
            data: d,
            rows: *rows,
            cols: *cols,
        })
        .collect();
    let elements: usize = data.iter().map(|d| d.0.len()).sum();
    let mut report = serde_json::json!({
        "library": "shrink",
        "threads": rayon::current_num_threads(),
        "weights": weights.len(),
        "elements": elements,
    });
    for bits in [4u8, 3, 2] {
        let spec = HqqSpec::new(bits, 64, 1);
        let mut best = f64::INFINITY;
        let mut tensors = Vec::new();
        for _ in 0..3 {
            let t0 = std::time::Instant::now();
            tensors = hqq::quantize_all(&weights, spec, HqqOptions::default()).unwrap();
            best = best.min(t0.elapsed().as_secs_f64());
        }
        let err: f64 = tensors
            .iter()
            .zip(&data)
            .map(|(t, (w, _, _))| mean_abs_diff(w, &t.dequantize()) * w.len() as f64)
            .sum();
        report[spec.name()] = serde_json::json!({
            "seconds": (best * 1000.0).round() / 1000.0,
            "mean_abs_error": err / elements as f64,
        });
    }
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
}
