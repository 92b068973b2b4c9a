//! The quantized product dequantizes exactly as the formats crate does, for every layout, and
//! multiplies like the dense path.

use shrink_formats::float::FloatType;
use shrink_formats::int::{self, Granularity, IntSpec};
use shrink_formats::int8_rowwise;
use shrink_formats::nf4::{self, Fp4Kind, Nf4Spec};
use shrink_io::quantized::Quantized;
use shrink_models::qmatmul::QuantMatmul;

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

/// `QuantMatmul` reproduces `Quantized::dequantize`, transposed, element for element, and its
/// product equals the dense GEMM on those values bit for bit.
fn check(q: Quantized, label: &str) {
    let (expect, shape) = q.dequantize();
    let (n, k) = (shape[0], shape[1]);
    let qm = QuantMatmul::new(q);
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
    let m = 5;
    let x = weights(m, k, 99);
    let y = qm.matmul(&x, m);
    let mut dense = vec![0f32; m * n];
    shrink_models::kernels::gemm_f32(&x, m, k, &t, n, &mut dense);
    assert_eq!(y, dense, "{label}: product");
}

#[test]
fn integers_every_width_and_granularity() {
    for &(n, k) in &[(37, 64), (16, 192), (3, 128)] {
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
                    check(Quantized::Int(t), &format!("{n}x{k} {}", spec.name()));
                }
            }
        }
    }
}

#[test]
fn nf4_fp4_with_and_without_double_quant_and_odd_rows() {
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
                    check(
                        Quantized::Nf4(t, vec![n, k]),
                        &format!("{n}x{k} {kind:?} dq={double_quant} b={block_size}"),
                    );
                }
            }
        }
    }
}

#[test]
fn llm_int8_rows() {
    let (n, k) = (19, 96);
    let t = int8_rowwise::quantize(&weights(n, k, 3), n, k).unwrap();
    check(Quantized::Int8Row(t), "int8 rows");
}
