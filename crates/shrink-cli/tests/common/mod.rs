//! Helpers shared by the CLI integration tests: run the binary, find fixtures and assets.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Run the built `shrink` binary with `args`.
pub fn shrink(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shrink"))
        .args(args)
        .output()
        .expect("run shrink")
}

/// A fixture of ../shared/fixtures (fails when missing).
pub fn fixture(name: &str) -> PathBuf {
    let p = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/fixtures"
    ))
    .join(name);
    assert!(
        p.exists(),
        "fixture {} missing (../shared beside the checkout)",
        p.display()
    );
    p
}

/// The assets folder: SHRINK_ASSETS, or ./assets of the checkout.
fn assets_dir() -> PathBuf {
    std::env::var_os("SHRINK_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../assets")))
}

/// A file of the assets folder (SHRINK_ASSETS or ./assets; fails when missing).
pub fn asset(name: &str) -> PathBuf {
    let p = assets_dir().join(name);
    assert!(
        p.exists(),
        "{} missing: run scripts/fetch-assets.sh",
        p.display()
    );
    p
}

/// The real SmolLM2 GGUF.
pub fn gguf() -> PathBuf {
    asset("SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// Row-major [rows, cols] → [cols, rows].
pub fn transpose(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; v.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = v[r * cols + c];
        }
    }
    out
}

/// The tiny-llama fixture copied into `dir` with a byte-level tokenizer (one token per byte,
/// ids 0..255), so that calibrated methods can tokenize text for it.
pub fn tiny_llama_with_tokenizer(dir: &std::path::Path) -> PathBuf {
    fixture_with_tokenizer(dir, "tiny-llama")
}

/// The fixture `name` (its config, weights and reference) copied into `dir` with the byte-level
/// tokenizer of [`tiny_llama_with_tokenizer`].
pub fn fixture_with_tokenizer(dir: &std::path::Path, name: &str) -> PathBuf {
    let src = fixture(name);
    let dst = dir.join(name);
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    let vocab: serde_json::Map<String, serde_json::Value> = shrink_io::tokenizer::byte_chars()
        .iter()
        .enumerate()
        .map(|(i, c)| (c.to_string(), serde_json::json!(i)))
        .collect();
    let tj = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
                          "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
                    "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
                  "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": false, "byte_fallback": false, "vocab": vocab, "merges": []}
    });
    std::fs::write(dst.join("tokenizer.json"), tj.to_string()).unwrap();
    dst
}

/// A deterministic text of `words` pseudo-words in `dir`/calib.txt.
pub fn calib_text(dir: &std::path::Path, words: usize) -> PathBuf {
    let vocab = [
        "the",
        "model",
        "weights",
        "are",
        "quantized",
        "to",
        "four",
        "bits",
        "with",
        "scales",
        "that",
        "protect",
        "salient",
        "channels",
        "of",
        "activations",
        "and",
        "groups",
    ];
    let mut s = String::new();
    let mut x: u64 = 12345;
    for i in 0..words {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        s.push_str(vocab[(x >> 33) as usize % vocab.len()]);
        s.push(if i % 13 == 12 { '\n' } else { ' ' });
    }
    let p = dir.join("calib.txt");
    std::fs::write(&p, s).unwrap();
    p
}

/// The calibration flags of the tiny-model tests: 4 samples of 48 tokens of the raw text
/// `calib` (see [`calib_text`]).
pub fn raw_calib(calib: &str) -> [&str; 8] {
    [
        "--calib",
        calib,
        "--calib-format",
        "raw",
        "--calib-samples",
        "4",
        "--calib-seqlen",
        "48",
    ]
}

/// The real model, or `None` (with a message) when the assets were not fetched.
pub fn real_model() -> Option<PathBuf> {
    let p = assets_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf");
    if p.exists() {
        Some(p)
    } else {
        eprintln!(
            "skipped: {} missing (run scripts/fetch-assets.sh)",
            p.display()
        );
        None
    }
}

/// Every tiny fixture architecture shrink runs.
pub const ARCHS: [&str; 7] = [
    "tiny-llama",
    "tiny-mistral",
    "tiny-qwen2",
    "tiny-gpt2",
    "tiny-gpt_neox",
    "tiny-bert_cls",
    "tiny-distilbert_cls",
];

/// Run shrink with `args`, which must succeed, and parse its JSON output.
pub fn run(args: &[&str]) -> serde_json::Value {
    let r = shrink(args);
    assert!(
        r.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    serde_json::from_slice(&r.stdout).unwrap()
}

/// The model's outputs on three 40-byte pieces of `text` (the byte-level tokenizer's ids): a
/// decoder's logits, an encoder's final hidden states and class logits.
pub fn outputs(dir: &std::path::Path, text: &[u8]) -> Vec<f32> {
    let ckpt = shrink_io::Checkpoint::open(dir).unwrap();
    let seqs: Vec<Vec<u32>> = (0..3)
        .map(|s| {
            text[s * 997..s * 997 + 40]
                .iter()
                .map(|&b| b as u32)
                .collect()
        })
        .collect();
    let flat = |t: candle_core::Tensor| -> Vec<f32> { t.flatten_all().unwrap().to_vec1().unwrap() };
    let mut out = Vec::new();
    match shrink_models::Architecture::from_checkpoint(&ckpt).unwrap() {
        shrink_models::Architecture::Decoder(_) => {
            let m = shrink_models::Model::load(&ckpt).unwrap();
            for ids in &seqs {
                out.extend(flat(m.forward(ids, None).unwrap()));
            }
        }
        shrink_models::Architecture::Encoder(cfg) => {
            let w = shrink_models::WeightLoader::new(&ckpt, None, &[]);
            let m = shrink_models::BertClassifier::load(cfg, &w).unwrap();
            for ids in &seqs {
                out.extend(flat(m.encode(ids).unwrap()));
                out.extend(flat(m.forward(ids).unwrap()));
            }
        }
    }
    out
}

/// RMSE of `b` against `a`, relative to `a`'s RMS.
pub fn rel_rmse(a: &[f32], b: &[f32]) -> f64 {
    let (e, r) = a.iter().zip(b).fold((0f64, 0f64), |(e, r), (&x, &y)| {
        (e + ((x - y) as f64).powi(2), r + (x as f64).powi(2))
    });
    (e / r).sqrt()
}

/// Mean KL(p ‖ q) of next-token distributions given as rows of `vocab` logits (the logits may
/// shift by a constant per row without changing it).
pub fn mean_kl(p: &[f32], q: &[f32], vocab: usize) -> f64 {
    let (mut sum, mut n) = (0f64, 0);
    for (a, b) in p.chunks(vocab).zip(q.chunks(vocab)) {
        let lse = |x: &[f32]| {
            let m = x.iter().fold(f32::MIN, |m, &v| m.max(v)) as f64;
            m + x.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln()
        };
        let (la, lb) = (lse(a), lse(b));
        sum += a
            .iter()
            .zip(b)
            .map(|(&x, &y)| (x as f64 - la).exp() * ((x as f64 - la) - (y as f64 - lb)))
            .sum::<f64>();
        n += 1;
    }
    sum / n as f64
}

/// `shrink args` fails, its message says each of `says` without a panic, and `out` (when
/// given) was not written.
pub fn refused(args: &[&str], says: &[&str], out: Option<&Path>) {
    let r = shrink(args);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success(), "{args:?} succeeded");
    for s in says {
        assert!(err.contains(s), "{args:?}: {s:?} not in {err}");
    }
    assert!(!err.contains("panicked"), "{err}");
    if let Some(out) = out {
        assert!(!out.exists(), "{} written", out.display());
    }
}

/// Every file under `path` (a file or a directory tree) with its bytes, sorted by path.
pub fn snapshot(path: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut v = Vec::new();
    if path.is_file() {
        v.push((path.to_path_buf(), std::fs::read(path).unwrap()));
    } else if path.is_dir() {
        for e in std::fs::read_dir(path).unwrap() {
            v.extend(snapshot(&e.unwrap().path()));
        }
    }
    v.sort();
    v
}

/// Make the Llama-family model in `dir` state `n` positions (the eval protocol's windows are
/// 512 tokens, the fixtures state 128; shrink refuses windows longer than a model's context).
pub fn set_positions(dir: &Path, n: usize) {
    let cfg = dir.join("config.json");
    let mut c: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg).unwrap()).unwrap();
    c["max_position_embeddings"] = n.into();
    std::fs::write(&cfg, c.to_string()).unwrap();
}

/// Run shrink with writes limited to `limit` bytes per file: past it a write fails with EFBIG
/// ("File too large"), as one fails on a full disk. SIGXFSZ is ignored so that the write
/// returns the error instead of the signal killing the process.
pub fn shrink_limited(args: &[String], limit: u64) -> Output {
    use std::os::unix::process::CommandExt;
    let mut c = Command::new(env!("CARGO_BIN_EXE_shrink"));
    c.args(args);
    // SAFETY: only async-signal-safe libc calls between fork and exec.
    unsafe {
        c.pre_exec(move || {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let r = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &r) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    c.output().expect("run shrink")
}
