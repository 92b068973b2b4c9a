//! Loading and using a tokenizer again and again does not grow the process. tokenizers 0.23 keeps
//! each BPE instance's word cache in a thread-local map that outlives the instance; shrink builds
//! its BPE models without that cache (`shrink_io::tokenizer`). A fuzzing campaign found the
//! growth (about 1 MB a call until a 1 GiB limit aborted the process). Alone in its own test
//! binary, so that no other test's allocations move the process's resident size.

use std::path::PathBuf;

use shrink_io::tokenizer::Tokenizer;
use shrink_io::GgufFile;

fn assets_dir() -> PathBuf {
    std::env::var_os("SHRINK_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../assets")))
}

/// This process's resident memory, bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}

#[test]
#[cfg(target_os = "linux")]
fn loading_and_encoding_again_does_not_grow_the_process() {
    let model = assets_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf");
    let corpus = assets_dir().join("lee_background.cor");
    assert!(
        model.is_file() && corpus.is_file(),
        "{} or {} missing: run scripts/fetch-assets.sh",
        model.display(),
        corpus.display()
    );
    // About 10,000 distinct words: each instance could cache as many.
    let text = std::fs::read_to_string(&corpus).unwrap();
    let g = GgufFile::open(&model).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (name, content) in Tokenizer::from_gguf(&g).unwrap().hf_files().unwrap() {
        std::fs::write(dir.path().join(name), content).unwrap();
    }
    let json = dir.path().join("tokenizer.json");
    let from_json = || Tokenizer::from_file(&json).unwrap();
    let from_gguf = || Tokenizer::from_gguf(&g).unwrap();
    // The BPE rebuilt without its cache encodes as the GGUF's vocabulary does (the tokenizer
    // tests check that one against llama.cpp's ids).
    let reference = from_gguf().encode(&text, false).unwrap();
    assert_eq!(from_json().encode(&text, false).unwrap(), reference);
    let loaders: [(&str, &dyn Fn() -> Tokenizer); 2] =
        [("tokenizer.json", &from_json), ("GGUF", &from_gguf)];
    for (what, load) in loaders {
        // Warm up whatever is allocated once (regexes, the allocator's own pools).
        for _ in 0..2 {
            assert_eq!(load().encode(&text, false).unwrap(), reference);
        }
        let before = rss();
        let rounds = 12;
        for _ in 0..rounds {
            assert_eq!(load().encode(&text, false).unwrap(), reference, "{what}");
        }
        let grown = rss().saturating_sub(before);
        // With tokenizers' cache the 12 rounds grew it by 43.6 MiB (measured before the fix);
        // without it the resident size stays within the allocator's noise.
        assert!(
            grown < 6 << 20,
            "{what}: {rounds} loads and encodings grew the process by {:.1} MiB",
            grown as f64 / (1 << 20) as f64
        );
        eprintln!(
            "{what}: {rounds} loads + encodings of {} tokens, resident size {:+.2} MiB",
            reference.len(),
            grown as f64 / (1 << 20) as f64
        );
    }
}
