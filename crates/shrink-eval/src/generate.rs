//! Text generation: greedy or sampled (temperature, nucleus), with a KV cache.

use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shrink_io::tokenizer::Tokenizer;
use shrink_io::Checkpoint;
use shrink_models::{KvCache, Model, ModelConfig};

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
    /// Keys and values cached as float16 ([`KvCache::half`]) instead of float32.
    pub half_kv: bool,
}

impl Default for GenOptions {
    fn default() -> Self {
        GenOptions {
            max_tokens: 64,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            stop: Vec::new(),
            half_kv: false,
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

/// Refuse a prompt of `len` tokens longer than the model's context of `max_ctx` positions.
fn fits_context(len: usize, max_ctx: usize) -> Result<()> {
    if len > max_ctx {
        return Err(EvalError::Input(format!(
            "the prompt has {len} tokens, more than the model's context of {max_ctx} positions"
        )));
    }
    Ok(())
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
    fits_context(prompt.len(), max_ctx)?;
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let mut cache = if opts.half_kv {
        KvCache::half()
    } else {
        KvCache::new()
    };
    let mut out = Vec::new();
    let mut next_input: Vec<u32> = prompt.to_vec();
    while out.len() < opts.max_tokens {
        if cache.len() + next_input.len() > max_ctx {
            break;
        }
        let last = model.last_logits(&next_input, Some(&mut cache))?;
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

/// A model with its tokenizer, ready to continue prompts (`shrink generate`).
pub struct Generator {
    /// The checkpoint's tokenizer.
    pub tok: Tokenizer,
    /// The model.
    pub model: Model,
}

/// A prompt as the model sees it.
#[derive(Debug, Clone)]
pub struct Prompt {
    /// The text (with the chat template applied, if asked).
    pub text: String,
    /// Its tokens, special tokens included.
    pub ids: Vec<u32>,
}

/// A finished generation.
#[derive(Debug, Clone)]
pub struct Generation {
    /// The prompt.
    pub prompt: Prompt,
    /// The generated ids (without the stop token).
    pub ids: Vec<u32>,
    /// They, decoded.
    pub completion: String,
    /// Seconds generating took.
    pub seconds: f64,
    /// Why it stopped.
    pub stopped: Stop,
}

/// Why a generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The model produced an end-of-sequence token.
    EndOfText,
    /// `max_tokens` were generated.
    MaxTokens,
    /// The prompt and the generated tokens filled the model's context (of this many positions).
    Context(usize),
}

impl Stop {
    /// Its name in JSON (`eos`, `max_tokens`, `context`).
    pub fn name(&self) -> &'static str {
        match self {
            Stop::EndOfText => "eos",
            Stop::MaxTokens => "max_tokens",
            Stop::Context(_) => "context",
        }
    }
}

impl Generator {
    /// Open the model at `path` with its tokenizer.
    pub fn open(path: &Path) -> Result<Self> {
        Generator::open_with(path, None)
    }

    /// Open the model at `path` with its tokenizer and, if given, the PEFT LoRA adapter
    /// directory `adapter` run beside its layers.
    pub fn open_with(path: &Path, adapter: Option<&Path>) -> Result<Self> {
        let ckpt = Checkpoint::open(path)?;
        // An architecture shrink cannot run is the first thing to say, before a missing tokenizer.
        ModelConfig::from_checkpoint(&ckpt)?;
        let tok = Tokenizer::for_checkpoint(&ckpt)?;
        let adapter = match adapter {
            Some(p) => Some(shrink_io::peft::Adapter::read(p)?),
            None => None,
        };
        let model = Model::load_with(&ckpt, adapter.as_ref())?;
        Ok(Generator { tok, model })
    }

    /// `text` as a prompt; with `chat`, wrapped in the chat template as a user message.
    pub fn prompt(&self, text: &str, chat: bool) -> Result<Prompt> {
        let text = if chat {
            self.tok.apply_chat_template(&[("user", text)], true)?
        } else {
            text.to_string()
        };
        let ids = self.tok.encode(&text, true)?;
        fits_context(ids.len(), self.model.config().max_context())?;
        Ok(Prompt { text, ids })
    }

    /// Continue `prompt`, stopping at the tokenizer's end-of-sequence tokens (`opts.stop` is
    /// replaced by them); `on_text`, if given, sees the decoded text as it grows.
    pub fn run(
        &self,
        prompt: &Prompt,
        opts: &GenOptions,
        mut on_text: Option<&mut dyn FnMut(&str)>,
    ) -> Result<Generation> {
        let opts = GenOptions {
            stop: self.tok.eos_ids(),
            ..opts.clone()
        };
        let mut stream = self.tok.decode_stream();
        let mut err = None;
        let t0 = std::time::Instant::now();
        let ids = generate(&self.model, &prompt.ids, &opts, |id| {
            let Some(f) = on_text.as_mut() else { return };
            if err.is_some() {
                return;
            }
            match stream.step(id) {
                Ok(Some(s)) => f(&s),
                Ok(None) => {}
                Err(e) => err = Some(e),
            }
        })?;
        if let Some(e) = err {
            return Err(e.into());
        }
        let seconds = t0.elapsed().as_secs_f64();
        let max_ctx = self.model.config().max_context();
        let stopped = if ids.len() == opts.max_tokens {
            Stop::MaxTokens
        } else if prompt.ids.len() + ids.len() >= max_ctx {
            Stop::Context(max_ctx)
        } else {
            Stop::EndOfText
        };
        Ok(Generation {
            prompt: prompt.clone(),
            completion: self.tok.decode(&ids)?,
            ids,
            seconds,
            stopped,
        })
    }
}

impl Generation {
    /// Generated tokens per second.
    pub fn tokens_per_second(&self) -> f64 {
        self.ids.len() as f64 / self.seconds
    }

    /// The generation as one JSON object (prompt, completion, ids, speed).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "prompt": self.prompt.text,
            "completion": self.completion,
            "prompt_ids": self.prompt.ids,
            "ids": self.ids,
            "seconds": self.seconds,
            "tokens_per_second": self.tokens_per_second(),
            "stopped": self.stopped.name(),
        })
    }
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
