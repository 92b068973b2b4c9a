//! The linear layer every architecture uses: `y = x Wᵀ + b`.

use std::sync::Arc;

use candle_core::{Device, Module, Tensor};
use shrink_io::quantized::Quantized;

use crate::qmatmul::QuantMatmul;

/// The share of zeros from which a float32 weight is held sparse at run time (values plus one
/// bit per weight: 0.6 · 4 + 1/8 bytes per weight at this share, against 4 dense).
pub const SPARSE_MIN: f64 = 0.4;

/// How a linear layer's weight is held in memory.
#[derive(Clone)]
enum Weight {
    /// float32, transposed: shape (in_features, out_features), contiguous. The GEMM then
    /// reads it row-major: measured with candle's matmul on SmolLM2's shapes (512 tokens) at
    /// 191 vs 161 GFLOPS (576→576) and 201 vs 113 GFLOPS (1536→576) against a strided `Wᵀ` view.
    Dense(Tensor),
    /// Packed as stored (integers or NF4/FP4), or sparse; dequantized block by block for each
    /// forward ([`QuantMatmul`]), so the model keeps only its packed bytes resident between
    /// layers.
    Quantized {
        q: Arc<QuantMatmul>,
        out_features: usize,
        in_features: usize,
    },
}

/// A LoRA pair beside a layer's weight: `y += s · (x Aᵀ) Bᵀ` (the weight itself untouched,
/// quantized or not, as PEFT runs an adapter over a bitsandbytes base).
#[derive(Clone, Debug)]
struct Lora {
    /// Aᵀ, shape (in_features, r).
    a_t: Tensor,
    /// Bᵀ, shape (r, out_features).
    b_t: Tensor,
    /// The factor s.
    scale: f64,
}

/// A linear layer `y = x Wᵀ + b`, dense float32 or quantized, optionally with a LoRA pair.
#[derive(Clone)]
pub struct Linear {
    w: Weight,
    /// Optional bias, shape (out_features).
    pub bias: Option<Tensor>,
    lora: Option<Lora>,
}

impl std::fmt::Debug for Linear {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.w {
            Weight::Dense(t) => write!(f, "Linear(dense {:?})", t.dims()),
            Weight::Quantized {
                out_features,
                in_features,
                ..
            } => {
                write!(f, "Linear(quantized {out_features}x{in_features})")
            }
        }
    }
}

impl Linear {
    /// A linear layer from its weight, shape (out_features, in_features), and optional bias.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> candle_core::Result<Self> {
        let (out, inp) = weight.dims2()?;
        // A contiguous float32 weight by the tiled transpose; others through candle.
        let wt = match crate::with_f32(&weight, |w| {
            shrink_formats::transpose::transpose(w, out, inp)
        }) {
            Ok(wt) => Tensor::from_vec(wt, (inp, out), weight.device())?,
            Err(_) => weight.t()?.contiguous()?,
        };
        Ok(Linear {
            w: Weight::Dense(wt),
            bias,
            lora: None,
        })
    }

    /// A linear layer from its transposed weight, shape (in_features, out_features), as
    /// GPT-2's Conv1D stores it.
    pub fn from_transposed(wt: Tensor, bias: Option<Tensor>) -> candle_core::Result<Self> {
        Ok(Linear {
            w: Weight::Dense(wt.contiguous()?),
            bias,
            lora: None,
        })
    }

    /// A linear layer over a weight kept quantized, shape (out_features, in_features).
    pub fn quantized(q: Quantized, bias: Option<Tensor>) -> Self {
        Self::packed(QuantMatmul::new(q), bias)
    }

    /// A linear layer multiplying a prepared packed weight.
    pub fn packed(q: QuantMatmul, bias: Option<Tensor>) -> Self {
        let (out_features, in_features) = q.shape();
        Linear {
            w: Weight::Quantized {
                q: Arc::new(q),
                out_features,
                in_features,
            },
            bias,
            lora: None,
        }
    }

    /// A linear layer over the float32 weight `w` (`[out, in]`) held sparse — its non-zero
    /// values and a bit per weight — when it is at least [`SPARSE_MIN`] zeros and `in` is a
    /// multiple of 16 (`None` otherwise, or when [`crate::runtime::sparse_weights`] is off).
    /// Generation then reads about half the bytes of a 50 %-sparse weight (BENCHMARKS.md);
    /// products equal the dense weight's.
    pub fn sparse(w: &Tensor, bias: Option<Tensor>) -> candle_core::Result<Option<Self>> {
        if !crate::runtime::sparse_weights() {
            return Ok(None);
        }
        let (out_features, in_features) = w.dims2()?;
        // Counted in place (a copy of every dense weight measured 4 % of loading a model).
        let zeros = slices(w, |v| v.iter().filter(|&&x| x == 0.0).count())?;
        if (zeros as f64) < SPARSE_MIN * w.elem_count() as f64 {
            return Ok(None);
        }
        let v = w.flatten_all()?.to_vec1::<f32>()?;
        Ok(
            QuantMatmul::sparse(&v, out_features, in_features).map(|q| Linear {
                w: Weight::Quantized {
                    q: Arc::new(q),
                    out_features,
                    in_features,
                },
                bias,
                lora: None,
            }),
        )
    }

    /// A linear layer that reads the row-major weight `[out, in]` in place — for an LM head
    /// tied to the embedding, which then needs no transposed copy of its own.
    pub fn tied(weight: Tensor) -> candle_core::Result<Self> {
        let q = QuantMatmul::rows(weight)?;
        let (out_features, in_features) = q.shape();
        Ok(Linear {
            w: Weight::Quantized {
                q: Arc::new(q),
                out_features,
                in_features,
            },
            bias: None,
            lora: None,
        })
    }

    /// This layer with the LoRA pair `a` (`[r, in]`) and `b` (`[out, r]`) added at factor
    /// `scale`.
    pub fn with_lora(
        mut self,
        a: &[f32],
        b: &[f32],
        r: usize,
        scale: f64,
    ) -> candle_core::Result<Self> {
        let (inp, out) = (self.in_features(), self.out_features());
        if a.len() != r * inp || b.len() != out * r {
            candle_core::bail!(
                "LoRA pair of {} and {} values does not fit a {out}×{inp} layer at rank {r}",
                a.len(),
                b.len()
            );
        }
        let a = Tensor::from_slice(a, (r, inp), &Device::Cpu)?;
        let b = Tensor::from_slice(b, (out, r), &Device::Cpu)?;
        self.lora = Some(Lora {
            a_t: a.t()?.contiguous()?,
            b_t: b.t()?.contiguous()?,
            scale,
        });
        Ok(self)
    }

    /// Whether the weight is held quantized.
    pub fn is_quantized(&self) -> bool {
        matches!(&self.w, Weight::Quantized { q, .. } if q.is_quantized())
    }

    /// The weight as float32, shape (in_features, out_features) (contiguous when dense).
    fn weight_t(&self) -> candle_core::Result<Tensor> {
        match &self.w {
            Weight::Dense(t) => Ok(t.clone()),
            Weight::Quantized {
                q,
                out_features,
                in_features,
            } => {
                let mut v = vec![0f32; out_features * in_features];
                q.dequantize_t_into(&mut v);
                Tensor::from_vec(v, (*in_features, *out_features), &Device::Cpu)
            }
        }
    }

    /// The weight, shape (out_features, in_features) (dequantized if quantized).
    pub fn weight(&self) -> candle_core::Result<Tensor> {
        self.weight_t()?.t()
    }

    /// Bytes one product reads from memory: the weight as held (float32, packed or sparse),
    /// the bias and any LoRA pair.
    pub fn bytes_read(&self) -> usize {
        let w = match &self.w {
            Weight::Dense(t) => t.elem_count() * 4,
            Weight::Quantized { q, .. } => q.bytes_read(),
        };
        let bias = self.bias.as_ref().map_or(0, |b| b.elem_count() * 4);
        let lora = self
            .lora
            .as_ref()
            .map_or(0, |l| (l.a_t.elem_count() + l.b_t.elem_count()) * 4);
        w + bias + lora
    }

    /// `x` (`[rows, in]`, row-major) through the layer: `[rows, out]` — the product on plain
    /// slices, without a tensor around input or output (generation's path).
    pub fn forward_slice(&self, x: &[f32], rows: usize) -> candle_core::Result<Vec<f32>> {
        Ok(Self::forward_group(&[self], x, rows)?.remove(0))
    }

    /// `x` (`[rows, in]`) through each of `layers` (which share the input: a layer's q, k, v
    /// or gate, up): packed weights in one product of the team ([`QuantMatmul::matmul_group`]).
    pub fn forward_group(
        layers: &[&Linear],
        x: &[f32],
        rows: usize,
    ) -> candle_core::Result<Vec<Vec<f32>>> {
        let packed: Option<Vec<&QuantMatmul>> = layers
            .iter()
            .map(|l| match (&l.w, &l.lora) {
                (Weight::Quantized { q, .. }, None) => Some(&**q),
                _ => None,
            })
            .collect();
        let mut ys = match packed {
            Some(qs) => QuantMatmul::matmul_group(&qs, x, rows),
            None => layers
                .iter()
                .map(|l| l.forward_unbiased(x, rows))
                .collect::<candle_core::Result<_>>()?,
        };
        for (l, y) in layers.iter().zip(&mut ys) {
            if let Some(b) = &l.bias {
                slices(b, |b| {
                    for row in y.chunks_exact_mut(b.len()) {
                        row.iter_mut().zip(b).for_each(|(o, b)| *o += b);
                    }
                })?;
            }
        }
        Ok(ys)
    }

    /// `x Wᵀ` (with any LoRA pair, without the bias) on slices.
    fn forward_unbiased(&self, x: &[f32], rows: usize) -> candle_core::Result<Vec<f32>> {
        let in_f = self.in_features();
        if x.len() != rows * in_f {
            candle_core::bail!("linear: {} inputs for {rows} rows of {in_f}", x.len());
        }
        if self.lora.is_none() {
            if let Some(y) = self.product(x, rows) {
                return y;
            }
        }
        let xt = Tensor::from_slice(x, (rows, in_f), &Device::Cpu)?;
        let unbiased = Linear {
            bias: None,
            ..self.clone()
        };
        unbiased.forward(&xt)?.flatten_all()?.to_vec1()
    }

    /// `x Wᵀ` on slices where it is computed on them — packed weights, and dense ones for a few
    /// tokens (generation: the team's streaming product, [`crate::kernels::gemv_t`]); `None`
    /// for a dense product of many tokens (one GEMM on tensors).
    fn product(&self, x: &[f32], rows: usize) -> Option<candle_core::Result<Vec<f32>>> {
        match &self.w {
            Weight::Quantized { q, .. } => Some(Ok(q.matmul(x, rows))),
            Weight::Dense(wt) if rows <= crate::kernels::FEW_TOKENS => {
                let (k, n) = (self.in_features(), self.out_features());
                Some(slices(wt, |w| crate::kernels::gemv_t(x, rows, k, w, n)))
            }
            Weight::Dense(_) => None,
        }
    }

    /// Input width.
    pub fn in_features(&self) -> usize {
        match &self.w {
            Weight::Dense(t) => t.dims()[0],
            Weight::Quantized { in_features, .. } => *in_features,
        }
    }

    /// Output width.
    pub fn out_features(&self) -> usize {
        match &self.w {
            Weight::Dense(t) => t.dims()[1],
            Weight::Quantized { out_features, .. } => *out_features,
        }
    }
}

/// [`crate::with_f32`] with candle's error, as `Module` returns it.
fn slices<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<R> {
    crate::with_f32(t, f).map_err(|e| candle_core::Error::Msg(e.to_string()))
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        // x: [..., in]; flatten leading dims so the product is one GEMM.
        let dims = x.dims().to_vec();
        let in_f = *dims.last().expect("linear input has at least one dim");
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let x2 = x.reshape((rows, in_f))?;
        let n = self.out_features();
        let on_slices = slices(&x2, |xs| self.product(xs, rows))?;
        let mut y = match (on_slices, &self.w) {
            (Some(y), _) => Tensor::from_vec(y?, (rows, n), &Device::Cpu)?,
            (None, Weight::Dense(wt)) => x2.matmul(wt)?,
            (None, Weight::Quantized { .. }) => unreachable!("packed products run on slices"),
        };
        if let Some(l) = &self.lora {
            y = (y + (x2.matmul(&l.a_t)?.matmul(&l.b_t)? * l.scale)?)?;
        }
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b)?;
        }
        let mut out_dims = dims;
        *out_dims.last_mut().unwrap() = self.out_features();
        y.reshape(out_dims)
    }
}
