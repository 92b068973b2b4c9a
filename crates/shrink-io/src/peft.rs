//! PEFT's LoRA adapter directory, as `PeftModel.save_pretrained` writes it and
//! `PeftModel.from_pretrained` reads it: `adapter_config.json` (`peft_type` "LORA", `r`,
//! `lora_alpha`, `target_modules`, …) and `adapter_model.safetensors` holding, for each adapted
//! module, `base_model.model.<module>.lora_A.weight` `[r, in_features]` and
//! `base_model.model.<module>.lora_B.weight` `[out_features, r]`. The adapted layer computes
//! `y = x Wᵀ + s · (x Aᵀ) Bᵀ` with `s = lora_alpha / r` (`lora_alpha / √r` under
//! `use_rslora`) — Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", §4.1.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::Dtype;

use crate::error::{IoError, Result};

/// The prefix PEFT puts before a module's name in the adapter file.
pub const PREFIX: &str = "base_model.model.";

/// One adapted module's LoRA pair.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraPair {
    /// A, row-major `[r, in_features]`.
    pub a: Vec<f32>,
    /// B, row-major `[out_features, r]`.
    pub b: Vec<f32>,
    /// Input features.
    pub in_features: usize,
    /// Output features.
    pub out_features: usize,
}

/// A LoRA adapter: its settings and its pairs by module name
/// (`model.layers.0.self_attn.q_proj`).
#[derive(Debug, Clone, PartialEq)]
pub struct Adapter {
    /// Rank r.
    pub r: usize,
    /// lora_alpha.
    pub alpha: f64,
    /// Scale α/√r instead of α/r (rsLoRA).
    pub rslora: bool,
    /// The module names (last components) the adapter targets.
    pub target_modules: Vec<String>,
    /// The base stores its weights [in, out] (GPT-2's Conv1D), as PEFT records it; A and B
    /// keep their shapes either way.
    pub fan_in_fan_out: bool,
    /// The base model the adapter was trained on, as recorded.
    pub base_model: Option<String>,
    /// The pairs, by module name.
    pub modules: BTreeMap<String, LoraPair>,
}

impl Adapter {
    /// The factor s of the low-rank update.
    pub fn scale(&self) -> f64 {
        if self.rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }

    /// Scalar parameters in all the pairs.
    pub fn params(&self) -> usize {
        self.modules.values().map(|p| p.a.len() + p.b.len()).sum()
    }

    /// Bytes the pairs take as written (float32).
    pub fn stored_bytes(&self) -> usize {
        4 * self.params()
    }

    /// adapter_config.json as PEFT writes it.
    pub fn config_json(&self) -> serde_json::Value {
        serde_json::json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": self.base_model,
            "r": self.r,
            "lora_alpha": self.alpha,
            "lora_dropout": 0.0,
            "target_modules": self.target_modules,
            "bias": "none",
            "fan_in_fan_out": self.fan_in_fan_out,
            "inference_mode": true,
            "init_lora_weights": true,
            "use_rslora": self.rslora,
            "use_dora": false,
            "modules_to_save": null,
            "layers_to_transform": null,
            "layers_pattern": null,
            "rank_pattern": {},
            "alpha_pattern": {},
            "revision": null,
            "auto_mapping": null,
        })
    }

    /// adapter_model.safetensors: every pair as float32, A then B, modules in name order.
    pub fn safetensors_bytes(&self) -> Result<Vec<u8>> {
        let mut views = Vec::new();
        for (m, p) in &self.modules {
            let bytes = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
            views.push((
                format!("{PREFIX}{m}.lora_A.weight"),
                vec![self.r, p.in_features],
                bytes(&p.a),
            ));
            views.push((
                format!("{PREFIX}{m}.lora_B.weight"),
                vec![p.out_features, self.r],
                bytes(&p.b),
            ));
        }
        let tensors: Vec<(String, safetensors::tensor::TensorView)> = views
            .iter()
            .map(|(n, s, b)| {
                safetensors::tensor::TensorView::new(Dtype::F32, s.clone(), b)
                    .map(|v| (n.clone(), v))
                    .map_err(|e| IoError::malformed(n, e.to_string()))
            })
            .collect::<Result<_>>()?;
        let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
        safetensors::serialize(tensors, Some(meta))
            .map_err(|e| IoError::malformed("adapter_model.safetensors", e.to_string()))
    }

    /// Read the adapter directory `dir`.
    pub fn read(dir: &Path) -> Result<Self> {
        let cfg_path = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| IoError::os(&cfg_path, e))?;
        let cfg: serde_json::Value =
            serde_json::from_str(&text).map_err(|source| IoError::Json {
                path: cfg_path.clone(),
                source,
            })?;
        let bad = |what: String| IoError::malformed(&cfg_path, what);
        let peft_type = cfg["peft_type"].as_str().unwrap_or("");
        if peft_type != "LORA" {
            return Err(bad(format!(
                "peft_type {peft_type:?}: only LoRA adapters are read"
            )));
        }
        if cfg["use_dora"].as_bool() == Some(true) {
            return Err(bad("DoRA adapters are not read".into()));
        }
        if cfg["bias"].as_str().is_some_and(|b| b != "none") {
            return Err(bad("bias other than \"none\" is not read".into()));
        }
        if cfg["rank_pattern"]
            .as_object()
            .is_some_and(|m| !m.is_empty())
            || cfg["alpha_pattern"]
                .as_object()
                .is_some_and(|m| !m.is_empty())
        {
            return Err(bad(
                "per-module rank_pattern / alpha_pattern are not read".into()
            ));
        }
        let r = cfg["r"]
            .as_u64()
            .filter(|&r| r > 0)
            .ok_or_else(|| bad("r must be a positive integer".into()))? as usize;
        let alpha = cfg["lora_alpha"]
            .as_f64()
            .filter(|a| a.is_finite())
            .ok_or_else(|| bad("lora_alpha must be a number".into()))?;
        let target_modules = match &cfg["target_modules"] {
            serde_json::Value::Array(v) => v
                .iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect(),
            serde_json::Value::String(s) => vec![s.clone()],
            _ => Vec::new(),
        };
        let st_path = dir.join("adapter_model.safetensors");
        let bytes = std::fs::read(&st_path).map_err(|e| IoError::os(&st_path, e))?;
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|source| {
            IoError::Safetensors {
                path: st_path.clone(),
                source,
            }
        })?;
        let bad = |what: String| IoError::malformed(&st_path, what);
        let mut halves: BTreeMap<String, [Option<Half>; 2]> = BTreeMap::new();
        for (name, view) in st.tensors() {
            let rest = name
                .strip_prefix(PREFIX)
                .ok_or_else(|| bad(format!("tensor {name} does not start with {PREFIX}")))?;
            let (module, half) = if let Some(m) = rest.strip_suffix(".lora_A.weight") {
                (m, 0)
            } else if let Some(m) = rest.strip_suffix(".lora_B.weight") {
                (m, 1)
            } else {
                return Err(bad(format!(
                    "tensor {name} is not a LoRA pair's lora_A / lora_B weight"
                )));
            };
            let values = to_f32(view.dtype(), view.data()).ok_or_else(|| {
                bad(format!(
                    "tensor {name}: dtype {:?} is not read",
                    view.dtype()
                ))
            })?;
            if let Some(i) = values.iter().position(|x| !x.is_finite()) {
                return Err(bad(format!(
                    "tensor {name} holds a non-finite value ({}) at element {i}",
                    values[i]
                )));
            }
            halves.entry(module.to_string()).or_default()[half] =
                Some((values, view.shape().to_vec()));
        }
        let mut modules = BTreeMap::new();
        for (m, [a, b]) in halves {
            let (Some((a, sa)), Some((b, sb))) = (a, b) else {
                return Err(bad(format!("module {m} lacks its lora_A or lora_B weight")));
            };
            if sa.len() != 2 || sb.len() != 2 || sa[0] != r || sb[1] != r {
                return Err(bad(format!(
                    "module {m}: lora_A {sa:?} and lora_B {sb:?} do not have rank r = {r}"
                )));
            }
            modules.insert(
                m,
                LoraPair {
                    a,
                    b,
                    in_features: sa[1],
                    out_features: sb[0],
                },
            );
        }
        if modules.is_empty() {
            return Err(bad("no LoRA pair in the file".into()));
        }
        Ok(Adapter {
            r,
            alpha,
            rslora: cfg["use_rslora"].as_bool().unwrap_or(false),
            target_modules,
            fan_in_fan_out: cfg["fan_in_fan_out"].as_bool().unwrap_or(false),
            base_model: cfg["base_model_name_or_path"].as_str().map(str::to_string),
            modules,
        })
    }

    /// Write the adapter into the new directory `dir` (under a temporary name, renamed when
    /// complete), with `extra` files (name, bytes) beside it.
    pub fn write(
        &self,
        dir: &Path,
        inputs: &[&Path],
        extra: &[(String, Vec<u8>)],
    ) -> Result<PathBuf> {
        let out = crate::OutputDir::create(dir, inputs)?;
        out.write(
            "adapter_config.json",
            &serde_json::to_vec_pretty(&self.config_json()).expect("JSON"),
        )?;
        out.write("adapter_model.safetensors", &self.safetensors_bytes()?)?;
        for (name, bytes) in extra {
            out.write(name, bytes)?;
        }
        out.commit()
    }
}

/// One half of a pair as read: values and shape.
type Half = (Vec<f32>, Vec<usize>);

/// Little-endian float32 / float16 / bfloat16 bytes as float32.
fn to_f32(dtype: Dtype, data: &[u8]) -> Option<Vec<f32>> {
    Some(match dtype {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        _ => return None,
    })
}
