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
    /// shrink has no dequantizer (or, for `quantize`, no quantizer) for this type (yet).
    #[error("{0}: this type is not supported here")]
    Unsupported(&'static str),
    /// The format does not offer values of this bit width.
    #[error("{format}: {bits}-bit values are not supported (supported: {supported})")]
    UnsupportedBits {
        /// Format name.
        format: &'static str,
        /// Bit width asked for.
        bits: u8,
        /// The widths the format offers, for the message.
        supported: &'static str,
    },
    /// The group size is zero or does not divide the row length; shrink refuses (no padding).
    #[error(
        "{format}: group size {group} does not divide the {cols} columns of a [{rows}, {cols}] \
         tensor (refused: shrink does not pad groups)"
    )]
    GroupSize {
        /// Format name.
        format: &'static str,
        /// Rows of the tensor (output features).
        rows: usize,
        /// Columns of the tensor (input features, the grouped axis).
        cols: usize,
        /// Group size asked for.
        group: usize,
    },
    /// The block size is not one the format allows.
    #[error("{format}: block size {block} is not allowed ({allowed})")]
    BlockSize {
        /// Format name.
        format: &'static str,
        /// Block size asked for.
        block: usize,
        /// The allowed block sizes, for the message.
        allowed: &'static str,
    },
    /// The input holds a NaN or an infinity (the first one is named).
    #[error("{format}: non-finite value {value} at element {index} (row {row}, column {col})")]
    NonFinite {
        /// Format name.
        format: &'static str,
        /// Flat (row-major) index of the value.
        index: usize,
        /// Its row (0 for formats that see a flat vector).
        row: usize,
        /// Its column (the flat index for formats that see a flat vector).
        col: usize,
        /// The offending value.
        value: f32,
    },
    /// The tensor has no elements.
    #[error("{format}: the tensor has no elements")]
    Empty {
        /// Format name.
        format: &'static str,
    },
    /// The number of values does not match the shape.
    #[error("{format}: a [{rows}, {cols}] tensor needs {expected} values, got {actual}")]
    ShapeMismatch {
        /// Format name.
        format: &'static str,
        /// Rows of the shape.
        rows: usize,
        /// Columns of the shape.
        cols: usize,
        /// rows × cols.
        expected: usize,
        /// Values given.
        actual: usize,
    },
    /// A scale does not fit its storage type (it would become infinite).
    #[error("{format}: scale {scale} overflows its storage type {scale_type}")]
    ScaleOverflow {
        /// Format name.
        format: &'static str,
        /// The scale in float32 (possibly already infinite).
        scale: f32,
        /// Storage type name ("f16", "bf16", "f32").
        scale_type: &'static str,
    },
    /// A float zero point does not fit its storage type (it would become infinite).
    #[error("{format}: zero point {zero} of group {group} overflows its storage type {zero_type}")]
    ZeroOverflow {
        /// Format name.
        format: &'static str,
        /// The zero point in float32.
        zero: f32,
        /// Its group.
        group: usize,
        /// Storage type name ("f16", ...).
        zero_type: &'static str,
    },
    /// Stored parts of a tensor are inconsistent with each other (lengths or values).
    #[error("{format}: inconsistent parts: {what}")]
    Inconsistent {
        /// Format name.
        format: &'static str,
        /// What does not fit.
        what: String,
    },
    /// A packed axis does not fill whole int32 words (GPTQ / AWQ layouts pack 32 / bits values
    /// per word, 3-bit values 32 per 3 words); shrink refuses rather than pads.
    #[error(
        "{format}: {len} {axis} at {bits} bits do not fill whole int32 words (needs a multiple \
         of {multiple}; shrink does not pad)"
    )]
    NotWordAligned {
        /// Format name.
        format: &'static str,
        /// Which axis, in words ("input features", "output features").
        axis: &'static str,
        /// Its length.
        len: usize,
        /// Bits per value.
        bits: u8,
        /// The multiple the length must be.
        multiple: usize,
    },
    /// A weight is not 2:4 sparse where a 2:4 layout needs it to be (the first offending group
    /// of four columns is named).
    #[error("2:4 sparsity: row {row}, columns {col}..{col}+4: {count} {what}")]
    NotTwoFour {
        /// Row of the group.
        row: usize,
        /// First column of the group.
        col: usize,
        /// What was counted in the group.
        count: usize,
        /// What is wrong, in words.
        what: String,
    },
    /// An error about one tensor, which it names.
    #[error("{name}: {source}")]
    WithTensor {
        /// The tensor concerned.
        name: String,
        /// What is wrong with it.
        source: Box<FormatError>,
    },
}
