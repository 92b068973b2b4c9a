//! The `shrink` binary end to end: `inspect` against transformers' own numbers, `eval` and
//! `generate` against the SmolLM2 references, and bad input through the command line (an
//! `error:` line naming the culprit, a failure status, never a panic).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// transformers 5.23 `get_memory_footprint(return_buffers=False)` of the float32 fixtures.
const FOOTPRINT: [(&str, u64); 5] = [
    ("gpt2", 564_224),
    ("gpt_neox", 662_528),
    ("llama", 476_416),
    ("qwen2", 608_512),
    ("mistral", 591_104),
];

fn fixtures() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures");
    assert!(
        p.join("tiny-index.json").is_file(),
        "fixtures missing: expected {} (the shared fixtures directory beside the repository)",
        p.display()
    );
    p
}

fn assets() -> PathBuf {
    let dir = std::env::var_os("SHRINK_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets"));
    for f in ["SmolLM2-135M-Instruct.Q4_1.gguf", "lee_background.cor"] {
        assert!(
            dir.join(f).is_file(),
            "{} missing: run scripts/fetch-assets.sh (or set SHRINK_ASSETS)",
            dir.join(f).display()
        );
    }
    dir
}

fn smollm2() -> PathBuf {
    assets().join("SmolLM2-135M-Instruct.Q4_1.gguf")
}

fn corpus() -> PathBuf {
    assets().join("lee_background.cor")
}

fn shrink<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    Command::new(env!("CARGO_BIN_EXE_shrink"))
        .args(args)
        .output()
        .expect("run shrink")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Assert success and parse stdout as JSON.
fn ok_json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "shrink failed ({}):\n{}",
        out.status,
        text(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", text(&out.stdout)))
}

/// Assert a clean failure: non-zero status, an `error:` line saying every phrase, no panic.
fn expect_failure(out: &Output, phrases: &[&str]) {
    let err = text(&out.stderr);
    assert!(
        !out.status.success(),
        "expected a failure, got success; stderr:\n{err}"
    );
    assert!(!err.contains("panicked"), "shrink panicked:\n{err}");
    assert!(err.contains("error:"), "no `error:` line:\n{err}");
    for p in phrases {
        assert!(err.contains(p), "stderr does not mention {p:?}:\n{err}");
    }
}

fn tiny(arch: &str) -> PathBuf {
    fixtures().join(format!("tiny-{arch}"))
}

/// A writable copy of tiny-llama's config.json and model.safetensors in `tmp/name`.
fn llama_copy(tmp: &Path, name: &str) -> PathBuf {
    let dir = tmp.join(name);
    fs::create_dir(&dir).unwrap();
    for f in ["config.json", "model.safetensors"] {
        fs::write(dir.join(f), fs::read(tiny("llama").join(f)).unwrap()).unwrap();
    }
    dir
}

fn read_json(p: &Path) -> Value {
    serde_json::from_slice(&fs::read(p).unwrap()).unwrap()
}

// ---------------------------------------------------------------------------------------------
// inspect
// ---------------------------------------------------------------------------------------------

#[test]
fn inspect_tiny_llama_text() {
    let out = shrink([Path::new("inspect"), &tiny("llama")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    for want in ["llama", "119104", "476416", "F32"] {
        assert!(s.contains(want), "inspect output lacks {want:?}:\n{s}");
    }
}

#[test]
fn inspect_json_matches_transformers() {
    let index = read_json(&fixtures().join("tiny-index.json"));
    for (arch, footprint) in FOOTPRINT {
        let v = ok_json(&shrink([
            Path::new("inspect"),
            &tiny(arch),
            Path::new("--json"),
        ]));
        let params = index[arch]["params"].as_u64().unwrap();
        assert_eq!(v["parameters"].as_u64(), Some(params), "{arch}: parameters");
        assert_eq!(
            v["footprint_bytes"].as_u64(),
            Some(footprint),
            "{arch}: footprint_bytes"
        );
        assert_eq!(
            v["float32_bytes"].as_u64(),
            Some(params * 4),
            "{arch}: float32_bytes"
        );
        assert_eq!(v["format"], "huggingface safetensors", "{arch}");
        assert_eq!(v["architecture"], arch, "{arch}");
        assert!(
            v.get("config_error").is_none(),
            "{arch}: {}",
            v["config_error"]
        );
    }
}

#[test]
fn inspect_modules_match_compute_module_sizes() {
    let v = ok_json(&shrink([
        Path::new("inspect"),
        &tiny("llama"),
        Path::new("--modules"),
        Path::new("--json"),
    ]));
    let m = &v["modules"];
    assert_eq!(m[""].as_u64(), Some(476_416));
    assert_eq!(m[""], v["footprint_bytes"]);
    assert_eq!(m["model.layers.0"].as_u64(), Some(172_544));
    assert_eq!(m["model.embed_tokens"].as_u64(), Some(131_072));
    assert_eq!(m["model.norm"].as_u64(), Some(256));
    // The whole model is its top-level modules.
    for (arch, footprint) in FOOTPRINT {
        let v = ok_json(&shrink([
            Path::new("inspect"),
            &tiny(arch),
            Path::new("--modules"),
            Path::new("--json"),
        ]));
        assert_eq!(v["modules"][""].as_u64(), Some(footprint), "{arch}");
    }
}

#[test]
fn inspect_smollm2_gguf() {
    let g = smollm2();
    let v = ok_json(&shrink([Path::new("inspect"), &g, Path::new("--json")]));
    assert_eq!(v["format"], "gguf");
    assert_eq!(v["architecture"], "llama");
    assert_eq!(v["parameters"].as_u64(), Some(134_515_008));
    assert_eq!(v["float32_bytes"].as_u64(), Some(538_060_032));
    let footprint = v["footprint_bytes"].as_u64().unwrap();
    assert!(footprint > 0 && footprint < fs::metadata(&g).unwrap().len());
}

#[test]
fn inspect_unknown_architecture_says_not_runnable() {
    // inspect describes any checkpoint it can read; running one is what fails (see below).
    let t = tempfile::tempdir().unwrap();
    let dir = mamba_copy(t.path());
    let out = shrink([Path::new("inspect"), &dir]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert!(s.contains("mamba9") && s.contains("not runnable"), "{s}");
}

// ---------------------------------------------------------------------------------------------
// eval and generate on SmolLM2
// ---------------------------------------------------------------------------------------------

fn first_window_ppl() -> f64 {
    let r = read_json(&fixtures().join("smollm2/lee_ppl_v1.json"));
    assert_eq!(r["window"].as_u64(), Some(512));
    (r["f32_window_nll"][0].as_f64().unwrap() / 511.0).exp()
}

#[test]
fn eval_smollm2_first_window() {
    let v = ok_json(&shrink([
        Path::new("eval"),
        &smollm2(),
        Path::new("--text"),
        &corpus(),
        Path::new("--max-windows"),
        Path::new("1"),
        Path::new("--json"),
    ]));
    let want = first_window_ppl();
    let ppl = v["ppl"].as_f64().unwrap();
    assert!(
        (ppl / want - 1.0).abs() < 1e-3,
        "ppl {ppl}, reference {want}"
    );
    assert_eq!(v["windows"].as_u64(), Some(1));
    assert_eq!(v["scored_tokens"].as_u64(), Some(511));
    assert_eq!(v["tokens"].as_u64(), Some(37_891));
    assert_eq!(v["protocol"], "lee-ppl-v1");
    assert!(v["kld"].is_null() && v["top1_agreement"].is_null());
}

#[test]
fn eval_smollm2_against_itself() {
    let g = smollm2();
    let v = ok_json(&shrink([
        Path::new("eval"),
        &g,
        Path::new("--base"),
        &g,
        Path::new("--text"),
        &corpus(),
        Path::new("--max-windows"),
        Path::new("1"),
        Path::new("--json"),
    ]));
    let kld = v["kld"].as_f64().unwrap();
    assert!((0.0..1e-9).contains(&kld), "kld {kld}");
    assert_eq!(v["top1_agreement"].as_f64(), Some(1.0));
    let ppl = v["ppl"].as_f64().unwrap();
    assert!((ppl / first_window_ppl() - 1.0).abs() < 1e-3, "ppl {ppl}");
}

#[test]
fn generate_smollm2_greedy_matches_reference() {
    let prompts = read_json(&fixtures().join("smollm2/prompts.json"));
    let p = prompts["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["text"] == "The capital of France is")
        .expect("prompt in prompts.json");
    let v = ok_json(&shrink([
        Path::new("generate"),
        &smollm2(),
        Path::new("--prompt"),
        Path::new("The capital of France is"),
        Path::new("--max-tokens"),
        Path::new("5"),
        Path::new("--json"),
    ]));
    assert_eq!(
        v["prompt_ids"], p["ids"],
        "prompt tokenized as llama.cpp does"
    );
    let ids = v["ids"].as_array().unwrap();
    assert!(!ids.is_empty() && ids.len() <= 5, "{ids:?}");
    assert_eq!(
        ids[0], p["argmax_last"],
        "first generated id is the reference arg-max"
    );
    assert!(!v["completion"].as_str().unwrap().is_empty());
}

#[test]
fn generate_smollm2_chat() {
    let v = ok_json(&shrink([
        Path::new("generate"),
        &smollm2(),
        Path::new("--chat"),
        Path::new("--prompt"),
        Path::new("What is 12 + 30?"),
        Path::new("--max-tokens"),
        Path::new("3"),
        Path::new("--json"),
    ]));
    let prompt = v["prompt"].as_str().unwrap();
    assert!(
        prompt.contains("<|im_start|>user\nWhat is 12 + 30?<|im_end|>"),
        "{prompt}"
    );
    assert!(prompt.contains("<|im_start|>assistant"), "{prompt}");
    assert!(!v["ids"].as_array().unwrap().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------------------------

fn mamba_copy(tmp: &Path) -> PathBuf {
    let dir = llama_copy(tmp, "mamba");
    let cfg = dir.join("config.json");
    let mut v = read_json(&cfg);
    v["model_type"] = "mamba9".into();
    fs::write(&cfg, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    dir
}

fn show(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn bad_missing_model_path() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("no-such-model");
    let out = shrink([Path::new("inspect"), &p]);
    expect_failure(&out, &[&show(&p), "No such file"]);
    // The OS error is said once, not repeated by the error chain.
    assert_eq!(
        text(&out.stderr).matches("No such file").count(),
        1,
        "{}",
        text(&out.stderr)
    );
    let out = shrink([
        Path::new("generate"),
        &p,
        Path::new("--prompt"),
        Path::new("hi"),
    ]);
    expect_failure(&out, &[&show(&p)]);
}

#[test]
fn bad_directory_without_config() {
    let t = tempfile::tempdir().unwrap();
    let dir = llama_copy(t.path(), "m");
    fs::remove_file(dir.join("config.json")).unwrap();
    expect_failure(
        &shrink([Path::new("inspect"), &dir]),
        &[&show(&dir), "config.json"],
    );
}

#[test]
fn bad_unknown_architecture() {
    let t = tempfile::tempdir().unwrap();
    let dir = mamba_copy(t.path());
    let out = shrink([
        Path::new("eval"),
        &dir,
        Path::new("--text"),
        &corpus(),
        Path::new("--max-windows"),
        Path::new("1"),
    ]);
    expect_failure(&out, &[&show(&dir), "unknown architecture", "mamba9"]);
    let out = shrink([
        Path::new("generate"),
        &dir,
        Path::new("--prompt"),
        Path::new("hi"),
    ]);
    expect_failure(&out, &[&show(&dir), "unknown architecture", "mamba9"]);
}

#[test]
fn bad_truncated_safetensors() {
    let t = tempfile::tempdir().unwrap();
    let dir = llama_copy(t.path(), "m");
    let file = dir.join("model.safetensors");
    let bytes = fs::read(&file).unwrap();
    fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    expect_failure(
        &shrink([Path::new("inspect"), &dir]),
        &[&show(&file), "truncated"],
    );
}

#[test]
fn bad_gguf_magic() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("model.gguf");
    let mut bytes = b"GGML".to_vec();
    bytes.extend_from_slice(&[0; 60]);
    fs::write(&p, bytes).unwrap();
    expect_failure(
        &shrink([Path::new("inspect"), &p]),
        &[&show(&p), "not a GGUF file"],
    );
}

#[test]
fn bad_eval_text_not_utf8() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("latin1.txt");
    fs::write(&p, b"caf\xe9\n").unwrap();
    let out = shrink([Path::new("eval"), &smollm2(), Path::new("--text"), &p]);
    expect_failure(&out, &[&show(&p), "not UTF-8", "byte 3"]);
}

#[test]
fn bad_eval_max_windows_zero() {
    let out = shrink([
        Path::new("eval"),
        &smollm2(),
        Path::new("--text"),
        &corpus(),
        Path::new("--max-windows"),
        Path::new("0"),
    ]);
    expect_failure(&out, &["--max-windows"]);
}

#[test]
fn bad_eval_lee_protocol_short_text() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("short.cor");
    let corpus = fs::read_to_string(corpus()).unwrap();
    let short: Vec<&str> = corpus.lines().take(120).collect();
    fs::write(&p, short.join("\n")).unwrap();
    let out = shrink([Path::new("eval"), &smollm2(), Path::new("--text"), &p]);
    expect_failure(&out, &[&show(&p), "300", "120 lines"]);
}

#[test]
fn bad_eval_raw_text_shorter_than_a_window() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("few.txt");
    fs::write(&p, "Only a handful of tokens here.\n").unwrap();
    let out = shrink([
        Path::new("eval"),
        &smollm2(),
        Path::new("--text"),
        &p,
        Path::new("--protocol"),
        Path::new("raw"),
    ]);
    expect_failure(&out, &[&show(&p), "fewer than one window of 512"]);
}

#[test]
fn bad_generate_top_p_zero() {
    let out = shrink([
        Path::new("generate"),
        &smollm2(),
        Path::new("--prompt"),
        Path::new("hi"),
        Path::new("--top-p"),
        Path::new("0"),
    ]);
    expect_failure(&out, &["--top-p"]);
}
