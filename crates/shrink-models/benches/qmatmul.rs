//! Linear-layer products with quantized weights against the dense float32 GEMM, on SmolLM2's
//! MLP shape (512 tokens × 576 → 1536) and one token (generation); integer weights also with
//! int8 activations (`… q8`: the int8 GEMM over repacked panels for 512 tokens, as `bench`
//! runs prompts). `cargo bench -p shrink-models --bench qmatmul`; results in BENCHMARKS.md.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use shrink_formats::float::FloatType;
use shrink_formats::int::{self, Granularity, IntSpec};
use shrink_formats::int8_rowwise;
use shrink_formats::nf4::{self, Fp4Kind, Nf4Spec};
use shrink_io::quantized::Quantized;
use shrink_models::qmatmul::QuantMatmul;

fn values(len: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.max(1);
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s as f32 / u32::MAX as f32 - 0.5) * 0.1
        })
        .collect()
}

fn qmatmul(c: &mut Criterion) {
    shrink_models::runtime::tune_allocator();
    for (k, n) in [(576, 1536), (1536, 576)] {
        shape(c, k, n);
    }
}

fn shape(c: &mut Criterion, k: usize, n: usize) {
    let w = values(n * k, 1);
    let spec = |bits, symmetric, granularity| IntSpec {
        bits,
        symmetric,
        granularity,
        scale_type: FloatType::F16,
    };
    let formats: Vec<(&str, Quantized)> = vec![
        (
            "int4-g64",
            Quantized::Int(
                int::quantize(&w, n, k, spec(4, false, Granularity::Group(64))).unwrap(),
            ),
        ),
        (
            "int8-channel",
            Quantized::Int(int::quantize(&w, n, k, spec(8, true, Granularity::Channel)).unwrap()),
        ),
        (
            "nf4-dq",
            Quantized::Nf4(
                nf4::quantize(
                    &w,
                    Nf4Spec {
                        kind: Fp4Kind::Nf4,
                        block_size: 64,
                        double_quant: true,
                    },
                )
                .unwrap(),
                vec![n, k],
            ),
        ),
        (
            "llm-int8",
            Quantized::Int8Row(int8_rowwise::quantize(&w, n, k).unwrap(), 6.0),
        ),
        (
            "dynamic-int8",
            Quantized::W8A8(int::quantize(&w, n, k, spec(8, true, Granularity::Channel)).unwrap()),
        ),
    ];
    let mut wt = vec![0f32; k * n];
    for r in 0..n {
        for cc in 0..k {
            wt[cc * n + r] = w[r * k + cc];
        }
    }
    let mut qms: Vec<(&str, QuantMatmul)> = formats
        .into_iter()
        .map(|(name, q)| (name, QuantMatmul::new(q)))
        .collect();
    {
        use shrink_formats::ggml::{self, GgmlType};
        let ty = GgmlType::Q4_0;
        let mut data = vec![0u8; ty.row_bytes(n * k).unwrap()];
        ggml::quantize(ty, &w, &mut data).unwrap();
        let codes = ggml::to_codes(ty, &data, n, k).unwrap().unwrap();
        qms.push(("gguf-q4_0", QuantMatmul::ggml(codes, n, k, data.len())));
    }
    {
        let mut g = c.benchmark_group(format!("dequantize-transposed {n}x{k}"));
        g.throughput(Throughput::Elements((k * n) as u64));
        let mut t = vec![0f32; k * n];
        for (name, qm) in &qms {
            if !name.contains("llm") && !name.contains("dynamic") {
                g.bench_function(BenchmarkId::from_parameter(name), |b| {
                    b.iter(|| qm.dequantize_t_into(&mut t))
                });
            }
        }
        g.finish();
    }
    for m in [512usize, 1].into_iter().filter(|&m| m > 1 || k == 576) {
        let x = values(m * k, 7);
        let mut g = c.benchmark_group(format!("linear {m}x{k}->{n}"));
        g.throughput(Throughput::Elements((m * k * n) as u64));
        g.bench_function(BenchmarkId::from_parameter("f32-dense"), |b| {
            let mut y = vec![0f32; m * n];
            b.iter(|| shrink_models::kernels::gemm_f32(&x, m, k, &wt, n, &mut y))
        });
        for (name, qm) in &qms {
            g.bench_function(BenchmarkId::from_parameter(name), |b| {
                b.iter(|| qm.matmul(&x, m))
            });
        }
        if m > 1 {
            g.bench_function(BenchmarkId::from_parameter("round-activations"), |b| {
                b.iter(|| shrink_models::qmatmul::q8_gemm::Acts::new(&x, m, k))
            });
        }
        shrink_models::runtime::set_int8_activations(true);
        for (name, qm) in &qms {
            if qm.rounds_activations(m) {
                g.bench_function(BenchmarkId::from_parameter(format!("{name} q8")), |b| {
                    b.iter(|| qm.matmul(&x, m))
                });
            }
        }
        shrink_models::runtime::set_int8_activations(false);
        g.finish();
    }
}

criterion_group!(benches, qmatmul);
criterion_main!(benches);
