//! The quantized product dequantizes exactly as the formats crate does, for every layout, and
//! multiplies like the dense path.

use shrink_formats::float::FloatType;
use shrink_formats::int::{self, Granularity, IntSpec};
use shrink_formats::int8_rowwise;
use shrink_formats::nf4::{self, Fp4Kind, Nf4Spec};
use shrink_io::quantized::Quantized;
use shrink_models::qmatmul::{q8, QuantMatmul};

fn weights(n: usize, k: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).max(1);
    (0..n * k)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s as f32 / u32::MAX as f32 - 0.45) * 0.2
        })
        .collect()
}

/// `QuantMatmul` reproduces `Quantized::dequantize`, transposed, element for element; returns
/// it with the transposed weight.
fn dequantizes_exactly(q: Quantized, label: &str) -> (QuantMatmul, Vec<f32>) {
    let (expect, _) = q.dequantize();
    equals_dequantized(QuantMatmul::new(q), &expect, label)
}

/// `qm` reproduces `expect` (`[n, k]`), transposed, element for element.
fn equals_dequantized(qm: QuantMatmul, expect: &[f32], label: &str) -> (QuantMatmul, Vec<f32>) {
    let (n, k) = qm.shape();
    let mut t = vec![0f32; n * k];
    qm.dequantize_t_into(&mut t);
    for r in 0..n {
        for c in 0..k {
            assert_eq!(
                t[c * n + r].to_bits(),
                expect[r * k + c].to_bits(),
                "{label}: W[{r}, {c}]"
            );
        }
    }
    (qm, t)
}

/// `x` as the int8 generation kernels see it: each block of 32 rounded to its absmax / 127
/// grid (ggml's Q8_0).
fn q8_rounded(x: &[f32]) -> Vec<f32> {
    x.chunks(32)
        .flat_map(|b| {
            let d = b.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
            let id = if d > 0.0 { 1.0 / d } else { 0.0 };
            b.iter().map(move |v| (v * id).round() * d)
        })
        .collect()
}

/// [`dequantizes_exactly`], and the product equals the dense GEMM on those values up to float
/// summation order (column blocks run as separate GEMMs; a few tokens take row dot products,
/// with the activations rounded to int8 blocks where the layout has integer kernels).
fn check(q: Quantized, label: &str) {
    let (qm, t) = dequantizes_exactly(q, label);
    multiplies_like_dense(&qm, &t, label);
}

/// The product of `qm` equals the dense GEMM with its transposed weight `t` (see [`check`]).
fn multiplies_like_dense(qm: &QuantMatmul, t: &[f32], label: &str) {
    let (n, k) = qm.shape();
    for m in [1, 3, 40] {
        let mut x = weights(m, k, 99);
        let y = qm.matmul(&x, m);
        if qm.rounds_activations(m) {
            x = q8_rounded(&x);
        }
        let mut dense = vec![0f32; m * n];
        shrink_models::kernels::gemm_f32(&x, m, k, t, n, &mut dense);
        let mag = dense.iter().fold(0f32, |a, v| a.max(v.abs()));
        for (a, b) in y.iter().zip(&dense) {
            assert!(
                (a - b).abs() <= 1e-5 * mag,
                "{label}: {a} vs {b} ({m} tokens)"
            );
        }
    }
}

/// Held by the tests that switch the process-wide int8-activation flag.
static RUNTIME_FLAG: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn integers_every_width_and_granularity() {
    let _flag = RUNTIME_FLAG.lock().unwrap_or_else(|e| e.into_inner());
    // Float activations first (every product equal to the dense one), then int8 ones.
    for int8 in [false, true] {
        shrink_models::runtime::set_int8_activations(int8);
        integers(int8);
    }
}

fn integers(int8: bool) {
    for &(n, k) in &[(37, 64), (16, 192), (3, 128), (300, 576)] {
        let w = weights(n, k, (n * k) as u32);
        for bits in [2u8, 3, 4, 5, 6, 8] {
            for gran in [
                Granularity::Tensor,
                Granularity::Channel,
                Granularity::Group(32),
                Granularity::Group(64),
            ] {
                for sym in [true, false] {
                    let spec = IntSpec {
                        bits,
                        symmetric: sym,
                        granularity: gran,
                        scale_type: FloatType::F16,
                    };
                    let t = int::quantize(&w, n, k, spec).unwrap();
                    let q = QuantMatmul::new(Quantized::Int(t.clone()));
                    // Every granularity here has granules of 32 or a multiple of 64; 5- and
                    // 6-bit rows of 64k values are held as nibbles and high-bit planes.
                    let fits = k % 64 == 0 && matches!(bits, 4 | 5 | 6 | 8);
                    let kernel = q8::Int8Kernel::detect() != q8::Int8Kernel::Portable;
                    // With VNNI, every token count through the GEMM over repacked panels,
                    // which takes every width up to 8 bits with granules of 32, multiples of
                    // 32 or one in all (all here); else a few tokens through the row kernels.
                    let vnni = q8::Int8Kernel::detect() == q8::Int8Kernel::Vnni;
                    assert_eq!(q.rounds_activations(3), int8 && (vnni || (fits && kernel)));
                    assert_eq!(q.rounds_activations(40), int8 && vnni);
                    check(Quantized::Int(t), &format!("{n}x{k} {}", spec.name()));
                }
            }
        }
    }
}

#[test]
fn act_order_weights_gather_their_inputs() {
    let _flag = RUNTIME_FLAG.lock().unwrap_or_else(|e| e.into_inner());
    for int8 in [false, true] {
        shrink_models::runtime::set_int8_activations(int8);
        for &(n, k) in &[(37, 128), (300, 576)] {
            let w = weights(n, k, 5 + k as u32);
            // A column order (GPTQ's act-order): held column j is the weight's column perm[j].
            let perm: Vec<u32> = (0..k as u32).map(|j| (j * 7 + 3) % k as u32).collect();
            assert!(k % 7 != 0);
            let held: Vec<f32> = (0..n)
                .flat_map(|r| perm.iter().map(move |&c| (r, c as usize)))
                .map(|(r, c)| w[r * k + c])
                .collect();
            let spec = IntSpec {
                bits: 4,
                symmetric: false,
                granularity: Granularity::Group(32),
                scale_type: FloatType::F16,
            };
            let t = int::quantize(&held, n, k, spec).unwrap();
            let stored_bytes = t.stored_bytes();
            let plain = QuantMatmul::new(Quantized::Int(t.clone()));
            let q = Quantized::ActOrder {
                t,
                perm: perm.clone(),
                stored_bytes,
            };
            let label = format!("act-order {n}x{k} int8 {int8}");
            // The product is the held weight's with the inputs gathered, bit for bit (with
            // int8 activations, rounded in blocks of the held order)...
            let qm = QuantMatmul::new(Quantized::ActOrder {
                t: int::quantize(&held, n, k, spec).unwrap(),
                perm: perm.clone(),
                stored_bytes,
            });
            for m in [3, 40] {
                let x = weights(m, k, 31);
                let gathered: Vec<f32> = x
                    .chunks(k)
                    .flat_map(|row| perm.iter().map(|&c| row[c as usize]))
                    .collect();
                assert_eq!(qm.matmul(&x, m), plain.matmul(&gathered, m), "{label} {m}");
            }
            // ...and with float activations equals the dense product of the weight in its
            // original column order.
            if !int8 {
                check(q, &label);
            }
        }
    }
    shrink_models::runtime::set_int8_activations(false);
}

#[test]
fn gguf_integer_types_multiply_packed() {
    use shrink_formats::ggml::{self, GgmlType::*};
    let _flag = RUNTIME_FLAG.lock().unwrap_or_else(|e| e.into_inner());
    for int8 in [false, true] {
        shrink_models::runtime::set_int8_activations(int8);
        for ty in [
            Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS,
        ] {
            let shapes: &[(usize, usize)] = if ty.block_size() == 256 {
                &[(37, 256), (300, 1536)]
            } else {
                &[(37, 96), (16, 192), (300, 576)]
            };
            for &(n, k) in shapes {
                let w = weights(n, k, (n * k) as u32 + 7);
                let mut data = vec![0u8; ty.row_bytes(n * k).unwrap()];
                ggml::quantize(ty, &w, &mut data).unwrap();
                let mut expect = vec![0f32; n * k];
                ggml::dequantize(ty, &data, &mut expect).unwrap();
                let codes = ggml::to_codes(ty, &data, n, k).unwrap().unwrap();
                let qm = QuantMatmul::ggml(codes, n, k, data.len());
                assert_eq!(qm.resident_bytes(), data.len());
                let kernel = q8::Int8Kernel::detect() != q8::Int8Kernel::Portable;
                // With VNNI every type through the GEMM (Q6_K with two scales a block), else a
                // few tokens through the row kernels (rows of 64k values).
                let vnni = q8::Int8Kernel::detect() == q8::Int8Kernel::Vnni;
                assert_eq!(
                    qm.rounds_activations(3),
                    int8 && (vnni || (kernel && k % 64 == 0)),
                    "{ty} k {k}"
                );
                assert_eq!(qm.rounds_activations(40), int8 && vnni, "{ty} k {k}");
                let label = format!("{ty} {n}x{k}");
                let (qm, t) = equals_dequantized(qm, &expect, &label);
                multiplies_like_dense(&qm, &t, &label);
            }
        }
    }
    shrink_models::runtime::set_int8_activations(false);
}

#[test]
fn grouped_products_equal_each_product() {
    use shrink_formats::ggml::{self, GgmlType::*};
    let _flag = RUNTIME_FLAG.lock().unwrap_or_else(|e| e.into_inner());
    let k = 768;
    let int = |n: usize, bits: u8, symmetric: bool, granularity: Granularity| {
        let spec = IntSpec {
            bits,
            symmetric,
            granularity,
            scale_type: FloatType::F16,
        };
        let w = weights(n, k, n as u32 * 3 + bits as u32);
        QuantMatmul::new(Quantized::Int(int::quantize(&w, n, k, spec).unwrap()))
    };
    let gguf = |n: usize, ty: ggml::GgmlType| {
        let w = weights(n, k, n as u32 + 11);
        let mut data = vec![0u8; ty.row_bytes(n * k).unwrap()];
        ggml::quantize(ty, &w, &mut data).unwrap();
        let codes = ggml::to_codes(ty, &data, n, k).unwrap().unwrap();
        QuantMatmul::ggml(codes, n, k, data.len())
    };
    // Activations read alike (Q4_0 and int4 g64 symmetric), differently (8-bit, 6-bit
    // planes, zero points), and a layout without integer kernels (the group falls back).
    let ws = [
        gguf(37, Q4_0),
        int(300, 4, true, Granularity::Group(64)),
        int(16, 8, true, Granularity::Channel),
        gguf(40, Q6_K),
        int(21, 4, false, Granularity::Group(32)),
        int(9, 3, true, Granularity::Group(64)),
    ];
    for int8 in [false, true] {
        shrink_models::runtime::set_int8_activations(int8);
        for group in [&ws[..5], &ws[..]] {
            let refs: Vec<&QuantMatmul> = group.iter().collect();
            for m in [1, 3, 9] {
                let x = weights(m, k, 5 + m as u32);
                let ys = QuantMatmul::matmul_group(&refs, &x, m);
                for (i, (w, y)) in group.iter().zip(&ys).enumerate() {
                    let one = w.matmul(&x, m);
                    assert_eq!(y.len(), one.len());
                    for (a, b) in y.iter().zip(&one) {
                        assert_eq!(
                            a.to_bits(),
                            b.to_bits(),
                            "weight {i}, {m} tokens, int8 {int8}"
                        );
                    }
                }
            }
        }
    }
    shrink_models::runtime::set_int8_activations(false);
}

#[test]
fn nf4_fp4_with_and_without_double_quant_and_odd_rows() {
    let _flag = RUNTIME_FLAG.lock().unwrap_or_else(|e| e.into_inner());
    // 33 columns: rows start on odd elements and blocks straddle rows.
    for &(n, k) in &[(24, 64), (17, 33), (8, 576)] {
        let w = weights(n, k, 7 + k as u32);
        for kind in [Fp4Kind::Nf4, Fp4Kind::Fp4] {
            for double_quant in [false, true] {
                for block_size in [64, 128] {
                    let spec = Nf4Spec {
                        kind,
                        block_size,
                        double_quant,
                    };
                    let t = nf4::quantize(&w, spec).unwrap();
                    let label = format!("{n}x{k} {kind:?} dq={double_quant} b={block_size}");
                    shrink_models::runtime::set_int8_activations(false);
                    check(Quantized::Nf4(t.clone(), vec![n, k]), &label);
                    // With int8 activations, rows of whole blocks (k a multiple of 64 and of
                    // the block) multiply the table's integer form: each weight within 1/254
                    // of its block's absmax, on top of the activations' rounding.
                    shrink_models::runtime::set_int8_activations(true);
                    let kernel = q8::Int8Kernel::detect() != q8::Int8Kernel::Portable;
                    let (dense, _) = Quantized::Nf4(t.clone(), vec![n, k]).dequantize();
                    let q = QuantMatmul::new(Quantized::Nf4(t, vec![n, k]));
                    let whole = k % 64 == 0 && k % block_size == 0;
                    assert_eq!(q.rounds_activations(3), kernel && whole, "{label}");
                    if !q.rounds_activations(3) {
                        continue;
                    }
                    let x = q8_rounded(&weights(3, k, 99));
                    let y = q.matmul(&x, 3);
                    let absmax = dense.iter().fold(0f32, |m, v| m.max(v.abs()));
                    for i in 0..3 {
                        let xi = &x[i * k..(i + 1) * k];
                        let bound = absmax / 254.0 * xi.iter().map(|v| v.abs()).sum::<f32>();
                        for r in 0..n {
                            let want: f32 = (0..k).map(|c| dense[r * k + c] * xi[c]).sum();
                            let got = y[i * n + r];
                            assert!(
                                (got - want).abs() <= bound * 1.001 + 1e-5,
                                "{label} token {i} row {r}: {got} vs {want} (bound {bound})"
                            );
                        }
                    }
                }
            }
        }
    }
    shrink_models::runtime::set_int8_activations(false);
}

fn tensor_f32(st: &safetensors::SafeTensors, name: &str) -> Vec<f32> {
    st.tensor(name)
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// LLM.int8() against bitsandbytes 0.50.2's own `Linear8bitLt` forward on CPU (reference made
/// by scripts/make-llm-int8-reference.py): with threshold 6 (two input features go through
/// float) and threshold 0 (all int8).
#[test]
fn llm_int8_matches_bitsandbytes() {
    let bytes = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/llm_int8_bnb.safetensors"
    ))
    .unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let x = tensor_f32(&st, "x");
    let cb = st.tensor("CB").unwrap();
    let (n, k) = (cb.shape()[0], cb.shape()[1]);
    let m = x.len() / k;
    let q: Vec<i8> = cb.data().iter().map(|&b| b as i8).collect();
    let scb = tensor_f32(&st, "SCB");
    for (name, threshold) in [("y", 6.0f32), ("y_nothr", 0.0)] {
        let expect = tensor_f32(&st, name);
        let w = int8_rowwise::RowwiseInt8 {
            rows: n,
            cols: k,
            q: q.clone(),
            scb: scb.clone(),
        };
        let (qm, _) = dequantizes_exactly(Quantized::Int8Row(w, threshold), name);
        let y = qm.matmul(&x, m);
        for (i, (a, b)) in y.iter().zip(&expect).enumerate() {
            // The int8 part is exact and its epilogue is bitsandbytes' own order of
            // operations; only the float outlier product may sum in another order.
            let tol = if threshold > 0.0 {
                2e-6 * b.abs().max(1.0)
            } else {
                0.0
            };
            assert!(
                (a - b).abs() <= tol,
                "{name}[{}, {}]: shrink {a} bitsandbytes {b}",
                i / n,
                i % n
            );
        }
        // Without the decomposition the outlier features are clipped into int8: worse.
        if threshold > 0.0 {
            let w = int8_rowwise::RowwiseInt8 {
                rows: n,
                cols: k,
                q: q.clone(),
                scb: scb.clone(),
            };
            let plain = QuantMatmul::new(Quantized::Int8Row(w, 0.0)).matmul(&x, m);
            assert_ne!(plain, y, "the outlier features change the result");
        }
    }
}

/// Dynamic int8: per-token symmetric int8 activations times int8 weights, against a plain
/// integer reference; and close to the float product.
#[test]
fn dynamic_int8_per_token() {
    let (m, n, k) = (6, 33, 80);
    let w = weights(n, k, 5);
    let spec = IntSpec {
        bits: 8,
        symmetric: true,
        granularity: Granularity::Channel,
        scale_type: FloatType::F32,
    };
    let t = int::quantize(&w, n, k, spec).unwrap();
    let codes: Vec<i32> = t.packed.iter().map(|&c| c as i32 - 128).collect();
    let scales: Vec<f32> = t
        .scales
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let (qm, _) = dequantizes_exactly(Quantized::W8A8(t), "w8a8");
    let mut x = weights(m, k, 8);
    x[3] = 0.0;
    x[k..2 * k].fill(0.0); // an all-zero token
    let y = qm.matmul(&x, m);
    let mut dense = vec![0f32; m * n];
    for i in 0..m {
        let row = &x[i * k..(i + 1) * k];
        let absmax = row.iter().fold(0f32, |a, v| a.max(v.abs()));
        let (qx, sx): (Vec<i32>, f32) = if absmax == 0.0 {
            (vec![0; k], 0.0)
        } else {
            (
                row.iter()
                    .map(|v| (v * (127.0 / absmax)).round_ties_even() as i32)
                    .collect(),
                absmax / 127.0,
            )
        };
        for j in 0..n {
            let acc: i32 = (0..k).map(|c| qx[c] * codes[j * k + c]).sum();
            let expect = acc as f32 * (sx * scales[j]);
            assert_eq!(y[i * n + j], expect, "y[{i}, {j}]");
            dense[i * n + j] = (0..k).map(|c| row[c] * w[j * k + c]).sum();
        }
    }
    let err = y
        .iter()
        .zip(&dense)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    let scale = dense.iter().fold(0f32, |a, v| a.max(v.abs()));
    assert!(
        err < 0.02 * scale,
        "int8 product error {err} vs magnitude {scale}"
    );
}
