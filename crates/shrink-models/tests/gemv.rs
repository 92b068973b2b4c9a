//! Generation's float products (a few tokens on the spinning team) equal the GEMM up to
//! summation order: dense weights split over input rows, tied heads by rows, and heads held as
//! float16 / bfloat16 rows.

use candle_core::{Device, Tensor};
use shrink_models::kernels::{gemm_f32, gemv_rows, gemv_t};
use shrink_models::qmatmul::{HalfRows, QuantMatmul};

fn values(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).max(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            s as f32 / u32::MAX as f32 - 0.5
        })
        .collect()
}

fn close(a: &[f32], b: &[f32], label: &str) {
    assert_eq!(a.len(), b.len(), "{label}");
    let mag = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= 2e-5 * mag.max(1.0),
            "{label} [{i}]: {x} vs {y}"
        );
    }
}

/// `x` `[m, k]` times `w` `[n, k]` transposed, by the GEMM.
fn reference(x: &[f32], m: usize, k: usize, w: &[f32], n: usize) -> Vec<f32> {
    let mut wt = vec![0f32; k * n];
    for r in 0..n {
        for c in 0..k {
            wt[c * n + r] = w[r * k + c];
        }
    }
    let mut y = vec![0f32; m * n];
    gemm_f32(x, m, k, &wt, n, &mut y);
    y
}

#[test]
fn few_token_float_products_equal_the_gemm_on_any_thread_count() {
    for threads in [1, 2, 3] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            for &(m, k, n) in &[
                (1, 576, 1536),
                (3, 64, 100),
                (8, 13, 7),
                (1, 1536, 576),
                (2, 5, 3),
            ] {
                let x = values(m * k, 1 + k as u32);
                let w = values(n * k, 2 + n as u32);
                let want = reference(&x, m, k, &w, n);
                let label = format!("{threads} threads, {m}x{k} . {n}x{k}");
                close(&gemv_rows(&x, m, k, &w, n), &want, &format!("rows {label}"));
                let mut wt = vec![0f32; k * n];
                for r in 0..n {
                    for c in 0..k {
                        wt[c * n + r] = w[r * k + c];
                    }
                }
                close(&gemv_t(&x, m, k, &wt, n), &want, &format!("t {label}"));
                // Heads held as 16-bit floats: the rows rounded to that type first.
                for bf16 in [false, true] {
                    let (half, exact): (HalfRows, Vec<f32>) = if bf16 {
                        let h: Vec<half::bf16> =
                            w.iter().map(|&v| half::bf16::from_f32(v)).collect();
                        let e = h.iter().map(|v| v.to_f32()).collect();
                        (HalfRows::Bf16(h), e)
                    } else {
                        let h: Vec<half::f16> = w.iter().map(|&v| half::f16::from_f32(v)).collect();
                        let e = h.iter().map(|v| v.to_f32()).collect();
                        (HalfRows::F16(h), e)
                    };
                    let t = Tensor::from_vec(exact.clone(), (n, k), &Device::Cpu).unwrap();
                    let q = QuantMatmul::rows_half(t, half).unwrap();
                    assert_eq!(q.bytes_read(), 2 * n * k);
                    let want = reference(&x, m, k, &exact, n);
                    close(
                        &q.matmul(&x, m),
                        &want,
                        &format!("half (bf16 {bf16}) {label}"),
                    );
                    // Many tokens take the float32 rows' GEMM.
                    let many = values(40 * k, 9);
                    close(
                        &q.matmul(&many, 40),
                        &reference(&many, 40, k, &exact, n),
                        &format!("half, 40 tokens, {label}"),
                    );
                }
            }
        });
    }
}
