//! `shrink finetune` end to end on a tiny GPTQ model: it trains, writes the input's layout with
//! new scales and a report, the output runs and is closer to the float model; bad input is
//! refused with nothing written.

mod common;
use common::*;

#[test]
fn finetune_trains_the_scales_of_a_gptq_model() {
    let tmp = tempfile::tempdir().unwrap();
    let calib = calib_text(tmp.path(), 6000);
    let c = calib.to_str().unwrap();
    let text = std::fs::read(&calib).unwrap();
    let fx = fixture_with_tokenizer(tmp.path(), "tiny-llama");
    let f = fx.to_str().unwrap();
    let q = tmp.path().join("q");
    run(&[
        "quantize",
        f,
        "-o",
        q.to_str().unwrap(),
        "--method",
        "gptq",
        "--bits",
        "3",
        "--group-size",
        "16",
        "--calib",
        c,
        "--calib-format",
        "raw",
        "--calib-samples",
        "8",
        "--calib-seqlen",
        "48",
        "--json",
    ]);
    let out = tmp.path().join("ft");
    let r = run(&[
        "finetune",
        q.to_str().unwrap(),
        "--teacher",
        f,
        "--text",
        c,
        "--text-format",
        "raw",
        "--steps",
        "40",
        "--seq-len",
        "32",
        "--batch",
        "2",
        "--lr",
        "1e-3",
        "-o",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(r["summary"]["steps"], 40);
    assert!(r["scales_relative_change"].as_f64().unwrap() > 0.0);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("shrink-quantize.json")).unwrap())
            .unwrap();
    assert!(
        report["method"].as_str().unwrap().ends_with("+e2eqp"),
        "{report}"
    );
    for f in [
        "train.jsonl",
        "loss.png",
        "finetune.json",
        "config.json",
        "quantize_config.json",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let kl = |p: &[f32], q: &[f32]| mean_kl(p, q, 512);
    let (base, before, after) = (
        outputs(&fx, &text),
        outputs(&q, &text),
        outputs(&out, &text),
    );
    let (e0, e1) = (kl(&base, &before), kl(&base, &after));
    eprintln!("KL to the float model on held-out pieces: GPTQ {e0:.4}, fine-tuned {e1:.4}");
    assert!(e1 < e0, "{e0} -> {e1}");

    // Refused: a float input, an existing output.
    let bad = tmp.path().join("bad");
    let r = shrink(&[
        "finetune",
        f,
        "--teacher",
        f,
        "--text",
        c,
        "--text-format",
        "raw",
        "-o",
        bad.to_str().unwrap(),
    ]);
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("not quantized"));
    assert!(!bad.exists());
    let r = shrink(&[
        "finetune",
        q.to_str().unwrap(),
        "--teacher",
        f,
        "--text",
        c,
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&r.stderr).contains("already exists"));
}
