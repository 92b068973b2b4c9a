//! Errors of training.

use std::path::PathBuf;

/// What can go wrong while training.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrainError {
    /// Reading or writing a checkpoint failed.
    #[error(transparent)]
    Io(#[from] shrink_io::IoError),
    /// Building or running the model failed.
    #[error(transparent)]
    Model(#[from] shrink_models::ModelError),
    /// A tensor computation failed.
    #[error("tensor computation: {0}")]
    Candle(#[from] candle_core::Error),
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// An input (model, text, labels, state) is unusable.
    #[error("{}: {what}", path.display())]
    Input {
        /// The file or directory.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// Options that cannot work together or are out of range.
    #[error("{0}")]
    Options(String),
    /// The loss became NaN or infinite.
    #[error("the loss became {value} at step {step}; the last good checkpoint is kept{}", last_good.as_ref().map(|p| format!(" ({})", p.display())).unwrap_or_default())]
    NonFinite {
        /// The optimiser step (1-based) whose loss was not finite.
        step: usize,
        /// The value seen.
        value: f64,
        /// The last checkpoint written, if any.
        last_good: Option<PathBuf>,
    },
    /// Training was interrupted (Ctrl-C) after writing a checkpoint.
    #[error("interrupted at step {step}; checkpoint written to {} (continue with --resume)", path.display())]
    Interrupted {
        /// Steps completed.
        step: usize,
        /// The checkpoint.
        path: PathBuf,
    },
}

/// Result alias of this crate.
pub type Result<T, E = TrainError> = std::result::Result<T, E>;

impl TrainError {
    /// An [`TrainError::Input`] about `path`.
    pub fn input(path: impl Into<PathBuf>, what: impl Into<String>) -> Self {
        TrainError::Input {
            path: path.into(),
            what: what.into(),
        }
    }
}

impl From<shrink_methods::MethodError> for TrainError {
    fn from(e: shrink_methods::MethodError) -> Self {
        TrainError::Options(e.to_string())
    }
}
