//! Helpers shared by the CLI integration tests: run the binary, find fixtures and assets.
#![allow(dead_code)]

use std::path::PathBuf;
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

/// A file of the assets folder (SHRINK_ASSETS or ./assets; fails when missing).
pub fn asset(name: &str) -> PathBuf {
    let dir = std::env::var_os("SHRINK_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../assets")));
    let p = dir.join(name);
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
