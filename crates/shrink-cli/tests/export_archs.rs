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

/// A one-layer Llama of width `h` with the byte tokenizer (in `dir`/tiny-llama).
fn narrow_llama(dir: &Path, h: usize) -> std::path::PathBuf {
    let d = fixture_with_tokenizer(dir, "tiny-llama");
    let (i, v) = (h + 32, 512usize);
    let cfg = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": h,
        "intermediate_size": i, "num_hidden_layers": 1, "num_attention_heads": 2,
        "num_key_value_heads": 2, "vocab_size": v, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "max_position_embeddings": 64, "tie_word_embeddings": true, "hidden_act": "silu",
    });
    std::fs::write(d.join("config.json"), cfg.to_string()).unwrap();
    std::fs::remove_file(d.join("reference.safetensors")).unwrap();
    let mut tensors: Vec<(String, Vec<usize>)> = vec![
        ("model.embed_tokens.weight".into(), vec![v, h]),
        ("model.norm.weight".into(), vec![h]),
    ];
    let p = "model.layers.0";
    for (n, s) in [
        ("self_attn.q_proj.weight", vec![h, h]),
        ("self_attn.k_proj.weight", vec![h, h]),
        ("self_attn.v_proj.weight", vec![h, h]),
        ("self_attn.o_proj.weight", vec![h, h]),
        ("mlp.gate_proj.weight", vec![i, h]),
        ("mlp.up_proj.weight", vec![i, h]),
        ("mlp.down_proj.weight", vec![h, i]),
        ("input_layernorm.weight", vec![h]),
        ("post_attention_layernorm.weight", vec![h]),
    ] {
        tensors.push((format!("{p}.{n}"), s));
    }
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .enumerate()
        .map(|(k, (n, s))| {
            let len: usize = s.iter().product();
            let bytes = (0..len)
                .flat_map(|j| (((j * 7 + k * 13) % 23) as f32 / 23.0 - 0.5).to_le_bytes())
                .collect();
            (n, s, bytes)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = data
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &d.join("model.safetensors")).unwrap();
    d
}

#[test]
fn rows_no_block_fits_fall_back_or_fail_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    // Width 40: no GGUF block divides the rows.
    let d = narrow_llama(tmp.path(), 40);
    // Q8_0 has no smaller type to fall back to: a clear error naming the tensor, no file.
    let out = tmp.path().join("q8.gguf");
    let o = shrink(&[
        "export",
        d.to_str().unwrap(),
        "--to",
        "gguf",
        "--type",
        "q8_0",
        "--pre",
        "gpt-2",
        "-o",
        out.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains("rows of 40") && err.contains("Q8_0"), "{err}");
    assert!(!out.exists());
    // Width 96: whole 32-blocks but not 256-blocks; Q4_K_M's K-quants fall back as
    // llama.cpp does (Q4_K → Q5_0, Q6_K → Q8_0), listed in the summary.
    let tmp = tempfile::tempdir().unwrap();
    let d = narrow_llama(tmp.path(), 96);
    let out = tmp.path().join("q4km.gguf");
    let o = shrink(&[
        "export",
        d.to_str().unwrap(),
        "--to",
        "gguf",
        "--type",
        "q4_k_m",
        "--pre",
        "gpt-2",
        "-o",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let fb = v["fallbacks"].as_array().unwrap();
    assert!(
        fb.iter()
            .any(|f| f["cols"] == 96 && f["wanted"] == "Q4_K" && f["got"] == "Q5_0"),
        "{fb:?}"
    );
    let g = GgufFile::open(&out).unwrap();
    assert!(g.tensors.iter().any(|t| t.ty.name() == "Q5_0"));
    assert!(!g.tensors.iter().any(|t| t.ty.name() == "Q4_K"));
    Model::load(&Checkpoint::open(&out).unwrap()).unwrap();
}
