//! `shrink auto`: on the tiny Llama (exported to GGUF) a mix within a bits/weight budget whose
//! written types are the plan's, the sensitivity cache reused by a second target, a KL bound,
//! and the refusals (unreachable or conflicting targets, unknown types, an HF input) that write
//! nothing.

mod common;

use std::path::Path;

use common::*;
use shrink_io::GgufFile;

fn ok(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "shrink failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The model at `dir` loads and generates (`shrink bench`, a few tokens).
fn runs(dir: &Path) {
    ok(&shrink(&[
        "bench",
        dir.to_str().unwrap(),
        "-p",
        "16",
        "-n",
        "4",
        "-r",
        "1",
    ]));
}

/// The HF checkpoint `hf` exported to a float32 GGUF at `out`.
fn f32_gguf(hf: &Path, out: &Path) -> std::path::PathBuf {
    let args = [
        "export",
        hf.to_str().unwrap(),
        "--to",
        "gguf",
        "--type",
        "f32",
        "-o",
    ];
    let mut args = args.to_vec();
    args.push(out.to_str().unwrap());
    ok(&shrink(&args));
    out.to_path_buf()
}

/// `shrink auto GGUF --calib ... EXTRA -o OUT --json` with the tiny-model calibration sizes.
fn auto(gguf: &Path, calib: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["auto", gguf.to_str().unwrap()];
    args.extend(raw_calib(calib.to_str().unwrap()));
    let out = out.to_str().unwrap();
    args.extend([
        "--probe-samples",
        "2",
        "--probe-seqlen",
        "32",
        "-o",
        out,
        "--json",
    ]);
    args.extend_from_slice(extra);
    shrink(&args)
}

#[test]
fn a_mix_within_the_budget_the_cache_and_the_refusals() {
    let tmp = tempfile::tempdir().unwrap();
    let hf = tiny_llama_with_tokenizer(tmp.path());
    let gguf = f32_gguf(&hf, &tmp.path().join("tiny.gguf"));
    let calib = calib_text(tmp.path(), 3000);
    let out_dir = tmp.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();

    // A budget between the smallest mix (4.5-bit types: 64- and 160-wide rows hold no K block)
    // and float16.
    let out = out_dir.join("mix.gguf");
    let png = out_dir.join("plan.png");
    let o = auto(
        &gguf,
        &calib,
        &out,
        &["--target-bpw", "7", "--plan-png", png.to_str().unwrap()],
    );
    ok(&o);
    assert!(std::fs::read(&png).unwrap().starts_with(b"\x89PNG"));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let bpw = r["bits_per_weight"].as_f64().unwrap();
    assert!(bpw <= 7.0 && bpw > 5.0, "{bpw}");
    assert_eq!(r["sensitivity_reused"], false);
    assert_eq!(r["file_type"], 1024);
    let (pred, meas) = (
        r["predicted_kl"].as_f64().unwrap(),
        r["measured_kl"].as_f64().unwrap(),
    );
    assert!(
        pred > 0.0 && meas > 0.0 && meas.is_finite(),
        "{pred} {meas}"
    );
    assert!(r["loss_bound"].as_f64().unwrap() <= pred);
    // The file holds the plan's types, and more than one of them.
    let g = GgufFile::open(&out).unwrap();
    let plan = r["plan"].as_array().unwrap();
    assert_eq!(plan.len(), 2 * 7 + 1, "every linear and the tied table");
    let mut kinds = std::collections::BTreeSet::new();
    for row in plan {
        let t = g.tensor(row["tensor"].as_str().unwrap()).unwrap();
        assert_eq!(t.ty.name(), row["type"].as_str().unwrap(), "{row}");
        assert_eq!(t.bytes, row["bytes"].as_u64().unwrap());
        kinds.insert(t.ty.name());
    }
    assert!(kinds.len() > 1, "a mix: {kinds:?}");
    let bytes: u64 = g.tensors.iter().map(|t| t.bytes).sum();
    let n: u64 = g.tensors.iter().map(|t| t.elements()).sum();
    assert!((bytes as f64 * 8.0 / n as f64 - bpw).abs() < 1e-9);

    // Another target reuses the measured sensitivities; a tighter budget loses more.
    let out2 = out_dir.join("mix2.gguf");
    let o = auto(&gguf, &calib, &out2, &["--target-bpw", "5"]);
    ok(&o);
    let r2: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r2["sensitivity_reused"], true);
    assert!(r2["bits_per_weight"].as_f64().unwrap() <= 5.0);
    assert!(r2["predicted_kl"].as_f64().unwrap() > pred);

    // A KL bound: the kept mix is measured within it, or the report says it is not.
    let out3 = out_dir.join("kld.gguf");
    let o = auto(
        &gguf,
        &calib,
        &out3,
        &["--max-kld", &format!("{}", meas / 2.0)],
    );
    ok(&o);
    let r3: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r3["sensitivity_reused"], true);
    let m3 = r3["measured_kl"].as_f64().unwrap();
    assert!(
        (m3 <= meas / 2.0 && r3["meets_target"] == true) || r3["warning"].is_string(),
        "{r3}"
    );
    assert!(!r3["tries"].as_array().unwrap().is_empty());

    // Refusals write nothing.
    let listing = |d: &Path| {
        let mut v: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        v.sort();
        v
    };
    let before = listing(&out_dir);
    let bad = out_dir.join("bad.gguf");
    let err = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();
    let o = auto(&gguf, &calib, &bad, &["--target-bpw", "3"]);
    assert!(!o.status.success());
    let e = err(&o);
    assert!(
        e.contains("--target-bpw 3") && e.contains("smallest is 4.") && e.contains("largest"),
        "{e}"
    );
    let o = auto(
        &gguf,
        &calib,
        &bad,
        &["--target-bpw", "6", "--max-kld", "0.1"],
    );
    assert!(!o.status.success());
    assert!(err(&o).contains("cannot be used with"), "{}", err(&o));
    let o = auto(&gguf, &calib, &bad, &[]);
    assert!(!o.status.success());
    let o = auto(
        &gguf,
        &calib,
        &bad,
        &["--target-bpw", "6", "--types", "q4_0,q9_9"],
    );
    assert!(err(&o).contains("q9_9 is not a ggml type"), "{}", err(&o));
    let o = auto(
        &gguf,
        &calib,
        &bad,
        &["--target-bpw", "6", "--types", "q4_0,q8_k"],
    );
    assert!(err(&o).contains("q8_k is not a ggml type"), "{}", err(&o));
    let o = auto(&gguf, &calib, &bad, &["--max-ppl-increase", "0"]);
    assert!(err(&o).contains("out of range"), "{}", err(&o));
    let o = auto(&hf, &calib, &bad, &["--target-bpw", "6"]);
    assert!(err(&o).contains("takes a GGUF input"), "{}", err(&o));
    let o = auto(&gguf, &calib, &out, &["--target-bpw", "8"]);
    assert!(err(&o).contains("exists"), "{}", err(&o));
    assert_eq!(listing(&out_dir), before);
}

/// GPT-2 (tied head, fused QKV) and GPT-NeoX (untied head) through the same measurement: every
/// linear and the table or head get a type, the file holds the plan, and the head of an untied
/// model is planned apart from its token table.
#[test]
fn gpt2_and_neox_mixes() {
    for (name, head) in [
        ("tiny-gpt2", None),
        ("tiny-gpt_neox", Some("output.weight")),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let hf = fixture_with_tokenizer(tmp.path(), name);
        let gguf = f32_gguf(&hf, &tmp.path().join("m.gguf"));
        let calib = calib_text(tmp.path(), 3000);
        let out = tmp.path().join("mix.gguf");
        let o = auto(&gguf, &calib, &out, &["--target-bpw", "8"]);
        ok(&o);
        let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert!(r["bits_per_weight"].as_f64().unwrap() <= 8.0, "{name}");
        assert!(r["measured_kl"].as_f64().unwrap() > 0.0, "{name}");
        let g = GgufFile::open(&out).unwrap();
        let plan = r["plan"].as_array().unwrap();
        let planned: Vec<&str> = plan.iter().map(|p| p["tensor"].as_str().unwrap()).collect();
        assert!(
            planned.contains(&"token_embd.weight"),
            "{name}: {planned:?}"
        );
        if let Some(h) = head {
            assert!(planned.contains(&h), "{name}: {planned:?}");
        }
        for row in plan {
            let t = g.tensor(row["tensor"].as_str().unwrap()).unwrap();
            assert_eq!(t.ty.name(), row["type"].as_str().unwrap(), "{name}: {row}");
            // Every planned tensor was probed.
            assert!(
                !row["probes"].as_array().unwrap().is_empty(),
                "{name}: {row}"
            );
        }

        // compressed-tensors from the HF directory (GPT-2's Conv1D weights transposed, the
        // untied head planned): every planned weight stored on its grid, the model runs.
        let ct = tmp.path().join("ct");
        let o = auto(
            &hf,
            &calib,
            &ct,
            &["--to", "compressed-tensors", "--target-bpw", "6"],
        );
        ok(&o);
        let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert!(
            r["bits_per_weight_model"].as_f64().unwrap() <= 6.0,
            "{name}"
        );
        let c = shrink_io::Checkpoint::open(&ct).unwrap();
        let shrink_io::Checkpoint::Hf(h) = &c else {
            panic!("a directory")
        };
        let plan = r["plan"].as_array().unwrap();
        let (table, untied) = match head {
            None => ("transformer.wte.weight", None),
            Some(_) => ("gpt_neox.embed_in.weight", Some("embed_out.weight")),
        };
        let planned: Vec<&str> = plan.iter().map(|p| p["tensor"].as_str().unwrap()).collect();
        assert!(planned.contains(&table), "{name}: {planned:?}");
        if let Some(u) = untied {
            assert!(planned.contains(&u), "{name}: {planned:?}");
        }
        for row in plan.iter().filter(|row| row["copied"] == false) {
            let w = row["tensor"].as_str().unwrap();
            let spec = shrink_methods::auto_ct::parse_grid(row["type"].as_str().unwrap()).unwrap();
            match h.quantized(w).unwrap() {
                Some(shrink_io::quantized::Quantized::Int(t)) => assert_eq!(t.spec, spec, "{w}"),
                _ => panic!("{name}: {w} not stored as integers"),
            }
        }
        runs(&ct);
    }
}

/// `--to compressed-tensors` on the tiny Llama's HF directory: a mix of integer grids within
/// the budget, the token table among the planned weights, the file holding each weight on the
/// plan's grid with the plan's bytes, one config group per grid, the model loading and
/// evaluating; a target under the smallest grid mix and an unknown grid refused.
#[test]
fn a_compressed_tensors_mix_of_integer_grids() {
    let tmp = tempfile::tempdir().unwrap();
    let hf = tiny_llama_with_tokenizer(tmp.path());
    let calib = calib_text(tmp.path(), 3000);
    let out_dir = tmp.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let out = out_dir.join("ct");
    let ct = ["--to", "compressed-tensors"];
    let o = auto(
        &hf,
        &calib,
        &out,
        &[&ct[..], &["--target-bpw", "5"]].concat(),
    );
    ok(&o);
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let bpw = r["bits_per_weight_model"].as_f64().unwrap();
    assert!(bpw <= 5.0 && bpw > 3.0, "{bpw}");
    let plan = r["plan"].as_array().unwrap();
    let names: Vec<&str> = plan.iter().map(|p| p["tensor"].as_str().unwrap()).collect();
    assert!(names.contains(&"model.embed_tokens.weight"), "{names:?}");
    assert_eq!(plan.len(), 2 * 7 + 1, "every linear and the tied table");

    let ckpt = shrink_io::Checkpoint::open(&out).unwrap();
    use shrink_io::quantized::Quantized;
    let shrink_io::Checkpoint::Hf(h) = &ckpt else {
        panic!("a directory")
    };
    let qcfg = h.quantization_config().unwrap();
    let groups = qcfg["config_groups"].as_object().unwrap();
    let mut grids = std::collections::BTreeSet::new();
    let mut planned_bytes = 0u64;
    for row in plan {
        let name = row["tensor"].as_str().unwrap();
        let ty = row["type"].as_str().unwrap();
        planned_bytes += row["bytes"].as_u64().unwrap();
        if row["copied"] == true {
            assert!(h.quantized(name).unwrap().is_none(), "{name} stays float16");
            continue;
        }
        grids.insert(ty.to_string());
        let spec = shrink_methods::auto_ct::parse_grid(ty).unwrap();
        let Some(Quantized::Int(t)) = h.quantized(name).unwrap() else {
            panic!("{name}: not stored as integers")
        };
        assert_eq!(t.spec, spec, "{name}");
        let module = name.strip_suffix(".weight").unwrap();
        let in_group = groups.values().any(|g| {
            g["targets"].as_array().unwrap().iter().any(|x| x == module)
                && g["weights"]["num_bits"] == spec.bits
        });
        assert!(in_group, "{name}: no config group of its grid names it");
        assert_eq!(
            shrink_io::quantized::ct_file_bytes(&spec, t.rows, t.cols),
            row["bytes"].as_u64().unwrap(),
            "{name}"
        );
    }
    assert!(grids.len() > 1, "a mix: {grids:?}");
    assert_eq!(groups.len(), grids.len(), "one config group per grid");
    // Whole model: the plan's bytes and the float16 rest over every weight, as written.
    let total: u64 = ckpt.tensors().iter().map(|t| t.bytes).sum();
    let n: u64 = r["float32_bytes"].as_u64().unwrap() / 4;
    assert!(
        (total as f64 * 8.0 / n as f64 - bpw).abs() < 1e-9,
        "{total} {n} {bpw}"
    );
    assert!(planned_bytes <= total);
    // The written model loads and runs.
    runs(&out);

    // GPTQ rounding writes the same plan's grids, GPTQ-rounded.
    let gq = out_dir.join("ct-gptq");
    let o = auto(
        &hf,
        &calib,
        &gq,
        &[
            &ct[..],
            &[
                "--target-bpw",
                "5",
                "--rounding",
                "gptq",
                "--gptq-samples",
                "4",
            ],
        ]
        .concat(),
    );
    ok(&o);
    let rg: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(rg["rounding"], "gptq");
    assert_eq!(rg["plan"], r["plan"], "the same plan");
    assert_eq!(rg["model_bytes"], r["model_bytes"], "the same bytes");
    let g = shrink_io::Checkpoint::open(&gq).unwrap();
    let shrink_io::Checkpoint::Hf(gh) = &g else {
        panic!("a directory")
    };
    let mut differ = 0;
    for row in plan.iter().filter(|row| row["copied"] == false) {
        let name = row["tensor"].as_str().unwrap();
        let (Some(Quantized::Int(a)), Some(Quantized::Int(b))) =
            (h.quantized(name).unwrap(), gh.quantized(name).unwrap())
        else {
            panic!("{name}: not integers in both")
        };
        assert_eq!(a.spec, b.spec, "{name}");
        differ += usize::from(a.packed != b.packed);
    }
    assert!(differ > 0, "GPTQ rounded some weight differently");
    runs(&gq);

    // Refusals write nothing.
    let before = std::fs::read_dir(&out_dir).unwrap().count();
    let bad = out_dir.join("bad");
    let o = auto(
        &hf,
        &calib,
        &bad,
        &[&ct[..], &["--target-bpw", "1.5"]].concat(),
    );
    let e = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        !o.status.success() && e.contains("smallest is 2.") && e.contains("largest"),
        "{e}"
    );
    let o = auto(
        &hf,
        &calib,
        &bad,
        &[
            &ct[..],
            &["--target-bpw", "5", "--grids", "int4-g64,int7-g64"],
        ]
        .concat(),
    );
    let e = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(e.contains("int7-g64 is not an integer grid"), "{e}");
    // Options of the other format are refused, not ignored.
    for (extra, says) in [
        (
            &["--types", "q4_0"][..],
            "--types (ggml types) applies to --to gguf",
        ),
        (
            &["--gptq-samples", "8"][..],
            "--gptq-samples applies to --rounding gptq",
        ),
    ] {
        let o = auto(
            &hf,
            &calib,
            &bad,
            &[&ct[..], &["--target-bpw", "5"], extra].concat(),
        );
        let e = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(!o.status.success() && e.contains(says), "{e}");
    }
    let gguf = f32_gguf(&hf, &tmp.path().join("tiny.gguf"));
    let o = auto(
        &gguf,
        &calib,
        &bad,
        &["--target-bpw", "6", "--rounding", "gptq"],
    );
    let e = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        e.contains("--rounding applies to --to compressed-tensors"),
        "{e}"
    );
    let after = std::fs::read_dir(&out_dir).unwrap().count();
    assert_eq!(before, after);
}
