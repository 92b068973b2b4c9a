//! Int8 GEMM throughput on SmolLM2-135M's linear shapes (512-token window and one decode
//! token), against float32 GEMM (`gemm` crate, 2 rayon threads) on the same shapes.
//! `cargo bench -p shrink-models --bench int8_gemm`; throughput is reported as elements/s
//! with one element per operation (2·m·k·n per GEMM), i.e. OPS and FLOPS.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use shrink_models::int8_gemm::{gemm_i8_scaled_with, Int8Kernel, PackedInt8};

/// (m, k, n): q/o projections, gate/up, down, and a decode step of gate/up.
const SHAPES: [(usize, usize, usize); 4] = [
    (512, 576, 576),
    (512, 576, 1536),
    (512, 1536, 576),
    (1, 576, 1536),
];

/// Deterministic bytes in the full i8 range.
fn bytes(len: usize, seed: u64) -> Vec<i8> {
    let mut s = seed | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 56) as u8 as i8
        })
        .collect()
}

fn int8_gemm(c: &mut Criterion) {
    shrink_models::runtime::tune_allocator();
    let threads = rayon::current_num_threads();
    let kernels: Vec<_> = [Int8Kernel::Vnni, Int8Kernel::Avx2, Int8Kernel::Portable]
        .into_iter()
        .filter(|k| k.is_available())
        .collect();
    for (m, k, n) in SHAPES {
        let mut g = c.benchmark_group(format!("gemm_{m}x{k}x{n}"));
        g.throughput(Throughput::Elements((2 * m * k * n) as u64));
        if m > 1 {
            g.sample_size(20);
        }

        let a = bytes(m * k, 1);
        let b = PackedInt8::pack(&bytes(n * k, 2), n, k);
        let a_scale: Vec<f32> = (0..m).map(|i| 0.01 + i as f32 * 1e-4).collect();
        let b_scale: Vec<f32> = (0..n).map(|j| 0.02 + j as f32 * 1e-4).collect();
        let mut out = vec![0f32; m * n];
        for &kernel in &kernels {
            g.bench_function(BenchmarkId::new("int8", format!("{kernel:?}")), |bench| {
                bench.iter(|| {
                    gemm_i8_scaled_with(
                        kernel,
                        &a,
                        m,
                        &a_scale,
                        &b,
                        &b_scale,
                        6.200124e-05,
                        &mut out,
                    )
                })
            });
        }

        // Float32 reference point: x [m, k] times Wᵀ given as [k, n] row-major.
        let x: Vec<f32> = a.iter().map(|&v| v as f32 * 0.01).collect();
        let wt: Vec<f32> = bytes(k * n, 3).iter().map(|&v| v as f32 * 0.01).collect();
        g.bench_function(
            BenchmarkId::new("f32", format!("gemm_rayon{threads}")),
            |bench| {
                bench.iter(|| {
                    // SAFETY: x is [m, k], wt is [k, n] and out is [m, n], all row-major.
                    unsafe {
                        gemm::gemm(
                            m,
                            n,
                            k,
                            out.as_mut_ptr(),
                            1,
                            n as isize,
                            false,
                            x.as_ptr(),
                            1,
                            k as isize,
                            wt.as_ptr(),
                            1,
                            n as isize,
                            0.0,
                            1.0,
                            false,
                            false,
                            false,
                            gemm::Parallelism::Rayon(threads),
                        )
                    }
                })
            },
        );
        g.finish();
    }
}

criterion_group!(benches, int8_gemm);
criterion_main!(benches);
