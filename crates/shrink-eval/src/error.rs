//! Errors of the evaluator.

/// What can go wrong while evaluating.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EvalError {
    /// The model failed.
    #[error(transparent)]
    Model(#[from] shrink_models::ModelError),
    /// Tensor plumbing failed.
    #[error("tensor computation: {0}")]
    Candle(#[from] candle_core::Error),
    /// A checkpoint, tokenizer or text could not be read.
    #[error(transparent)]
    Io(#[from] shrink_io::IoError),
    /// A file could not be read (the OS error is the source).
    #[error("{}: cannot read", path.display())]
    Read {
        /// The file concerned.
        path: std::path::PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The inputs cannot be evaluated as asked (too short a text, vocabularies that differ, ...).
    #[error("{0}")]
    Input(String),
}

/// Result alias of this crate.
pub type Result<T, E = EvalError> = std::result::Result<T, E>;
