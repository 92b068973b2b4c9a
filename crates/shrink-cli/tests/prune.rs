//! `shrink prune` on every architecture shrink runs (Llama family, GPT-2's Conv1D, GPT-NeoX's
//! fused QKV, BERT / DistilBERT): magnitude, Wanda and SparseGPT, unstructured and 2:4 — each
//! output loads back with exactly the zeros the report counts in the block linears, every other
//! tensor unchanged, and the calibrated methods closer to the dense model than magnitude
//! pruning. Then bad input, joint quantization, and quantizing a pruned checkpoint.

mod common;
use common::*;

use shrink_io::Checkpoint;
use shrink_models::Architecture;

/// The calibration flags of these tests: `c` read raw, `samples` × 48 tokens, `--json` if asked.
fn raw_calib<'a>(c: &'a str, samples: &'a str, json: bool) -> Vec<&'a str> {
    let mut v = vec![
        "--calib",
        c,
        "--calib-format",
        "raw",
        "--calib-samples",
        samples,
        "--calib-seqlen",
        "48",
    ];
    if json {
        v.push("--json");
    }
    v
}

/// The block linears of `dir`: (weight name, [out, in] values, out, in).
fn linears(dir: &std::path::Path) -> Vec<(String, Vec<f32>, usize, usize)> {
    let ckpt = Checkpoint::open(dir).unwrap();
    let arch = Architecture::from_checkpoint(&ckpt).unwrap();
    arch.block_linears()
        .iter()
        .map(|l| {
            let (v, _) = ckpt.read_f32(&l.weight).unwrap();
            let v = if l.conv1d {
                transpose(&v, l.in_features, l.out_features)
            } else {
                v
            };
            (l.weight.clone(), v, l.out_features, l.in_features)
        })
        .collect()
}

fn zeros(v: &[f32]) -> usize {
    v.iter().filter(|&&x| x == 0.0).count()
}

#[test]
fn every_method_prunes_every_architecture() {
    let tmp = tempfile::tempdir().unwrap();
    let calib = calib_text(tmp.path(), 3000);
    let c = calib.to_str().unwrap();
    let text = std::fs::read(&calib).unwrap();
    let cal = raw_calib(c, "16", true);
    for arch in ARCHS {
        let model = fixture_with_tokenizer(tmp.path(), arch);
        let m = model.to_str().unwrap();
        let base = outputs(&model, &text);
        let base_linears = linears(&model);
        let input = Checkpoint::open(&model).unwrap();
        for pattern in [None, Some("2:4")] {
            let mut errs = Vec::new();
            for method in ["magnitude", "wanda", "sparsegpt"] {
                let dir = tmp
                    .path()
                    .join(format!("{arch}-{method}-{}", pattern.unwrap_or("50")));
                let o = dir.to_str().unwrap();
                let mut args = vec!["prune", m, "-o", o, "--method", method];
                match pattern {
                    Some(p) => args.extend(["--pattern", p]),
                    None => args.extend(["--sparsity", "0.5"]),
                }
                args.extend(&cal);
                let report = run(&args);
                let what = format!("{arch} {method} {pattern:?}");
                assert_eq!(report["quantized_tensors"], base_linears.len(), "{what}");
                // The zeros the report counts are in the file, in the pattern asked for.
                let out = linears(&dir);
                let (mut z, mut n) = (0, 0);
                for ((name, v, rows, cols), (_, w, ..)) in out.iter().zip(&base_linears) {
                    z += zeros(v);
                    n += v.len();
                    match (pattern, method) {
                        (Some(_), _) => {
                            for g in v.chunks(4) {
                                assert!(zeros(g) >= 2, "{what}: {name} not 2:4");
                            }
                        }
                        // Magnitude: half of the tensor; Wanda: half of every row.
                        (None, "magnitude") => assert_eq!(zeros(v), rows * cols / 2, "{name}"),
                        (None, "wanda") => {
                            for r in v.chunks(*cols) {
                                assert_eq!(zeros(r), cols / 2, "{what}: {name}");
                            }
                        }
                        // SparseGPT: half of each block of columns, and one more (its `<=`).
                        _ => assert!(zeros(v) >= rows * cols / 2, "{what}: {name}"),
                    }
                    if method != "sparsegpt" {
                        // No update: the kept weights are the input's.
                        for (a, b) in v.iter().zip(w) {
                            assert!(*a == 0.0 || a == b, "{what}: {name}");
                        }
                    }
                }
                let s = report["sparsity"].as_f64().unwrap();
                assert!((s - z as f64 / n as f64).abs() < 1e-12, "{what}: {s}");
                // Every other tensor is the input's.
                let pruned = Checkpoint::open(&dir).unwrap();
                for t in input.tensors() {
                    if !base_linears.iter().any(|l| l.0 == t.name) {
                        assert_eq!(
                            input.read_f32(&t.name).unwrap(),
                            pruned.read_f32(&t.name).unwrap(),
                            "{what}: {}",
                            t.name
                        );
                    }
                }
                let e = rel_rmse(&base, &outputs(&dir, &text));
                eprintln!("{what:44} relative RMSE of outputs {e:.4}");
                assert!(e.is_finite() && e > 0.0, "{what}");
                errs.push(e);
            }
            // On text like the calibration's, SparseGPT's update beats both masks alone (on these
            // random weights Wanda's mask is not always better than magnitude's).
            assert!(
                errs[2] < errs[0] && errs[2] < errs[1],
                "{arch} {pattern:?}: magnitude, wanda, sparsegpt {errs:?}"
            );
        }
    }
}

#[test]
fn sparsegpt_with_gptaq_fits_the_dense_model_better() {
    let tmp = tempfile::tempdir().unwrap();
    let calib = calib_text(tmp.path(), 3000);
    let c = calib.to_str().unwrap();
    let text = std::fs::read(&calib).unwrap();
    let cal = raw_calib(c, "16", true);
    for arch in ARCHS {
        let model = fixture_with_tokenizer(tmp.path(), arch);
        let m = model.to_str().unwrap();
        let base = outputs(&model, &text);
        let mut errs = Vec::new();
        for gptaq in [false, true] {
            let dir = tmp.path().join(format!("{arch}-sg-{gptaq}"));
            let mut args = vec!["prune", m, "-o", dir.to_str().unwrap(), "--method"];
            args.extend(["sparsegpt", "--sparsity", "0.5"]);
            if gptaq {
                args.push("--gptaq");
            }
            args.extend(&cal);
            let r = run(&args);
            let name = r["method"].as_str().unwrap();
            assert_eq!(name.contains("gptaq"), gptaq, "{arch}: {name}");
            assert_eq!(r["gptaq_alpha"].as_f64(), gptaq.then_some(0.25), "{arch}");
            for (name, v, rows, cols) in linears(&dir) {
                assert!(zeros(&v) >= rows * cols / 2, "{arch} {gptaq}: {name}");
            }
            errs.push(rel_rmse(&base, &outputs(&dir, &text)));
        }
        eprintln!(
            "{arch:24} SparseGPT 50 %: relative RMSE {:.4}, with GPTAQ {:.4}",
            errs[0], errs[1]
        );
        // Fitting each layer to the dense model's output (rather than to its own drifted
        // inputs) brings the pruned model's outputs closer to the dense model's.
        assert!(
            errs[1] < errs[0],
            "{arch}: GPTAQ {} vs plain {}",
            errs[1],
            errs[0]
        );
    }
}

/// Run `args`, expecting a failure whose message holds every one of `needles`; `out` must not
/// exist afterwards.
fn refused(args: &[&str], out: &std::path::Path, needles: &[&str]) {
    let r = shrink(args);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success(), "{args:?} succeeded");
    for n in needles {
        assert!(err.contains(n), "{args:?}: {err:?} lacks {n:?}");
    }
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    assert!(!out.exists(), "{args:?} left {}", out.display());
    let parent = out.parent().unwrap();
    let stray: Vec<_> = std::fs::read_dir(parent)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("partial"))
        .collect();
    assert!(stray.is_empty(), "{args:?} left {stray:?}");
}

#[test]
fn bad_input_is_refused_and_nothing_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let calib = calib_text(tmp.path(), 3000);
    let c = calib.to_str().unwrap();
    let model = fixture_with_tokenizer(tmp.path(), "tiny-llama");
    let m = model.to_str().unwrap();
    let out = tmp.path().join("out");
    let o = out.to_str().unwrap();
    let base = ["prune", m, "-o", o, "--method"];
    let with = |extra: &[&'static str]| -> Vec<&str> { [&base[..], extra].concat() };
    for s in ["0", "1", "1.5", "-0.2", "NaN"] {
        refused(
            &with(&["magnitude", "--sparsity", s]),
            &out,
            &["--sparsity", "between 0 and 1"],
        );
    }
    for p in ["4:4", "5:4", "0:4", "2-4", "x:4"] {
        refused(&with(&["magnitude", "--pattern", p]), &out, &["N:M", p]);
    }
    // 3 does not divide the fixture's 64 input features: the weight is named.
    refused(
        &with(&["magnitude", "--pattern", "1:3"]),
        &out,
        &["model.layers.0.self_attn.q_proj.weight", "multiple of 3"],
    );
    refused(&with(&["wanda"]), &out, &["--calib"]);
    refused(
        &[
            &base[..],
            &[
                "wanda",
                "--bits",
                "4",
                "--calib",
                c,
                "--calib-format",
                "raw",
            ],
        ]
        .concat(),
        &out,
        &["sparsegpt"],
    );
    let cal = ["--calib", c, "--calib-format", "raw"];
    let g48 = ["sparsegpt", "--bits", "4", "--group-size", "48"];
    refused(
        &[&base[..], &g48, &cal].concat(),
        &out,
        &["--group-size 48"],
    );
    let owl = ["sparsegpt", "--pattern", "2:4", "--sparsity-profile", "owl"];
    refused(&[&base[..], &owl, &cal].concat(), &out, &["owl"]);
    // GPTAQ updates the kept weights: SparseGPT only, α in (0, 1].
    refused(
        &[&base[..], &["wanda", "--gptaq"], &cal].concat(),
        &out,
        &["--gptaq", "sparsegpt"],
    );
    let a2 = ["sparsegpt", "--gptaq", "--gptaq-alpha", "2"];
    refused(&[&base[..], &a2, &cal].concat(), &out, &["--gptaq-alpha 2"]);
    // Structured removal updates no weight: --gptaq is refused with it.
    let st = [
        "prune",
        m,
        "-o",
        o,
        "--structured",
        "layers",
        "--remove",
        "1",
        "--gptaq",
    ];
    refused(
        &[&st[..], &cal].concat(),
        &out,
        &["--structured", "--gptaq"],
    );
    // A quantized input: refused, or dequantized with a warning when asked.
    let q = tmp.path().join("int4");
    run(&[
        "quantize",
        m,
        "-o",
        q.to_str().unwrap(),
        "--method",
        "int",
        "--bits",
        "4",
        "--group-size",
        "16",
        "--json",
    ]);
    let qa = [
        "prune",
        q.to_str().unwrap(),
        "-o",
        o,
        "--method",
        "magnitude",
    ];
    refused(&qa, &out, &["stored quantized", "--dequantize"]);
    let mut args = qa.to_vec();
    args.extend(["--dequantize", "--json"]);
    let r = run(&args);
    assert!(r["warning"].as_str().unwrap().contains("dequantized"));
    assert_eq!(linears(&out).len(), linears(&model).len());
    // The output exists now: never overwritten.
    let before = std::fs::read(out.join("model.safetensors")).unwrap();
    let r = shrink(&with(&["magnitude"]));
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("exists"));
    assert_eq!(
        std::fs::read(out.join("model.safetensors")).unwrap(),
        before
    );
}

#[test]
fn quantizing_a_pruned_checkpoint_keeps_its_zeros() {
    let tmp = tempfile::tempdir().unwrap();
    let calib = calib_text(tmp.path(), 3000);
    let c = calib.to_str().unwrap();
    let cal = raw_calib(c, "16", true);
    let text = std::fs::read(&calib).unwrap();
    let model = fixture_with_tokenizer(tmp.path(), "tiny-llama");
    let pruned = tmp.path().join("pruned");
    let p = pruned.to_str().unwrap();
    let args = [
        &["prune", model.to_str().unwrap(), "-o", p, "--method"][..],
        &["sparsegpt", "--pattern", "2:4"],
        &cal,
    ]
    .concat();
    run(&args);
    let sparse = linears(&pruned);
    let e_sparse = rel_rmse(&outputs(&model, &text), &outputs(&pruned, &text));
    let methods: [&[&str]; 5] = [
        &["int", "--bits", "4", "--group-size", "16"],
        &["nf4"],
        &["hqq", "--bits", "4", "--group-size", "16"],
        &["gptq", "--group-size", "16"],
        &["awq", "--group-size", "16"],
    ];
    for m in methods {
        let q = tmp.path().join(format!("q-{}", m[0]));
        let mut args = vec!["quantize", p, "-o", q.to_str().unwrap(), "--method"];
        args.extend(m);
        args.extend(&cal);
        run(&args);
        let f = tmp.path().join(format!("f-{}", m[0]));
        let fs = f.to_str().unwrap();
        run(&[
            "export",
            q.to_str().unwrap(),
            "--to",
            "hf",
            "--type",
            "f32",
            "-o",
            fs,
            "--json",
        ]);
        for ((name, a, ..), (_, b, ..)) in sparse.iter().zip(&linears(&f)) {
            let lost = a
                .iter()
                .zip(b)
                .filter(|(x, y)| **x == 0.0 && **y != 0.0)
                .count();
            assert_eq!(lost, 0, "{}: {name} lost {lost} of its zeros", m[0]);
        }
        let e = rel_rmse(&outputs(&model, &text), &outputs(&f, &text));
        eprintln!(
            "2:4 then {:4}: outputs off by {e:.4} (2:4 alone {e_sparse:.4})",
            m[0]
        );
    }
}

#[test]
fn sparsegpt_quantizes_jointly_and_owl_keeps_the_mean() {
    let tmp = tempfile::tempdir().unwrap();
    let calib = calib_text(tmp.path(), 3000);
    let c = calib.to_str().unwrap();
    let cal = raw_calib(c, "16", true);
    let text = std::fs::read(&calib).unwrap();
    let model = fixture_with_tokenizer(tmp.path(), "tiny-qwen2");
    let m = model.to_str().unwrap();
    let base = outputs(&model, &text);
    // Joint: the HF gptq layout, whose dequantized weights are 2:4 sparse.
    let joint = tmp.path().join("joint");
    let j = joint.to_str().unwrap();
    let jargs = [
        "sparsegpt",
        "--pattern",
        "2:4",
        "--bits",
        "4",
        "--group-size",
        "16",
    ];
    let r = run(&[&["prune", m, "-o", j, "--method"][..], &jargs, &cal].concat());
    assert_eq!(r["method"], "sparsegpt-2:4+w4g16");
    assert!(r["bits_per_weight_quantized"].as_f64().unwrap() < 6.0);
    let ckpt = Checkpoint::open(&joint).unwrap();
    assert!(ckpt.tensors().iter().any(|t| t.name.ends_with(".qweight")));
    let f = tmp.path().join("joint-f32");
    run(&[
        "export",
        j,
        "--to",
        "hf",
        "--type",
        "f32",
        "-o",
        f.to_str().unwrap(),
        "--json",
    ]);
    for (name, v, ..) in linears(&f) {
        for g in v.chunks(4) {
            assert!(zeros(g) >= 2, "{name} not 2:4 after joint quantization");
        }
    }
    let e_joint = rel_rmse(&base, &outputs(&f, &text));
    assert!(e_joint.is_finite() && e_joint < 1.0, "{e_joint}");
    // OWL: per-layer targets around 0.5 with mean 0.5, the total close to it.
    let owl = tmp.path().join("owl");
    let oargs = [
        "sparsegpt",
        "--sparsity-profile",
        "owl",
        "--owl-lambda",
        "0.1",
    ];
    let r = run(&[
        &["prune", m, "-o", owl.to_str().unwrap(), "--method"][..],
        &oargs,
        &cal,
    ]
    .concat());
    let t: Vec<f64> = r["layer_sparsity_target"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let mean = t.iter().sum::<f64>() / t.len() as f64;
    assert!((mean - 0.5).abs() < 1e-9, "{t:?}");
    assert!(t.iter().all(|s| (s - 0.5).abs() <= 0.1 + 1e-9), "{t:?}");
    assert!(
        t.iter().any(|s| (s - 0.5).abs() > 1e-3),
        "OWL varied nothing: {t:?}"
    );
    let measured = r["sparsity"].as_f64().unwrap();
    assert!((measured - 0.5).abs() < 0.01, "{measured}");
}

#[test]
fn structured_pruning_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let calib = calib_text(tmp.path(), 3000);
    let c = calib.to_str().unwrap();
    let cal = raw_calib(c, "8", true);
    let model = fixture_with_tokenizer(tmp.path(), "tiny-llama");
    let m = model.to_str().unwrap();
    let cfg = |d: &std::path::Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(d.join("config.json")).unwrap()).unwrap()
    };
    let before = cfg(&model);
    for (what, extra, key, expect) in [
        ("layers", ["--remove", "1"], "num_hidden_layers", 1),
        ("neurons", ["--keep-ratio", "0.5"], "intermediate_size", 80),
        ("heads", ["--keep-ratio", "0.5"], "num_attention_heads", 2),
    ] {
        let out = tmp.path().join(what);
        let o = out.to_str().unwrap();
        let r = run(&[
            &["prune", m, "-o", o, "--structured", what][..],
            &extra,
            &cal,
        ]
        .concat());
        let after = cfg(&out);
        assert_eq!(after[key], expect, "{what}: {after}");
        assert_ne!(before[key], after[key]);
        assert!(r["params_after"].as_u64().unwrap() < r["params_before"].as_u64().unwrap());
        // It runs.
        outputs(&out, &std::fs::read(&calib).unwrap());
    }
    let out = tmp.path().join("bad");
    let o = out.to_str().unwrap();
    refused(
        &["prune", m, "-o", o, "--structured", "layers"],
        &out,
        &["--remove"],
    );
    refused(
        &[
            "prune",
            m,
            "-o",
            o,
            "--structured",
            "layers",
            "--remove",
            "2",
            "--calib",
            c,
        ],
        &out,
        &["2"],
    );
    let gpt2 = fixture_with_tokenizer(tmp.path(), "tiny-gpt2");
    let args = [
        "prune",
        gpt2.to_str().unwrap(),
        "-o",
        o,
        "--structured",
        "heads",
    ];
    refused(
        &[&args[..], &["--keep-ratio", "0.5"], &cal].concat(),
        &out,
        &["head"],
    );
    refused(&["prune", m, "-o", o], &out, &["--method"]);
}

#[test]
fn sparse_layouts_hold_exactly_the_dense_pruned_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let calib = calib_text(tmp.path(), 3000);
    let c = calib.to_str().unwrap();
    let cal = raw_calib(c, "8", false);
    for arch in ["tiny-llama", "tiny-gpt2", "tiny-bert_cls"] {
        let model = fixture_with_tokenizer(tmp.path(), arch);
        let m = model.to_str().unwrap();
        for (pattern, format) in [("0.5", "sparse-bitmask"), ("2:4", "sparse-24-bitmask")] {
            if arch == "tiny-gpt2" && pattern == "2:4" {
                // GPT-2's Conv1D stores [in, out]: its 2:4 groups run along the stored columns'
                // other axis, which compressed-tensors' 2:4 layout cannot hold.
                continue;
            }
            let pat = if pattern == "2:4" {
                "--pattern"
            } else {
                "--sparsity"
            };
            let run_to = |dir: &std::path::Path, extra: &[&str]| {
                let args = [
                    &[
                        "prune",
                        m,
                        "-o",
                        dir.to_str().unwrap(),
                        "--method",
                        "wanda",
                        pat,
                        pattern,
                    ][..],
                    &cal,
                    extra,
                    &["--json"],
                ]
                .concat();
                run(&args)
            };
            let dense = tmp.path().join(format!("{arch}-{format}-dense"));
            let sparse = tmp.path().join(format!("{arch}-{format}"));
            let rd = run_to(&dense, &[]);
            let rs = run_to(&sparse, &["--format", format]);
            let (a, b) = (
                Checkpoint::open(&dense).unwrap(),
                Checkpoint::open(&sparse).unwrap(),
            );
            let arch_d = Architecture::from_checkpoint(&a).unwrap();
            for (name, shape) in arch_d.weight_shapes() {
                assert_eq!(
                    a.read_f32(&name).unwrap(),
                    b.read_f32(&name).unwrap(),
                    "{arch} {format}: {name} {shape:?}"
                );
            }
            let cfg: serde_json::Value =
                serde_json::from_slice(&std::fs::read(sparse.join("config.json")).unwrap())
                    .unwrap();
            assert_eq!(
                cfg["quantization_config"]["sparsity_config"]["format"], format,
                "{arch}"
            );
            // The masks and indices are counted: fewer bytes than dense f32, more than half.
            let (bd, bs) = (
                rd["bits_per_weight_quantized"].as_f64().unwrap(),
                rs["bits_per_weight_quantized"].as_f64().unwrap(),
            );
            assert_eq!(bd, 32.0);
            assert!(bs > 16.0 && bs < 20.0, "{arch} {format}: {bs}");
            assert_eq!(
                rs["model_bytes"].as_u64().unwrap(),
                std::fs::metadata(sparse.join("model.safetensors"))
                    .unwrap()
                    .len()
                    - safetensors_header_len(&sparse),
                "{arch} {format}: the report counts the file's tensor bytes"
            );
        }
    }
    // 2:4's layout refuses another pattern before anything is written.
    let model = fixture_with_tokenizer(tmp.path(), "tiny-qwen2");
    let out = tmp.path().join("refused");
    let args = [
        "prune",
        model.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--method",
    ];
    let bad = [
        "magnitude",
        "--sparsity",
        "0.5",
        "--format",
        "sparse-24-bitmask",
    ];
    refused(&[&args[..], &bad].concat(), &out, &["2:4"]);
}

/// Bytes before the tensor data of `dir`'s model.safetensors (8 + the JSON header).
fn safetensors_header_len(dir: &std::path::Path) -> u64 {
    let b = std::fs::read(dir.join("model.safetensors")).unwrap();
    8 + u64::from_le_bytes(b[..8].try_into().unwrap())
}
