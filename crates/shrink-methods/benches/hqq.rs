//! HQQ quantizer throughput on a SmolLM2-shaped weight (an MLP projection, 1536 × 576,
//! deterministic bell-shaped values): 4-bit groups of 64 along axis 1 (hqq's defaults), and
//! along axis 0. `cargo bench -p shrink-methods --bench hqq`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use shrink_formats::hqq_layout::HqqSpec;
use shrink_methods::hqq::{self, HqqOptions};

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
    let mut g = c.benchmark_group("hqq");
    g.throughput(Throughput::Elements(w.len() as u64));
    for axis in [1u8, 0] {
        let spec = HqqSpec::new(4, 64, axis);
        g.bench_function(spec.name(), |b| {
            b.iter(|| hqq::quantize(&w, ROWS, COLS, spec, HqqOptions::default()).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
