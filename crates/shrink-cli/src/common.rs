//! Pieces every command shares: opening a model with its tokenizer, progress bars, byte sizes.

use std::path::Path;

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use shrink_io::tokenizer::Tokenizer;
use shrink_io::Checkpoint;
use shrink_methods::pipeline::Progress;
use shrink_methods::report::Report;

pub use shrink_methods::report::{human, peak_rss};

/// The tokenizer of a checkpoint: tokenizer.json of an HF directory, or the GGUF's vocabulary.
pub fn tokenizer(ckpt: &Checkpoint) -> Result<Tokenizer> {
    Ok(Tokenizer::for_checkpoint(ckpt)?)
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

/// The library's progress as a bar on stderr.
#[derive(Default)]
pub struct Bar(std::sync::Mutex<Option<ProgressBar>>);

impl Progress for Bar {
    fn start(&self, what: &str, len: u64) {
        *self.0.lock().expect("not poisoned") = Some(bar(len, what));
    }
    fn inc(&self, n: u64) {
        if let Some(b) = self.0.lock().expect("not poisoned").as_ref() {
            b.inc(n);
        }
    }
    fn finish(&self) {
        if let Some(b) = self.0.lock().expect("not poisoned").take() {
            b.finish_and_clear();
        }
    }
}

/// Print a run's report: its warning (a requantized input) on stderr, then one JSON object,
/// or the `wrote` line, the report's lines and the peak RSS.
pub fn print_report(r: &Report, json: bool) -> Result<()> {
    if let Some(w) = r.extra.get("warning").and_then(|w| w.as_str()) {
        eprintln!("warning: {w}");
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&r.to_json())?);
        return Ok(());
    }
    println!("wrote          {}", r.output.display());
    for l in r.lines() {
        println!("{l}");
    }
    if let Some(b) = peak_rss() {
        println!("peak RSS       {}", human(b));
    }
    Ok(())
}
