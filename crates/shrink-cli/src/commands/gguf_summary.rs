//! Printing the report of a GGUF written by `quantize --method q4_k_m|...` or `export --to
//! gguf`: its warning on stderr, then the report.

use anyhow::Result;
use shrink_methods::report::Report;

use crate::common;

/// Print `r`'s warning (requantized input) on stderr, then `r`.
pub fn print(r: &Report, json: bool) -> Result<()> {
    if let Some(w) = r.extra.get("warning").and_then(|w| w.as_str()) {
        eprintln!("warning: {w}");
    }
    common::print_report(r, json)
}
