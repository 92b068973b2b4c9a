//! Forward-pass throughput: one lee-ppl-v1 window (512 tokens) of SmolLM2-135M, and a short
//! sequence on the tiny Llama fixture. `cargo bench -p shrink-models`; the side-by-side
//! comparison with PyTorch is `scripts/bench-eval.sh` (results in BENCHMARKS.md).

use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use shrink_io::Checkpoint;
use shrink_models::Model;

fn assets() -> PathBuf {
    std::env::var_os("SHRINK_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../assets")))
}

fn forward(c: &mut Criterion) {
    shrink_models::runtime::tune_allocator();
    let gguf = assets().join("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        gguf.exists(),
        "{} missing: run scripts/fetch-assets.sh",
        gguf.display()
    );
    let model = Model::load(&Checkpoint::open(&gguf).unwrap()).unwrap();
    // Token ids of the first evaluation window (from the shared fixtures).
    let tokens = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/fixtures/smollm2/tokens.safetensors"
    ))
    .expect("../shared/fixtures/smollm2/tokens.safetensors");
    let st = safetensors::SafeTensors::deserialize(&tokens).unwrap();
    let ids: Vec<u32> = st.tensor("eval_ids").unwrap().data()[..512 * 4]
        .chunks_exact(4)
        .map(|b| i32::from_le_bytes(b.try_into().unwrap()) as u32)
        .collect();
    let mut g = c.benchmark_group("smollm2");
    g.sample_size(10);
    g.throughput(Throughput::Elements(ids.len() as u64));
    g.bench_function("window_512_f32", |b| {
        b.iter(|| model.forward(&ids, None).unwrap())
    });
    g.finish();

    let tiny = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/fixtures/tiny-llama"
    ));
    let model = Model::load(&Checkpoint::open(&tiny).unwrap()).unwrap();
    let ids: Vec<u32> = (0..24).map(|i| i * 7 % 512).collect();
    c.bench_function("tiny_llama_24", |b| {
        b.iter(|| model.forward(&ids, None).unwrap())
    });
}

criterion_group!(benches, forward);
criterion_main!(benches);
