//! Offline rotations on every tiny fixture: the rotated checkpoint (an ordinary HF directory of
//! the same architecture) gives transformers' reference logits, which the input gave, while
//! its weights are different; post-LN encoders take the per-head rotation only and refuse the
//! residual one; bad input is refused and nothing is written.

use std::path::{Path, PathBuf};

use shrink_formats::float::FloatType;
use shrink_io::Checkpoint;
use shrink_methods::pipeline::Silent;
use shrink_methods::rotate::{rotate, RotateSpec};
use shrink_methods::MethodError;
use shrink_models::{BertClassifier, Model, WeightLoader};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/fixtures")
        .join(name)
}

/// A fresh, empty scratch folder for `test`.
fn scratch(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("shrink-rotate-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The reference's input ids (rows of `t`) and logits.
fn reference(dir: &Path) -> (Vec<Vec<u32>>, Vec<f32>) {
    let bytes = std::fs::read(dir.join("reference.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let ids = st.tensor("input_ids").unwrap();
    let t = ids.shape()[1];
    let ids: Vec<u32> = ids
        .data()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32)
        .collect();
    let logits = st
        .tensor("logits")
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    (ids.chunks(t).map(<[u32]>::to_vec).collect(), logits)
}

/// Max |Δ| between a model's logits (decoder or classifier) and the fixture's reference.
fn max_diff(model_dir: &Path, fixture_dir: &Path) -> f32 {
    let (ids, want) = reference(fixture_dir);
    let ckpt = Checkpoint::open(model_dir).unwrap();
    let mut got = Vec::new();
    if let Ok(m) = Model::load(&ckpt) {
        for s in &ids {
            got.extend(
                m.forward(s, None)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap(),
            );
        }
    } else {
        let cfg = shrink_models::bert::BertConfig::from_checkpoint(&ckpt).unwrap();
        let m = BertClassifier::load(cfg, &WeightLoader::new(&ckpt, None, &[])).unwrap();
        for s in &ids {
            got.extend(m.forward(s).unwrap().to_vec1::<f32>().unwrap());
        }
    }
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max)
}

fn read(dir: &Path, name: &str) -> Vec<f32> {
    Checkpoint::open(dir).unwrap().read_f32(name).unwrap().0
}

/// Relative RMS difference of two tensors.
fn rel(a: &[f32], b: &[f32]) -> f64 {
    let d: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let n: f64 = b.iter().map(|&y| (y as f64).powi(2)).sum();
    (d / n).sqrt()
}

#[test]
fn rotated_decoders_give_the_reference_logits() {
    // (fixture, a block linear that must change, a norm that must become ones, the head)
    let cases = [
        (
            "tiny-llama",
            "model.layers.0.self_attn.q_proj.weight",
            "model.layers.0.input_layernorm.weight",
            "lm_head.weight",
        ),
        (
            "tiny-mistral",
            "model.layers.1.mlp.down_proj.weight",
            "model.norm.weight",
            "lm_head.weight",
        ),
        (
            "tiny-qwen2",
            "model.layers.0.self_attn.v_proj.bias",
            "model.layers.0.post_attention_layernorm.weight",
            "lm_head.weight",
        ),
        (
            "tiny-gpt2",
            "transformer.h.0.attn.c_attn.weight",
            "transformer.h.0.ln_1.weight",
            "lm_head.weight",
        ),
        (
            "tiny-gpt_neox",
            "gpt_neox.layers.0.attention.query_key_value.weight",
            "gpt_neox.final_layer_norm.weight",
            "embed_out.weight",
        ),
    ];
    let root = scratch("decoders");
    for (name, changed, norm, head) in cases {
        let fx = fixture(name);
        let before = max_diff(&fx, &fx);
        let out = root.join(name);
        let r = rotate(
            &Checkpoint::open(&fx).unwrap(),
            &out,
            RotateSpec::default(),
            FloatType::F32,
            &Silent,
        )
        .unwrap();
        let after = max_diff(&out, &fx);
        let self_check = r.extra["logits_max_abs_diff"].as_f64().unwrap();
        eprintln!(
            "{name}: max |Δ| vs transformers {before:.2e} before, {after:.2e} rotated; \
             rotate's own check {self_check:.2e}"
        );
        assert!(after <= 1e-4, "{name}: rotated logits differ by {after}");
        assert!(self_check <= 1e-4, "{name}: {self_check}");
        let (w0, w1) = (read(&fx, changed), read(&out, changed));
        assert!(rel(&w1, &w0) > 0.5, "{name}: {changed} barely changed");
        assert!(
            read(&out, norm).iter().all(|&g| g == 1.0),
            "{name}: {norm} not ones"
        );
        // A tied head stays tied only if the final norm's weight was all ones; else it is
        // written untied (γ folded into it) and the config says so.
        let input = Checkpoint::open(&fx).unwrap();
        if !input.has(head) {
            let cfg: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap())
                    .unwrap();
            let untied = Checkpoint::open(&out).unwrap().has(head);
            assert_eq!(untied, !r.extra["untied_head_params"].is_null(), "{name}");
            assert_eq!(cfg["tie_word_embeddings"] == false, untied, "{name}");
            eprintln!("{name}: tied input, head untied by the rotation: {untied}");
        }
    }
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn rotating_twice_and_other_seeds_keep_the_logits() {
    let root = scratch("twice");
    let fx = fixture("tiny-llama");
    let once = root.join("once");
    rotate(
        &Checkpoint::open(&fx).unwrap(),
        &once,
        RotateSpec::default(),
        FloatType::F32,
        &Silent,
    )
    .unwrap();
    // A second rotation of a rotated model (final norm now all ones: the head stays as it is).
    let twice = root.join("twice");
    let spec = RotateSpec {
        seed: 9,
        ..RotateSpec::default()
    };
    let r = rotate(
        &Checkpoint::open(&once).unwrap(),
        &twice,
        spec,
        FloatType::F32,
        &Silent,
    )
    .unwrap();
    assert!(r.extra["untied_head_params"].is_null());
    let d = max_diff(&twice, &fx);
    eprintln!("rotated twice: max |Δ| {d:.2e}");
    assert!(d <= 1e-4);
    let q = "model.layers.1.self_attn.o_proj.weight";
    assert!(rel(&read(&twice, q), &read(&once, q)) > 0.5);
    // Heads only, residual only.
    for (i, (residual, heads)) in [(false, true), (true, false)].into_iter().enumerate() {
        let out = root.join(format!("part{i}"));
        let spec = RotateSpec {
            residual,
            heads,
            seed: 3,
            keep: None,
            given: Default::default(),
        };
        rotate(
            &Checkpoint::open(&fx).unwrap(),
            &out,
            spec,
            FloatType::F32,
            &Silent,
        )
        .unwrap();
        let d = max_diff(&out, &fx);
        assert!(d <= 1e-4, "residual {residual} heads {heads}: {d}");
        let v = "model.layers.0.self_attn.v_proj.weight";
        assert!(rel(&read(&out, v), &read(&fx, v)) > 0.5);
    }
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn channels_kept_out_of_the_rotation_keep_their_norm_weights_and_the_logits() {
    let root = scratch("kept");
    for (name, norm) in [
        ("tiny-llama", "model.layers.1.input_layernorm.weight"),
        ("tiny-qwen2", "model.norm.weight"),
        ("tiny-gpt2", "transformer.h.0.ln_2.weight"),
        (
            "tiny-gpt_neox",
            "gpt_neox.layers.1.post_attention_layernorm.weight",
        ),
    ] {
        let fx = fixture(name);
        let out = root.join(name);
        let spec = RotateSpec {
            keep: Some(vec![33, 1]),
            ..RotateSpec::default()
        };
        let r = rotate(
            &Checkpoint::open(&fx).unwrap(),
            &out,
            spec,
            FloatType::F32,
            &Silent,
        )
        .unwrap();
        assert_eq!(
            r.extra["residual"]["kept_channels"],
            serde_json::json!([1, 33])
        );
        assert_eq!(r.extra["residual"]["order"], 62);
        let d = max_diff(&out, &fx);
        eprintln!("{name}: channels 1 and 33 kept, max |Δ| vs transformers {d:.2e}");
        assert!(d <= 1e-4, "{name}: {d}");
        let (g0, g1) = (read(&fx, norm), read(&out, norm));
        for (c, (&a, &b)) in g0.iter().zip(&g1).enumerate() {
            let want = if c == 1 || c == 33 { a } else { 1.0 };
            assert_eq!(b, want, "{name}: {norm}[{c}]");
        }
    }
    // Bad lists are refused.
    let fx = fixture("tiny-llama");
    let spec = RotateSpec {
        keep: Some(vec![64]),
        ..RotateSpec::default()
    };
    let e = rotate(
        &Checkpoint::open(&fx).unwrap(),
        &root.join("bad"),
        spec,
        FloatType::F32,
        &Silent,
    )
    .unwrap_err();
    assert!(e.to_string().contains("channel 64"), "{e}");
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn suppressed_channels_are_those_most_norms_damp() {
    use shrink_methods::rotate::suppressed_channels;
    // 20 norms over 8 channels: channel 2 damped in 5 of them, channel 6 in one only.
    let gammas: Vec<Vec<f32>> = (0..20)
        .map(|i| {
            let mut g = vec![1.0f32; 8];
            if i % 4 == 0 {
                g[2] = 0.001;
            }
            if i == 7 {
                g[6] = -0.01;
            }
            g
        })
        .collect();
    assert_eq!(suppressed_channels(&gammas), vec![2]);
    assert!(suppressed_channels(&[]).is_empty());
}

#[test]
fn post_norm_encoders_rotate_heads_only() {
    let root = scratch("encoders");
    for (name, value) in [
        (
            "tiny-bert_cls",
            "bert.encoder.layer.0.attention.self.value.weight",
        ),
        (
            "tiny-distilbert_cls",
            "distilbert.transformer.layer.1.attention.v_lin.weight",
        ),
    ] {
        let fx = fixture(name);
        let ckpt = Checkpoint::open(&fx).unwrap();
        let out = root.join(name);
        let e = rotate(&ckpt, &out, RotateSpec::default(), FloatType::F32, &Silent).unwrap_err();
        assert!(matches!(e, MethodError::Options(_)), "{e}");
        assert!(e.to_string().contains("post-LN"), "{e}");
        assert!(!out.exists());
        let spec = RotateSpec {
            residual: false,
            ..RotateSpec::default()
        };
        rotate(&ckpt, &out, spec, FloatType::F32, &Silent).unwrap();
        let d = max_diff(&out, &fx);
        eprintln!("{name}: heads rotated, max |Δ| vs transformers {d:.2e}");
        assert!(d <= 1e-4, "{name}: {d}");
        assert!(rel(&read(&out, value), &read(&fx, value)) > 0.5);
    }
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn bad_requests_are_refused_and_nothing_is_written() {
    let root = scratch("bad");
    let fx = fixture("tiny-gpt2");
    let ckpt = Checkpoint::open(&fx).unwrap();
    let out = root.join("none");
    let spec = RotateSpec {
        residual: false,
        heads: false,
        seed: 0,
        keep: None,
        given: Default::default(),
    };
    let e = rotate(&ckpt, &out, spec, FloatType::F32, &Silent).unwrap_err();
    assert!(e.to_string().contains("nothing to rotate"), "{e}");
    assert!(!out.exists());
    // An existing output is never overwritten; the input never either.
    let e = rotate(&ckpt, &fx, RotateSpec::default(), FloatType::F32, &Silent).unwrap_err();
    eprintln!("{e}");
    assert!(fx.join("model.safetensors").exists());
    std::fs::remove_dir_all(&root).unwrap();
}
