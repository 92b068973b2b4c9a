//! How fast a model runs (`shrink bench`), measured as llama.cpp's `llama-bench` measures it,
//! so the two can be put side by side: prompt processing (`pp`: `n_prompt` random tokens in one
//! batch, logits of the last) and generation (`tg`: `n_gen` random tokens one at a time through
//! the KV cache, logits of each), both from an empty cache — or, as llama-bench's `-d`, from one
//! already holding `depth` tokens (filled as one unmeasured prompt) — in tokens per second, mean
//! ± sample standard deviation over repetitions after one unmeasured warm-up of each.
//!
//! Generation reads every weight once per token, so its ceiling is the memory bandwidth:
//! [`memory_bandwidth`] measures the machine's, [`shrink_models::Model::bytes_per_token`] counts
//! what the model reads, and [`Limit`] relates the two.

use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde::Serialize;
use shrink_methods::pipeline::Progress;
use shrink_models::{KvCache, Model};

use crate::{EvalError, Result};

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BenchSpec {
    /// Prompt tokens of the pp test (0: no pp test).
    pub n_prompt: usize,
    /// Generated tokens of the tg test (0: no tg test).
    pub n_gen: usize,
    /// Measured repetitions of each test.
    pub repetitions: usize,
    /// Tokens already in the KV cache when each test starts (llama-bench's `n_depth`).
    pub depth: usize,
    /// Keys and values cached as float16 (llama-bench's default cache type) instead of float32.
    pub half_kv: bool,
    /// Seed of the random token ids.
    pub seed: u64,
}

impl Default for BenchSpec {
    fn default() -> Self {
        BenchSpec {
            n_prompt: 512,
            n_gen: 128,
            repetitions: 5,
            depth: 0,
            half_kv: false,
            seed: 0,
        }
    }
}

/// One test's measurements (a row of llama-bench's table).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TestResult {
    /// `pp512`, `tg128`, `tg128 @ d1024`, ... as llama-bench names it.
    pub test: String,
    /// Tokens in the KV cache before the test.
    pub n_depth: usize,
    /// Prompt tokens (pp) or 0.
    pub n_prompt: usize,
    /// Generated tokens (tg) or 0.
    pub n_gen: usize,
    /// Seconds of each repetition.
    pub samples_s: Vec<f64>,
    /// Tokens per second of each repetition.
    pub samples_ts: Vec<f64>,
    /// Mean tokens per second.
    pub avg_ts: f64,
    /// Sample standard deviation of the tokens per second (0 for one repetition).
    pub stddev_ts: f64,
}

impl TestResult {
    fn new(
        test: String,
        n_prompt: usize,
        n_gen: usize,
        n_depth: usize,
        samples_s: Vec<f64>,
    ) -> Self {
        let tokens = (n_prompt + n_gen) as f64;
        let samples_ts: Vec<f64> = samples_s.iter().map(|s| tokens / s).collect();
        let (avg_ts, stddev_ts) = mean_stddev(&samples_ts);
        TestResult {
            test,
            n_depth,
            n_prompt,
            n_gen,
            samples_s,
            samples_ts,
            avg_ts,
            stddev_ts,
        }
    }
}

/// Mean and sample standard deviation (n − 1 in the denominator, as llama-bench; 0 for one value).
pub fn mean_stddev(v: &[f64]) -> (f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    if v.len() < 2 {
        return (mean, 0.0);
    }
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

/// Run the tests `spec` asks for on `model`; `progress` counts repetitions.
pub fn run(model: &Model, spec: &BenchSpec, progress: &dyn Progress) -> Result<Vec<TestResult>> {
    if spec.repetitions == 0 {
        return Err(EvalError::Input("repetitions must be at least 1".into()));
    }
    if spec.n_prompt == 0 && spec.n_gen == 0 {
        return Err(EvalError::Input(
            "nothing to measure: both the prompt and the generation are 0 tokens".into(),
        ));
    }
    let cfg = model.config();
    let ctx = cfg.max_context();
    for (what, n) in [("prompt", spec.n_prompt), ("generation", spec.n_gen)] {
        if n + spec.depth > ctx {
            let after = match spec.depth {
                0 => String::new(),
                d => format!(" after a depth of {d}"),
            };
            return Err(EvalError::Input(format!(
                "a {what} of {n} tokens{after} does not fit the model's {ctx} positions"
            )));
        }
    }
    let vocab = cfg.vocab_size() as u32;
    let new_cache = || {
        if spec.half_kv {
            KvCache::half()
        } else {
            KvCache::new()
        }
    };
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let mut tokens =
        |n: usize| -> Vec<u32> { (0..n).map(|_| rng.random_range(0..vocab)).collect() };
    let mut out = Vec::new();
    let tests = [(spec.n_prompt, 0), (0, spec.n_gen)];
    let total = tests.iter().filter(|(p, g)| p + g > 0).count() * spec.repetitions;
    progress.start("bench", total as u64);
    for (n_prompt, n_gen) in tests {
        if n_prompt + n_gen == 0 {
            continue;
        }
        // One unmeasured run first, as llama-bench warms up: buffers allocated, pages touched.
        let warm = tokens(if n_prompt > 0 { n_prompt } else { 1 });
        model.last_logits(&warm, Some(&mut new_cache()))?;
        let mut samples = Vec::with_capacity(spec.repetitions);
        for _ in 0..spec.repetitions {
            let ids = tokens(n_prompt + n_gen);
            let mut cache = new_cache();
            if spec.depth > 0 {
                model.last_logits(&tokens(spec.depth), Some(&mut cache))?;
            }
            let t0 = Instant::now();
            if n_prompt > 0 {
                std::hint::black_box(model.last_logits(&ids, Some(&mut cache))?);
            } else {
                for id in &ids {
                    std::hint::black_box(model.last_logits(&[*id], Some(&mut cache))?);
                }
            }
            samples.push(t0.elapsed().as_secs_f64());
            progress.inc(1);
        }
        let mut test = if n_prompt > 0 {
            format!("pp{n_prompt}")
        } else {
            format!("tg{n_gen}")
        };
        if spec.depth > 0 {
            test.push_str(&format!(" @ d{}", spec.depth));
        }
        out.push(TestResult::new(test, n_prompt, n_gen, spec.depth, samples));
    }
    progress.finish();
    Ok(out)
}

/// The memory-bandwidth ceiling of generation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Limit {
    /// Bytes of weights one generated token reads.
    pub bytes_per_token: u64,
    /// The machine's read bandwidth, bytes per second ([`memory_bandwidth`]).
    pub bandwidth_bytes_per_s: f64,
    /// Tokens per second if every token cost only its weight reads: bandwidth ÷ bytes.
    pub tokens_per_s: f64,
}

impl Limit {
    /// The ceiling for a model reading `bytes_per_token` on a machine reading
    /// `bandwidth_bytes_per_s`.
    pub fn new(bytes_per_token: u64, bandwidth_bytes_per_s: f64) -> Self {
        Limit {
            bytes_per_token,
            bandwidth_bytes_per_s,
            tokens_per_s: bandwidth_bytes_per_s / bytes_per_token.max(1) as f64,
        }
    }

    /// The share of the ceiling `tokens_per_s` reaches.
    pub fn share(&self, tokens_per_s: f64) -> f64 {
        tokens_per_s / self.tokens_per_s
    }
}

/// Bytes of the buffer [`memory_bandwidth`] reads: far beyond any cache.
const BANDWIDTH_BYTES: usize = 512 << 20;

/// The machine's memory read bandwidth in bytes per second with the current thread pool: the
/// best of `repetitions` sums over a 512 MiB buffer, split across the threads as a matmul splits
/// its rows. (Hand-written: no maintained crate measures this; STREAM's "sum" kernel in Rust.)
pub fn memory_bandwidth(repetitions: usize) -> f64 {
    let words = BANDWIDTH_BYTES / 8;
    // Non-zero contents so every page is really backed (zero pages would all map one frame).
    let buf: Vec<u64> = (0..words as u64).collect();
    let threads = rayon::current_num_threads().max(1);
    let chunk = words.div_ceil(threads * 16);
    let mut best = 0f64;
    for _ in 0..repetitions.max(1) {
        let t0 = Instant::now();
        // Integer sums vectorise (no float associativity in the way), so the loop is bound by
        // the loads.
        let s: u64 = buf
            .par_chunks(chunk)
            .map(|c| c.iter().fold(0u64, |a, &x| a.wrapping_add(x)))
            .reduce(|| 0, u64::wrapping_add);
        let secs = t0.elapsed().as_secs_f64();
        std::hint::black_box(s);
        best = best.max(BANDWIDTH_BYTES as f64 / secs);
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_sample_stddev() {
        let (m, s) = mean_stddev(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]);
        assert_eq!(m, 5.0);
        // Sample variance 32 / 7.
        assert!((s - (32.0f64 / 7.0).sqrt()).abs() < 1e-12);
        assert_eq!(mean_stddev(&[3.0]), (3.0, 0.0));
    }

    #[test]
    fn results_count_tokens_per_second() {
        let r = TestResult::new("tg4".into(), 0, 4, 0, vec![2.0, 1.0]);
        assert_eq!(r.samples_ts, vec![2.0, 4.0]);
        assert_eq!(r.avg_ts, 3.0);
        let l = Limit::new(100, 1000.0);
        assert_eq!(l.tokens_per_s, 10.0);
        assert_eq!(l.share(5.0), 0.5);
    }

    #[test]
    fn bandwidth_is_measured() {
        let b = memory_bandwidth(1);
        // Any machine reads more than 100 MB/s and less than 10 TB/s.
        assert!(b > 1e8 && b < 1e13, "{b}");
    }
}
