//! Round-to-nearest quantizer throughput on a SmolLM2-shaped weight (an MLP projection,
//! 1536 × 576, deterministic bell-shaped values): int4 asymmetric groups of 64 (f16 scales),
//! int8 symmetric per channel, NF4 with double quantization. `cargo bench -p shrink-formats
//! --bench quantize`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use shrink_formats::float::FloatType;
use shrink_formats::int::{self, Granularity, IntSpec};
use shrink_formats::nf4::{self, Nf4Spec};

/// Rows and columns of SmolLM2-135M's `mlp.gate_proj`.
const ROWS: usize = 1536;
const COLS: usize = 576;

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
    let mut g = c.benchmark_group("quantize");
    g.throughput(Throughput::Elements(w.len() as u64));
    let int4 = IntSpec::asymmetric(4, Granularity::Group(64), FloatType::F16);
    g.bench_function("int4-asym-g64-f16", |b| {
        b.iter(|| int::quantize(&w, ROWS, COLS, int4).unwrap())
    });
    let int8 = IntSpec::symmetric(8, Granularity::Channel, FloatType::F16);
    g.bench_function("int8-sym-channel-f16", |b| {
        b.iter(|| int::quantize(&w, ROWS, COLS, int8).unwrap())
    });
    g.bench_function("nf4-b64-dq", |b| {
        b.iter(|| nf4::quantize(&w, Nf4Spec::qlora()).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
