//! What the tests of this crate share.

use std::path::PathBuf;

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
