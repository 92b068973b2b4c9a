//! What the tests of this crate share (each test binary uses part of it).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// A fixture of `../shared/fixtures`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/fixtures")
        .join(name)
}

/// A fresh, empty scratch folder for `test`.
pub fn scratch(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("shrink-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Four short calibration samples of token ids below 500.
pub fn samples() -> Vec<Vec<u32>> {
    (0..4)
        .map(|s| (0..32).map(|i| ((i * 31 + s * 7) % 500) as u32).collect())
        .collect()
}

/// The real model, or `None` (with a message) when the assets were not fetched.
pub fn smollm2() -> Option<PathBuf> {
    let p = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../assets"))
        .join("SmolLM2-135M-Instruct.Q4_1.gguf");
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
