//! Sizes a file states are checked before anything is built from them (issue 16): layer
//! counts, vocabularies, widths and rotary shares that the tensors do not hold are refused at
//! once, naming the file; context limits are applied by generate, eval and calibration alike.

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A copy of fixture `name` (with the byte-level tokenizer) whose config.json has `key` (a
/// dotted path) set to `value`.
fn lying(dir: &Path, name: &str, key: &str, value: serde_json::Value) -> PathBuf {
    let m = fixture_with_tokenizer(dir, name);
    let cfg = m.join("config.json");
    let mut c: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg).unwrap()).unwrap();
    let mut at = &mut c;
    let parts: Vec<&str> = key.split('.').collect();
    for p in &parts[..parts.len() - 1] {
        at = &mut at[*p];
    }
    at[parts[parts.len() - 1]] = value;
    std::fs::write(&cfg, c.to_string()).unwrap();
    m
}

/// `args` is refused within a few seconds, saying each of `says`.
fn refused_quickly(args: &[&str], says: &[&str]) {
    let t0 = Instant::now();
    refused(args, says, None);
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "{args:?} took {:?}",
        t0.elapsed()
    );
}

#[test]
fn sizes_the_tensors_do_not_hold_are_refused_before_use() {
    for (fixture, key, value, says) in [
        (
            "tiny-llama",
            "num_hidden_layers",
            serde_json::json!(100000),
            "100000 layers",
        ),
        (
            "tiny-gpt2",
            "n_layer",
            serde_json::json!(100000),
            "100000 layers",
        ),
        (
            "tiny-llama",
            "vocab_size",
            serde_json::json!(1u64 << 31),
            "model.embed_tokens.weight",
        ),
        (
            "tiny-gpt_neox",
            "rope_parameters.partial_rotary_factor",
            serde_json::json!(1u64 << 31),
            "rotary share",
        ),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let m = lying(tmp.path(), fixture, key, value);
        let ms = m.to_str().unwrap();
        let out = tmp.path().join("out");
        let o = out.to_str().unwrap();
        for args in [
            vec!["quantize", ms, "--method", "nf4", "-o", o],
            vec!["export", ms, "--to", "gguf", "--type", "q8_0", "-o", o],
            vec!["generate", ms, "--prompt", "hi", "--max-tokens", "2"],
        ] {
            refused_quickly(&args, &[ms, says]);
            assert!(!out.exists());
        }
    }
}

#[test]
fn a_gguf_block_count_it_does_not_hold_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let m = tiny_llama_with_tokenizer(tmp.path());
    let g = tmp.path().join("m.gguf");
    let gs = g.to_str().unwrap();
    let r = shrink(&[
        "export",
        m.to_str().unwrap(),
        "--to",
        "gguf",
        "--type",
        "f32",
        "-o",
        gs,
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    // llama.block_count, a u32 after its key: set to 2³² − 1.
    let mut bytes = std::fs::read(&g).unwrap();
    let key = b"llama.block_count";
    let at = bytes.windows(key.len()).position(|w| w == key).unwrap() + key.len();
    assert_eq!(
        u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()),
        4,
        "type u32"
    );
    bytes[at + 4..at + 8].copy_from_slice(&u32::MAX.to_le_bytes());
    std::fs::write(&g, bytes).unwrap();
    let out = tmp.path().join("q");
    refused_quickly(
        &[
            "quantize",
            gs,
            "--method",
            "nf4",
            "-o",
            out.to_str().unwrap(),
        ],
        &[gs, "4294967295 layers", "hold 2"],
    );
}

#[test]
fn context_limits_hold_for_generate_eval_and_calibration() {
    let tmp = tempfile::tempdir().unwrap();
    let m = lying(
        tmp.path(),
        "tiny-llama",
        "max_position_embeddings",
        serde_json::json!(7),
    );
    let ms = m.to_str().unwrap();
    // A prompt longer than the context is refused before anything is printed.
    refused(
        &["generate", ms, "--prompt", "more than seven bytes"],
        &["the prompt has 21 tokens", "context of 7 positions"],
        None,
    );
    // A shorter one stops when the context is full, and says so.
    let r = shrink(&[
        "generate",
        ms,
        "--prompt",
        "hi",
        "--max-tokens",
        "20",
        "--json",
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(v["stopped"], "context");
    // Positions 0..6 hold the prompt's two tokens and five generated ones; the sixth
    // generated token is chosen from position 6 and needs none of its own.
    assert_eq!(v["ids"].as_array().unwrap().len(), 6);
    let r = shrink(&["generate", ms, "--prompt", "hi", "--max-tokens", "20"]);
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("the model's context of 7 positions is full")
    );
    // Windows of 512 tokens on a model of 7 positions.
    let text = calib_text(tmp.path(), 3000);
    refused(
        &[
            "eval",
            ms,
            "--text",
            text.to_str().unwrap(),
            "--protocol",
            "raw",
        ],
        &["windows of 512 tokens", "context of 7 positions"],
        None,
    );
    // Calibration samples longer than the context.
    let out = tmp.path().join("gptq");
    refused(
        &[
            "quantize",
            ms,
            "--method",
            "gptq",
            "--group-size",
            "32",
            "--calib",
            text.to_str().unwrap(),
            "--calib-format",
            "raw",
            "--calib-samples",
            "2",
            "--calib-seqlen",
            "48",
            "-o",
            out.to_str().unwrap(),
        ],
        &[
            "samples of 48 tokens",
            "context of 7 positions",
            "--calib-seqlen",
        ],
        Some(&out),
    );
}
