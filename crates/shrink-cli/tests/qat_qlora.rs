//! `shrink qat` and `shrink qlora` end to end on tiny Llama models: QAT's output is closer to
//! the float model than rounding to the same grid and stored in the same layout; QLoRA writes a
//! PEFT adapter that `eval --adapter` runs (closer to the float model than the NF4 base alone)
//! and a merged NF4 model; Block-AP from `quantize` feeds `finetune`; bad input is refused with
//! nothing written.

mod common;
use common::*;

#[test]
fn qat_beats_rounding_to_the_same_grid() {
    let tmp = tempfile::tempdir().unwrap();
    let calib = calib_text(tmp.path(), 6000);
    let c = calib.to_str().unwrap();
    let text = std::fs::read(&calib).unwrap();
    let fx = fixture_with_tokenizer(tmp.path(), "tiny-llama");
    let f = fx.to_str().unwrap();
    let (qat, ptq) = (tmp.path().join("qat"), tmp.path().join("ptq"));
    let r = run(&[
        "qat",
        f,
        "--bits",
        "3",
        "--group-size",
        "16",
        "--text",
        c,
        "--text-format",
        "raw",
        "--steps",
        "30",
        "--seq-len",
        "32",
        "--batch",
        "2",
        "--lr",
        "5e-4",
        "--json",
        "-o",
        qat.to_str().unwrap(),
    ]);
    assert!(r["method"].as_str().unwrap().starts_with("qat-int3"), "{r}");
    assert_eq!(r["qat"]["summary"]["steps"], 30);
    assert!(r["qat"]["changed_from_ptq"].as_f64().unwrap() > 0.0);
    for name in [
        "train.jsonl",
        "loss.png",
        "config.json",
        "shrink-quantize.json",
    ] {
        assert!(qat.join(name).is_file(), "{name} missing");
    }
    run(&[
        "quantize",
        f,
        "--method",
        "int",
        "--bits",
        "3",
        "--group-size",
        "16",
        "--json",
        "-o",
        ptq.to_str().unwrap(),
    ]);
    // The same layout: tensor names, dtypes and shapes.
    let header = |d: &std::path::Path| {
        let shrink_io::Checkpoint::Hf(h) = shrink_io::Checkpoint::open(d).unwrap() else {
            unreachable!()
        };
        let mut v: Vec<_> = h
            .weights
            .tensors
            .iter()
            .map(|(n, t)| (n.clone(), t.dtype, t.shape.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    assert_eq!(header(&qat), header(&ptq));
    let base = outputs(&fx, &text);
    let vocab = base.len() / 120;
    let (e_ptq, e_qat) = (
        mean_kl(&base, &outputs(&ptq, &text), vocab),
        mean_kl(&base, &outputs(&qat, &text), vocab),
    );
    eprintln!("KL to the float model on held-out pieces: rounding {e_ptq:.4}, QAT {e_qat:.4}");
    assert!(e_qat < e_ptq, "{e_ptq} -> {e_qat}");

    // Refused, nothing written: a quantized input, a grid that is not 3-bit, existing output.
    let bad = tmp.path().join("bad");
    for (args, msg) in [
        (vec!["qat", ptq.to_str().unwrap()], "already quantized"),
        (vec!["qat", f, "--grid", "nf4", "--bits", "3"], "is 4-bit"),
        (vec!["qat", f, "--double-quant"], "--double-quant applies"),
    ] {
        let mut a = args.clone();
        a.extend([
            "--text",
            c,
            "--text-format",
            "raw",
            "--steps",
            "1",
            "--seq-len",
            "32",
        ]);
        a.extend(["-o", bad.to_str().unwrap()]);
        let o = shrink(&a);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(msg), "{args:?}: {err}");
        assert!(!bad.exists(), "{args:?} wrote {}", bad.display());
    }
    let o = shrink(&["qat", f, "--text", c, "-o", qat.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("already exists"));
}

#[test]
fn qlora_writes_an_adapter_eval_runs_and_a_merged_model() {
    let tmp = tempfile::tempdir().unwrap();
    let calib = calib_text(tmp.path(), 6000);
    let c = calib.to_str().unwrap();
    let fx = fixture_with_tokenizer(tmp.path(), "tiny-llama");
    set_positions(&fx, 512);
    let f = fx.to_str().unwrap();
    let nf4 = tmp.path().join("nf4");
    let n = nf4.to_str().unwrap();
    run(&[
        "quantize",
        f,
        "--method",
        "nf4",
        "--block-size",
        "32",
        "--json",
        "-o",
        n,
    ]);
    let (ad, merged) = (tmp.path().join("lora"), tmp.path().join("merged"));
    let r = run(&[
        "qlora",
        n,
        "--teacher",
        f,
        "--rank",
        "4",
        "--text",
        c,
        "--text-format",
        "raw",
        "--steps",
        "30",
        "--seq-len",
        "32",
        "--batch",
        "2",
        "--lr",
        "2e-3",
        "--merge",
        merged.to_str().unwrap(),
        "--json",
        "-o",
        ad.to_str().unwrap(),
    ]);
    let modules = r["adapted_modules"].as_u64().unwrap();
    assert!(modules > 0, "{r}");
    assert!(r["bits_per_weight_adapter"].as_f64().unwrap() > 0.0);
    for name in [
        "adapter_config.json",
        "adapter_model.safetensors",
        "train.jsonl",
        "qlora.json",
    ] {
        assert!(ad.join(name).is_file(), "{name} missing");
    }
    let a = shrink_io::peft::Adapter::read(&ad).unwrap();
    assert_eq!((a.r, a.modules.len() as u64), (4, modules));
    // KLD to the float model over the same windows: NF4 alone, NF4 + adapter, merged.
    let kld = |extra: &[&str]| -> f64 {
        let mut args = vec![
            "eval",
            "--text",
            c,
            "--protocol",
            "raw",
            "--base",
            f,
            "--json",
        ];
        args.extend(extra);
        run(&args)["kld"].as_f64().unwrap()
    };
    let (k0, k1, k2) = (
        kld(&[n]),
        kld(&[n, "--adapter", ad.to_str().unwrap()]),
        kld(&[merged.to_str().unwrap()]),
    );
    eprintln!("KLD to the float model: NF4 {k0:.4}, NF4 + adapter {k1:.4}, merged NF4 {k2:.4}");
    assert!(k1 < k0, "{k0} -> {k1}");
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(merged.join("shrink-quantize.json")).unwrap(),
    )
    .unwrap();
    assert!(report["method"].as_str().unwrap().starts_with("qlora-nf4"));

    // Refused, nothing written: a float base, an unknown target, --merge of a GPTQ base.
    let gptq = tmp.path().join("gptq");
    run(&[
        "quantize",
        f,
        "--method",
        "gptq",
        "--bits",
        "4",
        "--group-size",
        "16",
        "--calib",
        c,
        "--calib-format",
        "raw",
        "--calib-samples",
        "4",
        "--calib-seqlen",
        "32",
        "--json",
        "-o",
        gptq.to_str().unwrap(),
    ]);
    let bad = tmp.path().join("bad");
    let bad_merge = tmp.path().join("bad-merged");
    for (args, msg) in [
        (vec!["qlora", f], "no weight is stored quantized"),
        (vec!["qlora", n, "--targets", "c_attn"], "c_attn"),
        (
            vec![
                "qlora",
                gptq.to_str().unwrap(),
                "--merge",
                bad_merge.to_str().unwrap(),
            ],
            "requantizes bitsandbytes",
        ),
    ] {
        let mut a = args.clone();
        a.extend([
            "--text",
            c,
            "--text-format",
            "raw",
            "--steps",
            "1",
            "--seq-len",
            "32",
        ]);
        a.extend(["-o", bad.to_str().unwrap()]);
        let o = shrink(&a);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(msg), "{args:?}: {err}");
        assert!(
            !bad.exists() && !bad_merge.exists(),
            "{args:?} wrote output"
        );
    }
    let o = shrink(&["eval", n, "--adapter", f, "--text", c, "--protocol", "raw"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("adapter_config.json"));
}

#[test]
fn block_ap_then_e2e_qp_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let calib = calib_text(tmp.path(), 6000);
    let c = calib.to_str().unwrap();
    let fx = fixture_with_tokenizer(tmp.path(), "tiny-llama");
    let f = fx.to_str().unwrap();
    let bap = tmp.path().join("bap");
    let r = run(&[
        "quantize",
        f,
        "--method",
        "block-ap",
        "--bits",
        "2",
        "--group-size",
        "16",
        "--calib",
        c,
        "--calib-format",
        "raw",
        "--calib-samples",
        "8",
        "--calib-seqlen",
        "32",
        "--epochs",
        "2",
        "--quant-lr",
        "1e-3",
        "--weight-lr",
        "1e-4",
        "--json",
        "-o",
        bap.to_str().unwrap(),
    ]);
    assert_eq!(r["method"], "block-ap-w2g16-asym");
    assert_eq!(r["calibration"]["samples"], 8);
    // The run's time counts the training before the writing.
    let train = r["block_ap"]["train_seconds"].as_f64().unwrap();
    let write = r["read_and_quantize_seconds"].as_f64().unwrap();
    assert!(train > 0.0);
    assert!(r["seconds"].as_f64().unwrap() >= train + write, "{r}");
    assert!(r["quantize_seconds"].as_f64().unwrap() >= train, "{r}");
    for b in r["block_ap"]["blocks"].as_array().unwrap() {
        assert!(b["mse_trained"].as_f64() < b["mse_rtn"].as_f64(), "{b}");
    }
    // EfficientQAT's second phase on its output.
    let ft = tmp.path().join("ft");
    let r = run(&[
        "finetune",
        bap.to_str().unwrap(),
        "--teacher",
        f,
        "--text",
        c,
        "--text-format",
        "raw",
        "--steps",
        "3",
        "--seq-len",
        "32",
        "--json",
        "-o",
        ft.to_str().unwrap(),
    ]);
    assert_eq!(r["summary"]["steps"], 3);
    // Refused: symmetric, no calibration text.
    for (args, msg) in [
        (vec!["--sym", "--calib", c], "asymmetric"),
        (vec![], "--calib"),
    ] {
        let bad = tmp.path().join("bad");
        let mut a = vec![
            "quantize",
            f,
            "--method",
            "block-ap",
            "-o",
            bad.to_str().unwrap(),
        ];
        a.extend(args.iter().copied());
        let o = shrink(&a);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(msg), "{args:?}: {err}");
        assert!(!bad.exists());
    }
}
