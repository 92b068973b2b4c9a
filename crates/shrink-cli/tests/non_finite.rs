//! A NaN or infinity in a weight stops every command that reads it, naming the tensor and the
//! element, before anything is written.

mod common;
use common::*;

use std::fs;
use std::path::Path;

/// tiny-llama copied into `dir` with `value` at element `at` of tensor `name`.
fn poisoned(dir: &Path, name: &str, at: usize, value: f32) -> std::path::PathBuf {
    let src = fixture("tiny-llama");
    let out = dir.join(format!("model-{}", name.replace('.', "-")));
    fs::create_dir(&out).unwrap();
    fs::write(
        out.join("config.json"),
        fs::read(src.join("config.json")).unwrap(),
    )
    .unwrap();
    let mut bytes = fs::read(src.join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let start = header[name]["data_offsets"][0].as_u64().unwrap() as usize + 8 + n + 4 * at;
    bytes[start..start + 4].copy_from_slice(&value.to_le_bytes());
    fs::write(out.join("model.safetensors"), bytes).unwrap();
    out
}

#[test]
fn a_non_finite_weight_is_named_by_every_command() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, at, value, shown) in [
        ("model.embed_tokens.weight", 70, f32::NAN, "NaN at [1, 6]"),
        ("model.norm.weight", 3, f32::INFINITY, "inf at [3]"),
        (
            "model.layers.0.self_attn.q_proj.weight",
            65,
            f32::NEG_INFINITY,
            "-inf at [1, 1]",
        ),
    ] {
        let m = poisoned(tmp.path(), name, at, value);
        let ms = m.to_str().unwrap();
        let out = tmp.path().join("out");
        let o = out.to_str().unwrap();
        let says = [name, shown, "not finite"];
        refused(
            &["convert", ms, "--dtype", "bf16", "-o", o],
            &says,
            Some(&out),
        );
        refused(
            &[
                "quantize",
                ms,
                "--method",
                "int",
                "--bits",
                "4",
                "--group-size",
                "32",
                "-o",
                o,
            ],
            &says,
            Some(&out),
        );
        refused(
            &[
                "bench",
                ms,
                "-p",
                "4",
                "-n",
                "2",
                "-r",
                "1",
                "--no-bandwidth",
            ],
            &says,
            None,
        );
    }
}

#[test]
fn a_nan_block_scale_in_a_gguf_is_named() {
    let src = gguf();
    let tmp = tempfile::tempdir().unwrap();
    let mut bytes = fs::read(&src).unwrap();
    // The first Q4_1 tensor's first block: its scale d (float16) made NaN.
    let g = shrink_io::GgufFile::open(&src).unwrap();
    let info = g
        .tensors
        .iter()
        .find(|t| t.ty == shrink_formats::ggml::GgmlType::Q4_1)
        .expect("a Q4_1 tensor")
        .clone();
    let at = (g.data_offset + info.offset) as usize;
    bytes[at..at + 2].copy_from_slice(&0x7E00u16.to_le_bytes());
    let bad = tmp.path().join("bad.gguf");
    fs::write(&bad, bytes).unwrap();
    refused(
        &[
            "bench",
            bad.to_str().unwrap(),
            "-p",
            "0",
            "-n",
            "1",
            "-r",
            "1",
            "--no-bandwidth",
        ],
        &[&info.name, "NaN at [0, 0]", "not finite"],
        None,
    );
}

/// `model`'s tensor `name` with every element set to `value`, written back in place.
fn fill(model: &Path, name: &str, value: f32) {
    let file = model.join("model.safetensors");
    let mut bytes = fs::read(&file).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let [s, e] = [0, 1].map(|k| header[name]["data_offsets"][k].as_u64().unwrap() as usize + 8 + n);
    for c in bytes[s..e].chunks_exact_mut(4) {
        c.copy_from_slice(&value.to_le_bytes());
    }
    fs::write(file, bytes).unwrap();
}

#[test]
fn a_value_float16_cannot_hold_is_not_written_as_infinity() {
    let tmp = tempfile::tempdir().unwrap();
    let m = poisoned(
        tmp.path(),
        "model.layers.0.self_attn.q_proj.weight",
        5 * 64 + 3,
        1e6,
    );
    let out = tmp.path().join("f16");
    refused(
        &[
            "convert",
            m.to_str().unwrap(),
            "--dtype",
            "f16",
            "-o",
            out.to_str().unwrap(),
        ],
        &[
            out.to_str().unwrap(),
            "model.layers.0.self_attn.q_proj.weight",
            "an infinity at [5, 3]",
            "65504",
            "nothing was written",
        ],
        Some(&out),
    );
    assert!(
        !String::from_utf8_lossy(&shrink(&["inspect", out.to_str().unwrap()]).stderr).is_empty()
    );
}

#[test]
fn activations_that_overflow_in_a_layer_stop_calibration_naming_it() {
    // Finite weights whose products overflow: layer 1's MLP sees inputs of ~1e30 (its norm's
    // weight), its gate × up overflows float32, and every later statistic would be NaN.
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_llama_with_tokenizer(tmp.path());
    fill(
        &model,
        "model.layers.1.post_attention_layernorm.weight",
        1e30,
    );
    let calib = calib_text(tmp.path(), 3000);
    let m = model.to_str().unwrap();
    let c = calib.to_str().unwrap();
    let cal = raw_calib(c);
    for (i, run) in [
        &["quantize", m, "--method", "gptq", "--group-size", "32"][..],
        &["prune", m, "--method", "wanda", "--sparsity", "0.5"],
        &["imatrix", m],
    ]
    .into_iter()
    .enumerate()
    {
        let out = tmp.path().join(format!("out{i}"));
        let args = [run, &cal, &["-o", out.to_str().unwrap()]].concat();
        let r = shrink(&args);
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(!r.status.success(), "{args:?} succeeded");
        assert!(!out.exists() && !err.contains("panicked"), "{err}");
        // Named where it appears: the layer (or its linear), and what is not finite.
        assert!(
            err.contains("layer 1") || err.contains("layers.1."),
            "{args:?}: {err}"
        );
        assert!(
            err.contains("inf") || err.contains("NaN") || err.contains("non-finite"),
            "{args:?}: {err}"
        );
    }
}
