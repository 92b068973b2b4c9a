//! Every seed (`fuzz/seeds/<target>/`) and every input a fuzzing campaign found
//! (`fuzz/regressions/<target>/`) through its harness: none may panic, abort or hang. One test
//! per target, so that a failing one names the reader; a failure lists every file that failed,
//! with the panic message (or the abort's last words).
//!
//! Each file runs in a child process (this test binary again, running `replay_one_child` on
//! it), under a 4 GiB address-space limit and a 60 s timeout, so that an input whose reader
//! allocates what a file claims, or loops, fails its own test instead of taking the process,
//! the machine's memory or the whole run with it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The environment variable that makes `replay_one_child` run one file: `TARGET:PATH`.
const CHILD_VAR: &str = "SHRINK_FUZZ_REPLAY";
/// Per-file limits of the child.
const MEMORY_LIMIT: u64 = 4 << 30;
const TIMEOUT: Duration = Duration::from_secs(60);

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

fn harness(target: &str) -> fn(&[u8]) {
    shrink_fuzz::TARGETS
        .iter()
        .find(|(n, _)| *n == target)
        .map(|(_, f)| *f)
        .unwrap_or_else(|| panic!("no harness {target}"))
}

/// Limit this process's address space (the soft limit; the hard one is kept).
fn limit_memory(bytes: u64) {
    #[cfg(target_os = "linux")]
    // SAFETY: getrlimit/setrlimit on a valid, initialised struct; lowering the soft limit is
    // always allowed.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_AS, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max.min(bytes as libc::rlim_t);
            libc::setrlimit(libc::RLIMIT_AS, &lim);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = bytes;
}

/// Run in a child process by [`replay`]: the one file `$SHRINK_FUZZ_REPLAY` names. Does
/// nothing in a normal test run.
#[test]
fn replay_one_child() {
    let Ok(spec) = std::env::var(CHILD_VAR) else {
        return;
    };
    let (target, path) = spec.split_once(':').expect("TARGET:PATH");
    limit_memory(MEMORY_LIMIT);
    let data = std::fs::read(path).unwrap();
    harness(target)(&data);
}

/// What a failed child said: the panic's place and message, an allocation failure, or its
/// last lines.
fn why(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().collect();
    if let Some(i) = lines.iter().position(|l| l.contains("panicked at")) {
        let msg = lines.get(i + 1).copied().unwrap_or("");
        return format!("{} {msg}", lines[i].trim());
    }
    if let Some(l) = lines.iter().find(|l| l.contains("memory allocation of")) {
        return l.trim().to_string();
    }
    let tail = &lines[lines.len().saturating_sub(3)..];
    tail.join(" | ")
}

/// Run every file of `fuzz/{seeds,regressions}/<target>/` through the target's harness, each
/// in a child process.
fn replay(target: &str) {
    assert!(
        shrink_fuzz::fixtures()
            .join("tiny-llama/model.safetensors")
            .is_file(),
        "fixtures missing: expected {} (the shared fixtures directory beside the repository)",
        shrink_fuzz::fixtures().display()
    );
    harness(target);
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
    let exe = std::env::current_exe().unwrap();
    let mut failed = Vec::new();
    for p in &files {
        let t0 = Instant::now();
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "replay_one_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_VAR, format!("{target}:{}", p.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The child's stderr, read while it runs (a long backtrace must not block it).
        let mut stderr = child.stderr.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
            s
        });
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break Some(s);
            }
            if t0.elapsed() > TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let err = reader.join().unwrap_or_default();
        let secs = t0.elapsed().as_secs_f64();
        let verdict = match status {
            Some(s) if s.success() => None,
            Some(s) => Some(format!("{s}: {}", why(&err))),
            None => Some(format!("timed out after {} s", TIMEOUT.as_secs())),
        };
        eprintln!(
            "{target}: {} {} in {secs:.3} s",
            p.display(),
            verdict.as_deref().unwrap_or("ok")
        );
        if let Some(v) = verdict {
            failed.push(format!("{}: {v}", p.display()));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} {target} inputs failed:\n  {}",
        failed.len(),
        files.len(),
        failed.join("\n  ")
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
