//! Numeric formats of shrink: how weights are stored, and how to get float32 back exactly.
//!
//! This crate knows nothing about models. It works on plain slices:
//! - [`float`]: float32 ↔ float16 / bfloat16 conversions of whole slices;
//! - [`ggml`]: the GGML block formats that GGUF files carry (Q4_0 … Q6_K, IQ4_NL, IQ4_XS),
//!   each with its block layout, its reference dequantizer and (for the types llama.cpp
//!   quantizes to) its reference quantizer, byte-identical to ggml's, identified by
//!   [`ggml::GgmlType`];
//! - [`int`]: round-to-nearest integers (2–8 bits), symmetric or zero-point, per tensor /
//!   channel / group, with f32 / f16 / bf16 scales, bit-packed ([`int::IntTensor`]);
//! - [`nf4`]: bitsandbytes' NF4 and FP4 blocks with optional double-quantized absmax
//!   ([`nf4::Nf4Tensor`]), bit-identical to bitsandbytes on CPU;
//! - [`int8_rowwise`]: LLM.int8()'s row-wise int8 weights;
//! - [`gptq_layout`], [`awq_layout`], [`hqq_layout`]: the codes, scales and zero points those
//!   ecosystems store, and their packing (the algorithms that choose them live in
//!   `shrink-methods`' `gptq`, `awq` and `hqq`);
//! - [`sparse_layout`]: compressed-tensors' `sparse-bitmask` and `sparse-24-bitmask` layouts
//!   of sparse weights (bitmask packing, 2:4 checks);
//! - [`transpose`]: row-major matrix transposition, in tiles on the rayon pool.
//!
//! Neighbours: `shrink-io` reads these bytes out of files; `shrink-models` computes with the
//! float32 values.
//!
//! ```
//! use shrink_formats::ggml::{dequantize, GgmlType};
//! // One Q8_0 block: an f16 scale of 0.5 followed by 32 int8 values.
//! let mut block = vec![0u8; GgmlType::Q8_0.type_size()];
//! block[..2].copy_from_slice(&half::f16::from_f32(0.5).to_le_bytes());
//! block[2] = 4; // first value: 4 × 0.5
//! let mut out = vec![0f32; 32];
//! dequantize(GgmlType::Q8_0, &block, &mut out).unwrap();
//! assert_eq!(out[0], 2.0);
//! ```
#![deny(missing_docs)]

pub mod awq_layout;
pub mod error;
pub mod float;
pub mod ggml;
pub mod gptq_layout;
pub mod hqq_layout;
pub mod int;
pub mod int8_rowwise;
pub mod nf4;
pub mod sparse_layout;
pub mod transpose;

pub use error::FormatError;

/// Tensors with at least this many elements are (de)quantized on all cores.
pub(crate) const PAR_MIN_ELEMENTS: usize = 1 << 16;

/// Fill the row-major `out` one row of `cols` values at a time with `row(r, out_row)`, on all
/// cores when `out` holds at least [`PAR_MIN_ELEMENTS`] values.
pub(crate) fn fill_rows(out: &mut [f32], cols: usize, row: impl Fn(usize, &mut [f32]) + Sync) {
    use rayon::prelude::*;
    if out.len() >= PAR_MIN_ELEMENTS {
        out.par_chunks_mut(cols)
            .enumerate()
            .for_each(|(r, o)| row(r, o));
    } else {
        for (r, o) in out.chunks_mut(cols).enumerate() {
            row(r, o);
        }
    }
}
