//! `shrink quantize`: quantize → save → load → dequantize is bit-exact for every method and
//! bit width, the reported bytes are the file's, and impossible requests write nothing.

mod common;
use common::*;

use shrink_formats::float::FloatType;
use shrink_formats::int::{Granularity, IntSpec};
use shrink_formats::nf4::{Fp4Kind, Nf4Spec};
use shrink_io::Checkpoint;
use shrink_methods::rtn::Rtn;
use shrink_models::ModelConfig;

/// Quantize `arch` with `args`, then check every quantized weight read back from the output
/// equals the in-memory quantize → dequantize of the source weight, bit for bit.
fn round_trip(arch: &str, args: &[&str], rtn: Rtn) -> serde_json::Value {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixture(arch);
    let out = tmp.path().join("q");
    let mut full = vec![
        "quantize",
        src.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--json",
    ];
    full.extend_from_slice(args);
    let r = shrink(&full);
    assert!(
        r.status.success(),
        "{arch} {args:?}: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();

    let a = Checkpoint::open(&src).unwrap();
    let b = Checkpoint::open(&out).unwrap();
    let cfg = ModelConfig::from_checkpoint(&a).unwrap();
    let lin = shrink_models::decoder_linears(&cfg);
    assert_eq!(
        report["quantized_tensors"].as_u64().unwrap() as usize,
        lin.len()
    );
    for l in &lin {
        let (w, shape) = a.read_f32(&l.weight).unwrap();
        let w = if l.conv1d {
            transpose(&w, shape[0], shape[1])
        } else {
            w
        };
        let want = rtn
            .quantize(&l.weight, &w, l.out_features, l.in_features)
            .unwrap()
            .dequantize()
            .0;
        let (got, gshape) = b.read_f32(&l.weight).unwrap();
        let got = if l.conv1d {
            transpose(&got, gshape[0], gshape[1])
        } else {
            got
        };
        assert_eq!(gshape, shape, "{}: shape", l.weight);
        assert!(
            want.iter()
                .zip(&got)
                .all(|(x, y)| x.to_bits() == y.to_bits()),
            "{arch} {args:?} {} differs",
            l.weight
        );
    }
    // The bytes reported are the bytes the file's tensors hold.
    let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    assert_eq!(
        report["model_bytes"].as_u64().unwrap() as usize,
        bytes.len() - 8 - header
    );
    // The model runs with its linear layers kept quantized, and gives exactly the logits of
    // the same weights dequantized into a float32 model (`convert` compares the two).
    let m = shrink_models::Model::load(&b).unwrap();
    if let shrink_models::Model::Llama(l) = &m {
        assert!(l.layers[0].q_proj.is_quantized());
    }
    assert!(m.forward(&[1, 2, 3], None).unwrap().dims() == [3, cfg.vocab_size()]);
    let dense = tmp.path().join("dense");
    let c = shrink(&[
        "convert",
        out.to_str().unwrap(),
        "--dtype",
        "f32",
        "-o",
        dense.to_str().unwrap(),
        "--json",
    ]);
    assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stderr));
    // Logits of the quantized model against the float32 model holding the same weights
    // dequantized: equal up to float summation order (a few tokens take row dot products),
    // or close when activations are quantized to int8 at run time.
    let ids = [1u32, 2, 3, 4, 5];
    let d = shrink_models::Model::load(&Checkpoint::open(&dense).unwrap()).unwrap();
    let logits = |m: &shrink_models::Model| {
        m.forward(&ids, None)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    let (lq, ld) = (logits(&m), logits(&d));
    let err = lq
        .iter()
        .zip(&ld)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    let mag = ld.iter().fold(0f32, |a, v| a.max(v.abs()));
    if args
        .iter()
        .any(|a| *a == "llm-int8" || *a == "dynamic-int8")
    {
        assert!(
            err > 0.0 && err < 0.05 * mag,
            "{arch} {args:?}: int8-activation logits differ by {err} (magnitude {mag})"
        );
    } else {
        assert!(
            err <= 1e-5 * mag,
            "{arch} {args:?}: quantized forward differs by {err} (magnitude {mag})"
        );
    }
    report
}

/// Every method runs end to end on every decoder architecture among the fixtures.
#[test]
fn every_method_on_every_architecture() {
    let f16 = FloatType::F16;
    let methods: Vec<(Vec<&str>, Rtn)> = vec![
        (
            vec!["--method", "absmax-int8"],
            int(8, true, Granularity::Tensor, FloatType::F32),
        ),
        (
            vec!["--method", "zeropoint-int8", "--granularity", "channel"],
            int(8, false, Granularity::Channel, f16),
        ),
        (
            vec!["--method", "int", "--bits", "4", "--group-size", "32"],
            int(4, false, Granularity::Group(32), f16),
        ),
        (
            vec!["--method", "nf4", "--double-quant"],
            Rtn::Nf4(Nf4Spec {
                kind: Fp4Kind::Nf4,
                block_size: 64,
                double_quant: true,
            }),
        ),
        (
            vec!["--method", "fp4"],
            Rtn::Nf4(Nf4Spec {
                kind: Fp4Kind::Fp4,
                block_size: 64,
                double_quant: false,
            }),
        ),
        (
            vec!["--method", "llm-int8", "--threshold", "0.5"],
            Rtn::LlmInt8 { threshold: 0.5 },
        ),
        (
            vec!["--method", "dynamic-int8"],
            Rtn::DynamicInt8(IntSpec {
                bits: 8,
                symmetric: true,
                granularity: Granularity::Channel,
                scale_type: f16,
            }),
        ),
    ];
    for arch in [
        "tiny-llama",
        "tiny-qwen2",
        "tiny-mistral",
        "tiny-gpt2",
        "tiny-gpt_neox",
    ] {
        for (args, rtn) in &methods {
            round_trip(arch, args, *rtn);
        }
    }
}

fn int(bits: u8, symmetric: bool, granularity: Granularity, scale_type: FloatType) -> Rtn {
    Rtn::Int(IntSpec {
        bits,
        symmetric,
        granularity,
        scale_type,
    })
}

#[test]
fn integer_methods_round_trip_exactly() {
    for bits in [2u8, 3, 4, 5, 6, 8] {
        for sym in [true, false] {
            let b = bits.to_string();
            let mut args = vec!["--method", "int", "--bits", &b, "--group-size", "32"];
            args.push(if sym { "--sym" } else { "--asym" });
            round_trip(
                "tiny-llama",
                &args,
                int(bits, sym, Granularity::Group(32), FloatType::F16),
            );
        }
    }
    round_trip(
        "tiny-qwen2",
        &["--method", "absmax-int8"],
        int(8, true, Granularity::Tensor, FloatType::F32),
    );
    round_trip(
        "tiny-mistral",
        &["--method", "zeropoint-int8"],
        int(8, false, Granularity::Tensor, FloatType::F32),
    );
    round_trip(
        "tiny-gpt_neox",
        &[
            "--method",
            "absmax-int8",
            "--granularity",
            "channel",
            "--scale-dtype",
            "bf16",
        ],
        int(8, true, Granularity::Channel, FloatType::BF16),
    );
}

#[test]
fn gpt2_conv1d_weights_are_quantized_too() {
    let r = round_trip(
        "tiny-gpt2",
        &["--method", "int", "--bits", "4", "--group-size", "32"],
        int(4, false, Granularity::Group(32), FloatType::F16),
    );
    assert_eq!(r["quantized_tensors"], 8);
}

#[test]
fn nf4_and_fp4_round_trip_exactly() {
    for (kind, name) in [(Fp4Kind::Nf4, "nf4"), (Fp4Kind::Fp4, "fp4")] {
        for dq in [false, true] {
            let mut args = vec!["--method", name];
            if dq {
                args.push("--double-quant");
            }
            let spec = Nf4Spec {
                kind,
                block_size: 64,
                double_quant: dq,
            };
            round_trip("tiny-llama", &args, Rtn::Nf4(spec));
        }
    }
}

#[test]
fn llm_int8_weights_round_trip_exactly() {
    let r = round_trip(
        "tiny-llama",
        &["--method", "llm-int8"],
        Rtn::LlmInt8 { threshold: 6.0 },
    );
    assert!((r["bits_per_weight_quantized"].as_f64().unwrap() - 8.0).abs() < 0.6);
}

#[test]
fn impossible_requests_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("q");
    let src = fixture("tiny-llama");
    let cases: [&[&str]; 5] = [
        &["--method", "int", "--bits", "4", "--group-size", "48"], // 48 divides neither 64 nor 160
        &["--method", "int", "--bits", "7"],
        &["--method", "dynamic-int8", "--group-size", "32"],
        &["--method", "nf4", "--block-size", "48"],
        &[
            "--method",
            "int",
            "--bits",
            "4",
            "--exclude",
            "nothing.matches.this",
        ],
    ];
    for args in cases {
        let mut full = vec![
            "quantize",
            src.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ];
        full.extend_from_slice(args);
        let r = shrink(&full);
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(
            !r.status.success() && err.contains("error:") && !err.contains("panicked"),
            "{args:?}: {err}"
        );
        assert!(!out.exists(), "{args:?} wrote output");
        assert_eq!(
            std::fs::read_dir(tmp.path()).unwrap().count(),
            0,
            "{args:?} left files"
        );
    }
}

#[test]
fn nan_weights_are_refused_naming_the_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixture("tiny-llama");
    let dir = tmp.path().join("nan-model");
    std::fs::create_dir(&dir).unwrap();
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    let mut bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let name = "model.layers.1.mlp.up_proj.weight";
    let start = header[name]["data_offsets"][0].as_u64().unwrap() as usize + 8 + n;
    bytes[start + 40..start + 44].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(dir.join("model.safetensors"), bytes).unwrap();
    let out = tmp.path().join("q");
    let r = shrink(&[
        "quantize",
        dir.to_str().unwrap(),
        "--method",
        "nf4",
        "-o",
        out.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success(), "NaN accepted");
    assert!(err.contains(name) && !err.contains("panicked"), "{err}");
    assert!(!out.exists());
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
}

#[test]
fn compare_reports_size_quality_layers_histogram_and_generations() {
    let (gguf, corpus) = (gguf(), asset("lee_background.cor"));
    let tmp = tempfile::tempdir().unwrap();
    let q = tmp.path().join("nf4");
    let r = shrink(&[
        "quantize",
        gguf.to_str().unwrap(),
        "--method",
        "nf4",
        "--double-quant",
        "-o",
        q.to_str().unwrap(),
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let rep = tmp.path().join("report");
    let r = shrink(&[
        "compare",
        gguf.to_str().unwrap(),
        q.to_str().unwrap(),
        "--text",
        corpus.to_str().unwrap(),
        "--max-windows",
        "1",
        "--max-tokens",
        "4",
        "--report",
        rep.to_str().unwrap(),
        "--json",
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    let m = &v["models"][0];
    assert_eq!(m["method"], "nf4-b64-dq");
    assert!((m["bits_per_weight_quantized"].as_f64().unwrap() - 4.127).abs() < 0.01);
    assert!(m["ppl"].as_f64().unwrap() > v["base_ppl"].as_f64().unwrap());
    assert!(m["kld"].as_f64().unwrap() > 0.0 && m["top1_agreement"].as_f64().unwrap() < 1.0);
    assert_eq!(m["layers"].as_array().unwrap().len(), 210);
    assert!(m["quantize_seconds"].as_f64().is_some());
    assert!(!m["generation"].as_str().unwrap().is_empty());
    let png = std::fs::read(rep.join("hist-nf4.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(std::fs::read_to_string(rep.join("report.md"))
        .unwrap()
        .contains("| model | method |"));
}

/// Every method runs end to end on the BERT and DistilBERT classifier fixtures: encoder
/// linears are quantized (embeddings and the classifier head stay), read back bit-exactly, and
/// the quantized classifier agrees with the float32 one holding the same weights.
#[test]
fn every_method_on_encoder_classifiers() {
    use shrink_models::{Architecture, BertClassifier, BertConfig, WeightLoader};
    let methods: [&[&str]; 7] = [
        &["--method", "absmax-int8"],
        &["--method", "zeropoint-int8", "--granularity", "channel"],
        &["--method", "int", "--bits", "4", "--group-size", "32"],
        &["--method", "nf4", "--double-quant"],
        &["--method", "fp4"],
        &["--method", "llm-int8", "--threshold", "0.5"],
        &["--method", "dynamic-int8"],
    ];
    let classify = |dir: &std::path::Path| {
        let ckpt = Checkpoint::open(dir).unwrap();
        let cfg = BertConfig::from_checkpoint(&ckpt).unwrap();
        let m = BertClassifier::load(cfg, &WeightLoader::new(&ckpt, None, &[])).unwrap();
        let quantized = m.layers[0].query.is_quantized();
        let logits = m
            .forward(&[2, 7, 11, 5, 3])
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        (logits, quantized)
    };
    for arch in ["tiny-bert_cls", "tiny-distilbert_cls"] {
        let src = fixture(arch);
        let a = Checkpoint::open(&src).unwrap();
        let linears = Architecture::from_checkpoint(&a).unwrap().block_linears();
        assert!(!linears.is_empty());
        for args in methods {
            let tmp = tempfile::tempdir().unwrap();
            let out = tmp.path().join("q");
            let mut full = vec![
                "quantize",
                src.to_str().unwrap(),
                "-o",
                out.to_str().unwrap(),
            ];
            full.extend_from_slice(args);
            full.push("--json");
            let r = shrink(&full);
            assert!(
                r.status.success(),
                "{arch} {args:?}: {}",
                String::from_utf8_lossy(&r.stderr)
            );
            let report: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
            assert_eq!(
                report["quantized_tensors"].as_u64().unwrap() as usize,
                linears.len()
            );
            let dense = tmp.path().join("dense");
            let c = shrink(&[
                "convert",
                out.to_str().unwrap(),
                "--dtype",
                "f32",
                "-o",
                dense.to_str().unwrap(),
            ]);
            assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stderr));
            // Untouched weights are copied exactly; quantized ones differ from the source.
            let b = Checkpoint::open(&dense).unwrap();
            let head = "classifier.weight";
            assert_eq!(a.read_f32(head).unwrap(), b.read_f32(head).unwrap());
            assert_ne!(
                a.read_f32(&linears[0].weight).unwrap(),
                b.read_f32(&linears[0].weight).unwrap()
            );
            let ((lq, is_q), (ld, _)) = (classify(&out), classify(&dense));
            assert!(is_q, "{arch} {args:?}: the encoder should run quantized");
            let err = lq
                .iter()
                .zip(&ld)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            let mag = ld.iter().fold(0f32, |m, v| m.max(v.abs()));
            let int8_act = args.contains(&"llm-int8") || args.contains(&"dynamic-int8");
            let tol = if int8_act { 0.05 * mag } else { 1e-5 * mag };
            assert!(
                err <= tol,
                "{arch} {args:?}: logits differ by {err} (magnitude {mag})"
            );
        }
    }
}

/// Options that contradict the method are refused before anything is read or written, rather
/// than ignored: int8 methods with other --bits, a group size with a granularity that has no
/// groups, bit widths the integer layouts do not hold.
#[test]
fn contradictory_options_are_refused() {
    let fx = fixture("tiny-llama");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("q");
    for (args, says) in [
        (
            &["--method", "absmax-int8", "--bits", "4"][..],
            "absmax-int8 is 8-bit; --bits 4 does not apply",
        ),
        (
            &["--method", "zeropoint-int8", "--bits", "6"][..],
            "zeropoint-int8 is 8-bit",
        ),
        (
            &[
                "--method",
                "int",
                "--granularity",
                "tensor",
                "--group-size",
                "32",
            ][..],
            "--granularity tensor has none",
        ),
        (
            &[
                "--method",
                "int",
                "--granularity",
                "channel",
                "--group-size",
                "16",
            ][..],
            "--granularity channel has none",
        ),
        (
            &["--method", "int", "--bits", "7"][..],
            "2, 3, 4, 5, 6 or 8 (not 7)",
        ),
    ] {
        let mut a = vec!["quantize", fx.to_str().unwrap()];
        a.extend_from_slice(args);
        a.extend_from_slice(&["-o", out.to_str().unwrap()]);
        let r = shrink(&a);
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(!r.status.success(), "{a:?} succeeded");
        assert!(err.contains(says), "{a:?}: {says:?} not in {err}");
        assert!(!out.exists(), "{a:?} wrote");
    }
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
}

#[test]
fn an_already_quantized_input_is_said_to_be_quantized_again() {
    let Some(g) = real_model() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("nf4");
    let (gs, o) = (g.to_str().unwrap(), out.to_str().unwrap());
    let r = shrink(&["quantize", gs, "--method", "nf4", "-o", o]);
    assert!(r.status.success());
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        err.contains("warning") && err.contains("quantized again") && err.contains("Q4_1"),
        "{err}"
    );
    // The sizes are compared with the input's, not only with float32: NF4 with float32
    // embeddings is larger than the Q4_1 file.
    let text = String::from_utf8_lossy(&r.stdout);
    assert!(
        text.contains("input bytes") && text.contains("larger"),
        "{text}"
    );
    let input: u64 = Checkpoint::open(&g)
        .unwrap()
        .tensors()
        .iter()
        .map(|t| t.bytes)
        .sum();
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("shrink-quantize.json")).unwrap()).unwrap();
    assert_eq!(report["input_bytes"], input);
    assert!(report["warning"]
        .as_str()
        .unwrap()
        .contains("quantized again"));
    // A float input has no warning.
    let f32_dir = tmp.path().join("f32");
    let f = f32_dir.to_str().unwrap();
    assert!(
        shrink(&["convert", gs, "--dtype", "bf16", "--no-check", "-o", f])
            .status
            .success()
    );
    let r = shrink(&["quantize", f, "--method", "nf4", "-o", &format!("{o}2")]);
    assert!(r.status.success());
    assert!(!String::from_utf8_lossy(&r.stderr).contains("warning"));
    assert!(String::from_utf8_lossy(&r.stdout).contains("smaller)"));
}

#[test]
fn progress_goes_to_a_log_as_plain_lines() {
    // Tests capture stderr through a pipe: not a terminal, as when a run is redirected to a log.
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("q");
    let m = fixture("tiny-llama");
    let r = shrink(&[
        "quantize",
        m.to_str().unwrap(),
        "--method",
        "nf4",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(r.status.success());
    let err = String::from_utf8_lossy(&r.stderr);
    let line = err
        .lines()
        .find(|l| l.starts_with("quantize 0/"))
        .unwrap_or_else(|| panic!("no progress line in {err:?}"));
    assert!(
        line.contains("elapsed") && !line.contains('\r') && !line.contains('\x1b'),
        "{line:?}"
    );
}
