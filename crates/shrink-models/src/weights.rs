//! Loading a model's weights by their Hugging Face names, whatever the checkpoint format.
//!
//! GGUF files use llama.cpp's names and, for Llama attention, rows of Q and K permuted by
//! llama.cpp's converter (`convert_hf_to_gguf.py`, `LlamaModel.permute`); both are undone here
//! so that every architecture sees the same tensors as transformers does.

use candle_core::{Device, Tensor};
use shrink_io::Checkpoint;

use crate::error::{ModelError, Result};
use crate::qmatmul::QuantMatmul;

/// Where a Hugging Face weight lives in a GGUF file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufName {
    /// llama.cpp's tensor name.
    pub name: String,
    /// Undo llama.cpp's Q/K row permutation over this many heads.
    pub unpermute_heads: Option<usize>,
    /// Undo llama.cpp's regrouping of GPT-NeoX's fused QKV rows (per head [q, k, v] in
    /// transformers, [all q; all k; all v] in GGUF) over this many heads.
    pub qkv_heads: Option<usize>,
}

/// Maps HF weight names to stored names of a checkpoint.
pub type GgufMap = dyn Fn(&str) -> Option<GgufName>;

/// Whether a stored shape is the shape a config implies. GGUF drops trailing unit dims and
/// stores 1-D tensors as such: element counts are compared, then the shapes with unit dims
/// squeezed.
pub fn same_shape(stored: &[usize], implied: &[usize]) -> bool {
    let squeeze = |s: &[usize]| s.iter().copied().filter(|&d| d != 1).collect::<Vec<_>>();
    elements(stored) == elements(implied) && squeeze(stored) == squeeze(implied)
}

/// The element count of `shape`, or `None` when it overflows.
pub fn elements(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
}

/// Reads weights by HF name as float32 candle tensors, checking their shapes.
pub struct WeightLoader<'a> {
    ckpt: &'a Checkpoint,
    gguf_map: Option<Box<GgufMap>>,
    hf_prefixes: &'static [&'static str],
    adapter: Option<&'a shrink_io::peft::Adapter>,
    adapted: std::cell::RefCell<Vec<String>>,
}

impl<'a> WeightLoader<'a> {
    /// A loader over `ckpt`; `gguf_map` translates names for GGUF files; `hf_prefixes` are
    /// prefixes tried in turn on HF names (GPT-2 checkpoints exist with and without `transformer.`).
    pub fn new(
        ckpt: &'a Checkpoint,
        gguf_map: Option<Box<GgufMap>>,
        hf_prefixes: &'static [&'static str],
    ) -> Self {
        WeightLoader {
            ckpt,
            gguf_map,
            hf_prefixes,
            adapter: None,
            adapted: Default::default(),
        }
    }

    /// This loader adding `adapter`'s LoRA pairs to the layers they name.
    pub fn with_adapter(mut self, adapter: &'a shrink_io::peft::Adapter) -> Self {
        self.adapter = Some(adapter);
        self
    }

    /// `l`, the layer of weight `hf_name`, with the adapter's pair for it added, if any.
    pub fn adapt(&self, hf_name: &str, l: crate::linear::Linear) -> Result<crate::linear::Linear> {
        let Some(a) = self.adapter else {
            return Ok(l);
        };
        let module = hf_name.strip_suffix(".weight").unwrap_or(hf_name);
        let Some(p) = a.modules.get(module) else {
            return Ok(l);
        };
        let l = l.with_lora(&p.a, &p.b, a.r, a.scale()).map_err(|e| {
            ModelError::Io(shrink_io::IoError::malformed(
                self.ckpt.path(),
                format!("adapter module {module}: {e}"),
            ))
        })?;
        self.adapted.borrow_mut().push(module.to_string());
        Ok(l)
    }

    /// Refuse an adapter some of whose pairs matched no layer of the model.
    pub fn check_adapted(&self) -> Result<()> {
        let Some(a) = self.adapter else {
            return Ok(());
        };
        let done = self.adapted.borrow();
        let missing: Vec<&String> = a.modules.keys().filter(|m| !done.contains(m)).collect();
        if let Some(first) = missing.first() {
            return Err(ModelError::Io(shrink_io::IoError::malformed(
                self.ckpt.path(),
                format!(
                    "the adapter has {} module(s) this model's layers do not match, e.g. {first}",
                    missing.len()
                ),
            )));
        }
        Ok(())
    }

    /// The checkpoint read from.
    pub fn checkpoint(&self) -> &Checkpoint {
        self.ckpt
    }

    /// The stored name of an HF weight and its permutation, if present in the checkpoint.
    pub fn locate(&self, hf_name: &str) -> Option<GgufName> {
        match self.ckpt {
            Checkpoint::Gguf(_) => {
                let m = self.gguf_map.as_ref()?(hf_name)?;
                self.ckpt.has(&m.name).then_some(m)
            }
            Checkpoint::Hf(_) => {
                if self.ckpt.has(hf_name) {
                    return Some(GgufName {
                        name: hf_name.to_string(),
                        unpermute_heads: None,
                        qkv_heads: None,
                    });
                }
                self.hf_prefixes.iter().find_map(|p| {
                    let n = if let Some(rest) = hf_name.strip_prefix(p) {
                        rest.to_string()
                    } else {
                        format!("{p}{hf_name}")
                    };
                    self.ckpt.has(&n).then_some(GgufName {
                        name: n,
                        unpermute_heads: None,
                        qkv_heads: None,
                    })
                })
            }
        }
    }

    /// Whether the HF weight exists.
    pub fn has(&self, hf_name: &str) -> bool {
        self.locate(hf_name).is_some()
    }

    /// The LayerNorm `name` of width `n`: `{name}.weight` and `{name}.bias`.
    pub fn layer_norm(&self, name: &str, n: usize) -> Result<(Tensor, Tensor)> {
        Ok((
            self.get(&format!("{name}.weight"), &[n])?,
            self.get(&format!("{name}.bias"), &[n])?,
        ))
    }

    /// Read the HF weight `hf_name`, which must have `shape`.
    pub fn get(&self, hf_name: &str, shape: &[usize]) -> Result<Tensor> {
        let loc = self.locate(hf_name).ok_or_else(|| {
            ModelError::Io(shrink_io::IoError::MissingTensor {
                path: self.ckpt.path().to_path_buf(),
                name: hf_name.to_string(),
            })
        })?;
        let (mut data, stored_shape) = self.ckpt.read_f32(&loc.name)?;
        if !same_shape(&stored_shape, shape) {
            return Err(ModelError::Shape {
                path: self.ckpt.path().to_path_buf(),
                name: loc.name,
                expected: shape.to_vec(),
                got: stored_shape,
            });
        }
        if let Some(heads) = loc.unpermute_heads {
            data = unpermute_rows(&data, shape[0], shape[1..].iter().product(), heads);
        }
        if let Some(heads) = loc.qkv_heads {
            data = qkv_from_gguf(&data, shape[0], shape[1..].iter().product(), heads);
        }
        Ok(Tensor::from_vec(data, shape, &Device::Cpu)?)
    }

    /// The linear layer whose weight is `hf_name` (shape [out, in]) with optional bias
    /// `bias_name`: kept quantized when the checkpoint stores the weight in a quantized layout
    /// (and not transposed), sparse when it is mostly zeros (a pruned weight,
    /// [`crate::linear::Linear::sparse`]), dense float32 otherwise.
    pub fn linear(
        &self,
        hf_name: &str,
        out: usize,
        inp: usize,
        bias_name: Option<&str>,
    ) -> Result<crate::linear::Linear> {
        let bias = || match bias_name {
            Some(b) => self.get_opt(b, &[out]),
            None => Ok(None),
        };
        if let Some(q) = self.packed(hf_name, out, inp)? {
            return self.adapt(hf_name, crate::linear::Linear::packed(q, bias()?));
        }
        let w = self.get(hf_name, &[out, inp])?;
        if let Some(l) = crate::linear::Linear::sparse(&w, bias()?)? {
            return self.adapt(hf_name, l);
        }
        self.adapt(hf_name, crate::linear::Linear::new(w, bias()?)?)
    }

    /// The LM head: the stored `head` weight when given (kept quantized if stored so), else the
    /// embedding `embed_name` (`embed`, `[vocab, hidden]`) tied to it — multiplied in its packed
    /// form when the checkpoint stores the embedding quantized (a quantized HF layout, or a GGUF
    /// integer type; the float32 `embed` then only serves lookups), as its float16 / bfloat16
    /// rows when stored so and [`crate::runtime::half_head`] is on, else read in place as
    /// float32 rows.
    pub fn head(
        &self,
        head: Option<&str>,
        embed_name: &str,
        embed: &Tensor,
    ) -> Result<crate::linear::Linear> {
        let (vocab, hidden) = embed.dims2()?;
        if let Some(name) = head {
            return self.linear(name, vocab, hidden, None);
        }
        if let Some(q) = self.packed(embed_name, vocab, hidden)? {
            return Ok(crate::linear::Linear::packed(q, None));
        }
        if crate::runtime::half_head() {
            if let Some(half) = self.half_rows(embed_name, embed)? {
                let q = QuantMatmul::rows_half(embed.clone(), half)?;
                return Ok(crate::linear::Linear::packed(q, None));
            }
        }
        Ok(crate::linear::Linear::tied(embed.clone())?)
    }

    /// `values` (the float32 read of `hf_name`) as the 16-bit floats the checkpoint stores
    /// `hf_name` in — exactly, as they were widened from those — or `None` for other types.
    fn half_rows(
        &self,
        hf_name: &str,
        values: &Tensor,
    ) -> Result<Option<crate::qmatmul::HalfRows>> {
        use shrink_formats::float::FloatType;
        let Some(loc) = self.locate(hf_name) else {
            return Ok(None);
        };
        let stored = self.ckpt.tensors().into_iter().find(|t| t.name == loc.name);
        let Some(shrink_io::checkpoint::StoredDtype::Float(ty)) = stored.map(|t| t.dtype) else {
            return Ok(None);
        };
        let v = values.flatten_all()?.to_vec1::<f32>()?;
        Ok(match ty {
            FloatType::F16 => Some(crate::qmatmul::HalfRows::F16(
                v.iter().map(|&x| half::f16::from_f32(x)).collect(),
            )),
            FloatType::BF16 => Some(crate::qmatmul::HalfRows::Bf16(
                v.iter().map(|&x| half::bf16::from_f32(x)).collect(),
            )),
            _ => None,
        })
    }

    /// `hf_name` (`[out, inp]`) in the quantized form the checkpoint stores it in, to be
    /// multiplied packed: a quantized HF layout, or a GGUF tensor of an integer type as its codes
    /// ([`Self::gguf_codes`]); `None` when it is stored otherwise.
    fn packed(&self, hf_name: &str, out: usize, inp: usize) -> Result<Option<QuantMatmul>> {
        if let (Checkpoint::Hf(h), Some(loc)) = (self.ckpt, self.locate(hf_name)) {
            return Ok(h
                .quantized(&loc.name)?
                .filter(|q| q.shape() == (out, inp))
                .map(QuantMatmul::new));
        }
        self.gguf_codes(hf_name, out, inp)
    }

    /// A GGUF weight `[out, inp]` stored as Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K,
    /// IQ4_NL or IQ4_XS, held as the integer codes, scales and mins (or table) it is ([`shrink_formats::ggml::to_codes`],
    /// lossless; Llama's Q/K rows put back in transformers' order), so it is multiplied packed;
    /// `None` for other types and files.
    fn gguf_codes(&self, hf_name: &str, out: usize, inp: usize) -> Result<Option<QuantMatmul>> {
        let (Checkpoint::Gguf(g), Some(loc)) = (self.ckpt, self.locate(hf_name)) else {
            return Ok(None);
        };
        let Some(info) = g.tensor(&loc.name) else {
            return Ok(None);
        };
        if loc.qkv_heads.is_some() || info.shape() != [out, inp] {
            return Ok(None);
        }
        let data = g.tensor_bytes(info);
        let stored = data.len();
        let c = shrink_formats::ggml::to_codes(info.ty, data, out, inp).map_err(|e| {
            ModelError::Io(shrink_io::IoError::malformed(
                g.path(),
                format!("tensor {}: {e}", loc.name),
            ))
        })?;
        g.release(info);
        let Some(mut c) = c else { return Ok(None) };
        for (what, v) in [("scales", &c.scales), ("mins", &c.mins)] {
            let shape = [out, v.len() / out.max(1)];
            if let Some(bad) = shrink_io::checkpoint::non_finite(v, &shape) {
                return Err(ModelError::Io(shrink_io::IoError::malformed(
                    g.path(),
                    format!(
                        "tensor {}: its block {what} hold {bad} (per row, per block); shrink \
                         refuses weights that are not finite",
                        loc.name
                    ),
                )));
            }
        }
        if let Some(heads) = loc.unpermute_heads {
            let per_row = c.scales.len() / out;
            c.codes = move_rows(&c.codes, inp, qk_row_pairs(out, heads));
            c.scales = move_rows(&c.scales, per_row, qk_row_pairs(out, heads));
            if !c.mins.is_empty() {
                c.mins = move_rows(&c.mins, per_row, qk_row_pairs(out, heads));
            }
        }
        Ok(Some(QuantMatmul::ggml(c, out, inp, stored)))
    }

    /// Read `hf_name` if present.
    pub fn get_opt(&self, hf_name: &str, shape: &[usize]) -> Result<Option<Tensor>> {
        if self.has(hf_name) {
            self.get(hf_name, shape).map(Some)
        } else {
            Ok(None)
        }
    }
}

/// Row pairs (transformers' row, llama.cpp's row) of the Q/K permutation: within each head of
/// `rows / heads` rows, llama.cpp stores row `2i + half` for transformers' row `half·(d/2) + i`
/// (`reshape(h, 2, d/2, ...).swapaxes(1, 2)` in `convert_hf_to_gguf.py`).
fn qk_row_pairs(rows: usize, heads: usize) -> impl Iterator<Item = (usize, usize)> {
    let d = rows / heads;
    let half = d / 2;
    (0..heads).flat_map(move |h| {
        (0..2).flat_map(move |part| {
            (0..half).map(move |i| (h * d + part * half + i, h * d + 2 * i + part))
        })
    })
}

/// Copy whole rows of `cols` values from `src` to `dst` by (destination row, source row) pairs.
fn move_rows<T: Copy + Default>(
    src: &[T],
    cols: usize,
    pairs: impl Iterator<Item = (usize, usize)>,
) -> Vec<T> {
    let mut out = vec![T::default(); src.len()];
    for (to, from) in pairs {
        out[to * cols..(to + 1) * cols].copy_from_slice(&src[from * cols..(from + 1) * cols]);
    }
    out
}

/// Undo llama.cpp's Q/K permutation (GGUF rows → transformers' rows).
pub fn unpermute_rows(data: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    move_rows(data, cols, qk_row_pairs(rows, heads))
}

/// Apply llama.cpp's Q/K permutation (the inverse of [`unpermute_rows`]).
pub fn permute_rows(data: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    move_rows(
        data,
        cols,
        qk_row_pairs(rows, heads).map(|(hf, gg)| (gg, hf)),
    )
}

/// Row pairs (transformers' row, llama.cpp's row) of GPT-NeoX's fused QKV weight of `rows`
/// = 3 · heads · d rows: transformers stores per head [q, k, v] (`view(heads, 3, d)`), llama.cpp
/// [q of every head; k ...; v ...] (`GPTNeoXModel.modify_tensors` in `convert_hf_to_gguf.py`).
fn qkv_row_pairs(rows: usize, heads: usize) -> impl Iterator<Item = (usize, usize)> {
    let d = rows / (3 * heads);
    (0..heads).flat_map(move |h| {
        (0..3).flat_map(move |part| {
            (0..d).map(move |i| ((h * 3 + part) * d + i, (part * heads + h) * d + i))
        })
    })
}

/// GPT-NeoX fused QKV rows from llama.cpp's order to transformers'.
pub fn qkv_from_gguf(data: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    move_rows(data, cols, qkv_row_pairs(rows, heads))
}

/// GPT-NeoX fused QKV rows from transformers' order to llama.cpp's (inverse of
/// [`qkv_from_gguf`]).
pub fn qkv_to_gguf(data: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    move_rows(
        data,
        cols,
        qkv_row_pairs(rows, heads).map(|(hf, gg)| (gg, hf)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_round_trips_and_matches_llama_cpp() {
        // 2 heads of dim 4, 1 column: HF rows 0..8.
        let hf: Vec<f32> = (0..8).map(|x| x as f32).collect();
        let gg = permute_rows(&hf, 8, 1, 2);
        // reshape(2, 2, 2).swapaxes(1, 2): head 0 rows [0, 2, 1, 3], head 1 [4, 6, 5, 7].
        assert_eq!(gg, vec![0., 2., 1., 3., 4., 6., 5., 7.]);
        assert_eq!(unpermute_rows(&gg, 8, 1, 2), hf);
    }

    #[test]
    fn neox_qkv_regrouping_round_trips_and_matches_llama_cpp() {
        // 2 heads of dim 2: HF rows per head [q0 q0 k0 k0 v0 v0 | q1 q1 k1 k1 v1 v1].
        let hf: Vec<f32> = (0..12).map(|x| x as f32).collect();
        let gg = qkv_to_gguf(&hf, 12, 1, 2);
        // reshape(2, 3, 2) then cat(w[:, 0], w[:, 1], w[:, 2]).
        assert_eq!(gg, vec![0., 1., 6., 7., 2., 3., 8., 9., 4., 5., 10., 11.]);
        assert_eq!(qkv_from_gguf(&gg, 12, 1, 2), hf);
    }
}
