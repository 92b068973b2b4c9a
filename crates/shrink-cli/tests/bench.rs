//! `shrink bench` end to end: llama-bench's tests and figures, the bytes one generated token
//! reads counted from the checkpoint's own file (float and packed), and impossible requests
//! refused.

mod common;

use std::path::Path;

use common::{fixture, run, shrink};
use serde_json::Value;

/// Bytes of every tensor stored in `dir/model.safetensors`, and of the one named `name`.
fn stored_bytes(dir: &Path, name: &str) -> (u64, u64) {
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut total = 0;
    let mut one = 0;
    for (n, v) in st.tensors() {
        total += v.data().len() as u64;
        if n == name {
            one = v.data().len() as u64;
        }
    }
    (total, one)
}

/// Run shrink with `args`, which must succeed.
fn ok(args: &[&str]) {
    let r = shrink(args);
    assert!(
        r.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&r.stderr)
    );
}

/// Whether this CPU multiplies integer codes through the int8 GEMM's repacked panels
/// (`shrink_models::qmatmul::q8_gemm`, AVX-512 VNNI), which `bench` then reads per token.
fn panels() -> bool {
    shrink_models::qmatmul::q8::Int8Kernel::Vnni.is_available()
}

/// Bytes of the panels of an integer weight `[rows, cols]`: rows padded to 16, 4-bit codes two
/// a byte and others one, per 32 values (per 16 for granules of 16) a float16 scale and a byte
/// of zero point when `compact` (float16 scales, integer zeros, no mins), else a float32 scale
/// and bias.
fn panel_bytes(rows: usize, cols: usize, bits: usize, glen: usize, compact: bool) -> u64 {
    let rows = rows.div_ceil(16) * 16;
    let codes = if bits == 4 {
        rows * cols / 2
    } else {
        rows * cols
    };
    let parts = if glen == 16 { 2 } else { 1 };
    let per_part = if compact { 3 } else { 8 };
    (codes + rows * cols / 32 * parts * per_part) as u64
}

/// Bytes a token reads from a compressed-tensors checkpoint, counted from its file: the packed
/// codes as stored, each group's float16 scale as float16 and its zero point as the float32
/// the kernel reads, the shapes not at all (or each weight's panels, [`panel_bytes`], where
/// the CPU has [`panels`]); plus one 64-wide float32 embedding row.
fn ct_bytes_read(dir: &Path) -> u64 {
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut read = 64 * 4;
    for (n, t) in st.tensors() {
        if panels() && n.ends_with(".weight_packed") {
            let base = n.trim_end_matches(".weight_packed");
            let shape = st.tensor(&format!("{base}.weight_shape")).unwrap();
            let dims: Vec<usize> = shape
                .data()
                .chunks(shape.data().len() / 2)
                .map(|b| {
                    let mut v = [0u8; 8];
                    v[..b.len()].copy_from_slice(b);
                    u64::from_le_bytes(v) as usize
                })
                .collect();
            let (rows, cols) = (dims[0], dims[1]);
            let groups = st.tensor(&format!("{base}.weight_scale")).unwrap().shape()[1];
            let bits = t.data().len() * 8 / (rows * cols);
            // float16 scales and integer zero points: compact.
            read += panel_bytes(rows, cols, bits, cols / groups, true);
            continue;
        }
        let panel_part = panels()
            && (n.ends_with(".weight_scale") || n.ends_with(".weight_zero_point"))
            && st
                .names()
                .contains(&&format!("{}.weight_packed", n.rsplit_once('.').unwrap().0)[..]);
        read += if panel_part {
            0
        } else if n.ends_with(".weight_scale") {
            (t.data().len() / 2 * (2 + 4)) as u64
        } else if n.ends_with(".weight_zero_point") || n.ends_with(".weight_shape") {
            0
        } else {
            t.data().len() as u64
        };
    }
    read
}

/// The logits of `a` equal `b`'s to float32 summation order.
fn same_logits(a: &Path, b: &Path, label: &str) {
    let logits = |p: &Path| {
        let m = shrink_models::Model::load(&shrink_io::Checkpoint::open(p).unwrap()).unwrap();
        m.forward(&[1, 2, 3, 4, 5], None)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    let (a, b) = (logits(a), logits(b));
    let mag = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    let err = a
        .iter()
        .zip(&b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(err <= 1e-5 * mag, "{label}: {err} vs {mag}");
}

fn check_tests(v: &Value, reps: usize) {
    let r = v["results"].as_array().unwrap();
    let names: Vec<&str> = r.iter().map(|t| t["test"].as_str().unwrap()).collect();
    assert_eq!(names, ["pp16", "tg8"]);
    for t in r {
        let s = t["samples_s"].as_array().unwrap();
        let ts = t["samples_ts"].as_array().unwrap();
        assert_eq!(s.len(), reps);
        let tokens = t["n_prompt"].as_u64().unwrap() + t["n_gen"].as_u64().unwrap();
        let mut sum = 0.0;
        for (s, ts) in s.iter().zip(ts) {
            let (s, ts) = (s.as_f64().unwrap(), ts.as_f64().unwrap());
            assert!(s > 0.0);
            assert!((ts - tokens as f64 / s).abs() < 1e-9 * ts);
            sum += ts;
        }
        let avg = t["avg_ts"].as_f64().unwrap();
        assert!((avg - sum / reps as f64).abs() < 1e-9 * avg);
        assert!(t["stddev_ts"].as_f64().unwrap() >= 0.0);
    }
}

#[test]
fn bench_measures_like_llama_bench_and_counts_the_bytes_a_token_reads() {
    let fx = fixture("tiny-llama");
    let v = run(&[
        "bench",
        fx.to_str().unwrap(),
        "-p",
        "16",
        "-n",
        "8",
        "-r",
        "3",
        "-t",
        "1",
        "--json",
    ]);
    check_tests(&v, 3);
    assert_eq!(v["n_threads"], 1);
    // Float32, tied head: every tensor once, less the embedding but one of its rows (64 wide),
    // plus the head, which reads the whole embedding.
    let (total, embed) = stored_bytes(&fx, "model.embed_tokens.weight");
    assert_eq!(v["bytes_per_token"].as_u64().unwrap(), total + 64 * 4);
    assert_eq!(embed, 512 * 64 * 4);
    let l = &v["limit"];
    let (bw, tps) = (
        l["bandwidth_bytes_per_s"].as_f64().unwrap(),
        l["tokens_per_s"].as_f64().unwrap(),
    );
    assert!(bw > 1e8, "{bw}");
    assert!((tps - bw / (total + 256) as f64).abs() < 1e-9 * tps);
    let tg = v["results"][1]["avg_ts"].as_f64().unwrap();
    let share = v["share_of_limit"].as_f64().unwrap();
    assert!((share - tg / tps).abs() < 1e-9 * share);

    // Packed int4: a token reads the packed codes, scales and zeros, not float32 weights.
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("int4");
    ok(&[
        "quantize",
        fx.to_str().unwrap(),
        "--method",
        "int",
        "--bits",
        "4",
        "--group-size",
        "16",
        "-o",
        q.to_str().unwrap(),
    ]);
    let v = run(&[
        "bench",
        q.to_str().unwrap(),
        "-p",
        "16",
        "-n",
        "8",
        "-r",
        "2",
        "--no-bandwidth",
        "--json",
    ]);
    check_tests(&v, 2);
    assert!(v["limit"].is_null() && v["share_of_limit"].is_null());
    let read = ct_bytes_read(&q);
    assert_eq!(v["bytes_per_token"].as_u64().unwrap(), read);
    assert!(read < total / 2, "{read} vs {total}");
}

#[test]
fn a_quantized_embedding_is_the_packed_head() {
    let fx = fixture("tiny-llama");
    let dir = tempfile::tempdir().unwrap();
    let (q, dense) = (dir.path().join("q"), dir.path().join("dense"));
    ok(&[
        "quantize",
        fx.to_str().unwrap(),
        "--method",
        "int",
        "--bits",
        "8",
        "--group-size",
        "32",
        "--include",
        "model.embed_tokens",
        "--include",
        "model.layers.*",
        "-o",
        q.to_str().unwrap(),
    ]);
    let v = run(&[
        "bench",
        q.to_str().unwrap(),
        "-p",
        "16",
        "-n",
        "8",
        "-r",
        "1",
        "--no-bandwidth",
        "--json",
    ]);
    // The head reads the packed embedding.
    let bytes = std::fs::read(q.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert!(st
        .names()
        .iter()
        .any(|n| n.starts_with("model.embed_tokens.weight_")));
    assert_eq!(v["bytes_per_token"].as_u64().unwrap(), ct_bytes_read(&q));
    // The packed head computes what the float32 model holding the dequantized weights does.
    ok(&[
        "export",
        q.to_str().unwrap(),
        "--to",
        "hf",
        "--type",
        "f32",
        "-o",
        dense.to_str().unwrap(),
    ]);
    same_logits(&q, &dense, "packed head");
}

/// Bytes a token reads of a GGUF tensor held as integer codes: 4-bit codes two per byte,
/// 5-/6-bit ones as nibbles plus one or two 64-bit masks of high bits per 64 values (rows a
/// multiple of 64), 8-bit one per byte; each scale and min as float16 when all of the
/// tensor's are float16 exactly, else float32.
fn packed_bytes(c: &shrink_formats::ggml::GgmlCodes, rows: usize, cols: usize) -> usize {
    let bits = c.bits as usize;
    let row = match bits {
        4 => cols / 2,
        8 => cols,
        _ if cols.is_multiple_of(64) => cols / 2 + cols / 64 * 8 * (bits - 4),
        _ => (cols * bits).div_ceil(8),
    };
    let width = |v: &[f32]| {
        if v.iter().all(|&s| half::f16::from_f32(s).to_f32() == s) {
            2
        } else {
            4
        }
    };
    rows * row + c.scales.len() * width(&c.scales) + c.mins.len() * width(&c.mins)
}

#[test]
fn gguf_integer_types_run_packed_and_exact() {
    use shrink_formats::ggml;
    let dir = tempfile::tempdir().unwrap();
    let fx = common::tiny_llama_with_tokenizer(dir.path());
    for ty in ["q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q4_k_m", "q6_k"] {
        let gguf = dir.path().join(format!("{ty}.gguf"));
        let dense = dir.path().join(format!("{ty}-f32"));
        ok(&[
            "export",
            fx.to_str().unwrap(),
            "--to",
            "gguf",
            "--type",
            ty,
            "-o",
            gguf.to_str().unwrap(),
        ]);
        ok(&[
            "convert",
            gguf.to_str().unwrap(),
            "--dtype",
            "f32",
            "-o",
            dense.to_str().unwrap(),
        ]);
        // Integer-typed tensors are read as their codes (`packed_bytes`), every other tensor
        // as float32; the tied head reads the embedding, plus one row.
        let g = shrink_io::GgufFile::open(&gguf).unwrap();
        let mut read = 64 * 4;
        let mut packed = 0;
        for t in &g.tensors {
            let n = t.elements();
            let shape = t.shape();
            let codes = match shape[..] {
                [rows, cols] => ggml::to_codes(t.ty, g.tensor_bytes(t), rows, cols).unwrap(),
                _ => None,
            };
            read += match codes {
                Some(c) if panels() => {
                    packed += 1;
                    let f16 = |s: f32| half::f16::from_f32(s).to_f32() == s;
                    let compact =
                        c.table.is_none() && c.mins.is_empty() && c.scales.iter().all(|&s| f16(s));
                    panel_bytes(shape[0], shape[1], c.bits as usize, c.granule, compact)
                }
                Some(c) => {
                    packed += 1;
                    packed_bytes(&c, shape[0], shape[1]) as u64
                }
                None => n * 4,
            };
        }
        assert!(packed >= 14, "{ty}: {packed} packed tensors");
        let v = run(&[
            "bench",
            gguf.to_str().unwrap(),
            "-p",
            "8",
            "-n",
            "4",
            "-r",
            "1",
            "--no-bandwidth",
            "--json",
        ]);
        assert_eq!(v["bytes_per_token"].as_u64().unwrap(), read, "{ty}");
        // The packed model computes what its float32 conversion does.
        same_logits(&gguf, &dense, ty);
    }
}

#[test]
fn tests_can_start_from_a_filled_cache_as_llama_bench_d() {
    let fx = fixture("tiny-llama");
    let v = run(&[
        "bench",
        fx.to_str().unwrap(),
        "-p",
        "8",
        "-n",
        "4",
        "-d",
        "100",
        "-r",
        "2",
        "-t",
        "1",
        "--no-bandwidth",
        "--json",
    ]);
    let r = v["results"].as_array().unwrap();
    let names: Vec<&str> = r.iter().map(|t| t["test"].as_str().unwrap()).collect();
    assert_eq!(names, ["pp8 @ d100", "tg4 @ d100"]);
    // A float16 cache runs the same tests; an unknown cache type is refused by name.
    let fx_s = fx.to_str().unwrap();
    let h = run(&[
        "bench",
        fx_s,
        "-p",
        "0",
        "-n",
        "4",
        "-d",
        "8",
        "-r",
        "1",
        "-t",
        "1",
        "--kv-cache",
        "f16",
        "--no-bandwidth",
        "--json",
    ]);
    assert_eq!(h["results"][0]["test"], "tg4 @ d8");
    let bad = shrink(&["bench", fx_s, "--kv-cache", "q8"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("f16"));
    for t in r {
        assert_eq!(t["n_depth"], 100);
        assert_eq!(t["samples_s"].as_array().unwrap().len(), 2);
    }
}

#[test]
fn impossible_benchmarks_are_refused() {
    let fx = fixture("tiny-llama");
    let fx = fx.to_str().unwrap();
    for (args, says) in [
        (vec!["-r", "0"], "repetitions"),
        (vec!["-p", "0", "-n", "0"], "nothing to measure"),
        (vec!["-p", "129"], "128 positions"),
        (vec!["-n", "8", "-d", "121"], "after a depth of 121"),
        (vec!["-t", "0"], "--threads"),
    ] {
        let mut a = vec!["bench", fx];
        a.extend(args.iter().copied());
        let r = shrink(&a);
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(!r.status.success(), "{a:?} succeeded");
        assert!(err.contains(says), "{a:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn eval_with_int8_activations_stays_near_the_float_perplexity() {
    let Some(model) = common::real_model() else {
        return;
    };
    let text = common::asset("lee_background.cor");
    let eval = |extra: &[&str]| {
        let mut args = vec![
            "eval",
            model.to_str().unwrap(),
            "--text",
            text.to_str().unwrap(),
            "--max-windows",
            "1",
            "--json",
        ];
        args.extend_from_slice(extra);
        run(&args)
    };
    let float = eval(&[]);
    let int8 = eval(&["--int8-activations"]);
    assert_eq!(float["activations"], "float32");
    assert_eq!(int8["activations"], "int8");
    let (f, i) = (
        float["ppl"].as_f64().unwrap(),
        int8["ppl"].as_f64().unwrap(),
    );
    // The activations' rounding moves the perplexity a little (llama.cpp's arithmetic), and
    // does move it where the CPU has the integer GEMM (VNNI): the products ran in integers.
    assert!((i / f - 1.0).abs() < 0.02, "int8 {i} against float {f}");
    if panels() {
        assert_ne!(i, f);
    }
}
