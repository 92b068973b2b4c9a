//! Which ggml type each tensor gets under a llama.cpp quantization preset ("file type"), as
//! `llama-quantize` chooses it.
//!
//! Ported from llama.cpp's `src/llama-quant.cpp`: `tensor_allows_quantization` (which tensors
//! are quantized at all), `tensor_get_category`, `llama_tensor_get_type_impl` (the per-preset
//! rules: the output / tied-embedding rule, the `use_more_bits` schedule on `attn_v` and
//! `ffn_down`, the Q3_K_M / Q2_K upgrades, ...), `tensor_type_fallback` (a row length that is
//! not a multiple of the wanted type's block size falls back to a type whose block fits) and
//! `llama_ftype_get_default_type`; the iteration order is `llama_model_loader`'s
//! `weight_name_comparer` (tensors outside blocks first, then by layer number, then by name),
//! which fixes the `attn_v` counter the rules depend on.
//!
//! The fallback table is the one llama.cpp used from the K-quants' introduction through 2025:
//! Q2_K, Q3_K and IQ4_XS → IQ4_NL, Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → Q8_0 (F16 when even
//! that block does not fit). The newest llama.cpp sends Q2_K and Q3_K to Q4_0 instead. It is
//! why llama.cpp's "Q4_K_M" of a model 576 wide (SmolLM2) is mostly Q5_0.
//!
//! Only what the supported presets can reach is ported; the IQ1/IQ2/IQ3 presets, MXFP4 and
//! the user overrides (`--tensor-type`, `--pure`, `--output-tensor-type`) are not.

use std::cmp::Ordering;

use shrink_formats::ggml::GgmlType;

use crate::error::{MethodError, Result};

/// A llama.cpp quantization preset (`llama_ftype`), named as `llama-quantize` names it.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlPreset {
    /// Q4_0 everywhere (LLAMA_FTYPE_MOSTLY_Q4_0 = 2).
    Q4_0,
    /// Q4_1 everywhere (3).
    Q4_1,
    /// Q8_0 everywhere (7).
    Q8_0,
    /// Q5_0 everywhere (8).
    Q5_0,
    /// Q5_1 everywhere (9).
    Q5_1,
    /// Q2_K mix: attn_v, attn_output and ffn_down in Q3_K (10).
    Q2_K,
    /// Q3_K everywhere (11).
    Q3_K_S,
    /// Q3_K mix: attn_v Q5_K/Q4_K, attn_output Q4_K, ffn_down Q5_K/Q4_K (12).
    Q3_K_M,
    /// Q3_K mix: attn_v, attn_output, ffn_down in Q5_K (13).
    Q3_K_L,
    /// Q4_K mix: first 4 attn_v and first eighth of ffn_down in Q5_K (14).
    Q4_K_S,
    /// Q4_K mix: half of attn_v and ffn_down in Q6_K (`use_more_bits`) (15).
    Q4_K_M,
    /// Q5_K everywhere (16).
    Q5_K_S,
    /// Q5_K mix: half of attn_v and ffn_down in Q6_K (17).
    Q5_K_M,
    /// Q6_K everywhere (18).
    Q6_K,
    /// Q2_K with an importance matrix required; first eighth of ffn_down in Q4_K (21).
    Q2_K_S,
    /// IQ4_NL everywhere; first eighth of ffn_down in Q5_K without an imatrix (25).
    IQ4_NL,
    /// IQ4_XS everywhere; first eighth of ffn_down in Q5_K without an imatrix (30).
    IQ4_XS,
}

impl GgmlPreset {
    /// Every supported preset, in `llama_ftype` order.
    pub const ALL: [GgmlPreset; 17] = [
        GgmlPreset::Q4_0,
        GgmlPreset::Q4_1,
        GgmlPreset::Q8_0,
        GgmlPreset::Q5_0,
        GgmlPreset::Q5_1,
        GgmlPreset::Q2_K,
        GgmlPreset::Q3_K_S,
        GgmlPreset::Q3_K_M,
        GgmlPreset::Q3_K_L,
        GgmlPreset::Q4_K_S,
        GgmlPreset::Q4_K_M,
        GgmlPreset::Q5_K_S,
        GgmlPreset::Q5_K_M,
        GgmlPreset::Q6_K,
        GgmlPreset::Q2_K_S,
        GgmlPreset::IQ4_NL,
        GgmlPreset::IQ4_XS,
    ];

    /// (name, `llama_ftype` number, default tensor type), from llama.h and
    /// `llama_ftype_get_default_type`.
    const fn info(self) -> (&'static str, u32, GgmlType) {
        use GgmlPreset as P;
        use GgmlType as T;
        match self {
            P::Q4_0 => ("Q4_0", 2, T::Q4_0),
            P::Q4_1 => ("Q4_1", 3, T::Q4_1),
            P::Q8_0 => ("Q8_0", 7, T::Q8_0),
            P::Q5_0 => ("Q5_0", 8, T::Q5_0),
            P::Q5_1 => ("Q5_1", 9, T::Q5_1),
            P::Q2_K => ("Q2_K", 10, T::Q2_K),
            P::Q3_K_S => ("Q3_K_S", 11, T::Q3_K),
            P::Q3_K_M => ("Q3_K_M", 12, T::Q3_K),
            P::Q3_K_L => ("Q3_K_L", 13, T::Q3_K),
            P::Q4_K_S => ("Q4_K_S", 14, T::Q4_K),
            P::Q4_K_M => ("Q4_K_M", 15, T::Q4_K),
            P::Q5_K_S => ("Q5_K_S", 16, T::Q5_K),
            P::Q5_K_M => ("Q5_K_M", 17, T::Q5_K),
            P::Q6_K => ("Q6_K", 18, T::Q6_K),
            P::Q2_K_S => ("Q2_K_S", 21, T::Q2_K),
            P::IQ4_NL => ("IQ4_NL", 25, T::IQ4_NL),
            P::IQ4_XS => ("IQ4_XS", 30, T::IQ4_XS),
        }
    }

    /// The name as `llama-quantize` spells it ("Q4_K_M").
    pub fn name(self) -> &'static str {
        self.info().0
    }

    /// llama.cpp's `llama_ftype` number, stored as `general.file_type`.
    pub fn ftype(self) -> u32 {
        self.info().1
    }

    /// The type of every tensor no rule singles out (`llama_ftype_get_default_type`).
    pub fn default_type(self) -> GgmlType {
        self.info().2
    }

    /// The preset named `name`, case-insensitive, `-` accepted for `_`; `Q3_K`, `Q4_K` and
    /// `Q5_K` mean the `_M` presets, as in `llama-quantize`.
    pub fn from_name(name: &str) -> Option<GgmlPreset> {
        let n = name.trim().to_ascii_uppercase().replace('-', "_");
        let n = match n.as_str() {
            "Q3_K" => "Q3_K_M",
            "Q4_K" => "Q4_K_M",
            "Q5_K" => "Q5_K_M",
            other => other,
        };
        Self::ALL.iter().copied().find(|p| p.name() == n)
    }

    /// Every accepted name, lower case (for help texts and CLI value lists).
    pub fn names() -> Vec<String> {
        Self::ALL
            .iter()
            .map(|p| p.name().to_ascii_lowercase())
            .collect()
    }
}

impl std::fmt::Display for GgmlPreset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The hyperparameters llama.cpp's rules look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MixModel {
    /// `general.architecture` (`llama`, `qwen2`, `falcon`, ...).
    pub arch: String,
    /// Decoder layers (`n_layer`; also llama.cpp's `n_ffn_down`).
    pub n_layer: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads.
    pub n_head_kv: usize,
    /// Experts (0 or 1 for a dense model).
    pub n_expert: usize,
}

impl MixModel {
    /// `hparams.n_gqa()`: query heads per key/value head.
    pub fn n_gqa(&self) -> usize {
        self.n_head.checked_div(self.n_head_kv).unwrap_or(0)
    }

    fn falcon(&self) -> bool {
        self.arch == "falcon"
    }

    /// llama.cpp's `LLM_TYPE_70B` (a Llama of 80 layers with grouped-query attention).
    fn is_70b(&self) -> bool {
        self.arch == "llama" && self.n_layer == 80 && self.n_head != self.n_head_kv
    }
}

/// Options that change the choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MixOptions {
    /// An importance matrix will be used (changes IQ4_*, Q4_0/Q5_0 and Q2_K_S rules).
    pub has_imatrix: bool,
    /// Quantize `output.weight` (llama-quantize's default; `--leave-output-tensor` turns it off).
    pub quantize_output: bool,
}

impl Default for MixOptions {
    fn default() -> Self {
        MixOptions {
            has_imatrix: false,
            quantize_output: true,
        }
    }
}

/// The choice for one tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorChoice {
    /// GGUF tensor name.
    pub name: String,
    /// ggml dimensions (row length first).
    pub ne: Vec<u64>,
    /// The type to store, or `None` for a tensor llama.cpp does not quantize (norms, biases,
    /// 1-D tensors): kept as it is stored.
    pub ty: Option<GgmlType>,
    /// When the row length forced a fallback: the type the rules wanted.
    pub wanted: Option<GgmlType>,
    /// llama.cpp refuses to produce this tensor without an importance matrix.
    pub requires_imatrix: bool,
}

/// Broad tensor categories (llama.cpp's `tensor_category`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Category {
    TokenEmbd,
    AttnQ,
    AttnV,
    AttnK,
    AttnQkv,
    AttnKvB,
    AttnOutput,
    FfnUp,
    FfnGate,
    FfnDown,
    Output,
    Other,
}

/// `tensor_get_category`.
fn category(name: &str) -> Category {
    use Category::*;
    if name == "output.weight" {
        return Output;
    }
    if name == "token_embd.weight" || name == "per_layer_token_embd.weight" {
        return TokenEmbd;
    }
    let table = [
        ("attn_qkv.weight", AttnQkv),
        ("attn_kv_b.weight", AttnKvB),
        ("attn_v.weight", AttnV),
        ("attn_k.weight", AttnK),
        ("attn_q.weight", AttnQ),
        ("attn_output.weight", AttnOutput),
        ("ffn_up", FfnUp),
        ("ffn_gate", FfnGate),
        ("ffn_down", FfnDown),
    ];
    table
        .iter()
        .find(|(pat, _)| name.contains(pat))
        .map_or(Other, |&(_, c)| c)
}

/// `category_is_attn_v`.
fn is_attn_v(c: Category) -> bool {
    matches!(c, Category::AttnV | Category::AttnQkv | Category::AttnKvB)
}

/// The layer number of a `blk.N.` name (llama.cpp's `sscanf(name, "blk.%d.")`), else -1.
fn layer_of(name: &str) -> i64 {
    name.strip_prefix("blk.")
        .map(|r| r.bytes().take_while(u8::is_ascii_digit).count())
        .filter(|&n| n > 0)
        .and_then(|n| name[4..4 + n].parse().ok())
        .unwrap_or(-1)
}

/// `llama_model_loader::weight_name_comparer`: tensors outside blocks first, then blocks by
/// number, each by name. This is the order llama-quantize visits (and writes) tensors in.
pub fn llama_cpp_order(a: &str, b: &str) -> Ordering {
    layer_of(a).cmp(&layer_of(b)).then_with(|| a.cmp(b))
}

/// `tensor_allows_quantization` for what a Llama-family, GPT-2 or GPT-NeoX model holds: 2-D
/// (or 3-D) tensors whose name ends in `weight`, except norms, expert gates, positional and
/// token-type embeddings (and `output.weight` unless `quantize_output`).
pub fn allows_quantization(name: &str, ne: &[u64], quantize_output: bool) -> bool {
    let dims = ne.iter().rposition(|&d| d != 1).map_or(1, |i| i + 1);
    dims >= 2
        && name.ends_with("weight")
        && !name.contains("_norm.weight")
        && (quantize_output || name != "output.weight")
        && !name.contains("ffn_gate_inp.weight")
        && !name.contains("altup")
        && !name.contains("laurel")
        && !name.contains("per_layer_model_proj")
        && name != "position_embd.weight"
        && name != "token_types.weight"
        && !name.contains("ssm_conv1d")
        && !name.contains("attn_rel_b.weight")
}

/// `use_more_bits`: the first and last eighth of the layers and every third one between.
pub fn use_more_bits(i_layer: usize, n_layers: usize) -> bool {
    let (i, n) = (i_layer as i64, n_layers as i64);
    // C's `%` truncates towards zero like Rust's, so a negative difference never gives 2.
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// `tensor_type_fallback`: the type actually stored for rows of `ncols`, and whether that is
/// a fallback from `target`.
pub fn fallback(name: &str, ncols: u64, target: GgmlType) -> Result<(GgmlType, bool)> {
    use GgmlType as T;
    if ncols.is_multiple_of(target.block_size() as u64) {
        return Ok((target, false));
    }
    let ret = match target {
        T::Q2_K | T::Q3_K | T::IQ4_XS => T::IQ4_NL,
        T::Q4_K => T::Q5_0,
        T::Q5_K => T::Q5_1,
        T::Q6_K => T::Q8_0,
        other => {
            return Err(MethodError::Options(format!(
                "tensor {name}: rows of {ncols} are not whole {} blocks of {} and llama.cpp defines no fallback for it",
                other.name(),
                other.block_size()
            )))
        }
    };
    let ret = if !ncols.is_multiple_of(ret.block_size() as u64) {
        T::F16
    } else {
        ret
    };
    Ok((ret, true))
}

/// The counters of llama.cpp's `quantize_state_impl`.
struct State {
    n_attention_wv: usize,
    i_attention_wv: usize,
    n_ffn_down: usize,
    i_ffn_down: usize,
    has_tied_embeddings: bool,
}

/// `llama_tensor_get_type_impl`, for the supported presets.
fn rule(
    qs: &mut State,
    m: &MixModel,
    opts: &MixOptions,
    preset: GgmlPreset,
    name: &str,
    ne0: u64,
    cat: Category,
) -> Result<GgmlType> {
    use GgmlPreset as P;
    use GgmlType as T;
    let mut new_type = preset.default_type();
    if cat == Category::Output || (qs.has_tied_embeddings && cat == Category::TokenEmbd) {
        // Output tensors (and the embedding, when it doubles as the output): Q8_0 when the
        // rows do not fit the default type's blocks, else at least Q6_K.
        let qk = new_type.block_size() as u64;
        if m.falcon() || !ne0.is_multiple_of(qk) {
            new_type = T::Q8_0;
        } else if new_type != T::Q8_0 {
            new_type = T::Q6_K;
        }
    } else if cat == Category::TokenEmbd {
        // No rule of the supported presets changes an untied embedding.
    } else if is_attn_v(cat) {
        let gqa4 = m.n_gqa() >= 4;
        let i = qs.i_attention_wv;
        match preset {
            P::Q2_K => new_type = if gqa4 { T::Q4_K } else { T::Q3_K },
            P::Q2_K_S if gqa4 => new_type = T::Q4_K,
            P::Q3_K_M => new_type = if i < 2 { T::Q5_K } else { T::Q4_K },
            P::Q3_K_L => new_type = T::Q5_K,
            P::IQ4_NL | P::IQ4_XS if gqa4 => new_type = T::Q5_K,
            P::Q4_K_M | P::Q5_K_M if use_more_bits(i, qs.n_attention_wv) => new_type = T::Q6_K,
            P::Q4_K_S if i < 4 => new_type = T::Q5_K,
            _ => {}
        }
        if m.is_70b() && matches!(new_type, T::Q3_K | T::Q4_K) {
            // 8 heads share each attn_v in the 70B model: more bits cost little there.
            new_type = T::Q5_K;
        }
        if m.n_expert == 8 {
            new_type = T::Q8_0;
        }
        qs.i_attention_wv += 1;
    } else if cat == Category::AttnK {
        if m.n_expert == 8 {
            new_type = T::Q8_0;
        }
    } else if cat == Category::FfnDown {
        let (i, n) = if m.n_expert > 1 {
            // Experts are not consecutive: llama.cpp parses the layer from the name.
            let l = layer_of(name);
            if l < 0 || l as usize >= m.n_layer {
                return Err(MethodError::Options(format!(
                    "tensor {name}: cannot tell its layer (model has {} layers)",
                    m.n_layer
                )));
            }
            (l as usize, m.n_layer)
        } else {
            (qs.i_ffn_down, qs.n_ffn_down)
        };
        let falcon = m.falcon();
        match preset {
            P::Q2_K => new_type = T::Q3_K,
            P::Q2_K_S if i < n / 8 => new_type = T::Q4_K,
            P::Q3_K_M => {
                new_type = if i < n / 16 {
                    T::Q5_K
                } else if !falcon || use_more_bits(i, n) {
                    T::Q4_K
                } else {
                    T::Q3_K
                }
            }
            P::Q3_K_L => new_type = if falcon { T::Q4_K } else { T::Q5_K },
            P::Q4_K_M => {
                if falcon {
                    new_type = if i < n / 16 {
                        T::Q6_K
                    } else if use_more_bits(i, n) {
                        T::Q5_K
                    } else {
                        T::Q4_K
                    };
                } else if use_more_bits(i, n) {
                    new_type = T::Q6_K;
                }
            }
            P::IQ4_NL | P::IQ4_XS if i < n / 8 && !opts.has_imatrix => new_type = T::Q5_K,
            P::Q5_K_M if use_more_bits(i, n) => new_type = T::Q6_K,
            P::Q4_K_S if !falcon && i < n / 8 => new_type = T::Q5_K,
            // With an imatrix, guard the first ffn_down layers of Q4_0/Q5_0 against
            // "craziness" (llama.cpp's word) with the offset variant.
            P::Q4_0 if opts.has_imatrix && i < n / 8 => new_type = T::Q4_1,
            P::Q5_0 if opts.has_imatrix && i < n / 8 => new_type = T::Q5_1,
            _ => {}
        }
        qs.i_ffn_down += 1;
    } else if cat == Category::AttnOutput {
        if !m.falcon() {
            if m.n_expert == 8 {
                if matches!(
                    preset,
                    P::Q2_K | P::Q3_K_S | P::Q3_K_M | P::IQ4_NL | P::Q4_K_S | P::Q4_K_M | P::IQ4_XS
                ) {
                    new_type = T::Q5_K;
                }
            } else {
                match preset {
                    P::Q2_K => new_type = T::Q3_K,
                    P::Q3_K_M => new_type = T::Q4_K,
                    P::Q3_K_L => new_type = T::Q5_K,
                    _ => {}
                }
            }
        } else if preset == P::Q3_K_L {
            new_type = T::Q4_K;
        }
    } else if cat == Category::AttnQkv {
        match preset {
            P::Q3_K_M | P::Q3_K_L => new_type = T::Q4_K,
            P::Q4_K_M => new_type = T::Q5_K,
            P::Q5_K_M => new_type = T::Q6_K,
            _ => {}
        }
    }
    Ok(new_type)
}

/// `tensor_requires_imatrix`, for the supported presets.
fn requires_imatrix(cat: Category, ty: GgmlType, preset: GgmlPreset) -> bool {
    !matches!(cat, Category::TokenEmbd | Category::Output)
        && ty == GgmlType::Q2_K
        && preset == GgmlPreset::Q2_K_S
}

/// The type of every tensor under `preset`, as llama-quantize chooses it, returned in the order
/// llama-quantize writes them ([`llama_cpp_order`]). `tensors` are (GGUF name, ggml `ne`).
///
/// Errors when a row length has no fallback, or when the preset requires an importance matrix
/// (Q2_K_S) and `opts.has_imatrix` is false.
pub fn assign(
    preset: GgmlPreset,
    model: &MixModel,
    opts: &MixOptions,
    tensors: &[(String, Vec<u64>)],
) -> Result<Vec<TensorChoice>> {
    let mut order: Vec<&(String, Vec<u64>)> = tensors.iter().collect();
    order.sort_by(|a, b| llama_cpp_order(&a.0, &b.0));
    // init_quantize_state_counters
    let mut qs = State {
        n_attention_wv: tensors
            .iter()
            .filter(|(n, _)| is_attn_v(category(n)))
            .count(),
        i_attention_wv: 0,
        n_ffn_down: model.n_layer,
        i_ffn_down: 0,
        has_tied_embeddings: !tensors.iter().any(|(n, _)| category(n) == Category::Output),
    };
    let mut out = Vec::with_capacity(order.len());
    for (name, ne) in order {
        if !allows_quantization(name, ne, opts.quantize_output) {
            out.push(TensorChoice {
                name: name.clone(),
                ne: ne.clone(),
                ty: None,
                wanted: None,
                requires_imatrix: false,
            });
            continue;
        }
        let cat = category(name);
        let ne0 = ne[0];
        let want = rule(&mut qs, model, opts, preset, name, ne0, cat)?;
        let (ty, fell_back) = fallback(name, ne0, want)?;
        let requires = requires_imatrix(cat, ty, preset);
        if requires && !opts.has_imatrix {
            return Err(MethodError::Options(format!(
                "{preset} requires an importance matrix (--imatrix): tensor {name} would be {ty}, which llama.cpp refuses to produce without one"
            )));
        }
        out.push(TensorChoice {
            name: name.clone(),
            ne: ne.clone(),
            ty: Some(ty),
            wanted: fell_back.then_some(want),
            requires_imatrix: requires,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use GgmlType as T;

    /// SmolLM2-135M as llama.cpp's GGUF holds it: tied embedding, 30 layers, 576 wide,
    /// 9 query and 3 key/value heads of 64, MLP 1536.
    fn smollm2() -> (MixModel, Vec<(String, Vec<u64>)>) {
        let mut t = vec![
            ("token_embd.weight".to_string(), vec![576, 49152]),
            ("output_norm.weight".to_string(), vec![576]),
        ];
        for l in 0..30 {
            let mut add = |n: &str, ne: Vec<u64>| t.push((format!("blk.{l}.{n}.weight"), ne));
            add("attn_norm", vec![576]);
            add("ffn_down", vec![1536, 576]);
            add("ffn_gate", vec![576, 1536]);
            add("ffn_up", vec![576, 1536]);
            add("ffn_norm", vec![576]);
            add("attn_k", vec![576, 192]);
            add("attn_output", vec![576, 576]);
            add("attn_q", vec![576, 576]);
            add("attn_v", vec![576, 192]);
        }
        let m = MixModel {
            arch: "llama".into(),
            n_layer: 30,
            n_head: 9,
            n_head_kv: 3,
            n_expert: 0,
        };
        (m, t)
    }

    fn choose(p: GgmlPreset) -> Vec<TensorChoice> {
        let (m, t) = smollm2();
        assign(p, &m, &MixOptions::default(), &t).unwrap()
    }

    fn get<'a>(c: &'a [TensorChoice], name: &str) -> &'a TensorChoice {
        c.iter().find(|x| x.name == name).unwrap()
    }

    /// Bytes of all tensors (kept tensors as f32), as llama-quantize's output holds them.
    fn bytes(c: &[TensorChoice]) -> u64 {
        c.iter()
            .map(|x| {
                let n: u64 = x.ne.iter().product();
                match x.ty {
                    None => n * 4,
                    Some(t) => n / t.block_size() as u64 * t.type_size() as u64,
                }
            })
            .sum()
    }

    const MORE_BITS_30: [usize; 14] = [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29];

    #[test]
    fn use_more_bits_schedule_for_30_layers() {
        let got: Vec<usize> = (0..30).filter(|&i| use_more_bits(i, 30)).collect();
        assert_eq!(got, MORE_BITS_30);
    }

    #[test]
    fn order_is_llama_cpp_s() {
        let c = choose(GgmlPreset::Q4_K_M);
        let names: Vec<&str> = c.iter().take(13).map(|x| x.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "output_norm.weight",
                "token_embd.weight",
                "blk.0.attn_k.weight",
                "blk.0.attn_norm.weight",
                "blk.0.attn_output.weight",
                "blk.0.attn_q.weight",
                "blk.0.attn_v.weight",
                "blk.0.ffn_down.weight",
                "blk.0.ffn_gate.weight",
                "blk.0.ffn_norm.weight",
                "blk.0.ffn_up.weight",
                "blk.1.attn_k.weight",
                "blk.1.attn_norm.weight",
            ]
        );
        // blk.10 after blk.9, not after blk.1.
        let pos = |n: &str| c.iter().position(|x| x.name == n).unwrap();
        assert!(pos("blk.9.ffn_up.weight") < pos("blk.10.attn_k.weight"));
    }

    #[test]
    fn q4_k_m_on_smollm2() {
        let c = choose(GgmlPreset::Q4_K_M);
        // Norms stay as stored.
        assert_eq!(get(&c, "blk.3.attn_norm.weight").ty, None);
        assert_eq!(get(&c, "output_norm.weight").ty, None);
        // Tied embedding: the output rule; 576 % 256 != 0 → Q8_0 directly (no fallback).
        let e = get(&c, "token_embd.weight");
        assert_eq!((e.ty, e.wanted), (Some(T::Q8_0), None));
        for l in 0..30 {
            let more = MORE_BITS_30.contains(&l);
            let v = get(&c, &format!("blk.{l}.attn_v.weight"));
            let d = get(&c, &format!("blk.{l}.ffn_down.weight"));
            if more {
                assert_eq!(
                    (v.ty, v.wanted),
                    (Some(T::Q8_0), Some(T::Q6_K)),
                    "layer {l}"
                );
                assert_eq!((d.ty, d.wanted), (Some(T::Q6_K), None), "layer {l}");
            } else {
                assert_eq!(
                    (v.ty, v.wanted),
                    (Some(T::Q5_0), Some(T::Q4_K)),
                    "layer {l}"
                );
                assert_eq!((d.ty, d.wanted), (Some(T::Q4_K), None), "layer {l}");
            }
            for n in ["attn_q", "attn_k", "attn_output", "ffn_gate", "ffn_up"] {
                let x = get(&c, &format!("blk.{l}.{n}.weight"));
                assert_eq!((x.ty, x.wanted), (Some(T::Q5_0), Some(T::Q4_K)), "{n} {l}");
            }
        }
    }

    #[test]
    fn q3_k_m_and_q2_k_on_smollm2() {
        let c = choose(GgmlPreset::Q3_K_M);
        for l in 0..30 {
            let v = get(&c, &format!("blk.{l}.attn_v.weight"));
            let want = if l < 2 {
                (T::Q5_1, T::Q5_K)
            } else {
                (T::Q5_0, T::Q4_K)
            };
            assert_eq!((v.ty, v.wanted), (Some(want.0), Some(want.1)), "{l}");
            let d = get(&c, &format!("blk.{l}.ffn_down.weight"));
            assert_eq!(d.ty, Some(if l < 1 { T::Q5_K } else { T::Q4_K }), "{l}");
            let o = get(&c, &format!("blk.{l}.attn_output.weight"));
            assert_eq!((o.ty, o.wanted), (Some(T::Q5_0), Some(T::Q4_K)));
            let q = get(&c, &format!("blk.{l}.attn_q.weight"));
            assert_eq!((q.ty, q.wanted), (Some(T::IQ4_NL), Some(T::Q3_K)));
        }
        let c = choose(GgmlPreset::Q2_K);
        for l in 0..30 {
            // n_gqa = 3 < 4: attn_v Q3_K, which 576-wide rows send to IQ4_NL.
            let v = get(&c, &format!("blk.{l}.attn_v.weight"));
            assert_eq!((v.ty, v.wanted), (Some(T::IQ4_NL), Some(T::Q3_K)));
            let d = get(&c, &format!("blk.{l}.ffn_down.weight"));
            assert_eq!((d.ty, d.wanted), (Some(T::Q3_K), None));
            let g = get(&c, &format!("blk.{l}.ffn_gate.weight"));
            assert_eq!((g.ty, g.wanted), (Some(T::IQ4_NL), Some(T::Q2_K)));
        }
        assert_eq!(get(&c, "token_embd.weight").ty, Some(T::Q8_0));
    }

    #[test]
    fn legacy_presets_on_smollm2() {
        // Q4_0: the tied embedding gets the output rule (Q6_K), which 576 sends to Q8_0.
        let c = choose(GgmlPreset::Q4_0);
        let e = get(&c, "token_embd.weight");
        assert_eq!((e.ty, e.wanted), (Some(T::Q8_0), Some(T::Q6_K)));
        assert!(c
            .iter()
            .filter(|x| x.ty.is_some() && x.name != "token_embd.weight")
            .all(|x| x.ty == Some(T::Q4_0) && x.wanted.is_none()));
        let c = choose(GgmlPreset::Q8_0);
        assert!(c
            .iter()
            .filter(|x| x.ty.is_some())
            .all(|x| x.ty == Some(T::Q8_0)));
        // With an imatrix, Q4_0's first eighth of ffn_down becomes Q4_1.
        let (m, t) = smollm2();
        let opts = MixOptions {
            has_imatrix: true,
            ..Default::default()
        };
        let c = assign(GgmlPreset::Q4_0, &m, &opts, &t).unwrap();
        for l in 0..30 {
            let d = get(&c, &format!("blk.{l}.ffn_down.weight"));
            assert_eq!(d.ty, Some(if l < 3 { T::Q4_1 } else { T::Q4_0 }));
        }
    }

    /// Tensor bytes equal those of llama.cpp's own files of SmolLM2 (peers.md "model bytes").
    #[test]
    fn sizes_match_llama_cpp_files() {
        let cases = [
            (GgmlPreset::Q2_K, 86_416_128),
            (GgmlPreset::IQ4_XS, 89_526_528),
            (GgmlPreset::Q4_0, 89_941_248),
            (GgmlPreset::Q3_K_M, 91_724_544),
            (GgmlPreset::Q4_K_M, 103_668_480),
            (GgmlPreset::Q5_K_M, 110_317_824),
            (GgmlPreset::Q6_K, 136_597_248),
            (GgmlPreset::Q8_0, 143_025_408),
        ];
        for (p, want) in cases {
            assert_eq!(bytes(&choose(p)), want, "{p}");
        }
    }

    #[test]
    fn untied_output_and_other_rules() {
        let (m, mut t) = smollm2();
        t.push(("output.weight".into(), vec![576, 49152]));
        let c = assign(GgmlPreset::Q4_K_M, &m, &MixOptions::default(), &t).unwrap();
        // Untied: the embedding keeps the default type (with its fallback), output gets Q8_0.
        let e = get(&c, "token_embd.weight");
        assert_eq!((e.ty, e.wanted), (Some(T::Q5_0), Some(T::Q4_K)));
        assert_eq!(get(&c, "output.weight").ty, Some(T::Q8_0));
        let opts = MixOptions {
            quantize_output: false,
            ..Default::default()
        };
        let c = assign(GgmlPreset::Q4_K_M, &m, &opts, &t).unwrap();
        assert_eq!(get(&c, "output.weight").ty, None);
        // A 256-multiple model gets the K types themselves.
        let m = MixModel {
            arch: "llama".into(),
            n_layer: 8,
            n_head: 8,
            n_head_kv: 2,
            n_expert: 0,
        };
        let mut t = vec![("token_embd.weight".to_string(), vec![512, 1000])];
        for l in 0..8 {
            t.push((format!("blk.{l}.attn_v.weight"), vec![512, 128]));
            t.push((format!("blk.{l}.ffn_down.weight"), vec![1024, 512]));
            t.push((format!("blk.{l}.attn_output.weight"), vec![512, 512]));
        }
        let c = assign(GgmlPreset::Q2_K, &m, &MixOptions::default(), &t).unwrap();
        assert_eq!(get(&c, "token_embd.weight").ty, Some(T::Q6_K));
        // n_gqa = 4: Q2_K's attn_v is Q4_K.
        assert_eq!(get(&c, "blk.0.attn_v.weight").ty, Some(T::Q4_K));
        assert_eq!(get(&c, "blk.0.attn_output.weight").ty, Some(T::Q3_K));
        let c = assign(GgmlPreset::Q4_K_S, &m, &MixOptions::default(), &t).unwrap();
        let v: Vec<_> = (0..8)
            .map(|l| get(&c, &format!("blk.{l}.attn_v.weight")).ty.unwrap())
            .collect();
        assert_eq!(&v[..5], &[T::Q5_K, T::Q5_K, T::Q5_K, T::Q5_K, T::Q4_K]);
        assert_eq!(get(&c, "blk.0.ffn_down.weight").ty, Some(T::Q5_K));
        assert_eq!(get(&c, "blk.1.ffn_down.weight").ty, Some(T::Q4_K));
        // Q2_K_S needs an imatrix.
        let e = assign(GgmlPreset::Q2_K_S, &m, &MixOptions::default(), &t).unwrap_err();
        assert!(
            e.to_string().contains("requires an importance matrix"),
            "{e}"
        );
    }

    #[test]
    fn fallbacks_and_names() {
        assert_eq!(fallback("x", 576, T::Q2_K).unwrap(), (T::IQ4_NL, true));
        assert_eq!(fallback("x", 576, T::IQ4_XS).unwrap(), (T::IQ4_NL, true));
        assert_eq!(fallback("x", 576, T::Q5_K).unwrap(), (T::Q5_1, true));
        assert_eq!(fallback("x", 512, T::Q5_K).unwrap(), (T::Q5_K, false));
        assert_eq!(fallback("x", 100, T::Q6_K).unwrap(), (T::F16, true));
        assert!(fallback("x", 100, T::Q8_0).is_err());
        assert_eq!(GgmlPreset::from_name("q4_k_m"), Some(GgmlPreset::Q4_K_M));
        assert_eq!(GgmlPreset::from_name("Q4-K"), Some(GgmlPreset::Q4_K_M));
        assert_eq!(GgmlPreset::from_name("iq4_xs"), Some(GgmlPreset::IQ4_XS));
        assert_eq!(GgmlPreset::from_name("q4_k_x"), None);
        assert_eq!(GgmlPreset::Q4_K_M.ftype(), 15);
        assert_eq!(GgmlPreset::Q8_0.ftype(), 7);
        assert_eq!(layer_of("blk.12.attn_q.weight"), 12);
        assert_eq!(layer_of("token_embd.weight"), -1);
    }
}
