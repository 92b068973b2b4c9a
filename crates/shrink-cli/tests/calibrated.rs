//! `shrink quantize --method gptq | hqq` and `shrink imatrix` on the tiny Llama fixture: the
//! outputs load and run, what is stored is what the quantizer computed, GPTQ beats
//! round-to-nearest on the calibration activations, and bad requests write nothing.

mod common;
use common::*;

use shrink_io::Checkpoint;
use shrink_models::Model;

/// Mean squared difference of two models' logits on a fixed sequence.
fn logit_mse(a: &Model, b: &Model) -> f64 {
    let ids: Vec<u32> = "the model weights are quantized to four bits"
        .bytes()
        .map(u32::from)
        .collect();
    let x = a.forward(&ids, None).unwrap().flatten_all().unwrap();
    let y = b.forward(&ids, None).unwrap().flatten_all().unwrap();
    let x: Vec<f32> = x.to_vec1().unwrap();
    let y: Vec<f32> = y.to_vec1().unwrap();
    x.iter()
        .zip(&y)
        .map(|(a, b)| ((a - b) as f64).powi(2))
        .sum::<f64>()
        / x.len() as f64
}

#[test]
fn gptq_writes_the_hf_layout_and_beats_round_to_nearest() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_llama_with_tokenizer(tmp.path());
    let calib = calib_text(tmp.path(), 1500);
    let m = model.to_str().unwrap();
    let c = calib.to_str().unwrap();
    let base = Model::load(&Checkpoint::open(&model).unwrap()).unwrap();
    let calib_args = [
        "--calib",
        c,
        "--calib-format",
        "raw",
        "--calib-samples",
        "16",
        "--calib-seqlen",
        "64",
    ];
    let mut errs = Vec::new();
    for (name, extra) in [
        ("static", vec!["--act-order", "static"]),
        ("none", vec!["--act-order", "none", "--sym"]),
        ("group", vec!["--act-order", "group"]),
    ] {
        let out = tmp.path().join(format!("gptq-{name}"));
        let mut args = vec![
            "quantize",
            m,
            "--method",
            "gptq",
            "--bits",
            "3",
            "--group-size",
            "32",
            "--json",
            "-o",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(&calib_args);
        args.extend(extra.iter().copied());
        let rep = run(&args);
        let files = std::fs::metadata(out.join("model.safetensors"))
            .unwrap()
            .len();
        assert!(rep["model_bytes"].as_u64().unwrap() <= files);
        let cfg: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
        assert_eq!(cfg["quantization_config"]["quant_method"], "gptq");
        assert_eq!(cfg["quantization_config"]["desc_act"], name == "group");
        assert!(out.join("quantize_config.json").exists());
        let q = Model::load(&Checkpoint::open(&out).unwrap()).unwrap();
        errs.push(logit_mse(&base, &q));
    }
    // Round to nearest at the same bits and groups, for comparison.
    let rtn = tmp.path().join("rtn");
    run(&[
        "quantize",
        m,
        "--method",
        "int",
        "--bits",
        "3",
        "--group-size",
        "32",
        "--json",
        "-o",
        rtn.to_str().unwrap(),
    ]);
    let e_rtn = logit_mse(
        &base,
        &Model::load(&Checkpoint::open(&rtn).unwrap()).unwrap(),
    );
    assert!(
        errs[0] < e_rtn && errs[2] < e_rtn,
        "GPTQ logit MSE {errs:?} vs RTN {e_rtn}"
    );
}

#[test]
fn hqq_stores_what_it_quantized() {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixture("tiny-llama");
    for (bits, axis) in [("4", "1"), ("3", "1"), ("2", "0")] {
        let out = tmp.path().join(format!("hqq{bits}-{axis}"));
        run(&[
            "quantize",
            src.to_str().unwrap(),
            "--method",
            "hqq",
            "--bits",
            bits,
            "--group-size",
            "32",
            "--axis",
            axis,
            "--json",
            "-o",
            out.to_str().unwrap(),
        ]);
        let a = Checkpoint::open(&src).unwrap();
        let b = Checkpoint::open(&out).unwrap();
        let cfg = shrink_models::ModelConfig::from_checkpoint(&a).unwrap();
        let spec = shrink_formats::hqq_layout::HqqSpec::new(
            bits.parse().unwrap(),
            32,
            axis.parse().unwrap(),
        );
        for l in shrink_models::decoder_linears(&cfg) {
            let (w, _) = a.read_f32(&l.weight).unwrap();
            let opts = shrink_methods::hqq::HqqOptions {
                round_zero: bits == "4",
                ..Default::default()
            };
            let want = shrink_methods::hqq::quantize(&w, l.out_features, l.in_features, spec, opts)
                .unwrap()
                .dequantize();
            let (got, _) = b.read_f32(&l.weight).unwrap();
            assert!(
                want.iter()
                    .zip(&got)
                    .all(|(x, y)| x.to_bits() == y.to_bits()),
                "{} hqq{bits} axis {axis}",
                l.weight
            );
        }
        // And the quantized model runs.
        Model::load(&b).unwrap().forward(&[1, 2, 3], None).unwrap();
    }
}

#[test]
fn imatrix_collects_every_linear() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_llama_with_tokenizer(tmp.path());
    let calib = calib_text(tmp.path(), 600);
    let out = tmp.path().join("m.imatrix");
    let rep = run(&[
        "imatrix",
        model.to_str().unwrap(),
        "--calib",
        calib.to_str().unwrap(),
        "--calib-format",
        "raw",
        "--calib-seqlen",
        "64",
        "--json",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(rep["entries"], 14);
    let m = shrink_io::imatrix::Imatrix::read(&out).unwrap();
    let down = m.get("blk.1.ffn_down.weight").unwrap();
    assert_eq!(down.len(), 160);
    assert!(down.iter().all(|v| v.is_finite() && *v >= 0.0) && down.iter().any(|v| *v > 0.0));
    assert_eq!(m.get("blk.0.attn_q.weight"), m.get("blk.0.attn_k.weight"));
}

#[test]
fn bad_calibrated_requests_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_llama_with_tokenizer(tmp.path());
    let short = tmp.path().join("short.txt");
    std::fs::write(&short, "only a few words").unwrap();
    let long = calib_text(tmp.path(), 600);
    let m = model.to_str().unwrap();
    let out = tmp.path().join("out");
    let o = out.to_str().unwrap();
    let s = short.to_str().unwrap();
    let l = long.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--method", "gptq", "--calib", s, "--calib-format", "raw"],
            "fewer than one sample",
        ),
        (vec!["--method", "gptq"], "--calib"),
        (
            vec![
                "--method",
                "gptq",
                "--bits",
                "5",
                "--calib",
                l,
                "--calib-format",
                "raw",
            ],
            "2, 3, 4 or 8",
        ),
        (
            vec![
                "--method",
                "gptq",
                "--group-size",
                "48",
                "--calib",
                l,
                "--calib-format",
                "raw",
            ],
            "does not divide",
        ),
        (vec!["--method", "gptq", "--calib", l], "300 documents"),
        (vec!["--method", "hqq", "--bits", "5"], "5-bit"),
        (vec!["--method", "hqq", "--group-size", "48"], "48"),
    ];
    for (extra, want) in cases {
        let mut args = vec!["quantize", m, "-o", o];
        if !extra.contains(&"--group-size") {
            args.extend(["--group-size", "32"]);
        }
        args.extend(extra.iter().copied());
        let r = shrink(&args);
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(!r.status.success(), "{extra:?} should fail");
        assert!(err.contains(want), "{extra:?}: {err}");
        assert!(!out.exists(), "{extra:?} left {o}");
    }
}
