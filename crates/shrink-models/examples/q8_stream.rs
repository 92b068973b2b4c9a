//! Read speed of the int8-activation kernel (`qmatmul::q8`) on SmolLM2's MLP shape (1536 × 576,
//! int4 g64): one token's product repeated over COPIES distinct weights, so 1 copy stays in
//! cache and 100 (55 MB) come from memory. Prints the bytes of weights read per second.
//!
//! Usage: RAYON_NUM_THREADS=1 cargo run --release -p shrink-models --example q8_stream -- COPIES

use shrink_formats::float::FloatType;
use shrink_formats::int::{self, Granularity, IntSpec};
use shrink_io::quantized::Quantized;
use shrink_models::qmatmul::QuantMatmul;

fn main() {
    shrink_models::runtime::set_int8_activations(true);
    let (n, k) = (1536usize, 576usize);
    let w: Vec<f32> = (0..n * k)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    let spec = IntSpec {
        bits: 4,
        symmetric: false,
        granularity: Granularity::Group(64),
        scale_type: FloatType::F16,
    };
    let copies: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100);
    let qs: Vec<QuantMatmul> = (0..copies)
        .map(|_| QuantMatmul::new(Quantized::Int(int::quantize(&w, n, k, spec).unwrap())))
        .collect();
    let x: Vec<f32> = (0..k).map(|i| (i as f32).sin()).collect();
    let bytes: usize = qs.iter().map(|q| q.bytes_read()).sum();
    let reps = (2000 / copies).max(1);
    // On a rayon worker, as `Model::last_logits` runs a token's pass.
    let s = rayon::scope(|_| {
        let t0 = std::time::Instant::now();
        for _ in 0..reps {
            for q in &qs {
                std::hint::black_box(q.matmul(&x, 1));
            }
        }
        t0.elapsed().as_secs_f64()
    });
    println!(
        "{copies} copies: {:.2} GB/s, {:.1} µs per product",
        (bytes * reps) as f64 / s / 1e9,
        s / (reps * copies) as f64 * 1e6
    );
}
