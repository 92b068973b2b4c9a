//! `shrink rotate` and `shrink quantize --rotate` on every architecture: the rotated model
//! computes what the input computed (logits, and an encoder's hidden states), the quantized
//! rotated model loads and records its rotation, the temporary rotated copy is gone, and
//! impossible requests are refused with nothing written.

mod common;
use common::*;

#[test]
fn rotated_models_compute_what_their_inputs_computed() {
    let tmp = tempfile::tempdir().unwrap();
    let text = std::fs::read(calib_text(tmp.path(), 3000)).unwrap();
    for arch in ARCHS {
        let fx = fixture(arch);
        let out = tmp.path().join(arch);
        let encoder = arch.contains("bert");
        let mut args = vec![
            "rotate",
            fx.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--json",
        ];
        if encoder {
            args.push("--no-residual");
        }
        let r = run(&args);
        let d = rel_rmse(&outputs(&fx, &text), &outputs(&out, &text));
        eprintln!(
            "{arch}: {} relative RMS difference of the outputs {d:.2e}",
            r["method"]
        );
        assert!(d < 1e-5, "{arch}: outputs moved by {d}");
        assert_eq!(
            r["method"],
            if encoder { "rotate-r2" } else { "rotate-r1r2" }
        );
    }
}

#[test]
fn quantize_rotate_writes_a_rotated_quantized_model_and_cleans_up() {
    let tmp = tempfile::tempdir().unwrap();
    let calib = calib_text(tmp.path(), 3000);
    let c = calib.to_str().unwrap();
    let text = std::fs::read(&calib).unwrap();
    let cases: [(&str, &[&str]); 4] = [
        (
            "tiny-llama",
            &["--method", "int", "--bits", "4", "--group-size", "16"],
        ),
        (
            "tiny-gpt2",
            &["--method", "hqq", "--bits", "4", "--group-size", "16"],
        ),
        (
            "tiny-qwen2",
            &[
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
                "8",
                "--calib-seqlen",
                "48",
            ],
        ),
        (
            "tiny-gpt_neox",
            &[
                "--method",
                "awq",
                "--bits",
                "4",
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
            ],
        ),
    ];
    for (arch, method) in cases {
        let fx = fixture_with_tokenizer(tmp.path(), arch);
        let out = tmp.path().join(format!("{arch}-q"));
        let mut args = vec![
            "quantize",
            fx.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--rotate",
            "--json",
        ];
        args.extend_from_slice(method);
        let r = shrink(&args);
        assert!(
            r.status.success(),
            "{arch}: {}",
            String::from_utf8_lossy(&r.stderr)
        );
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(err.contains("rotated"), "{arch}: {err}");
        let report: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.join("shrink-quantize.json")).unwrap(),
        )
        .unwrap();
        assert!(
            report["method"].as_str().unwrap().starts_with("rot-"),
            "{report}"
        );
        assert_eq!(report["input"], fx.to_str().unwrap());
        assert_eq!(report["rotation"]["method"], "rotate-r1r2");
        assert!(report["rotation"]["logits_max_abs_diff"].as_f64().unwrap() < 1e-4);
        // It runs, close to the float model (4-bit groups of 16 on random weights).
        let d = rel_rmse(&outputs(&fx, &text), &outputs(&out, &text));
        eprintln!(
            "{arch} {:?} rotated: output relative RMSE {d:.3}",
            report["method"]
        );
        assert!(d < 0.5, "{arch}: {d}");
        let left: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".rotated-"))
            .collect();
        assert!(
            left.is_empty(),
            "{arch}: temporary rotated copy left behind"
        );
    }
}

#[test]
fn impossible_rotations_are_refused_and_nothing_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let o = out.to_str().unwrap();
    let bert = fixture("tiny-bert_cls");
    let llama = fixture("tiny-llama");
    let cases: [(Vec<&str>, &str); 4] = [
        (vec!["rotate", bert.to_str().unwrap(), "-o", o], "post-LN"),
        (
            vec![
                "rotate",
                llama.to_str().unwrap(),
                "-o",
                o,
                "--no-residual",
                "--no-heads",
            ],
            "nothing to rotate",
        ),
        (
            vec![
                "quantize",
                llama.to_str().unwrap(),
                "-o",
                o,
                "--method",
                "int",
                "--no-heads",
            ],
            "add --rotate",
        ),
        (
            vec![
                "quantize",
                llama.to_str().unwrap(),
                "-o",
                o,
                "--method",
                "q4_k_m",
                "--rotate",
            ],
            "shrink rotate",
        ),
    ];
    for (args, want) in cases {
        let r = shrink(&args);
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(!r.status.success(), "{args:?} succeeded");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!out.exists(), "{args:?} wrote {o}");
        let left = std::fs::read_dir(tmp.path()).unwrap().count();
        assert_eq!(left, 0, "{args:?} left files behind");
    }
}

#[test]
fn gptaq_and_the_clipping_search_run_on_every_decoder_family() {
    let tmp = tempfile::tempdir().unwrap();
    let calib = calib_text(tmp.path(), 3000);
    let c = calib.to_str().unwrap();
    let text = std::fs::read(&calib).unwrap();
    for arch in ["tiny-llama", "tiny-gpt2", "tiny-gpt_neox", "tiny-bert_cls"] {
        let fx = fixture_with_tokenizer(tmp.path(), arch);
        let f = fx.to_str().unwrap();
        let mut errs = Vec::new();
        for extra in [&[][..], &["--gptaq", "--clip-search"][..]] {
            let out = tmp.path().join(format!("{arch}-{}", extra.len()));
            let mut args = vec![
                "quantize",
                f,
                "-o",
                out.to_str().unwrap(),
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
            ];
            args.extend_from_slice(extra);
            let r = run(&args);
            let want = if extra.is_empty() {
                "gptq-w3g16-asym-actorder-static"
            } else {
                "gptaq-w3g16-asym-actorder-static-clip"
            };
            assert_eq!(r["method"], want, "{arch}");
            errs.push(rel_rmse(&outputs(&fx, &text), &outputs(&out, &text)));
        }
        eprintln!(
            "{arch}: 3-bit output relative RMSE GPTQ {:.4}, GPTAQ + clip {:.4}",
            errs[0], errs[1]
        );
        assert!(errs[1] < 0.6 && errs[1].is_finite(), "{arch}: {errs:?}");
    }
    // The flags belong to GPTQ.
    let fx = fixture("tiny-llama");
    let r = shrink(&[
        "quantize",
        fx.to_str().unwrap(),
        "-o",
        tmp.path().join("x").to_str().unwrap(),
        "--method",
        "int",
        "--gptaq",
    ]);
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("--method gptq"));
}

#[test]
fn learned_rotation_computes_what_the_input_computed_and_quantizes_better() {
    let tmp = tempfile::tempdir().unwrap();
    let calib = calib_text(tmp.path(), 6000);
    let c = calib.to_str().unwrap();
    let text = std::fs::read(&calib).unwrap();
    let fx = fixture_with_tokenizer(tmp.path(), "tiny-llama");
    let f = fx.to_str().unwrap();
    let (random, learned) = (tmp.path().join("random"), tmp.path().join("learned"));
    run(&["rotate", f, "--json", "-o", random.to_str().unwrap()]);
    let r = run(&[
        "rotate",
        f,
        "--learn",
        "--bits",
        "3",
        "--group-size",
        "16",
        "--text",
        c,
        "--text-format",
        "raw",
        "--steps",
        "20",
        "--seq-len",
        "32",
        "--batch",
        "2",
        "--json",
        "-o",
        learned.to_str().unwrap(),
    ]);
    assert_eq!(r["method"], "rotate-learned-r1r2", "{r}");
    assert_eq!(r["learned"]["summary"]["steps"], 20, "{r}");
    assert_eq!(r["residual"]["matrix"], "given (learned)");
    assert_eq!(r["input"], f);
    for name in ["train.jsonl", "loss.png", "shrink-quantize.json"] {
        assert!(learned.join(name).is_file(), "{name} missing");
    }
    let state = tmp.path().join("learned.run/state.safetensors");
    assert!(
        !state.exists(),
        "the run's checkpoint is removed when it completes"
    );
    let hidden: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(hidden.is_empty(), "scratch left behind: {hidden:?}");
    // Exact in float.
    let d = rel_rmse(&outputs(&fx, &text), &outputs(&learned, &text));
    assert!(d < 1e-5, "outputs moved by {d}");
    // Rounded to the grid it was trained for, closer to the float model than the random
    // rotation rounded the same way.
    let err = |m: &std::path::Path, name: &str| {
        let q = tmp.path().join(name);
        run(&[
            "quantize",
            m.to_str().unwrap(),
            "--method",
            "int",
            "--bits",
            "3",
            "--group-size",
            "16",
            "--json",
            "-o",
            q.to_str().unwrap(),
        ]);
        rel_rmse(&outputs(&fx, &text), &outputs(&q, &text))
    };
    let (e_random, e_learned) = (err(&random, "q-random"), err(&learned, "q-learned"));
    eprintln!("int3 g16 output error: random rotation {e_random:.4}, learned {e_learned:.4}");
    assert!(e_learned < e_random, "{e_random} -> {e_learned}");
    // Refusals: --text without --learn, --learn without --text, a LayerNorm family.
    let out = tmp.path().join("never");
    let o = out.to_str().unwrap();
    let gpt2 = fixture("tiny-gpt2");
    for (args, want) in [
        (vec!["rotate", f, "--text", c, "-o", o], "add --learn"),
        (
            vec!["rotate", f, "--learn", "-o", o],
            "--text FILE is required",
        ),
        (
            vec![
                "rotate",
                gpt2.to_str().unwrap(),
                "--learn",
                "--text",
                c,
                "-o",
                o,
            ],
            "RMSNorm",
        ),
    ] {
        let r = shrink(&args);
        let e = String::from_utf8_lossy(&r.stderr);
        assert!(!r.status.success() && e.contains(want), "{args:?}: {e}");
        assert!(!out.exists(), "{args:?} wrote {o}");
    }
}
