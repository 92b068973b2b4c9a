//! Training in shrink: a trainable forward for every architecture, distillation losses, AdamW,
//! resumable checkpoints.
//!
//! - [`forward::Trainable`]: a model's weights as candle `Var`s and its forward cut into
//!   embed → blocks → head, built from the differentiable ops of [`ops`];
//! - [`grad::backward`]: the backward one block at a time, recomputing each block's forward
//!   (memory flat in depth);
//! - [`loss`]: Hinton's distillation loss (forward or reverse KL at a temperature, plus the
//!   labels' cross-entropy) as value and gradient with respect to the logits;
//! - [`optim`]: AdamW with warmup and cosine decay, clipping by the global norm;
//! - [`state`]: checkpoints written atomically, for `--resume`;
//! - [`distill`]: the teacher → student loop for language models;
//! - [`finetune`]: a quantized model's scales trained against its float teacher (E2E-QP);
//! - [`reparam`]: the one loop that trains weights through a reparameterisation W = f(θ);
//! - [`qat`]: quantization-aware training (fake quantization, straight-through estimator);
//! - [`lora`]: LoRA adapters over frozen quantized weights (QLoRA), saved as PEFT adapters;
//! - [`block_ap`]: EfficientQAT's Block-AP, block-wise training of weights and quantizers;
//! - [`rotation`]: SpinQuant's learned rotations, trained on the quantized model's loss;
//! - [`classify`]: sequence classifiers fine-tuned on labelled sentences and distilled into
//!   students with fewer layers and heads;
//!
//! Neighbours: `shrink-models` (the inference forward, the teacher's), `shrink-methods`
//! (structured pruning makes students from teachers).

pub mod block_ap;
pub mod classify;
pub mod distill;
pub mod error;
pub mod finetune;
pub mod forward;
pub mod grad;
pub mod lora;
pub mod loss;
pub mod ops;
pub mod optim;
pub mod params;
pub mod qat;
pub mod reparam;
pub mod rotation;
pub mod state;
pub mod student;

pub use error::{Result, TrainError};
pub use forward::Trainable;
pub use params::Params;
