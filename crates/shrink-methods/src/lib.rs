//! The compression algorithms of shrink, one module each, over models read by `shrink-models`
//! and stored in the numeric formats of `shrink-formats`.
//!
//! - [`select`]: which weights a method touches (decoder linears by default; include/exclude
//!   patterns change that);
//! - [`rtn`]: round-to-nearest integers and NF4/FP4, in the ecosystem's storage layouts;
//! - [`per_tensor`]: per-tensor quantizers (RTN, HQQ) and the streaming per-tensor writer;
//!   [`export_layout`]: the ecosystem layouts (gptq, awq, bitsandbytes, compressed-tensors);
//! - [`calib`]: calibration samples; [`hessian`]: layer Hessians and their factorisations;
//! - [`gptq`], [`awq`], [`hqq`]: the calibrated and optimised quantizers;
//! - [`sparsity`]: sparsity patterns, magnitude and Wanda masks; [`sparsegpt`]: SparseGPT;
//!   [`prune`]: pruning a whole checkpoint layer by layer;
//! - [`ggml_mix`]: llama.cpp's per-tensor type choice for its GGUF presets;
//!   [`ggml_quantize`]: llama-quantize over a GGUF; [`export_gguf`]: an HF directory or a GGUF
//!   to a GGUF, as llama.cpp's converter writes it;
//! - [`pipeline`]: the one layer-by-layer driver and streaming writer; [`calibrated`]: GPTQ,
//!   AWQ and the importance matrix run over a whole checkpoint of any architecture;
//!   [`resume`]: the finished layers kept so a killed run continues (`--resume`);
//! - [`convert`]: a checkpoint re-typed into an HF directory, logits compared;
//! - [`rotate`]: offline rotations of the residual stream and of the heads (QuaRot R1/R2),
//!   the same model in a basis that quantizes better; [`hadamard`]: the matrices;
//! - [`structured`]: structured pruning (layers by Block Influence, MLP channels and
//!   attention heads by activation), a smaller dense model of the same architecture;
//! - [`allocate`]: one candidate per tensor to meet a size budget or a loss bound (`shrink auto`);
//!   [`sensitivity`]: what each candidate would cost a tensor; [`auto`]: the measured mix
//!   written as a GGUF, [`auto_ct`]: as compressed-tensors; [`weighted_int`]: integer grids whose scales are
//!   searched for the least importance-weighted error;
//! - [`report`]: the one report of a run; [`output`]: config, tokenizer and report beside the
//!   weights, committed atomically.

pub mod allocate;
pub mod auto;
pub mod auto_ct;
pub mod awq;
pub mod calib;
pub mod calibrated;
pub mod convert;
pub mod error;
pub mod export_gguf;
pub mod export_layout;
pub mod ggml_mix;
pub mod ggml_quantize;
pub mod gptq;
pub mod hadamard;
pub mod hessian;
pub mod hqq;
pub mod output;
pub mod per_tensor;
pub mod pipeline;
pub mod prune;
pub mod report;
pub mod resume;
pub mod rotate;
pub mod rtn;
pub mod select;
pub mod sensitivity;
pub mod sparsegpt;
pub mod sparsity;
pub mod structured;
pub mod weighted_int;

pub use error::{MethodError, Result};
