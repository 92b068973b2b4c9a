//! Errors of the format layer.

/// What can go wrong when decoding or encoding packed numeric data.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// The element count is not a whole number of the format's blocks.
    #[error("{format}: {elements} elements is not a multiple of the block size {block}")]
    NotBlockAligned {
        /// Format name.
        format: &'static str,
        /// Number of elements asked for.
        elements: usize,
        /// The format's block size in elements.
        block: usize,
    },
    /// The byte buffer does not hold exactly the bytes the element count needs.
    #[error("{format}: {elements} elements need {expected} bytes, got {actual}")]
    WrongByteCount {
        /// Format name.
        format: &'static str,
        /// Number of elements asked for.
        elements: usize,
        /// Bytes the format needs for them.
        expected: usize,
        /// Bytes given.
        actual: usize,
    },
    /// The format has no dequantizer in shrink (yet).
    #[error("{0}: dequantizing this type is not supported")]
    Unsupported(&'static str),
}
