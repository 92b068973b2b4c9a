//! gpt2, trainable (in progress).

use candle_core::Tensor;
use shrink_models::config::Gpt2Config;

use crate::error::{Result, TrainError};
use crate::params::Params;

fn missing() -> TrainError {
    TrainError::Options("gpt2 has no trainable forward yet".into())
}

/// Embeddings.
pub fn embed(_p: &Params, _c: &Gpt2Config, _ids: &[u32]) -> Result<Tensor> {
    Err(missing())
}

/// Block `l`.
pub fn layer(_p: &Params, _c: &Gpt2Config, _l: usize, _x: &Tensor) -> Result<Tensor> {
    Err(missing())
}

/// Head.
pub fn head(_p: &Params, _c: &Gpt2Config, _x: &Tensor) -> Result<Tensor> {
    Err(missing())
}
