//! `shrink export MODEL --to gguf --type ...`: llama.cpp GGUF files from HF Llama directories.
//!
//! The oracle is the real SmolLM2 GGUF (made by llama.cpp's converter and quantizer): shrink
//! converts it to an HF f32 directory, exports that back to GGUF, and the result must hold the
//! asset's metadata and, at F32, exactly the asset's dequantized tensors in llama.cpp's layout
//! (Q/K rows permuted). Tests skip (with a message) when the assets were not fetched.

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

use shrink_formats::ggml::GgmlType;
use shrink_io::{Checkpoint, GgufFile, GgufValue};
use shrink_methods::ggml_mix::{self, GgmlPreset, MixModel, MixOptions};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "shrink failed ({}):\n{}",
        out.status,
        text(&out.stderr)
    );
}

/// The asset converted to an HF f32 directory, once per test binary (shared by the tests).
fn hf_f32(src: &Path) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("export-smollm2-f32");
        let _ = std::fs::remove_dir_all(&d);
        ok(&shrink(&[
            "convert",
            src.to_str().unwrap(),
            "--dtype",
            "f32",
            "--no-check",
            "-o",
            d.to_str().unwrap(),
        ]));
        d
    })
    .clone()
}

/// `shrink export MODEL --type TY -o OUT --json`; the JSON report.
fn export(model: &Path, ty: &str, out: &Path) -> serde_json::Value {
    let o = shrink(&[
        "export",
        model.to_str().unwrap(),
        "--to",
        "gguf",
        "--type",
        ty,
        "-o",
        out.to_str().unwrap(),
        "--json",
    ]);
    ok(&o);
    serde_json::from_slice(&o.stdout).expect("JSON report")
}

fn ppl(model: &Path) -> f64 {
    let o = shrink(&[
        "eval",
        model.to_str().unwrap(),
        "--text",
        asset("lee_background.cor").to_str().unwrap(),
        "--max-windows",
        "1",
        "--json",
    ]);
    ok(&o);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["ppl"].as_f64().expect("ppl in the report")
}

#[test]
fn f32_export_is_the_asset_dequantized_with_its_metadata() {
    let Some(src_path) = real_model() else { return };
    let hf = hf_f32(&src_path);
    let tmp = tempfile::tempdir().unwrap();
    let out_path = tmp.path().join("f32.gguf");
    let report = export(&hf, "f32", &out_path);
    assert_eq!(report["file_type"], 0);
    assert_eq!(report["tokenizer_pre"]["name"], "smollm");
    let src = GgufFile::open(&src_path).unwrap();
    let out = GgufFile::open(&out_path).unwrap();

    // Tensors: the converter's order, F32, bit for bit the asset's values.
    let names = |g: &GgufFile| g.tensors.iter().map(|t| t.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&out), names(&src));
    for (a, b) in src.tensors.iter().zip(&out.tensors) {
        assert_eq!(a.ne, b.ne, "{}", a.name);
        assert_eq!(b.ty, GgmlType::F32, "{}", a.name);
        let (x, y) = (src.read_f32(a).unwrap(), out.read_f32(b).unwrap());
        assert!(
            x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()),
            "{}: values differ",
            a.name
        );
    }

    // Metadata: the asset's, key for key and in its order, but the file type (the model-card
    // keys travel through the converted directory's README.md front matter).
    let keys = |g: &GgufFile| g.metadata.keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&out), keys(&src));
    for (k, v) in &src.metadata {
        match k.as_str() {
            "general.file_type" => assert_eq!(out.get(k), Some(&GgufValue::U32(0))),
            _ => assert_eq!(out.get(k), Some(v), "metadata {k}"),
        }
    }
    assert!(out.get("general.name").is_some());
}

#[test]
fn hf_to_gguf_to_hf_is_lossless() {
    let Some(src_path) = real_model() else { return };
    let hf = hf_f32(&src_path);
    let tmp = tempfile::tempdir().unwrap();
    let g = tmp.path().join("f32.gguf");
    export(&hf, "f32", &g);
    let back = tmp.path().join("back");
    ok(&shrink(&[
        "export",
        g.to_str().unwrap(),
        "--to",
        "hf",
        "--type",
        "f32",
        "-o",
        back.to_str().unwrap(),
    ]));
    let (a, b) = (
        Checkpoint::open(&hf).unwrap(),
        Checkpoint::open(&back).unwrap(),
    );
    let names = |c: &Checkpoint| {
        let mut v: Vec<String> = c.tensors().into_iter().map(|t| t.name).collect();
        v.sort();
        v
    };
    assert_eq!(names(&a), names(&b));
    for n in names(&a) {
        let ((x, sx), (y, sy)) = (a.read_f32(&n).unwrap(), b.read_f32(&n).unwrap());
        assert_eq!(sx, sy, "{n}");
        assert!(
            x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()),
            "{n}: values differ"
        );
    }
}

#[test]
fn f16_q8_0_and_q4_k_m_read_back() {
    let Some(src_path) = real_model() else { return };
    let hf = hf_f32(&src_path);
    let tmp = tempfile::tempdir().unwrap();
    let src = GgufFile::open(&src_path).unwrap();
    let model = MixModel {
        arch: "llama".into(),
        n_layer: 30,
        n_head: 9,
        n_head_kv: 3,
        n_expert: 0,
    };
    let tensors: Vec<(String, Vec<u64>)> = src
        .tensors
        .iter()
        .map(|t| (t.name.clone(), t.ne.clone()))
        .collect();
    for (ty, preset, file_type) in [
        ("f16", None, 1u32),
        ("q8_0", Some(GgmlPreset::Q8_0), 7),
        ("q4_k_m", Some(GgmlPreset::Q4_K_M), 15),
    ] {
        let p = tmp.path().join(format!("{ty}.gguf"));
        let report = export(&hf, ty, &p);
        let out = GgufFile::open(&p).unwrap();
        assert_eq!(
            out.get("general.file_type"),
            Some(&GgufValue::U32(file_type))
        );
        assert_eq!(out.tensors.len(), src.tensors.len());
        match preset {
            None => {
                for t in &out.tensors {
                    let want = if t.ne.len() == 1 {
                        GgmlType::F32
                    } else {
                        GgmlType::F16
                    };
                    assert_eq!(t.ty, want, "{}", t.name);
                    assert!(out.read_f32(t).unwrap().iter().all(|x| x.is_finite()));
                }
            }
            Some(preset) => {
                // llama-quantize's order and types.
                let choices =
                    ggml_mix::assign(preset, &model, &MixOptions::default(), &tensors).unwrap();
                for (t, c) in out.tensors.iter().zip(&choices) {
                    assert_eq!(t.name, c.name);
                    assert_eq!(t.ty, c.ty.unwrap_or(GgmlType::F32), "{}", t.name);
                    assert!(out.read_f32(t).unwrap().iter().all(|x| x.is_finite()));
                }
            }
        }
        // llama.cpp's own files of this model hold exactly these tensor bytes (peers.md).
        let bytes = report["tensor_bytes"].as_u64().unwrap();
        match ty {
            "q8_0" => assert_eq!(bytes, 143_025_408),
            "q4_k_m" => {
                assert_eq!(bytes, 103_668_480);
                assert!(!report["fallbacks"].as_array().unwrap().is_empty());
            }
            _ => {}
        }
    }
    // HF → Q4_K_M holds the tensor bytes of HF → F32 GGUF → `shrink quantize --method q4_k_m`.
    let f32 = tmp.path().join("f32.gguf");
    export(&hf, "f32", &f32);
    let requant = tmp.path().join("requant.gguf");
    ok(&shrink(&[
        "quantize",
        f32.to_str().unwrap(),
        "--method",
        "q4_k_m",
        "-o",
        requant.to_str().unwrap(),
        "--json",
    ]));
    same_tensors(&tmp.path().join("q4_k_m.gguf"), &requant);
    std::fs::remove_file(&f32).unwrap();

    // The F16 export's perplexity is the f32 model's, within 0.05%.
    let (base, f16) = (ppl(&hf), ppl(&tmp.path().join("f16.gguf")));
    assert!(
        ((f16 - base) / base).abs() < 5e-4,
        "f16 ppl {f16} vs f32 {base}"
    );
}

/// Same tensors (names, types, shapes and bytes), in any order.
fn same_tensors(a: &Path, b: &Path) {
    let (a, b) = (GgufFile::open(a).unwrap(), GgufFile::open(b).unwrap());
    assert_eq!(a.tensors.len(), b.tensors.len());
    for x in &a.tensors {
        let y = b
            .tensor(&x.name)
            .unwrap_or_else(|| panic!("{} missing", x.name));
        assert_eq!((x.ty, &x.ne), (y.ty, &y.ne), "{}", x.name);
        assert!(a.tensor_bytes(x) == b.tensor_bytes(y), "{}", x.name);
    }
}

#[test]
fn quantized_types_survive_a_round_trip_through_float() {
    let Some(src_path) = real_model() else { return };
    let hf = hf_f32(&src_path);
    let tmp = tempfile::tempdir().unwrap();
    // The asset is llama.cpp's Q4_1: its dequantized weights export to exactly its tensors.
    let q4_1 = tmp.path().join("q4_1.gguf");
    export(&hf, "q4_1", &q4_1);
    same_tensors(&q4_1, &src_path);
    // A model already quantized to a type, exported to that type again, is the same model:
    // from its GGUF (tensors of the target type are copied, as llama-quantize does), and, for
    // the legacy types, even from its dequantized HF directory (their rounding is idempotent;
    // llama.cpp's K-quant searches are not, so Q4_K_M is checked from the GGUF only).
    for ty in ["q8_0", "q4_0", "q4_k_m"] {
        let first = tmp.path().join(format!("{ty}.gguf"));
        export(&hf, ty, &first);
        let again = tmp.path().join(format!("{ty}-again.gguf"));
        export(&first, ty, &again);
        same_tensors(&first, &again);
        if ty == "q4_k_m" {
            continue;
        }
        let back = tmp.path().join(format!("{ty}-hf"));
        ok(&shrink(&[
            "export",
            first.to_str().unwrap(),
            "--to",
            "hf",
            "--type",
            "f32",
            "-o",
            back.to_str().unwrap(),
        ]));
        let via_hf = tmp.path().join(format!("{ty}-via-hf.gguf"));
        export(&back, ty, &via_hf);
        same_tensors(&first, &via_hf);
        std::fs::remove_dir_all(&back).unwrap();
    }
}

#[test]
fn gguf_input_is_retyped() {
    let Some(src_path) = real_model() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("f32.gguf");
    export(&src_path, "f32", &p);
    let (src, out) = (
        GgufFile::open(&src_path).unwrap(),
        GgufFile::open(&p).unwrap(),
    );
    for (a, b) in src.tensors.iter().zip(&out.tensors) {
        assert_eq!((a.name.as_str(), &a.ne), (b.name.as_str(), &b.ne));
        assert_eq!(b.ty, GgmlType::F32);
        assert_eq!(
            src.read_f32(a).unwrap(),
            out.read_f32(b).unwrap(),
            "{}",
            a.name
        );
    }
    for (k, v) in &src.metadata {
        if k != "general.file_type" {
            assert_eq!(out.get(k), Some(v), "{k}");
        }
    }
    assert_eq!(out.get("general.file_type"), Some(&GgufValue::U32(0)));
}

/// Assert a clean failure saying every phrase, with nothing written at `out`.
fn fails(args: &[&str], phrases: &[&str], out: Option<&Path>) {
    let o = shrink(args);
    let err = text(&o.stderr);
    assert!(!o.status.success(), "succeeded: {args:?}");
    assert!(!err.contains("panicked"), "{err}");
    for p in phrases {
        assert!(err.contains(p), "{args:?}: {p:?} not in {err}");
    }
    if let Some(out) = out {
        assert!(!out.exists(), "{} written", out.display());
    }
}

#[test]
fn bad_requests_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o.gguf");
    let o = out.to_str().unwrap();
    // BERT classifiers have no llama.cpp mapping (GPT-2, NeoX, Qwen2 and Mistral do:
    // tests/export_archs.rs).
    let bert = fixture("tiny-bert_cls");
    fails(
        &["export", bert.to_str().unwrap(), "--type", "f32", "-o", o],
        &["unknown architecture \"bert\""],
        Some(&out),
    );
    let llama = fixture("tiny-llama");
    if !llama.join("tokenizer.json").exists() {
        fails(
            &["export", llama.to_str().unwrap(), "--type", "f32", "-o", o],
            &["no tokenizer.json"],
            Some(&out),
        );
    }
    fails(
        &["export", llama.to_str().unwrap(), "--type", "q9_9", "-o", o],
        &["unknown --type \"q9_9\""],
        Some(&out),
    );
    std::fs::write(&out, b"old").unwrap();
    fails(
        &["export", llama.to_str().unwrap(), "--type", "f32", "-o", o],
        &["already exists"],
        None,
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"old");
    let Some(src) = real_model() else { return };
    // Output = input: refused, the input untouched.
    let copy = tmp.path().join("in.gguf");
    std::fs::copy(&src, &copy).unwrap();
    let before = std::fs::metadata(&copy).unwrap().len();
    let c = copy.to_str().unwrap();
    fails(
        &["export", c, "--type", "f16", "-o", c, "--overwrite"],
        &["same path as an input"],
        None,
    );
    fails(
        &["export", c, "--type", "f16", "-o", c],
        &["same path as an input"],
        None,
    );
    assert_eq!(std::fs::metadata(&copy).unwrap().len(), before);
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 2);
}

/// A quantized HF directory whose weights lie on a symmetric grid in groups of 32 or per row
/// (`int --sym`, `gptq --sym`) exports to Q4_0 / Q8_0 with that grid kept: each of its linears in the GGUF is
/// exactly the directory's weight, not rounded a second time.
#[test]
fn symmetric_groups_of_32_are_kept_exactly_in_q4_0_and_q8_0() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_llama_with_tokenizer(tmp.path());
    let calib = calib_text(tmp.path(), 3000);
    let (m, c) = (model.to_str().unwrap(), calib.to_str().unwrap());
    let int = |bits| {
        vec![
            "--method",
            "int",
            "--bits",
            bits,
            "--group-size",
            "32",
            "--sym",
        ]
    };
    let mut gptq = vec![
        "--method",
        "gptq",
        "--bits",
        "4",
        "--group-size",
        "32",
        "--sym",
    ];
    gptq.extend(["--calib", c, "--calib-format", "raw"]);
    gptq.extend(["--calib-samples", "4", "--calib-seqlen", "32"]);
    for (name, method, ty) in [
        ("int4", int("4"), "q4_0"),
        ("gptq4", gptq.clone(), "q4_0"),
        // One scale per row: groups of 32 sharing it.
        (
            "int4-channel",
            vec![
                "--method",
                "int",
                "--bits",
                "4",
                "--granularity",
                "channel",
                "--sym",
            ],
            "q4_0",
        ),
        ("int8", int("8"), "q8_0"),
    ] {
        let dir = tmp.path().join(name);
        let mut args = vec!["quantize", m, "-o", dir.to_str().unwrap()];
        args.extend(method);
        ok(&shrink(&args));
        let out = tmp.path().join(format!("{name}.gguf"));
        let r = export(&dir, ty, &out);
        let (kept, blocks) = (&r["blocks_on_grid"], &r["blocks_requantized"]);
        assert!(blocks.as_u64().unwrap() > 0, "{name}: {r}");
        assert_eq!(kept, blocks, "{name}: every block kept");
        assert!(r["warning"].is_null(), "{name}: {}", r["warning"]);
        let (hf, g) = (
            Checkpoint::open(&dir).unwrap(),
            GgufFile::open(&out).unwrap(),
        );
        let mut compared = 0;
        for l in 0..2 {
            // Tensors the converter stores unpermuted (Q and K rows are permuted).
            for (gg, h) in [
                ("ffn_gate", "mlp.gate_proj"),
                ("ffn_up", "mlp.up_proj"),
                ("ffn_down", "mlp.down_proj"),
                ("attn_v", "self_attn.v_proj"),
                ("attn_output", "self_attn.o_proj"),
            ] {
                let info = g.tensor(&format!("blk.{l}.{gg}.weight")).unwrap();
                assert_eq!(info.ty.name(), ty.to_uppercase(), "{name} {gg}");
                let (want, _) = hf
                    .read_f32(&format!("model.layers.{l}.{h}.weight"))
                    .unwrap();
                assert!(g.read_f32(info).unwrap() == want, "{name}: blk.{l}.{gg}");
                compared += 1;
            }
        }
        assert_eq!(compared, 10);
    }
    // To a type whose grid they do not lie on (Q4_1's min): rounded again, and the report says so.
    let r = export(
        &tmp.path().join("int4"),
        "q4_1",
        &tmp.path().join("q4_1.gguf"),
    );
    assert_eq!(r["blocks_on_grid"], 0);
    assert!(r["blocks_requantized"].as_u64().unwrap() > 0);
    let w = r["warning"].as_str().unwrap();
    assert!(w.contains("requantized") && w.contains("0 of"), "{w}");
}
