//! Every seed (`fuzz/seeds/<target>/`) and every input a fuzzing campaign found
//! (`fuzz/regressions/<target>/`) through its harness: none may panic. One test per target, so
//! that a failing one names the reader; a failure lists every file that panicked, with its
//! message.

use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// Limit the test process's address space to 8 GiB (once): an input whose reader allocates what
/// a file claims then aborts the test ("memory allocation of N bytes failed") instead of taking
/// the machine's memory. The fuzz campaigns use 1 GiB (`afl-fuzz -m 1024`).
fn limit_memory() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        #[cfg(target_os = "linux")]
        // SAFETY: getrlimit/setrlimit on a valid, initialised struct; only the soft limit is
        // lowered, the hard one kept.
        unsafe {
            let mut lim: libc::rlimit = std::mem::zeroed();
            if libc::getrlimit(libc::RLIMIT_AS, &mut lim) == 0 {
                lim.rlim_cur = lim.rlim_max.min(8 << 30);
                libc::setrlimit(libc::RLIMIT_AS, &lim);
            }
        }
    });
}

/// Run every file of `fuzz/{seeds,regressions}/<target>/` through the target's harness.
fn replay(target: &str) {
    limit_memory();
    assert!(
        shrink_fuzz::fixtures()
            .join("tiny-llama/model.safetensors")
            .is_file(),
        "fixtures missing: expected {} (the shared fixtures directory beside the repository)",
        shrink_fuzz::fixtures().display()
    );
    let f = shrink_fuzz::TARGETS
        .iter()
        .find(|(n, _)| *n == target)
        .map(|(_, f)| *f)
        .unwrap_or_else(|| panic!("no harness {target}"));
    let mut files = Vec::new();
    for kind in ["seeds", "regressions"] {
        let dir = fuzz_dir().join(kind).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let hidden = p
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.') || n.ends_with(".md"));
            if p.is_file() && !hidden {
                files.push(p);
            }
        }
    }
    files.sort();
    assert!(!files.is_empty(), "no seeds for {target}");
    let mut panics = Vec::new();
    for p in &files {
        let data = std::fs::read(p).unwrap();
        let t0 = std::time::Instant::now();
        let r = std::panic::catch_unwind(|| f(&data));
        let secs = t0.elapsed().as_secs_f64();
        eprintln!(
            "{target}: {} ({} bytes) {} in {secs:.3} s",
            p.display(),
            data.len(),
            if r.is_ok() { "ok" } else { "PANICKED" }
        );
        if let Err(e) = r {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "(non-string panic)".into());
            panics.push(format!("{}: {msg}", p.display()));
        }
    }
    assert!(
        panics.is_empty(),
        "{} of {} {target} inputs panicked:\n  {}",
        panics.len(),
        files.len(),
        panics.join("\n  ")
    );
}

#[test]
fn gguf() {
    replay("gguf");
}

#[test]
fn safetensors() {
    replay("safetensors");
}

#[test]
fn safetensors_index() {
    replay("safetensors_index");
}

#[test]
fn config() {
    replay("config");
}

#[test]
fn tokenizer_json() {
    replay("tokenizer_json");
}

#[test]
fn chat_template() {
    replay("chat_template");
}

#[test]
fn imatrix() {
    replay("imatrix");
}

#[test]
fn quantized_layouts() {
    replay("quantized_layouts");
}

#[test]
fn peft() {
    replay("peft");
}

#[test]
fn every_target_is_tested() {
    // A target added to the harness needs a #[test] above and seeds.
    let names: Vec<&str> = shrink_fuzz::TARGETS.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names,
        [
            "gguf",
            "safetensors",
            "safetensors_index",
            "config",
            "tokenizer_json",
            "chat_template",
            "imatrix",
            "quantized_layouts",
            "peft"
        ]
    );
}
