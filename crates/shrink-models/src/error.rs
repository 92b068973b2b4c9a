//! Errors of the model layer.

use std::path::PathBuf;

/// What can go wrong building or running a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// Reading the checkpoint failed.
    #[error(transparent)]
    Io(#[from] shrink_io::IoError),
    /// The configuration is missing a field or has an impossible value.
    #[error("{}: {what}", path.display())]
    Config {
        /// The checkpoint (config.json or GGUF).
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The architecture is not one shrink implements.
    #[error("{}: unknown architecture {name:?} (shrink supports: {supported})", path.display())]
    UnknownArchitecture {
        /// The checkpoint.
        path: PathBuf,
        /// The architecture as named by the checkpoint.
        name: String,
        /// The supported names.
        supported: &'static str,
    },
    /// A tensor's shape differs from what the configuration implies.
    #[error("{}: tensor {name} has shape {got:?}, the config implies {expected:?}", path.display())]
    Shape {
        /// The checkpoint.
        path: PathBuf,
        /// The tensor.
        name: String,
        /// Shape implied by the config.
        expected: Vec<usize>,
        /// Shape found.
        got: Vec<usize>,
    },
    /// A tensor computation failed (a bug or an impossible input such as a too-long prompt).
    #[error("tensor computation: {0}")]
    Candle(#[from] candle_core::Error),
    /// An input is invalid (token id out of range, context too long, ...).
    #[error("{0}")]
    Input(String),
}

/// Result alias of this crate.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;
