//! `shrink quantize --method awq`: on tiny-llama (given a byte-level tokenizer so a text can
//! calibrate it) the output is AutoAWQ's GEMM layout, loads, and tracks the float model more
//! closely than round-to-nearest on text like its calibration; impossible requests write
//! nothing. The algorithm's own checks (folded scales keep the function, AWQ beats RTN on
//! outlier channels, the quantizer's formulas) are unit tests in `shrink_methods::awq`.

mod common;
use common::*;

use std::path::Path;

use shrink_io::Checkpoint;

/// The fixture's reference input ids (two sequences of 24).
fn reference_ids() -> Vec<Vec<u32>> {
    let bytes = std::fs::read(fixture("tiny-llama").join("reference.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let ids = st.tensor("input_ids").unwrap();
    let t = ids.shape()[1];
    let v: Vec<u32> = ids
        .data()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32)
        .collect();
    v.chunks(t).map(|c| c.to_vec()).collect()
}

/// The logits of the model in `dir` for each sequence, concatenated.
fn logits(dir: &Path, ids: &[Vec<u32>]) -> Vec<f32> {
    let m = shrink_models::Model::load(&Checkpoint::open(dir).unwrap()).unwrap();
    ids.iter()
        .flat_map(|s| {
            m.forward(s, None)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        })
        .collect()
}

/// ‖a − b‖ / ‖b‖.
fn rel_rmse(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let n: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let d: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (n / d).sqrt()
}

/// `shrink quantize --method awq` of `model` at `bits` in groups of 32, calibrated on 8 × 64
/// tokens of `calib` (scale search on 4): success, stdout, stderr.
fn awq(model: &Path, calib: &Path, out: &Path, bits: &str) -> (bool, String, String) {
    let r = shrink(&[
        "quantize",
        model.to_str().unwrap(),
        "--method",
        "awq",
        "--bits",
        bits,
        "--group-size",
        "32",
        "--calib",
        calib.to_str().unwrap(),
        "--calib-format",
        "raw",
        "--calib-samples",
        "8",
        "--calib-seqlen",
        "64",
        "--awq-search-samples",
        "4",
        "-o",
        out.to_str().unwrap(),
        "--json",
    ]);
    (
        r.status.success(),
        String::from_utf8_lossy(&r.stdout).into_owned(),
        String::from_utf8_lossy(&r.stderr).into_owned(),
    )
}

fn run_ok(args: &[&str]) -> serde_json::Value {
    let r = shrink(args);
    assert!(
        r.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    serde_json::from_slice(&r.stdout).unwrap_or(serde_json::Value::Null)
}

#[test]
fn awq_on_tiny_llama_loads_and_tracks_the_float_model() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_llama_with_tokenizer(tmp.path());
    let calib = calib_text(tmp.path(), 800);
    let out = tmp.path().join("awq");
    let m = model.to_str().unwrap();
    let r = awq(&model, &calib, &out, "4");
    assert!(r.0, "{}", r.2);
    let report: serde_json::Value = serde_json::from_str(&r.1).unwrap();
    assert_eq!(report["method"], "awq-w4g32-asym");
    assert_eq!(report["quantized_tensors"], 14);
    // 4-bit codes, a 4-bit zero and a float16 scale per 32 weights.
    let bpw = report["bits_per_weight_quantized"].as_f64().unwrap();
    assert!(
        (bpw - (4.0 + 4.0 / 32.0 + 16.0 / 32.0)).abs() < 1e-9,
        "{bpw}"
    );
    let layers = report["awq_layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    // GQA (4 query heads, 2 kv heads): no v_proj → o_proj group.
    let ratios = layers[0]["ratios"].as_object().unwrap();
    let mut groups: Vec<&str> = ratios.keys().map(|k| k.as_str()).collect();
    groups.sort();
    assert_eq!(
        groups,
        ["input_layernorm", "mlp.up_proj", "post_attention_layernorm"]
    );
    let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    assert_eq!(
        report["model_bytes"].as_u64().unwrap() as usize,
        bytes.len() - 8 - header
    );

    // AutoAWQ's GEMM layout and config.
    let cfg = shrink_io::read_json(&out.join("config.json")).unwrap();
    let q = &cfg["quantization_config"];
    assert_eq!(q["quant_method"], "awq");
    assert_eq!(q["version"], "gemm");
    assert_eq!(q["bits"], 4);
    assert_eq!(q["group_size"], 32);
    assert_eq!(q["zero_point"], true);
    assert!(out.join("quant_config.json").is_file());
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    for (name, dtype, shape) in [
        ("q_proj.qweight", safetensors::Dtype::I32, vec![64, 8]),
        ("q_proj.qzeros", safetensors::Dtype::I32, vec![2, 8]),
        ("q_proj.scales", safetensors::Dtype::F16, vec![2, 64]),
        ("k_proj.qweight", safetensors::Dtype::I32, vec![64, 4]),
    ] {
        let t = st
            .tensor(&format!("model.layers.0.self_attn.{name}"))
            .unwrap();
        assert_eq!((t.dtype(), t.shape().to_vec()), (dtype, shape), "{name}");
    }
    assert!(st.tensor("model.layers.0.self_attn.q_proj.weight").is_err());
    // The scales were folded into the norms.
    let (a, _) = Checkpoint::open(&model)
        .unwrap()
        .read_f32("model.layers.0.input_layernorm.weight")
        .unwrap();
    let (b, _) = Checkpoint::open(&out)
        .unwrap()
        .read_f32("model.layers.0.input_layernorm.weight")
        .unwrap();
    assert_ne!(a, b);

    // The output loads with its linears quantized and stays close to the float model: on the
    // fixture's reference ids (random tokens, most never seen in calibration) and, closer than
    // round-to-nearest at the same grid, on text like the calibration's.
    let rtn = tmp.path().join("rtn");
    run_ok(&[
        "quantize",
        m,
        "--method",
        "int",
        "--bits",
        "4",
        "--group-size",
        "32",
        "-o",
        rtn.to_str().unwrap(),
    ]);
    let loaded = shrink_models::Model::load(&Checkpoint::open(&out).unwrap()).unwrap();
    if let shrink_models::Model::Llama(l) = &loaded {
        assert!(l.layers[0].q_proj.is_quantized());
        assert!(l.layers[1].down_proj.is_quantized());
    } else {
        panic!("tiny-llama loads as a Llama");
    }
    let ids = reference_ids();
    let e_ref = rel_rmse(&logits(&out, &ids), &logits(&model, &ids));
    assert!(
        e_ref < 0.4,
        "AWQ logits on the reference ids: relative error {e_ref}"
    );
    let tok = shrink_io::tokenizer::Tokenizer::from_file(&model.join("tokenizer.json")).unwrap();
    let text = "protect the salient channels of activations with scales that are quantized to \
                four bits and groups of the model weights";
    let ids = vec![tok.encode(text, false).unwrap()];
    let f = logits(&model, &ids);
    let (e_awq, e_rtn) = (
        rel_rmse(&logits(&out, &ids), &f),
        rel_rmse(&logits(&rtn, &ids), &f),
    );
    eprintln!("relative logit error on text: awq {e_awq:.4}, rtn {e_rtn:.4}; reference ids: awq {e_ref:.4}");
    assert!(
        e_awq < 0.8 * e_rtn,
        "AWQ ({e_awq}) should beat round-to-nearest ({e_rtn}) on text like its calibration"
    );
}

#[test]
fn awq_refuses_other_bits_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_llama_with_tokenizer(tmp.path());
    let calib = calib_text(tmp.path(), 800);
    let out = tmp.path().join("awq3");
    let (ok, _, err) = awq(&model, &calib, &out, "3");
    assert!(!ok);
    assert!(err.contains("4-bit"), "{err}");
    assert!(!out.exists());
}
