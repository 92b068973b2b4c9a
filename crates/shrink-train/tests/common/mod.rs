//! Helpers the training tests share.

use std::path::PathBuf;

/// A fixture directory of `../shared/fixtures`.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/fixtures")
        .join(name)
}

/// `n` token ids of a deterministic pseudo-text below `vocab`, drawn from `seed`.
pub fn ids(n: usize, vocab: u32, seed: u64) -> Vec<u32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) as u32) % vocab
        })
        .collect()
}
