//! Errors of the I/O layer: every variant names the file it concerns.

use std::path::PathBuf;

/// What can go wrong reading or writing checkpoints, tokenizers and texts.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IoError {
    /// The operating system refused (missing file, permission, full disk, ...).
    #[error("{}: {source}", path.display())]
    Os {
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file's content is malformed; `what` says how.
    #[error("{}: {what}", path.display())]
    Malformed {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong, in words.
        what: String,
    },
    /// A safetensors file failed validation.
    #[error("{}: invalid safetensors file: {source}", path.display())]
    Safetensors {
        /// The file concerned.
        path: PathBuf,
        /// The safetensors crate's diagnosis.
        source: safetensors::SafeTensorError,
    },
    /// A JSON file failed to parse.
    #[error("{}: invalid JSON: {source}", path.display())]
    Json {
        /// The file concerned.
        path: PathBuf,
        /// The parser's diagnosis.
        source: serde_json::Error,
    },
    /// A tensor's stored bytes could not be decoded.
    #[error("{}: tensor {name}: {source}", path.display())]
    Format {
        /// The file concerned.
        path: PathBuf,
        /// The tensor concerned.
        name: String,
        /// The format layer's diagnosis.
        source: shrink_formats::FormatError,
    },
    /// A tensor the model needs is not in the checkpoint.
    #[error("{}: no tensor named {name}", path.display())]
    MissingTensor {
        /// The checkpoint concerned.
        path: PathBuf,
        /// The tensor looked for.
        name: String,
    },
    /// The tokenizer could not be built or could not encode/decode.
    #[error("{}: tokenizer: {what}", path.display())]
    Tokenizer {
        /// The file the tokenizer comes from.
        path: PathBuf,
        /// What went wrong.
        what: String,
    },
}

impl IoError {
    /// An OS error on `path`.
    pub fn os(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        IoError::Os {
            path: crate::output::shown(path.into()),
            source,
        }
    }

    /// A malformed-content error on `path`.
    pub fn malformed(path: impl Into<PathBuf>, what: impl Into<String>) -> Self {
        IoError::Malformed {
            path: crate::output::shown(path.into()),
            what: what.into(),
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = IoError> = std::result::Result<T, E>;
