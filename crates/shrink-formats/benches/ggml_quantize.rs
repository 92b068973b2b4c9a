//! GGML reference quantizer throughput (`shrink_formats::ggml::quantize`, llama.cpp's
//! no-imatrix path) on a SmolLM2-shaped weight: `ffn_down`, 576 × 1536, deterministic
//! bell-shaped values. `cargo bench -p shrink-formats --bench ggml_quantize`; pick types with
//! a filter, e.g. `-- Q4_K`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use shrink_formats::ggml::{quantize, quantize_with_importance, GgmlType};

/// Rows and columns of SmolLM2-135M's `ffn_down` (1536 is a whole number of 256-blocks).
const ROWS: usize = 576;
const COLS: usize = 1536;

/// Deterministic values of about N(0, 0.05²): sums of four uniform draws (xorshift64*).
fn weights(n: usize) -> Vec<f32> {
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let mut uniform = move || {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        (s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 24) as f32
    };
    (0..n)
        .map(|_| ((0..4).map(|_| uniform()).sum::<f32>() - 2.0) * 0.087)
        .collect()
}

fn bench(c: &mut Criterion) {
    let w = weights(ROWS * COLS);
    let importance: Vec<f32> = (0..COLS).map(|i| 0.5 + (i % 7) as f32).collect();
    let mut g = c.benchmark_group("ggml-quantize");
    g.throughput(Throughput::Elements(w.len() as u64));
    g.sample_size(10);
    for ty in [
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q8_K,
        GgmlType::IQ4_NL,
        GgmlType::IQ4_XS,
    ] {
        let mut out = vec![0u8; ty.row_bytes(w.len()).unwrap()];
        g.bench_function(ty.name(), |b| {
            b.iter(|| quantize(ty, &w, &mut out).unwrap())
        });
    }
    for ty in [GgmlType::Q4_K, GgmlType::IQ4_XS] {
        let mut out = vec![0u8; ty.row_bytes(w.len()).unwrap()];
        g.bench_function(format!("{}-imatrix", ty.name()), |b| {
            b.iter(|| quantize_with_importance(ty, &w, COLS, &importance, &mut out).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
