//! The compression algorithms of shrink, one module each, over models read by `shrink-models`
//! and stored in the numeric formats of `shrink-formats`.
//!
//! - [`select`]: which weights a method touches (decoder linears by default; include/exclude
//!   patterns change that);
//! - [`rtn`]: round-to-nearest integers and NF4/FP4, in the ecosystem's storage layouts;
//! - [`calib`]: calibration samples; [`hessian`]: layer Hessians and their factorisations;
//! - [`gptq`], [`awq`], [`hqq`]: the calibrated and optimised quantizers;
//! - [`ggml_mix`]: llama.cpp's per-tensor type choice for its GGUF presets.

pub mod awq;
pub mod calib;
pub mod error;
pub mod ggml_mix;
pub mod gptq;
pub mod hessian;
pub mod hqq;
pub mod rtn;
pub mod select;

pub use error::{MethodError, Result};
