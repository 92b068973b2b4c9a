//! Text generation: greedy or sampled (temperature, nucleus), with a KV cache.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shrink_models::{KvCache, Model};

use crate::error::{EvalError, Result};

/// How to pick each next token.
#[derive(Debug, Clone)]
pub struct GenOptions {
    /// Most tokens to produce.
    pub max_tokens: usize,
    /// 0 picks the arg-max (greedy); above 0 samples from softmax(logits / temperature).
    pub temperature: f64,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p.
    pub top_p: f64,
    /// Seed of the sampler.
    pub seed: u64,
    /// Tokens that end generation (not emitted).
    pub stop: Vec<u32>,
}

impl Default for GenOptions {
    fn default() -> Self {
        GenOptions {
            max_tokens: 64,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            stop: Vec::new(),
        }
    }
}

/// Pick the next token from a row of logits.
pub fn pick(logits: &[f32], opts: &GenOptions, rng: &mut StdRng) -> u32 {
    if opts.temperature <= 0.0 {
        let mut best = 0;
        for (i, &v) in logits.iter().enumerate() {
            if v > logits[best] {
                best = i;
            }
        }
        return best as u32;
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<(usize, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &v)| (i, (((v - max) as f64) / opts.temperature).exp()))
        .collect();
    let z: f64 = probs.iter().map(|p| p.1).sum();
    probs.iter_mut().for_each(|p| p.1 /= z);
    probs.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut keep = probs.len();
    if opts.top_p < 1.0 {
        let mut acc = 0.0;
        for (n, p) in probs.iter().enumerate() {
            acc += p.1;
            if acc >= opts.top_p {
                keep = n + 1;
                break;
            }
        }
    }
    let kept = &probs[..keep];
    let total: f64 = kept.iter().map(|p| p.1).sum();
    let mut r = rng.random::<f64>() * total;
    for p in kept {
        r -= p.1;
        if r <= 0.0 {
            return p.0 as u32;
        }
    }
    kept[kept.len() - 1].0 as u32
}

/// Continue `prompt`, calling `on_token` with each new token as soon as it is chosen.
/// Returns the generated ids (without the prompt and without the stop token).
pub fn generate(
    model: &Model,
    prompt: &[u32],
    opts: &GenOptions,
    mut on_token: impl FnMut(u32),
) -> Result<Vec<u32>> {
    if prompt.is_empty() {
        return Err(EvalError::Input("the prompt has no tokens".into()));
    }
    let max_ctx = model.config().max_context();
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let mut cache = KvCache::new();
    let mut out = Vec::new();
    let mut next_input: Vec<u32> = prompt.to_vec();
    while out.len() < opts.max_tokens {
        if cache.len() + next_input.len() > max_ctx {
            break;
        }
        let logits = model.forward(&next_input, Some(&mut cache))?;
        let t = logits.dim(0)?;
        let last: Vec<f32> = logits.get(t - 1)?.to_vec1()?;
        let id = pick(&last, opts, &mut rng);
        if opts.stop.contains(&id) {
            break;
        }
        on_token(id);
        out.push(id);
        next_input = vec![id];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_argmax_and_top_p_keeps_the_nucleus() {
        let logits = [0.0f32, 5.0, 1.0, 4.9];
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(pick(&logits, &GenOptions::default(), &mut rng), 1);
        // With a tiny top_p only the most likely token survives, whatever the seed.
        let opts = GenOptions {
            temperature: 1.0,
            top_p: 0.01,
            ..Default::default()
        };
        for s in 0..20 {
            let mut rng = StdRng::seed_from_u64(s);
            assert_eq!(pick(&logits, &opts, &mut rng), 1);
        }
        // With the whole distribution, the two near-equal tokens both show up.
        let opts = GenOptions {
            temperature: 1.0,
            top_p: 1.0,
            ..Default::default()
        };
        let picks: std::collections::HashSet<u32> = (0..200)
            .map(|s| pick(&logits, &opts, &mut StdRng::seed_from_u64(s)))
            .collect();
        assert!(picks.contains(&1) && picks.contains(&3));
    }
}
