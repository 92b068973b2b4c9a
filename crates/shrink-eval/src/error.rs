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
    /// The inputs cannot be evaluated as asked (too short a text, vocabularies that differ, ...).
    #[error("{0}")]
    Input(String),
}

/// Result alias of this crate.
pub type Result<T, E = EvalError> = std::result::Result<T, E>;
