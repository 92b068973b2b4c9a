//! Building blocks shared by the architectures: RoPE tables, causal masks, attention, KV cache.

use candle_core::{Device, Tensor, D};

use crate::error::Result;

/// Per-layer cached keys and values for incremental decoding.
///
/// Each layer's keys and values live in buffers of room for `capacity` positions
/// (`[heads, capacity, d]`), written in place as tokens arrive and doubled when full, so a
/// token costs its own rows, not a copy of the whole cache (concatenating per token copied
/// 46 KB × positions per token on SmolLM2, growing with the context). Held in float32, or
/// in float16 ([`KvCache::half`], llama.cpp's default): half the memory and the bytes each
/// token's attention reads.
#[derive(Debug, Default)]
pub struct KvCache {
    layers: Vec<Option<LayerKv>>,
    /// Keys and values held as float16.
    half: bool,
}

/// One layer's buffers and how many positions they hold.
#[derive(Debug)]
struct LayerKv {
    k: Tensor,
    v: Tensor,
    len: usize,
}

impl KvCache {
    /// An empty cache.
    pub fn new() -> Self {
        KvCache::default()
    }

    /// An empty cache holding keys and values as float16 (each rounded to nearest when
    /// stored). The one-token path of the Llama family reads it directly; other paths read
    /// a float32 copy of what they need, so it suits generation with that family.
    pub fn half() -> Self {
        KvCache {
            layers: Vec::new(),
            half: true,
        }
    }

    /// Whether keys and values are held as float16.
    pub fn is_half(&self) -> bool {
        self.half
    }

    fn dtype(&self) -> candle_core::DType {
        if self.half {
            candle_core::DType::F16
        } else {
            candle_core::DType::F32
        }
    }

    /// Number of positions already cached.
    pub fn len(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .map_or(0, |l| l.len)
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Append this step's k, v ([heads, T, d]) for `layer`, returning the full k, v (views of
    /// the first positions of the layer's buffers; float32 copies of them when held as
    /// float16).
    pub fn append(&mut self, layer: usize, k: Tensor, v: Tensor) -> Result<(Tensor, Tensor)> {
        self.store(layer, k, v)?;
        let l = self.layers[layer].as_ref().expect("stored above");
        let (k, v) = (l.k.narrow(1, 0, l.len)?, l.v.narrow(1, 0, l.len)?);
        if self.half {
            let f32 = candle_core::DType::F32;
            return Ok((k.to_dtype(f32)?, v.to_dtype(f32)?));
        }
        Ok((k, v))
    }

    /// Write this step's k, v ([heads, T, d]) for `layer` into its buffers.
    fn store(&mut self, layer: usize, k: Tensor, v: Tensor) -> Result<()> {
        if self.layers.len() <= layer {
            self.layers.resize_with(layer + 1, || None);
        }
        let (heads, t, d) = k.dims3()?;
        let dtype = self.dtype();
        let (k, v) = (
            k.to_dtype(dtype)?.contiguous()?,
            v.to_dtype(dtype)?.contiguous()?,
        );
        let len = self.layers[layer].as_ref().map_or(0, |l| l.len);
        let room = self.layers[layer]
            .as_ref()
            .map_or(0, |l| l.k.dim(1).unwrap_or(0));
        if len + t > room {
            // Grow to twice the need (at least 64 positions), keeping what is cached.
            let cap = ((len + t) * 2).max(64);
            let grown = |old: Option<&Tensor>| -> Result<Tensor> {
                let buf = Tensor::zeros((heads, cap, d), k.dtype(), k.device())?;
                if let (Some(old), true) = (old, len > 0) {
                    buf.slice_set(&old.narrow(1, 0, len)?.contiguous()?, 1, 0)?;
                }
                Ok(buf)
            };
            let old = self.layers[layer].take();
            self.layers[layer] = Some(LayerKv {
                k: grown(old.as_ref().map(|l| &l.k))?,
                v: grown(old.as_ref().map(|l| &l.v))?,
                len,
            });
        }
        let l = self.layers[layer].as_mut().expect("made above");
        l.k.slice_set(&k, 1, len)?;
        l.v.slice_set(&v, 1, len)?;
        l.len = len + t;
        Ok(())
    }

    /// Append one position's keys and values (`[heads·d]` each, head-major) for `layer`, then
    /// run `f` on the layer's buffers — one token's attention on plain slices.
    pub fn append_one<R>(
        &mut self,
        layer: usize,
        k: &[f32],
        v: &[f32],
        heads: usize,
        f: impl FnOnce(crate::decode::Kv) -> R,
    ) -> Result<R> {
        use crate::decode::{Kv, KvRows};
        use candle_core::{CpuStorage, Storage};
        let d = k.len() / heads.max(1);
        let kt = Tensor::from_slice(k, (heads, 1, d), &Device::Cpu)?;
        let vt = Tensor::from_slice(v, (heads, 1, d), &Device::Cpu)?;
        self.store(layer, kt, vt)?;
        let l = self.layers[layer].as_ref().expect("stored above");
        let cap = l.k.dim(1)?;
        let (ks, kl) = l.k.storage_and_layout();
        let (vs, vl) = l.v.storage_and_layout();
        let n = heads * cap * d;
        let (ko, vo) = (kl.start_offset(), vl.start_offset());
        let rows = match (&*ks, &*vs) {
            (Storage::Cpu(CpuStorage::F32(kb)), Storage::Cpu(CpuStorage::F32(vb))) => {
                KvRows::F32(&kb[ko..ko + n], &vb[vo..vo + n])
            }
            (Storage::Cpu(CpuStorage::F16(kb)), Storage::Cpu(CpuStorage::F16(vb))) => {
                KvRows::F16(&kb[ko..ko + n], &vb[vo..vo + n])
            }
            _ => {
                return Err(crate::error::ModelError::Input(
                    "the KV cache holds other than float32 or float16 on the CPU".into(),
                ))
            }
        };
        Ok(f(Kv {
            rows,
            heads,
            cap,
            len: l.len,
        }))
    }
}

/// `inv_freq = 1 / base^(2i/rot)` for `i < rot/2`, in float32 as transformers computes it.
fn inv_freq(rot_dim: usize, base: f64) -> Vec<f32> {
    (0..rot_dim / 2)
        .map(|i| 1.0f32 / (base as f32).powf((2 * i) as f32 / rot_dim as f32))
        .collect()
}

/// cos and sin [rot/2] of position `pos` ([`rope_tables`]'s row).
pub fn rope_row(rot_dim: usize, base: f64, pos: usize) -> (Vec<f32>, Vec<f32>) {
    inv_freq(rot_dim, base)
        .iter()
        .map(|f| {
            let a = pos as f32 * f;
            (a.cos(), a.sin())
        })
        .unzip()
}

/// cos and sin tables [T, rot/2] for positions `offset..offset+t`, as transformers computes
/// them in float32: `inv_freq = 1 / base^(2i/rot)`, angle = position × inv_freq.
pub fn rope_tables(rot_dim: usize, base: f64, offset: usize, t: usize) -> Result<(Tensor, Tensor)> {
    let half = rot_dim / 2;
    let inv = inv_freq(rot_dim, base);
    let mut cos = Vec::with_capacity(t * half);
    let mut sin = Vec::with_capacity(t * half);
    for p in offset..offset + t {
        for f in &inv {
            let a = p as f32 * f;
            cos.push(a.cos());
            sin.push(a.sin());
        }
    }
    Ok((
        Tensor::from_vec(cos, (t, half), &Device::Cpu)?,
        Tensor::from_vec(sin, (t, half), &Device::Cpu)?,
    ))
}

/// Which keys each query may see: all earlier positions (and itself), or with a sliding
/// window only the last `window` of them.
#[derive(Debug, Clone, Copy)]
pub struct CausalMask {
    /// Sliding attention window, if any.
    pub window: Option<usize>,
}

/// Row-wise softmax of scaled attention scores [h, t, tk] under the causal mask, fused.
///
/// Hand-written because candle's path (scale, add a −∞ mask, softmax) makes three passes over
/// h·t·tk values, single-threaded for the first two, and exponentiates the masked half too;
/// this is one parallel pass over the visible keys only. Same arithmetic as transformers
/// (max-subtracted exp in f32, divided by the f32 sum).
struct CausalSoftmax {
    offset: usize,
    window: Option<usize>,
    scale: f32,
}

impl candle_core::CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "causal-softmax"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use rayon::prelude::*;
        let src = match (storage, layout.contiguous_offsets()) {
            (candle_core::CpuStorage::F32(s), Some((a, b))) => &s[a..b],
            _ => candle_core::bail!("causal-softmax needs contiguous f32 scores"),
        };
        let (_, t, tk) = layout.shape().dims3()?;
        // Every element is written below (the masked ones as 0), so the buffer is not zeroed
        // first: that memset measured ~2 % of a 512-token forward.
        let mut dst: Vec<f32> = Vec::with_capacity(src.len());
        dst.spare_capacity_mut()
            .par_chunks_mut(tk)
            .zip(src.par_chunks(tk))
            .enumerate()
            .for_each(|(r, (d, s))| {
                let qi = self.offset + r % t;
                let lo = self.window.map_or(0, |w| (qi + 1).saturating_sub(w));
                // The visible run copied, the masked ones zeroed (a test per element did not
                // vectorise).
                let zero = std::mem::MaybeUninit::new(0.0f32);
                d[..lo].fill(zero);
                d[qi + 1..].fill(zero);
                for (o, &v) in d[lo..=qi].iter_mut().zip(&s[lo..=qi]) {
                    o.write(v);
                }
                // SAFETY: every element of the row was just written.
                let d: &mut [f32] =
                    unsafe { std::slice::from_raw_parts_mut(d.as_mut_ptr() as *mut f32, d.len()) };
                let d = &mut d[lo..=qi];
                let max = crate::kernels::max(d) * self.scale;
                let inv = 1.0 / crate::kernels::exp_scaled_sum(d, self.scale, max);
                d.iter_mut().for_each(|o| *o *= inv);
            });
        // SAFETY: the rows above wrote all src.len() elements.
        unsafe { dst.set_len(src.len()) };
        Ok((candle_core::CpuStorage::F32(dst), layout.shape().clone()))
    }
}

/// Scaled dot-product attention with grouped heads.
///
/// q: [h, t, d]; k, v: [kv, tk, d] with h a multiple of kv (query head i uses kv head
/// i / (h/kv), as transformers' `repeat_kv`); keys are positions 0..tk, queries the last t. Returns [t, h·d].
/// Queries are grouped per kv head so the keys are never copied h/kv times.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &CausalMask,
    scale: f64,
) -> Result<Tensor> {
    let t = q.dim(1)?;
    let tk = k.dim(1)?;
    if t <= QUERY_CHUNK {
        return attention_rows(q, k, v, mask, scale, tk - t);
    }
    // Query rows in chunks, each against the keys up to its last row only: the scores and
    // products of keys every row of a chunk masks are never computed (3/8 of both products
    // at 512 tokens in chunks of 128; pp512 of SmolLM2 Q4_0 702 → 732–756 tokens/s, 2 threads;
    // chunks of 64 measured no faster than none: the key and value copies per chunk ate it).
    let mut outs = Vec::with_capacity(t.div_ceil(QUERY_CHUNK));
    for q0 in (0..t).step_by(QUERY_CHUNK) {
        let len = QUERY_CHUNK.min(t - q0);
        let end = tk - t + q0 + len;
        let qc = q.narrow(1, q0, len)?.contiguous()?;
        let kc = k.narrow(1, 0, end)?;
        let vc = v.narrow(1, 0, end)?;
        outs.push(attention_rows(&qc, &kc, &vc, mask, scale, tk - t + q0)?);
    }
    debug_assert_eq!(outs.iter().map(|o| o.dim(0).unwrap_or(0)).sum::<usize>(), t);
    Ok(Tensor::cat(&outs, 0)?)
}

/// Query rows per chunk of [`attention`].
const QUERY_CHUNK: usize = 128;

/// [`attention`] for queries at positions `offset..offset + t` against keys `0..tk`
/// (`tk ≥ offset + t`; keys past a query's position are masked).
fn attention_rows(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &CausalMask,
    scale: f64,
    offset: usize,
) -> Result<Tensor> {
    let (h, t, d) = q.dims3()?;
    let (kv, tk, _) = k.dims3()?;
    let rep = h / kv;
    let qg = q.reshape((kv, rep * t, d))?;
    let scores = qg.matmul(&k.t()?)?.reshape((h, t, tk))?;
    let probs = scores.apply_op1_no_bwd(&CausalSoftmax {
        offset,
        window: mask.window,
        scale: scale as f32,
    })?;
    let out = probs.reshape((kv, rep * t, tk))?.matmul(v)?; // [kv, rep·t, d]
    Ok(out
        .reshape((h, t, d))?
        .transpose(0, 1)?
        .reshape((t, h * d))?)
}

/// Apply rotary embeddings (transformers' rotate_half convention) to the first `rot` dims
/// of every head of x: [heads, t, d].
pub fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor, rot: usize) -> Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    let x4 = x.unsqueeze(0)?;
    if rot == d {
        return Ok(candle_nn::rotary_emb::rope(&x4.contiguous()?, cos, sin)?.squeeze(0)?);
    }
    let xr = x4.narrow(D::Minus1, 0, rot)?.contiguous()?;
    let xp = x4.narrow(D::Minus1, rot, d - rot)?;
    let r = candle_nn::rotary_emb::rope(&xr, cos, sin)?;
    Ok(Tensor::cat(&[&r, &xp], D::Minus1)?.squeeze(0)?)
}

/// Split [t, n·d] into heads: [n, t, d], contiguous.
pub fn heads(x: &Tensor, n: usize, d: usize) -> Result<Tensor> {
    let t = x.dim(0)?;
    Ok(x.reshape((t, n, d))?.transpose(0, 1)?.contiguous()?)
}

/// silu(g) · u, element-wise and in parallel (the SwiGLU MLP's gate).
pub fn silu_mul(g: &Tensor, u: &Tensor) -> Result<Tensor> {
    Ok(g.apply_op2_no_bwd(u, &SiluMul)?)
}

/// Fused `silu(g) * u` on the vectorised exp of [`crate::kernels`].
struct SiluMul;

impl candle_core::CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "silu-mul"
    }

    fn cpu_fwd(
        &self,
        s1: &candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use rayon::prelude::*;
        let (g, u) = match (s1, l1.contiguous_offsets(), s2, l2.contiguous_offsets()) {
            (
                candle_core::CpuStorage::F32(g),
                Some((a, b)),
                candle_core::CpuStorage::F32(u),
                Some((c, d)),
            ) => (&g[a..b], &u[c..d]),
            _ => candle_core::bail!("silu-mul needs contiguous f32 tensors"),
        };
        if l1.shape() != l2.shape() {
            candle_core::bail!(
                "silu-mul: shapes {:?} and {:?} differ",
                l1.shape(),
                l2.shape()
            );
        }
        let mut out = vec![0f32; g.len()];
        const CHUNK: usize = 1 << 14;
        out.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)))
            .for_each(|(o, (g, u))| crate::kernels::silu_mul(g, u, o));
        Ok((candle_core::CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// Activation functions by their transformers names.
pub fn activation(name: &str, x: &Tensor) -> Result<Tensor> {
    Ok(match name {
        "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => x.gelu()?,
        "gelu" => x.gelu_erf()?,
        "relu" => x.relu()?,
        "silu" | "swish" => x.silu()?,
        other => {
            return Err(crate::error::ModelError::Input(format!(
                "unsupported activation {other:?}"
            )))
        }
    })
}
