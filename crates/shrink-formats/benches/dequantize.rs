//! Dequantization throughput of the GGML block formats on llama.cpp's own blocks
//! (../shared/fixtures/ggml-blocks). `cargo bench -p shrink-formats`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use shrink_formats::ggml::{dequantize, GgmlType};

fn bench(c: &mut Criterion) {
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/fixtures/ggml-blocks"
    );
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(format!("{dir}/blocks.json")).expect("blocks.json"))
            .unwrap();
    let bytes = std::fs::read(format!("{dir}/blocks.safetensors")).expect("blocks.safetensors");
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut g = c.benchmark_group("dequantize");
    for (name, info) in meta["types"].as_object().unwrap() {
        let ty = GgmlType::from_name(name).unwrap();
        let rc = &info["rows_cols"];
        let n = (rc[0].as_u64().unwrap() * rc[1].as_u64().unwrap()) as usize;
        let src = st
            .tensor(&format!("{name}.blocks"))
            .unwrap()
            .data()
            .to_vec();
        let mut dst = vec![0f32; n];
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(name.as_str(), |b| {
            b.iter(|| dequantize(ty, &src, &mut dst).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
