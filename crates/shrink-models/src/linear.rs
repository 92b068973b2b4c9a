//! The linear layer every architecture uses: `y = x Wᵀ + b`, with W stored [out, in].

use candle_core::{Module, Tensor};

/// A dense float32 linear layer.
#[derive(Debug, Clone)]
pub struct Linear {
    /// Weight, shape (out_features, in_features).
    pub weight: Tensor,
    /// Optional bias, shape (out_features).
    pub bias: Option<Tensor>,
}

impl Linear {
    /// A linear layer from its weight [out, in] and optional bias.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Linear { weight, bias }
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        // x: [..., in]; flatten leading dims so the product is one GEMM.
        let dims = x.dims().to_vec();
        let in_f = *dims.last().expect("linear input has at least one dim");
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let x2 = x.reshape((rows, in_f))?;
        let mut y = x2.matmul(&self.weight.t()?)?;
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b)?;
        }
        let mut out_dims = dims;
        *out_dims.last_mut().unwrap() = self.weight.dim(0)?;
        y.reshape(out_dims)
    }
}
