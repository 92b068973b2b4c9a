//! The `lee-ppl-v1` protocol's texts (see `docs/eval-protocol.md` of the shared ground truth).

use crate::error::{EvalError, Result};

/// Name of the protocol, as reports print it.
pub const PROTOCOL: &str = "lee-ppl-v1";
/// Tokens per evaluation window.
pub const WINDOW: usize = 512;

/// The two texts the protocol cuts from the Lee corpus.
#[derive(Debug, Clone)]
pub struct LeeTexts {
    /// Documents 0..149 joined with a blank line: what calibrated methods may see.
    pub calibration: String,
    /// Documents 150..299 joined with a blank line: what perplexity is measured on.
    pub evaluation: String,
}

/// Cut the Lee background corpus (one document per line) into the protocol's texts.
pub fn lee_texts(corpus: &str) -> Result<LeeTexts> {
    let docs: Vec<&str> = corpus.lines().map(str::trim).collect();
    if docs.len() < 300 {
        return Err(EvalError::Input(format!(
            "the Lee corpus has 300 documents, one per line; this text has {} lines",
            docs.len()
        )));
    }
    Ok(LeeTexts {
        calibration: docs[..150].join("\n\n"),
        evaluation: docs[150..300].join("\n\n"),
    })
}
