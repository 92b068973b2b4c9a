//! The tiny BERT and DistilBERT classifiers (made by transformers) reproduce their reference
//! logits, and bad config.json files give clear errors.

use std::path::{Path, PathBuf};

use serde_json::json;
use shrink_io::Checkpoint;
use shrink_models::bert::{self, BertClassifier, BertConfig, BertKind};
use shrink_models::{ModelError, WeightLoader};

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

fn hf_config(ckpt: &Checkpoint) -> &serde_json::Value {
    match ckpt {
        Checkpoint::Hf(h) => &h.config,
        Checkpoint::Gguf(_) => panic!("expected a Hugging Face directory"),
    }
}

/// Max abs difference between our logits and transformers' over both reference sequences.
fn max_diff(name: &str, kind: BertKind) -> f32 {
    let dir = fixtures().join(format!("tiny-{name}"));
    assert!(dir.is_dir(), "fixture {} missing", dir.display());
    let ckpt = Checkpoint::open(&dir).unwrap();
    let cfg = BertConfig::from_hf_json(hf_config(&ckpt), &dir.join("config.json")).unwrap();
    assert_eq!(cfg.kind, kind);
    assert_eq!(cfg.num_labels, 2);
    assert_eq!(BertConfig::from_checkpoint(&ckpt).unwrap(), cfg);

    // weight_shapes lists exactly the checkpoint's tensors, with their shapes.
    let shapes = bert::weight_shapes(&cfg);
    let mut want: Vec<(String, Vec<usize>)> = shapes.clone();
    want.sort();
    let mut stored: Vec<(String, Vec<usize>)> = ckpt
        .tensors()
        .into_iter()
        .map(|t| (t.name, t.shape))
        .collect();
    stored.sort();
    assert_eq!(want, stored, "weight_shapes vs the checkpoint's tensors");
    let total: usize = shapes
        .iter()
        .map(|(_, s)| s.iter().product::<usize>())
        .sum();
    eprintln!("{name}: {} tensors, {total} parameters", shapes.len());

    let w = WeightLoader::new(&ckpt, None, &[]);
    let model = BertClassifier::load(cfg, &w).unwrap();
    let bytes = std::fs::read(dir.join("reference.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let ids = st.tensor("input_ids").unwrap();
    let logits = st.tensor("logits").unwrap();
    let (b, t) = (ids.shape()[0], ids.shape()[1]);
    let n = logits.shape()[1];
    assert_eq!(logits.shape()[0], b);
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
        let seq = &ids[s * t..(s + 1) * t];
        let out: Vec<f32> = model.forward(seq).unwrap().to_vec1().unwrap();
        let want = &refl[s * n..(s + 1) * n];
        assert_eq!(out.len(), n);
        let d = out
            .iter()
            .zip(want)
            .map(|(a, r)| (a - r).abs())
            .fold(0f32, f32::max);
        eprintln!("{name} sequence {s}: ours {out:?}, transformers {want:?}, max abs diff {d:e}");
        worst = worst.max(d);
        let hidden = model.encode(seq).unwrap();
        assert_eq!(hidden.dims(), &[t, model.cfg.hidden_size]);
    }
    worst
}

#[test]
fn bert_classifier_matches_transformers() {
    let d = max_diff("bert_cls", BertKind::Bert);
    eprintln!("bert_cls max abs diff {d:e}");
    assert!(d <= 1e-4, "max abs diff {d}");
}

#[test]
fn distilbert_classifier_matches_transformers() {
    let d = max_diff("distilbert_cls", BertKind::DistilBert);
    eprintln!("distilbert_cls max abs diff {d:e}");
    assert!(d <= 1e-4, "max abs diff {d}");
}

fn config_error(v: serde_json::Value) -> String {
    match BertConfig::from_hf_json(&v, Path::new("dir/config.json")) {
        Ok(c) => panic!("expected an error, parsed {c:?}"),
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains("dir/config.json"), "{msg}");
            msg
        }
    }
}

fn bert_json() -> serde_json::Value {
    json!({
        "model_type": "bert", "hidden_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "intermediate_size": 256, "hidden_act": "gelu",
        "max_position_embeddings": 128, "type_vocab_size": 2, "layer_norm_eps": 1e-12,
        "vocab_size": 512, "problem_type": "single_label_classification",
        "id2label": {"0": "NEGATIVE", "1": "NEUTRAL", "2": "POSITIVE"}
    })
}

fn distilbert_json() -> serde_json::Value {
    json!({
        "model_type": "distilbert", "dim": 64, "n_layers": 2, "n_heads": 4, "hidden_dim": 256,
        "activation": "gelu", "max_position_embeddings": 128, "vocab_size": 512,
        "sinusoidal_pos_embds": false
    })
}

#[test]
fn configs_parse_with_labels_and_defaults() {
    let c = BertConfig::from_hf_json(&bert_json(), Path::new("c.json")).unwrap();
    assert_eq!(c.num_labels, 3);
    assert_eq!(c.labels, ["NEGATIVE", "NEUTRAL", "POSITIVE"]);
    assert_eq!(c.head_dim(), 16);
    let d = BertConfig::from_hf_json(&distilbert_json(), Path::new("c.json")).unwrap();
    assert_eq!(d.kind, BertKind::DistilBert);
    assert_eq!((d.num_labels, d.layer_norm_eps), (2, 1e-12));
    assert_eq!(d.labels, ["LABEL_0", "LABEL_1"]);
    // to_hf_json round-trips.
    for cfg in [c, d] {
        let back = BertConfig::from_hf_json(&cfg.to_hf_json(), Path::new("c.json")).unwrap();
        assert_eq!(back, cfg);
    }
}

#[test]
fn bad_configs_give_clear_errors() {
    let mut v = bert_json();
    v.as_object_mut().unwrap().remove("hidden_size");
    let e = config_error(v);
    assert!(e.contains("missing field \"hidden_size\""), "{e}");

    let mut v = bert_json();
    v["num_attention_heads"] = json!("four");
    let e = config_error(v);
    assert!(
        e.contains("\"num_attention_heads\" should be a positive integer"),
        "{e}"
    );

    let mut v = distilbert_json();
    v.as_object_mut().unwrap().remove("n_heads");
    let e = config_error(v);
    assert!(e.contains("missing field \"n_heads\""), "{e}");

    let mut v = distilbert_json();
    v["sinusoidal_pos_embds"] = json!(true);
    let e = config_error(v);
    assert!(e.contains("sinusoidal_pos_embds"), "{e}");

    let mut v = distilbert_json();
    v["sinusoidal_pos_embds"] = json!("no");
    let e = config_error(v);
    assert!(
        e.contains("\"sinusoidal_pos_embds\" should be true or false"),
        "{e}"
    );

    let mut v = bert_json();
    v["hidden_act"] = json!("mish");
    let e = config_error(v);
    assert!(e.contains("unsupported activation \"mish\""), "{e}");

    let mut v = bert_json();
    v["position_embedding_type"] = json!("relative_key");
    let e = config_error(v);
    assert!(e.contains("position_embedding_type"), "{e}");

    let mut v = bert_json();
    v["id2label"] = json!(["a", "b"]);
    let e = config_error(v);
    assert!(e.contains("id2label"), "{e}");

    let mut v = bert_json();
    v["hidden_size"] = json!(66);
    let e = config_error(v);
    assert!(e.contains("not divisible"), "{e}");

    let mut v = bert_json();
    v["model_type"] = json!("roberta");
    match BertConfig::from_hf_json(&v, Path::new("c.json")) {
        Err(ModelError::UnknownArchitecture { name, .. }) => assert_eq!(name, "roberta"),
        other => panic!("expected UnknownArchitecture, got {other:?}"),
    }
    let mut v = bert_json();
    v.as_object_mut().unwrap().remove("model_type");
    let e = config_error(v);
    assert!(e.contains("missing field \"model_type\""), "{e}");
}

#[test]
fn wrong_shapes_and_inputs_are_errors() {
    let dir = fixtures().join("tiny-bert_cls");
    let ckpt = Checkpoint::open(&dir).unwrap();
    let w = WeightLoader::new(&ckpt, None, &[]);
    // A config claiming 3 labels does not fit the stored 2-way classifier.
    let mut v = hf_config(&ckpt).clone();
    v["id2label"] = json!({"0": "a", "1": "b", "2": "c"});
    let cfg = BertConfig::from_hf_json(&v, &dir).unwrap();
    match BertClassifier::load(cfg, &w) {
        Err(ModelError::Shape { name, .. }) => assert_eq!(name, "classifier.weight"),
        other => panic!("expected a shape error, got {:?}", other.map(|_| ())),
    }
    let cfg = BertConfig::from_checkpoint(&ckpt).unwrap();
    let model = BertClassifier::load(cfg, &w).unwrap();
    assert!(matches!(model.forward(&[]), Err(ModelError::Input(_))));
    assert!(matches!(
        model.forward(&[1, 512]),
        Err(ModelError::Input(_))
    ));
    let long = vec![1u32; 129];
    assert!(matches!(model.forward(&long), Err(ModelError::Input(_))));
}
