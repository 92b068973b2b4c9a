//! `shrink export --to gguf` for every decoder architecture llama.cpp maps (llama, mistral,
//! qwen2, gpt2, gpt_neox): the tiny fixtures made by transformers, exported to GGUF with
//! llama.cpp's names, transforms and hyperparameter keys, and read back by shrink, reproduce
//! transformers' reference logits.

mod common;
use common::*;

use std::path::Path;

use shrink_io::{Checkpoint, GgufFile, GgufValue};
use shrink_models::Model;

/// Max abs difference between the logits of `model` and the fixture's reference logits.
fn max_diff(model: &Path, reference: &Path) -> f32 {
    let ckpt = Checkpoint::open(model).unwrap();
    let m = Model::load(&ckpt).unwrap();
    let bytes = std::fs::read(reference).unwrap();
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
        let out = m.forward(&ids[s * t..(s + 1) * t], None).unwrap();
        let out: Vec<f32> = out.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(out.len(), t * v);
        for (a, r) in out.iter().zip(&refl[s * t * v..(s + 1) * t * v]) {
            worst = worst.max((a - r).abs());
        }
    }
    worst
}

fn export(dir: &Path, ty: &str, out: &Path) {
    let o = shrink(&[
        "export",
        dir.to_str().unwrap(),
        "--to",
        "gguf",
        "--type",
        ty,
        "--pre",
        "gpt-2",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// (fixture, GGUF architecture, keys llama.cpp's loader requires for it).
const ARCHS: &[(&str, &str, &[&str])] = &[
    (
        "tiny-llama",
        "llama",
        &["rope.dimension_count", "attention.head_count_kv"],
    ),
    (
        "tiny-mistral",
        "llama",
        &["rope.dimension_count", "attention.head_count_kv"],
    ),
    (
        "tiny-qwen2",
        "qwen2",
        &["attention.head_count_kv", "rope.freq_base"],
    ),
    ("tiny-gpt2", "gpt2", &["attention.layer_norm_epsilon"]),
    (
        "tiny-gpt_neox",
        "gptneox",
        &[
            "rope.dimension_count",
            "use_parallel_residual",
            "attention.layer_norm_epsilon",
        ],
    ),
];

#[test]
fn every_architecture_round_trips_through_gguf_f32() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, arch, keys) in ARCHS {
        let dir = fixture_with_tokenizer(tmp.path(), name);
        let out = tmp.path().join(format!("{name}.gguf"));
        export(&dir, "f32", &out);
        let g = GgufFile::open(&out).unwrap();
        assert_eq!(g.architecture().unwrap(), *arch, "{name}");
        for k in [
            "block_count",
            "context_length",
            "embedding_length",
            "feed_forward_length",
            "attention.head_count",
        ]
        .iter()
        .chain(keys.iter())
        {
            assert!(
                g.get(&format!("{arch}.{k}")).is_some(),
                "{name}: {arch}.{k} missing"
            );
        }
        assert!(matches!(
            g.get("general.file_type"),
            Some(GgufValue::U32(0))
        ));
        let d = max_diff(&out, &dir.join("reference.safetensors"));
        eprintln!("{name} → GGUF F32 ({arch}): max abs logit diff {d}");
        assert!(d <= 1e-4, "{name}: max abs diff {d}");
    }
}

#[test]
fn every_architecture_exports_f16_and_q8_0_close_to_the_reference() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, _, _) in ARCHS {
        let dir = fixture_with_tokenizer(tmp.path(), name);
        for (ty, tol) in [("f16", 2e-2f32), ("q8_0", 1e-1)] {
            let out = tmp.path().join(format!("{name}-{ty}.gguf"));
            export(&dir, ty, &out);
            let d = max_diff(&out, &dir.join("reference.safetensors"));
            eprintln!("{name} → GGUF {ty}: max abs logit diff {d}");
            assert!(d > 0.0 && d <= tol, "{name} {ty}: max abs diff {d}");
        }
    }
}
