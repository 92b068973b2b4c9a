//! Every tiny fixture (made by PyTorch/transformers) reproduces its reference logits.

use std::path::PathBuf;

use shrink_io::Checkpoint;
use shrink_models::Model;

fn fixtures() -> PathBuf {
    let p = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/fixtures"
    ));
    assert!(
        p.is_dir(),
        "fixtures not found at {} (../shared beside the checkout)",
        p.display()
    );
    p
}

/// Max abs difference between our logits and transformers' for both reference sequences.
fn max_diff(arch: &str) -> f32 {
    let dir = fixtures().join(format!("tiny-{arch}"));
    let ckpt = Checkpoint::open(&dir).unwrap();
    let model = Model::load(&ckpt).unwrap();
    let bytes = std::fs::read(dir.join("reference.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let ids = st.tensor("input_ids").unwrap();
    let logits = st.tensor("logits").unwrap();
    let (b, t, v) = (logits.shape()[0], logits.shape()[1], logits.shape()[2]);
    let ids: Vec<u32> = ids
        .data()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32)
        .collect();
    let refl: Vec<f32> = logits
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let mut worst = 0f32;
    for s in 0..b {
        let out = model.forward(&ids[s * t..(s + 1) * t], None).unwrap();
        let out: Vec<f32> = out.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(out.len(), t * v);
        for (a, r) in out.iter().zip(&refl[s * t * v..(s + 1) * t * v]) {
            worst = worst.max((a - r).abs());
        }
    }
    worst
}

#[test]
fn llama_matches_transformers() {
    let d = max_diff("llama");
    eprintln!("max abs diff {d}");
    assert!(d <= 1e-4, "max abs diff {d}");
}

#[test]
fn qwen2_matches_transformers() {
    let d = max_diff("qwen2");
    eprintln!("max abs diff {d}");
    assert!(d <= 1e-4, "max abs diff {d}");
}

#[test]
fn mistral_matches_transformers() {
    let d = max_diff("mistral");
    eprintln!("max abs diff {d}");
    assert!(d <= 1e-4, "max abs diff {d}");
}

#[test]
fn gpt2_matches_transformers() {
    let d = max_diff("gpt2");
    eprintln!("max abs diff {d}");
    assert!(d <= 1e-4, "max abs diff {d}");
}

#[test]
fn gpt_neox_matches_transformers() {
    let d = max_diff("gpt_neox");
    eprintln!("max abs diff {d}");
    assert!(d <= 1e-4, "max abs diff {d}");
}

/// Logits of `ids` run through `cache`: the first 5 as one prompt, then one token at a time.
fn incremental(model: &Model, ids: &[u32], mut cache: shrink_models::KvCache) -> Vec<Vec<f32>> {
    let mut rows: Vec<Vec<f32>> = model
        .forward(&ids[..5], Some(&mut cache))
        .unwrap()
        .to_vec2()
        .unwrap();
    for &id in &ids[5..] {
        rows.extend(
            model
                .forward(&[id], Some(&mut cache))
                .unwrap()
                .to_vec2::<f32>()
                .unwrap(),
        );
    }
    rows
}

#[test]
fn kv_cache_decoding_equals_full_forward() {
    // Llama-family models decode one token on plain slices (`Llama::step`); the others on
    // tensors. Mistral also with a sliding window shorter than the sequence.
    for (arch, window) in [
        ("tiny-llama", None),
        ("tiny-qwen2", None),
        ("tiny-mistral", Some(4)),
        ("tiny-gpt2", None),
        ("tiny-gpt_neox", None),
    ] {
        let dir = fixtures().join(arch);
        let ckpt = Checkpoint::open(&dir).unwrap();
        let mut model = Model::load(&ckpt).unwrap();
        if let (Model::Llama(m), Some(w)) = (&mut model, window) {
            m.cfg.sliding_window = Some(w);
        }
        let ids: Vec<u32> = (0..12).map(|i| (i * 37 % 512) as u32).collect();
        let full: Vec<Vec<f32>> = model.forward(&ids, None).unwrap().to_vec2().unwrap();
        let rows = incremental(&model, &ids, shrink_models::KvCache::new());
        assert_eq!(rows.len(), full.len());
        for (a, b) in full.iter().flatten().zip(rows.iter().flatten()) {
            assert!((a - b).abs() < 1e-4, "{arch}: {a} vs {b}");
        }
        // A float16 cache: keys and values rounded to float16 (relative 2⁻¹¹), logits close.
        let cache = shrink_models::KvCache::half();
        assert!(cache.is_half());
        let rows = incremental(&model, &ids, cache);
        let worst = full
            .iter()
            .flatten()
            .zip(rows.iter().flatten())
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(worst < 2e-3, "{arch} float16 cache: max |Δ| {worst}");
    }
}

#[test]
fn decoder_linears_are_the_projection_weights() {
    for (arch, per_layer) in [
        ("llama", 7),
        ("qwen2", 7),
        ("mistral", 7),
        ("gpt2", 4),
        ("gpt_neox", 4),
    ] {
        let ckpt = Checkpoint::open(fixtures().join(format!("tiny-{arch}"))).unwrap();
        let cfg = shrink_models::ModelConfig::from_checkpoint(&ckpt).unwrap();
        let lin = shrink_models::decoder_linears(&cfg);
        assert_eq!(lin.len(), 2 * per_layer, "{arch}: {lin:?}");
        assert!(lin.iter().all(|l| !l.weight.contains("embed")
            && !l.weight.contains("wte")
            && !l.weight.contains("lm_head")));
        if arch == "gpt2" {
            let fc = lin
                .iter()
                .find(|l| l.weight.ends_with("mlp.c_fc.weight"))
                .unwrap();
            assert!(
                fc.conv1d && fc.out_features == 256 && fc.in_features == 64,
                "{fc:?}"
            );
        }
    }
}
