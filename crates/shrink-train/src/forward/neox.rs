//! neox, trainable (in progress).

use candle_core::Tensor;
use shrink_models::config::NeoxConfig;

use crate::error::{Result, TrainError};
use crate::params::Params;

fn missing() -> TrainError {
    TrainError::Options("neox has no trainable forward yet".into())
}

/// Embeddings.
pub fn embed(_p: &Params, _c: &NeoxConfig, _ids: &[u32]) -> Result<Tensor> {
    Err(missing())
}

/// Block `l`.
pub fn layer(_p: &Params, _c: &NeoxConfig, _l: usize, _x: &Tensor) -> Result<Tensor> {
    Err(missing())
}

/// Head.
pub fn head(_p: &Params, _c: &NeoxConfig, _x: &Tensor) -> Result<Tensor> {
    Err(missing())
}
