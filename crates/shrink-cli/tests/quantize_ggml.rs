//! `shrink quantize --method q4_k_m|q8_0|...`: GGUF outputs as llama-quantize makes them.
//!
//! On the real SmolLM2 GGUF: the per-tensor types are llama.cpp's assignment, every tensor's
//! bytes are `ggml::quantize` of the source tensor (or the source bytes, where llama.cpp copies),
//! the metadata is the input's with the file type updated, and `shrink eval` runs on the result.
//! Bad requests (unknown preset, an imatrix of another model, `-o` naming the input) write
//! nothing.

mod common;
use common::*;

use std::path::Path;

use shrink_formats::ggml::{self, GgmlType};
use shrink_io::imatrix::Imatrix;
use shrink_io::{GgufFile, GgufValue};
use shrink_methods::ggml_mix::{self, GgmlPreset, MixModel, MixOptions};

/// Run `shrink quantize SRC --method METHOD -o OUT --json` plus `extra`; the JSON report.
fn quantize(src: &Path, method: &str, out: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "quantize",
        src.to_str().unwrap(),
        "--method",
        method,
        "-o",
        out.to_str().unwrap(),
        "--json",
        "--allow-requantize",
    ];
    args.extend_from_slice(extra);
    let r = shrink(&args);
    assert!(
        r.status.success(),
        "{method}: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    serde_json::from_slice(&r.stdout).expect("JSON report")
}

fn mix_model(g: &GgufFile) -> MixModel {
    MixModel {
        arch: "llama".into(),
        n_layer: g.require_u64("llama.block_count").unwrap() as usize,
        n_head: g.require_u64("llama.attention.head_count").unwrap() as usize,
        n_head_kv: g.require_u64("llama.attention.head_count_kv").unwrap() as usize,
        n_expert: 0,
    }
}

/// Check `out` against llama.cpp's recipe applied to `src`: order, types, bytes, metadata.
/// `importance` gives the imatrix used, if any.
fn check_output(src: &GgufFile, out: &GgufFile, preset: GgmlPreset, importance: Option<&Imatrix>) {
    let tensors: Vec<(String, Vec<u64>)> = src
        .tensors
        .iter()
        .map(|t| (t.name.clone(), t.ne.clone()))
        .collect();
    let opts = MixOptions {
        has_imatrix: importance.is_some(),
        ..Default::default()
    };
    let choices = ggml_mix::assign(preset, &mix_model(src), &opts, &tensors).unwrap();
    assert_eq!(out.tensors.len(), choices.len());
    for (t, c) in out.tensors.iter().zip(&choices) {
        // llama.cpp's order, llama.cpp's type.
        assert_eq!(t.name, c.name);
        assert_eq!(t.ne, c.ne, "{}", t.name);
        let s = src.tensor(&t.name).unwrap();
        let want_ty = c.ty.unwrap_or(s.ty);
        assert_eq!(t.ty, want_ty, "{}", t.name);
        let got = out.tensor_bytes(t);
        if want_ty == s.ty {
            // Not quantized, or already of its type: copied as stored, as llama.cpp does.
            assert!(got == src.tensor_bytes(s), "{}: not a copy", t.name);
            continue;
        }
        let x = src.read_f32(s).unwrap();
        let mut want = vec![0u8; got.len()];
        match importance.and_then(|m| m.get(&t.name)) {
            Some(w) => {
                ggml::quantize_with_importance(want_ty, &x, t.ne[0] as usize, w, &mut want).unwrap()
            }
            None => ggml::quantize(want_ty, &x, &mut want).unwrap(),
        }
        assert!(
            got == &want[..],
            "{} ({}) differs from ggml::quantize",
            t.name,
            t.ty
        );
    }
    // Metadata: the input's, with llama-quantize's two updates.
    for (k, v) in &src.metadata {
        match k.as_str() {
            "general.file_type" => {
                assert_eq!(out.get(k), Some(&GgufValue::U32(preset.ftype())))
            }
            "general.quantization_version" => assert_eq!(out.get(k), Some(&GgufValue::U32(2))),
            _ => assert_eq!(out.get(k), Some(v), "metadata {k}"),
        }
    }
}

#[test]
fn q4_k_m_and_q8_0_on_smollm2() {
    let Some(src_path) = real_model() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let src = GgufFile::open(&src_path).unwrap();
    for (method, preset, bytes) in [
        ("q4_k_m", GgmlPreset::Q4_K_M, 103_668_480u64),
        ("q8_0", GgmlPreset::Q8_0, 143_025_408),
    ] {
        let out_path = tmp.path().join(format!("{method}.gguf"));
        let report = quantize(&src_path, method, &out_path, &[]);
        let out = GgufFile::open(&out_path).unwrap();
        check_output(&src, &out, preset, None);
        // llama.cpp's own files of this model hold exactly these tensor bytes (peers.md).
        assert_eq!(report["tensor_bytes"].as_u64().unwrap(), bytes, "{method}");
        let elements: u64 = out.tensors.iter().map(|t| t.elements()).sum();
        let bpw = report["bits_per_weight"].as_f64().unwrap();
        assert!((bpw - bytes as f64 * 8.0 / elements as f64).abs() < 1e-12);
        assert_eq!(
            report["file_bytes"].as_u64().unwrap(),
            std::fs::metadata(&out_path).unwrap().len()
        );
        if preset == GgmlPreset::Q4_K_M {
            // The rules, spelled out: use_more_bits layers get Q6_K (attn_v: → Q8_0 by the
            // 576-wide fallback), the others Q4_K (attn_v: → Q5_0).
            let ty = |n: &str| out.tensor(n).unwrap().ty;
            assert_eq!(ty("blk.0.attn_v.weight"), GgmlType::Q8_0);
            assert_eq!(ty("blk.3.attn_v.weight"), GgmlType::Q5_0);
            assert_eq!(ty("blk.5.attn_v.weight"), GgmlType::Q8_0);
            assert_eq!(ty("blk.0.ffn_down.weight"), GgmlType::Q6_K);
            assert_eq!(ty("blk.3.ffn_down.weight"), GgmlType::Q4_K);
            assert_eq!(ty("blk.29.ffn_down.weight"), GgmlType::Q6_K);
            assert_eq!(ty("blk.7.ffn_up.weight"), GgmlType::Q5_0);
            assert_eq!(ty("token_embd.weight"), GgmlType::Q8_0);
            assert_eq!(ty("output_norm.weight"), GgmlType::F32);
            let fb = report["fallbacks"].as_array().unwrap();
            assert!(fb.iter().any(|f| f["cols"] == 576
                && f["wanted"] == "Q4_K"
                && f["got"] == "Q5_0"
                && f["tensors"] == 166));
        }
        // shrink eval reads the result.
        let r = shrink(&[
            "eval",
            out_path.to_str().unwrap(),
            "--text",
            asset("lee_background.cor").to_str().unwrap(),
            "--max-windows",
            "1",
            "--json",
        ]);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
        let ppl = v["ppl"].as_f64().unwrap();
        assert!(
            ppl.is_finite() && ppl > 1.0 && ppl < 100.0,
            "{method}: ppl {ppl}"
        );
    }
    gguf_py_check(&tmp.path().join("q4_k_m.gguf"));
}

/// With /work/refvenv's `gguf` package (llama.cpp's gguf-py) at hand: it reads the file, finds
/// the types shrink's reader finds, and its dequantizer agrees with shrink's on every tensor.
fn gguf_py_check(path: &Path) {
    let py = Path::new("/work/refvenv/bin/python");
    if !py.exists() {
        eprintln!("gguf-py check skipped: {} missing", py.display());
        return;
    }
    let script = r#"
import sys, json
import numpy as np
try:
    import gguf
    from gguf import quants
except ImportError:
    print(json.dumps({"skip": "no gguf package"})); sys.exit(0)
r = gguf.GGUFReader(sys.argv[1])
out = {"types": {}, "sums": {}, "file_type": int(r.fields["general.file_type"].contents())}
for t in r.tensors:
    out["types"][t.name] = t.tensor_type.name
    x = quants.dequantize(t.data, t.tensor_type).astype(np.float64)
    out["sums"][t.name] = [float(x.sum()), float(np.abs(x).sum())]
print(json.dumps(out))
"#;
    let r = std::process::Command::new(py)
        .args(["-c", script, path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    if v.get("skip").is_some() {
        eprintln!("gguf-py check skipped: {}", v["skip"]);
        return;
    }
    assert_eq!(v["file_type"], 15);
    let g = GgufFile::open(path).unwrap();
    for t in &g.tensors {
        assert_eq!(v["types"][&t.name], t.ty.name(), "{}", t.name);
        let x = g.read_f32(t).unwrap();
        let (s, a) = x.iter().fold((0f64, 0f64), |(s, a), &v| {
            (s + v as f64, a + (v as f64).abs())
        });
        let py = &v["sums"][&t.name];
        let (ps, pa) = (py[0].as_f64().unwrap(), py[1].as_f64().unwrap());
        assert!(
            (a - pa).abs() <= 1e-9 * pa.max(1.0),
            "{}: Σ|x| {a} vs gguf-py {pa}",
            t.name
        );
        assert!(
            (s - ps).abs() <= 1e-9 * pa.max(1.0),
            "{}: Σx {s} vs gguf-py {ps}",
            t.name
        );
    }
}

/// An importance matrix for a few SmolLM2 tensors: positive, uneven weights.
fn some_imatrix(names: &[(&str, usize)]) -> Imatrix {
    let mut m = Imatrix::new();
    for (k, (name, cols)) in names.iter().enumerate() {
        let v: Vec<f32> = (0..*cols)
            .map(|c| 0.05 + ((c * 37 + k * 11) % 101) as f32 / 10.0)
            .collect();
        m.entries.insert(name.to_string(), v);
        m.ncall.insert(name.to_string(), 1);
    }
    m.chunks = Some(4);
    m.datasets = vec!["calib.txt".into()];
    m
}

#[test]
fn imatrix_weighs_the_tensors_it_covers() {
    let Some(src_path) = real_model() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let im = some_imatrix(&[
        ("blk.0.attn_q.weight", 576),
        ("blk.0.ffn_down.weight", 1536),
        ("blk.3.attn_v.weight", 576),
    ]);
    let im_path = tmp.path().join("imatrix.dat");
    im.write(&im_path).unwrap();
    let im = Imatrix::read(&im_path).unwrap();
    let out_path = tmp.path().join("q4km-imat.gguf");
    let report = quantize(
        &src_path,
        "q4_k_m",
        &out_path,
        &["--imatrix", im_path.to_str().unwrap()],
    );
    assert_eq!(report["imatrix"]["used"], 3);
    let src = GgufFile::open(&src_path).unwrap();
    let out = GgufFile::open(&out_path).unwrap();
    // Provenance, as llama-quantize records it.
    assert_eq!(
        out.get("quantize.imatrix.entries_count"),
        Some(&GgufValue::U32(3))
    );
    assert_eq!(out.get_str("quantize.imatrix.dataset"), Some("calib.txt"));
    // Every tensor: quantize_with_importance where the imatrix has an entry, plain otherwise.
    let bare = |g: &GgufFile| {
        let mut m = g.metadata.clone();
        m.retain(|k, _| !k.starts_with("quantize.imatrix."));
        m
    };
    assert_eq!(bare(&out).len(), src.metadata.len());
    check_output(&src, &out, GgmlPreset::Q4_K_M, Some(&im));
    // The weights changed the result.
    let plain = tmp.path().join("q4km.gguf");
    quantize(&src_path, "q4_k_m", &plain, &[]);
    let plain = GgufFile::open(&plain).unwrap();
    let t = |g: &GgufFile, n: &str| g.tensor_bytes(g.tensor(n).unwrap()).to_vec();
    assert_ne!(
        t(&out, "blk.0.attn_q.weight"),
        t(&plain, "blk.0.attn_q.weight")
    );
    assert_eq!(
        t(&out, "blk.1.attn_q.weight"),
        t(&plain, "blk.1.attn_q.weight")
    );
}

/// Nothing but `keep` in `dir` (no output, no temporary file).
fn only(dir: &Path, keep: &[&str]) {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut keep: Vec<String> = keep.iter().map(|s| s.to_string()).collect();
    keep.sort();
    assert_eq!(names, keep);
}

#[test]
fn bad_requests_write_nothing() {
    let Some(src_path) = real_model() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.gguf");
    let run = |args: &[&str]| {
        let r = shrink(args);
        assert!(!r.status.success(), "{args:?} succeeded");
        let e = String::from_utf8_lossy(&r.stderr).into_owned();
        eprintln!("{e}");
        e
    };
    let src = src_path.to_str().unwrap();
    let o = out.to_str().unwrap();

    // Unknown preset.
    let e = run(&["quantize", src, "--method", "q4_k_x", "-o", o]);
    assert!(e.contains("q4_k_x"), "{e}");
    only(tmp.path(), &[]);

    // An imatrix of another model: ffn_down rows are 1536 wide, the entry has 576 values.
    let im = some_imatrix(&[("blk.0.attn_q.weight", 576), ("blk.2.ffn_down.weight", 576)]);
    let im_path = tmp.path().join("other.dat");
    im.write(&im_path).unwrap();
    let e = run(&[
        "quantize",
        src,
        "--method",
        "q4_k_m",
        "--imatrix",
        im_path.to_str().unwrap(),
        "-o",
        o,
    ]);
    assert!(
        e.contains("other.dat") && e.contains("blk.2.ffn_down.weight") && e.contains("1536"),
        "{e}"
    );
    only(tmp.path(), &["other.dat"]);

    // A damaged imatrix names the file.
    let bad = tmp.path().join("bad.dat");
    std::fs::write(&bad, [1u8, 0, 0, 0, 200, 0]).unwrap();
    let e = run(&[
        "quantize",
        src,
        "--method",
        "q8_0",
        "--imatrix",
        bad.to_str().unwrap(),
        "-o",
        o,
    ]);
    assert!(e.contains("bad.dat") && e.contains("imatrix"), "{e}");
    only(tmp.path(), &["bad.dat", "other.dat"]);

    // Output == input, also spelled differently; the input is untouched.
    let before = std::fs::metadata(&src_path).unwrap();
    let e = run(&["quantize", src, "--method", "q8_0", "-o", src]);
    assert!(e.contains("same path as an input"), "{e}");
    let dotted = src_path
        .parent()
        .unwrap()
        .join(".")
        .join(src_path.file_name().unwrap());
    let e = run(&[
        "quantize",
        src,
        "--method",
        "q8_0",
        "-o",
        dotted.to_str().unwrap(),
    ]);
    assert!(e.contains("same path as an input"), "{e}");
    let after = std::fs::metadata(&src_path).unwrap();
    assert_eq!(before.len(), after.len());
    assert_eq!(before.modified().unwrap(), after.modified().unwrap());

    // An existing output is not replaced.
    std::fs::write(&out, b"keep me").unwrap();
    let e = run(&["quantize", src, "--method", "q8_0", "-o", o]);
    assert!(e.contains("already exists"), "{e}");
    assert_eq!(std::fs::read(&out).unwrap(), b"keep me");
}

#[test]
fn hf_input_is_refused_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o.gguf");
    let src = fixture("tiny-llama");
    let r = shrink(&[
        "quantize",
        src.to_str().unwrap(),
        "--method",
        "q8_0",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(!r.status.success());
    let e = String::from_utf8_lossy(&r.stderr);
    assert!(
        e.contains("tokenizer") && e.contains("shrink export"),
        "{e}"
    );
    only(tmp.path(), &[]);
}
