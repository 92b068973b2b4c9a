//! Which weights a method touches.
//!
//! By default every linear layer inside the decoder blocks — as bitsandbytes and the
//! quantization guides do — and nothing else: embeddings, norms and the LM head keep their
//! precision. `--include` adds any 2-D weight whose name matches a glob; `--exclude` removes
//! matches. A pattern matches the weight's name (`model.layers.0.mlp.down_proj.weight`) or its
//! module name (`model.layers.0.mlp.down_proj`); `*` crosses dots.

use globset::{Glob, GlobSet, GlobSetBuilder};
use shrink_models::{Architecture, LinearInfo};

use crate::error::{MethodError, Result};

/// Include/exclude patterns given by the user.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Extra weights to touch.
    pub include: Vec<String>,
    /// Weights to leave alone.
    pub exclude: Vec<String>,
}

fn globset(patterns: &[String]) -> Result<GlobSet> {
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        let g = Glob::new(p).map_err(|e| MethodError::Pattern {
            pattern: p.clone(),
            what: e.to_string(),
        })?;
        b.add(g);
    }
    b.build().map_err(|e| MethodError::Pattern {
        pattern: patterns.join(", "),
        what: e.to_string(),
    })
}

fn matches(set: &GlobSet, name: &str) -> bool {
    set.is_match(name)
        || name
            .strip_suffix(".weight")
            .is_some_and(|m| set.is_match(m))
}

impl Selection {
    /// The weights to touch in a model of `cfg`, in load order. Errors when a pattern matches
    /// nothing (a typo should not silently quantize the default set) or nothing is selected.
    pub fn resolve(&self, arch: &Architecture) -> Result<Vec<LinearInfo>> {
        let inc = globset(&self.include)?;
        let exc = globset(&self.exclude)?;
        let defaults: std::collections::HashMap<String, LinearInfo> = arch
            .block_linears()
            .into_iter()
            .map(|l| (l.weight.clone(), l))
            .collect();
        let shapes = arch.weight_shapes();
        for p in self.include.iter().chain(&self.exclude) {
            let one = globset(std::slice::from_ref(p))?;
            if !shapes.iter().any(|(n, _)| matches(&one, n)) {
                return Err(MethodError::Options(format!(
                    "pattern {p:?} matches no weight of this model"
                )));
            }
        }
        let mut out = Vec::new();
        for (name, shape) in &shapes {
            let default = defaults.get(name);
            let chosen = match default {
                Some(_) => !matches(&exc, name),
                None => shape.len() == 2 && matches(&inc, name) && !matches(&exc, name),
            };
            if !chosen {
                continue;
            }
            out.push(match default {
                Some(l) => l.clone(),
                None => LinearInfo {
                    weight: name.clone(),
                    out_features: shape[0],
                    in_features: shape[1],
                    conv1d: false,
                },
            });
        }
        if out.is_empty() {
            return Err(MethodError::Options(
                "no weight selected: every candidate was excluded".into(),
            ));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shrink_models::config::LlamaConfig;

    fn cfg() -> shrink_models::ModelConfig {
        shrink_models::ModelConfig::Llama(LlamaConfig {
            model_type: "llama".into(),
            hidden_size: 8,
            intermediate_size: 16,
            num_layers: 2,
            num_heads: 2,
            num_kv_heads: 1,
            head_dim: 4,
            vocab_size: 32,
            rms_norm_eps: 1e-5,
            rope_theta: 1e4,
            max_position_embeddings: 64,
            tie_word_embeddings: true,
            qkv_bias: false,
            o_bias: false,
            mlp_bias: false,
            sliding_window: None,
        })
    }

    #[test]
    fn default_is_every_decoder_linear() {
        let s = Selection::default().resolve(&cfg().into()).unwrap();
        assert_eq!(s.len(), 14);
        assert!(s.iter().all(|l| l.weight.starts_with("model.layers.")));
    }

    #[test]
    fn include_and_exclude_by_module_or_weight_name() {
        let s = Selection {
            include: vec!["model.embed_tokens".into()],
            exclude: vec!["*.down_proj".into()],
        };
        let r = s.resolve(&cfg().into()).unwrap();
        assert_eq!(r.len(), 14 - 2 + 1);
        assert!(r.iter().any(|l| l.weight == "model.embed_tokens.weight"));
        assert!(!r.iter().any(|l| l.weight.contains("down_proj")));
    }

    #[test]
    fn typos_and_empty_selections_are_errors() {
        let s = Selection {
            include: vec!["model.embed_tokenz".into()],
            exclude: vec![],
        };
        assert!(s
            .resolve(&cfg().into())
            .unwrap_err()
            .to_string()
            .contains("matches no weight"));
        let s = Selection {
            include: vec![],
            exclude: vec!["*".into()],
        };
        assert!(s
            .resolve(&cfg().into())
            .unwrap_err()
            .to_string()
            .contains("no weight selected"));
        let s = Selection {
            include: vec!["[".into()],
            exclude: vec![],
        };
        assert!(matches!(
            s.resolve(&cfg().into()),
            Err(MethodError::Pattern { .. })
        ));
    }
}
