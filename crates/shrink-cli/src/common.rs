//! Pieces every command shares: opening a model with its tokenizer, progress bars, byte sizes.

use std::path::Path;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use shrink_io::tokenizer::Tokenizer;
use shrink_io::Checkpoint;

/// The tokenizer of a checkpoint: tokenizer.json of an HF directory, or the GGUF's vocabulary.
pub fn tokenizer(ckpt: &Checkpoint) -> Result<Tokenizer> {
    Ok(match ckpt {
        Checkpoint::Gguf(g) => Tokenizer::from_gguf(g)?,
        Checkpoint::Hf(h) => {
            let p = h.tokenizer_json.as_ref().with_context(|| {
                format!(
                    "{}: no tokenizer.json in this directory; this command needs one",
                    h.dir.display()
                )
            })?;
            Tokenizer::from_file(p)?
        }
    })
}

/// Open a checkpoint, with the path in the error.
pub fn open(path: &Path) -> Result<Checkpoint> {
    Ok(Checkpoint::open(path)?)
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
pub fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// Bytes as a human size (MiB with three decimals below a GiB).
pub fn human(bytes: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    if bytes as f64 >= 1024.0 * MIB {
        format!("{:.3} GiB", bytes as f64 / MIB / 1024.0)
    } else {
        format!("{:.3} MiB", bytes as f64 / MIB)
    }
}

/// Peak resident set size of this process so far, in bytes (Linux; None elsewhere).
pub fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
