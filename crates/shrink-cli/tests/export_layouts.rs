//! `shrink export --to gptq|awq|bitsandbytes|compressed-tensors` on the real SmolLM2: weights
//! already on a grid the target layout holds are repacked unchanged (the file and the
//! perplexity are exactly those of the input), others are requantized with a warning.

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

use serde_json::Value;

fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "shrink failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `shrink ARGS --json`: the report.
fn json(args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.push("--json");
    let o = shrink(&a);
    ok(&o);
    serde_json::from_slice(&o.stdout).expect("JSON report")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The real model as an HF float32 directory, once per test binary.
fn f32_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("layouts-smollm2-f32");
        let _ = std::fs::remove_dir_all(&d);
        ok(&shrink(&[
            "convert",
            s(&gguf()),
            "--dtype",
            "f32",
            "--no-check",
            "-o",
            s(&d),
        ]));
        d
    })
    .clone()
}

/// Perplexity on the first lee-ppl-v1 window.
fn ppl(model: &Path) -> f64 {
    let v = json(&[
        "eval",
        s(model),
        "--text",
        s(&asset("lee_background.cor")),
        "--max-windows",
        "1",
    ]);
    v["ppl"].as_f64().expect("ppl")
}

fn config(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap()
}

fn weights(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("model.safetensors")).unwrap()
}

/// `shrink export SRC --to TO EXTRA... -o OUT --json`.
fn export(src: &Path, to: &str, extra: &[&str], out: &Path) -> Value {
    let mut a = vec!["export", s(src), "--to", to];
    a.extend_from_slice(extra);
    a.extend_from_slice(&["-o", s(out)]);
    json(&a)
}

#[test]
fn integer_layouts_convert_losslessly() {
    let tmp = tempfile::tempdir().unwrap();
    let d = |n: &str| tmp.path().join(n);
    let f32 = f32_dir();
    let r = export(
        &f32,
        "gptq",
        &["--type", "int4", "--group-size", "64"],
        &d("gptq"),
    );
    assert_eq!(r["layout"], "gptq");
    assert_eq!(r["grid_from"], "flags");
    assert_eq!(r["quantized_tensors"], 210);
    assert_eq!(r["reused_tensors"], 0);
    assert_eq!(
        r["requantized_tensors"], 0,
        "float input: nothing requantized"
    );
    assert!(r.get("warning").is_none());
    let rel = r["relative_rmse"].as_f64().unwrap();
    assert!(rel > 0.01 && rel < 0.2, "int4 g64 error {rel}");
    let q = &config(&d("gptq"))["quantization_config"];
    assert_eq!(q["quant_method"], "gptq");
    assert_eq!(q["bits"], 4);
    assert_eq!(q["group_size"], 64);
    assert_eq!(q["checkpoint_format"], "gptq");
    let qc: Value =
        serde_json::from_slice(&std::fs::read(d("gptq").join("quantize_config.json")).unwrap())
            .unwrap();
    assert_eq!(qc["bits"], 4);
    assert_eq!(qc["group_size"], 64);

    // GPTQ → compressed-tensors → AWQ → GPTQ: every step keeps the input's codes.
    for (src, to, out, method) in [
        ("gptq", "compressed-tensors", "ct", "compressed-tensors"),
        ("ct", "awq", "awq", "awq"),
        ("awq", "gptq", "gptq2", "gptq"),
    ] {
        let r = export(&d(src), to, &[], &d(out));
        assert_eq!(r["grid_from"], "input", "{src} → {to}");
        assert_eq!(r["reused_tensors"], 210, "{src} → {to}");
        assert_eq!(r["requantized_tensors"], 0, "{src} → {to}");
        assert_eq!(r["relative_rmse"], 0.0, "{src} → {to}");
        assert_eq!(
            config(&d(out))["quantization_config"]["quant_method"],
            method
        );
        assert_eq!(
            d(out).join("quantize_config.json").exists(),
            to == "gptq",
            "quantize_config.json belongs to gptq only"
        );
    }
    assert!(
        weights(&d("gptq")) == weights(&d("gptq2")),
        "GPTQ → CT → AWQ → GPTQ is not byte-identical"
    );
    // The same model everywhere, to the last bit of the perplexity; GGUF F32 of it too.
    let base = ppl(&d("gptq"));
    for out in ["ct", "awq"] {
        assert_eq!(ppl(&d(out)), base, "{out}");
    }
    let g = d("gptq.gguf");
    let r = export(&d("gptq"), "gguf", &["--type", "f32"], &g);
    assert_eq!(r["dequantized_input"], true);
    assert!(r["warning"].is_null(), "F32 holds the dequantized weights");
    assert_eq!(ppl(&g), base, "GPTQ → GGUF F32");
}

#[test]
fn bitsandbytes_checkpoints_reexport_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    let d = |n: &str| tmp.path().join(n);
    let f32 = f32_dir();
    for (method, extra, quant_key) in [
        ("nf4", &["--double-quant"][..], "load_in_4bit"),
        ("llm-int8", &[][..], "load_in_8bit"),
    ] {
        let q = d(method);
        let mut a = vec!["quantize", s(&f32), "--method", method];
        a.extend_from_slice(extra);
        a.extend_from_slice(&["-o", s(&q)]);
        ok(&shrink(&a));
        let out = d(&format!("{method}-again"));
        let r = export(&q, "bitsandbytes", &[], &out);
        assert_eq!(r["grid_from"], "input", "{method}");
        assert_eq!(r["reused_tensors"], 210, "{method}");
        let c = config(&out);
        assert_eq!(c["quantization_config"]["quant_method"], "bitsandbytes");
        assert_eq!(c["quantization_config"][quant_key], true);
        assert!(
            weights(&q) == weights(&out),
            "{method}: re-export not identical"
        );
        if method == "nf4" {
            assert_eq!(ppl(&q), ppl(&out));
        }
    }
}

#[test]
fn requantizing_warns_and_follows_the_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let d = |n: &str| tmp.path().join(n);
    let f32 = f32_dir();
    export(
        &f32,
        "gptq",
        &["--type", "int4", "--group-size", "64"],
        &d("gptq"),
    );
    // GPTQ codes cannot be NF4: requantized, with the warning.
    let r = export(&d("gptq"), "bitsandbytes", &["--type", "nf4"], &d("nf4"));
    assert_eq!(r["requantized_tensors"], 210);
    assert!(r["warning"].as_str().unwrap().contains("stacks"));
    assert_eq!(
        config(&d("nf4"))["quantization_config"]["bnb_4bit_quant_type"],
        "nf4"
    );
    // Asking for another grid requantizes too.
    let r = export(
        &d("gptq"),
        "gptq",
        &["--type", "int8", "--group-size", "32"],
        &d("gptq8"),
    );
    assert_eq!(r["grid_from"], "flags");
    assert_eq!(r["requantized_tensors"], 210);
    assert_eq!(config(&d("gptq8"))["quantization_config"]["bits"], 8);
    // GGUF presets from a quantized directory warn as well.
    let r = export(&d("gptq"), "gguf", &["--type", "q4_0"], &d("q4_0.gguf"));
    assert!(r["warning"].as_str().unwrap().contains("requantized"));
    // A float input never warns; symmetric per-channel int8 in compressed-tensors.
    let r = export(
        &f32,
        "compressed-tensors",
        &["--type", "int8", "--group-size", "0", "--sym"],
        &d("ct8"),
    );
    assert_eq!(r["requantized_tensors"], 0);
    assert!(r.get("warning").is_none());
    let q = &config(&d("ct8"))["quantization_config"];
    assert_eq!(q["quant_method"], "compressed-tensors");
    let w = &q["config_groups"]["group_0"]["weights"];
    assert_eq!(w["num_bits"], 8);
    assert_eq!(w["strategy"], "channel");
    assert_eq!(w["symmetric"], true);
}

#[test]
fn bad_layout_requests_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o");
    let f32 = f32_dir();
    for (extra, phrase) in [
        (&["--to", "awq", "--type", "int8"][..], "int4 only"),
        (
            &["--to", "gptq", "--type", "nf4"][..],
            "int2, int3, int4 or int8",
        ),
        (
            &["--to", "bitsandbytes", "--type", "int4"][..],
            "nf4, fp4 or int8",
        ),
        (&["--to", "awq", "--sym"][..], "asymmetric"),
        (&["--to", "gptq", "--group-size", "100"][..], "100"),
        (&["--to", "gguf", "--sym"][..], "apply to the quantized"),
    ] {
        let mut a = vec!["export", s(&f32)];
        a.extend_from_slice(extra);
        a.extend_from_slice(&["-o", s(&out)]);
        let o = shrink(&a);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{extra:?} succeeded");
        assert!(!err.contains("panicked"), "{err}");
        assert!(err.contains(phrase), "{extra:?}: {phrase:?} not in {err}");
        assert!(!out.exists(), "{extra:?}: output written");
    }
    // An existing output directory is never replaced.
    std::fs::create_dir(&out).unwrap();
    let o = shrink(&["export", s(&f32), "--to", "gptq", "-o", s(&out)]);
    assert!(!o.status.success());
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0);
}

#[test]
fn gpt2_conv1d_weights_convert_losslessly() {
    // GPT-2 stores its Conv1D weights [in, out]; quantized layouts hold them [out, in].
    let tmp = tempfile::tempdir().unwrap();
    let d = |n: &str| tmp.path().join(n);
    let gpt2 = fixture("tiny-gpt2");
    export(&gpt2, "gptq", &["--group-size", "32"], &d("gptq"));
    let r = export(&d("gptq"), "awq", &[], &d("awq"));
    assert_eq!(r["grid_from"], "input");
    assert_eq!(r["requantized_tensors"], 0);
    export(&d("awq"), "gptq", &[], &d("gptq2"));
    assert!(weights(&d("gptq")) == weights(&d("gptq2")));
}

/// Logits of `model` on a fixed sequence.
fn logits(model: &Path) -> Vec<f32> {
    let ckpt = shrink_io::Checkpoint::open(model).unwrap();
    let m = shrink_models::Model::load(&ckpt).unwrap();
    let ids: Vec<u32> = (0..24).map(|i| (i * 37 % 250) as u32).collect();
    m.forward(&ids, None)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn a_calibrated_awq_checkpoint_exports_to_the_same_model() {
    let tmp = tempfile::tempdir().unwrap();
    let d = |n: &str| tmp.path().join(n);
    let model = tiny_llama_with_tokenizer(tmp.path());
    let calib = calib_text(tmp.path(), 400);
    ok(&shrink(&[
        "quantize",
        s(&model),
        "--method",
        "awq",
        "--group-size",
        "32",
        "--calib",
        s(&calib),
        "--calib-format",
        "raw",
        "--calib-samples",
        "4",
        "--calib-seqlen",
        "32",
        "--awq-search-samples",
        "2",
        "-o",
        s(&d("awq")),
    ]));
    let base = logits(&d("awq"));
    for (to, out) in [("compressed-tensors", "ct"), ("gptq", "gptq")] {
        let r = export(&d("awq"), to, &[], &d(out));
        assert_eq!(r["reused_tensors"], 14, "{to}");
        assert_eq!(r["requantized_tensors"], 0, "{to}");
        assert!(logits(&d(out)) == base, "AWQ → {to}: logits differ");
    }
    let r = export(&d("gptq"), "awq", &[], &d("awq2"));
    assert_eq!(r["reused_tensors"], 14);
    assert!(
        weights(&d("awq")) == weights(&d("awq2")),
        "AWQ → GPTQ → AWQ"
    );
}
