//! QLoRA: low-rank adapters trained over frozen quantized weights (Dettmers et al. 2023,
//! "QLoRA: Efficient Finetuning of Quantized LLMs"; LoRA: Hu et al. 2021).
//!
//! Each adapted layer computes `W = W₀ + s · B A` with `W₀` the stored (NF4, or any layout
//! shrink reads) weight dequantized and frozen, `A ∈ ℝ^{r×in}`, `B ∈ ℝ^{out×r}`, `s = α / r`
//! (LoRA §4.1). As in PEFT, A starts Kaiming-uniform (bound 1/√in) and B at zero, so training
//! starts from the quantized model itself. The engine's backward gives dL/dW, whence
//! `dL/dA = s · Bᵀ (dL/dW)` and `dL/dB = s · (dL/dW) Aᵀ`. The result is a PEFT adapter
//! ([`shrink_io::peft::Adapter`]) that PEFT loads over the bitsandbytes checkpoint, or, merged,
//! `W₀ + s B A` requantized by the base's own quantizer.

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use shrink_io::peft::{Adapter, LoraPair};
use shrink_io::quantized::Quantized;
use shrink_io::Checkpoint;
use shrink_methods::rtn::Rtn;
use shrink_methods::select::Selection;
use shrink_models::LinearInfo;

use crate::error::{Result, TrainError};
use crate::forward::Trainable;
use crate::params::transpose;
use crate::reparam::Reparam;

/// A LoRA adapter's shape.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LoraSpec {
    /// Rank r.
    pub r: usize,
    /// α (the update is scaled by α / r).
    pub alpha: f64,
    /// Module names (last components, `q_proj`, `c_attn`, …) to adapt; empty: every Linear of
    /// the blocks.
    pub targets: Vec<String>,
    /// Seed of A's initialisation.
    pub seed: u64,
}

/// One adapted weight.
#[derive(Debug, Clone)]
pub struct LoraWeight {
    /// HF weight name.
    pub name: String,
    index: usize,
    rows: usize,
    cols: usize,
    conv1d: bool,
    r: usize,
    scale: f32,
    /// The frozen base weight (dequantized), in the checkpoint's layout.
    w0: Vec<f32>,
    /// A (`[r, cols]`) then B (`[rows, r]`), row-major.
    theta: Vec<f32>,
}

fn matmul(a: &[f32], (m, k): (usize, usize), b: &[f32], n: usize) -> Result<Vec<f32>> {
    let a = Tensor::from_slice(a, (m, k), &Device::Cpu)?;
    let b = Tensor::from_slice(b, (k, n), &Device::Cpu)?;
    Ok(a.matmul(&b)?.flatten_all()?.to_vec1()?)
}

impl LoraWeight {
    /// A, `[r, in]`.
    pub fn a(&self) -> &[f32] {
        &self.theta[..self.r * self.cols]
    }

    /// B, `[out, r]`.
    pub fn b(&self) -> &[f32] {
        &self.theta[self.r * self.cols..]
    }

    /// `s · B A`, `[out, in]`.
    fn delta(&self) -> Result<Vec<f32>> {
        let mut d = matmul(self.b(), (self.rows, self.r), self.a(), self.cols)?;
        d.iter_mut().for_each(|x| *x *= self.scale);
        Ok(d)
    }

    /// The module's pair for an adapter file.
    pub fn pair(&self) -> LoraPair {
        LoraPair {
            a: self.a().to_vec(),
            b: self.b().to_vec(),
            in_features: self.cols,
            out_features: self.rows,
        }
    }
}

impl Reparam for LoraWeight {
    fn name(&self) -> &str {
        &self.name
    }
    fn index(&self) -> usize {
        self.index
    }
    fn theta(&self) -> &[f32] {
        &self.theta
    }
    fn set_theta(&mut self, theta: Vec<f32>) {
        self.theta = theta;
    }
    fn weight(&self) -> Result<Vec<f32>> {
        let mut d = self.delta()?;
        if self.conv1d {
            d = transpose(&d, self.rows, self.cols);
        }
        d.iter_mut().zip(&self.w0).for_each(|(d, w)| *d += w);
        Ok(d)
    }
    fn theta_grad(&self, gw: &[f32]) -> Result<Vec<f32>> {
        let g = if self.conv1d {
            transpose(gw, self.cols, self.rows)
        } else {
            gw.to_vec()
        };
        // dA = s Bᵀ G  ([r, out] · [out, in]); dB = s G Aᵀ  ([out, in] · [in, r]).
        let bt = transpose(self.b(), self.rows, self.r);
        let at = transpose(self.a(), self.r, self.cols);
        let mut out = matmul(&bt, (self.r, self.rows), &g, self.cols)?;
        out.extend(matmul(&g, (self.rows, self.cols), &at, self.r)?);
        out.iter_mut().for_each(|x| *x *= self.scale);
        Ok(out)
    }
}

/// The short module name of weight `name` (`model.layers.0.self_attn.q_proj.weight` →
/// `q_proj`).
pub fn module_short_name(name: &str) -> &str {
    let m = name.strip_suffix(".weight").unwrap_or(name);
    m.rsplit('.').next().unwrap_or(m)
}

/// The model of `ckpt` (its stored weights dequantized, all frozen) and a fresh LoRA pair for
/// each Linear of the blocks that `spec.targets` names.
pub fn load(ckpt: &Checkpoint, spec: &LoraSpec) -> Result<(Trainable, Vec<LoraWeight>)> {
    if spec.r == 0 || !(spec.alpha.is_finite() && spec.alpha > 0.0) {
        return Err(TrainError::Options(format!(
            "--rank {} and --lora-alpha {} must be positive",
            spec.r, spec.alpha
        )));
    }
    let model = Trainable::load(ckpt)?;
    let linears: Vec<LinearInfo> = model.arch().block_linears();
    for t in &spec.targets {
        if !linears.iter().any(|l| module_short_name(&l.weight) == t) {
            let mut names: Vec<&str> = linears
                .iter()
                .map(|l| module_short_name(&l.weight))
                .collect();
            names.sort();
            names.dedup();
            return Err(TrainError::Options(format!(
                "--targets {t}: no Linear of the blocks is called so (this model has {})",
                names.join(", ")
            )));
        }
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(spec.seed);
    let mut out = Vec::new();
    for l in linears {
        if !spec.targets.is_empty()
            && !spec
                .targets
                .iter()
                .any(|t| t == module_short_name(&l.weight))
        {
            continue;
        }
        let index = model
            .params
            .names()
            .iter()
            .position(|n| *n == l.weight)
            .ok_or_else(|| {
                TrainError::input(ckpt.path(), format!("no weight {} to adapt", l.weight))
            })?;
        let (rows, cols) = (l.out_features, l.in_features);
        // PEFT: nn.init.kaiming_uniform_(A, a=√5) — bound √(6 / ((1 + 5) · in)) = 1/√in; B = 0.
        let bound = 1.0 / (cols as f32).sqrt();
        let mut theta: Vec<f32> = (0..spec.r * cols)
            .map(|_| rng.random_range(-bound..bound))
            .collect();
        theta.extend(std::iter::repeat_n(0.0, rows * spec.r));
        out.push(LoraWeight {
            w0: model.params.values(index)?,
            name: l.weight,
            index,
            rows,
            cols,
            conv1d: l.conv1d,
            r: spec.r,
            scale: (spec.alpha / spec.r as f64) as f32,
            theta,
        });
    }
    if out.is_empty() {
        return Err(TrainError::Options("no Linear to adapt".into()));
    }
    Ok((model, out))
}

/// The trained pairs as a PEFT adapter over the base `base`.
pub fn adapter(spec: &LoraSpec, trained: &[LoraWeight], base: &str) -> Adapter {
    let mut targets: Vec<String> = trained
        .iter()
        .map(|t| module_short_name(&t.name).to_string())
        .collect();
    targets.sort();
    targets.dedup();
    Adapter {
        r: spec.r,
        alpha: spec.alpha,
        rslora: false,
        target_modules: targets,
        fan_in_fan_out: trained.iter().any(|t| t.conv1d),
        base_model: Some(base.to_string()),
        modules: trained
            .iter()
            .map(|t| {
                (
                    t.name
                        .strip_suffix(".weight")
                        .unwrap_or(&t.name)
                        .to_string(),
                    t.pair(),
                )
            })
            .collect(),
    }
}

/// How `--merge` requantizes: the base's own round-to-nearest grid (bitsandbytes NF4/FP4 or
/// compressed-tensors integers, every quantized weight on the same grid) and the weights it
/// covers.
pub fn merge_grid(ckpt: &Checkpoint) -> Result<(Rtn, Selection)> {
    let Checkpoint::Hf(h) = ckpt else {
        return Err(TrainError::input(
            ckpt.path(),
            "not a Hugging Face directory",
        ));
    };
    let method = h
        .quantization_config()
        .and_then(|q| {
            q.get("quant_method")
                .and_then(|m| m.as_str())
                .map(str::to_string)
        })
        .unwrap_or_default();
    if method != "bitsandbytes" && method != "compressed-tensors" {
        return Err(TrainError::input(
            ckpt.path(),
            format!(
                "quant_method {method:?}: --merge requantizes bitsandbytes (nf4, fp4) and \
                 compressed-tensors (int) bases by rounding; keep the adapter instead, or merge \
                 into a float model and quantize that"
            ),
        ));
    }
    let arch = shrink_models::Architecture::from_checkpoint(ckpt)?;
    let mut grid: Option<Rtn> = None;
    let mut quantized = Vec::new();
    for (name, _) in arch.weight_shapes() {
        let Some(q) = h.quantized(&name)? else {
            continue;
        };
        let g = match q {
            Quantized::Int(t) => Rtn::Int(t.spec),
            Quantized::Nf4(t, _) => Rtn::Nf4(t.spec),
            _ => {
                return Err(TrainError::input(
                    ckpt.path(),
                    format!("{name}: this layout is not requantized by --merge"),
                ))
            }
        };
        match grid {
            None => grid = Some(g),
            Some(g0) if g0 != g => {
                return Err(TrainError::input(
                    ckpt.path(),
                    format!(
                        "{name} is {} but other weights are {}: --merge needs one grid",
                        g.name(),
                        g0.name()
                    ),
                ))
            }
            _ => {}
        }
        quantized.push(name);
    }
    let grid = grid.ok_or_else(|| TrainError::input(ckpt.path(), "no weight is quantized"))?;
    let defaults: Vec<String> = arch.block_linears().into_iter().map(|l| l.weight).collect();
    let selection = Selection {
        include: quantized
            .iter()
            .filter(|n| !defaults.contains(n))
            .cloned()
            .collect(),
        exclude: defaults
            .iter()
            .filter(|n| !quantized.contains(n))
            .cloned()
            .collect(),
    };
    Ok((grid, selection))
}
