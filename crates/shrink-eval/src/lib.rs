//! The one evaluator of shrink: every model, compressed or not, is judged by this code.
//!
//! - [`protocol`]: the `lee-ppl-v1` texts (calibration and evaluation documents);
//! - [`perplexity`]: windowed perplexity, KLD and top-1 agreement against a base model;
//! - [`bench`]: prompt-processing and generation speed, as llama-bench measures them;
//! - [`generate`]: sampling (greedy, temperature, top-p) with a KV cache, streaming tokens;
//! - [`weights`]: per-layer weight error (MSE, SQNR, max) and histograms;
//! - [`evaluation`]: one model scored on a text file (`shrink eval`), with its report;
//! - [`compare`]: compressed models against their base, side by side (`shrink compare`);
//! - [`classify`]: sequence classifiers on labelled sentences — accuracy, precision, recall,
//!   F1, confusion counts — and side by side (`shrink compare --data`);
//! - [`chart_csv`]: the results CSV behind the perplexity/bits chart (`shrink chart`).
//!
//! Neighbours: `shrink-models` runs the forward pass; `shrink-methods` supplies the progress
//! trait and the compression reports compared; `shrink-cli` prints the reports.

pub mod bench;
pub mod chart;
pub mod error;
pub mod generate;
pub mod perplexity;
pub mod plot;
pub mod protocol;
pub mod weights;

pub use error::{EvalError, Result};
pub use perplexity::{perplexity, PplOptions, PplReport};
pub use protocol::{lee_texts, LeeTexts, PROTOCOL};
pub mod chart_csv;
pub mod classify;
pub mod compare;
pub mod evaluation;
