//! Errors of the methods layer.

/// What can go wrong while compressing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MethodError {
    /// A name pattern is not a valid glob.
    #[error("bad pattern {pattern:?}: {what}")]
    Pattern {
        /// The pattern as given.
        pattern: String,
        /// What is wrong with it.
        what: String,
    },
    /// The options cannot apply to this model (nothing selected, impossible sizes, ...).
    #[error("{0}")]
    Options(String),
    /// The arithmetic failed on this model's numbers: a Hessian not positive definite even
    /// after retrying the dampening, a search whose every candidate is non-finite.
    #[error("{layer}: {what}")]
    Numerical {
        /// The layer or weight(s) concerned.
        layer: String,
        /// What failed, and what to try.
        what: String,
    },
    /// The input holds values no method can take (NaN or infinite weights, ...).
    #[error("{}: {what}", path.display())]
    Input {
        /// The input checkpoint.
        path: std::path::PathBuf,
        /// What is wrong, naming the tensor.
        what: String,
    },
    /// Reading the input or writing the output failed (full disk, permissions, bad file).
    #[error(transparent)]
    Io(#[from] shrink_io::IoError),
    /// The model layer failed.
    #[error(transparent)]
    Model(#[from] shrink_models::ModelError),
    /// The format layer refused a tensor.
    #[error("tensor {name}: {source}")]
    Format {
        /// The tensor.
        name: String,
        /// The format layer's diagnosis.
        source: shrink_formats::FormatError,
    },
}

/// Result alias of this crate.
pub type Result<T, E = MethodError> = std::result::Result<T, E>;
