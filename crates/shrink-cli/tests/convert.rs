//! `shrink convert`: exact round trips, streaming output, and nothing left behind on failure.

mod common;
use common::*;

use std::path::Path;

use shrink_formats::float::{self, FloatType};
use shrink_io::Checkpoint;
use shrink_models::{Model, ModelConfig};

fn run_ok(args: &[&str]) -> serde_json::Value {
    let out = shrink(args);
    assert!(
        out.status.success(),
        "shrink {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json output")
}

/// Every float tensor of `dst` equals `src`'s rounded to `ty` (bit for bit).
fn assert_rounded_copy(src: &Path, dst: &Path, ty: FloatType) {
    let a = Checkpoint::open(src).unwrap();
    let b = Checkpoint::open(dst).unwrap();
    let (ta, tb) = (a.tensors(), b.tensors());
    assert_eq!(ta.len(), tb.len());
    for t in &ta {
        let (va, sa) = a.read_f32(&t.name).unwrap();
        let (vb, sb) = b.read_f32(&t.name).unwrap();
        assert_eq!(sa, sb, "{}", t.name);
        let mut want = vec![0f32; va.len()];
        float::decode(ty, &float::encode(ty, &va), &mut want);
        assert!(
            want.iter()
                .zip(&vb)
                .all(|(x, y)| x.to_bits() == y.to_bits()),
            "{} differs",
            t.name
        );
    }
}

#[test]
fn hf_downcast_and_back_is_exact_rounding() {
    let tmp = tempfile::tempdir().unwrap();
    for arch in [
        "tiny-llama",
        "tiny-gpt2",
        "tiny-gpt_neox",
        "tiny-qwen2",
        "tiny-mistral",
    ] {
        let src = fixture(arch);
        let bf = tmp.path().join(format!("{arch}-bf16"));
        let v = run_ok(&[
            "convert",
            src.to_str().unwrap(),
            "--dtype",
            "bf16",
            "-o",
            bf.to_str().unwrap(),
            "--json",
        ]);
        assert_eq!(
            v["footprint_after_bytes"].as_u64().unwrap() * 2,
            v["footprint_before_bytes"].as_u64().unwrap()
        );
        assert!(
            v["logits_max_abs_diff"].as_f64().unwrap() < 0.05,
            "{arch}: {v}"
        );
        assert_rounded_copy(&src, &bf, FloatType::BF16);
        let cfg: serde_json::Value =
            serde_json::from_slice(&std::fs::read(bf.join("config.json")).unwrap()).unwrap();
        assert_eq!(cfg["dtype"], "bfloat16");
        // And back to f32: values are exactly the bf16 ones.
        let back = tmp.path().join(format!("{arch}-f32"));
        run_ok(&[
            "convert",
            bf.to_str().unwrap(),
            "--dtype",
            "f32",
            "-o",
            back.to_str().unwrap(),
            "--json",
            "--no-check",
        ]);
        assert_rounded_copy(&bf, &back, FloatType::F32);
    }
}

#[test]
fn gguf_to_hf_f32_is_lossless_and_runs_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("smollm2-f32");
    let v = run_ok(&[
        "convert",
        gguf().to_str().unwrap(),
        "--dtype",
        "f32",
        "-o",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(v["footprint_after_bytes"].as_u64().unwrap(), 538_060_032);
    // The GGUF's Q8_0 embedding runs as the packed head (same values, another summation order
    // than the float32 copy's GEMM); the weights themselves are compared bit for bit below.
    let d = v["logits_max_abs_diff"].as_f64().unwrap();
    assert!(d < 1e-4, "{d}");
    let g = Checkpoint::open(gguf()).unwrap();
    let h = Checkpoint::open(&out).unwrap();
    let cfg = ModelConfig::from_checkpoint(&g).unwrap();
    assert_eq!(
        ModelConfig::from_checkpoint(&h).unwrap(),
        cfg,
        "config.json round trip"
    );
    // Every HF weight equals what the GGUF dequantizes to (after undoing llama.cpp's permutation).
    let w = shrink_models::weight_loader(&g, &cfg);
    for (name, shape) in shrink_models::weight_shapes(&cfg) {
        let a: Vec<f32> = shrink_models::read_hf_weight(&w, &cfg, &name, &shape)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let (b, s) = h.read_f32(&name).unwrap();
        assert_eq!(s, shape, "{name}");
        assert!(a == b, "{name} differs");
    }
    // The exported tokenizer.json tokenizes like the GGUF's own tokenizer.
    let tj = shrink_io::tokenizer::Tokenizer::from_file(&out.join("tokenizer.json")).unwrap();
    let Checkpoint::Gguf(gf) = &g else {
        unreachable!()
    };
    let tg = shrink_io::tokenizer::Tokenizer::from_gguf(gf).unwrap();
    for text in [
        "The capital of France is",
        "In 1997, 12,345 people <|im_start|>user\nhi<|im_end|>",
        "naïve café 🚀  spaces\n\n",
    ] {
        assert_eq!(
            tj.encode(text, false).unwrap(),
            tg.encode(text, false).unwrap(),
            "{text:?}"
        );
    }
    // The HF model gives the same logits as the GGUF, bit for bit.
    let ids = [504u32, 3575, 282, 4649, 314];
    let la: Vec<f32> = Model::load(&g)
        .unwrap()
        .forward(&ids, None)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let lb: Vec<f32> = Model::load(&h)
        .unwrap()
        .forward(&ids, None)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    // Equal up to the packed head's summation order (see above).
    let err = la
        .iter()
        .zip(&lb)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(err < 1e-4, "{err}");
}

#[test]
fn existing_output_is_refused_and_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("exists");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "mine").unwrap();
    let r = shrink(&[
        "convert",
        fixture("tiny-llama").to_str().unwrap(),
        "--dtype",
        "bf16",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(!r.status.success());
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        err.contains("already exists") && err.contains(out.to_str().unwrap()),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("keep.txt")).unwrap(),
        "mine"
    );
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        1,
        "no temporary directory left behind"
    );
}

#[test]
fn failed_conversion_leaves_no_output() {
    let tmp = tempfile::tempdir().unwrap();
    let lying = tmp.path().join("lying.gguf");
    let mut bytes = std::fs::read(gguf()).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&lying, bytes).unwrap();
    let out = tmp.path().join("out");
    let r = shrink(&[
        "convert",
        lying.to_str().unwrap(),
        "--dtype",
        "bf16",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(!r.status.success());
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        err.contains("lying.gguf") && err.contains("truncated") && !err.contains("panicked"),
        "{err}"
    );
    assert!(!out.exists());
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 1, "only the input remains: {left:?}");
}

#[test]
fn unknown_architecture_still_downcasts_but_says_logits_were_not_compared() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("mamba");
    std::fs::create_dir(&bad).unwrap();
    let src = fixture("tiny-llama");
    std::fs::copy(src.join("model.safetensors"), bad.join("model.safetensors")).unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(src.join("config.json")).unwrap()).unwrap();
    cfg["model_type"] = "mamba9".into();
    std::fs::write(bad.join("config.json"), cfg.to_string()).unwrap();
    let out = tmp.path().join("out");
    let r = shrink(&[
        "convert",
        bad.to_str().unwrap(),
        "--dtype",
        "bf16",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(String::from_utf8_lossy(&r.stdout).contains("not compared"));
    assert_rounded_copy(&bad, &out, FloatType::BF16);
}

#[test]
fn bad_dtype_is_a_usage_error() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("never");
    let r = shrink(&[
        "convert",
        fixture("tiny-llama").to_str().unwrap(),
        "--dtype",
        "int3",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("unknown dtype"));
    assert!(!out.exists());
}

#[test]
fn bad_inputs_fail_cleanly_and_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixture("tiny-llama");
    let good = std::fs::read(src.join("model.safetensors")).unwrap();
    let config = std::fs::read(src.join("config.json")).unwrap();
    let header_len = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(good[8..8 + header_len].to_vec()).unwrap();
    // (case name, model.safetensors bytes, config.json bytes or None for missing, expected phrase)
    let mut lying_len = good.clone();
    lying_len[..8].copy_from_slice(&(good.len() as u64 * 2).to_le_bytes());
    let unknown_dtype = {
        let h = header.replacen("\"F32\"", "\"Q9\"", 1);
        let mut b = (h.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(h.as_bytes());
        b.extend_from_slice(&good[8 + header_len..]);
        b
    };
    type Case<'a> = (&'a str, Vec<u8>, Option<&'a [u8]>, &'a str);
    let cases: Vec<Case> = vec![
        (
            "truncated",
            good[..good.len() - 100].to_vec(),
            Some(&config),
            "truncated",
        ),
        ("header-too-long", lying_len, Some(&config), "header"),
        ("unknown-dtype", unknown_dtype, Some(&config), "safetensors"),
        ("no-config", good.clone(), None, "config.json"),
        (
            "bad-config",
            good.clone(),
            Some(b"{\"model_type\": "),
            "invalid JSON",
        ),
    ];
    for (name, weights, cfg, phrase) in cases {
        let dir = tmp.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("model.safetensors"), weights).unwrap();
        if let Some(c) = cfg {
            std::fs::write(dir.join("config.json"), c).unwrap();
        }
        let out = tmp.path().join(format!("{name}-out"));
        let r = shrink(&[
            "convert",
            dir.to_str().unwrap(),
            "--dtype",
            "bf16",
            "-o",
            out.to_str().unwrap(),
        ]);
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(!r.status.success(), "{name}: succeeded");
        assert!(
            err.contains(name) && err.contains(phrase),
            "{name}: unclear error: {err}"
        );
        assert!(!err.contains("panicked"), "{name}: {err}");
        assert!(!out.exists(), "{name}: output written");
    }
    // Only the five input directories remain: no output, no hidden temporary directory.
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 5);
}
