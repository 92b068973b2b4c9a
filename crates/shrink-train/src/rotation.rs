//! Learned rotations: SpinQuant (Liu et al. 2024, "SpinQuant: LLM quantization with learned
//! rotations", §3.2) for weight quantization, without online Hadamards. Rotating the residual
//! stream (R1) and each head's values (R2) leaves the float model's outputs unchanged but not its
//! rounding error, and some rotations round much better than others (the paper's Figure 1: the
//! spread between random rotations is wide). SpinQuant starts from a random Hadamard rotation and
//! trains the rotations themselves on the quantized network's loss, keeping them orthogonal by
//! Cayley steps on the Stiefel manifold ([`crate::optim::cayley_step`]).
//!
//! Here the input is a model already rotated by [`shrink_methods::rotate`] (norms folded, random
//! R1 and R2 absorbed: SpinQuant's initialisation), and the trained matrices are a further
//! rotation U of the same channels and R2ₗ per block, starting from the identity:
//! - each linear that reads the stream and the embedding become `W U` (the head too);
//! - each linear that writes into the stream becomes `Uᵀ W`;
//! - the value rows of each key/value head become `R2ₗᵀ W_v,g`, the output projection's columns
//!   of each head `W_o,h R2ₗ`;
//!
//! and every quantized linear runs fake-quantized, `Q(W)` by the grid it will be stored on, with
//! the straight-through estimator (as in the paper's training: weights quantized by RTN). The
//! loss is the KL to the float model's next-token distribution (the paper uses the text's
//! cross-entropy; the float outputs do not depend on the rotation, so KL to them isolates what
//! the rotation changes). dL/dU and dL/dR2 follow from the weights' gradients by the chain rule:
//! for `W = M U`, dL/dU = Mᵀ G; for `W = Uᵀ N`, dL/dU = N Gᵀ; summed over every weight that
//! holds U. The result is applied once more by [`shrink_methods::rotate`] with the trained
//! matrices given ([`Rotation::given`]), which checks the output's logits against the input's.
//!
//! RMSNorm families only (Llama, Mistral, Qwen2): under LayerNorm a residual rotation must map
//! the all-ones vector to itself, which the Cayley step does not keep.

use std::borrow::Cow;
use std::path::Path;

use candle_core::{Device, Tensor};
use shrink_io::Checkpoint;
use shrink_methods::per_tensor::WeightQuantizer;
use shrink_methods::rotate::Given;
use shrink_methods::select::Selection;
use shrink_models::{Architecture, ModelConfig};

use crate::error::{Result, TrainError};
use crate::forward::Trainable;
use crate::grad::Grads;
use crate::optim::cayley_step;
use crate::reparam::Trained;

/// Which rotations train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct RotationSpec {
    /// The residual stream's rotation (R1).
    pub residual: bool,
    /// Each block's head rotation (R2).
    pub heads: bool,
}

/// How one weight depends on the trained rotations.
struct Touched {
    index: usize,
    name: String,
    rows: usize,
    cols: usize,
    /// The weight in the input model.
    w0: Vec<f32>,
    /// Reads the stream: `W U`.
    reads: bool,
    /// Writes into the stream: `Uᵀ W`.
    writes: bool,
    /// The value rows of block l: `R2ₗᵀ` on each key/value head's rows.
    value: Option<usize>,
    /// The output projection of block l: `R2ₗ` on each head's columns.
    out: Option<usize>,
    /// Runs fake-quantized.
    quantized: bool,
}

/// The rotations being trained, and the weights they make.
pub struct Rotation<'q> {
    hidden: usize,
    /// The rotated channels (the others are kept out, as in the input's rotation).
    idx: Vec<usize>,
    head_dim: usize,
    /// U over the rotated channels (k × k, row-major), when the residual rotation trains.
    u: Option<Vec<f64>>,
    /// R2 per block (head width squared), when the head rotations train.
    r2: Vec<Vec<f64>>,
    touched: Vec<Touched>,
    /// The grid the quantized linears are fake-quantized on (`None`: float, for checks).
    grid: Option<&'q dyn WeightQuantizer>,
}

/// Row-major matrix product `a [m × k] · b [k × n]` (candle's multi-threaded GEMM).
fn mm(a: &[f32], m: usize, k: usize, b: &[f32], n: usize) -> Result<Vec<f32>> {
    let ta = Tensor::from_slice(a, (m, k), &Device::Cpu)?;
    let tb = Tensor::from_slice(b, (k, n), &Device::Cpu)?;
    Ok(ta.matmul(&tb)?.flatten_all()?.to_vec1()?)
}

/// The transpose of a row-major `rows × cols` matrix.
fn t(a: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    crate::params::transpose(a, rows, cols)
}

/// `Rᵀ B` on the `hd` rows starting at `row` (each row `cols` wide).
fn rows_by_rt(w: &mut [f32], row: usize, cols: usize, r: &[f64], hd: usize) {
    let block: Vec<f64> = w[row * cols..(row + hd) * cols]
        .iter()
        .map(|&x| x as f64)
        .collect();
    for i in 0..hd {
        for c in 0..cols {
            let s: f64 = (0..hd).map(|k| r[k * hd + i] * block[k * cols + c]).sum();
            w[(row + i) * cols + c] = s as f32;
        }
    }
}

/// `B R` on the `hd` columns starting at `col`.
fn cols_by_r(w: &mut [f32], col: usize, cols: usize, r: &[f64], hd: usize) {
    for row in w.chunks_exact_mut(cols) {
        let block: Vec<f64> = row[col..col + hd].iter().map(|&x| x as f64).collect();
        for j in 0..hd {
            row[col + j] = (0..hd).map(|k| block[k] * r[k * hd + j]).sum::<f64>() as f32;
        }
    }
}

/// The identity of order n, row-major.
fn identity(n: usize) -> Vec<f64> {
    let mut m = vec![0f64; n * n];
    (0..n).for_each(|i| m[i * n + i] = 1.0);
    m
}

/// An f64 matrix as two f32 halves (high part, remainder), so a checkpoint restores it to
/// about 1e-14 rather than to f32's 1e-7.
fn split(v: &[f64]) -> (Vec<f32>, Vec<f32>) {
    let hi: Vec<f32> = v.iter().map(|&x| x as f32).collect();
    let lo = v
        .iter()
        .zip(&hi)
        .map(|(&x, &h)| (x - h as f64) as f32)
        .collect();
    (hi, lo)
}

impl<'q> Rotation<'q> {
    /// The order of U (the rotated channels).
    pub fn order(&self) -> usize {
        self.idx.len()
    }

    /// Set the matrices (orthogonal ones, say from another run; the weights follow at the next
    /// [`Trained::rebuild`]). Sizes are checked, orthogonality is not.
    pub fn set(&mut self, given: Given) -> Result<()> {
        let k = self.idx.len();
        if let Some(u) = given.residual {
            if self.u.is_none() || u.len() != k * k {
                return Err(TrainError::Options(format!(
                    "a residual rotation of {} entries for {k} trained channels",
                    u.len()
                )));
            }
            self.u = Some(u);
        }
        if let Some(r) = given.heads {
            let hd = self.head_dim;
            if r.len() != self.r2.len() || r.iter().any(|m| m.len() != hd * hd) {
                return Err(TrainError::Options(format!(
                    "{} head rotations for {} trained ones of {hd} × {hd}",
                    r.len(),
                    self.r2.len()
                )));
            }
            self.r2 = r;
        }
        Ok(())
    }

    /// The trained matrices for [`shrink_methods::rotate::rotate`].
    pub fn given(&self) -> Given {
        Given {
            residual: self.u.clone(),
            heads: (!self.r2.is_empty()).then(|| self.r2.clone()),
            provenance: None,
        }
    }

    /// U embedded in the identity of the residual width, as f32 (hidden × hidden).
    fn u_full(&self) -> Option<Vec<f32>> {
        let u = self.u.as_ref()?;
        let (n, k) = (self.hidden, self.idx.len());
        let mut f = vec![0f32; n * n];
        (0..n).for_each(|i| f[i * n + i] = 1.0);
        for (a, &i) in self.idx.iter().enumerate() {
            for (b, &j) in self.idx.iter().enumerate() {
                f[i * n + j] = u[a * k + b] as f32;
            }
        }
        Some(f)
    }

    /// The value / output-projection rotations of `t` applied to `w` (the left or right factor
    /// that does not hold U).
    fn apply_heads(&self, tt: &Touched, w: &mut [f32]) {
        let hd = self.head_dim;
        if let Some(l) = tt.value {
            for g in 0..tt.rows / hd {
                rows_by_rt(w, g * hd, tt.cols, &self.r2[l], hd);
            }
        }
        if let Some(l) = tt.out {
            for h in 0..tt.cols / hd {
                cols_by_r(w, h * hd, tt.cols, &self.r2[l], hd);
            }
        }
    }

    /// The float weight of `t`: the head rotations, then U.
    fn float_weight(&self, tt: &Touched, uf: Option<&[f32]>) -> Result<Vec<f32>> {
        let mut w = tt.w0.clone();
        if !self.r2.is_empty() {
            self.apply_heads(tt, &mut w);
        }
        if let Some(uf) = uf {
            let n = self.hidden;
            if tt.reads {
                w = mm(&w, tt.rows, tt.cols, uf, n)?;
            }
            if tt.writes {
                w = mm(&t(uf, n, n), n, n, &w, tt.cols)?;
            }
        }
        Ok(w)
    }
}

impl Trained for Rotation<'_> {
    fn state(&self) -> Vec<(String, Cow<'_, [f32]>)> {
        let mut out = Vec::new();
        let mut push = |key: String, m: &[f64]| {
            let (hi, lo) = split(m);
            out.push((format!("{key}.hi"), Cow::Owned(hi)));
            out.push((format!("{key}.lo"), Cow::Owned(lo)));
        };
        if let Some(u) = &self.u {
            push("rotation.r1".into(), u);
        }
        for (l, r) in self.r2.iter().enumerate() {
            push(format!("rotation.r2.{l}"), r);
        }
        out
    }

    fn restore(&mut self, get: &dyn Fn(&str) -> Result<Vec<f32>>, path: &Path) -> Result<()> {
        let read = |key: &str, n: usize| -> Result<Vec<f64>> {
            let (hi, lo) = (get(&format!("{key}.hi"))?, get(&format!("{key}.lo"))?);
            if hi.len() != n * n || lo.len() != n * n {
                return Err(TrainError::input(path, format!("{key}: not {n} × {n}")));
            }
            Ok(hi
                .iter()
                .zip(&lo)
                .map(|(&h, &l)| h as f64 + l as f64)
                .collect())
        };
        if self.u.is_some() {
            self.u = Some(read("rotation.r1", self.idx.len())?);
        }
        for l in 0..self.r2.len() {
            self.r2[l] = read(&format!("rotation.r2.{l}"), self.head_dim)?;
        }
        Ok(())
    }

    fn rebuild(&self, student: &mut Trainable) -> Result<()> {
        let uf = self.u_full();
        for tt in &self.touched {
            let mut w = self.float_weight(tt, uf.as_deref())?;
            if let (true, Some(grid)) = (tt.quantized, self.grid) {
                w = grid
                    .quantize(&tt.name, &w, tt.rows, tt.cols)?
                    .dequantize()
                    .0;
            }
            student.params.set_values(tt.index, w)?;
        }
        Ok(())
    }

    fn theta_grads(&self, grads: &mut Grads) -> Result<Vec<Vec<f32>>> {
        let n = self.hidden;
        let hd = self.head_dim;
        let uf = self.u_full();
        let mut gu = vec![0f32; n * n];
        let mut gr: Vec<Vec<f32>> = vec![vec![0f32; hd * hd]; self.r2.len()];
        for tt in &self.touched {
            // The straight-through estimator: dL/dW = dL/dQ(W).
            let g = grads.sums[tt.index]
                .take()
                .ok_or_else(|| TrainError::Options(format!("no gradient reached {}", tt.name)))?;
            let (rows, cols) = (tt.rows, tt.cols);
            // The factor beside U: the head rotations applied to w0.
            let mut side = tt.w0.clone();
            if !self.r2.is_empty() {
                self.apply_heads(tt, &mut side);
            }
            if uf.is_some() {
                if tt.reads {
                    // W = M U: dL/dU = Mᵀ G, over the rows G reaches (an embedding's few).
                    let live: Vec<usize> = (0..rows)
                        .filter(|&r| g[r * cols..(r + 1) * cols].iter().any(|&x| x != 0.0))
                        .collect();
                    let (m, gg) = if live.len() < rows {
                        let pick = |v: &[f32]| -> Vec<f32> {
                            live.iter()
                                .flat_map(|&r| v[r * cols..(r + 1) * cols].iter().copied())
                                .collect()
                        };
                        (pick(&side), pick(&g))
                    } else {
                        (side.clone(), g.clone())
                    };
                    let d = mm(&t(&m, live.len(), cols), cols, live.len(), &gg, cols)?;
                    gu.iter_mut().zip(&d).for_each(|(a, b)| *a += b);
                }
                if tt.writes {
                    // W = Uᵀ N: dL/dU = N Gᵀ.
                    let d = mm(&side, rows, cols, &t(&g, rows, cols), rows)?;
                    gu.iter_mut().zip(&d).for_each(|(a, b)| *a += b);
                }
            }
            // The head rotations: P is the weight with U but without R2.
            if tt.value.is_some() || tt.out.is_some() {
                let p = match uf.as_deref() {
                    Some(uf) if tt.reads => mm(&tt.w0, rows, cols, uf, n)?,
                    Some(uf) if tt.writes => mm(&t(uf, n, n), n, n, &tt.w0, cols)?,
                    _ => tt.w0.clone(),
                };
                if let Some(l) = tt.value {
                    // Rows of head g: W_g = Rᵀ P_g, dL/dR = P_g G_gᵀ.
                    for gi in 0..rows / hd {
                        let blk = |v: &[f32]| v[gi * hd * cols..(gi + 1) * hd * cols].to_vec();
                        let d = mm(&blk(&p), hd, cols, &t(&blk(&g), hd, cols), hd)?;
                        gr[l].iter_mut().zip(&d).for_each(|(a, b)| *a += b);
                    }
                }
                if let Some(l) = tt.out {
                    // Columns of head h: W_h = P_h R, dL/dR = P_hᵀ G_h.
                    for h in 0..cols / hd {
                        let blk = |v: &[f32]| -> Vec<f32> {
                            v.chunks_exact(cols)
                                .flat_map(|r| r[h * hd..(h + 1) * hd].iter().copied())
                                .collect()
                        };
                        let d = mm(&t(&blk(&p), rows, hd), hd, rows, &blk(&g), hd)?;
                        gr[l].iter_mut().zip(&d).for_each(|(a, b)| *a += b);
                    }
                }
            }
        }
        *grads = Grads::default();
        let mut out = Vec::new();
        if self.u.is_some() {
            let k = self.idx.len();
            let mut sub = vec![0f32; k * k];
            for (a, &i) in self.idx.iter().enumerate() {
                for (b, &j) in self.idx.iter().enumerate() {
                    sub[a * k + b] = gu[i * n + j];
                }
            }
            out.push(sub);
        }
        out.extend(gr);
        Ok(out)
    }

    fn update(&mut self, gs: &[Vec<f32>], clip: f32, lr: f64, _step: usize) -> Result<()> {
        let mut gs = gs.iter();
        let scaled = |g: &Vec<f32>| -> Vec<f64> { g.iter().map(|&x| (x * clip) as f64).collect() };
        if let Some(u) = &mut self.u {
            let g = gs.next().expect("one gradient per matrix");
            cayley_step(u, &scaled(g), self.idx.len(), lr);
        }
        for r in &mut self.r2 {
            let g = gs.next().expect("one gradient per matrix");
            cayley_step(r, &scaled(g), self.head_dim, lr);
        }
        Ok(())
    }
}

/// Refuse a family whose rotation cannot be learned here (all but the RMSNorm ones).
pub fn check_family(arch: &Architecture) -> Result<()> {
    match arch {
        Architecture::Decoder(ModelConfig::Llama(_)) => Ok(()),
        _ => Err(TrainError::Options(format!(
            "learned rotations are for RMSNorm families (Llama, Mistral, Qwen2); {} normalizes \
             with LayerNorm (or after the residual addition): use the random rotation \
             (shrink rotate without --learn)",
            arch.family()
        ))),
    }
}

/// The rotated float model `ckpt` ready to train rotations on: the model, and the rotations
/// (U and each R2 the identity) with every weight they touch. `kept` are the residual channels
/// the input's rotation left out (their norm weights are still in the norms; every other
/// channel's must be 1: the input must come from [`shrink_methods::rotate`]). The weights
/// `selection` names run fake-quantized on `grid` (`None`: in float).
pub fn load<'q>(
    ckpt: &Checkpoint,
    kept: &[usize],
    spec: RotationSpec,
    selection: &Selection,
    grid: Option<&'q dyn WeightQuantizer>,
) -> Result<(Trainable, Rotation<'q>)> {
    let path = ckpt.path();
    if let Checkpoint::Hf(h) = ckpt {
        if h.quantization_config().is_some() {
            return Err(TrainError::input(
                path,
                "the model is already quantized: rotations are learned on the float model",
            ));
        }
    }
    if !spec.residual && !spec.heads {
        return Err(TrainError::Options(
            "nothing to learn: both the residual and the head rotations are off".into(),
        ));
    }
    let arch = Architecture::from_checkpoint(ckpt)?;
    check_family(&arch)?;
    let Architecture::Decoder(ModelConfig::Llama(c)) = &arch else {
        unreachable!("checked above")
    };
    let (hidden, hd) = (c.hidden_size, c.head_dim);
    if let Some(&ch) = kept.iter().find(|&&ch| ch >= hidden) {
        return Err(TrainError::Options(format!(
            "kept channel {ch} is outside the {hidden} residual channels"
        )));
    }
    let model = Trainable::load(ckpt)?;
    let index = |name: &str| {
        model
            .params
            .names()
            .iter()
            .position(|n| n == name)
            .ok_or_else(|| TrainError::input(path, format!("no weight {name}")))
    };
    // The input must be rotated already: every norm weight 1 outside the kept channels.
    let mut norms: Vec<String> = (0..c.num_layers)
        .flat_map(|l| {
            ["input_layernorm", "post_attention_layernorm"]
                .map(|n| format!("model.layers.{l}.{n}.weight"))
        })
        .collect();
    norms.push("model.norm.weight".into());
    for nm in &norms {
        let g = model.params.values(index(nm)?)?;
        if let Some(ch) = (0..hidden).find(|ch| !kept.contains(ch) && g[*ch] != 1.0) {
            return Err(TrainError::input(
                path,
                format!(
                    "{nm}[{ch}] is {}: learned rotations start from a rotated model whose norm \
                     weights are folded into the linears (shrink rotate first; the kept \
                     channels must be those it kept)",
                    g[ch]
                ),
            ));
        }
    }
    let quantized: Vec<String> = selection
        .resolve(&arch)?
        .into_iter()
        .map(|l| l.weight)
        .collect();
    let shapes: std::collections::HashMap<String, Vec<usize>> =
        arch.weight_shapes().into_iter().collect();
    let mut touched = Vec::new();
    let mut add = |name: String, reads: bool, writes: bool, value, out| -> Result<()> {
        let Some(s) = shapes.get(&name) else {
            return Ok(()); // a tied head
        };
        let i = index(&name)?;
        let (rows, cols) = (s[0], s.get(1).copied().unwrap_or(1));
        let reads = reads && spec.residual;
        let writes = writes && spec.residual;
        let (value, out) = if spec.heads {
            (value, out)
        } else {
            (None, None)
        };
        if !(reads || writes || value.is_some() || out.is_some()) {
            return Ok(());
        }
        if let Some(grid) = grid.filter(|_| quantized.contains(&name)) {
            grid.validate(&name, rows, cols)?;
        }
        touched.push(Touched {
            index: i,
            quantized: quantized.contains(&name),
            w0: model.params.values(i)?,
            name,
            rows,
            cols,
            reads,
            writes,
            value,
            out,
        });
        Ok(())
    };
    add("model.embed_tokens.weight".into(), true, false, None, None)?;
    for l in 0..c.num_layers {
        let p = |s: &str| format!("model.layers.{l}.{s}");
        for r in ["q_proj", "k_proj"] {
            add(p(&format!("self_attn.{r}.weight")), true, false, None, None)?;
        }
        add(p("self_attn.v_proj.weight"), true, false, Some(l), None)?;
        if c.qkv_bias {
            add(p("self_attn.v_proj.bias"), false, false, Some(l), None)?;
        }
        add(p("self_attn.o_proj.weight"), false, true, None, Some(l))?;
        if c.o_bias {
            add(p("self_attn.o_proj.bias"), false, true, None, None)?;
        }
        for r in ["gate_proj", "up_proj"] {
            add(p(&format!("mlp.{r}.weight")), true, false, None, None)?;
        }
        add(p("mlp.down_proj.weight"), false, true, None, None)?;
        if c.mlp_bias {
            add(p("mlp.down_proj.bias"), false, true, None, None)?;
        }
    }
    add("lm_head.weight".into(), true, false, None, None)?;
    let idx: Vec<usize> = (0..hidden).filter(|ch| !kept.contains(ch)).collect();
    let rot = Rotation {
        hidden,
        head_dim: hd,
        u: spec.residual.then(|| identity(idx.len())),
        r2: if spec.heads {
            vec![identity(hd); c.num_layers]
        } else {
            vec![]
        },
        idx,
        touched,
        grid,
    };
    Ok((model, rot))
}
